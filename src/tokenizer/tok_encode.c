/* Encoding text to ids for HF tokenizers: added-token split, normalizer,
 * second added-token split (normalized tokens), pre-tokenizer, BPE and the
 * post-processor's template, in HF tokenizers' order. */
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

/* Encodes one plain (non-added-token) normalized segment. */
static mg_status encode_plain(const mg_tokenizer *tok, const char *s, size_t n, int first, mg_tok_ids *out) {
    mg_tok_pieces p = {0};
    mg_status st = mg_tok_pieces_add_copy(&p, s, n, first);
    if (!st) st = mg_tok_pretokenize(tok, &p);
    for (size_t i = 0; i < p.n && !st; i++) st = mg_tok_bpe_word(tok, p.text.p + p.off[i], p.len[i], out);
    mg_tok_pieces_free(&p);
    return st;
}

/* Normalizes one raw segment and encodes it, splitting normalized added tokens. */
static mg_status encode_segment(const mg_tokenizer *tok, const char *s, size_t n, int first, mg_tok_ids *out) {
    mg_tok_buf norm = {0};
    mg_tok_range *r = NULL;
    int32_t *rid = NULL;
    size_t nr = 0;
    mg_status st = mg_tok_normalize(tok, s, n, &norm);
    if (!st) st = mg_tok_split_added(tok, 1, norm.p, norm.len, &r, &rid, &nr);
    for (size_t i = 0; i < nr && !st; i++) {
        if (r[i].is_match) st = mg_tok_ids_push(out, rid[i]);
        else if (r[i].end > r[i].start)
            st = encode_plain(tok, norm.p + r[i].start, r[i].end - r[i].start, first && r[i].start == 0, out);
    }
    free(r);
    free(rid);
    mg_tok_buf_free(&norm);
    return st;
}

mg_status mg_tokenizer_encode(const mg_tokenizer *tok, const char *text, size_t len, int add_special, int32_t **ids,
                              size_t *n_ids) {
    if (!tok || !ids || !n_ids || (len && !text)) return mg_error_set(MG_ERR_ARG, "tokenizer: NULL argument");
    if (!text) text = "";
    size_t bad = mg_tok_utf8_check(text, len);
    if (bad != len)
        return mg_error_set(MG_ERR_ARG, "tokenizer: text is not valid UTF-8 (byte 0x%02X at offset %zu)",
                            (unsigned)(unsigned char)text[bad], bad);
    mg_tok_ids out = {0};
    mg_status st = MG_OK;
    if (tok->kind == MG_TOK_KIND_LLAMA2C) {
        st = mg_tok_llama2c_encode(tok, text, len, add_special, &out);
    } else {
        mg_tok_range *r = NULL;
        int32_t *rid = NULL;
        size_t nr = 0;
        for (int i = 0; add_special && i < tok->n_post_prefix && !st; i++) st = mg_tok_ids_push(&out, tok->post_prefix[i]);
        if (!st) st = mg_tok_split_added(tok, 0, text, len, &r, &rid, &nr);
        for (size_t i = 0; i < nr && !st; i++) {
            if (r[i].is_match) st = mg_tok_ids_push(&out, rid[i]);
            else if (r[i].end > r[i].start)
                st = encode_segment(tok, text + r[i].start, r[i].end - r[i].start, r[i].start == 0, &out);
        }
        for (int i = 0; add_special && i < tok->n_post_suffix && !st; i++) st = mg_tok_ids_push(&out, tok->post_suffix[i]);
        free(r);
        free(rid);
    }
    if (!st && !out.v) { /* always hand back a valid pointer */
        out.v = malloc(sizeof *out.v);
        if (!out.v) st = mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
    }
    if (st) {
        free(out.v);
        return st;
    }
    *ids = out.v;
    *n_ids = out.n;
    return MG_OK;
}
