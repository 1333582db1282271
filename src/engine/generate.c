#include "generate.h"

#include <stdlib.h>
#include <string.h>

#include "../util/timer.h"

static int is_stop(const mg_config *cfg, int32_t t) {
    for (int i = 0; i < cfg->n_eos; i++)
        if (cfg->eos_ids[i] == t) return 1;
    return 0;
}

void mg_generate_result_free(mg_generate_result *res) {
    free(res->tokens);
    free(res->margins);
    free(res->prompt_logits);
    memset(res, 0, sizeof *res);
}

mg_status mg_generate(mg_forward *fw, mg_kv_pool *pool, const mg_config *cfg, int max_rows, const int32_t *prompt,
                      int n_prompt, const mg_generate_opts *opts, mg_token_cb cb, void *user,
                      mg_generate_result *res) {
    memset(res, 0, sizeof *res);
    if (n_prompt < 1) return mg_error_set(MG_ERR_ARG, "empty prompt: at least one token is needed");
    if ((long)n_prompt + opts->max_new_tokens > cfg->max_seq_len)
        return mg_error_set(MG_ERR_RANGE, "prompt of %d tokens + %d new tokens exceeds the context of %d tokens",
                            n_prompt, opts->max_new_tokens, cfg->max_seq_len);
    mg_status st = mg_sampling_validate(&opts->sampling);
    if (st != MG_OK) return st;
    const int vocab = cfg->vocab_size;
    /* Greedy decoding needs only the argmax, computed by the backend; the
     * host needs the logits for sampling (mg_sample) or for on_logits. */
    const int greedy = opts->sampling.temperature <= 0.0f, host_logits = !greedy || opts->on_logits;
    mg_argmax am = {0};
    mg_kv_seq seq = {0};
    int32_t *pos = malloc((size_t)max_rows * sizeof(int32_t));
    mg_kv_seq **seqs = malloc((size_t)max_rows * sizeof(mg_kv_seq *));
    uint8_t *want = calloc((size_t)max_rows, 1);
    float *logits = malloc((size_t)vocab * sizeof(float));
    float *scratch = malloc((size_t)vocab * 2 * sizeof(float));
    res->tokens = malloc(((size_t)opts->max_new_tokens + 1) * sizeof(int32_t));
    res->margins = malloc(((size_t)opts->max_new_tokens + 1) * sizeof(float));
    res->prompt_logits = malloc((size_t)vocab * sizeof(float));
    if (!pos || !seqs || !want || !logits || !scratch || !res->tokens || !res->margins || !res->prompt_logits) {
        st = mg_error_set(MG_ERR_OOM, "cannot allocate generation buffers");
        goto done;
    }
    for (int i = 0; i < max_rows; i++) seqs[i] = &seq;
    st = mg_kv_seq_reserve(pool, &seq, n_prompt + opts->max_new_tokens);
    if (st != MG_OK) goto done;

    double t0 = mg_now_s();
    for (int p0 = 0; p0 < n_prompt; p0 += max_rows) {
        int n = n_prompt - p0 < max_rows ? n_prompt - p0 : max_rows;
        for (int i = 0; i < n; i++) pos[i] = p0 + i, want[i] = (p0 + i == n_prompt - 1);
        mg_batch b = {.n_rows = n, .tokens = prompt + p0, .positions = pos, .seqs = seqs, .want_logits = want};
        /* The last chunk brings the logits after the prompt (kept in the
         * result) and their argmax. */
        const mg_forward_out out = {.logits = p0 + n == n_prompt ? logits : NULL,
                                    .argmax = p0 + n == n_prompt ? &am : NULL};
        st = mg_forward_run_ex(fw, pool, &b, opts->kernels, opts->precision, &out);
        if (st != MG_OK) goto done;
    }
    memcpy(res->prompt_logits, logits, (size_t)vocab * sizeof(float));
    res->prefill_s = mg_now_s() - t0;

    double t1 = mg_now_s();
    for (int step = 0; step < opts->max_new_tokens; step++) {
        int64_t position = n_prompt + step; /* position the new token will occupy */
        if (opts->on_logits) opts->on_logits(opts->on_logits_user, step, logits, vocab);
        int32_t tok = greedy ? am.token : mg_sample(logits, vocab, &opts->sampling, position, scratch);
        float margin = am.margin;
        res->tokens[res->n] = tok;
        res->margins[res->n] = margin;
        res->n++;
        if (cb && cb(user, tok, margin)) break;
        if (!opts->ignore_eos && is_stop(cfg, tok)) {
            res->stopped_eos = 1;
            break;
        }
        if (step + 1 == opts->max_new_tokens) break;
        int32_t p = (int32_t)position;
        mg_batch b = {.n_rows = 1, .tokens = &tok, .positions = &p, .seqs = seqs, .want_logits = NULL};
        const mg_forward_out out = {.logits = host_logits ? logits : NULL, .argmax = &am};
        st = mg_forward_run_ex(fw, pool, &b, opts->kernels, opts->precision, &out);
        if (st != MG_OK) goto done;
    }
    res->decode_s = mg_now_s() - t1;
done:
    mg_kv_seq_free(pool, &seq);
    free(pos);
    free(seqs);
    free(want);
    free(logits);
    free(scratch);
    if (st != MG_OK) mg_generate_result_free(res);
    return st;
}
