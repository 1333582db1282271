/* Bad input: malformed / unsupported tokenizer.json, invalid UTF-8 text,
 * out-of-range ids, lossy decoding of broken byte sequences, NULLs, and a
 * randomized encode/decode round trip that must never crash. */
#include "test_tokenizer_common.h"
#include "shared_path.h"

/* Loads JSON text and returns the status (freeing any tokenizer). */
static mg_status load_str(const char *json) {
    mg_tokenizer *tok = (mg_tokenizer *)0x1; /* must stay untouched on failure */
    mg_status st = mg_tokenizer_load_hf_mem(json, strlen(json), NULL, 0, &tok);
    if (st == MG_OK) mg_tokenizer_free(tok);
    else cr_expect_eq(tok, (mg_tokenizer *)0x1, "*out set on failure");
    return st;
}

/* A minimal valid byte-level-free BPE tokenizer.json with the given pieces spliced in. */
static char *mini(const char *model_extra, const char *merges, const char *rest) {
    char *buf = malloc(4096);
    snprintf(buf, 4096,
             "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}%s, \"merges\": %s}%s}",
             model_extra, merges, rest);
    return buf;
}

#define EXPECT_LOAD(status, json, needle)                                                                  \
    do {                                                                                                   \
        char *j_ = (json);                                                                                 \
        cr_expect_eq(load_str(j_), (status), "%s -> %s", j_, mg_error_last());                            \
        cr_expect(strstr(mg_error_last(), (needle)) != NULL, "message '%s' lacks '%s'", mg_error_last(), (needle)); \
        free(j_);                                                                                          \
    } while (0)

Test(tokenizer_bad, malformed_json) {
    cr_expect_eq(load_str("not json at all"), MG_ERR_FORMAT);
    cr_expect(strstr(mg_error_last(), "not valid JSON") != NULL, "%s", mg_error_last());
    cr_expect_eq(load_str(""), MG_ERR_FORMAT);
    cr_expect_eq(load_str("[1, 2]"), MG_ERR_FORMAT);
    cr_expect_eq(load_str("{\"version\": \"1.0\"}"), MG_ERR_FORMAT);
    cr_expect(strstr(mg_error_last(), "model") != NULL, "%s", mg_error_last());
    cr_expect_eq(load_str("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []"), MG_ERR_FORMAT);
    EXPECT_LOAD(MG_OK, mini("", "[\"a b\"]", ""), "");
    EXPECT_LOAD(MG_OK, mini("", "[[\"a\", \"b\"]]", ""), "");
    EXPECT_LOAD(MG_ERR_FORMAT, mini("", "[\"a b c\"]", ""), "bad merge #1");
    EXPECT_LOAD(MG_ERR_FORMAT, mini("", "[\"ab\"]", ""), "bad merge #1");
    EXPECT_LOAD(MG_ERR_FORMAT, mini("", "[\"a b\", \"a x\"]", ""), "merge #2");
    EXPECT_LOAD(MG_ERR_FORMAT, mini("", "[\"b a\"]", ""), "not in the vocab");
    EXPECT_LOAD(MG_ERR_FORMAT, mini("", "[[\"a\"]]", ""), "bad merge");
    EXPECT_LOAD(MG_ERR_FORMAT, mini("", "[42]", ""), "bad merge");
    EXPECT_LOAD(MG_ERR_FORMAT, mini("", "{}", ""), "merges");
    cr_expect_eq(load_str("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}"), MG_ERR_FORMAT);
    cr_expect_eq(load_str("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"0\"}, \"merges\": []}}"), MG_ERR_FORMAT);
    cr_expect_eq(load_str("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 1e12}, \"merges\": []}}"), MG_ERR_FORMAT);
    cr_expect_eq(load_str("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}"), MG_ERR_FORMAT);
    cr_expect_eq(load_str("{\"model\": {\"type\": \"BPE\", \"vocab\": [], \"merges\": []}}"), MG_ERR_FORMAT);
    EXPECT_LOAD(MG_ERR_FORMAT, mini("", "[]", ", \"added_tokens\": [{\"id\": 5}]"), "added token");
    EXPECT_LOAD(MG_ERR_FORMAT, mini("", "[]", ", \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}"),
                "bad regex");
    EXPECT_LOAD(MG_ERR_FORMAT, mini("", "[]", ", \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {}, \"behavior\": \"Isolated\"}"),
                "pattern");
    EXPECT_LOAD(MG_ERR_FORMAT, mini("", "[]", ", \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<s>\"}}], \"special_tokens\": {}}"),
                "<s>");
}

Test(tokenizer_bad, unsupported_components) {
    cr_expect_eq(load_str("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}"), MG_ERR_UNSUPPORTED);
    cr_expect(strstr(mg_error_last(), "WordPiece") != NULL, "%s", mg_error_last());
    cr_expect_eq(load_str("{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}"), MG_ERR_UNSUPPORTED);
    EXPECT_LOAD(MG_ERR_UNSUPPORTED, mini("", "[]", ", \"normalizer\": {\"type\": \"NFKC\"}"), "NFKC");
    EXPECT_LOAD(MG_ERR_UNSUPPORTED, mini("", "[]", ", \"pre_tokenizer\": {\"type\": \"Whitespace\"}"), "Whitespace");
    EXPECT_LOAD(MG_ERR_UNSUPPORTED, mini("", "[]", ", \"decoder\": {\"type\": \"WordPiece\"}"), "WordPiece");
    EXPECT_LOAD(MG_ERR_UNSUPPORTED, mini("", "[]", ", \"post_processor\": {\"type\": \"Weird\"}"), "Weird");
    EXPECT_LOAD(MG_ERR_UNSUPPORTED, mini(", \"dropout\": 0.1", "[]", ""), "dropout");
}

Test(tokenizer_bad, files) {
    mg_tokenizer *tok = NULL;
    cr_expect_eq(mg_tokenizer_load_hf("/nonexistent/tokenizer.json", NULL, &tok), MG_ERR_IO);
    cr_expect_null(tok);
    cr_expect_eq(mg_tokenizer_load_hf(NULL, NULL, &tok), MG_ERR_ARG);
    char tmp[] = "/tmp/mg_tok_bad_XXXXXX";
    int fd = mkstemp(tmp);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "{\"model\": 3}", 12), 12);
    close(fd);
    cr_expect_eq(mg_tokenizer_load_hf(tmp, "/nonexistent/config.json", &tok), MG_ERR_FORMAT);
    cr_expect(strstr(mg_error_last(), tmp) != NULL, "message names the file: %s", mg_error_last());
    unlink(tmp);
    mg_tokenizer_free(NULL);
}

static mg_tokenizer *load_mg(void) {
    char tj[512];
    MG_TEST_SHARED(tj, "models/mg-llama-27m/tokenizer.json");
    mg_tokenizer *tok = NULL;
    cr_assert_eq(mg_tokenizer_load_hf(tj, NULL, &tok), MG_OK, "%s", mg_error_last());
    return tok;
}

Test(tokenizer_bad, invalid_utf8_text) {
    mg_tokenizer *tok = load_mg();
    static const char *const bad[] = {"\xff", "ok\xc3", "\xed\xa0\x80", "\xc0\xaf", "\xf4\x90\x80\x80", "a\x80", "\xe2\x82"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t *ids = (int32_t *)0x1;
        size_t n = 7;
        cr_expect_eq(mg_tokenizer_encode(tok, bad[i], strlen(bad[i]), 0, &ids, &n), MG_ERR_ARG, "case %zu", i);
        cr_expect(strstr(mg_error_last(), "not valid UTF-8") != NULL, "%s", mg_error_last());
        cr_expect(ids == (int32_t *)0x1 && n == 7, "outputs untouched on error");
    }
    int32_t *ids = NULL;
    size_t n = 0;
    cr_expect_eq(mg_tokenizer_encode(tok, "ok\xc3", 3, 0, &ids, &n), MG_ERR_ARG);
    cr_expect(strstr(mg_error_last(), "offset 2") != NULL, "%s", mg_error_last());
    cr_expect_eq(mg_tokenizer_encode(NULL, "a", 1, 0, &ids, &n), MG_ERR_ARG);
    cr_expect_eq(mg_tokenizer_encode(tok, NULL, 1, 0, &ids, &n), MG_ERR_ARG);
    cr_assert_eq(mg_tokenizer_encode(tok, NULL, 0, 0, &ids, &n), MG_OK);
    cr_expect_eq(n, 0);
    free(ids);
    mg_tokenizer_free(tok);
}

Test(tokenizer_bad, decode_ranges_and_lossy) {
    mg_tokenizer *tok = load_mg();
    char *s = (char *)0x1;
    int32_t big[] = {5, 8192}, neg[] = {-1};
    cr_expect_eq(mg_tokenizer_decode(tok, big, 2, 0, &s), MG_ERR_RANGE);
    cr_expect(strstr(mg_error_last(), "8192") != NULL, "%s", mg_error_last());
    cr_expect_eq(mg_tokenizer_decode(tok, neg, 1, 0, &s), MG_ERR_RANGE);
    cr_expect_eq(s, (char *)0x1);
    cr_expect_null(mg_tokenizer_piece(tok, 8192, -1, NULL));
    cr_expect_null(mg_tokenizer_token_str(tok, -3));
    cr_expect_eq(mg_tokenizer_token_id(tok, "no such token"), -1);
    cr_expect_eq(mg_tokenizer_is_special(tok, 9999), 0);
    /* bytes E4 BD 'a' FF F0 9F 98: HF (Rust from_utf8_lossy) gives U+FFFD a U+FFFD U+FFFD */
    const char *chars[] = {"\xC3\xA4", "\xC2\xBD", "a", "\xC3\xBF", "\xC3\xB0", "\xC5\x81", "\xC4\xBA"};
    int32_t ids[7];
    for (int i = 0; i < 7; i++) {
        ids[i] = mg_tokenizer_token_id(tok, chars[i]);
        cr_assert_geq(ids[i], 0, "byte token %d", i);
    }
    cr_assert_eq(mg_tokenizer_decode(tok, ids, 7, 0, &s), MG_OK);
    cr_expect_str_eq(s, "\xEF\xBF\xBD" "a" "\xEF\xBF\xBD\xEF\xBF\xBD");
    free(s);
    cr_assert_eq(mg_tokenizer_decode(tok, NULL, 0, 0, &s), MG_OK);
    cr_expect_str_eq(s, "");
    free(s);
    /* skip_special drops <|user|> */
    int32_t sp[] = {1, ids[2]};
    cr_assert_eq(mg_tokenizer_decode(tok, sp, 2, 1, &s), MG_OK);
    cr_expect_str_eq(s, "a");
    free(s);
    mg_tokenizer_free(tok);
}

Test(tokenizer_bad, sentencepiece_byte_fallback_decode) {
    mg_tokenizer *tok = NULL;
    cr_assert_eq(mg_tokenizer_load_hf("tests/data/llama2-tokenizer/tokenizer.json", NULL, &tok), MG_OK);
    /* HF ByteFallback: an invalid run of byte tokens becomes one U+FFFD per byte (values from tokenizers 0.23) */
    int32_t a[] = {231, 192, 29874}, b[] = {68, 258, 263}, c[] = {259, 263};
    char *s = NULL;
    cr_assert_eq(mg_tokenizer_decode(tok, a, 3, 0, &s), MG_OK);
    cr_expect_str_eq(s, "\xEF\xBF\xBD\xEF\xBF\xBD" "a");
    free(s);
    cr_assert_eq(mg_tokenizer_decode(tok, b, 3, 0, &s), MG_OK);
    cr_expect_str_eq(s, "\xEF\xBF\xBD\xEF\xBF\xBD a");
    free(s);
    cr_assert_eq(mg_tokenizer_decode(tok, c, 2, 0, &s), MG_OK);
    cr_expect_str_eq(s, "  a");
    free(s);
    mg_tokenizer_free(tok);
}

/* Appends the UTF-8 of cp to p; returns the bytes written. */
static int put_cp(char *p, uint32_t cp) {
    if (cp < 0x80) { p[0] = (char)cp; return 1; }
    if (cp < 0x800) { p[0] = (char)(0xC0 | (cp >> 6)); p[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        p[0] = (char)(0xE0 | (cp >> 12)); p[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); p[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    p[0] = (char)(0xF0 | (cp >> 18)); p[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    p[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); p[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Byte-level BPE without a normalizer is lossless on any valid UTF-8, specials included. */
Test(tokenizer_bad, random_round_trip) {
    mg_tokenizer *tok = load_mg();
    unsigned seed = 12345;
    char buf[1024];
    for (int it = 0; it < 300; it++) {
        int len = 0, n = (int)((seed = seed * 1103515245u + 12345u) >> 16) % 60;
        for (int k = 0; k < n; k++) {
            uint32_t r = (seed = seed * 1103515245u + 12345u) >> 8, cp;
            switch (r % 6) {
            case 0: cp = 0x20 + r % 0x5F; break;             /* ASCII */
            case 1: cp = " \t\n\r"[r % 4]; break;             /* whitespace */
            case 2: cp = 0x80 + r % 0x780; break;             /* 2-byte */
            case 3: cp = 0x800 + r % 0xF000; break;           /* 3-byte */
            case 4: cp = 0x10000 + r % 0xFFFFF; break;        /* 4-byte */
            default: cp = "'0<|>"[r % 5]; break;              /* pieces of specials / contractions */
            }
            if (cp >= 0xD800 && cp < 0xE000) cp = 'x';
            len += put_cp(buf + len, cp);
        }
        if (it % 7 == 0) len += snprintf(buf + len, sizeof buf - (size_t)len, "<|user|>x");
        int32_t *ids = NULL;
        size_t ni = 0;
        cr_assert_eq(mg_tokenizer_encode(tok, buf, (size_t)len, it & 1, &ids, &ni), MG_OK, "%s", mg_error_last());
        char *back = NULL;
        cr_assert_eq(mg_tokenizer_decode(tok, ids + (it & 1), ni - (size_t)(it & 1), 0, &back), MG_OK);
        cr_expect(strlen(back) == (size_t)len && !memcmp(back, buf, (size_t)len), "round trip failed at iteration %d", it);
        free(back);
        free(ids);
    }
    mg_tokenizer_free(tok);
}
