/* The OpenAI-compatible HTTP server behind `margingate serve`.
 *
 * Threads: libmicrohttpd runs one thread per connection; one engine thread
 * owns the mg_engine (which is not thread-safe) and is the only thread that
 * calls it. Connection threads hand jobs to the engine thread through a
 * queue guarded by the server mutex and wait on the job's condition
 * variable for its output; the engine thread detokenizes, applies stop
 * strings and publishes text and counters under that mutex. */
#ifndef MG_SERVER_H
#define MG_SERVER_H

#include <stddef.h>

#include "../sched/engine.h"

typedef struct {
    const char *model_path;     /* -m: checkpoint directory or llama2.c file */
    const char *served_name;    /* model id in the API (default: the path's basename) */
    const char *host;           /* address to bind (default 127.0.0.1) */
    int port;                   /* 0 = any free port (printed on stderr) */
    mg_mode default_mode;       /* when a request names no "determinism" */
    const char *api_key;        /* NULL: no authentication */
    int max_queue;              /* requests waiting beyond max_running before 429 */
    size_t max_body_bytes;      /* larger request bodies get 413 */
    int max_model_len;          /* prompt + max_tokens limit; 0 = the model's context */
    double drain_timeout_s;     /* on SIGINT/SIGTERM: time to finish in-flight requests */
    int threads;                /* OpenMP threads for the engine (0 = default) */
    int log_requests;           /* one stderr line per request */
    int test_load_delay_ms;     /* testing: sleep before loading the model */
    const mg_backend_ops *backend; /* where the engine computes (--device); NULL = the CPU */
    mg_engine_config engine;
} mg_server_config;

/* Defaults: 127.0.0.1:8080, margingate mode, 256 queued, 4 MiB bodies,
 * 10 s drain, engine defaults. */
mg_server_config mg_server_config_default(void);

/* Runs the server until SIGINT or SIGTERM, then drains and stops. Prints
 * "margingate serve: listening on http://HOST:PORT" once bound. Returns 0
 * after a clean shutdown, 1 on a startup failure (message on stderr). */
int mg_server_run(const mg_server_config *cfg);

#endif
