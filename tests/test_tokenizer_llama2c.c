/* llama2.c tokenizer.bin (stories260K's tok512.bin): encode as run.c's
 * encode() does (ids derived with a line-by-line Python transcription of
 * run.c's algorithm), decode as run.c's decode(). */
#include "test_tokenizer_common.h"
#include "shared_path.h"

static mg_tokenizer *load_tok512(void) {
    char path[512];
    MG_TEST_SHARED(path, "models/stories260K/tok512.bin");
    mg_tokenizer *tok = NULL;
    cr_assert_eq(mg_tokenizer_load_llama2c(path, 512, &tok), MG_OK, "%s", mg_error_last());
    return tok;
}

/* Encodes text (with BOS) and compares with want[0..n). */
static void expect_ids(const mg_tokenizer *tok, const char *text, const int32_t *want, size_t n) {
    int32_t *ids = NULL;
    size_t ni = 0;
    cr_assert_eq(mg_tokenizer_encode(tok, text, strlen(text), 1, &ids, &ni), MG_OK, "%s", mg_error_last());
    cr_expect(tt_same(ids, ni, want, n, "llama2.c ids", text), "ids differ for '%s'", text);
    char *back = NULL;
    cr_assert_eq(mg_tokenizer_decode(tok, ids, ni, 1, &back), MG_OK);
    cr_expect_str_eq(back, text);
    free(back);
    free(ids);
}

Test(tokenizer_llama2c, story_round_trip) {
    mg_tokenizer *tok = load_tok512();
    cr_expect_eq(mg_tokenizer_vocab_size(tok), 512);
    cr_expect_eq(mg_tokenizer_bos_id(tok), 1);
    cr_expect_eq(mg_tokenizer_eos_id(tok), 2);
    cr_expect(mg_tokenizer_is_special(tok, 1) && !mg_tokenizer_is_special(tok, 403));
    cr_expect_str_eq(mg_tokenizer_token_str(tok, 403), " Once");
    cr_expect_eq(mg_tokenizer_token_id(tok, " Once"), 403);
    /* BOS, then " Once" (dummy prefix merged in), ... " do" + "g": 'dog' is not in the vocab */
    static const int32_t story[] = {1, 403, 407, 261, 378, 432, 383, 286, 261, 370, 400, 428};
    expect_ids(tok, "Once upon a time, there was a big dog", story, 12);
    static const int32_t lily[] = {1, 317, 439, 419, 357, 336, 467, 313, 458, 414, 443, 436};
    expect_ids(tok, "Lily's mom said: \"No!\"", lily, 12);
    /* é is a vocab piece; ö and 😀 fall back to bytes (id = byte + 3) */
    static const int32_t uni[] = {1, 270, 485, 306, 414, 263, 198, 185, 420, 341, 410, 243, 162, 155, 131};
    expect_ids(tok, "h\xC3\xA9llo w\xC3\xB6rld \xF0\x9F\x98\x80", uni, 15);
    /* no merge for "  " in this vocab: the dummy prefix and each space stay separate */
    static const int32_t spaces[] = {1, 410, 410, 410, 410, 444};
    expect_ids(tok, "   x", spaces, 6);
    mg_tokenizer_free(tok);
}

Test(tokenizer_llama2c, empty_and_specials) {
    mg_tokenizer *tok = load_tok512();
    int32_t *ids = NULL;
    size_t n = 99;
    cr_assert_eq(mg_tokenizer_encode(tok, "", 0, 1, &ids, &n), MG_OK);
    cr_expect(n == 1 && ids[0] == 1, "empty text with BOS is just BOS (no dummy prefix)");
    free(ids);
    cr_assert_eq(mg_tokenizer_encode(tok, "", 0, 0, &ids, &n), MG_OK);
    cr_expect_eq(n, 0);
    free(ids);
    /* without BOS the dummy prefix still comes first */
    cr_assert_eq(mg_tokenizer_encode(tok, "Once", 4, 0, &ids, &n), MG_OK);
    cr_expect(n == 1 && ids[0] == 403);
    free(ids);
    /* decode keeping specials: BOS prints as its piece, the next piece loses its space */
    static const int32_t seq[] = {1, 403, 407, 2};
    char *s = NULL;
    cr_assert_eq(mg_tokenizer_decode(tok, seq, 4, 0, &s), MG_OK);
    cr_expect_str_eq(s, "\n<s>\nOnce upon\n</s>\n");
    free(s);
    cr_assert_eq(mg_tokenizer_decode(tok, seq, 4, 1, &s), MG_OK);
    cr_expect_str_eq(s, "Once upon");
    free(s);
    /* pieces: raw byte for <0xC3>; leading space dropped only after BOS / at the start */
    size_t len = 0;
    const char *p = mg_tokenizer_piece(tok, 198, 403, &len);
    cr_expect(len == 1 && (unsigned char)p[0] == 0xC3);
    p = mg_tokenizer_piece(tok, 407, 403, &len);
    cr_expect(len == 5 && !memcmp(p, " upon", 5));
    p = mg_tokenizer_piece(tok, 407, 1, &len);
    cr_expect(len == 4 && !memcmp(p, "upon", 4));
    cr_expect_null(mg_tokenizer_piece(tok, 512, -1, &len));
    /* a lone lead byte decodes to U+FFFD */
    static const int32_t lone[] = {403, 198};
    cr_assert_eq(mg_tokenizer_decode(tok, lone, 2, 1, &s), MG_OK);
    cr_expect_str_eq(s, "Once\xEF\xBF\xBD");
    free(s);
    mg_tokenizer_free(tok);
}

Test(tokenizer_llama2c, bad_files) {
    char path[512];
    MG_TEST_SHARED(path, "models/stories260K/tok512.bin");
    mg_tokenizer *tok = NULL;
    cr_expect_eq(mg_tokenizer_load_llama2c(path, 100000, &tok), MG_ERR_FORMAT, "vocab_size beyond the file");
    cr_expect_null(tok);
    cr_expect(strstr(mg_error_last(), "truncated") != NULL, "message: %s", mg_error_last());
    cr_expect_eq(mg_tokenizer_load_llama2c("/nonexistent/tok.bin", 512, &tok), MG_ERR_IO);
    cr_expect_eq(mg_tokenizer_load_llama2c(path, 0, &tok), MG_ERR_ARG);
    /* a token length running past the end of the file */
    char tmp[] = "/tmp/mg_tok_bad_XXXXXX";
    int fd = mkstemp(tmp);
    cr_assert_geq(fd, 0);
    unsigned char bad[16] = {4, 0, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0, 'a', 'b', 'c', 'd'};
    cr_assert_eq(write(fd, bad, sizeof bad), (ssize_t)sizeof bad);
    close(fd);
    cr_expect_eq(mg_tokenizer_load_llama2c(tmp, 3, &tok), MG_ERR_FORMAT);
    cr_expect(strstr(mg_error_last(), "bad length") != NULL, "message: %s", mg_error_last());
    unlink(tmp);
}
