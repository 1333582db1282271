/* Token selection from FP32 logits.
 *
 * Greedy: argmax with the top-1/top-2 margin (ties go to the lower id; an
 * exact tie has margin 0, the lowest possible). Sampling: temperature, top-k
 * and top-p, driven by one uniform number derived from (seed, position)
 * only, so a request reproduces whatever batch it is decoded in. The
 * procedure is a fixed sequence of FP32 operations on the host; a GPU backend
 * matches it exactly by copying the row's logits and calling mg_sample. */
#ifndef MG_SAMPLER_H
#define MG_SAMPLER_H

#include <stdint.h>

#include "../util/status.h"

typedef struct {
    int32_t token;  /* argmax (lowest id among equal maxima) */
    int32_t second; /* runner-up */
    float top1;     /* logits[token] */
    float margin;   /* top1 - logits[second], >= 0 */
} mg_argmax;

/* Argmax and top-1/top-2 margin of logits (vocab >= 2). */
mg_argmax mg_argmax_margin(const float *logits, int vocab);

typedef struct {
    float temperature; /* <= 0 means greedy */
    int top_k;         /* <= 0 means no limit */
    float top_p;       /* in (0, 1]; 1 means no limit */
    uint64_t seed;
} mg_sampling;

/* The uniform number in [0, 1) used at `position` for `seed`
 * (splitmix64 of the pair, 24 bits). */
float mg_sample_uniform(uint64_t seed, int64_t position);

/* Samples a token from logits (vocab) for the token at `position` of the
 * sequence. Greedy when temperature <= 0. `scratch` must hold 2 * vocab
 * floats. */
int32_t mg_sample(const float *logits, int vocab, const mg_sampling *s, int64_t position, float *scratch);

/* Checks sampling parameters; MG_ERR_ARG with a message if invalid. */
mg_status mg_sampling_validate(const mg_sampling *s);

#endif
