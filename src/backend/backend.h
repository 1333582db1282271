/* The op table a backend fills in. The forward pass (src/engine/forward.c)
 * is written once against these ops; the CPU backend is the specification
 * and the CUDA backend is checked against it (tests/test_cuda_ops.c).
 *
 * Memory. Every buffer an op reads or writes lives in the backend's memory
 * (host memory for the CPU backend, device memory for CUDA) and is obtained
 * with `alloc`; the host moves bytes in and out with upload/download. Model
 * weights reach the backend through weights_acquire, KV pools through
 * mg_kv_pool_init_on (kv_cache.h), and the rows of a batch through
 * rows_prepare.
 *
 * Activations. An activation buffer holds n logical values. `round_bf16`
 * != 0 rounds every output value to the nearest BF16 value, which is how the
 * engine follows the numerics contract (BF16 at op boundaries, FP32
 * accumulation); 0 keeps FP32 (--fp32 mode). A backend chooses how it
 * stores activation values for each setting: act_size(round_bf16) bytes per
 * value, at most 4 (the CPU stores FP32 always; CUDA stores BF16 when
 * round_bf16, which is lossless because every value is a BF16 value there).
 * Callers size buffers with 4 bytes per value, address row i of a buffer as
 * base + i * dim * act_size(round_bf16), use the same round_bf16 for every
 * op of a forward pass, and move values to and from FP32 host arrays with
 * act_upload / act_download. Logits are plain FP32 arrays.
 *
 * mg_kernels selects the reduction orders: FAST may pick a different
 * reduction order per batch size (as production kernels do, and the source
 * of batch-induced flips); INVARIANT computes every row with an order that
 * depends only on fixed dims (K, head_dim, KV length), never on the batch.
 *
 * Every op returns MG_OK or an error status with a message (MG_ERR_BACKEND
 * for device failures, MG_ERR_OOM for memory). Ops are issued in order on
 * one queue; download/sync wait for everything issued before them. */
#ifndef MG_BACKEND_H
#define MG_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "../engine/kv_cache.h"
#include "../engine/sampler.h"
#include "../model/model.h"

typedef enum { MG_KERNELS_FAST = 0, MG_KERNELS_INVARIANT = 1 } mg_kernels;

/* Rows of a batch as the ops see them: row i feeds token tokens[i] at
 * position positions[i] of the sequence whose block table is seqs[i]; in
 * attention it attends to positions 0..positions[i] of that sequence, whose
 * K/V must already be stored. The arrays are host memory; rows_prepare makes
 * the backend's own copy (`dev`) before the first op that takes the rows. */
typedef struct {
    int n_rows;
    const int32_t *tokens;    /* (n_rows) token ids (embed only; may be NULL otherwise) */
    const int32_t *positions; /* (n_rows) */
    mg_kv_seq *const *seqs;   /* (n_rows) */
    const void *dev;          /* backend-private copy from rows_prepare; NULL on host backends */
} mg_attn_rows;

/* One output of matmul_multi: out = in x w^T (+ bias). */
typedef struct {
    void *out;           /* activation (n, w->rows) */
    const mg_matrix *w;  /* (rows, cols) in backend memory */
    const float *bias;   /* (w->rows) in backend memory, or NULL */
} mg_matmul_part;

typedef struct mg_backend_ops {
    const char *name;
    int host_memory; /* 1: buffers are ordinary host pointers (CPU) */

    /* ---- memory ---------------------------------------------------------- */

    /* Allocates `bytes` (> 0) of zero-filled backend memory, aligned to at
     * least 256 bytes on devices. MG_ERR_OOM with the size on failure. */
    mg_status (*alloc)(void **out, size_t bytes);
    /* Frees a buffer from alloc (NULL is fine). Waits for pending ops. */
    void (*free)(void *p);
    /* Host -> backend, backend -> host (waits for pending ops), and backend
     * -> backend copies, and zero fill. */
    mg_status (*upload)(void *dst, const void *src, size_t bytes);
    mg_status (*download)(void *dst, const void *src, size_t bytes);
    mg_status (*copy)(void *dst, const void *src, size_t bytes);
    mg_status (*zero)(void *dst, size_t bytes);
    /* Waits until every op issued so far has finished. */
    mg_status (*sync)(void);

    /* Bytes per activation value for this setting (4 on the CPU). */
    size_t (*act_size)(int round_bf16);
    /* Writes n FP32 host values into an activation buffer (rounded to BF16
     * when round_bf16), or reads n values back as FP32. */
    mg_status (*act_upload)(void *dst, const float *src, size_t n, int round_bf16);
    mg_status (*act_download)(float *dst, const void *src, size_t n, int round_bf16);

    /* Makes the model's weights available to the backend: *out mirrors
     * model->weights with every data pointer in backend memory (the CPU
     * returns &model->weights itself). Mirrors are shared per model and
     * reference counted: each successful acquire needs one release. */
    mg_status (*weights_acquire)(const mg_weights **out, const mg_model *model);
    void (*weights_release)(const mg_model *model);

    /* Makes the backend's copy of the rows (tokens, positions, block tables)
     * and stores it in rows->dev; valid until the next rows_prepare. */
    mg_status (*rows_prepare)(mg_attn_rows *rows);

    /* ---- compute ----------------------------------------------------------- */

    /* out[i, :] = table[tokens[i], :] for each row of `rows`. */
    mg_status (*embed)(void *out /* (n, dim) */, const mg_matrix *table, const mg_attn_rows *rows, int round_bf16);

    /* out[i] = weight * normalize(in[i]) with normalize(x) = x / sqrt(mean(x^2) + eps);
     * with round_bf16 the normalized value and the product are each rounded
     * (as HF's LlamaRMSNorm does in BF16). out may alias in. */
    mg_status (*rmsnorm)(void *out /* (n, dim) */, const void *in /* (n, dim) */, const float *weight /* (dim) */,
                         int n, int dim, float eps, int round_bf16);

    /* x += y (rounded as `add`), then out = rmsnorm(x): the residual add
     * fused with the next norm. Same values as add then rmsnorm. */
    mg_status (*add_rmsnorm)(void *x /* (n, dim) */, const void *y /* (n, dim) */, void *out /* (n, dim) */,
                             const float *weight /* (dim) */, int n, int dim, float eps, int round_bf16);

    /* out[i, r] = sum_c in[i, c] * w[r, c] (+ bias[r]). */
    mg_status (*matmul)(void *out /* (n, w->rows) */, const void *in /* (n, w->cols) */, const mg_matrix *w,
                        const float *bias /* (w->rows) or NULL */, int n, mg_kernels kernels, int round_bf16);

    /* Several matmuls of one input (all parts have the same w->cols): the
     * same values as one matmul call per part, in one launch where the
     * backend can. n_parts <= 4. FAST may round differently from the
     * separate calls (within the matmul's tolerance): CUDA runs parts whose
     * weights lie back to back in memory as one wider GEMM, whose reduction
     * order is its own. INVARIANT and FP32 numerics: the same bits. */
    mg_status (*matmul_multi)(const mg_matmul_part *parts, int n_parts, const void *in /* (n, cols) */, int n,
                              mg_kernels kernels, int round_bf16);

    /* FP32 logits (never rounded, so margins are exact):
     * out[i, r] = sum_c in[i, c] * w[r, c], in an activation buffer. */
    mg_status (*logits)(float *out /* (n, w->rows) */, const void *in /* (n, w->cols) */, const mg_matrix *w, int n,
                        mg_kernels kernels, int round_bf16);

    /* Rotates q and k in place with HF's rotate-half RoPE at each row's
     * position (inv_freq holds the possibly llama3-scaled inverse
     * frequencies), then writes row i's rotated K and its V into the cache at
     * (seqs[i], positions[i]) of `layer`. */
    mg_status (*rope_kv_store)(void *q /* (n, n_heads, head_dim) */, void *k /* (n, n_kv_heads, head_dim) */,
                               const void *v /* (n, n_kv_heads, head_dim) */, mg_kv_pool *pool, int layer,
                               const mg_attn_rows *rows, int n_heads, const float *inv_freq /* (head_dim / 2) */,
                               int round_bf16);

    /* Causal GQA attention of each row over its sequence's cached K/V. */
    mg_status (*attention)(void *out /* (n, n_heads * head_dim) */, const void *q /* (n, n_heads * head_dim) */,
                           const mg_kv_pool *pool, int layer, const mg_attn_rows *rows, int n_heads,
                           mg_kernels kernels, int round_bf16);

    /* x += y elementwise. */
    mg_status (*add)(void *x /* (n) */, const void *y /* (n) */, size_t n, int round_bf16);

    /* out = silu(gate) * up, with silu(g) rounded before the product when
     * round_bf16 (as HF's act_fn(gate) * up in BF16). out may alias gate. */
    mg_status (*swiglu)(void *out /* (n) */, const void *gate /* (n) */, const void *up /* (n) */, size_t n,
                        int round_bf16);

    /* out[i] = mg_argmax_margin(logits row i): argmax (lowest id among
     * equal maxima), runner-up and FP32 top-1/top-2 margin, computed where
     * the logits are. out is backend memory. */
    mg_status (*argmax)(mg_argmax *out /* (n) */, const float *logits /* (n, vocab) */, int n, int vocab);

    /* ---- graphs (optional: NULL where the backend has none) ------------- */

    /* Runs issue(ctx), which enqueues the device work of one forward pass
     * (no host reads, no allocation once warm), through a graph cache: the
     * first call with a key runs issue directly, the next one captures it
     * into a graph and launches that, later calls launch the graph without
     * calling issue. A capture that fails runs issue directly instead.
     * `key` (key_bytes, compared bytewise) must identify everything the
     * launches of issue depend on other than device data (shapes, buffer
     * addresses, modes); the backend itself drops graphs whose own buffers
     * (rows metadata, scratch) have moved. key NULL: run issue directly
     * (a tensor-parallel backend runs it on every rank either way). */
    mg_status (*graph_run)(const void *key, size_t key_bytes, mg_status (*issue)(void *ctx), void *ctx);

    /* ---- tensor parallelism (src/backend/tp/) ------------------------------ */

    /* FP32 partial products of matmul over consecutive groups of
     * MG_MATMUL_GROUP input columns (the last group may be shorter):
     * out[g, i, r] = sum over c in group g of in[i, c] * w[r, c]. On CUDA
     * (BF16 numerics only) these are exactly the group results of the
     * invariant matmul, so fold over all groups gives its output bit for
     * bit; the CPU sums each group sequentially. NULL where unsupported. */
    mg_status (*matmul_groups)(float *out /* (n_groups, n, w->rows) */, const void *in /* (n, w->cols) */,
                               const mg_matrix *w, int n, int round_bf16);
    /* out[i] = ((+0 + parts[0, i]) + parts[1, i]) + ..., FP32 adds in part
     * order, stored as an activation (rounded when round_bf16). */
    mg_status (*fold)(void *out /* (count) */, const float *parts /* (n_parts, count) */, int n_parts, size_t count,
                      int round_bf16);
    /* `rows` rows of `width` bytes from src (row pitch spitch) to dst (row
     * pitch dpitch), backend to backend. */
    mg_status (*copy2d)(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t rows);
    /* Memory for a KV pool's K or V (NULL: alloc). A tensor-parallel backend
     * splits it by KV head over its ranks; mg_kv_pool_init_on uses it. */
    mg_status (*alloc_kv)(void **out, size_t bytes);
    /* Ranks a forward pass is split over (1 for a single device). */
    int tp_ranks;
} mg_backend_ops;

/* Input columns per group of matmul_groups (the invariant matmul's group). */
#define MG_MATMUL_GROUP 1024

/* The CPU reference backend (OpenMP across output rows). */
const mg_backend_ops *mg_backend_cpu(void);

/* The CUDA backend on device 0, initialised on first call. Returns NULL with
 * the reason in mg_error_last() when the program was built without CUDA or
 * no usable device is present. */
const mg_backend_ops *mg_backend_cuda(void);

/* The same op table on CUDA device `device` for the calling thread: every
 * later op of this thread runs on that device (its own stream, scratch,
 * weights and graphs). Threads that never call it use device 0. NULL with
 * the reason when the device is absent or unusable. */
const mg_backend_ops *mg_backend_cuda_on(int device);

/* What the CUDA backend's invariant GEMMs run on device 0: "pinned
 * cuBLASLt: N x K: algo .. tile .. (worst ..x); ..." for the shapes used so
 * far, or "own tensor-core kernels (MG_CUDA_INVARIANT_GEMM=tc)"; "" without
 * CUDA. Into buf (truncated to size). */
void mg_cuda_invariant_gemm_describe(char *buf, size_t size);

/* What the CUDA backend's FAST GEMMs run on device 0: "timed cuBLASLt
 * choices: N x K: M gain ..." (gain: the heuristic's first pick's time over
 * the chosen algorithm's, per batch-size bucket), "cuBLASLt heuristic
 * (MG_CUDA_FAST_TUNE=0)" or "own tensor-core kernels (MG_CUDA_FAST_GEMM=tc)";
 * "" without CUDA. Into buf (truncated to size). */
void mg_cuda_fast_gemm_describe(char *buf, size_t size);

/* "cpu" -> mg_backend_cpu(), "cuda" -> mg_backend_cuda(); "auto" (or NULL)
 * picks CUDA when it is available, else the CPU. NULL with a message for an
 * unknown name or an unavailable backend. */
const mg_backend_ops *mg_backend_by_name(const char *name);

#endif
