/* The tensor-parallel backend (see tp.h for the design): rank workers,
 * buffer handles, weight sharding and the op table. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "tp_internal.h"

/* One allocation. Replicated: rank 0's pointer is the handle. kv: split by
 * KV head (each rank holds bytes / n); the handle is a reserved range of
 * `bytes` addresses with no memory behind it (mmap PROT_NONE), so that
 * handle ranges never overlap. */
typedef struct {
    uintptr_t base0;
    size_t bytes;
    int kv;
    void *ptr[MG_TP_MAX_RANKS];
} alloc_rec;

/* A weight vector (norm or bias) of rank 0's mirror, its copies, and the
 * model it belongs to. */
typedef struct {
    const float *key;
    const float *ptr[MG_TP_MAX_RANKS];
    const void *owner; /* the model_rec */
} vec_rec;

/* One model split over the ranks. */
typedef struct {
    const mg_model *model;
    int refs;
    mg_model shard[MG_TP_MAX_RANKS];              /* host views: config and weights of rank r */
    mg_layer_weights *shard_layers[MG_TP_MAX_RANKS];
    void *owned[MG_TP_MAX_RANKS];                 /* rank r's row-parallel columns (host copies) */
    const mg_weights *mirror[MG_TP_MAX_RANKS];    /* base weights_acquire of each shard */
    mg_weights vm;                                /* what the forward pass sees: rank 0's mirror */
    mg_layer_weights *vm_layers;                  /* (n_layers) copy of rank 0's layers */
} model_rec;

#define MAX_MODELS 4
#define SCRATCH_KINDS 2 /* 0: a rank's own partials, 1: gathered partials */
#define MAX_RETIRED 64

typedef mg_status (*job_fn)(int rank, void *arg);

static struct {
    int ready, n;
    int skip_comm; /* MG_TP_SKIP_COMM=1: collectives do nothing (timing only; results wrong) */
    char base_name[16];
    const mg_backend_ops *base[MG_TP_MAX_RANKS];
    const mg_tp_comm_ops *comm_ops;
    void *comm;
    /* workers */
    pthread_t thread[MG_TP_MAX_RANKS];
    pthread_mutex_t mu;
    pthread_cond_t job_cv, done_cv;
    job_fn fn;
    void *arg;
    unsigned long gen;
    int pending;
    mg_status status[MG_TP_MAX_RANKS];
    char error[MG_TP_MAX_RANKS][512];
    /* buffers */
    alloc_rec *recs; /* sorted by base0 */
    int n_recs, cap_recs;
    vec_rec *vecs; /* sorted by key */
    int n_vecs, cap_vecs;
    model_rec models[MAX_MODELS];
    const void *rows_dev[MG_TP_MAX_RANKS]; /* each rank's rows_prepare result */
    /* Reduction scratch per rank and kind, grown only; a grown buffer's old
     * one stays allocated (a CUDA graph may have recorded it). */
    void *scratch[MG_TP_MAX_RANKS][SCRATCH_KINDS];
    size_t scratch_bytes[MG_TP_MAX_RANKS][SCRATCH_KINDS];
    void *retired[MG_TP_MAX_RANKS][MAX_RETIRED];
    int n_retired[MG_TP_MAX_RANKS];
} T = {.mu = PTHREAD_MUTEX_INITIALIZER, .job_cv = PTHREAD_COND_INITIALIZER, .done_cv = PTHREAD_COND_INITIALIZER};

static _Thread_local int tp_rank = -1; /* the rank of a worker thread, -1 elsewhere */

/* ---- workers ---------------------------------------------------------------- */

static void *worker_main(void *arg) {
    const int r = (int)(intptr_t)arg;
    tp_rank = r;
    unsigned long seen = 0;
    for (;;) {
        pthread_mutex_lock(&T.mu);
        while (T.gen == seen) pthread_cond_wait(&T.job_cv, &T.mu);
        seen = T.gen;
        job_fn fn = T.fn;
        void *a = T.arg;
        pthread_mutex_unlock(&T.mu);
        mg_status st = fn(r, a);
        if (st != MG_OK) snprintf(T.error[r], sizeof T.error[r], "%s", mg_error_last());
        pthread_mutex_lock(&T.mu);
        T.status[r] = st;
        if (--T.pending == 0) pthread_cond_signal(&T.done_cv);
        pthread_mutex_unlock(&T.mu);
    }
    return NULL;
}

/* Runs fn(rank, arg) on every rank's worker at once and waits for all;
 * the first failing rank's status and message are returned. */
static mg_status run_all(job_fn fn, void *arg) {
    pthread_mutex_lock(&T.mu);
    T.fn = fn;
    T.arg = arg;
    T.pending = T.n;
    T.gen++;
    pthread_cond_broadcast(&T.job_cv);
    while (T.pending > 0) pthread_cond_wait(&T.done_cv, &T.mu);
    pthread_mutex_unlock(&T.mu);
    for (int r = 0; r < T.n; r++)
        if (T.status[r] != MG_OK) return mg_error_set(T.status[r], "tensor-parallel rank %d: %s", r, T.error[r]);
    return MG_OK;
}

/* ---- buffer handles -------------------------------------------------------------- */

/* The record whose allocation contains p (NULL if none). */
static alloc_rec *rec_of(const void *p) {
    const uintptr_t a = (uintptr_t)p;
    int lo = 0, hi = T.n_recs - 1;
    while (lo <= hi) {
        const int mid = (lo + hi) / 2;
        alloc_rec *r = &T.recs[mid];
        if (a < r->base0)
            hi = mid - 1;
        else if (a >= r->base0 + (r->bytes ? r->bytes : 1))
            lo = mid + 1;
        else
            return r;
    }
    return NULL;
}

/* Rank r's address of handle address p (NULL stays NULL; p itself when it
 * is not inside a TP allocation: the caller's ops report such misuse). */
static void *at_rank(const void *p, int r) {
    if (!p) return NULL;
    alloc_rec *rec = rec_of(p);
    if (!rec || (r == 0 && !rec->kv)) return (void *)p;
    const size_t off = (uintptr_t)p - rec->base0;
    return (char *)rec->ptr[r] + (rec->kv ? off / (size_t)T.n : off);
}

/* Makes room for one more element in a growable array (*arr, n used of
 * *cap, `elem` bytes each). */
static mg_status room_for_one(void **arr, int n, int *cap, size_t elem, const char *what) {
    if (n < *cap) return MG_OK;
    const int grown = *cap ? 2 * *cap : 64;
    void *a = realloc(*arr, (size_t)grown * elem);
    if (!a) return mg_error_set(MG_ERR_OOM, "cannot grow the tensor-parallel %s table", what);
    *arr = a;
    *cap = grown;
    return MG_OK;
}

static mg_status rec_insert(const alloc_rec *rec) {
    MG_TRY(room_for_one((void **)&T.recs, T.n_recs, &T.cap_recs, sizeof *T.recs, "allocation"));
    int i = T.n_recs;
    while (i > 0 && T.recs[i - 1].base0 > rec->base0) {
        T.recs[i] = T.recs[i - 1];
        i--;
    }
    T.recs[i] = *rec;
    T.n_recs++;
    return MG_OK;
}

/* ---- memory ops ------------------------------------------------------------------------ */

typedef struct {
    size_t bytes; /* per rank */
    alloc_rec rec;
} alloc_job;

static mg_status alloc_on(int r, void *arg) {
    alloc_job *j = arg;
    return T.base[r]->alloc(&j->rec.ptr[r], j->bytes);
}

static mg_status free_on(int r, void *arg) {
    alloc_rec *rec = arg;
    T.base[r]->free(rec->ptr[r]);
    return MG_OK;
}

static mg_status tp_alloc_kind(void **out, size_t bytes, int kv) {
    *out = NULL;
    if (tp_rank >= 0) return mg_error_set(MG_ERR_ARG, "tensor-parallel alloc inside a forward pass");
    if (kv && bytes % (size_t)T.n)
        return mg_error_set(MG_ERR_ARG, "KV pool of %zu bytes does not split over %d ranks", bytes, T.n);
    alloc_job j = {.bytes = kv ? bytes / (size_t)T.n : bytes, .rec = {.bytes = bytes, .kv = kv}};
    void *handle = NULL;
    if (kv) {
        handle = mmap(NULL, bytes ? bytes : 1, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (handle == MAP_FAILED) return mg_error_set(MG_ERR_OOM, "cannot reserve %zu bytes of KV handles", bytes);
    }
    mg_status st = run_all(alloc_on, &j);
    if (st == MG_OK) {
        j.rec.base0 = (uintptr_t)(kv ? handle : j.rec.ptr[0]);
        st = rec_insert(&j.rec);
    }
    if (st != MG_OK) {
        mg_status keep = st;
        char msg[512];
        snprintf(msg, sizeof msg, "%s", mg_error_last());
        (void)run_all(free_on, &j.rec); /* base free(NULL) is fine */
        if (kv) munmap(handle, bytes ? bytes : 1);
        return mg_error_set(keep, "%s", msg);
    }
    *out = (void *)j.rec.base0;
    return MG_OK;
}

static mg_status tp_alloc(void **out, size_t bytes) { return tp_alloc_kind(out, bytes, 0); }
static mg_status tp_alloc_kv(void **out, size_t bytes) { return tp_alloc_kind(out, bytes, 1); }

static void tp_free(void *p) {
    if (!p) return;
    alloc_rec *rec = rec_of(p);
    if (!rec || rec->base0 != (uintptr_t)p) return;
    alloc_rec copy = *rec;
    (void)run_all(free_on, &copy);
    if (copy.kv) munmap((void *)copy.base0, copy.bytes ? copy.bytes : 1);
    const int i = (int)(rec - T.recs);
    memmove(&T.recs[i], &T.recs[i + 1], (size_t)(T.n_recs - i - 1) * sizeof *T.recs);
    T.n_recs--;
}

/* A transfer between host memory and a handle range, or within handles. */
typedef struct {
    void *dst;
    const void *src;
    size_t bytes;
    int kind; /* 0 upload, 1 download, 2 copy, 3 zero, 4 act upload, 5 act download */
    int round_bf16;
} xfer_job;

/* Rank r's part of a transfer: replicated buffers move whole (downloads
 * from rank 0 only); KV pools move bytes / n at offset / n, and the host
 * side holds the ranks' parts one after another. */
static mg_status xfer_on(int r, void *arg) {
    const xfer_job *j = arg;
    const mg_backend_ops *b = T.base[r];
    const void *dev = j->kind == 1 || j->kind == 5 ? j->src : j->dst;
    alloc_rec *rec = rec_of(dev);
    const int kv = rec && rec->kv;
    const size_t part = kv ? j->bytes / (size_t)T.n : j->bytes, host_off = kv ? (size_t)r * part : 0;
    switch (j->kind) {
    case 0: return b->upload(at_rank(j->dst, r), (const char *)j->src + host_off, part);
    case 1: return kv || r == 0 ? b->download((char *)j->dst + host_off, at_rank(j->src, r), part) : MG_OK;
    case 2: return b->copy(at_rank(j->dst, r), at_rank(j->src, r), part);
    case 3: return b->zero(at_rank(j->dst, r), part);
    case 4: return b->act_upload(at_rank(j->dst, r), j->src, j->bytes, j->round_bf16);
    default: return r == 0 ? b->act_download(j->dst, j->src, j->bytes, j->round_bf16) : MG_OK;
    }
}

static mg_status xfer(void *dst, const void *src, size_t bytes, int kind, int round_bf16) {
    const void *dev = kind == 1 || kind == 5 ? src : dst;
    alloc_rec *rec = rec_of(dev);
    if (!rec) return mg_error_set(MG_ERR_ARG, "tensor-parallel transfer outside any allocation");
    if (rec->kv && (bytes % (size_t)T.n || ((uintptr_t)dev - rec->base0) % (size_t)T.n))
        return mg_error_set(MG_ERR_ARG, "KV transfer of %zu bytes does not split over %d ranks", bytes, T.n);
    xfer_job j = {dst, src, bytes, kind, round_bf16};
    if (tp_rank >= 0) return xfer_on(tp_rank, &j);
    return run_all(xfer_on, &j);
}

static mg_status tp_upload(void *dst, const void *src, size_t bytes) { return xfer(dst, src, bytes, 0, 0); }
static mg_status tp_download(void *dst, const void *src, size_t bytes) { return xfer(dst, src, bytes, 1, 0); }
static mg_status tp_copy(void *dst, const void *src, size_t bytes) { return xfer(dst, src, bytes, 2, 0); }
static mg_status tp_zero(void *dst, size_t bytes) { return xfer(dst, NULL, bytes, 3, 0); }
static mg_status tp_act_upload(void *dst, const float *src, size_t n, int rb) { return xfer(dst, src, n, 4, rb); }
static mg_status tp_act_download(float *dst, const void *src, size_t n, int rb) { return xfer(dst, src, n, 5, rb); }

static mg_status sync_on(int r, void *arg) {
    (void)arg;
    return T.base[r]->sync();
}

static mg_status tp_sync(void) { return tp_rank >= 0 ? T.base[tp_rank]->sync() : run_all(sync_on, NULL); }

static size_t tp_act_size(int round_bf16) { return T.base[0]->act_size(round_bf16); }

/* ---- weights --------------------------------------------------------------------- */

static mg_status vec_add(const void *owner, const float *key, const float *const ptr[]) {
    if (!key) return MG_OK;
    MG_TRY(room_for_one((void **)&T.vecs, T.n_vecs, &T.cap_vecs, sizeof *T.vecs, "weight"));
    int i = T.n_vecs;
    while (i > 0 && (uintptr_t)T.vecs[i - 1].key > (uintptr_t)key) {
        T.vecs[i] = T.vecs[i - 1];
        i--;
    }
    T.vecs[i].key = key;
    T.vecs[i].owner = owner;
    for (int r = 0; r < T.n; r++) T.vecs[i].ptr[r] = ptr[r];
    T.n_vecs++;
    return MG_OK;
}

/* Rank r's copy of weight vector v of rank 0's mirror (NULL stays NULL). */
static const float *vec_at(const float *v, int r) {
    if (!v || r == 0) return v;
    int lo = 0, hi = T.n_vecs - 1;
    while (lo <= hi) {
        const int mid = (lo + hi) / 2;
        if ((uintptr_t)T.vecs[mid].key < (uintptr_t)v)
            lo = mid + 1;
        else if ((uintptr_t)T.vecs[mid].key > (uintptr_t)v)
            hi = mid - 1;
        else
            return T.vecs[mid].ptr[r];
    }
    return v;
}

static void vec_remove_model(const model_rec *m) {
    int k = 0;
    for (int i = 0; i < T.n_vecs; i++)
        if (T.vecs[i].owner != m) T.vecs[k++] = T.vecs[i];
    T.n_vecs = k;
}

typedef enum { W_REPLICATED, W_COLUMN, W_ROW, W_VOCAB, W_UNKNOWN } w_kind;

/* Which weight matrix of a TP model `w` is, and rank r's copy of it. */
static w_kind matrix_at(const mg_matrix *w, int r, const mg_matrix **out) {
    for (int i = 0; i < MAX_MODELS; i++) {
        const model_rec *m = &T.models[i];
        if (!m->model) continue;
        if (w == &m->vm.tok_embed) {
            *out = &m->mirror[r]->tok_embed;
            return W_REPLICATED;
        }
        if (w == &m->vm.lm_head) {
            *out = &m->mirror[r]->lm_head;
            return W_VOCAB;
        }
        const int L = m->model->config.n_layers;
        const char *p = (const char *)w, *lo = (const char *)m->vm_layers, *hi = lo + (size_t)L * sizeof *m->vm_layers;
        if (p < lo || p >= hi) continue;
        const size_t l = (size_t)(p - lo) / sizeof *m->vm_layers, off = (size_t)(p - lo) % sizeof *m->vm_layers;
        *out = (const mg_matrix *)((const char *)&m->mirror[r]->layers[l] + off);
        if (off == offsetof(mg_layer_weights, wo) || off == offsetof(mg_layer_weights, w_down)) return W_ROW;
        return W_COLUMN;
    }
    *out = NULL;
    return W_UNKNOWN;
}

static mg_matrix rows_of(const mg_matrix *m, int r, int n) {
    mg_matrix s = *m;
    const size_t es = m->dtype == MG_DTYPE_BF16 ? 2 : 4;
    s.rows = m->rows / n;
    s.data = (const char *)m->data + (size_t)r * s.rows * m->cols * es;
    return s;
}

/* Rank r's columns of m, copied into *buf (advanced past them). */
static mg_matrix cols_of(const mg_matrix *m, int r, int n, char **buf) {
    mg_matrix s = *m;
    const size_t es = m->dtype == MG_DTYPE_BF16 ? 2 : 4, w = (size_t)(m->cols / n);
    s.cols = (int)w;
    for (int i = 0; i < m->rows; i++)
        memcpy(*buf + (size_t)i * w * es, (const char *)m->data + ((size_t)i * m->cols + (size_t)r * w) * es, w * es);
    s.data = *buf;
    *buf += (size_t)m->rows * w * es;
    return s;
}

static const float *vec_part(const float *v, size_t len, int r, int n) {
    return v ? v + (size_t)r * (len / (size_t)n) : NULL;
}

/* Builds rank r's host view of the model: config with its share of the
 * heads / FFN / vocabulary, contiguous slices pointing into the model's
 * own weights (no copy), row-parallel columns copied. */
static mg_status make_shard(model_rec *m, int r) {
    const mg_model *model = m->model;
    const mg_config *c = &model->config;
    const int n = T.n;
    mg_model *s = &m->shard[r];
    memset(s, 0, sizeof *s);
    s->config = *c;
    s->config.n_heads /= n;
    s->config.n_kv_heads /= n;
    s->config.hidden_dim /= n;
    s->config.vocab_size /= n;
    m->shard_layers[r] = calloc((size_t)c->n_layers, sizeof(mg_layer_weights));
    const mg_weights *w = &model->weights;
    const size_t es = w->layers[0].wo.dtype == MG_DTYPE_BF16 ? 2 : 4;
    const size_t row_par = ((size_t)w->layers[0].wo.rows * w->layers[0].wo.cols +
                            (size_t)w->layers[0].w_down.rows * w->layers[0].w_down.cols) / (size_t)n * es;
    m->owned[r] = malloc(row_par * (size_t)c->n_layers);
    if (!m->shard_layers[r] || !m->owned[r])
        return mg_error_set(MG_ERR_OOM, "cannot allocate the weight shard of rank %d", r);
    char *buf = m->owned[r];
    const size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    s->weights.tok_embed = w->tok_embed;
    s->weights.lm_head = rows_of(&w->lm_head, r, n);
    s->weights.final_norm = w->final_norm;
    s->weights.layers = m->shard_layers[r];
    for (int l = 0; l < c->n_layers; l++) {
        const mg_layer_weights *src = &w->layers[l];
        mg_layer_weights *d = &m->shard_layers[r][l];
        d->attn_norm = src->attn_norm;
        d->mlp_norm = src->mlp_norm;
        d->wq = rows_of(&src->wq, r, n);
        d->wk = rows_of(&src->wk, r, n);
        d->wv = rows_of(&src->wv, r, n);
        d->bq = vec_part(src->bq, qd, r, n);
        d->bk = vec_part(src->bk, kvd, r, n);
        d->bv = vec_part(src->bv, kvd, r, n);
        d->w_gate = rows_of(&src->w_gate, r, n);
        d->w_up = rows_of(&src->w_up, r, n);
        d->wo = cols_of(&src->wo, r, n, &buf);
        d->w_down = cols_of(&src->w_down, r, n, &buf);
        d->bo = NULL;
    }
    return MG_OK;
}

typedef struct {
    model_rec *m;
} model_job;

static mg_status acquire_on(int r, void *arg) {
    model_rec *m = ((model_job *)arg)->m;
    return T.base[r]->weights_acquire(&m->mirror[r], &m->shard[r]);
}

static mg_status release_on(int r, void *arg) {
    model_rec *m = ((model_job *)arg)->m;
    if (m->mirror[r]) T.base[r]->weights_release(&m->shard[r]);
    m->mirror[r] = NULL;
    return MG_OK;
}

static void model_drop(model_rec *m) {
    model_job j = {m};
    (void)run_all(release_on, &j);
    vec_remove_model(m);
    for (int r = 0; r < T.n; r++) {
        free(m->shard_layers[r]);
        free(m->owned[r]);
    }
    free(m->vm_layers);
    memset(m, 0, sizeof *m);
}

static mg_status check_splittable(const mg_config *c, int n) {
    const struct {
        const char *what;
        int value;
    } dims[] = {{"attention heads", c->n_heads},
                {"KV heads", c->n_kv_heads},
                {"intermediate size", c->hidden_dim},
                {"vocabulary", c->vocab_size}};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i].value % n)
            return mg_error_set(MG_ERR_UNSUPPORTED, "tensor parallel %d: the model's %s (%d) do not split evenly", n,
                                dims[i].what, dims[i].value);
    if (c->o_bias) return mg_error_set(MG_ERR_UNSUPPORTED, "tensor parallelism does not support an o_proj bias");
    return MG_OK;
}

static mg_status tp_weights_acquire(const mg_weights **out, const mg_model *model) {
    *out = NULL;
    for (int i = 0; i < MAX_MODELS; i++)
        if (T.models[i].model == model) {
            T.models[i].refs++;
            *out = &T.models[i].vm;
            return MG_OK;
        }
    MG_TRY(check_splittable(&model->config, T.n));
    model_rec *m = NULL;
    for (int i = 0; i < MAX_MODELS && !m; i++)
        if (!T.models[i].model) m = &T.models[i];
    if (!m) return mg_error_set(MG_ERR_FULL, "more than %d models on the tensor-parallel backend", MAX_MODELS);
    m->model = model;
    mg_status st = MG_OK;
    for (int r = 0; r < T.n && st == MG_OK; r++) st = make_shard(m, r);
    model_job j = {m};
    if (st == MG_OK) st = run_all(acquire_on, &j);
    const int L = model->config.n_layers;
    if (st == MG_OK) {
        m->vm = *m->mirror[0];
        m->vm_layers = malloc((size_t)L * sizeof *m->vm_layers);
        if (!m->vm_layers) st = mg_error_set(MG_ERR_OOM, "cannot allocate the layer table");
    }
    if (st == MG_OK) {
        memcpy(m->vm_layers, m->mirror[0]->layers, (size_t)L * sizeof *m->vm_layers);
        m->vm.layers = m->vm_layers;
        const float *ptr[MG_TP_MAX_RANKS];
#define VEC(expr)                                                                                            \
    do {                                                                                                     \
        for (int r = 0; r < T.n; r++) ptr[r] = m->mirror[r]->expr;                                           \
        if (st == MG_OK) st = vec_add(m, m->mirror[0]->expr, ptr);                                           \
    } while (0)
        VEC(final_norm);
        for (int l = 0; l < L; l++) {
            VEC(layers[l].attn_norm);
            VEC(layers[l].mlp_norm);
            VEC(layers[l].bq);
            VEC(layers[l].bk);
            VEC(layers[l].bv);
        }
#undef VEC
    }
    if (st != MG_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", mg_error_last());
        model_drop(m);
        return mg_error_set(st, "%s", msg);
    }
    m->refs = 1;
    *out = &m->vm;
    return MG_OK;
}

static void tp_weights_release(const mg_model *model) {
    for (int i = 0; i < MAX_MODELS; i++)
        if (T.models[i].model == model && --T.models[i].refs == 0) model_drop(&T.models[i]);
}

/* ---- rows and passes ------------------------------------------------------------- */

static mg_status rows_on(int r, void *arg) {
    mg_attn_rows local = *(const mg_attn_rows *)arg;
    local.dev = NULL;
    MG_TRY(T.base[r]->rows_prepare(&local));
    T.rows_dev[r] = local.dev;
    return MG_OK;
}

static mg_status tp_rows_prepare(mg_attn_rows *rows) {
    MG_TRY(run_all(rows_on, rows));
    rows->dev = T.rows_dev[0];
    return MG_OK;
}

typedef struct {
    const void *key;
    size_t key_bytes;
    mg_status (*issue)(void *ctx);
    void *ctx;
} pass_job;

static mg_status pass_on(int r, void *arg) {
    const pass_job *j = arg;
    if (T.base[r]->graph_run) return T.base[r]->graph_run(j->key, j->key_bytes, j->issue, j->ctx);
    return j->issue(j->ctx);
}

static mg_status tp_graph_run(const void *key, size_t key_bytes, mg_status (*issue)(void *ctx), void *ctx) {
    pass_job j = {key, key_bytes, issue, ctx};
    return run_all(pass_on, &j);
}

/* ---- compute ops (on a worker: rank = tp_rank) ----------------------------------------- */

static mg_status allreduce(int r, float *buf, size_t count) {
    return T.skip_comm ? MG_OK : T.comm_ops->allreduce_f32(T.comm, r, buf, count);
}

static mg_status allgather(int r, const void *send, void *recv, size_t bytes) {
    return T.skip_comm ? MG_OK : T.comm_ops->allgather(T.comm, r, send, recv, bytes);
}

static mg_status worker_rank(int *r) {
    *r = tp_rank;
    if (*r < 0) return mg_error_set(MG_ERR_ARG, "tensor-parallel compute ops run inside a forward pass only");
    return MG_OK;
}

static mg_attn_rows rows_at(const mg_attn_rows *rows, int r) {
    mg_attn_rows local = *rows;
    local.dev = T.rows_dev[r];
    return local;
}

/* Rank r's view of a KV pool: its KV heads, its part of the storage. */
static mg_kv_pool pool_at(const mg_kv_pool *pool, int r) {
    mg_kv_pool local = *pool;
    local.n_kv_heads = pool->n_kv_heads / T.n;
    local.k = at_rank(pool->k, r);
    local.v = at_rank(pool->v, r);
    local.ops = T.base[r];
    return local;
}

static mg_status scratch(int r, int kind, size_t bytes, float **out) {
    if (bytes > T.scratch_bytes[r][kind]) {
        if (T.scratch[r][kind]) {
            if (T.n_retired[r] == MAX_RETIRED)
                return mg_error_set(MG_ERR_FULL, "tensor-parallel scratch grew more than %d times", MAX_RETIRED);
            T.retired[r][T.n_retired[r]++] = T.scratch[r][kind];
        }
        T.scratch[r][kind] = NULL;
        T.scratch_bytes[r][kind] = 0;
        const size_t grown = bytes + bytes / 2;
        MG_TRY(T.base[r]->alloc(&T.scratch[r][kind], grown));
        T.scratch_bytes[r][kind] = grown;
    }
    *out = T.scratch[r][kind];
    return MG_OK;
}

static mg_status tp_embed(void *out, const mg_matrix *table, const mg_attn_rows *rows, int rb) {
    int r;
    MG_TRY(worker_rank(&r));
    const mg_matrix *t;
    if (matrix_at(table, r, &t) != W_REPLICATED) return mg_error_set(MG_ERR_ARG, "embed: not the model's table");
    const mg_attn_rows local = rows_at(rows, r);
    return T.base[r]->embed(at_rank(out, r), t, &local, rb);
}

static mg_status tp_rmsnorm(void *out, const void *in, const float *weight, int n, int dim, float eps, int rb) {
    int r;
    MG_TRY(worker_rank(&r));
    return T.base[r]->rmsnorm(at_rank(out, r), at_rank(in, r), vec_at(weight, r), n, dim, eps, rb);
}

static mg_status tp_add_rmsnorm(void *x, const void *y, void *out, const float *weight, int n, int dim, float eps,
                                int rb) {
    int r;
    MG_TRY(worker_rank(&r));
    return T.base[r]->add_rmsnorm(at_rank(x, r), at_rank(y, r), at_rank(out, r), vec_at(weight, r), n, dim, eps, rb);
}

/* out = in w^T for a row-parallel w (rank r's input columns), reduced over
 * the ranks as tp.h describes. */
static mg_status row_parallel(int r, void *out, const void *in, const mg_matrix *w, int n, mg_kernels kernels,
                              int rb) {
    const mg_backend_ops *b = T.base[r];
    const size_t count = (size_t)n * (size_t)w->rows;
    float *own, *all;
    if (kernels == MG_KERNELS_FAST) {
        MG_TRY(scratch(r, 0, count * sizeof(float), &own));
        MG_TRY(b->logits(own, in, w, n, MG_KERNELS_FAST, rb));
        MG_TRY(allreduce(r, own, count));
        return b->fold(out, own, 1, count, rb);
    }
    if (!b->matmul_groups)
        return mg_error_set(MG_ERR_UNSUPPORTED, "the %s backend has no matmul_groups for tensor parallelism",
                            b->name);
    const int groups = (w->cols + MG_MATMUL_GROUP - 1) / MG_MATMUL_GROUP;
    const size_t bytes = (size_t)groups * count * sizeof(float);
    MG_TRY(scratch(r, 0, bytes, &own));
    MG_TRY(scratch(r, 1, bytes * (size_t)T.n, &all));
    MG_TRY(b->matmul_groups(own, in, w, n, rb));
    MG_TRY(allgather(r, own, all, bytes));
    return b->fold(out, all, groups * T.n, count, rb);
}

static mg_status tp_matmul(void *out, const void *in, const mg_matrix *w, const float *bias, int n,
                           mg_kernels kernels, int rb) {
    int r;
    MG_TRY(worker_rank(&r));
    const mg_matrix *wr;
    const w_kind kind = matrix_at(w, r, &wr);
    if (kind == W_ROW) {
        if (bias) return mg_error_set(MG_ERR_UNSUPPORTED, "row-parallel matmul with a bias");
        return row_parallel(r, at_rank(out, r), at_rank(in, r), wr, n, kernels, rb);
    }
    if (kind != W_COLUMN) return mg_error_set(MG_ERR_ARG, "tensor-parallel matmul of a matrix outside the model");
    return T.base[r]->matmul(at_rank(out, r), at_rank(in, r), wr, vec_at(bias, r), n, kernels, rb);
}

static mg_status tp_matmul_multi(const mg_matmul_part *parts, int n_parts, const void *in, int n, mg_kernels kernels,
                                 int rb) {
    int r;
    MG_TRY(worker_rank(&r));
    mg_matmul_part local[4];
    if (n_parts < 1 || n_parts > 4) return mg_error_set(MG_ERR_ARG, "matmul_multi of %d parts", n_parts);
    for (int i = 0; i < n_parts; i++) {
        const mg_matrix *wr;
        if (matrix_at(parts[i].w, r, &wr) != W_COLUMN)
            return mg_error_set(MG_ERR_ARG, "tensor-parallel matmul_multi of a matrix that is not column-parallel");
        local[i] = (mg_matmul_part){at_rank(parts[i].out, r), wr, vec_at(parts[i].bias, r)};
    }
    return T.base[r]->matmul_multi(local, n_parts, at_rank(in, r), n, kernels, rb);
}

/* Vocab-parallel LM head: each rank's logits for its vocabulary slice,
 * all-gathered, then laid out as (n, vocab). */
static mg_status tp_logits(float *out, const void *in, const mg_matrix *w, int n, mg_kernels kernels, int rb) {
    int r;
    MG_TRY(worker_rank(&r));
    const mg_matrix *wr;
    if (matrix_at(w, r, &wr) != W_VOCAB) return mg_error_set(MG_ERR_ARG, "tensor-parallel logits of a non-LM-head");
    const mg_backend_ops *b = T.base[r];
    const size_t vl = (size_t)wr->rows, count = (size_t)n * vl, bytes = count * sizeof(float);
    float *own, *all, *dst = at_rank(out, r);
    MG_TRY(scratch(r, 0, bytes, &own));
    MG_TRY(b->logits(own, at_rank(in, r), wr, n, kernels, rb));
    if (n == 1) return allgather(r, own, dst, bytes); /* already (1, vocab) */
    MG_TRY(scratch(r, 1, bytes * (size_t)T.n, &all));
    MG_TRY(allgather(r, own, all, bytes));
    for (int q = 0; q < T.n; q++)
        MG_TRY(b->copy2d(dst + (size_t)q * vl, (size_t)T.n * vl * sizeof(float), all + (size_t)q * count,
                      vl * sizeof(float), vl * sizeof(float), (size_t)n));
    return MG_OK;
}

static mg_status tp_rope_kv_store(void *q, void *k, const void *v, mg_kv_pool *pool, int layer,
                                  const mg_attn_rows *rows, int n_heads, const float *inv_freq, int rb) {
    int r;
    MG_TRY(worker_rank(&r));
    mg_kv_pool local = pool_at(pool, r);
    const mg_attn_rows lrows = rows_at(rows, r);
    return T.base[r]->rope_kv_store(at_rank(q, r), at_rank(k, r), at_rank(v, r), &local, layer, &lrows,
                                    n_heads / T.n, at_rank(inv_freq, r), rb);
}

static mg_status tp_attention(void *out, const void *q, const mg_kv_pool *pool, int layer, const mg_attn_rows *rows,
                              int n_heads, mg_kernels kernels, int rb) {
    int r;
    MG_TRY(worker_rank(&r));
    const mg_kv_pool local = pool_at(pool, r);
    const mg_attn_rows lrows = rows_at(rows, r);
    return T.base[r]->attention(at_rank(out, r), at_rank(q, r), &local, layer, &lrows, n_heads / T.n, kernels, rb);
}

static mg_status tp_add(void *x, const void *y, size_t n, int rb) {
    int r;
    MG_TRY(worker_rank(&r));
    return T.base[r]->add(at_rank(x, r), at_rank(y, r), n, rb);
}

/* SwiGLU runs on the rank's FFN slice: n counts the whole model's values. */
static mg_status tp_swiglu(void *out, const void *gate, const void *up, size_t n, int rb) {
    int r;
    MG_TRY(worker_rank(&r));
    return T.base[r]->swiglu(at_rank(out, r), at_rank(gate, r), at_rank(up, r), n / (size_t)T.n, rb);
}

static mg_status tp_argmax(mg_argmax *out, const float *logits, int n, int vocab) {
    int r;
    MG_TRY(worker_rank(&r));
    return T.base[r]->argmax(at_rank(out, r), at_rank(logits, r), n, vocab);
}

static mg_backend_ops tp_ops = {
    .name = "tp",
    .alloc = tp_alloc,
    .free = tp_free,
    .upload = tp_upload,
    .download = tp_download,
    .copy = tp_copy,
    .zero = tp_zero,
    .sync = tp_sync,
    .act_size = tp_act_size,
    .act_upload = tp_act_upload,
    .act_download = tp_act_download,
    .weights_acquire = tp_weights_acquire,
    .weights_release = tp_weights_release,
    .rows_prepare = tp_rows_prepare,
    .embed = tp_embed,
    .rmsnorm = tp_rmsnorm,
    .add_rmsnorm = tp_add_rmsnorm,
    .matmul = tp_matmul,
    .matmul_multi = tp_matmul_multi,
    .logits = tp_logits,
    .rope_kv_store = tp_rope_kv_store,
    .attention = tp_attention,
    .add = tp_add,
    .swiglu = tp_swiglu,
    .argmax = tp_argmax,
    .graph_run = tp_graph_run,
    .alloc_kv = tp_alloc_kv,
};

/* ---- creation ------------------------------------------------------------------- */

static mg_status select_on(int r, void *arg) {
    (void)arg;
    T.base[r] = !strcmp(T.base_name, "cuda") ? mg_backend_cuda_on(r) : mg_backend_cpu();
    return T.base[r] ? MG_OK : mg_error_set(MG_ERR_UNSUPPORTED, "%s", mg_error_last());
}

static mg_status comm_on(int r, void *arg) {
    (void)arg;
    return T.comm_ops->rank_init(T.comm, r);
}

static char tp_name[32];
static char start_error[512]; /* why the workers' start failed (they cannot be stopped) */

const mg_backend_ops *mg_backend_tp(const char *base, int n_ranks) {
    if (T.ready) {
        if (T.n == n_ranks && !strcmp(T.base_name, base)) return &tp_ops;
        mg_error_set(MG_ERR_ARG, "a %s x %d tensor-parallel backend exists already", T.base_name, T.n);
        return NULL;
    }
    if (start_error[0]) {
        mg_error_set(MG_ERR_BACKEND, "the tensor-parallel backend failed to start: %s", start_error);
        return NULL;
    }
    if (n_ranks < 2 || n_ranks > MG_TP_MAX_RANKS) {
        mg_error_set(MG_ERR_ARG, "tensor parallel degree %d outside 2..%d", n_ranks, MG_TP_MAX_RANKS);
        return NULL;
    }
    if (strcmp(base, "cuda") && strcmp(base, "cpu")) {
        mg_error_set(MG_ERR_ARG, "tensor parallelism over '%s' (expected cuda or cpu)", base);
        return NULL;
    }
    const mg_backend_ops *probe = !strcmp(base, "cuda") ? mg_backend_cuda() : mg_backend_cpu();
    if (!probe) return NULL;
    T.comm_ops = !strcmp(base, "cuda") ? mg_tp_comm_nccl() : &mg_tp_comm_host;
    if (!T.comm_ops) return NULL;
    snprintf(T.base_name, sizeof T.base_name, "%s", base);
    T.n = n_ranks;
    const char *skip = getenv("MG_TP_SKIP_COMM");
    T.skip_comm = skip && *skip && strcmp(skip, "0");
    if (T.comm_ops->prepare(&T.comm, n_ranks) != MG_OK) return NULL;
    mg_status st = MG_OK;
    for (int r = 0; r < n_ranks && st == MG_OK; r++)
        if (pthread_create(&T.thread[r], NULL, worker_main, (void *)(intptr_t)r) != 0)
            st = mg_error_set(MG_ERR_BACKEND, "cannot start the worker thread of rank %d", r);
    /* Every rank's device first: NCCL's init waits for all ranks, so a
     * missing GPU must stop us before it (it would wait forever). */
    if (st == MG_OK) st = run_all(select_on, NULL);
    if (st == MG_OK) st = run_all(comm_on, NULL);
    if (st != MG_OK) {
        snprintf(start_error, sizeof start_error, "%s", mg_error_last());
        return NULL;
    }
    snprintf(tp_name, sizeof tp_name, "%s-tp%d", base, n_ranks);
    tp_ops.name = tp_name;
    tp_ops.host_memory = probe->host_memory;
    tp_ops.tp_ranks = n_ranks;
    T.ready = 1;
    return &tp_ops;
}

const mg_backend_ops *mg_backend_select(const char *device, int tensor_parallel) {
    if (tensor_parallel <= 1) return mg_backend_by_name(device);
    if (!device || !strcmp(device, "auto")) {
        const mg_backend_ops *cuda = mg_backend_cuda();
        mg_error_clear();
        device = cuda ? "cuda" : "cpu";
    }
    return mg_backend_tp(device, tensor_parallel);
}
