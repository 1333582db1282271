/* Ownership of model memory, mg_model_free and mg_model_weight_bytes. */
#include "storage.h"

#include <stdlib.h>
#include <sys/mman.h>

typedef enum { ENTRY_BUF, ENTRY_FILE, ENTRY_MAP } entry_kind;

typedef struct entry {
    entry_kind kind;
    void *ptr; /* malloc'd buffer, mg_st_file*, or mapping address */
    size_t len; /* mapping length (ENTRY_MAP only) */
    struct entry *next;
} entry;

struct mg_model_storage {
    entry *head; /* every owned resource, most recent first */
};

mg_model_storage *mg_storage_new(void) { return calloc(1, sizeof(mg_model_storage)); }

/* Pushes a new entry; returns 0 on success, -1 when out of memory. */
static int push(mg_model_storage *s, entry_kind kind, void *ptr, size_t len) {
    entry *e = malloc(sizeof *e);
    if (!e) return -1;
    *e = (entry){kind, ptr, len, s->head};
    s->head = e;
    return 0;
}

void *mg_storage_alloc(mg_model_storage *s, size_t bytes) {
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) return NULL;
    if (push(s, ENTRY_BUF, p, 0) != 0) {
        free(p);
        return NULL;
    }
    return p;
}

mg_status mg_storage_add_file(mg_model_storage *s, mg_st_file *f) {
    if (push(s, ENTRY_FILE, f, 0) != 0) {
        mg_st_close(f);
        return mg_error_set(MG_ERR_OOM, "out of memory");
    }
    return MG_OK;
}

mg_status mg_storage_add_map(mg_model_storage *s, void *addr, size_t len) {
    if (push(s, ENTRY_MAP, addr, len) != 0) {
        munmap(addr, len);
        return mg_error_set(MG_ERR_OOM, "out of memory");
    }
    return MG_OK;
}

void mg_storage_free(mg_model_storage *s) {
    if (!s) return;
    entry *e = s->head;
    while (e) {
        entry *next = e->next;
        switch (e->kind) {
        case ENTRY_BUF: free(e->ptr); break;
        case ENTRY_FILE: mg_st_close(e->ptr); break;
        case ENTRY_MAP: munmap(e->ptr, e->len); break;
        }
        free(e);
        e = next;
    }
    free(s);
}

void mg_model_free(mg_model *model) {
    if (!model) return;
    mg_storage_free(model->storage);
    free(model);
}

/* Bytes of one matrix. */
static size_t matrix_bytes(const mg_matrix *m) {
    size_t elem = m->dtype == MG_DTYPE_F32 ? 4 : 2;
    return m->data ? (size_t)m->rows * (size_t)m->cols * elem : 0;
}

/* Counts weights once each: a tied lm_head shares tok_embed's data and adds
 * nothing. Norm weights and biases count as the float arrays they are. */
size_t mg_model_weight_bytes(const mg_model *model) {
    if (!model) return 0;
    const mg_config *c = &model->config;
    const mg_weights *w = &model->weights;
    size_t total = matrix_bytes(&w->tok_embed);
    if (w->lm_head.data != w->tok_embed.data) total += matrix_bytes(&w->lm_head);
    if (w->final_norm) total += (size_t)c->dim * sizeof(float);
    size_t q = (size_t)c->n_heads * c->head_dim, kv = (size_t)c->n_kv_heads * c->head_dim;
    for (int l = 0; w->layers && l < c->n_layers; l++) {
        const mg_layer_weights *L = &w->layers[l];
        total += matrix_bytes(&L->wq) + matrix_bytes(&L->wk) + matrix_bytes(&L->wv) + matrix_bytes(&L->wo);
        total += matrix_bytes(&L->w_gate) + matrix_bytes(&L->w_up) + matrix_bytes(&L->w_down);
        if (L->attn_norm) total += (size_t)c->dim * sizeof(float);
        if (L->mlp_norm) total += (size_t)c->dim * sizeof(float);
        if (L->bq) total += q * sizeof(float);
        if (L->bk) total += kv * sizeof(float);
        if (L->bv) total += kv * sizeof(float);
        if (L->bo) total += (size_t)c->dim * sizeof(float);
    }
    return total;
}
