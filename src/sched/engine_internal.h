/* Engine internals shared by the scheduler (engine.c) and the determinism
 * policies (src/determinism/). Not part of the public API. */
#ifndef MG_ENGINE_INTERNAL_H
#define MG_ENGINE_INTERNAL_H

#include "../engine/kv_cache.h"
#include "engine.h"

typedef enum { REQ_WAITING, REQ_RUNNING, REQ_SWAPPED, REQ_DONE } mg_req_state;

typedef struct {
    int id;
    mg_request_params p;
    int32_t *faults;   /* (p.n_fault_steps) owned copy of p.fault_steps */
    int32_t *tokens;   /* (cap) prompt then generated tokens (LLM-42: incl. unverified) */
    float *margins;    /* (cap) per position: margin of the step that produced the token there */
    uint64_t *hashes;  /* (cap) per position: logits hash of that step, when record_logits */
    int cap;
    int n_prompt;
    int n_tokens;
    int n_cached;      /* positions [0, n_cached) have K/V in the cache (or the swap buffers) */
    int n_verified;    /* tokens final and visible: n_tokens except in LLM-42 */
    int fast_done;     /* LLM-42: the fast path hit a stop token or the length limit */
    mg_req_state state;
    mg_kv_seq seq;
    void *swap_k;      /* host image of the K of positions [0, n_cached) while swapped (mg_kv_seq_save) */
    void *swap_v;      /* same for V */
    long decode_steps;
    long admit_order;
    mg_finish finish;
    mg_mode_counters c;
    double arrival_s, first_token_s, finish_s;
    struct mg_req_logprobs *lp; /* per-token logprobs when asked for (engine_logprobs.c), else NULL */
} mg_req;

/* One forward pass worth of rows. */
typedef struct {
    int n;
    int32_t *tokens;    /* (cap) */
    int32_t *positions; /* (cap) */
    mg_kv_seq **seqs;   /* (cap) */
    uint8_t *want;      /* (cap) */
    mg_req **req;       /* (cap) request of each row, NULL for padding */
    int n_want;
    float *logits;      /* (logits_cap, vocab): downloaded only when have_logits */
    mg_argmax *top;     /* (logits_cap) the backend's argmax and margin of each wanted row */
    int have_logits;    /* some wanted row's request needs its logits (sampling, logprobs, hashes) */
    int cap;
    int logits_cap;
} mg_rows;

struct mg_engine {
    const mg_model *model;
    const mg_backend_ops *ops;
    mg_engine_config cfg;
    mg_forward *fw;
    mg_kv_pool pool;
    mg_req **reqs;      /* (n_reqs) live requests in arrival order */
    int n_reqs, cap_reqs;
    int next_id;
    long next_admit;
    long preemptions;
    mg_rows fast, inv, aux; /* aux: isolated prefill and verify passes */
    mg_kv_seq dummy;        /* one block: LLM-42 padding rows write their K/V here */
    float *scratch;         /* (2 * vocab) sampler scratch */
    mg_mode_counters totals[MG_MODE_COUNT];
};

/* Clears a row set. */
void mg_rows_clear(mg_rows *r);
/* Appends a row; the caller has checked capacity. */
void mg_rows_push(mg_rows *r, mg_req *q, int32_t token, int32_t pos, mg_kv_seq *seq, int want);
/* Runs the rows through the forward pass with `kernels`. */
mg_status mg_rows_run(mg_engine *e, mg_rows *r, mg_kernels kernels);
/* Logits of wanted row i of the last run, or NULL when the run did not
 * download them (every wanted row's request was greedy without logprobs
 * or logit hashes). */
const float *mg_rows_logits(const mg_engine *e, const mg_rows *r, int i);

/* 64-bit FNV-1a hash of a logits row. */
uint64_t mg_logits_hash(const float *logits, int vocab);
/* Whether `t` is one of the model's stop tokens. */
int mg_is_stop(const mg_engine *e, int32_t t);
/* Appends a token (and its margin / hash) to q->tokens; MG_ERR_OOM on failure. */
mg_status mg_req_append(mg_req *q, int32_t t, float margin, uint64_t hash);
/* Marks q finished with `why`, frees its KV blocks and accounts its counters. */
void mg_req_finish(mg_engine *e, mg_req *q, mg_finish why, double now);
/* Sets finish state from the last visible token (stop token or length). */
void mg_req_check_done(mg_engine *e, mg_req *q, double now);

/* The token request q takes from wanted row i of the last run of r, and
 * that row's FP32 top-1/top-2 margin: the backend's argmax for a greedy
 * request, else a draw from the row's logits. */
int32_t mg_req_sample(mg_engine *e, const mg_req *q, const mg_rows *r, int i, float *margin);
/* Appends a token produced from `logits` (fast path, verifier or prefill) and
 * updates the finish state. LLM-42 tokens after the first stay unverified. */
mg_status mg_req_accept(mg_engine *e, mg_req *q, int32_t tok, float margin, const float *logits, double now);

/* MarginGate: re-checks the flagged rows (request, fast token) of this step
 * with the invariant kernels in one pass and appends the verified tokens. */
mg_status mg_margingate_verify(mg_engine *e, mg_req **reqs, const int32_t *fast_tokens, const float *fast_margins,
                               int n);

/* LLM-42: runs verify passes for every request that is ready (W unverified
 * tokens, or the fast path finished), with fillers and dummies to B entries. */
mg_status mg_llm42_verify_ready(mg_engine *e, double now);

#endif
