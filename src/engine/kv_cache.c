#include "kv_cache.h"

#include <assert.h>
#include <stdlib.h>

static size_t block_floats(const mg_kv_pool *p) {
    return (size_t)p->block_size * (size_t)p->n_kv_heads * (size_t)p->head_dim;
}

mg_status mg_kv_pool_init(mg_kv_pool *pool, int n_layers, int n_kv_heads, int head_dim, int block_size,
                          int n_blocks) {
    *pool = (mg_kv_pool){.n_layers = n_layers, .n_kv_heads = n_kv_heads, .head_dim = head_dim,
                         .block_size = block_size, .n_blocks = n_blocks};
    if (n_layers <= 0 || n_kv_heads <= 0 || head_dim <= 0 || block_size <= 0 || n_blocks <= 0)
        return mg_error_set(MG_ERR_ARG, "invalid KV cache geometry (%d blocks of %d tokens)", n_blocks, block_size);
    size_t n = (size_t)n_layers * (size_t)n_blocks * block_floats(pool);
    pool->k = calloc(n, sizeof(float)); /* zeroed: padding rows may read unwritten slots */
    pool->v = calloc(n, sizeof(float));
    pool->free_list = malloc((size_t)n_blocks * sizeof(int32_t));
    if (!pool->k || !pool->v || !pool->free_list) {
        mg_kv_pool_free(pool);
        return mg_error_set(MG_ERR_OOM, "cannot allocate KV cache of %zu bytes", 2 * n * sizeof(float));
    }
    /* Stack order: block 0 is handed out first. */
    for (int i = 0; i < n_blocks; i++) pool->free_list[i] = n_blocks - 1 - i;
    pool->n_free = n_blocks;
    return MG_OK;
}

int mg_kv_pool_blocks_for_bytes(size_t bytes, int n_layers, int n_kv_heads, int head_dim, int block_size) {
    size_t per_block = 2 * sizeof(float) * (size_t)n_layers * (size_t)block_size * (size_t)n_kv_heads *
                       (size_t)head_dim;
    size_t n = per_block ? bytes / per_block : 0;
    return n > 0x7fffffff ? 0x7fffffff : (int)n;
}

void mg_kv_pool_free(mg_kv_pool *pool) {
    free(pool->k);
    free(pool->v);
    free(pool->free_list);
    pool->k = pool->v = NULL;
    pool->free_list = NULL;
    pool->n_free = 0;
}

mg_status mg_kv_seq_reserve(mg_kv_pool *pool, mg_kv_seq *seq, int n_tokens) {
    int need = (n_tokens + pool->block_size - 1) / pool->block_size;
    if (need <= seq->n_blocks) return MG_OK;
    if (need - seq->n_blocks > pool->n_free)
        return mg_error_set(MG_ERR_FULL, "KV cache full: need %d more blocks, %d free of %d",
                            need - seq->n_blocks, pool->n_free, pool->n_blocks);
    if (need > seq->capacity) {
        int cap = seq->capacity ? seq->capacity : 8;
        while (cap < need) cap *= 2;
        int32_t *b = realloc(seq->blocks, (size_t)cap * sizeof(int32_t));
        if (!b) return mg_error_set(MG_ERR_OOM, "cannot grow block table to %d entries", cap);
        seq->blocks = b;
        seq->capacity = cap;
    }
    while (seq->n_blocks < need) seq->blocks[seq->n_blocks++] = pool->free_list[--pool->n_free];
    return MG_OK;
}

void mg_kv_seq_truncate(mg_kv_pool *pool, mg_kv_seq *seq, int n_tokens) {
    int keep = (n_tokens + pool->block_size - 1) / pool->block_size;
    while (seq->n_blocks > keep) pool->free_list[pool->n_free++] = seq->blocks[--seq->n_blocks];
}

void mg_kv_seq_free(mg_kv_pool *pool, mg_kv_seq *seq) {
    mg_kv_seq_truncate(pool, seq, 0);
    free(seq->blocks);
    *seq = (mg_kv_seq){0};
}

static size_t kv_offset(const mg_kv_pool *pool, const mg_kv_seq *seq, int layer, int pos) {
    int bi = pos / pool->block_size;
    assert(pos >= 0 && bi < seq->n_blocks);
    size_t block = (size_t)seq->blocks[bi];
    size_t slot = (size_t)(pos % pool->block_size);
    size_t row = (size_t)pool->n_kv_heads * (size_t)pool->head_dim;
    return (((size_t)layer * (size_t)pool->n_blocks + block) * (size_t)pool->block_size + slot) * row;
}

float *mg_kv_k_at(const mg_kv_pool *pool, const mg_kv_seq *seq, int layer, int pos) {
    return pool->k + kv_offset(pool, seq, layer, pos);
}

float *mg_kv_v_at(const mg_kv_pool *pool, const mg_kv_seq *seq, int layer, int pos) {
    return pool->v + kv_offset(pool, seq, layer, pos);
}
