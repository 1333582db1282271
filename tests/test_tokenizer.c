/* Byte-level BPE tokenizers against the HF goldens: mg-llama-27m,
 * Llama 3.1 and Qwen3 (ids, ids with special tokens, decode round trip,
 * chat template example), plus load/encode timing. */
#include "test_tokenizer_common.h"
#include "shared_path.h"

/* Loads <shared>/<dir>/tokenizer.json (+ tokenizer_config.json), timing it. */
static mg_tokenizer *load_shared(const char *dir, double *secs) {
    char tj[512], tc[512], rel[256];
    snprintf(rel, sizeof rel, "%s/tokenizer.json", dir);
    MG_TEST_SHARED(tj, rel);
    snprintf(rel, sizeof rel, "%s/tokenizer_config.json", dir);
    MG_TEST_SHARED(tc, rel);
    mg_tokenizer *tok = NULL;
    double t0 = tt_now();
    cr_assert_eq(mg_tokenizer_load_hf(tj, tc, &tok), MG_OK, "load %s: %s", tj, mg_error_last());
    if (secs) *secs = tt_now() - t0;
    return tok;
}

/* Runs the golden file <shared>/<golden> against tok. */
static void run_golden(const mg_tokenizer *tok, const char *golden_rel, int32_t bos, int min_entries) {
    char gp[512];
    MG_TEST_SHARED(gp, golden_rel);
    cJSON *g = tt_read_json(gp);
    int checked = 0;
    double t0 = tt_now();
    int fails = tt_check_golden(tok, g, bos, &checked);
    double dt = tt_now() - t0;
    cr_log_info("%s: %d checks, %d failures, %.1f ms", golden_rel, checked, fails, dt * 1e3);
    cr_expect_eq(fails, 0, "%s: %d of %d golden checks failed (details on stderr)", golden_rel, fails, checked);
    cr_expect_geq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(g, "entries")), min_entries);
    tt_check_chat(tok, g);
    cJSON_Delete(g);
}

Test(tokenizer, mg_llama_27m_golden) {
    mg_tokenizer *tok = load_shared("models/mg-llama-27m", NULL);
    cr_expect_eq(mg_tokenizer_vocab_size(tok), 8192);
    cr_expect_eq(mg_tokenizer_bos_id(tok), 0);
    cr_expect_eq(mg_tokenizer_eos_id(tok), 0);
    cr_expect_eq(mg_tokenizer_token_id(tok, "<|user|>"), 1);
    cr_expect(mg_tokenizer_is_special(tok, 2));
    run_golden(tok, "models/tokenizer-golden.json", 0, 150);
    mg_tokenizer_free(tok);
}

Test(tokenizer, llama31_golden) {
    double secs;
    mg_tokenizer *tok = load_shared("tokenizers/llama3.1", &secs);
    fprintf(stderr, "Llama 3.1 tokenizer.json load: %.1f ms\n", secs * 1e3);
    cr_expect_lt(secs, 2.0, "loading the Llama 3.1 tokenizer took %.2f s", secs);
    cr_expect_eq(mg_tokenizer_vocab_size(tok), 128256);
    cr_expect_eq(mg_tokenizer_bos_id(tok), 128000);
    cr_expect_eq(mg_tokenizer_eos_id(tok), 128009);
    cr_expect_str_eq(mg_tokenizer_token_str(tok, 1820), "the");
    run_golden(tok, "tokenizers/llama3.1/tokenizer-golden.json", 128000, 200);
    mg_tokenizer_free(tok);
}

Test(tokenizer, qwen3_golden) {
    double secs;
    mg_tokenizer *tok = load_shared("tokenizers/qwen3", &secs);
    fprintf(stderr, "Qwen3 tokenizer.json load: %.1f ms\n", secs * 1e3);
    cr_expect_eq(mg_tokenizer_vocab_size(tok), 151669);
    cr_expect_eq(mg_tokenizer_bos_id(tok), -1);
    cr_expect_eq(mg_tokenizer_eos_id(tok), 151645);
    cr_expect(!mg_tokenizer_is_special(tok, 151667), "<think> is a non-special added token");
    run_golden(tok, "tokenizers/qwen3/tokenizer-golden.json", -1, 200);
    mg_tokenizer_free(tok);
}

/* Applies a golden's {"dotted.key": value} patch to tokenizer.json's tree. */
static void apply_patch(cJSON *tj, const cJSON *patch) {
    const cJSON *p;
    cJSON_ArrayForEach(p, patch) {
        char key[128];
        snprintf(key, sizeof key, "%s", p->string);
        cJSON *node = tj;
        char *dot, *k = key;
        while ((dot = strchr(k, '.'))) {
            *dot = '\0';
            node = cJSON_GetObjectItemCaseSensitive(node, k);
            cr_assert_not_null(node, "patch key %s", p->string);
            k = dot + 1;
        }
        cJSON_ReplaceItemInObjectCaseSensitive(node, k, cJSON_Duplicate(p, 1));
    }
}

/* Llama 2 sentencepiece-style BPE (Metaspace, byte_fallback), converted by
 * tools/convert_sp_tokenizer.py; goldens recorded with HF transformers. */
Test(tokenizer, llama2_sentencepiece_golden) {
    mg_tokenizer *tok = NULL;
    cr_assert_eq(mg_tokenizer_load_hf("tests/data/llama2-tokenizer/tokenizer.json",
                                      "tests/data/llama2-tokenizer/tokenizer_config.json", &tok),
                 MG_OK, "%s", mg_error_last());
    cr_expect_eq(mg_tokenizer_vocab_size(tok), 32000);
    cr_expect_eq(mg_tokenizer_bos_id(tok), 1);
    cr_expect_eq(mg_tokenizer_eos_id(tok), 2);
    cJSON *g = tt_read_json("tests/data/llama2-tokenizer/tokenizer-golden.json");
    int checked = 0, fails = tt_check_golden(tok, g, 1, &checked);
    cr_expect_eq(fails, 0, "llama2: %d of %d golden checks failed (details on stderr)", fails, checked);
    cr_expect_geq(checked, 300);
    /* streaming pieces: the first piece drops the metaspace's space, later ones keep it */
    int32_t *ids = NULL;
    size_t n = 0, len = 0;
    cr_assert_eq(mg_tokenizer_encode(tok, "Hello world", 11, 1, &ids, &n), MG_OK);
    cr_assert_eq(n, 3);
    cr_expect_eq(ids[1], 15043);
    const char *p = mg_tokenizer_piece(tok, ids[1], ids[0], &len);
    cr_expect(len == 5 && !memcmp(p, "Hello", 5));
    p = mg_tokenizer_piece(tok, ids[2], ids[1], &len);
    cr_expect(len == 6 && !memcmp(p, " world", 6));
    p = mg_tokenizer_piece(tok, mg_tokenizer_token_id(tok, "<0x0A>"), ids[2], &len);
    cr_expect(len == 1 && p[0] == '\n');
    free(ids);
    /* an embedded NUL is a character like any other (byte fallback <0x00> = 3); HF gives [263, 3, 29890] */
    cr_assert_eq(mg_tokenizer_encode(tok, "a\0b", 3, 0, &ids, &n), MG_OK);
    cr_expect(n == 3 && ids[0] == 263 && ids[1] == 3 && ids[2] == 29890);
    free(ids);
    cJSON_Delete(g);
    mg_tokenizer_free(tok);
}

/* The same vocab in transformers 4's legacy layout (Prepend + Replace normalizer). */
Test(tokenizer, llama2_legacy_normalizer_golden) {
    cJSON *g = tt_read_json("tests/data/llama2-tokenizer/tokenizer-golden-legacy.json");
    cJSON *tj = tt_read_json("tests/data/llama2-tokenizer/tokenizer.json");
    apply_patch(tj, cJSON_GetObjectItemCaseSensitive(g, "patch"));
    char *txt = cJSON_PrintUnformatted(tj);
    mg_tokenizer *tok = NULL;
    cr_assert_eq(mg_tokenizer_load_hf_mem(txt, strlen(txt), NULL, 0, &tok), MG_OK, "%s", mg_error_last());
    int checked = 0, fails = tt_check_golden(tok, g, 1, &checked);
    cr_expect_eq(fails, 0, "llama2 legacy: %d of %d golden checks failed (details on stderr)", fails, checked);
    free(txt);
    cJSON_Delete(tj);
    cJSON_Delete(g);
    mg_tokenizer_free(tok);
}
