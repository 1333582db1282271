/* The batch-invariant tensor-core matmul kernels; see matmul_tc.cuh for the
 * reduction order every kernel and path shares. */
#include <stdlib.h>

#include <type_traits>

#include "matmul_tc.cuh"

/* Steps of the order in 32-column blocks. */
#define KB_SPLIT (MG_TC_SPLIT / 32)            /* blocks per split (8) */
#define KB_GROUP (KB_SPLIT * MG_TC_GROUP)      /* blocks per group (32) */
#define MG_TC_MAX_TILES 16384                  /* tile counters: largest grid.x * grid.y that may split K */
static_assert(MG_TC_SPLIT * MG_TC_GROUP == MG_MATMUL_GROUP, "matmul_groups' group is the order's group");

static inline int n_groups_of(int K) { return (K / 32 + KB_GROUP - 1) / KB_GROUP; }

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

/* K split over grid.z: every block of tile `tile` calls this after writing
 * its group results to the workspace; true in the one block that finishes
 * last, which then sees all of them (release: fence before the count;
 * acquire: fence after it) and resets the counter for the next launch. */
static __device__ __forceinline__ bool last_block_of_tile(unsigned *cnt, unsigned tile) {
    __shared__ unsigned is_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned done = atomicAdd(&cnt[tile], 1u) + 1u;
        is_last = done == gridDim.z;
        if (done == gridDim.z) atomicExch(&cnt[tile], 0u); /* every other block has counted */
    }
    __syncthreads();
    if (!is_last) return false;
    __threadfence();
    return true;
}

/* ---- skinny: small M ------------------------------------------------------- */

#define SK_WARPS 8

/* PRE (MG_CUDA_SKINNY_V2=1): a full split's 16 weight loads per thread
 * (8 blocks x 2 rows, 256 bytes) are issued before its first mma, so that
 * a warp keeps 8 KiB of weights in flight instead of what the compiler
 * hoists from the rolled loop; the mma sequence, hence every bit, is the
 * same as without PRE.
 * grid (M tiles, weight tiles, K chunks): block z takes splits
 * [z * gpb * MG_TC_GROUP, (z + 1) * gpb * MG_TC_GROUP), whole groups. */
template <int NT, typename TO, bool PRE, bool GM>
__global__ void __launch_bounds__(SK_WARPS * 32) mm_skinny(mg_tc_args a) {
    constexpr int ELEMS = NT * 4 * 32, PER_T = (ELEMS + SK_WARPS * 32 - 1) / (SK_WARPS * 32);
    __shared__ float part[SK_WARPS][NT * 4][32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const seg_sel sg = find_seg(a, blockIdx.y);
    const int f0 = (blockIdx.y - sg.tile0) * 16, m0 = blockIdx.x * 8 * NT;
    const int K = a.K, M = a.M, nkb = K / 32, kbs = KB_SPLIT, S = (nkb + kbs - 1) / kbs;
    const int s_lo = blockIdx.z * a.gpb * MG_TC_GROUP, s_hi = min(S, s_lo + a.gpb * MG_TC_GROUP);
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
    /* Workspace of this block's tile for group gi (split only): ELEMS
     * values, indexed like part[.] (element e below). */
    auto ws_at = [&](int gi) {
        return a.ws + ((size_t)gi * (gridDim.x * gridDim.y) + blockIdx.y * gridDim.x + blockIdx.x) * ELEMS;
    };
    /* Output element q of this thread: e = threadIdx.x + q * 256 indexes
     * part[.][jc][ln] (e = jc * 32 + ln), accumulator c = jc % 4 of tile
     * j = jc / 4 of lane ln (mma C layout). Recomputed where needed (cheaper
     * than registers held across the main loop). */
    auto out_at = [&](int q, int &f, int &row) {
        const int e = threadIdx.x + q * SK_WARPS * 32, jc = e / 32, ln = e % 32, j = jc / 4, c = jc % 4;
        f = f0 + (ln >> 2) + (c >= 2 ? 8 : 0);
        row = m0 + 8 * j + 2 * (ln & 3) + (c & 1);
        return e < ELEMS && f < sg.n && row < M;
    };
    const uint4 zero = make_uint4(0, 0, 0, 0);
    float tot[PER_T], grp[PER_T];
#pragma unroll
    for (int q = 0; q < PER_T; q++) tot[q] = grp[q] = 0.0f;

    for (int base = s_lo; base < s_hi; base += SK_WARPS) {
        const int s = base + warp;
        if (s < s_hi) {
            float acc[NT][4];
#pragma unroll
            for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
            const int kb1 = min((s + 1) * kbs, nkb);
            constexpr int KBS = KB_SPLIT;
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
        /* Fold this round's split results in split order into the group
         * result; at a group's end, into the total (or the workspace). */
        const int nw = min(SK_WARPS, s_hi - base);
#pragma unroll
        for (int q = 0; q < PER_T; q++) {
            const int e = threadIdx.x + q * SK_WARPS * 32;
            if (e >= ELEMS) continue;
            for (int ww = 0; ww < nw; ww++) {
                grp[q] += part[ww][e / 32][e % 32];
                const int sd = base + ww;
                /* s_hi is S or a group boundary: a group ends here. */
                if ((sd + 1) % MG_TC_GROUP == 0 || sd + 1 == s_hi) {
                    int f, row;
                    if (GM) {
                        if (out_at(q, f, row)) a.groups[((size_t)(sd / MG_TC_GROUP) * M + row) * sg.n + f] = grp[q];
                    } else if (gridDim.z > 1) {
                        if (out_at(q, f, row)) ws_at(sd / MG_TC_GROUP)[e] = grp[q];
                    } else {
                        tot[q] += grp[q];
                    }
                    grp[q] = 0.0f;
                }
            }
        }
        __syncthreads();
    }
    if (GM) return; /* group mode: the group results are the output */
    if (gridDim.z > 1) {
        if (!last_block_of_tile(a.cnt, blockIdx.y * gridDim.x + blockIdx.x)) return;
#pragma unroll
        for (int q = 0; q < PER_T; q++) tot[q] = 0.0f;
        for (int gi = 0; gi < a.n_groups; gi++) {
            const float *p = ws_at(gi) + threadIdx.x;
#pragma unroll
            for (int q = 0; q < PER_T; q++) {
                int f, row;
                if (out_at(q, f, row)) tot[q] += __ldcg(p + q * SK_WARPS * 32);
            }
        }
    }
#pragma unroll
    for (int q = 0; q < PER_T; q++) {
        int f, row;
        if (!out_at(q, f, row)) continue;
        float v = tot[q];
        if (sg.bias) v += sg.bias[f];
        store_out<TO>(sg.out, (size_t)row * sg.n + f, v);
    }
}

/* ---- tiled: larger M ---------------------------------------------------------- */

static __device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool pred) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    const int n = pred ? 16 : 0; /* 0: fill with zeros, read nothing */
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* The total lives in shared memory (one slot per thread and accumulator)
 * instead of registers when the warp tile is large and K is not split. */
template <int BM, int BN, int WM, int WN, bool SPLIT> struct tl_traits {
    static constexpr int MT = BM / WM / 16, NT = BN / WN / 8, THREADS = WM * WN * 32, NACC = MT * NT * 4;
    static constexpr bool TOT_SMEM = !SPLIT && NACC > 16;
};
template <int BM, int BN, int WM, int WN, int KS, int ST, bool SPLIT> constexpr size_t tl_smem_bytes() {
    return (size_t)ST * KS * (BM + BN) * 32 * sizeof(bf16) +
           (tl_traits<BM, BN, WM, WN, SPLIT>::TOT_SMEM ? (size_t)BM * BN * sizeof(float) : 0);
}

/* A block: BM weight rows x BN activation rows, WM x WN warps (each
 * MT x NT mma tiles), K staged KS 32-column blocks at a time through an
 * ST-stage cp.async pipeline (dynamic shared memory, tl_smem_bytes).
 * Block z takes the 32-column blocks of groups [z * gpb, (z + 1) * gpb).
 * SPLIT (gridDim.z > 1): group results go to the workspace, the tile's last
 * block folds them; otherwise the block keeps the total and stores. */
/* 3 blocks per SM for the unsplit 64-row kernel (80 registers, no spill;
 * ptxas picks 94 by itself); 0: ptxas' choice (80 split, 122-128 at 128). */
template <int BM, int BN, int WM, int WN, int KS, int ST, bool SPLIT, typename TO, bool GM>
__global__ void __launch_bounds__(WM *WN * 32, (BM == 64 && !SPLIT) ? 3 : 0) mm_tiled(mg_tc_args a) {
    using TR = tl_traits<BM, BN, WM, WN, SPLIT>;
    constexpr int MT = TR::MT, NT = TR::NT, THREADS = TR::THREADS;
    constexpr bool TOT_SMEM = TR::TOT_SMEM;
    static_assert(KB_SPLIT % KS == 0, "a stage never straddles a split");
    static_assert(ST >= 2, "pipeline depth");
    extern __shared__ __align__(16) unsigned char tl_smem[];
    bf16(*ws)[KS][BM][32] = reinterpret_cast<bf16(*)[KS][BM][32]>(tl_smem);
    bf16(*xs)[KS][BN][32] = reinterpret_cast<bf16(*)[KS][BN][32]>(tl_smem + (size_t)ST * KS * BM * 64);
    float *tot_s = reinterpret_cast<float *>(tl_smem + (size_t)ST * KS * (BM + BN) * 64);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wm = warp % WM, wn = warp / WM;
    const seg_sel sg = find_seg(a, blockIdx.y);
    const int f0 = (blockIdx.y - sg.tile0) * BM, m0 = blockIdx.x * BN;
    const int K = a.K, M = a.M, nkb = K / 32;
    const int kb_lo = blockIdx.z * a.gpb * KB_GROUP, kb_hi = min(nkb, kb_lo + a.gpb * KB_GROUP);
    const int n_st = (kb_hi - kb_lo + KS - 1) / KS;
    const unsigned tile = blockIdx.y * gridDim.x + blockIdx.x, n_tiles = gridDim.x * gridDim.y;

    /* Stage st: 32-column blocks kb_lo + st * KS + kk, kk < KS, those below
     * kb_hi (the rest of a last, partial stage is never read). Rows past the
     * matrix are zero-filled. Copy c: block kk = c / (rows * 4), row
     * (c / 4) % rows, 16-byte quarter c % 4, so that 8 consecutive threads
     * fill 128 contiguous bytes of shared memory (no bank conflicts). */
    static_assert((BM * 4 * KS) % THREADS == 0 && (BN * 4 * KS) % THREADS == 0, "whole copy rounds");
    auto load_stage = [&](int slot, int st) {
        const int kb0 = kb_lo + st * KS;
#pragma unroll
        for (int it = 0; it < BM * 4 * KS / THREADS; it++) {
            const int c = (int)threadIdx.x + it * THREADS;
            const int kk = c / (BM * 4), r = (c / 4) % BM, q = c % 4, row = f0 + r, kb = kb0 + kk;
            const bool ok = row < sg.n;
            if (kb < kb_hi)
                cp_async16(&ws[slot][kk][r][q * 8], sg.w + (size_t)(ok ? row : 0) * K + (size_t)kb * 32 + q * 8, ok);
        }
#pragma unroll
        for (int it = 0; it < BN * 4 * KS / THREADS; it++) {
            const int c = (int)threadIdx.x + it * THREADS;
            const int kk = c / (BN * 4), r = (c / 4) % BN, q = c % 4, row = m0 + r, kb = kb0 + kk;
            const bool ok = row < M;
            if (kb < kb_hi)
                cp_async16(&xs[slot][kk][r][q * 8], a.x + (size_t)(ok ? row : 0) * K + (size_t)kb * 32 + q * 8, ok);
        }
    };
    /* Output element (i, j, c) of this thread: weight row f, activation row. */
    auto f_of = [&](int i, int c) { return f0 + wm * MT * 16 + i * 16 + g + (c >= 2 ? 8 : 0); };
    auto row_of = [&](int j, int c) { return m0 + wn * NT * 8 + j * 8 + 2 * t + (c & 1); };
    auto slot_of = [&](int i, int j, int c) { return ((i * NT + j) * 4 + c) * THREADS + (int)threadIdx.x; };

    float acc[MT][NT][4], grp[MT][NT][4], tot[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                acc[i][j][c] = grp[i][j][c] = 0.0f;
                if (TOT_SMEM)
                    tot_s[slot_of(i, j, c)] = 0.0f; /* read and written by this thread only */
                else if (!SPLIT)
                    tot[i][j][c] = 0.0f;
            }

#pragma unroll
    for (int s = 0; s < ST - 1; s++) {
        if (s < n_st) load_stage(s, s);
        cp_async_commit();
    }
    for (int st = 0; st < n_st; st++) {
        cp_async_wait<ST - 2>();
        __syncthreads();
        const int nx = st + ST - 1;
        if (nx < n_st) load_stage(nx % ST, nx);
        cp_async_commit();
        const int slot = st % ST;
#pragma unroll
        for (int kk = 0; kk < KS; kk++) {
            const int kb = kb_lo + st * KS + kk;
            if (kb >= kb_hi) break;
            uint4 alo[MT], ahi[MT], b[NT];
#pragma unroll
            for (int i = 0; i < MT; i++) {
                const int r = wm * MT * 16 + i * 16 + g;
                alo[i] = *(const uint4 *)&ws[slot][kk][r][8 * t];
                ahi[i] = *(const uint4 *)&ws[slot][kk][r + 8][8 * t];
            }
#pragma unroll
            for (int j = 0; j < NT; j++) b[j] = *(const uint4 *)&xs[slot][kk][wn * NT * 8 + j * 8 + g][8 * t];
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < NT; j++) mma_block(acc[i][j], alo[i], ahi[i], b[j]);
            if ((kb + 1) % KB_SPLIT == 0 || kb + 1 == nkb) { /* split end: into the group result */
#pragma unroll
                for (int i = 0; i < MT; i++)
#pragma unroll
                    for (int j = 0; j < NT; j++)
#pragma unroll
                        for (int c = 0; c < 4; c++) {
                            grp[i][j][c] += acc[i][j][c];
                            acc[i][j][c] = 0.0f;
                        }
            }
            if ((kb + 1) % KB_GROUP == 0 || kb + 1 == nkb) { /* group end: into the total / workspace */
                float *wsp = SPLIT && !GM ? a.ws + ((size_t)(kb / KB_GROUP) * n_tiles + tile) * (BM * BN) : nullptr;
#pragma unroll
                for (int i = 0; i < MT; i++)
#pragma unroll
                    for (int j = 0; j < NT; j++)
#pragma unroll
                        for (int c = 0; c < 4; c++) {
                            if (GM) {
                                if (f_of(i, c) < sg.n && row_of(j, c) < M)
                                    a.groups[((size_t)(kb / KB_GROUP) * M + row_of(j, c)) * sg.n + f_of(i, c)] =
                                        grp[i][j][c];
                            } else if (SPLIT) {
                                if (f_of(i, c) < sg.n && row_of(j, c) < M) wsp[slot_of(i, j, c)] = grp[i][j][c];
                            } else if (TOT_SMEM) {
                                tot_s[slot_of(i, j, c)] += grp[i][j][c];
                            } else {
                                tot[i][j][c] += grp[i][j][c];
                            }
                            grp[i][j][c] = 0.0f;
                        }
            }
        }
    }
    cp_async_wait<0>();
    if (GM) return; /* group mode: the group results are the output */
    if (SPLIT) {
        if (!last_block_of_tile(a.cnt, tile)) return;
        /* tot = ((+0 + G0) + G1) + ...: all of the tile's groups, in order. */
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int c = 0; c < 4; c++) tot[i][j][c] = 0.0f;
        for (int gi = 0; gi < a.n_groups; gi++) {
            const float *p = a.ws + ((size_t)gi * n_tiles + tile) * (BM * BN);
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < NT; j++)
#pragma unroll
                    for (int c = 0; c < 4; c++)
                        if (f_of(i, c) < sg.n && row_of(j, c) < M) tot[i][j][c] += __ldcg(p + slot_of(i, j, c));
        }
    }
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int f = f_of(i, c), row = row_of(j, c);
                if (f < sg.n && row < M) {
                    float v = TOT_SMEM ? tot_s[slot_of(i, j, c)] : tot[i][j][c];
                    if (sg.bias) v += sg.bias[f];
                    store_out<TO>(sg.out, (size_t)row * sg.n + f, v);
                }
            }
}

/* ---- launch ------------------------------------------------------------------------ */

/* Tunables (environment, read once; none of them changes a bit of the
 * results, see docs/cuda.md). */
static struct {
    int ready;
    int split_blocks; /* MG_CUDA_MM_SPLIT_BLOCKS: split K when a matmul has fewer blocks (default: SM count; 0: never)
                       */
    int split_groups; /* MG_CUDA_MM_SPLIT_GROUPS: groups per block when K is split (0: tiled 1, skinny 2) */
    int tile64_max;   /* MG_CUDA_MM_TILE64_MAX: tiled kernel with 64-row weight tiles up to this M (64) */
} tun;

static int env_int(const char *name, int def) {
    const char *s = getenv(name);
    return s && *s ? atoi(s) : def;
}

static void tun_init(void) {
    if (tun.ready) return;
    tun.split_blocks = env_int("MG_CUDA_MM_SPLIT_BLOCKS", mg_cuda.n_sm);
    tun.split_groups = env_int("MG_CUDA_MM_SPLIT_GROUPS", 0);
    tun.tile64_max = env_int("MG_CUDA_MM_TILE64_MAX", 64);
    tun.ready = 1;
}

/* Fills the segment table with tiles of `tile` weight rows (no K split);
 * returns the total tile count. */
static int build_args(mg_tc_args *a, const mg_cuda_mm_part *parts, int n_parts, const void *x, int M, int K,
                      int tile) {
    int tiles = 0;
    a->n_seg = n_parts;
    a->M = M;
    a->K = K;
    a->x = (const bf16 *)x;
    a->n_groups = n_groups_of(K);
    a->gpb = a->n_groups;
    a->ws = NULL;
    a->cnt = NULL;
    a->groups = NULL;
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

/* Zeroed per-tile counters, allocated on first use; every launch leaves
 * them zero again (the last block of a tile resets its counter). */
static unsigned *tile_counters_dev[MG_CUDA_MAX_DEV]; /* per device */

/* Groups per block along grid.z for a matrix of `tiles` blocks (grid.x *
 * grid.y): all of them (no split) unless the tiles alone would leave the
 * GPU short of blocks. With a split, sets up the workspace for tiles of
 * `tile_elems` outputs and the counters, and returns the number of K
 * chunks (grid.z). */
static mg_status plan_split(mg_tc_args *a, int tiles, int tile_elems, int def_gpb, unsigned *chunks) {
    *chunks = 1;
    const int ng = a->n_groups;
    if (ng <= 1 || tiles >= tun.split_blocks || tiles > MG_TC_MAX_TILES) return MG_OK;
    int gpb = tun.split_groups > 0 ? tun.split_groups : def_gpb;
    if (gpb >= ng) return MG_OK;
    unsigned *&tile_counters = tile_counters_dev[mg_cuda_dev];
    if (!tile_counters) {
        void *p;
        MG_CUDA_TRY(cudaMalloc(&p, MG_TC_MAX_TILES * sizeof(unsigned)));
        cudaError_t e = cudaMemsetAsync(p, 0, MG_TC_MAX_TILES * sizeof(unsigned), mg_cuda.stream);
        if (e != cudaSuccess) {
            cudaFree(p);
            return mg_cuda_fail(e, "cudaMemsetAsync", __FILE__, __LINE__);
        }
        tile_counters = (unsigned *)p;
    }
    if (a->groups) { /* group mode: blocks write their groups directly; nothing to fold */
        a->gpb = gpb;
        *chunks = (unsigned)((ng + gpb - 1) / gpb);
        return MG_OK;
    }
    void *ws;
    MG_TRY(mg_cuda_scratch(MG_SCRATCH_MM_SPLIT, (size_t)ng * tiles * tile_elems * sizeof(float), &ws));
    a->ws = (float *)ws;
    a->cnt = tile_counters;
    a->gpb = gpb;
    *chunks = (unsigned)((ng + gpb - 1) / gpb);
    return MG_OK;
}

/* Group mode (a.groups set, FP32 outputs only) is a separate instance, so
 * the kernels of the ordinary matmul carry none of its code. */
template <int NT, typename TO> static void skinny_nt(const mg_tc_args &a, dim3 grid) {
    if constexpr (std::is_same<TO, float>::value)
        if (a.groups) {
            mm_skinny<NT, float, true, true><<<grid, SK_WARPS * 32, 0, mg_cuda.stream>>>(a);
            return;
        }
    if (mg_cuda.skinny_v2)
        mm_skinny<NT, TO, true, false><<<grid, SK_WARPS * 32, 0, mg_cuda.stream>>>(a);
    else
        mm_skinny<NT, TO, false, false><<<grid, SK_WARPS * 32, 0, mg_cuda.stream>>>(a);
}

template <typename TO> static mg_status launch_skinny(mg_tc_args *a, const mg_cuda_mm_part *parts, int n_parts,
                                                      const void *x, int M, int K, float *groups) {
    const int tiles = build_args(a, parts, n_parts, x, M, K, 16);
    a->groups = groups;
    const int nt = M <= 8 ? 1 : M <= 16 ? 2 : 4;
    dim3 grid(mg_div_up(M, 8 * nt), (unsigned)tiles);
    /* A block runs its splits SK_WARPS at a time: 2 groups fill its warps. */
    MG_TRY(plan_split(a, (int)(grid.x * grid.y), nt * 4 * 32, SK_WARPS / MG_TC_GROUP, &grid.z));
    if (nt == 1)
        skinny_nt<1, TO>(*a, grid);
    else if (nt == 2)
        skinny_nt<2, TO>(*a, grid);
    else
        skinny_nt<4, TO>(*a, grid);
    MG_CUDA_LAUNCHED("mm_skinny");
    return MG_OK;
}

/* One tiled configuration; the dynamic shared memory limit is raised once
 * per kernel. */
template <int BM, int BN, int WM, int WN, int KS, int ST, bool SPLIT, typename TO, bool GM = false>
static mg_status tiled_cfg(const mg_tc_args &a, dim3 grid) {
    constexpr size_t smem = tl_smem_bytes<BM, BN, WM, WN, KS, ST, SPLIT>();
    static int attr_done_dev[MG_CUDA_MAX_DEV]; /* per device: attributes are */
    int &attr_done = attr_done_dev[mg_cuda_dev];
    if (!attr_done) {
        MG_CUDA_TRY(cudaFuncSetAttribute(mm_tiled<BM, BN, WM, WN, KS, ST, SPLIT, TO, GM>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        MG_CUDA_TRY(cudaFuncSetAttribute(mm_tiled<BM, BN, WM, WN, KS, ST, SPLIT, TO, GM>,
                                         cudaFuncAttributePreferredSharedMemoryCarveout,
                                         (int)cudaSharedmemCarveoutMaxShared));
        attr_done = 1;
    }
    mm_tiled<BM, BN, WM, WN, KS, ST, SPLIT, TO, GM><<<grid, WM * WN * 32, smem, mg_cuda.stream>>>(a);
    MG_CUDA_LAUNCHED("mm_tiled");
    return MG_OK;
}

/* Tiled configurations, 64 activation rows per block:
 * - "64" (M <= MG_CUDA_MM_TILE64_MAX, 64): 64 weight rows (2 x 4 warps of
 *   32 x 16), 64 columns per stage, 4 stages, 3 blocks per SM: twice the
 *   blocks of "128" and more bytes in flight, for memory-bound decode;
 * - "128" (larger M: prefill): 128 weight rows (4 x 2 warps of 32 x 32);
 *   unsplit it keeps the pipeline of the first version (32 columns per
 *   stage, 4 stages) with the total in shared memory; split, 64 columns
 *   per stage.
 * K is split over blocks (one group per block) when the tiles are fewer
 * than MG_CUDA_MM_SPLIT_BLOCKS. */
template <typename TO> static mg_status launch_tiled(mg_tc_args *a, const mg_cuda_mm_part *parts, int n_parts,
                                                     const void *x, int M, int K, float *groups) {
    const int big = M > tun.tile64_max;
    dim3 grid(mg_div_up(M, 64), (unsigned)build_args(a, parts, n_parts, x, M, K, big ? 128 : 64));
    a->groups = groups;
    MG_TRY(plan_split(a, (int)(grid.x * grid.y), (big ? 128 : 64) * 64, 1, &grid.z));
    if constexpr (std::is_same<TO, float>::value)
        if (groups) /* SPLIT only selects the per-stage width here: group mode never folds */
            return big ? tiled_cfg<128, 64, 4, 2, 2, 4, true, float, true>(*a, grid)
                       : tiled_cfg<64, 64, 2, 4, 2, 4, true, float, true>(*a, grid);
    if (big)
        return grid.z > 1 ? tiled_cfg<128, 64, 4, 2, 2, 4, true, TO>(*a, grid)
                          : tiled_cfg<128, 64, 4, 2, 1, 4, false, TO>(*a, grid);
    return grid.z > 1 ? tiled_cfg<64, 64, 2, 4, 2, 4, true, TO>(*a, grid)
                      : tiled_cfg<64, 64, 2, 4, 2, 4, false, TO>(*a, grid);
}

mg_status mg_tc_matmul(const mg_cuda_mm_part *parts, int n_parts, const void *x, int M, int K, int out_f32) {
    if (n_parts < 1 || n_parts > MG_TC_MAX_SEGS || K % 32 != 0)
        return mg_error_set(MG_ERR_ARG, "tensor-core matmul: %d parts, K = %d", n_parts, K);
    if (M == 0) return MG_OK;
    tun_init();
    mg_tc_args a;
    const int skinny = M <= mg_cuda.skinny_max_rows;
    if (out_f32)
        return skinny ? launch_skinny<float>(&a, parts, n_parts, x, M, K, NULL)
                      : launch_tiled<float>(&a, parts, n_parts, x, M, K, NULL);
    return skinny ? launch_skinny<bf16>(&a, parts, n_parts, x, M, K, NULL)
                  : launch_tiled<bf16>(&a, parts, n_parts, x, M, K, NULL);
}

mg_status mg_tc_matmul_groups(float *groups, const bf16 *w, int N, const void *x, int M, int K) {
    if (K % 32 != 0) return mg_error_set(MG_ERR_ARG, "tensor-core matmul groups: K = %d", K);
    if (M == 0) return MG_OK;
    tun_init();
    mg_tc_args a;
    const mg_cuda_mm_part part = {w, NULL, NULL, N};
    /* The output type only selects a store that group mode never reaches. */
    return M <= mg_cuda.skinny_max_rows ? launch_skinny<float>(&a, &part, 1, x, M, K, groups)
                                        : launch_tiled<float>(&a, &part, 1, x, M, K, groups);
}
