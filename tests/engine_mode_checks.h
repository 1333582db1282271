/* The determinism modes' checks on the batched engine (mg-llama-27m), written
 * once and parametrised on the backend: tests/test_engine_modes.c runs them
 * on the CPU, tests/test_cuda_modes.c on the CUDA backend. Each check loads
 * the model, runs the engine on `b` and fails the calling test on a
 * violation; checks that measure rather than assert return the figure.
 *
 * A request's output alone is compared with its output inside batches of
 * other requests (other companions, staggered arrivals, prefill cut into
 * chunks of other sizes, swap preemption). Logits are compared through the
 * engine's 64-bit hash of each step's FP32 logits (record_logits), never
 * with a tolerance. */
#ifndef MG_TEST_ENGINE_MODE_CHECKS_H
#define MG_TEST_ENGINE_MODE_CHECKS_H

#include <math.h>
#include <stdio.h>

#include "engine_helpers.h"

#define NEW 24
/* Longer than one 256-position attention chunk of the invariant kernels. */
#define LONG_PROMPT 272
/* LLM-42's verify passes over contexts of 100-124 positions: long enough for
 * a fast attention kernel to cut a row's keys into several chunks. */
#define LLM42_PROMPT 100

static inline mg_engine_config modes_config(void) {
    mg_engine_config c = mg_engine_config_default();
    c.kv_bytes = (size_t)64 << 20;
    c.llm42_window = 8;
    c.llm42_group = 4;
    return c;
}

static inline mg_request_params modes_params(mg_mode mode) {
    return (mg_request_params){.mode = mode, .max_new_tokens = NEW, .sampling = {.top_p = 1.0f}, .ignore_eos = 1,
                               .record_logits = 1};
}

/* A KV budget of 24 blocks of 16 tokens in the engine's pool on `b` (FP32 on
 * the CPU, BF16 on a device in BF16 numerics): room for about 8 requests of
 * PROMPT_LEN + NEW tokens at once, so 16 requests force preemption. */
static inline size_t small_kv_bytes(const mg_backend_ops *b, const mg_model *m) {
    const mg_config *c = &m->config;
    size_t value_bytes = b->host_memory ? sizeof(float) : 2;
    return 2 * value_bytes * (size_t)c->n_layers * (size_t)c->n_kv_heads * (size_t)c->head_dim * 16 * 24;
}

/* Solo reference for prompt k (prompt_len tokens). */
static inline run_out modes_solo(const mg_backend_ops *b, const mg_model *m, const mg_engine_config *cfg,
                                 const mg_request_params *p, int k, int prompt_len) {
    run_out o;
    run_engine_ex(b, m, cfg, p, &k, NULL, 1, prompt_len, &o);
    cr_assert_eq(o.n, NEW, "%s: solo run of prompt %d gave %d tokens", b->name, k, o.n);
    return o;
}

/* Expects out (prompt `which`, in a run described by `what`) to equal the
 * solo run ref: tokens, and with `logits` also every step's logits bitwise. */
static inline void expect_same_run(const mg_backend_ops *b, const run_out *ref, const run_out *out, int which,
                                   int logits, const char *what) {
    cr_expect(same_tokens(ref, out), "%s, %s: tokens of prompt %d differ from its solo run", b->name, what, which);
    if (!logits || !same_tokens(ref, out)) return;
    int first = -1;
    for (int s = 0; s < ref->n && first < 0; s++)
        if (ref->hashes[s] != out->hashes[s]) first = s;
    cr_expect_eq(first, -1, "%s, %s: logits of prompt %d are not bitwise equal to its solo run (first at step %d)",
                 b->name, what, which, first);
}

/* off: requests (of 32) whose tokens decoded in a batch of 32 differ from
 * their solo run. Measured, not asserted: whether the fast path flips on a
 * given backend and model at this batch is a property of its kernels. */
static inline int check_off_divergence(const mg_backend_ops *b) {
    mg_model *m = load_small_model();
    mg_engine_config cfg = modes_config();
    mg_request_params p = modes_params(MG_MODE_OFF);
    int which[32];
    for (int i = 0; i < 32; i++) which[i] = i;
    run_out batched[32];
    run_engine_on(b, m, &cfg, &p, which, NULL, 32, batched);
    int diverged = 0;
    for (int i = 0; i < 32; i++) {
        run_out s = modes_solo(b, m, &cfg, &p, i, PROMPT_LEN);
        diverged += !same_tokens(&s, &batched[i]);
    }
    printf("%s off mode: %d of 32 requests diverge between solo and batch-32 decoding (%d new tokens)\n", b->name,
           diverged, NEW);
    fflush(stdout);
    mg_model_free(m);
    return diverged;
}

/* invariant: tokens and logits bitwise identical alone and
 * - in batches of 2..64 with other companions and staggered arrivals;
 * - with the prefill cut into chunks of 1..5 rows (max_batch_rows 5: decode
 *   rows come first, prefill takes the rows left);
 * - for 272-token prompts (two attention chunks) prefilled in chunks of at
 *   most 37 rows among other long prompts, vs 256 + 16 alone;
 * - through swap preemption (a KV pool too small for 16 requests). */
static inline void check_invariant_bitwise(const mg_backend_ops *b) {
    mg_model *m = load_small_model();
    mg_engine_config cfg = modes_config();
    mg_request_params p = modes_params(MG_MODE_INVARIANT);
    enum { PROBES = 3 };
    run_out ref[PROBES];
    for (int k = 0; k < PROBES; k++) ref[k] = modes_solo(b, m, &cfg, &p, k, PROMPT_LEN);
    char what[96];
    const int sizes[] = {2, 7, 16, 64};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        int n = sizes[si];
        int which[64], arrive[64];
        /* probes at different slots; companions from other prompts; staggered arrivals */
        for (int i = 0; i < n; i++) which[i] = 100 + (int)si * 64 + i, arrive[i] = (i * 3) % 5;
        for (int k = 0; k < PROBES && k < n; k++) which[(k * 5 + (int)si) % n] = k;
        run_out *out = malloc((size_t)n * sizeof *out);
        run_engine_on(b, m, &cfg, &p, which, arrive, n, out);
        snprintf(what, sizeof what, "batch %d", n);
        for (int i = 0; i < n; i++)
            if (which[i] < PROBES) expect_same_run(b, &ref[which[i]], &out[i], which[i], 1, what);
        free(out);
    }
    /* Prefill in chunks of 1..5 rows. */
    {
        mg_engine_config chunked = cfg;
        chunked.max_batch_rows = 5;
        int which[12], arrive[12];
        for (int i = 0; i < 12; i++) which[i] = 600 + i, arrive[i] = i % 4;
        which[1] = 0, which[6] = 1, which[11] = 2;
        run_out out[12];
        run_engine_on(b, m, &chunked, &p, which, arrive, 12, out);
        for (int i = 0; i < 12; i++)
            if (which[i] < PROBES) expect_same_run(b, &ref[which[i]], &out[i], which[i], 1, "max_batch_rows 5");
    }
    /* Long prompts: prefill chunks of 256 + 16 alone, of <= 37 rows in a batch. */
    {
        run_out lref[2];
        for (int k = 0; k < 2; k++) lref[k] = modes_solo(b, m, &cfg, &p, k, LONG_PROMPT);
        mg_engine_config chunked = cfg;
        chunked.max_batch_rows = 37;
        int which[4] = {700, 0, 701, 1}, arrive[4] = {0, 1, 0, 3};
        run_out out[4];
        run_engine_ex(b, m, &chunked, &p, which, arrive, 4, LONG_PROMPT, out);
        for (int i = 0; i < 4; i++)
            if (which[i] < 2)
                expect_same_run(b, &lref[which[i]], &out[i], which[i], 1, "272-token prompt, max_batch_rows 37");
    }
    /* Preemption: a KV budget too small for all 16 requests at once forces swaps. */
    mg_engine_config small = cfg;
    small.kv_bytes = small_kv_bytes(b, m);
    int which[16];
    for (int i = 0; i < 16; i++) which[i] = i < PROBES ? i : 200 + i;
    run_out out[16];
    long pre = run_engine_on(b, m, &small, &p, which, NULL, 16, out);
    cr_expect_gt(pre, 0, "%s: the small KV pool should force preemption", b->name);
    for (int k = 0; k < PROBES; k++) expect_same_run(b, &ref[k], &out[k], k, 1, "preempted run");
    mg_model_free(m);
}

/* Preemption really happens with the small budget, and every preempted
 * request resumes and finishes with all its tokens. */
static inline void check_preemption_resumes(const mg_backend_ops *b) {
    mg_model *m = load_small_model();
    mg_engine_config cfg = modes_config();
    cfg.kv_bytes = small_kv_bytes(b, m);
    mg_engine *e;
    cr_assert_eq(mg_engine_init(&e, m, b, &cfg), MG_OK, "%s", mg_error_last());
    mg_request_params p = modes_params(MG_MODE_INVARIANT);
    for (int i = 0; i < 16; i++) {
        int32_t prompt[PROMPT_LEN];
        int id;
        make_prompt(i, prompt);
        cr_assert_eq(mg_engine_add(e, prompt, PROMPT_LEN, &p, &id), MG_OK, "%s", mg_error_last());
    }
    for (int s = 0; mg_engine_pending(e); s++) {
        cr_assert_eq(mg_engine_step(e), MG_OK, "%s", mg_error_last());
        cr_assert_lt(s, 10000, "engine did not finish");
    }
    cr_assert_gt(mg_engine_preemptions(e), 0, "%s: expected the small KV pool to force preemption", b->name);
    for (int id = 0; id < 16; id++) {
        mg_request_view v;
        cr_assert_eq(mg_engine_view(e, id, &v), MG_OK);
        cr_assert_eq(v.finish, MG_FINISH_LENGTH);
        cr_assert_eq(v.n_visible, NEW);
    }
    mg_engine_free(e);
    mg_model_free(m);
}

/* llm42: identical tokens across batch compositions and arrival orders for
 * the same (W, B) = (8, 4); the rollback path runs: natural mismatches are
 * counted (returned), and forced ones (the fast token corrupted at decode
 * steps 3 and 11) are all caught, rolled back, and leave the output as solo. */
static inline long check_llm42_deterministic(const mg_backend_ops *b) {
    mg_model *m = load_small_model();
    mg_engine_config cfg = modes_config();
    mg_request_params p = modes_params(MG_MODE_LLM42);
    run_out ref[3];
    for (int k = 0; k < 3; k++) ref[k] = modes_solo(b, m, &cfg, &p, k, PROMPT_LEN);
    long natural_rollbacks = 0;
    char what[64];
    const int sizes[] = {5, 24};
    for (size_t si = 0; si < 2; si++) {
        int n = sizes[si], which[24], arrive[24];
        for (int i = 0; i < n; i++) which[i] = 300 + (int)si * 40 + i, arrive[i] = i % 3;
        which[0] = 0, which[n / 2] = 1, which[n - 1] = 2;
        run_out out[24];
        run_engine_on(b, m, &cfg, &p, which, arrive, n, out);
        snprintf(what, sizeof what, "llm42 batch %d", n);
        for (int i = 0; i < n; i++) {
            if (which[i] < 3) expect_same_run(b, &ref[which[i]], &out[i], which[i], 0, what);
            natural_rollbacks += out[i].c.repairs;
        }
    }
    printf("%s llm42: %ld natural mismatches rolled back in batches of 5 and 24\n", b->name, natural_rollbacks);
    fflush(stdout);
    int32_t faults[] = {3, 11};
    mg_request_params pf = p;
    pf.fault_steps = faults;
    pf.n_fault_steps = 2;
    int which[6] = {0, 301, 302, 1, 303, 2};
    run_out out[6];
    run_engine_on(b, m, &cfg, &pf, which, NULL, 6, out);
    for (int i = 0; i < 6; i++) {
        cr_expect_geq(out[i].c.repairs, 2, "%s: forced mismatches of request %d were not all caught", b->name, i);
        cr_expect_gt(out[i].c.rolled_back, 0, "%s: nothing rolled back for request %d", b->name, i);
        if (which[i] < 3) expect_same_run(b, &ref[which[i]], &out[i], which[i], 0, "fault-injected llm42");
    }
    mg_model_free(m);
    return natural_rollbacks;
}

/* llm42's verify passes have one shape (B x W rows, fast kernels), so the
 * logits that decide every visible token (the verifier's; the first token's
 * come from the isolated prefill) are bitwise the same whichever requests
 * share the pass, wherever the request's verify windows fall (a request
 * verified early as a filler shifts them) and whatever the companions'
 * contexts. Checked at 100-124-token contexts, with staggered arrivals. */
static inline void check_llm42_logits_bitwise(const mg_backend_ops *b) {
    mg_model *m = load_small_model();
    mg_engine_config cfg = modes_config();
    mg_request_params p = modes_params(MG_MODE_LLM42);
    run_out ref[2];
    for (int k = 0; k < 2; k++) ref[k] = modes_solo(b, m, &cfg, &p, k, LLM42_PROMPT);
    int which[7] = {800, 0, 801, 802, 803, 1, 804}, arrive[7] = {0, 2, 1, 4, 6, 5, 3};
    run_out out[7];
    run_engine_ex(b, m, &cfg, &p, which, arrive, 7, LLM42_PROMPT, out);
    for (int i = 0; i < 7; i++)
        if (which[i] < 2) expect_same_run(b, &ref[which[i]], &out[i], which[i], 1, "llm42 batch 7, 100-token prompts");
    mg_model_free(m);
}

/* margingate with tau = infinity (every step verified) and forced
 * mismatches at decode steps 0, 5 and 17: every step is verified, each
 * forced mismatch is repaired, and the output (tokens and logits) equals the
 * solo invariant run, in a batch of 12 and again with the (invariant)
 * prefill cut into chunks of 1..5 rows. Returns the repairs beyond the
 * forced ones (natural flips caught). */
static inline long check_margingate_repairs(const mg_backend_ops *b) {
    mg_model *m = load_small_model();
    mg_engine_config cfg = modes_config();
    cfg.margingate_tau = INFINITY;
    mg_request_params inv = modes_params(MG_MODE_INVARIANT);
    run_out ref[2];
    for (int k = 0; k < 2; k++) ref[k] = modes_solo(b, m, &cfg, &inv, k, PROMPT_LEN);
    int32_t faults[] = {0, 5, 17};
    mg_request_params p = modes_params(MG_MODE_MARGINGATE);
    p.fault_steps = faults;
    p.n_fault_steps = 3;
    long natural = 0;
    for (int variant = 0; variant < 2; variant++) {
        mg_engine_config c = cfg;
        if (variant == 1) c.max_batch_rows = 5;
        const char *what = variant ? "margingate, max_batch_rows 5" : "margingate batch 12";
        int which[12], arrive[12];
        for (int i = 0; i < 12; i++) which[i] = 400 + i, arrive[i] = variant ? i % 3 : 0;
        which[3] = 0, which[8] = 1;
        run_out out[12];
        run_engine_on(b, m, &c, &p, which, arrive, 12, out);
        for (int i = 0; i < 12; i++) {
            cr_expect_eq(out[i].c.verified_steps, out[i].c.steps, "%s, %s: always mode must verify every step",
                         b->name, what);
            cr_expect_geq(out[i].c.repairs, 3, "%s, %s: forced mismatches of request %d not all repaired", b->name,
                          what, i);
            natural += out[i].c.repairs - 3;
        }
        for (int k = 0; k < 2; k++) expect_same_run(b, &ref[k], &out[k == 0 ? 3 : 8], k, 1, what);
    }
    printf("%s margingate (always): %ld repairs beyond the 3 forced per request (natural flips caught)\n", b->name,
           natural);
    fflush(stdout);
    mg_model_free(m);
    return natural;
}

/* margingate K/V repair, checked directly: after a forced mismatch at decode
 * step 2 and 8 verified decode steps in a batch of 10 (off and margingate
 * companions), every K/V column of the request (all layers, prompt and
 * generated positions) equals the solo invariant run's, bitwise. */
static inline void check_margingate_kv_column(const mg_backend_ops *b) {
    mg_model *m = load_small_model();
    const mg_config *mc = &m->config;
    mg_engine_config cfg = modes_config();
    cfg.margingate_tau = INFINITY;
    int32_t prompt[PROMPT_LEN];
    make_prompt(0, prompt);
    mg_request_params pi = modes_params(MG_MODE_INVARIANT), pm = modes_params(MG_MODE_MARGINGATE);
    int32_t faults[] = {2};
    pm.fault_steps = faults;
    pm.n_fault_steps = 1;
    mg_engine *solo_e, *batch_e;
    cr_assert_eq(mg_engine_init(&solo_e, m, b, &cfg), MG_OK, "%s", mg_error_last());
    cr_assert_eq(mg_engine_init(&batch_e, m, b, &cfg), MG_OK, "%s", mg_error_last());
    int sid, bid = -1, other;
    cr_assert_eq(mg_engine_add(solo_e, prompt, PROMPT_LEN, &pi, &sid), MG_OK);
    for (int i = 0; i < 9; i++) {
        int32_t q[PROMPT_LEN];
        make_prompt(500 + i, q);
        mg_request_params po = modes_params(i % 2 ? MG_MODE_OFF : MG_MODE_MARGINGATE);
        cr_assert_eq(mg_engine_add(batch_e, q, PROMPT_LEN, &po, &other), MG_OK);
        if (i == 4) cr_assert_eq(mg_engine_add(batch_e, prompt, PROMPT_LEN, &pm, &bid), MG_OK);
    }
    /* Prefill + 8 decode steps in both engines. */
    for (int s = 0; s < 9; s++) {
        cr_assert_eq(mg_engine_step(solo_e), MG_OK, "%s", mg_error_last());
        cr_assert_eq(mg_engine_step(batch_e), MG_OK, "%s", mg_error_last());
    }
    mg_request_view v;
    cr_assert_eq(mg_engine_view(batch_e, bid, &v), MG_OK);
    cr_assert_geq(v.counters.repairs, 1, "%s: the forced mismatch at step 2 was not repaired", b->name);
    size_t kvd = (size_t)mc->n_kv_heads * mc->head_dim;
    float *k1 = malloc(kvd * sizeof(float)), *v1 = malloc(kvd * sizeof(float));
    float *k2 = malloc(kvd * sizeof(float)), *v2 = malloc(kvd * sizeof(float));
    cr_assert(k1 && v1 && k2 && v2);
    for (int pos = 0; pos < PROMPT_LEN + 8; pos++)
        for (int l = 0; l < mc->n_layers; l++) {
            cr_assert_eq(mg_engine_kv_column(solo_e, sid, l, pos, k1, v1), MG_OK, "%s", mg_error_last());
            cr_assert_eq(mg_engine_kv_column(batch_e, bid, l, pos, k2, v2), MG_OK, "%s", mg_error_last());
            cr_assert_arr_eq(k1, k2, kvd * sizeof(float), "%s: K differs at layer %d position %d", b->name, l, pos);
            cr_assert_arr_eq(v1, v2, kvd * sizeof(float), "%s: V differs at layer %d position %d", b->name, l, pos);
        }
    free(k1), free(v1), free(k2), free(v2);
    mg_engine_free(solo_e);
    mg_engine_free(batch_e);
    mg_model_free(m);
}

#endif
