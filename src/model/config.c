/* config.json (+ generation_config.json) -> mg_config.
 *
 * Defaults follow transformers' LlamaConfig / Qwen2Config where a field is
 * optional there; fields without a sensible default are required. */
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model.h"

/* Returns the member `key` of obj, or NULL if absent or JSON null. */
static const cJSON *member(const cJSON *obj, const char *key) {
    const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    return cJSON_IsNull(v) ? NULL : v;
}

/* Reads the integer field `key` of obj into *out. When absent (or null) it
 * is an MG_ERR_FORMAT error if `required`, else *out = def. A non-integer or
 * out-of-int-range value is MG_ERR_FORMAT naming `file` and `key`. */
static mg_status get_int(const cJSON *obj, const char *file, const char *key, int required, int def, int *out) {
    const cJSON *v = member(obj, key);
    if (!v) {
        if (required) return mg_error_set(MG_ERR_FORMAT, "%s: missing required field \"%s\"", file, key);
        *out = def;
        return MG_OK;
    }
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || !isfinite(d) || floor(d) != d || d < INT_MIN || d > INT_MAX)
        return mg_error_set(MG_ERR_FORMAT, "%s: field \"%s\" must be an integer", file, key);
    *out = (int)d;
    return MG_OK;
}

/* Like get_int, and the value must be > 0. */
static mg_status get_pos_int(const cJSON *obj, const char *file, const char *key, int required, int def,
                             int *out) {
    mg_status st = get_int(obj, file, key, required, def, out);
    if (st == MG_OK && *out <= 0)
        return mg_error_set(MG_ERR_FORMAT, "%s: field \"%s\" must be positive (got %d)", file, key, *out);
    return st;
}

/* Reads the positive finite number field `key` (see get_int for the rules). */
static mg_status get_pos_float(const cJSON *obj, const char *file, const char *key, int required, double def,
                               float *out) {
    const cJSON *v = member(obj, key);
    if (!v) {
        if (required) return mg_error_set(MG_ERR_FORMAT, "%s: missing required field \"%s\"", file, key);
        *out = (float)def;
        return MG_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return mg_error_set(MG_ERR_FORMAT, "%s: field \"%s\" must be a number", file, key);
    if (!(v->valuedouble > 0))
        return mg_error_set(MG_ERR_FORMAT, "%s: field \"%s\" must be positive (got %g)", file, key,
                            v->valuedouble);
    *out = (float)v->valuedouble;
    return MG_OK;
}

/* Reads the boolean field `key` (absent or null -> def). */
static mg_status get_bool(const cJSON *obj, const char *file, const char *key, int def, int *out) {
    const cJSON *v = member(obj, key);
    if (!v) {
        *out = def;
        return MG_OK;
    }
    if (!cJSON_IsBool(v)) return mg_error_set(MG_ERR_FORMAT, "%s: field \"%s\" must be true or false", file, key);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return MG_OK;
}

/* Determines the architecture from architectures[0], else model_type. */
static mg_status parse_arch(const cJSON *root, mg_arch *arch) {
    const cJSON *a = member(root, "architectures");
    if (a) {
        if (!cJSON_IsArray(a) || !cJSON_IsString(a->child))
            return mg_error_set(MG_ERR_FORMAT, "config.json: field \"architectures\" must be a list of strings");
        const char *name = a->child->valuestring;
        if (strcmp(name, "LlamaForCausalLM") == 0) *arch = MG_ARCH_LLAMA;
        else if (strcmp(name, "Qwen2ForCausalLM") == 0) *arch = MG_ARCH_QWEN2;
        else
            return mg_error_set(MG_ERR_UNSUPPORTED,
                                "config.json: architecture \"%s\" is not supported "
                                "(supported: LlamaForCausalLM, Qwen2ForCausalLM)",
                                name);
        return MG_OK;
    }
    const cJSON *m = member(root, "model_type");
    if (!m)
        return mg_error_set(MG_ERR_FORMAT, "config.json: missing required field \"architectures\" (or \"model_type\")");
    if (!cJSON_IsString(m)) return mg_error_set(MG_ERR_FORMAT, "config.json: field \"model_type\" must be a string");
    if (strcmp(m->valuestring, "llama") == 0) *arch = MG_ARCH_LLAMA;
    else if (strcmp(m->valuestring, "qwen2") == 0) *arch = MG_ARCH_QWEN2;
    else
        return mg_error_set(MG_ERR_UNSUPPORTED,
                            "config.json: model_type \"%s\" is not supported (supported: llama, qwen2)",
                            m->valuestring);
    return MG_OK;
}

/* Reads rope_theta and the scaling (rope_parameters as transformers 5 writes
 * it, which wins over the legacy top-level rope_theta / rope_scaling). */
static mg_status parse_rope(const cJSON *root, mg_config *cfg) {
    const cJSON *params = member(root, "rope_parameters");
    const cJSON *legacy = member(root, "rope_scaling");
    if (params && !cJSON_IsObject(params))
        return mg_error_set(MG_ERR_FORMAT, "config.json: field \"rope_parameters\" must be an object");
    if (legacy && !cJSON_IsObject(legacy))
        return mg_error_set(MG_ERR_FORMAT, "config.json: field \"rope_scaling\" must be an object or null");

    mg_status st = get_pos_float(root, "config.json", "rope_theta", 0, 10000.0, &cfg->rope_theta);
    if (st != MG_OK) return st;
    if (params && member(params, "rope_theta")) {
        st = get_pos_float(params, "config.json (rope_parameters)", "rope_theta", 1, 0, &cfg->rope_theta);
        if (st != MG_OK) return st;
    }

    const cJSON *sc = params ? params : legacy;
    const char *where = params ? "rope_parameters" : "rope_scaling";
    cfg->rope_type = MG_ROPE_DEFAULT;
    if (!sc) return MG_OK;
    const cJSON *t = member(sc, "rope_type");
    if (!t) t = member(sc, "type");
    if (!t) {
        if (params) return MG_OK; /* transformers 5 may omit it for the default */
        return mg_error_set(MG_ERR_FORMAT, "config.json: rope_scaling has no \"rope_type\" (or \"type\")");
    }
    if (!cJSON_IsString(t))
        return mg_error_set(MG_ERR_FORMAT, "config.json: %s.rope_type must be a string", where);
    if (strcmp(t->valuestring, "default") == 0) return MG_OK;
    if (strcmp(t->valuestring, "llama3") != 0)
        return mg_error_set(MG_ERR_UNSUPPORTED,
                            "config.json: %s.rope_type \"%s\" is not supported (supported: default, llama3)", where,
                            t->valuestring);
    cfg->rope_type = MG_ROPE_LLAMA3;
    char file[64];
    snprintf(file, sizeof file, "config.json (%s)", where);
    if ((st = get_pos_float(sc, file, "factor", 1, 0, &cfg->rope_factor)) != MG_OK) return st;
    if ((st = get_pos_float(sc, file, "low_freq_factor", 1, 0, &cfg->rope_low_freq_factor)) != MG_OK) return st;
    if ((st = get_pos_float(sc, file, "high_freq_factor", 1, 0, &cfg->rope_high_freq_factor)) != MG_OK) return st;
    if ((st = get_pos_int(sc, file, "original_max_position_embeddings", 1, 0, &cfg->rope_original_max_pos)) != MG_OK)
        return st;
    if (!(cfg->rope_low_freq_factor < cfg->rope_high_freq_factor))
        return mg_error_set(MG_ERR_FORMAT, "config.json: %s: low_freq_factor (%g) must be below high_freq_factor (%g)",
                            where, cfg->rope_low_freq_factor, cfg->rope_high_freq_factor);
    return MG_OK;
}

/* Reads a token id list field (an integer or a list of integers) into ids
 * (capacity MG_MAX_EOS, duplicates dropped). Returns MG_OK with *n = -1 when
 * the field is absent or null. Every id must lie in [0, vocab). */
static mg_status get_ids(const cJSON *obj, const char *file, const char *key, int vocab, int *ids, int *n) {
    const cJSON *v = member(obj, key);
    *n = -1;
    if (!v) return MG_OK;
    const cJSON *first = v, *one = v;
    if (cJSON_IsArray(v)) first = v->child;
    else if (!cJSON_IsNumber(v))
        return mg_error_set(MG_ERR_FORMAT, "%s: field \"%s\" must be an integer or a list of integers", file, key);
    *n = 0;
    for (one = first; one; one = cJSON_IsArray(v) ? one->next : NULL) {
        double d = one->valuedouble;
        if (!cJSON_IsNumber(one) || !isfinite(d) || floor(d) != d)
            return mg_error_set(MG_ERR_FORMAT, "%s: field \"%s\" must hold integers", file, key);
        if (d < 0 || d >= vocab)
            return mg_error_set(MG_ERR_FORMAT, "%s: field \"%s\": token id %g outside the vocabulary (%d)", file,
                                key, d, vocab);
        int id = (int)d, dup = 0;
        for (int i = 0; i < *n; i++) dup |= ids[i] == id;
        if (dup) continue;
        if (*n == MG_MAX_EOS)
            return mg_error_set(MG_ERR_UNSUPPORTED, "%s: field \"%s\" lists more than %d distinct tokens", file, key,
                                MG_MAX_EOS);
        ids[(*n)++] = id;
    }
    return MG_OK;
}

/* Reads bos/eos from config.json, then lets generation_config.json (gen,
 * may be NULL) override them where it sets them. */
static mg_status parse_special(const cJSON *root, const cJSON *gen, mg_config *cfg) {
    int ids[MG_MAX_EOS], n;
    mg_status st = get_ids(root, "config.json", "bos_token_id", cfg->vocab_size, ids, &n);
    if (st != MG_OK) return st;
    cfg->bos_id = n > 0 ? ids[0] : -1;
    if ((st = get_ids(gen, "generation_config.json", "bos_token_id", cfg->vocab_size, ids, &n)) != MG_OK) return st;
    if (n > 0) cfg->bos_id = ids[0];

    if ((st = get_ids(root, "config.json", "eos_token_id", cfg->vocab_size, cfg->eos_ids, &n)) != MG_OK) return st;
    cfg->n_eos = n > 0 ? n : 0;
    if ((st = get_ids(gen, "generation_config.json", "eos_token_id", cfg->vocab_size, ids, &n)) != MG_OK) return st;
    if (n >= 0) {
        memcpy(cfg->eos_ids, ids, sizeof ids);
        cfg->n_eos = n;
    }
    return MG_OK;
}

/* Fills cfg from the parsed config.json root (see mg_config_parse). */
static mg_status parse_root(const cJSON *root, const cJSON *gen, mg_config *cfg) {
    const char *F = "config.json";
    mg_status st;
    if ((st = parse_arch(root, &cfg->arch)) != MG_OK) return st;
    int is_llama = cfg->arch == MG_ARCH_LLAMA;

    if ((st = get_pos_int(root, F, "hidden_size", 1, 0, &cfg->dim)) != MG_OK) return st;
    if ((st = get_pos_int(root, F, "intermediate_size", 1, 0, &cfg->hidden_dim)) != MG_OK) return st;
    if ((st = get_pos_int(root, F, "num_hidden_layers", 1, 0, &cfg->n_layers)) != MG_OK) return st;
    if ((st = get_pos_int(root, F, "num_attention_heads", 1, 0, &cfg->n_heads)) != MG_OK) return st;
    if ((st = get_pos_int(root, F, "num_key_value_heads", 0, cfg->n_heads, &cfg->n_kv_heads)) != MG_OK) return st;
    if ((st = get_pos_int(root, F, "vocab_size", 1, 0, &cfg->vocab_size)) != MG_OK) return st;
    if ((st = get_pos_int(root, F, "max_position_embeddings", 0, is_llama ? 2048 : 32768, &cfg->max_seq_len)) !=
        MG_OK)
        return st;
    if ((st = get_pos_float(root, F, "rms_norm_eps", 0, 1e-6, &cfg->norm_eps)) != MG_OK) return st;

    if (!member(root, "head_dim") && cfg->dim % cfg->n_heads != 0)
        return mg_error_set(MG_ERR_FORMAT,
                            "config.json: hidden_size %d is not divisible by num_attention_heads %d "
                            "and no \"head_dim\" is given",
                            cfg->dim, cfg->n_heads);
    if ((st = get_pos_int(root, F, "head_dim", 0, cfg->dim / cfg->n_heads, &cfg->head_dim)) != MG_OK) return st;
    if (cfg->head_dim % 2 != 0)
        return mg_error_set(MG_ERR_FORMAT, "config.json: head_dim %d must be even for RoPE", cfg->head_dim);
    if (cfg->n_heads % cfg->n_kv_heads != 0)
        return mg_error_set(MG_ERR_FORMAT,
                            "config.json: num_attention_heads %d is not divisible by num_key_value_heads %d",
                            cfg->n_heads, cfg->n_kv_heads);
    if ((long long)cfg->n_heads * cfg->head_dim > INT_MAX)
        return mg_error_set(MG_ERR_FORMAT, "config.json: num_attention_heads * head_dim overflows");

    const cJSON *act = member(root, "hidden_act");
    if (act && !cJSON_IsString(act))
        return mg_error_set(MG_ERR_FORMAT, "config.json: field \"hidden_act\" must be a string");
    if (act && strcmp(act->valuestring, "silu") != 0)
        return mg_error_set(MG_ERR_UNSUPPORTED, "config.json: hidden_act \"%s\" is not supported (only silu)",
                            act->valuestring);

    if ((st = parse_rope(root, cfg)) != MG_OK) return st;
    if ((st = get_bool(root, F, "tie_word_embeddings", 0, &cfg->tie_embeddings)) != MG_OK) return st;

    if (is_llama) {
        int attn_bias, mlp_bias;
        if ((st = get_bool(root, F, "attention_bias", 0, &attn_bias)) != MG_OK) return st;
        if ((st = get_bool(root, F, "mlp_bias", 0, &mlp_bias)) != MG_OK) return st;
        if (mlp_bias)
            return mg_error_set(MG_ERR_UNSUPPORTED, "config.json: \"mlp_bias\": true is not supported");
        /* LlamaAttention gives q/k/v and o_proj a bias when attention_bias. */
        cfg->qkv_bias = attn_bias;
        cfg->o_bias = attn_bias;
    } else {
        int sliding;
        if ((st = get_bool(root, F, "use_sliding_window", 0, &sliding)) != MG_OK) return st;
        if (sliding)
            return mg_error_set(MG_ERR_UNSUPPORTED, "config.json: \"use_sliding_window\": true is not supported");
        cfg->qkv_bias = 1;
        cfg->o_bias = 0;
    }
    return parse_special(root, gen, cfg);
}

mg_status mg_config_parse(const char *config_json, const char *generation_json, mg_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->bos_id = -1;
    if (!config_json) return mg_error_set(MG_ERR_ARG, "mg_config_parse: config_json is NULL");
    cJSON *root = cJSON_Parse(config_json);
    if (!root) return mg_error_set(MG_ERR_FORMAT, "config.json: malformed JSON");
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return mg_error_set(MG_ERR_FORMAT, "config.json: top level is not a JSON object");
    }
    cJSON *gen = NULL;
    if (generation_json) {
        gen = cJSON_Parse(generation_json);
        if (!gen || !cJSON_IsObject(gen)) {
            cJSON_Delete(gen);
            cJSON_Delete(root);
            return mg_error_set(MG_ERR_FORMAT, "generation_config.json: malformed JSON (or not an object)");
        }
    }
    mg_status st = parse_root(root, gen, cfg);
    cJSON_Delete(gen);
    cJSON_Delete(root);
    if (st != MG_OK) {
        memset(cfg, 0, sizeof *cfg);
        cfg->bos_id = -1;
    }
    return st;
}
