/* MarginGate: margin-triggered verification with K/V column repair.
 *
 * The fast path flagged these rows because their FP32 top-1/top-2 margin was
 * below tau. Each row is recomputed with the batch-invariant kernels (one
 * pass for all flagged rows of the step; invariant rows do not depend on each
 * other) at the same token and position. The pass writes the verifier's K/V
 * over the fast path's at that position in every layer: the K/V column is
 * repaired, whether or not the token flipped. The verified token is the one
 * emitted. */
#include "../sched/engine_internal.h"
#include "../util/timer.h"

mg_status mg_margingate_verify(mg_engine *e, mg_req **reqs, const int32_t *fast_tokens, const float *fast_margins,
                               int n) {
    (void)fast_margins;
    double t0 = mg_now_s();
    mg_rows *r = &e->aux;
    mg_rows_clear(r);
    for (int i = 0; i < n; i++) {
        mg_req *q = reqs[i];
        int pos = q->n_tokens - 1;
        mg_rows_push(r, q, q->tokens[pos], pos, &q->seq, 1);
    }
    mg_status st = mg_rows_run(e, r, MG_KERNELS_INVARIANT);
    if (st != MG_OK) return st;
    double now = mg_now_s();
    double share = (now - t0) / n;
    for (int i = 0; i < n; i++) {
        mg_req *q = reqs[i];
        const float *logits = mg_rows_logits(e, r, i);
        float margin;
        int32_t tok = mg_req_sample(e, q, r, i, &margin);
        q->c.verified_steps++;
        q->c.verify_passes++;
        q->c.verify_s += share;
        if (tok != fast_tokens[i]) q->c.repairs++;
        if ((st = mg_req_accept(e, q, tok, margin, logits, now)) != MG_OK) return st;
    }
    return MG_OK;
}
