/* Tests for the model loaders (src/model/load_hf.c, load_llama2c.c):
 * the project's reference checkpoints from ../shared, synthetic checkpoints
 * written from C (tests/st_writer.h), and bad inputs. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "model/model.h"
#include "shared_path.h"

/* shared_path.h calls cr_fatal, which only Criterion's new-assert header
 * defines; map it onto the classic API used here. */
#ifndef cr_fatal
#define cr_fatal(...) cr_assert_fail(__VA_ARGS__)
#endif
#include "st_writer.h"
#include "util/bf16.h"

static char tmpdir[64];

static void setup(void) { cr_assert_not_null(st_mkdtemp(tmpdir, sizeof tmpdir)); }
static void teardown(void) { st_rmtree(tmpdir); }

TestSuite(load_hf, .init = setup, .fini = teardown);
TestSuite(load_llama2c, .init = setup, .fini = teardown);

/* Loads dir, expecting failure with status want and `sub` in the message. */
static void expect_hf_fail(const char *dir, mg_status want, const char *sub) {
    mg_model *m = (mg_model *)0x1;
    mg_error_clear();
    mg_status st = mg_model_load_hf(dir, &m);
    cr_assert_eq(st, want, "status %s, want %s (%s)", mg_status_str(st), mg_status_str(want), mg_error_last());
    cr_assert_null(m);
    cr_assert(strstr(mg_error_last(), sub), "message lacks '%s': %s", sub, mg_error_last());
}

/* Loads path as llama2.c, expecting failure like expect_hf_fail. */
static void expect_llama2c_fail(const char *path, mg_status want, const char *sub) {
    mg_model *m = (mg_model *)0x1;
    mg_error_clear();
    mg_status st = mg_model_load_llama2c(path, &m);
    cr_assert_eq(st, want, "status %s, want %s (%s)", mg_status_str(st), mg_status_str(want), mg_error_last());
    cr_assert_null(m);
    cr_assert(strstr(mg_error_last(), sub), "message lacks '%s': %s", sub, mg_error_last());
}

/* BF16 bits of element i of a BF16 matrix. */
static uint16_t bf16_at(const mg_matrix *m, size_t i) {
    cr_assert_eq(m->dtype, MG_DTYPE_BF16);
    return ((const uint16_t *)m->data)[i];
}

/* Reads `n` bytes at `off` of file `path` into buf. */
static void read_at(const char *path, long off, void *buf, size_t n) {
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    cr_assert_eq(fseek(f, off, SEEK_SET), 0);
    cr_assert_eq(fread(buf, 1, n, f), n);
    fclose(f);
}

/* Returns the absolute file offset of tensor `name` in a safetensors file,
 * parsing the header independently of src/model/safetensors.c. */
static long independent_offset(const char *path, const char *name) {
    uint8_t len8[8];
    read_at(path, 0, len8, 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | len8[i];
    char *h = malloc(n + 1);
    read_at(path, 8, h, n);
    h[n] = '\0';
    cJSON *root = cJSON_Parse(h);
    cr_assert_not_null(root);
    cJSON *t = cJSON_GetObjectItem(root, name);
    cr_assert_not_null(t, "%s not in %s", name, path);
    long begin = (long)cJSON_GetArrayItem(cJSON_GetObjectItem(t, "data_offsets"), 0)->valuedouble;
    cJSON_Delete(root);
    free(h);
    return 8 + (long)n + begin;
}

/* Asserts that m has data and is (rows, cols). */
static void assert_shape(const mg_matrix *m, int rows, int cols) {
    cr_assert_not_null(m->data);
    cr_assert_eq(m->rows, rows, "rows %d want %d", m->rows, rows);
    cr_assert_eq(m->cols, cols, "cols %d want %d", m->cols, cols);
}

/* ---- the reference HF checkpoint ---- */

Test(load_hf, mg_llama_27m) {
    char dir[4096], st_path[4200];
    MG_TEST_SHARED(dir, "models/mg-llama-27m");
    snprintf(st_path, sizeof st_path, "%s/model.safetensors", dir);
    mg_model *m;
    cr_assert_eq(mg_model_load_hf(dir, &m), MG_OK, "%s", mg_error_last());
    const mg_config *c = &m->config;
    cr_assert_eq(c->arch, MG_ARCH_LLAMA);
    cr_assert_eq(c->dim, 512);
    cr_assert_eq(c->hidden_dim, 1408);
    cr_assert_eq(c->n_layers, 8);
    cr_assert_eq(c->n_heads, 8);
    cr_assert_eq(c->n_kv_heads, 2);
    cr_assert_eq(c->head_dim, 64);
    cr_assert_eq(c->vocab_size, 8192);
    cr_assert_eq(c->max_seq_len, 4096);
    cr_assert_float_eq(c->norm_eps, 1e-5f, 1e-12);
    cr_assert_eq(c->rope_theta, 500000.0f);
    cr_assert_eq(c->rope_type, MG_ROPE_LLAMA3);
    cr_assert_eq(c->rope_factor, 8.0f);
    cr_assert_eq(c->rope_low_freq_factor, 1.0f);
    cr_assert_eq(c->rope_high_freq_factor, 4.0f);
    cr_assert_eq(c->rope_original_max_pos, 1024);
    cr_assert_eq(c->tie_embeddings, 1);
    cr_assert_eq(c->qkv_bias, 0);
    cr_assert_eq(c->o_bias, 0);
    cr_assert_eq(c->bos_id, 0);
    cr_assert_eq(c->n_eos, 2); /* generation_config.json: [0, 1] */
    cr_assert_eq(c->eos_ids[0], 0);
    cr_assert_eq(c->eos_ids[1], 1);

    const mg_weights *w = &m->weights;
    assert_shape(&w->tok_embed, 8192, 512);
    cr_assert_eq(w->lm_head.data, w->tok_embed.data);
    assert_shape(&w->lm_head, 8192, 512);
    cr_assert_not_null(w->final_norm);
    for (int l = 0; l < c->n_layers; l++) {
        const mg_layer_weights *L = &w->layers[l];
        assert_shape(&L->wq, 512, 512);
        assert_shape(&L->wk, 128, 512);
        assert_shape(&L->wv, 128, 512);
        assert_shape(&L->wo, 512, 512);
        assert_shape(&L->w_gate, 1408, 512);
        assert_shape(&L->w_up, 1408, 512);
        assert_shape(&L->w_down, 512, 1408);
        cr_assert_eq(L->wq.dtype, MG_DTYPE_BF16);
        cr_assert_not_null(L->attn_norm);
        cr_assert_not_null(L->mlp_norm);
        cr_assert_null(L->bq);
        cr_assert_null(L->bo);
    }
    /* 26,747,392 parameters (README): matrices as BF16, the 17 norm vectors as float. */
    size_t norms = 17 * 512;
    size_t want = (26747392 - norms) * 2 + norms * 4;
    cr_assert_eq(mg_model_weight_bytes(m), want, "weight bytes %zu want %zu", mg_model_weight_bytes(m), want);

    /* Spot checks against the raw file. */
    uint16_t raw[2];
    read_at(st_path, independent_offset(st_path, "model.norm.weight"), raw, 4);
    cr_assert_eq(w->final_norm[0], mg_bf16_to_f32(raw[0]));
    cr_assert_eq(w->final_norm[1], mg_bf16_to_f32(raw[1]));
    long off = independent_offset(st_path, "model.layers.7.mlp.down_proj.weight");
    read_at(st_path, off + 2L * (512 * 1408 - 1), raw, 2);
    cr_assert_eq(bf16_at(&w->layers[7].w_down, 512 * 1408 - 1), raw[0]);
    read_at(st_path, independent_offset(st_path, "model.layers.3.post_attention_layernorm.weight") + 2 * 100, raw, 2);
    cr_assert_eq(w->layers[3].mlp_norm[100], mg_bf16_to_f32(raw[0]));
    mg_model_free(m);
    mg_model_free(NULL);
}

/* ---- synthetic HF checkpoints ---- */

/* Checks every weight of a model written by st_write_tiny_model(o) against
 * st_tiny_value, with the rounding its dtype implies. */
static void check_tiny_values(const mg_model *m, const st_tiny_opts *o_in) {
    st_tiny_opts o = *o_in;
    st_tiny_defaults(&o);
    int f16 = !strcmp(o.dtype, "F16"), f32 = !strcmp(o.dtype, "F32");
    /* Stored value as float (what the checkpoint holds). */
#define STORED(name, i)                                                                                  \
    (f32 ? st_tiny_value(o.seed, name, i)                                                                \
         : f16 ? mg_f16_to_f32(st_f32_to_f16(st_tiny_value(o.seed, name, i)))                           \
               : mg_bf16_to_f32(st_f32_to_bf16(st_tiny_value(o.seed, name, i))))
    char n[128];
#define CHECK_MAT(mat, nm)                                                                               \
    do {                                                                                                 \
        size_t cnt_ = (size_t)(mat).rows * (mat).cols;                                                   \
        for (size_t i_ = 0; i_ < cnt_; i_++)                                                             \
            cr_assert_eq(bf16_at(&(mat), i_), st_f32_to_bf16(STORED(nm, i_)), "%s[%zu]", nm, i_);        \
    } while (0)
#define CHECK_VEC(vec, len, nm)                                                                          \
    do {                                                                                                 \
        cr_assert_not_null(vec, "%s", nm);                                                               \
        for (int i_ = 0; i_ < (len); i_++)                                                               \
            cr_assert_eq((vec)[i_], STORED(nm, (size_t)i_), "%s[%d]", nm, i_);                           \
    } while (0)
    const mg_config *c = &m->config;
    const mg_weights *w = &m->weights;
    int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    if (!o.embed_data) CHECK_MAT(w->tok_embed, "model.embed_tokens.weight");
    if (!c->tie_embeddings) CHECK_MAT(w->lm_head, "lm_head.weight");
    CHECK_VEC(w->final_norm, c->dim, "model.norm.weight");
    for (int l = 0; l < c->n_layers; l++) {
        const mg_layer_weights *L = &w->layers[l];
#define NM(s) (snprintf(n, sizeof n, "model.layers.%d.%s", l, s), n)
        CHECK_VEC(L->attn_norm, c->dim, NM("input_layernorm.weight"));
        CHECK_VEC(L->mlp_norm, c->dim, NM("post_attention_layernorm.weight"));
        CHECK_MAT(L->wq, NM("self_attn.q_proj.weight"));
        CHECK_MAT(L->wk, NM("self_attn.k_proj.weight"));
        CHECK_MAT(L->wv, NM("self_attn.v_proj.weight"));
        CHECK_MAT(L->wo, NM("self_attn.o_proj.weight"));
        CHECK_MAT(L->w_gate, NM("mlp.gate_proj.weight"));
        CHECK_MAT(L->w_up, NM("mlp.up_proj.weight"));
        CHECK_MAT(L->w_down, NM("mlp.down_proj.weight"));
        if (c->qkv_bias) {
            CHECK_VEC(L->bq, q, NM("self_attn.q_proj.bias"));
            CHECK_VEC(L->bk, kv, NM("self_attn.k_proj.bias"));
            CHECK_VEC(L->bv, kv, NM("self_attn.v_proj.bias"));
        } else {
            cr_assert_null(L->bq);
            cr_assert_null(L->bk);
            cr_assert_null(L->bv);
        }
        if (c->o_bias) CHECK_VEC(L->bo, c->dim, NM("self_attn.o_proj.bias"));
        else cr_assert_null(L->bo);
#undef NM
    }
#undef CHECK_MAT
#undef CHECK_VEC
#undef STORED
}

/* Expected mg_model_weight_bytes of a tiny model. */
static size_t tiny_weight_bytes(const mg_config *c) {
    size_t q = (size_t)c->n_heads * c->head_dim, kv = (size_t)c->n_kv_heads * c->head_dim, d = c->dim;
    size_t mats = (size_t)c->vocab_size * d * (c->tie_embeddings ? 1 : 2);
    size_t floats = d;
    for (int l = 0; l < c->n_layers; l++) {
        mats += q * d + 2 * kv * d + d * q + 3 * (size_t)c->hidden_dim * d;
        floats += 2 * d + (c->qkv_bias ? q + 2 * kv : 0) + (c->o_bias ? d : 0);
    }
    return mats * 2 + floats * 4;
}

/* Writes the tiny model o into tmpdir, loads it, checks every value. */
static mg_model *load_tiny(const st_tiny_opts *o) {
    cr_assert_eq(st_write_tiny_model(tmpdir, o), 0);
    mg_model *m;
    cr_assert_eq(mg_model_load_hf(tmpdir, &m), MG_OK, "%s", mg_error_last());
    check_tiny_values(m, o);
    cr_assert_eq(mg_model_weight_bytes(m), tiny_weight_bytes(&m->config));
    return m;
}

Test(load_hf, tiny_llama_bf16_tied) {
    st_tiny_opts o = {.tie = 1, .seed = 1};
    mg_model *m = load_tiny(&o);
    cr_assert_eq(m->config.arch, MG_ARCH_LLAMA);
    cr_assert_eq(m->config.dim, 16);
    cr_assert_eq(m->config.head_dim, 4);
    cr_assert_eq(m->weights.lm_head.data, m->weights.tok_embed.data);
    cr_assert_eq(m->config.bos_id, 1);
    cr_assert_eq(m->config.n_eos, 1);
    cr_assert_eq(m->config.eos_ids[0], 2);
    mg_model_free(m);
}

Test(load_hf, tied_with_lm_head_present_uses_embeddings) {
    st_tiny_opts o = {.tie = 1, .lm_head_anyway = 1, .seed = 2};
    mg_model *m = load_tiny(&o);
    cr_assert_eq(m->weights.lm_head.data, m->weights.tok_embed.data);
    mg_model_free(m);
}

Test(load_hf, untied_lm_head) {
    st_tiny_opts o = {.tie = 0, .seed = 3};
    mg_model *m = load_tiny(&o);
    cr_assert_neq(m->weights.lm_head.data, m->weights.tok_embed.data);
    assert_shape(&m->weights.lm_head, 64, 16);
    mg_model_free(m);
}

Test(load_hf, qwen2_with_bias) {
    st_tiny_opts o = {.arch = "qwen2", .dim = 32, .n_heads = 4, .n_kv_heads = 1, .hidden_dim = 48, .seed = 4};
    mg_model *m = load_tiny(&o);
    cr_assert_eq(m->config.arch, MG_ARCH_QWEN2);
    cr_assert_eq(m->config.qkv_bias, 1);
    cr_assert_not_null(m->weights.layers[1].bk);
    assert_shape(&m->weights.layers[0].wk, 8, 32);
    /* one bias value spelled out: stored BF16, loaded exactly as float */
    float b = mg_bf16_to_f32(st_f32_to_bf16(st_tiny_value(4, "model.layers.1.self_attn.k_proj.bias", 7)));
    cr_assert_eq(m->weights.layers[1].bk[7], b);
    mg_model_free(m);
}

Test(load_hf, llama_attention_bias) {
    st_tiny_opts o = {.attention_bias = 1, .seed = 5};
    mg_model *m = load_tiny(&o);
    cr_assert_eq(m->config.qkv_bias, 1);
    cr_assert_eq(m->config.o_bias, 1);
    cr_assert_not_null(m->weights.layers[0].bo);
    mg_model_free(m);
}

Test(load_hf, sharded_two_shards) {
    st_tiny_opts o = {.shards = 2, .seed = 6};
    mg_model *m = load_tiny(&o);
    mg_model_free(m);
    struct stat sb;
    char p[4200];
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", tmpdir);
    cr_assert_eq(stat(p, &sb), 0, "second shard was not written");
}

Test(load_hf, sharded_three_shards_qwen2_f16) {
    st_tiny_opts o = {.arch = "qwen2", .shards = 3, .dtype = "F16", .seed = 7};
    mg_model *m = load_tiny(&o);
    mg_model_free(m);
}

Test(load_hf, f32_converted_to_bf16) {
    /* Hand-picked values: ties go to even, one ulp above a tie rounds up. */
    static float emb[64 * 16];
    uint32_t bits[] = {0x3F808000u, 0x3F818000u, 0x3F808001u, 0xC0200000u, 0x000116C2u, 0x3F7FFFFFu};
    uint16_t want[] = {0x3F80, 0x3F82, 0x3F81, 0xC020, 0x0001, 0x3F80};
    for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++) memcpy(&emb[i], &bits[i], 4);
    st_tiny_opts o = {.dtype = "F32", .tie = 1, .seed = 8, .embed_data = emb};
    mg_model *m = load_tiny(&o);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert_eq(bf16_at(&m->weights.tok_embed, i), want[i], "elem %zu: %04x want %04x", i,
                     bf16_at(&m->weights.tok_embed, i), want[i]);
    cr_assert_eq(m->weights.tok_embed.dtype, MG_DTYPE_BF16);
    mg_model_free(m);
}

Test(load_hf, f16_converted_to_bf16) {
    static uint16_t emb[64 * 16];
    /* 1.0, 0x3555 = 0.333251953125 (f32 0x3EAAA000, rounds up), smallest
     * subnormal 2^-24, 65504 (rounds up to 65536), -2.0 */
    uint16_t in[] = {0x3C00, 0x3555, 0x0001, 0x7BFF, 0xC000};
    uint16_t want[] = {0x3F80, 0x3EAB, 0x3380, 0x4780, 0xC000};
    memcpy(emb, in, sizeof in);
    st_tiny_opts o = {.dtype = "F16", .tie = 0, .seed = 9, .embed_data = emb};
    mg_model *m = load_tiny(&o);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert_eq(bf16_at(&m->weights.tok_embed, i), want[i], "elem %zu: %04x want %04x", i,
                     bf16_at(&m->weights.tok_embed, i), want[i]);
    mg_model_free(m);
}

Test(load_hf, misaligned_bf16_data_is_copied) {
    st_tiny_opts o = {.seed = 10, .tie = 1};
    cr_assert_eq(st_write_tiny_model(tmpdir, &o), 0);
    /* Re-write model.safetensors with one more header byte: data starts at
     * an odd offset. */
    char p[4200];
    snprintf(p, sizeof p, "%s/model.safetensors", tmpdir);
    struct stat sb;
    cr_assert_eq(stat(p, &sb), 0);
    size_t size = (size_t)sb.st_size;
    char *buf = malloc(size);
    read_at(p, 0, buf, size);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | (uint8_t)buf[i];
    char *h = malloc(hl + 1);
    memcpy(h, buf + 8, hl);
    h[hl] = ' ';
    cr_assert_eq(st_write_raw(p, hl + 1, h, hl + 1, buf + 8 + hl, size - 8 - hl), 0);
    free(h);
    free(buf);
    mg_model *m;
    cr_assert_eq(mg_model_load_hf(tmpdir, &m), MG_OK, "%s", mg_error_last());
    cr_assert_eq((uintptr_t)m->weights.layers[0].wq.data & 1u, 0);
    check_tiny_values(m, &o);
    mg_model_free(m);
}

/* ---- bad HF checkpoints ---- */

Test(load_hf, missing_dir_and_files) {
    char p[4200];
    snprintf(p, sizeof p, "%s/nonexistent", tmpdir);
    expect_hf_fail(p, MG_ERR_IO, "config.json");
    st_tiny_opts o = {.seed = 11};
    cr_assert_eq(st_write_tiny_model(tmpdir, &o), 0);
    snprintf(p, sizeof p, "%s/model.safetensors", tmpdir);
    cr_assert_eq(remove(p), 0);
    expect_hf_fail(tmpdir, MG_ERR_IO, "model.safetensors");
}

Test(load_hf, unsupported_architecture) {
    st_tiny_opts o = {.seed = 12};
    cr_assert_eq(st_write_tiny_model(tmpdir, &o), 0);
    cr_assert_eq(st_write_config(tmpdir, "{\"architectures\": [\"GPT2LMHeadModel\"], \"n_embd\": 16}"), 0);
    expect_hf_fail(tmpdir, MG_ERR_UNSUPPORTED, "GPT2LMHeadModel");
}

Test(load_hf, bad_configs) {
    st_tiny_opts o = {.seed = 13};
    cr_assert_eq(st_write_tiny_model(tmpdir, &o), 0);
    cr_assert_eq(st_write_config(tmpdir, "{\"architectures\": [\"LlamaForCausalLM\"], \"intermediate_size\": 40, "
                                         "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 64}"),
                 0);
    expect_hf_fail(tmpdir, MG_ERR_FORMAT, "hidden_size");
    cr_assert_eq(st_write_config(tmpdir, "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": [16], "
                                         "\"intermediate_size\": 40, \"num_hidden_layers\": 2, "
                                         "\"num_attention_heads\": 4, \"vocab_size\": 64}"),
                 0);
    expect_hf_fail(tmpdir, MG_ERR_FORMAT, "hidden_size");
    cr_assert_eq(st_write_config(tmpdir, "{not json"), 0);
    expect_hf_fail(tmpdir, MG_ERR_FORMAT, "config.json");
    cr_assert_eq(st_write_tiny_model(tmpdir, &(st_tiny_opts){
                                                 .seed = 13,
                                                 .extra_config = "\"rope_scaling\": {\"rope_type\": \"yarn\", "
                                                                 "\"factor\": 4.0}"}),
                 0);
    expect_hf_fail(tmpdir, MG_ERR_UNSUPPORTED, "yarn");
    cr_assert_eq(st_write_tiny_model(tmpdir, &o), 0);
    cr_assert_eq(st_write_text(tmpdir, "generation_config.json", "{\"eos_token_id\": [1,"), 0);
    expect_hf_fail(tmpdir, MG_ERR_FORMAT, "generation_config.json");
}

Test(load_hf, shape_mismatch) {
    st_tiny_opts o = {.seed = 14};
    cr_assert_eq(st_write_tiny_model(tmpdir, &o), 0);
    /* Same checkpoint, config claims intermediate_size 48 instead of 40. */
    o.hidden_dim = 48;
    st_tiny_opts o2 = o;
    char other[64];
    cr_assert_not_null(st_mkdtemp(other, sizeof other));
    cr_assert_eq(st_write_tiny_model(other, &o2), 0);
    char p[4200], cfg[4200];
    snprintf(p, sizeof p, "%s/config.json", other);
    snprintf(cfg, sizeof cfg, "%s/config.json", tmpdir);
    cr_assert_eq(rename(p, cfg), 0);
    st_rmtree(other);
    expect_hf_fail(tmpdir, MG_ERR_SHAPE, "model.layers.0.mlp.gate_proj.weight");
    expect_hf_fail(tmpdir, MG_ERR_SHAPE, "expected shape [48, 16], got [40, 16]");
}

Test(load_hf, extra_layers_vs_config) {
    st_tiny_opts o = {.seed = 15, .n_layers = 3};
    cr_assert_eq(st_write_tiny_model(tmpdir, &o), 0);
    char other[64], p[4200], cfg[4200];
    cr_assert_not_null(st_mkdtemp(other, sizeof other));
    o.n_layers = 2;
    cr_assert_eq(st_write_tiny_model(other, &o), 0);
    snprintf(p, sizeof p, "%s/config.json", other);
    snprintf(cfg, sizeof cfg, "%s/config.json", tmpdir);
    cr_assert_eq(rename(p, cfg), 0);
    st_rmtree(other);
    expect_hf_fail(tmpdir, MG_ERR_SHAPE, "model.layers.2.");
}

Test(load_hf, missing_tensor) {
    /* Tied checkpoint (no lm_head.weight) with the config of an untied one. */
    st_tiny_opts o = {.seed = 16, .tie = 1};
    cr_assert_eq(st_write_tiny_model(tmpdir, &o), 0);
    char other[64], p[4200], cfg[4200];
    cr_assert_not_null(st_mkdtemp(other, sizeof other));
    o.tie = 0;
    cr_assert_eq(st_write_tiny_model(other, &o), 0);
    snprintf(p, sizeof p, "%s/config.json", other);
    snprintf(cfg, sizeof cfg, "%s/config.json", tmpdir);
    cr_assert_eq(rename(p, cfg), 0);
    st_rmtree(other);
    expect_hf_fail(tmpdir, MG_ERR_FORMAT, "missing tensor 'lm_head.weight'");
}

Test(load_hf, qwen2_config_on_llama_weights_lacks_bias) {
    st_tiny_opts o = {.seed = 17};
    cr_assert_eq(st_write_tiny_model(tmpdir, &o), 0);
    cr_assert_eq(st_write_config(tmpdir, "{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_size\": 16, "
                                         "\"intermediate_size\": 40, \"num_hidden_layers\": 2, "
                                         "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, "
                                         "\"vocab_size\": 64}"),
                 0);
    expect_hf_fail(tmpdir, MG_ERR_FORMAT, "model.layers.0.self_attn.q_proj.bias");
}

Test(load_hf, corrupt_safetensors_in_dir) {
    st_tiny_opts o = {.seed = 18};
    cr_assert_eq(st_write_tiny_model(tmpdir, &o), 0);
    char p[4200];
    snprintf(p, sizeof p, "%s/model.safetensors", tmpdir);
    struct stat sb;
    cr_assert_eq(stat(p, &sb), 0);
    cr_assert_eq(truncate(p, sb.st_size - 1), 0);
    expect_hf_fail(tmpdir, MG_ERR_FORMAT, "model.safetensors");
}

Test(load_hf, sharded_index_missing_shard) {
    st_tiny_opts o = {.seed = 19, .shards = 2};
    cr_assert_eq(st_write_tiny_model(tmpdir, &o), 0);
    char p[4200];
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", tmpdir);
    cr_assert_eq(remove(p), 0);
    expect_hf_fail(tmpdir, MG_ERR_IO, "model-00002-of-00002.safetensors");
}

Test(load_hf, sharded_index_bad) {
    st_tiny_opts o = {.seed = 20, .shards = 2};
    cr_assert_eq(st_write_tiny_model(tmpdir, &o), 0);
    cr_assert_eq(st_write_text(tmpdir, "model.safetensors.index.json",
                               "{\"weight_map\": {\"model.norm.weight\": \"model-00001-of-00002.safetensors\"}}"),
                 0);
    expect_hf_fail(tmpdir, MG_ERR_FORMAT, "model.norm.weight");
    cr_assert_eq(st_write_text(tmpdir, "model.safetensors.index.json",
                               "{\"weight_map\": {\"model.norm.weight\": \"../escape.safetensors\"}}"),
                 0);
    expect_hf_fail(tmpdir, MG_ERR_FORMAT, "invalid shard");
    cr_assert_eq(st_write_text(tmpdir, "model.safetensors.index.json", "{\"metadata\": {}}"), 0);
    expect_hf_fail(tmpdir, MG_ERR_FORMAT, "weight_map");
    cr_assert_eq(st_write_text(tmpdir, "model.safetensors.index.json", "{\"weight_map\": "), 0);
    expect_hf_fail(tmpdir, MG_ERR_FORMAT, "index.json");
}

/* ---- llama2.c ---- */

/* Offset in floats (after the 28-byte header) of each llama2.c array. */
typedef struct {
    size_t emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, freq, wcls, end;
} l2c_layout;

/* Layout of a llama2.c file with these header values (vocab positive). */
static l2c_layout l2c_offsets(int dim, int hid, int L, int nh, int nkv, int vocab, int seq, int shared) {
    int hs = dim / nh;
    l2c_layout o;
    size_t p = 0;
    o.emb = p; p += (size_t)vocab * dim;
    o.rms_att = p; p += (size_t)L * dim;
    o.wq = p; p += (size_t)L * dim * nh * hs;
    o.wk = p; p += (size_t)L * dim * nkv * hs;
    o.wv = p; p += (size_t)L * dim * nkv * hs;
    o.wo = p; p += (size_t)L * nh * hs * dim;
    o.rms_ffn = p; p += (size_t)L * dim;
    o.w1 = p; p += (size_t)L * hid * dim;
    o.w2 = p; p += (size_t)L * hid * dim;
    o.w3 = p; p += (size_t)L * hid * dim;
    o.rms_final = p; p += dim;
    o.freq = p; p += (size_t)seq * hs;
    o.wcls = shared ? o.emb : p;
    if (!shared) p += (size_t)vocab * dim;
    o.end = p;
    return o;
}

/* Reads n floats at float offset `off` (after the header) of path. */
static void read_floats(const char *path, size_t off, float *out, size_t n) {
    read_at(path, 28 + 4 * (long)off, out, n * 4);
}

/* Asserts that n floats are bitwise equal. */
static void assert_row_eq(const float *got, const float *want, int n, const char *what) {
    cr_assert_eq(memcmp(got, want, (size_t)n * 4), 0, "%s differs", what);
}

Test(load_llama2c, stories260k) {
    char path[4096];
    MG_TEST_SHARED(path, "models/stories260K/stories260K.bin");
    int32_t h[7];
    read_at(path, 0, h, sizeof h);
    cr_assert_eq(h[0], 64);
    cr_assert_eq(h[1], 172);
    cr_assert_eq(h[2], 5);
    cr_assert_eq(h[3], 8);
    cr_assert_eq(h[4], 4);
    cr_assert_eq(h[5], 512);
    cr_assert_eq(h[6], 512);

    mg_model *m;
    cr_assert_eq(mg_model_load_llama2c(path, &m), MG_OK, "%s", mg_error_last());
    const mg_config *c = &m->config;
    cr_assert_eq(c->arch, MG_ARCH_LLAMA);
    cr_assert_eq(c->dim, 64);
    cr_assert_eq(c->hidden_dim, 172);
    cr_assert_eq(c->n_layers, 5);
    cr_assert_eq(c->n_heads, 8);
    cr_assert_eq(c->n_kv_heads, 4);
    cr_assert_eq(c->head_dim, 8);
    cr_assert_eq(c->vocab_size, 512);
    cr_assert_eq(c->max_seq_len, 512);
    cr_assert_eq(c->tie_embeddings, 1);
    cr_assert_eq(c->rope_type, MG_ROPE_DEFAULT);
    cr_assert_eq(c->rope_theta, 10000.0f);
    cr_assert_float_eq(c->norm_eps, 1e-5f, 1e-12);
    cr_assert_eq(c->bos_id, 1);
    cr_assert_eq(c->n_eos, 1);
    cr_assert_eq(c->eos_ids[0], 1);
    cr_assert_eq(c->qkv_bias, 0);

    const mg_weights *w = &m->weights;
    cr_assert_eq(w->tok_embed.dtype, MG_DTYPE_F32);
    assert_shape(&w->tok_embed, 512, 64);
    cr_assert_eq(w->lm_head.data, w->tok_embed.data);
    l2c_layout o = l2c_offsets(64, 172, 5, 8, 4, 512, 512, 1);
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    cr_assert_eq((size_t)sb.st_size, 28 + 4 * o.end);

    int dim = 64, hs = 8, hid = 172;
    float raw[172 * 64], got[64];
    for (int l = 0; l < 5; l++) {
        const mg_layer_weights *L = &w->layers[l];
        assert_shape(&L->wq, 64, 64);
        assert_shape(&L->wk, 32, 64);
        assert_shape(&L->wv, 32, 64);
        assert_shape(&L->wo, 64, 64);
        assert_shape(&L->w_gate, 172, 64);
        assert_shape(&L->w_up, 172, 64);
        assert_shape(&L->w_down, 64, 172);
        cr_assert_eq(L->wq.dtype, MG_DTYPE_F32);
        cr_assert_null(L->bq);

        /* wq: new row r of head h = old row 2r, new row hs/2 + r = old row 2r + 1 */
        read_floats(path, o.wq + (size_t)l * 64 * 64, raw, 64 * 64);
        const float *wq = L->wq.data;
        assert_row_eq(wq + 1 * dim, raw + 2 * dim, dim, "wq head 0 row 1 vs old row 2");
        for (int hh = 0; hh < 8; hh++)
            for (int r = 0; r < hs / 2; r++) {
                assert_row_eq(wq + (size_t)(hh * hs + r) * dim, raw + (size_t)(hh * hs + 2 * r) * dim, dim, "wq even");
                assert_row_eq(wq + (size_t)(hh * hs + hs / 2 + r) * dim, raw + (size_t)(hh * hs + 2 * r + 1) * dim,
                              dim, "wq odd");
            }
        read_floats(path, o.wk + (size_t)l * 32 * 64, raw, 32 * 64);
        const float *wk = L->wk.data;
        for (int hh = 0; hh < 4; hh++)
            for (int r = 0; r < hs / 2; r++) {
                assert_row_eq(wk + (size_t)(hh * hs + r) * dim, raw + (size_t)(hh * hs + 2 * r) * dim, dim, "wk even");
                assert_row_eq(wk + (size_t)(hh * hs + hs / 2 + r) * dim, raw + (size_t)(hh * hs + 2 * r + 1) * dim,
                              dim, "wk odd");
            }
        /* the rest is unpermuted: w1 = gate, w3 = up, w2 = down */
        read_floats(path, o.wv + (size_t)l * 32 * 64, raw, 32 * 64);
        assert_row_eq(L->wv.data, raw, 32 * 64, "wv");
        read_floats(path, o.wo + (size_t)l * 64 * 64, raw, 64 * 64);
        assert_row_eq(L->wo.data, raw, 64 * 64, "wo");
        read_floats(path, o.w1 + (size_t)l * hid * dim, raw, (size_t)hid * dim);
        assert_row_eq(L->w_gate.data, raw, hid * dim, "w1 (gate)");
        read_floats(path, o.w2 + (size_t)l * hid * dim, raw, (size_t)hid * dim);
        assert_row_eq(L->w_down.data, raw, hid * dim, "w2 (down)");
        read_floats(path, o.w3 + (size_t)l * hid * dim, raw, (size_t)hid * dim);
        assert_row_eq(L->w_up.data, raw, hid * dim, "w3 (up)");
        read_floats(path, o.rms_att + (size_t)l * dim, got, 64);
        assert_row_eq(L->attn_norm, got, 64, "rms_att");
        read_floats(path, o.rms_ffn + (size_t)l * dim, got, 64);
        assert_row_eq(L->mlp_norm, got, 64, "rms_ffn");
    }
    read_floats(path, o.rms_final, got, 64);
    assert_row_eq(w->final_norm, got, 64, "rms_final");
    read_floats(path, o.emb + 511 * 64, got, 64);
    assert_row_eq((const float *)w->tok_embed.data + 511 * 64, got, 64, "last embedding row");
    /* F32 throughout; tied classifier counted once */
    size_t want = 4 * (o.freq - 0); /* every array before freq_cis */
    cr_assert_eq(mg_model_weight_bytes(m), want, "weight bytes %zu want %zu", mg_model_weight_bytes(m), want);
    mg_model_free(m);
}

/* Writes a synthetic llama2.c checkpoint whose float i is i * 0.001 (so
 * every array is recognisable); returns its layout. */
static l2c_layout write_l2c(const char *path, int dim, int hid, int L, int nh, int nkv, int vocab_field, int seq,
                            long extra_bytes) {
    int vocab = vocab_field < 0 ? -vocab_field : vocab_field;
    l2c_layout o = l2c_offsets(dim, hid, L, nh, nkv, vocab, seq, vocab_field > 0);
    FILE *f = fopen(path, "wb");
    int32_t h[7] = {dim, hid, L, nh, nkv, vocab_field, seq};
    fwrite(h, 4, 7, f);
    long n = (long)o.end * 4 + extra_bytes;
    for (long i = 0; i < n / 4; i++) {
        float v = (float)i * 0.001f;
        fwrite(&v, 4, 1, f);
    }
    for (long i = 0; i < n % 4; i++) fputc(0, f);
    fclose(f);
    return o;
}

Test(load_llama2c, untied_classifier) {
    char p[4200];
    snprintf(p, sizeof p, "%s/m.bin", tmpdir);
    l2c_layout o = write_l2c(p, 16, 24, 2, 4, 2, -32, 8, 0);
    mg_model *m;
    cr_assert_eq(mg_model_load_llama2c(p, &m), MG_OK, "%s", mg_error_last());
    cr_assert_eq(m->config.vocab_size, 32);
    cr_assert_eq(m->config.tie_embeddings, 0);
    cr_assert_neq(m->weights.lm_head.data, m->weights.tok_embed.data);
    assert_shape(&m->weights.lm_head, 32, 16);
    cr_assert_eq(((const float *)m->weights.lm_head.data)[0], (float)o.wcls * 0.001f);
    cr_assert_eq(((const float *)m->weights.tok_embed.data)[5], 5 * 0.001f);
    cr_assert_eq(m->weights.final_norm[3], (float)(o.rms_final + 3) * 0.001f);
    cr_assert_eq(((const float *)m->weights.layers[1].w_up.data)[0], (float)(o.w3 + 24 * 16) * 0.001f);
    /* head_size 4: head 1's new row 1 (row 5) is old row 2 of head 1 (row 6) */
    cr_assert_eq(((const float *)m->weights.layers[0].wq.data)[5 * 16], (float)(o.wq + 6 * 16) * 0.001f);
    cr_assert_eq(((const float *)m->weights.layers[1].wk.data)[2 * 16],
                 (float)(o.wk + 8 * 16 + 1 * 16) * 0.001f); /* layer 1, head 0, new row 2 = old row 1 */
    mg_model_free(m);
}

Test(load_llama2c, bad_files) {
    char p[4200];
    snprintf(p, sizeof p, "%s/missing.bin", tmpdir);
    expect_llama2c_fail(p, MG_ERR_IO, "missing.bin");

    snprintf(p, sizeof p, "%s/m.bin", tmpdir);
    write_l2c(p, 16, 24, 2, 4, 2, 32, 8, -8); /* truncated */
    expect_llama2c_fail(p, MG_ERR_FORMAT, "implies");
    write_l2c(p, 16, 24, 2, 4, 2, 32, 8, 4); /* trailing bytes */
    expect_llama2c_fail(p, MG_ERR_FORMAT, "implies");
    write_l2c(p, 16, 24, 2, 4, 2, -32, 8, -4 * 32 * 16); /* untied header, tied-size file */
    expect_llama2c_fail(p, MG_ERR_FORMAT, "implies");

    cr_assert_eq(st_write_text(tmpdir, "m.bin", "tiny"), 0);
    expect_llama2c_fail(p, MG_ERR_FORMAT, "too small");

    int32_t h[7] = {16, 24, 2, 3, 3, 32, 8}; /* 16 not divisible by 3 heads */
    FILE *f = fopen(p, "wb");
    fwrite(h, 4, 7, f);
    fclose(f);
    expect_llama2c_fail(p, MG_ERR_FORMAT, "n_heads");
    int32_t h2[7] = {16, 24, 0, 4, 4, 32, 8};
    f = fopen(p, "wb");
    fwrite(h2, 4, 7, f);
    fclose(f);
    expect_llama2c_fail(p, MG_ERR_FORMAT, "n_layers");
    int32_t h3[7] = {0x616b3432, 2, 0, 0, 0, 0, 0};
    f = fopen(p, "wb");
    fwrite(h3, 4, 7, f);
    fclose(f);
    expect_llama2c_fail(p, MG_ERR_UNSUPPORTED, "legacy");

    /* garbage */
    f = fopen(p, "wb");
    for (int i = 0; i < 4096; i++) fputc((i * 7919) & 0xff, f);
    fclose(f);
    expect_llama2c_fail(p, MG_ERR_FORMAT, "m.bin");
}

Test(load_llama2c, truncated_stories260k) {
    char src[4096], p[4200];
    MG_TEST_SHARED(src, "models/stories260K/stories260K.bin");
    snprintf(p, sizeof p, "%s/cut.bin", tmpdir);
    static char buf[600000];
    read_at(src, 0, buf, sizeof buf);
    FILE *f = fopen(p, "wb");
    fwrite(buf, 1, sizeof buf, f);
    fclose(f);
    expect_llama2c_fail(p, MG_ERR_FORMAT, "1056540");
}
