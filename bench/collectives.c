/* Collective benchmarks: allreduce bus bandwidth of every strategy beside
 * the memcpy bandwidth of the same machine, in the same run. */
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "comm_internal.h"
#include "internal.h"


static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Seconds per call of fn over the group: batches of calls until min_time
 * has passed, the median of 5 batches, the slowest member's time. */
typedef ts_status (*bench_fn)(void *ctx);

static ts_status time_calls(ts_comm *c, bench_fn fn, void *ctx, double min_time, double *out)
{
    TRY(fn(ctx)); /* warm-up: windows, connections */
    /* calls per batch: enough for min_time / 5, agreed by all */
    double t0 = ts_now();
    TRY(fn(ctx));
    double once = ts_now() - t0;
    TRY(ts_comm_allreduce_f64(c, &once, 1, TS_REDUCE_MAX, "benchmark calibration"));
    int64_t calls = once > 0 ? (int64_t)(min_time / 5.0 / once) : 1000;
    if (calls < 1) calls = 1;
    if (calls > 100000) calls = 100000;
    double batch[5];
    for (int b = 0; b < 5; b++) {
        TRY(ts_comm_barrier(c, "benchmark batch"));
        t0 = ts_now();
        for (int64_t i = 0; i < calls; i++) TRY(fn(ctx));
        double t = (ts_now() - t0) / (double)calls;
        TRY(ts_comm_allreduce_f64(c, &t, 1, TS_REDUCE_MAX, "benchmark time"));
        batch[b] = t;
    }
    qsort(batch, 5, sizeof *batch, cmp_double);
    *out = batch[2];
    return TS_OK;
}

typedef struct allreduce_ctx {
    ts_comm *c;
    float *x;
    int64_t n;
    ts_reduce_strategy s;
} allreduce_ctx;

static ts_status run_allreduce(void *p)
{
    allreduce_ctx *a = p;
    return ts_comm_allreduce_sum(a->c, a->x, a->n, a->s, "benchmark allreduce");
}

typedef struct copy_ctx {
    char *dst, *src;
    size_t bytes;
} copy_ctx;

static ts_status run_copy(void *p)
{
    copy_ctx *k = p;
    memcpy(k->dst, k->src, k->bytes);
    __asm__ volatile("" ::: "memory");
    return TS_OK;
}

ts_status ts_comm_bench_allreduce(ts_comm *c, const int64_t *bytes, int nsizes, double min_time,
                                  ts_comm_bench_row *rows)
{
    int p = ts_comm_size(c);
    int64_t most = 0;
    for (int i = 0; i < nsizes; i++) most = bytes[i] > most ? bytes[i] : most;
    int64_t nmax = (most + 3) / 4;
    /* one process's memcpy, the others waiting: the machine's copy rate */
    char *src = malloc((size_t)most + 64), *dst = malloc((size_t)most + 64);
    /* gradients live in the node's shared window for the hierarchical
     * strategy (as the training engine puts them), elsewhere in ordinary
     * memory */
    float *plain = malloc((size_t)(nmax > 0 ? nmax : 1) * sizeof *plain);
    float *shared = ts_comm_shared_alloc(c, nmax);
    ts_status st = src && dst && plain ? TS_OK : ts_error(TS_ERR_OOM, "no memory for the benchmark buffers");
    st = ts_comm_agree(c, st, "benchmark buffers");
    if (!st) {
        memset(src, 1, (size_t)most), memset(dst, 0, (size_t)most);
        memset(plain, 0, (size_t)nmax * sizeof *plain);
        if (shared) memset(shared, 0, (size_t)nmax * sizeof *shared);
    }
    for (int i = 0; i < nsizes && !st; i++) {
        ts_comm_bench_row *r = &rows[i];
        memset(r, 0, sizeof *r);
        r->bytes = bytes[i];
        int64_t n = bytes[i] / 4;
        copy_ctx k = {dst, src, (size_t)bytes[i]};
        double t = 0;
        if (ts_comm_rank(c) == 0) {
            ts_comm *self = NULL; /* time alone: a NULL group is one process */
            st = time_calls(self, run_copy, &k, min_time, &t);
        }
        if (!st) st = ts_comm_bcast(c, &t, sizeof t, 0, "memcpy time");
        r->memcpy_gbs = t > 0 ? (double)bytes[i] / t / 1e9 : 0;
        for (int s = 0; s < TS_NUM_STRATEGIES && !st; s++) {
            allreduce_ctx a = {c, s == TS_STRATEGY_HIER && shared ? shared : plain, n, (ts_reduce_strategy)s};
            st = time_calls(c, run_allreduce, &a, min_time, &t);
            r->seconds[s] = t;
            r->algbw_gbs[s] = t > 0 ? (double)bytes[i] / t / 1e9 : 0;
            r->busbw_gbs[s] = p > 1 ? r->algbw_gbs[s] * 2.0 * (p - 1) / p : 0;
        }
    }
    free(src), free(dst), free(plain);
    return st;
}
