/* The CPU backend's op table: host memory, FP32 activations, and the fused
 * ops as compositions of the reference ops (so they compute exactly what
 * the unfused sequence computes). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../util/bf16.h"
#include "cpu_ops.h"

static mg_status cpu_alloc(void **out, size_t bytes) {
    *out = NULL;
    /* 64-byte alignment for vector loads; zero-filled as the contract says. */
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) return mg_error_set(MG_ERR_OOM, "cannot allocate %zu bytes", bytes);
    memset(p, 0, rounded ? rounded : 64);
    *out = p;
    return MG_OK;
}

static void cpu_free(void *p) { free(p); }

static mg_status cpu_memcpy(void *dst, const void *src, size_t bytes) {
    if (bytes) memcpy(dst, src, bytes);
    return MG_OK;
}

static mg_status cpu_zero(void *dst, size_t bytes) {
    if (bytes) memset(dst, 0, bytes);
    return MG_OK;
}

static mg_status cpu_sync(void) { return MG_OK; }

static size_t cpu_act_size(int round_bf16) { return sizeof(float); }

static mg_status cpu_act_upload(void *dst, const float *src, size_t n, int round_bf16) {
    float *d = dst;
    for (size_t i = 0; i < n; i++) d[i] = round_bf16 ? mg_round_bf16(src[i]) : src[i];
    return MG_OK;
}

static mg_status cpu_act_download(float *dst, const void *src, size_t n, int round_bf16) {
    return cpu_memcpy(dst, src, n * sizeof(float));
}

static mg_status cpu_weights_acquire(const mg_weights **out, const mg_model *model) {
    *out = &model->weights;
    return MG_OK;
}

static void cpu_weights_release(const mg_model *model) {}

static mg_status cpu_rows_prepare(mg_attn_rows *rows) {
    rows->dev = NULL;
    return MG_OK;
}

static mg_status cpu_add_rmsnorm(void *x, const void *y, void *out, const float *weight, int n, int dim, float eps,
                                 int round_bf16) {
    mg_status st = mg_cpu_add(x, y, (size_t)n * (size_t)dim, round_bf16);
    return st != MG_OK ? st : mg_cpu_rmsnorm(out, x, weight, n, dim, eps, round_bf16);
}

static mg_status cpu_matmul_multi(const mg_matmul_part *parts, int n_parts, const void *in, int n, mg_kernels kernels,
                                  int round_bf16) {
    for (int p = 0; p < n_parts; p++) {
        mg_status st = mg_cpu_matmul(parts[p].out, in, parts[p].w, parts[p].bias, n, kernels, round_bf16);
        if (st != MG_OK) return st;
    }
    return MG_OK;
}

static mg_status cpu_logits(float *out, const void *in, const mg_matrix *w, int n, mg_kernels kernels,
                            int round_bf16) {
    return mg_cpu_matmul(out, in, w, NULL, n, kernels, 0);
}

static mg_status cpu_rope_kv_store(void *q, void *k, const void *v, mg_kv_pool *pool, int layer,
                                   const mg_attn_rows *rows, int n_heads, const float *inv_freq, int round_bf16) {
    const int n = rows->n_rows, hd = pool->head_dim;
    mg_status st = mg_cpu_rope(q, rows->positions, n, n_heads, hd, inv_freq, round_bf16);
    if (st == MG_OK) st = mg_cpu_rope(k, rows->positions, n, pool->n_kv_heads, hd, inv_freq, round_bf16);
    if (st == MG_OK) st = mg_cpu_kv_store(pool, layer, k, v, rows);
    return st;
}

static mg_status cpu_argmax(mg_argmax *out, const float *logits, int n, int vocab) {
    for (int i = 0; i < n; i++) out[i] = mg_argmax_margin(logits + (size_t)i * vocab, vocab);
    return MG_OK;
}

/* The CPU reference of matmul_groups: each group's columns summed in
 * column order (FP32 accumulation; weights BF16 or F32). */
static mg_status cpu_matmul_groups(float *out, const void *in, const mg_matrix *w, int n, int round_bf16) {
    (void)round_bf16;
    const int K = w->cols, R = w->rows, G = (K + MG_MATMUL_GROUP - 1) / MG_MATMUL_GROUP;
    const float *x = in;
#pragma omp parallel for collapse(2) schedule(static)
    for (int i = 0; i < n; i++)
        for (int r = 0; r < R; r++)
            for (int g = 0; g < G; g++) {
                const int c1 = (g + 1) * MG_MATMUL_GROUP < K ? (g + 1) * MG_MATMUL_GROUP : K;
                float acc = 0.0f;
                for (int c = g * MG_MATMUL_GROUP; c < c1; c++) {
                    const size_t at = (size_t)r * K + c;
                    const float wv = w->dtype == MG_DTYPE_BF16 ? mg_bf16_to_f32(((const uint16_t *)w->data)[at])
                                                               : ((const float *)w->data)[at];
                    acc = fmaf(x[(size_t)i * K + c], wv, acc);
                }
                out[((size_t)g * n + i) * R + r] = acc;
            }
    return MG_OK;
}

static mg_status cpu_fold(void *out, const float *parts, int n_parts, size_t count, int round_bf16) {
    float *o = out;
    for (size_t i = 0; i < count; i++) {
        float acc = 0.0f;
        for (int p = 0; p < n_parts; p++) acc += parts[(size_t)p * count + i];
        o[i] = round_bf16 ? mg_round_bf16(acc) : acc;
    }
    return MG_OK;
}

static mg_status cpu_copy2d(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t rows) {
    for (size_t i = 0; i < rows; i++) memcpy((char *)dst + i * dpitch, (const char *)src + i * spitch, width);
    return MG_OK;
}

static const mg_backend_ops cpu_ops = {
    .name = "cpu",
    .host_memory = 1,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_memcpy,
    .download = cpu_memcpy,
    .copy = cpu_memcpy,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .act_size = cpu_act_size,
    .act_upload = cpu_act_upload,
    .act_download = cpu_act_download,
    .weights_acquire = cpu_weights_acquire,
    .weights_release = cpu_weights_release,
    .rows_prepare = cpu_rows_prepare,
    .embed = mg_cpu_embed,
    .rmsnorm = mg_cpu_rmsnorm,
    .add_rmsnorm = cpu_add_rmsnorm,
    .matmul = mg_cpu_matmul,
    .matmul_multi = cpu_matmul_multi,
    .logits = cpu_logits,
    .rope_kv_store = cpu_rope_kv_store,
    .attention = mg_cpu_attention,
    .add = mg_cpu_add,
    .swiglu = mg_cpu_swiglu,
    .argmax = cpu_argmax,
    .matmul_groups = cpu_matmul_groups,
    .fold = cpu_fold,
    .copy2d = cpu_copy2d,
    .tp_ranks = 1,
};

const mg_backend_ops *mg_backend_cpu(void) { return &cpu_ops; }
