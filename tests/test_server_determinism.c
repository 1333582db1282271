/* Determinism through the server: a request sent alone and then again
 * among 32 concurrent other requests (other prompts, lengths and modes,
 * streaming and not, greedy and sampled) returns identical text in the
 * invariant, llm42 and margingate modes, streamed or not; greedy in every
 * mode and seeded-sampled in invariant and llm42. (MarginGate gates on the
 * top-1/top-2 logit margin, which decides argmax but not where a sampled
 * token falls in the distribution: sampling is not covered by its check.) */
#include <pthread.h>

#include "test_server_util.h"

#define COMPANIONS 32

typedef struct {
    const test_server *s;
    char body[1024];
    int stream;
    int status;
    char text[8192];
    char finish[16];
} call;

/* Sends c->body to /v1/completions; fills status, text and finish. */
static void *do_call(void *arg) {
    call *c = arg;
    char *body = NULL;
    c->status = server_http(c->s, "POST", "/v1/completions", c->body, NULL, &body, 300);
    c->text[0] = c->finish[0] = '\0';
    if (c->status == 200 && body) {
        if (c->stream) {
            sse_events e = sse_parse(body);
            for (int i = 0; i < e.n; i++) {
                const char *t = jstr(e.ev[i], "choices.0.text"), *f = jstr(e.ev[i], "choices.0.finish_reason");
                if (t) strncat(c->text, t, sizeof c->text - strlen(c->text) - 1);
                if (f) snprintf(c->finish, sizeof c->finish, "%s", f);
            }
            if (!e.done) c->status = -1;
            sse_events_free(&e);
        } else {
            cJSON *o = cJSON_Parse(body);
            const char *t = jstr(o, "choices.0.text"), *f = jstr(o, "choices.0.finish_reason");
            snprintf(c->text, sizeof c->text, "%s", t ? t : "");
            snprintf(c->finish, sizeof c->finish, "%s", f ? f : "");
            cJSON_Delete(o);
        }
    }
    free(body);
    return NULL;
}

static const char *prompts[] = {
    "Once upon a time", "def fibonacci(n):", "The capital of France is", "Question: what is 12 * 7?\nAnswer:",
    "In a hole in the ground there lived", "import numpy as np\n", "Dear Sir or Madam,", "The quick brown fox",
};

static void probe_body(char *out, size_t n, const char *mode, int sampled, int stream) {
    snprintf(out, n,
             "{\"prompt\": \"Write a short story about a robot who learns to paint.\", \"max_tokens\": 16, "
             "\"ignore_eos\": true, \"determinism\": \"%s\", \"stream\": %s, %s}",
             mode, stream ? "true" : "false",
             sampled ? "\"temperature\": 0.8, \"top_p\": 0.95, \"seed\": 42" : "\"temperature\": 0");
}

Test(server_determinism, alone_vs_among_32_concurrent) {
    test_server s;
    server_start(&s, "--llm42-window 8 --llm42-group 4");
    const char *modes[] = {"invariant", "llm42", "margingate"};
    for (int m = 0; m < 3; m++) {
        /* Alone: greedy and sampled probes, one after the other. */
        call solo[2];
        for (int k = 0; k < 2; k++) {
            solo[k] = (call){.s = &s};
            probe_body(solo[k].body, sizeof solo[k].body, modes[m], k, 0);
            do_call(&solo[k]);
            cr_assert_eq(solo[k].status, 200);
            cr_assert_str_eq(solo[k].finish, "length");
            cr_assert_gt(strlen(solo[k].text), 0);
        }
        /* Among 32 others: start them, wait until they are decoding, then
         * send the probes (streamed and not). */
        call *comp = calloc(COMPANIONS, sizeof *comp);
        pthread_t th[COMPANIONS + 4];
        for (int i = 0; i < COMPANIONS; i++) {
            comp[i].s = &s;
            comp[i].stream = i % 3 == 0;
            snprintf(comp[i].body, sizeof comp[i].body,
                     "{\"prompt\": \"%s %d\", \"max_tokens\": %d, \"ignore_eos\": true, \"determinism\": \"%s\", "
                     "\"stream\": %s, \"temperature\": %s, \"seed\": %d}",
                     prompts[i % 8], i, 8 + (i * 7) % 12, i % 4 == 0 ? "off" : modes[(m + i) % 3],
                     comp[i].stream ? "true" : "false", i % 2 ? "0" : "0.7", i);
            cr_assert_eq(pthread_create(&th[i], NULL, do_call, &comp[i]), 0);
        }
        double t0 = test_now();
        while (server_metric(&s, "margingate_requests_running") < 8 && test_now() - t0 < 60) test_sleep_ms(5);
        call probes[4];
        for (int k = 0; k < 4; k++) {
            probes[k] = (call){.s = &s, .stream = k >= 2};
            probe_body(probes[k].body, sizeof probes[k].body, modes[m], k % 2, k >= 2);
            cr_assert_eq(pthread_create(&th[COMPANIONS + k], NULL, do_call, &probes[k]), 0);
        }
        for (int i = 0; i < COMPANIONS + 4; i++) pthread_join(th[i], NULL);
        for (int i = 0; i < COMPANIONS; i++) cr_assert_eq(comp[i].status, 200, "companion %d: %d", i, comp[i].status);
        for (int k = 0; k < 4; k++) {
            cr_assert_eq(probes[k].status, 200);
            if (k % 2 && !strcmp(modes[m], "margingate")) continue;
            cr_assert_str_eq(probes[k].text, solo[k % 2].text,
                             "%s (%s, %s): text alone '%s' differs among 32 others: '%s'", modes[m],
                             k % 2 ? "sampled" : "greedy", k >= 2 ? "streamed" : "not streamed", solo[k % 2].text,
                             probes[k].text);
        }
        free(comp);
    }
    /* They really were decoded together. */
    cr_assert_gt(server_metric(&s, "margingate_verified_steps_total{mode=\"margingate\"}"), 0);
    cr_assert_gt(server_metric(&s, "margingate_verified_steps_total{mode=\"llm42\"}"), 0);
    server_stop_clean(&s);
}
