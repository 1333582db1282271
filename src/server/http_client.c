/* Blocking HTTP/1.1 client: see http_client.h. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../util/timer.h"
#include "http_client.h"

typedef struct {
    char *p;
    size_t len, cap;
} buf;

static int buf_put(buf *b, const char *d, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *q = realloc(b->p, cap);
        if (!q) return -1;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static int failf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int failf(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Milliseconds left before `deadline` (-1: none), at least 0. */
static int ms_left(double deadline) {
    if (deadline <= 0) return -1;
    double left = deadline - mg_now_s();
    return left <= 0 ? 0 : (int)(left * 1000) + 1;
}

static int connect_to(const char *host, int port, double deadline, char *err, size_t errlen) {
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host, ps, &hints, &ai);
    if (rc) return failf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(rc));
    int fd = -1;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        int fl = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            int ok = 0;
            if (errno == EINPROGRESS) {
                struct pollfd p = {.fd = fd, .events = POLLOUT};
                if (poll(&p, 1, ms_left(deadline)) == 1) {
                    int e = 0;
                    socklen_t l = sizeof e;
                    getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l);
                    ok = e == 0;
                    errno = e ? e : ETIMEDOUT;
                } else {
                    errno = ETIMEDOUT;
                }
            }
            if (!ok) {
                close(fd);
                fd = -1;
                continue;
            }
        }
        fcntl(fd, F_SETFL, fl);
    }
    freeaddrinfo(ai);
    if (fd < 0) return failf(err, errlen, "cannot connect to %s:%d: %s", host, port, strerror(errno));
    return fd;
}

static int send_all(int fd, const char *d, size_t n, double deadline, char *err, size_t errlen) {
    while (n > 0) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, ms_left(deadline)) != 1) return failf(err, errlen, "timed out sending the request");
        ssize_t w = send(fd, d, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            return failf(err, errlen, "send failed: %s", strerror(errno));
        }
        d += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Body decoding state. */
typedef struct {
    int mode;          /* 0 length, 1 chunked, 2 until close */
    size_t remaining;  /* length mode: bytes left; chunked: bytes left in chunk */
    int cstate;        /* chunked: 0 size line, 1 data, 2 CRLF after data, 3 trailers, 4 done */
    buf line;          /* chunked: partial size/trailer line */
    int done, stopped;
    const mg_http_request *req;
    mg_http_response *resp;
    buf body;
} decoder;

static int deliver(decoder *d, const char *p, size_t n) {
    if (n == 0 || d->stopped) return 0;
    if (d->req->on_body) {
        if (d->req->on_body(d->req->user, p, n)) d->stopped = d->done = 1;
        return 0;
    }
    return buf_put(&d->body, p, n);
}

/* Feeds raw body bytes; returns -1 on malformed chunking or OOM. */
static int decode(decoder *d, const char *p, size_t n) {
    if (d->mode == 2) return deliver(d, p, n);
    if (d->mode == 0) {
        size_t k = n < d->remaining ? n : d->remaining;
        if (deliver(d, p, k)) return -1;
        d->remaining -= k;
        if (d->remaining == 0) d->done = 1;
        return 0;
    }
    while (n > 0 && !d->done) {
        if (d->cstate == 1) {
            size_t k = n < d->remaining ? n : d->remaining;
            if (deliver(d, p, k)) return -1;
            p += k;
            n -= k;
            d->remaining -= k;
            if (d->remaining == 0) d->cstate = 2, d->line.len = 0;
            continue;
        }
        /* Line-oriented states: collect up to '\n'. */
        const char *nl = memchr(p, '\n', n);
        size_t k = nl ? (size_t)(nl - p) + 1 : n;
        if (buf_put(&d->line, p, k)) return -1;
        p += k;
        n -= k;
        if (d->line.len > 4096) return -1;
        if (!nl) continue;
        char *l = d->line.p;
        if (d->cstate == 2) {
            if (strcmp(l, "\r\n") && strcmp(l, "\n")) return -1;
            d->cstate = 0;
        } else if (d->cstate == 0) {
            char *end;
            unsigned long long sz = strtoull(l, &end, 16);
            if (end == l) return -1;
            if (sz == 0) d->cstate = 3;
            else d->cstate = 1, d->remaining = (size_t)sz;
        } else if (d->cstate == 3) {
            if (!strcmp(l, "\r\n") || !strcmp(l, "\n")) d->done = 1;
        }
        d->line.len = 0;
    }
    return 0;
}

int mg_http_do(const mg_http_request *req, mg_http_response *resp, char *err, size_t errlen) {
    memset(resp, 0, sizeof *resp);
    double deadline = req->timeout_s > 0 ? mg_now_s() + req->timeout_s : 0;
    int fd = connect_to(req->host, req->port, deadline, err, errlen);
    if (fd < 0) return -1;
    buf head = {0}, in = {0};
    decoder d = {.req = req, .resp = resp};
    int rc = -1;
    char hb[1024];
    int v6 = strchr(req->host, ':') != NULL; /* an IPv6 literal goes in brackets */
    snprintf(hb, sizeof hb,
             "%s %s HTTP/1.1\r\nHost: %s%s%s:%d\r\nConnection: close\r\nUser-Agent: margingate\r\nAccept: */*\r\n",
             req->method, req->path, v6 ? "[" : "", req->host, v6 ? "]" : "", req->port);
    if (buf_put(&head, hb, strlen(hb))) goto out;
    if (req->body) {
        snprintf(hb, sizeof hb, "Content-Length: %zu\r\n", req->body_len);
        if (buf_put(&head, hb, strlen(hb))) goto out;
        if (!req->headers || !strcasestr(req->headers, "content-type:"))
            if (buf_put(&head, "Content-Type: application/json\r\n", 32)) goto out;
    }
    if (req->headers && buf_put(&head, req->headers, strlen(req->headers))) goto out;
    if (buf_put(&head, "\r\n", 2)) goto out;
    if (send_all(fd, head.p, head.len, deadline, err, errlen)) goto out;
    if (req->body && req->body_len && send_all(fd, req->body, req->body_len, deadline, err, errlen)) goto out;
    int have_head = 0;
    char rb[16384];
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, ms_left(deadline));
        if (pr == 0) {
            failf(err, errlen, "timed out waiting for the response");
            goto out;
        }
        if (pr < 0) {
            if (errno == EINTR) continue;
            failf(err, errlen, "poll failed: %s", strerror(errno));
            goto out;
        }
        ssize_t r = recv(fd, rb, sizeof rb, 0);
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            failf(err, errlen, "receive failed: %s", strerror(errno));
            goto out;
        }
        if (r == 0) {
            if (have_head && (d.mode == 2 || d.done)) rc = 0;
            else failf(err, errlen, have_head ? "connection closed before the end of the body"
                                              : "connection closed before a response");
            goto out;
        }
        if (have_head) {
            if (decode(&d, rb, (size_t)r)) {
                failf(err, errlen, "malformed response body");
                goto out;
            }
        } else {
            if (buf_put(&in, rb, (size_t)r)) goto out;
            char *eoh = strstr(in.p, "\r\n\r\n");
            if (!eoh) {
                if (in.len > 65536) {
                    failf(err, errlen, "response headers too long");
                    goto out;
                }
                continue;
            }
            have_head = 1;
            size_t hl = (size_t)(eoh - in.p) + 4;
            resp->headers = strndup(in.p, hl);
            if (!resp->headers) goto out;
            if (sscanf(in.p, "HTTP/%*d.%*d %d", &resp->status) != 1) {
                failf(err, errlen, "malformed status line");
                goto out;
            }
            char v[64];
            if (mg_http_header(resp, "Transfer-Encoding", v, sizeof v) == 0 && strcasestr(v, "chunked")) {
                d.mode = 1;
            } else if (mg_http_header(resp, "Content-Length", v, sizeof v) == 0) {
                d.mode = 0;
                d.remaining = (size_t)strtoull(v, NULL, 10);
                if (d.remaining == 0) d.done = 1;
            } else {
                d.mode = 2;
            }
            if (!strcmp(req->method, "HEAD") || resp->status == 204 || resp->status == 304) d.done = 1;
            if (!d.done && decode(&d, in.p + hl, in.len - hl)) {
                failf(err, errlen, "malformed response body");
                goto out;
            }
        }
        if (d.done) {
            rc = 0;
            goto out;
        }
    }
out:
    close(fd);
    if (!d.body.p) buf_put(&d.body, "", 0);
    resp->body = d.body.p;
    resp->body_len = d.body.len;
    free(d.line.p);
    free(head.p);
    free(in.p);
    if (rc && err && errlen && !err[0]) failf(err, errlen, "out of memory");
    return rc;
}

void mg_http_response_free(mg_http_response *r) {
    free(r->headers);
    free(r->body);
    memset(r, 0, sizeof *r);
}

int mg_http_header(const mg_http_response *r, const char *name, char *out, size_t outlen) {
    if (!r->headers) return -1;
    size_t nl = strlen(name);
    for (const char *l = strstr(r->headers, "\r\n"); l && l[2]; l = strstr(l + 2, "\r\n")) {
        const char *h = l + 2;
        if (!strncasecmp(h, name, nl) && h[nl] == ':') {
            const char *v = h + nl + 1;
            while (*v == ' ' || *v == '\t') v++;
            const char *e = strstr(v, "\r\n");
            size_t n = e ? (size_t)(e - v) : strlen(v);
            if (n >= outlen) n = outlen - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return 0;
        }
    }
    return -1;
}

int mg_http_parse_url(const char *url, char *host, size_t hostlen, int *port, char *prefix, size_t prefixlen) {
    if (strncmp(url, "http://", 7)) return -1;
    const char *h = url + 7, *end = h + strcspn(h, "/");
    const char *colon = NULL;
    if (*h == '[') { /* [v6]:port */
        const char *rb = memchr(h, ']', (size_t)(end - h));
        if (!rb) return -1;
        if ((size_t)(rb - h - 1) >= hostlen) return -1;
        memcpy(host, h + 1, (size_t)(rb - h - 1));
        host[rb - h - 1] = '\0';
        colon = rb[1] == ':' ? rb + 1 : NULL;
    } else {
        colon = memchr(h, ':', (size_t)(end - h));
        size_t n = (size_t)((colon ? colon : end) - h);
        if (n == 0 || n >= hostlen) return -1;
        memcpy(host, h, n);
        host[n] = '\0';
    }
    *port = 80;
    if (colon) {
        char *e;
        long p = strtol(colon + 1, &e, 10);
        if (e != end || p < 1 || p > 65535) return -1;
        *port = (int)p;
    }
    size_t pl = strlen(end);
    while (pl > 0 && end[pl - 1] == '/') pl--;
    if (pl >= prefixlen) return -1;
    memcpy(prefix, end, pl);
    prefix[pl] = '\0';
    return 0;
}

int mg_sse_feed(mg_sse_parser *p, const char *d, size_t n, int (*fn)(void *user, const char *data), void *user) {
    buf b = {p->buf, p->len, p->cap};
    if (buf_put(&b, d, n)) return -1;
    p->buf = b.p;
    p->len = b.len;
    p->cap = b.cap;
    for (;;) {
        /* An event ends at a blank line ("\n\n" or "\r\n\r\n"). */
        char *e = strstr(p->buf, "\n\n");
        char *e2 = strstr(p->buf, "\r\n\r\n");
        size_t skip = 2;
        if (e2 && (!e || e2 < e)) e = e2, skip = 4;
        if (!e) return 0;
        size_t ev_len = (size_t)(e - p->buf);
        buf data = {0};
        int rc = 0;
        for (size_t i = 0; i < ev_len;) {
            size_t j = i;
            while (j < ev_len && p->buf[j] != '\n') j++;
            size_t le = j > i && p->buf[j - 1] == '\r' ? j - 1 : j;
            if (le - i >= 5 && !strncmp(p->buf + i, "data:", 5)) {
                size_t s = i + 5;
                if (s < le && p->buf[s] == ' ') s++;
                if (data.len && buf_put(&data, "\n", 1)) rc = -1;
                if (!rc && buf_put(&data, p->buf + s, le - s)) rc = -1;
                if (!rc && !data.p) rc = buf_put(&data, "", 0);
            }
            i = j + 1;
        }
        memmove(p->buf, p->buf + ev_len + skip, p->len - ev_len - skip + 1);
        p->len -= ev_len + skip;
        if (!rc && data.p) rc = fn(user, data.p);
        free(data.p);
        if (rc) return rc;
    }
}

void mg_sse_free(mg_sse_parser *p) {
    free(p->buf);
    memset(p, 0, sizeof *p);
}
