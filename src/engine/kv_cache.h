/* Paged KV cache: a pool of fixed-size blocks shared by all sequences, a
 * free list, and a block table per sequence (vLLM's PagedAttention layout).
 *
 * Position p of a sequence lives in block table[p / block_size] at slot
 * p % block_size. K and V are stored as FP32 values (rounded to BF16 in BF16
 * numerics by the forward pass, so the cache holds exactly what a BF16 cache
 * would). */
#ifndef MG_KV_CACHE_H
#define MG_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "../util/status.h"

typedef struct {
    int n_layers;
    int n_kv_heads;
    int head_dim;
    int block_size; /* tokens per block */
    int n_blocks;   /* blocks in the pool */
    float *k;       /* (n_layers, n_blocks, block_size, n_kv_heads, head_dim) */
    float *v;       /* (n_layers, n_blocks, block_size, n_kv_heads, head_dim) */
    int32_t *free_list; /* (n_blocks) stack of free block ids */
    int n_free;
} mg_kv_pool;

typedef struct {
    int32_t *blocks; /* (capacity) block ids, in position order */
    int n_blocks;    /* blocks held */
    int capacity;    /* allocated entries of blocks[] */
} mg_kv_seq;

/* Allocates a pool of `n_blocks` blocks of `block_size` tokens. Returns
 * MG_ERR_OOM (with the byte count) if memory is short. */
mg_status mg_kv_pool_init(mg_kv_pool *pool, int n_layers, int n_kv_heads, int head_dim, int block_size,
                          int n_blocks);

/* Number of blocks that fit in `bytes` of memory for this geometry. */
int mg_kv_pool_blocks_for_bytes(size_t bytes, int n_layers, int n_kv_heads, int head_dim, int block_size);

void mg_kv_pool_free(mg_kv_pool *pool);

/* Makes `seq` hold enough blocks for `n_tokens` positions, taking blocks from
 * the pool. Returns MG_ERR_FULL (nothing taken) if the pool cannot supply
 * them. */
mg_status mg_kv_seq_reserve(mg_kv_pool *pool, mg_kv_seq *seq, int n_tokens);

/* Returns blocks beyond what `n_tokens` positions need to the pool
 * (n_tokens = 0 releases all). */
void mg_kv_seq_truncate(mg_kv_pool *pool, mg_kv_seq *seq, int n_tokens);

/* Releases all blocks and the block table. */
void mg_kv_seq_free(mg_kv_pool *pool, mg_kv_seq *seq);

/* Address of the K (or V) vector (n_kv_heads, head_dim) of position `pos` of
 * `seq` in `layer`. The position must be reserved. */
float *mg_kv_k_at(const mg_kv_pool *pool, const mg_kv_seq *seq, int layer, int pos);
float *mg_kv_v_at(const mg_kv_pool *pool, const mg_kv_seq *seq, int layer, int pos);

#endif
