#include "dataset.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "../util/file.h"

typedef enum { FMT_GSM8K, FMT_MATH, FMT_HUMANEVAL, FMT_SHAREGPT, FMT_FILE } prompt_format;

static const struct {
    const char *name;
    const char *file;
    prompt_format fmt;
} known[] = {
    {"gsm8k", "gsm8k_test.jsonl", FMT_GSM8K},
    {"math500", "math500_test.jsonl", FMT_MATH},
    {"humaneval", "HumanEval.jsonl.gz", FMT_HUMANEVAL},
    {"sharegpt", "sharegpt_sg90k_first_sampled_sorted.json", FMT_SHAREGPT},
};

const char *mg_dataset_dir(void) {
    const char *d = getenv("MARGINGATE_DATASETS");
    return d && *d ? d : "../shared/datasets";
}

/* Reads a whole file, gunzipping it if the name ends in .gz. */
static mg_status read_maybe_gz(const char *path, char **out) {
    size_t n = strlen(path);
    if (n < 3 || strcmp(path + n - 3, ".gz") != 0) return mg_file_read(path, out, NULL);
    gzFile gz = gzopen(path, "rb");
    if (!gz) return mg_error_set(MG_ERR_IO, "cannot open %s", path);
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    int got;
    while (buf && (got = gzread(gz, buf + len, (unsigned)(cap - len - 1))) > 0) {
        len += (size_t)got;
        if (cap - len < 2) {
            char *b = realloc(buf, cap * 2);
            if (!b) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = b;
            cap *= 2;
        }
    }
    int err = 0;
    gzerror(gz, &err);
    gzclose(gz);
    if (!buf) return mg_error_set(MG_ERR_OOM, "out of memory reading %s", path);
    if (err != Z_OK && err != Z_STREAM_END) {
        free(buf);
        return mg_error_set(MG_ERR_FORMAT, "%s: corrupt gzip data", path);
    }
    buf[len] = '\0';
    *out = buf;
    return MG_OK;
}

/* Parses JSONL or a JSON array into an array of records (caller deletes). */
static mg_status parse_records(const char *path, const char *text, cJSON **out) {
    const char *p = text;
    while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') p++;
    if (*p == '[') {
        *out = cJSON_Parse(p);
        if (!*out) return mg_error_set(MG_ERR_FORMAT, "%s: malformed JSON array", path);
        return MG_OK;
    }
    cJSON *arr = cJSON_CreateArray();
    int line = 0;
    while (*p) {
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        line++;
        if (len > 0 && strspn(p, " \t\r") < len) {
            cJSON *rec = cJSON_ParseWithLength(p, len);
            if (!rec) {
                cJSON_Delete(arr);
                return mg_error_set(MG_ERR_FORMAT, "%s:%d: malformed JSON line", path, line);
            }
            cJSON_AddItemToArray(arr, rec);
        }
        p += len + (end != NULL);
    }
    *out = arr;
    return MG_OK;
}

static const char *str_field(const cJSON *rec, const char *name) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(rec, name);
    return cJSON_IsString(f) ? f->valuestring : NULL;
}

/* First human turn of a ShareGPT-style record, or NULL. */
static const char *first_human_turn(const cJSON *rec) {
    const cJSON *conv = cJSON_GetObjectItemCaseSensitive(rec, "conversations");
    const cJSON *turn;
    cJSON_ArrayForEach(turn, conv) {
        const char *from = str_field(turn, "from");
        if (from && (!strcmp(from, "human") || !strcmp(from, "user"))) return str_field(turn, "value");
    }
    return NULL;
}

/* Renders one record as prompt text (malloc'd) and says whether it is
 * already chat-templated (then no BOS is added by encoding). */
static mg_status render(const cJSON *rec, prompt_format fmt, const mg_tokenizer *tok, char **text, int *templated) {
    const char *s = NULL;
    *templated = 0;
    *text = NULL;
    switch (fmt) {
    case FMT_GSM8K: s = str_field(rec, "question"); break;
    case FMT_MATH: s = str_field(rec, "problem"); break;
    case FMT_HUMANEVAL: s = str_field(rec, "prompt"); break;
    case FMT_SHAREGPT: s = first_human_turn(rec); break;
    case FMT_FILE:
        s = str_field(rec, "prompt");
        if (!s) s = str_field(rec, "question");
        if (!s) s = str_field(rec, "problem");
        if (!s) s = str_field(rec, "text");
        if (!s && (s = first_human_turn(rec))) fmt = FMT_SHAREGPT;
        break;
    }
    if (!s) return MG_ERR_FORMAT; /* record without a prompt: skipped by the caller */
    if (fmt == FMT_SHAREGPT) {
        mg_chat_message m = {"user", s};
        if (mg_chat_render(tok, &m, 1, 1, text) == MG_OK) {
            *templated = 1;
            return MG_OK;
        }
        /* No supported chat template: use the turn as plain text. */
    }
    const char *pre = fmt == FMT_GSM8K ? "Question: " : fmt == FMT_MATH ? "Problem: " : "";
    const char *post = fmt == FMT_GSM8K ? "\nAnswer:" : fmt == FMT_MATH ? "\nSolution:" : "";
    size_t n = strlen(pre) + strlen(s) + strlen(post) + 1;
    *text = malloc(n);
    if (!*text) return mg_error_set(MG_ERR_OOM, "out of memory");
    snprintf(*text, n, "%s%s%s", pre, s, post);
    return MG_OK;
}

void mg_dataset_free(mg_dataset *d) {
    for (int i = 0; i < d->n; i++) free(d->ids[i]);
    free(d->ids);
    free(d->n_ids);
    free(d->name);
    memset(d, 0, sizeof *d);
}

mg_status mg_dataset_load(const char *name_or_file, const mg_tokenizer *tok, int limit, int max_tokens,
                          mg_dataset *out) {
    memset(out, 0, sizeof *out);
    char path[4096];
    prompt_format fmt = FMT_FILE;
    const char *path_used = name_or_file;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(name_or_file, known[i].name)) {
            snprintf(path, sizeof path, "%s/%s", mg_dataset_dir(), known[i].file);
            path_used = path;
            fmt = known[i].fmt;
        }
    if (fmt == FMT_FILE && !mg_file_exists(name_or_file))
        return mg_error_set(MG_ERR_ARG, "unknown dataset '%s' (gsm8k, math500, humaneval, sharegpt, or a file)",
                            name_or_file);
    char *text;
    mg_status st = read_maybe_gz(path_used, &text);
    if (st != MG_OK) return st;
    cJSON *recs;
    st = parse_records(path_used, text, &recs);
    free(text);
    if (st != MG_OK) return st;
    int total = cJSON_GetArraySize(recs);
    int want = limit > 0 && limit < total ? limit : total;
    out->name = strdup(fmt == FMT_FILE ? name_or_file : name_or_file);
    out->ids = calloc((size_t)want + 1, sizeof *out->ids);
    out->n_ids = calloc((size_t)want + 1, sizeof *out->n_ids);
    if (!out->name || !out->ids || !out->n_ids) {
        cJSON_Delete(recs);
        mg_dataset_free(out);
        return mg_error_set(MG_ERR_OOM, "out of memory");
    }
    const cJSON *rec;
    cJSON_ArrayForEach(rec, recs) {
        if (out->n == want) break;
        char *prompt;
        int templated;
        if (render(rec, fmt, tok, &prompt, &templated) != MG_OK) continue;
        int32_t *ids;
        size_t n;
        st = mg_tokenizer_encode(tok, prompt, strlen(prompt), !templated, &ids, &n);
        free(prompt);
        if (st != MG_OK) continue; /* e.g. invalid UTF-8 in a user file: skip the record */
        if (n == 0) {
            free(ids);
            continue;
        }
        if (max_tokens > 0 && n > (size_t)max_tokens) n = (size_t)max_tokens;
        out->ids[out->n] = ids;
        out->n_ids[out->n] = (int)n;
        out->n++;
    }
    cJSON_Delete(recs);
    if (out->n == 0) {
        mg_dataset_free(out);
        return mg_error_set(MG_ERR_FORMAT, "%s: no usable prompts", path_used);
    }
    return MG_OK;
}
