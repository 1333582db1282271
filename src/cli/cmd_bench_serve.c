/* margingate bench-serve: a load client for a running `margingate serve`
 * (or any OpenAI-compatible server), after vLLM's `bench serve`.
 *
 * Prompts come from ShareGPT (first human turn; the first reply's token
 * count is the output length unless --max-tokens is given) or are random
 * token ids. Requests are sent as streaming completions with Poisson
 * arrivals at --request-rate (or all at once with inf), at most
 * --max-concurrency at a time, once per determinism mode. Reported per mode:
 * TTFT, TPOT, ITL and end-to-end latency (mean, median, p99), request and
 * token throughput, and what determinism cost on the server (verified
 * steps, repairs, rolled-back tokens from /metrics). */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../engine/model_dir.h"
#include "../sched/engine.h"
#include "../server/http_client.h"
#include "../util/file.h"
#include "../util/timer.h"
#include "cli.h"

#define DEFAULT_SHAREGPT "../shared/datasets/sharegpt_v3_filtered_1000.json"
#define NO_REPLY_OUTPUT_LEN 128

static void usage(FILE *f) {
    fprintf(f,
            "usage: margingate bench-serve [--url URL] [options]\n"
            "  --url URL               server base URL (default http://127.0.0.1:8080)\n"
            "  --endpoint PATH         /v1/completions (default) or /v1/chat/completions\n"
            "  --dataset NAME          sharegpt (default) or random\n"
            "  --dataset-path FILE     ShareGPT JSON (default %s)\n"
            "  --num-prompts N         requests per mode (default 100)\n"
            "  --request-rate R|inf    Poisson arrivals at R requests/s (default inf: all at once)\n"
            "  --max-concurrency C     requests in flight at most (default unlimited)\n"
            "  --determinism MODES     comma-separated modes to run in turn, or 'all'\n"
            "                          (default: the server's default mode)\n"
            "  --max-tokens N          output tokens per request (default: the ShareGPT reply's\n"
            "                          length; 128 for conversations without a reply)\n"
            "  --random-input-len N    random dataset: prompt tokens (default 128)\n"
            "  --random-output-len N   random dataset: output tokens (default 64)\n"
            "  --ignore-eos            ask for exactly max_tokens tokens (vLLM's ignore_eos)\n"
            "  --seed S                dataset shuffle and arrival times (default 0)\n"
            "  --api-key KEY           send 'Authorization: Bearer KEY'\n"
            "  --timeout S             per-request timeout in seconds (default 600)\n"
            "  --json FILE             also write the results as JSON\n"
            "  -m MODEL                tokenizer for dataset lengths (default: the default model)\n",
            DEFAULT_SHAREGPT);
}

typedef struct {
    char *prompt;       /* text prompt, or NULL */
    int32_t *ids;       /* token-id prompt (random dataset) */
    int prompt_len;
    int output_len;
} bench_prompt;

typedef struct {
    int ok;
    double ttft, e2e;
    double *itl;
    int n_itl, cap_itl;
    int output_tokens, prompt_tokens;
    int chunks;
    char error[256];
} bench_result;

typedef struct {
    /* shared, read-only */
    const char *host, *path, *model, *api_key, *mode;
    int port, chat, ignore_eos;
    double timeout_s;
    sem_t *slots;
    /* per request */
    const bench_prompt *p;
    bench_result *r;
    double t_start, t_last;
    mg_sse_parser sse;
    int done;
} worker;

/* ---- random numbers (splitmix64) ---- */

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0); }

/* ---- datasets ---- */

static int token_count(const mg_tokenizer *tok, const char *text, int add_special) {
    int32_t *ids = NULL;
    size_t n = 0;
    if (mg_tokenizer_encode(tok, text, strlen(text), add_special, &ids, &n) != MG_OK) return -1;
    free(ids);
    return (int)n;
}

/* vLLM's ShareGPT sampling: shuffle, keep conversations with a reply,
 * drop prompts or replies under 4 tokens, prompts over 1024 and pairs over
 * 2048 tokens (and over the server's context). */
static int load_sharegpt(const char *path, const mg_tokenizer *tok, int n_want, int max_tokens, int max_len,
                         uint64_t seed, bench_prompt *out) {
    char *text = NULL;
    size_t len = 0;
    if (mg_file_read(path, &text, &len) != MG_OK) {
        fprintf(stderr, "margingate bench-serve: cannot read the dataset %s: %s\n", path, mg_error_last());
        return -1;
    }
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsArray(root)) {
        fprintf(stderr, "margingate bench-serve: %s is not a ShareGPT JSON list\n", path);
        cJSON_Delete(root);
        return -1;
    }
    int n = cJSON_GetArraySize(root);
    cJSON **items = malloc((size_t)(n ? n : 1) * sizeof *items);
    int k = 0;
    cJSON *it;
    cJSON_ArrayForEach(it, root) items[k++] = it;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rng_next(&seed) % (uint64_t)(i + 1));
        cJSON *t = items[i];
        items[i] = items[j];
        items[j] = t;
    }
    int got = 0;
    for (int i = 0; i < n && got < n_want; i++) {
        cJSON *conv = cJSON_GetObjectItemCaseSensitive(items[i], "conversations");
        cJSON *c0 = cJSON_GetArrayItem(conv, 0), *c1 = cJSON_GetArrayItem(conv, 1);
        cJSON *v0 = cJSON_GetObjectItemCaseSensitive(c0, "value"), *v1 = cJSON_GetObjectItemCaseSensitive(c1, "value");
        if (!cJSON_IsString(v0)) continue;
        /* Prompt-only sets (like sharegpt_v3_filtered_1000) have no reply:
         * their output length is --max-tokens or NO_REPLY_OUTPUT_LEN. */
        int pl = token_count(tok, v0->valuestring, 1);
        int ol = cJSON_IsString(v1) ? token_count(tok, v1->valuestring, 0) : NO_REPLY_OUTPUT_LEN;
        if (pl < 4 || ol < 4 || pl > 1024 || pl + ol > 2048) continue;
        if (max_tokens > 0) ol = max_tokens;
        if (pl + ol > max_len) continue;
        out[got].prompt = strdup(v0->valuestring);
        out[got].prompt_len = pl;
        out[got].output_len = ol;
        got++;
    }
    free(items);
    cJSON_Delete(root);
    if (got < n_want)
        fprintf(stderr, "margingate bench-serve: only %d ShareGPT prompts fit the filters (asked for %d)\n", got, n_want);
    return got;
}

static int make_random(const mg_tokenizer *tok, int n, int in_len, int out_len, uint64_t seed, bench_prompt *out) {
    int vocab = mg_tokenizer_vocab_size(tok);
    for (int i = 0; i < n; i++) {
        out[i].ids = malloc((size_t)in_len * sizeof(int32_t));
        if (!out[i].ids) return -1;
        for (int t = 0; t < in_len; t++) {
            int32_t id;
            do id = (int32_t)(rng_next(&seed) % (uint64_t)vocab);
            while (mg_tokenizer_is_special(tok, id));
            out[i].ids[t] = id;
        }
        out[i].prompt_len = in_len;
        out[i].output_len = out_len;
    }
    return n;
}

/* ---- one request ---- */

static void add_itl(bench_result *r, double v) {
    if (r->n_itl == r->cap_itl) {
        int cap = r->cap_itl ? 2 * r->cap_itl : 64;
        double *p = realloc(r->itl, (size_t)cap * sizeof *p);
        if (!p) return;
        r->itl = p;
        r->cap_itl = cap;
    }
    r->itl[r->n_itl++] = v;
}

static int on_event(void *user, const char *data) {
    worker *w = user;
    bench_result *r = w->r;
    double now = mg_now_s();
    if (!strcmp(data, "[DONE]")) {
        w->done = 1;
        return 1;
    }
    cJSON *o = cJSON_Parse(data);
    if (!o) {
        snprintf(r->error, sizeof r->error, "malformed event: %.200s", data);
        return 1;
    }
    cJSON *err = cJSON_GetObjectItemCaseSensitive(o, "error");
    if (err) {
        cJSON *m = cJSON_GetObjectItemCaseSensitive(err, "message");
        snprintf(r->error, sizeof r->error, "%s", cJSON_IsString(m) ? m->valuestring : "error event");
        cJSON_Delete(o);
        return 1;
    }
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "choices"), 0);
    if (c0) {
        cJSON *t = cJSON_GetObjectItemCaseSensitive(c0, "text");
        if (!t) t = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c0, "delta"), "content");
        if (cJSON_IsString(t) && t->valuestring[0]) {
            if (r->chunks == 0) r->ttft = now - w->t_start;
            else add_itl(r, now - w->t_last);
            w->t_last = now;
            r->chunks++;
        }
    }
    cJSON *u = cJSON_GetObjectItemCaseSensitive(o, "usage");
    if (cJSON_IsObject(u)) {
        cJSON *ct = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens");
        cJSON *pt = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens");
        if (cJSON_IsNumber(ct)) r->output_tokens = ct->valueint;
        if (cJSON_IsNumber(pt)) r->prompt_tokens = pt->valueint;
    }
    cJSON_Delete(o);
    return 0;
}

static int on_body(void *user, const char *d, size_t n) {
    worker *w = user;
    int rc = mg_sse_feed(&w->sse, d, n, on_event, w);
    return rc != 0;
}

static char *request_body(const worker *w) {
    cJSON *o = cJSON_CreateObject();
    if (w->model) cJSON_AddStringToObject(o, "model", w->model);
    if (w->chat) {
        cJSON *msgs = cJSON_AddArrayToObject(o, "messages");
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "user");
        cJSON_AddStringToObject(m, "content", w->p->prompt ? w->p->prompt : "");
        cJSON_AddItemToArray(msgs, m);
    } else if (w->p->prompt) {
        cJSON_AddStringToObject(o, "prompt", w->p->prompt);
    } else {
        cJSON *ids = cJSON_AddArrayToObject(o, "prompt");
        for (int i = 0; i < w->p->prompt_len; i++) cJSON_AddItemToArray(ids, cJSON_CreateNumber(w->p->ids[i]));
    }
    cJSON_AddNumberToObject(o, "max_tokens", w->p->output_len);
    cJSON_AddNumberToObject(o, "temperature", 0);
    cJSON_AddBoolToObject(o, "stream", 1);
    cJSON_AddBoolToObject(cJSON_AddObjectToObject(o, "stream_options"), "include_usage", 1);
    if (w->ignore_eos) cJSON_AddBoolToObject(o, "ignore_eos", 1);
    if (w->mode) cJSON_AddStringToObject(o, "determinism", w->mode);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static void *worker_main(void *arg) {
    worker *w = arg;
    bench_result *r = w->r;
    char *body = request_body(w);
    char headers[512] = "";
    if (w->api_key) snprintf(headers, sizeof headers, "Authorization: Bearer %.400s\r\n", w->api_key);
    mg_http_request req = {.host = w->host, .port = w->port, .method = "POST", .path = w->path, .headers = headers,
                           .body = body, .body_len = body ? strlen(body) : 0, .timeout_s = w->timeout_s,
                           .on_body = on_body, .user = w};
    mg_http_response resp;
    char err[256] = "";
    w->t_start = mg_now_s();
    int rc = body ? mg_http_do(&req, &resp, err, sizeof err) : -1;
    r->e2e = mg_now_s() - w->t_start;
    if (rc) snprintf(r->error, sizeof r->error, "%s", err[0] ? err : "out of memory");
    else if (resp.status != 200) snprintf(r->error, sizeof r->error, "HTTP %d", resp.status);
    else if (!r->error[0] && !w->done) snprintf(r->error, sizeof r->error, "stream ended without [DONE]");
    r->ok = !r->error[0] && r->chunks > 0;
    if (!r->error[0] && !r->ok) snprintf(r->error, sizeof r->error, "no tokens received");
    if (r->ok && r->output_tokens == 0) r->output_tokens = r->chunks;
    if (r->prompt_tokens == 0) r->prompt_tokens = w->p->prompt_len;
    mg_http_response_free(&resp);
    mg_sse_free(&w->sse);
    free(body);
    sem_post(w->slots);
    return NULL;
}

/* ---- statistics ---- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    double mean, median, p99, std;
} stat;

/* Mean, median, p99 (linear interpolation, as numpy) of v[0..n), in ms. */
static stat stats_ms(double *v, int n) {
    stat s = {0};
    if (n == 0) return s;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += v[i];
    s.mean = sum / n;
    for (int i = 0; i < n; i++) s.std += (v[i] - s.mean) * (v[i] - s.mean);
    s.std = sqrt(s.std / n);
    double pct[2] = {50, 99}, *out[2] = {&s.median, &s.p99};
    for (int k = 0; k < 2; k++) {
        double idx = pct[k] / 100.0 * (n - 1);
        int lo = (int)floor(idx), hi = lo + 1 < n ? lo + 1 : lo;
        *out[k] = v[lo] + (v[hi] - v[lo]) * (idx - lo);
    }
    s.mean *= 1e3, s.median *= 1e3, s.p99 *= 1e3, s.std *= 1e3;
    return s;
}

/* Reads margingate_<name>{mode="<mode>"} from /metrics text; 0 if absent. */
static double metric(const char *text, const char *name, const char *mode) {
    char key[128];
    snprintf(key, sizeof key, "margingate_%s{mode=\"%s\"} ", name, mode);
    const char *p = text ? strstr(text, key) : NULL;
    return p ? strtod(p + strlen(key), NULL) : 0;
}

static char *fetch(const char *host, int port, const char *path, const char *api_key, int *status) {
    char headers[512] = "";
    if (api_key) snprintf(headers, sizeof headers, "Authorization: Bearer %.400s\r\n", api_key);
    mg_http_request req = {.host = host, .port = port, .method = "GET", .path = path, .headers = headers,
                           .timeout_s = 30};
    mg_http_response r;
    char err[256];
    *status = 0;
    if (mg_http_do(&req, &r, err, sizeof err)) {
        fprintf(stderr, "margingate bench-serve: GET http://%s:%d%s: %s\n", host, port, path, err);
        mg_http_response_free(&r);
        return NULL;
    }
    *status = r.status;
    char *body = r.body;
    r.body = NULL;
    mg_http_response_free(&r);
    return body;
}

typedef struct {
    char mode[32];
    int completed, failed;
    double duration;
    long input_tokens, output_tokens;
    stat ttft, tpot, itl, e2e;
    double verified, repairs, rolled_back;
    char first_error[256];
} mode_result;

static void print_result(const mode_result *m, int have_metrics) {
    printf("============ Serving Benchmark Result ============\n");
    printf("%-40s %s\n", "Determinism mode:", m->mode);
    printf("%-40s %d\n", "Successful requests:", m->completed);
    printf("%-40s %d\n", "Failed requests:", m->failed);
    printf("%-40s %.2f\n", "Benchmark duration (s):", m->duration);
    printf("%-40s %ld\n", "Total input tokens:", m->input_tokens);
    printf("%-40s %ld\n", "Total generated tokens:", m->output_tokens);
    printf("%-40s %.2f\n", "Request throughput (req/s):", m->completed / m->duration);
    printf("%-40s %.2f\n", "Output token throughput (tok/s):", m->output_tokens / m->duration);
    printf("%-40s %.2f\n", "Total token throughput (tok/s):", (m->input_tokens + m->output_tokens) / m->duration);
    const struct {
        const char *title, *abbr;
        const stat *s;
    } rows[] = {{"Time to First Token", "TTFT", &m->ttft},
                {"Time per Output Token (excl. 1st token)", "TPOT", &m->tpot},
                {"Inter-token Latency", "ITL", &m->itl},
                {"End-to-end Latency", "E2EL", &m->e2e}};
    for (int i = 0; i < 4; i++) {
        int w = 50 - (int)strlen(rows[i].title) - 2, l = w / 2;
        printf("%.*s %s %.*s\n", l, "--------------------------", rows[i].title, w - l, "--------------------------");
        char k[64];
        snprintf(k, sizeof k, "Mean %s (ms):", rows[i].abbr);
        printf("%-40s %.2f\n", k, rows[i].s->mean);
        snprintf(k, sizeof k, "Median %s (ms):", rows[i].abbr);
        printf("%-40s %.2f\n", k, rows[i].s->median);
        snprintf(k, sizeof k, "P99 %s (ms):", rows[i].abbr);
        printf("%-40s %.2f\n", k, rows[i].s->p99);
    }
    if (have_metrics) {
        printf("%.*s Determinism cost %.*s\n", 16, "----------------", 16, "----------------");
        printf("%-40s %.0f\n", "Verified steps:", m->verified);
        printf("%-40s %.0f\n", "Repairs:", m->repairs);
        printf("%-40s %.0f\n", "Rolled-back tokens:", m->rolled_back);
    }
    if (m->failed) printf("%-40s %s\n", "First error:", m->first_error);
    printf("==================================================\n");
    fflush(stdout);
}

static cJSON *stat_json(cJSON *o, const char *abbr, const stat *s) {
    char k[64];
    snprintf(k, sizeof k, "mean_%s_ms", abbr);
    cJSON_AddNumberToObject(o, k, s->mean);
    snprintf(k, sizeof k, "median_%s_ms", abbr);
    cJSON_AddNumberToObject(o, k, s->median);
    snprintf(k, sizeof k, "std_%s_ms", abbr);
    cJSON_AddNumberToObject(o, k, s->std);
    snprintf(k, sizeof k, "p99_%s_ms", abbr);
    cJSON_AddNumberToObject(o, k, s->p99);
    return o;
}

typedef struct {
    const char *host, *path, *model, *api_key;
    int port, chat, ignore_eos, max_concurrency;
    double rate, timeout_s;
    uint64_t seed;
} run_opts;

static int run_mode(const run_opts *o, const char *mode, const bench_prompt *ps, int n, mode_result *m) {
    memset(m, 0, sizeof *m);
    snprintf(m->mode, sizeof m->mode, "%s", mode ? mode : "server default");
    int st;
    char *before = mode ? fetch(o->host, o->port, "/metrics", o->api_key, &st) : NULL;
    bench_result *res = calloc((size_t)n, sizeof *res);
    worker *ws = calloc((size_t)n, sizeof *ws);
    pthread_t *th = calloc((size_t)n, sizeof *th);
    int *started = calloc((size_t)n, sizeof *started);
    sem_t slots;
    sem_init(&slots, 0, o->max_concurrency > 0 ? (unsigned)o->max_concurrency : (unsigned)n);
    if (!res || !ws || !th || !started) {
        fprintf(stderr, "margingate bench-serve: out of memory\n");
        free(res), free(ws), free(th), free(started), free(before);
        return -1;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 << 10);
    uint64_t rng = o->seed ^ 0x5DEECE66Dull;
    double t0 = mg_now_s(), next = t0;
    for (int i = 0; i < n; i++) {
        if (isfinite(o->rate)) {
            double now = mg_now_s();
            if (next > now) {
                double d = next - now;
                struct timespec ts = {(time_t)d, (long)((d - floor(d)) * 1e9)};
                nanosleep(&ts, NULL);
            }
            next += -log(1.0 - rng_unit(&rng)) / o->rate;
        }
        sem_wait(&slots);
        ws[i] = (worker){.host = o->host, .path = o->path, .model = o->model, .api_key = o->api_key, .mode = mode,
                         .port = o->port, .chat = o->chat, .ignore_eos = o->ignore_eos, .timeout_s = o->timeout_s,
                         .slots = &slots, .p = &ps[i], .r = &res[i]};
        if (pthread_create(&th[i], &attr, worker_main, &ws[i])) {
            snprintf(res[i].error, sizeof res[i].error, "cannot start a client thread");
            sem_post(&slots);
            continue;
        }
        started[i] = 1;
    }
    for (int i = 0; i < n; i++)
        if (started[i]) pthread_join(th[i], NULL);
    m->duration = mg_now_s() - t0;
    pthread_attr_destroy(&attr);
    sem_destroy(&slots);
    double *ttft = malloc((size_t)n * sizeof *ttft), *tpot = malloc((size_t)n * sizeof *tpot),
           *e2e = malloc((size_t)n * sizeof *e2e);
    int n_itl = 0, n_tpot = 0;
    for (int i = 0; i < n; i++) n_itl += res[i].n_itl;
    double *itl = malloc((size_t)(n_itl ? n_itl : 1) * sizeof *itl);
    n_itl = 0;
    for (int i = 0; i < n; i++) {
        bench_result *r = &res[i];
        if (!r->ok) {
            m->failed++;
            if (!m->first_error[0]) snprintf(m->first_error, sizeof m->first_error, "%s", r->error);
            free(r->itl);
            continue;
        }
        ttft[m->completed] = r->ttft;
        e2e[m->completed] = r->e2e;
        m->completed++;
        m->input_tokens += r->prompt_tokens;
        m->output_tokens += r->output_tokens;
        if (r->output_tokens > 1) tpot[n_tpot++] = (r->e2e - r->ttft) / (r->output_tokens - 1);
        memcpy(itl + n_itl, r->itl, (size_t)r->n_itl * sizeof *itl);
        n_itl += r->n_itl;
        free(r->itl);
    }
    m->ttft = stats_ms(ttft, m->completed);
    m->e2e = stats_ms(e2e, m->completed);
    m->tpot = stats_ms(tpot, n_tpot);
    m->itl = stats_ms(itl, n_itl);
    char *after = mode ? fetch(o->host, o->port, "/metrics", o->api_key, &st) : NULL;
    if (before && after) {
        m->verified = metric(after, "verified_steps_total", mode) - metric(before, "verified_steps_total", mode);
        m->repairs = metric(after, "repairs_total", mode) - metric(before, "repairs_total", mode);
        m->rolled_back =
            metric(after, "rolled_back_tokens_total", mode) - metric(before, "rolled_back_tokens_total", mode);
    }
    int have_metrics = before && after;
    free(before), free(after), free(ttft), free(tpot), free(e2e), free(itl), free(res), free(ws), free(th),
        free(started);
    return have_metrics;
}

int cmd_bench_serve(int argc, char **argv) {
    enum { O_URL = 256, O_ENDPOINT, O_DATASET, O_DPATH, O_NUM, O_RATE, O_CONC, O_DET, O_MAXTOK, O_RIN, O_ROUT,
           O_IGNORE, O_SEED, O_KEY, O_TIMEOUT, O_JSON, O_MODELNAME };
    static const struct option opts[] = {
        {"url", required_argument, 0, O_URL},           {"endpoint", required_argument, 0, O_ENDPOINT},
        {"dataset", required_argument, 0, O_DATASET},   {"dataset-path", required_argument, 0, O_DPATH},
        {"num-prompts", required_argument, 0, O_NUM},   {"request-rate", required_argument, 0, O_RATE},
        {"max-concurrency", required_argument, 0, O_CONC}, {"determinism", required_argument, 0, O_DET},
        {"max-tokens", required_argument, 0, O_MAXTOK}, {"random-input-len", required_argument, 0, O_RIN},
        {"random-output-len", required_argument, 0, O_ROUT}, {"ignore-eos", no_argument, 0, O_IGNORE},
        {"seed", required_argument, 0, O_SEED},         {"api-key", required_argument, 0, O_KEY},
        {"timeout", required_argument, 0, O_TIMEOUT},   {"json", required_argument, 0, O_JSON},
        {"model-name", required_argument, 0, O_MODELNAME}, {"model", required_argument, 0, 'm'},
        {"help", no_argument, 0, 'h'},                  {0, 0, 0, 0}};
    const char *url = "http://127.0.0.1:8080", *endpoint = "/v1/completions", *dataset = "sharegpt",
               *dpath = DEFAULT_SHAREGPT, *modes_arg = NULL, *json_path = NULL, *model_flag = NULL,
               *model_name = NULL;
    int num = 100, max_tokens = 0, rin = 128, rout = 64, c;
    unsigned long long seed = 0;
    float timeout = 600;
    run_opts o = {.rate = INFINITY};
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:h", opts, NULL)) != -1) {
        int bad = 0;
        float f;
        switch (c) {
        case O_URL: url = optarg; break;
        case O_ENDPOINT:
            endpoint = optarg;
            bad = strcmp(optarg, "/v1/completions") && strcmp(optarg, "/v1/chat/completions");
            break;
        case O_DATASET:
            dataset = optarg;
            bad = strcmp(optarg, "sharegpt") && strcmp(optarg, "random");
            break;
        case O_DPATH: dpath = optarg; break;
        case O_NUM: bad = cli_parse_int(optarg, &num) || num < 1; break;
        case O_RATE:
            if (!strcmp(optarg, "inf")) o.rate = INFINITY;
            else if (!(bad = cli_parse_float(optarg, &f) || !(f > 0))) o.rate = f;
            break;
        case O_CONC: bad = cli_parse_int(optarg, &o.max_concurrency) || o.max_concurrency < 1; break;
        case O_DET: modes_arg = optarg; break;
        case O_MAXTOK: bad = cli_parse_int(optarg, &max_tokens) || max_tokens < 1; break;
        case O_RIN: bad = cli_parse_int(optarg, &rin) || rin < 1; break;
        case O_ROUT: bad = cli_parse_int(optarg, &rout) || rout < 1; break;
        case O_IGNORE: o.ignore_eos = 1; break;
        case O_SEED: bad = cli_parse_u64(optarg, &seed); break;
        case O_KEY: o.api_key = optarg; break;
        case O_TIMEOUT: bad = cli_parse_float(optarg, &timeout) || timeout <= 0; break;
        case O_JSON: json_path = optarg; break;
        case O_MODELNAME: model_name = optarg; break;
        case 'm': model_flag = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            fprintf(stderr, "margingate bench-serve: invalid value '%s' for %s\n", optarg, argv[optind - 1]);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "margingate bench-serve: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    /* Modes to run. */
    char modes_buf[256];
    const char *modes[MG_MODE_COUNT + 1];
    int n_modes = 0;
    if (!modes_arg) {
        modes[n_modes++] = NULL;
    } else {
        snprintf(modes_buf, sizeof modes_buf, "%s",
                 strcmp(modes_arg, "all") ? modes_arg : "off,invariant,llm42,margingate");
        for (char *save = NULL, *t = strtok_r(modes_buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            mg_mode m;
            if (mg_mode_parse(t, &m) || n_modes == MG_MODE_COUNT) {
                fprintf(stderr, "margingate bench-serve: invalid value '%s' for --determinism (modes: off, invariant, "
                                "llm42, margingate, or all)\n", t);
                return 2;
            }
            modes[n_modes++] = t;
        }
    }
    char host[256], prefix[256], path[512];
    if (mg_http_parse_url(url, host, sizeof host, &o.port, prefix, sizeof prefix)) {
        fprintf(stderr, "margingate bench-serve: invalid value '%s' for --url (expected http://HOST[:PORT])\n", url);
        return 2;
    }
    snprintf(path, sizeof path, "%s%s", prefix, endpoint);
    o.host = host;
    o.path = path;
    o.chat = !strcmp(endpoint, "/v1/chat/completions");
    o.timeout_s = timeout;
    o.seed = seed;

    /* The server's model and context. */
    int st;
    char models_path[512];
    snprintf(models_path, sizeof models_path, "%s/v1/models", prefix);
    char *models = fetch(host, o.port, models_path, o.api_key, &st);
    if (!models) {
        fprintf(stderr, "margingate bench-serve: cannot reach the server at %s\n", url);
        return 1;
    }
    if (st != 200) {
        fprintf(stderr, "margingate bench-serve: GET %s answered %d: %.300s\n", models_path, st, models);
        free(models);
        return 1;
    }
    cJSON *mj = cJSON_Parse(models);
    free(models);
    cJSON *m0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(mj, "data"), 0);
    cJSON *mid = cJSON_GetObjectItemCaseSensitive(m0, "id"), *mlen = cJSON_GetObjectItemCaseSensitive(m0, "max_model_len");
    char served[256] = "";
    if (cJSON_IsString(mid)) snprintf(served, sizeof served, "%s", mid->valuestring);
    int max_len = cJSON_IsNumber(mlen) ? mlen->valueint : 1 << 30;
    cJSON_Delete(mj);
    o.model = model_name ? model_name : served[0] ? served : NULL;

    /* Prompts. */
    const char *model_path = cli_model_path(model_flag);
    mg_tokenizer *tok = NULL;
    if (cli_model_missing("bench-serve", model_path)) return 1;
    if (mg_open_tokenizer(model_path, &tok) != MG_OK) return cli_fail("bench-serve", "cannot load the tokenizer");
    bench_prompt *ps = calloc((size_t)num, sizeof *ps);
    int n = -1;
    if (ps) {
        if (!strcmp(dataset, "sharegpt")) {
            n = load_sharegpt(dpath, tok, num, max_tokens, max_len, seed, ps);
        } else {
            if (rin + (max_tokens ? max_tokens : rout) > max_len)
                fprintf(stderr, "margingate bench-serve: random prompts of %d + %d tokens exceed the context of %d\n",
                        rin, max_tokens ? max_tokens : rout, max_len);
            else
                n = make_random(tok, num, rin, max_tokens ? max_tokens : rout, seed, ps);
        }
    }
    mg_tokenizer_free(tok);
    int rc = 1;
    cJSON *out = cJSON_CreateObject();
    if (n <= 0) {
        if (n == 0) fprintf(stderr, "margingate bench-serve: no prompts to send\n");
        goto done;
    }
    fprintf(stderr, "margingate bench-serve: %d %s prompts to %s%s, rate %s, concurrency %s, model %s\n", n, dataset, url,
            endpoint, isfinite(o.rate) ? "poisson" : "inf", o.max_concurrency ? "capped" : "unlimited",
            o.model ? o.model : "?");
    cJSON_AddStringToObject(out, "url", url);
    cJSON_AddStringToObject(out, "endpoint", endpoint);
    cJSON_AddStringToObject(out, "model", o.model ? o.model : "");
    cJSON_AddStringToObject(out, "dataset", dataset);
    cJSON_AddNumberToObject(out, "num_prompts", n);
    if (isfinite(o.rate)) cJSON_AddNumberToObject(out, "request_rate", o.rate);
    else cJSON_AddStringToObject(out, "request_rate", "inf");
    if (o.max_concurrency) cJSON_AddNumberToObject(out, "max_concurrency", o.max_concurrency);
    else cJSON_AddNullToObject(out, "max_concurrency");
    cJSON_AddBoolToObject(out, "ignore_eos", o.ignore_eos);
    cJSON_AddNumberToObject(out, "seed", (double)seed);
    char date[32];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    cJSON_AddStringToObject(out, "date", date);
    cJSON *results = cJSON_AddArrayToObject(out, "results");
    int all_ok = 1;
    for (int k = 0; k < n_modes; k++) {
        mode_result m;
        int have = run_mode(&o, modes[k], ps, n, &m);
        if (have < 0) goto done;
        print_result(&m, have);
        all_ok &= m.completed > 0;
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "determinism", modes[k] ? modes[k] : "server default");
        cJSON_AddNumberToObject(r, "completed", m.completed);
        cJSON_AddNumberToObject(r, "failed", m.failed);
        cJSON_AddNumberToObject(r, "duration_s", m.duration);
        cJSON_AddNumberToObject(r, "total_input_tokens", (double)m.input_tokens);
        cJSON_AddNumberToObject(r, "total_output_tokens", (double)m.output_tokens);
        cJSON_AddNumberToObject(r, "request_throughput", m.completed / m.duration);
        cJSON_AddNumberToObject(r, "output_throughput", m.output_tokens / m.duration);
        cJSON_AddNumberToObject(r, "total_token_throughput", (m.input_tokens + m.output_tokens) / m.duration);
        stat_json(r, "ttft", &m.ttft);
        stat_json(r, "tpot", &m.tpot);
        stat_json(r, "itl", &m.itl);
        stat_json(r, "e2el", &m.e2e);
        if (have) {
            cJSON_AddNumberToObject(r, "verified_steps", m.verified);
            cJSON_AddNumberToObject(r, "repairs", m.repairs);
            cJSON_AddNumberToObject(r, "rolled_back_tokens", m.rolled_back);
        }
        if (m.failed) cJSON_AddStringToObject(r, "first_error", m.first_error);
        cJSON_AddItemToArray(results, r);
    }
    rc = all_ok ? 0 : 1;
    if (!all_ok) fprintf(stderr, "margingate bench-serve: every request of a mode failed\n");
    if (json_path) {
        char *s = cJSON_Print(out);
        FILE *f = s ? fopen(json_path, "w") : NULL;
        int werr = !f || fprintf(f, "%s\n", s) < 0;
        if ((f && fclose(f)) || werr) {
            fprintf(stderr, "margingate bench-serve: cannot write %s\n", json_path);
            rc = 1;
        }
        free(s);
    }
done:
    cJSON_Delete(out);
    for (int i = 0; ps && i < num; i++) {
        free(ps[i].prompt);
        free(ps[i].ids);
    }
    free(ps);
    return rc;
}
