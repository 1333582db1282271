/* FAST BF16 matmul for a few rows (decode at small batch): out (M, n) = x
 * (M, K) w (n, K)^T over up to MG_TC_MAX_SEGS weight matrices sharing x,
 * in one launch, M <= GEMV_MAX_M.
 *
 * At batch 1 a decode step is a stream of weight reads: the kernel's only
 * job is to keep enough 16-byte loads in flight to read the weights at the
 * memory's speed. cuBLASLt's small-M kernels read them at ~2.7 TB/s on an
 * H100 (bench/results/lt-pin-h100-2026-11-23.md: 43 us for 117 MB); a plain
 * read stream gets more: with this kernel a decode step at 8B shapes, batch
 * 1, took 6.00 ms instead of 6.55 (H100, 2026-11-23). From 4 rows on,
 * cuBLASLt is faster (each weight vector then meets M x vectors, and the
 * accumulators crowd out loads in flight): MG_CUDA_GEMV_MAX (2).
 *
 * Layout: a warp owns GEMV_ROWS consecutive output features of one part
 * (parts' warps are numbered part after part, so no warp straddles two).
 * Lane l reads the 16-byte vectors l, l + 32, ... of each of its rows
 * (a warp reads 512 contiguous bytes per row per step), GEMV_UNROLL steps
 * ahead, through the non-coherent path without L1 allocation (each weight
 * is read once); x's vectors come through L1 (every warp reads all of x).
 * Per lane, FP32 FMAs in k order; then an xor tree over the lanes; the
 * bias is added before the single rounding to the output type, as the
 * reference does. The order depends on K alone (not on M or the part), but
 * FAST promises no bits: this is for speed, and INVARIANT never runs it. */
#include "cuda_common.cuh"
#include "matmul_tc.cuh"

#define GEMV_WARPS 8  /* warps per block */
#define GEMV_ROWS 2   /* output features per warp */
#define GEMV_UNROLL 4 /* 16-byte vectors per lane and row in flight */
#define GEMV_MAX_M 8

/* The parts of one launch: part p owns warps wbase[p] .. wbase[p + 1] - 1. */
typedef struct {
    const uint4 *w[MG_TC_MAX_SEGS];    /* part p: (n[p], K) BF16, 16-byte rows */
    void *out[MG_TC_MAX_SEGS];         /* part p: (M, n[p]), TO */
    const float *bias[MG_TC_MAX_SEGS]; /* part p: (n[p]) or NULL */
    int n[MG_TC_MAX_SEGS];
    int wbase[MG_TC_MAX_SEGS + 1];
} gemv_parts;

/* A 16-byte weight load that skips L1 and hints a 256-byte L2 fetch. */
static __device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

/* acc += dot of 8 BF16 pairs (w, x), in element order. */
static __device__ __forceinline__ float dot8(uint4 w, uint4 x, float acc) {
    const unsigned wv[4] = {w.x, w.y, w.z, w.w}, xv[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        acc = fmaf(__uint_as_float(wv[i] << 16), __uint_as_float(xv[i] << 16), acc);
        acc = fmaf(__uint_as_float(wv[i] & 0xffff0000u), __uint_as_float(xv[i] & 0xffff0000u), acc);
    }
    return acc;
}

template <int M, typename TO>
__global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_kernel(gemv_parts s, const uint4 *x, int kv) {
    const int lane = threadIdx.x & 31;
    const int gw = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    /* This warp's part, picked with constant indices (a dynamic index
     * would copy the parameter struct to local memory). */
    int n = 0, w0 = 0;
    const uint4 *w = NULL;
    TO *out = NULL;
    const float *bias = NULL;
#pragma unroll
    for (int q = 0; q < MG_TC_MAX_SEGS; q++)
        if (gw >= s.wbase[q] && gw < s.wbase[q + 1])
            n = s.n[q], w0 = s.wbase[q], w = s.w[q], out = (TO *)s.out[q], bias = s.bias[q];
    if (!w) return; /* past the last part's warps */
    const int r0 = (gw - w0) * GEMV_ROWS;
    const uint4 *wr[GEMV_ROWS]; /* a row past n reads row n - 1 and stores nothing */
#pragma unroll
    for (int j = 0; j < GEMV_ROWS; j++) wr[j] = w + (size_t)min(r0 + j, n - 1) * kv;
    float acc[GEMV_ROWS][M] = {};
    for (int v0 = lane; v0 < kv; v0 += 32 * GEMV_UNROLL) {
        uint4 wv[GEMV_UNROLL][GEMV_ROWS];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++)
#pragma unroll
            for (int j = 0; j < GEMV_ROWS; j++)
                wv[u][j] = v0 + 32 * u < kv ? ld_stream(wr[j] + v0 + 32 * u) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int v = v0 + 32 * u;
            if (v >= kv) break;
#pragma unroll
            for (int m = 0; m < M; m++) {
                const uint4 xv = __ldg(x + (size_t)m * kv + v);
#pragma unroll
                for (int j = 0; j < GEMV_ROWS; j++) acc[j][m] = dot8(wv[u][j], xv, acc[j][m]);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < GEMV_ROWS; j++)
#pragma unroll
        for (int m = 0; m < M; m++) {
            float v = acc[j][m];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            const int r = r0 + j;
            if (lane == (j * M + m) % 32 && r < n) out[(size_t)m * n + r] = from_f<TO>(bias ? v + bias[r] : v);
        }
}

int mg_cuda_gemv_fits(const mg_matmul_part *parts, int n_parts, const void *x, int M) {
    if (M < 1 || M > GEMV_MAX_M || n_parts < 1 || n_parts > MG_TC_MAX_SEGS || (uintptr_t)x % 16) return 0;
    const int K = parts[0].w->cols;
    if (K % 8) return 0;
    for (int p = 0; p < n_parts; p++)
        if (parts[p].w->dtype != MG_DTYPE_BF16 || parts[p].w->cols != K || (uintptr_t)parts[p].w->data % 16 ||
            parts[p].w->rows < 1)
            return 0;
    return 1;
}

template <int M>
static void launch(const gemv_parts &s, unsigned blocks, const void *x, int kv, int out_f32) {
    if (out_f32)
        gemv_kernel<M, float><<<blocks, GEMV_WARPS * 32, 0, mg_cuda.stream>>>(s, (const uint4 *)x, kv);
    else
        gemv_kernel<M, bf16><<<blocks, GEMV_WARPS * 32, 0, mg_cuda.stream>>>(s, (const uint4 *)x, kv);
}

mg_status mg_cuda_gemv(const mg_matmul_part *parts, int n_parts, const void *x, int M, int out_f32) {
    if (!mg_cuda_gemv_fits(parts, n_parts, x, M))
        return mg_error_set(MG_ERR_ARG, "gemv: %d rows, %d parts: outside what the kernel takes", M, n_parts);
    gemv_parts s = {};
    for (int p = 0; p < n_parts; p++) {
        s.w[p] = (const uint4 *)parts[p].w->data;
        s.out[p] = parts[p].out;
        s.bias[p] = parts[p].bias;
        s.n[p] = parts[p].w->rows;
        s.wbase[p + 1] = s.wbase[p] + (int)mg_div_up((size_t)s.n[p], GEMV_ROWS);
    }
    for (int p = n_parts + 1; p <= MG_TC_MAX_SEGS; p++) s.wbase[p] = s.wbase[n_parts];
    const unsigned blocks = mg_div_up((size_t)s.wbase[n_parts], GEMV_WARPS);
    const int kv = parts[0].w->cols / 8;
    switch (M) {
    case 1: launch<1>(s, blocks, x, kv, out_f32); break;
    case 2: launch<2>(s, blocks, x, kv, out_f32); break;
    case 3: launch<3>(s, blocks, x, kv, out_f32); break;
    case 4: launch<4>(s, blocks, x, kv, out_f32); break;
    case 5: launch<5>(s, blocks, x, kv, out_f32); break;
    case 6: launch<6>(s, blocks, x, kv, out_f32); break;
    case 7: launch<7>(s, blocks, x, kv, out_f32); break;
    default: launch<8>(s, blocks, x, kv, out_f32); break;
    }
    MG_CUDA_LAUNCHED("gemv_kernel");
    return MG_OK;
}
