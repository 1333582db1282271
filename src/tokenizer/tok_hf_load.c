/* Loading a Hugging Face tokenizer.json (model BPE) into an mg_tokenizer:
 * vocab, merges, added tokens, normalizer / pre-tokenizer / decoder chains
 * and the post-processor's template. Anything outside the supported subset
 * is reported as MG_ERR_UNSUPPORTED naming the component. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/file.h"
#include "tok_internal.h"

#define MG_TOK_MAX_ID (1 << 22) /* ids above this are treated as a malformed file */

static const char GPT2_REGEX[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Returns the string value of obj[key], or NULL when absent, null or not a string. */
static const char *jstr(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Returns obj[key] as a bool (def when absent or null). */
static int jbool(const cJSON *obj, const char *key, int def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return def;
}

/* Returns a malloc'd copy of s or NULL. */
static char *dupstr(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* Reads a Split / Replace pattern {"String": s} or {"Regex": r} and compiles it. */
static mg_status parse_pattern(const cJSON *pat, const char *what, pcre2_code **re) {
    const char *s = jstr(pat, "String");
    if (s) return mg_tok_regex_compile(s, strlen(s), 1, re);
    s = jstr(pat, "Regex");
    if (s) return mg_tok_regex_compile(s, strlen(s), 0, re);
    return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: %s pattern must be {\"String\"} or {\"Regex\"}", what);
}

/* ---- normalizer ---- */

/* Appends the normalizer n (Sequence flattened) to tok->norm. */
static mg_status add_norm(mg_tokenizer *tok, const cJSON *n) {
    const char *type = jstr(n, "type");
    if (!type) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: normalizer without a type");
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "normalizers"), *c;
        if (!cJSON_IsArray(arr)) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: Sequence normalizer without normalizers");
        cJSON_ArrayForEach(c, arr) {
            mg_status st = add_norm(tok, c);
            if (st) return st;
        }
        return MG_OK;
    }
    mg_tok_norm_step ns = {0};
    if (!strcmp(type, "NFC")) ns.kind = MG_NORM_NFC;
    else if (!strcmp(type, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (!p) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: Prepend normalizer without prepend");
        ns.kind = MG_NORM_PREPEND;
        ns.arg = dupstr(p);
        if (!ns.arg) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
        ns.arg_len = strlen(p);
    } else if (!strcmp(type, "Replace")) {
        const char *c = jstr(n, "content");
        if (!c) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: Replace normalizer without content");
        ns.kind = MG_NORM_REPLACE;
        mg_status st = parse_pattern(cJSON_GetObjectItemCaseSensitive(n, "pattern"), "Replace", &ns.re);
        if (st) return st;
        ns.arg = dupstr(c);
        ns.arg_len = strlen(c);
        if (!ns.arg) {
            pcre2_code_free(ns.re);
            return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
        }
    } else
        return mg_error_set(MG_ERR_UNSUPPORTED, "tokenizer.json: normalizer type '%s' is not supported", type);
    mg_tok_norm_step *v = realloc(tok->norm, (tok->n_norm + 1) * sizeof *v);
    if (!v) {
        free(ns.arg);
        pcre2_code_free(ns.re);
        return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
    }
    tok->norm = v;
    tok->norm[tok->n_norm++] = ns;
    return MG_OK;
}

/* ---- pre-tokenizer ---- */

/* Appends a pre-tokenizer step (takes ownership of ps.re). */
static mg_status push_pre(mg_tokenizer *tok, mg_tok_pre_step ps) {
    mg_tok_pre_step *v = realloc(tok->pre, (tok->n_pre + 1) * sizeof *v);
    if (!v) {
        pcre2_code_free(ps.re);
        return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
    }
    tok->pre = v;
    tok->pre[tok->n_pre++] = ps;
    return MG_OK;
}

/* Reads Metaspace's replacement / prepend_scheme (or legacy add_prefix_space). */
static mg_status metaspace_opts(const cJSON *n, char *repl, size_t *repl_len, int *scheme) {
    const char *r = jstr(n, "replacement");
    if (!r) r = "\xE2\x96\x81";
    if (strlen(r) >= 8) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: Metaspace replacement too long");
    strcpy(repl, r);
    *repl_len = strlen(r);
    const char *ps = jstr(n, "prepend_scheme");
    if (ps) {
        if (!strcmp(ps, "always")) *scheme = MG_PREPEND_ALWAYS;
        else if (!strcmp(ps, "first")) *scheme = MG_PREPEND_FIRST;
        else if (!strcmp(ps, "never")) *scheme = MG_PREPEND_NEVER;
        else return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: Metaspace prepend_scheme '%s' unknown", ps);
    } else
        *scheme = jbool(n, "add_prefix_space", 1) ? MG_PREPEND_ALWAYS : MG_PREPEND_NEVER;
    return MG_OK;
}

/* Appends the pre-tokenizer n (Sequence flattened) to tok->pre; sets
 * tok->byte_level for ByteLevel, which must come last. */
static mg_status add_pre(mg_tokenizer *tok, const cJSON *n) {
    const char *type = jstr(n, "type");
    if (!type) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: pre_tokenizer without a type");
    if (tok->byte_level)
        return mg_error_set(MG_ERR_UNSUPPORTED, "tokenizer.json: pre-tokenizer '%s' after ByteLevel is not supported", type);
    mg_tok_pre_step ps = {0};
    mg_status st;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "pretokenizers"), *c;
        if (!cJSON_IsArray(arr)) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: Sequence pre_tokenizer without pretokenizers");
        cJSON_ArrayForEach(c, arr) {
            st = add_pre(tok, c);
            if (st) return st;
        }
        return MG_OK;
    } else if (!strcmp(type, "Split")) {
        const char *b = jstr(n, "behavior");
        ps.kind = MG_PRE_SPLIT;
        if (!b) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: Split without behavior");
        if (!strcmp(b, "Isolated")) ps.behavior = MG_SPLIT_ISOLATED;
        else if (!strcmp(b, "Removed")) ps.behavior = MG_SPLIT_REMOVED;
        else if (!strcmp(b, "MergedWithPrevious")) ps.behavior = MG_SPLIT_MERGED_PREV;
        else if (!strcmp(b, "MergedWithNext")) ps.behavior = MG_SPLIT_MERGED_NEXT;
        else if (!strcmp(b, "Contiguous")) ps.behavior = MG_SPLIT_CONTIGUOUS;
        else return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: Split behavior '%s' unknown", b);
        ps.invert = jbool(n, "invert", 0);
        st = parse_pattern(cJSON_GetObjectItemCaseSensitive(n, "pattern"), "Split", &ps.re);
        if (st) return st;
    } else if (!strcmp(type, "ByteLevel")) {
        ps.kind = MG_PRE_BYTELEVEL;
        ps.add_prefix_space = jbool(n, "add_prefix_space", 1);
        if (jbool(n, "use_regex", 1)) {
            st = mg_tok_regex_compile(GPT2_REGEX, strlen(GPT2_REGEX), 0, &ps.re);
            if (st) return st;
        }
        tok->byte_level = 1;
    } else if (!strcmp(type, "Metaspace")) {
        ps.kind = MG_PRE_METASPACE;
        st = metaspace_opts(n, ps.repl, &ps.repl_len, &ps.prepend_scheme);
        if (st) return st;
        ps.split = jbool(n, "split", 1);
        if (ps.split) {
            st = mg_tok_regex_compile(ps.repl, ps.repl_len, 1, &ps.re);
            if (st) return st;
        }
    } else
        return mg_error_set(MG_ERR_UNSUPPORTED, "tokenizer.json: pre_tokenizer type '%s' is not supported", type);
    return push_pre(tok, ps);
}

/* ---- decoder ---- */

/* Frees a decoder step's strings. */
static void dec_step_free(mg_tok_dec_step *d) {
    free(d->pat);
    free(d->content);
}

/* Appends the decoder n (Sequence flattened) to tok->dec. */
static mg_status add_dec(mg_tokenizer *tok, const cJSON *n) {
    const char *type = jstr(n, "type");
    if (!type) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: decoder without a type");
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "decoders"), *c;
        if (!cJSON_IsArray(arr)) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: Sequence decoder without decoders");
        cJSON_ArrayForEach(c, arr) {
            mg_status st = add_dec(tok, c);
            if (st) return st;
        }
        return MG_OK;
    }
    mg_tok_dec_step d = {0};
    if (!strcmp(type, "ByteLevel")) d.kind = MG_DEC_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) d.kind = MG_DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse")) d.kind = MG_DEC_FUSE;
    else if (!strcmp(type, "Replace")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
        const char *p = jstr(pat, "String"), *c = jstr(n, "content");
        if (!p || !c) {
            if (jstr(pat, "Regex")) return mg_error_set(MG_ERR_UNSUPPORTED, "tokenizer.json: Replace decoder with a Regex pattern is not supported");
            return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: Replace decoder needs pattern.String and content");
        }
        d.kind = MG_DEC_REPLACE;
        d.pat = dupstr(p);
        d.content = dupstr(c);
        d.pat_len = strlen(p);
        d.content_len = strlen(c);
    } else if (!strcmp(type, "Strip")) {
        const char *c = jstr(n, "content");
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(n, "start"), *b = cJSON_GetObjectItemCaseSensitive(n, "stop");
        if (!c || !cJSON_IsNumber(a) || !cJSON_IsNumber(b) || a->valuedouble < 0 || b->valuedouble < 0)
            return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: Strip decoder needs content, start, stop");
        d.kind = MG_DEC_STRIP;
        d.content = dupstr(c);
        d.content_len = strlen(c);
        d.start = a->valuedouble > 1e6 ? 1000000 : (int)a->valuedouble;
        d.stop = b->valuedouble > 1e6 ? 1000000 : (int)b->valuedouble;
    } else if (!strcmp(type, "Metaspace")) {
        int scheme;
        d.kind = MG_DEC_METASPACE;
        mg_status st = metaspace_opts(n, d.repl, &d.repl_len, &scheme);
        if (st) return st;
        d.prepend = scheme != MG_PREPEND_NEVER;
    } else
        return mg_error_set(MG_ERR_UNSUPPORTED, "tokenizer.json: decoder type '%s' is not supported", type);
    if ((d.kind == MG_DEC_REPLACE && (!d.pat || !d.content)) || (d.kind == MG_DEC_STRIP && !d.content)) {
        dec_step_free(&d);
        return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
    }
    mg_tok_dec_step *v = realloc(tok->dec, (tok->n_dec + 1) * sizeof *v);
    if (!v) {
        dec_step_free(&d);
        return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
    }
    tok->dec = v;
    tok->dec[tok->n_dec++] = d;
    return MG_OK;
}

/* ---- post-processor ---- */

/* Appends ids to *v (size *n). */
static mg_status push_ids(int32_t **v, int *n, const int32_t *ids, int k) {
    int32_t *p = realloc(*v, (size_t)(*n + k + 1) * sizeof *p);
    if (!p) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
    memcpy(p + *n, ids, (size_t)k * sizeof *p);
    *v = p;
    *n += k;
    return MG_OK;
}

/* Collects the ids a post-processor puts before and after the sequence
 * (TemplateProcessing's single template, Bert/Roberta cls/sep). */
static mg_status add_post(mg_tokenizer *tok, const cJSON *n) {
    const char *type = jstr(n, "type");
    if (!type) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: post_processor without a type");
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "processors"), *c;
        if (!cJSON_IsArray(arr)) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: Sequence post_processor without processors");
        cJSON_ArrayForEach(c, arr) {
            mg_status st = add_post(tok, c);
            if (st) return st;
        }
        return MG_OK;
    }
    if (!strcmp(type, "ByteLevel")) return MG_OK; /* only adjusts offsets */
    if (!strcmp(type, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(n, "single"), *specials = cJSON_GetObjectItemCaseSensitive(n, "special_tokens"), *it;
        if (!cJSON_IsArray(single)) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: TemplateProcessing without single");
        int seen_a = 0;
        cJSON_ArrayForEach(it, single) {
            const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
            if (cJSON_GetObjectItemCaseSensitive(it, "Sequence")) {
                seen_a = 1;
                continue;
            }
            const char *name = jstr(sp, "id");
            if (!name) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: TemplateProcessing piece is neither Sequence nor SpecialToken");
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(specials, name), "ids"), *x;
            if (!cJSON_IsArray(ids)) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: TemplateProcessing special token '%s' has no ids", name);
            cJSON_ArrayForEach(x, ids) {
                if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble >= tok->n_vocab)
                    return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: TemplateProcessing id for '%s' out of range", name);
                int32_t id = (int32_t)x->valuedouble;
                mg_status st = seen_a ? push_ids(&tok->post_suffix, &tok->n_post_suffix, &id, 1)
                                      : push_ids(&tok->post_prefix, &tok->n_post_prefix, &id, 1);
                if (st) return st;
            }
        }
        return MG_OK;
    }
    if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(n, "cls"), *sep = cJSON_GetObjectItemCaseSensitive(n, "sep");
        const cJSON *ci = cJSON_GetArrayItem(cls, 1), *si = cJSON_GetArrayItem(sep, 1);
        if (!cJSON_IsNumber(ci) || !cJSON_IsNumber(si) || ci->valuedouble < 0 || si->valuedouble < 0 ||
            ci->valuedouble >= tok->n_vocab || si->valuedouble >= tok->n_vocab)
            return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: %s needs cls and sep [token, id]", type);
        int32_t c = (int32_t)ci->valuedouble, s = (int32_t)si->valuedouble;
        mg_status st = push_ids(&tok->post_prefix, &tok->n_post_prefix, &c, 1);
        return st ? st : push_ids(&tok->post_suffix, &tok->n_post_suffix, &s, 1);
    }
    return mg_error_set(MG_ERR_UNSUPPORTED, "tokenizer.json: post_processor type '%s' is not supported", type);
}

/* ---- model and vocab ---- */

/* Orders added tokens by first byte, then longest first. */
static int added_cmp(const void *a, const void *b) {
    const mg_tok_added *x = a, *y = b;
    unsigned char cx = x->len ? (unsigned char)x->content[0] : 0, cy = y->len ? (unsigned char)y->content[0] : 0;
    if (cx != cy) return cx < cy ? -1 : 1;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Reads a non-negative integer id within MG_TOK_MAX_ID. */
static int get_id(const cJSON *v, int32_t *id) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= MG_TOK_MAX_ID || v->valuedouble != (double)(int32_t)v->valuedouble)
        return 0;
    *id = (int32_t)v->valuedouble;
    return 1;
}

/* Reads model.vocab and added_tokens: token strings, maps, special flags,
 * the added-token match buckets. */
static mg_status load_vocab(mg_tokenizer *tok, const cJSON *model, const cJSON *added) {
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab"), *e;
    if (!cJSON_IsObject(vocab)) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: model.vocab missing or not an object");
    size_t bytes = 0;
    int32_t max_id = -1, id;
    cJSON_ArrayForEach(e, vocab) {
        if (!get_id(e, &id)) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: vocab entry '%.60s' has a bad id", e->string);
        if (id > max_id) max_id = id;
        bytes += strlen(e->string) + 1;
    }
    int n_added = 0;
    if (added && !cJSON_IsNull(added)) {
        if (!cJSON_IsArray(added)) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: added_tokens is not an array");
        cJSON_ArrayForEach(e, added) {
            const char *c = jstr(e, "content");
            if (!c || !get_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id))
                return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: added token needs content and a valid id");
            if (id > max_id) max_id = id;
            bytes += strlen(c) + 1;
            n_added++;
        }
    }
    if (max_id < 0) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: empty vocab");
    tok->n_vocab = max_id + 1;
    size_t nv = (size_t)tok->n_vocab;
    tok->arena = malloc(bytes + 1);
    tok->tok_str = calloc(nv, sizeof *tok->tok_str);
    tok->tok_len = calloc(nv, sizeof *tok->tok_len);
    tok->special = calloc(nv, 1);
    tok->added = calloc((size_t)n_added + 1, sizeof *tok->added);
    if (!tok->arena || !tok->tok_str || !tok->tok_len || !tok->special || !tok->added)
        return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory (vocab of %zu)", nv);
    char *w = tok->arena;
    mg_status st;
    cJSON_ArrayForEach(e, vocab) {
        size_t n = strlen(e->string);
        memcpy(w, e->string, n + 1);
        id = (int32_t)e->valuedouble;
        tok->tok_str[id] = w;
        tok->tok_len[id] = (uint32_t)n;
        if ((st = mg_tok_strmap_put(&tok->vocab, w, n, id))) return st;
        w += n + 1;
    }
    if (n_added) {
        cJSON_ArrayForEach(e, added) {
            const char *c = jstr(e, "content");
            size_t n = strlen(c);
            memcpy(w, c, n + 1);
            id = (int32_t)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
            tok->tok_str[id] = w; /* HF: an added token's content wins for id_to_token */
            tok->tok_len[id] = (uint32_t)n;
            mg_tok_added *a = &tok->added[tok->n_added++];
            *a = (mg_tok_added){w, n, id, (uint8_t)jbool(e, "special", 0), (uint8_t)jbool(e, "lstrip", 0),
                                (uint8_t)jbool(e, "rstrip", 0), (uint8_t)jbool(e, "single_word", 0),
                                (uint8_t)jbool(e, "normalized", !jbool(e, "special", 0))};
            tok->special[id] = a->special;
            if ((st = mg_tok_strmap_put(&tok->added_map, w, n, id))) return st;
            w += n + 1;
        }
    }
    /* drop empty added tokens from matching, sort, bucket by first byte */
    int k = 0;
    for (int i = 0; i < tok->n_added; i++)
        if (tok->added[i].len) tok->added[k++] = tok->added[i];
    tok->n_added = k;
    qsort(tok->added, (size_t)k, sizeof *tok->added, added_cmp);
    for (int b = 0, i = 0; b <= 256; b++) {
        while (i < k && (unsigned char)tok->added[i].content[0] < b) i++;
        tok->added_bucket[b] = i;
    }
    return MG_OK;
}

/* Reads model.merges ("a b" strings or ["a", "b"] pairs) into the merge map;
 * a merge whose parts or result are not in the vocab is MG_ERR_FORMAT. */
static mg_status load_merges(mg_tokenizer *tok, const cJSON *model) {
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges"), *e;
    if (!merges || cJSON_IsNull(merges)) return mg_tok_pairmap_init(&tok->merges, 0);
    if (!cJSON_IsArray(merges)) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: model.merges is not an array");
    mg_status st = mg_tok_pairmap_init(&tok->merges, (size_t)cJSON_GetArraySize(merges));
    if (st) return st;
    mg_tok_buf cat = {0};
    int32_t rank = 0;
    size_t pre_len = tok->subword_prefix ? strlen(tok->subword_prefix) : 0;
    cJSON_ArrayForEach(e, merges) {
        const char *a, *b;
        size_t alen, blen;
        if (cJSON_IsString(e)) { /* legacy "a b" */
            const char *sp = strchr(e->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                st = mg_error_set(MG_ERR_FORMAT, "tokenizer.json: bad merge #%d '%.60s' (want \"a b\")", rank + 1, e->valuestring);
                break;
            }
            a = e->valuestring;
            alen = (size_t)(sp - a);
            b = sp + 1;
            blen = strlen(b);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            a = cJSON_GetArrayItem(e, 0)->valuestring;
            b = cJSON_GetArrayItem(e, 1)->valuestring;
            alen = strlen(a);
            blen = strlen(b);
        } else {
            st = mg_error_set(MG_ERR_FORMAT, "tokenizer.json: bad merge #%d (want \"a b\" or [\"a\", \"b\"])", rank + 1);
            break;
        }
        int32_t ia = mg_tok_strmap_get(&tok->vocab, a, alen), ib = mg_tok_strmap_get(&tok->vocab, b, blen);
        /* HF: the merged token drops b's continuing-subword prefix */
        size_t skip = pre_len && blen >= pre_len && !memcmp(b, tok->subword_prefix, pre_len) ? pre_len : 0;
        cat.len = 0;
        if ((st = mg_tok_buf_put(&cat, a, alen)) || (st = mg_tok_buf_put(&cat, b + skip, blen - skip))) break;
        int32_t in = mg_tok_strmap_get(&tok->vocab, cat.p, cat.len);
        if (ia < 0 || ib < 0 || in < 0) {
            st = mg_error_set(MG_ERR_FORMAT, "tokenizer.json: merge #%d '%.*s' + '%.*s' uses a token not in the vocab",
                              rank + 1, (int)(alen > 60 ? 60 : alen), a, (int)(blen > 60 ? 60 : blen), b);
            break;
        }
        if ((st = mg_tok_pairmap_put(&tok->merges, ia, ib, rank, in))) break;
        rank++;
    }
    mg_tok_buf_free(&cat);
    return st;
}

/* Reads the BPE model section (options, vocab, merges). */
static mg_status load_model(mg_tokenizer *tok, const cJSON *root) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: no \"model\" object");
    const char *type = jstr(model, "type");
    if (type && strcmp(type, "BPE"))
        return mg_error_set(MG_ERR_UNSUPPORTED, "tokenizer.json: model type '%s' is not supported (only BPE)", type);
    if (!type && !cJSON_GetObjectItemCaseSensitive(model, "merges"))
        return mg_error_set(MG_ERR_UNSUPPORTED, "tokenizer.json: untyped model without merges (only BPE is supported)");
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0)
        return mg_error_set(MG_ERR_UNSUPPORTED, "tokenizer.json: BPE dropout is not supported");
    tok->byte_fallback = jbool(model, "byte_fallback", 0);
    tok->fuse_unk = jbool(model, "fuse_unk", 0);
    tok->ignore_merges = jbool(model, "ignore_merges", 0);
    const char *p = jstr(model, "continuing_subword_prefix"), *s = jstr(model, "end_of_word_suffix");
    if (p && *p && !(tok->subword_prefix = dupstr(p))) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
    if (s && *s && !(tok->word_suffix = dupstr(s))) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
    mg_status st = load_vocab(tok, model, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"));
    if (st) return st;
    const char *unk = jstr(model, "unk_token");
    tok->unk_id = unk ? mg_tok_strmap_get(&tok->vocab, unk, strlen(unk)) : -1;
    for (int b = 0; b < 256; b++) {
        char hex[8];
        snprintf(hex, sizeof hex, "<0x%02X>", b);
        tok->byte_fb_id[b] = mg_tok_strmap_get(&tok->vocab, hex, 6);
    }
    return load_merges(tok, model);
}

/* Parses the tokenizer.json text into tok. */
static mg_status load_json(mg_tokenizer *tok, const char *json, size_t len) {
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return mg_error_set(MG_ERR_FORMAT, "tokenizer.json: not valid JSON (near byte %ld)",
                                   cJSON_GetErrorPtr() ? (long)(cJSON_GetErrorPtr() - json) : -1L);
    mg_status st = MG_OK;
    if (!cJSON_IsObject(root)) st = mg_error_set(MG_ERR_FORMAT, "tokenizer.json: top level is not an object");
    if (!st) st = load_model(tok, root);
    const cJSON *n;
    if (!st && (n = cJSON_GetObjectItemCaseSensitive(root, "normalizer")) && !cJSON_IsNull(n)) st = add_norm(tok, n);
    if (!st && (n = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer")) && !cJSON_IsNull(n)) st = add_pre(tok, n);
    if (!st && (n = cJSON_GetObjectItemCaseSensitive(root, "decoder")) && !cJSON_IsNull(n)) {
        tok->has_decoder = 1;
        st = add_dec(tok, n);
    }
    if (!st && (n = cJSON_GetObjectItemCaseSensitive(root, "post_processor")) && !cJSON_IsNull(n)) st = add_post(tok, n);
    cJSON_Delete(root);
    return st;
}

mg_status mg_tokenizer_load_hf_mem(const char *json, size_t len, const char *config_json, size_t config_len,
                                   mg_tokenizer **out) {
    if (!json || !out) return mg_error_set(MG_ERR_ARG, "tokenizer: NULL argument");
    mg_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return mg_error_set(MG_ERR_OOM, "tokenizer: out of memory");
    tok->kind = MG_TOK_KIND_HF;
    tok->bos_id = tok->eos_id = tok->unk_id = -1;
    mg_status st = load_json(tok, json, len);
    if (!st) st = mg_tok_build_pieces(tok);
    if (!st && tok->n_post_prefix > 0) tok->bos_id = tok->post_prefix[0];
    if (!st && config_json) st = mg_tok_load_config(tok, config_json, config_len);
    if (st) {
        mg_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return MG_OK;
}

mg_status mg_tokenizer_load_hf(const char *json_path, const char *config_path, mg_tokenizer **out) {
    if (!json_path || !out) return mg_error_set(MG_ERR_ARG, "tokenizer: NULL argument");
    char *json = NULL, *cfg = NULL;
    size_t len = 0, cfg_len = 0;
    mg_status st = mg_file_read(json_path, &json, &len);
    if (st) return st;
    if (config_path && mg_file_exists(config_path)) {
        st = mg_file_read(config_path, &cfg, &cfg_len);
        if (st) {
            free(json);
            return st;
        }
    }
    st = mg_tokenizer_load_hf_mem(json, len, cfg, cfg_len, out);
    if (st) {
        /* prefix the message with the path for context */
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", mg_error_last());
        mg_error_set(st, "%s: %s", json_path, msg);
    }
    free(json);
    free(cfg);
    return st;
}
