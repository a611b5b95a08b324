/* The op profiler (TESSERA_PROFILE=1): every op timed synchronously, per op
 * kind, with GFLOP/s for matrix products. ops.c calls it around dispatch. */
#include "tessera/profile.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "internal.h"
#include "profile.h"

static int g_profile = -1;
static double g_prof_seconds[TS_OP_COUNT];
static double g_prof_flops[TS_OP_COUNT];
static uint64_t g_prof_calls[TS_OP_COUNT];
static pthread_mutex_t g_prof_lock = PTHREAD_MUTEX_INITIALIZER;

int ts_profile_enabled(void)
{
    if (g_profile < 0) {
        const char *e = getenv("TESSERA_PROFILE");
        g_profile = e && *e && strcmp(e, "0") != 0;
    }
    return g_profile;
}

void ts_profile_enable(int on) { g_profile = on; }

void ts_profile_reset(void)
{
    pthread_mutex_lock(&g_prof_lock);
    memset(g_prof_seconds, 0, sizeof g_prof_seconds);
    memset(g_prof_flops, 0, sizeof g_prof_flops);
    memset(g_prof_calls, 0, sizeof g_prof_calls);
    pthread_mutex_unlock(&g_prof_lock);
}

double ts_profile_begin(ts_device *dev)
{
    if (dev->iface->synchronize) dev->iface->synchronize(dev);
    return ts_now();
}

void ts_profile_end(ts_device *dev, const ts_op *op, double t0)
{
    if (dev->iface->synchronize) dev->iface->synchronize(dev);
    double dt = ts_now() - t0;
    pthread_mutex_lock(&g_prof_lock);
    g_prof_seconds[op->kind] += dt;
    g_prof_calls[op->kind]++;
    if (op->kind == TS_OP_GEMM)
        g_prof_flops[op->kind] += 2.0 * (double)op->p.gemm.M * (double)op->p.gemm.N * (double)op->p.gemm.K *
                                  (double)op->p.gemm.batch;
    pthread_mutex_unlock(&g_prof_lock);
}

void ts_profile_report(FILE *f)
{
    double total = 0;
    for (int k = 0; k < TS_OP_COUNT; k++) total += g_prof_seconds[k];
    fprintf(f, "%-26s %8s %10s %7s %10s\n", "op", "calls", "seconds", "share", "GFLOP/s");
    for (int k = 0; k < TS_OP_COUNT; k++) {
        if (!g_prof_calls[k]) continue;
        fprintf(f, "%-26s %8llu %10.4f %6.1f%%", ts_op_kind_name((ts_op_kind)k),
                (unsigned long long)g_prof_calls[k], g_prof_seconds[k],
                total > 0 ? 100.0 * g_prof_seconds[k] / total : 0.0);
        if (g_prof_flops[k] > 0) fprintf(f, " %10.1f", g_prof_flops[k] / g_prof_seconds[k] / 1e9);
        fprintf(f, "\n");
    }
    fprintf(f, "%-26s %8s %10.4f\n", "total", "", total);
}
