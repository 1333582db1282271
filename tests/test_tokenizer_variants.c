/* tokenizer.json features beyond the shipped tokenizers (GPT-2 ByteLevel
 * regex and prefix space, every Split behaviour, NFC on byte-level, added
 * tokens with lstrip/rstrip/single_word/normalized, Metaspace schemes and
 * decoder, regex Replace, unk without byte fallback, no decoder) against
 * HF tokenizers: tests/data/tokenizers/variants-golden.json, made by
 * tools/gen_tokenizer_variant_golden.py. */
#include "test_tokenizer_common.h"
#include "shared_path.h"

/* Applies a variant patch (syntax in tools/gen_tokenizer_variant_golden.py). */
static void apply_patch(cJSON *tj, const cJSON *patch) {
    const cJSON *p;
    cJSON_ArrayForEach(p, patch) {
        const char *k = p->string;
        if (!strcmp(k, "+added_tokens")) {
            cJSON *arr = cJSON_GetObjectItemCaseSensitive(tj, "added_tokens");
            const cJSON *t;
            cJSON_ArrayForEach(t, p) cJSON_AddItemToArray(arr, cJSON_Duplicate(t, 1));
        } else if (!strncmp(k, "added_tokens[", 13)) {
            const char *close = strstr(k, "].");
            cr_assert_not_null(close);
            cJSON *t;
            cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(tj, "added_tokens")) {
                const char *c = cJSON_GetObjectItemCaseSensitive(t, "content")->valuestring;
                if (strlen(c) == (size_t)(close - (k + 13)) && !strncmp(c, k + 13, strlen(c)))
                    cJSON_ReplaceItemInObjectCaseSensitive(t, close + 2, cJSON_Duplicate(p, 1));
            }
        } else {
            char key[128];
            snprintf(key, sizeof key, "%s", k);
            cJSON *node = tj;
            char *dot, *kk = key;
            while ((dot = strchr(kk, '.'))) {
                *dot = '\0';
                node = cJSON_GetObjectItemCaseSensitive(node, kk);
                cr_assert_not_null(node, "patch key %s", k);
                kk = dot + 1;
            }
            if (cJSON_GetObjectItemCaseSensitive(node, kk)) cJSON_ReplaceItemInObjectCaseSensitive(node, kk, cJSON_Duplicate(p, 1));
            else cJSON_AddItemToObject(node, kk, cJSON_Duplicate(p, 1));
        }
    }
}

/* Compares a decode with the expected text; returns 1 when equal. */
static int same_text(const mg_tokenizer *tok, const int32_t *ids, size_t n, int skip, const char *want,
                     const char *what) {
    char *s = NULL;
    cr_assert_eq(mg_tokenizer_decode(tok, ids, n, skip, &s), MG_OK, "%s", mg_error_last());
    int ok = !strcmp(s, want);
    if (!ok) fprintf(stderr, "MISMATCH %s: got '%s' want '%s'\n", what, s, want);
    free(s);
    return ok;
}

Test(tokenizer_variants, hf_goldens) {
    char mgp[512];
    MG_TEST_SHARED(mgp, "models/mg-llama-27m/tokenizer.json");
    cJSON *g = tt_read_json("tests/data/tokenizers/variants-golden.json");
    cJSON *base_mg = tt_read_json(mgp), *base_l2 = tt_read_json("tests/data/llama2-tokenizer/tokenizer.json");
    const cJSON *v;
    int fails = 0, checks = 0, variants = 0;
    cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(g, "variants")) {
        const char *name = cJSON_GetObjectItemCaseSensitive(v, "name")->valuestring;
        const char *base = cJSON_GetObjectItemCaseSensitive(v, "base")->valuestring;
        cJSON *tj = cJSON_Duplicate(strcmp(base, "mg") ? base_l2 : base_mg, 1);
        apply_patch(tj, cJSON_GetObjectItemCaseSensitive(v, "patch"));
        char *txt = cJSON_PrintUnformatted(tj);
        mg_tokenizer *tok = NULL;
        cr_assert_eq(mg_tokenizer_load_hf_mem(txt, strlen(txt), NULL, 0, &tok), MG_OK, "%s: %s", name, mg_error_last());
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(v, "cases")) {
            const char *text = cJSON_GetObjectItemCaseSensitive(c, "text")->valuestring;
            char what[160];
            size_t nw, ns, ng;
            int32_t *want = tt_ids(cJSON_GetObjectItemCaseSensitive(c, "ids"), &nw);
            int32_t *wsp = tt_ids(cJSON_GetObjectItemCaseSensitive(c, "with_special_tokens"), &ns), *got = NULL;
            snprintf(what, sizeof what, "%s ids", name);
            cr_assert_eq(mg_tokenizer_encode(tok, text, strlen(text), 0, &got, &ng), MG_OK, "%s", mg_error_last());
            fails += !tt_same(got, ng, want, nw, what, text);
            free(got);
            snprintf(what, sizeof what, "%s with_special", name);
            cr_assert_eq(mg_tokenizer_encode(tok, text, strlen(text), 1, &got, &ng), MG_OK, "%s", mg_error_last());
            fails += !tt_same(got, ng, wsp, ns, what, text);
            free(got);
            snprintf(what, sizeof what, "%s decode '%.40s'", name, text);
            fails += !same_text(tok, want, nw, 0, cJSON_GetObjectItemCaseSensitive(c, "decoded")->valuestring, what);
            fails += !same_text(tok, want, nw, 1, cJSON_GetObjectItemCaseSensitive(c, "decoded_skip_special")->valuestring, what);
            checks += 4;
            free(want);
            free(wsp);
        }
        mg_tokenizer_free(tok);
        free(txt);
        cJSON_Delete(tj);
        variants++;
    }
    cr_log_info("%d variants, %d checks, %d failures", variants, checks, fails);
    cr_expect_eq(fails, 0, "%d of %d variant checks failed (details on stderr)", fails, checks);
    cr_expect_geq(variants, 13);
    cJSON_Delete(base_mg);
    cJSON_Delete(base_l2);
    cJSON_Delete(g);
}
