/* The pre-tokenizer chain of tokenizer.json: Split (regex or string, every
 * SplitDelimiterBehavior, invert), ByteLevel (add_prefix_space, use_regex)
 * and Metaspace (replacement, prepend_scheme, split). A Sequence is flattened
 * into tok->pre at load time. The ByteLevel byte-to-char mapping itself is
 * applied by the BPE model (tok_bpe.c), so pieces here stay raw UTF-8. */
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

mg_status mg_tok_pieces_add_copy(mg_tok_pieces *p, const char *s, size_t n, int first) {
    if (p->n == p->cap) {
        size_t c = p->cap ? p->cap * 2 : 16;
        size_t *off = realloc(p->off, c * sizeof *off);
        if (!off) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (pieces)");
        p->off = off;
        size_t *len = realloc(p->len, c * sizeof *len);
        if (!len) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (pieces)");
        p->len = len;
        uint8_t *first_v = realloc(p->first, c);
        if (!first_v) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (pieces)");
        p->first = first_v;
        p->cap = c;
    }
    p->off[p->n] = p->text.len;
    p->len[p->n] = n;
    p->first[p->n] = (uint8_t)first;
    p->n++;
    return mg_tok_buf_put(&p->text, s, n);
}

void mg_tok_pieces_free(mg_tok_pieces *p) {
    mg_tok_buf_free(&p->text);
    free(p->off);
    free(p->len);
    free(p->first);
    memset(p, 0, sizeof *p);
}

/* Applies an HF SplitDelimiterBehavior to ranges r[0..n) (in place); sets
 * keep[i] for the ranges that become pieces. Returns the new range count. */
static size_t apply_behavior(int behavior, mg_tok_range *r, size_t n, uint8_t *keep) {
    size_t m = 0;
    int prev = 0;
    switch (behavior) {
    case MG_SPLIT_ISOLATED:
        for (size_t i = 0; i < n; i++) keep[i] = 1;
        return n;
    case MG_SPLIT_REMOVED:
        for (size_t i = 0; i < n; i++) keep[i] = !r[i].is_match;
        return n;
    case MG_SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < n; i++) {
            if (r[i].is_match == prev && m > 0) r[m - 1].end = r[i].end;
            else r[m++] = r[i];
            prev = r[i].is_match;
        }
        break;
    case MG_SPLIT_MERGED_PREV:
        for (size_t i = 0; i < n; i++) {
            if (r[i].is_match && !prev && m > 0) r[m - 1].end = r[i].end;
            else r[m++] = r[i];
            prev = r[i].is_match;
        }
        break;
    case MG_SPLIT_MERGED_NEXT: {
        /* walk backwards, merging a match into the piece after it */
        size_t w = n;
        for (size_t i = n; i-- > 0;) {
            if (r[i].is_match && !prev && w < n) r[w].start = r[i].start;
            else r[--w] = r[i];
            prev = r[i].is_match;
        }
        memmove(r, r + w, (n - w) * sizeof *r);
        m = n - w;
        break;
    }
    }
    for (size_t i = 0; i < m; i++) keep[i] = 1;
    return m;
}

/* Splits piece s[0..n) with regex re and behavior, appending to q. */
static mg_status split_piece(const pcre2_code *re, int behavior, int invert, const char *s, size_t n, int first,
                             mg_tok_pieces *q) {
    mg_tok_range *r = NULL;
    size_t nr = 0;
    mg_status st = mg_tok_regex_ranges(re, s, n, &r, &nr);
    if (st) return st;
    uint8_t *keep = malloc(nr ? nr : 1);
    if (!keep) {
        free(r);
        return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (split)");
    }
    if (invert)
        for (size_t i = 0; i < nr; i++) r[i].is_match = !r[i].is_match;
    nr = apply_behavior(behavior, r, nr, keep);
    for (size_t i = 0; !st && i < nr; i++) {
        if (!keep[i] || r[i].end == r[i].start) continue;
        st = mg_tok_pieces_add_copy(q, s + r[i].start, r[i].end - r[i].start, first && r[i].start == 0);
    }
    free(keep);
    free(r);
    return st;
}

/* Metaspace: replaces ' ' by the replacement, prepends it per the scheme. */
static mg_status metaspace_piece(const mg_tok_pre_step *ps, const char *s, size_t n, int first, mg_tok_pieces *q) {
    mg_tok_buf b = {0};
    mg_status st = MG_OK;
    int starts = n >= ps->repl_len && memcmp(s, ps->repl, ps->repl_len) == 0;
    if (n > 0 && s[0] == ' ') starts = 1; /* becomes the replacement below */
    if (!starts && (ps->prepend_scheme == MG_PREPEND_ALWAYS || (ps->prepend_scheme == MG_PREPEND_FIRST && first)))
        st = mg_tok_buf_put(&b, ps->repl, ps->repl_len);
    for (size_t i = 0; !st && i < n; i++)
        st = s[i] == ' ' ? mg_tok_buf_put(&b, ps->repl, ps->repl_len) : mg_tok_buf_put(&b, s + i, 1);
    if (!st) {
        if (ps->split) st = split_piece(ps->re, MG_SPLIT_MERGED_NEXT, 0, b.p ? b.p : "", b.len, first, q);
        else if (b.len) st = mg_tok_pieces_add_copy(q, b.p, b.len, first);
    }
    mg_tok_buf_free(&b);
    return st;
}

/* ByteLevel: optional prefix space, optional GPT-2 regex split. */
static mg_status bytelevel_piece(const mg_tok_pre_step *ps, const char *s, size_t n, int first, mg_tok_pieces *q) {
    mg_tok_buf b = {0};
    mg_status st = MG_OK;
    if (ps->add_prefix_space && !(n > 0 && s[0] == ' ')) {
        st = mg_tok_buf_put(&b, " ", 1);
        if (!st) st = mg_tok_buf_put(&b, s, n);
        s = b.p;
        n = b.len;
    }
    if (!st) {
        if (ps->re) st = split_piece(ps->re, MG_SPLIT_ISOLATED, 0, s, n, first, q);
        else if (n) st = mg_tok_pieces_add_copy(q, s, n, first);
    }
    mg_tok_buf_free(&b);
    return st;
}

mg_status mg_tok_pretokenize(const mg_tokenizer *tok, mg_tok_pieces *p) {
    for (int k = 0; k < tok->n_pre; k++) {
        const mg_tok_pre_step *ps = &tok->pre[k];
        mg_tok_pieces q = {0};
        mg_status st = MG_OK;
        for (size_t i = 0; !st && i < p->n; i++) {
            const char *s = p->text.p + p->off[i];
            size_t n = p->len[i];
            int first = p->first[i];
            switch (ps->kind) {
            case MG_PRE_SPLIT: st = split_piece(ps->re, ps->behavior, ps->invert, s, n, first, &q); break;
            case MG_PRE_BYTELEVEL: st = bytelevel_piece(ps, s, n, first, &q); break;
            case MG_PRE_METASPACE: st = metaspace_piece(ps, s, n, first, &q); break;
            default: st = mg_error_set(MG_ERR_UNSUPPORTED, "tokenizer: unknown pre-tokenizer step %d", ps->kind);
            }
        }
        if (st) {
            mg_tok_pieces_free(&q);
            return st;
        }
        mg_tok_pieces_free(p);
        *p = q;
    }
    return MG_OK;
}
