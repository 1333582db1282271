/* Tests for mg_config_parse (src/model/config.c). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "model/model.h"

/* A complete Llama config with the members `extra` spliced in first (JSON
 * keeps the first of duplicate keys for cJSON lookups, so `extra` can also
 * override a member). */
static char *llama_cfg(const char *extra) {
    static char buf[4096];
    snprintf(buf, sizeof buf,
             "{%s%s\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 160, "
             "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, \"num_key_value_heads\": 2, "
             "\"vocab_size\": 100, \"max_position_embeddings\": 256, \"rms_norm_eps\": 1e-5, "
             "\"hidden_act\": \"silu\", \"bos_token_id\": 1, \"eos_token_id\": 2}",
             extra ? extra : "", extra ? ", " : "");
    return buf;
}

/* Parses, expecting failure with status want and `sub` in the message. */
static void expect_fail(const char *cfg_json, const char *gen_json, mg_status want, const char *sub) {
    mg_config c;
    mg_error_clear();
    mg_status st = mg_config_parse(cfg_json, gen_json, &c);
    cr_assert_eq(st, want, "status %s, want %s (%s) for %s", mg_status_str(st), mg_status_str(want),
                 mg_error_last(), cfg_json);
    cr_assert(strstr(mg_error_last(), sub), "message lacks '%s': %s", sub, mg_error_last());
}

Test(config, llama_defaults) {
    const char *j = "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 160, "
                    "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, \"vocab_size\": 100}";
    mg_config c;
    cr_assert_eq(mg_config_parse(j, NULL, &c), MG_OK, "%s", mg_error_last());
    cr_assert_eq(c.arch, MG_ARCH_LLAMA);
    cr_assert_eq(c.dim, 64);
    cr_assert_eq(c.hidden_dim, 160);
    cr_assert_eq(c.n_layers, 2);
    cr_assert_eq(c.n_heads, 8);
    cr_assert_eq(c.n_kv_heads, 8);
    cr_assert_eq(c.head_dim, 8);
    cr_assert_eq(c.vocab_size, 100);
    cr_assert_eq(c.max_seq_len, 2048);
    cr_assert_float_eq(c.norm_eps, 1e-6f, 1e-12);
    cr_assert_eq(c.rope_theta, 10000.0f);
    cr_assert_eq(c.rope_type, MG_ROPE_DEFAULT);
    cr_assert_eq(c.tie_embeddings, 0);
    cr_assert_eq(c.qkv_bias, 0);
    cr_assert_eq(c.o_bias, 0);
    cr_assert_eq(c.bos_id, -1);
    cr_assert_eq(c.n_eos, 0);
}

Test(config, qwen2_from_model_type) {
    const char *j = "{\"model_type\": \"qwen2\", \"hidden_size\": 64, \"intermediate_size\": 160, "
                    "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, "
                    "\"vocab_size\": 300, \"rope_theta\": 1000000.0, \"tie_word_embeddings\": true, "
                    "\"use_sliding_window\": false, \"sliding_window\": 4096, \"rope_scaling\": null, "
                    "\"bos_token_id\": 250, \"eos_token_id\": 251}";
    mg_config c;
    cr_assert_eq(mg_config_parse(j, NULL, &c), MG_OK, "%s", mg_error_last());
    cr_assert_eq(c.arch, MG_ARCH_QWEN2);
    cr_assert_eq(c.qkv_bias, 1);
    cr_assert_eq(c.o_bias, 0);
    cr_assert_eq(c.head_dim, 16);
    cr_assert_eq(c.max_seq_len, 32768);
    cr_assert_eq(c.rope_theta, 1000000.0f);
    cr_assert_eq(c.tie_embeddings, 1);
    cr_assert_eq(c.bos_id, 250);
    cr_assert_eq(c.n_eos, 1);
    cr_assert_eq(c.eos_ids[0], 251);
}

Test(config, explicit_head_dim) {
    mg_config c;
    cr_assert_eq(mg_config_parse(llama_cfg("\"head_dim\": 32"), NULL, &c), MG_OK, "%s", mg_error_last());
    cr_assert_eq(c.head_dim, 32);
    cr_assert_eq(c.n_kv_heads, 2);
}

Test(config, rope_llama3_legacy) {
    mg_config c;
    const char *x = "\"rope_theta\": 500000.0, \"rope_scaling\": {\"type\": \"llama3\", \"factor\": 8.0, "
                    "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                    "\"original_max_position_embeddings\": 8192}";
    cr_assert_eq(mg_config_parse(llama_cfg(x), NULL, &c), MG_OK, "%s", mg_error_last());
    cr_assert_eq(c.rope_type, MG_ROPE_LLAMA3);
    cr_assert_eq(c.rope_theta, 500000.0f);
    cr_assert_eq(c.rope_factor, 8.0f);
    cr_assert_eq(c.rope_low_freq_factor, 1.0f);
    cr_assert_eq(c.rope_high_freq_factor, 4.0f);
    cr_assert_eq(c.rope_original_max_pos, 8192);
}

Test(config, rope_parameters_transformers5) {
    mg_config c;
    const char *x = "\"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": 250000.0, \"factor\": 32.0, "
                    "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                    "\"original_max_position_embeddings\": 1024}";
    cr_assert_eq(mg_config_parse(llama_cfg(x), NULL, &c), MG_OK, "%s", mg_error_last());
    cr_assert_eq(c.rope_type, MG_ROPE_LLAMA3);
    cr_assert_eq(c.rope_theta, 250000.0f);
    cr_assert_eq(c.rope_factor, 32.0f);
    cr_assert_eq(c.rope_original_max_pos, 1024);

    x = "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 123.0}";
    cr_assert_eq(mg_config_parse(llama_cfg(x), NULL, &c), MG_OK, "%s", mg_error_last());
    cr_assert_eq(c.rope_type, MG_ROPE_DEFAULT);
    cr_assert_eq(c.rope_theta, 123.0f);
}

Test(config, rope_unsupported_types) {
    expect_fail(llama_cfg("\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}"), NULL, MG_ERR_UNSUPPORTED,
                "yarn");
    expect_fail(llama_cfg("\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}"), NULL, MG_ERR_UNSUPPORTED,
                "linear");
    expect_fail(llama_cfg("\"rope_parameters\": {\"rope_type\": \"dynamic\", \"factor\": 2.0}"), NULL,
                MG_ERR_UNSUPPORTED, "dynamic");
}

Test(config, rope_llama3_missing_factor) {
    expect_fail(llama_cfg("\"rope_scaling\": {\"rope_type\": \"llama3\", \"low_freq_factor\": 1.0, "
                          "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}"),
                NULL, MG_ERR_FORMAT, "factor");
    expect_fail(llama_cfg("\"rope_scaling\": {\"factor\": 2.0}"), NULL, MG_ERR_FORMAT, "rope_type");
    expect_fail(llama_cfg("\"rope_scaling\": 3"), NULL, MG_ERR_FORMAT, "rope_scaling");
}

Test(config, unsupported_architecture) {
    expect_fail("{\"architectures\": [\"MistralForCausalLM\"], \"hidden_size\": 64}", NULL, MG_ERR_UNSUPPORTED,
                "MistralForCausalLM");
    expect_fail("{\"model_type\": \"gemma\", \"hidden_size\": 64}", NULL, MG_ERR_UNSUPPORTED, "gemma");
    expect_fail("{\"hidden_size\": 64}", NULL, MG_ERR_FORMAT, "architectures");
    expect_fail("{\"architectures\": \"LlamaForCausalLM\"}", NULL, MG_ERR_FORMAT, "architectures");
}

Test(config, missing_and_wrong_fields) {
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], \"intermediate_size\": 160, "
                "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, \"vocab_size\": 100}",
                NULL, MG_ERR_FORMAT, "hidden_size");
    expect_fail(llama_cfg("\"hidden_size\": \"64\""), NULL, MG_ERR_FORMAT, "hidden_size");
    expect_fail(llama_cfg("\"hidden_size\": 64.5"), NULL, MG_ERR_FORMAT, "hidden_size");
    expect_fail(llama_cfg("\"num_hidden_layers\": 0"), NULL, MG_ERR_FORMAT, "num_hidden_layers");
    expect_fail(llama_cfg("\"vocab_size\": -3"), NULL, MG_ERR_FORMAT, "vocab_size");
    expect_fail(llama_cfg("\"rms_norm_eps\": \"small\""), NULL, MG_ERR_FORMAT, "rms_norm_eps");
    expect_fail(llama_cfg("\"tie_word_embeddings\": \"yes\""), NULL, MG_ERR_FORMAT, "tie_word_embeddings");
    expect_fail(llama_cfg("\"rope_theta\": -1"), NULL, MG_ERR_FORMAT, "rope_theta");
}

Test(config, sanity_checks) {
    expect_fail(llama_cfg("\"num_key_value_heads\": 3"), NULL, MG_ERR_FORMAT, "num_key_value_heads");
    expect_fail(llama_cfg("\"hidden_act\": \"gelu\""), NULL, MG_ERR_UNSUPPORTED, "gelu");
    expect_fail(llama_cfg("\"hidden_size\": 60"), NULL, MG_ERR_FORMAT, "head_dim");
    expect_fail(llama_cfg("\"head_dim\": 7"), NULL, MG_ERR_FORMAT, "head_dim");
    expect_fail(llama_cfg("\"mlp_bias\": true"), NULL, MG_ERR_UNSUPPORTED, "mlp_bias");
    expect_fail("{\"model_type\": \"qwen2\", \"hidden_size\": 64, \"intermediate_size\": 160, "
                "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 300, "
                "\"use_sliding_window\": true}",
                NULL, MG_ERR_UNSUPPORTED, "use_sliding_window");
}

Test(config, attention_bias_llama) {
    mg_config c;
    cr_assert_eq(mg_config_parse(llama_cfg("\"attention_bias\": true"), NULL, &c), MG_OK, "%s", mg_error_last());
    cr_assert_eq(c.qkv_bias, 1);
    cr_assert_eq(c.o_bias, 1);
}

Test(config, eos_lists_and_generation_config) {
    mg_config c;
    cr_assert_eq(mg_config_parse(llama_cfg("\"eos_token_id\": [5, 6, 5]"), NULL, &c), MG_OK, "%s", mg_error_last());
    cr_assert_eq(c.n_eos, 2);
    cr_assert_eq(c.eos_ids[0], 5);
    cr_assert_eq(c.eos_ids[1], 6);
    cr_assert_eq(c.bos_id, 1);

    const char *gen = "{\"bos_token_id\": 3, \"eos_token_id\": [7, 8, 9]}";
    cr_assert_eq(mg_config_parse(llama_cfg(NULL), gen, &c), MG_OK, "%s", mg_error_last());
    cr_assert_eq(c.bos_id, 3);
    cr_assert_eq(c.n_eos, 3);
    cr_assert_eq(c.eos_ids[0], 7);
    cr_assert_eq(c.eos_ids[2], 9);

    /* generation_config without eos keeps config.json's */
    cr_assert_eq(mg_config_parse(llama_cfg(NULL), "{\"do_sample\": false}", &c), MG_OK, "%s", mg_error_last());
    cr_assert_eq(c.n_eos, 1);
    cr_assert_eq(c.eos_ids[0], 2);

    cr_assert_eq(mg_config_parse(llama_cfg("\"bos_token_id\": null, \"eos_token_id\": null"), NULL, &c), MG_OK);
    cr_assert_eq(c.bos_id, -1);
    cr_assert_eq(c.n_eos, 0);

    expect_fail(llama_cfg("\"eos_token_id\": [1, \"x\"]"), NULL, MG_ERR_FORMAT, "eos_token_id");
    expect_fail(llama_cfg("\"eos_token_id\": 100"), NULL, MG_ERR_FORMAT, "eos_token_id");
    expect_fail(llama_cfg("\"eos_token_id\": [1,2,3,4,5,6,7,8,9]"), NULL, MG_ERR_UNSUPPORTED, "eos_token_id");
    expect_fail(llama_cfg(NULL), "{\"eos_token_id\": ", MG_ERR_FORMAT, "generation_config.json");
}

Test(config, malformed_json) {
    expect_fail("{\"architectures\": [", NULL, MG_ERR_FORMAT, "config.json");
    expect_fail("[1]", NULL, MG_ERR_FORMAT, "config.json");
    mg_config c;
    cr_assert_eq(mg_config_parse(NULL, NULL, &c), MG_ERR_ARG);
}
