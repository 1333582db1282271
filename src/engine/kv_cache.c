#include "kv_cache.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "../backend/backend.h"
#include "../util/bf16.h"

static size_t block_elems(const mg_kv_pool *p) {
    return (size_t)p->block_size * (size_t)p->n_kv_heads * (size_t)p->head_dim;
}

static size_t dtype_size(mg_dtype d) { return d == MG_DTYPE_BF16 ? 2 : 4; }

size_t mg_kv_elem_size(const mg_kv_pool *pool) { return dtype_size(pool->dtype); }

mg_status mg_kv_pool_init_on(mg_kv_pool *pool, const mg_backend_ops *ops, mg_dtype dtype, int n_layers,
                             int n_kv_heads, int head_dim, int block_size, int n_blocks) {
    *pool = (mg_kv_pool){.n_layers = n_layers, .n_kv_heads = n_kv_heads, .head_dim = head_dim,
                         .block_size = block_size, .n_blocks = n_blocks, .dtype = dtype, .ops = ops};
    if (n_layers <= 0 || n_kv_heads <= 0 || head_dim <= 0 || block_size <= 0 || n_blocks <= 0)
        return mg_error_set(MG_ERR_ARG, "invalid KV cache geometry (%d blocks of %d tokens)", n_blocks, block_size);
    if (dtype != MG_DTYPE_F32 && (dtype != MG_DTYPE_BF16 || ops->host_memory))
        return mg_error_set(MG_ERR_UNSUPPORTED, "the %s backend keeps its KV cache in FP32", ops->name);
    size_t bytes = (size_t)n_layers * (size_t)n_blocks * block_elems(pool) * dtype_size(dtype);
    /* Zeroed: padding rows may read unwritten slots. */
    mg_status (*alloc)(void **, size_t) = ops->alloc_kv ? ops->alloc_kv : ops->alloc;
    mg_status st = alloc(&pool->k, bytes);
    if (st == MG_OK) st = alloc(&pool->v, bytes);
    pool->free_list = malloc((size_t)n_blocks * sizeof(int32_t));
    if (st != MG_OK || !pool->free_list) {
        mg_kv_pool_free(pool);
        return mg_error_set(MG_ERR_OOM, "cannot allocate KV cache of %zu bytes", 2 * bytes);
    }
    /* Stack order: block 0 is handed out first. */
    for (int i = 0; i < n_blocks; i++) pool->free_list[i] = n_blocks - 1 - i;
    pool->n_free = n_blocks;
    return MG_OK;
}

mg_status mg_kv_pool_init(mg_kv_pool *pool, int n_layers, int n_kv_heads, int head_dim, int block_size,
                          int n_blocks) {
    return mg_kv_pool_init_on(pool, mg_backend_cpu(), MG_DTYPE_F32, n_layers, n_kv_heads, head_dim, block_size,
                              n_blocks);
}

int mg_kv_pool_blocks_for_bytes_dtype(size_t bytes, mg_dtype dtype, int n_layers, int n_kv_heads, int head_dim,
                                      int block_size) {
    size_t per_block = 2 * dtype_size(dtype) * (size_t)n_layers * (size_t)block_size * (size_t)n_kv_heads *
                       (size_t)head_dim;
    size_t n = per_block ? bytes / per_block : 0;
    return n > 0x7fffffff ? 0x7fffffff : (int)n;
}

int mg_kv_pool_blocks_for_bytes(size_t bytes, int n_layers, int n_kv_heads, int head_dim, int block_size) {
    return mg_kv_pool_blocks_for_bytes_dtype(bytes, MG_DTYPE_F32, n_layers, n_kv_heads, head_dim, block_size);
}

void mg_kv_pool_free(mg_kv_pool *pool) {
    if (pool->ops) {
        pool->ops->free(pool->k);
        pool->ops->free(pool->v);
    }
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

size_t mg_kv_offset(const mg_kv_pool *pool, const mg_kv_seq *seq, int layer, int pos) {
    int bi = pos / pool->block_size;
    assert(pos >= 0 && bi < seq->n_blocks);
    size_t block = (size_t)seq->blocks[bi];
    size_t slot = (size_t)(pos % pool->block_size);
    size_t row = (size_t)pool->n_kv_heads * (size_t)pool->head_dim;
    return (((size_t)layer * (size_t)pool->n_blocks + block) * (size_t)pool->block_size + slot) * row;
}

float *mg_kv_k_at(const mg_kv_pool *pool, const mg_kv_seq *seq, int layer, int pos) {
    return (float *)pool->k + mg_kv_offset(pool, seq, layer, pos);
}

float *mg_kv_v_at(const mg_kv_pool *pool, const mg_kv_seq *seq, int layer, int pos) {
    return (float *)pool->v + mg_kv_offset(pool, seq, layer, pos);
}

mg_status mg_kv_read(const mg_kv_pool *pool, const mg_kv_seq *seq, int layer, int pos, float *k, float *v) {
    const size_t row = (size_t)pool->n_kv_heads * (size_t)pool->head_dim, es = mg_kv_elem_size(pool);
    const size_t off = mg_kv_offset(pool, seq, layer, pos) * es;
    if (pool->dtype == MG_DTYPE_F32) {
        mg_status st = pool->ops->download(k, (const char *)pool->k + off, row * es);
        return st != MG_OK ? st : pool->ops->download(v, (const char *)pool->v + off, row * es);
    }
    uint16_t *tmp = malloc(2 * row * sizeof(uint16_t));
    if (!tmp) return mg_error_set(MG_ERR_OOM, "cannot allocate a K/V column");
    mg_status st = pool->ops->download(tmp, (const char *)pool->k + off, row * es);
    if (st == MG_OK) st = pool->ops->download(tmp + row, (const char *)pool->v + off, row * es);
    for (size_t i = 0; st == MG_OK && i < row; i++) {
        k[i] = mg_bf16_to_f32(tmp[i]);
        v[i] = mg_bf16_to_f32(tmp[row + i]);
    }
    free(tmp);
    return st;
}

static int blocks_for(const mg_kv_pool *pool, int n_pos) { return (n_pos + pool->block_size - 1) / pool->block_size; }

size_t mg_kv_image_bytes(const mg_kv_pool *pool, int n_pos) {
    return (size_t)pool->n_layers * (size_t)blocks_for(pool, n_pos) * block_elems(pool) * mg_kv_elem_size(pool);
}

/* Byte offset of block `b` of `layer` in the pool storage. */
static size_t block_offset(const mg_kv_pool *pool, int layer, int32_t b) {
    return ((size_t)layer * (size_t)pool->n_blocks + (size_t)b) * block_elems(pool) * mg_kv_elem_size(pool);
}

/* Images hold whole blocks, (n_layers, n_blocks_used, block elements). */
mg_status mg_kv_seq_save(const mg_kv_pool *pool, const mg_kv_seq *seq, int n_pos, void *k_img, void *v_img) {
    const int nb = blocks_for(pool, n_pos);
    const size_t bb = block_elems(pool) * mg_kv_elem_size(pool);
    if (nb > seq->n_blocks) return mg_error_set(MG_ERR_ARG, "sequence holds %d blocks, %d needed", seq->n_blocks, nb);
    for (int l = 0; l < pool->n_layers; l++)
        for (int b = 0; b < nb; b++) {
            size_t img = ((size_t)l * nb + b) * bb, off = block_offset(pool, l, seq->blocks[b]);
            mg_status st = pool->ops->download((char *)k_img + img, (const char *)pool->k + off, bb);
            if (st == MG_OK) st = pool->ops->download((char *)v_img + img, (const char *)pool->v + off, bb);
            if (st != MG_OK) return st;
        }
    return MG_OK;
}

mg_status mg_kv_seq_load(mg_kv_pool *pool, const mg_kv_seq *seq, int n_pos, const void *k_img, const void *v_img) {
    const int nb = blocks_for(pool, n_pos);
    const size_t bb = block_elems(pool) * mg_kv_elem_size(pool);
    if (nb > seq->n_blocks) return mg_error_set(MG_ERR_ARG, "sequence holds %d blocks, %d needed", seq->n_blocks, nb);
    for (int l = 0; l < pool->n_layers; l++)
        for (int b = 0; b < nb; b++) {
            size_t img = ((size_t)l * nb + b) * bb, off = block_offset(pool, l, seq->blocks[b]);
            mg_status st = pool->ops->upload((char *)pool->k + off, (const char *)k_img + img, bb);
            if (st == MG_OK) st = pool->ops->upload((char *)pool->v + off, (const char *)v_img + img, bb);
            if (st != MG_OK) return st;
        }
    return MG_OK;
}
