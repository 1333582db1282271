/* OpenAI request parsing and response JSON (cJSON).
 *
 * Parsing validates everything a client controls before the request reaches
 * the engine: JSON syntax and UTF-8, field types and ranges, the prompt
 * against the context and the KV pool. Unknown fields are ignored; fields
 * whose meaning we cannot honour (n > 1, echo, penalties) are refused. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../util/timer.h"
#include "../util/utf8.h"
#include "server_internal.h"

int mg_api_fail(mg_api_error *err, int status, const char *type, const char *code, const char *param,
                const char *fmt, ...) {
    err->status = status;
    err->type = type;
    err->code = code;
    err->param = param;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return -1;
}

#define BAD(err, code, param, ...) mg_api_fail((err), 400, "invalid_request_error", (code), (param), __VA_ARGS__)

char *mg_api_error_json(const mg_api_error *err) {
    cJSON *o = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "message", err->message);
    cJSON_AddStringToObject(e, "type", err->type ? err->type : "invalid_request_error");
    if (err->param) cJSON_AddStringToObject(e, "param", err->param);
    else cJSON_AddNullToObject(e, "param");
    cJSON_AddStringToObject(e, "code", err->code ? err->code : "error");
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* ---- typed field access: absent or null leaves *out unchanged ---- */

static cJSON *field(const cJSON *root, const char *name) {
    cJSON *f = cJSON_GetObjectItemCaseSensitive(root, name);
    return f && !cJSON_IsNull(f) ? f : NULL;
}

static int get_bool(const cJSON *root, const char *name, int *out, mg_api_error *err) {
    cJSON *f = field(root, name);
    if (!f) return 0;
    if (!cJSON_IsBool(f)) return BAD(err, "invalid_type", name, "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(f);
    return 0;
}

static int get_int(const cJSON *root, const char *name, double lo, double hi, long long *out, mg_api_error *err) {
    cJSON *f = field(root, name);
    if (!f) return 0;
    double v = f->valuedouble;
    if (!cJSON_IsNumber(f) || v != floor(v) || !isfinite(v))
        return BAD(err, "invalid_type", name, "'%s' must be an integer", name);
    if (v < lo || v > hi) return BAD(err, "invalid_value", name, "'%s' must be in [%.0f, %.0f], got %.0f", name, lo, hi, v);
    *out = (long long)v;
    return 0;
}

static int get_num(const cJSON *root, const char *name, double lo, double hi, double *out, mg_api_error *err) {
    cJSON *f = field(root, name);
    if (!f) return 0;
    if (!cJSON_IsNumber(f) || !isfinite(f->valuedouble))
        return BAD(err, "invalid_type", name, "'%s' must be a number", name);
    if (f->valuedouble < lo || f->valuedouble > hi)
        return BAD(err, "invalid_value", name, "'%s' must be in [%g, %g], got %g", name, lo, hi, f->valuedouble);
    *out = f->valuedouble;
    return 0;
}

/* ---- prompts ---- */

static int encode(const mg_srv *s, const char *text, int add_special, mg_job *j, mg_api_error *err) {
    int32_t *ids = NULL;
    size_t n = 0;
    if (mg_tokenizer_encode(s->tok, text, strlen(text), add_special, &ids, &n) != MG_OK)
        return BAD(err, "invalid_prompt", "prompt", "cannot tokenize the prompt: %s", mg_error_last());
    j->prompt = ids;
    j->n_prompt = (int)n;
    return 0;
}

static int token_ids(const mg_srv *s, const cJSON *arr, mg_job *j, mg_api_error *err) {
    int n = cJSON_GetArraySize(arr), vocab = s->model->config.vocab_size, i = 0;
    if (n == 0) return BAD(err, "invalid_value", "prompt", "'prompt' must not be empty");
    j->prompt = malloc((size_t)n * sizeof(int32_t));
    if (!j->prompt) return mg_api_fail(err, 500, "server_error", "out_of_memory", NULL, "out of memory");
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        double v = it->valuedouble;
        if (!cJSON_IsNumber(it) || v != floor(v))
            return BAD(err, "invalid_type", "prompt", "a token-id prompt must hold only integers");
        if (v < 0 || v >= vocab)
            return BAD(err, "invalid_value", "prompt", "token id %.0f is outside the vocabulary [0, %d)", v, vocab);
        j->prompt[i++] = (int32_t)v;
    }
    j->n_prompt = n;
    return 0;
}

static int parse_prompt(const mg_srv *s, const cJSON *root, mg_job *j, mg_api_error *err) {
    cJSON *p = field(root, "prompt");
    if (!p) return BAD(err, "missing_field", "prompt", "'prompt' is required");
    if (cJSON_IsString(p)) return encode(s, p->valuestring, 1, j, err);
    if (!cJSON_IsArray(p))
        return BAD(err, "invalid_type", "prompt", "'prompt' must be a string, a list of strings or a list of token ids");
    int n = cJSON_GetArraySize(p);
    if (n == 0) return BAD(err, "invalid_value", "prompt", "'prompt' must not be empty");
    cJSON *first = cJSON_GetArrayItem(p, 0);
    if (cJSON_IsNumber(first)) return token_ids(s, p, j, err);
    if (cJSON_IsString(first) || cJSON_IsArray(first)) {
        if (n > 1)
            return BAD(err, "unsupported", "prompt",
                       "a list of %d prompts is not supported: send one request per prompt", n);
        if (cJSON_IsString(first)) return encode(s, first->valuestring, 1, j, err);
        return token_ids(s, first, j, err);
    }
    return BAD(err, "invalid_type", "prompt", "'prompt' must be a string, a list of strings or a list of token ids");
}

/* Concatenated text of a message's content: a string or a list of text parts. */
static int message_text(const cJSON *content, char **out, mg_api_error *err) {
    if (!content) {
        *out = strdup("");
        return 0;
    }
    if (cJSON_IsString(content)) {
        *out = strdup(content->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(content))
        return BAD(err, "invalid_type", "messages", "a message's 'content' must be a string or a list of parts");
    size_t len = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, content) {
        cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") || !cJSON_IsString(text))
            return BAD(err, "unsupported", "messages", "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported");
        len += strlen(text->valuestring);
    }
    char *s = malloc(len + 1);
    if (!s) return mg_api_fail(err, 500, "server_error", "out_of_memory", NULL, "out of memory");
    s[0] = '\0';
    size_t o = 0;
    cJSON_ArrayForEach(part, content) {
        const char *t = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
        size_t l = strlen(t);
        memcpy(s + o, t, l + 1);
        o += l;
    }
    *out = s;
    return 0;
}

static int parse_messages(const mg_srv *s, const cJSON *root, mg_job *j, mg_api_error *err) {
    cJSON *m = field(root, "messages");
    if (!m) return BAD(err, "missing_field", "messages", "'messages' is required");
    if (!cJSON_IsArray(m)) return BAD(err, "invalid_type", "messages", "'messages' must be a list of messages");
    int n = cJSON_GetArraySize(m);
    if (n == 0) return BAD(err, "invalid_value", "messages", "'messages' must not be empty");
    int add_gen = 1;
    if (get_bool(root, "add_generation_prompt", &add_gen, err)) return -1;
    mg_chat_message *msgs = calloc((size_t)n, sizeof *msgs);
    char **texts = calloc((size_t)n, sizeof *texts);
    int rc = 0, i = 0;
    if (!msgs || !texts) rc = mg_api_fail(err, 500, "server_error", "out_of_memory", NULL, "out of memory");
    const cJSON *it;
    cJSON_ArrayForEach(it, m) {
        if (rc) break;
        cJSON *role = cJSON_GetObjectItemCaseSensitive(it, "role");
        if (!cJSON_IsObject(it) || !cJSON_IsString(role)) {
            rc = BAD(err, "invalid_type", "messages", "message %d must be an object with a string 'role'", i);
            break;
        }
        cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if ((rc = message_text(cJSON_IsNull(content) ? NULL : content, &texts[i], err))) break;
        if (!texts[i]) {
            rc = mg_api_fail(err, 500, "server_error", "out_of_memory", NULL, "out of memory");
            break;
        }
        msgs[i].role = role->valuestring;
        msgs[i].content = texts[i];
        i++;
    }
    char *rendered = NULL;
    if (!rc) {
        mg_status st = mg_chat_render(s->tok, msgs, (size_t)n, add_gen, &rendered);
        if (st == MG_ERR_UNSUPPORTED)
            rc = BAD(err, "unsupported_chat_template", "messages", "this model's chat template is not supported: %s",
                     mg_error_last());
        else if (st != MG_OK)
            rc = BAD(err, "invalid_value", "messages", "%s", mg_error_last());
    }
    if (!rc) rc = encode(s, rendered, 0, j, err);
    free(rendered);
    for (int k = 0; k < n && texts; k++) free(texts[k]);
    free(texts);
    free(msgs);
    return rc;
}

static int parse_stop(const cJSON *root, mg_job *j, mg_api_error *err) {
    cJSON *st = field(root, "stop");
    if (!st) return 0;
    if (!cJSON_IsString(st) && !cJSON_IsArray(st))
        return BAD(err, "invalid_type", "stop", "'stop' must be a string or a list of strings");
    if (cJSON_IsArray(st) && cJSON_GetArraySize(st) > MG_MAX_STOP)
        return BAD(err, "invalid_value", "stop", "at most %d stop strings are supported", MG_MAX_STOP);
    const cJSON *it = cJSON_IsString(st) ? st : st->child;
    for (; it; it = cJSON_IsString(st) ? NULL : it->next) {
        if (!cJSON_IsString(it)) return BAD(err, "invalid_type", "stop", "'stop' must be a string or a list of strings");
        size_t l = strlen(it->valuestring);
        if (l == 0) return BAD(err, "invalid_value", "stop", "stop strings must not be empty");
        if (l > MG_MAX_STOP_LEN) return BAD(err, "invalid_value", "stop", "stop strings are limited to %d bytes", MG_MAX_STOP_LEN);
        if (!(j->stop[j->n_stop++] = strdup(it->valuestring)))
            return mg_api_fail(err, 500, "server_error", "out_of_memory", NULL, "out of memory");
    }
    return 0;
}

static uint64_t random_seed(void) {
    static unsigned long long counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^
                 (__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED) * 0x9E3779B97F4A7C15ull);
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    return x ^ (x >> 29);
}

static void make_id(mg_job *j) {
    static unsigned long long counter;
    unsigned long long n = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
    snprintf(j->id, sizeof j->id, "%s-%016llx%08llx", j->chat ? "chatcmpl" : "cmpl",
             (unsigned long long)random_seed(), n);
}

int mg_api_parse_request(const mg_srv *s, const char *body, size_t len, int chat, mg_job *j, mg_api_error *err) {
    j->chat = chat;
    if (len == 0) return BAD(err, "invalid_json", NULL, "the request body is empty: send a JSON object");
    size_t bad;
    if (!mg_utf8_valid(body, len, &bad))
        return BAD(err, "invalid_utf8", NULL, "the request body is not valid UTF-8 (byte %zu)", bad);
    if (memchr(body, '\0', len)) return BAD(err, "invalid_json", NULL, "the request body contains a NUL byte");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) {
        size_t at = end ? (size_t)(end - body) : 0;
        return BAD(err, "invalid_json", NULL, "malformed JSON near byte %zu", at);
    }
    int rc = -1;
    while (end && (size_t)(end - body) < len && strchr(" \t\r\n", *end)) end++;
    if (end && (size_t)(end - body) < len) {
        BAD(err, "invalid_json", NULL, "unexpected data after the JSON value at byte %zu", (size_t)(end - body));
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        BAD(err, "invalid_json", NULL, "the request body must be a JSON object");
        goto out;
    }
    cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (model && !cJSON_IsNull(model) && !cJSON_IsString(model)) {
        BAD(err, "invalid_type", "model", "'model' must be a string");
        goto out;
    }
    /* Options first (cheap), the prompt last (tokenization). */
    long long n = 1, max_tokens = -1, top_k = 0, seed = -1, logprobs_n = -1, top_logprobs = 0;
    double temperature = 1.0, top_p = 1.0, presence = 0, frequency = 0;
    int stream = 0, logprobs_b = 0, ignore_eos = 0, echo = 0;
    const double big = 9007199254740991.0; /* 2^53 - 1 */
    if (get_int(root, "n", 1, big, &n, err) || get_num(root, "temperature", 0, 1e6, &temperature, err) ||
        get_num(root, "top_p", 0, 1, &top_p, err) || get_int(root, "top_k", -1, big, &top_k, err) ||
        get_int(root, "seed", -big, big, &seed, err) || get_bool(root, "stream", &stream, err) ||
        get_bool(root, "ignore_eos", &ignore_eos, err) || get_bool(root, "echo", &echo, err) ||
        get_num(root, "presence_penalty", -2, 2, &presence, err) ||
        get_num(root, "frequency_penalty", -2, 2, &frequency, err))
        goto out;
    if (n != 1) {
        BAD(err, "unsupported", "n", "only n = 1 is supported");
        goto out;
    }
    if (echo) {
        BAD(err, "unsupported", "echo", "echo is not supported");
        goto out;
    }
    if (presence != 0 || frequency != 0) {
        BAD(err, "unsupported", presence != 0 ? "presence_penalty" : "frequency_penalty",
            "presence and frequency penalties are not supported");
        goto out;
    }
    if (top_p <= 0) {
        BAD(err, "invalid_value", "top_p", "'top_p' must be in (0, 1]");
        goto out;
    }
    if (chat) {
        if (get_int(root, "max_tokens", 1, big, &max_tokens, err) ||
            get_int(root, "max_completion_tokens", 1, big, &max_tokens, err) ||
            get_bool(root, "logprobs", &logprobs_b, err) ||
            get_int(root, "top_logprobs", 0, MG_MAX_TOP_LOGPROBS, &top_logprobs, err))
            goto out;
        if (top_logprobs > 0 && !logprobs_b) {
            BAD(err, "invalid_value", "top_logprobs", "'top_logprobs' requires 'logprobs': true");
            goto out;
        }
        j->logprobs = logprobs_b;
        j->top_logprobs = (int)top_logprobs;
    } else {
        if (get_int(root, "max_tokens", 1, big, &max_tokens, err) ||
            get_int(root, "logprobs", 0, MG_MAX_TOP_LOGPROBS, &logprobs_n, err))
            goto out;
        j->logprobs = logprobs_n >= 0;
        j->top_logprobs = logprobs_n > 0 ? (int)logprobs_n : 0;
    }
    cJSON *so = field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so)) {
            BAD(err, "invalid_type", "stream_options", "'stream_options' must be an object");
            goto out;
        }
        if (!stream) {
            BAD(err, "invalid_value", "stream_options", "'stream_options' is only allowed with 'stream': true");
            goto out;
        }
        if (get_bool(so, "include_usage", &j->include_usage, err)) goto out;
    }
    j->stream = stream;
    mg_mode mode = s->cfg.default_mode;
    cJSON *det = field(root, "determinism");
    if (det) {
        if (!cJSON_IsString(det)) {
            BAD(err, "invalid_type", "determinism", "'determinism' must be a string");
            goto out;
        }
        if (mg_mode_parse(det->valuestring, &mode)) {
            BAD(err, "invalid_determinism_mode", "determinism",
                "unknown determinism mode '%.64s' (expected off, invariant, llm42 or margingate)", det->valuestring);
            goto out;
        }
    }
    if (parse_stop(root, j, err)) goto out;
    if ((chat ? parse_messages(s, root, j, err) : parse_prompt(s, root, j, err))) goto out;
    if (j->n_prompt == 0) {
        BAD(err, "invalid_prompt", "prompt", "the prompt is empty and the tokenizer adds no BOS token");
        goto out;
    }
    int ctx = s->max_model_len;
    if (j->n_prompt >= ctx) {
        BAD(err, "context_length_exceeded", chat ? "messages" : "prompt",
            "the prompt is %d tokens long; this model's maximum context length is %d tokens", j->n_prompt, ctx);
        goto out;
    }
    if (max_tokens < 0) max_tokens = chat ? ctx - j->n_prompt : 16;
    if (max_tokens > ctx - j->n_prompt) {
        BAD(err, "max_tokens_too_large", chat ? "max_completion_tokens" : "max_tokens",
            "max_tokens of %lld is too large: the prompt has %d tokens and the maximum context length is %d, "
            "so at most %d new tokens fit",
            max_tokens, j->n_prompt, ctx, ctx - j->n_prompt);
        goto out;
    }
    if ((long)j->n_prompt + max_tokens > s->kv_pool_tokens) {
        BAD(err, "max_tokens_too_large", chat ? "max_completion_tokens" : "max_tokens",
            "the request needs %lld tokens of KV cache; the server's pool holds %ld (raise --kv-mb)",
            (long long)j->n_prompt + max_tokens, s->kv_pool_tokens);
        goto out;
    }
    mg_request_params *p = &j->params;
    p->mode = mode;
    p->max_new_tokens = (int)max_tokens;
    p->ignore_eos = ignore_eos;
    p->sampling.temperature = (float)temperature;
    p->sampling.top_p = (float)top_p;
    p->sampling.top_k = top_k > 0 ? (int)(top_k > 1 << 30 ? 1 << 30 : top_k) : 0;
    p->sampling.seed = field(root, "seed") ? (uint64_t)seed : random_seed();
    if (mg_sampling_validate(&p->sampling) != MG_OK) {
        BAD(err, "invalid_value", NULL, "%s", mg_error_last());
        goto out;
    }
    j->prev = j->prompt[j->n_prompt - 1];
    j->created = (long)time(NULL);
    make_id(j);
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

/* ---- responses ---- */

/* Text of one token for logprobs: its vocab string for special tokens, else
 * its bytes (no first-token space stripping), lossy UTF-8. */
static cJSON *token_text(const mg_srv *s, int32_t id, cJSON **bytes_out) {
    size_t len = 0;
    const char *p;
    if (mg_tokenizer_is_special(s->tok, id)) {
        p = mg_tokenizer_token_str(s->tok, id);
        len = p ? strlen(p) : 0;
    } else {
        p = mg_tokenizer_piece(s->tok, id, 0x7fffffff, &len);
    }
    if (!p) p = "", len = 0;
    char *clean = malloc(3 * len + 1);
    cJSON *t = NULL;
    if (clean) {
        mg_utf8_lossy(p, len, clean);
        t = cJSON_CreateString(clean);
        free(clean);
    }
    if (bytes_out) {
        *bytes_out = cJSON_CreateArray();
        for (size_t i = 0; i < len; i++) cJSON_AddItemToArray(*bytes_out, cJSON_CreateNumber((unsigned char)p[i]));
    }
    return t ? t : cJSON_CreateString("");
}

static size_t codepoints(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

/* Logprobs of tokens [from, to) in the completions format. */
static cJSON *completion_logprobs(const mg_srv *s, const mg_job *j, int from, int to) {
    cJSON *o = cJSON_CreateObject();
    cJSON *tokens = cJSON_AddArrayToObject(o, "tokens");
    cJSON *lps = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(o, "top_logprobs");
    cJSON *offs = cJSON_AddArrayToObject(o, "text_offset");
    for (int i = from; i < to; i++) {
        const mg_token_logprobs *t = &j->lps[i];
        char *name = NULL;
        cJSON *tt = token_text(s, j->tokens[i], NULL);
        cJSON_AddItemToArray(tokens, tt);
        cJSON_AddItemToArray(lps, cJSON_CreateNumber(t->logprob));
        cJSON *top = cJSON_CreateObject();
        cJSON_AddNumberToObject(top, tt->valuestring, t->logprob);
        for (int k = 0; k < t->n_top && k < j->top_logprobs; k++) {
            cJSON *alt = token_text(s, t->top_ids[k], NULL);
            name = alt->valuestring;
            if (!cJSON_GetObjectItemCaseSensitive(top, name)) cJSON_AddNumberToObject(top, name, t->top_logprobs[k]);
            cJSON_Delete(alt);
        }
        cJSON_AddItemToArray(tops, top);
        size_t start = i == 0 ? 0 : j->tok_end[i - 1];
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)codepoints(j->text, start)));
    }
    return o;
}

/* Logprobs of tokens [from, to) in the chat format. */
static cJSON *chat_logprobs(const mg_srv *s, const mg_job *j, int from, int to) {
    cJSON *o = cJSON_CreateObject();
    cJSON *content = cJSON_AddArrayToObject(o, "content");
    for (int i = from; i < to; i++) {
        const mg_token_logprobs *t = &j->lps[i];
        cJSON *e = cJSON_CreateObject(), *bytes;
        cJSON_AddItemToObject(e, "token", token_text(s, j->tokens[i], &bytes));
        cJSON_AddNumberToObject(e, "logprob", t->logprob);
        cJSON_AddItemToObject(e, "bytes", bytes);
        cJSON *top = cJSON_AddArrayToObject(e, "top_logprobs");
        for (int k = 0; k < t->n_top && k < j->top_logprobs; k++) {
            cJSON *a = cJSON_CreateObject(), *ab;
            cJSON_AddItemToObject(a, "token", token_text(s, t->top_ids[k], &ab));
            cJSON_AddNumberToObject(a, "logprob", t->top_logprobs[k]);
            cJSON_AddItemToObject(a, "bytes", ab);
            cJSON_AddItemToArray(top, a);
        }
        cJSON_AddItemToArray(content, e);
    }
    return o;
}

static cJSON *envelope(const mg_srv *s, const mg_job *j, int chunk) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "object", j->chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)j->created);
    cJSON_AddStringToObject(o, "model", s->served_name);
    cJSON_AddStringToObject(o, "system_fingerprint", s->fingerprint);
    return o;
}

static cJSON *usage(const mg_job *j) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", j->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", j->n_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", j->n_prompt + j->n_tokens);
    return u;
}

static cJSON *determinism(const mg_job *j) {
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "mode", mg_mode_name(j->params.mode));
    cJSON_AddNumberToObject(d, "decode_steps", (double)j->counters.steps);
    cJSON_AddNumberToObject(d, "verified_steps", (double)j->counters.verified_steps);
    cJSON_AddNumberToObject(d, "repairs", (double)j->counters.repairs);
    cJSON_AddNumberToObject(d, "rolled_back_tokens", (double)j->counters.rolled_back);
    cJSON_AddNumberToObject(d, "verify_passes", (double)j->counters.verify_passes);
    return d;
}

static char *print(cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

char *mg_api_response_json(const mg_srv *s, const mg_job *j) {
    cJSON *o = envelope(s, j, 0);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (j->chat) {
        cJSON *m = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", j->text ? j->text : "");
    } else {
        cJSON_AddStringToObject(c, "text", j->text ? j->text : "");
    }
    if (j->logprobs)
        cJSON_AddItemToObject(c, "logprobs", j->chat ? chat_logprobs(s, j, 0, j->n_tokens)
                                                       : completion_logprobs(s, j, 0, j->n_tokens));
    else
        cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddStringToObject(c, "finish_reason", j->finish_reason ? j->finish_reason : "stop");
    cJSON_AddItemToArray(choices, c);
    cJSON_AddItemToObject(o, "usage", usage(j));
    cJSON_AddItemToObject(o, "determinism", determinism(j));
    return print(o);
}

static char *sse(cJSON *o) {
    char *body = print(o);
    if (!body) return NULL;
    size_t n = strlen(body);
    char *out = malloc(n + 9);
    if (out) {
        memcpy(out, "data: ", 6);
        memcpy(out + 6, body, n);
        memcpy(out + 6 + n, "\n\n", 3);
    }
    free(body);
    return out;
}

char *mg_api_chunk_sse(const mg_srv *s, const mg_job *j, size_t from, size_t to, int tok_from, int tok_to,
                       const char *finish, int first) {
    cJSON *o = envelope(s, j, 1);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    char *piece = malloc(to - from + 1);
    if (piece) {
        if (to > from) memcpy(piece, j->text + from, to - from);
        piece[to - from] = '\0';
    }
    if (j->chat) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (first) cJSON_AddStringToObject(d, "role", "assistant");
        if (first || to > from) cJSON_AddStringToObject(d, "content", piece ? piece : "");
    } else {
        cJSON_AddStringToObject(c, "text", piece ? piece : "");
    }
    free(piece);
    if (j->logprobs && tok_to > tok_from)
        cJSON_AddItemToObject(c, "logprobs", j->chat ? chat_logprobs(s, j, tok_from, tok_to)
                                                       : completion_logprobs(s, j, tok_from, tok_to));
    else
        cJSON_AddNullToObject(c, "logprobs");
    if (finish) cJSON_AddStringToObject(c, "finish_reason", finish);
    else cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(choices, c);
    if (j->include_usage) cJSON_AddNullToObject(o, "usage");
    if (finish) cJSON_AddItemToObject(o, "determinism", determinism(j));
    return sse(o);
}

char *mg_api_usage_sse(const mg_srv *s, const mg_job *j) {
    cJSON *o = envelope(s, j, 1);
    cJSON_AddArrayToObject(o, "choices");
    cJSON_AddItemToObject(o, "usage", usage(j));
    cJSON_AddItemToObject(o, "determinism", determinism(j));
    return sse(o);
}

char *mg_api_models_json(const mg_srv *s) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(o, "data");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", s->served_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)time(NULL));
    cJSON_AddStringToObject(m, "owned_by", "margingate");
    cJSON_AddStringToObject(m, "root", s->cfg.model_path);
    cJSON_AddNumberToObject(m, "max_model_len", s->max_model_len);
    cJSON *modes = cJSON_AddArrayToObject(m, "determinism_modes");
    for (int k = 0; k < MG_MODE_COUNT; k++) cJSON_AddItemToArray(modes, cJSON_CreateString(mg_mode_name((mg_mode)k)));
    cJSON_AddStringToObject(m, "default_determinism", mg_mode_name(s->cfg.default_mode));
    cJSON_AddItemToArray(data, m);
    return print(o);
}
