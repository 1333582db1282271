/* CUDA argmax with the FP32 top-1/top-2 margin, one block per logits row.
 *
 * mg_argmax_margin (src/engine/sampler.c) scans left to right; its result
 * is the top two elements under the total order "larger value first, then
 * lower index" (best = lowest index of the maximum; second = the best of
 * the rest). Top-2 lists under a total order merge exactly in any order, so
 * this parallel reduction returns the same ids and margin as the CPU for
 * the same logits (NaN logits aside). */
#include <limits.h>
#include <math.h>

#include "cuda_common.cuh"

#define ARGMAX_THREADS 1024

typedef struct {
    float v1;
    int i1;
    float v2;
    int i2;
} top2;

static __device__ __forceinline__ bool better(float v, int i, float w, int j) { return v > w || (v == w && i < j); }

static __device__ __forceinline__ void top2_insert(top2 &t, float v, int i) {
    if (better(v, i, t.v1, t.i1)) {
        t.v2 = t.v1;
        t.i2 = t.i1;
        t.v1 = v;
        t.i1 = i;
    } else if (better(v, i, t.v2, t.i2)) {
        t.v2 = v;
        t.i2 = i;
    }
}

static __device__ __forceinline__ void top2_merge(top2 &t, const top2 &o) {
    top2_insert(t, o.v1, o.i1);
    top2_insert(t, o.v2, o.i2);
}

static __device__ __forceinline__ top2 top2_shfl(const top2 &t, int lane_mask) {
    top2 o;
    o.v1 = __shfl_xor_sync(0xffffffffu, t.v1, lane_mask);
    o.i1 = __shfl_xor_sync(0xffffffffu, t.i1, lane_mask);
    o.v2 = __shfl_xor_sync(0xffffffffu, t.v2, lane_mask);
    o.i2 = __shfl_xor_sync(0xffffffffu, t.i2, lane_mask);
    return o;
}

__global__ void __launch_bounds__(ARGMAX_THREADS) argmax_kernel(mg_argmax *out, const float *logits, int vocab) {
    __shared__ top2 warp_top[ARGMAX_THREADS / 32];
    const float *row = logits + (size_t)blockIdx.x * vocab;
    top2 t = {-INFINITY, INT_MAX, -INFINITY, INT_MAX};
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) top2_insert(t, row[i], i);
    for (int o = 16; o > 0; o >>= 1) top2_merge(t, top2_shfl(t, o));
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) warp_top[warp] = t;
    __syncthreads();
    if (warp == 0) {
        const int n_warps = blockDim.x >> 5;
        t = lane < n_warps ? warp_top[lane] : (top2){-INFINITY, INT_MAX, -INFINITY, INT_MAX};
        for (int o = 16; o > 0; o >>= 1) top2_merge(t, top2_shfl(t, o));
        if (lane == 0) {
            mg_argmax r;
            r.token = t.i1;
            r.second = t.i2;
            r.top1 = row[t.i1];
            r.margin = row[t.i1] - row[t.i2];
            out[blockIdx.x] = r;
        }
    }
}

mg_status mg_cuda_argmax(mg_argmax *out, const float *logits, int n, int vocab) {
    if (n == 0) return MG_OK;
    if (vocab < 2) return mg_error_set(MG_ERR_ARG, "argmax needs a vocabulary of at least 2");
    argmax_kernel<<<n, ARGMAX_THREADS, 0, mg_cuda.stream>>>(out, logits, vocab);
    MG_CUDA_LAUNCHED("argmax");
    return MG_OK;
}
