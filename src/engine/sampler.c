#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

mg_argmax mg_argmax_margin(const float *logits, int vocab) {
    int32_t best = 0, second = 1;
    if (logits[1] > logits[0]) best = 1, second = 0;
    for (int32_t i = 2; i < vocab; i++) {
        float v = logits[i];
        if (v > logits[best]) {
            second = best;
            best = i;
        } else if (v > logits[second]) {
            second = i;
        }
    }
    return (mg_argmax){.token = best, .second = second, .top1 = logits[best], .margin = logits[best] - logits[second]};
}

float mg_sample_uniform(uint64_t seed, int64_t position) {
    uint64_t z = seed ^ ((uint64_t)position * 0x9E3779B97F4A7C15ull);
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) / 16777216.0f;
}

mg_status mg_sampling_validate(const mg_sampling *s) {
    if (!(s->temperature >= 0.0f) || !isfinite(s->temperature))
        return mg_error_set(MG_ERR_ARG, "temperature must be a finite number >= 0");
    if (!(s->top_p > 0.0f && s->top_p <= 1.0f)) return mg_error_set(MG_ERR_ARG, "top_p must be in (0, 1]");
    return MG_OK;
}

typedef struct {
    float p;
    int32_t id;
} cand;

/* Descending probability, then ascending id: a total order, so the sorted
 * candidate list is unique whatever the sort algorithm. */
static int cand_cmp(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

int32_t mg_sample(const float *logits, int vocab, const mg_sampling *s, int64_t position, float *scratch) {
    if (s->temperature <= 0.0f) return mg_argmax_margin(logits, vocab).token;
    cand *c = (cand *)scratch; /* 2 * vocab floats = vocab candidates */
    float max = logits[0];
    for (int i = 1; i < vocab; i++) max = fmaxf(max, logits[i]);
    for (int i = 0; i < vocab; i++) c[i] = (cand){expf((logits[i] - max) / s->temperature), i};
    int n = vocab;
    qsort(c, (size_t)n, sizeof *c, cand_cmp);
    if (s->top_k > 0 && s->top_k < n) n = s->top_k;
    float total = 0.0f;
    for (int i = 0; i < n; i++) total += c[i].p;
    if (s->top_p < 1.0f) {
        float cum = 0.0f;
        int keep = n;
        for (int i = 0; i < n; i++) {
            cum += c[i].p;
            if (cum >= s->top_p * total) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        total = 0.0f;
        for (int i = 0; i < n; i++) total += c[i].p;
    }
    float r = mg_sample_uniform(s->seed, position) * total;
    float cum = 0.0f;
    for (int i = 0; i < n; i++) {
        cum += c[i].p;
        if (r < cum) return c[i].id;
    }
    return c[n - 1].id;
}
