/* Engine-internal hooks for per-token log-probabilities (engine_logprobs.c):
 * the scheduler and the LLM-42 verifier call mg_logprobs_record wherever a
 * token becomes (or is re-decided as) the token at a position, with the
 * logits that decided it. Not part of the public API. */
#ifndef MG_ENGINE_LOGPROBS_H
#define MG_ENGINE_LOGPROBS_H

#include "engine_internal.h"

struct mg_req_logprobs {
    int top_n;                 /* alternatives to keep per token (0..MG_MAX_TOP_LOGPROBS) */
    int n;                     /* entries: q->cap - q->n_prompt */
    mg_token_logprobs *at;     /* (n) indexed by generated position (position - n_prompt) */
};

/* Records, for request q with logprobs enabled, the log-probabilities of
 * token `tok` at sequence position `pos` from `logits` (vocab floats).
 * A later call for the same position (LLM-42 verification) overwrites. */
void mg_logprobs_record(const mg_engine *e, mg_req *q, int pos, int32_t tok, const float *logits);

/* Frees q's logprob storage (NULL is fine). */
void mg_logprobs_free(struct mg_req_logprobs *lp);

#endif
