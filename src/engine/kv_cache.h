/* Paged KV cache: a pool of fixed-size blocks shared by all sequences, a
 * free list, and a block table per sequence (vLLM's PagedAttention layout).
 *
 * Position p of a sequence lives in block table[p / block_size] at slot
 * p % block_size. The block storage lives in the memory of the backend that
 * computes with it (host memory for the CPU backend, device memory for
 * CUDA); free list and block tables are host memory. The CPU pool stores
 * FP32 values (rounded to BF16 in BF16 numerics by the forward pass, so the
 * cache holds exactly what a BF16 cache would); a device pool for BF16
 * numerics stores BF16, the same values in half the bytes. */
#ifndef MG_KV_CACHE_H
#define MG_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "../model/model.h"
#include "../util/status.h"

struct mg_backend_ops;

typedef struct {
    int n_layers;
    int n_kv_heads;
    int head_dim;
    int block_size; /* tokens per block */
    int n_blocks;   /* blocks in the pool */
    mg_dtype dtype; /* element type of k and v: MG_DTYPE_F32 (CPU pools) or MG_DTYPE_BF16 */
    const struct mg_backend_ops *ops; /* backend whose memory holds k and v */
    void *k;        /* (n_layers, n_blocks, block_size, n_kv_heads, head_dim) */
    void *v;        /* (n_layers, n_blocks, block_size, n_kv_heads, head_dim) */
    int32_t *free_list; /* (n_blocks) stack of free block ids */
    int n_free;
} mg_kv_pool;

typedef struct {
    int32_t *blocks; /* (capacity) block ids, in position order */
    int n_blocks;    /* blocks held */
    int capacity;    /* allocated entries of blocks[] */
} mg_kv_seq;

/* Allocates a pool of `n_blocks` blocks of `block_size` tokens in host
 * memory with FP32 elements, for the CPU backend. Returns MG_ERR_OOM (with
 * the byte count) if memory is short. */
mg_status mg_kv_pool_init(mg_kv_pool *pool, int n_layers, int n_kv_heads, int head_dim, int block_size,
                          int n_blocks);

/* The same on backend `ops` with elements of `dtype` (F32 or BF16; the CPU
 * backend supports F32 only). The storage is zero-filled. */
mg_status mg_kv_pool_init_on(mg_kv_pool *pool, const struct mg_backend_ops *ops, mg_dtype dtype, int n_layers,
                             int n_kv_heads, int head_dim, int block_size, int n_blocks);

/* Number of FP32 blocks that fit in `bytes` of memory for this geometry. */
int mg_kv_pool_blocks_for_bytes(size_t bytes, int n_layers, int n_kv_heads, int head_dim, int block_size);

/* The same for elements of `dtype`. */
int mg_kv_pool_blocks_for_bytes_dtype(size_t bytes, mg_dtype dtype, int n_layers, int n_kv_heads, int head_dim,
                                      int block_size);

/* Bytes per K (or V) element of the pool: 4 for F32, 2 for BF16. */
size_t mg_kv_elem_size(const mg_kv_pool *pool);

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
 * `seq` in `layer`, for host FP32 pools only (CPU backend). The position
 * must be reserved. */
float *mg_kv_k_at(const mg_kv_pool *pool, const mg_kv_seq *seq, int layer, int pos);
float *mg_kv_v_at(const mg_kv_pool *pool, const mg_kv_seq *seq, int layer, int pos);

/* Element offset of the K (or V) vector of (seq, layer, pos) in pool->k
 * (pool->v): valid for any pool, in units of the pool's element type. */
size_t mg_kv_offset(const mg_kv_pool *pool, const mg_kv_seq *seq, int layer, int pos);

/* Copies the K and V vectors of (seq, layer, pos) out of any pool as FP32
 * (n_kv_heads * head_dim values each). */
mg_status mg_kv_read(const mg_kv_pool *pool, const mg_kv_seq *seq, int layer, int pos, float *k, float *v);

/* Bytes of the host image of the first n_pos positions of a sequence (all
 * layers) for each of K and V: whole blocks in the pool's element type. */
size_t mg_kv_image_bytes(const mg_kv_pool *pool, int n_pos);

/* Saves the K/V of positions [0, n_pos) of seq, all layers, into host
 * images k_img / v_img of mg_kv_image_bytes(pool, n_pos) bytes each; load
 * writes them back into (possibly different) blocks of seq, which must hold
 * n_pos positions. The values round-trip exactly. */
mg_status mg_kv_seq_save(const mg_kv_pool *pool, const mg_kv_seq *seq, int n_pos, void *k_img, void *v_img);
mg_status mg_kv_seq_load(mg_kv_pool *pool, const mg_kv_seq *seq, int n_pos, const void *k_img, const void *v_img);

#endif
