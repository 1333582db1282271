#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../backend/tp/tp.h"
#include "../study/calibration.h"
#include "../util/status.h"
#include "cli.h"

const char *cli_model_path(const char *flag) {
    if (flag) return flag;
    const char *env = getenv("MARGINGATE_MODEL");
    if (env && *env) {
        fprintf(stderr, "margingate: using the model in $MARGINGATE_MODEL: %s\n", env);
        return env;
    }
    fprintf(stderr, "margingate: no -m given; using the default model %s\n", MG_DEFAULT_MODEL);
    return MG_DEFAULT_MODEL;
}

int cli_fail(const char *cmd, const char *what) {
    fprintf(stderr, "margingate %s: %s: %s\n", cmd, what, mg_error_last());
    return 1;
}

int cli_model_missing(const char *cmd, const char *path) {
    struct stat st;
    if (stat(path, &st) == 0) return 0;
    fprintf(stderr, "margingate %s: model not found at %s (give a model directory with -m MODEL_DIR)\n", cmd, path);
    return 1;
}

int cli_open_model(const char *cmd, const char *path, mg_model **model, mg_tokenizer **tok, mg_model_format *format) {
    if (cli_model_missing(cmd, path)) return 1;
    if (mg_open_model(path, model, tok, format) != MG_OK) return cli_fail(cmd, "cannot load the model");
    return 0;
}

void cli_set_threads(int threads) {
    if (threads <= 0) return;
    omp_set_dynamic(0);
    omp_set_num_threads(threads);
}

int cli_backend(const char *cmd, const char *device, int tensor_parallel, const mg_backend_ops **out) {
    *out = NULL;
    if (!device) device = "auto";
    if (strcmp(device, "cpu") && strcmp(device, "cuda") && strcmp(device, "auto")) {
        fprintf(stderr, "margingate %s: invalid value '%s' for --device (expected cpu, cuda or auto)\n", cmd, device);
        return 2;
    }
    const mg_backend_ops *b = mg_backend_select(device, tensor_parallel);
    if (!b) {
        if (tensor_parallel > 1)
            fprintf(stderr, "margingate %s: cannot compute on --device %s with --tensor-parallel %d: %s\n", cmd,
                    device, tensor_parallel, mg_error_last());
        else
            fprintf(stderr, "margingate %s: cannot compute on --device %s: %s\n", cmd, device, mg_error_last());
        return 1;
    }
    *out = b;
    return 0;
}

int cli_parse_tensor_parallel(const char *cmd, const char *s, int *out) {
    if (!cli_parse_int(s, out) && *out >= 1) return 0;
    fprintf(stderr, "margingate %s: --tensor-parallel needs a positive integer (got '%s')\n", cmd, s);
    return 2;
}

int cli_parse_kernels(const char *s, mg_kernels *out) {
    if (!strcmp(s, "fast")) *out = MG_KERNELS_FAST;
    else if (!strcmp(s, "invariant")) *out = MG_KERNELS_INVARIANT;
    else return -1;
    return 0;
}

int cli_parse_int(const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < -2147483647L || v > 2147483647L) return -1;
    *out = (int)v;
    return 0;
}

int cli_parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

int cli_parse_u64(const char *s, unsigned long long *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-') return -1;
    *out = v;
    return 0;
}

float cli_default_tau(const char *model_path, float fallback) {
    float tau;
    if (mg_calibration_load(model_path, &tau) == MG_OK) {
        fprintf(stderr, "margingate: MarginGate tau %g, calibrated for this model (margingate calibrate)\n", tau);
        return tau;
    }
    fprintf(stderr, "margingate: MarginGate tau %g (default; `margingate calibrate` chooses one for this model)\n",
            fallback);
    return fallback;
}
