/* BPE merging: HF tokenizers' BPE model (models/bpe/word.rs merge_all: a
 * min-heap of (rank, position) over a linked list of symbols, replicated
 * exactly including its stale-entry check) and llama2.c's score-ordered
 * merge (same structure, keyed on the highest score). Both are O(n log n)
 * per word, so a long sentencepiece-style word (a whole line) stays fast. */
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

typedef struct {
    int32_t id;       /* token id of the symbol */
    int32_t prev;     /* previous live symbol or -1 */
    int32_t next;     /* next live symbol or -1 */
    uint32_t len;     /* bytes covered; 0 once merged away */
} sym;

typedef struct {
    float key;        /* BPE: rank; llama2.c: -score (smaller pops first) */
    int32_t pos;      /* left symbol index */
    int32_t new_id;   /* id of the merged token */
    int32_t a, b;     /* llama2.c: the pair when pushed (staleness check) */
} hitem;

typedef struct {
    hitem *v;         /* (cap) binary min-heap on (key, pos) */
    size_t n, cap;
} heap;

static int hless(const hitem *x, const hitem *y) { return x->key < y->key || (x->key == y->key && x->pos < y->pos); }

/* Pushes an item; returns MG_ERR_OOM on failure. */
static mg_status heap_push(heap *h, hitem it) {
    if (h->n == h->cap) {
        size_t c = h->cap ? h->cap * 2 : 32;
        hitem *v = realloc(h->v, c * sizeof *v);
        if (!v) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (BPE heap)");
        h->v = v;
        h->cap = c;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hless(&it, &h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = it;
    return MG_OK;
}

/* Pops the smallest item into *out; returns 0 when empty. */
static int heap_pop(heap *h, hitem *out) {
    if (h->n == 0) return 0;
    *out = h->v[0];
    hitem last = h->v[--h->n];
    size_t i = 0, n = h->n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const hitem *best = &last;
        if (l < n && hless(&h->v[l], best)) { m = l; best = &h->v[l]; }
        if (r < n && hless(&h->v[r], best)) m = r;
        if (m == i) break;
        h->v[i] = h->v[m];
        i = m;
    }
    if (n) h->v[i] = last;
    return 1;
}

/* HF Word::merge_all over syms[0..n). */
static mg_status merge_all(const mg_tokenizer *tok, sym *s, size_t n) {
    heap h = {0};
    mg_status st = MG_OK;
    int32_t rank, nid;
    for (size_t i = 0; i + 1 < n && !st; i++)
        if (mg_tok_pairmap_get(&tok->merges, s[i].id, s[i + 1].id, &rank, &nid))
            st = heap_push(&h, (hitem){(float)rank, (int32_t)i, nid, 0, 0});
    hitem top;
    while (!st && heap_pop(&h, &top)) {
        sym *cur = &s[top.pos];
        if (cur->len == 0 || cur->next == -1) continue;
        int32_t next_pos = cur->next;
        sym right = s[next_pos];
        if (!mg_tok_pairmap_get(&tok->merges, cur->id, right.id, &rank, &nid) || nid != top.new_id) continue;
        cur->id = top.new_id;
        cur->len += right.len;
        cur->next = right.next;
        s[next_pos].len = 0;
        if (right.next > -1 && (size_t)right.next < n) s[right.next].prev = top.pos;
        if (cur->prev >= 0 && mg_tok_pairmap_get(&tok->merges, s[cur->prev].id, cur->id, &rank, &nid))
            st = heap_push(&h, (hitem){(float)rank, cur->prev, nid, 0, 0});
        if (!st && cur->next > -1 && mg_tok_pairmap_get(&tok->merges, cur->id, s[cur->next].id, &rank, &nid))
            st = heap_push(&h, (hitem){(float)rank, top.pos, nid, 0, 0});
    }
    free(h.v);
    return st;
}

/* Appends a symbol covering `len` bytes. */
static mg_status sym_add(sym **v, size_t *n, size_t *cap, int32_t id, size_t len) {
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 32;
        sym *p = realloc(*v, c * sizeof *p);
        if (!p) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (BPE symbols)");
        *v = p;
        *cap = c;
    }
    int32_t i = (int32_t)*n;
    if (i > 0) (*v)[i - 1].next = i;
    (*v)[i] = (sym){id, i - 1, -1, (uint32_t)len};
    (*n)++;
    return MG_OK;
}

/* Looks up one character (with the optional continuing-subword prefix and
 * end-of-word suffix) in the model vocab. */
static int32_t char_id(const mg_tokenizer *tok, const char *c, size_t clen, int is_first, int is_last,
                       mg_tok_buf *tmp) {
    const char *pre = !is_first ? tok->subword_prefix : NULL;
    const char *suf = is_last ? tok->word_suffix : NULL;
    if (!pre && !suf) return mg_tok_strmap_get(&tok->vocab, c, clen);
    tmp->len = 0;
    if ((pre && mg_tok_buf_put(tmp, pre, strlen(pre))) || mg_tok_buf_put(tmp, c, clen) ||
        (suf && mg_tok_buf_put(tmp, suf, strlen(suf))))
        return -2;
    return mg_tok_strmap_get(&tok->vocab, tmp->p, tmp->len);
}

mg_status mg_tok_bpe_word(const mg_tokenizer *tok, const char *s, size_t n, mg_tok_ids *out) {
    mg_tok_buf mapped = {0}, tmp = {0};
    mg_status st = MG_OK;
    if (tok->byte_level) { /* GPT-2 byte-to-char mapping */
        for (size_t i = 0; i < n && !st; i++) st = mg_tok_buf_put_cp(&mapped, mg_tok_byte_to_cp((uint8_t)s[i]));
        if (st) goto done;
        s = mapped.p;
        n = mapped.len;
    }
    if (n == 0) goto done;
    if (tok->ignore_merges) {
        int32_t id = mg_tok_strmap_get(&tok->vocab, s, n);
        if (id >= 0) {
            st = mg_tok_ids_push(out, id);
            goto done;
        }
    }
    sym *v = NULL;
    size_t nv = 0, cap = 0;
    int32_t unk = -1;
    size_t unk_len = 0;
    size_t i = 0;
    while (i < n && !st) {
        uint32_t cp;
        size_t k = mg_tok_utf8_next((const unsigned char *)s + i, n - i, &cp, NULL);
        if (!k) k = 1; /* cannot happen on validated input */
        int32_t id = char_id(tok, s + i, k, i == 0, i + k >= n, &tmp);
        if (id == -2) {
            st = mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
            break;
        }
        if (id >= 0) {
            if (unk >= 0) {
                st = sym_add(&v, &nv, &cap, unk, unk_len);
                unk = -1;
            }
            if (!st) st = sym_add(&v, &nv, &cap, id, k);
        } else {
            int fell_back = 0;
            if (tok->byte_fallback) { /* all bytes must have a <0xXX> token */
                int ok = 1;
                for (size_t j = 0; j < k; j++) ok &= tok->byte_fb_id[(uint8_t)s[i + j]] >= 0;
                if (ok) {
                    for (size_t j = 0; j < k && !st; j++) st = sym_add(&v, &nv, &cap, tok->byte_fb_id[(uint8_t)s[i + j]], 1);
                    fell_back = 1;
                }
            }
            if (!fell_back && tok->unk_id >= 0) {
                if (unk >= 0 && tok->fuse_unk) unk_len += k;
                else {
                    if (unk >= 0) st = sym_add(&v, &nv, &cap, unk, unk_len);
                    unk = tok->unk_id;
                    unk_len = k;
                }
            }
            /* no byte fallback and no unk token: HF drops the character */
        }
        i += k;
    }
    if (!st && unk >= 0) st = sym_add(&v, &nv, &cap, unk, unk_len);
    if (!st) st = merge_all(tok, v, nv);
    for (size_t j = 0; j < nv && !st; j++)
        if (v[j].len) st = mg_tok_ids_push(out, v[j].id);
    free(v);
done:
    mg_tok_buf_free(&mapped);
    mg_tok_buf_free(&tmp);
    return st;
}

/* Score of merging (a, b) in llama2.c: the id of vocab[a] + vocab[b] or -1. */
static int32_t l2c_pair(const mg_tokenizer *tok, int32_t a, int32_t b, mg_tok_buf *tmp) {
    tmp->len = 0;
    if (mg_tok_buf_put(tmp, tok->tok_str[a], tok->tok_len[a]) || mg_tok_buf_put(tmp, tok->tok_str[b], tok->tok_len[b]))
        return -2;
    return mg_tok_strmap_get(&tok->vocab, tmp->p, tmp->len);
}

mg_status mg_tok_llama2c_merge(const mg_tokenizer *tok, int32_t *ids, size_t *n_ids) {
    size_t n = *n_ids;
    if (n < 2) return MG_OK;
    sym *s = malloc(n * sizeof *s); /* (n) */
    if (!s) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (llama2.c merge)");
    for (size_t i = 0; i < n; i++) s[i] = (sym){ids[i], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1, 1};
    heap h = {0};
    mg_tok_buf tmp = {0};
    mg_status st = MG_OK;
    for (size_t i = 0; i + 1 < n && !st; i++) {
        int32_t m = l2c_pair(tok, s[i].id, s[i + 1].id, &tmp);
        if (m == -2) st = mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
        else if (m >= 0 && tok->scores[m] > -1e10f) /* run.c starts from best_score = -1e10 */
            st = heap_push(&h, (hitem){-tok->scores[m], (int32_t)i, m, s[i].id, s[i + 1].id});
    }
    hitem top;
    while (!st && heap_pop(&h, &top)) {
        sym *cur = &s[top.pos];
        if (cur->len == 0 || cur->next == -1 || cur->id != top.a || s[cur->next].id != top.b) continue;
        int32_t nx = cur->next;
        cur->id = top.new_id;
        cur->next = s[nx].next;
        s[nx].len = 0;
        if (cur->next >= 0) s[cur->next].prev = top.pos;
        int32_t m;
        if (cur->prev >= 0) {
            m = l2c_pair(tok, s[cur->prev].id, cur->id, &tmp);
            if (m == -2) st = mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
            else if (m >= 0 && tok->scores[m] > -1e10f)
                st = heap_push(&h, (hitem){-tok->scores[m], cur->prev, m, s[cur->prev].id, cur->id});
        }
        if (!st && cur->next >= 0) {
            m = l2c_pair(tok, cur->id, s[cur->next].id, &tmp);
            if (m == -2) st = mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
            else if (m >= 0 && tok->scores[m] > -1e10f)
                st = heap_push(&h, (hitem){-tok->scores[m], top.pos, m, cur->id, s[cur->next].id});
        }
    }
    size_t w = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i].len) ids[w++] = s[i].id;
    *n_ids = w;
    free(s);
    free(h.v);
    mg_tok_buf_free(&tmp);
    return st;
}
