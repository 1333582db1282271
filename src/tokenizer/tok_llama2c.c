/* llama2.c tokenizer.bin: loading and run.c's encode().
 *
 * File layout: int32 max_token_length, then per token: float32 score,
 * int32 byte length, the bytes (no NUL). Ids 0/1/2 are <unk>/<s>/</s>. */
#include <stdlib.h>
#include <string.h>

#include "../util/file.h"
#include "tok_internal.h"

mg_status mg_tok_llama2c_encode(const mg_tokenizer *tok, const char *text, size_t len, int add_special,
                                mg_tok_ids *out) {
    mg_status st = MG_OK;
    if (add_special) st = mg_tok_ids_push(out, 1);
    if (!st && len > 0) { /* add_dummy_prefix: a " " token before non-empty text */
        int32_t dummy = mg_tok_strmap_get(&tok->vocab, " ", 1);
        if (dummy >= 0) st = mg_tok_ids_push(out, dummy);
    }
    /* each UTF-8 code point as a token, else its bytes as <0xXX> (id byte + 3) */
    for (size_t i = 0; i < len && !st;) {
        uint32_t cp;
        size_t k = mg_tok_utf8_next((const unsigned char *)text + i, len - i, &cp, NULL);
        if (!k) k = 1; /* validated by the caller */
        int32_t id = mg_tok_strmap_get(&tok->vocab, text + i, k);
        if (id >= 0) st = mg_tok_ids_push(out, id);
        else
            for (size_t j = 0; j < k && !st; j++) {
                int32_t b = (int32_t)(unsigned char)text[i + j] + 3;
                st = mg_tok_ids_push(out, b < tok->n_vocab ? b : 0);
            }
        i += k;
    }
    if (!st) st = mg_tok_llama2c_merge(tok, out->v, &out->n);
    return st;
}

/* Reads little-endian-as-host int32/float at p (unaligned). */
static int32_t rd_i32(const char *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

mg_status mg_tokenizer_load_llama2c(const char *bin_path, int vocab_size, mg_tokenizer **out) {
    if (!bin_path || !out) return mg_error_set(MG_ERR_ARG, "tokenizer: NULL argument");
    if (vocab_size < 3 || vocab_size > (1 << 22))
        return mg_error_set(MG_ERR_ARG, "tokenizer: llama2.c vocab_size %d out of range", vocab_size);
    char *data = NULL;
    size_t n = 0;
    mg_status st = mg_file_read(bin_path, &data, &n);
    if (st) return st;
    mg_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        free(data);
        return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
    }
    tok->kind = MG_TOK_KIND_LLAMA2C;
    tok->n_vocab = vocab_size;
    tok->bos_id = 1;
    tok->eos_id = 2;
    tok->unk_id = 0;
    size_t nv = (size_t)vocab_size;
    tok->tok_str = calloc(nv, sizeof *tok->tok_str);
    tok->tok_len = calloc(nv, sizeof *tok->tok_len);
    tok->special = calloc(nv, 1);
    tok->scores = calloc(nv, sizeof *tok->scores);
    tok->arena = malloc(n + nv + 1); /* strings + NULs fit in the file size plus one byte each */
    if (!tok->tok_str || !tok->tok_len || !tok->special || !tok->scores || !tok->arena) {
        st = mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
        goto fail;
    }
    if (n < 4) {
        st = mg_error_set(MG_ERR_FORMAT, "%s: too short for a llama2.c tokenizer", bin_path);
        goto fail;
    }
    size_t pos = 4;
    char *w = tok->arena;
    for (size_t id = 0; id < nv; id++) {
        if (n - pos < 8) {
            st = mg_error_set(MG_ERR_FORMAT, "%s: truncated at token %zu of %d", bin_path, id, vocab_size);
            goto fail;
        }
        float score;
        memcpy(&score, data + pos, 4);
        int32_t len = rd_i32(data + pos + 4);
        pos += 8;
        if (len < 0 || (size_t)len > n - pos) {
            st = mg_error_set(MG_ERR_FORMAT, "%s: token %zu has bad length %d", bin_path, id, (int)len);
            goto fail;
        }
        memcpy(w, data + pos, (size_t)len);
        w[len] = '\0';
        tok->tok_str[id] = w;
        tok->tok_len[id] = (uint32_t)len;
        tok->scores[id] = score;
        if (mg_tok_strmap_get(&tok->vocab, w, (size_t)len) < 0 && /* first one wins */
            (st = mg_tok_strmap_put(&tok->vocab, w, (size_t)len, (int32_t)id)))
            goto fail;
        w += len + 1;
        pos += (size_t)len;
    }
    tok->special[0] = tok->special[1] = tok->special[2] = 1;
    st = mg_tok_build_pieces(tok);
    if (st) goto fail;
    free(data);
    *out = tok;
    return MG_OK;
fail:
    free(data);
    mg_tokenizer_free(tok);
    return st;
}
