/* margingate serve: the OpenAI-compatible HTTP server (src/server/). */
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../server/server.h"
#include "cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: margingate serve [-m MODEL] [options]\n"
            "  --host ADDR           address to listen on (default 127.0.0.1)\n"
            "  --port N              port (default 8080; 0 = any free port, printed on stderr)\n"
            "  --determinism MODE    default mode for requests that name none:\n"
            "                        off, invariant, llm42 or margingate (default margingate)\n"
            "  --api-key KEY         require 'Authorization: Bearer KEY' on /v1/* (also $MARGINGATE_API_KEY)\n"
            "  --served-model-name NAME  model id in the API (default: the model directory's name)\n"
            "  --max-model-len N     limit prompt + max_tokens to N tokens (default: the model's context)\n"
            "  --max-queue N         requests allowed to wait beyond the running ones before 429 (default 256)\n"
            "  --max-running N       requests decoded together at most (default 64)\n"
            "  --kv-mb N             KV cache pool in MiB (default 256)\n"
            "  --max-body-bytes N    larger request bodies get 413 (default 4194304)\n"
            "  --tau T               MarginGate margin threshold; 'inf' verifies every step\n"
            "                        (default: the value `margingate calibrate` stored, else 0.5)\n"
            "  --llm42-window W      LLM-42 tokens per verification window (default 64)\n"
            "  --llm42-group B       LLM-42 windows per verify pass (default 8)\n"
            "  --llm42-kernels K     fast (default, as the paper) or invariant: LLM-42's prefill and\n"
            "                        verify kernels (invariant: same tokens for any --tensor-parallel)\n"
            "  --fp32                FP32 activations (default BF16 at op boundaries)\n"
            "  --drain-timeout S     on SIGINT/SIGTERM, seconds to let requests finish before\n"
            "                        cancelling them (default 10)\n"
            "  --device D            cpu, cuda or auto: where the engine computes (default auto:\n"
            "                        cuda when a GPU is present, else cpu)\n"
            "  --tensor-parallel N   split the model over N GPUs (NCCL; with --device cpu: N\n"
            "                        CPU ranks, for tests)\n"
            "  --threads N           OpenMP threads for the engine\n"
            "  --log-requests        one line per request on stderr\n");
}

int cmd_serve(int argc, char **argv) {
    enum { O_HOST = 256, O_PORT, O_DET, O_KEY, O_NAME, O_MAXLEN, O_QUEUE, O_RUNNING, O_KV, O_BODY, O_TAU, O_W, O_B,
           O_FP32, O_DRAIN, O_THREADS, O_LOG, O_DELAY, O_DEVICE, O_TP, O_L42K };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},          {"host", required_argument, 0, O_HOST},
        {"port", required_argument, 0, O_PORT},        {"determinism", required_argument, 0, O_DET},
        {"api-key", required_argument, 0, O_KEY},      {"served-model-name", required_argument, 0, O_NAME},
        {"max-model-len", required_argument, 0, O_MAXLEN}, {"max-queue", required_argument, 0, O_QUEUE},
        {"max-running", required_argument, 0, O_RUNNING}, {"kv-mb", required_argument, 0, O_KV},
        {"max-body-bytes", required_argument, 0, O_BODY}, {"tau", required_argument, 0, O_TAU},
        {"llm42-window", required_argument, 0, O_W},  {"llm42-group", required_argument, 0, O_B},
        {"llm42-kernels", required_argument, 0, O_L42K},
        {"fp32", no_argument, 0, O_FP32},              {"drain-timeout", required_argument, 0, O_DRAIN},
        {"threads", required_argument, 0, O_THREADS},  {"log-requests", no_argument, 0, O_LOG},
        {"device", required_argument, 0, O_DEVICE},
        {"tensor-parallel", required_argument, 0, O_TP},
        {"test-load-delay-ms", required_argument, 0, O_DELAY}, /* testing: /health stays 503 this long */
        {"help", no_argument, 0, 'h'},                 {0, 0, 0, 0}};
    mg_server_config cfg = mg_server_config_default();
    const char *model_flag = NULL, *device = "auto";
    int tensor_parallel = 1;
    int c, kv_mb = 0, tau_given = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:h", opts, NULL)) != -1) {
        int bad = 0, v = 0;
        float f = 0;
        switch (c) {
        case 'm': model_flag = optarg; break;
        case O_HOST: cfg.host = optarg; break;
        case O_PORT: bad = cli_parse_int(optarg, &cfg.port) || cfg.port < 0 || cfg.port > 65535; break;
        case O_DET: bad = mg_mode_parse(optarg, &cfg.default_mode) != 0; break;
        case O_KEY: cfg.api_key = optarg; break;
        case O_NAME: cfg.served_name = optarg; break;
        case O_MAXLEN: bad = cli_parse_int(optarg, &cfg.max_model_len) || cfg.max_model_len < 2; break;
        case O_QUEUE: bad = cli_parse_int(optarg, &cfg.max_queue) || cfg.max_queue < 0; break;
        case O_RUNNING: bad = cli_parse_int(optarg, &cfg.engine.max_running) || cfg.engine.max_running < 1; break;
        case O_KV: bad = cli_parse_int(optarg, &kv_mb) || kv_mb < 1; break;
        case O_BODY: bad = cli_parse_int(optarg, &v) || v < 1; cfg.max_body_bytes = (size_t)v; break;
        case O_TAU:
            tau_given = 1;
            if (!strcmp(optarg, "inf")) cfg.engine.margingate_tau = INFINITY;
            else bad = cli_parse_float(optarg, &cfg.engine.margingate_tau) || cfg.engine.margingate_tau < 0;
            break;
        case O_W: bad = cli_parse_int(optarg, &cfg.engine.llm42_window) || cfg.engine.llm42_window < 1; break;
        case O_L42K: bad = cli_parse_kernels(optarg, &cfg.engine.llm42_kernels); break;
        case O_B: bad = cli_parse_int(optarg, &cfg.engine.llm42_group) || cfg.engine.llm42_group < 1; break;
        case O_FP32: cfg.engine.precision = MG_ACT_FP32; break;
        case O_DRAIN: bad = cli_parse_float(optarg, &f) || f < 0; cfg.drain_timeout_s = f; break;
        case O_THREADS: bad = cli_parse_int(optarg, &cfg.threads) || cfg.threads < 1; break;
        case O_LOG: cfg.log_requests = 1; break;
        case O_DEVICE: device = optarg; break;
        case O_TP:
            if (cli_parse_tensor_parallel("serve", optarg, &tensor_parallel)) return 2;
            break;
        case O_DELAY: bad = cli_parse_int(optarg, &cfg.test_load_delay_ms) || cfg.test_load_delay_ms < 0; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            fprintf(stderr, "margingate serve: invalid value '%s' for %s\n", optarg, argv[optind - 1]);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "margingate serve: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    int dev_rc = cli_backend("serve", device, tensor_parallel, &cfg.backend);
    if (dev_rc) return dev_rc;
    if (kv_mb) cfg.engine.kv_bytes = (size_t)kv_mb << 20;
    if (!cfg.api_key) {
        const char *env = getenv("MARGINGATE_API_KEY");
        if (env && *env) cfg.api_key = env;
    }
    cfg.model_path = cli_model_path(model_flag);
    if (cli_model_missing("serve", cfg.model_path)) return 1;
    if (!tau_given) cfg.engine.margingate_tau = cli_default_tau(cfg.model_path, cfg.engine.margingate_tau);
    return mg_server_run(&cfg);
}
