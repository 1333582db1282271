/* Sequence-level determinism of a mode through the batched engine: each
 * prompt decoded alone, then all of them together (arriving at once, with
 * companions from the same dataset up to the batch size), compared token for
 * token. */
#ifndef MG_MODE_STUDY_H
#define MG_MODE_STUDY_H

#include "../sched/engine.h"
#include "dataset.h"

typedef struct {
    mg_mode mode;
    float tau;            /* margingate only */
    int n_prompts;
    int identical;        /* prompts whose whole output matches the solo run */
    mg_mode_counters solo, batched; /* engine totals of each run */
    long generated;       /* tokens generated in the batched run */
    double solo_s, batch_s;
} mg_mode_result;

/* Runs `mode` on the first n_probes prompts in batches of `batch`.
 * `cfg` is the engine configuration (tau, W, B, precision). */
mg_status mg_mode_study(const mg_model *model, const mg_backend_ops *backend, const mg_dataset *d, int n_probes,
                        int batch, int max_new, mg_mode mode, const mg_engine_config *cfg, mg_mode_result *out);

#endif
