/* CPU backend ops (one family per file); see backend.h for the contracts. */
#ifndef MG_CPU_OPS_H
#define MG_CPU_OPS_H

#include "../backend.h"

void mg_cpu_embed(float *out, const mg_matrix *table, const int32_t *tokens, int n);
void mg_cpu_rmsnorm(float *out, const float *in, const float *weight, int n, int dim, float eps, int round_bf16);
void mg_cpu_matmul(float *out, const float *in, const mg_matrix *w, const float *bias, int n, mg_kernels kernels,
                   int round_bf16);
void mg_cpu_rope(float *x, const int32_t *positions, int n, int n_heads, int head_dim, const float *inv_freq,
                 int round_bf16);
void mg_cpu_kv_store(mg_kv_pool *pool, int layer, const float *k, const float *v, const mg_attn_rows *rows);
void mg_cpu_attention(float *out, const float *q, const mg_kv_pool *pool, int layer, const mg_attn_rows *rows,
                      int n_heads, mg_kernels kernels, int round_bf16);
void mg_cpu_add(float *x, const float *y, size_t n, int round_bf16);
void mg_cpu_swiglu(float *out, const float *gate, const float *up, size_t n, int round_bf16);

#endif
