/* CUDA RoPE on q and k (HF rotate-half, llama3-scaled inv_freq computed on
 * the host by mg_rope_inv_freq) fused with the K/V store into the paged
 * cache. One block per (row, head): blockIdx.y < n_heads rotates a query
 * head, the next n_kv_heads rotate a key head and store it, the last
 * n_kv_heads store a value head; a thread takes pair (j, j + head_dim / 2).
 * Formulas as the CPU reference; compiled with --fmad=false, so a*c - b*s
 * rounds each product as the reference does. */
#include "cuda_common.cuh"

typedef struct {
    int n_heads, n_kv_heads, head_dim;
    int layer, block_size, n_blocks;
} rope_params;

template <typename T, typename KV>
__global__ void rope_kv_store_kernel(T *q, T *k, const T *v, KV *kc, KV *vc, const int32_t *positions,
                                     const int32_t *bt_off, const int32_t *bt, const float *inv_freq, rope_params p) {
    const int i = blockIdx.x, hd = p.head_dim, half = hd / 2;
    int h = blockIdx.y;
    const int pos = positions[i];
    const float fpos = (float)pos;
    const size_t kvd = (size_t)p.n_kv_heads * hd;
    const int32_t block = bt[bt_off[i] + pos / p.block_size];
    const size_t cache_off = (((size_t)p.layer * p.n_blocks + block) * p.block_size + pos % p.block_size) * kvd;
    if (h >= p.n_heads + p.n_kv_heads) { /* a value head: store only */
        h -= p.n_heads + p.n_kv_heads;
        const T *vi = v + (size_t)i * kvd + (size_t)h * hd;
        KV *dst = vc + cache_off + (size_t)h * hd;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) dst[d] = from_f<KV>(to_f(vi[d]));
        return;
    }
    const bool is_k = h >= p.n_heads;
    if (is_k) h -= p.n_heads;
    T *x = is_k ? k + (size_t)i * kvd + (size_t)h * hd : q + ((size_t)i * p.n_heads + h) * hd;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        float s, c;
        sincosf(fpos * inv_freq[j], &s, &c);
        const float a = to_f(x[j]), b = to_f(x[j + half]);
        const T lo = from_f<T>(a * c - b * s), hi = from_f<T>(b * c + a * s);
        x[j] = lo;
        x[j + half] = hi;
        if (is_k) {
            kc[cache_off + (size_t)h * hd + j] = from_f<KV>(to_f(lo));
            kc[cache_off + (size_t)h * hd + j + half] = from_f<KV>(to_f(hi));
        }
    }
}

template <typename T, typename KV>
static void launch(void *q, void *k, const void *v, mg_kv_pool *pool, const mg_cuda_rows *r, const float *inv_freq,
                   const rope_params &p, int n) {
    const dim3 grid((unsigned)n, (unsigned)(p.n_heads + 2 * p.n_kv_heads));
    const int threads = p.head_dim / 2 <= 32 ? 32 : p.head_dim / 2 <= 64 ? 64 : 128;
    rope_kv_store_kernel<T, KV><<<grid, threads, 0, mg_cuda.stream>>>((T *)q, (T *)k, (const T *)v, (KV *)pool->k,
                                                               (KV *)pool->v, r->positions, r->bt_off, r->bt,
                                                               inv_freq, p);
}

mg_status mg_cuda_rope_kv_store(void *q, void *k, const void *v, mg_kv_pool *pool, int layer,
                                const mg_attn_rows *rows, int n_heads, const float *inv_freq, int round_bf16) {
    const mg_cuda_rows *r = (const mg_cuda_rows *)rows->dev;
    const int n = rows->n_rows;
    if (n == 0) return MG_OK;
    const rope_params p = {n_heads, pool->n_kv_heads, pool->head_dim, layer, pool->block_size, pool->n_blocks};
    const int kv_bf16 = pool->dtype == MG_DTYPE_BF16;
    if (round_bf16 && kv_bf16)
        launch<bf16, bf16>(q, k, v, pool, r, inv_freq, p, n);
    else if (round_bf16)
        launch<bf16, float>(q, k, v, pool, r, inv_freq, p, n);
    else if (kv_bf16)
        launch<float, bf16>(q, k, v, pool, r, inv_freq, p, n);
    else
        launch<float, float>(q, k, v, pool, r, inv_freq, p, n);
    MG_CUDA_LAUNCHED("rope_kv_store");
    return MG_OK;
}
