/* CPU embedding, RMSNorm, RoPE, residual add and SwiGLU. Each output row is
 * computed by one thread in a fixed order, so these ops are batch-invariant
 * in both kernel modes. */
#include <math.h>
#include <string.h>

#include "../../util/bf16.h"
#include "cpu_ops.h"

static inline float maybe_round(float v, int round_bf16) { return round_bf16 ? mg_round_bf16(v) : v; }

mg_status mg_cpu_embed(void *out_, const mg_matrix *table, const mg_attn_rows *rows, int round_bf16) {
    float *out = out_;
    const size_t dim = (size_t)table->cols;
    for (int i = 0; i < rows->n_rows; i++) {
        size_t row = (size_t)rows->tokens[i] * dim;
        float *o = out + (size_t)i * dim;
        if (table->dtype == MG_DTYPE_BF16) {
            const uint16_t *t = (const uint16_t *)table->data + row;
            for (size_t c = 0; c < dim; c++) o[c] = mg_bf16_to_f32(t[c]);
        } else {
            memcpy(o, (const float *)table->data + row, dim * sizeof(float));
        }
    }
    return MG_OK;
}

mg_status mg_cpu_rmsnorm(void *out_, const void *in_, const float *weight, int n, int dim, float eps,
                         int round_bf16) {
    float *out = out_;
    const float *in = in_;
#pragma omp parallel for schedule(static) if (n > 1)
    for (int i = 0; i < n; i++) {
        const float *x = in + (size_t)i * dim;
        float *o = out + (size_t)i * dim;
        float ss = 0.0f;
        for (int c = 0; c < dim; c++) ss += x[c] * x[c];
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int c = 0; c < dim; c++) o[c] = maybe_round(weight[c] * maybe_round(x[c] * inv, round_bf16), round_bf16);
    }
    return MG_OK;
}

mg_status mg_cpu_rope(float *x, const int32_t *positions, int n, int n_heads, int head_dim, const float *inv_freq,
                      int round_bf16) {
    const int half = head_dim / 2;
#pragma omp parallel for schedule(static) if (n > 1)
    for (int i = 0; i < n; i++) {
        float pos = (float)positions[i];
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)i * n_heads + h) * head_dim;
            for (int j = 0; j < half; j++) {
                float angle = pos * inv_freq[j];
                float c = cosf(angle), s = sinf(angle);
                float a = v[j], b = v[j + half];
                v[j] = maybe_round(a * c - b * s, round_bf16);
                v[j + half] = maybe_round(b * c + a * s, round_bf16);
            }
        }
    }
    return MG_OK;
}

mg_status mg_cpu_add(void *x_, const void *y_, size_t n, int round_bf16) {
    float *x = x_;
    const float *y = y_;
    for (size_t i = 0; i < n; i++) x[i] = maybe_round(x[i] + y[i], round_bf16);
    return MG_OK;
}

mg_status mg_cpu_swiglu(void *out_, const void *gate_, const void *up_, size_t n, int round_bf16) {
    float *out = out_;
    const float *gate = gate_, *up = up_;
#pragma omp parallel for schedule(static) if (n > 4096)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        float silu = maybe_round(g * (1.0f / (1.0f + expf(-g))), round_bf16);
        out[i] = maybe_round(silu * up[i], round_bf16);
    }
    return MG_OK;
}
