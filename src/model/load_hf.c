/* Hugging Face checkpoint directory -> mg_model.
 *
 * BF16 matrices stay in the file mapping (zero copy) unless misaligned;
 * F16/F32 matrices are converted to BF16 buffers (round to nearest even).
 * Norm weights and biases become float arrays (exact from any input dtype). */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/bf16.h"
#include "../util/file.h"
#include "model.h"
#include "safetensors.h"
#include "storage.h"

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"

/* Where the tensors of one checkpoint come from. */
typedef struct {
    const char *dir;
    mg_model_storage *storage; /* owns the open files */
    int n_files;
    mg_st_file **files;        /* (n_files) open shards (or the single file) */
    char **file_names;         /* (n_files) names relative to dir */
    cJSON *index;              /* parsed index.json, or NULL for a single file */
    const cJSON *weight_map;   /* index's "weight_map" object, or NULL */
} hf_source;

/* Frees what src owns itself (names, arrays, index JSON); the open files
 * stay with the storage. */
static void source_free(hf_source *src) {
    for (int i = 0; i < src->n_files; i++) free(src->file_names[i]);
    free(src->file_names);
    free(src->files); /* the files themselves belong to the storage */
    cJSON_Delete(src->index);
}

/* Opens `name` (relative to src->dir), records it as file n_files and hands
 * it to the storage. */
static mg_status source_add_file(hf_source *src, const char *name) {
    char path[4096];
    mg_status st = mg_path_join(path, sizeof path, src->dir, name);
    if (st != MG_OK) return st;
    mg_st_file **files = realloc(src->files, (size_t)(src->n_files + 1) * sizeof *files);
    if (files) src->files = files;
    char **names = realloc(src->file_names, (size_t)(src->n_files + 1) * sizeof *names);
    if (names) src->file_names = names;
    char *copy = strdup(name);
    if (!files || !names || !copy) {
        free(copy);
        return mg_error_set(MG_ERR_OOM, "%s: out of memory", path);
    }
    mg_st_file *f;
    if ((st = mg_st_open(path, &f)) != MG_OK) {
        free(copy);
        return st;
    }
    if ((st = mg_storage_add_file(src->storage, f)) != MG_OK) {
        free(copy);
        return st;
    }
    src->files[src->n_files] = f;
    src->file_names[src->n_files] = copy;
    src->n_files++;
    return MG_OK;
}

/* Returns the index of the open shard called `name`, or -1. */
static int source_file_index(const hf_source *src, const char *name) {
    for (int i = 0; i < src->n_files; i++)
        if (strcmp(src->file_names[i], name) == 0) return i;
    return -1;
}

/* Rejects shard names that could leave the checkpoint directory. */
static int shard_name_ok(const char *name) {
    if (!*name || name[0] == '/') return 0;
    for (const char *p = name; *p; p++) {
        int at_start = p == name || p[-1] == '/';
        if (at_start && p[0] == '.' && p[1] == '.' && (p[2] == '/' || p[2] == '\0')) return 0;
    }
    return 1;
}

/* Reads the index, opens every shard it names once, and checks that each
 * listed tensor is present in its shard. */
static mg_status source_open_index(hf_source *src, const char *index_path) {
    char *text;
    mg_status st = mg_file_read(index_path, &text, NULL);
    if (st != MG_OK) return st;
    src->index = cJSON_Parse(text);
    free(text);
    if (!src->index || !cJSON_IsObject(src->index))
        return mg_error_set(MG_ERR_FORMAT, "%s: malformed JSON", index_path);
    src->weight_map = cJSON_GetObjectItemCaseSensitive(src->index, "weight_map");
    if (!cJSON_IsObject(src->weight_map))
        return mg_error_set(MG_ERR_FORMAT, "%s: missing or non-object \"weight_map\"", index_path);
    for (const cJSON *e = src->weight_map->child; e; e = e->next) {
        if (!cJSON_IsString(e))
            return mg_error_set(MG_ERR_FORMAT, "%s: weight_map[\"%s\"] is not a file name", index_path, e->string);
        const char *shard = e->valuestring;
        if (!shard_name_ok(shard))
            return mg_error_set(MG_ERR_FORMAT, "%s: weight_map[\"%s\"] names an invalid shard \"%s\"", index_path,
                                e->string, shard);
        if (source_file_index(src, shard) >= 0) continue;
        char path[4096];
        if ((st = mg_path_join(path, sizeof path, src->dir, shard)) != MG_OK) return st;
        if (!mg_file_exists(path))
            return mg_error_set(MG_ERR_IO, "%s: shard \"%s\" (for tensor '%s') is missing: %s", index_path, shard,
                                e->string, path);
        if ((st = source_add_file(src, shard)) != MG_OK) return st;
    }
    for (const cJSON *e = src->weight_map->child; e; e = e->next) {
        int i = source_file_index(src, e->valuestring);
        if (!mg_st_find(src->files[i], e->string))
            return mg_error_set(MG_ERR_FORMAT, "%s: tensor '%s' is mapped to %s, which does not contain it",
                                index_path, e->string, mg_st_path(src->files[i]));
    }
    if (src->n_files == 0) return mg_error_set(MG_ERR_FORMAT, "%s: weight_map is empty", index_path);
    return MG_OK;
}

/* Opens model.safetensors, or else the shards of the index. */
static mg_status source_open(hf_source *src) {
    char single[4096], index[4096];
    mg_status st;
    if ((st = mg_path_join(single, sizeof single, src->dir, SINGLE_NAME)) != MG_OK) return st;
    if ((st = mg_path_join(index, sizeof index, src->dir, INDEX_NAME)) != MG_OK) return st;
    if (mg_file_exists(single)) return source_add_file(src, SINGLE_NAME);
    if (mg_file_exists(index)) return source_open_index(src, index);
    return mg_error_set(MG_ERR_IO, "%s: neither %s nor %s found", src->dir, SINGLE_NAME, INDEX_NAME);
}

/* Looks up tensor `name`: via the weight map when sharded. Returns NULL when
 * the checkpoint has no such tensor. */
static const mg_st_tensor *source_find(const hf_source *src, const char *name, const mg_st_file **file) {
    const mg_st_file *f = src->files[0];
    if (src->weight_map) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(src->weight_map, name);
        if (!e) return NULL;
        f = src->files[source_file_index(src, e->valuestring)];
    }
    *file = f;
    return mg_st_find(f, name);
}

/* Finds `name` and checks that its shape is exactly (d0) when d1 < 0, or
 * (d0, d1). Missing tensor: MG_ERR_FORMAT; other shape: MG_ERR_SHAPE. */
static mg_status find_checked(const hf_source *src, const char *name, int d0, int d1, const mg_st_tensor **out) {
    const mg_st_file *f = NULL;
    const mg_st_tensor *t = source_find(src, name, &f);
    if (!t) return mg_error_set(MG_ERR_FORMAT, "%s: missing tensor '%s'", src->dir, name);
    int64_t want[2] = {d0, d1};
    int wnd = d1 < 0 ? 1 : 2;
    int ok = t->ndim == wnd && t->shape[0] == d0 && (wnd == 1 || t->shape[1] == d1);
    if (!ok) {
        char a[64], b[160];
        return mg_error_set(MG_ERR_SHAPE, "%s: tensor '%s': expected shape %s, got %s", mg_st_path(f), name,
                            mg_st_shape_str(a, sizeof a, want, wnd), mg_st_shape_str(b, sizeof b, t->shape, t->ndim));
    }
    *out = t;
    return MG_OK;
}

/* Loads matrix `name` of shape (rows, cols) as BF16 into *m. */
static mg_status load_matrix(const hf_source *src, const char *name, int rows, int cols, mg_matrix *m) {
    const mg_st_tensor *t;
    mg_status st = find_checked(src, name, rows, cols, &t);
    if (st != MG_OK) return st;
    m->dtype = MG_DTYPE_BF16;
    m->rows = rows;
    m->cols = cols;
    if (t->dtype == MG_ST_BF16 && ((uintptr_t)t->data & 1u) == 0) {
        m->data = t->data; /* zero copy */
        return MG_OK;
    }
    uint16_t *dst = mg_storage_alloc(src->storage, t->numel * sizeof(uint16_t));
    if (!dst) return mg_error_set(MG_ERR_OOM, "%s: cannot allocate %zu bytes for '%s'", src->dir,
                                  t->numel * sizeof(uint16_t), name);
    const uint8_t *p = t->data;
    long long n = (long long)t->numel;
    /* memcpy per element: the data section need not be aligned for the type. */
    switch (t->dtype) {
    case MG_ST_BF16: memcpy(dst, p, t->nbytes); break;
    case MG_ST_F16:
#pragma omp parallel for schedule(static) if (n > (1 << 20))
        for (long long i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = mg_f32_to_bf16(mg_f16_to_f32(h));
        }
        break;
    case MG_ST_F32:
#pragma omp parallel for schedule(static) if (n > (1 << 20))
        for (long long i = 0; i < n; i++) {
            float x;
            memcpy(&x, p + 4 * i, 4);
            dst[i] = mg_f32_to_bf16(x);
        }
        break;
    }
    m->data = dst;
    return MG_OK;
}

/* Loads vector `name` of length n as floats into *out. */
static mg_status load_vector(const hf_source *src, const char *name, int n, const float **out) {
    const mg_st_tensor *t;
    mg_status st = find_checked(src, name, n, -1, &t);
    if (st != MG_OK) return st;
    float *dst = mg_storage_alloc(src->storage, (size_t)n * sizeof(float));
    if (!dst) return mg_error_set(MG_ERR_OOM, "%s: out of memory for '%s'", src->dir, name);
    const uint8_t *p = t->data;
    for (int i = 0; i < n; i++) {
        uint16_t h;
        switch (t->dtype) {
        case MG_ST_BF16: memcpy(&h, p + 2 * (size_t)i, 2); dst[i] = mg_bf16_to_f32(h); break;
        case MG_ST_F16: memcpy(&h, p + 2 * (size_t)i, 2); dst[i] = mg_f16_to_f32(h); break;
        case MG_ST_F32: memcpy(&dst[i], p + 4 * (size_t)i, 4); break;
        }
    }
    *out = dst;
    return MG_OK;
}

/* Rejects tensors of layers beyond num_hidden_layers: they mean the config
 * does not describe this checkpoint. */
static mg_status check_no_extra_layers(const hf_source *src, int n_layers) {
    for (int f = 0; f < src->n_files; f++) {
        for (int i = 0; i < mg_st_count(src->files[f]); i++) {
            const char *name = mg_st_at(src->files[f], i)->name;
            int layer;
            if (sscanf(name, "model.layers.%d.", &layer) == 1 && (layer < 0 || layer >= n_layers))
                return mg_error_set(MG_ERR_SHAPE, "%s: tensor '%s' is outside num_hidden_layers = %d",
                                    mg_st_path(src->files[f]), name, n_layers);
        }
    }
    return MG_OK;
}

/* Fills model->weights from src according to model->config. */
static mg_status load_weights(const hf_source *src, mg_model *model) {
    const mg_config *c = &model->config;
    mg_weights *w = &model->weights;
    int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    mg_status st;
    if ((st = check_no_extra_layers(src, c->n_layers)) != MG_OK) return st;
    if ((st = load_matrix(src, "model.embed_tokens.weight", c->vocab_size, c->dim, &w->tok_embed)) != MG_OK)
        return st;
    if (c->tie_embeddings) w->lm_head = w->tok_embed; /* a stored lm_head.weight is ignored, as HF does */
    else if ((st = load_matrix(src, "lm_head.weight", c->vocab_size, c->dim, &w->lm_head)) != MG_OK)
        return st;
    if ((st = load_vector(src, "model.norm.weight", c->dim, &w->final_norm)) != MG_OK) return st;

    w->layers = mg_storage_alloc(model->storage, (size_t)c->n_layers * sizeof *w->layers);
    if (!w->layers) return mg_error_set(MG_ERR_OOM, "%s: out of memory", src->dir);
    for (int l = 0; l < c->n_layers; l++) {
        mg_layer_weights *L = &w->layers[l];
        char n[128];
#define NAME(suffix) (snprintf(n, sizeof n, "model.layers.%d.%s", l, suffix), n)
        if ((st = load_vector(src, NAME("input_layernorm.weight"), c->dim, &L->attn_norm)) != MG_OK) return st;
        if ((st = load_vector(src, NAME("post_attention_layernorm.weight"), c->dim, &L->mlp_norm)) != MG_OK)
            return st;
        if ((st = load_matrix(src, NAME("self_attn.q_proj.weight"), q, c->dim, &L->wq)) != MG_OK) return st;
        if ((st = load_matrix(src, NAME("self_attn.k_proj.weight"), kv, c->dim, &L->wk)) != MG_OK) return st;
        if ((st = load_matrix(src, NAME("self_attn.v_proj.weight"), kv, c->dim, &L->wv)) != MG_OK) return st;
        if ((st = load_matrix(src, NAME("self_attn.o_proj.weight"), c->dim, q, &L->wo)) != MG_OK) return st;
        if (c->qkv_bias) {
            if ((st = load_vector(src, NAME("self_attn.q_proj.bias"), q, &L->bq)) != MG_OK) return st;
            if ((st = load_vector(src, NAME("self_attn.k_proj.bias"), kv, &L->bk)) != MG_OK) return st;
            if ((st = load_vector(src, NAME("self_attn.v_proj.bias"), kv, &L->bv)) != MG_OK) return st;
        }
        if (c->o_bias && (st = load_vector(src, NAME("self_attn.o_proj.bias"), c->dim, &L->bo)) != MG_OK) return st;
        if ((st = load_matrix(src, NAME("mlp.gate_proj.weight"), c->hidden_dim, c->dim, &L->w_gate)) != MG_OK)
            return st;
        if ((st = load_matrix(src, NAME("mlp.up_proj.weight"), c->hidden_dim, c->dim, &L->w_up)) != MG_OK) return st;
        if ((st = load_matrix(src, NAME("mlp.down_proj.weight"), c->dim, c->hidden_dim, &L->w_down)) != MG_OK)
            return st;
#undef NAME
    }
    return MG_OK;
}

/* Reads and parses config.json and the optional generation_config.json of
 * dir; error messages are prefixed with dir. */
static mg_status read_config(const char *dir, mg_config *cfg) {
    char path[4096], gpath[4096];
    mg_status st;
    if ((st = mg_path_join(path, sizeof path, dir, "config.json")) != MG_OK) return st;
    if ((st = mg_path_join(gpath, sizeof gpath, dir, "generation_config.json")) != MG_OK) return st;
    char *text = NULL, *gen = NULL;
    if ((st = mg_file_read(path, &text, NULL)) != MG_OK) return st;
    if (mg_file_exists(gpath) && (st = mg_file_read(gpath, &gen, NULL)) != MG_OK) {
        free(text);
        return st;
    }
    st = mg_config_parse(text, gen, cfg);
    free(text);
    free(gen);
    if (st != MG_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", mg_error_last());
        mg_error_set(st, "%s: %s", dir, msg);
    }
    return st;
}

mg_status mg_model_load_hf(const char *dir, mg_model **out) {
    *out = NULL;
    mg_model *model = calloc(1, sizeof *model);
    if (!model || !(model->storage = mg_storage_new())) {
        free(model);
        return mg_error_set(MG_ERR_OOM, "%s: out of memory", dir);
    }
    hf_source src = {.dir = dir, .storage = model->storage};
    mg_status st = read_config(dir, &model->config);
    if (st == MG_OK) st = source_open(&src);
    if (st == MG_OK) st = load_weights(&src, model);
    source_free(&src);
    if (st != MG_OK) {
        mg_model_free(model);
        return st;
    }
    *out = model;
    return MG_OK;
}
