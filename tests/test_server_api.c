/* margingate serve, endpoint by endpoint, through curl: responses parsed
 * with cJSON and checked field by field (streaming and not), logprobs, stop
 * strings, prompt forms, /health while loading, and every documented error
 * status with its JSON body, the server serving normally afterwards. */
#include "test_server_util.h"

#include "../src/server/server_internal.h"
#include "../src/util/utf8.h"

static cJSON *parse_ok(curl_result r) {
    cr_assert_eq(r.status, 200, "status %d: %s", r.status, r.body);
    cJSON *o = cJSON_Parse(r.body);
    cr_assert_not_null(o, "not JSON: %s", r.body);
    free(r.body);
    return o;
}

/* Checks the OpenAI envelope shared by responses and chunks. */
static void check_envelope(const cJSON *o, const char *object, const char *id_prefix) {
    cr_assert_str_eq(jstr(o, "object"), object);
    const char *id = jstr(o, "id");
    cr_assert(id && !strncmp(id, id_prefix, strlen(id_prefix)), "id %s", id ? id : "(none)");
    cr_assert_str_eq(jstr(o, "model"), "mg-llama-27m");
    cr_assert(jstr(o, "system_fingerprint") && strlen(jstr(o, "system_fingerprint")) > 3);
    cr_assert_gt(jnum(o, "created"), 1.6e9);
}

static void check_usage(const cJSON *o, int completion) {
    double p = jnum(o, "usage.prompt_tokens"), c = jnum(o, "usage.completion_tokens");
    cr_assert_gt(p, 0);
    if (completion >= 0) cr_assert_eq((int)c, completion);
    cr_assert_eq(jnum(o, "usage.total_tokens"), p + c);
}

static void check_determinism(const cJSON *o, const char *mode) {
    cr_assert_str_eq(jstr(o, "determinism.mode"), mode);
    cr_assert_geq(jnum(o, "determinism.verified_steps"), 0);
    cr_assert_geq(jnum(o, "determinism.repairs"), 0);
    cr_assert_geq(jnum(o, "determinism.rolled_back_tokens"), 0);
}

/* Streams `body` to `path`; returns the concatenated text and checks the
 * chunk structure. *finish receives the finish reason, *usage_tokens the
 * completion tokens from the usage chunk (-1 without). */
static char *stream_text(const test_server *s, const char *path, const char *body, int chat, char *finish,
                         int *usage_tokens, int *n_logprob_tokens) {
    curl_result r = server_curl_post(s, path, body, NULL);
    cr_assert_eq(r.status, 200, "%s", r.body);
    sse_events e = sse_parse(r.body);
    cr_assert(e.done, "stream did not end with [DONE]: %s", r.body);
    cr_assert_eq(e.after_done, 0);
    cr_assert_gt(e.n, 0);
    char *text = calloc(1, 65536);
    *usage_tokens = -1;
    finish[0] = '\0';
    if (n_logprob_tokens) *n_logprob_tokens = 0;
    for (int i = 0; i < e.n; i++) {
        cJSON *o = e.ev[i];
        cr_assert_not_null(o, "an event is not JSON: %s", r.body);
        check_envelope(o, chat ? "chat.completion.chunk" : "text_completion", chat ? "chatcmpl-" : "cmpl-");
        cJSON *choices = jget(o, "choices");
        cr_assert(cJSON_IsArray(choices));
        if (cJSON_GetArraySize(choices) == 0) { /* the usage chunk comes last */
            cr_assert_eq(i, e.n - 1);
            check_usage(o, -1);
            *usage_tokens = (int)jnum(o, "usage.completion_tokens");
            continue;
        }
        cr_assert_eq(jnum(o, "choices.0.index"), 0);
        const char *piece = chat ? jstr(o, "choices.0.delta.content") : jstr(o, "choices.0.text");
        if (chat && i == 0) cr_assert_str_eq(jstr(o, "choices.0.delta.role"), "assistant");
        if (piece) strcat(text, piece);
        const char *fr = jstr(o, "choices.0.finish_reason");
        if (fr) {
            cr_assert_eq(finish[0], '\0', "two chunks with a finish_reason");
            snprintf(finish, 16, "%s", fr);
            cr_assert_not_null(jget(o, "determinism.mode"));
        } else {
            cr_assert(cJSON_IsNull(jget(o, "choices.0.finish_reason")));
        }
        cJSON *lp = jget(o, "choices.0.logprobs");
        if (n_logprob_tokens && cJSON_IsObject(lp))
            *n_logprob_tokens += cJSON_GetArraySize(jget(lp, chat ? "content" : "tokens"));
    }
    cr_assert(finish[0], "no finish_reason in the stream");
    sse_events_free(&e);
    free(r.body);
    return text;
}

Test(server_api, health_models_metrics) {
    test_server s;
    server_start(&s, NULL);
    cJSON *h = parse_ok(server_curl(&s, "URL/health"));
    cr_assert_str_eq(jstr(h, "status"), "ok");
    cJSON_Delete(h);
    cJSON *m = parse_ok(server_curl(&s, "URL/v1/models"));
    cr_assert_str_eq(jstr(m, "object"), "list");
    cr_assert_str_eq(jstr(m, "data.0.id"), "mg-llama-27m");
    cr_assert_str_eq(jstr(m, "data.0.object"), "model");
    cr_assert_eq(jnum(m, "data.0.max_model_len"), 4096);
    cJSON_Delete(m);
    curl_result r = server_curl(&s, "URL/metrics");
    cr_assert_eq(r.status, 200);
    static const char *names[] = {
        "# TYPE margingate_requests_running gauge", "# TYPE margingate_requests_waiting gauge",
        "# TYPE margingate_kv_cache_usage_ratio gauge", "# TYPE margingate_prompt_tokens_total counter",
        "# TYPE margingate_generation_tokens_total counter",
        "# TYPE margingate_time_to_first_token_seconds histogram",
        "# TYPE margingate_inter_token_latency_seconds histogram",
        "# TYPE margingate_e2e_request_latency_seconds histogram",
        "margingate_verified_steps_total{mode=\"margingate\"}", "margingate_repairs_total{mode=\"llm42\"}",
        "margingate_rolled_back_tokens_total{mode=\"llm42\"}", "margingate_time_to_first_token_seconds_bucket{le=\"+Inf\"}"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        cr_assert(strstr(r.body, names[i]), "/metrics lacks %s", names[i]);
    free(r.body);
    /* Counters move with a request. */
    double before = server_metric(&s, "margingate_generation_tokens_total");
    cJSON *c = parse_ok(server_curl_post(&s, "/v1/completions", "{\"prompt\": \"Hi\", \"max_tokens\": 3, \"temperature\": 0}", NULL));
    cJSON_Delete(c);
    cr_assert_eq(server_metric(&s, "margingate_generation_tokens_total"), before + 3);
    cr_assert_geq(server_metric(&s, "margingate_time_to_first_token_seconds_count"), 1);
    cr_assert_geq(server_metric(&s, "margingate_e2e_request_latency_seconds_count"), 1);
    cr_assert_eq(server_metric(&s, "margingate_requests_running"), 0);
    cr_assert_eq(server_metric(&s, "margingate_kv_cache_blocks_used"), 0);
    server_stop_clean(&s);
}

Test(server_api, completions_streaming_and_not) {
    test_server s;
    server_start(&s, NULL);
    const char *req = "{\"model\": \"mg-llama-27m\", \"prompt\": \"Once upon a time\", \"max_tokens\": 12, "
                      "\"temperature\": 0, \"determinism\": \"invariant\", \"ignore_eos\": true}";
    cJSON *o = parse_ok(server_curl_post(&s, "/v1/completions", req, NULL));
    check_envelope(o, "text_completion", "cmpl-");
    check_usage(o, 12);
    check_determinism(o, "invariant");
    cr_assert_str_eq(jstr(o, "choices.0.finish_reason"), "length");
    cr_assert(cJSON_IsNull(jget(o, "choices.0.logprobs")));
    const char *text = jstr(o, "choices.0.text");
    cr_assert(text && strlen(text) > 0);
    /* The same request streamed gives the same text, chunk by chunk. */
    const char *sreq = "{\"prompt\": \"Once upon a time\", \"max_tokens\": 12, \"temperature\": 0, "
                       "\"determinism\": \"invariant\", \"ignore_eos\": true, \"stream\": true, "
                       "\"stream_options\": {\"include_usage\": true}}";
    char finish[16];
    int usage;
    char *st = stream_text(&s, "/v1/completions", sreq, 0, finish, &usage, NULL);
    cr_assert_str_eq(st, text);
    cr_assert_str_eq(finish, "length");
    cr_assert_eq(usage, 12);
    free(st);
    /* Without include_usage there is no usage chunk. */
    const char *sreq2 = "{\"prompt\": \"Once upon a time\", \"max_tokens\": 4, \"temperature\": 0, \"stream\": true}";
    st = stream_text(&s, "/v1/completions", sreq2, 0, finish, &usage, NULL);
    cr_assert_eq(usage, -1);
    free(st);
    /* Default mode is margingate; a default max_tokens of 16 applies. */
    cJSON *d = parse_ok(server_curl_post(&s, "/v1/completions", "{\"prompt\": \"Hello\", \"ignore_eos\": true}", NULL));
    check_determinism(d, "margingate");
    check_usage(d, 16);
    cJSON_Delete(d);
    cJSON_Delete(o);
    server_stop_clean(&s);
}

Test(server_api, chat_streaming_and_not) {
    test_server s;
    server_start(&s, "--determinism llm42 --llm42-window 4 --llm42-group 2");
    const char *req = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
                      "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"Hello\"}, "
                      "{\"type\": \"text\", \"text\": \" there!\"}]}], "
                      "\"max_completion_tokens\": 10, \"temperature\": 0, \"ignore_eos\": true}";
    cJSON *o = parse_ok(server_curl_post(&s, "/v1/chat/completions", req, NULL));
    check_envelope(o, "chat.completion", "chatcmpl-");
    check_usage(o, 10);
    check_determinism(o, "llm42");
    cr_assert_geq(jnum(o, "determinism.verified_steps"), 9, "LLM-42 verifies every token after the first");
    cr_assert_str_eq(jstr(o, "choices.0.message.role"), "assistant");
    const char *content = jstr(o, "choices.0.message.content");
    cr_assert_not_null(content);
    cr_assert_str_eq(jstr(o, "choices.0.finish_reason"), "length");
    const char *sreq = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
                       "{\"role\": \"user\", \"content\": \"Hello there!\"}], \"max_tokens\": 10, "
                       "\"temperature\": 0, \"ignore_eos\": true, \"stream\": true, "
                       "\"stream_options\": {\"include_usage\": true}}";
    char finish[16];
    int usage;
    char *st = stream_text(&s, "/v1/chat/completions", sreq, 1, finish, &usage, NULL);
    cr_assert_str_eq(st, content, "streamed '%s' vs '%s'", st, content);
    cr_assert_str_eq(finish, "length");
    cr_assert_eq(usage, 10);
    free(st);
    cJSON_Delete(o);
    server_stop_clean(&s);
}

Test(server_api, logprobs) {
    test_server s;
    server_start(&s, NULL);
    cJSON *o = parse_ok(server_curl_post(
        &s, "/v1/completions",
        "{\"prompt\": \"The cat\", \"max_tokens\": 6, \"temperature\": 0, \"logprobs\": 3, \"ignore_eos\": true}", NULL));
    cJSON *lp = jget(o, "choices.0.logprobs");
    cr_assert(cJSON_IsObject(lp));
    int n = cJSON_GetArraySize(jget(lp, "tokens"));
    cr_assert_eq(n, 6);
    cr_assert_eq(cJSON_GetArraySize(jget(lp, "token_logprobs")), 6);
    cr_assert_eq(cJSON_GetArraySize(jget(lp, "top_logprobs")), 6);
    cr_assert_eq(cJSON_GetArraySize(jget(lp, "text_offset")), 6);
    char joined[4096] = "";
    double prev_off = -1;
    for (int i = 0; i < n; i++) {
        char k[64];
        snprintf(k, sizeof k, "tokens.%d", i);
        strcat(joined, jstr(lp, k));
        snprintf(k, sizeof k, "token_logprobs.%d", i);
        double l = jnum(lp, k);
        cr_assert(l <= 0 && l > -50);
        snprintf(k, sizeof k, "top_logprobs.%d", i);
        cJSON *top = jget(lp, k);
        int nt = cJSON_GetArraySize(top);
        cr_assert(nt >= 1 && nt <= 4, "top_logprobs has %d entries", nt);
        /* Greedy: the chosen token is the most likely one. */
        double best = -1e9;
        cJSON *it;
        cJSON_ArrayForEach(it, top) if (it->valuedouble > best) best = it->valuedouble;
        cr_assert_float_eq(best, l, 1e-6);
        snprintf(k, sizeof k, "text_offset.%d", i);
        cr_assert_geq(jnum(lp, k), prev_off);
        prev_off = jnum(lp, k);
    }
    cr_assert_str_eq(joined, jstr(o, "choices.0.text"));
    cJSON_Delete(o);
    /* Chat format. */
    o = parse_ok(server_curl_post(&s, "/v1/chat/completions",
                                  "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 4, "
                                  "\"temperature\": 0, \"logprobs\": true, \"top_logprobs\": 2, \"ignore_eos\": true}",
                                  NULL));
    cJSON *content = jget(o, "choices.0.logprobs.content");
    cr_assert_eq(cJSON_GetArraySize(content), 4);
    cJSON *e;
    cJSON_ArrayForEach(e, content) {
        cr_assert(jstr(e, "token"));
        cr_assert(jnum(e, "logprob") <= 0);
        cr_assert(cJSON_IsArray(jget(e, "bytes")));
        cr_assert_eq(cJSON_GetArraySize(jget(e, "top_logprobs")), 2);
        cr_assert_geq(jnum(e, "top_logprobs.0.logprob"), jnum(e, "top_logprobs.1.logprob"));
    }
    cJSON_Delete(o);
    /* Streaming: every token's logprobs arrive, once. */
    char finish[16];
    int usage, nlp;
    char *t = stream_text(&s, "/v1/completions",
                          "{\"prompt\": \"The cat\", \"max_tokens\": 6, \"temperature\": 0, \"logprobs\": 1, "
                          "\"ignore_eos\": true, \"stream\": true, \"stream_options\": {\"include_usage\": true}}",
                          0, finish, &usage, &nlp);
    cr_assert_str_eq(t, joined);
    cr_assert_eq(nlp, 6);
    free(t);
    server_stop_clean(&s);
}

/* Returns the greedy invariant text of `prompt` with `max_tokens`. */
static char *greedy(const test_server *s, const char *prompt, int max_tokens, const char *extra) {
    char body[2048];
    snprintf(body, sizeof body,
             "{\"prompt\": \"%s\", \"max_tokens\": %d, \"temperature\": 0, \"determinism\": \"invariant\", "
             "\"ignore_eos\": true%s}",
             prompt, max_tokens, extra ? extra : "");
    cJSON *o = parse_ok(server_curl_post(s, "/v1/completions", body, NULL));
    char *t = strdup(jstr(o, "choices.0.text"));
    cJSON_Delete(o);
    return t;
}

Test(server_api, stop_strings) {
    test_server s;
    server_start(&s, NULL);
    char *full = greedy(&s, "Once upon a time", 24, NULL);
    size_t len = strlen(full);
    cr_assert_gt(len, 12, "%s", full);
    /* A stop string taken from the middle of the output cuts it there. */
    char stop[8];
    snprintf(stop, sizeof stop, "%.3s", full + len / 2);
    size_t cut = (size_t)(strstr(full, stop) - full);
    char esc[64], extra[256];
    cJSON *js = cJSON_CreateString(stop);
    char *q = cJSON_PrintUnformatted(js);
    snprintf(esc, sizeof esc, "%s", q);
    free(q);
    cJSON_Delete(js);
    snprintf(extra, sizeof extra, ", \"stop\": [\"never-occurs\", %s]", esc);
    char body[1024];
    snprintf(body, sizeof body,
             "{\"prompt\": \"Once upon a time\", \"max_tokens\": 24, \"temperature\": 0, \"determinism\": "
             "\"invariant\", \"ignore_eos\": true%s}",
             extra);
    cJSON *o = parse_ok(server_curl_post(&s, "/v1/completions", body, NULL));
    cr_assert_str_eq(jstr(o, "choices.0.finish_reason"), "stop");
    cr_assert_eq(strlen(jstr(o, "choices.0.text")), cut, "'%s' cut at '%s' gave '%s'", full, stop,
                 jstr(o, "choices.0.text"));
    cr_assert_eq(strncmp(jstr(o, "choices.0.text"), full, cut), 0);
    cr_assert_lt(jnum(o, "usage.completion_tokens"), 24);
    cJSON_Delete(o);
    /* Streamed: the stop string never reaches the client. */
    snprintf(body, sizeof body,
             "{\"prompt\": \"Once upon a time\", \"max_tokens\": 24, \"temperature\": 0, \"determinism\": "
             "\"invariant\", \"ignore_eos\": true, \"stream\": true, \"stop\": %s}",
             esc);
    char finish[16];
    int usage;
    char *t = stream_text(&s, "/v1/completions", body, 0, finish, &usage, NULL);
    cr_assert_eq(strlen(t), cut, "streamed '%s'", t);
    cr_assert_str_eq(finish, "stop");
    free(t);
    /* A stop string that never occurs changes nothing. */
    char *same = greedy(&s, "Once upon a time", 24, ", \"stop\": \"zzzz-never\"");
    cr_assert_str_eq(same, full);
    free(same);
    free(full);
    server_stop_clean(&s);
}

Test(server_api, prompt_forms) {
    test_server s;
    server_start(&s, NULL);
    char *a = greedy(&s, "Hello world", 6, NULL);
    /* A list holding one string is the same prompt. */
    cJSON *o = parse_ok(server_curl_post(&s, "/v1/completions",
                                         "{\"prompt\": [\"Hello world\"], \"max_tokens\": 6, \"temperature\": 0, "
                                         "\"determinism\": \"invariant\", \"ignore_eos\": true}",
                                         NULL));
    cr_assert_str_eq(jstr(o, "choices.0.text"), a);
    cJSON_Delete(o);
    free(a);
    /* Token ids, flat or nested once. */
    o = parse_ok(server_curl_post(&s, "/v1/completions", "{\"prompt\": [0, 450, 1000, 17], \"max_tokens\": 2}", NULL));
    cr_assert_eq(jnum(o, "usage.prompt_tokens"), 4);
    cJSON_Delete(o);
    o = parse_ok(server_curl_post(&s, "/v1/completions", "{\"prompt\": [[0, 450, 1000]], \"max_tokens\": 2}", NULL));
    cr_assert_eq(jnum(o, "usage.prompt_tokens"), 3);
    cJSON_Delete(o);
    /* Seeded sampling reproduces. */
    const char *sreq = "{\"prompt\": \"The\", \"max_tokens\": 8, \"temperature\": 0.9, \"top_k\": 40, \"top_p\": 0.95, "
                       "\"seed\": 1234, \"determinism\": \"invariant\", \"ignore_eos\": true}";
    cJSON *s1 = parse_ok(server_curl_post(&s, "/v1/completions", sreq, NULL));
    cJSON *s2 = parse_ok(server_curl_post(&s, "/v1/completions", sreq, NULL));
    cr_assert_str_eq(jstr(s1, "choices.0.text"), jstr(s2, "choices.0.text"));
    cJSON_Delete(s1);
    cJSON_Delete(s2);
    server_stop_clean(&s);
}

Test(server_api, health_is_503_while_loading) {
    test_server s;
    server_start_opts(&s, "--test-load-delay-ms 1500", 0);
    curl_result r = server_curl(&s, "URL/health");
    cr_assert_eq(r.status, 503, "%s", r.body);
    cJSON *o = cJSON_Parse(r.body);
    cr_assert_str_eq(jstr(o, "status"), "loading");
    cJSON_Delete(o);
    free(r.body);
    r = server_curl_post(&s, "/v1/completions", "{\"prompt\": \"hi\", \"max_tokens\": 1}", NULL);
    cr_assert_eq(r.status, 503);
    o = cJSON_Parse(r.body);
    cr_assert_str_eq(jstr(o, "error.code"), "model_loading");
    cJSON_Delete(o);
    free(r.body);
    double t0 = test_now();
    while (server_http(&s, "GET", "/health", NULL, NULL, NULL, 5) != 200) {
        cr_assert_lt(test_now() - t0, 30, "never became healthy");
        test_sleep_ms(50);
    }
    server_stop_clean(&s);
}

typedef struct {
    const char *name, *method, *path, *body, *headers;
    int status;
    const char *code;
} error_case;

static void check_error_json(const char *name, int status, const char *body, const char *code) {
    cJSON *o = cJSON_Parse(body);
    cr_assert_not_null(o, "%s: error body is not JSON: %s", name, body);
    const char *msg = jstr(o, "error.message"), *type = jstr(o, "error.type"), *c = jstr(o, "error.code");
    cr_assert(msg && strlen(msg) > 5, "%s: no message: %s", name, body);
    cr_assert(type && strlen(type) > 0, "%s: no type: %s", name, body);
    cr_assert(c, "%s: no code: %s", name, body);
    if (code) cr_assert_str_eq(c, code, "%s (status %d): %s", name, status, body);
    cJSON_Delete(o);
}

#define AUTH_LINE "Authorization: Bearer sekrit"
#define AUTH AUTH_LINE "\r\n"

Test(server_api, error_statuses_and_bodies) {
    test_server s;
    server_start(&s, "--api-key sekrit --max-body-bytes 65536");
    char *long_prompt = malloc(40000), *long_body = malloc(40100), *huge = malloc(100000);
    strcpy(long_prompt, "");
    for (int i = 0; i < 5000; i++) strcat(long_prompt + (i ? 0 : 0), "word ");
    snprintf(long_body, 40100, "{\"prompt\": \"%s\", \"max_tokens\": 4}", long_prompt);
    memset(huge, 'a', 99999);
    huge[99999] = '\0';
    memcpy(huge, "{\"prompt\": \"", 12);
    memcpy(huge + 99990, "\", \"x\":1}", 9);
    const error_case cases[] = {
        {"malformed JSON", "POST", "/v1/completions", "{\"prompt\": ", AUTH, 400, "invalid_json"},
        {"trailing garbage", "POST", "/v1/completions", "{\"prompt\": \"a\"} x", AUTH, 400, "invalid_json"},
        {"not an object", "POST", "/v1/completions", "[1, 2]", AUTH, 400, "invalid_json"},
        {"empty body", "POST", "/v1/completions", "", AUTH, 400, "invalid_json"},
        {"missing prompt", "POST", "/v1/completions", "{\"max_tokens\": 3}", AUTH, 400, "missing_field"},
        {"prompt type", "POST", "/v1/completions", "{\"prompt\": 5}", AUTH, 400, "invalid_type"},
        {"prompt list type", "POST", "/v1/completions", "{\"prompt\": [true]}", AUTH, 400, "invalid_type"},
        {"empty prompt list", "POST", "/v1/completions", "{\"prompt\": []}", AUTH, 400, "invalid_value"},
        {"two prompts", "POST", "/v1/completions", "{\"prompt\": [\"a\", \"b\"]}", AUTH, 400, "unsupported"},
        {"token id range", "POST", "/v1/completions", "{\"prompt\": [1, 99999]}", AUTH, 400, "invalid_value"},
        {"token id fraction", "POST", "/v1/completions", "{\"prompt\": [1, 2.5]}", AUTH, 400, "invalid_type"},
        {"max_tokens type", "POST", "/v1/completions", "{\"prompt\": \"a\", \"max_tokens\": \"8\"}", AUTH, 400,
         "invalid_type"},
        {"max_tokens zero", "POST", "/v1/completions", "{\"prompt\": \"a\", \"max_tokens\": 0}", AUTH, 400,
         "invalid_value"},
        {"max_tokens too large", "POST", "/v1/completions", "{\"prompt\": \"a\", \"max_tokens\": 5000}", AUTH, 400,
         "max_tokens_too_large"},
        {"prompt too long", "POST", "/v1/completions", long_body, AUTH, 400, "context_length_exceeded"},
        {"temperature type", "POST", "/v1/completions", "{\"prompt\": \"a\", \"temperature\": \"hot\"}", AUTH, 400,
         "invalid_type"},
        {"temperature negative", "POST", "/v1/completions", "{\"prompt\": \"a\", \"temperature\": -1}", AUTH, 400,
         "invalid_value"},
        {"top_p zero", "POST", "/v1/completions", "{\"prompt\": \"a\", \"top_p\": 0}", AUTH, 400, "invalid_value"},
        {"stream type", "POST", "/v1/completions", "{\"prompt\": \"a\", \"stream\": \"yes\"}", AUTH, 400,
         "invalid_type"},
        {"stream_options without stream", "POST", "/v1/completions",
         "{\"prompt\": \"a\", \"stream_options\": {\"include_usage\": true}}", AUTH, 400, "invalid_value"},
        {"stop type", "POST", "/v1/completions", "{\"prompt\": \"a\", \"stop\": 5}", AUTH, 400, "invalid_type"},
        {"empty stop", "POST", "/v1/completions", "{\"prompt\": \"a\", \"stop\": [\"\"]}", AUTH, 400,
         "invalid_value"},
        {"n = 2", "POST", "/v1/completions", "{\"prompt\": \"a\", \"n\": 2}", AUTH, 400, "unsupported"},
        {"logprobs range", "POST", "/v1/completions", "{\"prompt\": \"a\", \"logprobs\": 50}", AUTH, 400,
         "invalid_value"},
        {"unknown mode", "POST", "/v1/completions", "{\"prompt\": \"a\", \"determinism\": \"fast\"}", AUTH, 400,
         "invalid_determinism_mode"},
        {"mode type", "POST", "/v1/completions", "{\"prompt\": \"a\", \"determinism\": 3}", AUTH, 400,
         "invalid_type"},
        {"invalid UTF-8", "POST", "/v1/completions", "{\"prompt\": \"bad \xff\xfe bytes\"}", AUTH, 400,
         "invalid_utf8"},
        {"lone surrogate", "POST", "/v1/completions", "{\"prompt\": \"\\ud800\"}", AUTH, 400, "invalid_json"},
        {"messages type", "POST", "/v1/chat/completions", "{\"messages\": \"hi\"}", AUTH, 400, "invalid_type"},
        {"empty messages", "POST", "/v1/chat/completions", "{\"messages\": []}", AUTH, 400, "invalid_value"},
        {"bad role", "POST", "/v1/chat/completions", "{\"messages\": [{\"role\": \"wizard\", \"content\": \"x\"}]}",
         AUTH, 400, "invalid_value"},
        {"image part", "POST", "/v1/chat/completions",
         "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}", AUTH, 400, "unsupported"},
        {"top_logprobs without logprobs", "POST", "/v1/chat/completions",
         "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_logprobs\": 2}", AUTH, 400, "invalid_value"},
        {"no API key", "POST", "/v1/completions", "{\"prompt\": \"a\", \"max_tokens\": 1}", NULL, 401,
         "invalid_api_key"},
        {"wrong API key", "GET", "/v1/models", NULL, "Authorization: Bearer sekrit2\r\n", 401, "invalid_api_key"},
        {"unknown path", "GET", "/v1/nothing", NULL, AUTH, 404, "not_found"},
        {"unknown root path", "POST", "/", "{}", NULL, 404, "not_found"},
        {"GET completions", "GET", "/v1/completions", NULL, AUTH, 405, "method_not_allowed"},
        {"POST health", "POST", "/health", "{}", NULL, 405, "method_not_allowed"},
        {"body too large", "POST", "/v1/completions", huge, AUTH, 413, "body_too_large"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const error_case *c = &cases[i];
        char *body = NULL;
        int st = server_http(&s, c->method, c->path, c->body, c->headers, &body, 30);
        cr_assert_eq(st, c->status, "%s: status %d (expected %d): %s", c->name, st, c->status, body ? body : "");
        check_error_json(c->name, st, body, c->code);
        free(body);
    }
    /* The same cases through curl (its own framing: Expect: 100-continue on
     * large bodies, chunked uploads). */
    curl_result r = server_curl_post(&s, "/v1/completions", huge, "-H '" AUTH_LINE "'");
    cr_assert_eq(r.status, 413, "%s", r.body);
    free(r.body);
    r = server_curl(&s, "-H 'Transfer-Encoding: chunked' -H 'Content-Type: application/json' -H '" AUTH_LINE
                        "' --data-binary '{\"prompt\": 1' URL/v1/completions");
    cr_assert_eq(r.status, 400, "%s", r.body);
    check_error_json("chunked malformed", 400, r.body, "invalid_json");
    free(r.body);
    /* Unknown fields are ignored; the health and the service are intact. */
    char *body = NULL;
    int st = server_http(&s, "POST", "/v1/completions",
                         "{\"prompt\": \"a\", \"max_tokens\": 2, \"frobnicate\": {\"x\": [1]}, \"user\": \"me\"}", AUTH,
                         &body, 30);
    cr_assert_eq(st, 200, "%s", body);
    free(body);
    cr_assert_eq(server_http(&s, "GET", "/health", NULL, NULL, NULL, 5), 200);
    cr_assert_geq(server_metric(&s, "margingate_http_responses_total{code=\"4xx\"}"), 40);
    free(long_prompt);
    free(long_body);
    free(huge);
    server_stop_clean(&s);
}

/* A model directory whose tokenizer has no chat template: chat requests get
 * a clear 400, completions still work. */
Test(server_api, unsupported_chat_template) {
    char model[1024], dir[256], cmd[8192];
    MG_TEST_SHARED(model, "models/mg-llama-27m");
    char abs[1024];
    cr_assert_not_null(realpath(model, abs));
    snprintf(dir, sizeof dir, "/tmp/mg_test_notemplate_%d", (int)getpid());
    snprintf(cmd, sizeof cmd,
             "rm -rf %s && mkdir -p %s && for f in config.json generation_config.json model.safetensors "
             "tokenizer.json; do ln -s %s/$f %s/$f; done && echo '{\"bos_token\": \"<|endoftext|>\", \"eos_token\": "
             "\"<|endoftext|>\"}' > %s/tokenizer_config.json",
             dir, dir, abs, dir, dir);
    cr_assert_eq(system(cmd), 0);
    test_server s;
    char args[512];
    snprintf(args, sizeof args, "-m %s", dir);
    server_start(&s, args);
    char *body = NULL;
    int st = server_http(&s, "POST", "/v1/chat/completions",
                         "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 2}", NULL, &body,
                         30);
    cr_assert_eq(st, 400, "%s", body);
    check_error_json("no chat template", st, body, "unsupported_chat_template");
    free(body);
    st = server_http(&s, "POST", "/v1/completions", "{\"prompt\": \"x\", \"max_tokens\": 2}", NULL, &body, 30);
    cr_assert_eq(st, 200, "%s", body);
    free(body);
    server_stop_clean(&s);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

/* Stop strings on the detokenized stream, directly on the job text code:
 * for every short substring of a text, the released text never contains
 * it and the final text is cut right before its first occurrence. */
Test(server_text, stop_strings_never_leak) {
    char model[1024];
    MG_TEST_SHARED(model, "models/mg-llama-27m");
    mg_tokenizer *tok;
    char path[1200];
    snprintf(path, sizeof path, "%s/tokenizer.json", model);
    cr_assert_eq(mg_tokenizer_load_hf(path, NULL, &tok), MG_OK);
    const char *text = "Hello wörld, this is a test of stop strings: ünïcode ✓ and \"quotes\".";
    int32_t *ids;
    size_t n;
    cr_assert_eq(mg_tokenizer_encode(tok, text, strlen(text), 0, &ids, &n), MG_OK);
    size_t len = strlen(text);
    int checked = 0;
    for (size_t a = 0; a < len; a++)
        for (size_t l = 1; l <= 6 && a + l <= len; l++) {
            char stop[8];
            memcpy(stop, text + a, l);
            stop[l] = '\0';
            if (!mg_utf8_valid(stop, l, NULL)) continue;
            mg_job *j = mg_job_new();
            j->stop[j->n_stop++] = strdup(stop);
            j->stop[j->n_stop++] = strdup("never-here");
            int r = 0;
            for (size_t i = 0; i < n && r == 0; i++) {
                r = mg_job_take_token(j, tok, ids[i], NULL);
                char released[256];
                snprintf(released, sizeof released, "%.*s", (int)j->text_ready, j->text);
                cr_assert_null(strstr(released, stop), "stop '%s' leaked: '%s'", stop, released);
                cr_assert_eq(strncmp(released, text, j->text_ready), 0);
            }
            if (r == 0) mg_job_flush_text(j);
            size_t cut = (size_t)(strstr(text, stop) - text);
            cr_assert_eq(r, 1, "stop '%s' not found", stop);
            cr_assert_eq(j->text_len, cut, "stop '%s': text '%s'", stop, j->text);
            cr_assert_str_eq(j->finish_reason, "stop");
            mg_job_unref_locked(j);
            checked++;
        }
    cr_assert_gt(checked, 200);
    /* No stop: the whole text comes back. */
    mg_job *j = mg_job_new();
    for (size_t i = 0; i < n; i++) cr_assert_eq(mg_job_take_token(j, tok, ids[i], NULL), 0);
    mg_job_flush_text(j);
    cr_assert_str_eq(j->text, text);
    cr_assert_eq(mg_job_tokens_within(j, j->text_len), (int)n);
    mg_job_unref_locked(j);
    free(ids);
    mg_tokenizer_free(tok);
}

/* The server on 2 CPU tensor-parallel ranks: every mode answers, the same
 * invariant request twice gives the same text, and the KV cache (split by
 * KV head over the ranks) is empty again afterwards. */
Test(server_api, tensor_parallel_cpu_ranks) {
    test_server s;
    server_start(&s, "--device cpu --tensor-parallel 2");
    const char *modes[] = {"off", "invariant", "llm42", "margingate"};
    char req[512];
    for (int i = 0; i < 4; i++) {
        snprintf(req, sizeof req,
                 "{\"prompt\": \"Once upon a time\", \"max_tokens\": 6, \"temperature\": 0, \"determinism\": \"%s\", "
                 "\"ignore_eos\": true}",
                 modes[i]);
        cJSON *o = parse_ok(server_curl_post(&s, "/v1/completions", req, NULL));
        check_usage(o, 6);
        check_determinism(o, modes[i]);
        cJSON_Delete(o);
    }
    snprintf(req, sizeof req,
             "{\"prompt\": \"Once upon a time\", \"max_tokens\": 8, \"temperature\": 0, "
             "\"determinism\": \"invariant\", \"ignore_eos\": true}");
    cJSON *a = parse_ok(server_curl_post(&s, "/v1/completions", req, NULL));
    cJSON *b = parse_ok(server_curl_post(&s, "/v1/completions", req, NULL));
    cr_assert_str_eq(jstr(a, "choices.0.text"), jstr(b, "choices.0.text"));
    cJSON_Delete(a);
    cJSON_Delete(b);
    cr_assert_eq(server_metric(&s, "margingate_kv_cache_blocks_used"), 0);
    server_stop_clean(&s);
}
