/* The batched engine: continuous batching over a paged KV cache, with the
 * determinism mode chosen per request.
 *
 * Each mg_engine_step() runs one scheduling iteration: admit or resume
 * requests while KV blocks last, give every running request a decode row or
 * a prefill chunk, run the forward passes, sample, and apply each request's
 * determinism policy (src/determinism/). Requests can arrive and finish at
 * any step. When the KV pool runs out, the most recently admitted request is
 * preempted by swapping its K/V out to host memory, and swapped back in
 * unchanged later, so preemption never changes a request's output.
 *
 * Modes:
 * - OFF: fast kernels for prefill and decode, batched with everyone.
 * - INVARIANT: batch-invariant kernels for prefill and decode.
 * - LLM42: isolated fast prefill in fixed chunks, fast decode, and
 *   verification every W tokens (or at finish) in fixed-shape B x W passes,
 *   K/V overwritten in place, rollback to the first mismatch; only verified
 *   tokens are visible.
 * - MARGINGATE: batch-invariant prefill, fast decode; a step whose FP32
 *   top-1/top-2 margin is below tau, or that samples (temperature > 0: a
 *   sampled token can move at any margin), or every step with tau = infinity (the
 *   "always" baseline) is recomputed with the invariant kernels; the verified
 *   token is emitted and the verifier's K/V replaces that position's K/V in
 *   every layer. */
#ifndef MG_ENGINE_H
#define MG_ENGINE_H

#include <stdint.h>

#include "../backend/backend.h"
#include "../engine/forward.h"
#include "../engine/sampler.h"
#include "../model/model.h"

typedef enum { MG_MODE_OFF = 0, MG_MODE_INVARIANT, MG_MODE_LLM42, MG_MODE_MARGINGATE, MG_MODE_COUNT } mg_mode;

/* "off", "invariant", "llm42", "margingate". */
const char *mg_mode_name(mg_mode m);
/* Parses a mode name; returns 0 on success, -1 for an unknown name. */
int mg_mode_parse(const char *s, mg_mode *out);

typedef struct {
    int kv_block_size;       /* tokens per KV block (default 16) */
    size_t kv_bytes;         /* KV pool memory budget in bytes */
    int max_batch_rows;      /* rows per forward pass for prefill + decode (default 256) */
    int max_running;         /* running requests at most (default 64) */
    mg_act_precision precision;
    int llm42_window;        /* W: tokens per verify entry (default 64) */
    int llm42_group;         /* B: entries per verify pass (default 8) */
    float margingate_tau;    /* verify when margin < tau; INFINITY = always */
    int prefill_chunk;       /* fixed isolated-prefill chunk for llm42 (default 256) */
    /* Kernels of LLM-42's isolated prefill and verify passes: FAST (default,
     * the paper's design: deterministic for a given GPU count) or INVARIANT
     * (also the same tokens across tensor-parallel degrees). */
    mg_kernels llm42_kernels;
} mg_engine_config;

/* Defaults for the fields above (kv_bytes 256 MiB, tau 0.5). */
mg_engine_config mg_engine_config_default(void);

typedef struct {
    mg_mode mode;
    int max_new_tokens;
    mg_sampling sampling;
    int ignore_eos;
    int record_logits;          /* keep a 64-bit hash of every step's logits (tests) */
    const int32_t *fault_steps; /* test-only: decode steps (0-based) whose fast token is corrupted */
    int n_fault_steps;
} mg_request_params;

/* Per-request and engine-wide cost of determinism. */
typedef struct {
    long steps;          /* fast-path decode steps */
    long verified_steps; /* MarginGate: steps re-checked; LLM-42: tokens verified */
    long repairs;        /* MarginGate: mismatches repaired; LLM-42: mismatches found */
    long rolled_back;    /* LLM-42: tokens discarded by rollback */
    long verify_passes;  /* verification passes this request took part in (one pass serves several requests, so engine totals count request-passes) */
    double verify_s;     /* wall time spent in verification */
} mg_mode_counters;

typedef enum { MG_FINISH_NONE = 0, MG_FINISH_STOP, MG_FINISH_LENGTH, MG_FINISH_CANCELLED, MG_FINISH_ERROR } mg_finish;

typedef struct mg_engine mg_engine;

/* Creates an engine for `model` on `backend`. */
mg_status mg_engine_init(mg_engine **out, const mg_model *model, const mg_backend_ops *backend,
                         const mg_engine_config *cfg);
void mg_engine_free(mg_engine *e);

/* Queues a request; returns its id (>= 0) in *id. MG_ERR_RANGE if the prompt
 * plus max_new_tokens exceeds the model's context, MG_ERR_FULL if it could
 * never fit in the KV pool, MG_ERR_ARG for bad parameters. */
mg_status mg_engine_add(mg_engine *e, const int32_t *prompt, int n_prompt, const mg_request_params *p, int *id);

/* Runs one scheduling iteration. Returns an error only for engine-level
 * failures; a request that cannot proceed is finished with MG_FINISH_ERROR. */
mg_status mg_engine_step(mg_engine *e);

/* Number of requests not yet finished. */
int mg_engine_pending(const mg_engine *e);

/* Cancels a request (its KV blocks are freed at once). */
void mg_engine_cancel(mg_engine *e, int id);

/* Read access to a request. Visible tokens are the generated tokens a client
 * may see now (for LLM-42 only verified ones). Pointers stay valid until the
 * next step or release. */
typedef struct {
    const int32_t *tokens;   /* (n_visible) generated tokens visible to the client */
    int n_visible;
    const float *margins;    /* (n_visible) margin of the step that produced each token */
    const uint64_t *logit_hashes; /* (n_visible) when record_logits, else NULL */
    mg_finish finish;
    int n_prompt;
    mg_mode_counters counters;
    double arrival_s, first_token_s, finish_s; /* engine clock */
} mg_request_view;

/* Fills *v for request `id`; MG_ERR_ARG if unknown (or released). */
mg_status mg_engine_view(const mg_engine *e, int id, mg_request_view *v);

/* Forgets a finished request and its buffers. */
void mg_engine_release(mg_engine *e, int id);

/* Engine-wide totals per mode (array of MG_MODE_COUNT). */
const mg_mode_counters *mg_engine_totals(const mg_engine *e);

/* KV pool usage: blocks in use and total. */
void mg_engine_kv_usage(const mg_engine *e, int *used, int *total);

/* Number of preemptions (swap-outs) so far. */
long mg_engine_preemptions(const mg_engine *e);

/* Test hook: a copy of the K (or V) vector of position `pos`, layer `layer`
 * of request `id` (n_kv_heads * head_dim floats). MG_ERR_ARG if not cached. */
mg_status mg_engine_kv_column(const mg_engine *e, int id, int layer, int pos, float *k, float *v);

#endif

/* ---- Per-token log-probabilities and scheduler counts (engine_logprobs.c) -- */

#define MG_MAX_TOP_LOGPROBS 20

typedef struct {
    float logprob;                           /* log-softmax of the token that was emitted */
    int n_top;                               /* alternatives recorded (the request's top_n) */
    int32_t top_ids[MG_MAX_TOP_LOGPROBS];    /* most likely tokens, best first (ties: lower id) */
    float top_logprobs[MG_MAX_TOP_LOGPROBS]; /* their log-probabilities */
} mg_token_logprobs;

/* Starts recording log-probabilities for request `id`: for each generated
 * token, the log-softmax of the FP32 logits that decided it (the verifier's
 * for a MarginGate-verified step or an LLM-42-verified token), before
 * temperature, top-k and top-p, of the token itself and of the `top_n` most
 * likely tokens (0..MG_MAX_TOP_LOGPROBS). Call right after mg_engine_add.
 * Returns MG_ERR_ARG for an unknown or finished id or top_n out of range,
 * MG_ERR_OOM if the storage cannot be allocated. */
mg_status mg_engine_want_logprobs(mg_engine *e, int id, int top_n);

/* Log-probabilities of visible token `i` (0 <= i < n_visible) of request
 * `id`, or NULL if not recorded. Valid until the next step or release. */
const mg_token_logprobs *mg_engine_logprobs(const mg_engine *e, int id, int i);

/* Live requests by scheduler state: running (admitted, K/V in the pool),
 * waiting (not admitted yet), swapped (preempted to host memory). */
void mg_engine_request_counts(const mg_engine *e, int *running, int *waiting, int *swapped);
