/* Shared pieces of the CUDA backend: the error macros, the backend context
 * (one stream, one cuBLASLt handle, scratch memory), activation storage
 * types, and the rows metadata made by rows_prepare.
 *
 * Activation storage: an activation buffer holds BF16 (`bf16`) values when
 * round_bf16 and FP32 otherwise (see backend.h). Kernels are templated on
 * the storage type T; storing into a bf16 buffer rounds to nearest even,
 * which is exactly mg_round_bf16 for finite values. */
#ifndef MG_CUDA_COMMON_CUH
#define MG_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "../backend.h"
}

typedef __nv_bfloat16 bf16;

/* Records a CUDA failure as the last error ("CUDA error <name> (<text>) in
 * <what> at <file>:<line>") and returns MG_ERR_OOM for allocation failures,
 * MG_ERR_BACKEND otherwise. */
mg_status mg_cuda_fail(cudaError_t err, const char *what, const char *file, int line);

/* Evaluates a CUDA runtime call; on failure returns its mg_status from the
 * enclosing function. */
#define MG_CUDA_TRY(call)                                                                                    \
    do {                                                                                                     \
        cudaError_t mg_e_ = (call);                                                                          \
        if (mg_e_ != cudaSuccess) return mg_cuda_fail(mg_e_, #call, __FILE__, __LINE__);                     \
    } while (0)

/* After a kernel launch: returns the launch error, if any. */
#define MG_CUDA_LAUNCHED(name)                                                                               \
    do {                                                                                                     \
        cudaError_t mg_e_ = cudaGetLastError();                                                              \
        if (mg_e_ != cudaSuccess) return mg_cuda_fail(mg_e_, "launch of " name, __FILE__, __LINE__);         \
    } while (0)


/* The backend context, one per device. A thread works on device
 * mg_cuda_dev (0 unless it called mg_backend_cuda_on: tensor-parallel rank
 * threads do), and `mg_cuda` names that device's context; every other piece
 * of per-device state (scratch, weights, rows, graphs, cuBLASLt plans, tile
 * counters, kernel attributes) is indexed the same way. */
typedef struct {
    int ready;
    int device;
    int n_sm;
    size_t smem_optin;  /* largest dynamic shared memory a block may opt into */
    cudaStream_t stream;
    /* Tunables, from the environment at init (docs/cuda.md). */
    int skinny_max_rows;  /* MG_CUDA_SKINNY_MAX: tensor-core skinny kernel up to this many rows (32) */
    int fast_gemm_tc;     /* MG_CUDA_FAST_GEMM=tc: the fast path uses the invariant kernels too */
    int fast_tune;        /* MG_CUDA_FAST_TUNE: the fast path's cuBLASLt algorithms chosen by timing among those
                             giving the heuristic's bits (1, default), among all (2), or not (0) */
    int gemv_max_rows;    /* MG_CUDA_GEMV_MAX: the fast path's BF16 matmuls of up to this many rows run gemv.cu's
                             kernel instead of cuBLASLt (default 2; 0: never; at most 8) */
    int invariant_gemm_tc; /* MG_CUDA_INVARIANT_GEMM=tc: the invariant path's BF16 GEMMs use the own tensor-core
                              kernels (order fixed by K alone, matmul_tc.cuh) instead of pinned cuBLASLt */
    int skinny_v2;        /* MG_CUDA_SKINNY_V2 (default 1): skinny kernel issues a split's weight loads up front */
    int graphs;           /* MG_CUDA_GRAPHS (default 1): decode passes replay CUDA graphs */
    int attn_tc;          /* MG_CUDA_ATTN_TC (default 1): BF16 attention on tensor cores (head_dim % 32 == 0) */
    int attn_fill;        /* MG_CUDA_ATTN_FILL (default 2): the fast path cuts a row's keys into chunks (32..256)
                             until its items would fill the SMs this many times over (blocks of 8 KV heads) */
    int attn_tile_keys;   /* MG_CUDA_ATTN_TILE: keys per K/V tile in the attention's shared memory (a multiple of
                             32 up to MG_ATTN_CHUNK; 0: the whole chunk); stages loads only, changes no bit */
    unsigned buffers_gen; /* bumped whenever a scratch buffer moves or any buffer is freed (graphs
                             recorded addresses; a replay needs them all unchanged) */
} mg_cuda_ctx;

#define MG_CUDA_MAX_DEV 8
extern mg_cuda_ctx mg_cuda_devs[MG_CUDA_MAX_DEV];
extern thread_local int mg_cuda_dev;
#define mg_cuda (mg_cuda_devs[mg_cuda_dev])

/* Growable device scratch, one per purpose; the pointer stays valid until
 * the next call with the same slot. Waits for pending work before growing. */
/* MG_SCRATCH_MM_SPLIT: the invariant matmul's K-split workspace (matmul_tc.cu).
 * MG_SCRATCH_FUSED: the one GEMM over stacked matmul_multi parts (matmul.cu
 * lt_stacked). MG_SCRATCH_LT_IN / MG_SCRATCH_LT_OUT: a pinned cuBLASLt GEMM's
 * input / output staged at 256-byte alignment (cublaslt.cu).
 * MG_SCRATCH_COUNT follows the last slot. */
enum {
    MG_SCRATCH_ATTN = 0,
    MG_SCRATCH_GEMM = 1,
    MG_SCRATCH_TMP = 2,
    MG_SCRATCH_MM_SPLIT = 3,
    MG_SCRATCH_FUSED = 4,
    MG_SCRATCH_LT_IN = 5,
    MG_SCRATCH_LT_OUT = 6,
    MG_SCRATCH_COUNT
};
mg_status mg_cuda_scratch(int slot, size_t bytes, void **out);

/* ---- rows metadata (rows_prepare) --------------------------------------- */

/* Query rows are grouped for attention: consecutive rows of one sequence,
 * at most MG_ATTN_QG rows, share the K/V reads of a chunk. */
#define MG_ATTN_QG 4
/* Invariant attention chunk: positions per partial softmax (as the CPU). */
#define MG_ATTN_CHUNK 256

/* Attention work for one kernel mode: groups, (group, chunk) items, and per
 * row the number of chunks and the index of its first partial. */
typedef struct {
    int n_groups, n_items, n_parts;
    int group_rows;           /* rows of the largest group (1..MG_ATTN_QG): sizes the attention's shared memory */
    int items_grid;           /* blocks along the items: fixed by the layout, each loops over the items */
    const int32_t *n_items_dev; /* device (1): n_items, read by the attention kernel */
    const int32_t *groups;    /* device (n_groups, 3): first row, end row, chunk length */
    const int32_t *items;     /* device (n_items, 2): group, chunk index */
    const int32_t *n_chunks;  /* device (n_rows) */
    const int32_t *part_base; /* device (n_rows) */
} mg_cuda_attn_work;

typedef struct {
    int n_rows;
    int max_pos;
    int parts_cap; /* partials the attention scratch is sized for (>= n_parts of both modes) */
    const int32_t *tokens;    /* device (n_rows) */
    const int32_t *positions; /* device (n_rows) */
    const int32_t *bt_off;    /* device (n_rows): offset of the row's block table in bt */
    const int32_t *bt;        /* device: concatenated block tables */
    mg_cuda_attn_work work[2]; /* indexed by mg_kernels */
} mg_cuda_rows;

/* ---- device helpers ------------------------------------------------------ */

static __device__ __forceinline__ float to_f(float v) { return v; }
static __device__ __forceinline__ float to_f(bf16 v) { return __bfloat162float(v); }

template <typename T> static __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float v) { return __float2bfloat16_rn(v); }

/* 16 bytes of T (8 BF16 or 4 FP32 values) to and from FP32, one 16-byte
 * access (p 16-byte aligned). */
template <typename T> struct vec16 {
    static constexpr int E = 16 / sizeof(T);
    static __device__ __forceinline__ void load(const T *p, float *f) {
        const uint4 u = *(const uint4 *)p;
        const T *e = (const T *)&u;
#pragma unroll
        for (int i = 0; i < E; i++) f[i] = to_f(e[i]);
    }
    static __device__ __forceinline__ void store(T *p, const float *f) {
        uint4 u;
        T *e = (T *)&u;
#pragma unroll
        for (int i = 0; i < E; i++) e[i] = from_f<T>(f[i]);
        *(uint4 *)p = u;
    }
};

/* ---- tensor cores (sm_80+) ------------------------------------------------ */

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

/* The value a store into a T buffer keeps: rounded to BF16 for bf16. */
template <typename T> static __device__ __forceinline__ float rnd(float v) { return to_f(from_f<T>(v)); }

static inline unsigned mg_div_up(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }

/* ---- ops implemented in the .cu files (contracts in backend.h) ----------- */

mg_status mg_cuda_embed(void *out, const mg_matrix *table, const mg_attn_rows *rows, int round_bf16);
mg_status mg_cuda_rmsnorm(void *out, const void *in, const float *weight, int n, int dim, float eps, int round_bf16);
mg_status mg_cuda_add_rmsnorm(void *x, const void *y, void *out, const float *weight, int n, int dim, float eps,
                              int round_bf16);
mg_status mg_cuda_add(void *x, const void *y, size_t n, int round_bf16);
mg_status mg_cuda_swiglu(void *out, const void *gate, const void *up, size_t n, int round_bf16);
mg_status mg_cuda_matmul(void *out, const void *in, const mg_matrix *w, const float *bias, int n, mg_kernels kernels,
                         int round_bf16);
mg_status mg_cuda_matmul_multi(const mg_matmul_part *parts, int n_parts, const void *in, int n, mg_kernels kernels,
                               int round_bf16);
mg_status mg_cuda_logits(float *out, const void *in, const mg_matrix *w, int n, mg_kernels kernels, int round_bf16);
mg_status mg_cuda_rope_kv_store(void *q, void *k, const void *v, mg_kv_pool *pool, int layer,
                                const mg_attn_rows *rows, int n_heads, const float *inv_freq, int round_bf16);
mg_status mg_cuda_attention(void *out, const void *q, const mg_kv_pool *pool, int layer, const mg_attn_rows *rows,
                            int n_heads, mg_kernels kernels, int round_bf16);
mg_status mg_cuda_argmax(mg_argmax *out, const float *logits, int n, int vocab);
mg_status mg_cuda_matmul_groups(float *out, const void *in, const mg_matrix *w, int n, int round_bf16);
mg_status mg_cuda_fold(void *out, const float *parts, int n_parts, size_t count, int round_bf16);

/* Internal pieces of the matmul family. */
struct mg_cuda_mm_part {
    const void *w;     /* (n, K) weights, BF16 or F32 */
    const float *bias; /* (n) or NULL */
    void *out;         /* (M, n) */
    int n;
};
/* cuBLASLt BF16 x BF16 -> out_f32 ? FP32 : BF16 (no bias), FP32 accumulation. */
mg_status mg_cuda_lt_gemm(void *out, int out_f32, const void *x, const void *w, int M, int N, int K);
/* The same with the algorithm pinned for (N, K, out_f32) (INVARIANT: one
 * kernel for every M, no split-K; cublaslt.cu). The first call of a shape
 * tunes the pin on w (a direct run, not inside a graph capture); an error
 * when cuBLASLt has no such algorithm (see mg_cuda_lt_pinned_usable) or w
 * is not 256-byte aligned; x and out may be anywhere (staged when not
 * 256-byte aligned: the algorithms are chosen for aligned operands). */
mg_status mg_cuda_lt_gemm_pinned(void *out, int out_f32, const void *x, const void *w, int M, int N, int K);
/* Whether weights w of shape (N, K) run pinned: the shape has a pinned
 * algorithm (tuned on w if new) and w is 256-byte aligned. The answer for
 * a matrix never changes for the life of the process. */
mg_status mg_cuda_lt_pinned_usable(int N, int K, int out_f32, const void *w, int *usable);
/* "N x K: algo .. tile .. (worst ..x); ..." for the pins made so far on the
 * current device, into buf (truncated to size); returns how many. */
int mg_cuda_lt_pins_describe(char *buf, size_t size);
/* Makes the GEMM choices for these parts now (BF16 numerics; out_f32: the
 * LM head's FP32 logits): tunes the FAST path's algorithms and the pinned
 * invariant algorithm of their shapes if new (matmul.cu; the engine would
 * otherwise tune the pin on its first invariant pass, and FAST would take
 * the heuristic's first picks). */
mg_status mg_cuda_matmul_prepare(const mg_matmul_part *parts, int n_parts, int out_f32);
/* Times the FAST path's candidate algorithms for (N, K, out_f32) on
 * weights w at a ladder of batch sizes up to 256 and keeps the fastest per
 * size among those with the heuristic's bits (cublaslt.cu); a no-op when
 * done before, inside a capture, under MG_CUDA_FAST_TUNE=0, or when the
 * device has no memory to spare for it. Synchronises the stream. */
mg_status mg_cuda_lt_fast_prepare(int N, int K, int out_f32, const void *w);
/* "N x K: M gain M gain ...; ..." (gain: the heuristic's first pick's time
 * over the chosen algorithm's) for the shapes tuned so far on the current
 * device, into buf (truncated to size); returns how many. */
int mg_cuda_lt_fast_describe(char *buf, size_t size);
/* Whether gemv.cu's kernel takes these parts with M rows of x: BF16
 * weights sharing K (K % 8 == 0), x and weights 16-byte aligned, M <= 8. */
int mg_cuda_gemv_fits(const mg_matmul_part *parts, int n_parts, const void *x, int M);
/* FAST matmul of all parts in one launch (gemv.cu): parts[p].out (M, n_p)
 * = x (M, K) w_p^T (+ bias_p), FP32 accumulation, one rounding to BF16 (or
 * FP32 when out_f32); an error unless mg_cuda_gemv_fits. */
mg_status mg_cuda_gemv(const mg_matmul_part *parts, int n_parts, const void *x, int M, int out_f32);
/* Frees the cuBLASLt handle and plans (at exit). */
void mg_cuda_lt_shutdown(void);

#endif
