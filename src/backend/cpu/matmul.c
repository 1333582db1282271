/* CPU matmul: out (n, rows) = in (n, cols) x W^T, W (rows, cols) in BF16 or
 * F32.
 *
 * Reduction orders (see backend.h):
 * - dot_lanes: one dot product as LANES interleaved partial sums over the
 *   whole of K, then a fixed pairwise tree over the lanes. The invariant
 *   kernel uses it for every row at every batch size (rows are processed in
 *   tiles of ROW_TILE sharing each weight load, but each row's arithmetic is
 *   the same as alone), and so does the fast kernel at batch 1 (gemv).
 * - the fast kernel for n > 1 is a K-blocked GEMM: it walks K in panels of
 *   KC columns (KC chosen by the batch size, so that a weight panel stays in
 *   L1 while every row of the batch consumes it) and adds each panel's
 *   tree-reduced partial sum into the output. Same values, different
 *   rounding: this is the CPU analogue of cuBLAS picking another kernel for
 *   another M, and the source of batch-induced flips on this backend.
 * OpenMP splits the output features (weight rows) across threads, which does
 * not change any element's reduction order. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../../util/bf16.h"
#include "cpu_ops.h"

#define LANES 16
#define ROW_TILE 4

/* Loads LANES weights starting at w[k] as FP32. */
static inline void load_w(float dst[LANES], const mg_matrix *w, size_t off) {
    if (w->dtype == MG_DTYPE_BF16) {
        const uint16_t *p = (const uint16_t *)w->data + off;
        for (int l = 0; l < LANES; l++) dst[l] = mg_bf16_to_f32(p[l]);
    } else {
        memcpy(dst, (const float *)w->data + off, LANES * sizeof(float));
    }
}

static inline float load_w1(const mg_matrix *w, size_t off) {
    return w->dtype == MG_DTYPE_BF16 ? mg_bf16_to_f32(((const uint16_t *)w->data)[off]) : ((const float *)w->data)[off];
}

/* Fixed pairwise reduction of LANES partial sums. */
static inline float tree_sum(float acc[LANES]) {
    for (int s = LANES / 2; s >= 1; s /= 2)
        for (int l = 0; l < s; l++) acc[l] += acc[l + s];
    return acc[0];
}

/* Partial dot products of `nr` (<= ROW_TILE) rows of `in` with weight row r
 * over columns [k0, k1): acc lanes interleaved, tail folded into the low
 * lanes, then tree-reduced. Each row's result depends only on (k0, k1). */
static void dot_tile(float res[ROW_TILE], const float *in, size_t ld, int nr, const mg_matrix *w, size_t r,
                     size_t k0, size_t k1) {
    float acc[ROW_TILE][LANES] = {{0}};
    float wl[LANES];
    size_t wrow = r * (size_t)w->cols;
    size_t k = k0;
    for (; k + LANES <= k1; k += LANES) {
        load_w(wl, w, wrow + k);
        for (int i = 0; i < nr; i++) {
            const float *x = in + (size_t)i * ld + k;
            for (int l = 0; l < LANES; l++) acc[i][l] = fmaf(wl[l], x[l], acc[i][l]);
        }
    }
    for (size_t t = 0; k < k1; k++, t++) {
        float wv = load_w1(w, wrow + k);
        for (int i = 0; i < nr; i++) acc[i][t] = fmaf(wv, in[(size_t)i * ld + k], acc[i][t]);
    }
    for (int i = 0; i < nr; i++) res[i] = tree_sum(acc[i]);
}

static inline float finish(float v, const float *bias, size_t r, int round_bf16) {
    if (bias) v += bias[r];
    return round_bf16 ? mg_round_bf16(v) : v;
}

/* Invariant (and batch-1 fast) kernel: whole-K dot per row. */
static void matmul_whole_k(float *out, const float *in, const mg_matrix *w, const float *bias, int n, int round_bf16) {
    const size_t rows = (size_t)w->rows, cols = (size_t)w->cols;
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        for (int i0 = 0; i0 < n; i0 += ROW_TILE) {
            int nr = n - i0 < ROW_TILE ? n - i0 : ROW_TILE;
            float res[ROW_TILE];
            dot_tile(res, in + (size_t)i0 * cols, cols, nr, w, r, 0, cols);
            for (int i = 0; i < nr; i++) out[(size_t)(i0 + i) * rows + r] = finish(res[i], bias, r, round_bf16);
        }
    }
}

/* K panel width of the fast GEMM for a batch of n rows. */
static size_t fast_panel(int n) { return n <= 4 ? 512 : n <= 16 ? 256 : 128; }

/* Fast kernel for n > 1: K-blocked GEMM, one partial sum per panel. */
static void matmul_k_blocked(float *out, const float *in, const mg_matrix *w, const float *bias, int n,
                             int round_bf16) {
    const size_t rows = (size_t)w->rows, cols = (size_t)w->cols;
    const size_t kc = fast_panel(n);
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        for (int i0 = 0; i0 < n; i0 += ROW_TILE) {
            int nr = n - i0 < ROW_TILE ? n - i0 : ROW_TILE;
            float sum[ROW_TILE] = {0};
            for (size_t k0 = 0; k0 < cols; k0 += kc) {
                size_t k1 = k0 + kc < cols ? k0 + kc : cols;
                float res[ROW_TILE];
                dot_tile(res, in + (size_t)i0 * cols, cols, nr, w, r, k0, k1);
                for (int i = 0; i < nr; i++) sum[i] += res[i];
            }
            for (int i = 0; i < nr; i++) out[(size_t)(i0 + i) * rows + r] = finish(sum[i], bias, r, round_bf16);
        }
    }
}

void mg_cpu_matmul(float *out, const float *in, const mg_matrix *w, const float *bias, int n, mg_kernels kernels,
                   int round_bf16) {
    if (kernels == MG_KERNELS_INVARIANT || n == 1)
        matmul_whole_k(out, in, w, bias, n, round_bf16);
    else
        matmul_k_blocked(out, in, w, bias, n, round_bf16);
}
