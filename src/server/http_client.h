/* A small blocking HTTP/1.1 client over plain sockets, for `margingate
 * bench-serve` and the server tests: one request per connection
 * (Connection: close), Content-Length, chunked and close-delimited bodies,
 * streaming delivery of the body, and a Server-Sent Events splitter. */
#ifndef MG_HTTP_CLIENT_H
#define MG_HTTP_CLIENT_H

#include <stddef.h>

/* Called with each piece of the decoded body as it arrives; return nonzero
 * to stop reading (the connection is then closed and the request counts as
 * complete). */
typedef int (*mg_http_body_fn)(void *user, const char *data, size_t len);

typedef struct {
    const char *host;        /* name or address */
    int port;
    const char *method;      /* "GET", "POST", ... */
    const char *path;        /* "/v1/completions" */
    const char *headers;     /* extra header lines, each ending "\r\n", or NULL */
    const char *body;        /* may be NULL */
    size_t body_len;
    double timeout_s;        /* for the whole exchange; <= 0: none */
    mg_http_body_fn on_body; /* streaming: body pieces go here and are not collected */
    void *user;
} mg_http_request;

typedef struct {
    int status;              /* HTTP status, 0 when no status line was read */
    char *headers;           /* the header block (status line included), NUL-terminated */
    char *body;              /* collected body, NUL-terminated (empty with on_body) */
    size_t body_len;
} mg_http_response;

/* Sends the request and reads the response. Returns 0 when a whole
 * response was read (or on_body stopped it), -1 on a connection error,
 * timeout or malformed response, with a message in err (errlen bytes).
 * resp is filled in either case; free it with mg_http_response_free. */
int mg_http_do(const mg_http_request *req, mg_http_response *resp, char *err, size_t errlen);

void mg_http_response_free(mg_http_response *r);

/* Value of header `name` (case-insensitive) copied into out, or -1. */
int mg_http_header(const mg_http_response *r, const char *name, char *out, size_t outlen);

/* Splits "http://host[:port][/prefix]" (port defaults to 80; the prefix,
 * without a trailing slash, may be empty). Returns 0, or -1 if malformed. */
int mg_http_parse_url(const char *url, char *host, size_t hostlen, int *port, char *prefix, size_t prefixlen);

/* Server-Sent Events: feed body bytes, get each event's data field. */
typedef struct {
    char *buf;
    size_t len, cap;
} mg_sse_parser;

/* Feeds n bytes; calls fn(user, data) with the NUL-terminated data of each
 * complete event (multi-line data joined with '\n'; comments skipped).
 * Returns fn's first nonzero result, -1 on OOM, else 0. */
int mg_sse_feed(mg_sse_parser *p, const char *d, size_t n, int (*fn)(void *user, const char *data), void *user);

void mg_sse_free(mg_sse_parser *p);

#endif
