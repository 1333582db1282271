/* The solo-vs-batch flip study (RESEARCH.md's definitions).
 *
 * Every prompt is decoded greedily alone (batch 1), then inside a batch of B
 * rows drawn from the same dataset, in lockstep (one synchronous decode step
 * for all rows at a time) through the fast kernels. Both runs prefill each
 * prompt alone in the same chunks, so they start from identical K/V and the
 * same first token: every difference comes from batched decode steps.
 * - synchronous step: a decode step where the solo and batched prefixes are
 *   identical; counted up to and including the first flip of each prompt;
 * - flip: a synchronous step whose argmax tokens differ;
 * - margin: FP32 top-1 minus top-2 logit (both runs' are recorded);
 * - K/V perturbation: per layer, |[K;V]_batch - [K;V]_solo| / |[K;V]_solo| at
 *   the position computed in that step. */
#ifndef MG_FLIPS_H
#define MG_FLIPS_H

#include "../backend/backend.h"
#include "../engine/forward.h"
#include "dataset.h"

#define MG_FLIP_TRACE 16 /* steps of K/V perturbation kept before each flip */

typedef struct {
    int batch;      /* B, rows decoded together */
    int max_new;    /* generated tokens per prompt */
    int n_probes;   /* prompts measured (the first n_probes of the dataset) */
    mg_act_precision precision;
} mg_flip_opts;

typedef struct {
    int prompt, step;
    int32_t solo_token, batch_token;
    float solo_margin, batch_margin;
    int flip;
    float kv_rel; /* mean over layers of the K/V perturbation at this step */
} mg_flip_step;

typedef struct {
    int prompt, step;
    float solo_margin, batch_margin;
    float trace[MG_FLIP_TRACE]; /* mean-over-layers perturbation at steps step-16 .. step-1 (NaN before step 1) */
    float *layers;              /* (n_layers) perturbation per layer at the flip step */
} mg_flip_event;

typedef struct {
    int n_prompts;
    int n_layers;
    long n_steps;            /* synchronous steps */
    mg_flip_step *steps;     /* (n_steps) */
    int n_flips;
    mg_flip_event *flips;    /* (n_flips) */
    int seq_diverged;        /* prompts whose whole continuation differs */
    double solo_s, batch_s;  /* wall time of the two runs */
} mg_flip_report;

/* Runs the study on `d` (which must hold at least max(n_probes, batch)
 * prompts; companions beyond n_probes fill the batches). */
mg_status mg_flip_study(const mg_model *model, const mg_backend_ops *backend, const mg_dataset *d,
                        const mg_flip_opts *opts, mg_flip_report *out);

void mg_flip_report_free(mg_flip_report *r);

#endif
