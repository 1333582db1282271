/* mg-llama-27m end to end on the CUDA backend: HF float32 goldens
 * (golden.json, the same checks as the CPU's test_model_golden.c) and GPU vs
 * CPU greedy agreement in BF16. The batched engine and its determinism modes
 * on the GPU are tests/test_cuda_modes.c. Skips without a usable GPU or
 * without ../shared (MG_SHARED_DIR). */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../src/engine/generate.h"
#include "../src/engine/model_dir.h"
#include "../src/util/file.h"
#include "golden_helpers.h"
#include "model_helpers.h"
#include "shared_path.h"

MG_CUDA_SKIP_REPORT("test_cuda_model")

/* FP32 activations on the GPU: the last-position top-20 logits match HF's
 * float32 forward within 1e-3 relative, and the argmax agrees. */
Test(cuda_model, fp32_top20_logits) {
    const mg_backend_ops *g = cuda_or_skip();
    golden_fixture f = open_golden();
    double worst = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(f.golden, "prompts")) {
        int n;
        int32_t *ids = json_ids(cJSON_GetObjectItem(p, "prompt_ids"), &n);
        for (int kern = 0; kern < 2; kern++) {
            mg_generate_result r = run_greedy_on(g, f.model, ids, n, 1, (mg_kernels)kern, MG_ACT_FP32);
            worst = fmax(worst, expect_top20(p, &r));
            mg_generate_result_free(&r);
        }
        free(ids);
    }
    printf("cuda fp32 top-20 logits vs HF float32: worst relative error %.2e\n", worst);
    close_golden(&f);
}

/* FP32 activations on the GPU: the 64-token greedy continuation equals HF's
 * (a divergence at a reference margin below 1e-3 is reported, not failed). */
Test(cuda_model, fp32_greedy_64) {
    const mg_backend_ops *g = cuda_or_skip();
    golden_fixture f = open_golden();
    int total = 0, agree = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(f.golden, "prompts")) {
        int n;
        int32_t *ids = json_ids(cJSON_GetObjectItem(p, "prompt_ids"), &n);
        mg_generate_result r = run_greedy_on(g, f.model, ids, n, GOLDEN_NEW, MG_KERNELS_FAST, MG_ACT_FP32);
        total += GOLDEN_NEW;
        agree += expect_greedy(p, &r);
        mg_generate_result_free(&r);
        free(ids);
    }
    printf("cuda fp32 greedy vs HF float32: %d/%d tokens agree\n", agree, total);
    close_golden(&f);
}

/* BF16 (the default numerics) on the GPU: agreement with HF float32 and
 * with the CPU backend's BF16 run; a figure, checked only for sanity. */
Test(cuda_model, bf16_agreement_report) {
    const mg_backend_ops *g = cuda_or_skip();
    golden_fixture f = open_golden();
    int total = 0, agree_hf[2] = {0, 0}, agree_cpu[2] = {0, 0}, n_prompts = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(f.golden, "prompts")) {
        int n;
        int32_t *ids = json_ids(cJSON_GetObjectItem(p, "prompt_ids"), &n);
        for (int kern = 0; kern < 2; kern++) {
            mg_generate_result r = run_greedy_on(g, f.model, ids, n, GOLDEN_NEW, (mg_kernels)kern, MG_ACT_BF16);
            mg_generate_result c =
                run_greedy_on(mg_backend_cpu(), f.model, ids, n, GOLDEN_NEW, (mg_kernels)kern, MG_ACT_BF16);
            int near_tie;
            agree_hf[kern] += greedy_agreement(p, &r, 0, &near_tie);
            int a = 0;
            while (a < GOLDEN_NEW && r.tokens[a] == c.tokens[a]) a++;
            agree_cpu[kern] += a;
            mg_generate_result_free(&r);
            mg_generate_result_free(&c);
        }
        total += GOLDEN_NEW;
        n_prompts++;
        free(ids);
    }
    printf("cuda bf16 fast: %d/%d greedy tokens agree with HF float32 before the first divergence, %d/%d with the "
           "CPU bf16 run\n",
           agree_hf[0], total, agree_cpu[0], total);
    printf("cuda bf16 invariant: %d/%d with HF float32, %d/%d with the CPU bf16 invariant run\n", agree_hf[1], total,
           agree_cpu[1], total);
    cr_expect_gt(agree_hf[0], total / 4, "BF16 GPU decoding departs from the reference almost at once");
    close_golden(&f);
}
