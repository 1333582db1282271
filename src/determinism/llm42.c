/* LLM-42: decode-verify-rollback (arXiv 2601.17768).
 *
 * A request is ready when it has W unverified tokens or its fast path has
 * finished. Ready requests are packed into groups of exactly B entries
 * (ready first, then other LLM-42 requests with unverified tokens as
 * fillers, then dummy entries), each exactly W rows (padded), so every
 * verify pass has the same shape B x W and runs the fast kernels at that one
 * shape: the same reduction orders every time (cfg.llm42_kernels may pick
 * the invariant ones instead, whose orders do not depend on the GPU count
 * either). An entry's rows are
 * [last verified token] + unverified[0 .. n-1) at positions starting at the
 * last verified token's; the pass writes its K/V in place over the fast
 * path's. The first row whose prediction differs from the fast token marks
 * the rollback point: earlier tokens are kept, the verifier's token replaces
 * it, the rest are discarded. Padding rows write their K/V into a private
 * one-block dummy sequence (overwriting each other: their outputs are never
 * used), so they never touch a request's cache; since every kernel computes
 * a row independently of the others at a given shape, padding cannot change
 * a real row. */
#include <assert.h>
#include <string.h>

#include "../sched/engine_internal.h"
#include "../sched/engine_logprobs.h"
#include "../util/timer.h"

static int unverified(const mg_req *q) { return q->n_tokens - q->n_verified; }

static int is_ready(const mg_engine *e, const mg_req *q) {
    return q->state == REQ_RUNNING && q->p.mode == MG_MODE_LLM42 && unverified(q) > 0 &&
           (unverified(q) >= e->cfg.llm42_window || q->fast_done);
}

static int is_filler(const mg_req *q) {
    return q->state == REQ_RUNNING && q->p.mode == MG_MODE_LLM42 && unverified(q) > 0;
}

/* Commits the verifier's verdict for one entry whose predictions start at
 * logits row `row0` of the pass. */
static mg_status commit_entry(mg_engine *e, mg_req *q, int row0, double share, double now) {
    const int L = q->n_verified, n = unverified(q);
    int j = 0;
    int32_t vtok = 0;
    float margin = 0;
    for (; j < n; j++) {
        const float *logits = mg_rows_logits(e, &e->aux, row0 + j);
        q->n_tokens = L + j; /* so that sampling sees position L + j */
        vtok = mg_req_sample(e, q, &e->aux, row0 + j, &margin);
        q->margins[L + j] = margin;
        if (q->p.record_logits) q->hashes[L + j] = mg_logits_hash(logits, e->model->config.vocab_size);
        if (q->lp) mg_logprobs_record(e, q, L + j, vtok, logits);
        if (vtok != q->tokens[L + j]) break;
    }
    q->c.verified_steps += n;
    q->c.verify_passes++;
    q->c.verify_s += share;
    if (j < n) {
        q->tokens[L + j] = vtok;
        q->c.repairs++;
        q->c.rolled_back += n - j - 1;
        q->n_tokens = L + j + 1;
        q->fast_done = 0;
    } else {
        q->n_tokens = L + n;
    }
    q->n_verified = q->n_tokens;
    q->n_cached = q->n_tokens - 1;
    mg_kv_seq_truncate(&e->pool, &q->seq, q->n_tokens + 1);
    int gen = q->n_tokens - q->n_prompt;
    int32_t last = q->tokens[q->n_tokens - 1];
    if (gen >= q->p.max_new_tokens || (!q->p.ignore_eos && mg_is_stop(e, last))) {
        mg_req_check_done(e, q, now);
    } else {
        q->fast_done = 0;
    }
    return MG_OK;
}

mg_status mg_llm42_verify_ready(mg_engine *e, double now) {
    const int W = e->cfg.llm42_window, B = e->cfg.llm42_group;
    mg_req *entries[B];
    for (;;) {
        int n_entries = 0;
        for (int i = 0; i < e->n_reqs && n_entries < B; i++)
            if (is_ready(e, e->reqs[i])) entries[n_entries++] = e->reqs[i];
        if (n_entries == 0) return MG_OK;
        for (int i = 0; i < e->n_reqs && n_entries < B; i++) {
            mg_req *q = e->reqs[i];
            if (!is_filler(q) || is_ready(e, q)) continue;
            entries[n_entries++] = q;
        }
        double t0 = mg_now_s();
        mg_rows *r = &e->aux;
        mg_rows_clear(r);
        for (int k = 0; k < B; k++) {
            mg_req *q = k < n_entries ? entries[k] : NULL;
            int L = q ? q->n_verified : 0, n = q ? unverified(q) : 0;
            assert(n <= W);
            for (int j = 0; j < W; j++) {
                if (j < n)
                    mg_rows_push(r, q, q->tokens[L - 1 + j], L - 1 + j, &q->seq, 1);
                else
                    mg_rows_push(r, NULL, 0, j % e->pool.block_size, &e->dummy, 1);
            }
        }
        mg_status st = mg_rows_run(e, r, e->cfg.llm42_kernels);
        if (st != MG_OK) return st;
        double share = (mg_now_s() - t0) / n_entries;
        for (int k = 0; k < n_entries; k++)
            if ((st = commit_entry(e, entries[k], k * W, share, now)) != MG_OK) return st;
    }
}
