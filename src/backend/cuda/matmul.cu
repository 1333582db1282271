/* CUDA matmul dispatch (matmul, matmul_multi, logits) and the CUDA-core
 * kernel for what the tensor-core paths do not take.
 *
 * Paths, by numerics and kernels (see matmul_tc.cuh, cublaslt.cu):
 * - BF16 activations, BF16 weights, FAST, up to MG_CUDA_GEMV_MAX rows (2):
 *   gemv.cu's weight-streaming kernel, all parts in one launch.
 * - BF16 activations, BF16 weights, FAST, more rows: cuBLASLt (its heuristics choose a
 *   kernel per M, as in production engines: the source of batch-induced
 *   flips on the GPU); a bias goes through an FP32 result and one epilogue
 *   kernel, so that the bias is added before the single BF16 rounding, as
 *   the reference does. matmul_multi parts whose weights lie back to back
 *   (upload_model stacks q/k/v) run as one GEMM over the stacked
 *   rows and one kernel that scatters the columns to each part's output.
 *   MG_CUDA_FAST_GEMM=tc sends FAST to the tensor-core kernels instead (for
 *   comparisons).
 * - BF16 activations, BF16 weights, K % 8 == 0, INVARIANT: cuBLASLt with
 *   the algorithm pinned per shape (no split-K: one kernel and one order
 *   for every M; cublaslt.cu), stacked parts always as one GEMM (a part's
 *   rows always run in the same pinned GEMM); shapes without a pinned
 *   algorithm, or MG_CUDA_INVARIANT_GEMM=tc: the own tensor-core kernels
 *   (K % 32 == 0), one reduction order fixed by K alone (matmul_tc.cuh).
 * - everything else (FP32 activations (--fp32), F32 weights (llama2.c
 *   checkpoints), K not a multiple of 32 / 8): mm_simt, a CUDA-core kernel
 *   whose reduction order depends only on K, for both kernel modes. */
#include "matmul_tc.cuh"

/* ---- CUDA-core kernel -------------------------------------------------------- */

/* One warp per output feature r, rows in groups of 4. Lane l accumulates
 * (FMA, in order) columns 4l + 128i .. 4l + 128i + 3 when K % 4 == 0, else
 * columns l + 32i; then a fixed xor tree over the lanes. */
#define SIMT_ROWS 4

template <typename TI, typename TW, typename TO, bool VEC4>
__global__ void __launch_bounds__(256) mm_simt(TO *out, const TI *x, const TW *w, const float *bias, int M, int N,
                                               int K) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= N) return;
    const TW *wr = w + (size_t)r * K;
    for (int i0 = 0; i0 < M; i0 += SIMT_ROWS) {
        const int nr = min(SIMT_ROWS, M - i0);
        float acc[SIMT_ROWS] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (VEC4) {
            for (int k = 4 * lane; k < K; k += 128) {
                const float w0 = to_f(wr[k]), w1 = to_f(wr[k + 1]), w2 = to_f(wr[k + 2]), w3 = to_f(wr[k + 3]);
#pragma unroll
                for (int i = 0; i < SIMT_ROWS; i++) {
                    if (i < nr) {
                        const TI *xi = x + (size_t)(i0 + i) * K + k;
                        acc[i] = fmaf(w0, to_f(xi[0]), acc[i]);
                        acc[i] = fmaf(w1, to_f(xi[1]), acc[i]);
                        acc[i] = fmaf(w2, to_f(xi[2]), acc[i]);
                        acc[i] = fmaf(w3, to_f(xi[3]), acc[i]);
                    }
                }
            }
        } else {
            for (int k = lane; k < K; k += 32) {
                const float wv = to_f(wr[k]);
#pragma unroll
                for (int i = 0; i < SIMT_ROWS; i++)
                    if (i < nr) acc[i] = fmaf(wv, to_f(x[(size_t)(i0 + i) * K + k]), acc[i]);
            }
        }
#pragma unroll
        for (int i = 0; i < SIMT_ROWS; i++) {
            float v = acc[i];
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            v = __shfl_sync(0xffffffffu, v, 0); /* lane 0's association */
            if (lane == 0 && i < nr) {
                if (bias) v += bias[r];
                out[(size_t)(i0 + i) * N + r] = from_f<TO>(v);
            }
        }
    }
}

template <typename TI, typename TW, typename TO>
static mg_status simt3(void *out, const void *x, const void *w, const float *bias, int M, int N, int K) {
    const unsigned blocks = mg_div_up(N, 8);
    if (K % 4 == 0)
        mm_simt<TI, TW, TO, true><<<blocks, 256, 0, mg_cuda.stream>>>((TO *)out, (const TI *)x, (const TW *)w, bias,
                                                                      M, N, K);
    else
        mm_simt<TI, TW, TO, false><<<blocks, 256, 0, mg_cuda.stream>>>((TO *)out, (const TI *)x, (const TW *)w,
                                                                       bias, M, N, K);
    MG_CUDA_LAUNCHED("mm_simt");
    return MG_OK;
}

template <typename TI, typename TO>
static mg_status simt2(void *out, const void *x, const mg_matrix *w, const float *bias, int M, int N, int K) {
    if (w->dtype == MG_DTYPE_BF16) return simt3<TI, bf16, TO>(out, x, w->data, bias, M, N, K);
    return simt3<TI, float, TO>(out, x, w->data, bias, M, N, K);
}

/* Activations in bf16 (round_bf16) or float; output bf16, float, or FP32
 * logits (out_f32). */
static mg_status mm_simt_any(void *out, const void *x, const mg_matrix *w, const float *bias, int M, int round_bf16,
                             int out_f32) {
    const int N = w->rows, K = w->cols;
    if (round_bf16)
        return out_f32 ? simt2<bf16, float>(out, x, w, bias, M, N, K) : simt2<bf16, bf16>(out, x, w, bias, M, N, K);
    return simt2<float, float>(out, x, w, bias, M, N, K);
}

/* ---- bias epilogue for cuBLASLt ------------------------------------------------- */

template <typename TO> __global__ void bias_store(TO *out, const float *acc, const float *bias, size_t M, int N) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < M * N; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f<TO>(acc[i] + bias[i % N]);
}

/* cuBLASLt, heuristic (FAST) or pinned (INVARIANT) algorithm. */
static mg_status lt_gemm(int pinned, void *out, int out_f32, const void *x, const void *w, int M, int N, int K) {
    return pinned ? mg_cuda_lt_gemm_pinned(out, out_f32, x, w, M, N, K) : mg_cuda_lt_gemm(out, out_f32, x, w, M, N, K);
}

static mg_status lt_one(int pinned, void *out, const void *x, const mg_matrix *w, const float *bias, int M,
                        int out_f32) {
    const int N = w->rows, K = w->cols;
    if (!bias) return lt_gemm(pinned, out, out_f32, x, w->data, M, N, K);
    void *acc;
    MG_TRY(mg_cuda_scratch(MG_SCRATCH_GEMM, (size_t)M * N * sizeof(float), &acc));
    MG_TRY(lt_gemm(pinned, acc, 1, x, w->data, M, N, K));
    const size_t total = (size_t)M * N;
    unsigned blocks = mg_div_up(total, 256);
    if (blocks > (unsigned)mg_cuda.n_sm * 16) blocks = (unsigned)mg_cuda.n_sm * 16;
    if (out_f32)
        bias_store<float><<<blocks, 256, 0, mg_cuda.stream>>>((float *)out, (const float *)acc, bias, (size_t)M, N);
    else
        bias_store<bf16><<<blocks, 256, 0, mg_cuda.stream>>>((bf16 *)out, (const float *)acc, bias, (size_t)M, N);
    MG_CUDA_LAUNCHED("bias_store");
    return MG_OK;
}

/* ---- one GEMM over stacked parts (FAST) ------------------------------------------ */

/* Largest batch that stacked parts run as one GEMM: the gain is at decode,
 * where the GEMMs are weight-bound (a narrow k or v projection alone runs
 * its weights slowly); at prefill each GEMM is compute-bound anyway, and the
 * scratch (M x all parts' rows) and the scatter's extra pass would grow with M. */
#define LT_STACK_MAX_ROWS 256

/* Where the columns of a stacked GEMM go: part p owns n[p] consecutive
 * columns from c0[p], in part order. */
typedef struct {
    void *out[MG_TC_MAX_SEGS];         /* part p: (M, n[p]), TO */
    const float *bias[MG_TC_MAX_SEGS]; /* part p: (n[p]) or NULL */
    int n[MG_TC_MAX_SEGS], c0[MG_TC_MAX_SEGS];
    int n_total; /* sum of n[p] */
} lt_scatter;

/* out_p[i, c] = acc[i, c0_p + c] (+ bias_p[c]), rounded once to TO: the
 * per-part result of lt_one, bias_store included. acc (M, n_total) is FP32
 * when a bias is added or the output is FP32, else BF16. Grid: x strides
 * over the part's columns (VEC consecutive ones per thread: 16-byte copies
 * of a BF16 acc without bias), y = the row, z = the part. The part's fields
 * are picked with constant indices (a dynamic index would copy the whole
 * parameter struct to local memory in every thread). */
template <typename TA, typename TO, int VEC> __global__ void lt_scatter_kernel(lt_scatter s, const TA *acc) {
    const int p = blockIdx.z;
    int n = 0, c0 = 0;
    TO *out = NULL;
    const float *bias = NULL;
#pragma unroll
    for (int q = 0; q < MG_TC_MAX_SEGS; q++)
        if (q == p) n = s.n[q], c0 = s.c0[q], out = (TO *)s.out[q], bias = s.bias[q];
    const size_t i = blockIdx.y;
    const TA *src = acc + i * s.n_total + c0;
    TO *dst = out + i * n;
    for (int c = (blockIdx.x * blockDim.x + threadIdx.x) * VEC; c < n; c += gridDim.x * blockDim.x * VEC) {
        if (VEC > 1) {
            *(uint4 *)(dst + c) = *(const uint4 *)(src + c);
        } else {
            float v = to_f(src[c]);
            if (bias) v += bias[c];
            dst[c] = from_f<TO>(v);
        }
    }
}

/* Whether the parts' weights are one stacked matrix: part p + 1's rows start
 * right where part p's end (upload_model lays out q/k/v so). The
 * caller has checked that they are BF16 and share cols. Two separate
 * allocations that happen to be adjacent pass too, and are read correctly:
 * the GEMM reads exactly the parts' rows, wherever they came from. */
static int parts_stacked(const mg_matmul_part *parts, int n_parts) {
    if (n_parts < 2) return 0;
    for (int p = 1; p < n_parts; p++) {
        const mg_matrix *prev = parts[p - 1].w;
        const char *end = (const char *)prev->data + (size_t)prev->rows * prev->cols * sizeof(bf16);
        if ((const char *)parts[p].w->data != end) return 0;
    }
    return 1;
}

/* Stacked weights (parts_stacked): one cuBLASLt GEMM of x (M, K) with all
 * the parts' rows into scratch (M, n_total), then lt_scatter_kernel to each
 * part's out, adding its bias before the single rounding. Same values as
 * lt_one per part, up to the reduction order of the wider GEMM's algorithm
 * (FAST promises no bits; INVARIANT runs every M this way, pinned). */
static mg_status lt_stacked(int pinned, const mg_matmul_part *parts, int n_parts, const void *x, int M,
                            int out_f32) {
    lt_scatter s = {};
    int any_bias = 0, all_vec = 1, max_n = 0;
    for (int p = 0; p < n_parts; p++) {
        s.out[p] = parts[p].out;
        s.bias[p] = parts[p].bias;
        s.n[p] = parts[p].w->rows;
        s.c0[p] = s.n_total;
        s.n_total += s.n[p];
        any_bias |= parts[p].bias != NULL;
        all_vec &= s.n[p] % 8 == 0 && ((uintptr_t)parts[p].out & 15) == 0;
        if (s.n[p] > max_n) max_n = s.n[p];
    }
    const int acc_f32 = any_bias || out_f32;
    void *acc; /* (M, n_total), FP32 when acc_f32 else BF16 */
    MG_TRY(mg_cuda_scratch(MG_SCRATCH_FUSED, (size_t)M * s.n_total * (acc_f32 ? sizeof(float) : sizeof(bf16)), &acc));
    MG_TRY(lt_gemm(pinned, acc, acc_f32, x, parts[0].w->data, M, s.n_total, parts[0].w->cols));
    const int vec = !acc_f32 && all_vec ? 8 : 1;
    const dim3 grid(mg_div_up((size_t)max_n, 256 * (size_t)vec), (unsigned)M, (unsigned)n_parts);
    if (vec == 8)
        lt_scatter_kernel<bf16, bf16, 8><<<grid, 256, 0, mg_cuda.stream>>>(s, (const bf16 *)acc);
    else if (!acc_f32)
        lt_scatter_kernel<bf16, bf16, 1><<<grid, 256, 0, mg_cuda.stream>>>(s, (const bf16 *)acc);
    else if (out_f32)
        lt_scatter_kernel<float, float, 1><<<grid, 256, 0, mg_cuda.stream>>>(s, (const float *)acc);
    else
        lt_scatter_kernel<float, bf16, 1><<<grid, 256, 0, mg_cuda.stream>>>(s, (const float *)acc);
    MG_CUDA_LAUNCHED("lt_scatter_kernel");
    return MG_OK;
}

/* ---- dispatch -------------------------------------------------------------------- */

typedef enum { PATH_SIMT, PATH_TC, PATH_LT, PATH_LT_PINNED } mm_path;

/* One cuBLASLt GEMM of a matmul: w (N, K), FP32 result when out_f32. */
typedef struct {
    int N, K, out_f32;
    const void *w;
} lt_shape;

/* The cuBLASLt GEMMs that lt_stacked / lt_one run for these parts: stacked
 * parts as one GEMM of all their rows (FP32 when any has a bias or out_f32),
 * else one per part (FP32 with a bias or out_f32). Returns how many. */
static int lt_shapes(const mg_matmul_part *parts, int n_parts, int out_f32, lt_shape *out) {
    const int K = parts[0].w->cols;
    if (parts_stacked(parts, n_parts)) {
        out[0] = (lt_shape){0, K, out_f32, parts[0].w->data};
        for (int p = 0; p < n_parts; p++) out[0].N += parts[p].w->rows, out[0].out_f32 |= parts[p].bias != NULL;
        return 1;
    }
    for (int p = 0; p < n_parts; p++)
        out[p] = (lt_shape){parts[p].w->rows, K, out_f32 || parts[p].bias, parts[p].w->data};
    return n_parts;
}

/* Whether every GEMM of these parts has a pinned algorithm. */
static mg_status pinned_usable(const mg_matmul_part *parts, int n_parts, int out_f32, int *usable) {
    lt_shape sh[MG_TC_MAX_SEGS];
    const int n = lt_shapes(parts, n_parts, out_f32, sh);
    *usable = 1;
    for (int i = 0; i < n && *usable; i++)
        MG_TRY(mg_cuda_lt_pinned_usable(sh[i].N, sh[i].K, sh[i].out_f32, sh[i].w, usable));
    return MG_OK;
}

static mg_status choose(const mg_matmul_part *parts, int n_parts, mg_kernels kernels, int round_bf16, int out_f32,
                        mm_path *path) {
    int bf16_w = 1, cols = parts[0].w->cols;
    for (int i = 0; i < n_parts; i++) bf16_w &= parts[i].w->dtype == MG_DTYPE_BF16 && parts[i].w->cols == cols;
    *path = PATH_SIMT;
    if (!round_bf16 || !bf16_w) return MG_OK;
    if (kernels == MG_KERNELS_FAST && !mg_cuda.fast_gemm_tc) {
        if (cols % 8 == 0) *path = PATH_LT;
        return MG_OK;
    }
    if (kernels == MG_KERNELS_INVARIANT && !mg_cuda.invariant_gemm_tc && cols % 8 == 0) {
        int usable = 0;
        MG_TRY(pinned_usable(parts, n_parts, out_f32, &usable));
        if (usable) {
            *path = PATH_LT_PINNED;
            return MG_OK;
        }
    }
    if (cols % 32 == 0) *path = PATH_TC;
    return MG_OK;
}

static mg_status run_parts(const mg_matmul_part *parts, int n_parts, const void *in, int n, mg_kernels kernels,
                           int round_bf16, int out_f32) {
    if (n_parts < 1 || n_parts > MG_TC_MAX_SEGS)
        return mg_error_set(MG_ERR_ARG, "matmul_multi: %d parts (1..%d)", n_parts, MG_TC_MAX_SEGS);
    if (n == 0) return MG_OK;
    mm_path path;
    MG_TRY(choose(parts, n_parts, kernels, round_bf16, out_f32, &path));
    switch (path) {
    case PATH_TC: {
        mg_cuda_mm_part p[MG_TC_MAX_SEGS];
        for (int i = 0; i < n_parts; i++)
            p[i] = (mg_cuda_mm_part){parts[i].w->data, parts[i].bias, parts[i].out, parts[i].w->rows};
        return mg_tc_matmul(p, n_parts, in, n, parts[0].w->cols, out_f32);
    }
    case PATH_LT:
    case PATH_LT_PINNED: {
        const int pinned = path == PATH_LT_PINNED;
        if (!pinned && n <= mg_cuda.gemv_max_rows && mg_cuda_gemv_fits(parts, n_parts, in, n))
            return mg_cuda_gemv(parts, n_parts, in, n, out_f32);
        if ((pinned || n <= LT_STACK_MAX_ROWS) && parts_stacked(parts, n_parts))
            return lt_stacked(pinned, parts, n_parts, in, n, out_f32);
        for (int i = 0; i < n_parts; i++)
            MG_TRY(lt_one(pinned, parts[i].out, in, parts[i].w, parts[i].bias, n, out_f32));
        return MG_OK;
    }
    default:
        for (int i = 0; i < n_parts; i++)
            MG_TRY(mm_simt_any(parts[i].out, in, parts[i].w, parts[i].bias, n, round_bf16, out_f32));
        return MG_OK;
    }
}

/* Tunes the FAST path's cuBLASLt GEMMs of these parts (as run_parts runs
 * them up to LT_STACK_MAX_ROWS rows, where the tuning's buckets end). */
static mg_status prepare_fast(const mg_matmul_part *parts, int n_parts, int out_f32) {
    mm_path path;
    MG_TRY(choose(parts, n_parts, MG_KERNELS_FAST, 1, out_f32, &path));
    if (path != PATH_LT) return MG_OK;
    lt_shape sh[MG_TC_MAX_SEGS];
    const int n = lt_shapes(parts, n_parts, out_f32, sh);
    for (int i = 0; i < n; i++) MG_TRY(mg_cuda_lt_fast_prepare(sh[i].N, sh[i].K, sh[i].out_f32, sh[i].w));
    return MG_OK;
}

mg_status mg_cuda_matmul_prepare(const mg_matmul_part *parts, int n_parts, int out_f32) {
    if (n_parts < 1 || n_parts > MG_TC_MAX_SEGS) return MG_OK;
    MG_TRY(prepare_fast(parts, n_parts, out_f32));
    mm_path path;
    return choose(parts, n_parts, MG_KERNELS_INVARIANT, 1, out_f32, &path);
}

mg_status mg_cuda_matmul_multi(const mg_matmul_part *parts, int n_parts, const void *in, int n, mg_kernels kernels,
                               int round_bf16) {
    return run_parts(parts, n_parts, in, n, kernels, round_bf16, 0);
}

mg_status mg_cuda_matmul(void *out, const void *in, const mg_matrix *w, const float *bias, int n, mg_kernels kernels,
                         int round_bf16) {
    const mg_matmul_part part = {out, w, bias};
    return run_parts(&part, 1, in, n, kernels, round_bf16, 0);
}

mg_status mg_cuda_logits(float *out, const void *in, const mg_matrix *w, int n, mg_kernels kernels, int round_bf16) {
    const mg_matmul_part part = {out, w, NULL};
    return run_parts(&part, 1, in, n, kernels, round_bf16, 1);
}

mg_status mg_cuda_matmul_groups(float *out, const void *in, const mg_matrix *w, int n, int round_bf16) {
    if (!round_bf16 || w->dtype != MG_DTYPE_BF16 || w->cols % 32 != 0)
        return mg_error_set(MG_ERR_UNSUPPORTED,
                            "matmul groups on CUDA need BF16 numerics, BF16 weights and K %% 32 == 0 (K = %d)",
                            w->cols);
    return mg_tc_matmul_groups(out, (const bf16 *)w->data, w->rows, in, n, w->cols);
}
