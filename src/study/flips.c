#include "flips.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/sampler.h"
#include "../util/timer.h"

#define PREFILL_ROWS 256
#define KV_BLOCK 16

/* Greedy decode state of one row. */
typedef struct {
    mg_kv_seq seq;
    int32_t *gen;    /* (max_new) generated tokens */
    float *margin;   /* (max_new) margin of the step producing gen[s] */
    int n_prompt;
} row_state;

typedef struct {
    const mg_model *model;
    mg_forward *fw;
    mg_kv_pool pool;   /* on the forward pass's backend */
    mg_argmax *top;    /* (rows_cap) greedy token and margin of each row */
    int32_t *tok, *pos;
    mg_kv_seq **seqs;
    uint8_t *want;
    int kvd;       /* n_kv_heads * head_dim */
} study_ctx;

/* Prefills prompt p alone (fixed chunks) and takes its first greedy token. */
static mg_status prefill_alone(study_ctx *c, const mg_dataset *d, int p, row_state *r, mg_act_precision prec) {
    const int32_t *ids = d->ids[p];
    int n = d->n_ids[p];
    r->n_prompt = n;
    for (int p0 = 0; p0 < n; p0 += PREFILL_ROWS) {
        int m = n - p0 < PREFILL_ROWS ? n - p0 : PREFILL_ROWS;
        for (int i = 0; i < m; i++) c->pos[i] = p0 + i, c->seqs[i] = &r->seq, c->want[i] = p0 + i == n - 1;
        mg_batch b = {.n_rows = m, .tokens = ids + p0, .positions = c->pos, .seqs = c->seqs, .want_logits = c->want};
        const mg_forward_out out = {.logits = NULL, .argmax = c->top};
        mg_status st = mg_forward_run_ex(c->fw, &c->pool, &b, MG_KERNELS_FAST, prec, &out);
        if (st != MG_OK) return st;
    }
    r->gen[0] = c->top[0].token;
    r->margin[0] = c->top[0].margin;
    return MG_OK;
}

/* One lockstep decode step s (>= 1) for rows[0..n): feeds gen[s-1]. */
static mg_status decode_step(study_ctx *c, row_state **rows, int n, int s, mg_act_precision prec) {
    for (int i = 0; i < n; i++) {
        c->tok[i] = rows[i]->gen[s - 1];
        c->pos[i] = rows[i]->n_prompt + s - 1;
        c->seqs[i] = &rows[i]->seq;
    }
    mg_batch b = {.n_rows = n, .tokens = c->tok, .positions = c->pos, .seqs = c->seqs, .want_logits = NULL};
    const mg_forward_out out = {.logits = NULL, .argmax = c->top};
    mg_status st = mg_forward_run_ex(c->fw, &c->pool, &b, MG_KERNELS_FAST, prec, &out);
    if (st != MG_OK) return st;
    for (int i = 0; i < n; i++) {
        rows[i]->gen[s] = c->top[i].token;
        rows[i]->margin[s] = c->top[i].margin;
    }
    return MG_OK;
}

/* Copies the K/V column of `pos` (all layers) into out (n_layers, 2, kvd),
 * as FP32 from the pool's backend. */
static mg_status kv_column(const study_ctx *c, const mg_kv_seq *seq, int pos, float *out) {
    for (int l = 0; l < c->model->config.n_layers; l++) {
        mg_status st = mg_kv_read(&c->pool, seq, l, pos, out + (size_t)(2 * l) * c->kvd,
                                  out + (size_t)(2 * l + 1) * c->kvd);
        if (st != MG_OK) return st;
    }
    return MG_OK;
}

/* Relative L2 difference of two layer columns (2 * kvd floats). */
static float rel_diff(const float *a, const float *b, int n) {
    double d = 0, s = 0;
    for (int i = 0; i < n; i++) {
        double x = (double)a[i] - b[i];
        d += x * x;
        s += (double)b[i] * b[i];
    }
    return s > 0 ? (float)sqrt(d / s) : 0.0f;
}

void mg_flip_report_free(mg_flip_report *r) {
    for (int i = 0; i < r->n_flips; i++) free(r->flips[i].layers);
    free(r->flips);
    free(r->steps);
    memset(r, 0, sizeof *r);
}

static mg_status push_step(mg_flip_report *r, long *cap, const mg_flip_step *s) {
    if (r->n_steps == *cap) {
        long nc = *cap ? *cap * 2 : 1024;
        mg_flip_step *p = realloc(r->steps, (size_t)nc * sizeof *p);
        if (!p) return mg_error_set(MG_ERR_OOM, "out of memory");
        r->steps = p;
        *cap = nc;
    }
    r->steps[r->n_steps++] = *s;
    return MG_OK;
}

mg_status mg_flip_study(const mg_model *model, const mg_backend_ops *backend, const mg_dataset *d,
                        const mg_flip_opts *o, mg_flip_report *out) {
    memset(out, 0, sizeof *out);
    const mg_config *cfg = &model->config;
    const int B = o->batch, N = o->max_new, L = cfg->n_layers;
    if (B < 1 || N < 2 || o->n_probes < 1) return mg_error_set(MG_ERR_ARG, "batch >= 1, max_new >= 2, probes >= 1");
    if (d->n < o->n_probes || d->n < B)
        return mg_error_set(MG_ERR_ARG, "dataset has %d prompts; the study needs %d", d->n,
                            o->n_probes > B ? o->n_probes : B);
    int max_prompt = 0;
    for (int i = 0; i < d->n; i++)
        if (d->n_ids[i] > max_prompt) max_prompt = d->n_ids[i];
    if (max_prompt + N > cfg->max_seq_len)
        return mg_error_set(MG_ERR_RANGE, "prompts of %d tokens + %d new exceed the context", max_prompt, N);

    study_ctx c = {.model = model, .kvd = cfg->n_kv_heads * cfg->head_dim};
    int rows_cap = B > PREFILL_ROWS ? B : PREFILL_ROWS;
    int per_seq_blocks = (max_prompt + N + KV_BLOCK - 1) / KV_BLOCK;
    mg_status st = mg_forward_init(&c.fw, model, backend, rows_cap);
    /* The K/V cache holds what the activations hold: BF16 on a device in
     * BF16 numerics (as the engine and `generate` keep it), else FP32. */
    const mg_dtype kv_dtype = !backend->host_memory && o->precision == MG_ACT_BF16 ? MG_DTYPE_BF16 : MG_DTYPE_F32;
    if (st == MG_OK)
        st = mg_kv_pool_init_on(&c.pool, backend, kv_dtype, L, cfg->n_kv_heads, cfg->head_dim, KV_BLOCK,
                                per_seq_blocks * B);
    c.top = malloc((size_t)rows_cap * sizeof(mg_argmax));
    c.tok = malloc((size_t)rows_cap * sizeof(int32_t));
    c.pos = malloc((size_t)rows_cap * sizeof(int32_t));
    c.seqs = malloc((size_t)rows_cap * sizeof(mg_kv_seq *));
    c.want = malloc((size_t)rows_cap);
    size_t col = (size_t)L * 2 * c.kvd;
    int P = o->n_probes;
    /* Solo results per probe: tokens, margins, and K/V columns per step. */
    row_state *solo = calloc((size_t)P, sizeof *solo);
    row_state *brow = calloc((size_t)B, sizeof *brow);
    row_state **bptr = malloc((size_t)B * sizeof *bptr);
    float *solo_kv = malloc((size_t)P * N * col * sizeof(float)); /* (P, N, L, 2, kvd) */
    float *bcol = malloc(col * sizeof(float));
    if (st == MG_OK && (!c.top || !c.tok || !c.pos || !c.seqs || !c.want || !solo || !brow || !bptr ||
                        !solo_kv || !bcol))
        st = mg_error_set(MG_ERR_OOM, "cannot allocate the flip study buffers");
    for (int i = 0; st == MG_OK && i < P; i++) {
        solo[i].gen = malloc((size_t)N * sizeof(int32_t));
        solo[i].margin = malloc((size_t)N * sizeof(float));
        if (!solo[i].gen || !solo[i].margin) st = mg_error_set(MG_ERR_OOM, "out of memory");
    }
    for (int i = 0; st == MG_OK && i < B; i++) {
        brow[i].gen = malloc((size_t)N * sizeof(int32_t));
        brow[i].margin = malloc((size_t)N * sizeof(float));
        bptr[i] = &brow[i];
        if (!brow[i].gen || !brow[i].margin) st = mg_error_set(MG_ERR_OOM, "out of memory");
    }

    /* Solo runs. */
    double t0 = mg_now_s();
    for (int p = 0; st == MG_OK && p < P; p++) {
        row_state *r = &solo[p];
        if ((st = mg_kv_seq_reserve(&c.pool, &r->seq, d->n_ids[p] + N)) != MG_OK) break;
        if ((st = prefill_alone(&c, d, p, r, o->precision)) != MG_OK) break;
        for (int s = 1; st == MG_OK && s < N; s++) {
            st = decode_step(&c, &r, 1, s, o->precision);
            if (st == MG_OK) st = kv_column(&c, &r->seq, r->n_prompt + s - 1, solo_kv + ((size_t)p * N + s) * col);
        }
        mg_kv_seq_free(&c.pool, &r->seq);
    }
    out->solo_s = mg_now_s() - t0;

    /* Batched runs: probes in groups of B, topped up with later prompts. */
    long cap_steps = 0;
    out->n_prompts = P;
    out->n_layers = L;
    t0 = mg_now_s();
    for (int g0 = 0; st == MG_OK && g0 < P; g0 += B) {
        int member[B];
        for (int i = 0; i < B; i++) member[i] = g0 + i < P ? g0 + i : (P + (g0 / B) * B + i) % d->n;
        for (int i = 0; st == MG_OK && i < B; i++) {
            if ((st = mg_kv_seq_reserve(&c.pool, &brow[i].seq, d->n_ids[member[i]] + N)) != MG_OK) break;
            st = prefill_alone(&c, d, member[i], &brow[i], o->precision);
        }
        int sync[B]; /* still synchronous with its solo run */
        float trace[B][N];
        for (int i = 0; i < B; i++) sync[i] = member[i] == g0 + i && g0 + i < P;
        for (int s = 0; st == MG_OK && s < N; s++) {
            if (s > 0 && (st = decode_step(&c, bptr, B, s, o->precision)) != MG_OK) break;
            for (int i = 0; i < B; i++) {
                if (!sync[i]) continue;
                int p = member[i];
                const row_state *so = &solo[p], *ba = &brow[i];
                float layer_rel[L];
                float mean = 0;
                if (s > 0) {
                    if ((st = kv_column(&c, &ba->seq, ba->n_prompt + s - 1, bcol)) != MG_OK) break;
                    const float *sc = solo_kv + ((size_t)p * N + s) * col;
                    for (int l = 0; l < L; l++) {
                        layer_rel[l] = rel_diff(bcol + (size_t)2 * l * c.kvd, sc + (size_t)2 * l * c.kvd, 2 * c.kvd);
                        mean += layer_rel[l] / L;
                    }
                } else {
                    for (int l = 0; l < L; l++) layer_rel[l] = 0;
                }
                trace[i][s] = mean;
                int flip = so->gen[s] != ba->gen[s];
                mg_flip_step rec = {.prompt = p, .step = s, .solo_token = so->gen[s], .batch_token = ba->gen[s],
                                    .solo_margin = so->margin[s], .batch_margin = ba->margin[s], .flip = flip,
                                    .kv_rel = mean};
                if ((st = push_step(out, &cap_steps, &rec)) != MG_OK) break;
                if (!flip) continue;
                sync[i] = 0;
                mg_flip_event *ev = realloc(out->flips, (size_t)(out->n_flips + 1) * sizeof *ev);
                if (!ev) {
                    st = mg_error_set(MG_ERR_OOM, "out of memory");
                    break;
                }
                out->flips = ev;
                ev = &out->flips[out->n_flips++];
                *ev = (mg_flip_event){.prompt = p, .step = s, .solo_margin = so->margin[s],
                                      .batch_margin = ba->margin[s]};
                for (int k = 0; k < MG_FLIP_TRACE; k++) {
                    int ss = s - MG_FLIP_TRACE + k;
                    ev->trace[k] = ss >= 1 ? trace[i][ss] : NAN;
                }
                ev->layers = malloc((size_t)L * sizeof(float));
                if (ev->layers) memcpy(ev->layers, layer_rel, (size_t)L * sizeof(float));
            }
        }
        for (int i = 0; i < B; i++) {
            if (member[i] == g0 + i && g0 + i < P &&
                memcmp(solo[g0 + i].gen, brow[i].gen, (size_t)N * sizeof(int32_t)) != 0)
                out->seq_diverged++;
            mg_kv_seq_free(&c.pool, &brow[i].seq);
        }
    }
    out->batch_s = mg_now_s() - t0;

    for (int i = 0; solo && i < P; i++) free(solo[i].gen), free(solo[i].margin);
    for (int i = 0; brow && i < B; i++) free(brow[i].gen), free(brow[i].margin);
    free(solo);
    free(brow);
    free(bptr);
    free(solo_kv);
    free(bcol);
    free(c.top);
    free(c.tok);
    free(c.pos);
    free(c.seqs);
    free(c.want);
    mg_forward_free(c.fw);
    mg_kv_pool_free(&c.pool);
    if (st != MG_OK) mg_flip_report_free(out);
    return st;
}
