/* margingate serve: start-up, signals and graceful shutdown.
 *
 * The HTTP daemon starts first, so /health answers 503 while the model
 * loads; then the model, tokenizer and engine are set up and the engine
 * thread starts. SIGINT/SIGTERM are blocked in every thread and taken with
 * sigwait() by the main thread: the server stops accepting connections,
 * refuses new requests on open ones (503), lets in-flight requests finish
 * for up to drain_timeout_s (a second signal cuts this short), cancels the
 * rest (streams get a final chunk with finish_reason "abort" and [DONE]),
 * waits for the responses to be written, and exits 0. */
#include <errno.h>
#include <microhttpd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../engine/model_dir.h"
#include "../util/timer.h"
#include "server_internal.h"

mg_server_config mg_server_config_default(void) {
    return (mg_server_config){.host = "127.0.0.1", .port = 8080, .default_mode = MG_MODE_MARGINGATE,
                              .max_queue = 256, .max_body_bytes = (size_t)4 << 20, .drain_timeout_s = 10.0,
                              .engine = mg_engine_config_default()};
}

/* The backend the engine runs on: the configured one, else the CPU. */
static const mg_backend_ops *server_backend(const mg_srv *s) {
    return s->cfg.backend ? s->cfg.backend : mg_backend_cpu();
}

static void set_names(mg_srv *s) {
    const char *p = s->cfg.model_path;
    if (s->cfg.served_name) {
        snprintf(s->served_name, sizeof s->served_name, "%s", s->cfg.served_name);
    } else {
        size_t n = strlen(p);
        while (n > 1 && p[n - 1] == '/') n--;
        size_t b = n;
        while (b > 0 && p[b - 1] != '/') b--;
        snprintf(s->served_name, sizeof s->served_name, "%.*s", (int)(n - b), p + b);
    }
    /* The fingerprint names what decides the numerics: model, backend,
     * precision, KV block size, MarginGate's tau and LLM-42's W, B and
     * kernels. */
    char key[1024];
    snprintf(key, sizeof key, "%s|%s|%d|%d|%g|%d|%d|%d", p, server_backend(s)->name, (int)s->cfg.engine.precision,
             s->cfg.engine.kv_block_size, (double)s->cfg.engine.margingate_tau, s->cfg.engine.llm42_window,
             s->cfg.engine.llm42_group, (int)s->cfg.engine.llm42_kernels);
    uint64_t h = 1469598103934665603ull;
    for (const char *c = key; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
    snprintf(s->fingerprint, sizeof s->fingerprint, "fp_mg_%012llx", (unsigned long long)(h >> 16));
}

/* Loads model, tokenizer and engine and starts the engine thread. */
static int load(mg_srv *s) {
    mg_model_format format;
    if (s->cfg.test_load_delay_ms > 0) {
        struct timespec ts = {s->cfg.test_load_delay_ms / 1000, (long)(s->cfg.test_load_delay_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    double t0 = mg_now_s();
    if (mg_open_model(s->cfg.model_path, &s->model, &s->tok, &format) != MG_OK) {
        fprintf(stderr, "margingate serve: cannot load the model: %s\n", mg_error_last());
        return -1;
    }
    if (format == MG_FORMAT_LLAMA2C) s->cfg.engine.precision = MG_ACT_FP32;
    const mg_config *mc = &s->model->config;
    s->max_model_len = s->cfg.max_model_len > 0 && s->cfg.max_model_len < mc->max_seq_len ? s->cfg.max_model_len
                                                                                         : mc->max_seq_len;
    if (mg_engine_init(&s->engine, s->model, server_backend(s), &s->cfg.engine) != MG_OK) {
        fprintf(stderr, "margingate serve: cannot set up the engine: %s\n", mg_error_last());
        return -1;
    }
    int used, total;
    mg_engine_kv_usage(s->engine, &used, &total);
    s->kv_pool_tokens = (long)total * s->cfg.engine.kv_block_size;
    set_names(s);
    if (pthread_create(&s->engine_thread, NULL, mg_engine_thread_main, s)) {
        fprintf(stderr, "margingate serve: cannot start the engine thread\n");
        return -1;
    }
    s->engine_started = 1;
    fprintf(stderr,
            "margingate serve: model %s loaded in %.2f s (device %s, context %d, KV pool %ld tokens, default "
            "determinism %s); ready\n",
            s->served_name, mg_now_s() - t0, server_backend(s)->name, s->max_model_len, s->kv_pool_tokens,
            mg_mode_name(s->cfg.default_mode));
    pthread_mutex_lock(&s->mu);
    s->ready = 1;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* Waits on idle_cv until pred holds or `deadline` (mg_now_s clock) passes. */
#define WAIT_UNTIL(s, pred, deadline)                                                            \
    while (!(pred) && mg_now_s() < (deadline)) {                                                 \
        struct timespec ts_;                                                                     \
        clock_gettime(CLOCK_MONOTONIC, &ts_);                                                    \
        ts_.tv_nsec += 50 * 1000000L;                                                            \
        ts_.tv_sec += ts_.tv_nsec / 1000000000L;                                                 \
        ts_.tv_nsec %= 1000000000L;                                                              \
        pthread_cond_timedwait(&(s)->idle_cv, &(s)->mu, &ts_);                                  \
    }

/* True when a signal in `set` is pending within `ms` milliseconds. */
static int signal_within(const sigset_t *set, long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    return sigtimedwait(set, NULL, &ts) > 0;
}

static void drain(mg_srv *s, struct MHD_Daemon *d, const sigset_t *sigs) {
    int fd = MHD_quiesce_daemon(d);
    if (fd >= 0) close(fd);
    pthread_mutex_lock(&s->mu);
    s->draining = 1;
    int n = s->n_outstanding;
    pthread_mutex_unlock(&s->mu);
    if (n > 0)
        fprintf(stderr, "margingate serve: shutting down: finishing %d in-flight request%s (up to %.0f s)\n", n,
                n == 1 ? "" : "s", s->cfg.drain_timeout_s);
    double deadline = mg_now_s() + s->cfg.drain_timeout_s;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        n = s->n_outstanding;
        pthread_mutex_unlock(&s->mu);
        if (n == 0 || mg_now_s() >= deadline) break;
        if (signal_within(sigs, 50)) {
            fprintf(stderr, "margingate serve: second signal: cancelling in-flight requests\n");
            break;
        }
    }
    pthread_mutex_lock(&s->mu);
    if (s->n_outstanding > 0) {
        fprintf(stderr, "margingate serve: cancelling %d request%s\n", s->n_outstanding,
                s->n_outstanding == 1 ? "" : "s");
        s->cancel_all = 1;
        pthread_cond_signal(&s->work_cv);
    }
    double t = mg_now_s() + 10.0;
    WAIT_UNTIL(s, s->n_outstanding == 0, t);
    /* Let connections write their final events and close. */
    t = mg_now_s() + 5.0;
    WAIT_UNTIL(s, s->n_connections == 0, t);
    pthread_mutex_unlock(&s->mu);
}

int mg_server_run(const mg_server_config *cfg) {
    mg_srv *s = calloc(1, sizeof *s);
    if (!s) return 1;
    s->cfg = *cfg;
    s->max_model_len = 1;
    snprintf(s->served_name, sizeof s->served_name, "%s", cfg->served_name ? cfg->served_name : "");
    mg_metrics_init(&s->m);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work_cv, NULL);
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&s->idle_cv, &a);
    pthread_condattr_destroy(&a);

    /* Block the shutdown signals in every thread started from here on;
     * the main thread takes them with sigwait. Writes to closed sockets
     * must not kill the process. */
    sigset_t sigs, old;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, &old);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1, port = 0;
    struct MHD_Daemon *d = mg_http_start(s, &port);
    if (!d) goto out;
    int v6 = strchr(cfg->host, ':') != NULL;
    fprintf(stderr, "margingate serve: listening on http://%s%s%s:%d\n", v6 ? "[" : "", cfg->host, v6 ? "]" : "", port);
    if (load(s)) goto out;
    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {
    }
    fprintf(stderr, "margingate serve: %s received, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    drain(s, d, &sigs);
    rc = 0;
out:
    if (d) MHD_stop_daemon(d);
    if (s->engine_started) {
        pthread_mutex_lock(&s->mu);
        s->stop_engine = 1;
        s->cancel_all = 1;
        pthread_cond_signal(&s->work_cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->engine_thread, NULL);
    }
    /* Jobs still referenced by connections were freed by MHD_stop_daemon's
     * completion callbacks; the engine thread has released the rest. */
    mg_engine_free(s->engine);
    mg_tokenizer_free(s->tok);
    mg_model_free(s->model);
    pthread_cond_destroy(&s->idle_cv);
    pthread_cond_destroy(&s->work_cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
    /* Take any further SIGINT/SIGTERM that arrived while stopping, so that
     * restoring the mask does not kill the process on the way out. */
    struct timespec zero = {0, 0};
    while (sigtimedwait(&sigs, NULL, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == 0) fprintf(stderr, "margingate serve: stopped\n");
    return rc;
}
