#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct mg_forward {
    const mg_model *model;
    const mg_backend_ops *ops;
    int max_rows;
    float *inv_freq; /* (head_dim / 2) */
    float *x;        /* (max_rows, dim) residual stream */
    float *xb;       /* (max_rows, dim) normed input of a sub-block */
    float *q;        /* (max_rows, n_heads * head_dim) */
    float *k;        /* (max_rows, n_kv_heads * head_dim) */
    float *v;        /* (max_rows, n_kv_heads * head_dim) */
    float *att;      /* (max_rows, n_heads * head_dim) */
    float *proj;     /* (max_rows, dim) output of o_proj / down_proj */
    float *gate;     /* (max_rows, hidden_dim) */
    float *up;       /* (max_rows, hidden_dim) */
    float *last;     /* (max_rows, dim) final-normed rows that want logits */
};

void mg_rope_inv_freq(const mg_config *cfg, float *inv_freq) {
    const int half = cfg->head_dim / 2;
    for (int j = 0; j < half; j++)
        inv_freq[j] = 1.0f / powf(cfg->rope_theta, (float)(2 * j) / (float)cfg->head_dim);
    if (cfg->rope_type != MG_ROPE_LLAMA3) return;
    const float pi = 3.14159265358979323846f;
    const float old_len = (float)cfg->rope_original_max_pos;
    const float low_wavelen = old_len / cfg->rope_low_freq_factor;
    const float high_wavelen = old_len / cfg->rope_high_freq_factor;
    for (int j = 0; j < half; j++) {
        float f = inv_freq[j];
        float wavelen = 2.0f * pi / f;
        float scaled = wavelen > low_wavelen ? f / cfg->rope_factor : f;
        if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
            float smooth = (old_len / wavelen - cfg->rope_low_freq_factor) /
                           (cfg->rope_high_freq_factor - cfg->rope_low_freq_factor);
            scaled = (1.0f - smooth) * scaled / cfg->rope_factor + smooth * scaled;
        }
        inv_freq[j] = scaled;
    }
}

void mg_forward_free(mg_forward *fw) {
    if (!fw) return;
    float *bufs[] = {fw->inv_freq, fw->x, fw->xb, fw->q, fw->k, fw->v, fw->att, fw->proj, fw->gate, fw->up, fw->last};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(fw);
}

mg_status mg_forward_init(mg_forward **out, const mg_model *model, const mg_backend_ops *backend, int max_rows) {
    *out = NULL;
    const mg_config *c = &model->config;
    if (max_rows <= 0) return mg_error_set(MG_ERR_ARG, "max_rows must be positive (got %d)", max_rows);
    mg_forward *fw = calloc(1, sizeof *fw);
    if (!fw) return mg_error_set(MG_ERR_OOM, "cannot allocate forward context");
    fw->model = model;
    fw->ops = backend;
    fw->max_rows = max_rows;
    size_t r = (size_t)max_rows, qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    fw->inv_freq = malloc((size_t)(c->head_dim / 2) * sizeof(float));
    fw->x = malloc(r * c->dim * sizeof(float));
    fw->xb = malloc(r * c->dim * sizeof(float));
    fw->q = malloc(r * qd * sizeof(float));
    fw->k = malloc(r * kvd * sizeof(float));
    fw->v = malloc(r * kvd * sizeof(float));
    fw->att = malloc(r * qd * sizeof(float));
    fw->proj = malloc(r * c->dim * sizeof(float));
    fw->gate = malloc(r * c->hidden_dim * sizeof(float));
    fw->up = malloc(r * c->hidden_dim * sizeof(float));
    fw->last = malloc(r * c->dim * sizeof(float));
    if (!fw->inv_freq || !fw->x || !fw->xb || !fw->q || !fw->k || !fw->v || !fw->att || !fw->proj || !fw->gate ||
        !fw->up || !fw->last) {
        mg_forward_free(fw);
        return mg_error_set(MG_ERR_OOM, "cannot allocate activations for %d rows", max_rows);
    }
    mg_rope_inv_freq(c, fw->inv_freq);
    *out = fw;
    return MG_OK;
}

static mg_status check_batch(const mg_forward *fw, const mg_batch *b) {
    const mg_config *c = &fw->model->config;
    if (b->n_rows <= 0 || b->n_rows > fw->max_rows)
        return mg_error_set(MG_ERR_ARG, "batch of %d rows (limit %d)", b->n_rows, fw->max_rows);
    for (int i = 0; i < b->n_rows; i++) {
        if (b->tokens[i] < 0 || b->tokens[i] >= c->vocab_size)
            return mg_error_set(MG_ERR_RANGE, "token id %d outside the vocabulary (0..%d)", b->tokens[i],
                                c->vocab_size - 1);
        if (b->positions[i] < 0 || b->positions[i] >= c->max_seq_len)
            return mg_error_set(MG_ERR_RANGE, "position %d beyond the model's context of %d", b->positions[i],
                                c->max_seq_len);
    }
    return MG_OK;
}

mg_status mg_forward_run(mg_forward *fw, mg_kv_pool *pool, const mg_batch *b, mg_kernels kernels,
                         mg_act_precision precision, float *logits) {
    mg_status st = check_batch(fw, b);
    if (st != MG_OK) return st;
    const mg_config *c = &fw->model->config;
    const mg_weights *w = &fw->model->weights;
    const mg_backend_ops *ops = fw->ops;
    const int n = b->n_rows, rb = precision == MG_ACT_BF16;
    const size_t dim = (size_t)c->dim;
    const mg_attn_rows rows = {.n_rows = n, .positions = b->positions, .seqs = b->seqs};

    ops->embed(fw->x, &w->tok_embed, b->tokens, n);
    for (int l = 0; l < c->n_layers; l++) {
        const mg_layer_weights *lw = &w->layers[l];
        /* attention block */
        ops->rmsnorm(fw->xb, fw->x, lw->attn_norm, n, c->dim, c->norm_eps, rb);
        ops->matmul(fw->q, fw->xb, &lw->wq, lw->bq, n, kernels, rb);
        ops->matmul(fw->k, fw->xb, &lw->wk, lw->bk, n, kernels, rb);
        ops->matmul(fw->v, fw->xb, &lw->wv, lw->bv, n, kernels, rb);
        ops->rope(fw->q, b->positions, n, c->n_heads, c->head_dim, fw->inv_freq, rb);
        ops->rope(fw->k, b->positions, n, c->n_kv_heads, c->head_dim, fw->inv_freq, rb);
        ops->kv_store(pool, l, fw->k, fw->v, &rows);
        ops->attention(fw->att, fw->q, pool, l, &rows, c->n_heads, kernels, rb);
        ops->matmul(fw->proj, fw->att, &lw->wo, lw->bo, n, kernels, rb);
        ops->add(fw->x, fw->proj, n * dim, rb);
        /* MLP block */
        ops->rmsnorm(fw->xb, fw->x, lw->mlp_norm, n, c->dim, c->norm_eps, rb);
        ops->matmul(fw->gate, fw->xb, &lw->w_gate, NULL, n, kernels, rb);
        ops->matmul(fw->up, fw->xb, &lw->w_up, NULL, n, kernels, rb);
        ops->swiglu(fw->gate, fw->gate, fw->up, (size_t)n * c->hidden_dim, rb);
        ops->matmul(fw->proj, fw->gate, &lw->w_down, NULL, n, kernels, rb);
        ops->add(fw->x, fw->proj, n * dim, rb);
    }
    /* Final norm and LM head on the rows that want logits only. */
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (b->want_logits && !b->want_logits[i]) continue;
        memcpy(fw->last + (size_t)m * dim, fw->x + (size_t)i * dim, dim * sizeof(float));
        m++;
    }
    if (m == 0) return MG_OK;
    ops->rmsnorm(fw->last, fw->last, w->final_norm, m, c->dim, c->norm_eps, rb);
    ops->matmul(logits, fw->last, &w->lm_head, NULL, m, kernels, 0);
    return MG_OK;
}
