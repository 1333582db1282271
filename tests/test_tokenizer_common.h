/* Shared helpers for the tokenizer tests: golden-file checking against the
 * HF goldens (tokenizer-golden.json format of ../shared/tokenizers). */
#ifndef MG_TEST_TOKENIZER_COMMON_H
#define MG_TEST_TOKENIZER_COMMON_H

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tokenizer/tokenizer.h"
#include "util/file.h"

/* shared_path.h calls cr_fatal, which Criterion 2.4's old-style API lacks. */
#ifndef cr_fatal
#define cr_fatal(...) cr_assert_fail(__VA_ARGS__)
#endif

static inline double tt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Reads and parses a JSON file; fails the test on error. */
static inline cJSON *tt_read_json(const char *path) {
    char *txt = NULL;
    size_t n = 0;
    cr_assert_eq(mg_file_read(path, &txt, &n), MG_OK, "read %s: %s", path, mg_error_last());
    cJSON *j = cJSON_ParseWithLength(txt, n);
    free(txt);
    cr_assert_not_null(j, "parse %s", path);
    return j;
}

/* Copies a JSON array of numbers into a malloc'd int32 array. */
static inline int32_t *tt_ids(const cJSON *arr, size_t *n) {
    *n = (size_t)cJSON_GetArraySize(arr);
    int32_t *v = malloc((*n + 1) * sizeof *v);
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) v[i++] = (int32_t)e->valuedouble;
    return v;
}

/* Compares ids with expected; prints the first difference for diagnosis. */
static inline int tt_same(const int32_t *got, size_t ng, const int32_t *want, size_t nw, const char *what,
                          const char *text) {
    if (ng == nw && (nw == 0 || memcmp(got, want, nw * sizeof *got) == 0)) return 1;
    size_t i = 0;
    while (i < ng && i < nw && got[i] == want[i]) i++;
    fprintf(stderr, "MISMATCH %s for %.60s...: len got %zu want %zu, first diff at %zu: got %d want %d\n", what, text,
            ng, nw, i, i < ng ? got[i] : -1, i < nw ? want[i] : -1);
    return 0;
}

/* Checks every golden entry: ids (add_special=0), ids with special tokens
 * (with_special_tokens list or with_bos_matches + bos), decode round trip.
 * Returns the number of failed checks. */
static inline int tt_check_golden(const mg_tokenizer *tok, const cJSON *golden, int32_t bos, int *n_checked) {
    const cJSON *entries = cJSON_GetObjectItemCaseSensitive(golden, "entries"), *e;
    int fails = 0, checked = 0;
    cJSON_ArrayForEach(e, entries) {
        const char *text = cJSON_GetObjectItemCaseSensitive(e, "text")->valuestring;
        size_t tl = strlen(text), nw;
        int32_t *want = tt_ids(cJSON_GetObjectItemCaseSensitive(e, "ids"), &nw);
        int32_t *got = NULL;
        size_t ng = 0;
        cr_assert_eq(mg_tokenizer_encode(tok, text, tl, 0, &got, &ng), MG_OK, "encode: %s", mg_error_last());
        fails += !tt_same(got, ng, want, nw, "ids", text);
        free(got);
        checked++;

        const cJSON *ws = cJSON_GetObjectItemCaseSensitive(e, "with_special_tokens");
        const cJSON *wb = cJSON_GetObjectItemCaseSensitive(e, "with_bos_matches");
        cr_assert_eq(mg_tokenizer_encode(tok, text, tl, 1, &got, &ng), MG_OK, "encode: %s", mg_error_last());
        if (ws) {
            size_t ns;
            int32_t *ids = tt_ids(ws, &ns);
            fails += !tt_same(got, ng, ids, ns, "with_special_tokens", text);
            free(ids);
            checked++;
        } else if (cJSON_IsTrue(wb)) {
            int ok = ng == nw + 1 && got[0] == bos && (nw == 0 || !memcmp(got + 1, want, nw * sizeof *got));
            if (!ok) fprintf(stderr, "MISMATCH with_bos for %.60s\n", text);
            fails += !ok;
            checked++;
        }
        free(got);

        const cJSON *rt = cJSON_GetObjectItemCaseSensitive(e, "decode_roundtrip");
        char *dec = NULL;
        cr_assert_eq(mg_tokenizer_decode(tok, want, nw, 0, &dec), MG_OK, "decode: %s", mg_error_last());
        int same = strcmp(dec, text) == 0;
        if (same != !!cJSON_IsTrue(rt)) {
            fprintf(stderr, "MISMATCH decode_roundtrip (want %d) for %.60s: got %.60s\n", cJSON_IsTrue(rt), text, dec);
            fails++;
        }
        checked++;
        free(dec);
        free(want);
    }
    if (n_checked) *n_checked = checked;
    return fails;
}

/* Renders and encodes golden["chat_template_example"]; messages are either
 * {"role", "content"} objects or "role: content" strings. */
static inline void tt_check_chat(const mg_tokenizer *tok, const cJSON *golden) {
    const cJSON *ex = cJSON_GetObjectItemCaseSensitive(golden, "chat_template_example");
    cr_assert_not_null(ex);
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(ex, "messages"), *m;
    size_t n = (size_t)cJSON_GetArraySize(msgs), i = 0;
    mg_chat_message *cm = calloc(n + 1, sizeof *cm);
    char **bufs = calloc(n + 1, sizeof *bufs);
    cJSON_ArrayForEach(m, msgs) {
        if (cJSON_IsString(m)) {
            const char *s = m->valuestring, *colon = strstr(s, ": ");
            cr_assert_not_null(colon);
            bufs[i] = strdup(s);
            bufs[i][colon - s] = '\0';
            cm[i].role = bufs[i];
            cm[i].content = bufs[i] + (colon - s) + 2;
        } else {
            cm[i].role = cJSON_GetObjectItemCaseSensitive(m, "role")->valuestring;
            cm[i].content = cJSON_GetObjectItemCaseSensitive(m, "content")->valuestring;
        }
        i++;
    }
    char *text = NULL;
    int gen = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ex, "add_generation_prompt"));
    cr_assert_eq(mg_chat_render(tok, cm, n, gen, &text), MG_OK, "render: %s", mg_error_last());
    const char *want = cJSON_GetObjectItemCaseSensitive(ex, "text")->valuestring;
    cr_expect_str_eq(text, want);
    size_t nw, ng;
    int32_t *wids = tt_ids(cJSON_GetObjectItemCaseSensitive(ex, "ids"), &nw), *got = NULL;
    cr_assert_eq(mg_tokenizer_encode(tok, text, strlen(text), 0, &got, &ng), MG_OK);
    cr_expect(tt_same(got, ng, wids, nw, "chat ids", text), "chat template ids differ");
    free(got);
    free(wids);
    free(text);
    for (i = 0; i < n; i++) free(bufs[i]);
    free(bufs);
    free(cm);
}

#endif
