/* The op table a backend fills in. The forward pass (src/engine/forward.c)
 * is written once against these ops; the CPU backend is the specification
 * and the CUDA backend is checked against it.
 *
 * Activation buffers are FP32 arrays owned by the backend (host memory for
 * the CPU backend). `round_bf16` != 0 rounds every output value to the
 * nearest BF16 value, which is how the engine follows the numerics contract
 * (BF16 at op boundaries, FP32 accumulation); 0 keeps FP32 (--fp32 mode).
 *
 * mg_kernels selects the reduction orders: FAST may pick a different
 * reduction order per batch size (as production kernels do, and the source
 * of batch-induced flips); INVARIANT computes every row with an order that
 * depends only on fixed dims (K, head_dim, KV length), never on the batch. */
#ifndef MG_BACKEND_H
#define MG_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "../engine/kv_cache.h"
#include "../model/model.h"

typedef enum { MG_KERNELS_FAST = 0, MG_KERNELS_INVARIANT = 1 } mg_kernels;

/* Rows of a batch as attention sees them: row i is position positions[i] of
 * the sequence whose block table is seqs[i]; it attends to positions
 * 0..positions[i] of that sequence, whose K/V must already be stored. */
typedef struct {
    int n_rows;
    const int32_t *positions; /* (n_rows) */
    mg_kv_seq *const *seqs;   /* (n_rows) */
} mg_attn_rows;

typedef struct {
    const char *name;

    /* out[i, :] = table[tokens[i], :] as FP32. Tokens must be in range. */
    void (*embed)(float *out /* (n, dim) */, const mg_matrix *table, const int32_t *tokens /* (n) */, int n);

    /* out[i] = weight * normalize(in[i]) with normalize(x) = x / sqrt(mean(x^2) + eps);
     * with round_bf16 the normalized value and the product are each rounded
     * (as HF's LlamaRMSNorm does in BF16). out may alias in. */
    void (*rmsnorm)(float *out /* (n, dim) */, const float *in /* (n, dim) */, const float *weight /* (dim) */,
                    int n, int dim, float eps, int round_bf16);

    /* out[i, r] = sum_c in[i, c] * w[r, c] (+ bias[r]). */
    void (*matmul)(float *out /* (n, w->rows) */, const float *in /* (n, w->cols) */, const mg_matrix *w,
                   const float *bias /* (w->rows) or NULL */, int n, mg_kernels kernels, int round_bf16);

    /* Rotates x in place with HF's rotate-half RoPE at each row's position.
     * inv_freq holds the (possibly llama3-scaled) inverse frequencies. */
    void (*rope)(float *x /* (n, n_heads, head_dim) */, const int32_t *positions /* (n) */, int n, int n_heads,
                 int head_dim, const float *inv_freq /* (head_dim / 2) */, int round_bf16);

    /* Writes row i's K and V into the cache at (seqs[i], positions[i]). */
    void (*kv_store)(mg_kv_pool *pool, int layer, const float *k /* (n, n_kv_heads * head_dim) */,
                     const float *v /* (n, n_kv_heads * head_dim) */, const mg_attn_rows *rows);

    /* Causal GQA attention of each row over its sequence's cached K/V. */
    void (*attention)(float *out /* (n, n_heads * head_dim) */, const float *q /* (n, n_heads * head_dim) */,
                      const mg_kv_pool *pool, int layer, const mg_attn_rows *rows, int n_heads,
                      mg_kernels kernels, int round_bf16);

    /* x += y elementwise. */
    void (*add)(float *x /* (n) */, const float *y /* (n) */, size_t n, int round_bf16);

    /* out = silu(gate) * up, with silu(g) rounded before the product when
     * round_bf16 (as HF's act_fn(gate) * up in BF16). out may alias gate. */
    void (*swiglu)(float *out /* (n) */, const float *gate /* (n) */, const float *up /* (n) */, size_t n,
                   int round_bf16);
} mg_backend_ops;

/* The CPU reference backend (OpenMP across output rows). */
const mg_backend_ops *mg_backend_cpu(void);

#endif
