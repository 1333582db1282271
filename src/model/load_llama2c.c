/* llama2.c legacy checkpoint -> mg_model.
 *
 * File layout (karpathy/llama2.c run.c, memory_map_weights): a header of 7
 * int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
 * seq_len; vocab_size < 0 means the classifier is stored separately), then
 * float32 arrays, each matrix (out, in) row-major like nn.Linear:
 *   token_embedding_table (vocab, dim)
 *   rms_att_weight        (layer, dim)
 *   wq                    (layer, n_heads * head_size, dim)
 *   wk, wv                (layer, n_kv_heads * head_size, dim)
 *   wo                    (layer, dim, n_heads * head_size)
 *   rms_ffn_weight        (layer, dim)
 *   w1 (gate), w3 (up)    (layer, hidden_dim, dim)   stored w1, w2, w3
 *   w2 (down)             (layer, dim, hidden_dim)
 *   rms_final_weight      (dim)
 *   freq_cis_real, freq_cis_imag (seq_len, head_size / 2)   unused
 *   wcls                  (vocab, dim)   only when vocab_size < 0
 * Matrices stay F32 in the mapping, except wq and wk, whose rows are
 * permuted per head from llama2.c's interleaved RoPE pairs (2i, 2i+1) to
 * HF's rotate-half layout (i, i + head_size/2). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model.h"
#include "storage.h"

#define HEADER_BYTES 28
/* First int32 of llama2.c's newer export formats (version 1 and 2). */
#define LLAMA2C_MAGIC 0x616b3432

/* Copies the (rows_per_head * n_heads, cols) matrix src to dst, reordering
 * the rows of each head so that new row r (r < hs/2) is old row 2r and new
 * row hs/2 + r is old row 2r + 1 (hs = rows per head), as HF's
 * convert_llama_weights_to_hf.py permute() does. */
static void permute_rope_rows(float *dst, const float *src, int n_heads, int hs, int cols) {
    for (int h = 0; h < n_heads; h++) {
        const float *s = src + (size_t)h * hs * cols;
        float *d = dst + (size_t)h * hs * cols;
        for (int r = 0; r < hs / 2; r++) {
            memcpy(d + (size_t)r * cols, s + (size_t)(2 * r) * cols, (size_t)cols * sizeof(float));
            memcpy(d + (size_t)(hs / 2 + r) * cols, s + (size_t)(2 * r + 1) * cols, (size_t)cols * sizeof(float));
        }
    }
}

/* Validates the header dims and fills cfg. Returns MG_ERR_FORMAT naming the
 * bad field. */
static mg_status parse_header(const char *path, const int32_t h[7], mg_config *cfg) {
    static const char *const names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size",
                                         "seq_len"};
    if (h[0] == LLAMA2C_MAGIC)
        return mg_error_set(MG_ERR_UNSUPPORTED,
                            "%s: llama2.c version-%d export (magic \"ak42\"); only the legacy format is supported",
                            path, h[1]);
    for (int i = 0; i < 7; i++) {
        /* vocab_size may be negative; INT32_MIN has no positive counterpart. */
        int32_t v = i == 5 && h[i] < 0 && h[i] != INT32_MIN ? -h[i] : h[i];
        if (v <= 0 || v > (1 << 24))
            return mg_error_set(MG_ERR_FORMAT, "%s: header field %s = %d is not a plausible size", path, names[i],
                                (int)h[i]);
    }
    int dim = h[0], n_heads = h[3], n_kv = h[4];
    if (dim % n_heads != 0)
        return mg_error_set(MG_ERR_FORMAT, "%s: dim %d is not divisible by n_heads %d", path, dim, n_heads);
    if (n_kv > n_heads || n_heads % n_kv != 0)
        return mg_error_set(MG_ERR_FORMAT, "%s: n_heads %d is not a multiple of n_kv_heads %d", path, n_heads, n_kv);
    if ((dim / n_heads) % 2 != 0)
        return mg_error_set(MG_ERR_FORMAT, "%s: head size %d must be even", path, dim / n_heads);
    memset(cfg, 0, sizeof *cfg);
    cfg->arch = MG_ARCH_LLAMA;
    cfg->dim = dim;
    cfg->hidden_dim = h[1];
    cfg->n_layers = h[2];
    cfg->n_heads = n_heads;
    cfg->n_kv_heads = n_kv;
    cfg->head_dim = dim / n_heads;
    cfg->vocab_size = h[5] < 0 ? -h[5] : h[5];
    cfg->max_seq_len = h[6];
    cfg->norm_eps = 1e-5f;
    cfg->rope_theta = 10000.0f;
    cfg->rope_type = MG_ROPE_DEFAULT;
    cfg->tie_embeddings = h[5] > 0;
    cfg->qkv_bias = 0;
    cfg->o_bias = 0;
    cfg->bos_id = 1;
    /* run.c's generate loop stops when the model emits BOS (1), which
     * delimits stories in its training data; it never checks for 2. */
    cfg->n_eos = 1;
    cfg->eos_ids[0] = 1;
    return MG_OK;
}

/* Number of floats the header implies after the header (every size fits
 * in 64 bits: each dim is at most 2^24). */
static uint64_t implied_floats(const mg_config *c) {
    uint64_t dim = (uint64_t)c->dim, hid = (uint64_t)c->hidden_dim, L = (uint64_t)c->n_layers;
    uint64_t hs = (uint64_t)c->head_dim, q = (uint64_t)c->n_heads * hs, kv = (uint64_t)c->n_kv_heads * hs;
    uint64_t vocab = (uint64_t)c->vocab_size, seq = (uint64_t)c->max_seq_len;
    uint64_t n = vocab * dim;                          /* token_embedding_table */
    n += L * dim;                                      /* rms_att_weight */
    n += L * q * dim + 2 * L * kv * dim + L * dim * q; /* wq, wk, wv, wo */
    n += L * dim;                                      /* rms_ffn_weight */
    n += 3 * L * hid * dim;                            /* w1, w2, w3 */
    n += dim;                                          /* rms_final_weight */
    n += 2 * seq * (hs / 2);                           /* freq_cis_real, freq_cis_imag */
    if (!c->tie_embeddings) n += vocab * dim;          /* wcls */
    return n;
}

/* Points the weights at the mapped floats `p` (see the file comment for the
 * order); wq and wk are permuted copies. */
static mg_status map_weights(mg_model *model, const float *p) {
    const mg_config *c = &model->config;
    mg_weights *w = &model->weights;
    int dim = c->dim, hid = c->hidden_dim, L = c->n_layers, hs = c->head_dim;
    int q = c->n_heads * hs, kv = c->n_kv_heads * hs;
    w->layers = mg_storage_alloc(model->storage, (size_t)L * sizeof *w->layers);
    float *perm = mg_storage_alloc(model->storage, (size_t)L * ((size_t)q + kv) * dim * sizeof(float));
    if (!w->layers || !perm) return mg_error_set(MG_ERR_OOM, "out of memory for llama2.c weights");
#define MAT(rows_, cols_, ptr_) ((mg_matrix){.dtype = MG_DTYPE_F32, .data = (ptr_), .rows = (rows_), .cols = (cols_)})
    w->tok_embed = MAT(c->vocab_size, dim, p);
    p += (size_t)c->vocab_size * dim;
    for (int l = 0; l < L; l++) w->layers[l].attn_norm = p + (size_t)l * dim;
    p += (size_t)L * dim;
    for (int l = 0; l < L; l++) {
        float *dq = perm + (size_t)l * q * dim;
        permute_rope_rows(dq, p + (size_t)l * q * dim, c->n_heads, hs, dim);
        w->layers[l].wq = MAT(q, dim, dq);
    }
    p += (size_t)L * q * dim;
    float *perm_k = perm + (size_t)L * q * dim;
    for (int l = 0; l < L; l++) {
        float *dk = perm_k + (size_t)l * kv * dim;
        permute_rope_rows(dk, p + (size_t)l * kv * dim, c->n_kv_heads, hs, dim);
        w->layers[l].wk = MAT(kv, dim, dk);
    }
    p += (size_t)L * kv * dim;
    for (int l = 0; l < L; l++) w->layers[l].wv = MAT(kv, dim, p + (size_t)l * kv * dim);
    p += (size_t)L * kv * dim;
    for (int l = 0; l < L; l++) w->layers[l].wo = MAT(dim, q, p + (size_t)l * dim * q);
    p += (size_t)L * dim * q;
    for (int l = 0; l < L; l++) w->layers[l].mlp_norm = p + (size_t)l * dim;
    p += (size_t)L * dim;
    for (int l = 0; l < L; l++) w->layers[l].w_gate = MAT(hid, dim, p + (size_t)l * hid * dim);
    p += (size_t)L * hid * dim;
    for (int l = 0; l < L; l++) w->layers[l].w_down = MAT(dim, hid, p + (size_t)l * dim * hid);
    p += (size_t)L * dim * hid;
    for (int l = 0; l < L; l++) w->layers[l].w_up = MAT(hid, dim, p + (size_t)l * hid * dim);
    p += (size_t)L * hid * dim;
    w->final_norm = p;
    p += dim;
    p += (size_t)c->max_seq_len * (hs / 2) * 2; /* freq_cis_real, freq_cis_imag */
    w->lm_head = c->tie_embeddings ? w->tok_embed : MAT(c->vocab_size, dim, p);
#undef MAT
    return MG_OK;
}

mg_status mg_model_load_llama2c(const char *path, mg_model **out) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mg_error_set(MG_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return mg_error_set(MG_ERR_IO, "%s is not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    if (size < HEADER_BYTES) {
        close(fd);
        return mg_error_set(MG_ERR_FORMAT, "%s: %zu bytes is too small for a llama2.c header (%d bytes)", path,
                            size, HEADER_BYTES);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED) return mg_error_set(MG_ERR_IO, "cannot mmap %s: %s", path, strerror(map_errno));

    mg_model *model = calloc(1, sizeof *model);
    if (!model || !(model->storage = mg_storage_new())) {
        free(model);
        munmap(map, size);
        return mg_error_set(MG_ERR_OOM, "out of memory loading %s", path);
    }
    mg_status st = mg_storage_add_map(model->storage, map, size);
    int32_t h[7] = {0};
    if (st == MG_OK) {
        memcpy(h, map, sizeof h); /* llama2.c writes native (little-endian) int32 */
        st = parse_header(path, h, &model->config);
    }
    if (st == MG_OK) {
        uint64_t want = HEADER_BYTES + 4 * implied_floats(&model->config);
        if (want != (uint64_t)size) {
            const mg_config *c = &model->config;
            st = mg_error_set(MG_ERR_FORMAT,
                              "%s: file is %zu bytes but its header (dim %d, hidden_dim %d, n_layers %d, n_heads %d, "
                              "n_kv_heads %d, vocab_size %d, seq_len %d) implies %llu bytes",
                              path, size, c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, (int)h[5],
                              c->max_seq_len, (unsigned long long)want);
        }
    }
    /* The mapping is page aligned and the header is 28 bytes, so the floats
     * are 4-byte aligned. */
    if (st == MG_OK) st = map_weights(model, (const float *)((const char *)map + HEADER_BYTES));
    if (st != MG_OK) {
        mg_model_free(model);
        return st;
    }
    *out = model;
    return MG_OK;
}
