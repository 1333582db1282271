/* Open-addressing hash maps for the tokenizer: vocab strings -> id and
 * merge pairs -> (rank, merged id). Linear probing, power-of-two sizes. */
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

struct mg_tok_strmap_slot {
    const char *key; /* NULL for an empty slot */
    uint32_t len;
    uint32_t hash;
    int32_t val;
};

struct mg_tok_pairmap_slot {
    uint64_t key; /* (a << 32 | b) + 1; 0 for an empty slot */
    int32_t rank;
    int32_t new_id;
};

/* FNV-1a over the bytes, then a final avalanche. */
static uint32_t str_hash(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    return h;
}

static uint64_t pair_hash(uint64_t x) { /* splitmix64 finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

/* Doubles the table (or creates it). Returns MG_ERR_OOM on failure. */
static mg_status strmap_grow(mg_tok_strmap *m) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    struct mg_tok_strmap_slot *s = calloc(cap, sizeof *s);
    if (!s) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (vocab map)");
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->slots[i].key) continue;
        size_t j = m->slots[i].hash & (cap - 1);
        while (s[j].key) j = (j + 1) & (cap - 1);
        s[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = s;
    m->cap = cap;
    return MG_OK;
}

mg_status mg_tok_strmap_put(mg_tok_strmap *m, const char *key, size_t len, int32_t val) {
    if ((m->n + 1) * 2 > m->cap) {
        mg_status st = strmap_grow(m);
        if (st) return st;
    }
    uint32_t h = str_hash(key, len);
    size_t j = h & (m->cap - 1);
    while (m->slots[j].key) {
        struct mg_tok_strmap_slot *e = &m->slots[j];
        if (e->hash == h && e->len == len && memcmp(e->key, key, len) == 0) {
            e->val = val;
            return MG_OK;
        }
        j = (j + 1) & (m->cap - 1);
    }
    m->slots[j] = (struct mg_tok_strmap_slot){key, (uint32_t)len, h, val};
    m->n++;
    return MG_OK;
}

int32_t mg_tok_strmap_get(const mg_tok_strmap *m, const char *key, size_t len) {
    if (!m->cap) return -1;
    uint32_t h = str_hash(key, len);
    size_t j = h & (m->cap - 1);
    while (m->slots[j].key) {
        const struct mg_tok_strmap_slot *e = &m->slots[j];
        if (e->hash == h && e->len == len && memcmp(e->key, key, len) == 0) return e->val;
        j = (j + 1) & (m->cap - 1);
    }
    return -1;
}

void mg_tok_strmap_free(mg_tok_strmap *m) {
    free(m->slots);
    memset(m, 0, sizeof *m);
}

mg_status mg_tok_pairmap_init(mg_tok_pairmap *m, size_t n) {
    size_t cap = 64;
    while (cap < n * 2 + 1) cap *= 2;
    m->slots = calloc(cap, sizeof *m->slots);
    if (!m->slots) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (merge map)");
    m->cap = cap;
    m->n = 0;
    return MG_OK;
}

mg_status mg_tok_pairmap_put(mg_tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t new_id) {
    if ((m->n + 1) * 2 > m->cap) return mg_error_set(MG_ERR_OOM, "tokenizer: merge map full");
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t j = pair_hash(key) & (m->cap - 1);
    while (m->slots[j].key) {
        if (m->slots[j].key == key) { /* HF collects into a HashMap: the last one wins */
            m->slots[j].rank = rank;
            m->slots[j].new_id = new_id;
            return MG_OK;
        }
        j = (j + 1) & (m->cap - 1);
    }
    m->slots[j] = (struct mg_tok_pairmap_slot){key, rank, new_id};
    m->n++;
    return MG_OK;
}

int mg_tok_pairmap_get(const mg_tok_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *new_id) {
    if (!m->cap) return 0;
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t j = pair_hash(key) & (m->cap - 1);
    while (m->slots[j].key) {
        if (m->slots[j].key == key) {
            *rank = m->slots[j].rank;
            *new_id = m->slots[j].new_id;
            return 1;
        }
        j = (j + 1) & (m->cap - 1);
    }
    return 0;
}

void mg_tok_pairmap_free(mg_tok_pairmap *m) {
    free(m->slots);
    memset(m, 0, sizeof *m);
}
