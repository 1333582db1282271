/* Model description and weights, loaded from a Hugging Face checkpoint
 * directory (config.json + safetensors) or a llama2.c checkpoint.
 *
 * Matrices are row-major (rows = output features, cols = input features), as
 * stored by PyTorch's nn.Linear. They are BF16 in memory for HF checkpoints
 * (F16/F32 checkpoints are converted at load) and F32 for llama2.c
 * checkpoints, whose reference implementation computes in FP32. */
#ifndef MG_MODEL_H
#define MG_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "../util/status.h"

typedef enum { MG_ARCH_LLAMA = 0, MG_ARCH_QWEN2 = 1 } mg_arch;
typedef enum { MG_ROPE_DEFAULT = 0, MG_ROPE_LLAMA3 = 1 } mg_rope_type;
typedef enum { MG_DTYPE_BF16 = 0, MG_DTYPE_F32 = 1 } mg_dtype;

#define MG_MAX_EOS 8

typedef struct {
    mg_arch arch;
    int dim;        /* hidden_size */
    int hidden_dim; /* intermediate_size */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;    /* head_dim, or hidden_size / num_attention_heads */
    int vocab_size;
    int max_seq_len; /* max_position_embeddings */
    float norm_eps;  /* rms_norm_eps */
    float rope_theta;
    mg_rope_type rope_type;
    float rope_factor;           /* llama3 scaling only */
    float rope_low_freq_factor;  /* llama3 scaling only */
    float rope_high_freq_factor; /* llama3 scaling only */
    int rope_original_max_pos;   /* llama3 scaling only */
    int tie_embeddings;
    int qkv_bias; /* Qwen2: q/k/v projections carry a bias */
    int bos_id;   /* -1 if none */
    int n_eos;    /* stop tokens from config.json / generation_config.json */
    int eos_ids[MG_MAX_EOS];
    int o_bias;   /* Llama with attention_bias true: o_proj also carries a bias (bo) */
} mg_config;

typedef struct {
    mg_dtype dtype;
    const void *data; /* (rows, cols) row-major, uint16_t (BF16) or float */
    int rows, cols;
} mg_matrix;

typedef struct {
    const float *attn_norm; /* (dim) */
    mg_matrix wq;           /* (n_heads * head_dim, dim) */
    mg_matrix wk;           /* (n_kv_heads * head_dim, dim) */
    mg_matrix wv;           /* (n_kv_heads * head_dim, dim) */
    const float *bq;        /* (n_heads * head_dim) or NULL */
    const float *bk;        /* (n_kv_heads * head_dim) or NULL */
    const float *bv;        /* (n_kv_heads * head_dim) or NULL */
    mg_matrix wo;           /* (dim, n_heads * head_dim) */
    const float *mlp_norm;  /* (dim) */
    mg_matrix w_gate;       /* (hidden_dim, dim) */
    mg_matrix w_up;         /* (hidden_dim, dim) */
    mg_matrix w_down;       /* (dim, hidden_dim) */
    const float *bo;        /* (dim) o_proj bias, or NULL (only when config.o_bias) */
} mg_layer_weights;

typedef struct {
    mg_matrix tok_embed;      /* (vocab_size, dim) */
    mg_layer_weights *layers; /* (n_layers) */
    const float *final_norm;  /* (dim) */
    mg_matrix lm_head;        /* (vocab_size, dim); same data as tok_embed when tied */
} mg_weights;

typedef struct mg_model_storage mg_model_storage; /* mmaps and buffers, private */

typedef struct {
    mg_config config;
    mg_weights weights;
    mg_model_storage *storage;
} mg_model;

/* Parses config.json text (and optional generation_config.json text, may be
 * NULL) into *cfg. Returns MG_ERR_FORMAT for malformed JSON or missing/invalid
 * fields, MG_ERR_UNSUPPORTED for an unknown architecture or rope type; the
 * message names the field. */
mg_status mg_config_parse(const char *config_json, const char *generation_json, mg_config *cfg);

/* Loads a Hugging Face checkpoint directory: config.json,
 * generation_config.json (optional), model.safetensors or the shards listed
 * in model.safetensors.index.json. Every tensor is validated (header bounds,
 * dtype, shape against the config). On success *out is a new model (free
 * with mg_model_free). */
mg_status mg_model_load_hf(const char *dir, mg_model **out);

/* Loads a llama2.c checkpoint (7-int32 header, F32 weights; negative
 * vocab_size = untied classifier). llama2.c rotates interleaved pairs
 * (2i, 2i+1); the loader permutes the rows of wq and wk per head into the HF
 * "rotate half" layout, as HF's conversion script does, so that one forward
 * pass serves both formats. Rope theta 10000, default type; norm eps 1e-5;
 * bos_id 1, eos_ids {1}: llama2.c's run.c stops when the model emits BOS (1),
 * which separates stories in its training data, and never checks for 2.
 * The file size must match the header exactly (MG_ERR_FORMAT otherwise). */
mg_status mg_model_load_llama2c(const char *path, mg_model **out);

/* Frees the model (NULL is fine). */
void mg_model_free(mg_model *model);

/* Bytes of weight data the model holds (for roofline figures): every matrix
 * at its in-memory dtype size, a tied lm_head counted once (it shares
 * tok_embed's data), norm weights and biases as the float arrays they are. */
size_t mg_model_weight_bytes(const mg_model *model);

#endif
