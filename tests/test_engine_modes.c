/* The four determinism modes on the batched CPU engine (mg-llama-27m):
 * a request's output alone vs inside batches of 2..64 with other companions,
 * arrival orders and preemption. */
#include <math.h>

#include "engine_helpers.h"

#define NEW 24
/* 24 KV blocks of 16 tokens for mg-llama-27m (8 layers, 2 KV heads of 64, K
 * and V in FP32): room for about 8 requests of 36 tokens at once. */
#define SMALL_KV_BYTES (2 * sizeof(float) * 8 * 2 * 64 * 16 * 24)

static mg_engine_config base_config(void) {
    mg_engine_config c = mg_engine_config_default();
    c.kv_bytes = (size_t)64 << 20;
    c.llm42_window = 8;
    c.llm42_group = 4;
    return c;
}

static mg_request_params params(mg_mode mode) {
    return (mg_request_params){.mode = mode, .max_new_tokens = NEW, .sampling = {.top_p = 1.0f}, .ignore_eos = 1,
                               .record_logits = 1};
}

/* Solo reference for prompt k. */
static run_out solo(const mg_model *m, const mg_engine_config *cfg, const mg_request_params *p, int k) {
    run_out o;
    run_engine(m, cfg, p, &k, NULL, 1, &o);
    cr_assert_eq(o.n, NEW);
    return o;
}

/* off: the fast path really flips: some request decoded inside a batch of 32
 * differs from its solo run. Otherwise the determinism modes would be moot. */
Test(engine_modes, off_flips_occur) {
    mg_model *m = load_small_model();
    mg_engine_config cfg = base_config();
    mg_request_params p = params(MG_MODE_OFF);
    int which[32];
    for (int i = 0; i < 32; i++) which[i] = i;
    run_out batched[32];
    run_engine(m, &cfg, &p, which, NULL, 32, batched);
    int diverged = 0;
    for (int i = 0; i < 32; i++) {
        run_out s = solo(m, &cfg, &p, i);
        diverged += !same_tokens(&s, &batched[i]);
    }
    cr_log_info("off: %d of 32 requests diverge between solo and batch-32 decoding", diverged);
    cr_assert_gt(diverged, 0, "no batch-induced flip at all on the fast path");
    mg_model_free(m);
}

/* invariant: tokens and logits bitwise identical alone and in batches of
 * 2..64 with different companions, staggered arrivals, and preemption. */
Test(engine_modes, invariant_bitwise_across_batches) {
    mg_model *m = load_small_model();
    mg_engine_config cfg = base_config();
    mg_request_params p = params(MG_MODE_INVARIANT);
    enum { PROBES = 3 };
    run_out ref[PROBES];
    for (int k = 0; k < PROBES; k++) ref[k] = solo(m, &cfg, &p, k);
    const int sizes[] = {2, 7, 16, 64};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        int n = sizes[si];
        int which[64], arrive[64];
        /* probes at different slots; companions from other prompts; staggered arrivals */
        for (int i = 0; i < n; i++) which[i] = 100 + (int)si * 64 + i, arrive[i] = (i * 3) % 5;
        for (int k = 0; k < PROBES && k < n; k++) which[(k * 5 + (int)si) % n] = k;
        run_out *out = malloc((size_t)n * sizeof *out);
        run_engine(m, &cfg, &p, which, arrive, n, out);
        for (int i = 0; i < n; i++) {
            if (which[i] >= PROBES) continue;
            const run_out *r = &ref[which[i]];
            cr_assert(same_tokens(r, &out[i]), "batch %d: tokens of prompt %d differ from solo", n, which[i]);
            cr_assert_arr_eq(r->hashes, out[i].hashes, (size_t)NEW * sizeof(uint64_t),
                             "batch %d: logits of prompt %d are not bitwise equal to solo", n, which[i]);
        }
        free(out);
    }
    /* Preemption: a KV budget too small for all 16 requests at once forces swaps. */
    mg_engine_config small = cfg;
    small.kv_bytes = SMALL_KV_BYTES;
    int which[16];
    for (int i = 0; i < 16; i++) which[i] = i % PROBES == i ? i : 200 + i;
    run_out out[16];
    mg_engine *probe;
    cr_assert_eq(mg_engine_init(&probe, m, mg_backend_cpu(), &small), MG_OK, "%s", mg_error_last());
    mg_engine_free(probe);
    run_engine(m, &small, &p, which, NULL, 16, out);
    for (int k = 0; k < PROBES; k++) {
        cr_assert(same_tokens(&ref[k], &out[k]), "preempted run: tokens of prompt %d differ", k);
        cr_assert_arr_eq(ref[k].hashes, out[k].hashes, (size_t)NEW * sizeof(uint64_t),
                         "preempted run: logits of prompt %d differ", k);
    }
    mg_model_free(m);
}

/* Preemption really happens with the small budget used above. */
Test(engine_modes, preemption_swaps_and_resumes) {
    mg_model *m = load_small_model();
    mg_engine_config cfg = base_config();
    cfg.kv_bytes = SMALL_KV_BYTES;
    mg_engine *e;
    cr_assert_eq(mg_engine_init(&e, m, mg_backend_cpu(), &cfg), MG_OK, "%s", mg_error_last());
    mg_request_params p = params(MG_MODE_INVARIANT);
    for (int i = 0; i < 16; i++) {
        int32_t prompt[PROMPT_LEN];
        int id;
        make_prompt(i, prompt);
        cr_assert_eq(mg_engine_add(e, prompt, PROMPT_LEN, &p, &id), MG_OK, "%s", mg_error_last());
    }
    while (mg_engine_pending(e)) cr_assert_eq(mg_engine_step(e), MG_OK, "%s", mg_error_last());
    cr_assert_gt(mg_engine_preemptions(e), 0, "expected the small KV pool to force preemption");
    for (int id = 0; id < 16; id++) {
        mg_request_view v;
        mg_engine_view(e, id, &v);
        cr_assert_eq(v.finish, MG_FINISH_LENGTH);
        cr_assert_eq(v.n_visible, NEW);
    }
    mg_engine_free(e);
    mg_model_free(m);
}

/* llm42: identical tokens across batch compositions and runs for the same
 * (W, B); the rollback path runs (natural flips or forced ones). */
Test(engine_modes, llm42_deterministic_with_rollback) {
    mg_model *m = load_small_model();
    mg_engine_config cfg = base_config();
    mg_request_params p = params(MG_MODE_LLM42);
    run_out ref[3];
    for (int k = 0; k < 3; k++) ref[k] = solo(m, &cfg, &p, k);
    long natural_rollbacks = 0;
    const int sizes[] = {5, 24};
    for (size_t si = 0; si < 2; si++) {
        int n = sizes[si], which[24], arrive[24];
        for (int i = 0; i < n; i++) which[i] = 300 + (int)si * 40 + i, arrive[i] = i % 3;
        which[0] = 0, which[n / 2] = 1, which[n - 1] = 2;
        run_out out[24];
        run_engine(m, &cfg, &p, which, arrive, n, out);
        for (int i = 0; i < n; i++) {
            if (which[i] < 3)
                cr_assert(same_tokens(&ref[which[i]], &out[i]), "batch %d: llm42 output of prompt %d differs", n,
                          which[i]);
            natural_rollbacks += out[i].c.repairs;
        }
    }
    cr_log_info("llm42: %ld natural mismatches rolled back", natural_rollbacks);
    /* Fault injection: corrupt fast tokens at steps 3 and 11; the output is unchanged. */
    int32_t faults[] = {3, 11};
    mg_request_params pf = p;
    pf.fault_steps = faults;
    pf.n_fault_steps = 2;
    int which[6] = {0, 301, 302, 1, 303, 2};
    run_out out[6];
    run_engine(m, &cfg, &pf, which, NULL, 6, out);
    for (int i = 0; i < 6; i++) {
        cr_assert_geq(out[i].c.repairs, 2, "forced mismatches were not all caught");
        cr_assert_gt(out[i].c.rolled_back, 0);
        if (which[i] < 3) cr_assert(same_tokens(&ref[which[i]], &out[i]), "fault-injected llm42 output differs");
    }
    mg_model_free(m);
}

/* margingate: with every step verified and forced mismatches, each forced
 * mismatch is repaired and the output equals the solo invariant output. */
Test(engine_modes, margingate_repairs_faults) {
    mg_model *m = load_small_model();
    mg_engine_config cfg = base_config();
    cfg.margingate_tau = INFINITY;
    mg_request_params inv = params(MG_MODE_INVARIANT);
    run_out ref[2];
    for (int k = 0; k < 2; k++) ref[k] = solo(m, &cfg, &inv, k);
    int32_t faults[] = {0, 5, 17};
    mg_request_params p = params(MG_MODE_MARGINGATE);
    p.fault_steps = faults;
    p.n_fault_steps = 3;
    int which[12];
    for (int i = 0; i < 12; i++) which[i] = 400 + i;
    which[3] = 0, which[8] = 1;
    run_out out[12];
    run_engine(m, &cfg, &p, which, NULL, 12, out);
    for (int i = 0; i < 12; i++) {
        cr_assert_eq(out[i].c.verified_steps, out[i].c.steps, "always mode must verify every step");
        cr_assert_geq(out[i].c.repairs, 3, "forced mismatches not all repaired");
    }
    for (int k = 0; k < 2; k++) {
        const run_out *r = &out[k == 0 ? 3 : 8];
        cr_assert(same_tokens(&ref[k], r), "margingate output of prompt %d differs from solo invariant", k);
        cr_assert_arr_eq(ref[k].hashes, r->hashes, (size_t)NEW * sizeof(uint64_t),
                         "margingate logits of prompt %d differ from solo invariant", k);
    }
    mg_model_free(m);
}

/* margingate K/V repair, checked directly: after verified steps, every K/V
 * column of the request equals the solo invariant run's, bitwise. */
Test(engine_modes, margingate_kv_column_equals_invariant) {
    mg_model *m = load_small_model();
    const mg_config *mc = &m->config;
    mg_engine_config cfg = base_config();
    cfg.margingate_tau = INFINITY;
    int32_t prompt[PROMPT_LEN];
    make_prompt(0, prompt);
    mg_request_params pi = params(MG_MODE_INVARIANT), pm = params(MG_MODE_MARGINGATE);
    int32_t faults[] = {2};
    pm.fault_steps = faults;
    pm.n_fault_steps = 1;
    mg_engine *solo_e, *batch_e;
    cr_assert_eq(mg_engine_init(&solo_e, m, mg_backend_cpu(), &cfg), MG_OK);
    cr_assert_eq(mg_engine_init(&batch_e, m, mg_backend_cpu(), &cfg), MG_OK);
    int sid, bid, other;
    cr_assert_eq(mg_engine_add(solo_e, prompt, PROMPT_LEN, &pi, &sid), MG_OK);
    for (int i = 0; i < 9; i++) {
        int32_t q[PROMPT_LEN];
        make_prompt(500 + i, q);
        mg_request_params po = params(i % 2 ? MG_MODE_OFF : MG_MODE_MARGINGATE);
        cr_assert_eq(mg_engine_add(batch_e, q, PROMPT_LEN, &po, &other), MG_OK);
        if (i == 4) cr_assert_eq(mg_engine_add(batch_e, prompt, PROMPT_LEN, &pm, &bid), MG_OK);
    }
    /* Prefill + 8 decode steps in both engines. */
    for (int s = 0; s < 9; s++) {
        cr_assert_eq(mg_engine_step(solo_e), MG_OK);
        cr_assert_eq(mg_engine_step(batch_e), MG_OK);
    }
    mg_request_view v;
    mg_engine_view(batch_e, bid, &v);
    cr_assert_geq(v.counters.repairs, 1, "the forced mismatch at step 2 was not repaired");
    size_t kvd = (size_t)mc->n_kv_heads * mc->head_dim;
    float *k1 = malloc(kvd * sizeof(float)), *v1 = malloc(kvd * sizeof(float));
    float *k2 = malloc(kvd * sizeof(float)), *v2 = malloc(kvd * sizeof(float));
    for (int pos = 0; pos < PROMPT_LEN + 8; pos++)
        for (int l = 0; l < mc->n_layers; l++) {
            cr_assert_eq(mg_engine_kv_column(solo_e, sid, l, pos, k1, v1), MG_OK, "%s", mg_error_last());
            cr_assert_eq(mg_engine_kv_column(batch_e, bid, l, pos, k2, v2), MG_OK, "%s", mg_error_last());
            cr_assert_arr_eq(k1, k2, kvd * sizeof(float), "K differs at layer %d position %d", l, pos);
            cr_assert_arr_eq(v1, v2, kvd * sizeof(float), "V differs at layer %d position %d", l, pos);
        }
    free(k1), free(v1), free(k2), free(v2);
    mg_engine_free(solo_e);
    mg_engine_free(batch_e);
    mg_model_free(m);
}
