/* Jobs and the engine thread.
 *
 * The engine thread is the only caller of the mg_engine. Each iteration,
 * under srv->mu: take queued jobs into the engine, cancel jobs whose client
 * went away, publish the metrics snapshot; then, without the lock, run one
 * mg_engine_step; then, under the lock again, take every job's newly
 * visible tokens (detokenize, stop strings), finish the jobs that are done
 * and signal their condition variables. A cancelled job's engine request is
 * released before the next step, so its KV blocks are free for that step. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/timer.h"
#include "server_internal.h"

mg_job *mg_job_new(void) {
    mg_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&j->cv, &a);
    pthread_condattr_destroy(&a);
    if (rc) {
        free(j);
        return NULL;
    }
    j->refs = 1;
    j->engine_id = -1;
    j->prev = -1;
    return j;
}

static void job_free(mg_job *j) {
    pthread_cond_destroy(&j->cv);
    free(j->prompt);
    for (int i = 0; i < j->n_stop; i++) free(j->stop[i]);
    free(j->tokens);
    free(j->lps);
    free(j->tok_end);
    free(j->raw);
    free(j->text);
    free(j);
}

void mg_job_unref_locked(mg_job *j) {
    if (j && --j->refs == 0) job_free(j);
}

void mg_job_unref(mg_srv *s, mg_job *j) {
    if (!j) return;
    pthread_mutex_lock(&s->mu);
    mg_job_unref_locked(j);
    pthread_mutex_unlock(&s->mu);
}

int mg_job_submit(mg_srv *s, mg_job *j, const char **msg) {
    int status = 0;
    pthread_mutex_lock(&s->mu);
    if (!s->ready) {
        status = 503;
        *msg = "the model is still loading";
    } else if (s->draining) {
        status = 503;
        *msg = "the server is shutting down";
    } else if (s->engine_failed) {
        status = 503;
        *msg = "the engine failed; the server cannot take requests";
    } else if (s->n_outstanding >= s->cfg.engine.max_running + s->cfg.max_queue) {
        status = 429;
        *msg = "the request queue is full; retry later";
        s->m.rejected_queue_full++;
    } else {
        j->refs++;
        j->state = JOB_QUEUED;
        j->next = NULL;
        if (s->queue_tail) s->queue_tail->next = j;
        else s->queue_head = j;
        s->queue_tail = j;
        s->n_outstanding++;
        pthread_cond_signal(&s->work_cv);
    }
    pthread_mutex_unlock(&s->mu);
    return status;
}

void mg_job_cancel_locked(mg_srv *s, mg_job *j) {
    if (j->state == JOB_DONE || j->cancel) return;
    j->cancel = 1;
    pthread_cond_signal(&s->work_cv);
}

static int reason_index(const char *r) {
    if (!strcmp(r, "stop")) return 0;
    if (!strcmp(r, "length")) return 1;
    if (!strcmp(r, "abort")) return 2;
    return 3;
}

/* Marks j done (keeping an earlier finish reason), releases its engine
 * request and drops the engine side's reference. */
static void finish(mg_srv *s, mg_job *j, const char *reason, double now) {
    if (!j->finish_reason) j->finish_reason = reason;
    j->state = JOB_DONE;
    j->t_done = now;
    j->text_ready = j->text_len;
    if (j->engine_id >= 0) {
        mg_engine_release(s->engine, j->engine_id);
        j->engine_id = -1;
    }
    s->n_outstanding--;
    s->m.finished[reason_index(j->finish_reason)]++;
    if (strcmp(j->finish_reason, "error")) mg_histogram_observe(&s->m.e2e, now - j->t_arrival);
    pthread_cond_broadcast(&j->cv);
    pthread_cond_broadcast(&s->idle_cv);
    mg_job_unref_locked(j);
}

/* Moves queued jobs into the engine; appends the accepted ones to *active. */
static void intake(mg_srv *s, mg_job **active) {
    while (s->queue_head) {
        mg_job *j = s->queue_head;
        s->queue_head = j->next;
        if (!s->queue_head) s->queue_tail = NULL;
        j->next = NULL;
        double now = mg_now_s();
        if (j->cancel || s->cancel_all) {
            finish(s, j, "abort", now);
            continue;
        }
        int id;
        mg_status st = mg_engine_add(s->engine, j->prompt, j->n_prompt, &j->params, &id);
        if (st == MG_OK && j->logprobs) {
            st = mg_engine_want_logprobs(s->engine, id, j->top_logprobs);
            if (st != MG_OK) mg_engine_release(s->engine, id);
        }
        if (st != MG_OK) {
            j->err_status = st == MG_ERR_OOM ? 503 : 400;
            j->err_code = st == MG_ERR_OOM ? "out_of_memory" : "invalid_request";
            snprintf(j->err_msg, sizeof j->err_msg, "%s", mg_error_last());
            finish(s, j, "error", now);
            continue;
        }
        j->engine_id = id;
        j->state = JOB_ACTIVE;
        s->m.prompt_tokens += (unsigned long)j->n_prompt;
        j->next = *active;
        *active = j;
        pthread_cond_broadcast(&j->cv);
    }
}

/* Finishes (and unlinks) the cancelled active jobs, or all with cancel_all. */
static void sweep(mg_srv *s, mg_job **active, int cancel_all) {
    double now = mg_now_s();
    for (mg_job **pp = active; *pp;) {
        mg_job *j = *pp;
        if (j->cancel || cancel_all) {
            *pp = j->next;
            finish(s, j, "abort", now);
        } else {
            pp = &j->next;
        }
    }
}

static void publish(mg_srv *s) {
    mg_metrics *m = &s->m;
    mg_engine_kv_usage(s->engine, &m->kv_used, &m->kv_total);
    mg_engine_request_counts(s->engine, &m->running, &m->waiting, &m->swapped);
    memcpy(m->totals, mg_engine_totals(s->engine), sizeof m->totals);
    m->preemptions = mg_engine_preemptions(s->engine);
    m->queued = 0;
    for (mg_job *j = s->queue_head; j; j = j->next) m->queued++;
}

static const char *finish_name(mg_finish f) {
    switch (f) {
    case MG_FINISH_STOP: return "stop";
    case MG_FINISH_LENGTH: return "length";
    case MG_FINISH_CANCELLED: return "abort";
    default: return "error";
    }
}

/* Takes each active job's new tokens; finishes the jobs that are done. */
static void harvest(mg_srv *s, mg_job **active, double now) {
    for (mg_job **pp = active; *pp;) {
        mg_job *j = *pp;
        mg_request_view v;
        if (mg_engine_view(s->engine, j->engine_id, &v) != MG_OK) {
            *pp = j->next;
            finish(s, j, "error", now);
            continue;
        }
        int before = j->n_tokens, r = 0;
        while (j->n_tokens < v.n_visible && r == 0) {
            const mg_token_logprobs *lp = j->logprobs ? mg_engine_logprobs(s->engine, j->engine_id, j->n_tokens) : NULL;
            r = mg_job_take_token(j, s->tok, v.tokens[j->n_tokens], lp);
        }
        int got = j->n_tokens - before;
        if (got > 0) {
            s->m.generation_tokens += (unsigned long)got;
            if (before == 0) {
                j->t_first = now;
                mg_histogram_observe(&s->m.ttft, now - j->t_arrival);
            } else {
                mg_histogram_observe(&s->m.itl, now - j->t_last);
            }
            /* Tokens that became visible together reach the client together. */
            for (int k = 1; k < got; k++) mg_histogram_observe(&s->m.itl, 0.0);
            j->t_last = now;
        }
        j->counters = v.counters;
        const char *reason = NULL;
        if (r < 0) {
            snprintf(j->err_msg, sizeof j->err_msg, "out of memory while detokenizing");
            reason = "error";
        } else if (r == 1) {
            reason = "stop";
        } else if (v.finish != MG_FINISH_NONE) {
            mg_job_flush_text(j);
            reason = finish_name(v.finish);
            if (v.finish == MG_FINISH_ERROR)
                snprintf(j->err_msg, sizeof j->err_msg, "the request could not be scheduled (KV cache exhausted)");
        }
        if (reason) {
            *pp = j->next;
            finish(s, j, reason, now);
        } else {
            if (got) pthread_cond_broadcast(&j->cv);
            pp = &j->next;
        }
    }
}

void *mg_engine_thread_main(void *arg) {
    mg_srv *s = arg;
    mg_job *active = NULL;
    /* OpenMP's team-size settings are per thread: set them where the engine
     * runs, as main() does for the other commands (exactly --threads when
     * given, else a dynamic team unless OMP_DYNAMIC says otherwise). */
    if (s->cfg.threads > 0) {
        omp_set_dynamic(0);
        omp_set_num_threads(s->cfg.threads);
    } else if (!getenv("OMP_DYNAMIC")) {
        omp_set_dynamic(1);
    }
    pthread_mutex_lock(&s->mu);
    for (;;) {
        intake(s, &active);
        sweep(s, &active, s->cancel_all || s->engine_failed);
        publish(s);
        if (!active) {
            if (s->stop_engine) break;
            pthread_cond_wait(&s->work_cv, &s->mu);
            continue;
        }
        pthread_mutex_unlock(&s->mu);
        mg_status st = mg_engine_step(s->engine);
        double now = mg_now_s();
        pthread_mutex_lock(&s->mu);
        if (st != MG_OK) {
            fprintf(stderr, "margingate serve: engine step failed: %s\n", mg_error_last());
            for (mg_job *j = active; j; j = j->next)
                snprintf(j->err_msg, sizeof j->err_msg, "engine failure: %s", mg_error_last());
            s->engine_failed = 1;
            while (active) {
                mg_job *j = active;
                active = j->next;
                finish(s, j, "error", now);
            }
            continue;
        }
        harvest(s, &active, now);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}
