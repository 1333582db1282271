#include "model_dir.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../util/file.h"

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Reads the 7-int32 llama2.c header's vocab_size (absolute value). */
static mg_status llama2c_vocab(const char *path, int *vocab) {
    FILE *f = fopen(path, "rb");
    if (!f) return mg_error_set(MG_ERR_IO, "cannot open %s", path);
    int32_t hdr[7];
    size_t got = fread(hdr, sizeof(int32_t), 7, f);
    fclose(f);
    if (got != 7) return mg_error_set(MG_ERR_FORMAT, "%s: too short for a llama2.c checkpoint header", path);
    *vocab = hdr[5] < 0 ? -hdr[5] : hdr[5];
    return MG_OK;
}

/* Finds the llama2.c tokenizer beside checkpoint `path`: tok<vocab>.bin,
 * then tokenizer.bin. */
static mg_status llama2c_tokenizer_path(const char *path, int vocab, char *out, size_t n) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    char name[64];
    snprintf(name, sizeof name, "tok%d.bin", vocab);
    mg_status st = mg_path_join(out, n, dir, name);
    if (st == MG_OK && mg_file_exists(out)) return MG_OK;
    st = mg_path_join(out, n, dir, "tokenizer.bin");
    if (st == MG_OK && mg_file_exists(out)) return MG_OK;
    return mg_error_set(MG_ERR_IO, "no llama2.c tokenizer (%s or tokenizer.bin) beside %s", name, path);
}

static mg_status open_tokenizer_fmt(const char *path, mg_tokenizer **tok, mg_model_format *format) {
    *tok = NULL;
    if (is_dir(path)) {
        char json[4096], cfg[4096];
        mg_status st = mg_path_join(json, sizeof json, path, "tokenizer.json");
        if (st != MG_OK) return st;
        if (!mg_file_exists(json)) return mg_error_set(MG_ERR_IO, "%s has no tokenizer.json", path);
        st = mg_path_join(cfg, sizeof cfg, path, "tokenizer_config.json");
        if (st != MG_OK) return st;
        *format = MG_FORMAT_HF;
        return mg_tokenizer_load_hf(json, mg_file_exists(cfg) ? cfg : NULL, tok);
    }
    if (!mg_file_exists(path)) return mg_error_set(MG_ERR_IO, "model not found: %s", path);
    int vocab = 0;
    mg_status st = llama2c_vocab(path, &vocab);
    if (st != MG_OK) return st;
    char tpath[4096];
    st = llama2c_tokenizer_path(path, vocab, tpath, sizeof tpath);
    if (st != MG_OK) return st;
    *format = MG_FORMAT_LLAMA2C;
    return mg_tokenizer_load_llama2c(tpath, vocab, tok);
}

mg_status mg_open_tokenizer(const char *path, mg_tokenizer **tok) {
    mg_model_format f;
    return open_tokenizer_fmt(path, tok, &f);
}

mg_status mg_open_model(const char *path, mg_model **model, mg_tokenizer **tok, mg_model_format *format) {
    *model = NULL;
    mg_status st = open_tokenizer_fmt(path, tok, format);
    if (st != MG_OK) return st;
    st = *format == MG_FORMAT_HF ? mg_model_load_hf(path, model) : mg_model_load_llama2c(path, model);
    if (st != MG_OK) {
        mg_tokenizer_free(*tok);
        *tok = NULL;
        return st;
    }
    if (mg_tokenizer_vocab_size(*tok) > (*model)->config.vocab_size) {
        st = mg_error_set(MG_ERR_SHAPE, "tokenizer has %d tokens but the model's vocabulary is %d",
                          mg_tokenizer_vocab_size(*tok), (*model)->config.vocab_size);
        mg_model_free(*model);
        mg_tokenizer_free(*tok);
        *model = NULL;
        *tok = NULL;
    }
    return st;
}
