/* Chat templates: every case of tests/data/tokenizers/chat-golden.json
 * (rendered by Jinja2 as transformers does, tools/gen_tokenizer_chat_golden.py)
 * for the mg-llama-27m, Llama 3, Llama 3.1, Qwen2, Qwen2.5 and Qwen3
 * templates, and the error cases. */
#include "test_tokenizer_common.h"
#include "shared_path.h"

/* mg-llama-27m's tokenizer.json text (any tokenizer works for rendering). */
static char *tok_json(size_t *n) {
    char path[512];
    MG_TEST_SHARED(path, "models/mg-llama-27m/tokenizer.json");
    char *txt = NULL;
    cr_assert_eq(mg_file_read(path, &txt, n), MG_OK);
    return txt;
}

/* Loads a tokenizer whose config has this template and bos_token (NULL: none). */
static mg_tokenizer *with_template(const char *tj, size_t tn, const char *tmpl, const char *bos) {
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "chat_template", tmpl);
    if (bos) cJSON_AddStringToObject(cfg, "bos_token", bos);
    else cJSON_AddNullToObject(cfg, "bos_token");
    char *c = cJSON_PrintUnformatted(cfg);
    mg_tokenizer *tok = NULL;
    cr_assert_eq(mg_tokenizer_load_hf_mem(tj, tn, c, strlen(c), &tok), MG_OK, "%s", mg_error_last());
    free(c);
    cJSON_Delete(cfg);
    return tok;
}

Test(tokenizer_chat, jinja_goldens) {
    size_t tn;
    char *tj = tok_json(&tn);
    cJSON *g = tt_read_json("tests/data/tokenizers/chat-golden.json");
    const cJSON *templates = cJSON_GetObjectItemCaseSensitive(g, "templates"), *c;
    int n = 0, fails = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(g, "cases")) {
        const char *fam = cJSON_GetObjectItemCaseSensitive(c, "family")->valuestring;
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(templates, fam);
        const cJSON *bos = cJSON_GetArrayItem(t, 1);
        mg_tokenizer *tok = with_template(tj, tn, cJSON_GetArrayItem(t, 0)->valuestring,
                                          cJSON_IsString(bos) ? bos->valuestring : NULL);
        const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(c, "messages"), *m;
        mg_chat_message cm[16];
        size_t k = 0;
        cJSON_ArrayForEach(m, msgs) {
            cr_assert_lt(k, 16);
            cm[k].role = cJSON_GetObjectItemCaseSensitive(m, "role")->valuestring;
            cm[k].content = cJSON_GetObjectItemCaseSensitive(m, "content")->valuestring;
            k++;
        }
        char *out = NULL;
        int gen = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "add_generation_prompt"));
        cr_assert_eq(mg_chat_render(tok, cm, k, gen, &out), MG_OK, "%s: %s", fam, mg_error_last());
        const char *want = cJSON_GetObjectItemCaseSensitive(c, "text")->valuestring;
        if (strcmp(out, want)) {
            fprintf(stderr, "MISMATCH %s/%s:\n got: %s\nwant: %s\n", fam,
                    cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring, out, want);
            fails++;
        }
        n++;
        free(out);
        mg_tokenizer_free(tok);
    }
    cr_expect_eq(fails, 0, "%d of %d chat renders differ from Jinja (details on stderr)", fails, n);
    cr_expect_geq(n, 60);
    cJSON_Delete(g);
    free(tj);
}

Test(tokenizer_chat, errors_and_config_forms) {
    size_t tn;
    char *tj = tok_json(&tn);
    mg_chat_message msgs[2] = {{"user", "hi"}, {"tool", "x"}};
    char *out = NULL;
    /* no config: no template */
    mg_tokenizer *tok = NULL;
    cr_assert_eq(mg_tokenizer_load_hf_mem(tj, tn, NULL, 0, &tok), MG_OK);
    cr_expect_eq(mg_chat_render(tok, msgs, 1, 1, &out), MG_ERR_UNSUPPORTED);
    cr_expect(strstr(mg_error_last(), "no chat_template") != NULL, "%s", mg_error_last());
    mg_tokenizer_free(tok);
    /* an unknown template */
    tok = with_template(tj, tn, "{% for m in messages %}{{ m.content }}{% endfor %}", "<|endoftext|>");
    cr_expect_eq(mg_chat_render(tok, msgs, 1, 1, &out), MG_ERR_UNSUPPORTED);
    cr_expect(strstr(mg_error_last(), "not recognised") != NULL, "%s", mg_error_last());
    cr_expect_null(out);
    mg_tokenizer_free(tok);
    /* mg-llama-27m's template raises on other roles; NULL content is refused */
    char cfgp[512];
    MG_TEST_SHARED(cfgp, "models/mg-llama-27m/tokenizer_config.json");
    char *cfg = NULL;
    size_t cn = 0;
    cr_assert_eq(mg_file_read(cfgp, &cfg, &cn), MG_OK);
    cr_assert_eq(mg_tokenizer_load_hf_mem(tj, tn, cfg, cn, &tok), MG_OK);
    cr_expect_eq(mg_chat_render(tok, msgs, 2, 1, &out), MG_ERR_ARG);
    cr_expect(strstr(mg_error_last(), "role must be") != NULL, "%s", mg_error_last());
    mg_chat_message bad = {"user", NULL};
    cr_expect_eq(mg_chat_render(tok, &bad, 1, 1, &out), MG_ERR_ARG);
    cr_assert_eq(mg_chat_render(tok, msgs, 0, 1, &out), MG_OK);
    cr_expect_str_eq(out, "<|endoftext|><|assistant|>\n");
    free(out);
    mg_tokenizer_free(tok);
    free(cfg);
    /* bos_token as an AddedToken object, chat_template as a named list */
    const char *cfg2 = "{\"bos_token\": {\"content\": \"<|user|>\", \"lstrip\": false}, \"eos_token\": \"<|assistant|>\","
                       "\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"x\"},"
                       "{\"name\": \"default\", \"template\": \"{{ bos_token }}{% for message in messages %}"
                       "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
                       "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}"
                       "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + '\\n' }}"
                       "{% endif %}{% endfor %}\"}]}";
    cr_assert_eq(mg_tokenizer_load_hf_mem(tj, tn, cfg2, strlen(cfg2), &tok), MG_OK, "%s", mg_error_last());
    cr_expect_eq(mg_tokenizer_bos_id(tok), 1);
    cr_expect_eq(mg_tokenizer_eos_id(tok), 2);
    cr_assert_eq(mg_chat_render(tok, msgs, 1, 0, &out), MG_OK, "%s", mg_error_last());
    cr_expect_str_eq(out, "<|user|><|user|>\nhi\n");
    free(out);
    mg_tokenizer_free(tok);
    /* malformed config */
    cr_expect_eq(mg_tokenizer_load_hf_mem(tj, tn, "{oops", 5, &tok), MG_ERR_FORMAT);
    free(tj);
}
