/* The tokenizer handle: freeing and the small accessors of tokenizer.h.
 * Loading lives in tok_hf_load.c / tok_llama2c.c, encoding in
 * tok_encode.c, decoding in tok_decode.c, chat templates in chat_template.c. */
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

void mg_tokenizer_free(mg_tokenizer *tok) {
    if (!tok) return;
    free(tok->tok_str);
    free(tok->tok_len);
    free(tok->piece);
    free(tok->piece_len);
    free(tok->piece_arena);
    free(tok->special);
    mg_tok_strmap_free(&tok->vocab);
    mg_tok_strmap_free(&tok->added_map);
    mg_tok_pairmap_free(&tok->merges);
    free(tok->arena);
    free(tok->subword_prefix);
    free(tok->word_suffix);
    free(tok->added);
    for (int i = 0; i < tok->n_norm; i++) {
        free(tok->norm[i].arg);
        pcre2_code_free(tok->norm[i].re);
    }
    free(tok->norm);
    for (int i = 0; i < tok->n_pre; i++) pcre2_code_free(tok->pre[i].re);
    free(tok->pre);
    for (int i = 0; i < tok->n_dec; i++) {
        free(tok->dec[i].pat);
        free(tok->dec[i].content);
    }
    free(tok->dec);
    free(tok->post_prefix);
    free(tok->post_suffix);
    free(tok->bos_token);
    free(tok->eos_token);
    free(tok->chat_template);
    free(tok->scores);
    free(tok);
}

const char *mg_tokenizer_token_str(const mg_tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->n_vocab) return NULL;
    return tok->tok_str[id];
}

int32_t mg_tokenizer_token_id(const mg_tokenizer *tok, const char *s) {
    if (!tok || !s) return -1;
    size_t n = strlen(s);
    int32_t id = mg_tok_strmap_get(&tok->added_map, s, n); /* HF: added tokens first */
    return id >= 0 ? id : mg_tok_strmap_get(&tok->vocab, s, n);
}

int mg_tokenizer_vocab_size(const mg_tokenizer *tok) { return tok ? tok->n_vocab : 0; }

int mg_tokenizer_is_special(const mg_tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->n_vocab) return 0;
    return tok->special[id];
}

int32_t mg_tokenizer_bos_id(const mg_tokenizer *tok) { return tok ? tok->bos_id : -1; }

int32_t mg_tokenizer_eos_id(const mg_tokenizer *tok) { return tok ? tok->eos_id : -1; }
