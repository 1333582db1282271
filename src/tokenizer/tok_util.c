/* Growable buffers and UTF-8 helpers for the tokenizer. */
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

/* Grows b so that `need` more bytes (+ NUL) fit. Returns MG_ERR_OOM on failure. */
static mg_status buf_reserve(mg_tok_buf *b, size_t need) {
    if (b->len + need + 1 <= b->cap) return MG_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + need + 1) {
        if (cap > SIZE_MAX / 2) return mg_error_set(MG_ERR_OOM, "tokenizer: buffer too large");
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (%zu bytes)", cap);
    b->p = p;
    b->cap = cap;
    return MG_OK;
}

mg_status mg_tok_buf_put(mg_tok_buf *b, const void *s, size_t n) {
    mg_status st = buf_reserve(b, n);
    if (st) return st;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return MG_OK;
}

mg_status mg_tok_buf_put_cp(mg_tok_buf *b, uint32_t cp) {
    unsigned char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (unsigned char)(0xC0 | (cp >> 6));
        u[1] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (unsigned char)(0xE0 | (cp >> 12));
        u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (unsigned char)(0xF0 | (cp >> 18));
        u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return mg_tok_buf_put(b, u, n);
}

void mg_tok_buf_free(mg_tok_buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

mg_status mg_tok_ids_push(mg_tok_ids *a, int32_t id) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (%zu ids)", cap);
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return MG_OK;
}

size_t mg_tok_utf8_next(const unsigned char *s, size_t n, uint32_t *cp, size_t *bad) {
    size_t dummy;
    if (!bad) bad = &dummy;
    *bad = 1;
    if (n == 0) return 0;
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t w;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) w = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        w = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        w = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 0; /* 80..C1, F5..FF: error_len 1 */
    for (size_t i = 1; i < w; i++) {
        if (i >= n) { /* truncated at the end: the rest is one subpart */
            *bad = n;
            return 0;
        }
        unsigned char lo_i = i == 1 ? lo : 0x80, hi_i = i == 1 ? hi : 0xBF;
        if (s[i] < lo_i || s[i] > hi_i) {
            *bad = i;
            return 0;
        }
    }
    uint32_t v = c & (w == 2 ? 0x1F : w == 3 ? 0x0F : 0x07);
    for (size_t i = 1; i < w; i++) v = (v << 6) | (s[i] & 0x3F);
    *cp = v;
    return w;
}

size_t mg_tok_utf8_check(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = mg_tok_utf8_next(u + i, n - i, &cp, NULL);
        if (!k) return i;
        i += k;
    }
    return n;
}

mg_status mg_tok_utf8_lossy(mg_tok_buf *out, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0; /* run: start of the pending valid bytes */
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t bad;
        size_t k = mg_tok_utf8_next(u + i, n - i, &cp, &bad);
        if (k) {
            i += k;
            continue;
        }
        mg_status st = mg_tok_buf_put(out, s + run, i - run);
        if (!st) st = mg_tok_buf_put(out, "\xEF\xBF\xBD", 3);
        if (st) return st;
        i += bad;
        run = i;
    }
    return mg_tok_buf_put(out, s + run, n - run);
}

int mg_tok_is_white_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

/* GPT-2 bytes_to_unicode: printable Latin-1 bytes stand for themselves; the
 * other 68 (0x00-0x20, 0x7F-0xA0, 0xAD) map to U+0100.. in byte order. */
uint32_t mg_tok_byte_to_cp(uint8_t b) {
    if (b <= 0x20) return 0x100 + b;
    if (b >= 0x7F && b <= 0xA0) return 0x100 + 33 + (b - 0x7F);
    if (b == 0xAD) return 0x100 + 67;
    return b;
}

int mg_tok_cp_to_byte(uint32_t cp) {
    if (cp < 0x100) {
        if (cp <= 0x20 || (cp >= 0x7F && cp <= 0xA0) || cp == 0xAD) return -1;
        return (int)cp;
    }
    uint32_t k = cp - 0x100;
    if (k <= 32) return (int)k;
    if (k <= 66) return (int)(0x7F + k - 33);
    if (k == 67) return 0xAD;
    return -1;
}
