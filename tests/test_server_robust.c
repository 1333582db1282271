/* margingate serve under abuse: a few thousand fuzzed request bodies, a
 * client hanging up mid-stream (its KV blocks come back), a burst beyond the
 * queue limit (429), SIGTERM during streaming (final SSE event, exit 0), and
 * the bench-serve load client end to end. Under `make asan` the server is
 * the ASan build, and a leak at exit fails the clean-exit check. */
#include <pthread.h>
#include <stdint.h>

#include "test_server_util.h"

/* ---- fuzzing ---- */

static uint64_t rng(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static const char *seeds[] = {
    "{\"prompt\": \"Hello\", \"max_tokens\": 2}",
    "{\"prompt\": [0, 17, 99], \"max_tokens\": 1, \"temperature\": 0.5, \"seed\": 3}",
    "{\"prompt\": [\"Hi\"], \"max_tokens\": 2, \"stream\": true, \"stream_options\": {\"include_usage\": true}}",
    "{\"prompt\": \"a\", \"max_tokens\": 1, \"logprobs\": 2, \"stop\": [\"x\", \"y\"], \"determinism\": \"llm42\"}",
    "{\"prompt\": \"b\", \"max_tokens\": 2, \"top_k\": 5, \"top_p\": 0.5, \"determinism\": \"invariant\", \"n\": 1}",
    "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 2}",
    "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": [{\"type\": "
    "\"text\", \"text\": \"t\"}]}], \"max_completion_tokens\": 1, \"logprobs\": true, \"top_logprobs\": 3, "
    "\"stream\": true}",
};
#define N_SEEDS (int)(sizeof seeds / sizeof seeds[0])

static const char *tokens[] = {"null", "true", "false", "0", "-1", "1e999", "-0.0", "4294967297", "\"\"",
                               "\"\\u0000\"", "\"\\ud83d\\ude00\"", "[]", "{}", "[[[[[[", "\"stop\"", "\"llm42\"",
                               "\"determinism\"", "\"max_tokens\"", ":", ",", "\"\xc3\"", "\xff", "9e-9999",
                               "\"messages\"", "[0,0,0,0]", "{\"role\":1}", "\"\\\"\""};
#define N_TOKENS (int)(sizeof tokens / sizeof tokens[0])

/* Mutation k of a seed into buf. */
static size_t mutate(uint64_t *s, char *buf, size_t cap) {
    const char *seed = seeds[rng(s) % N_SEEDS];
    size_t n = strlen(seed);
    memcpy(buf, seed, n);
    int kind = (int)(rng(s) % 8);
    int reps = 1 + (int)(rng(s) % 4);
    for (int r = 0; r < reps; r++) {
        size_t at = n ? rng(s) % n : 0;
        switch (kind) {
        case 0: /* flip bytes */
            if (n) buf[at] = (char)(rng(s) & 0xff);
            break;
        case 1: /* truncate */
            n = at;
            break;
        case 2: { /* insert a JSON-ish token */
            const char *t = tokens[rng(s) % N_TOKENS];
            size_t tl = strlen(t);
            if (n + tl >= cap) break;
            memmove(buf + at + tl, buf + at, n - at);
            memcpy(buf + at, t, tl);
            n += tl;
            break;
        }
        case 3: { /* delete a range */
            size_t l = rng(s) % 8;
            if (at + l > n) l = n - at;
            memmove(buf + at, buf + at + l, n - at - l);
            n -= l;
            break;
        }
        case 4: { /* replace a value after a colon */
            char *colon = memchr(buf + at, ':', n - at);
            if (!colon) break;
            size_t c = (size_t)(colon - buf) + 1;
            size_t e = c;
            while (e < n && buf[e] != ',' && buf[e] != '}') e++;
            const char *t = tokens[rng(s) % N_TOKENS];
            size_t tl = strlen(t);
            if (n - (e - c) + tl >= cap) break;
            memmove(buf + c + tl, buf + e, n - e);
            memcpy(buf + c, t, tl);
            n = n - (e - c) + tl;
            break;
        }
        case 5: /* random bytes */
            n = rng(s) % 64;
            for (size_t i = 0; i < n; i++) buf[i] = (char)(rng(s) & 0xff);
            break;
        case 6: { /* deep nesting */
            size_t d = 100 + rng(s) % 3000;
            if (d * 2 + 16 >= cap) d = cap / 2 - 16;
            n = 0;
            buf[n++] = '{';
            memcpy(buf + n, "\"prompt\":", 9);
            n += 9;
            for (size_t i = 0; i < d; i++) buf[n++] = '[';
            for (size_t i = 0; i < d; i++) buf[n++] = ']';
            buf[n++] = '}';
            break;
        }
        default: { /* duplicate a span */
            size_t l = rng(s) % 32;
            if (at + l > n) l = n - at;
            if (n + l >= cap) break;
            memmove(buf + at + l, buf + at, n - at);
            n += l;
            break;
        }
        }
    }
    buf[n] = '\0';
    return n;
}

typedef struct {
    const test_server *s;
    uint64_t seed;
    int count;
    int statuses[600];
    int bad; /* responses that were not the documented shape */
    char bad_example[512];
} fuzz_worker;

static void *fuzz_main(void *arg) {
    fuzz_worker *w = arg;
    static const char *paths[] = {"/v1/completions", "/v1/chat/completions"};
    char *buf = malloc(16384);
    for (int i = 0; i < w->count; i++) {
        size_t n = mutate(&w->seed, buf, 16384);
        const char *path = paths[rng(&w->seed) % 2];
        mg_http_request rq = {.host = "127.0.0.1", .port = w->s->port, .method = "POST", .path = path, .body = buf,
                              .body_len = n, .timeout_s = 300};
        mg_http_response r;
        char err[256] = "";
        int rc = mg_http_do(&rq, &r, err, sizeof err);
        int st = rc ? 0 : r.status;
        if (st < 600 && st >= 0) w->statuses[st]++;
        int ok = st == 200 || st == 400;
        if (ok && st == 400) {
            cJSON *o = cJSON_Parse(r.body);
            ok = o && jstr(o, "error.message") && jstr(o, "error.type") && jstr(o, "error.code");
            cJSON_Delete(o);
        }
        if (!ok) {
            if (!w->bad++)
                snprintf(w->bad_example, sizeof w->bad_example, "status %d (%s) for body '%.200s': %.200s", st, err,
                         buf, r.body ? r.body : "");
        }
        mg_http_response_free(&r);
    }
    free(buf);
    return NULL;
}

Test(server_robust, fuzzed_bodies) {
    test_server s;
    /* A short context keeps the valid mutants cheap (under ASan too). */
    server_start(&s, "--max-model-len 16 --max-running 16 --determinism off");
    enum { WORKERS = 8, PER = 375 }; /* 3000 bodies */
    fuzz_worker *w = calloc(WORKERS, sizeof *w);
    pthread_t th[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        w[i].s = &s;
        w[i].seed = 1000 + (uint64_t)i;
        w[i].count = PER;
        cr_assert_eq(pthread_create(&th[i], NULL, fuzz_main, &w[i]), 0);
    }
    int n200 = 0, n400 = 0, bad = 0;
    for (int i = 0; i < WORKERS; i++) {
        pthread_join(th[i], NULL);
        n200 += w[i].statuses[200];
        n400 += w[i].statuses[400];
        if (w[i].bad && !bad) cr_log_error("%s", w[i].bad_example);
        bad += w[i].bad;
    }
    cr_log_info("fuzz: %d bodies, %d answered 200, %d answered 400", WORKERS * PER, n200, n400);
    cr_assert_eq(bad, 0, "%d responses were neither 200 nor a 400 error JSON", bad);
    cr_assert_gt(n200, 50, "the mutations should leave some requests valid");
    cr_assert_gt(n400, 1000);
    free(w);
    /* Still healthy and serving, nothing left running or allocated. */
    cr_assert_eq(server_http(&s, "GET", "/health", NULL, NULL, NULL, 5), 200);
    char *body = NULL;
    cr_assert_eq(server_http(&s, "POST", "/v1/completions", "{\"prompt\": \"ok\", \"max_tokens\": 2}", NULL, &body, 30),
                 200);
    free(body);
    cr_assert_eq(server_metric(&s, "margingate_requests_running"), 0);
    cr_assert_eq(server_metric(&s, "margingate_kv_cache_blocks_used"), 0);
    server_stop_clean(&s);
}

/* ---- disconnects ---- */

typedef struct {
    int events;
    int stop_after;
    mg_sse_parser p;
} hangup;

static int count_event(void *user, const char *data) {
    (void)data;
    hangup *h = user;
    return ++h->events >= h->stop_after;
}

static int on_stream(void *user, const char *d, size_t n) {
    hangup *h = user;
    return mg_sse_feed(&h->p, d, n, count_event, h) != 0;
}

static void wait_metric(const test_server *s, const char *sample, double want, double timeout_s) {
    double t0 = test_now(), v = -1;
    while (test_now() - t0 < timeout_s) {
        v = server_metric(s, sample);
        if (v == want) return;
        test_sleep_ms(20);
    }
    cr_assert_fail("%s stayed at %g (want %g)", sample, v, want);
}

Test(server_robust, disconnect_mid_stream_frees_kv) {
    test_server s;
    server_start(&s, NULL);
    cr_assert_eq(server_metric(&s, "margingate_kv_cache_blocks_used"), 0);
    /* Streaming: hang up after three events of a long generation. */
    hangup h = {.stop_after = 3};
    const char *body = "{\"prompt\": \"Tell me everything.\", \"max_tokens\": 3000, \"ignore_eos\": true, "
                       "\"temperature\": 0, \"stream\": true, \"determinism\": \"margingate\"}";
    mg_http_request rq = {.host = "127.0.0.1", .port = s.port, .method = "POST", .path = "/v1/completions",
                          .body = body, .body_len = strlen(body), .timeout_s = 60, .on_body = on_stream, .user = &h};
    mg_http_response r;
    char err[256];
    cr_assert_eq(mg_http_do(&rq, &r, err, sizeof err), 0, "%s", err);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(h.events, 3);
    mg_http_response_free(&r);
    mg_sse_free(&h.p);
    wait_metric(&s, "margingate_request_success_total{finished_reason=\"abort\"}", 1, 20);
    cr_assert_eq(server_metric(&s, "margingate_kv_cache_blocks_used"), 0);
    cr_assert_eq(server_metric(&s, "margingate_requests_running"), 0);
    cr_assert_lt(server_metric(&s, "margingate_generation_tokens_total"), 3000);
    /* Not streaming: the client gives up while the request decodes. */
    body = "{\"prompt\": \"Tell me more.\", \"max_tokens\": 3000, \"ignore_eos\": true, \"determinism\": \"off\"}";
    rq = (mg_http_request){.host = "127.0.0.1", .port = s.port, .method = "POST", .path = "/v1/completions",
                           .body = body, .body_len = strlen(body), .timeout_s = 0.5};
    cr_assert_neq(mg_http_do(&rq, &r, err, sizeof err), 0, "should time out");
    mg_http_response_free(&r);
    wait_metric(&s, "margingate_request_success_total{finished_reason=\"abort\"}", 2, 20);
    wait_metric(&s, "margingate_kv_cache_blocks_used", 0, 5);
    cr_assert_eq(server_http(&s, "GET", "/health", NULL, NULL, NULL, 5), 200);
    server_stop_clean(&s);
}

/* ---- queue limit ---- */

typedef struct {
    const test_server *s;
    int status;
    char code[64];
} burst_call;

static void *burst_main(void *arg) {
    burst_call *c = arg;
    char *body = NULL;
    c->status = server_http(c->s, "POST", "/v1/completions",
                            "{\"prompt\": \"Burst\", \"max_tokens\": 48, \"ignore_eos\": true, \"determinism\": \"off\"}",
                            NULL, &body, 120);
    if (c->status != 200 && body) {
        cJSON *o = cJSON_Parse(body);
        const char *code = jstr(o, "error.code");
        snprintf(c->code, sizeof c->code, "%s", code ? code : "?");
        cJSON_Delete(o);
    }
    free(body);
    return NULL;
}

Test(server_robust, burst_beyond_queue_limit_gets_429) {
    test_server s;
    server_start(&s, "--max-running 2 --max-queue 2");
    enum { N = 24 };
    burst_call calls[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        calls[i] = (burst_call){.s = &s};
        cr_assert_eq(pthread_create(&th[i], NULL, burst_main, &calls[i]), 0);
    }
    int ok = 0, full = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        if (calls[i].status == 200) ok++;
        else if (calls[i].status == 429) {
            full++;
            cr_assert_str_eq(calls[i].code, "queue_full");
        } else
            cr_assert_fail("unexpected status %d (%s)", calls[i].status, calls[i].code);
    }
    cr_log_info("burst of %d: %d served, %d refused with 429", N, ok, full);
    cr_assert_geq(ok, 4);
    cr_assert_geq(full, 8);
    cr_assert_eq(server_metric(&s, "margingate_queue_full_rejections_total"), full);
    /* Once the burst is over, requests are served again. */
    char *body = NULL;
    cr_assert_eq(server_http(&s, "POST", "/v1/completions", "{\"prompt\": \"after\", \"max_tokens\": 2}", NULL, &body, 30),
                 200);
    free(body);
    server_stop_clean(&s);
}

/* ---- shutdown ---- */

typedef struct {
    const test_server *s;
    const char *body;
    int status;
    sse_events ev;
    int first_event; /* set once the first event arrived */
    mg_sse_parser p;
} stream_call;

static int stream_event(void *user, const char *data) {
    stream_call *c = user;
    __atomic_store_n(&c->first_event, 1, __ATOMIC_SEQ_CST);
    return sse_collect(&c->ev, data);
}

static int stream_body(void *user, const char *d, size_t n) {
    stream_call *c = user;
    return mg_sse_feed(&c->p, d, n, stream_event, c) != 0;
}

static void *stream_main(void *arg) {
    stream_call *c = arg;
    mg_http_request rq = {.host = "127.0.0.1", .port = c->s->port, .method = "POST", .path = "/v1/completions",
                          .body = c->body, .body_len = strlen(c->body), .timeout_s = 120, .on_body = stream_body,
                          .user = c};
    mg_http_response r;
    char err[256];
    c->status = mg_http_do(&rq, &r, err, sizeof err) ? -1 : r.status;
    mg_http_response_free(&r);
    mg_sse_free(&c->p);
    return NULL;
}

static const char *last_finish(const sse_events *e) {
    for (int i = e->n - 1; i >= 0; i--) {
        const char *f = jstr(e->ev[i], "choices.0.finish_reason");
        if (f) return f;
    }
    return NULL;
}

Test(server_robust, sigterm_during_streaming) {
    test_server s;
    server_start(&s, "--drain-timeout 3");
    stream_call longc = {.s = &s,
                         .body = "{\"prompt\": \"A very long story:\", \"max_tokens\": 4000, \"ignore_eos\": true, "
                                 "\"stream\": true, \"determinism\": \"off\"}"};
    stream_call shortc = {.s = &s,
                          .body = "{\"prompt\": \"A short one:\", \"max_tokens\": 4, \"ignore_eos\": true, "
                                  "\"stream\": true, \"determinism\": \"off\"}"};
    pthread_t t1, t2;
    cr_assert_eq(pthread_create(&t1, NULL, stream_main, &longc), 0);
    double t0 = test_now();
    while (!__atomic_load_n(&longc.first_event, __ATOMIC_SEQ_CST) && test_now() - t0 < 30) test_sleep_ms(5);
    cr_assert(longc.first_event, "the long stream never started");
    cr_assert_eq(pthread_create(&t2, NULL, stream_main, &shortc), 0);
    while (!__atomic_load_n(&shortc.first_event, __ATOMIC_SEQ_CST) && test_now() - t0 < 30) test_sleep_ms(5);
    kill(s.pid, SIGTERM);
    /* New requests are refused while draining (or the port is closed). */
    test_sleep_ms(100);
    char *body = NULL;
    int st = server_http(&s, "POST", "/v1/completions", "{\"prompt\": \"late\", \"max_tokens\": 1}", NULL, &body, 5);
    cr_assert(st == 0 || st == 503, "a request during shutdown got %d: %s", st, body ? body : "");
    free(body);
    pthread_join(t2, NULL);
    pthread_join(t1, NULL);
    /* The short stream finished normally within the drain period. */
    cr_assert_eq(shortc.status, 200);
    cr_assert(shortc.ev.done);
    cr_assert_str_eq(last_finish(&shortc.ev), "length");
    /* The long one was cancelled with a final event, then [DONE]. */
    cr_assert_eq(longc.status, 200);
    cr_assert(longc.ev.done, "the cancelled stream did not end with [DONE]");
    cr_assert_str_eq(last_finish(&longc.ev), "abort");
    sse_events_free(&shortc.ev);
    sse_events_free(&longc.ev);
    char log[4096];
    server_log_tail(&s, log, sizeof log);
    int rc = server_stop(&s, 30);
    cr_assert_eq(rc, 0, "exit code %d after SIGTERM: %s", rc, log);
    cr_assert(strstr(log, "SIGTERM received"), "%s", log);
}

/* ---- the load client ---- */

Test(server_robust, bench_serve_end_to_end) {
    test_server s;
    server_start(&s, "--llm42-window 8 --llm42-group 4"); /* small fixed-shape verify passes on CPU */
    /* A small ShareGPT-format file (the real sets have prompts of up to 1024
     * tokens, slow under ASan): replies give the output lengths, the one
     * without a reply gets --max-tokens' default, the too-short one is
     * dropped as vLLM does. */
    char data[128], json[128], cmd[1024];
    snprintf(data, sizeof data, "/tmp/mg_test_sharegpt_%d.json", (int)getpid());
    snprintf(json, sizeof json, "/tmp/mg_test_bench_serve_%d.json", (int)getpid());
    FILE *df = fopen(data, "w");
    cr_assert_not_null(df);
    fputs("[", df);
    for (int i = 0; i < 8; i++)
        fprintf(df,
                "%s{\"id\": \"c%d\", \"conversations\": [{\"from\": \"human\", \"value\": \"Tell me a story about "
                "a cat named %d, please.\"}, {\"from\": \"gpt\", \"value\": \"Once upon a time there was a cat.\"}]}",
                i ? ", " : "", i, i);
    fputs(", {\"id\": \"short\", \"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}]}]", df);
    fclose(df);
    snprintf(cmd, sizeof cmd,
             "%s bench-serve --url http://127.0.0.1:%d --dataset-path %s --num-prompts 6 --max-tokens 4 "
             "--request-rate 40 --determinism off,llm42 --json %s 2>&1",
             test_bin(), s.port, data, json);
    FILE *p = popen(cmd, "r");
    char out[16384];
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    cr_assert_eq(pclose(p), 0, "%s", out);
    cr_assert(strstr(out, "Serving Benchmark Result") && strstr(out, "Mean TTFT (ms)") && strstr(out, "P99 ITL (ms)"),
              "%s", out);
    FILE *f = fopen(json, "r");
    cr_assert_not_null(f);
    char buf[16384];
    n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    remove(json);
    cJSON *o = cJSON_Parse(buf);
    cr_assert_not_null(o, "%s", buf);
    cr_assert_str_eq(jstr(o, "dataset"), "sharegpt");
    cr_assert_eq(jnum(o, "num_prompts"), 6);
    cr_assert_eq(cJSON_GetArraySize(jget(o, "results")), 2);
    cr_assert_str_eq(jstr(o, "results.1.determinism"), "llm42");
    for (int i = 0; i < 2; i++) {
        char k[64];
        snprintf(k, sizeof k, "results.%d.completed", i);
        cr_assert_eq(jnum(o, k), 6);
        snprintf(k, sizeof k, "results.%d.total_output_tokens", i);
        cr_assert_gt(jnum(o, k), 6);
        snprintf(k, sizeof k, "results.%d.mean_ttft_ms", i);
        cr_assert_gt(jnum(o, k), 0);
        snprintf(k, sizeof k, "results.%d.request_throughput", i);
        cr_assert_gt(jnum(o, k), 0);
    }
    cr_assert_gt(jnum(o, "results.1.verified_steps"), 0);
    cJSON_Delete(o);
    /* Random prompts, capped concurrency, the chat endpoint. */
    snprintf(cmd, sizeof cmd,
             "%s bench-serve --url http://127.0.0.1:%d/ --dataset random --random-input-len 16 --num-prompts 4 "
             "--max-tokens 3 --max-concurrency 2 --endpoint /v1/chat/completions --ignore-eos 2>&1",
             test_bin(), s.port);
    p = popen(cmd, "r");
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    cr_assert_eq(pclose(p), 0, "%s", out);
    cr_assert(strstr(out, "Successful requests:                     4"), "%s", out);
    /* Without --max-tokens, the replies' lengths (10 tokens here). */
    snprintf(cmd, sizeof cmd, "%s bench-serve --url http://127.0.0.1:%d --dataset-path %s --num-prompts 2 --ignore-eos 2>&1",
             test_bin(), s.port, data);
    p = popen(cmd, "r");
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    cr_assert_eq(pclose(p), 0, "%s", out);
    cr_assert(strstr(out, "Total generated tokens:                  20"), "%s", out);
    remove(data);
    server_stop_clean(&s);
    /* No server: one clear error line. */
    snprintf(cmd, sizeof cmd, "%s bench-serve --url http://127.0.0.1:%d --num-prompts 1 2>&1", test_bin(), s.port);
    p = popen(cmd, "r");
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    cr_assert_eq(pclose(p) >> 8, 1, "%s", out);
    cr_assert(strstr(out, "cannot reach the server"), "%s", out);
}
