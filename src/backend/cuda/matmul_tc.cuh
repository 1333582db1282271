/* Batch-invariant BF16 tensor-core matmul: out (M, N) = x (M, K) w (N, K)^T,
 * FP32 accumulation, for BF16 activations and BF16 weights with K % 32 == 0.
 *
 * THE REDUCTION ORDER (identical in every kernel and path below, for every M;
 * it depends on K alone):
 * with mma.sync.m16n8k16 (A = 16 weight rows, B = 8 activation rows, the
 * "swap AB" orientation, so a row of x is always a B column),
 *   1. K is cut into splits of MG_TC_SPLIT = 256 columns (the last may be
 *      shorter, a multiple of 32);
 *   2. split result: an accumulator starting at +0 is updated by two mma per
 *      32-column block kb, in block order; thread (g = lane / 4, t = lane % 4)
 *      supplies columns kb*32 + 8t + {0,1,2,3} to the first mma's k slots
 *      {2t, 2t+1, 2t+8, 2t+9} and columns 8t + {4..7} to the second's (A and
 *      B alike: the 16 bytes a thread loads are 8 consecutive columns);
 *   3. the splits are taken in groups of MG_TC_GROUP = 4 consecutive splits
 *      (1024 columns; the last group may hold fewer splits): group result
 *      G = (((+0 + s0) + s1) + s2) + s3, FP32 adds in split order;
 *   4. total = ((+0 + G0) + G1) + ..., FP32 adds in group order;
 *   5. then + bias (if any), then the store (rounded to nearest even BF16 for
 *      BF16 outputs).
 * Every "+0 +" is a real FP32 add (it turns -0 into +0), done the same way
 * in every path. An element's value depends only on its row of x, its
 * weight row and K: never on M, on the other rows, on the tile shapes, on
 * how K is spread over blocks, or on which kernel ran.
 *
 * mm_skinny (small M): a block owns 16 weight rows x (8 * NT) activation
 * rows; its 8 warps compute the splits (warp w takes splits base + w of each
 * round of 8), reading weights straight from global memory with 16-byte
 * loads; the split results are folded through shared memory (steps 3-4).
 * Many blocks per matrix, every weight byte read once: made for decode.
 * mm_tiled (larger M): a block owns BM weight rows x BN activation rows, K
 * staged through shared memory with a cp.async pipeline; each warp keeps its
 * split accumulator and group result in registers (the total in registers
 * or shared memory).
 *
 * K parallelism (both kernels): when a matrix has too few blocks to fill
 * the GPU, grid.z cuts K into chunks of whole groups (gpb groups per
 * block). Each block then writes its group results G_i (FP32) to a
 * workspace (groups, tiles, tile elements); the last block of a tile to
 * finish (an atomic counter per tile, reset by that block) folds all of the
 * tile's G_i in group order (step 4), adds the bias and stores. Which block
 * is last never changes a bit: the fold order is fixed. One stream, no host
 * synchronisation (after the first call of a size), graph-capturable. */
#ifndef MG_MATMUL_TC_CUH
#define MG_MATMUL_TC_CUH

#include "cuda_common.cuh"

#define MG_TC_SPLIT 256 /* K columns per split: fixed, never depends on M */
#define MG_TC_GROUP 4   /* splits per group: fixed, never depends on M or N */
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
    int n_groups;  /* ceil(K / (MG_TC_SPLIT * MG_TC_GROUP)) */
    int gpb;       /* groups per block along grid.z (n_groups when gridDim.z == 1) */
    float *ws;     /* gridDim.z > 1: (n_groups, gridDim.x * gridDim.y, tile elements) */
    float *groups; /* group mode: (n_groups, M, seg[0].n) FP32 group results G_i, written as they
                      end (one segment); nothing is folded or stored to seg[0].out */
    unsigned *cnt; /* gridDim.z > 1: one zeroed counter per tile */
} mg_tc_args;

/* Launches the tensor-core matmul (skinny for M <= mg_cuda.skinny_max_rows,
 * tiled otherwise). out_f32 selects FP32 outputs (logits) over BF16. */
mg_status mg_tc_matmul(const mg_cuda_mm_part *parts, int n_parts, const void *x, int M, int K, int out_f32);

/* Group mode: writes the group results G_i (step 3 of the order) of
 * out = x w^T to groups (n_groups, M, N), FP32, instead of folding them;
 * folding them in group order from +0 (mg_cuda_fold) gives the matmul's
 * total bit for bit. Tensor parallelism folds the groups of all ranks. */
mg_status mg_tc_matmul_groups(float *groups, const bf16 *w, int N, const void *x, int M, int K);

#endif
