/* Batch-invariant BF16 tensor-core matmul: out (M, N) = x (M, K) w (N, K)^T,
 * FP32 accumulation, for BF16 activations and BF16 weights with K % 32 == 0.
 *
 * THE REDUCTION ORDER (identical in both kernels below, for every M):
 * with mma.sync.m16n8k16 (A = 16 weight rows, B = 8 activation rows, the
 * "swap AB" orientation, so a row of x is always a B column),
 *   - K is cut into splits of MG_TC_SPLIT columns (the last may be shorter);
 *   - within a split, an accumulator starting at 0 is updated by two mma per
 *     32-column block kb, in block order; thread (g = lane / 4, t = lane % 4)
 *     supplies columns kb*32 + 8t + {0,1,2,3} to the first mma's k slots
 *     {2t, 2t+1, 2t+8, 2t+9} and columns 8t + {4..7} to the second's (A and
 *     B alike: the 16 bytes a thread loads are 8 consecutive columns);
 *   - the split results are added in split order into a total starting at 0;
 *   - then + bias, then the store (rounded to BF16 for BF16 outputs).
 * An element's value depends only on its row of x, its weight row, K and
 * MG_TC_SPLIT: never on M, on the other rows, or on which kernel ran.
 *
 * mm_skinny (small M): a block owns 16 weight rows x (8 * NT) activation
 * rows; its 8 warps compute the splits (warp w takes splits w, w + 8, ...)
 * reading weights straight from global memory with 16-byte loads, and the
 * split results are folded in order through shared memory. Many blocks per
 * matrix, every weight byte read once: made for memory-bound decode.
 * mm_tiled (large M): a block owns BM weight rows x BN activation rows, K
 * staged through shared memory in 32-column blocks with a 4-stage cp.async
 * pipeline; each warp keeps its split accumulator and the running total in
 * registers. Made for prefill. */
#ifndef MG_MATMUL_TC_CUH
#define MG_MATMUL_TC_CUH

#include "cuda_common.cuh"

#define MG_TC_SPLIT 256 /* K columns per split: fixed, never depends on M */
#define MG_TC_MAX_SEGS 4

/* A matmul over up to MG_TC_MAX_SEGS weight matrices sharing the input:
 * weight-row tiles of every segment are numbered consecutively. */
typedef struct {
    const bf16 *w;     /* (n, K) */
    const float *bias; /* (n) or NULL */
    void *out;         /* (M, n), bf16 or float */
    int n;
    int tile0; /* first tile index of this segment */
} mg_tc_seg;

typedef struct {
    mg_tc_seg seg[MG_TC_MAX_SEGS];
    int n_seg;
    int M, K;
    const bf16 *x; /* (M, K) */
} mg_tc_args;

/* Launches the tensor-core matmul (skinny for M <= mg_cuda.skinny_max_rows,
 * tiled otherwise). out_f32 selects FP32 outputs (logits) over BF16. */
mg_status mg_tc_matmul(const mg_cuda_mm_part *parts, int n_parts, const void *x, int M, int K, int out_f32);

#endif
