/* The CUDA backend's op table: context, memory, activation transfer,
 * weights upload and rows metadata. The compute ops live one family per
 * file (embed_norm.cu, rope.cu, attention.cu, matmul*.cu, argmax.cu).
 *
 * Everything runs on one non-blocking stream in issue order. Uploads from
 * pageable host memory return once the source has been staged, so the
 * caller may reuse its buffer at once; downloads wait for the stream. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"

extern "C" {
#include "../../util/bf16.h"
}

mg_cuda_ctx mg_cuda_devs[MG_CUDA_MAX_DEV];
thread_local int mg_cuda_dev;

mg_status mg_cuda_fail(cudaError_t err, const char *what, const char *file, int line) {
    /* Clear a sticky launch error so the next call reports its own. */
    (void)cudaGetLastError();
    return mg_error_set(err == cudaErrorMemoryAllocation ? MG_ERR_OOM : MG_ERR_BACKEND,
                        "CUDA error %s (%s) in %s at %s:%d", cudaGetErrorName(err), cudaGetErrorString(err), what,
                        file, line);
}

/* ---- scratch -------------------------------------------------------------- */

typedef struct {
    void *p;
    size_t bytes;
} scratch_buf;
static scratch_buf scratch_devs[MG_CUDA_MAX_DEV][MG_SCRATCH_COUNT]; /* per device */

mg_status mg_cuda_scratch(int slot, size_t bytes, void **out) {
    scratch_buf *scratch = scratch_devs[mg_cuda_dev];
    if (bytes > scratch[slot].bytes) {
        MG_CUDA_TRY(cudaStreamSynchronize(mg_cuda.stream));
        if (scratch[slot].p) MG_CUDA_TRY(cudaFree(scratch[slot].p));
        scratch[slot].p = NULL;
        scratch[slot].bytes = 0;
        size_t grown = bytes + bytes / 4;
        MG_CUDA_TRY(cudaMalloc(&scratch[slot].p, grown));
        scratch[slot].bytes = grown;
        mg_cuda.buffers_gen++;
    }
    *out = scratch[slot].p;
    return MG_OK;
}

/* ---- memory ------------------------------------------------------------- */

static mg_status cuda_alloc(void **out, size_t bytes) {
    *out = NULL;
    void *p;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 256);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        return mg_error_set(MG_ERR_OOM, "cannot allocate %zu bytes of GPU memory (%zu of %zu free): %s", bytes,
                            free_b, total_b, cudaGetErrorString(e));
    }
    e = cudaMemsetAsync(p, 0, bytes ? bytes : 256, mg_cuda.stream);
    if (e != cudaSuccess) {
        cudaFree(p);
        return mg_cuda_fail(e, "cudaMemsetAsync", __FILE__, __LINE__);
    }
    *out = p;
    return MG_OK;
}

/* Freeing a buffer drops every recorded graph's claim to be current: a
 * later pass may reuse a forward context's host address (the graph key)
 * with new device buffers, and the graph recorded the old ones. */
static void cuda_free(void *p) {
    if (!p) return;
    cudaStreamSynchronize(mg_cuda.stream);
    cudaFree(p);
    mg_cuda.buffers_gen++;
}

static mg_status cuda_upload(void *dst, const void *src, size_t bytes) {
    if (bytes) MG_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, mg_cuda.stream));
    return MG_OK;
}

static mg_status cuda_download(void *dst, const void *src, size_t bytes) {
    if (bytes) MG_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, mg_cuda.stream));
    MG_CUDA_TRY(cudaStreamSynchronize(mg_cuda.stream));
    return MG_OK;
}

static mg_status cuda_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) MG_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, mg_cuda.stream));
    return MG_OK;
}

static mg_status cuda_copy2d(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t rows) {
    if (width && rows)
        MG_CUDA_TRY(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows, cudaMemcpyDeviceToDevice, mg_cuda.stream));
    return MG_OK;
}

static mg_status cuda_zero(void *dst, size_t bytes) {
    if (bytes) MG_CUDA_TRY(cudaMemsetAsync(dst, 0, bytes, mg_cuda.stream));
    return MG_OK;
}

static mg_status cuda_sync(void) {
    MG_CUDA_TRY(cudaStreamSynchronize(mg_cuda.stream));
    return MG_OK;
}

static size_t cuda_act_size(int round_bf16) { return round_bf16 ? 2 : 4; }

static mg_status cuda_act_upload(void *dst, const float *src, size_t n, int round_bf16) {
    if (!round_bf16) return cuda_upload(dst, src, n * sizeof(float));
    uint16_t *tmp = (uint16_t *)malloc((n ? n : 1) * sizeof(uint16_t));
    if (!tmp) return mg_error_set(MG_ERR_OOM, "cannot stage %zu activation values", n);
    for (size_t i = 0; i < n; i++) tmp[i] = mg_f32_to_bf16(src[i]);
    mg_status st = cuda_upload(dst, tmp, n * sizeof(uint16_t));
    free(tmp);
    return st;
}

static mg_status cuda_act_download(float *dst, const void *src, size_t n, int round_bf16) {
    if (!round_bf16) return cuda_download(dst, src, n * sizeof(float));
    uint16_t *tmp = (uint16_t *)malloc((n ? n : 1) * sizeof(uint16_t));
    if (!tmp) return mg_error_set(MG_ERR_OOM, "cannot stage %zu activation values", n);
    mg_status st = cuda_download(tmp, src, n * sizeof(uint16_t));
    for (size_t i = 0; st == MG_OK && i < n; i++) dst[i] = mg_bf16_to_f32(tmp[i]);
    free(tmp);
    return st;
}

/* ---- weights ------------------------------------------------------------- */

/* One uploaded model: a device mirror of its mg_weights, the device
 * allocations behind it, and a reference count. */
typedef struct {
    const mg_model *model;
    int refs;
    mg_weights w;
    mg_layer_weights *layers;
    void **allocs;
    int n_allocs, cap_allocs;
} weights_entry;

#define MAX_MODELS 8
static weights_entry models_devs[MG_CUDA_MAX_DEV][MAX_MODELS]; /* per device */

static void entry_free(weights_entry *e) {
    cudaStreamSynchronize(mg_cuda.stream);
    mg_cuda.buffers_gen++; /* graphs recorded these weights (see cuda_free) */
    for (int i = 0; i < e->n_allocs; i++) cudaFree(e->allocs[i]);
    free(e->allocs);
    free(e->layers);
    memset(e, 0, sizeof *e);
}

/* A new device buffer of `bytes` (> 0), recorded in e->allocs, so that
 * entry_free frees it. MG_ERR_OOM with the size and free memory on failure. */
static mg_status alloc_owned(weights_entry *e, size_t bytes, void **out) {
    *out = NULL;
    if (e->n_allocs == e->cap_allocs) {
        int cap = e->cap_allocs ? 2 * e->cap_allocs : 64;
        void **a = (void **)realloc(e->allocs, (size_t)cap * sizeof(void *));
        if (!a) return mg_error_set(MG_ERR_OOM, "cannot grow the weight table");
        e->allocs = a;
        e->cap_allocs = cap;
    }
    void *p;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        return mg_error_set(MG_ERR_OOM, "cannot allocate %zu bytes of GPU memory for weights (%zu of %zu free)",
                            bytes, free_b, total_b);
    }
    e->allocs[e->n_allocs++] = p;
    *out = p;
    return MG_OK;
}

/* Copies `bytes` of host data to a new device buffer owned by e (NULL src:
 * *out = NULL, nothing allocated). */
static mg_status upload_new(weights_entry *e, const void *src, size_t bytes, void **out) {
    *out = NULL;
    if (!src) return MG_OK;
    void *p;
    MG_TRY(alloc_owned(e, bytes, &p));
    /* Synchronous copy: the host data may be an mmap that is unmapped later. */
    MG_CUDA_TRY(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice));
    *out = p;
    return MG_OK;
}

static size_t matrix_bytes(const mg_matrix *m) {
    return (size_t)m->rows * (size_t)m->cols * (m->dtype == MG_DTYPE_BF16 ? 2 : 4);
}

static mg_status upload_matrix(weights_entry *e, const mg_matrix *src, mg_matrix *dst) {
    *dst = *src;
    void *p;
    MG_TRY(upload_new(e, src->data, matrix_bytes(src), &p));
    dst->data = p;
    return MG_OK;
}

/* Uploads n (<= 4) matrices that one matmul_multi reads (q/k/v)
 * back to back into ONE device buffer owned by e, in order: dst[p] is src[p]
 * with data pointing at part p's own rows, so every op sees its usual matrix
 * and the FAST path finds them stacked (matmul.cu parts_stacked) and runs one
 * GEMM. Stacked only when all are present and share dtype and cols, and each
 * part but the last is a multiple of 256 bytes (every part keeps cudaMalloc's
 * alignment); otherwise each is uploaded on its own. Same bytes either way. */
static mg_status upload_stacked(weights_entry *e, const mg_matrix *const *src, mg_matrix *const *dst, int n) {
    int stack = 1;
    size_t total = 0;
    for (int p = 0; p < n; p++) {
        stack &= src[p]->data && src[p]->dtype == src[0]->dtype && src[p]->cols == src[0]->cols &&
                 (p == n - 1 || matrix_bytes(src[p]) % 256 == 0);
        total += matrix_bytes(src[p]);
    }
    if (!stack || total == 0) {
        for (int p = 0; p < n; p++) MG_TRY(upload_matrix(e, src[p], dst[p]));
        return MG_OK;
    }
    void *base; /* (sum of rows, cols): part p at the sum of the parts' bytes before it */
    MG_TRY(alloc_owned(e, total, &base));
    size_t off = 0;
    for (int p = 0; p < n; p++) {
        *dst[p] = *src[p];
        dst[p]->data = (char *)base + off;
        /* Synchronous copy, as upload_new. */
        MG_CUDA_TRY(cudaMemcpy((char *)base + off, src[p]->data, matrix_bytes(src[p]), cudaMemcpyHostToDevice));
        off += matrix_bytes(src[p]);
    }
    return MG_OK;
}

static mg_status upload_vec(weights_entry *e, const float *src, size_t n, const float **dst) {
    void *p;
    MG_TRY(upload_new(e, src, n * sizeof(float), &p));
    *dst = (const float *)p;
    return MG_OK;
}

static mg_status upload_model(weights_entry *e, const mg_model *model) {
    const mg_config *c = &model->config;
    const mg_weights *w = &model->weights;
    const size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    e->layers = (mg_layer_weights *)calloc((size_t)c->n_layers, sizeof(mg_layer_weights));
    if (!e->layers) return mg_error_set(MG_ERR_OOM, "cannot allocate the layer table");
    e->w.layers = e->layers;
    MG_TRY(upload_matrix(e, &w->tok_embed, &e->w.tok_embed));
    if (w->lm_head.data == w->tok_embed.data && w->lm_head.rows == w->tok_embed.rows)
        e->w.lm_head = e->w.tok_embed; /* tied: one copy */
    else
        MG_TRY(upload_matrix(e, &w->lm_head, &e->w.lm_head));
    MG_TRY(upload_vec(e, w->final_norm, (size_t)c->dim, &e->w.final_norm));
    for (int l = 0; l < c->n_layers; l++) {
        const mg_layer_weights *s = &w->layers[l];
        mg_layer_weights *d = &e->layers[l];
        MG_TRY(upload_vec(e, s->attn_norm, (size_t)c->dim, &d->attn_norm));
        MG_TRY(upload_vec(e, s->mlp_norm, (size_t)c->dim, &d->mlp_norm));
        /* q/k/v stacked: one GEMM instead of three, two of them narrow (k, v).
         * gate/up are not: at 8B shapes one GEMM over both ran no faster than
         * two (H100, 2026-11-23: 84 vs 87 us at batch 1, 88 vs 89 at batch 64)
         * and the scatter of its output cost more than that. */
        const mg_matrix *qkv_src[3] = {&s->wq, &s->wk, &s->wv};
        mg_matrix *qkv_dst[3] = {&d->wq, &d->wk, &d->wv};
        MG_TRY(upload_stacked(e, qkv_src, qkv_dst, 3));
        MG_TRY(upload_matrix(e, &s->wo, &d->wo));
        MG_TRY(upload_matrix(e, &s->w_gate, &d->w_gate));
        MG_TRY(upload_matrix(e, &s->w_up, &d->w_up));
        MG_TRY(upload_matrix(e, &s->w_down, &d->w_down));
        MG_TRY(upload_vec(e, s->bq, qd, &d->bq));
        MG_TRY(upload_vec(e, s->bk, kvd, &d->bk));
        MG_TRY(upload_vec(e, s->bv, kvd, &d->bv));
        MG_TRY(upload_vec(e, s->bo, (size_t)c->dim, &d->bo));
    }
    return MG_OK;
}

/* Tunes the GEMMs of the model's shapes (layer 0's matrices, as forward.c
 * passes them, and the LM head: FAST's algorithms per batch-size bucket and
 * the pinned invariant ones) right after the upload, so that the first
 * request does not wait for it (a few seconds at Llama-3.1-8B shapes on an
 * H100). Other layers' shapes are the same; one that is not (its parts
 * stacked differently) gets the pin tuned on first use and FAST's
 * heuristic picks. */
static mg_status prepare_gemms(const mg_weights *w, const mg_config *c) {
    if (c->n_layers < 1) return MG_OK;
    const mg_layer_weights *lw = &w->layers[0];
    /* The outputs are not touched: only the shapes, weights and biases matter. */
    const mg_matmul_part qkv[3] = {{NULL, &lw->wq, lw->bq}, {NULL, &lw->wk, lw->bk}, {NULL, &lw->wv, lw->bv}};
    const mg_matmul_part gate_up[2] = {{NULL, &lw->w_gate, NULL}, {NULL, &lw->w_up, NULL}};
    const mg_matmul_part wo = {NULL, &lw->wo, lw->bo}, down = {NULL, &lw->w_down, NULL};
    const mg_matmul_part head = {NULL, &w->lm_head, NULL};
    MG_TRY(mg_cuda_matmul_prepare(qkv, 3, 0));
    MG_TRY(mg_cuda_matmul_prepare(&wo, 1, 0));
    MG_TRY(mg_cuda_matmul_prepare(gate_up, 2, 0));
    MG_TRY(mg_cuda_matmul_prepare(&down, 1, 0));
    return mg_cuda_matmul_prepare(&head, 1, 1);
}

static mg_status cuda_weights_acquire(const mg_weights **out, const mg_model *model) {
    weights_entry *models = models_devs[mg_cuda_dev];
    *out = NULL;
    for (int i = 0; i < MAX_MODELS; i++)
        if (models[i].model == model) {
            models[i].refs++;
            *out = &models[i].w;
            return MG_OK;
        }
    for (int i = 0; i < MAX_MODELS; i++) {
        if (models[i].model) continue;
        weights_entry *e = &models[i];
        mg_status st = upload_model(e, model);
        /* cudaMemcpy from pageable memory may return before its DMA lands,
         * on the legacy stream, which our non-blocking stream does not wait
         * for: finish it before any kernel reads the weights. */
        if (st == MG_OK) {
            cudaError_t err = cudaDeviceSynchronize();
            if (err != cudaSuccess) st = mg_cuda_fail(err, "cudaDeviceSynchronize", __FILE__, __LINE__);
        }
        if (st == MG_OK) st = prepare_gemms(&e->w, &model->config);
        if (st != MG_OK) {
            entry_free(e);
            return st;
        }
        e->model = model;
        e->refs = 1;
        *out = &e->w;
        return MG_OK;
    }
    return mg_error_set(MG_ERR_FULL, "more than %d models on the GPU at once", MAX_MODELS);
}

static void cuda_weights_release(const mg_model *model) {
    weights_entry *models = models_devs[mg_cuda_dev];
    for (int i = 0; i < MAX_MODELS; i++)
        if (models[i].model == model && --models[i].refs == 0) entry_free(&models[i]);
}

/* ---- rows ------------------------------------------------------------------ */

/* Fast-path chunk length of a row with `len` positions in a pass of
 * `n_rows` rows: the power of two (32..MG_ATTN_CHUNK) nearest above len /
 * target, target = the chunks per row that fill the GPU MG_CUDA_ATTN_FILL
 * (2) times over (flash-decoding style: the order depends on the batch
 * size, as production kernels do). It depends on the row's own length and the pass's row count
 * only, and rows_prepare never groups rows of different lengths, so a row
 * gets the same chunks (multiples of the length, from position 0) whatever
 * its group-mates: a pass of a given shape computes each row the same way
 * whatever else is in it, which LLM-42's fixed-shape verify pass relies on
 * (a request verified early as a filler has its windows elsewhere). */
static int fast_chunk_len(int len, int n_rows) {
    /* Blocks = items x KV heads; assume 8 KV heads. */
    const long blocks = (long)mg_cuda.attn_fill * mg_cuda.n_sm;
    const long target = (blocks + 8L * n_rows - 1) / (8L * n_rows);
    int cl = 32;
    while (cl < MG_ATTN_CHUNK && (long)cl * target < len) cl *= 2;
    return cl;
}

/* The layout of the rows metadata: graphs recorded addresses inside it, so
 * a graph is replayed only while the layout it was captured with holds. */
typedef struct {
    const int32_t *buf;
    int n_rows, bt_cap, items_cap, parts_cap;
    int group_rows[2]; /* per kernel mode: the attention launch depends on it */
    unsigned buffers_gen;
} rows_layout;
/* Rows state per device (RS: the calling thread's device). */
typedef struct {
    mg_cuda_rows rows_dev;
    /* Pinned staging for the packed metadata, so that the upload is
     * asynchronous (no host wait inside a forward pass); `rows_uploaded`
     * marks when the last upload has read it, before the staging is
     * rewritten. */
    int32_t *rows_host;
    size_t rows_host_cap; /* int32 entries */
    cudaEvent_t rows_uploaded;
    int32_t *rows_buf; /* device copy */
    size_t rows_buf_cap;
    rows_layout rows_cur;
} rows_state;
static rows_state rows_devs[MG_CUDA_MAX_DEV];
#define RS (rows_devs[mg_cuda_dev])

static int layout_eq(const rows_layout *a, const rows_layout *b) {
    return a->buf == b->buf && a->n_rows == b->n_rows && a->bt_cap == b->bt_cap && a->items_cap == b->items_cap &&
           a->parts_cap == b->parts_cap && a->group_rows[0] == b->group_rows[0] &&
           a->group_rows[1] == b->group_rows[1] && a->buffers_gen == b->buffers_gen;
}

static size_t pow2_at_least(size_t v, size_t lo) {
    size_t p = lo;
    while (p < v) p *= 2;
    return p;
}

static mg_status cuda_rows_prepare(mg_attn_rows *rows) {
    const int n = rows->n_rows;
    /* Layout (int32): tokens, positions, bt_off (n each), bt (bt_cap), then
     * per mode: groups (3 n), items (2 items_cap), n_chunks (n), part_base
     * (n), n_items (1). Capacities are rounded up to powers of two so that
     * the offsets stay put from one decode step to the next. */
    size_t bt_total = 0;
    int max_pos = 0;
    for (int i = 0; i < n; i++) {
        if (i == 0 || rows->seqs[i] != rows->seqs[i - 1]) bt_total += (size_t)rows->seqs[i]->n_blocks;
        if (rows->positions[i] > max_pos) max_pos = rows->positions[i];
    }
    /* Items per mode: chunks of each group's longest row; a row's chunks
     * (hence its partials) are at most pos / 32 + 1 in either mode. */
    size_t items_bound = 0;
    for (int i = 0; i < n; i++) items_bound += (size_t)rows->positions[i] / 32 + 1;
    const size_t bt_cap = pow2_at_least(bt_total, 64), items_cap = pow2_at_least(items_bound, 64);
    size_t need = 3 * (size_t)n + bt_cap + 2 * (3 * (size_t)n + 2 * items_cap + 2 * (size_t)n + 1);
    if (!RS.rows_uploaded) MG_CUDA_TRY(cudaEventCreateWithFlags(&RS.rows_uploaded, cudaEventDisableTiming));
    MG_CUDA_TRY(cudaEventSynchronize(RS.rows_uploaded)); /* the previous upload has read the staging */
    if (need > RS.rows_host_cap) {
        if (RS.rows_host) MG_CUDA_TRY(cudaFreeHost(RS.rows_host));
        RS.rows_host = NULL;
        RS.rows_host_cap = 0;
        size_t cap = need + need / 2 + 1024;
        MG_CUDA_TRY(cudaMallocHost((void **)&RS.rows_host, cap * sizeof(int32_t)));
        RS.rows_host_cap = cap;
    }
    int32_t *h = RS.rows_host;
    int32_t *tok = h, *pos = h + n, *bt_off = h + 2 * n, *bt = h + 3 * n;
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        tok[i] = rows->tokens ? rows->tokens[i] : 0;
        pos[i] = rows->positions[i];
        if (i == 0 || rows->seqs[i] != rows->seqs[i - 1]) {
            memcpy(bt + o, rows->seqs[i]->blocks, (size_t)rows->seqs[i]->n_blocks * sizeof(int32_t));
            bt_off[i] = (int32_t)o;
            o += (size_t)rows->seqs[i]->n_blocks;
        } else {
            bt_off[i] = bt_off[i - 1];
        }
    }
    size_t off[2][5]; /* per mode: groups, items, n_chunks, part_base, n_items (int32 offsets) */
    size_t cur = 3 * (size_t)n + bt_cap;
    int counts[2][4];
    for (int mode = 0; mode < 2; mode++) {
        int32_t *groups = h + cur;
        int g = 0;
        /* A row of another chunk length starts a new group. */
        auto chunk_of = [&](int i) {
            return mode == MG_KERNELS_INVARIANT ? MG_ATTN_CHUNK : fast_chunk_len(pos[i] + 1, n);
        };
        for (int i = 0, in_group = 0; i < n; i++) {
            if (i == 0 || rows->seqs[i] != rows->seqs[i - 1] || in_group == MG_ATTN_QG ||
                chunk_of(i) != chunk_of(groups[3 * (g - 1)])) {
                groups[3 * g] = i;
                g++;
                in_group = 0;
            }
            groups[3 * (g - 1) + 1] = i + 1;
            in_group++;
        }
        int32_t *items = groups + 3 * (size_t)n;
        int n_items = 0;
        int32_t *nch = items + 2 * items_cap, *pbase = nch + n;
        int n_parts = 0, group_rows = 1;
        for (int gi = 0; gi < g; gi++) {
            int r0 = groups[3 * gi], r1 = groups[3 * gi + 1], len = 1;
            if (r1 - r0 > group_rows) group_rows = r1 - r0;
            for (int r = r0; r < r1; r++)
                if (pos[r] + 1 > len) len = pos[r] + 1;
            const int cl = chunk_of(r0); /* every row of the group has this length */
            groups[3 * gi + 2] = cl;
            int chunks = (len + cl - 1) / cl;
            for (int c = 0; c < chunks; c++) {
                items[2 * n_items] = gi;
                items[2 * n_items + 1] = c;
                n_items++;
            }
            for (int r = r0; r < r1; r++) {
                nch[r] = (pos[r] + 1 + cl - 1) / cl;
                pbase[r] = n_parts;
                n_parts += nch[r];
            }
        }
        pbase[n] = n_items; /* the n_items slot follows part_base */
        off[mode][0] = cur;
        off[mode][1] = cur + 3 * (size_t)n;
        off[mode][2] = off[mode][1] + 2 * items_cap;
        off[mode][3] = off[mode][2] + n;
        off[mode][4] = off[mode][3] + n;
        counts[mode][0] = g;
        counts[mode][1] = n_items;
        counts[mode][2] = n_parts;
        counts[mode][3] = group_rows;
        cur = off[mode][4] + 1;
    }
    if (cur > RS.rows_buf_cap) {
        MG_CUDA_TRY(cudaStreamSynchronize(mg_cuda.stream));
        if (RS.rows_buf) MG_CUDA_TRY(cudaFree(RS.rows_buf));
        RS.rows_buf = NULL;
        RS.rows_buf_cap = 0;
        size_t cap = cur + cur / 2 + 1024;
        MG_CUDA_TRY(cudaMalloc((void **)&RS.rows_buf, cap * sizeof(int32_t)));
        RS.rows_buf_cap = cap;
    }
    MG_CUDA_TRY(cudaMemcpyAsync(RS.rows_buf, h, cur * sizeof(int32_t), cudaMemcpyHostToDevice, mg_cuda.stream));
    MG_CUDA_TRY(cudaEventRecord(RS.rows_uploaded, mg_cuda.stream));
    RS.rows_dev.n_rows = n;
    RS.rows_dev.max_pos = max_pos;
    RS.rows_dev.parts_cap = (int)items_cap; /* n_parts <= items_bound in both modes */
    RS.rows_dev.tokens = RS.rows_buf;
    RS.rows_dev.positions = RS.rows_buf + n;
    RS.rows_dev.bt_off = RS.rows_buf + 2 * n;
    RS.rows_dev.bt = RS.rows_buf + 3 * n;
    /* Blocks along the items: enough for a few waves, never more than the
     * capacity (so the grid depends on the layout only). */
    const int items_grid = (int)(items_cap < (size_t)mg_cuda.n_sm * 16 ? items_cap : (size_t)mg_cuda.n_sm * 16);
    for (int mode = 0; mode < 2; mode++) {
        mg_cuda_attn_work *w = &RS.rows_dev.work[mode];
        w->n_groups = counts[mode][0];
        w->n_items = counts[mode][1];
        w->n_parts = counts[mode][2];
        w->group_rows = counts[mode][3];
        w->items_grid = items_grid;
        w->groups = RS.rows_buf + off[mode][0];
        w->items = RS.rows_buf + off[mode][1];
        w->n_chunks = RS.rows_buf + off[mode][2];
        w->part_base = RS.rows_buf + off[mode][3];
        w->n_items_dev = RS.rows_buf + off[mode][4];
    }
    RS.rows_cur = (rows_layout){RS.rows_buf, n, (int)bt_cap, (int)items_cap, (int)items_cap,
                                {counts[0][3], counts[1][3]}, 0};
    rows->dev = &RS.rows_dev;
    return MG_OK;
}

/* ---- graphs ---------------------------------------------------------------- */

#define GRAPH_SLOTS 64
#define GRAPH_KEY_MAX 128

typedef struct {
    unsigned char key[GRAPH_KEY_MAX];
    size_t key_bytes;
    rows_layout layout; /* the layout (and scratch generation) of the last direct run or capture */
    cudaGraphExec_t exec;
    unsigned long long last_use;
    int warm; /* ran directly once with this layout: the next call captures */
} graph_slot;

typedef struct {
    graph_slot graphs[GRAPH_SLOTS];
    unsigned long long graph_clock;
} graph_state;
static graph_state graph_devs[MG_CUDA_MAX_DEV]; /* per device */
#define GS (graph_devs[mg_cuda_dev])

static void slot_reset(graph_slot *g) {
    if (g->exec) cudaGraphExecDestroy(g->exec);
    memset(g, 0, sizeof *g);
}

static mg_status cuda_graph_run(const void *key, size_t key_bytes, mg_status (*issue)(void *ctx), void *ctx) {
    if (!key || !mg_cuda.graphs || key_bytes > GRAPH_KEY_MAX) return issue(ctx);
    rows_layout now = RS.rows_cur;
    now.buffers_gen = mg_cuda.buffers_gen;
    graph_slot *g = NULL, *lru = &GS.graphs[0];
    for (int i = 0; i < GRAPH_SLOTS && !g; i++) {
        if (GS.graphs[i].key_bytes == key_bytes && !memcmp(GS.graphs[i].key, key, key_bytes)) g = &GS.graphs[i];
        else if (GS.graphs[i].last_use < lru->last_use) lru = &GS.graphs[i];
    }
    if (!g) {
        g = lru;
        slot_reset(g);
        memcpy(g->key, key, key_bytes);
        g->key_bytes = key_bytes;
    }
    g->last_use = ++GS.graph_clock;
    const int same_layout = layout_eq(&g->layout, &now);
    if (g->exec && same_layout) {
        MG_CUDA_TRY(cudaGraphLaunch(g->exec, mg_cuda.stream));
        return MG_OK;
    }
    if (!same_layout || !g->warm) {
        /* First run with this layout: direct (it may grow scratch). */
        if (g->exec) cudaGraphExecDestroy(g->exec);
        g->exec = NULL;
        mg_status st = issue(ctx);
        g->layout = RS.rows_cur;
        g->layout.buffers_gen = mg_cuda.buffers_gen;
        g->warm = st == MG_OK;
        return st;
    }
    /* Second run with this layout: capture it, then launch the graph. */
    cudaGraph_t graph = NULL;
    MG_CUDA_TRY(cudaStreamBeginCapture(mg_cuda.stream, cudaStreamCaptureModeThreadLocal));
    mg_status st = issue(ctx);
    cudaError_t e = cudaStreamEndCapture(mg_cuda.stream, &graph);
    if (st == MG_OK && e == cudaSuccess && mg_cuda.buffers_gen == now.buffers_gen)
        e = cudaGraphInstantiate(&g->exec, graph, 0);
    else
        e = cudaErrorStreamCaptureInvalidated;
    if (graph) cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
        /* Something in the pass cannot be captured (or moved a buffer):
         * run it directly; the next call starts over. */
        (void)cudaGetLastError();
        g->exec = NULL;
        g->warm = 0;
        st = issue(ctx);
        g->layout = RS.rows_cur;
        g->layout.buffers_gen = mg_cuda.buffers_gen;
        return st;
    }
    MG_CUDA_TRY(cudaGraphLaunch(g->exec, mg_cuda.stream));
    return MG_OK;
}

/* ---- init ---------------------------------------------------------------- */

static const mg_backend_ops cuda_ops = {
    /* .name = */ "cuda",
    /* .host_memory = */ 0,
    /* .alloc = */ cuda_alloc,
    /* .free = */ cuda_free,
    /* .upload = */ cuda_upload,
    /* .download = */ cuda_download,
    /* .copy = */ cuda_copy,
    /* .zero = */ cuda_zero,
    /* .sync = */ cuda_sync,
    /* .act_size = */ cuda_act_size,
    /* .act_upload = */ cuda_act_upload,
    /* .act_download = */ cuda_act_download,
    /* .weights_acquire = */ cuda_weights_acquire,
    /* .weights_release = */ cuda_weights_release,
    /* .rows_prepare = */ cuda_rows_prepare,
    /* .embed = */ mg_cuda_embed,
    /* .rmsnorm = */ mg_cuda_rmsnorm,
    /* .add_rmsnorm = */ mg_cuda_add_rmsnorm,
    /* .matmul = */ mg_cuda_matmul,
    /* .matmul_multi = */ mg_cuda_matmul_multi,
    /* .logits = */ mg_cuda_logits,
    /* .rope_kv_store = */ mg_cuda_rope_kv_store,
    /* .attention = */ mg_cuda_attention,
    /* .add = */ mg_cuda_add,
    /* .swiglu = */ mg_cuda_swiglu,
    /* .argmax = */ mg_cuda_argmax,
    /* .graph_run = */ cuda_graph_run,
    /* .matmul_groups = */ mg_cuda_matmul_groups,
    /* .fold = */ mg_cuda_fold,
    /* .copy2d = */ cuda_copy2d,
    /* .alloc_kv = */ NULL,
    /* .tp_ranks = */ 1,
};

static int env_int(const char *name, int def) {
    const char *s = getenv(name);
    return s && *s ? atoi(s) : def;
}

/* Initialises device `dev` for the calling thread (mg_cuda_dev = dev). */
static mg_status cuda_init(int dev) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        (void)cudaGetLastError();
        return mg_error_set(MG_ERR_UNSUPPORTED, "no CUDA device (%s)",
                            e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    }
    if (dev >= count || dev >= MG_CUDA_MAX_DEV)
        return mg_error_set(MG_ERR_UNSUPPORTED, "CUDA device %d requested, %d present", dev, count);
    cudaDeviceProp prop;
    MG_CUDA_TRY(cudaSetDevice(dev));
    MG_CUDA_TRY(cudaGetDeviceProperties(&prop, dev));
    if (prop.major < 8)
        return mg_error_set(MG_ERR_UNSUPPORTED, "%s has compute capability %d.%d; the CUDA backend needs 8.0+",
                            prop.name, prop.major, prop.minor);
    mg_cuda.device = dev;
    mg_cuda.n_sm = prop.multiProcessorCount;
    mg_cuda.smem_optin = prop.sharedMemPerBlockOptin;
    MG_CUDA_TRY(cudaStreamCreateWithFlags(&mg_cuda.stream, cudaStreamNonBlocking));
    /* Defaults from the H100 run of 2026-11-22 (bench/results/cuda-h100-2026-11-22-run2.md):
     * the v2 skinny kernel beat v1 and the tiled kernel at batch 1-64; up to 32 rows since
     * the tiled kernel splits K over blocks (a skinny block re-reads every activation row). */
    mg_cuda.skinny_max_rows = env_int("MG_CUDA_SKINNY_MAX", 32);
    mg_cuda.skinny_v2 = env_int("MG_CUDA_SKINNY_V2", 1) != 0;
    mg_cuda.graphs = env_int("MG_CUDA_GRAPHS", 1) != 0;
    mg_cuda.attn_tile_keys = env_int("MG_CUDA_ATTN_TILE", 0);
    mg_cuda.attn_tc = env_int("MG_CUDA_ATTN_TC", 1) != 0;
    mg_cuda.attn_fill = env_int("MG_CUDA_ATTN_FILL", 2);
    if (mg_cuda.attn_fill < 1 || mg_cuda.attn_fill > 64)
        return mg_error_set(MG_ERR_ARG, "MG_CUDA_ATTN_FILL=%d: use 1..64", mg_cuda.attn_fill);
    const char *fg = getenv("MG_CUDA_FAST_GEMM");
    mg_cuda.fast_gemm_tc = fg && !strcmp(fg, "tc");
    mg_cuda.fast_tune = env_int("MG_CUDA_FAST_TUNE", 1);
    if (mg_cuda.fast_tune < 0 || mg_cuda.fast_tune > 2)
        return mg_error_set(MG_ERR_ARG, "MG_CUDA_FAST_TUNE=%d: use 0 (the heuristic's picks), 1 (timed, same bits) "
                            "or 2 (timed, any bits)", mg_cuda.fast_tune);
    /* H100, 8B shapes, 2026-11-23: the GEMV kernel beat cuBLASLt at batch 1
     * (6.00 vs 6.55 ms a step) and 2 (6.22 vs 6.59), lost at 4 (6.81 vs 6.63)
     * and 8 (8.75 vs 6.82). */
    mg_cuda.gemv_max_rows = env_int("MG_CUDA_GEMV_MAX", 2);
    if (mg_cuda.gemv_max_rows < 0 || mg_cuda.gemv_max_rows > 8)
        return mg_error_set(MG_ERR_ARG, "MG_CUDA_GEMV_MAX=%d: use 0..8", mg_cuda.gemv_max_rows);
    const char *ig = getenv("MG_CUDA_INVARIANT_GEMM");
    if (ig && *ig && strcmp(ig, "tc") && strcmp(ig, "lt"))
        return mg_error_set(MG_ERR_ARG, "MG_CUDA_INVARIANT_GEMM=%s: use lt (pinned cuBLASLt, the default) or tc", ig);
    mg_cuda.invariant_gemm_tc = ig && !strcmp(ig, "tc");
    mg_cuda.ready = 1;
    return MG_OK;
}

/* Per device: initialised once, by the first thread that selects it. */
static struct {
    int tried;
    mg_status status;
    char error[512];
} init_devs[MG_CUDA_MAX_DEV];
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

extern "C" const mg_backend_ops *mg_backend_cuda_on(int device) {
    if (device < 0 || device >= MG_CUDA_MAX_DEV) {
        mg_error_set(MG_ERR_ARG, "CUDA device %d outside 0..%d", device, MG_CUDA_MAX_DEV - 1);
        return NULL;
    }
    pthread_mutex_lock(&init_lock);
    mg_cuda_dev = device;
    if (!init_devs[device].tried) {
        init_devs[device].tried = 1;
        init_devs[device].status = cuda_init(device);
        if (init_devs[device].status != MG_OK)
            snprintf(init_devs[device].error, sizeof init_devs[device].error, "%s", mg_error_last());
    }
    const mg_status st = init_devs[device].status;
    pthread_mutex_unlock(&init_lock);
    if (st != MG_OK) {
        mg_error_set(st, "%s", init_devs[device].error);
        return NULL;
    }
    /* The CUDA runtime's current device is per thread too. */
    if (cudaSetDevice(device) != cudaSuccess) {
        (void)cudaGetLastError();
        mg_error_set(MG_ERR_BACKEND, "cannot select CUDA device %d", device);
        return NULL;
    }
    return &cuda_ops;
}

extern "C" const mg_backend_ops *mg_backend_cuda(void) { return mg_backend_cuda_on(0); }

extern "C" void mg_cuda_invariant_gemm_describe(char *buf, size_t size) {
    if (!size) return;
    buf[0] = 0;
    if (!mg_backend_cuda()) return;
    if (mg_cuda.invariant_gemm_tc) {
        snprintf(buf, size, "own tensor-core kernels (MG_CUDA_INVARIANT_GEMM=tc)");
        return;
    }
    const int n = snprintf(buf, size, "pinned cuBLASLt: ");
    if (n > 0 && (size_t)n < size) mg_cuda_lt_pins_describe(buf + n, size - (size_t)n);
}

extern "C" void mg_cuda_fast_gemm_describe(char *buf, size_t size) {
    if (!size) return;
    buf[0] = 0;
    if (!mg_backend_cuda()) return;
    if (mg_cuda.fast_gemm_tc) snprintf(buf, size, "own tensor-core kernels (MG_CUDA_FAST_GEMM=tc)");
    else if (!mg_cuda.fast_tune) snprintf(buf, size, "cuBLASLt heuristic (MG_CUDA_FAST_TUNE=0)");
    else {
        const int n = snprintf(buf, size, "timed cuBLASLt choices (gain per M): ");
        if (n > 0 && (size_t)n < size) mg_cuda_lt_fast_describe(buf + n, size - (size_t)n);
    }
}
