/* CPU matmul: out (n, rows) = in (n, cols) x W^T, W (rows, cols) in BF16 or
 * F32.
 *
 * Every output element is one dot product over K = cols computed as LANES
 * interleaved partial sums (lane l adds the products at k = l, l + LANES,
 * l + 2 LANES, ... in increasing k), then a fixed pairwise tree over the
 * lanes. The element's rounding therefore depends only on K and LANES (and
 * the split of K, for the split-K GEMV below).
 * Kernels compute a tile of NR input rows x NO output features at once, so
 * that each weight load feeds NR rows and each input load feeds NO outputs,
 * with NR x NO x LANES / 16 vector accumulators in flight to hide FMA latency;
 * the tile shape never changes an element's arithmetic.
 *
 * Measured on this project's 2-core AVX-512 dev machine (bench/): 16 lanes
 * with a 1x8 tile (one row) or a 4x4 tile (four rows) are the fastest shapes
 * at every batch size, so:
 * - INVARIANT: LANES = 16 at every batch size, tile picked by the batch:
 *   batch-invariant and the fastest kernel, so invariance costs nothing here.
 * - FAST: what engines built on a BLAS do: a separate GEMV for a single row
 *   (32 lanes, 1x4 tile) and the GEMM for several rows (16 lanes). The order
 *   differs between batch 1 and batch > 1, as cuBLAS's kernel choice does
 *   between small and larger M: the source of batch-induced flips on this
 *   backend.
 * OpenMP splits the output features across threads, which does not change
 * any element's reduction order. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../../util/bf16.h"
#include "cpu_ops.h"

static inline float load_w1(const mg_matrix *w, size_t off) {
    return w->dtype == MG_DTYPE_BF16 ? mg_bf16_to_f32(((const uint16_t *)w->data)[off]) : ((const float *)w->data)[off];
}

/* Defines tile_<L>_<NR>_<NO>_<S>: the NR x NO dot products of rows
 * in[0..NR) and weight rows r0 .. r0+NO, written to out (ld = rows). K is cut
 * into S parts at multiples of L (S = 1: the whole of K); each part is
 * reduced as described above and the parts' sums are added left to right. */
#define DEFINE_TILE(L, NR, NO, S)                                                                                \
    static void tile_##L##_##NR##_##NO##_##S(float *out, size_t ldo, const float *in, size_t ldi,              \
                                             const mg_matrix *w, size_t r0, const float *bias, int round_bf16) { \
        const size_t K = (size_t)w->cols, part = K / S / L * L;                                                  \
        float total[NR][NO];                                                                                     \
        memset(total, 0, sizeof total);                                                                          \
        for (int sp = 0; sp < S; sp++) {                                                                         \
            const size_t k0 = sp * part, k1 = sp == S - 1 ? K : k0 + part;                                       \
            const size_t kfull = k0 + (k1 - k0) / L * L;                                                         \
            float acc[NR][NO][L];                                                                                \
            memset(acc, 0, sizeof acc);                                                                          \
            float wl[NO][L];                                                                                     \
            for (size_t k = k0; k < kfull; k += L) {                                                             \
                for (int o = 0; o < NO; o++) {                                                                   \
                    size_t off = (r0 + o) * K + k;                                                               \
                    if (w->dtype == MG_DTYPE_BF16) {                                                             \
                        const uint16_t *p = (const uint16_t *)w->data + off;                                     \
                        for (int l = 0; l < L; l++) wl[o][l] = mg_bf16_to_f32(p[l]);                             \
                    } else {                                                                                     \
                        memcpy(wl[o], (const float *)w->data + off, L * sizeof(float));                         \
                    }                                                                                            \
                }                                                                                                \
                for (int i = 0; i < NR; i++) {                                                                   \
                    const float *x = in + (size_t)i * ldi + k;                                                   \
                    for (int o = 0; o < NO; o++)                                                                 \
                        for (int l = 0; l < L; l++) acc[i][o][l] = fmaf(wl[o][l], x[l], acc[i][o][l]);           \
                }                                                                                                \
            }                                                                                                    \
            for (size_t k = kfull; k < k1; k++)                                                                  \
                for (int o = 0; o < NO; o++) {                                                                   \
                    float wv = load_w1(w, (r0 + o) * K + k);                                                     \
                    for (int i = 0; i < NR; i++)                                                                 \
                        acc[i][o][k - kfull] = fmaf(wv, in[(size_t)i * ldi + k], acc[i][o][k - kfull]);          \
                }                                                                                                \
            for (int i = 0; i < NR; i++)                                                                         \
                for (int o = 0; o < NO; o++) {                                                                   \
                    float *a = acc[i][o];                                                                        \
                    for (int s = L / 2; s >= 1; s /= 2)                                                          \
                        for (int l = 0; l < s; l++) a[l] += a[l + s];                                            \
                    total[i][o] = sp == 0 ? a[0] : total[i][o] + a[0];                                           \
                }                                                                                                \
        }                                                                                                        \
        for (int i = 0; i < NR; i++)                                                                             \
            for (int o = 0; o < NO; o++) {                                                                       \
                float v = total[i][o] + (bias ? bias[r0 + o] : 0.0f);                                            \
                out[(size_t)i * ldo + r0 + o] = round_bf16 ? mg_round_bf16(v) : v;                               \
            }                                                                                                    \
    }

typedef void (*tile_fn)(float *, size_t, const float *, size_t, const mg_matrix *, size_t, const float *, int);

/* A kernel: the main NR x NO tile, a 1 x NO tile for leftover rows, and a
 * 1 x 1 tile for leftover outputs, all with the same LANES (so the same
 * arithmetic per element). */
typedef struct {
    tile_fn main;
    int nr, no;
    tile_fn row;
    tile_fn one;
} kernel;

DEFINE_TILE(16, 1, 8, 1)
DEFINE_TILE(16, 4, 4, 1)
DEFINE_TILE(16, 1, 4, 1)
DEFINE_TILE(16, 1, 1, 1)
DEFINE_TILE(16, 1, 8, 2)
DEFINE_TILE(16, 1, 1, 2)

static const kernel lanes16_row = {tile_16_1_8_1, 1, 8, tile_16_1_8_1, tile_16_1_1_1};
static const kernel lanes16_tile = {tile_16_4_4_1, 4, 4, tile_16_1_4_1, tile_16_1_1_1};
static const kernel gemv_split2 = {tile_16_1_8_2, 1, 8, tile_16_1_8_2, tile_16_1_1_2};

static void run_kernel(const kernel *kn, float *out, const float *in, const mg_matrix *w, const float *bias, int n,
                       int round_bf16) {
    const size_t rows = (size_t)w->rows, cols = (size_t)w->cols;
    const size_t n_blocks = (rows + (size_t)kn->no - 1) / (size_t)kn->no;
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < n_blocks; b++) {
        size_t r0 = b * (size_t)kn->no;
        if (r0 + (size_t)kn->no > rows) { /* leftover outputs: 1 x 1 tiles */
            for (int i = 0; i < n; i++)
                for (size_t r = r0; r < rows; r++)
                    kn->one(out + (size_t)i * rows, rows, in + (size_t)i * cols, cols, w, r, bias, round_bf16);
            continue;
        }
        int i0 = 0;
        for (; i0 + kn->nr <= n; i0 += kn->nr)
            kn->main(out + (size_t)i0 * rows, rows, in + (size_t)i0 * cols, cols, w, r0, bias, round_bf16);
        for (; i0 < n; i0++) /* leftover rows: 1 x NO tiles */
            kn->row(out + (size_t)i0 * rows, rows, in + (size_t)i0 * cols, cols, w, r0, bias, round_bf16);
    }
}

mg_status mg_cpu_matmul(void *out, const void *in, const mg_matrix *w, const float *bias, int n, mg_kernels kernels,
                        int round_bf16) {
    const kernel *kn = n < 4 ? &lanes16_row : &lanes16_tile;
    if (kernels == MG_KERNELS_FAST && n == 1) kn = &gemv_split2;
    run_kernel(kn, out, in, w, bias, n, round_bf16);
    return MG_OK;
}
