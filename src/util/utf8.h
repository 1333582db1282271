/* UTF-8 validation helpers (RFC 3629: no overlongs, no surrogates, <= U+10FFFF). */
#ifndef MG_UTF8_H
#define MG_UTF8_H

#include <stddef.h>

/* Length of the valid UTF-8 sequence starting at s (1..4), or 0 if the bytes
 * at s (n available) are not a valid complete sequence. */
size_t mg_utf8_seq_len(const unsigned char *s, size_t n);

/* Returns 1 if s[0..n) is valid UTF-8, else 0 and *bad_offset (may be NULL)
 * is the offset of the first invalid byte. */
int mg_utf8_valid(const char *s, size_t n, size_t *bad_offset);

/* For streaming output: the length of the longest prefix of s[0..n) that
 * does not end inside an incomplete (but so far valid) sequence. Invalid
 * bytes are counted as complete so they are emitted (as U+FFFD by
 * mg_utf8_lossy) rather than held forever. */
size_t mg_utf8_emit_len(const char *s, size_t n);

/* Copies s[0..n) to out replacing each invalid sequence by U+FFFD (EF BF BD)
 * as Rust's String::from_utf8_lossy does. out must hold 3 * n + 1 bytes;
 * returns the bytes written (NUL-terminated). */
size_t mg_utf8_lossy(const char *s, size_t n, char *out);

#endif
