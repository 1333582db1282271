/* CPU backend ops (one family per file); see backend.h for the contracts.
 * Activation buffers are FP32 host arrays whatever round_bf16 says. */
#ifndef MG_CPU_OPS_H
#define MG_CPU_OPS_H

#include "../backend.h"

mg_status mg_cpu_embed(void *out, const mg_matrix *table, const mg_attn_rows *rows, int round_bf16);
mg_status mg_cpu_rmsnorm(void *out, const void *in, const float *weight, int n, int dim, float eps, int round_bf16);
mg_status mg_cpu_matmul(void *out, const void *in, const mg_matrix *w, const float *bias, int n, mg_kernels kernels,
                        int round_bf16);
mg_status mg_cpu_rope(float *x, const int32_t *positions, int n, int n_heads, int head_dim, const float *inv_freq,
                      int round_bf16);
mg_status mg_cpu_kv_store(mg_kv_pool *pool, int layer, const float *k, const float *v, const mg_attn_rows *rows);
mg_status mg_cpu_attention(void *out, const void *q, const mg_kv_pool *pool, int layer, const mg_attn_rows *rows,
                           int n_heads, mg_kernels kernels, int round_bf16);
mg_status mg_cpu_add(void *x, const void *y, size_t n, int round_bf16);
mg_status mg_cpu_swiglu(void *out, const void *gate, const void *up, size_t n, int round_bf16);

#endif
