/* Prometheus text exposition of the server's gauges, counters and latency
 * histograms (format 0.0.4). Values are read from the snapshot the engine
 * thread publishes under srv->mu; the caller holds it. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"

/* Bucket bounds as vLLM's. */
static const double ttft_bounds[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                     0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
static const double itl_bounds[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
                                    0.5,   0.75,  1.0,  2.5,   5.0,  7.5,   10.0, 20.0, 40.0, 80.0};
static const double e2e_bounds[] = {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
                                    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

void mg_metrics_init(mg_metrics *m) {
    memset(m, 0, sizeof *m);
    m->ttft = (mg_histogram){.n = COUNT(ttft_bounds), .bounds = ttft_bounds};
    m->itl = (mg_histogram){.n = COUNT(itl_bounds), .bounds = itl_bounds};
    m->e2e = (mg_histogram){.n = COUNT(e2e_bounds), .bounds = e2e_bounds};
}

void mg_histogram_observe(mg_histogram *h, double v) {
    int i = 0;
    while (i < h->n && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} buf;

static void put(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(buf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n + 1;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

static void head(buf *b, const char *name, const char *type, const char *help) {
    put(b, "# HELP margingate_%s %s\n# TYPE margingate_%s %s\n", name, help, name, type);
}

static void gauge(buf *b, const char *name, const char *help, double v) {
    head(b, name, "gauge", help);
    put(b, "margingate_%s %.17g\n", name, v);
}

static void counter(buf *b, const char *name, const char *help, double v) {
    head(b, name, "counter", help);
    put(b, "margingate_%s %.17g\n", name, v);
}

static void histogram(buf *b, const char *name, const char *help, const mg_histogram *h) {
    head(b, name, "histogram", help);
    unsigned long cum = 0;
    for (int i = 0; i < h->n; i++) {
        cum += h->counts[i];
        put(b, "margingate_%s_bucket{le=\"%g\"} %lu\n", name, h->bounds[i], cum);
    }
    cum += h->counts[h->n];
    put(b, "margingate_%s_bucket{le=\"+Inf\"} %lu\n", name, cum);
    put(b, "margingate_%s_sum %.17g\nmargingate_%s_count %lu\n", name, h->sum, name, h->count);
}

typedef enum { F_STEPS, F_VERIFIED, F_REPAIRS, F_ROLLED, F_PASSES, F_SECONDS } mode_field;

static void per_mode(buf *b, const mg_metrics *m, const char *name, const char *help, mode_field f) {
    head(b, name, "counter", help);
    for (int k = 0; k < MG_MODE_COUNT; k++) {
        const mg_mode_counters *c = &m->totals[k];
        double v = f == F_STEPS      ? (double)c->steps
                   : f == F_VERIFIED ? (double)c->verified_steps
                   : f == F_REPAIRS  ? (double)c->repairs
                   : f == F_ROLLED   ? (double)c->rolled_back
                   : f == F_PASSES   ? (double)c->verify_passes
                                     : c->verify_s;
        put(b, "margingate_%s{mode=\"%s\"} %.17g\n", name, mg_mode_name((mg_mode)k), v);
    }
}

char *mg_metrics_render(const mg_srv *s) {
    const mg_metrics *m = &s->m;
    buf b = {.cap = 8192};
    b.p = malloc(b.cap);
    if (!b.p) return NULL;
    b.p[0] = '\0';
    gauge(&b, "requests_running", "Requests admitted by the scheduler and being decoded.", m->running);
    gauge(&b, "requests_waiting", "Requests queued for admission (server queue and scheduler).",
          m->waiting + m->queued);
    gauge(&b, "requests_swapped", "Requests preempted to host memory.", m->swapped);
    gauge(&b, "kv_cache_usage_ratio", "Fraction of KV cache blocks in use (1 = full).",
          m->kv_total ? (double)m->kv_used / m->kv_total : 0.0);
    gauge(&b, "kv_cache_blocks_used", "KV cache blocks in use.", m->kv_used);
    gauge(&b, "kv_cache_blocks_total", "KV cache blocks in the pool.", m->kv_total);
    counter(&b, "prompt_tokens_total", "Prompt tokens of admitted requests.", (double)m->prompt_tokens);
    counter(&b, "generation_tokens_total", "Generated tokens returned to clients.", (double)m->generation_tokens);
    counter(&b, "preemptions_total", "Requests swapped out to free KV cache.", (double)m->preemptions);
    counter(&b, "queue_full_rejections_total", "Requests refused with 429 because the queue was full.",
            (double)m->rejected_queue_full);
    static const char *reasons[4] = {"stop", "length", "abort", "error"};
    head(&b, "request_success_total", "counter", "Finished requests by finish reason.");
    for (int i = 0; i < 4; i++)
        put(&b, "margingate_request_success_total{finished_reason=\"%s\"} %lu\n", reasons[i], m->finished[i]);
    head(&b, "http_responses_total", "counter", "HTTP responses by status class.");
    for (int i = 0; i < 5; i++) put(&b, "margingate_http_responses_total{code=\"%dxx\"} %lu\n", i + 1, m->http_status[i]);
    histogram(&b, "time_to_first_token_seconds", "Time from request arrival to its first token.", &m->ttft);
    histogram(&b, "inter_token_latency_seconds", "Time between tokens becoming visible to the client.", &m->itl);
    histogram(&b, "e2e_request_latency_seconds", "Time from request arrival to its last token.", &m->e2e);
    per_mode(&b, m, "decode_steps_total", "Fast-path decode steps, per determinism mode.", F_STEPS);
    per_mode(&b, m, "verified_steps_total",
             "MarginGate: steps re-checked with invariant kernels; LLM-42: tokens verified.", F_VERIFIED);
    per_mode(&b, m, "repairs_total", "MarginGate: verified tokens that differed; LLM-42: mismatches found.",
             F_REPAIRS);
    per_mode(&b, m, "rolled_back_tokens_total", "LLM-42: tokens discarded by rollback.", F_ROLLED);
    per_mode(&b, m, "verify_passes_total", "Forward passes spent verifying.", F_PASSES);
    per_mode(&b, m, "verify_seconds_total", "Wall time spent verifying.", F_SECONDS);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}
