#include "tessera/status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TS_MSG_CAP 8192 /* build logs can be long; keep enough of them */

static _Thread_local char last_msg[TS_MSG_CAP];
static _Thread_local ts_status last_code;

const char *ts_status_name(ts_status status)
{
    switch (status) {
    case TS_OK: return "TS_OK";
    case TS_ERR_INVALID_ARG: return "TS_ERR_INVALID_ARG";
    case TS_ERR_SHAPE: return "TS_ERR_SHAPE";
    case TS_ERR_DEVICE: return "TS_ERR_DEVICE";
    case TS_ERR_OOM: return "TS_ERR_OOM";
    case TS_ERR_UNSUPPORTED: return "TS_ERR_UNSUPPORTED";
    case TS_ERR_BUILD: return "TS_ERR_BUILD";
    case TS_ERR_BACKEND: return "TS_ERR_BACKEND";
    case TS_ERR_IO: return "TS_ERR_IO";
    case TS_ERR_FORMAT: return "TS_ERR_FORMAT";
    case TS_ERR_COMM: return "TS_ERR_COMM";
    case TS_ERR_TIMEOUT: return "TS_ERR_TIMEOUT";
    }
    return "TS_ERR_UNKNOWN";
}

const char *ts_last_error(void) { return last_msg; }
ts_status ts_last_status(void) { return last_code; }

void ts_clear_error(void)
{
    last_msg[0] = '\0';
    last_code = TS_OK;
}

ts_status ts_error(ts_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    va_end(ap);
    last_code = status;
    ts_log(TS_LOG_DEBUG, "error %s: %s", ts_status_name(status), last_msg);
    return status;
}

ts_status ts_error_context(ts_status status, const char *fmt, ...)
{
    char prefix[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    /* Keep the old message; the prefix goes in front of it (truncating the
     * tail of the old message if the two do not fit). */
    size_t plen = strlen(prefix), olen = strlen(last_msg);
    if (olen == 0) {
        memcpy(last_msg, prefix, plen + 1);
    } else {
        if (plen + 2 >= sizeof last_msg) plen = sizeof last_msg - 3;
        if (plen + 2 + olen >= sizeof last_msg) olen = sizeof last_msg - plen - 3;
        memmove(last_msg + plen + 2, last_msg, olen);
        memcpy(last_msg, prefix, plen);
        last_msg[plen] = ':';
        last_msg[plen + 1] = ' ';
        last_msg[plen + 2 + olen] = '\0';
    }
    last_code = status;
    return status;
}

static int log_threshold(void)
{
    static int level = -1;
    if (level < 0) {
        const char *env = getenv("TESSERA_LOG");
        int l = TS_LOG_WARN;
        if (env) {
            if (!strcasecmp(env, "error")) l = TS_LOG_ERROR;
            else if (!strcasecmp(env, "warn")) l = TS_LOG_WARN;
            else if (!strcasecmp(env, "info")) l = TS_LOG_INFO;
            else if (!strcasecmp(env, "debug")) l = TS_LOG_DEBUG;
        }
        level = l;
    }
    return level;
}

int ts_log_enabled(ts_log_level level) { return (int)level <= log_threshold(); }

void ts_log(ts_log_level level, const char *fmt, ...)
{
    if (!ts_log_enabled(level)) return;
    static const char *names[] = {"error", "warn", "info", "debug"};
    char buf[TS_MSG_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "tessera %s: %s\n", names[level], buf);
}
