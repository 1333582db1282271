/* Decoding ids to text: HF's decoder chain (ByteLevel, Replace, ByteFallback,
 * Fuse, Strip, Metaspace) run over the token strings exactly as
 * tokenizers' decode_chain does, llama2.c's piece rules, and the per-token
 * pieces used by streaming detokenisers. */
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

/* Parses "<0xXX>" (HF: exactly 6 bytes, hex digits); returns the byte or -1. */
static int byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* ByteLevel: appends the bytes the chars of s stand for, or s itself when
 * some char is outside the GPT-2 byte alphabet (HF falls back per token). */
static mg_status bytelevel_bytes(const char *s, size_t n, mg_tok_buf *out) {
    size_t start = out->len;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = mg_tok_utf8_next((const unsigned char *)s + i, n - i, &cp, NULL);
        int b = k ? mg_tok_cp_to_byte(cp) : -1;
        if (b < 0) {
            out->len = start;
            return mg_tok_buf_put(out, s, n);
        }
        unsigned char c = (unsigned char)b;
        mg_status st = mg_tok_buf_put(out, &c, 1);
        if (st) return st;
        i += k;
    }
    return MG_OK;
}

/* Appends s with every occurrence of pat replaced by rep. */
static mg_status replace_all(const char *s, size_t n, const char *pat, size_t pn, const char *rep, size_t rn,
                             mg_tok_buf *out) {
    size_t i = 0;
    while (pn && i + pn <= n) {
        const char *f = memmem(s + i, n - i, pat, pn);
        if (!f) break;
        size_t at = (size_t)(f - s);
        mg_status st = mg_tok_buf_put(out, s + i, at - i);
        if (!st) st = mg_tok_buf_put(out, rep, rn);
        if (st) return st;
        i = at + pn;
    }
    return mg_tok_buf_put(out, s + i, n - i);
}

/* Runs one decoder step over token list p, producing q. */
static mg_status dec_step(const mg_tok_dec_step *d, const mg_tok_pieces *p, mg_tok_pieces *q) {
    mg_tok_buf b = {0};
    mg_status st = MG_OK;
    switch (d->kind) {
    case MG_DEC_BYTELEVEL: {
        mg_tok_buf raw = {0};
        for (size_t i = 0; i < p->n && !st; i++) st = bytelevel_bytes(p->text.p + p->off[i], p->len[i], &raw);
        if (!st) st = mg_tok_utf8_lossy(&b, raw.p ? raw.p : "", raw.len);
        if (!st) st = mg_tok_pieces_add_copy(q, b.p ? b.p : "", b.len, 0);
        mg_tok_buf_free(&raw);
        break;
    }
    case MG_DEC_FUSE:
        for (size_t i = 0; i < p->n && !st; i++) st = mg_tok_buf_put(&b, p->text.p + p->off[i], p->len[i]);
        if (!st) st = mg_tok_pieces_add_copy(q, b.p ? b.p : "", b.len, 0);
        break;
    case MG_DEC_REPLACE:
        for (size_t i = 0; i < p->n && !st; i++) {
            b.len = 0;
            st = replace_all(p->text.p + p->off[i], p->len[i], d->pat, d->pat_len, d->content, d->content_len, &b);
            if (!st) st = mg_tok_pieces_add_copy(q, b.p, b.len, 0);
        }
        break;
    case MG_DEC_BYTEFALLBACK: {
        /* a run of <0xXX> tokens becomes its string if valid UTF-8, else one U+FFFD per byte */
        size_t i = 0;
        while (i < p->n && !st) {
            if (byte_token(p->text.p + p->off[i], p->len[i]) < 0) {
                st = mg_tok_pieces_add_copy(q, p->text.p + p->off[i], p->len[i], 0);
                i++;
                continue;
            }
            b.len = 0;
            size_t j = i;
            for (; j < p->n && !st; j++) {
                int v = byte_token(p->text.p + p->off[j], p->len[j]);
                if (v < 0) break;
                unsigned char c = (unsigned char)v;
                st = mg_tok_buf_put(&b, &c, 1);
            }
            if (st) break;
            if (mg_tok_utf8_check(b.p, b.len) == b.len) st = mg_tok_pieces_add_copy(q, b.p, b.len, 0);
            else
                for (size_t k = i; k < j && !st; k++) st = mg_tok_pieces_add_copy(q, "\xEF\xBF\xBD", 3, 0);
            i = j;
        }
        break;
    }
    case MG_DEC_STRIP:
        for (size_t i = 0; i < p->n && !st; i++) {
            const char *s = p->text.p + p->off[i];
            size_t n = p->len[i], a = 0, e = n;
            for (int k = 0; k < d->start && a < n; k++) {
                if (n - a < d->content_len || memcmp(s + a, d->content, d->content_len)) break;
                a += d->content_len;
            }
            for (int k = 0; k < d->stop && e > a; k++) {
                if (e - a < d->content_len || memcmp(s + e - d->content_len, d->content, d->content_len)) break;
                e -= d->content_len;
            }
            st = mg_tok_pieces_add_copy(q, s + a, e - a, 0);
        }
        break;
    case MG_DEC_METASPACE:
        for (size_t i = 0; i < p->n && !st; i++) {
            const char *s = p->text.p + p->off[i];
            size_t n = p->len[i];
            b.len = 0;
            /* HF: in the first token every replacement char is dropped when prepending */
            st = replace_all(s, n, d->repl, d->repl_len, i == 0 && d->prepend ? "" : " ", i == 0 && d->prepend ? 0 : 1, &b);
            if (!st) st = mg_tok_pieces_add_copy(q, b.p, b.len, 0);
        }
        break;
    default: st = mg_error_set(MG_ERR_UNSUPPORTED, "tokenizer: unknown decoder step %d", d->kind);
    }
    mg_tok_buf_free(&b);
    return st;
}

/* Checks ids and returns MG_ERR_RANGE for the first one outside the vocab. */
static mg_status check_ids(const mg_tokenizer *tok, const int32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= tok->n_vocab || !tok->tok_str[ids[i]])
            return mg_error_set(MG_ERR_RANGE, "tokenizer: token id %d at position %zu is outside the vocab (size %d)",
                                (int)ids[i], i, tok->n_vocab);
    return MG_OK;
}

/* llama2.c run.c decode over a sequence. */
static mg_status decode_llama2c(const mg_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                                mg_tok_buf *raw) {
    int32_t prev = -1;
    mg_status st = MG_OK;
    for (size_t i = 0; i < n && !st; i++) {
        if (!(skip_special && tok->special[ids[i]])) {
            size_t len;
            const char *p = mg_tokenizer_piece(tok, ids[i], prev, &len);
            st = mg_tok_buf_put(raw, p, len);
        }
        prev = ids[i];
    }
    return st;
}

mg_status mg_tokenizer_decode(const mg_tokenizer *tok, const int32_t *ids, size_t n, int skip_special, char **text) {
    if (!tok || !text || (n && !ids)) return mg_error_set(MG_ERR_ARG, "tokenizer: NULL argument");
    mg_status st = check_ids(tok, ids, n);
    if (st) return st;
    mg_tok_buf out = {0};
    if (tok->kind == MG_TOK_KIND_LLAMA2C) {
        mg_tok_buf raw = {0};
        st = decode_llama2c(tok, ids, n, skip_special, &raw);
        if (!st) st = mg_tok_utf8_lossy(&out, raw.p ? raw.p : "", raw.len);
        mg_tok_buf_free(&raw);
    } else {
        mg_tok_pieces p = {0};
        for (size_t i = 0; i < n && !st; i++) {
            if (skip_special && tok->special[ids[i]]) continue;
            st = mg_tok_pieces_add_copy(&p, tok->tok_str[ids[i]], tok->tok_len[ids[i]], 0);
        }
        for (int k = 0; k < tok->n_dec && !st; k++) {
            mg_tok_pieces q = {0};
            st = dec_step(&tok->dec[k], &p, &q);
            mg_tok_pieces_free(&p);
            p = q;
        }
        /* HF joins the decoder's output; without a decoder tokens are joined by spaces */
        for (size_t i = 0; i < p.n && !st; i++) {
            if (!tok->has_decoder && i > 0) st = mg_tok_buf_put(&out, " ", 1);
            if (!st) st = mg_tok_buf_put(&out, p.text.p + p.off[i], p.len[i]);
        }
        mg_tok_pieces_free(&p);
    }
    if (!st && !out.p) st = mg_tok_buf_put(&out, "", 0);
    if (st) {
        mg_tok_buf_free(&out);
        return st;
    }
    *text = out.p;
    return MG_OK;
}

mg_status mg_tok_build_pieces(mg_tokenizer *tok) {
    size_t nv = (size_t)tok->n_vocab;
    tok->piece = calloc(nv, sizeof *tok->piece);
    tok->piece_len = calloc(nv, sizeof *tok->piece_len);
    if (!tok->piece || !tok->piece_len) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (pieces)");
    tok->strip_char_len = 0;
    tok->strip_first = 0;
    for (int k = 0; k < tok->n_dec; k++) {
        const mg_tok_dec_step *d = &tok->dec[k];
        if (d->kind == MG_DEC_STRIP && d->start > 0 && d->content_len < sizeof tok->strip_char) {
            memcpy(tok->strip_char, d->content, d->content_len);
            tok->strip_char_len = d->content_len;
            tok->strip_first = d->start;
        } else if (d->kind == MG_DEC_METASPACE && d->prepend) {
            memcpy(tok->strip_char, " ", 1);
            tok->strip_char_len = 1;
            tok->strip_first = 1;
        }
    }
    if (tok->kind == MG_TOK_KIND_LLAMA2C) {
        memcpy(tok->strip_char, " ", 1);
        tok->strip_char_len = 1;
        tok->strip_first = 1;
    }
    /* Pieces live in one buffer; pointers are fixed up after it stops growing. */
    mg_tok_buf all = {0}, b = {0}, t = {0};
    size_t *off = malloc(nv * sizeof *off); /* (n_vocab) offsets into all */
    mg_status st = off ? MG_OK : mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (pieces)");
    for (size_t id = 0; id < nv && !st; id++) {
        off[id] = all.len;
        if (!tok->tok_str[id]) continue;
        const char *s = tok->tok_str[id];
        size_t n = tok->tok_len[id];
        b.len = 0;
        if (tok->kind == MG_TOK_KIND_LLAMA2C) {
            int v = byte_token(s, n);
            if (v >= 0) {
                unsigned char c = (unsigned char)v;
                st = mg_tok_buf_put(&b, &c, 1);
            } else
                st = mg_tok_buf_put(&b, s, n);
        } else {
            st = mg_tok_buf_put(&b, s, n);
            for (int k = 0; k < tok->n_dec && !st; k++) {
                const mg_tok_dec_step *d = &tok->dec[k];
                t.len = 0;
                if (d->kind == MG_DEC_BYTELEVEL) st = bytelevel_bytes(b.p, b.len, &t);
                else if (d->kind == MG_DEC_REPLACE) st = replace_all(b.p, b.len, d->pat, d->pat_len, d->content, d->content_len, &t);
                else if (d->kind == MG_DEC_METASPACE) st = replace_all(b.p, b.len, d->repl, d->repl_len, " ", 1, &t);
                else if (d->kind == MG_DEC_BYTEFALLBACK && byte_token(b.p, b.len) >= 0) {
                    unsigned char c = (unsigned char)byte_token(b.p, b.len);
                    st = mg_tok_buf_put(&t, &c, 1);
                } else
                    continue; /* Fuse, Strip: whole-sequence effects */
                mg_tok_buf u = b;
                b = t;
                t = u;
            }
        }
        if (!st) st = mg_tok_buf_put(&all, b.p, b.len);
        tok->piece_len[id] = (uint32_t)(all.len - off[id]);
    }
    if (!st && !all.p) st = mg_tok_buf_put(&all, "", 0);
    if (!st) {
        for (size_t id = 0; id < nv; id++) tok->piece[id] = tok->tok_str[id] ? all.p + off[id] : NULL;
        tok->piece_arena = all.p;
    } else
        mg_tok_buf_free(&all);
    free(off);
    mg_tok_buf_free(&b);
    mg_tok_buf_free(&t);
    return st;
}

const char *mg_tokenizer_piece(const mg_tokenizer *tok, int32_t id, int32_t prev_id, size_t *len) {
    if (!tok || id < 0 || id >= tok->n_vocab || !tok->piece[id]) return NULL;
    const char *p = tok->piece[id];
    size_t n = tok->piece_len[id];
    if ((prev_id < 0 || prev_id == tok->bos_id) && tok->strip_char_len) {
        for (int k = 0; k < tok->strip_first; k++) {
            if (n < tok->strip_char_len || memcmp(p, tok->strip_char, tok->strip_char_len)) break;
            p += tok->strip_char_len;
            n -= tok->strip_char_len;
        }
    }
    if (len) *len = n;
    return p;
}
