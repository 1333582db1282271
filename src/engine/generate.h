/* Single-request generation: prefill the prompt (in chunks of the forward
 * context's row limit), then decode token by token. Used by
 * `margingate generate` and the model tests; the batched scheduler drives
 * the forward pass itself. */
#ifndef MG_GENERATE_H
#define MG_GENERATE_H

#include <stdint.h>

#include "forward.h"
#include "sampler.h"

/* Called with the FP32 logits that decide each generated token (step 0:
 * after the prompt), before the token is chosen. */
typedef void (*mg_logits_cb)(void *user, int step, const float *logits, int vocab);

typedef struct {
    int max_new_tokens;
    mg_sampling sampling;
    mg_kernels kernels;
    mg_act_precision precision;
    int ignore_eos; /* nonzero: do not stop on the model's stop tokens */
    mg_logits_cb on_logits; /* optional; makes a device backend copy every step's logits to the host */
    void *on_logits_user;
} mg_generate_opts;

typedef struct {
    int32_t *tokens;   /* (n) generated ids, malloc'd */
    float *margins;    /* (n) FP32 top-1/top-2 margin of the step that produced each token */
    int n;
    int stopped_eos;   /* 1 if generation ended on a stop token (included in tokens) */
    double prefill_s;  /* wall time of the prefill (incl. the first token's logits) */
    double decode_s;   /* wall time of the remaining decode steps */
    float *prompt_logits; /* (vocab) logits after the last prompt token, malloc'd */
} mg_generate_result;

/* Called after each generated token; return nonzero to stop early. */
typedef int (*mg_token_cb)(void *user, int32_t token, float margin);

/* Generates up to opts->max_new_tokens tokens after `prompt` (n_prompt >= 1
 * ids). Returns MG_ERR_RANGE if the prompt plus max_new_tokens exceeds the
 * model's context, MG_ERR_FULL if the KV pool is too small. The result's
 * buffers are malloc'd (free with mg_generate_result_free). */
mg_status mg_generate(mg_forward *fw, mg_kv_pool *pool, const mg_config *cfg, int max_rows, const int32_t *prompt,
                      int n_prompt, const mg_generate_opts *opts, mg_token_cb cb, void *user,
                      mg_generate_result *res);

void mg_generate_result_free(mg_generate_result *res);

#endif
