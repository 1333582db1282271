/* Test helpers: run a model end to end on the CPU backend. */
#ifndef MG_TEST_MODEL_HELPERS_H
#define MG_TEST_MODEL_HELPERS_H

#include <criterion/criterion.h>
#include <stdlib.h>

#include "../src/engine/generate.h"
#include "../src/engine/model_dir.h"

/* Greedy-generates `n_new` tokens (stop tokens ignored) after `prompt` with
 * the given numerics; fails the test on any error. */
static inline mg_generate_result run_greedy(const mg_model *model, const int32_t *prompt, int n_prompt, int n_new,
                                            mg_kernels kernels, mg_act_precision precision) {
    const mg_config *cfg = &model->config;
    mg_forward *fw;
    mg_kv_pool pool;
    int max_rows = n_prompt < 128 ? n_prompt : 128;
    cr_assert_eq(mg_forward_init(&fw, model, mg_backend_cpu(), max_rows), MG_OK, "%s", mg_error_last());
    cr_assert_eq(mg_kv_pool_init(&pool, cfg->n_layers, cfg->n_kv_heads, cfg->head_dim, 16,
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

#endif
