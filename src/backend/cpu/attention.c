/* CPU attention over the paged KV cache, and K/V stores.
 *
 * A query row attends to positions [0, pos] of its sequence. The KV range is
 * cut into chunks; each chunk yields a softmax-normalised partial output with
 * its running max and exp-sum, and partials are merged left to right.
 * - INVARIANT: chunks of a fixed ATTN_CHUNK positions, so the reduction order
 *   depends only on the KV length (the split count grows with the context,
 *   never with the batch) and is the same for a row in prefill or decode.
 * - FAST: one chunk for the whole range, except when the batch has too few
 *   (row, head) items to keep every thread busy and the context is long; then
 *   the range is split into as many chunks as there are threads (split-KV as
 *   flash-decoding does), a split count that depends on the batch.
 * A single chunk computes exactly what llama2.c's run.c computes. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../../util/bf16.h"
#include "cpu_ops.h"

#define ATTN_CHUNK 256
#define FAST_SPLIT_MIN_LEN 512

mg_status mg_cpu_kv_store(mg_kv_pool *pool, int layer, const float *k, const float *v, const mg_attn_rows *rows) {
    size_t row = (size_t)pool->n_kv_heads * (size_t)pool->head_dim;
    for (int i = 0; i < rows->n_rows; i++) {
        memcpy(mg_kv_k_at(pool, rows->seqs[i], layer, rows->positions[i]), k + (size_t)i * row, row * sizeof(float));
        memcpy(mg_kv_v_at(pool, rows->seqs[i], layer, rows->positions[i]), v + (size_t)i * row, row * sizeof(float));
    }
    return MG_OK;
}

typedef struct {
    float max;  /* max score in the chunk */
    float sum;  /* sum of exp(score - max) */
    float *out; /* (head_dim) softmax-weighted V over the chunk, normalised by sum */
} attn_partial;

/* Attention of query head `h` of row `i` over positions [t0, t1). `scores`
 * is scratch of (t1 - t0) floats. */
static void attend_chunk(attn_partial *p, float *scores, const float *qh, const mg_kv_pool *pool, const mg_kv_seq *seq,
                         int layer, int kvh, int t0, int t1) {
    const int hd = pool->head_dim;
    const float scale = 1.0f / sqrtf((float)hd);
    float max = -INFINITY;
    for (int t = t0; t < t1; t++) {
        const float *kt = mg_kv_k_at(pool, seq, layer, t) + (size_t)kvh * hd;
        float s = 0.0f;
        for (int d = 0; d < hd; d++) s += qh[d] * kt[d];
        s *= scale;
        scores[t - t0] = s;
        if (s > max) max = s;
    }
    float sum = 0.0f;
    for (int t = t0; t < t1; t++) {
        scores[t - t0] = expf(scores[t - t0] - max);
        sum += scores[t - t0];
    }
    memset(p->out, 0, (size_t)hd * sizeof(float));
    for (int t = t0; t < t1; t++) {
        const float *vt = mg_kv_v_at(pool, seq, layer, t) + (size_t)kvh * hd;
        float a = scores[t - t0] / sum;
        for (int d = 0; d < hd; d++) p->out[d] += a * vt[d];
    }
    p->max = max;
    p->sum = sum;
}

/* Merges partials[0..n) left to right into out (head_dim). */
static void merge_partials(float *out, const attn_partial *parts, int n, int hd, int round_bf16) {
    if (n == 1) {
        for (int d = 0; d < hd; d++) out[d] = round_bf16 ? mg_round_bf16(parts[0].out[d]) : parts[0].out[d];
        return;
    }
    float m = parts[0].max, s = parts[0].sum;
    for (int d = 0; d < hd; d++) out[d] = parts[0].out[d] * s;
    for (int c = 1; c < n; c++) {
        float m2 = fmaxf(m, parts[c].max);
        float a = expf(m - m2), b = expf(parts[c].max - m2);
        float wb = parts[c].sum * b;
        for (int d = 0; d < hd; d++) out[d] = out[d] * a + parts[c].out[d] * wb;
        s = s * a + wb;
        m = m2;
    }
    for (int d = 0; d < hd; d++) out[d] = round_bf16 ? mg_round_bf16(out[d] / s) : out[d] / s;
}

/* Number of KV chunks for a row with `len` positions. */
static int chunk_count(int len, int n_items, mg_kernels kernels) {
    if (kernels == MG_KERNELS_INVARIANT) return (len + ATTN_CHUNK - 1) / ATTN_CHUNK;
    int threads = omp_get_max_threads();
    if (n_items >= 2 * threads || len < FAST_SPLIT_MIN_LEN) return 1;
    return threads < len ? threads : len;
}

/* Chunk length for `nc` chunks over `len` positions. */
static int chunk_len(int len, int nc, mg_kernels kernels) {
    return kernels == MG_KERNELS_INVARIANT ? ATTN_CHUNK : (len + nc - 1) / nc;
}

mg_status mg_cpu_attention(void *out_, const void *q_, const mg_kv_pool *pool, int layer, const mg_attn_rows *rows,
                           int n_heads, mg_kernels kernels, int round_bf16) {
    float *out = out_;
    const float *q = q_;
    const int hd = pool->head_dim;
    const int group = n_heads / pool->n_kv_heads;
    const int n = rows->n_rows;
    /* Work items are (row, head, chunk); first[i] is row i's first chunk. */
    int *first = malloc(((size_t)n + 1) * sizeof(int));
    if (!first) return mg_error_set(MG_ERR_OOM, "cannot allocate attention work items");
    int max_len = 1;
    first[0] = 0;
    for (int i = 0; i < n; i++) {
        int len = rows->positions[i] + 1;
        if (len > max_len) max_len = len;
        first[i + 1] = first[i] + chunk_count(len, n * n_heads, kernels);
    }
    const int total_chunks = first[n]; /* per head */
    attn_partial *parts = malloc((size_t)total_chunks * n_heads * sizeof(attn_partial)); /* (chunks, n_heads) */
    float *part_out = malloc((size_t)total_chunks * n_heads * hd * sizeof(float)); /* (chunks, n_heads, hd) */
    if (!parts || !part_out) {
        free(first);
        free(parts);
        free(part_out);
        return mg_error_set(MG_ERR_OOM, "cannot allocate attention partials");
    }
#pragma omp parallel
    {
        float *scores = malloc((size_t)max_len * sizeof(float));
#pragma omp for schedule(dynamic, 1)
        for (int item = 0; item < total_chunks * n_heads; item++) {
            int c = item / n_heads, h = item % n_heads;
            int i = 0;
            while (first[i + 1] <= c) i++;
            int len = rows->positions[i] + 1;
            int step = chunk_len(len, first[i + 1] - first[i], kernels);
            int t0 = (c - first[i]) * step;
            int t1 = t0 + step < len ? t0 + step : len;
            attn_partial *p = &parts[item];
            p->out = part_out + (size_t)item * hd;
            attend_chunk(p, scores, q + ((size_t)i * n_heads + h) * hd, pool, rows->seqs[i], layer, h / group, t0,
                         t1);
        }
        free(scores);
#pragma omp for schedule(static)
        for (int item = 0; item < n * n_heads; item++) {
            int i = item / n_heads, h = item % n_heads;
            int nc = first[i + 1] - first[i];
            attn_partial merge[nc];
            for (int c = 0; c < nc; c++) merge[c] = parts[(size_t)(first[i] + c) * n_heads + h];
            merge_partials(out + (size_t)item * hd, merge, nc, hd, round_bf16);
        }
    }
    free(first);
    free(parts);
    free(part_out);
    return MG_OK;
}
