/* The transformer forward pass over a batch of rows, written once against
 * the backend op table.
 *
 * A batch is any mix of prefill and decode rows: row i feeds token
 * tokens[i] at position positions[i] of sequence seqs[i]. All rows' K/V are
 * written to the cache before attention, so a prefill chunk attends to its
 * own earlier rows. The caller reserves KV blocks for every position first. */
#ifndef MG_FORWARD_H
#define MG_FORWARD_H

#include <stdint.h>

#include "../backend/backend.h"
#include "../model/model.h"
#include "kv_cache.h"

typedef enum { MG_ACT_BF16 = 0, MG_ACT_FP32 = 1 } mg_act_precision;

typedef struct {
    int n_rows;
    const int32_t *tokens;      /* (n_rows) */
    const int32_t *positions;   /* (n_rows) */
    mg_kv_seq *const *seqs;     /* (n_rows) */
    const uint8_t *want_logits; /* (n_rows) nonzero = compute logits; NULL = every row */
} mg_batch;

typedef struct mg_forward mg_forward;

/* Creates a forward context for `model` on `backend` handling up to
 * `max_rows` rows per call. Returns MG_ERR_OOM on allocation failure. */
mg_status mg_forward_init(mg_forward **out, const mg_model *model, const mg_backend_ops *backend, int max_rows);

void mg_forward_free(mg_forward *fw);

/* Runs the batch. Writes FP32 logits (never rounded, so margins are exact)
 * for the rows with want_logits set, in row order, into
 * logits (n_wanted, vocab_size). Returns MG_ERR_ARG for too many rows, a
 * token id outside the vocab or a position beyond the model's context. */
mg_status mg_forward_run(mg_forward *fw, mg_kv_pool *pool, const mg_batch *batch, mg_kernels kernels,
                         mg_act_precision precision, float *logits);

/* RoPE inverse frequencies for the config (head_dim / 2 entries), with
 * llama3 scaling applied as HF's _compute_llama3_parameters does. */
void mg_rope_inv_freq(const mg_config *cfg, float *inv_freq);

#endif
