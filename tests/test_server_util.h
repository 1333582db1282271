/* Helpers for the server tests: start `margingate serve` on a free port of
 * 127.0.0.1 as a child process (killed if the test process dies), talk to
 * it with curl (popen) or the project's client (src/server/http_client.h),
 * and stop it with SIGTERM. The binary is $BUILD/margingate (build/ by
 * default; build-asan/ under `make asan`). */
#ifndef MG_TEST_SERVER_UTIL_H
#define MG_TEST_SERVER_UTIL_H

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../src/server/http_client.h"
#include "shared_path.h"

typedef struct {
    pid_t pid;
    int port;
    char log[256];
} test_server;

static inline const char *test_bin(void) {
    static char bin[512];
    const char *b = getenv("BUILD");
    snprintf(bin, sizeof bin, "./%s/margingate", b && *b ? b : "build");
    return bin;
}

static inline double test_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline void test_sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Reads the whole log file into a static buffer. */
static inline const char *server_log(const test_server *s) {
    static char buf[1 << 16];
    buf[0] = '\0';
    FILE *f = fopen(s->log, "r");
    if (!f) return buf;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* GET/POST with the project's client; returns the status (0 on failure). */
static inline int server_http(const test_server *s, const char *method, const char *path, const char *body,
                              const char *headers, char **out_body, double timeout_s) {
    mg_http_request rq = {.host = "127.0.0.1", .port = s->port, .method = method, .path = path, .headers = headers,
                          .body = body, .body_len = body ? strlen(body) : 0, .timeout_s = timeout_s};
    mg_http_response r;
    char err[256] = "";
    int rc = mg_http_do(&rq, &r, err, sizeof err);
    int st = rc ? 0 : r.status;
    if (out_body) {
        *out_body = r.body;
        r.body = NULL;
    }
    mg_http_response_free(&r);
    return st;
}

/* Starts the server with extra arguments (a shell word list) and waits
 * until /health answers 200 (wait_ready) or it is listening. */
static inline void server_start_opts(test_server *s, const char *args, int wait_ready) {
    char model[1024];
    MG_TEST_SHARED(model, "models/mg-llama-27m");
    static int counter;
    snprintf(s->log, sizeof s->log, "/tmp/mg_test_server_%d_%d.log", (int)getpid(), counter++);
    char cmd[4096];
    /* One engine thread: the tests' clients share the (2) cores, and OpenMP
     * barriers stall when a core is busy elsewhere. */
    snprintf(cmd, sizeof cmd, "exec %s serve -m %s --port 0 --threads 1 %s 2>%s >/dev/null </dev/null", test_bin(),
             model, args ? args : "", s->log);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    s->pid = pid;
    s->port = 0;
    double t0 = test_now();
    while (test_now() - t0 < 30) {
        const char *log = server_log(s);
        const char *p = strstr(log, "listening on http://127.0.0.1:");
        if (p) {
            s->port = atoi(p + strlen("listening on http://127.0.0.1:"));
            break;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) cr_assert_fail("server exited at start-up: %s", server_log(s));
        test_sleep_ms(10);
    }
    cr_assert_gt(s->port, 0, "server did not start listening: %s", server_log(s));
    while (wait_ready && test_now() - t0 < 60) {
        if (server_http(s, "GET", "/health", NULL, NULL, NULL, 5) == 200) return;
        test_sleep_ms(20);
    }
    cr_assert(!wait_ready, "server never became healthy: %s", server_log(s));
}

static inline void server_start(test_server *s, const char *args) { server_start_opts(s, args, 1); }

/* Sends SIGTERM and waits (up to timeout_s) for the exit; returns the exit
 * code (-1 if killed by a signal). Kills it and fails on timeout. */
static inline int server_stop(test_server *s, double timeout_s) {
    if (s->pid <= 0) return -1;
    kill(s->pid, SIGTERM);
    double t0 = test_now();
    int st = 0;
    while (waitpid(s->pid, &st, WNOHANG) == 0) {
        if (test_now() - t0 > timeout_s) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &st, 0);
            s->pid = 0;
            cr_assert_fail("server did not exit within %.0f s of SIGTERM: %s", timeout_s, server_log(s));
        }
        test_sleep_ms(10);
    }
    s->pid = 0;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) remove(s->log);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Copies the last (n - 1) bytes of the server's log into out. */
static inline void server_log_tail(const test_server *s, char *out, size_t n) {
    const char *l = server_log(s);
    size_t len = strlen(l), k = len < n - 1 ? len : n - 1;
    memcpy(out, l + len - k, k);
    out[k] = '\0';
}

/* Stops the server and requires a clean exit 0. */
static inline void server_stop_clean(test_server *s) {
    char log[4096];
    server_log_tail(s, log, sizeof log);
    int rc = server_stop(s, 30);
    cr_assert_eq(rc, 0, "server exit code %d; log:\n%s", rc, log);
}

typedef struct {
    int status;
    char *body; /* malloc'd */
} curl_result;

/* Runs curl with `args` against the server (the string "URL" in args is
 * replaced by http://127.0.0.1:PORT); the body goes to a temporary file. */
static inline curl_result server_curl(const test_server *s, const char *args) {
    char base[64], expanded[16384], cmd[17000], tmp[128];
    snprintf(base, sizeof base, "http://127.0.0.1:%d", s->port);
    const char *p = args;
    size_t o = 0;
    while (*p && o < sizeof expanded - 64) {
        if (!strncmp(p, "URL", 3)) {
            o += (size_t)snprintf(expanded + o, sizeof expanded - o, "%s", base);
            p += 3;
        } else {
            expanded[o++] = *p++;
        }
    }
    expanded[o] = '\0';
    static int n;
    snprintf(tmp, sizeof tmp, "/tmp/mg_test_curl_%d_%d", (int)getpid(), n++);
    snprintf(cmd, sizeof cmd, "curl -s -S --max-time 120 -o %s -w '%%{http_code}' %s", tmp, expanded);
    FILE *f = popen(cmd, "r");
    cr_assert_not_null(f);
    char code[32] = "";
    size_t k = fread(code, 1, sizeof code - 1, f);
    code[k] = '\0';
    pclose(f);
    curl_result r = {.status = atoi(code), .body = NULL};
    FILE *b = fopen(tmp, "rb");
    if (b) {
        fseek(b, 0, SEEK_END);
        long len = ftell(b);
        fseek(b, 0, SEEK_SET);
        r.body = malloc((size_t)len + 1);
        size_t got = fread(r.body, 1, (size_t)len, b);
        r.body[got] = '\0';
        fclose(b);
        remove(tmp);
    } else {
        r.body = calloc(1, 1);
    }
    return r;
}

/* Writes `body` to a temporary file and POSTs it with curl to `path`. */
static inline curl_result server_curl_post(const test_server *s, const char *path, const char *body,
                                           const char *extra) {
    static int n;
    char tmp[128], args[1024];
    snprintf(tmp, sizeof tmp, "/tmp/mg_test_body_%d_%d", (int)getpid(), n++);
    FILE *f = fopen(tmp, "wb");
    cr_assert_not_null(f);
    fwrite(body, 1, strlen(body), f);
    fclose(f);
    snprintf(args, sizeof args, "-N -H 'Content-Type: application/json' --data-binary @%s %s URL%s", tmp,
             extra ? extra : "", path);
    curl_result r = server_curl(s, args);
    remove(tmp);
    return r;
}

/* Parses an SSE body: the JSON of each data event in order (until [DONE],
 * which sets *done). Returns the number of events stored in ev (caller
 * frees each with cJSON_Delete). */
typedef struct {
    cJSON **ev;
    int n, cap, done, after_done;
} sse_events;

static inline int sse_collect(void *user, const char *data) {
    sse_events *e = user;
    if (e->done) {
        e->after_done++;
        return 0;
    }
    if (!strcmp(data, "[DONE]")) {
        e->done = 1;
        return 0;
    }
    if (e->n == e->cap) {
        e->cap = e->cap ? 2 * e->cap : 16;
        e->ev = realloc(e->ev, (size_t)e->cap * sizeof *e->ev);
    }
    e->ev[e->n++] = cJSON_Parse(data);
    return 0;
}

static inline sse_events sse_parse(const char *body) {
    sse_events e = {0};
    mg_sse_parser p = {0};
    mg_sse_feed(&p, body, strlen(body), sse_collect, &e);
    mg_sse_free(&p);
    return e;
}

static inline void sse_events_free(sse_events *e) {
    for (int i = 0; i < e->n; i++) cJSON_Delete(e->ev[i]);
    free(e->ev);
    memset(e, 0, sizeof *e);
}

/* A numeric Prometheus sample "name value" or "name{labels} value" from
 * /metrics; fails if absent. */
static inline double metrics_value(const char *text, const char *sample) {
    char key[256];
    snprintf(key, sizeof key, "\n%s ", sample);
    const char *p = strstr(text, key);
    cr_assert_not_null(p, "metric %s missing from /metrics", sample);
    return strtod(p + strlen(key), NULL);
}

static inline double server_metric(const test_server *s, const char *sample) {
    char *body = NULL;
    int st = server_http(s, "GET", "/metrics", NULL, NULL, &body, 10);
    cr_assert_eq(st, 200);
    double v = metrics_value(body, sample);
    free(body);
    return v;
}

/* JSON helpers */
static inline cJSON *jget(const cJSON *o, const char *path) {
    /* dotted path with numeric indices: "choices.0.text" */
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *cur = o;
    for (char *save = NULL, *t = strtok_r(buf, ".", &save); t && cur; t = strtok_r(NULL, ".", &save)) {
        if (cJSON_IsArray(cur)) cur = cJSON_GetArrayItem(cur, atoi(t));
        else cur = cJSON_GetObjectItemCaseSensitive(cur, t);
    }
    return (cJSON *)cur;
}

static inline const char *jstr(const cJSON *o, const char *path) {
    cJSON *v = jget(o, path);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static inline double jnum(const cJSON *o, const char *path) {
    cJSON *v = jget(o, path);
    cr_assert(cJSON_IsNumber(v), "%s is not a number", path);
    return v->valuedouble;
}

#endif
