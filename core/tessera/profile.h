/* The op profiler: with TESSERA_PROFILE=1 (or ts_profile_enable(1)) every
 * op is timed synchronously (the device is drained before and after it),
 * per op kind, with GFLOP/s for matrix products. Slows execution; for
 * finding hot spots. */
#ifndef TESSERA_PROFILE_H
#define TESSERA_PROFILE_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

int ts_profile_enabled(void);
void ts_profile_enable(int on);
void ts_profile_reset(void);
void ts_profile_report(FILE *f);

#ifdef __cplusplus
}
#endif
#endif
