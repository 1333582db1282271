#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../util/timer.h"
#include "engine_internal.h"
#include "engine_logprobs.h"

static const char *mode_names[MG_MODE_COUNT] = {"off", "invariant", "llm42", "margingate"};

const char *mg_mode_name(mg_mode m) { return m < MG_MODE_COUNT ? mode_names[m] : "?"; }

int mg_mode_parse(const char *s, mg_mode *out) {
    for (int m = 0; m < MG_MODE_COUNT; m++)
        if (!strcmp(s, mode_names[m])) {
            *out = (mg_mode)m;
            return 0;
        }
    return -1;
}

mg_engine_config mg_engine_config_default(void) {
    return (mg_engine_config){.kv_block_size = 16, .kv_bytes = (size_t)256 << 20, .max_batch_rows = 256,
                              .max_running = 64, .precision = MG_ACT_BF16, .llm42_window = 64, .llm42_group = 8,
                              .margingate_tau = 0.5f, .prefill_chunk = 256,
                              .llm42_kernels = MG_KERNELS_FAST};
}

/* ---- rows ---------------------------------------------------------------- */

/* A row set of `cap` rows of which at most `logits_cap` want logits. */
static mg_status rows_init(mg_rows *r, int cap, int logits_cap, int vocab) {
    memset(r, 0, sizeof *r);
    r->cap = cap;
    r->logits_cap = logits_cap;
    r->tokens = malloc((size_t)cap * sizeof(int32_t));
    r->positions = malloc((size_t)cap * sizeof(int32_t));
    r->seqs = malloc((size_t)cap * sizeof(mg_kv_seq *));
    r->want = malloc((size_t)cap);
    r->req = malloc((size_t)cap * sizeof(mg_req *));
    r->logits = malloc((size_t)logits_cap * vocab * sizeof(float));
    r->top = malloc((size_t)logits_cap * sizeof(mg_argmax));
    if (!r->tokens || !r->positions || !r->seqs || !r->want || !r->req || !r->logits || !r->top)
        return mg_error_set(MG_ERR_OOM, "cannot allocate batch buffers for %d rows", cap);
    return MG_OK;
}

static void rows_free(mg_rows *r) {
    free(r->tokens);
    free(r->positions);
    free(r->seqs);
    free(r->want);
    free(r->req);
    free(r->logits);
    free(r->top);
}

void mg_rows_clear(mg_rows *r) { r->n = r->n_want = 0; }

void mg_rows_push(mg_rows *r, mg_req *q, int32_t token, int32_t pos, mg_kv_seq *seq, int want) {
    assert(r->n < r->cap && (!want || r->n_want < r->logits_cap));
    r->tokens[r->n] = token;
    r->positions[r->n] = pos;
    r->seqs[r->n] = seq;
    r->want[r->n] = (uint8_t)(want != 0);
    r->req[r->n] = q;
    r->n_want += want != 0;
    r->n++;
}

/* Whether request q needs the logits of its rows, not only the argmax. */
static int req_needs_logits(const mg_req *q) {
    return q && (q->p.sampling.temperature > 0.0f || q->lp || q->p.record_logits);
}

mg_status mg_rows_run(mg_engine *e, mg_rows *r, mg_kernels kernels) {
    if (r->n == 0) return MG_OK;
    mg_batch b = {.n_rows = r->n, .tokens = r->tokens, .positions = r->positions, .seqs = r->seqs,
                  .want_logits = r->want};
    /* Greedy rows need 16 bytes each (token, margin) from the backend; the
     * logits (vocab floats per row) come back only when a request uses them. */
    r->have_logits = 0;
    for (int i = 0; i < r->n && !r->have_logits; i++) r->have_logits = r->want[i] && req_needs_logits(r->req[i]);
    const mg_forward_out out = {.logits = r->have_logits ? r->logits : NULL, .argmax = r->top};
    return mg_forward_run_ex(e->fw, &e->pool, &b, kernels, e->cfg.precision, &out);
}

const float *mg_rows_logits(const mg_engine *e, const mg_rows *r, int i) {
    return r->have_logits ? r->logits + (size_t)i * e->model->config.vocab_size : NULL;
}

/* ---- requests ------------------------------------------------------------ */

uint64_t mg_logits_hash(const float *logits, int vocab) {
    const unsigned char *b = (const unsigned char *)logits;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < (size_t)vocab * sizeof(float); i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

int mg_is_stop(const mg_engine *e, int32_t t) {
    const mg_config *c = &e->model->config;
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == t) return 1;
    return 0;
}

mg_status mg_req_append(mg_req *q, int32_t t, float margin, uint64_t hash) {
    if (q->n_tokens == q->cap) return mg_error_set(MG_ERR_RANGE, "request %d: token buffer full", q->id);
    q->tokens[q->n_tokens] = t;
    q->margins[q->n_tokens] = margin;
    q->hashes[q->n_tokens] = hash;
    q->n_tokens++;
    return MG_OK;
}

static void req_free(mg_engine *e, mg_req *q) {
    mg_kv_seq_free(&e->pool, &q->seq);
    free(q->faults);
    free(q->tokens);
    free(q->margins);
    free(q->hashes);
    free(q->swap_k);
    free(q->swap_v);
    mg_logprobs_free(q->lp);
    free(q);
}

void mg_req_finish(mg_engine *e, mg_req *q, mg_finish why, double now) {
    if (q->state == REQ_DONE) return;
    q->finish = why;
    q->state = REQ_DONE;
    q->finish_s = now;
    mg_kv_seq_free(&e->pool, &q->seq);
    free(q->swap_k);
    free(q->swap_v);
    q->swap_k = q->swap_v = NULL;
    mg_mode_counters *t = &e->totals[q->p.mode];
    t->steps += q->c.steps;
    t->verified_steps += q->c.verified_steps;
    t->repairs += q->c.repairs;
    t->rolled_back += q->c.rolled_back;
    t->verify_passes += q->c.verify_passes;
    t->verify_s += q->c.verify_s;
}

void mg_req_check_done(mg_engine *e, mg_req *q, double now) {
    int generated = q->n_verified - q->n_prompt;
    if (generated > 0 && !q->p.ignore_eos && mg_is_stop(e, q->tokens[q->n_verified - 1]))
        mg_req_finish(e, q, MG_FINISH_STOP, now);
    else if (generated >= q->p.max_new_tokens)
        mg_req_finish(e, q, MG_FINISH_LENGTH, now);
}

static mg_req *find_req(const mg_engine *e, int id) {
    for (int i = 0; i < e->n_reqs; i++)
        if (e->reqs[i]->id == id) return e->reqs[i];
    return NULL;
}

/* ---- engine -------------------------------------------------------------- */

void mg_engine_free(mg_engine *e) {
    if (!e) return;
    for (int i = 0; i < e->n_reqs; i++) req_free(e, e->reqs[i]);
    free(e->reqs);
    mg_kv_seq_free(&e->pool, &e->dummy);
    mg_kv_pool_free(&e->pool);
    mg_forward_free(e->fw);
    rows_free(&e->fast);
    rows_free(&e->inv);
    rows_free(&e->aux);
    free(e->scratch);
    free(e);
}

mg_status mg_engine_init(mg_engine **out, const mg_model *model, const mg_backend_ops *backend,
                         const mg_engine_config *cfg) {
    *out = NULL;
    const mg_config *mc = &model->config;
    if (cfg->kv_block_size < 1 || cfg->max_batch_rows < 1 || cfg->max_running < 1 || cfg->llm42_window < 1 ||
        cfg->llm42_group < 1 || cfg->prefill_chunk < 1 || !(cfg->margingate_tau >= 0))
        return mg_error_set(MG_ERR_ARG, "invalid engine configuration");
    mg_engine *e = calloc(1, sizeof *e);
    if (!e) return mg_error_set(MG_ERR_OOM, "cannot allocate the engine");
    e->model = model;
    e->ops = backend;
    e->cfg = *cfg;
    int verify_rows = cfg->llm42_window * cfg->llm42_group;
    int aux_rows = verify_rows > cfg->prefill_chunk ? verify_rows : cfg->prefill_chunk;
    if (aux_rows < cfg->max_running) aux_rows = cfg->max_running;
    int max_rows = aux_rows > cfg->max_batch_rows ? aux_rows : cfg->max_batch_rows;
    /* The KV pool lives on the backend; a device pool holds BF16 values in
     * BF16 numerics (the values are BF16 anyway), FP32 otherwise. */
    mg_dtype kv_dtype = !backend->host_memory && cfg->precision == MG_ACT_BF16 ? MG_DTYPE_BF16 : MG_DTYPE_F32;
    int blocks = mg_kv_pool_blocks_for_bytes_dtype(cfg->kv_bytes, kv_dtype, mc->n_layers, mc->n_kv_heads,
                                                   mc->head_dim, cfg->kv_block_size);
    mg_status st;
    if (blocks < 2) {
        st = mg_error_set(MG_ERR_ARG, "KV budget of %zu bytes holds fewer than 2 blocks", cfg->kv_bytes);
        goto fail;
    }
    if ((st = mg_forward_init(&e->fw, model, backend, max_rows)) != MG_OK) goto fail;
    if ((st = mg_kv_pool_init_on(&e->pool, backend, kv_dtype, mc->n_layers, mc->n_kv_heads, mc->head_dim,
                                 cfg->kv_block_size, blocks)) != MG_OK)
        goto fail;
    /* One block for LLM-42's padding rows. */
    if ((st = mg_kv_seq_reserve(&e->pool, &e->dummy, 1)) != MG_OK) goto fail;
    /* A request wants at most one logits row per step in the fast and
     * invariant groups; the aux group's LLM-42 verify pass wants all rows. */
    int step_logits = cfg->max_running < cfg->max_batch_rows ? cfg->max_running : cfg->max_batch_rows;
    if ((st = rows_init(&e->fast, cfg->max_batch_rows, step_logits, mc->vocab_size)) != MG_OK ||
        (st = rows_init(&e->inv, cfg->max_batch_rows, step_logits, mc->vocab_size)) != MG_OK ||
        (st = rows_init(&e->aux, aux_rows, aux_rows, mc->vocab_size)) != MG_OK)
        goto fail;
    e->scratch = malloc((size_t)mc->vocab_size * 2 * sizeof(float));
    if (!e->scratch) {
        st = mg_error_set(MG_ERR_OOM, "cannot allocate sampler scratch");
        goto fail;
    }
    *out = e;
    return MG_OK;
fail:
    mg_engine_free(e);
    return st;
}

mg_status mg_engine_add(mg_engine *e, const int32_t *prompt, int n_prompt, const mg_request_params *p, int *id) {
    const mg_config *mc = &e->model->config;
    if (n_prompt < 1) return mg_error_set(MG_ERR_ARG, "empty prompt");
    if (p->max_new_tokens < 1) return mg_error_set(MG_ERR_ARG, "max_new_tokens must be at least 1");
    if (p->mode >= MG_MODE_COUNT) return mg_error_set(MG_ERR_ARG, "unknown determinism mode");
    mg_status st = mg_sampling_validate(&p->sampling);
    if (st != MG_OK) return st;
    long total = (long)n_prompt + p->max_new_tokens;
    if (total > mc->max_seq_len)
        return mg_error_set(MG_ERR_RANGE, "prompt of %d tokens + %d new tokens exceeds the context of %d tokens",
                            n_prompt, p->max_new_tokens, mc->max_seq_len);
    long pool_tokens = (long)(e->pool.n_blocks - e->dummy.n_blocks) * e->pool.block_size;
    if (total > pool_tokens)
        return mg_error_set(MG_ERR_FULL, "request needs %ld tokens of KV cache, the pool holds %ld", total,
                            pool_tokens);
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= mc->vocab_size)
            return mg_error_set(MG_ERR_RANGE, "prompt token %d is outside the vocabulary", prompt[i]);
    if (e->n_reqs == e->cap_reqs) {
        int cap = e->cap_reqs ? 2 * e->cap_reqs : 64;
        mg_req **r = realloc(e->reqs, (size_t)cap * sizeof *r);
        if (!r) return mg_error_set(MG_ERR_OOM, "cannot grow the request table");
        e->reqs = r;
        e->cap_reqs = cap;
    }
    mg_req *q = calloc(1, sizeof *q);
    if (!q) return mg_error_set(MG_ERR_OOM, "cannot allocate a request");
    q->cap = (int)total + 1;
    q->tokens = malloc((size_t)q->cap * sizeof(int32_t));
    q->margins = calloc((size_t)q->cap, sizeof(float));
    q->hashes = calloc((size_t)q->cap, sizeof(uint64_t));
    q->faults = p->n_fault_steps > 0 ? malloc((size_t)p->n_fault_steps * sizeof(int32_t)) : NULL;
    if (!q->tokens || !q->margins || !q->hashes || (p->n_fault_steps > 0 && !q->faults)) {
        req_free(e, q);
        return mg_error_set(MG_ERR_OOM, "cannot allocate request buffers");
    }
    q->p = *p;
    if (p->n_fault_steps > 0) memcpy(q->faults, p->fault_steps, (size_t)p->n_fault_steps * sizeof(int32_t));
    q->p.fault_steps = q->faults;
    memcpy(q->tokens, prompt, (size_t)n_prompt * sizeof(int32_t));
    q->n_prompt = q->n_tokens = q->n_verified = n_prompt;
    q->id = e->next_id++;
    q->state = REQ_WAITING;
    q->arrival_s = mg_now_s();
    e->reqs[e->n_reqs++] = q;
    *id = q->id;
    return MG_OK;
}

int mg_engine_pending(const mg_engine *e) {
    int n = 0;
    for (int i = 0; i < e->n_reqs; i++) n += e->reqs[i]->state != REQ_DONE;
    return n;
}

void mg_engine_cancel(mg_engine *e, int id) {
    mg_req *q = find_req(e, id);
    if (q) mg_req_finish(e, q, MG_FINISH_CANCELLED, mg_now_s());
}

void mg_engine_release(mg_engine *e, int id) {
    for (int i = 0; i < e->n_reqs; i++) {
        if (e->reqs[i]->id != id) continue;
        mg_req *q = e->reqs[i];
        mg_req_finish(e, q, MG_FINISH_CANCELLED, mg_now_s());
        memmove(e->reqs + i, e->reqs + i + 1, (size_t)(e->n_reqs - i - 1) * sizeof *e->reqs);
        e->n_reqs--;
        req_free(e, q);
        return;
    }
}

mg_status mg_engine_view(const mg_engine *e, int id, mg_request_view *v) {
    const mg_req *q = find_req(e, id);
    if (!q) return mg_error_set(MG_ERR_ARG, "no request %d", id);
    *v = (mg_request_view){.tokens = q->tokens + q->n_prompt, .n_visible = q->n_verified - q->n_prompt,
                           .margins = q->margins + q->n_prompt,
                           .logit_hashes = q->p.record_logits ? q->hashes + q->n_prompt : NULL,
                           .finish = q->finish, .n_prompt = q->n_prompt, .counters = q->c,
                           .arrival_s = q->arrival_s, .first_token_s = q->first_token_s, .finish_s = q->finish_s};
    return MG_OK;
}

const mg_mode_counters *mg_engine_totals(const mg_engine *e) { return e->totals; }

void mg_engine_kv_usage(const mg_engine *e, int *used, int *total) {
    /* The dummy block is the engine's own, not a request's. */
    *total = e->pool.n_blocks - e->dummy.n_blocks;
    *used = e->pool.n_blocks - e->pool.n_free - e->dummy.n_blocks;
}

long mg_engine_preemptions(const mg_engine *e) { return e->preemptions; }

mg_status mg_engine_kv_column(const mg_engine *e, int id, int layer, int pos, float *k, float *v) {
    const mg_req *q = find_req(e, id);
    if (!q || q->state != REQ_RUNNING || pos < 0 || pos >= q->n_cached || layer < 0 ||
        layer >= e->model->config.n_layers)
        return mg_error_set(MG_ERR_ARG, "no cached K/V for request %d at layer %d position %d", id, layer, pos);
    return mg_kv_read(&e->pool, &q->seq, layer, pos, k, v);
}

/* ---- preemption by swapping ----------------------------------------------- */

static mg_status swap_out(mg_engine *e, mg_req *q) {
    size_t n = mg_kv_image_bytes(&e->pool, q->n_cached);
    q->swap_k = malloc(n ? n : 1);
    q->swap_v = malloc(n ? n : 1);
    if (!q->swap_k || !q->swap_v) return mg_error_set(MG_ERR_OOM, "cannot swap out request %d", q->id);
    mg_status st = mg_kv_seq_save(&e->pool, &q->seq, q->n_cached, q->swap_k, q->swap_v);
    if (st != MG_OK) return st;
    mg_kv_seq_truncate(&e->pool, &q->seq, 0);
    q->state = REQ_SWAPPED;
    e->preemptions++;
    return MG_OK;
}

/* Swaps q back in if the pool can hold its cached positions plus one. */
static int swap_in(mg_engine *e, mg_req *q) {
    if (mg_kv_seq_reserve(&e->pool, &q->seq, q->n_cached + 1) != MG_OK) return 0;
    if (mg_kv_seq_load(&e->pool, &q->seq, q->n_cached, q->swap_k, q->swap_v) != MG_OK) {
        mg_kv_seq_truncate(&e->pool, &q->seq, 0);
        return 0;
    }
    free(q->swap_k);
    free(q->swap_v);
    q->swap_k = q->swap_v = NULL;
    q->state = REQ_RUNNING;
    return 1;
}

/* Reserves KV for q up to `n_tokens` positions, swapping out later-admitted
 * running requests that have not been planned this step (planned[] marks
 * those). Returns 1 on success, 0 if q itself must wait. */
static int reserve_or_preempt(mg_engine *e, mg_req *q, int n_tokens) {
    while (mg_kv_seq_reserve(&e->pool, &q->seq, n_tokens) != MG_OK) {
        mg_req *victim = NULL;
        for (int i = 0; i < e->n_reqs; i++) {
            mg_req *r = e->reqs[i];
            if (r != q && r->state == REQ_RUNNING && r->admit_order > q->admit_order &&
                (!victim || r->admit_order > victim->admit_order))
                victim = r;
        }
        if (!victim) return 0;
        if (swap_out(e, victim) != MG_OK) return 0;
    }
    return 1;
}

/* ---- one step ---------------------------------------------------------- */

static int count_running(const mg_engine *e) {
    int n = 0;
    for (int i = 0; i < e->n_reqs; i++) n += e->reqs[i]->state == REQ_RUNNING;
    return n;
}

/* Resumes swapped requests, then admits waiting ones, oldest first. */
static void admit(mg_engine *e) {
    int running = count_running(e);
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < e->n_reqs && running < e->cfg.max_running; i++) {
            mg_req *q = e->reqs[i];
            if (pass == 0 && q->state == REQ_SWAPPED) {
                if (!swap_in(e, q)) return; /* keep FIFO order: nothing newer jumps ahead */
                running++;
            } else if (pass == 1 && q->state == REQ_WAITING) {
                int first = q->n_prompt < e->cfg.prefill_chunk ? q->n_prompt : e->cfg.prefill_chunk;
                if (mg_kv_seq_reserve(&e->pool, &q->seq, first + 1) != MG_OK) return;
                q->state = REQ_RUNNING;
                q->admit_order = e->next_admit++;
                running++;
            }
        }
}

static int is_fault_step(const mg_req *q) {
    for (int i = 0; i < q->p.n_fault_steps; i++)
        if (q->faults[i] == q->decode_steps) return 1;
    return 0;
}

/* Row group of a request's decode and prefill rows. */
static mg_rows *group_of(mg_engine *e, const mg_req *q, int prefill) {
    switch (q->p.mode) {
    case MG_MODE_INVARIANT: return &e->inv;
    case MG_MODE_MARGINGATE: return prefill ? &e->inv : &e->fast;
    case MG_MODE_LLM42: return prefill ? NULL : &e->fast; /* NULL: isolated prefill */
    default: return &e->fast;
    }
}

/* Isolated LLM-42 prefill: one fixed-size chunk per step through the fast
 * kernels (cfg.llm42_kernels), alone, so the prompt's K/V depend on the
 * prompt only. */
static mg_status isolated_prefill(mg_engine *e, mg_req *q, int *got_logits) {
    int n = q->n_prompt - q->n_cached;
    if (n > e->cfg.prefill_chunk) n = e->cfg.prefill_chunk;
    *got_logits = 0;
    if (!reserve_or_preempt(e, q, q->n_cached + n + 1)) return MG_OK; /* retry next step */
    mg_rows *r = &e->aux;
    mg_rows_clear(r);
    for (int i = 0; i < n; i++) {
        int pos = q->n_cached + i;
        mg_rows_push(r, q, q->tokens[pos], pos, &q->seq, pos == q->n_prompt - 1);
    }
    mg_status st = mg_rows_run(e, r, e->cfg.llm42_kernels);
    if (st != MG_OK) return st;
    q->n_cached += n;
    *got_logits = q->n_cached == q->n_prompt;
    return MG_OK;
}

int32_t mg_req_sample(mg_engine *e, const mg_req *q, const mg_rows *r, int i, float *margin) {
    *margin = r->top[i].margin;
    if (!(q->p.sampling.temperature > 0.0f)) return r->top[i].token; /* = mg_sample's greedy choice */
    return mg_sample(mg_rows_logits(e, r, i), e->model->config.vocab_size, &q->p.sampling, q->n_tokens, e->scratch);
}

mg_status mg_req_accept(mg_engine *e, mg_req *q, int32_t tok, float margin, const float *logits, double now) {
    uint64_t h = q->p.record_logits ? mg_logits_hash(logits, e->model->config.vocab_size) : 0;
    mg_status st = mg_req_append(q, tok, margin, h);
    if (st != MG_OK) return st;
    if (q->lp) mg_logprobs_record(e, q, q->n_tokens - 1, tok, logits);
    if (q->p.mode != MG_MODE_LLM42 || q->n_tokens == q->n_prompt + 1) q->n_verified = q->n_tokens;
    if (q->first_token_s == 0) q->first_token_s = now;
    if (q->p.mode == MG_MODE_LLM42) {
        int gen = q->n_tokens - q->n_prompt;
        if ((!q->p.ignore_eos && mg_is_stop(e, tok)) || gen >= q->p.max_new_tokens) q->fast_done = 1;
        if (q->n_verified == q->n_tokens) mg_req_check_done(e, q, now);
    } else {
        mg_req_check_done(e, q, now);
    }
    return MG_OK;
}

mg_status mg_engine_step(mg_engine *e) {
    admit(e);
    mg_rows_clear(&e->fast);
    mg_rows_clear(&e->inv);
    const double t_start = mg_now_s();
    mg_status st = MG_OK;

    /* Decode rows first (one per running request), then prefill chunks
     * with the rows left. A row feeds the last token at its position. */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < e->n_reqs; i++) {
            mg_req *q = e->reqs[i];
            if (q->state != REQ_RUNNING) continue;
            int prefill = q->n_cached < q->n_prompt;
            if (prefill != pass || (q->p.mode == MG_MODE_LLM42 && q->fast_done)) continue;
            mg_rows *g = group_of(e, q, prefill);
            if (!g) continue;
            int room = g->cap - g->n;
            if (room == 0) continue;
            int n = prefill ? q->n_prompt - q->n_cached : 1;
            if (n > room) n = room;
            int first = prefill ? q->n_cached : q->n_tokens - 1;
            if (!reserve_or_preempt(e, q, first + n + 1)) {
                if (count_running(e) == 1) mg_req_finish(e, q, MG_FINISH_ERROR, t_start);
                else swap_out(e, q);
                continue;
            }
            for (int k = 0; k < n; k++) {
                int pos = first + k;
                mg_rows_push(g, q, q->tokens[pos], pos, &q->seq, !prefill || pos == q->n_prompt - 1);
            }
        }
    /* A request swapped out above after being planned must not run. */
    mg_rows *groups[2] = {&e->fast, &e->inv};
    for (int gi = 0; gi < 2; gi++) {
        mg_rows *g = groups[gi];
        int w = 0, nw = 0;
        for (int r = 0; r < g->n; r++) {
            if (g->req[r]->state != REQ_RUNNING) continue;
            g->tokens[w] = g->tokens[r];
            g->positions[w] = g->positions[r];
            g->seqs[w] = g->seqs[r];
            g->want[w] = g->want[r];
            g->req[w] = g->req[r];
            nw += g->want[r];
            w++;
        }
        g->n = w;
        g->n_want = nw;
    }
    if ((st = mg_rows_run(e, &e->fast, MG_KERNELS_FAST)) != MG_OK) return st;
    if ((st = mg_rows_run(e, &e->inv, MG_KERNELS_INVARIANT)) != MG_OK) return st;
    double now = mg_now_s();

    /* Sample, and collect MarginGate's low-margin rows. */
    int cap_flag = e->fast.n + 1;
    mg_req **flag_req = malloc((size_t)cap_flag * sizeof *flag_req);
    int32_t *flag_tok = malloc((size_t)cap_flag * sizeof *flag_tok);
    float *flag_margin = malloc((size_t)cap_flag * sizeof *flag_margin);
    int n_flag = 0;
    if (!flag_req || !flag_tok || !flag_margin) {
        st = mg_error_set(MG_ERR_OOM, "cannot allocate step buffers");
        goto out;
    }
    for (int gi = 0; gi < 2; gi++) {
        mg_rows *g = groups[gi];
        int li = 0;
        for (int r = 0; r < g->n; r++) {
            mg_req *q = g->req[r];
            /* Advance the cached-prefix count for every row. */
            if (g->positions[r] + 1 > q->n_cached) q->n_cached = g->positions[r] + 1;
            if (!g->want[r]) continue;
            const float *logits = mg_rows_logits(e, g, li);
            int decode = q->n_tokens > q->n_prompt;
            float margin;
            int32_t tok = mg_req_sample(e, q, g, li++, &margin);
            if (decode) {
                int fault = (q->p.mode == MG_MODE_LLM42 || q->p.mode == MG_MODE_MARGINGATE) && is_fault_step(q);
                q->decode_steps++;
                q->c.steps++;
                if (fault) {
                    tok = (tok + 1) % e->model->config.vocab_size;
                    margin = 0.0f;
                }
                const int sampled = q->p.sampling.temperature > 0; /* a draw can move at any margin */
                if (q->p.mode == MG_MODE_MARGINGATE && (margin < e->cfg.margingate_tau || fault || sampled)) {
                    flag_req[n_flag] = q;
                    flag_tok[n_flag] = tok;
                    flag_margin[n_flag] = margin;
                    n_flag++;
                    continue;
                }
            }
            if ((st = mg_req_accept(e, q, tok, margin, logits, now)) != MG_OK) goto out;
        }
    }
    /* Isolated LLM-42 prefills. */
    for (int i = 0; i < e->n_reqs; i++) {
        mg_req *q = e->reqs[i];
        if (q->state != REQ_RUNNING || q->p.mode != MG_MODE_LLM42 || q->n_cached >= q->n_prompt) continue;
        int got;
        if ((st = isolated_prefill(e, q, &got)) != MG_OK) goto out;
        if (got) {
            float margin;
            const float *logits = mg_rows_logits(e, &e->aux, 0);
            int32_t tok = mg_req_sample(e, q, &e->aux, 0, &margin);
            if ((st = mg_req_accept(e, q, tok, margin, logits, mg_now_s())) != MG_OK) goto out;
        }
    }
    if (n_flag > 0 && (st = mg_margingate_verify(e, flag_req, flag_tok, flag_margin, n_flag)) != MG_OK) goto out;
    if ((st = mg_llm42_verify_ready(e, mg_now_s())) != MG_OK) goto out;
out:
    free(flag_req);
    free(flag_tok);
    free(flag_margin);
    return st;
}
