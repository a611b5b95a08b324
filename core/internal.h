/* Helpers every layer of the library shares (not installed): early return
 * on error, the monotonic clock. */
#ifndef TESSERA_INTERNAL_H
#define TESSERA_INTERNAL_H

#include <time.h>

#include "tessera/status.h"

/* Return the status of expr from the enclosing function unless it is TS_OK. */
#define TRY(expr)                                                                                  \
    do {                                                                                           \
        ts_status try_st_ = (expr);                                                                \
        if (try_st_ != TS_OK) return try_st_;                                                      \
    } while (0)

/* Seconds on the monotonic clock. */
static inline double ts_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#endif
