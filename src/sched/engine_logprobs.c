/* Per-token log-probabilities for the OpenAI API's logprobs/top_logprobs,
 * and scheduler state counts for metrics.
 *
 * The log-softmax is taken over the FP32 logits that decided the token (the
 * verifier's where a token was verified), before temperature, top-k or
 * top-p, as vLLM reports them. The normaliser is summed in float64 in vocab
 * order, so equal logits give bitwise-equal log-probabilities. */
#include <math.h>
#include <stdlib.h>

#include "engine_logprobs.h"

static mg_req *find(const mg_engine *e, int id) {
    for (int i = 0; i < e->n_reqs; i++)
        if (e->reqs[i]->id == id) return e->reqs[i];
    return NULL;
}

mg_status mg_engine_want_logprobs(mg_engine *e, int id, int top_n) {
    mg_req *q = find(e, id);
    if (!q || q->state == REQ_DONE) return mg_error_set(MG_ERR_ARG, "no live request %d", id);
    if (top_n < 0 || top_n > MG_MAX_TOP_LOGPROBS)
        return mg_error_set(MG_ERR_ARG, "top_logprobs must be in [0, %d], got %d", MG_MAX_TOP_LOGPROBS, top_n);
    if (q->lp) {
        q->lp->top_n = top_n;
        return MG_OK;
    }
    struct mg_req_logprobs *lp = calloc(1, sizeof *lp);
    int n = q->cap - q->n_prompt;
    if (lp) lp->at = calloc((size_t)n, sizeof *lp->at);
    if (!lp || !lp->at) {
        free(lp);
        return mg_error_set(MG_ERR_OOM, "cannot allocate logprobs for request %d", id);
    }
    lp->top_n = top_n;
    lp->n = n;
    q->lp = lp;
    return MG_OK;
}

const mg_token_logprobs *mg_engine_logprobs(const mg_engine *e, int id, int i) {
    const mg_req *q = find(e, id);
    if (!q || !q->lp || i < 0 || i >= q->n_verified - q->n_prompt || i >= q->lp->n) return NULL;
    return &q->lp->at[i];
}

void mg_logprobs_record(const mg_engine *e, mg_req *q, int pos, int32_t tok, const float *logits) {
    struct mg_req_logprobs *lp = q->lp;
    int i = pos - q->n_prompt;
    if (!lp || i < 0 || i >= lp->n) return;
    const int vocab = e->model->config.vocab_size;
    float mx = logits[0];
    for (int v = 1; v < vocab; v++)
        if (logits[v] > mx) mx = logits[v];
    double sum = 0;
    for (int v = 0; v < vocab; v++) sum += exp((double)logits[v] - (double)mx);
    const double lse = (double)mx + log(sum);
    mg_token_logprobs *t = &lp->at[i];
    t->logprob = (float)((double)logits[tok] - lse);
    /* Top-n by insertion into a sorted list; scanning ids upwards with a
     * strict comparison puts the lower id first among equal logits. */
    int n = 0;
    for (int v = 0; v < vocab && lp->top_n > 0; v++) {
        float l = logits[v];
        if (n == lp->top_n && !(l > logits[t->top_ids[n - 1]])) continue;
        int j = n < lp->top_n ? n++ : n - 1;
        while (j > 0 && l > logits[t->top_ids[j - 1]]) {
            t->top_ids[j] = t->top_ids[j - 1];
            j--;
        }
        t->top_ids[j] = v;
    }
    t->n_top = n;
    for (int j = 0; j < n; j++) t->top_logprobs[j] = (float)((double)logits[t->top_ids[j]] - lse);
}

void mg_logprobs_free(struct mg_req_logprobs *lp) {
    if (!lp) return;
    free(lp->at);
    free(lp);
}

void mg_engine_request_counts(const mg_engine *e, int *running, int *waiting, int *swapped) {
    int r = 0, w = 0, s = 0;
    for (int i = 0; i < e->n_reqs; i++) {
        mg_req_state st = e->reqs[i]->state;
        r += st == REQ_RUNNING;
        w += st == REQ_WAITING;
        s += st == REQ_SWAPPED;
    }
    *running = r;
    *waiting = w;
    *swapped = s;
}
