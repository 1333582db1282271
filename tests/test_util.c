/* UTF-8 helpers, BF16 conversion, the sampler and the paged KV cache. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../src/engine/kv_cache.h"
#include "../src/engine/sampler.h"
#include "../src/util/bf16.h"
#include "../src/util/utf8.h"

static void lossy_is(const char *in, const char *want_hex) {
    char out[256], hex[512] = "";
    mg_utf8_lossy(in, strlen(in), out);
    for (char *p = out; *p; p++) sprintf(hex + strlen(hex), "%02x", (unsigned char)*p);
    cr_assert_str_eq(hex, want_hex, "lossy(%s)", in);
}

Test(utf8, validation_and_lossy_replacement_like_rust) {
    cr_assert(mg_utf8_valid("abc \xe2\x82\xac \xf0\x9f\x98\x80", 12, NULL));
    size_t bad;
    cr_assert(!mg_utf8_valid("ab\xff", 3, &bad));
    cr_assert_eq(bad, 2);
    cr_assert(!mg_utf8_valid("\xc0\xaf", 2, NULL), "overlong");
    cr_assert(!mg_utf8_valid("\xed\xa0\x80", 3, NULL), "surrogate");
    cr_assert(!mg_utf8_valid("\xf4\x90\x80\x80", 4, NULL), "above U+10FFFF");
    lossy_is("\xff", "efbfbd");
    lossy_is("a\xc3", "61efbfbd");
    lossy_is("\xe2\x82", "efbfbd");            /* one U+FFFD for a truncated sequence */
    lossy_is("\xed\xa0\x80", "efbfbdefbfbdefbfbd"); /* surrogate: three, as from_utf8_lossy */
    lossy_is("\xc0\xaf", "efbfbdefbfbd");
}

Test(utf8, streaming_holds_back_incomplete_sequences_only) {
    cr_assert_eq(mg_utf8_emit_len("ab\xe2\x82", 4), 2, "a started euro sign waits for its last byte");
    cr_assert_eq(mg_utf8_emit_len("ab\xe2\x82\xac", 5), 5);
    cr_assert_eq(mg_utf8_emit_len("ab\x80", 3), 3, "a stray continuation byte is emitted, never held");
    cr_assert_eq(mg_utf8_emit_len("ab\xff", 3), 3);
    cr_assert_eq(mg_utf8_emit_len("\xe2\x41", 2), 2, "a broken sequence is emitted");
}

Test(bf16, round_to_nearest_even_and_nan) {
    cr_assert_eq(mg_f32_to_bf16(1.0f), 0x3f80);
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0). */
    cr_assert_eq(mg_f32_to_bf16(1.0f + 1.0f / 256), 0x3f80);
    cr_assert_eq(mg_f32_to_bf16(1.0f + 3.0f / 256), 0x3f82);
    cr_assert(isnan(mg_bf16_to_f32(mg_f32_to_bf16(NAN))));
    cr_assert_eq(mg_f16_to_f32(0x3c00), 1.0f);
    cr_assert_eq(mg_f16_to_f32(0x0001), ldexpf(1.0f, -24), "smallest F16 subnormal");
    cr_assert(isinf(mg_f16_to_f32(0x7c00)));
}

Test(sampler, argmax_margin_and_ties) {
    float l[5] = {1.0f, 3.5f, 2.0f, 3.0f, -1.0f};
    mg_argmax a = mg_argmax_margin(l, 5);
    cr_assert_eq(a.token, 1);
    cr_assert_eq(a.second, 3);
    cr_assert_float_eq(a.margin, 0.5f, 0);
    float t[4] = {2.0f, 7.0f, 7.0f, 1.0f};
    a = mg_argmax_margin(t, 4);
    cr_assert_eq(a.token, 1, "ties go to the lower id");
    cr_assert_eq(a.margin, 0.0f, "an exact tie has margin 0");
}

Test(sampler, seeded_sampling_reproduces_and_respects_top_k_top_p) {
    enum { V = 64 };
    float logits[V], scratch[2 * V];
    for (int i = 0; i < V; i++) logits[i] = sinf((float)i) * 3.0f;
    mg_sampling s = {.temperature = 0.9f, .top_k = 0, .top_p = 1.0f, .seed = 42};
    int hist[V] = {0};
    for (int pos = 0; pos < 2000; pos++) {
        int32_t a = mg_sample(logits, V, &s, pos, scratch);
        cr_assert_eq(a, mg_sample(logits, V, &s, pos, scratch), "same (seed, position) must give the same token");
        hist[a]++;
    }
    int distinct = 0;
    for (int i = 0; i < V; i++) distinct += hist[i] > 0;
    cr_assert_gt(distinct, 4, "temperature sampling should not collapse to one token");
    /* top-k 3: only the 3 largest logits can be drawn. */
    s.top_k = 3;
    mg_argmax best = mg_argmax_margin(logits, V);
    for (int pos = 0; pos < 500; pos++) {
        int32_t a = mg_sample(logits, V, &s, pos, scratch);
        int larger = 0;
        for (int i = 0; i < V; i++) larger += logits[i] > logits[a];
        cr_assert_lt(larger, 3);
    }
    /* A tiny top-p keeps only the argmax. */
    s.top_k = 0;
    s.top_p = 1e-6f;
    for (int pos = 0; pos < 100; pos++) cr_assert_eq(mg_sample(logits, V, &s, pos, scratch), best.token);
    /* Temperature 0 is greedy. */
    s.temperature = 0;
    cr_assert_eq(mg_sample(logits, V, &s, 7, scratch), best.token);
    mg_sampling bad = {.temperature = -1, .top_p = 1};
    cr_assert_eq(mg_sampling_validate(&bad), MG_ERR_ARG);
    bad = (mg_sampling){.temperature = 1, .top_p = 0};
    cr_assert_eq(mg_sampling_validate(&bad), MG_ERR_ARG);
}

Test(kv_cache, blocks_are_reserved_released_and_bounded) {
    mg_kv_pool pool;
    cr_assert_eq(mg_kv_pool_init(&pool, 2, 1, 4, 4, 5), MG_OK);
    mg_kv_seq a = {0}, b = {0};
    cr_assert_eq(mg_kv_seq_reserve(&pool, &a, 9), MG_OK); /* 3 blocks */
    cr_assert_eq(pool.n_free, 2);
    cr_assert_eq(mg_kv_seq_reserve(&pool, &b, 12), MG_ERR_FULL, "3 blocks needed, 2 free");
    cr_assert_eq(b.n_blocks, 0, "a failed reservation takes nothing");
    cr_assert_eq(mg_kv_seq_reserve(&pool, &b, 8), MG_OK);
    /* Distinct positions map to distinct, non-overlapping slots. */
    mg_kv_k_at(&pool, &a, 1, 8)[3] = 7.0f;
    cr_assert_eq(mg_kv_k_at(&pool, &b, 1, 0)[3], 0.0f);
    cr_assert_neq(mg_kv_k_at(&pool, &a, 0, 5), mg_kv_k_at(&pool, &a, 1, 5));
    mg_kv_seq_truncate(&pool, &a, 4);
    cr_assert_eq(a.n_blocks, 1);
    cr_assert_eq(pool.n_free, 2);
    mg_kv_seq_free(&pool, &a);
    mg_kv_seq_free(&pool, &b);
    cr_assert_eq(pool.n_free, 5);
    mg_kv_pool_free(&pool);
}
