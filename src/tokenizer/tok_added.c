/* Splitting text on added tokens (HF AddedVocabulary::find_matches):
 * leftmost-longest matching, then single_word / lstrip / rstrip handling. */
#include <stdlib.h>

#include <string.h>

#include "tok_internal.h"

/* Decodes the code point ending at s[end) (end > 0), or 0 on error. */
static uint32_t cp_before(const char *s, size_t end) {
    size_t b = end - 1;
    while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80 && end - b < 4) b--;
    uint32_t cp = 0;
    if (!mg_tok_utf8_next((const unsigned char *)s + b, end - b, &cp, NULL)) return 0;
    return cp;
}

/* Word character for single_word: alphanumeric or '_' (ASCII exactly; any
 * non-space character above ASCII counts as a word character). */
static int is_word_cp(uint32_t cp) {
    if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
    return !mg_tok_is_white_space(cp);
}

/* Returns the offset where the run of whitespace ending at `end` starts. */
static size_t ws_run_start(const char *s, size_t end) {
    while (end > 0) {
        size_t b = end - 1;
        while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80) b--;
        uint32_t cp;
        if (!mg_tok_utf8_next((const unsigned char *)s + b, end - b, &cp, NULL) || !mg_tok_is_white_space(cp)) break;
        end = b;
    }
    return end;
}

/* Returns the offset where the run of whitespace starting at `start` ends. */
static size_t ws_run_end(const char *s, size_t n, size_t start) {
    while (start < n) {
        uint32_t cp;
        size_t k = mg_tok_utf8_next((const unsigned char *)s + start, n - start, &cp, NULL);
        if (!k || !mg_tok_is_white_space(cp)) break;
        start += k;
    }
    return start;
}

typedef struct {
    mg_tok_range *r;
    int32_t *ids;
    size_t n, cap;
} seg_list;

/* Appends a segment; returns MG_ERR_OOM on failure. */
static mg_status seg_push(seg_list *l, size_t a, size_t b, int is_tok, int32_t id) {
    if (l->n == l->cap) {
        size_t c = l->cap ? l->cap * 2 : 8;
        mg_tok_range *r = realloc(l->r, c * sizeof *r);
        if (!r) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (added tokens)");
        l->r = r;
        int32_t *ids = realloc(l->ids, c * sizeof *ids);
        if (!ids) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (added tokens)");
        l->ids = ids;
        l->cap = c;
    }
    l->r[l->n] = (mg_tok_range){a, b, is_tok};
    l->ids[l->n] = id;
    l->n++;
    return MG_OK;
}

mg_status mg_tok_split_added(const mg_tokenizer *tok, int normalized, const char *s, size_t n,
                             mg_tok_range **out, int32_t **ids, size_t *n_out) {
    seg_list l = {0};
    mg_status st = MG_OK;
    size_t start_off = 0, pos = 0;
    int any = 0;
    for (int i = 0; i < tok->n_added; i++)
        if (!!tok->added[i].normalized == !!normalized) any = 1;
    while (any && pos < n) {
        /* leftmost-longest: the first position with a match, the longest one there */
        const mg_tok_added *best = NULL;
        unsigned char c = (unsigned char)s[pos];
        for (int k = tok->added_bucket[c]; k < tok->added_bucket[c + 1]; k++) {
            const mg_tok_added *a = &tok->added[k];
            if (!!a->normalized != !!normalized || a->len > n - pos) continue;
            if (memcmp(s + pos, a->content, a->len) == 0) {
                best = a; /* sorted longest first within a bucket */
                break;
            }
        }
        if (!best) {
            pos++;
            continue;
        }
        size_t ms = pos, me = pos + best->len;
        pos = me;
        if (best->single_word) {
            int start_space = ms == 0 || !is_word_cp(cp_before(s, ms));
            uint32_t nx = 0;
            int stop_space = me == n || !mg_tok_utf8_next((const unsigned char *)s + me, n - me, &nx, NULL) ||
                             !is_word_cp(nx);
            if (!start_space || !stop_space) continue;
        }
        if (best->lstrip) {
            size_t ns = ws_run_start(s, ms);
            ms = ns > start_off ? ns : start_off;
        }
        if (best->rstrip) me = ws_run_end(s, n, me);
        if (start_off < ms) st = seg_push(&l, start_off, ms, 0, -1);
        if (!st) st = seg_push(&l, ms, me, 1, best->id);
        if (st) break;
        start_off = pos = me;
    }
    if (!st && (start_off != n || n == 0)) st = seg_push(&l, start_off, n, 0, -1);
    if (st) {
        free(l.r);
        free(l.ids);
        return st;
    }
    *out = l.r;
    *ids = l.ids;
    *n_out = l.n;
    return MG_OK;
}
