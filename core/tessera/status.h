/* Status codes and error messages.
 *
 * Every fallible tessera function returns a ts_status. On failure the calling
 * thread's last-error message says what went wrong with context (the op, the
 * shapes, the device, the OpenCL error name, the file). The library never
 * exits or aborts on bad input. */
#ifndef TESSERA_STATUS_H
#define TESSERA_STATUS_H

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ts_status {
    TS_OK = 0,
    TS_ERR_INVALID_ARG,  /* a null pointer, an out-of-range value */
    TS_ERR_SHAPE,        /* shapes or dtypes that do not fit together */
    TS_ERR_DEVICE,       /* an unknown device, tensors on different devices */
    TS_ERR_OOM,          /* an allocation the device cannot satisfy */
    TS_ERR_UNSUPPORTED,  /* the device has no implementation of an op */
    TS_ERR_BUILD,        /* a kernel failed to compile (message holds the log) */
    TS_ERR_BACKEND,      /* a runtime error reported by the backend */
    TS_ERR_IO,           /* a file could not be read or written */
    TS_ERR_FORMAT,       /* a file is truncated, corrupt or of the wrong kind */
    TS_ERR_COMM,         /* inter-process communication failed or disagreed */
    TS_ERR_TIMEOUT,      /* a wait exceeded its limit */
} ts_status;

/* A short, stable name such as "TS_ERR_SHAPE". */
const char *ts_status_name(ts_status status);

/* The message of the calling thread's most recent failure ("" if none). */
const char *ts_last_error(void);
ts_status ts_last_status(void);
void ts_clear_error(void);

/* Record a failure with a formatted message; returns `status` so that code
 * can `return ts_error(TS_ERR_SHAPE, "...", ...)`. */
ts_status ts_error(ts_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prefix the current message with more context ("loading x: <old message>")
 * and return `status`. Used when an error travels up through layers. */
ts_status ts_error_context(ts_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Diagnostics to stderr, filtered by TESSERA_LOG=error|warn|info|debug
 * (default warn). */
typedef enum { TS_LOG_ERROR = 0, TS_LOG_WARN, TS_LOG_INFO, TS_LOG_DEBUG } ts_log_level;
void ts_log(ts_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int ts_log_enabled(ts_log_level level);

#ifdef __cplusplus
}
#endif
#endif
