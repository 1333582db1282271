/* Test helpers for the batched engine: load mg-llama-27m once per test, make
 * deterministic pseudo-random prompts, and run request sets to completion on
 * a backend (the CPU unless a test names another). */
#ifndef MG_TEST_ENGINE_HELPERS_H
#define MG_TEST_ENGINE_HELPERS_H

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "../src/sched/engine.h"
#include "shared_path.h"

#define PROMPT_LEN 12

static inline mg_model *load_small_model(void) {
    char dir[1024];
    MG_TEST_SHARED(dir, "models/mg-llama-27m");
    mg_model *m;
    cr_assert_eq(mg_model_load_hf(dir, &m), MG_OK, "%s", mg_error_last());
    return m;
}

/* Prompt k of `len` tokens: BOS then len - 1 pseudo-random ids (fixed per
 * k; a longer prompt k extends the shorter one). */
static inline void make_prompt_n(int k, int len, int32_t *out) {
    uint32_t s = 2654435761u * (uint32_t)(k + 1);
    out[0] = 0;
    for (int j = 1; j < len; j++) {
        s = s * 1664525u + 1013904223u;
        out[j] = 3 + (int32_t)((s >> 8) % 8000);
    }
}

/* Prompt k: BOS then PROMPT_LEN - 1 pseudo-random ids (fixed per k). */
static inline void make_prompt(int k, int32_t *out) { make_prompt_n(k, PROMPT_LEN, out); }

typedef struct {
    int32_t tokens[256];
    uint64_t hashes[256];
    int n;
    mg_mode_counters c;
    mg_finish finish;
} run_out;

/* Runs requests for prompts `which[0..n)` (each `prompt_len` tokens) in one
 * engine on `backend`, adding request i after `arrive[i]` steps (NULL = all
 * at once). Fills out[i]; returns the engine's preemption count. */
static inline long run_engine_ex(const mg_backend_ops *backend, const mg_model *m, const mg_engine_config *cfg,
                                 const mg_request_params *p, const int *which, const int *arrive, int n,
                                 int prompt_len, run_out *out) {
    mg_engine *e;
    cr_assert_eq(mg_engine_init(&e, m, backend, cfg), MG_OK, "%s", mg_error_last());
    int *ids = malloc((size_t)n * sizeof(int));
    int32_t *prompt = malloc((size_t)prompt_len * sizeof(int32_t));
    cr_assert(ids && prompt);
    int added = 0, step = 0;
    while (added < n || mg_engine_pending(e)) {
        for (int i = 0; i < n; i++) {
            if ((arrive ? arrive[i] : 0) == step) {
                make_prompt_n(which[i], prompt_len, prompt);
                cr_assert_eq(mg_engine_add(e, prompt, prompt_len, p, &ids[i]), MG_OK, "%s", mg_error_last());
                added++;
            }
        }
        cr_assert_eq(mg_engine_step(e), MG_OK, "%s", mg_error_last());
        step++;
        cr_assert_lt(step, 10000, "engine did not finish");
    }
    for (int i = 0; i < n; i++) {
        mg_request_view v;
        cr_assert_eq(mg_engine_view(e, ids[i], &v), MG_OK);
        cr_assert_leq(v.n_visible, 256);
        out[i].n = v.n_visible;
        memcpy(out[i].tokens, v.tokens, (size_t)v.n_visible * sizeof(int32_t));
        if (v.logit_hashes) memcpy(out[i].hashes, v.logit_hashes, (size_t)v.n_visible * sizeof(uint64_t));
        out[i].c = v.counters;
        out[i].finish = v.finish;
    }
    long preemptions = mg_engine_preemptions(e);
    free(prompt);
    free(ids);
    mg_engine_free(e);
    return preemptions;
}

/* run_engine_ex with PROMPT_LEN-token prompts on `backend`. */
static inline long run_engine_on(const mg_backend_ops *backend, const mg_model *m, const mg_engine_config *cfg,
                                 const mg_request_params *p, const int *which, const int *arrive, int n,
                                 run_out *out) {
    return run_engine_ex(backend, m, cfg, p, which, arrive, n, PROMPT_LEN, out);
}

/* run_engine_on the CPU backend. */
static inline void run_engine(const mg_model *m, const mg_engine_config *cfg, const mg_request_params *p,
                              const int *which, const int *arrive, int n, run_out *out) {
    run_engine_on(mg_backend_cpu(), m, cfg, p, which, arrive, n, out);
}

static inline int same_tokens(const run_out *a, const run_out *b) {
    return a->n == b->n && memcmp(a->tokens, b->tokens, (size_t)a->n * sizeof(int32_t)) == 0;
}

#endif
