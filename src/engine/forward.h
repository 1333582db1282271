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
 * `max_rows` rows per call: activations in backend memory, and the model's
 * weights made available to the backend (weights_acquire; uploaded once per
 * model and shared). Returns MG_ERR_OOM on allocation failure. */
mg_status mg_forward_init(mg_forward **out, const mg_model *model, const mg_backend_ops *backend, int max_rows);

void mg_forward_free(mg_forward *fw);

/* Runs the batch. Writes FP32 logits (never rounded, so margins are exact)
 * for the rows with want_logits set, in row order, into host memory
 * logits (n_wanted, vocab_size). The pool must live on the context's
 * backend. Returns MG_ERR_ARG for too many rows or a pool of another
 * backend, MG_ERR_RANGE for a token id outside the vocab or a position
 * beyond the model's context. */
mg_status mg_forward_run(mg_forward *fw, mg_kv_pool *pool, const mg_batch *batch, mg_kernels kernels,
                         mg_act_precision precision, float *logits);

/* What mg_forward_run_ex returns for the wanted rows, in row order; either
 * may be NULL. argmax is computed by the backend next to the logits, so a
 * greedy caller on a device copies 16 bytes per row instead of the logits. */
typedef struct {
    float *logits;     /* host (n_wanted, vocab_size) */
    mg_argmax *argmax; /* host (n_wanted): mg_argmax_margin of each row's logits */
} mg_forward_out;

mg_status mg_forward_run_ex(mg_forward *fw, mg_kv_pool *pool, const mg_batch *batch, mg_kernels kernels,
                            mg_act_precision precision, const mg_forward_out *out);

/* The backend the context computes on. */
const mg_backend_ops *mg_forward_backend(const mg_forward *fw);

/* RoPE inverse frequencies for the config (head_dim / 2 entries), with
 * llama3 scaling applied as HF's _compute_llama3_parameters does. */
void mg_rope_inv_freq(const mg_config *cfg, float *inv_freq);

#endif
