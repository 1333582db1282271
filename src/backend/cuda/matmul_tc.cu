/* The batch-invariant tensor-core matmul kernels; see matmul_tc.cuh for the
 * reduction order both kernels share. */
#include "matmul_tc.cuh"

/* D += A B for one m16n8k16 BF16 tile, FP32 accumulators in place. */
static __device__ __forceinline__ void mma16816(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* One 32-column block: alo / ahi hold 8 consecutive columns (8t..8t+7) of
 * weight rows g and g + 8, b the same columns of activation row g. The
 * first mma takes columns 8t + 0..3 (k slots 2t, 2t+1, 2t+8, 2t+9), the
 * second 8t + 4..7. */
static __device__ __forceinline__ void mma_block(float *c, const uint4 &alo, const uint4 &ahi, const uint4 &b) {
    mma16816(c, alo.x, ahi.x, alo.y, ahi.y, b.x, b.y);
    mma16816(c, alo.z, ahi.z, alo.w, ahi.w, b.z, b.w);
}

static __device__ __forceinline__ uint4 ld_weights(const bf16 *p) { return __ldg((const uint4 *)p); }
static __device__ __forceinline__ void prefetch_l2(const bf16 *p) {
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}
static __device__ __forceinline__ uint4 ld_act(const bf16 *p) { return *(const uint4 *)p; }

template <typename TO> static __device__ __forceinline__ void store_out(void *out, size_t i, float v) {
    ((TO *)out)[i] = from_f<TO>(v);
}

/* The segment that owns weight-row tile `tile` (constant-index selection
 * keeps the kernel parameters out of local memory). */
typedef struct {
    const bf16 *w;
    const float *bias;
    void *out;
    int n, tile0;
} seg_sel;

static __device__ __forceinline__ seg_sel find_seg(const mg_tc_args &a, int tile) {
    seg_sel s = {a.seg[0].w, a.seg[0].bias, a.seg[0].out, a.seg[0].n, a.seg[0].tile0};
#pragma unroll
    for (int i = 1; i < MG_TC_MAX_SEGS; i++)
        if (i < a.n_seg && tile >= a.seg[i].tile0) s = {a.seg[i].w, a.seg[i].bias, a.seg[i].out, a.seg[i].n,
                                                        a.seg[i].tile0};
    return s;
}

/* ---- skinny: small M ------------------------------------------------------- */

#define SK_WARPS 8

/* PRE (MG_CUDA_SKINNY_V2=1): a full split's 16 weight loads per thread
 * (8 blocks x 2 rows, 256 bytes) are issued before its first mma, so that
 * a warp keeps 8 KiB of weights in flight instead of what the compiler
 * hoists from the rolled loop; the mma sequence, hence every bit, is the
 * same as without PRE. */
template <int NT, typename TO, bool PRE>
__global__ void __launch_bounds__(SK_WARPS * 32) mm_skinny(mg_tc_args a) {
    constexpr int ELEMS = NT * 4 * 32, PER_T = (ELEMS + SK_WARPS * 32 - 1) / (SK_WARPS * 32);
    __shared__ float part[SK_WARPS][NT * 4][32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const seg_sel sg = find_seg(a, blockIdx.y);
    const int f0 = (blockIdx.y - sg.tile0) * 16, m0 = blockIdx.x * 8 * NT;
    const int K = a.K, M = a.M, nkb = K / 32, kbs = MG_TC_SPLIT / 32, S = (nkb + kbs - 1) / kbs;
    const bool ok0 = f0 + g < sg.n, ok1 = f0 + g + 8 < sg.n;
    const bf16 *w0 = sg.w + (size_t)(ok0 ? f0 + g : 0) * K + 8 * t;
    const bf16 *w1 = sg.w + (size_t)(ok1 ? f0 + g + 8 : 0) * K + 8 * t;
    const bf16 *xr[NT];
    bool okx[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const int row = m0 + 8 * j + g;
        okx[j] = row < M;
        xr[j] = a.x + (size_t)(okx[j] ? row : 0) * K + 8 * t;
    }
    const uint4 zero = make_uint4(0, 0, 0, 0);
    float tot[PER_T];
#pragma unroll
    for (int q = 0; q < PER_T; q++) tot[q] = 0.0f;

    for (int base = 0; base < S; base += SK_WARPS) {
        const int s = base + warp;
        if (s < S) {
            float acc[NT][4];
#pragma unroll
            for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
            const int kb1 = min((s + 1) * kbs, nkb);
            constexpr int KBS = MG_TC_SPLIT / 32;
            if (PRE && kb1 - s * kbs == KBS) {
                const size_t k0 = (size_t)s * MG_TC_SPLIT;
                uint4 alo[KBS], ahi[KBS];
                /* ptxas interleaves the loads below with the mma (about 6
                 * in flight, 3 without PRE): L2 prefetches of the whole
                 * split first put all 16 of a thread's reads in flight. */
#pragma unroll
                for (int i = 0; i < KBS; i++) {
                    prefetch_l2(w0 + k0 + 32 * i);
                    prefetch_l2(w1 + k0 + 32 * i);
                }
                /* Unconditional loads (out-of-range rows point at row 0),
                 * zeroed afterwards: no branch between the loads. */
#pragma unroll
                for (int i = 0; i < KBS; i++) {
                    alo[i] = ld_weights(w0 + k0 + 32 * i);
                    ahi[i] = ld_weights(w1 + k0 + 32 * i);
                }
#pragma unroll
                for (int i = 0; i < KBS; i++) {
                    if (!ok0) alo[i] = zero;
                    if (!ok1) ahi[i] = zero;
                }
#pragma unroll
                for (int i = 0; i < KBS; i++)
#pragma unroll
                    for (int j = 0; j < NT; j++) {
                        uint4 b = ld_act(xr[j] + k0 + 32 * i);
                        if (!okx[j]) b = zero;
                        mma_block(acc[j], alo[i], ahi[i], b);
                    }
            } else
#pragma unroll 4
            for (int kb = s * kbs; kb < kb1; kb++) {
                const size_t k = (size_t)kb * 32;
                const uint4 alo = ok0 ? ld_weights(w0 + k) : zero;
                const uint4 ahi = ok1 ? ld_weights(w1 + k) : zero;
#pragma unroll
                for (int j = 0; j < NT; j++) {
                    const uint4 b = okx[j] ? ld_act(xr[j] + k) : zero;
                    mma_block(acc[j], alo, ahi, b);
                }
            }
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int c = 0; c < 4; c++) part[warp][j * 4 + c][lane] = acc[j][c];
        }
        __syncthreads();
        /* Fold this round's split results, in split order. */
        const int nw = min(SK_WARPS, S - base);
#pragma unroll
        for (int q = 0; q < PER_T; q++) {
            const int e = threadIdx.x + q * SK_WARPS * 32;
            if (e < ELEMS)
                for (int ww = 0; ww < nw; ww++) tot[q] += part[ww][e / 32][e % 32];
        }
        __syncthreads();
    }
#pragma unroll
    for (int q = 0; q < PER_T; q++) {
        const int e = threadIdx.x + q * SK_WARPS * 32;
        if (e >= ELEMS) continue;
        const int jc = e / 32, ln = e % 32, j = jc / 4, c = jc % 4;
        const int f = f0 + (ln >> 2) + (c >= 2 ? 8 : 0), row = m0 + 8 * j + 2 * (ln & 3) + (c & 1);
        if (f < sg.n && row < M) {
            float v = tot[q];
            if (sg.bias) v += sg.bias[f];
            store_out<TO>(sg.out, (size_t)row * sg.n + f, v);
        }
    }
}

/* ---- tiled: large M ----------------------------------------------------------- */

#define TL_STAGES 4

static __device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool pred) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    const int n = pred ? 16 : 0; /* 0: fill with zeros, read nothing */
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <int BM, int BN, int WM, int WN, typename TO>
__global__ void __launch_bounds__(WM *WN * 32) mm_tiled(mg_tc_args a) {
    constexpr int MT = BM / WM / 16, NT = BN / WN / 8, THREADS = WM * WN * 32;
    __shared__ __align__(16) bf16 ws[TL_STAGES][BM][32];
    __shared__ __align__(16) bf16 xs[TL_STAGES][BN][32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wm = warp % WM, wn = warp / WM;
    const seg_sel sg = find_seg(a, blockIdx.y);
    const int f0 = (blockIdx.y - sg.tile0) * BM, m0 = blockIdx.x * BN;
    const int K = a.K, M = a.M, nkb = K / 32, kbs = MG_TC_SPLIT / 32;

    auto load_stage = [&](int slot, int kb) {
        for (int c = threadIdx.x; c < BM * 4; c += THREADS) {
            const int r = c >> 2, q = c & 3, row = f0 + r;
            const bool ok = row < sg.n;
            cp_async16(&ws[slot][r][q * 8], sg.w + (size_t)(ok ? row : 0) * K + (size_t)kb * 32 + q * 8, ok);
        }
        for (int c = threadIdx.x; c < BN * 4; c += THREADS) {
            const int r = c >> 2, q = c & 3, row = m0 + r;
            const bool ok = row < M;
            cp_async16(&xs[slot][r][q * 8], a.x + (size_t)(ok ? row : 0) * K + (size_t)kb * 32 + q * 8, ok);
        }
    };

    float acc[MT][NT][4], tot[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[i][j][c] = tot[i][j][c] = 0.0f;

#pragma unroll
    for (int s = 0; s < TL_STAGES - 1; s++) {
        if (s < nkb) load_stage(s, s);
        cp_async_commit();
    }
    for (int kb = 0; kb < nkb; kb++) {
        cp_async_wait<TL_STAGES - 2>();
        __syncthreads();
        const int nk = kb + TL_STAGES - 1;
        if (nk < nkb) load_stage(nk % TL_STAGES, nk);
        cp_async_commit();
        const int slot = kb % TL_STAGES;
        uint4 alo[MT], ahi[MT], b[NT];
#pragma unroll
        for (int i = 0; i < MT; i++) {
            const int r = wm * MT * 16 + i * 16 + g;
            alo[i] = *(const uint4 *)&ws[slot][r][8 * t];
            ahi[i] = *(const uint4 *)&ws[slot][r + 8][8 * t];
        }
#pragma unroll
        for (int j = 0; j < NT; j++) b[j] = *(const uint4 *)&xs[slot][wn * NT * 8 + j * 8 + g][8 * t];
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int j = 0; j < NT; j++) mma_block(acc[i][j], alo[i], ahi[i], b[j]);
        if ((kb + 1) % kbs == 0 || kb + 1 == nkb) {
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < NT; j++)
#pragma unroll
                    for (int c = 0; c < 4; c++) {
                        tot[i][j][c] += acc[i][j][c];
                        acc[i][j][c] = 0.0f;
                    }
        }
    }
    cp_async_wait<0>();
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int f = f0 + wm * MT * 16 + i * 16 + g + (c >= 2 ? 8 : 0);
                const int row = m0 + wn * NT * 8 + j * 8 + 2 * t + (c & 1);
                if (f < sg.n && row < M) {
                    float v = tot[i][j][c];
                    if (sg.bias) v += sg.bias[f];
                    store_out<TO>(sg.out, (size_t)row * sg.n + f, v);
                }
            }
}

/* ---- launch ------------------------------------------------------------------------ */

/* Fills the segment table with tiles of `tile` weight rows; returns the
 * total tile count. */
static int build_args(mg_tc_args *a, const mg_cuda_mm_part *parts, int n_parts, const void *x, int M, int K,
                      int tile) {
    int tiles = 0;
    a->n_seg = n_parts;
    a->M = M;
    a->K = K;
    a->x = (const bf16 *)x;
    for (int i = 0; i < MG_TC_MAX_SEGS; i++) {
        mg_tc_seg *s = &a->seg[i];
        if (i < n_parts) {
            *s = (mg_tc_seg){(const bf16 *)parts[i].w, parts[i].bias, parts[i].out, parts[i].n, tiles};
            tiles += (parts[i].n + tile - 1) / tile;
        } else {
            *s = (mg_tc_seg){NULL, NULL, NULL, 0, 1 << 30};
        }
    }
    return tiles;
}

template <typename TO> static mg_status launch_skinny(mg_tc_args *a, const mg_cuda_mm_part *parts, int n_parts,
                                                      const void *x, int M, int K) {
    const int tiles = build_args(a, parts, n_parts, x, M, K, 16);
    const int nt = M <= 8 ? 1 : M <= 16 ? 2 : 4;
    dim3 grid(mg_div_up(M, 8 * nt), (unsigned)tiles);
    if (mg_cuda.skinny_v2) {
        if (nt == 1)
            mm_skinny<1, TO, true><<<grid, SK_WARPS * 32, 0, mg_cuda.stream>>>(*a);
        else if (nt == 2)
            mm_skinny<2, TO, true><<<grid, SK_WARPS * 32, 0, mg_cuda.stream>>>(*a);
        else
            mm_skinny<4, TO, true><<<grid, SK_WARPS * 32, 0, mg_cuda.stream>>>(*a);
    } else {
        if (nt == 1)
            mm_skinny<1, TO, false><<<grid, SK_WARPS * 32, 0, mg_cuda.stream>>>(*a);
        else if (nt == 2)
            mm_skinny<2, TO, false><<<grid, SK_WARPS * 32, 0, mg_cuda.stream>>>(*a);
        else
            mm_skinny<4, TO, false><<<grid, SK_WARPS * 32, 0, mg_cuda.stream>>>(*a);
    }
    MG_CUDA_LAUNCHED("mm_skinny");
    return MG_OK;
}

template <typename TO> static mg_status launch_tiled(mg_tc_args *a, const mg_cuda_mm_part *parts, int n_parts,
                                                     const void *x, int M, int K) {
    int total_n = 0;
    for (int i = 0; i < n_parts; i++) total_n += parts[i].n;
    /* Smaller weight tiles when 128-row tiles would leave SMs idle. */
    const int big = (int)mg_div_up(total_n, 128) * (int)mg_div_up(M, 64) >= mg_cuda.n_sm;
    const int tiles = build_args(a, parts, n_parts, x, M, K, big ? 128 : 64);
    dim3 grid(mg_div_up(M, 64), (unsigned)tiles);
    if (big)
        mm_tiled<128, 64, 4, 2, TO><<<grid, 256, 0, mg_cuda.stream>>>(*a);
    else
        mm_tiled<64, 64, 2, 4, TO><<<grid, 256, 0, mg_cuda.stream>>>(*a);
    MG_CUDA_LAUNCHED("mm_tiled");
    return MG_OK;
}

mg_status mg_tc_matmul(const mg_cuda_mm_part *parts, int n_parts, const void *x, int M, int K, int out_f32) {
    if (n_parts < 1 || n_parts > MG_TC_MAX_SEGS || K % 32 != 0)
        return mg_error_set(MG_ERR_ARG, "tensor-core matmul: %d parts, K = %d", n_parts, K);
    if (M == 0) return MG_OK;
    mg_tc_args a;
    const int skinny = M <= mg_cuda.skinny_max_rows;
    if (out_f32)
        return skinny ? launch_skinny<float>(&a, parts, n_parts, x, M, K) : launch_tiled<float>(&a, parts, n_parts, x, M, K);
    return skinny ? launch_skinny<bf16>(&a, parts, n_parts, x, M, K) : launch_tiled<bf16>(&a, parts, n_parts, x, M, K);
}
