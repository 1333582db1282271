#include "utf8.h"

size_t mg_utf8_seq_len(const unsigned char *s, size_t n) {
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) len = 3, lo = 0xA0;
    else if (c >= 0xE1 && c <= 0xEC) len = 3;
    else if (c == 0xED) len = 3, hi = 0x9F;
    else if (c >= 0xEE && c <= 0xEF) len = 3;
    else if (c == 0xF0) len = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) len = 4, hi = 0x8F;
    else return 0;
    if (n < len) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

int mg_utf8_valid(const char *s, size_t n, size_t *bad_offset) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t l = mg_utf8_seq_len(u + i, n - i);
        if (!l) {
            if (bad_offset) *bad_offset = i;
            return 0;
        }
        i += l;
    }
    return 1;
}

/* Length of the maximal prefix of an invalid/incomplete sequence at s that
 * is still a valid start (what from_utf8_lossy replaces by one U+FFFD). */
static size_t valid_prefix(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) len = 3, lo = 0xA0;
    else if (c >= 0xE1 && c <= 0xEC) len = 3;
    else if (c == 0xED) len = 3, hi = 0x9F;
    else if (c >= 0xEE && c <= 0xEF) len = 3;
    else if (c == 0xF0) len = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) len = 4, hi = 0x8F;
    else return 1;
    size_t i = 1;
    if (i < n && i < len && s[i] >= lo && s[i] <= hi) {
        i++;
        while (i < n && i < len && (s[i] & 0xC0) == 0x80) i++;
    }
    return i;
}

size_t mg_utf8_emit_len(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t l = mg_utf8_seq_len(u + i, n - i);
        if (l) {
            i += l;
            continue;
        }
        size_t p = valid_prefix(u + i, n - i);
        if (i + p == n && u[i] >= 0xC2 && u[i] <= 0xF4) return i; /* may still complete: hold back */
        i += p;
    }
    return n;
}

size_t mg_utf8_lossy(const char *s, size_t n, char *out) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, o = 0;
    while (i < n) {
        size_t l = mg_utf8_seq_len(u + i, n - i);
        if (l) {
            for (size_t k = 0; k < l; k++) out[o++] = s[i + k];
            i += l;
        } else {
            out[o++] = (char)0xEF, out[o++] = (char)0xBF, out[o++] = (char)0xBD;
            i += valid_prefix(u + i, n - i);
        }
    }
    out[o] = '\0';
    return o;
}
