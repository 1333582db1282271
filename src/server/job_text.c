/* Incremental detokenization of a job's visible tokens, with stop strings.
 *
 * Token pieces (mg_tokenizer_piece, special tokens contribute nothing) are
 * appended to `raw`; the longest prefix that does not end inside an
 * incomplete UTF-8 sequence is decoded into `text`. Stop strings are
 * searched in `text`; a match cuts the text before it. While the end of the
 * text could still be the start of a stop string, those bytes are held back
 * from streams (`text_ready`), so a stop string never reaches a client. */
#include <stdlib.h>
#include <string.h>

#include "../util/utf8.h"
#include "server_internal.h"

static int grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    char *b = realloc(*buf, c);
    if (!b) return -1;
    *buf = b;
    *cap = c;
    return 0;
}

/* Decodes raw[0..n) (lossy) onto text and drops it from raw. */
static int decode_raw(mg_job *j, size_t n) {
    if (n == 0) return 0;
    if (grow(&j->text, &j->text_cap, j->text_len + 3 * n + 1)) return -1;
    j->text_len += mg_utf8_lossy(j->raw, n, j->text + j->text_len);
    memmove(j->raw, j->raw + n, j->raw_len - n);
    j->raw_len -= n;
    return 0;
}

/* Searches stop strings in the new part of the text; on a match cuts the
 * text and returns 1. Otherwise updates text_ready and returns 0. */
static int check_stops(mg_job *j, int final) {
    if (j->n_stop == 0 || !j->text) {
        j->text_ready = j->text_len;
        return 0;
    }
    size_t maxlen = 0;
    for (int i = 0; i < j->n_stop; i++) {
        size_t l = strlen(j->stop[i]);
        if (l > maxlen) maxlen = l;
    }
    size_t from = j->stop_scan >= maxlen ? j->stop_scan - (maxlen - 1) : 0;
    size_t best = (size_t)-1;
    for (int i = 0; i < j->n_stop; i++) {
        const char *p = memmem(j->text + from, j->text_len - from, j->stop[i], strlen(j->stop[i]));
        if (p && (size_t)(p - j->text) < best) best = (size_t)(p - j->text);
    }
    j->stop_scan = j->text_len;
    if (best != (size_t)-1) {
        j->text_len = best;
        j->text[best] = '\0';
        j->text_ready = best;
        for (int i = 0; i < j->n_tokens; i++)
            if (j->tok_end[i] > best) j->tok_end[i] = best;
        j->finish_reason = "stop";
        return 1;
    }
    size_t hold = 0;
    if (!final)
        for (int i = 0; i < j->n_stop; i++) {
            size_t l = strlen(j->stop[i]);
            for (size_t k = l - 1 < j->text_len ? l - 1 : j->text_len; k > hold; k--)
                if (!memcmp(j->text + j->text_len - k, j->stop[i], k)) {
                    hold = k;
                    break;
                }
        }
    j->text_ready = j->text_len - hold;
    return 0;
}

int mg_job_take_token(mg_job *j, const mg_tokenizer *tok, int32_t t, const mg_token_logprobs *lp) {
    if (j->n_tokens == j->cap_tokens) {
        int cap = j->cap_tokens ? 2 * j->cap_tokens : 32;
        int32_t *tk = realloc(j->tokens, (size_t)cap * sizeof *tk);
        if (tk) j->tokens = tk;
        size_t *te = realloc(j->tok_end, (size_t)cap * sizeof *te);
        if (te) j->tok_end = te;
        if (!tk || !te) return -1;
        if (j->logprobs) {
            mg_token_logprobs *l = realloc(j->lps, (size_t)cap * sizeof *l);
            if (!l) return -1;
            j->lps = l;
        }
        j->cap_tokens = cap;
    }
    int i = j->n_tokens++;
    j->tokens[i] = t;
    if (j->logprobs) {
        if (lp) j->lps[i] = *lp;
        else memset(&j->lps[i], 0, sizeof j->lps[i]);
    }
    size_t len = 0;
    const char *piece = mg_tokenizer_is_special(tok, t) ? "" : mg_tokenizer_piece(tok, t, j->prev, &len);
    j->prev = t;
    if (piece && len) {
        if (grow(&j->raw, &j->raw_cap, j->raw_len + len)) return -1;
        memcpy(j->raw + j->raw_len, piece, len);
        j->raw_len += len;
    }
    if (decode_raw(j, mg_utf8_emit_len(j->raw, j->raw_len))) return -1;
    j->tok_end[i] = j->text_len;
    return check_stops(j, 0);
}

void mg_job_flush_text(mg_job *j) {
    if (decode_raw(j, j->raw_len) == 0 && j->n_tokens > 0) j->tok_end[j->n_tokens - 1] = j->text_len;
    check_stops(j, 1);
    j->text_ready = j->text_len;
}

int mg_job_tokens_within(const mg_job *j, size_t limit) {
    int n = 0;
    while (n < j->n_tokens && j->tok_end[n] <= limit) n++;
    return n;
}
