/* tokenizer_config.json: bos/eos token names (a string or an AddedToken
 * object {"content": ...}) and the chat template (a string, or a list of
 * {"name", "template"} from which "default" or the first is taken). */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

/* Returns the token text of a config entry (string or {"content"}), or NULL. */
static const char *token_text(const cJSON *v) {
    if (cJSON_IsString(v)) return v->valuestring;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(c) ? c->valuestring : NULL;
}

/* Stores a malloc'd copy of s (NULL allowed) in *dst. */
static mg_status set_str(char **dst, const char *s) {
    free(*dst);
    *dst = NULL;
    if (!s) return MG_OK;
    size_t n = strlen(s) + 1;
    *dst = malloc(n);
    if (!*dst) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
    memcpy(*dst, s, n);
    return MG_OK;
}

mg_status mg_tok_load_config(mg_tokenizer *tok, const char *json, size_t len) {
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return mg_error_set(MG_ERR_FORMAT, "tokenizer_config.json: not a JSON object");
    }
    mg_status st = MG_OK;
    const char *bos = token_text(cJSON_GetObjectItemCaseSensitive(root, "bos_token"));
    const char *eos = token_text(cJSON_GetObjectItemCaseSensitive(root, "eos_token"));
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    const char *tmpl = NULL;
    if (cJSON_IsString(ct)) tmpl = ct->valuestring;
    else if (cJSON_IsArray(ct)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, ct) {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name"), *t = cJSON_GetObjectItemCaseSensitive(e, "template");
            if (!cJSON_IsString(t)) continue;
            if (!tmpl || (cJSON_IsString(name) && !strcmp(name->valuestring, "default"))) tmpl = t->valuestring;
        }
    }
    if (!st) st = set_str(&tok->bos_token, bos);
    if (!st) st = set_str(&tok->eos_token, eos);
    if (!st) st = set_str(&tok->chat_template, tmpl);
    if (!st && bos) tok->bos_id = mg_tokenizer_token_id(tok, bos);
    if (!st && eos) tok->eos_id = mg_tokenizer_token_id(tok, eos);
    if (!st && !bos) {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(root, "bos_token");
        if (b && cJSON_IsNull(b)) tok->bos_id = -1; /* explicitly no BOS (Qwen) */
    }
    cJSON_Delete(root);
    return st;
}
