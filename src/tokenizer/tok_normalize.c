/* The normalizer chain of tokenizer.json: NFC, Prepend and Replace
 * (a Sequence is flattened into tok->norm at load time). */
#include <stdlib.h>

#include "tok_internal.h"

/* Applies one step to in[0..n), writing the result to out (emptied first). */
static mg_status norm_step(const mg_tok_norm_step *ns, const char *in, size_t n, mg_tok_buf *out) {
    out->len = 0;
    switch (ns->kind) {
    case MG_NORM_NFC: return mg_tok_nfc(in, n, out);
    case MG_NORM_PREPEND: {
        /* HF: prepends only to non-empty strings */
        mg_status st = n ? mg_tok_buf_put(out, ns->arg, ns->arg_len) : MG_OK;
        return st ? st : mg_tok_buf_put(out, in, n);
    }
    case MG_NORM_REPLACE: {
        mg_tok_range *r = NULL;
        size_t nr = 0;
        mg_status st = mg_tok_regex_ranges(ns->re, in, n, &r, &nr);
        for (size_t i = 0; !st && i < nr; i++)
            st = r[i].is_match ? mg_tok_buf_put(out, ns->arg, ns->arg_len)
                               : mg_tok_buf_put(out, in + r[i].start, r[i].end - r[i].start);
        free(r);
        return st;
    }
    }
    return mg_error_set(MG_ERR_UNSUPPORTED, "tokenizer: unknown normalizer step %d", ns->kind);
}

mg_status mg_tok_normalize(const mg_tokenizer *tok, const char *s, size_t n, mg_tok_buf *out) {
    if (tok->n_norm == 0) return mg_tok_buf_put(out, s, n);
    mg_tok_buf a = {0}, b = {0};
    mg_status st = mg_tok_buf_put(&a, s, n);
    for (int i = 0; !st && i < tok->n_norm; i++) {
        st = norm_step(&tok->norm[i], a.p, a.len, &b);
        mg_tok_buf t = a;
        a = b;
        b = t;
    }
    if (!st) st = mg_tok_buf_put(out, a.p, a.len);
    mg_tok_buf_free(&a);
    mg_tok_buf_free(&b);
    return st;
}
