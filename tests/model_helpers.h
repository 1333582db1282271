/* Test helpers: run a model end to end on a backend (the CPU unless a test
 * names another), and skip tests that need a GPU when there is none. */
#ifndef MG_TEST_MODEL_HELPERS_H
#define MG_TEST_MODEL_HELPERS_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "../src/backend/backend.h"
#include "../src/engine/generate.h"
#include "../src/engine/model_dir.h"

/* Greedy-generates `n_new` tokens (stop tokens ignored) after `prompt` on
 * `backend` with the given numerics; fails the test on any error. The KV
 * cache is FP32, except on a device backend in BF16 numerics, where it holds
 * BF16 (as the engine's does). */
static inline mg_generate_result run_greedy_on(const mg_backend_ops *backend, const mg_model *model,
                                               const int32_t *prompt, int n_prompt, int n_new, mg_kernels kernels,
                                               mg_act_precision precision) {
    const mg_config *cfg = &model->config;
    mg_forward *fw;
    mg_kv_pool pool;
    int max_rows = n_prompt < 128 ? n_prompt : 128;
    mg_dtype dt = !backend->host_memory && precision == MG_ACT_BF16 ? MG_DTYPE_BF16 : MG_DTYPE_F32;
    cr_assert_eq(mg_forward_init(&fw, model, backend, max_rows), MG_OK, "%s", mg_error_last());
    cr_assert_eq(mg_kv_pool_init_on(&pool, backend, dt, cfg->n_layers, cfg->n_kv_heads, cfg->head_dim, 16,
                                    (n_prompt + n_new + 15) / 16),
                 MG_OK, "%s", mg_error_last());
    mg_generate_opts g = {.max_new_tokens = n_new, .sampling = {.top_p = 1.0f}, .kernels = kernels,
                          .precision = precision, .ignore_eos = 1};
    mg_generate_result r;
    cr_assert_eq(mg_generate(fw, &pool, cfg, max_rows, prompt, n_prompt, &g, NULL, NULL, &r), MG_OK, "%s",
                 mg_error_last());
    mg_forward_free(fw);
    mg_kv_pool_free(&pool);
    return r;
}

/* run_greedy_on the CPU backend. */
static inline mg_generate_result run_greedy(const mg_model *model, const int32_t *prompt, int n_prompt, int n_new,
                                            mg_kernels kernels, mg_act_precision precision) {
    return run_greedy_on(mg_backend_cpu(), model, prompt, n_prompt, n_new, kernels, precision);
}

/* The CUDA backend, or a skip of the calling test with the reason (no GPU,
 * no driver, a build without CUDA). */
static inline const mg_backend_ops *cuda_or_skip(void) {
    const mg_backend_ops *g = mg_backend_by_name("cuda");
    if (!g) cr_skip_test("CUDA backend not usable here: %s", mg_error_last());
    return g;
}

/* Skips are silent in Criterion's default output: a CUDA test binary states
 * MG_CUDA_SKIP_REPORT(its name) once, and then says after every test has run
 * (in the runner process, which never touches the GPU before) how many tests
 * skipped and why. */
#define MG_CUDA_SKIP_REPORT(binary)                                                                         \
    ReportHook(POST_ALL)(struct criterion_global_stats *stats) {                                           \
        if (stats->tests_skipped == 0) return;                                                              \
        const char *why = mg_backend_by_name("cuda") ? "see --verbose for the reasons" : mg_error_last();   \
        printf("%s: %zu of %zu tests SKIPPED: %s\n", (binary), stats->tests_skipped, stats->nb_tests, why); \
    }

#endif
