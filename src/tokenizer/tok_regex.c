/* PCRE2 wrapper for the tokenizer's Split pre-tokenizer / Replace patterns.
 * HF tokenizers uses Oniguruma; PCRE2 with PCRE2_UTF|PCRE2_UCP agrees on the
 * patterns used by Llama 3 / Qwen2 / GPT-2 except that PCRE2's \s lacks
 * U+0085 (NEL), which Oniguruma includes; the pattern is rewritten for that. */
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

/* Rewrites \s and \S so they match exactly Unicode White_Space. Returns a
 * malloc'd NUL-terminated pattern or NULL on OOM. */
static char *rewrite_spaces(const char *pat, size_t len) {
    mg_tok_buf b = {0};
    int in_class = 0;
    for (size_t i = 0; i < len; i++) {
        char c = pat[i];
        mg_status st = MG_OK;
        if (c == '\\' && i + 1 < len) {
            char e = pat[i + 1];
            if (e == 's') st = mg_tok_buf_put(&b, in_class ? "\\s\\x{85}" : "[\\s\\x{85}]", in_class ? 8 : 10);
            else if (e == 'S' && !in_class) st = mg_tok_buf_put(&b, "[^\\s\\x{85}]", 11);
            else st = mg_tok_buf_put(&b, pat + i, 2);
            i++;
        } else {
            if (!in_class && c == '[') {
                in_class = 1;
                st = mg_tok_buf_put(&b, &c, 1);
                /* a ']' right after '[' or '[^' is a literal */
                if (i + 1 < len && pat[i + 1] == '^') st = st ? st : mg_tok_buf_put(&b, pat + ++i, 1);
                if (i + 1 < len && pat[i + 1] == ']') st = st ? st : mg_tok_buf_put(&b, pat + ++i, 1);
            } else if (in_class && c == '[' && i + 1 < len && pat[i + 1] == ':') {
                const char *end = strstr(pat + i, ":]"); /* POSIX class [:alpha:] */
                size_t k = end && (size_t)(end - pat) < len ? (size_t)(end - pat) + 2 - i : 1;
                st = mg_tok_buf_put(&b, pat + i, k);
                i += k - 1;
            } else {
                if (in_class && c == ']') in_class = 0;
                st = mg_tok_buf_put(&b, &c, 1);
            }
        }
        if (st) {
            mg_tok_buf_free(&b);
            return NULL;
        }
    }
    if (!b.p && mg_tok_buf_put(&b, "", 0)) return NULL;
    return b.p;
}

mg_status mg_tok_regex_compile(const char *pat, size_t len, int literal, pcre2_code **out) {
    int err;
    PCRE2_SIZE erroff;
    pcre2_code *re;
    if (literal) {
        re = pcre2_compile((PCRE2_SPTR)pat, len, PCRE2_UTF | PCRE2_LITERAL, &err, &erroff, NULL);
    } else {
        char *p = rewrite_spaces(pat, len);
        if (!p) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (regex)");
        re = pcre2_compile((PCRE2_SPTR)p, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &erroff, NULL);
        free(p);
    }
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return mg_error_set(MG_ERR_FORMAT, "tokenizer: bad regex '%.*s': %s", (int)(len > 200 ? 200 : len), pat,
                            (const char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional speed-up; the interpreter is the fallback */
    *out = re;
    return MG_OK;
}

/* Appends a range to *v (size *n, capacity *cap). */
static mg_status push_range(mg_tok_range **v, size_t *n, size_t *cap, size_t a, size_t b, int m) {
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        mg_tok_range *p = realloc(*v, c * sizeof *p);
        if (!p) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (regex ranges)");
        *v = p;
        *cap = c;
    }
    (*v)[(*n)++] = (mg_tok_range){a, b, m};
    return MG_OK;
}

mg_status mg_tok_regex_ranges(const pcre2_code *re, const char *s, size_t n, mg_tok_range **out,
                              size_t *n_out) {
    mg_tok_range *v = NULL;
    size_t nv = 0, cap = 0;
    mg_status st = MG_OK;
    if (n == 0) {
        st = push_range(&v, &nv, &cap, 0, 0, 0);
        if (st) return st;
        *out = v;
        *n_out = nv;
        return MG_OK;
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (regex match data)");
    size_t prev = 0, off = 0;
    while (off <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            st = mg_error_set(MG_ERR_ARG, "tokenizer: regex match failed: %s", (const char *)msg);
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { /* empty match: step over one character */
            if (ms >= n) break;
            off = ms + 1;
            while (off < n && ((unsigned char)s[off] & 0xC0) == 0x80) off++;
            continue;
        }
        if (prev != ms) st = push_range(&v, &nv, &cap, prev, ms, 0);
        if (!st) st = push_range(&v, &nv, &cap, ms, me, 1);
        if (st) break;
        prev = off = me;
    }
    if (!st && prev != n) st = push_range(&v, &nv, &cap, prev, n, 0);
    pcre2_match_data_free(md);
    if (st) {
        free(v);
        return st;
    }
    *out = v;
    *n_out = nv;
    return MG_OK;
}
