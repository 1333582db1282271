/* Test helper: writes safetensors files and tiny Hugging Face checkpoints
 * from C, so that tests need neither torch nor Python.
 *
 * Header-only; every function is static inline and returns 0 on success,
 * -1 on failure (errno set by the failing libc call where there is one).
 *
 *   st_tensor t[] = {{"w", "BF16", 2, {4, 8}, data}};
 *   st_write_file("/tmp/x/model.safetensors", t, 1);
 *   st_write_config(dir, "{\"architectures\": [\"LlamaForCausalLM\"], ...}");
 *   st_write_tiny_model(dir, &(st_tiny_opts){.arch = "qwen2", ...});
 */
#ifndef MG_TEST_ST_WRITER_H
#define MG_TEST_ST_WRITER_H

#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    const char *name;
    const char *dtype;  /* "BF16", "F16", "F32", or any string (to write bad files) */
    int ndim;           /* 0..4 */
    int64_t shape[4];
    const void *data;   /* nbytes bytes, or NULL for zeros */
    size_t nbytes;      /* 0: numel * element size of dtype */
} st_tensor;

/* Bytes per element of a safetensors dtype string (1 for unknown ones). */
static inline size_t st_dtype_size(const char *dtype) {
    if (!strcmp(dtype, "F64") || !strcmp(dtype, "I64") || !strcmp(dtype, "U64")) return 8;
    if (!strcmp(dtype, "F32") || !strcmp(dtype, "I32") || !strcmp(dtype, "U32")) return 4;
    if (!strcmp(dtype, "BF16") || !strcmp(dtype, "F16") || !strcmp(dtype, "I16") || !strcmp(dtype, "U16")) return 2;
    return 1;
}

/* Bytes of tensor t's data. */
static inline size_t st_tensor_bytes(const st_tensor *t) {
    if (t->nbytes) return t->nbytes;
    size_t n = st_dtype_size(t->dtype);
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    return n;
}

/* Writes exactly what it is given: the 8-byte little-endian length field
 * `len_field` (which may lie), `header_len` bytes of header, then the data.
 * For building malformed files. */
static inline int st_write_raw(const char *path, uint64_t len_field, const char *header, size_t header_len,
                               const void *data, size_t data_len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(len_field >> (8 * i));
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(header, 1, header_len, f) == header_len &&
             (data_len == 0 || fwrite(data, 1, data_len, f) == data_len);
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* Writes a well-formed safetensors file holding tensors t[0..n) in order,
 * with a "__metadata__" entry and the header padded to 8 bytes. */
static inline int st_write_file(const char *path, const st_tensor *t, int n) {
    size_t cap = 256 + (size_t)n * 256, len = 0, off = 0;
    for (int i = 0; i < n; i++) cap += strlen(t[i].name);
    char *h = malloc(cap + 8);
    if (!h) return -1;
    len += (size_t)snprintf(h + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        size_t nb = st_tensor_bytes(&t[i]);
        len += (size_t)snprintf(h + len, cap - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t[i].name, t[i].dtype);
        for (int d = 0; d < t[i].ndim; d++)
            len += (size_t)snprintf(h + len, cap - len, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
        len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%zu,%zu]}", off, off + nb);
        off += nb;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8) h[len++] = ' ';
    unsigned char *data = calloc(off ? off : 1, 1);
    if (!data) {
        free(h);
        return -1;
    }
    size_t pos = 0;
    for (int i = 0; i < n; i++) {
        size_t nb = st_tensor_bytes(&t[i]);
        if (t[i].data) memcpy(data + pos, t[i].data, nb);
        pos += nb;
    }
    int rc = st_write_raw(path, len, h, len, data, off);
    free(data);
    free(h);
    return rc;
}

/* Writes `text` to dir/name. */
static inline int st_write_text(const char *dir, const char *name, const char *text) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* Writes dir/config.json. */
static inline int st_write_config(const char *dir, const char *json) { return st_write_text(dir, "config.json", json); }

/* Creates a fresh directory /tmp/mg_test_XXXXXX; returns its path in buf
 * (size >= 32), or NULL. */
static inline char *st_mkdtemp(char *buf, size_t n) {
    snprintf(buf, n, "/tmp/mg_test_XXXXXX");
    return mkdtemp(buf);
}

/* nftw callback for st_rmtree: removes one entry (children first). */
static inline int st_rm_entry_(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

/* Removes dir and everything under it. */
static inline int st_rmtree(const char *dir) { return nftw(dir, st_rm_entry_, 16, FTW_DEPTH | FTW_PHYS); }

/* FP32 -> BF16 bits, round to nearest even (finite inputs). */
static inline uint16_t st_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* FP32 -> IEEE half bits, round to nearest even (finite inputs; overflow
 * gives infinity). */
static inline uint16_t st_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x47800000u) return sign | 0x7c00u;
    if (ax < 0x38800000u) /* half subnormal: units of 2^-24; 1024 rounds up to the smallest normal */
        return sign | (uint16_t)nearbyint((double)fabsf(f) * 16777216.0);
    uint32_t r = ax - 0x38000000u; /* rebias the exponent from 127 to 15 */
    r += 0xfffu + ((r >> 13) & 1u);
    return sign | (uint16_t)(r >> 13);
}

/* ---- tiny synthetic checkpoints ---- */

typedef struct {
    const char *arch;     /* "llama" (default) or "qwen2" */
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab; /* 0: 16, 40, 2, 4, 2, 64 */
    const char *dtype;    /* "BF16" (default), "F16" or "F32" */
    int tie;              /* tie_word_embeddings */
    int lm_head_anyway;   /* write lm_head.weight even when tied */
    int attention_bias;   /* llama: q/k/v/o biases (qwen2 always has q/k/v biases) */
    int shards;           /* <= 1: model.safetensors; N: N shards + model.safetensors.index.json */
    uint32_t seed;
    const char *extra_config; /* extra JSON members for config.json ("\"k\": v, ..."), or NULL */
    const void *embed_data;   /* raw data (in dtype) for model.embed_tokens.weight, or NULL */
} st_tiny_opts;

/* The FP32 value the tiny checkpoint holds (before rounding to its dtype)
 * at element i of tensor `name`: norms near 1, everything else small. */
static inline float st_tiny_value(uint32_t seed, const char *name, size_t i) {
    uint32_t h = 2166136261u ^ seed;
    for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 16777619u;
    uint64_t z = (uint64_t)h * 0x9E3779B97F4A7C15ull + (uint64_t)i * 0xBF58476D1CE4E5B9ull;
    z ^= z >> 31; z *= 0x94D049BB133111EBull; z ^= z >> 29;
    float u = (float)((z >> 40) & 0xffffff) / 16777216.0f - 0.5f; /* [-0.5, 0.5) */
    int is_norm = strstr(name, "norm") != NULL;
    return is_norm ? 1.0f + 0.1f * u : 0.1f * u;
}

/* Fills *o's zero fields with the defaults documented above. */
static inline void st_tiny_defaults(st_tiny_opts *o) {
    if (!o->arch) o->arch = "llama";
    if (!o->dim) o->dim = 16;
    if (!o->hidden_dim) o->hidden_dim = 40;
    if (!o->n_layers) o->n_layers = 2;
    if (!o->n_heads) o->n_heads = 4;
    if (!o->n_kv_heads) o->n_kv_heads = 2;
    if (!o->vocab) o->vocab = 64;
    if (!o->dtype) o->dtype = "BF16";
}

/* Writes a complete tiny checkpoint (config.json + weights) into dir, which
 * must exist. Tensor names and shapes are those of transformers'
 * LlamaForCausalLM / Qwen2ForCausalLM; values come from st_tiny_value. */
static inline int st_write_tiny_model(const char *dir, const st_tiny_opts *opts) {
    st_tiny_opts o = *opts;
    st_tiny_defaults(&o);
    int qwen = strcmp(o.arch, "qwen2") == 0, bias = qwen || o.attention_bias;
    int hd = o.dim / o.n_heads, q = o.n_heads * hd, kv = o.n_kv_heads * hd;
    char cfg[4096];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"%s\"], \"model_type\": \"%s\", \"hidden_size\": %d, "
             "\"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
             "\"num_key_value_heads\": %d, \"vocab_size\": %d, \"max_position_embeddings\": 128, "
             "\"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"hidden_act\": \"silu\", "
             "\"tie_word_embeddings\": %s, %s\"bos_token_id\": 1, \"eos_token_id\": 2%s%s}",
             qwen ? "Qwen2ForCausalLM" : "LlamaForCausalLM", qwen ? "qwen2" : "llama", o.dim, o.hidden_dim,
             o.n_layers, o.n_heads, o.n_kv_heads, o.vocab, o.tie ? "true" : "false",
             qwen ? "" : (o.attention_bias ? "\"attention_bias\": true, " : "\"attention_bias\": false, "),
             o.extra_config ? ", " : "", o.extra_config ? o.extra_config : "");
    if (st_write_config(dir, cfg) != 0) return -1;

    /* The tensor list, in HF's order. */
    int cap = 16 + o.n_layers * 16, n = 0;
    st_tensor *t = calloc((size_t)cap, sizeof *t);
    char (*names)[96] = calloc((size_t)cap, sizeof *names);
    if (!t || !names) {
        free(t);
        free(names);
        return -1;
    }
#define ST_ADD(nd, d0, d1, ...)                                                        \
    do {                                                                               \
        snprintf(names[n], sizeof names[n], __VA_ARGS__);                              \
        t[n] = (st_tensor){names[n], o.dtype, (nd), {(d0), (d1)}, NULL, 0};            \
        n++;                                                                           \
    } while (0)
    ST_ADD(2, o.vocab, o.dim, "model.embed_tokens.weight");
    for (int l = 0; l < o.n_layers; l++) {
        ST_ADD(1, o.dim, 0, "model.layers.%d.input_layernorm.weight", l);
        ST_ADD(2, q, o.dim, "model.layers.%d.self_attn.q_proj.weight", l);
        ST_ADD(2, kv, o.dim, "model.layers.%d.self_attn.k_proj.weight", l);
        ST_ADD(2, kv, o.dim, "model.layers.%d.self_attn.v_proj.weight", l);
        if (bias) {
            ST_ADD(1, q, 0, "model.layers.%d.self_attn.q_proj.bias", l);
            ST_ADD(1, kv, 0, "model.layers.%d.self_attn.k_proj.bias", l);
            ST_ADD(1, kv, 0, "model.layers.%d.self_attn.v_proj.bias", l);
        }
        ST_ADD(2, o.dim, q, "model.layers.%d.self_attn.o_proj.weight", l);
        if (!qwen && o.attention_bias) ST_ADD(1, o.dim, 0, "model.layers.%d.self_attn.o_proj.bias", l);
        ST_ADD(1, o.dim, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        ST_ADD(2, o.hidden_dim, o.dim, "model.layers.%d.mlp.gate_proj.weight", l);
        ST_ADD(2, o.hidden_dim, o.dim, "model.layers.%d.mlp.up_proj.weight", l);
        ST_ADD(2, o.dim, o.hidden_dim, "model.layers.%d.mlp.down_proj.weight", l);
    }
    ST_ADD(1, o.dim, 0, "model.norm.weight");
    if (!o.tie || o.lm_head_anyway) ST_ADD(2, o.vocab, o.dim, "lm_head.weight");
#undef ST_ADD

    /* Values. */
    size_t es = st_dtype_size(o.dtype);
    void **bufs = calloc((size_t)n, sizeof *bufs);
    int rc = bufs ? 0 : -1;
    for (int i = 0; rc == 0 && i < n; i++) {
        size_t numel = st_tensor_bytes(&t[i]) / es;
        unsigned char *b = malloc(numel * es + 1);
        if (!b) { rc = -1; break; }
        for (size_t k = 0; k < numel; k++) {
            float v = st_tiny_value(o.seed, t[i].name, k);
            uint16_t h16 = !strcmp(o.dtype, "F16") ? st_f32_to_f16(v) : st_f32_to_bf16(v);
            if (es == 4) memcpy(b + 4 * k, &v, 4);
            else memcpy(b + 2 * k, &h16, 2);
        }
        if (i == 0 && o.embed_data) memcpy(b, o.embed_data, numel * es); /* tensor 0 is embed_tokens */
        bufs[i] = b;
        t[i].data = b;
    }

    /* Files. */
    char path[4096];
    if (rc == 0 && o.shards <= 1) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        rc = st_write_file(path, t, n);
    } else if (rc == 0) {
        size_t icap = 256 + (size_t)n * 160, ilen = 0, total = 0;
        char *idx = malloc(icap);
        if (!idx) rc = -1;
        for (int i = 0; i < n; i++) total += st_tensor_bytes(&t[i]);
        if (idx) ilen += (size_t)snprintf(idx, icap, "{\"metadata\": {\"total_size\": %zu}, \"weight_map\": {", total);
        int per = (n + o.shards - 1) / o.shards;
        for (int s = 0; rc == 0 && s < o.shards; s++) {
            int b = s * per, e = b + per < n ? b + per : n;
            char shard[64];
            snprintf(shard, sizeof shard, "model-%05d-of-%05d.safetensors", s + 1, o.shards);
            snprintf(path, sizeof path, "%s/%s", dir, shard);
            rc = st_write_file(path, t + (b < n ? b : n), e > b ? e - b : 0);
            for (int i = b; i < e; i++)
                ilen += (size_t)snprintf(idx + ilen, icap - ilen, "%s\"%s\": \"%s\"", i ? ", " : "", t[i].name, shard);
        }
        if (rc == 0) {
            snprintf(idx + ilen, icap - ilen, "}}");
            rc = st_write_text(dir, "model.safetensors.index.json", idx);
        }
        free(idx);
    }
    for (int i = 0; bufs && i < n; i++) free(bufs[i]);
    free(bufs);
    free(names);
    free(t);
    return rc;
}

#endif
