#include "mode_study.h"

#include <stdlib.h>
#include <string.h>

#include "../util/timer.h"

/* Runs every request of `members` in one engine until done; copies the first
 * n_out requests' tokens into out (n_out, max_new). */
static mg_status run_group(const mg_model *model, const mg_backend_ops *backend, const mg_engine_config *cfg,
                           const mg_dataset *d, const int *members, int n, int n_out, const mg_request_params *p,
                           int32_t *out, mg_mode_counters *totals) {
    mg_engine *e;
    mg_status st = mg_engine_init(&e, model, backend, cfg);
    if (st != MG_OK) return st;
    int ids[n];
    for (int i = 0; i < n && st == MG_OK; i++)
        st = mg_engine_add(e, d->ids[members[i]], d->n_ids[members[i]], p, &ids[i]);
    while (st == MG_OK && mg_engine_pending(e)) st = mg_engine_step(e);
    for (int i = 0; i < n_out && st == MG_OK; i++) {
        mg_request_view v;
        mg_engine_view(e, ids[i], &v);
        memset(out + (size_t)i * p->max_new_tokens, 0xff, (size_t)p->max_new_tokens * sizeof(int32_t));
        memcpy(out + (size_t)i * p->max_new_tokens, v.tokens, (size_t)v.n_visible * sizeof(int32_t));
    }
    if (st == MG_OK) {
        const mg_mode_counters *t = &mg_engine_totals(e)[p->mode];
        totals->steps += t->steps;
        totals->verified_steps += t->verified_steps;
        totals->repairs += t->repairs;
        totals->rolled_back += t->rolled_back;
        totals->verify_passes += t->verify_passes;
        totals->verify_s += t->verify_s;
    }
    mg_engine_free(e);
    return st;
}

mg_status mg_mode_study(const mg_model *model, const mg_backend_ops *backend, const mg_dataset *d, int n_probes,
                        int batch, int max_new, mg_mode mode, const mg_engine_config *cfg, mg_mode_result *out) {
    memset(out, 0, sizeof *out);
    out->mode = mode;
    out->tau = cfg->margingate_tau;
    if (d->n < n_probes || d->n < batch)
        return mg_error_set(MG_ERR_ARG, "dataset has %d prompts; the study needs %d", d->n,
                            n_probes > batch ? n_probes : batch);
    mg_request_params p = {.mode = mode, .max_new_tokens = max_new, .sampling = {.top_p = 1.0f}, .ignore_eos = 1};
    int32_t *solo = malloc((size_t)n_probes * max_new * sizeof(int32_t));
    int32_t *bat = malloc((size_t)batch * max_new * sizeof(int32_t));
    if (!solo || !bat) {
        free(solo);
        free(bat);
        return mg_error_set(MG_ERR_OOM, "out of memory");
    }
    mg_status st = MG_OK;
    double t0 = mg_now_s();
    for (int i = 0; i < n_probes && st == MG_OK; i++)
        st = run_group(model, backend, cfg, d, &i, 1, 1, &p, solo + (size_t)i * max_new, &out->solo);
    out->solo_s = mg_now_s() - t0;
    t0 = mg_now_s();
    for (int g0 = 0; g0 < n_probes && st == MG_OK; g0 += batch) {
        int members[batch];
        int probes = n_probes - g0 < batch ? n_probes - g0 : batch;
        for (int i = 0; i < batch; i++) members[i] = i < probes ? g0 + i : (n_probes + g0 + i) % d->n;
        st = run_group(model, backend, cfg, d, members, batch, probes, &p, bat, &out->batched);
        for (int i = 0; i < probes && st == MG_OK; i++)
            out->identical += !memcmp(bat + (size_t)i * max_new, solo + (size_t)(g0 + i) * max_new,
                                      (size_t)max_new * sizeof(int32_t));
        out->generated += (long)batch * max_new;
    }
    out->batch_s = mg_now_s() - t0;
    out->n_prompts = n_probes;
    free(solo);
    free(bat);
    return st;
}
