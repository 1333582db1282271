/* CUDA causal GQA attention over the paged KV cache, for prefill and
 * decode rows alike (one code path, so a query row computes the same bits
 * whether it comes from a prefill chunk or a decode step).
 *
 * Structure (the CPU reference's, src/backend/cpu/attention.c): a row's KV
 * range [0, pos] is cut into chunks; each chunk gives a softmax-normalised
 * partial (max, exp-sum, output) and the partials are merged in chunk order.
 * - INVARIANT: chunks of MG_ATTN_CHUNK (256) positions: the reduction order
 *   depends only on the KV length.
 * - FAST: the chunk length is chosen per call (rows_prepare), finer when the
 *   batch is too small to fill the GPU (split-KV as flash-decoding does), a
 *   split that depends on the batch.
 *
 * attn_partial_kernel: one block per (query group, chunk) item and KV head.
 * A query group is up to MG_ATTN_QG consecutive rows of one sequence; the
 * block holds the q vectors of all its rows and of all query heads of the
 * KV head (GQA), so each K/V tile is read once for all of them. Per vector:
 *   scores: lane l of a warp takes key l of each 32-key tile, a sequential
 *     FMA chain over head_dim, times 1/sqrt(head_dim);
 *   softmax: chunk max; exp(s - max); per-lane sums in key order, then a
 *     fixed xor tree; a_t = exp_t / sum;
 *   output: per dim, a sequential FMA chain over the chunk's keys.
 * None of it depends on which other vectors share the block, so the result
 * of a row is the same in any batch (for a fixed chunk length).
 * attn_merge_kernel: one warp per (row, head): the partials weighted by
 * s_c exp(m_c - max), summed in chunk order (the CPU merges left to right
 * with a running max: the same value up to rounding). */
#include <limits.h>
#include <math.h>

#include <type_traits>

#include "cuda_common.cuh"

#define ATTN_WARPS 8
#define ATTN_TILE 32 /* keys per warp in the score loop: one per lane */
/* Row stride of the scores (floats): the chunk plus 16 bytes, so that the
 * rows of a tensor-core A fragment (ldmatrix, 8 rows of 16 bytes) and the
 * score stores of 4 vectors fall on different banks. A tensor-core item's
 * weights are stored as BF16 hi/lo in a vector's row: hi at BF16 index 0,
 * lo at SC_LO (16-byte aligned), MG_ATTN_CHUNK each. */
#define SC_LD (MG_ATTN_CHUNK + 4)
#define SC_LO (MG_ATTN_CHUNK + 8)

typedef struct {
    int n_heads, n_kv_heads, hd, group; /* group = n_heads / n_kv_heads */
    int layer, block_size, n_blocks;
    int bs_shift;  /* log2(block_size) when a power of two, else -1 */
    int max_vec;   /* rows of the pass's largest query group x group */
    int sub;       /* keys per K/V tile in shared memory (a multiple of ATTN_TILE) */
    int pages_cap; /* entries of an item's page table: the most pages a chunk spans */
    float scale;
} attn_params;

/* Row stride of a K/V tile in shared memory, in elements: hd plus 16 bytes,
 * so that the 16-byte reads of 8 consecutive lanes (8 keys) hit distinct
 * banks. */
template <typename KV> static __host__ __device__ __forceinline__ int tile_ld(int hd) {
    return hd + 16 / (int)sizeof(KV);
}

/* Floats of shared memory an item's page table of `cap` entries takes,
 * rounded up to 16 bytes (the tiles after it are 16-byte aligned). */
static __host__ __device__ __forceinline__ size_t pages_floats(int cap) { return ((size_t)cap * 2 + 3) & ~(size_t)3; }

static __device__ __forceinline__ float2 load_pair(const bf16 *p) {
    return __bfloat1622float2(*(const __nv_bfloat162 *)p);
}
static __device__ __forceinline__ float2 load_pair(const float *p) { return *(const float2 *)p; }

static __device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}

/* Block-table page of a position, and its slot in the page. */
static __device__ __forceinline__ int page_of(int key, const attn_params &p) {
    return p.bs_shift >= 0 ? key >> p.bs_shift : key / p.block_size;
}
static __device__ __forceinline__ int slot_of(int key, const attn_params &p) {
    return p.bs_shift >= 0 ? key & (p.block_size - 1) : key % p.block_size;
}

/* An item's page table: pages[i] = element offset, in the K (or V) cache,
 * of KV head kvh at slot 0 of the page page0 + i of the sequence (page0 =
 * page_of(t0)), for the pages of the chunk [t0, tend); then a barrier. The
 * tile loads of the item's K and V read it instead of the block table (one
 * lookup per page instead of one per key, thread and tile). */
static __device__ __forceinline__ void stage_pages(long long *pages, const int32_t *btr, int t0, int tend, int kvh,
                                                   const attn_params &p) {
    const int page0 = page_of(t0, p), n_pages = page_of(tend - 1, p) - page0 + 1;
    const size_t kvd = (size_t)p.n_kv_heads * p.hd, layer_row = (size_t)p.layer * p.n_blocks;
    for (int i = threadIdx.x; i < n_pages; i += blockDim.x)
        pages[i] = (long long)(((layer_row + btr[page0 + i]) * p.block_size) * kvd + (size_t)kvh * p.hd);
    __syncthreads();
}

/* Starts the copy of keys [tb, tb + nt) of the item's KV head into tile
 * (nt, ld) (raw cache values, no conversion); cp.async, committed as one
 * group. pages, page0: the item's page table (stage_pages). */
template <typename KV>
static __device__ __forceinline__ void tile_load_async(KV *tile, const KV *cache, const long long *pages, int page0,
                                                       int tb, int nt, const attn_params &p) {
    constexpr int E = 16 / sizeof(KV);
    const int hd = p.hd, ld = tile_ld<KV>(hd), per_key = hd / E;
    const size_t kvd = (size_t)p.n_kv_heads * hd;
    if (blockDim.x % per_key == 0) {
        /* A thread keeps its 16 bytes of the row and steps over keys. */
        const int d = (threadIdx.x % per_key) * E, step = blockDim.x / per_key;
#pragma unroll 4
        for (int j = threadIdx.x / per_key; j < nt; j += step) {
            const int key = tb + j;
            cp_async16(tile + j * ld + d, cache + pages[page_of(key, p) - page0] + (size_t)slot_of(key, p) * kvd + d);
        }
    } else {
        for (int idx = threadIdx.x; idx < nt * per_key; idx += blockDim.x) {
            const int j = idx / per_key, d = (idx % per_key) * E, key = tb + j;
            cp_async16(tile + j * ld + d, cache + pages[page_of(key, p) - page0] + (size_t)slot_of(key, p) * kvd + d);
        }
    }
    asm volatile("cp.async.commit_group;\n" ::);
}
static __device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

/* ---- pieces shared by the CUDA-core and the tensor-core item -------------------
 *
 * An item's vectors: v = (row r0 + v / group, query head kvh * group +
 * v % group), nv of them. */

/* Where vector v's partial of this chunk goes: index into part_ms (and, times
 * hd, into part_out). Below INT_MAX (mg_cuda_attention checks the capacity). */
static __device__ __forceinline__ int partial_index(const attn_params &p, const int32_t *part_base, int r0, int v,
                                                    int chunk, int kvh) {
    const int row = r0 + v / p.group, qh = kvh * p.group + v % p.group;
    return (part_base[row] + chunk) * p.n_heads + qh;
}

/* vlen[v] = keys of the chunk [t0, t0 + cl) vector v attends to (<= 0: none);
 * vpart[v] = its partial_index; qs (nv, qld) = the vectors' q, stored as QS
 * (BF16 to BF16: 16-byte copies). */
template <typename QS, typename T>
static __device__ __forceinline__ void stage_vectors(QS *qs, int qld, int *vlen, int *vpart, const T *q,
                                                     const attn_params &p, const int32_t *positions,
                                                     const int32_t *part_base, int r0, int nv, int t0, int cl,
                                                     int chunk, int kvh) {
    const int hd = p.hd;
    for (int v = threadIdx.x; v < nv; v += blockDim.x) {
        const int len = positions[r0 + v / p.group] + 1;
        vlen[v] = min(t0 + cl, len) - t0;
        vpart[v] = partial_index(p, part_base, r0, v, chunk, kvh);
    }
    if constexpr (std::is_same<QS, bf16>::value && std::is_same<T, bf16>::value) {
        const int per_vec = hd / 8; /* 16-byte pieces of a vector (hd % 8 == 0; rows 16-byte aligned) */
        for (int idx = threadIdx.x; idx < nv * per_vec; idx += blockDim.x) {
            const int v = idx / per_vec, d = (idx % per_vec) * 8;
            const int row = r0 + v / p.group, qh = kvh * p.group + v % p.group;
            *(uint4 *)(qs + (size_t)v * qld + d) = *(const uint4 *)(q + ((size_t)row * p.n_heads + qh) * hd + d);
        }
    } else {
        for (int idx = threadIdx.x; idx < nv * hd; idx += blockDim.x) {
            const int v = idx / hd, d = idx % hd;
            const int row = r0 + v / p.group, qh = kvh * p.group + v % p.group;
            qs[(size_t)v * qld + d] = from_f<QS>(to_f(q[((size_t)row * p.n_heads + qh) * hd + d]));
        }
    }
}

/* Softmax of each vector's scores over its vlen keys, in place in sc (nv,
 * SC_LD): chunk max; exp(s - max); per-lane sums in key order, a fixed xor
 * tree (lane 0's association for every lane); a_t = exp_t / sum. Weights
 * from vlen up to `span` are 0 (the tensor-core item's 16-key steps).
 * split: the weights are stored as BF16 hi = rn(a_t) and lo = rn(a_t - hi)
 * (see SC_LO; the tensor-core item's A operands), else as floats. One warp
 * per vector. */
static __device__ __forceinline__ void chunk_softmax(float *sc, float *vmax, float *vsum, const int *vlen, int nv,
                                                     int span, bool split) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int v = warp; v < nv; v += ATTN_WARPS) {
        const int n = vlen[v];
        float *s = sc + (size_t)v * SC_LD;
        float m = -INFINITY, sum = 0.0f;
        if (n > 0) {
            for (int t = lane; t < n; t += 32) m = fmaxf(m, s[t]);
            for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
            for (int t = lane; t < n; t += 32) {
                const float e = expf(s[t] - m);
                s[t] = e;
                sum += e;
            }
            for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            sum = __shfl_sync(0xffffffffu, sum, 0);
        }
        float a[MG_ATTN_CHUNK / 32]; /* lane's weights t = lane + 32 i, read before any store (split overlays) */
#pragma unroll
        for (int i = 0; i < MG_ATTN_CHUNK / 32; i++) {
            const int t = lane + 32 * i;
            a[i] = t < n ? s[t] / sum : 0.0f;
        }
        __syncwarp();
        bf16 *hi = (bf16 *)s, *lo = hi + SC_LO;
#pragma unroll
        for (int i = 0; i < MG_ATTN_CHUNK / 32; i++) {
            const int t = lane + 32 * i;
            if (t >= max(n, span)) break;
            if (!split) {
                s[t] = a[i];
            } else {
                const bf16 h = __float2bfloat16_rn(a[i]);
                hi[t] = h;
                lo[t] = __float2bfloat16_rn(a[i] - __bfloat162float(h));
            }
        }
        if (lane == 0) {
            vmax[v] = m;
            vsum[v] = sum;
        }
    }
}

/* (max, sum) of each vector that has keys in this chunk. */
static __device__ __forceinline__ void store_ms(float2 *part_ms, const float *vmax, const float *vsum,
                                                const int *vlen, const int *vpart, int nv) {
    for (int v = threadIdx.x; v < nv; v += blockDim.x)
        if (vlen[v] > 0) part_ms[vpart[v]] = make_float2(vmax[v], vsum[v]);
}

/* An item's keys: rows [r0, r1) of one sequence, its chunk [t0, tend) of
 * cl keys (tend: the longest row's end), and the sequence's block table. */
typedef struct {
    int r0, r1, cl, chunk, t0, tend;
    const int32_t *btr;
} item_desc;

static __device__ __forceinline__ item_desc describe_item(int item, const int32_t *items, const int32_t *groups,
                                                          const int32_t *positions, const int32_t *bt_off,
                                                          const int32_t *bt) {
    item_desc d;
    const int gi = items[2 * item];
    d.chunk = items[2 * item + 1];
    d.r0 = groups[3 * gi], d.r1 = groups[3 * gi + 1], d.cl = groups[3 * gi + 2];
    d.t0 = d.chunk * d.cl;
    int maxlen = 0;
    for (int r = d.r0; r < d.r1; r++) maxlen = max(maxlen, positions[r] + 1);
    d.tend = min(d.t0 + d.cl, maxlen);
    d.btr = bt + bt_off[d.r0];
    return d;
}

/* One (query group, chunk) item for KV head blockIdx.y; MAXV >= p.max_vec
 * bounds the vectors (rows x query heads of the group) a block holds. */
template <typename T, typename KV, int MAXV>
static __device__ __forceinline__ void attn_item(float *smem, const item_desc &d, const T *q, const KV *kc,
                                                 const KV *vc, const attn_params &p, const int32_t *positions,
                                                 const int32_t *part_base, float2 *part_ms, float *part_out) {
    constexpr int E = 16 / sizeof(KV);
    const int hd = p.hd, ld = tile_ld<KV>(hd), mv = p.max_vec;
    const int kvh = blockIdx.y, chunk = d.chunk, r0 = d.r0, cl = d.cl, t0 = d.t0, tend = d.tend;
    const int nv = (d.r1 - r0) * p.group;
    const int32_t *btr = d.btr;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    long long *pages = (long long *)smem;                     /* (p.pages_cap): stage_pages */
    KV *tile = (KV *)(smem + pages_floats(p.pages_cap));      /* (p.sub, ld): K, then V keys */
    float *qs = (float *)(tile + (size_t)p.sub * ld);         /* (mv, hd): q, then the output accumulators */
    float *sc = qs + (size_t)mv * hd;                         /* (mv, SC_LD): scores, then weights a_t */
    float *vsum = sc + (size_t)mv * SC_LD;                    /* (mv) */
    float *vmax = vsum + mv;                                  /* (mv) */
    int *vlen = (int *)(vmax + mv);                           /* (mv) keys of the chunk the vector attends to */
    int *vpart = vlen + mv;                                   /* (mv) partial_index of the vector */
    const int page0 = page_of(t0, p);

    /* The first K tile is in flight while q is staged. */
    stage_pages(pages, btr, t0, tend, kvh, p);
    tile_load_async(tile, kc, pages, page0, t0, min(p.sub, tend - t0), p);
    stage_vectors(qs, hd, vlen, vpart, q, p, positions, part_base, r0, nv, t0, cl, chunk, kvh);

    /* Scores: lane l of a warp takes one key, a sequential FMA chain over
     * head_dim for each vector (the tile row is read once for all). */
    for (int tb = t0; tb < tend; tb += p.sub) {
        const int nt = min(p.sub, tend - tb);
        if (tb != t0) tile_load_async(tile, kc, pages, page0, tb, nt, p);
        cp_async_wait_all();
        __syncthreads();
        for (int kt = warp * ATTN_TILE; kt < nt; kt += ATTN_WARPS * ATTN_TILE) {
            const int j = kt + lane, t = tb - t0 + j;
            if (j < nt) {
                float s[MAXV];
#pragma unroll
                for (int v = 0; v < MAXV; v++) s[v] = 0.0f;
                const KV *krow = tile + j * ld;
                for (int d0 = 0; d0 < hd; d0 += E) {
                    float k[E];
                    vec16<KV>::load(krow + d0, k);
#pragma unroll
                    for (int v = 0; v < MAXV; v++)
                        if (v < nv) {
                            const float *qv = qs + (size_t)v * hd + d0;
#pragma unroll
                            for (int e = 0; e < E; e++) s[v] = fmaf(qv[e], k[e], s[v]);
                        }
                }
#pragma unroll
                for (int v = 0; v < MAXV; v++)
                    if (v < nv && t < vlen[v]) sc[(size_t)v * SC_LD + t] = s[v] * p.scale;
            }
        }
        __syncthreads();
    }
    /* The first V tile loads while the softmax runs. */
    tile_load_async(tile, vc, pages, page0, t0, min(p.sub, tend - t0), p);

    chunk_softmax(sc, vmax, vsum, vlen, nv, 0, false);
    for (int idx = threadIdx.x; idx < nv * hd; idx += blockDim.x) qs[idx] = 0.0f;

    /* Output: sum_t a_t v_t, a sequential FMA chain over the keys in order
     * for each (vector, dim); a thread takes two adjacent dims. */
    const int half = hd / 2;
    for (int tb = t0; tb < tend; tb += p.sub) {
        const int nt = min(p.sub, tend - tb);
        if (tb != t0) tile_load_async(tile, vc, pages, page0, tb, nt, p);
        cp_async_wait_all();
        __syncthreads();
        for (int task = threadIdx.x; task < nv * half; task += blockDim.x) {
            const int v = task / half, d = 2 * (task % half);
            const int nn = min(nt, vlen[v] - (tb - t0));
            if (nn <= 0) continue;
            const float *a = sc + (size_t)v * SC_LD + (tb - t0);
            float *acc = qs + (size_t)v * hd + d;
            float a0 = acc[0], a1 = acc[1];
            for (int j = 0; j < nn; j++) {
                const float2 vv = load_pair(tile + j * ld + d);
                a0 = fmaf(a[j], vv.x, a0);
                a1 = fmaf(a[j], vv.y, a1);
            }
            acc[0] = a0;
            acc[1] = a1;
        }
        __syncthreads();
    }

    /* Partials of the rows that have this chunk. */
    for (int idx = threadIdx.x; idx < nv * hd; idx += blockDim.x) {
        const int v = idx / hd, d = idx % hd;
        if (vlen[v] > 0) part_out[(size_t)vpart[v] * hd + d] = qs[idx];
    }
    store_ms(part_ms, vmax, vsum, vlen, vpart, nv);
}

/* ---- tensor-core item (BF16 q and cache, head_dim % 32 == 0) -------------------
 *
 * The same item, chunks, softmax and partials as attn_item; the two
 * products run on mma.sync.m16n8k16 (FP32 accumulation), 16 vectors to an
 * m-tile (vectors past nv are zero rows, their results dropped):
 *   scores: for key n and vector v, an accumulator from +0 takes two mma per
 *     32-dim block in dim order (the k slots of matmul_tc.cuh's order: thread
 *     t supplies dims 8t..8t+7 of a block to both operands), times 1/sqrt(hd);
 *   output: each softmax weight a_t split into two BF16 values, hi =
 *     bf16(a_t) and lo = bf16(a_t - hi) (16 significant bits: flash
 *     attention's single BF16 rounding of the weights misses the CPU
 *     reference by up to 2^-9 relative); per (vector, dim) an accumulator
 *     from +0 takes, per 16 keys in key order across the chunk's tiles, the
 *     mma of the hi weights, then the mma of the lo weights.
 * An mma's row depends only on its own row of A, so a vector's result never
 * depends on the other vectors of the block: the batch invariance of
 * attn_item, with another (fixed) order inside each 16/32-wide step. */

/* Loads the B fragments of 16 keys x 8 dims of a row-major (keys, ld) tile:
 * lanes 0-15 give the rows. */
static __device__ __forceinline__ void ldmatrix_x2_trans(uint32_t &b0, uint32_t &b1, const bf16 *row) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(a));
}

/* Loads the A fragments of a row-major m16 x k16 BF16 tile: lane L gives
 * the address of 16 bytes (see the caller for which). */
static __device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16 *p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

template <int MT>
static __device__ __forceinline__ void attn_item_tc(float *smem, const item_desc &d, const bf16 *q, const bf16 *kc,
                                                    const bf16 *vc, const attn_params &p, const int32_t *positions,
                                                    const int32_t *part_base, float2 *part_ms, float *part_out) {
    constexpr int MAX_DT = 4; /* dim tiles of 8 per warp: head_dim <= 8 x 8 x MAX_DT = 256 */
    const int hd = p.hd, ld = tile_ld<bf16>(hd), qld = hd + 8, mv = p.max_vec;
    const int kvh = blockIdx.y, chunk = d.chunk, r0 = d.r0, cl = d.cl, t0 = d.t0, tend = d.tend;
    const int nv = (d.r1 - r0) * p.group;
    const int32_t *btr = d.btr;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    long long *pages = (long long *)smem;                     /* (p.pages_cap): stage_pages */
    bf16 *tile = (bf16 *)(smem + pages_floats(p.pages_cap));  /* (p.sub, ld): K, then V keys */
    bf16 *qs = tile + (size_t)p.sub * ld;                     /* (mv, qld): q */
    float *sc = (float *)(qs + (size_t)mv * qld);             /* (mv, SC_LD): scores, then a_t as hi/lo */
    float *vsum = sc + (size_t)mv * SC_LD;                    /* (mv) */
    float *vmax = vsum + mv;                                  /* (mv) */
    int *vlen = (int *)(vmax + mv);                           /* (mv) */
    int *vpart = vlen + mv;                                   /* (mv) */
    const int page0 = page_of(t0, p);

    const int span16 = (tend - t0 + 15) & ~15; /* the keys the output mma steps cover */
    stage_pages(pages, btr, t0, tend, kvh, p);
    tile_load_async(tile, kc, pages, page0, t0, min(p.sub, tend - t0), p);
    stage_vectors(qs, qld, vlen, vpart, q, p, positions, part_base, r0, nv, t0, cl, chunk, kvh);

    /* Scores, one 8-key n-tile per warp at a time. */
    for (int tb = t0; tb < tend; tb += p.sub) {
        const int nt = min(p.sub, tend - tb);
        if (tb != t0) tile_load_async(tile, kc, pages, page0, tb, nt, p);
        cp_async_wait_all();
        __syncthreads();
        for (int n0 = warp * 8; n0 < nt; n0 += ATTN_WARPS * 8) {
            float acc[MT][4];
#pragma unroll
            for (int m = 0; m < MT; m++) acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0.0f;
            const bf16 *krow = tile + (size_t)(n0 + g) * ld + 8 * t4;
            for (int kb = 0; kb < hd; kb += 32) {
                const uint4 b = *(const uint4 *)(krow + kb);
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    const int va = m * 16 + g, vb = va + 8;
                    const uint4 zero = make_uint4(0, 0, 0, 0);
                    const uint4 alo = va < nv ? *(const uint4 *)(qs + (size_t)va * qld + kb + 8 * t4) : zero;
                    const uint4 ahi = vb < nv ? *(const uint4 *)(qs + (size_t)vb * qld + kb + 8 * t4) : zero;
                    mma_block(acc[m], alo, ahi, b);
                }
            }
#pragma unroll
            for (int m = 0; m < MT; m++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int v = m * 16 + g + (e >= 2 ? 8 : 0), j = n0 + 2 * t4 + (e & 1), tt = tb - t0 + j;
                    if (v < nv && j < nt && tt < vlen[v]) sc[(size_t)v * SC_LD + tt] = acc[m][e] * p.scale;
                }
        }
        __syncthreads();
    }
    tile_load_async(tile, vc, pages, page0, t0, min(p.sub, tend - t0), p);

    /* Softmax over the chunk; weights past a vector's keys (up to the
     * 16-key step) are zero. */
    chunk_softmax(sc, vmax, vsum, vlen, nv, span16, true);

    /* Output: warp w takes the dim tiles w, w + 8, ... The A fragments
     * (m16 x k16 of the weights, hi and lo) come by ldmatrix: lane L gives
     * the address of row (L & 7) + 8 ((L >> 3) & 1), keys + 8 (L >> 4), of
     * its m tile; rows past nv repeat row nv - 1 (their outputs are never
     * stored, and an mma row depends on its A row alone). */
    const bf16 *a_row[MT];
#pragma unroll
    for (int m = 0; m < MT; m++)
        a_row[m] = (const bf16 *)(sc + (size_t)min(m * 16 + (lane & 7) + 8 * ((lane >> 3) & 1), nv - 1) * SC_LD);
    const int a_kofs = 8 * (lane >> 4);
    float acc[MT][MAX_DT][4];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int i = 0; i < MAX_DT; i++) acc[m][i][0] = acc[m][i][1] = acc[m][i][2] = acc[m][i][3] = 0.0f;
    for (int tb = t0; tb < tend; tb += p.sub) {
        const int nt = min(p.sub, tend - tb), nt16 = (nt + 15) & ~15;
        if (tb != t0) tile_load_async(tile, vc, pages, page0, tb, nt, p);
        cp_async_wait_all();
        /* Rows past the loaded keys take weight 0; make them finite (0). */
        for (int idx = threadIdx.x; idx < (nt16 - nt) * hd; idx += blockDim.x)
            tile[(size_t)(nt + idx / hd) * ld + idx % hd] = __float2bfloat16_rn(0.0f);
        __syncthreads();
        for (int k0 = 0; k0 < nt16; k0 += 16) {
            const int tt = tb - t0 + k0; /* the step's first key in the chunk */
            uint32_t a_hi[MT][4], a_lo[MT][4];
#pragma unroll
            for (int m = 0; m < MT; m++) {
                ldmatrix_x4(a_hi[m], a_row[m] + tt + a_kofs);
                ldmatrix_x4(a_lo[m], a_row[m] + SC_LO + tt + a_kofs);
            }
#pragma unroll
            for (int i = 0; i < MAX_DT; i++) {
                const int d0 = (warp + i * ATTN_WARPS) * 8;
                if (d0 >= hd) break;
                uint32_t b0, b1;
                ldmatrix_x2_trans(b0, b1, tile + (size_t)(k0 + (lane & 15)) * ld + d0);
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    mma16816(acc[m][i], a_hi[m][0], a_hi[m][1], a_hi[m][2], a_hi[m][3], b0, b1);
                    mma16816(acc[m][i], a_lo[m][0], a_lo[m][1], a_lo[m][2], a_lo[m][3], b0, b1);
                }
            }
        }
        __syncthreads();
    }

    /* Partials of the rows that have this chunk. */
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int i = 0; i < MAX_DT; i++) {
            const int d0 = (warp + i * ATTN_WARPS) * 8;
            if (d0 >= hd) break;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int v = m * 16 + g + (e >= 2 ? 8 : 0), d = d0 + 2 * t4 + (e & 1);
                if (v < nv && vlen[v] > 0)
                    part_out[(size_t)vpart[v] * hd + d] = acc[m][i][e];
            }
        }
    store_ms(part_ms, vmax, vsum, vlen, vpart, nv);
}

/* Blocks (x: a fixed count, y: KV heads) loop over the items, whose count
 * is read on the device: the launch depends on the rows layout only, so a
 * CUDA graph of a decode step stays valid as the contexts grow. */
template <typename T, typename KV, int MAXV, bool TC>
__global__ void __launch_bounds__(ATTN_WARPS * 32)
    attn_partial_kernel(const T *q, const KV *kc, const KV *vc, attn_params p, const int32_t *positions,
                        const int32_t *bt_off, const int32_t *bt, const int32_t *groups, const int32_t *items,
                        const int32_t *n_items, const int32_t *part_base, float2 *part_ms, float *part_out) {
    extern __shared__ __align__(16) float smem[];
    const int count = *n_items;
    for (int item = blockIdx.x; item < count; item += gridDim.x) {
        const item_desc d = describe_item(item, items, groups, positions, bt_off, bt);
        if constexpr (TC)
            attn_item_tc<(MAXV + 15) / 16>(smem, d, q, kc, vc, p, positions, part_base, part_ms, part_out);
        else
            attn_item<T, KV, MAXV>(smem, d, q, kc, vc, p, positions, part_base, part_ms, part_out);
        __syncthreads(); /* shared memory is reused by the next item */
    }
}

/* One warp per (row, head). A row of one chunk copies its partial. Else,
 * with M the largest chunk max (exact in any order) and per chunk c the
 * weight w_c = s_c exp(m_c - M) (computed alike by every lane):
 *   out = (sum_c w_c out_c) / (sum_c w_c), both sums in chunk order;
 * lane l takes dims l, l + 32, ... (MERGE_DIMS at once, so that their chunk
 * loads are in flight together; the weights do not depend on the dim, so
 * no chain waits on an exp). The order depends on the row's chunks only. */
#define MERGE_DIMS 4
template <typename T>
__global__ void attn_merge_kernel(T *out, const float2 *part_ms, const float *part_out, const int32_t *n_chunks,
                                  const int32_t *part_base, int n_rows, int n_heads, int hd) {
    const int gw = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (gw >= n_rows * n_heads) return;
    const int row = gw / n_heads, h = gw % n_heads;
    const int nc = n_chunks[row];
    const size_t base = (size_t)part_base[row];
    const size_t stride = (size_t)n_heads * hd; /* floats from one chunk's output to the next */
    T *o = out + ((size_t)row * n_heads + h) * hd;
    const float *po = part_out + (base * n_heads + h) * hd;
    const float2 *ms = part_ms + base * n_heads + h;
    if (nc == 1) {
        for (int d = lane; d < hd; d += 32) o[d] = from_f<T>(po[d]);
        return;
    }
    float m = -INFINITY;
    for (int c = lane; c < nc; c += 32) m = fmaxf(m, ms[(size_t)c * n_heads].x);
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    for (int d0 = lane; d0 < hd; d0 += 32 * MERGE_DIMS) {
        float acc[MERGE_DIMS] = {}, sum = 0.0f;
#pragma unroll 4
        for (int c = 0; c < nc; c++) {
            const float2 mc = ms[(size_t)c * n_heads];
            const float w = mc.y * expf(mc.x - m);
#pragma unroll
            for (int i = 0; i < MERGE_DIMS; i++)
                if (d0 + 32 * i < hd) acc[i] = fmaf(po[(size_t)c * stride + d0 + 32 * i], w, acc[i]);
            sum += w;
        }
#pragma unroll
        for (int i = 0; i < MERGE_DIMS; i++)
            if (d0 + 32 * i < hd) o[d0 + 32 * i] = from_f<T>(acc[i] / sum);
    }
}

/* Shared memory of a block with K/V tiles of `sub` keys (the CUDA-core
 * item's layout; the tensor-core one stores q in BF16, within it). */
template <typename KV> static size_t smem_bytes(int max_vec, int hd, int sub, int pages_cap) {
    return pages_floats(pages_cap) * sizeof(float) + (size_t)sub * tile_ld<KV>(hd) * sizeof(KV) +
           ((size_t)max_vec * hd + (size_t)max_vec * SC_LD + 4 * (size_t)max_vec) * sizeof(float);
}

template <typename T, typename KV, int MAXV, bool TC>
static mg_status launch_partial(const void *q, const mg_kv_pool *pool, const mg_cuda_rows *r,
                                const mg_cuda_attn_work *w, attn_params p, float2 *ms, float *po) {
    static size_t opted_dev[MG_CUDA_MAX_DEV]; /* bytes this kernel opted into, per device */
    size_t &opted = opted_dev[mg_cuda_dev];
    if (opted < 48 * 1024) opted = 48 * 1024;
    /* The whole chunk in one tile when it fits; else the largest multiple
     * of ATTN_TILE keys that does (same bits: tiles only stage loads). */
    const int want = mg_cuda.attn_tile_keys / ATTN_TILE * ATTN_TILE;
    p.sub = want > 0 && want < MG_ATTN_CHUNK ? want : MG_ATTN_CHUNK;
    while (p.sub > ATTN_TILE && smem_bytes<KV>(p.max_vec, p.hd, p.sub, p.pages_cap) > mg_cuda.smem_optin)
        p.sub -= ATTN_TILE;
    const size_t smem = smem_bytes<KV>(p.max_vec, p.hd, p.sub, p.pages_cap);
    if (smem > mg_cuda.smem_optin)
        return mg_error_set(MG_ERR_UNSUPPORTED, "attention needs %zu bytes of shared memory (GQA group %d)", smem,
                            p.group);
    if (smem > opted) {
        MG_CUDA_TRY(cudaFuncSetAttribute(attn_partial_kernel<T, KV, MAXV, TC>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        opted = smem;
    }
    /* Blocks along the items: at most one wave of resident blocks (they
     * loop over the items); the layout's items_grid bounds it from above.
     * A launch of many more blocks than items (the capacity is a power of
     * two above the worst case) spent its time starting empty blocks. */
    static int occ_smem[MG_CUDA_MAX_DEV], occ_blocks[MG_CUDA_MAX_DEV]; /* per device: smem -> blocks per SM */
    if (occ_smem[mg_cuda_dev] != (int)smem) {
        int nb = 0;
        MG_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, attn_partial_kernel<T, KV, MAXV, TC>,
                                                                  ATTN_WARPS * 32, smem));
        occ_smem[mg_cuda_dev] = (int)smem;
        occ_blocks[mg_cuda_dev] = nb > 0 ? nb : 1;
    }
    const int wave = occ_blocks[mg_cuda_dev] * mg_cuda.n_sm / p.n_kv_heads;
    const int gx = w->items_grid < wave ? w->items_grid : (wave > 0 ? wave : 1);
    dim3 grid((unsigned)gx, (unsigned)p.n_kv_heads);
    attn_partial_kernel<T, KV, MAXV, TC><<<grid, ATTN_WARPS * 32, smem, mg_cuda.stream>>>(
        (const T *)q, (const KV *)pool->k, (const KV *)pool->v, p, r->positions, r->bt_off, r->bt, w->groups, w->items,
        w->n_items_dev, w->part_base, ms, po);
    MG_CUDA_LAUNCHED("attn_partial");
    return MG_OK;
}

template <typename T, typename KV>
static mg_status launch(void *out, const void *q, const mg_kv_pool *pool, const mg_cuda_rows *r,
                        const mg_cuda_attn_work *w, const attn_params &p, float2 *ms, float *po, int n_rows) {
    if (w->items_grid > 0) {
        /* Any query group of the model fits 32 (checked by the caller). */
        bool tc = false;
        if constexpr (std::is_same<T, bf16>::value && std::is_same<KV, bf16>::value)
            tc = mg_cuda.attn_tc && p.hd % 32 == 0 && p.hd <= 256;
        if (tc) {
            if constexpr (std::is_same<T, bf16>::value && std::is_same<KV, bf16>::value) {
                if (p.max_vec <= 16) MG_TRY((launch_partial<T, KV, 16, true>(q, pool, r, w, p, ms, po)));
                else MG_TRY((launch_partial<T, KV, 32, true>(q, pool, r, w, p, ms, po)));
            }
        } else if (p.max_vec <= 4) {
            MG_TRY((launch_partial<T, KV, 4, false>(q, pool, r, w, p, ms, po)));
        } else if (p.max_vec <= 8) {
            MG_TRY((launch_partial<T, KV, 8, false>(q, pool, r, w, p, ms, po)));
        } else if (p.max_vec <= 16) {
            MG_TRY((launch_partial<T, KV, 16, false>(q, pool, r, w, p, ms, po)));
        } else {
            MG_TRY((launch_partial<T, KV, 32, false>(q, pool, r, w, p, ms, po)));
        }
    }
    const int warps = n_rows * p.n_heads;
    attn_merge_kernel<T><<<mg_div_up(warps, 4), 128, 0, mg_cuda.stream>>>((T *)out, ms, po, w->n_chunks,
                                                                          w->part_base, n_rows, p.n_heads, p.hd);
    MG_CUDA_LAUNCHED("attn_merge");
    return MG_OK;
}

mg_status mg_cuda_attention(void *out, const void *q, const mg_kv_pool *pool, int layer, const mg_attn_rows *rows,
                            int n_heads, mg_kernels kernels, int round_bf16) {
    const mg_cuda_rows *r = (const mg_cuda_rows *)rows->dev;
    if (!r) return mg_error_set(MG_ERR_ARG, "attention: rows_prepare was not called");
    const int n = rows->n_rows, hd = pool->head_dim;
    if (n == 0) return MG_OK;
    if (hd % 8 != 0 || n_heads % pool->n_kv_heads != 0)
        return mg_error_set(MG_ERR_UNSUPPORTED, "attention: head_dim %d (must be a multiple of 8), %d heads over %d",
                            hd, n_heads, pool->n_kv_heads);
    const mg_cuda_attn_work *w = &r->work[kernels == MG_KERNELS_INVARIANT ? 1 : 0];
    attn_params p;
    p.n_heads = n_heads;
    p.n_kv_heads = pool->n_kv_heads;
    p.hd = hd;
    p.group = n_heads / pool->n_kv_heads;
    p.layer = layer;
    p.block_size = pool->block_size;
    p.bs_shift = -1;
    for (int b = 0; b < 31; b++)
        if (pool->block_size == 1 << b) p.bs_shift = b;
    p.n_blocks = pool->n_blocks;
    if (MG_ATTN_QG * p.group > 32)
        return mg_error_set(MG_ERR_UNSUPPORTED, "attention: GQA group %d (at most %d query heads per KV head)",
                            p.group, 32 / MG_ATTN_QG);
    p.max_vec = w->group_rows * p.group; /* a decode step has 1 row per group */
    p.sub = MG_ATTN_CHUNK;
    p.pages_cap = MG_ATTN_CHUNK / pool->block_size + 2; /* a range of <= MG_ATTN_CHUNK keys spans at most this */
    p.scale = 1.0f / sqrtf((float)hd);
    /* Partials: (m, s) pairs first (8-byte aligned), then the outputs. */
    /* Sized for the layout's capacity, not this pass's partials, so that a
     * replayed graph never outgrows it. */
    const size_t n_ms = (size_t)r->parts_cap * n_heads;
    if (n_ms > INT_MAX) return mg_error_set(MG_ERR_UNSUPPORTED, "attention: %zu partials (at most INT_MAX)", n_ms);
    if (((uintptr_t)q & 15) != 0) return mg_error_set(MG_ERR_ARG, "attention: q is not 16-byte aligned");
    void *scratch;
    MG_TRY(mg_cuda_scratch(MG_SCRATCH_ATTN, n_ms * sizeof(float2) + n_ms * hd * sizeof(float), &scratch));
    float2 *ms = (float2 *)scratch;
    float *po = (float *)(ms + n_ms);
    const int kv_bf16 = pool->dtype == MG_DTYPE_BF16;
    if (round_bf16 && kv_bf16) return launch<bf16, bf16>(out, q, pool, r, w, p, ms, po, n);
    if (round_bf16) return launch<bf16, float>(out, q, pool, r, w, p, ms, po, n);
    if (kv_bf16) return launch<float, bf16>(out, q, pool, r, w, p, ms, po, n);
    return launch<float, float>(out, q, pool, r, w, p, ms, po, n);
}
