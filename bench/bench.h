/* Benchmarking kernels per device: what `tessera bench` runs.
 *
 * A suite measures one device: its own limits (peak arithmetic from an
 * FMA-bound kernel, memory bandwidth from a triad), GEMM at the shapes
 * training uses and at square sizes beside the device's reference BLAS
 * library, the memory-bound ops in GB/s, attention forward and backward at
 * several context lengths, host<->device transfers and the cost of one
 * launch. Every measurement is warmed up, then repeated until a minimum
 * time, and reported as min/median/max seconds per call; flop and byte
 * counts per call place it on a roofline.
 *
 * Results go out through a callback as they are measured; ts_bench_write_*
 * turn a run into JSON and CSV, and ts_bench_report renders JSON files
 * (from one machine or many) into a self-contained HTML page. */
#ifndef TESSERA_BENCH_H
#define TESSERA_BENCH_H

#include <stdio.h>

#include "tessera/device.h"
#include "tessera/parallel.h"
#include "tessera/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Suites, as a bit set. */
enum {
    TS_BENCH_LIMITS = 1 << 0,    /* peak FMA rate, triad bandwidth */
    TS_BENCH_GEMM = 1 << 1,      /* training shapes and squares, tessera and reference */
    TS_BENCH_MEMORY = 1 << 2,    /* layernorm, softmax + cross-entropy, GELU, AdamW, embedding backward */
    TS_BENCH_ATTENTION = 1 << 3, /* attention forward and backward at several T */
    TS_BENCH_TRANSFER = 1 << 4,  /* host<->device bandwidth, launch overhead */
    TS_BENCH_ALL = 0x1f,
};
/* "limits,gemm,..." -> bits; -1 for an unknown name. */
int ts_bench_parse_suites(const char *list);
const char *ts_bench_suite_name(int bit);

typedef struct ts_bench_options {
    int suites;          /* TS_BENCH_* bits; 0 means all */
    double min_time;     /* seconds of timed calls per measurement (default 0.25) */
    int min_reps;        /* at least this many timed samples (default 5) */
    int quick;           /* small shapes: a fast look, and the tests */
    int no_reference;    /* skip the reference library's GEMMs */
} ts_bench_options;

typedef struct ts_bench_result {
    char device[32];     /* device id: "cpu", "opencl:0" */
    char suite[16];      /* "limits", "gemm", "memory", "attention", "transfer", "startup", "train" */
    char name[48];       /* what was measured: "qkv forward", "square", "layernorm forward" */
    char impl[48];       /* "tessera" or the reference library, e.g. "OpenBLAS 0.3.21" */
    char shape[64];      /* "M=256 N=2304 K=768 NT" */
    double flops;        /* per call (a model count; 0 where it means nothing) */
    double bytes;        /* per call: the least traffic the op needs (0 where none) */
    double min_s, median_s, max_s;
    int reps;            /* timed calls */
    double gflops;       /* flops / median / 1e9 */
    double gbs;          /* bytes / median / 1e9 */
    double fraction;     /* of the device's measured limit: peak for compute; for memory-bound ops
                            the lower of the triad and the op's own rate on data in cache (unless
                            the op beats that rate by over 10%: launch-bound, no limit) */
    char bound[16];      /* memory-bound ops: "bandwidth", or what limits the op in cache ("tanh", "exp") */
} ts_bench_result;

typedef void (*ts_bench_sink)(const ts_bench_result *r, void *user);

/* Run the chosen suites on one device; each result goes to sink as soon as
 * it is measured. *peak_gflops and *triad_gbs (may be NULL) receive the
 * device's measured limits (0 if the limits suite did not run). */
ts_status ts_bench_device(ts_device *dev, const ts_bench_options *opts, ts_bench_sink sink, void *user,
                          double *peak_gflops, double *triad_gbs);

/* Time fn(ctx) on dev: warm-up, then samples of enough back-to-back calls
 * to last about a millisecond, each closed by a device synchronisation,
 * until min_time has passed and min_reps samples are in. Seconds per call. */
ts_status ts_bench_time(ts_device *dev, ts_status (*fn)(void *ctx), void *ctx, double min_time,
                        int min_reps, double *min_s, double *median_s, double *max_s, int *reps);

/* Sort samples[0..n) (n >= 1) in place and give their min, median (the
 * mean of the middle two for even n) and max; any output may be NULL. */
void ts_bench_summarize(double *samples, int n, double *min_s, double *median_s, double *max_s);

/* Versions of everything a figure depends on, as "name": "version" JSON
 * members (no braces): tessera, compiler, BLAS, CLBlast, MPI, hwloc. */
void ts_bench_write_versions(FILE *f);

/* One run as JSON. devices[i] was measured with the limits peaks[i] and
 * triads[i]; results[0..n) in any order. command is the exact command
 * line; extra (may be NULL) is more JSON members to add at the top level. */
ts_status ts_bench_write_json(const char *path, const char *command, ts_device *const *devices,
                              const double *peaks, const double *triads, int ndevices,
                              const ts_bench_result *results, int n, const char *extra);
ts_status ts_bench_write_csv(const char *path, const ts_bench_result *results, int n);

/* Render JSON files written by ts_bench_write_json into dir/index.html (one
 * self-contained page: SVG rooflines per device, GEMM rate against size for
 * tessera and the reference, and a comparison across every device of
 * every file). The directory is created if needed; the page is written
 * atomically. */
ts_status ts_bench_report(const char *dir, const char *const *json_files, int nfiles);

/* A duration in a fitting unit: "742 ns", "12.3 us", "4.56 ms", "1.23 s". */
const char *ts_bench_fmt_time(double seconds, char *buf, size_t n);

/* ---- collectives (bench/collectives.c) ---- */
/* Allreduce bus bandwidth (nccl-tests: algbw x 2(n-1)/n) of every
 * strategy for each message size, beside one process's memcpy rate
 * measured in the same run (collective; every member gets the rows). */
typedef struct ts_comm_bench_row {
    int64_t bytes;
    double memcpy_gbs;
    double seconds[TS_NUM_STRATEGIES];
    double algbw_gbs[TS_NUM_STRATEGIES];
    double busbw_gbs[TS_NUM_STRATEGIES];
} ts_comm_bench_row;
ts_status ts_comm_bench_allreduce(ts_comm *c, const int64_t *bytes, int nsizes, double min_time,
                                  ts_comm_bench_row *rows);

/* `tessera bench ...`: the whole command (bench/cmd_bench.c); the CLI calls it. */
int ts_bench_command(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif
