/* Opening what a user names with -m: a Hugging Face checkpoint directory
 * (config.json, safetensors, tokenizer.json) or a llama2.c checkpoint file
 * (e.g. stories260K.bin, with its tokenizer tok<vocab>.bin or tokenizer.bin
 * beside it). */
#ifndef MG_MODEL_DIR_H
#define MG_MODEL_DIR_H

#include "../model/model.h"
#include "../tokenizer/tokenizer.h"

typedef enum { MG_FORMAT_HF = 0, MG_FORMAT_LLAMA2C = 1 } mg_model_format;

/* Opens the tokenizer of the model at `path` (no weights are read). */
mg_status mg_open_tokenizer(const char *path, mg_tokenizer **tok);

/* Opens model weights and tokenizer. On success both are set (free with
 * mg_model_free / mg_tokenizer_free) and *format says which kind it was. */
mg_status mg_open_model(const char *path, mg_model **model, mg_tokenizer **tok, mg_model_format *format);

#endif
