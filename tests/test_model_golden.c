/* End-to-end model checks against references computed outside the project:
 * mg-llama-27m against HF transformers in float32 (golden.json), and
 * stories260K against llama2.c's run.c (expected_greedy.json). */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../src/util/file.h"
#include "golden_helpers.h"
#include "model_helpers.h"
#include "shared_path.h"

/* In FP32 activations the last-position top-20 logits match HF's float32
 * forward within 1e-3 relative, and the argmax agrees. */
Test(golden_mg_llama, fp32_top20_logits) {
    golden_fixture f = open_golden();
    const cJSON *prompts = cJSON_GetObjectItem(f.golden, "prompts");
    cr_assert(cJSON_GetArraySize(prompts) >= 12);
    double worst = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, prompts) {
        int n;
        int32_t *ids = json_ids(cJSON_GetObjectItem(p, "prompt_ids"), &n);
        mg_generate_result r = run_greedy(f.model, ids, n, 1, MG_KERNELS_FAST, MG_ACT_FP32);
        worst = fmax(worst, expect_top20(p, &r));
        mg_generate_result_free(&r);
        free(ids);
    }
    cr_log_info("fp32 top-20 logits: worst relative error %.2e over %d prompts", worst, cJSON_GetArraySize(prompts));
    close_golden(&f);
}

/* FP32 activations: the 64-token greedy continuation equals HF's. */
Test(golden_mg_llama, fp32_greedy_64) {
    golden_fixture f = open_golden();
    const cJSON *p;
    int total = 0, agree = 0;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(f.golden, "prompts")) {
        int n;
        int32_t *ids = json_ids(cJSON_GetObjectItem(p, "prompt_ids"), &n);
        mg_generate_result r = run_greedy(f.model, ids, n, GOLDEN_NEW, MG_KERNELS_FAST, MG_ACT_FP32);
        total += GOLDEN_NEW;
        agree += expect_greedy(p, &r);
        mg_generate_result_free(&r);
        free(ids);
    }
    cr_log_info("fp32 greedy: %d/%d tokens agree with HF float32", agree, total);
    close_golden(&f);
}

/* BF16 activations (the default numerics): a figure, not a pass/fail. */
Test(golden_mg_llama, bf16_greedy_agreement_report) {
    golden_fixture f = open_golden();
    const cJSON *p;
    int total = 0, agree = 0, full = 0, n_prompts = 0;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(f.golden, "prompts")) {
        int n;
        int32_t *ids = json_ids(cJSON_GetObjectItem(p, "prompt_ids"), &n);
        mg_generate_result r = run_greedy(f.model, ids, n, GOLDEN_NEW, MG_KERNELS_FAST, MG_ACT_BF16);
        int near_tie, a = greedy_agreement(p, &r, 0, &near_tie);
        total += GOLDEN_NEW;
        agree += a;
        full += a == GOLDEN_NEW;
        n_prompts++;
        mg_generate_result_free(&r);
        free(ids);
    }
    printf("BF16 activations vs HF float32: %d/%d greedy tokens agree before the first divergence; "
           "%d/%d prompts agree on all %d tokens\n",
           agree, total, full, n_prompts, GOLDEN_NEW);
    cr_assert_gt(agree, 0);
    close_golden(&f);
}

/* stories260K: greedy text equals llama2.c run.c's, for the empty prompt and
 * a given prompt. run.c's -n counts every position including BOS and the
 * prompt; its output echoes the prompt (decoded after BOS, which drops the
 * dummy-prefix space). */
Test(golden_stories260k, greedy_matches_run_c) {
    char dir[1024], bin[1100], exp_path[1100];
    MG_TEST_SHARED(dir, "models/stories260K");
    snprintf(bin, sizeof bin, "%s/stories260K.bin", dir);
    snprintf(exp_path, sizeof exp_path, "%s/expected_greedy.json", dir);
    mg_model *model;
    mg_tokenizer *tok;
    mg_model_format fmt;
    cr_assert_eq(mg_open_model(bin, &model, &tok, &fmt), MG_OK, "%s", mg_error_last());
    cr_assert_eq(fmt, MG_FORMAT_LLAMA2C);
    cJSON *exp = load_json(exp_path);
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(exp, "cases")) {
        const char *prompt = cJSON_GetObjectItem(c, "prompt")->valuestring;
        int steps = cJSON_GetObjectItem(c, "steps")->valueint;
        const char *want = cJSON_GetObjectItem(c, "text")->valuestring;
        int32_t *ids;
        size_t n;
        cr_assert_eq(mg_tokenizer_encode(tok, prompt, strlen(prompt), 1, &ids, &n), MG_OK, "%s", mg_error_last());
        /* run.c runs positions 0 .. steps-1 and prints the token each predicts,
         * so it ends with the token at position `steps`. */
        mg_generate_result r = run_greedy(model, ids, (int)n, steps - (int)n + 1, MG_KERNELS_FAST, MG_ACT_FP32);
        /* run.c stops when it samples BOS (id 1). */
        int keep = r.n;
        for (int i = 0; i < r.n; i++)
            if (r.tokens[i] == 1) {
                keep = i;
                break;
            }
        int32_t *all = malloc((n + (size_t)keep) * sizeof(int32_t));
        memcpy(all, ids, n * sizeof(int32_t));
        memcpy(all + n, r.tokens, (size_t)keep * sizeof(int32_t));
        char *text;
        cr_assert_eq(mg_tokenizer_decode(tok, all, n + (size_t)keep, 1, &text), MG_OK, "%s", mg_error_last());
        cr_expect_str_eq(text, want, "prompt '%s'", prompt);
        free(text);
        free(all);
        free(ids);
        mg_generate_result_free(&r);
    }
    cJSON_Delete(exp);
    mg_model_free(model);
    mg_tokenizer_free(tok);
}
