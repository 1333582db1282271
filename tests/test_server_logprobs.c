/* Per-token log-probabilities recorded by the engine for the server's
 * logprobs/top_logprobs (src/sched/engine_logprobs.c): consistent with the
 * emitted tokens, normalised, and bitwise reproducible where the mode makes
 * the logits reproducible. */
#include <math.h>
#include <omp.h>

#include "engine_helpers.h"

#define NEW 12
#define TOPN 5

typedef struct {
    int32_t tokens[NEW];
    mg_token_logprobs lp[NEW];
    int n;
} lp_out;

/* Runs prompts which[0..n) together in `mode`; request 0 records logprobs. */
static void run_with_logprobs(const mg_model *m, mg_mode mode, const int *which, int n, lp_out *out0) {
    mg_engine_config cfg = mg_engine_config_default();
    cfg.kv_bytes = (size_t)64 << 20;
    cfg.llm42_window = 4;
    cfg.llm42_group = 2;
    mg_engine *e;
    cr_assert_eq(mg_engine_init(&e, m, mg_backend_cpu(), &cfg), MG_OK, "%s", mg_error_last());
    mg_request_params p = {.mode = mode, .max_new_tokens = NEW, .sampling = {.top_p = 1.0f}, .ignore_eos = 1};
    int id0 = -1;
    for (int i = 0; i < n; i++) {
        int32_t prompt[PROMPT_LEN];
        make_prompt(which[i], prompt);
        int id;
        cr_assert_eq(mg_engine_add(e, prompt, PROMPT_LEN, &p, &id), MG_OK, "%s", mg_error_last());
        if (i == 0) {
            id0 = id;
            cr_assert_eq(mg_engine_want_logprobs(e, id, TOPN), MG_OK, "%s", mg_error_last());
        }
    }
    cr_assert_eq(mg_engine_want_logprobs(e, id0, MG_MAX_TOP_LOGPROBS + 1), MG_ERR_ARG);
    cr_assert_eq(mg_engine_want_logprobs(e, 12345, 1), MG_ERR_ARG);
    for (int s = 0; mg_engine_pending(e); s++) {
        cr_assert_eq(mg_engine_step(e), MG_OK, "%s", mg_error_last());
        cr_assert_lt(s, 1000);
    }
    mg_request_view v;
    cr_assert_eq(mg_engine_view(e, id0, &v), MG_OK);
    cr_assert_eq(v.n_visible, NEW);
    out0->n = v.n_visible;
    for (int i = 0; i < v.n_visible; i++) {
        out0->tokens[i] = v.tokens[i];
        const mg_token_logprobs *t = mg_engine_logprobs(e, id0, i);
        cr_assert_not_null(t);
        out0->lp[i] = *t;
    }
    cr_assert_null(mg_engine_logprobs(e, id0, v.n_visible));
    int r, w, sw;
    mg_engine_request_counts(e, &r, &w, &sw);
    cr_assert_eq(r + w + sw, 0);
    mg_engine_free(e);
}

static void check_consistent(const lp_out *o) {
    for (int i = 0; i < o->n; i++) {
        const mg_token_logprobs *t = &o->lp[i];
        cr_assert_eq(t->n_top, TOPN);
        /* Greedy: the emitted token is the most likely one. */
        cr_assert_eq(t->top_ids[0], o->tokens[i], "step %d", i);
        cr_assert_eq(t->logprob, t->top_logprobs[0]);
        cr_assert(t->logprob <= 0 && t->logprob > -30, "step %d: logprob %g", i, t->logprob);
        double mass = 0;
        for (int j = 0; j < t->n_top; j++) {
            if (j) cr_assert(t->top_logprobs[j] <= t->top_logprobs[j - 1]);
            if (j) cr_assert_neq(t->top_ids[j], t->top_ids[j - 1]);
            mass += exp(t->top_logprobs[j]);
        }
        cr_assert(mass <= 1.0 + 1e-5, "step %d: top-%d mass %g", i, TOPN, mass);
    }
}

Test(server_logprobs, consistent_and_reproducible_per_mode) {
    omp_set_num_threads(1); /* robust timing on a shared 2-core machine */
    mg_model *m = load_small_model();
    const int solo[1] = {3};
    int batch[9];
    for (int i = 0; i < 9; i++) batch[i] = i == 0 ? 3 : 40 + i;
    const mg_mode modes[] = {MG_MODE_INVARIANT, MG_MODE_LLM42, MG_MODE_MARGINGATE, MG_MODE_OFF};
    for (size_t k = 0; k < sizeof modes / sizeof modes[0]; k++) {
        lp_out a, b;
        run_with_logprobs(m, modes[k], solo, 1, &a);
        run_with_logprobs(m, modes[k], batch, 9, &b);
        check_consistent(&a);
        check_consistent(&b);
        if (modes[k] == MG_MODE_OFF) continue;
        cr_assert_arr_eq(a.tokens, b.tokens, sizeof a.tokens, "%s: tokens differ solo vs batch",
                         mg_mode_name(modes[k]));
        if (modes[k] != MG_MODE_MARGINGATE) /* MarginGate keeps fast logits on confident steps */
            for (int i = 0; i < NEW; i++)
                cr_assert_eq(memcmp(&a.lp[i], &b.lp[i], sizeof a.lp[i]), 0, "%s: logprobs of step %d differ",
                             mg_mode_name(modes[k]), i);
    }
    mg_model_free(m);
}
