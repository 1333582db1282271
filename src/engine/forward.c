#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct mg_forward {
    const mg_model *model;
    const mg_backend_ops *ops;
    const mg_weights *w; /* the model's weights in backend memory (weights_acquire) */
    int max_rows;
    /* Backend memory. Activation buffers hold up to 4 bytes per value (see
     * backend.h); the element size of a run is ops->act_size(round_bf16). */
    float *inv_freq; /* (head_dim / 2) */
    void *x;         /* (max_rows, dim) residual stream */
    void *xb;        /* (max_rows, dim) normed input of a sub-block */
    void *q;         /* (max_rows, n_heads * head_dim) */
    void *k;         /* (max_rows, n_kv_heads * head_dim) */
    void *v;         /* (max_rows, n_kv_heads * head_dim) */
    void *att;       /* (max_rows, n_heads * head_dim) */
    void *proj;      /* (max_rows, dim) output of o_proj / down_proj */
    void *gate;      /* (max_rows, hidden_dim) */
    void *up;        /* (max_rows, hidden_dim) */
    void *last;      /* (max_rows, dim) final-normed rows that want logits */
    float *logits;   /* (logits_rows, vocab) FP32 */
    mg_argmax *argmax; /* (logits_rows) */
    int logits_rows; /* rows the two buffers above hold (grown on demand) */
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
    void *bufs[] = {fw->inv_freq, fw->x, fw->xb, fw->q, fw->k, fw->v, fw->att, fw->proj, fw->gate, fw->up, fw->last,
                    fw->logits, fw->argmax};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) fw->ops->free(bufs[i]);
    if (fw->w) fw->ops->weights_release(fw->model);
    free(fw);
}

const mg_backend_ops *mg_forward_backend(const mg_forward *fw) { return fw->ops; }

mg_status mg_forward_init(mg_forward **out, const mg_model *model, const mg_backend_ops *backend, int max_rows) {
    *out = NULL;
    const mg_config *c = &model->config;
    if (max_rows <= 0) return mg_error_set(MG_ERR_ARG, "max_rows must be positive (got %d)", max_rows);
    if (!backend) return mg_error_set(MG_ERR_ARG, "no backend");
    mg_forward *fw = calloc(1, sizeof *fw);
    if (!fw) return mg_error_set(MG_ERR_OOM, "cannot allocate forward context");
    fw->model = model;
    fw->ops = backend;
    fw->max_rows = max_rows;
    size_t r = (size_t)max_rows, qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    const size_t f = sizeof(float);
    struct {
        void **buf;
        size_t bytes;
    } allocs[] = {{(void **)&fw->inv_freq, (size_t)(c->head_dim / 2) * f},
                  {&fw->x, r * c->dim * f},
                  {&fw->xb, r * c->dim * f},
                  {&fw->q, r * qd * f},
                  {&fw->k, r * kvd * f},
                  {&fw->v, r * kvd * f},
                  {&fw->att, r * qd * f},
                  {&fw->proj, r * c->dim * f},
                  {&fw->gate, r * c->hidden_dim * f},
                  {&fw->up, r * c->hidden_dim * f},
                  {&fw->last, r * c->dim * f}};
    mg_status st = MG_OK;
    for (size_t i = 0; i < sizeof allocs / sizeof allocs[0] && st == MG_OK; i++)
        st = backend->alloc(allocs[i].buf, allocs[i].bytes);
    if (st != MG_OK) {
        mg_forward_free(fw);
        return mg_error_set(MG_ERR_OOM, "cannot allocate activations for %d rows on %s", max_rows, backend->name);
    }
    float *inv_freq = malloc((size_t)(c->head_dim / 2) * f);
    if (!inv_freq) {
        mg_forward_free(fw);
        return mg_error_set(MG_ERR_OOM, "cannot allocate RoPE frequencies");
    }
    mg_rope_inv_freq(c, inv_freq);
    st = backend->upload(fw->inv_freq, inv_freq, (size_t)(c->head_dim / 2) * f);
    free(inv_freq);
    if (st == MG_OK) st = backend->weights_acquire(&fw->w, model);
    if (st != MG_OK) {
        fw->w = NULL;
        mg_forward_free(fw);
        return st;
    }
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

/* Makes the logits and argmax buffers hold at least m rows. */
static mg_status reserve_logits(mg_forward *fw, int m) {
    if (m <= fw->logits_rows) return MG_OK;
    fw->ops->free(fw->logits);
    fw->ops->free(fw->argmax);
    fw->logits = NULL;
    fw->argmax = NULL;
    fw->logits_rows = 0;
    size_t vocab = (size_t)fw->model->config.vocab_size;
    mg_status st = fw->ops->alloc((void **)&fw->logits, (size_t)m * vocab * sizeof(float));
    if (st == MG_OK) st = fw->ops->alloc((void **)&fw->argmax, (size_t)m * sizeof(mg_argmax));
    if (st != MG_OK) return st;
    fw->logits_rows = m;
    return MG_OK;
}

/* One forward pass's device work, from the embedding to the argmax. */
typedef struct {
    mg_forward *fw;
    mg_kv_pool *pool;
    const mg_batch *b;
    const mg_attn_rows *rows;
    mg_kernels kernels;
    mg_act_precision precision;
    int all_want; /* every row wants logits */
    int argmax;   /* compute the argmax rows too */
} pass_ctx;

static mg_status issue_pass(void *ctx) {
    const pass_ctx *pc = (const pass_ctx *)ctx;
    mg_forward *fw = pc->fw;
    mg_kv_pool *pool = pc->pool;
    const mg_batch *b = pc->b;
    const mg_attn_rows *rows = pc->rows;
    const mg_kernels kernels = pc->kernels;
    const mg_config *c = &fw->model->config;
    const mg_weights *w = fw->w;
    const mg_backend_ops *ops = fw->ops;
    const int n = b->n_rows, rb = pc->precision == MG_ACT_BF16, L = c->n_layers, all_want = pc->all_want;
    const size_t dim = (size_t)c->dim, row_bytes = dim * ops->act_size(rb);
    const float eps = c->norm_eps;

    MG_TRY(ops->embed(fw->x, &w->tok_embed, rows, rb));
    MG_TRY(ops->rmsnorm(fw->xb, fw->x, w->layers[0].attn_norm, n, c->dim, eps, rb));
    for (int l = 0; l < L; l++) {
        const mg_layer_weights *lw = &w->layers[l];
        /* attention block */
        const mg_matmul_part qkv[3] = {{fw->q, &lw->wq, lw->bq}, {fw->k, &lw->wk, lw->bk}, {fw->v, &lw->wv, lw->bv}};
        MG_TRY(ops->matmul_multi(qkv, 3, fw->xb, n, kernels, rb));
        MG_TRY(ops->rope_kv_store(fw->q, fw->k, fw->v, pool, l, rows, c->n_heads, fw->inv_freq, rb));
        MG_TRY(ops->attention(fw->att, fw->q, pool, l, rows, c->n_heads, kernels, rb));
        MG_TRY(ops->matmul(fw->proj, fw->att, &lw->wo, lw->bo, n, kernels, rb));
        MG_TRY(ops->add_rmsnorm(fw->x, fw->proj, fw->xb, lw->mlp_norm, n, c->dim, eps, rb));
        /* MLP block */
        const mg_matmul_part gate_up[2] = {{fw->gate, &lw->w_gate, NULL}, {fw->up, &lw->w_up, NULL}};
        MG_TRY(ops->matmul_multi(gate_up, 2, fw->xb, n, kernels, rb));
        MG_TRY(ops->swiglu(fw->gate, fw->gate, fw->up, (size_t)n * c->hidden_dim, rb));
        MG_TRY(ops->matmul(fw->proj, fw->gate, &lw->w_down, NULL, n, kernels, rb));
        /* The residual add, fused with the next norm: the next layer's
         * attention norm, or the final norm when every row wants logits. */
        if (l + 1 < L)
            MG_TRY(ops->add_rmsnorm(fw->x, fw->proj, fw->xb, w->layers[l + 1].attn_norm, n, c->dim, eps, rb));
        else if (all_want)
            MG_TRY(ops->add_rmsnorm(fw->x, fw->proj, fw->last, w->final_norm, n, c->dim, eps, rb));
        else
            MG_TRY(ops->add(fw->x, fw->proj, (size_t)n * dim, rb));
    }
    /* Final norm (unless fused above) and LM head on the rows that want
     * logits only, packed in row order; each run of consecutive wanted rows
     * is one rmsnorm call. */
    int m = all_want ? n : 0;
    for (int i = 0; !all_want && i < n;) {
        if (!b->want_logits[i]) {
            i++;
            continue;
        }
        int j = i;
        while (j < n && b->want_logits[j]) j++;
        MG_TRY(ops->rmsnorm((char *)fw->last + (size_t)m * row_bytes, (const char *)fw->x + (size_t)i * row_bytes,
                            w->final_norm, j - i, c->dim, eps, rb));
        m += j - i;
        i = j;
    }
    if (m == 0) return MG_OK;
    MG_TRY(ops->logits(fw->logits, fw->last, &w->lm_head, m, kernels, rb));
    if (pc->argmax) MG_TRY(ops->argmax(fw->argmax, fw->logits, m, c->vocab_size));
    return MG_OK;
}

/* What a graph of a decode-shaped pass (every row wants logits) depends on
 * besides device data (see graph_run). */
typedef struct {
    const void *fw, *pool, *logits, *argmax;
    int n_rows, kernels, precision, argmax_wanted;
} pass_key;

mg_status mg_forward_run_ex(mg_forward *fw, mg_kv_pool *pool, const mg_batch *b, mg_kernels kernels,
                            mg_act_precision precision, const mg_forward_out *out) {
    MG_TRY(check_batch(fw, b));
    if (pool->ops != fw->ops)
        return mg_error_set(MG_ERR_ARG, "the KV pool lives on the %s backend, the forward pass runs on %s",
                            pool->ops ? pool->ops->name : "no", fw->ops->name);
    const mg_config *c = &fw->model->config;
    const mg_backend_ops *ops = fw->ops;
    const int n = b->n_rows;
    int m = 0;
    for (int i = 0; i < n; i++) m += !b->want_logits || b->want_logits[i];
    mg_attn_rows rows = {.n_rows = n, .tokens = b->tokens, .positions = b->positions, .seqs = b->seqs};
    MG_TRY(ops->rows_prepare(&rows));
    if (m > 0) MG_TRY(reserve_logits(fw, m));
    pass_ctx pc = {.fw = fw, .pool = pool, .b = b, .rows = &rows, .kernels = kernels, .precision = precision,
                   .all_want = m == n, .argmax = out->argmax != NULL};
    /* Decode-shaped passes go through the backend's graph cache: same
     * shapes, same buffers; other passes run directly (key NULL; a
     * tensor-parallel backend still runs them on every rank). */
    pass_key key;
    memset(&key, 0, sizeof key); /* padding bytes are compared too */
    key.fw = fw;
    key.pool = pool;
    key.logits = fw->logits;
    key.argmax = fw->argmax;
    key.n_rows = n;
    key.kernels = (int)kernels;
    key.precision = (int)precision;
    key.argmax_wanted = pc.argmax;
    if (ops->graph_run)
        MG_TRY(ops->graph_run(pc.all_want ? &key : NULL, sizeof key, issue_pass, &pc));
    else
        MG_TRY(issue_pass(&pc));
    if (m == 0) return MG_OK;
    const size_t vocab = (size_t)c->vocab_size;
    if (out->argmax) MG_TRY(ops->download(out->argmax, fw->argmax, (size_t)m * sizeof(mg_argmax)));
    if (out->logits) MG_TRY(ops->download(out->logits, fw->logits, (size_t)m * vocab * sizeof(float)));
    return MG_OK;
}

mg_status mg_forward_run(mg_forward *fw, mg_kv_pool *pool, const mg_batch *b, mg_kernels kernels,
                         mg_act_precision precision, float *logits) {
    const mg_forward_out out = {.logits = logits, .argmax = NULL};
    return mg_forward_run_ex(fw, pool, b, kernels, precision, &out);
}
