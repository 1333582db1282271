/* margingate bench: latency and throughput of each determinism mode.
 *
 * For every (mode, batch) pair a fresh engine runs `batch` greedy requests
 * (ignore_eos, so each produces exactly --new tokens) added at once. The run
 * has two timed phases:
 * - prefill phase: engine steps until every request has a visible first
 *   token. With more prompt rows than a forward pass holds (max_batch_rows),
 *   prefill spans several steps, and requests that already have their first
 *   token decode in those steps; those tokens belong to this phase.
 * - decode phase: engine steps from there until every request has finished.
 * Decode latency per step = decode wall time / decode steps; decode tokens/s
 * = visible tokens produced in the decode phase / decode wall time (for
 * LLM-42, rolled-back work is in the time but not in the tokens). The
 * increment of a mode is its decode ms/step minus off's at the same batch.
 * "margingate-always" is MarginGate with tau = infinity (every step
 * verified); the increment reduction is increment(always) /
 * increment(margingate), the ratio the MarginGate paper reports.
 *
 * A separate single-request run per mode times the prefill of one longer
 * prompt (--prefill-len) up to its first token. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../engine/model_dir.h"
#include "../sched/engine.h"
#include "../study/dataset.h"
#include "../util/timer.h"
#include "cli.h"

#define MAX_MODES 8
#define MAX_BATCHES 32
#define MAX_BATCH 1024

static void usage(FILE *f) {
    fprintf(f,
            "usage: margingate bench [-m MODEL] [options]\n"
            "  --modes LIST         comma-separated modes among off, invariant, llm42, margingate,\n"
            "                       margingate-always (tau = infinity: every step verified)\n"
            "                       (default off,invariant,llm42,margingate,margingate-always)\n"
            "  --batch LIST         comma-separated batch sizes, 1..%d (default 1,8,32)\n"
            "  --prompt-len N       prompt tokens per request (default 64)\n"
            "  --new N              generated tokens per request, >= 2 (default 64)\n"
            "  --prefill-len N      also time the prefill of one N-token prompt per mode\n"
            "                       (batch 1; default 512; 0 skips it)\n"
            "  --tau T              MarginGate margin threshold (default 0.5)\n"
            "  --llm42-window W     LLM-42 tokens per verify entry (default 64)\n"
            "  --llm42-group B      LLM-42 entries per verify pass (default 8)\n"
            "  --kv-mb N            KV cache pool in MiB per engine (default 256; over all GPUs\n"
            "                       with --tensor-parallel)\n"
            "  --llm42-kernels K    fast (default, as the paper) or invariant: LLM-42's prefill and\n"
            "                       verify kernels (invariant: same tokens for any --tensor-parallel)\n"
            "  --dataset NAME|FILE  prompts from gsm8k, math500, humaneval, sharegpt (in\n"
            "                       $MARGINGATE_DATASETS or ../shared/datasets) or a .jsonl/.json\n"
            "                       file, formatted as `margingate flips` does; request k takes\n"
            "                       prompts k, k+1, ... concatenated and cut to exactly --prompt-len\n"
            "                       tokens. Default: synthetic prompts, BOS then pseudo-random\n"
            "                       non-special ids (the same on every run)\n"
            "  --device D           cpu, cuda or auto: where to compute (default auto: cuda when\n"
            "                       a GPU is present, else cpu); the table and JSON name it\n"
            "  --tensor-parallel N  split the model over N GPUs (NCCL; with --device cpu: N\n"
            "                       CPU ranks, for tests)\n"
            "  --threads N          OpenMP threads\n"
            "  --clock wall|cpu     time the phases by wall clock (default) or by this process's CPU\n"
            "                       time; cpu with --threads 1 stays meaningful on a machine that\n"
            "                       other processes keep busy (with more threads it counts their\n"
            "                       spinning at barriers too)\n"
            "  --json FILE          also write the results as JSON to FILE\n"
            "Prints an aligned table on stdout, progress on stderr. The default run (5 modes x\n"
            "3 batches, 64 + 64 tokens) takes about 2-3 minutes on 2 CPU cores with mg-llama-27m.\n",
            MAX_BATCH);
}

/* ---- options ------------------------------------------------------------- */

typedef struct {
    char name[24];
    mg_mode mode;
    int always; /* margingate with tau = infinity */
} mode_spec;

/* Parses "off,llm42,..." into specs; returns 0 on success. */
static int parse_modes(const char *s, mode_spec *out, int *n) {
    *n = 0;
    char buf[256];
    if (strlen(s) >= sizeof buf) return -1;
    strcpy(buf, s);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (*n == MAX_MODES) return -1;
        mode_spec m = {0};
        if (!strcmp(t, "margingate-always")) {
            m.mode = MG_MODE_MARGINGATE;
            m.always = 1;
        } else if (mg_mode_parse(t, &m.mode) != 0) {
            return -1;
        }
        snprintf(m.name, sizeof m.name, "%s", t);
        for (int i = 0; i < *n; i++)
            if (!strcmp(out[i].name, m.name)) return -1;
        out[(*n)++] = m;
    }
    return *n > 0 ? 0 : -1;
}

/* Parses "1,8,32" into batch sizes in [1, MAX_BATCH]; returns 0 on success. */
static int parse_batches(const char *s, int *out, int *n) {
    *n = 0;
    char buf[256];
    if (strlen(s) >= sizeof buf) return -1;
    strcpy(buf, s);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int b;
        if (*n == MAX_BATCHES || cli_parse_int(t, &b) || b < 1 || b > MAX_BATCH) return -1;
        out[(*n)++] = b;
    }
    return *n > 0 ? 0 : -1;
}

/* ---- prompts --------------------------------------------------------------- */

/* Fills out[0..len) with prompt k. Synthetic (ds NULL): BOS (if any), then
 * ids drawn from a fixed LCG seeded with k, skipping special tokens.
 * Dataset: prompts k, k+1, ... (cyclically) concatenated, each after the
 * first without its leading BOS, cut to len tokens. Returns 0 on success. */
static int make_prompt(const mg_tokenizer *tok, int vocab, const mg_dataset *ds, int k, int len, int32_t *out) {
    int n = 0;
    int32_t bos = mg_tokenizer_bos_id(tok);
    if (!ds) {
        if (bos >= 0 && bos < vocab) out[n++] = bos;
        uint32_t s = 2654435761u * (uint32_t)(k + 1);
        while (n < len) {
            s = s * 1664525u + 1013904223u;
            int32_t id = (int32_t)((s >> 8) % (uint32_t)vocab);
            if (!mg_tokenizer_is_special(tok, id)) out[n++] = id;
        }
        return 0;
    }
    for (int r = 0; n < len; r++) {
        if (r > 100000) return -1; /* prompts that are nothing but BOS */
        const int32_t *ids = ds->ids[(k + r) % ds->n];
        int n_ids = ds->n_ids[(k + r) % ds->n];
        for (int i = r > 0 && n_ids > 0 && ids[0] == bos; i < n_ids && n < len; i++) {
            if (ids[i] < 0 || ids[i] >= vocab) return -1;
            out[n++] = ids[i];
        }
    }
    return 0;
}

/* ---- one run ----------------------------------------------------------------- */

typedef struct {
    const mode_spec *mode;
    int batch;
    int prefill_tokens, prefill_steps, prefill_decode_tokens;
    double prefill_s;
    int decode_steps, decode_tokens;
    double decode_s;
    mg_mode_counters c;
    long preemptions;
    double cpu_util;        /* process CPU time / (wall time * threads) over the run; well below 1 means
                             * other processes took cores (OpenMP threads then wait on each other) */
    int has_off;            /* off ran at this batch: the increment is known */
    double incr_ms, incr_pct;
} bench_row;

typedef struct {
    const mg_model *model;
    const mg_backend_ops *backend;
    mg_engine_config cfg;
    float tau;
    int prompt_len, n_new;
    int threads;
    int cpu_clock; /* time phases with process CPU time instead of wall time */
} bench_ctx;

/* CPU time of this process (all threads), in seconds. */
static double cpu_time_s(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return 0;
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Runs `batch` requests of `mode` with prompts[k * prompt_len ...] and fills
 * *row. n_new == 1 times the prefill only. Returns 0, or 1 after printing a
 * one-line error. */
static int run_case(const bench_ctx *b, const mode_spec *mode, int batch, const int32_t *prompts, int prompt_len,
                    int n_new, bench_row *row) {
    mg_engine_config cfg = b->cfg;
    cfg.margingate_tau = mode->always ? INFINITY : b->tau;
    if (cfg.max_running < batch) cfg.max_running = batch;
    if (cfg.max_batch_rows < batch) cfg.max_batch_rows = batch;
    mg_engine *e = NULL;
    int *ids = malloc((size_t)batch * sizeof *ids);
    int rc = 1;
    if (!ids) {
        fprintf(stderr, "margingate bench: out of memory\n");
        return 1;
    }
    if (mg_engine_init(&e, b->model, b->backend, &cfg) != MG_OK) {
        cli_fail("bench", "cannot create the engine");
        goto done;
    }
    mg_request_params p = {.mode = mode->mode, .max_new_tokens = n_new,
                           .sampling = {.temperature = 0, .top_k = 0, .top_p = 1.0f}, .ignore_eos = 1};
    for (int k = 0; k < batch; k++)
        if (mg_engine_add(e, prompts + (size_t)k * prompt_len, prompt_len, &p, &ids[k]) != MG_OK) {
            cli_fail("bench", "cannot add a request");
            goto done;
        }
    *row = (bench_row){.mode = mode, .batch = batch, .prefill_tokens = batch * prompt_len};
    int visible = 0;
    double c0 = cpu_time_s(), w0 = mg_now_s();
    for (int all_first = 0; !all_first;) {
        if (mg_engine_step(e) != MG_OK) {
            cli_fail("bench", "engine step failed");
            goto done;
        }
        row->prefill_steps++;
        all_first = 1;
        visible = 0;
        for (int k = 0; k < batch; k++) {
            mg_request_view v;
            mg_engine_view(e, ids[k], &v);
            if (v.finish == MG_FINISH_ERROR || v.finish == MG_FINISH_CANCELLED) {
                fprintf(stderr, "margingate bench: %s batch %d: request %d failed\n", mode->name, batch, k);
                goto done;
            }
            if (v.n_visible < 1) all_first = 0;
            visible += v.n_visible;
        }
        if (row->prefill_steps > 1000000) {
            fprintf(stderr, "margingate bench: %s batch %d: prefill made no progress\n", mode->name, batch);
            goto done;
        }
    }
    double c1 = cpu_time_s(), w1 = mg_now_s();
    row->prefill_s = b->cpu_clock ? c1 - c0 : w1 - w0;
    row->prefill_decode_tokens = visible - batch;
    while (mg_engine_pending(e) > 0) {
        if (mg_engine_step(e) != MG_OK) {
            cli_fail("bench", "engine step failed");
            goto done;
        }
        if (++row->decode_steps > 1000000) {
            fprintf(stderr, "margingate bench: %s batch %d: decode made no progress\n", mode->name, batch);
            goto done;
        }
    }
    double c2 = cpu_time_s(), w2 = mg_now_s();
    row->decode_s = b->cpu_clock ? c2 - c1 : w2 - w1;
    row->cpu_util = (c2 - c0) / ((w2 - w0) * b->threads);
    for (int k = 0; k < batch; k++) {
        mg_request_view v;
        mg_engine_view(e, ids[k], &v);
        if (v.finish != MG_FINISH_LENGTH || v.n_visible != n_new) {
            fprintf(stderr, "margingate bench: %s batch %d: request %d ended with %d of %d tokens\n", mode->name,
                    batch, k, v.n_visible, n_new);
            goto done;
        }
    }
    row->decode_tokens = batch * n_new - visible;
    row->c = mg_engine_totals(e)[mode->mode];
    row->preemptions = mg_engine_preemptions(e);
    rc = 0;
done:
    mg_engine_free(e);
    free(ids);
    return rc;
}

/* ---- derived numbers ------------------------------------------------------------ */

static double ratio(double a, double b) { return b > 0 ? a / b : NAN; }
static double ms_per_step(const bench_row *r) { return ratio(r->decode_s * 1e3, r->decode_steps); }
static double decode_tps(const bench_row *r) { return ratio(r->decode_tokens, r->decode_s); }
static double prefill_tps(const bench_row *r) { return ratio(r->prefill_tokens, r->prefill_s); }
static double trigger_rate(const bench_row *r) { return ratio((double)r->c.verified_steps, (double)r->c.steps); }
static int generated(const bench_row *r, int n_new) { return r->batch * n_new; }

static const bench_row *find_row(const bench_row *rows, int n, int batch, const char *mode) {
    for (int i = 0; i < n; i++)
        if (rows[i].batch == batch && !strcmp(rows[i].mode->name, mode)) return &rows[i];
    return NULL;
}

/* increment(always) / increment(margingate) at `batch`; NAN unless both rows
 * exist and both increments are positive. */
static double incr_reduction(const bench_row *rows, int n, int batch) {
    const bench_row *a = find_row(rows, n, batch, "margingate-always");
    const bench_row *g = find_row(rows, n, batch, "margingate");
    if (!a || !g || !a->has_off || !g->has_off || !(a->incr_ms > 0) || !(g->incr_ms > 0)) return NAN;
    return a->incr_ms / g->incr_ms;
}

/* ---- output --------------------------------------------------------------------- */

typedef struct {
    const char *model_path;
    int threads;
    char date[32];
    char cpu[128];
    const char *prompts; /* "synthetic" or the dataset argument */
    double load_start, load_end; /* 1-minute load average before and after the runs */
} bench_header;

/* The 1-minute load average, or NAN. */
static double load_avg(void) {
    double v = NAN;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f && fscanf(f, "%lf", &v) != 1) v = NAN;
    if (f) fclose(f);
    return v;
}

static void cpu_model(char *out, size_t n) {
    snprintf(out, n, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10)) continue;
        char *c = strchr(line, ':');
        if (!c) break;
        c++;
        while (*c == ' ' || *c == '\t') c++;
        c[strcspn(c, "\n")] = '\0';
        snprintf(out, n, "%s", c);
        break;
    }
    fclose(f);
}

/* Prints a number right-aligned in `w` columns, or "-" when NAN. */
static void cell(int w, int prec, double v) {
    if (isnan(v)) printf(" %*s", w, "-");
    else printf(" %*.*f", w, prec, v);
}

static void print_table(const bench_header *h, const bench_ctx *b, const bench_row *rows, int n_rows,
                        const int *batches, int n_batches, const bench_row *long_rows, int n_long, int prefill_len) {
    printf("margingate bench | model %s | device %s | threads %d | %s | cpu %s | load %.2f -> %.2f | clock %s\n",
           h->model_path, b->backend->name, h->threads, h->date, h->cpu, h->load_start, h->load_end,
           b->cpu_clock ? "cpu" : "wall");
    printf("prompt %d tokens (%s), %d new tokens per request, greedy, ignore_eos | tau %g | llm42 W=%d B=%d\n",
           b->prompt_len, h->prompts, b->n_new, b->tau, b->cfg.llm42_window, b->cfg.llm42_group);
    printf("%-17s %5s %9s %8s %8s %8s %8s %7s %7s %7s %7s %7s %5s\n", "mode", "batch", "prefill", "decode",
           "decode", "incr", "incr", "trigger", "repairs", "rollbk", "verify", "preempt", "cpu");
    printf("%-17s %5s %9s %8s %8s %8s %8s %7s %7s %7s %7s %7s %5s\n", "", "", "tok/s", "ms/step", "tok/s", "ms/step",
           "%", "%", "", "%", "rows", "", "%");
    for (int i = 0; i < n_rows; i++) {
        const bench_row *r = &rows[i];
        int mg = r->mode->mode == MG_MODE_MARGINGATE, l42 = r->mode->mode == MG_MODE_LLM42;
        printf("%-17s %5d", r->mode->name, r->batch);
        cell(9, 1, prefill_tps(r));
        cell(8, 3, ms_per_step(r));
        cell(8, 1, decode_tps(r));
        cell(8, 3, r->has_off && r->mode->mode != MG_MODE_OFF ? r->incr_ms : NAN);
        cell(8, 1, r->has_off && r->mode->mode != MG_MODE_OFF ? r->incr_pct : NAN);
        cell(7, 2, mg ? 100.0 * trigger_rate(r) : NAN);
        if (mg || l42) printf(" %7ld", r->c.repairs);
        else printf(" %7s", "-");
        cell(7, 2, l42 ? 100.0 * ratio((double)r->c.rolled_back, generated(r, b->n_new)) : NAN);
        if (mg || l42) printf(" %7ld", r->c.verify_passes);
        else printf(" %7s", "-");
        printf(" %7ld", r->preemptions);
        cell(5, 0, 100.0 * r->cpu_util);
        printf("\n");
    }
    int any = 0;
    for (int i = 0; i < n_batches; i++) {
        double red = incr_reduction(rows, n_rows, batches[i]);
        if (!find_row(rows, n_rows, batches[i], "margingate") ||
            !find_row(rows, n_rows, batches[i], "margingate-always"))
            continue;
        if (!any) printf("increment reduction, increment(margingate-always) / increment(margingate):");
        any = 1;
        if (isnan(red)) printf(" batch %d -", batches[i]);
        else printf(" batch %d %.2fx", batches[i], red);
    }
    if (any) printf("\n");
    if (n_long > 0) {
        printf("prefill of one %d-token prompt (batch 1, to the first token):", prefill_len);
        for (int i = 0; i < n_long; i++)
            printf("%s %s %.1f tok/s", i ? "," : "", long_rows[i].mode->name, prefill_tps(&long_rows[i]));
        printf("\n");
    }
    printf("prefill tok/s: prompt tokens / prefill-phase time (steps until every request has its first token);\n"
           "decode: steps after that; incr: decode ms/step minus off's at the same batch; trigger: verified /\n"
           "fast decode steps; rollbk: rolled-back / generated tokens; verify rows: the engine's verify_passes\n"
           "counter, summed over requests (a pass verifying 8 requests counts 8); preempt: KV swap-outs;\n"
           "cpu: process CPU time / (wall time x threads), well below 100 means other processes took cores.\n");
    if (b->cpu_clock)
        printf("clock cpu: every time above is this process's CPU time, not wall time.\n");
}

/* Adds v, or null when NAN. */
static void json_num(cJSON *o, const char *k, double v) {
    if (isnan(v) || isinf(v)) cJSON_AddNullToObject(o, k);
    else cJSON_AddNumberToObject(o, k, v);
}

static int write_json(const char *path, const bench_header *h, const bench_ctx *b, const bench_row *rows,
                      int n_rows, const int *batches, int n_batches, const bench_row *long_rows, int n_long,
                      int prefill_len) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", h->model_path);
    cJSON_AddStringToObject(o, "device", b->backend->name);
    cJSON_AddNumberToObject(o, "threads", h->threads);
    cJSON_AddStringToObject(o, "date", h->date);
    cJSON_AddStringToObject(o, "cpu", h->cpu);
    json_num(o, "load_avg_start", h->load_start);
    json_num(o, "load_avg_end", h->load_end);
    cJSON *cf = cJSON_AddObjectToObject(o, "config");
    cJSON_AddNumberToObject(cf, "prompt_len", b->prompt_len);
    cJSON_AddNumberToObject(cf, "new_tokens", b->n_new);
    cJSON_AddStringToObject(cf, "prompts", h->prompts);
    cJSON_AddNumberToObject(cf, "tau", b->tau);
    cJSON_AddNumberToObject(cf, "llm42_window", b->cfg.llm42_window);
    cJSON_AddNumberToObject(cf, "llm42_group", b->cfg.llm42_group);
    cJSON_AddNumberToObject(cf, "max_batch_rows", b->cfg.max_batch_rows);
    cJSON_AddNumberToObject(cf, "kv_block_size", b->cfg.kv_block_size);
    cJSON_AddNumberToObject(cf, "kv_mib", (double)(b->cfg.kv_bytes >> 20));
    cJSON_AddNumberToObject(cf, "prefill_len", prefill_len);
    cJSON_AddStringToObject(cf, "clock", b->cpu_clock ? "cpu" : "wall");
    cJSON *res = cJSON_AddArrayToObject(o, "results");
    for (int i = 0; i < n_rows; i++) {
        const bench_row *r = &rows[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "mode", r->mode->name);
        cJSON_AddNumberToObject(x, "batch", r->batch);
        cJSON_AddNumberToObject(x, "prefill_tokens", r->prefill_tokens);
        cJSON_AddNumberToObject(x, "prefill_steps", r->prefill_steps);
        cJSON_AddNumberToObject(x, "prefill_phase_decode_tokens", r->prefill_decode_tokens);
        cJSON_AddNumberToObject(x, "prefill_ms", r->prefill_s * 1e3);
        json_num(x, "prefill_tokens_per_s", prefill_tps(r));
        cJSON_AddNumberToObject(x, "decode_steps", r->decode_steps);
        cJSON_AddNumberToObject(x, "decode_tokens", r->decode_tokens);
        cJSON_AddNumberToObject(x, "decode_ms", r->decode_s * 1e3);
        json_num(x, "decode_ms_per_step", ms_per_step(r));
        json_num(x, "decode_tokens_per_s", decode_tps(r));
        int inc = r->has_off && r->mode->mode != MG_MODE_OFF;
        json_num(x, "increment_ms_per_step", inc ? r->incr_ms : NAN);
        json_num(x, "increment_pct", inc ? r->incr_pct : NAN);
        cJSON_AddNumberToObject(x, "fast_steps", (double)r->c.steps);
        cJSON_AddNumberToObject(x, "verified_steps", (double)r->c.verified_steps);
        cJSON_AddNumberToObject(x, "repairs", (double)r->c.repairs);
        cJSON_AddNumberToObject(x, "rolled_back", (double)r->c.rolled_back);
        cJSON_AddNumberToObject(x, "verify_passes", (double)r->c.verify_passes);
        cJSON_AddNumberToObject(x, "verify_ms", r->c.verify_s * 1e3);
        json_num(x, "trigger_rate", r->mode->mode == MG_MODE_MARGINGATE ? trigger_rate(r) : NAN);
        json_num(x, "rolled_back_fraction",
                 r->mode->mode == MG_MODE_LLM42 ? ratio((double)r->c.rolled_back, generated(r, b->n_new)) : NAN);
        cJSON_AddNumberToObject(x, "preemptions", (double)r->preemptions);
        json_num(x, "cpu_util", r->cpu_util);
        cJSON_AddItemToArray(res, x);
    }
    cJSON *red = cJSON_AddArrayToObject(o, "increment_reduction");
    for (int i = 0; i < n_batches; i++) {
        if (!find_row(rows, n_rows, batches[i], "margingate") ||
            !find_row(rows, n_rows, batches[i], "margingate-always"))
            continue;
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "batch", batches[i]);
        json_num(x, "always_over_margingate", incr_reduction(rows, n_rows, batches[i]));
        cJSON_AddItemToArray(red, x);
    }
    cJSON *lp = cJSON_AddArrayToObject(o, "long_prefill");
    for (int i = 0; i < n_long; i++) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "mode", long_rows[i].mode->name);
        cJSON_AddNumberToObject(x, "prompt_len", prefill_len);
        cJSON_AddNumberToObject(x, "prefill_steps", long_rows[i].prefill_steps);
        cJSON_AddNumberToObject(x, "prefill_ms", long_rows[i].prefill_s * 1e3);
        json_num(x, "prefill_tokens_per_s", prefill_tps(&long_rows[i]));
        cJSON_AddItemToArray(lp, x);
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    FILE *f = s ? fopen(path, "w") : NULL;
    int ok = f && fputs(s, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f) != 0) ok = 0;
    free(s);
    if (!ok) {
        fprintf(stderr, "margingate bench: cannot write %s\n", path);
        return 1;
    }
    return 0;
}

/* ---- entry point ------------------------------------------------------------- */

int cmd_bench(int argc, char **argv) {
    enum { O_MODES = 256, O_BATCH, O_PROMPT_LEN, O_NEW, O_PREFILL_LEN, O_TAU, O_W, O_B, O_THREADS, O_JSON,
           O_DATASET, O_CLOCK, O_DEVICE, O_TP, O_L42K, O_KV };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},         {"modes", required_argument, 0, O_MODES},
        {"batch", required_argument, 0, O_BATCH},     {"prompt-len", required_argument, 0, O_PROMPT_LEN},
        {"new", required_argument, 0, O_NEW},         {"prefill-len", required_argument, 0, O_PREFILL_LEN},
        {"tau", required_argument, 0, O_TAU},         {"llm42-window", required_argument, 0, O_W},
        {"llm42-group", required_argument, 0, O_B},   {"threads", required_argument, 0, O_THREADS},
        {"llm42-kernels", required_argument, 0, O_L42K}, {"kv-mb", required_argument, 0, O_KV},
        {"json", required_argument, 0, O_JSON},       {"dataset", required_argument, 0, O_DATASET},
        {"clock", required_argument, 0, O_CLOCK},     {"device", required_argument, 0, O_DEVICE},
        {"tensor-parallel", required_argument, 0, O_TP},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *model_flag = NULL, *json_path = NULL, *dataset = NULL, *device = "auto";
    int tensor_parallel = 1;
    mode_spec modes[MAX_MODES];
    int n_modes = 0, batches[MAX_BATCHES], n_batches = 0, threads = 0, c;
    parse_modes("off,invariant,llm42,margingate,margingate-always", modes, &n_modes);
    parse_batches("1,8,32", batches, &n_batches);
    bench_ctx b = {.cfg = mg_engine_config_default(), .tau = 0.5f, .prompt_len = 64, .n_new = 64};
    int prefill_len = 512;
    optind = 1;
    int li = -1;
    while ((c = getopt_long(argc, argv, "m:h", opts, &li)) != -1) {
        int bad = 0;
        switch (c) {
        case 'm': model_flag = optarg; break;
        case O_MODES: bad = parse_modes(optarg, modes, &n_modes); break;
        case O_BATCH: bad = parse_batches(optarg, batches, &n_batches); break;
        case O_PROMPT_LEN: bad = cli_parse_int(optarg, &b.prompt_len) || b.prompt_len < 1; break;
        case O_NEW: bad = cli_parse_int(optarg, &b.n_new) || b.n_new < 2; break;
        case O_PREFILL_LEN: bad = cli_parse_int(optarg, &prefill_len) || prefill_len < 0; break;
        case O_TAU: bad = cli_parse_float(optarg, &b.tau) || b.tau < 0; break;
        case O_W: bad = cli_parse_int(optarg, &b.cfg.llm42_window) || b.cfg.llm42_window < 1; break;
        case O_B: bad = cli_parse_int(optarg, &b.cfg.llm42_group) || b.cfg.llm42_group < 1; break;
        case O_L42K: bad = cli_parse_kernels(optarg, &b.cfg.llm42_kernels); break;
        case O_KV: {
            int mb;
            bad = cli_parse_int(optarg, &mb) || mb < 1;
            if (!bad) b.cfg.kv_bytes = (size_t)mb << 20;
            break;
        }
        case O_THREADS: bad = cli_parse_int(optarg, &threads) || threads < 1; break;
        case O_JSON: json_path = optarg; break;
        case O_DATASET: dataset = optarg; break;
        case O_DEVICE: device = optarg; break;
        case O_TP:
            if (cli_parse_tensor_parallel("bench", optarg, &tensor_parallel)) return 2;
            break;
        case O_CLOCK:
            if (!strcmp(optarg, "wall")) b.cpu_clock = 0;
            else if (!strcmp(optarg, "cpu")) b.cpu_clock = 1;
            else bad = 1;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            fprintf(stderr, "margingate bench: invalid value '%s' for --%s\n", optarg, li >= 0 ? opts[li].name : "?");
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "margingate bench: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    int dev_rc = cli_backend("bench", device, tensor_parallel, &b.backend);
    if (dev_rc) return dev_rc;
    cli_set_threads(threads);

    bench_header h = {.threads = omp_get_max_threads(), .prompts = dataset ? dataset : "synthetic"};
    time_t now = time(NULL);
    strftime(h.date, sizeof h.date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    cpu_model(h.cpu, sizeof h.cpu);
    h.model_path = cli_model_path(model_flag);
    h.load_start = load_avg();
    b.threads = h.threads;

    int rc = 1, max_batch = 0, n_rows = 0, n_long = 0;
    mg_model *model = NULL;
    const mg_weights *pinned = NULL; /* the device's weights, held for the run */
    mg_tokenizer *tok = NULL;
    mg_dataset ds = {0};
    int32_t *prompts = NULL, *long_prompt = NULL;
    bench_row *rows = NULL, long_rows[MAX_MODES];
    mg_model_format format;
    for (int i = 0; i < n_batches; i++)
        if (batches[i] > max_batch) max_batch = batches[i];
    if (cli_open_model("bench", h.model_path, &model, &tok, &format)) goto done;
    /* One reference for the whole run, so the engine of each mode shares
     * one copy of the weights on the device instead of uploading them. */
    if (b.backend->weights_acquire(&pinned, model) != MG_OK) {
        cli_fail("bench", "cannot place the weights on the device");
        goto done;
    }
    if (dataset && mg_dataset_load(dataset, tok, 0, 0, &ds) != MG_OK) {
        cli_fail("bench", "cannot load the dataset");
        goto done;
    }
    if (dataset && ds.n == 0) {
        fprintf(stderr, "margingate bench: the dataset %s has no prompts\n", dataset);
        goto done;
    }
    const mg_config *mc = &model->config;
    if ((long)b.prompt_len + b.n_new > mc->max_seq_len || (long)prefill_len + 1 > mc->max_seq_len) {
        fprintf(stderr, "margingate bench: prompt + new tokens exceed the model's context of %d\n", mc->max_seq_len);
        goto done;
    }
    b.model = model;
    b.cfg.precision = format == MG_FORMAT_LLAMA2C ? MG_ACT_FP32 : MG_ACT_BF16;
    prompts = malloc((size_t)max_batch * b.prompt_len * sizeof *prompts);
    long_prompt = malloc((size_t)(prefill_len + 1) * sizeof *long_prompt);
    rows = calloc((size_t)n_modes * n_batches, sizeof *rows);
    if (!prompts || !long_prompt || !rows) {
        fprintf(stderr, "margingate bench: out of memory\n");
        goto done;
    }
    for (int k = 0; k < max_batch; k++)
        if (make_prompt(tok, mc->vocab_size, dataset ? &ds : NULL, k, b.prompt_len,
                        prompts + (size_t)k * b.prompt_len)) {
            fprintf(stderr, "margingate bench: cannot build prompt %d from the dataset\n", k);
            goto done;
        }
    if (prefill_len > 0 && make_prompt(tok, mc->vocab_size, dataset ? &ds : NULL, 0, prefill_len, long_prompt)) {
        fprintf(stderr, "margingate bench: cannot build the %d-token prompt from the dataset\n", prefill_len);
        goto done;
    }

    for (int bi = 0; bi < n_batches; bi++) {
        for (int mi = 0; mi < n_modes; mi++) {
            bench_row *r = &rows[n_rows];
            if (run_case(&b, &modes[mi], batches[bi], prompts, b.prompt_len, b.n_new, r)) goto done;
            n_rows++;
            fprintf(stderr, "margingate bench: %-17s batch %-4d prefill %8.1f ms, decode %8.1f ms\n", modes[mi].name,
                    batches[bi], r->prefill_s * 1e3, r->decode_s * 1e3);
        }
        const bench_row *off = find_row(rows, n_rows, batches[bi], "off");
        for (int i = 0; off && i < n_rows; i++) {
            bench_row *r = &rows[i];
            if (r->batch != batches[bi]) continue;
            r->has_off = 1;
            r->incr_ms = ms_per_step(r) - ms_per_step(off);
            r->incr_pct = 100.0 * r->incr_ms / ms_per_step(off);
        }
    }
    for (int mi = 0; prefill_len > 0 && mi < n_modes; mi++) {
        bench_row *r = &long_rows[n_long];
        /* n_new = 1: the request finishes with its first token. */
        if (run_case(&b, &modes[mi], 1, long_prompt, prefill_len, 1, r)) goto done;
        n_long++;
        fprintf(stderr, "margingate bench: %-17s prefill of %d tokens %8.1f ms\n", modes[mi].name, prefill_len,
                r->prefill_s * 1e3);
    }
    h.load_end = load_avg();
    print_table(&h, &b, rows, n_rows, batches, n_batches, long_rows, n_long, prefill_len);
    fflush(stdout);
    if (json_path && write_json(json_path, &h, &b, rows, n_rows, batches, n_batches, long_rows, n_long, prefill_len))
        goto done;
    rc = 0;
done:
    free(rows);
    free(prompts);
    free(long_prompt);
    mg_dataset_free(&ds);
    mg_tokenizer_free(tok);
    if (pinned) b.backend->weights_release(model);
    mg_model_free(model);
    return rc;
}
