/* CUDA embedding, RMSNorm (+ fused residual add), residual add and SwiGLU.
 *
 * RMSNorm: one block per row; each thread sums the squares of a fixed
 * strided subset of the row in order, then a fixed tree combines the
 * threads, so a row's result depends only on the row (batch-invariant in
 * both kernel modes). The value formulas follow the CPU reference
 * (src/backend/cpu/elementwise.c); this file is compiled with --fmad=false
 * so that a*b+c is not contracted differently from the reference. */
#include "cuda_common.cuh"

#define NORM_THREADS 256

/* Sum over the block, in a fixed order (warp xor tree, then warp 0 over the
 * warp sums). Every thread gets the result. */
static __device__ float block_sum(float v, float *smem /* (32) */) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n_warps = blockDim.x >> 5;
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < n_warps ? smem[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) smem[0] = s;
    }
    __syncthreads();
    float r = smem[0];
    __syncthreads(); /* smem may be reused by the caller */
    return r;
}

/* ---- embedding ------------------------------------------------------------ */

template <typename T, typename TW>
__global__ void embed_kernel(T *out, const TW *table, const int32_t *tokens, int dim) {
    const int i = blockIdx.x;
    const TW *src = table + (size_t)tokens[i] * dim;
    T *dst = out + (size_t)i * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) dst[c] = from_f<T>(to_f(src[c]));
}

mg_status mg_cuda_embed(void *out, const mg_matrix *table, const mg_attn_rows *rows, int round_bf16) {
    const mg_cuda_rows *r = (const mg_cuda_rows *)rows->dev;
    const int n = rows->n_rows, dim = table->cols;
    if (n == 0) return MG_OK;
    if (table->dtype == MG_DTYPE_BF16) {
        if (round_bf16)
            embed_kernel<bf16, bf16><<<n, 256, 0, mg_cuda.stream>>>((bf16 *)out, (const bf16 *)table->data, r->tokens,
                                                                    dim);
        else
            embed_kernel<float, bf16><<<n, 256, 0, mg_cuda.stream>>>((float *)out, (const bf16 *)table->data,
                                                                     r->tokens, dim);
    } else {
        if (round_bf16)
            embed_kernel<bf16, float><<<n, 256, 0, mg_cuda.stream>>>((bf16 *)out, (const float *)table->data,
                                                                     r->tokens, dim);
        else
            embed_kernel<float, float><<<n, 256, 0, mg_cuda.stream>>>((float *)out, (const float *)table->data,
                                                                      r->tokens, dim);
    }
    MG_CUDA_LAUNCHED("embed");
    return MG_OK;
}

/* ---- RMSNorm ------------------------------------------------------------------ */

/* With x_add: x = rnd(x + y) first (stored back), then out = norm(x).
 * The general kernel (any dim): thread t takes columns t, t + 256, ... */
template <typename T, bool ADD>
__global__ void __launch_bounds__(NORM_THREADS)
    rmsnorm_kernel(T *out, T *x, const T *y, const float *weight, int dim, float eps) {
    __shared__ float red[32];
    const size_t base = (size_t)blockIdx.x * dim;
    T *xr = x + base;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        float v = to_f(xr[c]);
        if (ADD) {
            v = rnd<T>(v + to_f(y[base + c]));
            xr[c] = from_f<T>(v);
        }
        ss += v * v;
    }
    ss = block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    T *o = out + base;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        /* Each thread reads back only what it wrote (or read) above, so out
         * may alias x. */
        float v = to_f(xr[c]);
        o[c] = from_f<T>(weight[c] * rnd<T>(v * inv));
    }
}

/* The vector kernel (dim a multiple of E, the values of 16 bytes; at most
 * VPT vectors per thread): thread t takes vectors t, t + 256, ... (E
 * consecutive columns each), issues every load of its row before the first
 * use and keeps the row in registers, so a row costs one round trip to
 * memory instead of one per column group. The same formulas as above; the
 * squares are summed in the thread's column order, then the same block tree:
 * a row's result depends only on the row. */

template <typename T, bool ADD, int VPT>
__global__ void __launch_bounds__(NORM_THREADS)
    rmsnorm_vec_kernel(T *out, T *x, const T *y, const float *weight, int dim, float eps) {
    constexpr int E = vec16<T>::E;
    __shared__ float red[32];
    const size_t base = (size_t)blockIdx.x * dim;
    float v[VPT][E]; /* this thread's columns of the row */
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        const int c = (threadIdx.x + i * NORM_THREADS) * E;
        if (c >= dim) continue;
        vec16<T>::load(x + base + c, v[i]);
        if (ADD) {
            float w[E];
            vec16<T>::load(y + base + c, w);
#pragma unroll
            for (int e = 0; e < E; e++) v[i][e] = rnd<T>(v[i][e] + w[e]);
        }
    }
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        const int c = (threadIdx.x + i * NORM_THREADS) * E;
        if (c >= dim) continue;
        if (ADD) vec16<T>::store(x + base + c, v[i]);
#pragma unroll
        for (int e = 0; e < E; e++) ss += v[i][e] * v[i][e];
    }
    ss = block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        const int c = (threadIdx.x + i * NORM_THREADS) * E;
        if (c >= dim) continue;
        float o[E];
#pragma unroll
        for (int e = 0; e < E; e++) o[e] = weight[c + e] * rnd<T>(v[i][e] * inv);
        vec16<T>::store(out + base + c, o);
    }
}

/* Launches the vector kernel when the rows allow it (16-byte aligned rows,
 * at most 8 vectors per thread), else the general one. out may alias x. */
template <typename T, bool ADD>
static void launch_rmsnorm(T *out, T *x, const T *y, const float *weight, int n, int dim, float eps) {
    constexpr int E = vec16<T>::E;
    const int per_thread = mg_div_up(dim / E, NORM_THREADS);
    const int aligned = (((uintptr_t)out | (uintptr_t)x | (uintptr_t)y) & 15) == 0;
    cudaStream_t s = mg_cuda.stream;
    if (dim % E != 0 || per_thread > 8 || !aligned)
        rmsnorm_kernel<T, ADD><<<n, NORM_THREADS, 0, s>>>(out, x, y, weight, dim, eps);
    else if (per_thread <= 1)
        rmsnorm_vec_kernel<T, ADD, 1><<<n, NORM_THREADS, 0, s>>>(out, x, y, weight, dim, eps);
    else if (per_thread <= 2)
        rmsnorm_vec_kernel<T, ADD, 2><<<n, NORM_THREADS, 0, s>>>(out, x, y, weight, dim, eps);
    else if (per_thread <= 4)
        rmsnorm_vec_kernel<T, ADD, 4><<<n, NORM_THREADS, 0, s>>>(out, x, y, weight, dim, eps);
    else
        rmsnorm_vec_kernel<T, ADD, 8><<<n, NORM_THREADS, 0, s>>>(out, x, y, weight, dim, eps);
}

mg_status mg_cuda_rmsnorm(void *out, const void *in, const float *weight, int n, int dim, float eps, int round_bf16) {
    if (n == 0) return MG_OK;
    if (round_bf16)
        launch_rmsnorm<bf16, false>((bf16 *)out, (bf16 *)in, NULL, weight, n, dim, eps);
    else
        launch_rmsnorm<float, false>((float *)out, (float *)in, NULL, weight, n, dim, eps);
    MG_CUDA_LAUNCHED("rmsnorm");
    return MG_OK;
}

mg_status mg_cuda_add_rmsnorm(void *x, const void *y, void *out, const float *weight, int n, int dim, float eps,
                              int round_bf16) {
    if (n == 0) return MG_OK;
    if (round_bf16)
        launch_rmsnorm<bf16, true>((bf16 *)out, (bf16 *)x, (const bf16 *)y, weight, n, dim, eps);
    else
        launch_rmsnorm<float, true>((float *)out, (float *)x, (const float *)y, weight, n, dim, eps);
    MG_CUDA_LAUNCHED("add_rmsnorm");
    return MG_OK;
}

/* ---- residual add and SwiGLU -------------------------------------------- */

template <typename T> __global__ void add_kernel(T *x, const T *y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = from_f<T>(to_f(x[i]) + to_f(y[i]));
}

template <typename T> __global__ void swiglu_kernel(T *out, const T *gate, const T *up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = to_f(gate[i]);
        float silu = rnd<T>(g * (1.0f / (1.0f + expf(-g))));
        out[i] = from_f<T>(silu * to_f(up[i]));
    }
}

static unsigned grid_for(size_t n) {
    size_t blocks = (n + 255) / 256, cap = (size_t)mg_cuda.n_sm * 16;
    return (unsigned)(blocks < cap ? (blocks ? blocks : 1) : cap);
}

mg_status mg_cuda_add(void *x, const void *y, size_t n, int round_bf16) {
    if (n == 0) return MG_OK;
    if (round_bf16)
        add_kernel<bf16><<<grid_for(n), 256, 0, mg_cuda.stream>>>((bf16 *)x, (const bf16 *)y, n);
    else
        add_kernel<float><<<grid_for(n), 256, 0, mg_cuda.stream>>>((float *)x, (const float *)y, n);
    MG_CUDA_LAUNCHED("add");
    return MG_OK;
}

mg_status mg_cuda_swiglu(void *out, const void *gate, const void *up, size_t n, int round_bf16) {
    if (n == 0) return MG_OK;
    if (round_bf16)
        swiglu_kernel<bf16><<<grid_for(n), 256, 0, mg_cuda.stream>>>((bf16 *)out, (const bf16 *)gate,
                                                                     (const bf16 *)up, n);
    else
        swiglu_kernel<float><<<grid_for(n), 256, 0, mg_cuda.stream>>>((float *)out, (const float *)gate,
                                                                      (const float *)up, n);
    MG_CUDA_LAUNCHED("swiglu");
    return MG_OK;
}

/* out[i] = ((+0 + parts[0][i]) + parts[1][i]) + ..., FP32 adds in part
 * order, then the store (rounded to BF16 for BF16 activations). */
template <typename T> __global__ void fold_kernel(T *out, const float *parts, int n_parts, size_t count) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int p = 0; p < n_parts; p++) acc += __ldcg(parts + (size_t)p * count + i);
        out[i] = from_f<T>(acc);
    }
}

mg_status mg_cuda_fold(void *out, const float *parts, int n_parts, size_t count, int round_bf16) {
    if (count == 0) return MG_OK;
    if (round_bf16)
        fold_kernel<bf16><<<grid_for(count), 256, 0, mg_cuda.stream>>>((bf16 *)out, parts, n_parts, count);
    else
        fold_kernel<float><<<grid_for(count), 256, 0, mg_cuda.stream>>>((float *)out, parts, n_parts, count);
    MG_CUDA_LAUNCHED("fold");
    return MG_OK;
}
