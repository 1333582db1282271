/* Tokenizers: Hugging Face tokenizer.json (byte-level BPE as in Llama 3,
 * Qwen2 and mg-llama-27m; sentencepiece-style BPE with metaspace and byte
 * fallback as in Llama 2) and llama2.c's tokenizer.bin, behind one handle.
 *
 * Token ids are int32_t. All text is UTF-8. A loaded tokenizer is never
 * modified: encode, decode, piece and chat rendering may run concurrently on
 * one handle from several threads. */
#ifndef MG_TOKENIZER_H
#define MG_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "../util/status.h"

typedef struct mg_tokenizer mg_tokenizer;

/* Loads tokenizer.json at `json_path`; `config_path` (tokenizer_config.json,
 * may be NULL or missing) supplies the chat template and bos/eos token names.
 * Returns MG_ERR_IO / MG_ERR_FORMAT / MG_ERR_UNSUPPORTED with a message on
 * failure; *out is set only on success. */
mg_status mg_tokenizer_load_hf(const char *json_path, const char *config_path, mg_tokenizer **out);

/* As mg_tokenizer_load_hf, from tokenizer.json text in memory (`len` bytes)
 * and optional tokenizer_config.json text (`config_json` may be NULL). */
mg_status mg_tokenizer_load_hf_mem(const char *json, size_t len, const char *config_json, size_t config_len,
                                   mg_tokenizer **out);

/* Loads a llama2.c tokenizer.bin (e.g. tok512.bin) with `vocab_size` entries.
 * Encoding follows llama2.c's run.c: dummy-prefix space, score-ordered merges,
 * byte fallback <0xXX>; BOS = 1, EOS = 2. */
mg_status mg_tokenizer_load_llama2c(const char *bin_path, int vocab_size, mg_tokenizer **out);

/* Frees the tokenizer (NULL is fine). */
void mg_tokenizer_free(mg_tokenizer *tok);

/* Encodes `len` bytes of `text`. `add_special` != 0 applies the
 * post-processor (e.g. prepends BOS), as HF's encode(text) does; 0 gives
 * encode(text, add_special_tokens=False). Special/added tokens appearing in
 * the text are matched as in HF. Returns MG_ERR_ARG if the text is not valid
 * UTF-8. On success *ids is malloc'd (caller frees) with *n_ids entries. */
mg_status mg_tokenizer_encode(const mg_tokenizer *tok, const char *text, size_t len, int add_special,
                              int32_t **ids, size_t *n_ids);

/* Decodes ids to a malloc'd NUL-terminated string as HF's decode does
 * (skip_special != 0 drops special tokens). Byte sequences that are not valid
 * UTF-8 become U+FFFD. Returns MG_ERR_RANGE for an id outside the vocab. */
mg_status mg_tokenizer_decode(const mg_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                              char **text);

/* Raw bytes a token contributes to the output (after byte-level / byte
 * fallback / metaspace decoding), for streaming detokenisers that must
 * buffer incomplete UTF-8. `prev_id` is the previous token or -1 at the start
 * (sentencepiece-style tokenizers drop the leading space of the first token,
 * i.e. when prev_id is -1 or the BOS id, as HF's Strip decoder and llama2.c
 * do).
 * Returns a pointer into the tokenizer (valid until it is freed) and sets
 * *len; returns NULL for an out-of-range id. */
const char *mg_tokenizer_piece(const mg_tokenizer *tok, int32_t id, int32_t prev_id, size_t *len);

/* The token's string as written in the vocab (e.g. "Ġthe"), or NULL. */
const char *mg_tokenizer_token_str(const mg_tokenizer *tok, int32_t id);

/* Looks up a token string in the vocab (including added tokens); -1 if absent. */
int32_t mg_tokenizer_token_id(const mg_tokenizer *tok, const char *s);

int mg_tokenizer_vocab_size(const mg_tokenizer *tok);
int mg_tokenizer_is_special(const mg_tokenizer *tok, int32_t id);
int32_t mg_tokenizer_bos_id(const mg_tokenizer *tok); /* -1 if none */
int32_t mg_tokenizer_eos_id(const mg_tokenizer *tok); /* -1 if none */

typedef struct {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content; /* UTF-8 */
} mg_chat_message;

/* Renders `msgs` with the chat template from tokenizer_config.json, exactly
 * as HF's apply_chat_template(..., tokenize=False) would. Supported templates:
 * mg-llama-27m's, Llama 3's and Qwen2's ChatML (recognised by their
 * structure); anything else returns MG_ERR_UNSUPPORTED with a message naming
 * what was found. On success *out is malloc'd (caller frees). The rendered
 * text is meant to be encoded with add_special = 0. */
mg_status mg_chat_render(const mg_tokenizer *tok, const mg_chat_message *msgs, size_t n,
                         int add_generation_prompt, char **out);

#endif
