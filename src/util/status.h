/* Status codes and the last-error message shared by all library code.
 *
 * Library functions return an mg_status; on failure they also record a
 * human-readable message with mg_error_set() which the caller can fetch with
 * mg_error_last(). Library code never exits. */
#ifndef MG_STATUS_H
#define MG_STATUS_H

typedef enum {
    MG_OK = 0,
    MG_ERR_IO,          /* file missing, unreadable, short read */
    MG_ERR_FORMAT,      /* malformed file contents (JSON, safetensors, ...) */
    MG_ERR_UNSUPPORTED, /* valid input we do not handle (architecture, dtype) */
    MG_ERR_SHAPE,       /* tensor shape does not match the config */
    MG_ERR_OOM,         /* allocation failed */
    MG_ERR_ARG,         /* invalid argument from the caller or the user */
    MG_ERR_RANGE,       /* value out of range (prompt too long, token id) */
    MG_ERR_FULL,        /* a bounded resource (KV cache, queue) is exhausted */
    MG_ERR_BACKEND      /* backend (CUDA) failure */
} mg_status;

/* Returns a short constant name for a status ("io error", ...). */
const char *mg_status_str(mg_status s);

/* Records a printf-style message as the calling thread's last error and
 * returns `s` so that callers can write `return mg_error_set(MG_ERR_IO, ...)`. */
mg_status mg_error_set(mg_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Returns the calling thread's last error message ("" when none). */
const char *mg_error_last(void);

/* Clears the calling thread's last error message. */
void mg_error_clear(void);

/* Evaluates a call returning mg_status and returns its status from the
 * enclosing function when it is not MG_OK. */
#define MG_TRY(call)                                                                                         \
    do {                                                                                                     \
        mg_status mg_s_ = (call);                                                                            \
        if (mg_s_ != MG_OK) return mg_s_;                                                                    \
    } while (0)

#endif
