/* `margingate bench` as a user runs it: a tiny run of each kind checks the
 * text table and the JSON record carry their fields (never the timing
 * values, which depend on the machine), plus the one-line errors and exit
 * codes for bad flags. Runs build/margingate. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli_helpers.h"
#include "shared_path.h"

static cJSON *read_json(const char *path) {
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "no JSON written at %s", path);
    static char buf[1 << 17];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    cJSON *o = cJSON_Parse(buf);
    cr_assert_not_null(o, "invalid JSON: %.300s", buf);
    return o;
}

/* The table line of (mode, batch), or NULL. */
static const char *table_line(const char *out, const char *mode, int batch) {
    for (const char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        char m[64];
        int b;
        if (sscanf(l, "%63s %d", m, &b) == 2 && !strcmp(m, mode) && b == batch) return l;
    }
    return NULL;
}

/* Whitespace-separated fields of a table line. */
static int line_fields(const char *line) {
    int n = 0, in = 0;
    for (const char *c = line; *c && *c != '\n'; c++) {
        if (*c != ' ' && !in) n++;
        in = *c != ' ';
    }
    return n;
}

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    cr_assert(cJSON_IsNumber(v), "field %s missing or not a number", k);
    return v->valuedouble;
}

static int is_null(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    cr_assert_not_null(v, "field %s missing", k);
    return cJSON_IsNull(v);
}

static void model_dir(char *buf, size_t n) {
    char dir[1024];
    MG_TEST_SHARED(dir, "models/mg-llama-27m");
    snprintf(buf, n, "%s", dir);
}

Test(cli_bench, table_and_json_fields) {
    char model[1024], cmd[2048], json[64];
    model_dir(model, sizeof model);
    snprintf(json, sizeof json, "/tmp/mg_bench_%d.json", (int)getpid());
    snprintf(cmd, sizeof cmd,
             BIN " bench -m %s --batch 1,2 --new 4 --modes off,margingate --prompt-len 16 --prefill-len 32"
                 " --threads 2 --json %s",
             model, json);
    cmd_result *r = run_cmd(cmd);
    cr_assert_eq(r->rc, 0, "%s", r->err);

    /* Header, column names, one line per (mode, batch), long-prefill line. */
    cr_assert(strstr(r->out, "margingate bench | model ") && strstr(r->out, " | device ") &&
                  strstr(r->out, "| threads 2 |") &&
                  strstr(r->out, "| cpu ") && strstr(r->out, "Z |"),
              "%s", r->out);
    const char *cols[] = {"mode", "batch", "prefill", "decode", "ms/step", "tok/s", "incr", "trigger", "repairs",
                          "rollbk", "verify"};
    for (size_t i = 0; i < sizeof cols / sizeof *cols; i++) cr_assert(strstr(r->out, cols[i]), "no %s", cols[i]);
    const char *modes[] = {"off", "margingate"};
    for (int m = 0; m < 2; m++)
        for (int b = 1; b <= 2; b++) {
            const char *l = table_line(r->out, modes[m], b);
            cr_assert_not_null(l, "no line for %s batch %d:\n%s", modes[m], b, r->out);
            cr_assert_eq(line_fields(l), 13, "13 columns expected: %.200s", l);
        }
    /* off has no increment over itself; margingate has a number there. */
    char mode[32], f[13][32];
    const char *l = table_line(r->out, "off", 1);
    cr_assert_eq(sscanf(l, "%31s %31s %31s %31s %31s %31s", mode, f[0], f[1], f[2], f[3], f[4]), 6);
    cr_assert_str_eq(f[4], "-");
    l = table_line(r->out, "margingate", 2);
    cr_assert_eq(sscanf(l, "%31s %31s %31s %31s %31s %31s %31s", mode, f[0], f[1], f[2], f[3], f[4], f[5]), 7);
    cr_assert_str_neq(f[4], "-");
    cr_assert_str_neq(f[5], "-");
    cr_assert(strstr(r->out, "prefill of one 32-token prompt"), "%s", r->out);

    cJSON *o = read_json(json);
    remove(json);
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(o, "model")));
    /* The default --device auto: the run names the backend it picked. */
    const cJSON *dev = cJSON_GetObjectItem(o, "device");
    cr_assert(cJSON_IsString(dev) && (!strcmp(dev->valuestring, "cpu") || !strcmp(dev->valuestring, "cuda")));
    char want[64];
    snprintf(want, sizeof want, " | device %s | ", dev->valuestring);
    cr_assert(strstr(r->out, want), "table and JSON must name the same device: %s", r->out);
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(o, "date")));
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(o, "cpu")));
    cr_assert_eq(num(o, "threads"), 2);
    const cJSON *cf = cJSON_GetObjectItem(o, "config");
    cr_assert_eq(num(cf, "prompt_len"), 16);
    cr_assert_eq(num(cf, "new_tokens"), 4);
    cr_assert_eq(num(cf, "tau"), 0.5);
    cr_assert_str_eq(cJSON_GetObjectItem(cf, "clock")->valuestring, "wall");
    const cJSON *res = cJSON_GetObjectItem(o, "results");
    cr_assert_eq(cJSON_GetArraySize(res), 4);
    const cJSON *x;
    cJSON_ArrayForEach(x, res) {
        const char *m = cJSON_GetObjectItem(x, "mode")->valuestring;
        int batch = (int)num(x, "batch");
        int off = !strcmp(m, "off");
        cr_assert(off || !strcmp(m, "margingate"), "%s", m);
        cr_assert(num(x, "prefill_tokens_per_s") > 0);
        cr_assert(num(x, "decode_ms_per_step") > 0);
        cr_assert(num(x, "decode_tokens_per_s") > 0);
        cr_assert_eq(num(x, "prefill_tokens"), 16 * batch);
        /* Every request makes exactly 4 tokens: the first in the prefill
         * phase, the others in either phase. */
        cr_assert_eq(num(x, "decode_tokens") + num(x, "prefill_phase_decode_tokens"), 3 * batch);
        cr_assert_eq(num(x, "fast_steps"), 3 * batch);
        cr_assert(num(x, "decode_steps") >= 1);
        (void)num(x, "verify_passes");
        (void)num(x, "repairs");
        (void)num(x, "cpu_util");
        cr_assert_eq(is_null(x, "increment_ms_per_step"), off, "%s batch %d", m, batch);
        cr_assert_eq(is_null(x, "increment_pct"), off);
        cr_assert_eq(is_null(x, "trigger_rate"), off);
        cr_assert(is_null(x, "rolled_back_fraction"));
        if (!off) {
            double t = num(x, "trigger_rate");
            cr_assert(t >= 0 && t <= 1, "trigger rate %g", t);
            cr_assert_eq(num(x, "verified_steps"), round(t * num(x, "fast_steps")));
        }
    }
    const cJSON *lp = cJSON_GetObjectItem(o, "long_prefill");
    cr_assert_eq(cJSON_GetArraySize(lp), 2);
    cJSON_ArrayForEach(x, lp) {
        cr_assert_eq(num(x, "prompt_len"), 32);
        cr_assert(num(x, "prefill_tokens_per_s") > 0);
    }
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "increment_reduction")), 0);
    cJSON_Delete(o);
}

Test(cli_bench, always_llm42_and_increment_reduction) {
    char model[1024], cmd[2048], json[64];
    model_dir(model, sizeof model);
    snprintf(json, sizeof json, "/tmp/mg_bench_r_%d.json", (int)getpid());
    snprintf(cmd, sizeof cmd,
             BIN " bench -m %s --batch 2 --new 3 --modes off,llm42,margingate,margingate-always --prompt-len 8"
                 " --prefill-len 0 --llm42-window 4 --llm42-group 2 --tau 0.25 --threads 1 --clock cpu --json %s",
             model, json);
    cmd_result *r = run_cmd(cmd);
    cr_assert_eq(r->rc, 0, "%s", r->err);
    cr_assert(strstr(r->out, "increment reduction"), "%s", r->out);
    cr_assert(strstr(r->out, "W=4 B=2") && strstr(r->out, "tau 0.25") && strstr(r->out, "| clock cpu"), "%s",
              r->out);
    cr_assert_null(strstr(r->out, "prefill of one"), "--prefill-len 0 skips it: %s", r->out);
    cJSON *o = read_json(json);
    remove(json);
    cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "config"), "clock")->valuestring, "cpu");
    const cJSON *x;
    cJSON_ArrayForEach(x, cJSON_GetObjectItem(o, "results")) {
        const char *m = cJSON_GetObjectItem(x, "mode")->valuestring;
        if (!strcmp(m, "margingate-always")) {
            cr_assert_eq(num(x, "trigger_rate"), 1.0);
            cr_assert_eq(num(x, "verified_steps"), num(x, "fast_steps"));
        } else if (!strcmp(m, "llm42")) {
            double f = num(x, "rolled_back_fraction");
            cr_assert(f >= 0 && f <= 1);
            cr_assert(num(x, "verify_passes") >= 1);
            cr_assert(is_null(x, "trigger_rate"));
        }
    }
    const cJSON *red = cJSON_GetObjectItem(o, "increment_reduction");
    cr_assert_eq(cJSON_GetArraySize(red), 1);
    cr_assert_eq(num(cJSON_GetArrayItem(red, 0), "batch"), 2);
    cr_assert_not_null(cJSON_GetObjectItem(cJSON_GetArrayItem(red, 0), "always_over_margingate"));
    cJSON_Delete(o);
}

Test(cli_bench, device_cpu_named_in_table_and_json) {
    char model[1024], cmd[2048], json[64];
    model_dir(model, sizeof model);
    snprintf(json, sizeof json, "/tmp/mg_bench_d_%d.json", (int)getpid());
    snprintf(cmd, sizeof cmd,
             BIN " bench -m %s --device cpu --batch 1 --new 2 --modes off --prompt-len 8 --prefill-len 0"
                 " --threads 1 --json %s",
             model, json);
    cmd_result *r = run_cmd(cmd);
    cr_assert_eq(r->rc, 0, "%s", r->err);
    cr_assert(strstr(r->out, "margingate bench | model ") && strstr(r->out, " | device cpu | threads 1 |"), "%s",
              r->out);
    cr_assert_not_null(table_line(r->out, "off", 1), "%s", r->out);
    cJSON *o = read_json(json);
    remove(json);
    cr_assert_str_eq(cJSON_GetObjectItem(o, "device")->valuestring, "cpu");
    cJSON_Delete(o);
    /* --kv-mb sizes the pool: 1 MiB holds 8 requests of 10 positions, and
     * the JSON records it. */
    snprintf(cmd, sizeof cmd,
             BIN " bench -m %s --device cpu --batch 8 --new 2 --modes off --prompt-len 8 --prefill-len 0"
                 " --threads 1 --kv-mb 1 --json %s",
             model, json);
    r = run_cmd(cmd);
    cr_assert_eq(r->rc, 0, "%s", r->err);
    o = read_json(json);
    remove(json);
    cr_assert_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "config"), "kv_mib")->valueint, 1);
    cJSON_Delete(o);
}

Test(cli_bench, dataset_prompts) {
    char model[1024], data[1024], cmd[4096];
    model_dir(model, sizeof model);
    MG_TEST_SHARED(data, "datasets/gsm8k_test.jsonl");
    snprintf(cmd, sizeof cmd, BIN " bench -m %s --dataset %s --batch 1 --new 2 --modes off --prefill-len 0", model,
             data);
    cmd_result *r = run_cmd(cmd);
    cr_assert_eq(r->rc, 0, "%s", r->err);
    cr_assert(strstr(r->out, "gsm8k_test.jsonl)"), "%s", r->out);
    cr_assert_not_null(table_line(r->out, "off", 1), "%s", r->out);
}

Test(cli_bench, bad_flags_and_missing_model) {
    const char *bad[] = {"--batch 0", "--batch 1,x", "--modes off,fast", "--modes off,off", "--new 1",
                         "--tau -1", "--prompt-len 0", "--llm42-window 0", "--clock gpu", "--device tpu",
                         "--device", "--frobnicate", "extra", "--kv-mb 0", "--llm42-kernels slow",
                         "--tensor-parallel 0"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char cmd[256];
        snprintf(cmd, sizeof cmd, BIN " bench -m /nonexistent %s", bad[i]);
        cmd_result *r = run_cmd(cmd);
        cr_assert_eq(r->rc, 2, "%s: rc %d", bad[i], r->rc);
        cr_assert(r->err[0], "%s: an error message is expected", bad[i]);
    }
    cmd_result *r = run_cmd(BIN " bench -m /nonexistent --kv-mb 0");
    cr_assert_str_eq(r->err, "margingate bench: invalid value '0' for --kv-mb\n");
    r = run_cmd(BIN " bench -m /nonexistent/model --batch 1");
    cr_assert_eq(r->rc, 1);
    cr_assert(strstr(r->err, "/nonexistent/model") && strstr(r->err, "-m"), "%s", r->err);
    cr_assert_eq(strchr(r->err, '\n'), r->err + strlen(r->err) - 1, "one line expected: %s", r->err);
    r = run_cmd(BIN " bench --help");
    cr_assert_eq(r->rc, 0);
    cr_assert(strstr(r->out, "--modes") && strstr(r->out, "--prefill-len") && strstr(r->out, "--device") &&
                  strstr(r->out, "default"),
              "%s", r->out);
}
