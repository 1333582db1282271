/* Tensor parallelism on CPU ranks (the same backend code the GPUs run, with
 * host collectives): mg-llama-27m split over 2 ranks against the unsplit
 * model, the determinism modes' checks on the split engine, the ops the
 * split needs (matmul_groups, fold, copy2d), and the errors for models that
 * do not split. */
#include "../src/backend/tp/tp.h"
#include "engine_mode_checks.h"

static const mg_backend_ops *cpu_tp2(void) {
    const mg_backend_ops *b = mg_backend_tp("cpu", 2);
    cr_assert_not_null(b, "%s", mg_error_last());
    cr_assert_eq(b->tp_ranks, 2);
    return b;
}

/* Prefill logits of prompt k on backend b (precision BF16, given kernels). */
static float *prompt_logits(const mg_backend_ops *b, const mg_model *m, int k, mg_kernels kernels, int *n_out) {
    const mg_config *c = &m->config;
    int32_t tok[PROMPT_LEN], pos[PROMPT_LEN];
    make_prompt(k, tok);
    mg_forward *fw;
    mg_kv_pool pool;
    cr_assert_eq(mg_forward_init(&fw, m, b, PROMPT_LEN), MG_OK, "%s", mg_error_last());
    cr_assert_eq(mg_kv_pool_init_on(&pool, b, MG_DTYPE_F32, c->n_layers, c->n_kv_heads, c->head_dim, 16, 8), MG_OK,
                 "%s", mg_error_last());
    mg_kv_seq seq = {0};
    cr_assert_eq(mg_kv_seq_reserve(&pool, &seq, PROMPT_LEN), MG_OK);
    mg_kv_seq *seqs[PROMPT_LEN];
    for (int i = 0; i < PROMPT_LEN; i++) pos[i] = i, seqs[i] = &seq;
    float *logits = malloc((size_t)PROMPT_LEN * c->vocab_size * sizeof(float));
    mg_batch batch = {.n_rows = PROMPT_LEN, .tokens = tok, .positions = pos, .seqs = seqs, .want_logits = NULL};
    cr_assert_eq(mg_forward_run(fw, &pool, &batch, kernels, MG_ACT_BF16, logits), MG_OK, "%s", mg_error_last());
    mg_kv_seq_free(&pool, &seq);
    mg_kv_pool_free(&pool);
    mg_forward_free(fw);
    *n_out = PROMPT_LEN;
    return logits;
}

/* The split model computes the same function: every position's logits
 * within BF16 tolerance of the unsplit model's, and the same top-1 wherever
 * the unsplit top-1/top-2 margin is not tiny. */
static void check_split_matches(mg_kernels kernels) {
    mg_model *m = load_small_model();
    const int V = m->config.vocab_size;
    int n;
    float *ref = prompt_logits(mg_backend_cpu(), m, 3, kernels, &n);
    float *tp = prompt_logits(cpu_tp2(), m, 3, kernels, &n);
    int compared = 0;
    for (int i = 0; i < n; i++) {
        const float *a = ref + (size_t)i * V, *b = tp + (size_t)i * V;
        float scale = 0, diff = 0;
        for (int v = 0; v < V; v++) {
            scale = fmaxf(scale, fabsf(a[v]));
            diff = fmaxf(diff, fabsf(a[v] - b[v]));
        }
        cr_assert_leq(diff, 0.03f * scale + 0.05f, "position %d: logits differ by %g (scale %g)", i, diff, scale);
        const mg_argmax ra = mg_argmax_margin(a, V), rb = mg_argmax_margin(b, V);
        if (ra.margin > 0.1f) {
            cr_assert_eq(ra.token, rb.token, "position %d: top-1 %d vs %d (margin %g)", i, ra.token, rb.token,
                         ra.margin);
            compared++;
        }
    }
    cr_assert_gt(compared, n / 2, "too few positions with a clear top-1 (%d of %d)", compared, n);
    free(ref);
    free(tp);
    mg_model_free(m);
}

Test(tp, split_matches_unsplit_fast) { check_split_matches(MG_KERNELS_FAST); }
Test(tp, split_matches_unsplit_invariant) { check_split_matches(MG_KERNELS_INVARIANT); }

/* invariant on the split engine: tokens and logits bitwise alone and in
 * batches, staggered arrivals, prefill chunks and swap preemption (whose
 * KV images gather every rank's heads). */
Test(tp, invariant_bitwise_across_batches, .timeout = 1800) { check_invariant_bitwise(cpu_tp2()); }

/* margingate's repaired K/V columns equal the invariant run's: mg_kv_read
 * gathers a column from both ranks. */
Test(tp, margingate_kv_column_equals_invariant, .timeout = 1800) { check_margingate_kv_column(cpu_tp2()); }

/* The reduction ops: folding matmul_groups in order equals the group sums,
 * and copy2d moves a strided block. */
Test(tp, groups_fold_copy2d) {
    const mg_backend_ops *b = mg_backend_cpu();
    enum { N = 3, R = 5, K = 2500 };
    const int G = (K + MG_MATMUL_GROUP - 1) / MG_MATMUL_GROUP;
    float *x = malloc(sizeof(float) * N * K), *wf = malloc(sizeof(float) * R * K);
    for (int i = 0; i < N * K; i++) x[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
    for (int i = 0; i < R * K; i++) wf[i] = (float)((i * 53) % 97) / 97.0f - 0.5f;
    const mg_matrix w = {.dtype = MG_DTYPE_F32, .data = wf, .rows = R, .cols = K};
    float *groups = malloc(sizeof(float) * G * N * R), out[N * R];
    cr_assert_eq(b->matmul_groups(groups, x, &w, N, 0), MG_OK);
    cr_assert_eq(b->fold(out, groups, G, N * R, 0), MG_OK);
    for (int i = 0; i < N; i++)
        for (int r = 0; r < R; r++) {
            float total = 0.0f;
            for (int g = 0; g < G; g++) {
                float acc = 0.0f;
                for (int c = g * MG_MATMUL_GROUP; c < K && c < (g + 1) * MG_MATMUL_GROUP; c++)
                    acc = fmaf(x[i * K + c], wf[r * K + c], acc);
                cr_assert_eq(groups[(g * N + i) * R + r], acc, "group %d of (%d, %d)", g, i, r);
                total += acc;
            }
            cr_assert_eq(out[i * R + r], total, "fold of (%d, %d)", i, r);
        }
    float src[6] = {1, 2, 3, 4, 5, 6}, dst[8] = {0};
    cr_assert_eq(b->copy2d(dst, 4 * sizeof(float), src, 3 * sizeof(float), 2 * sizeof(float), 2), MG_OK);
    const float want[8] = {1, 2, 0, 0, 4, 5, 0, 0};
    cr_assert_arr_eq(dst, want, sizeof want);
    free(x);
    free(wf);
    free(groups);
}

/* Models whose heads do not split, and bad degrees, are refused clearly. */
Test(tp, refuses_what_does_not_split) {
    cr_assert_null(mg_backend_tp("cpu", 1));
    cr_assert_null(mg_backend_tp("cpu", MG_TP_MAX_RANKS + 1));
    cr_assert_null(mg_backend_tp("tpu", 2));
    cr_assert(strstr(mg_error_last(), "tpu") != NULL, "%s", mg_error_last());
    const mg_backend_ops *b = mg_backend_tp("cpu", 4); /* 27m: 2 KV heads */
    cr_assert_not_null(b, "%s", mg_error_last());
    cr_assert_null(mg_backend_tp("cpu", 2), "a second TP backend with other ranks must be refused");
    mg_model *m = load_small_model();
    const mg_weights *w;
    cr_assert_eq(b->weights_acquire(&w, m), MG_ERR_UNSUPPORTED);
    cr_assert(strstr(mg_error_last(), "KV heads (2) do not split evenly") != NULL, "%s", mg_error_last());
    mg_model_free(m);
}
