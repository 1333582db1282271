/* HTTP front end on libmicrohttpd: routing, authentication, body limits,
 * JSON replies and Server-Sent Events.
 *
 * MHD runs one thread per connection, so a handler may block: a
 * non-streaming request waits on its job's condition variable until the job
 * is done; a streaming one returns a callback response whose reader blocks
 * until the engine thread publishes more text. While waiting, both poll the
 * socket for a hang-up, and cancel the job when the client is gone (MHD's
 * request-completed callback also cancels it), so the engine thread frees
 * the request's KV blocks before its next step. */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../util/timer.h"
#include "server_internal.h"

typedef enum { R_NONE = 0, R_HEALTH, R_MODELS, R_METRICS, R_COMPLETIONS, R_CHAT } route;

static const struct {
    const char *path, *method;
    route r;
    int auth; /* behind --api-key */
} routes[] = {
    {"/health", "GET", R_HEALTH, 0},         {"/metrics", "GET", R_METRICS, 0},
    {"/v1/models", "GET", R_MODELS, 1},      {"/v1/completions", "POST", R_COMPLETIONS, 1},
    {"/v1/chat/completions", "POST", R_CHAT, 1},
};
#define N_ROUTES (int)(sizeof routes / sizeof routes[0])

/* Per-request state (MHD's con_cls). */
typedef struct {
    mg_srv *s;
    int ri;          /* index into routes, -1 if none */
    int method_ok;
    char *body;
    size_t len, cap;
    int too_large, oom;
    mg_job *job;     /* the connection's reference, if a job was submitted */
    int fd;          /* the client socket, for hang-up detection */
    double t0;
} conn_ctx;

/* A streaming response's reader state (owned by the MHD response). */
typedef struct {
    mg_srv *s;
    mg_job *j;       /* a reference of its own */
    int fd;
    size_t sent_text;
    int sent_tok;
    int role_sent, ended;
    char *out;       /* bytes not yet handed to MHD */
    size_t off, len, cap;
} sse_state;

/* ---- helpers ---- */

static int client_gone(int fd) {
    if (fd < 0) return 0;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return 0;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

/* Waits on cv (CLOCK_MONOTONIC) for at most ms milliseconds. */
static void wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, long ms) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(cv, mu, &ts);
}

static void count_status(mg_srv *s, unsigned status) {
    pthread_mutex_lock(&s->mu);
    unsigned cls = status / 100;
    if (cls >= 1 && cls <= 5) s->m.http_status[cls - 1]++;
    pthread_mutex_unlock(&s->mu);
}

/* Queues `body` (malloc'd, taken) with `status`. */
static enum MHD_Result reply(conn_ctx *x, struct MHD_Connection *c, unsigned status, const char *ctype, char *body,
                             const char *hname, const char *hval) {
    static const char oom[] = "{\"error\": {\"message\": \"out of memory\", \"type\": \"server_error\", \"param\": null, "
                              "\"code\": \"out_of_memory\"}}";
    struct MHD_Response *r;
    if (body) {
        r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
        if (!r) free(body);
    } else {
        status = 500;
        ctype = "application/json";
        hname = NULL;
        r = MHD_create_response_from_buffer(sizeof oom - 1, (void *)oom, MHD_RESPMEM_PERSISTENT);
    }
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (hname) MHD_add_response_header(r, hname, hval);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    count_status(x->s, status);
    if (x->s->cfg.log_requests)
        fprintf(stderr, "margingate serve: %s -> %u (%.1f ms)\n", x->ri >= 0 ? routes[x->ri].path : "?", status,
                (mg_now_s() - x->t0) * 1e3);
    return ret;
}

static enum MHD_Result reply_error(conn_ctx *x, struct MHD_Connection *c, const mg_api_error *e) {
    const char *hname = NULL, *hval = NULL;
    if (e->status == 401) hname = "WWW-Authenticate", hval = "Bearer";
    else if (e->status == 405) hname = "Allow", hval = x->ri >= 0 ? routes[x->ri].method : "GET";
    else if (e->status == 429 || e->status == 503) hname = "Retry-After", hval = "1";
    return reply(x, c, (unsigned)e->status, "application/json", mg_api_error_json(e), hname, hval);
}

static enum MHD_Result fail(conn_ctx *x, struct MHD_Connection *c, int status, const char *type, const char *code,
                            const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static enum MHD_Result fail(conn_ctx *x, struct MHD_Connection *c, int status, const char *type, const char *code,
                            const char *fmt, ...) {
    mg_api_error e = {.status = status, .type = type, .code = code};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    return reply_error(x, c, &e);
}

/* ---- Server-Sent Events ---- */

static int sse_put(sse_state *ss, char *chunk) {
    if (!chunk) return -1;
    size_t n = strlen(chunk);
    if (n == 0) {
        free(chunk);
        return 0;
    }
    if (ss->len + n > ss->cap) {
        size_t cap = (ss->len + n) * 2;
        char *b = realloc(ss->out, cap);
        if (!b) {
            free(chunk);
            return -1;
        }
        ss->out = b;
        ss->cap = cap;
    }
    memcpy(ss->out + ss->len, chunk, n);
    ss->len += n;
    free(chunk);
    return 0;
}

/* Builds the next events (srv->mu held), waiting for output if there is
 * none yet. Returns 0, or -1 when the client is gone or memory ran out. */
static int sse_next(sse_state *ss) {
    mg_srv *s = ss->s;
    mg_job *j = ss->j;
    if (j->chat && !ss->role_sent) {
        ss->role_sent = 1;
        return sse_put(ss, mg_api_chunk_sse(s, j, 0, 0, 0, 0, NULL, 1));
    }
    for (;;) {
        if (j->state == JOB_DONE) {
            int rc;
            if (!strcmp(j->finish_reason, "error")) {
                mg_api_error e = {.status = 500, .type = "server_error", .code = "generation_failed"};
                snprintf(e.message, sizeof e.message, "%s", j->err_msg[0] ? j->err_msg : "generation failed");
                char *body = mg_api_error_json(&e);
                char *ev = body ? malloc(strlen(body) + 9) : NULL;
                if (ev) sprintf(ev, "data: %s\n\n", body);
                free(body);
                rc = sse_put(ss, ev);
            } else {
                rc = sse_put(ss, mg_api_chunk_sse(s, j, ss->sent_text, j->text_len, ss->sent_tok, j->n_tokens,
                                                  j->finish_reason, 0));
                if (!rc && j->include_usage) rc = sse_put(ss, mg_api_usage_sse(s, j));
            }
            if (!rc) rc = sse_put(ss, strdup("data: [DONE]\n\n"));
            ss->sent_text = j->text_len;
            ss->sent_tok = j->n_tokens;
            ss->ended = 1;
            return rc;
        }
        size_t ready = j->text_ready;
        int ntok = mg_job_tokens_within(j, ready);
        if (ready > ss->sent_text || (j->logprobs && ntok > ss->sent_tok)) {
            int rc = sse_put(ss, mg_api_chunk_sse(s, j, ss->sent_text, ready, ss->sent_tok, ntok, NULL, 0));
            ss->sent_text = ready;
            ss->sent_tok = ntok;
            return rc;
        }
        wait_ms(&j->cv, &s->mu, 100);
        if (j->state != JOB_DONE && client_gone(ss->fd)) {
            mg_job_cancel_locked(s, j);
            return -1;
        }
    }
}

static ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    sse_state *ss = cls;
    (void)pos;
    while (ss->off == ss->len) {
        ss->off = ss->len = 0;
        if (ss->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        pthread_mutex_lock(&ss->s->mu);
        int rc = sse_next(ss);
        pthread_mutex_unlock(&ss->s->mu);
        if (rc) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = ss->len - ss->off < max ? ss->len - ss->off : max;
    memcpy(buf, ss->out + ss->off, n);
    ss->off += n;
    return (ssize_t)n;
}

static void sse_free(void *cls) {
    sse_state *ss = cls;
    pthread_mutex_lock(&ss->s->mu);
    mg_job_cancel_locked(ss->s, ss->j);
    mg_job_unref_locked(ss->j);
    pthread_mutex_unlock(&ss->s->mu);
    free(ss->out);
    free(ss);
}

/* ---- endpoints ---- */

static enum MHD_Result handle_generate(conn_ctx *x, struct MHD_Connection *c) {
    mg_srv *s = x->s;
    mg_job *j = mg_job_new();
    if (!j) return fail(x, c, 503, "server_error", "out_of_memory", "out of memory");
    j->t_arrival = x->t0;
    mg_api_error err = {0};
    if (mg_api_parse_request(s, x->body ? x->body : "", x->len, routes[x->ri].r == R_CHAT, j, &err)) {
        mg_job_unref(s, j);
        return reply_error(x, c, &err);
    }
    const char *msg = NULL;
    int st = mg_job_submit(s, j, &msg);
    if (st) {
        mg_job_unref(s, j);
        return fail(x, c, st, st == 429 ? "rate_limit_error" : "server_error", st == 429 ? "queue_full" : "unavailable",
                    "%s", msg);
    }
    x->job = j;
    pthread_mutex_lock(&s->mu);
    while (j->state == JOB_QUEUED || (!j->stream && j->state != JOB_DONE)) {
        wait_ms(&j->cv, &s->mu, 100);
        if (j->state != JOB_DONE && client_gone(x->fd)) {
            mg_job_cancel_locked(s, j);
            pthread_mutex_unlock(&s->mu);
            return MHD_NO;
        }
    }
    if (j->err_status) {
        err = (mg_api_error){.status = j->err_status, .type = j->err_status >= 500 ? "server_error" : "invalid_request_error",
                             .code = j->err_code};
        snprintf(err.message, sizeof err.message, "%s", j->err_msg);
        pthread_mutex_unlock(&s->mu);
        return reply_error(x, c, &err);
    }
    if (j->state == JOB_DONE && !j->stream) {
        const char *fr = j->finish_reason;
        if (!strcmp(fr, "error")) {
            char m[300];
            snprintf(m, sizeof m, "%s", j->err_msg[0] ? j->err_msg : "generation failed");
            pthread_mutex_unlock(&s->mu);
            return fail(x, c, 500, "server_error", "generation_failed", "%s", m);
        }
        if (!strcmp(fr, "abort")) {
            pthread_mutex_unlock(&s->mu);
            return fail(x, c, 503, "server_error", "cancelled", "the server is shutting down; the request was cancelled");
        }
        char *body = mg_api_response_json(s, j);
        pthread_mutex_unlock(&s->mu);
        return reply(x, c, 200, "application/json", body, NULL, NULL);
    }
    sse_state *ss = calloc(1, sizeof *ss);
    if (ss) {
        ss->s = s;
        ss->j = j;
        ss->fd = x->fd;
        j->refs++;
    }
    pthread_mutex_unlock(&s->mu);
    if (!ss) return fail(x, c, 503, "server_error", "out_of_memory", "out of memory");
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_reader, ss, sse_free);
    if (!r) {
        sse_free(ss);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result ret = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    count_status(s, 200);
    return ret;
}

static enum MHD_Result dispatch(conn_ctx *x, struct MHD_Connection *c, const char *url, const char *method) {
    mg_srv *s = x->s;
    if (x->ri < 0) return fail(x, c, 404, "not_found_error", "not_found", "no such endpoint: %s %.200s", method, url);
    if (!x->method_ok)
        return fail(x, c, 405, "invalid_request_error", "method_not_allowed", "%s %s is not allowed; use %s", method,
                    routes[x->ri].path, routes[x->ri].method);
    if (routes[x->ri].auth && s->cfg.api_key) {
        const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        size_t kl = strlen(s->cfg.api_key);
        int ok = h && !strncmp(h, "Bearer ", 7) && strlen(h + 7) == kl;
        unsigned char diff = 0;
        for (size_t i = 0; ok && i < kl; i++) diff |= (unsigned char)(h[7 + i] ^ s->cfg.api_key[i]);
        if (!ok || diff)
            return fail(x, c, 401, "authentication_error", "invalid_api_key",
                        "missing or invalid API key: send 'Authorization: Bearer <key>'");
    }
    if (x->too_large)
        return fail(x, c, 413, "invalid_request_error", "body_too_large", "the request body exceeds %zu bytes",
                    s->cfg.max_body_bytes);
    if (x->oom) return fail(x, c, 503, "server_error", "out_of_memory", "out of memory");
    pthread_mutex_lock(&s->mu);
    int ready = s->ready, draining = s->draining, failed = s->engine_failed;
    pthread_mutex_unlock(&s->mu);
    route r = routes[x->ri].r;
    if (r == R_HEALTH) {
        int ok = ready && !draining && !failed;
        const char *st = !ready ? "loading" : draining ? "shutting_down" : failed ? "engine_failed" : "ok";
        char *body = malloc(64);
        if (body) snprintf(body, 64, "{\"status\": \"%s\"}", st);
        return reply(x, c, ok ? 200 : 503, "application/json", body, NULL, NULL);
    }
    if (!ready) return fail(x, c, 503, "server_error", "model_loading", "the model is still loading");
    if (r == R_MODELS) return reply(x, c, 200, "application/json", mg_api_models_json(s), NULL, NULL);
    if (r == R_METRICS) {
        pthread_mutex_lock(&s->mu);
        char *body = mg_metrics_render(s);
        pthread_mutex_unlock(&s->mu);
        return reply(x, c, 200, "text/plain; version=0.0.4; charset=utf-8", body, NULL, NULL);
    }
    return handle_generate(x, c);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    mg_srv *s = cls;
    conn_ctx *x = *con_cls;
    (void)version;
    if (!x) {
        x = calloc(1, sizeof *x);
        if (!x) return MHD_NO;
        x->s = s;
        x->fd = -1;
        x->ri = -1;
        x->t0 = mg_now_s();
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci) x->fd = ci->connect_fd;
        for (int i = 0; i < N_ROUTES; i++)
            if (!strcmp(url, routes[i].path)) {
                x->ri = i;
                x->method_ok = !strcmp(method, routes[i].method) ||
                               (!strcmp(routes[i].method, "GET") && !strcmp(method, "HEAD"));
            }
        pthread_mutex_lock(&s->mu);
        s->n_connections++;
        pthread_mutex_unlock(&s->mu);
        *con_cls = x;
        if (x->ri >= 0 && x->method_ok && !strcmp(routes[x->ri].method, "POST")) {
            const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl && strtoull(cl, NULL, 10) > s->cfg.max_body_bytes) {
                x->too_large = 1;
                return dispatch(x, c, url, method);
            }
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (x->ri < 0 || !x->method_ok || strcmp(routes[x->ri].method, "POST") || x->too_large || x->oom)
            return MHD_YES;
        if (x->len + n > s->cfg.max_body_bytes) {
            x->too_large = 1;
            free(x->body);
            x->body = NULL;
            x->len = x->cap = 0;
            return MHD_YES;
        }
        if (x->len + n + 1 > x->cap) {
            size_t cap = (x->len + n + 1) * 2;
            char *b = realloc(x->body, cap);
            if (!b) {
                x->oom = 1;
                return MHD_YES;
            }
            x->body = b;
            x->cap = cap;
        }
        memcpy(x->body + x->len, upload, n);
        x->len += n;
        x->body[x->len] = '\0';
        return MHD_YES;
    }
    return dispatch(x, c, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    mg_srv *s = cls;
    conn_ctx *x = *con_cls;
    (void)c;
    (void)toe;
    if (!x) return;
    pthread_mutex_lock(&s->mu);
    if (x->job) {
        mg_job_cancel_locked(s, x->job);
        mg_job_unref_locked(x->job);
    }
    s->n_connections--;
    pthread_cond_broadcast(&s->idle_cv);
    pthread_mutex_unlock(&s->mu);
    free(x->body);
    free(x);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    fprintf(stderr, "margingate serve: http: ");
    vfprintf(stderr, fmt, ap);
}

struct MHD_Daemon *mg_http_start(mg_srv *s, int *port) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", s->cfg.port);
    int gai = getaddrinfo(s->cfg.host, portstr, &hints, &ai);
    if (gai) {
        fprintf(stderr, "margingate serve: cannot resolve host '%s': %s\n", s->cfg.host, gai_strerror(gai));
        return NULL;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ITC;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    if (s->cfg.log_requests) flags |= MHD_USE_ERROR_LOG;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)s->cfg.port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_CONNECTION_LIMIT, (unsigned)1000,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!d) {
        fprintf(stderr, "margingate serve: cannot listen on %s:%d (address in use or not available)\n", s->cfg.host,
                s->cfg.port);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    *port = info ? info->port : s->cfg.port;
    return d;
}
