#include "status.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char last_error[1024];

const char *mg_status_str(mg_status s) {
    switch (s) {
    case MG_OK: return "ok";
    case MG_ERR_IO: return "io error";
    case MG_ERR_FORMAT: return "format error";
    case MG_ERR_UNSUPPORTED: return "unsupported";
    case MG_ERR_SHAPE: return "shape mismatch";
    case MG_ERR_OOM: return "out of memory";
    case MG_ERR_ARG: return "invalid argument";
    case MG_ERR_RANGE: return "out of range";
    case MG_ERR_FULL: return "resource exhausted";
    case MG_ERR_BACKEND: return "backend error";
    }
    return "unknown status";
}

mg_status mg_error_set(mg_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return s;
}

const char *mg_error_last(void) { return last_error; }

void mg_error_clear(void) { last_error[0] = '\0'; }
