#include "utf8.h"

/* For a lead byte c: the sequence length (0 if c cannot start a sequence)
 * and the allowed range [lo, hi] of the second byte (RFC 3629 table 3-7). */
static size_t lead_info(unsigned c, unsigned *lo, unsigned *hi) {
    *lo = 0x80, *hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c == 0xE0) return *lo = 0xA0, 3;
    if (c >= 0xE1 && c <= 0xEC) return 3;
    if (c == 0xED) return *hi = 0x9F, 3;
    if (c >= 0xEE && c <= 0xEF) return 3;
    if (c == 0xF0) return *lo = 0x90, 4;
    if (c >= 0xF1 && c <= 0xF3) return 4;
    if (c == 0xF4) return *hi = 0x8F, 4;
    return 0;
}

size_t mg_utf8_seq_len(const unsigned char *s, size_t n) {
    if (n == 0) return 0;
    unsigned lo, hi;
    size_t len = lead_info(s[0], &lo, &hi);
    if (len <= 1 || n < len) return len == 1 ? 1 : 0;
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
    unsigned lo, hi;
    size_t len = lead_info(s[0], &lo, &hi);
    if (len <= 1) return 1;
    size_t i = 1;
    if (i < n && s[i] >= lo && s[i] <= hi) {
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
