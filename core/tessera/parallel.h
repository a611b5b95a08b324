/* Processes and communication: MPI start-up, communicators, gradient
 * reduction strategies, the collective watchdog and the trace timeline.
 * Built without MPI, everything still works as one process. */
#ifndef TESSERA_PARALLEL_H
#define TESSERA_PARALLEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "tessera/comm.h"
#include "tessera/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Start MPI (if built with it and not yet started) with thread support for
 * the watchdog and overlapped gradient reduction. Safe to call when not run
 * under mpirun: then the world has one process. */
ts_status ts_parallel_init(int *argc, char ***argv);
/* Stop the watchdog and MPI (if tessera started it). */
void ts_parallel_finalize(void);
int ts_parallel_have_mpi(void);
ts_comm *ts_comm_world(void);
/* Processes sharing this node (memory): MPI_COMM_TYPE_SHARED. */
ts_comm *ts_comm_node(void);

/* Split `parent` like MPI_Comm_split; `name` labels the group in traces and
 * watchdog reports ("tp", "dp", "pp"). Collective over parent. */
ts_status ts_comm_split(ts_comm *parent, int color, int key, const char *name, ts_comm **out);
void ts_comm_free(ts_comm *c);
const char *ts_comm_name(const ts_comm *c);

/* Gather `bytes` from every member into out (size * bytes, in rank order). */
ts_status ts_comm_allgather(ts_comm *c, const void *in, void *out, size_t bytes, const char *what);

/* ---- gradient reduction strategies ---- */
typedef enum ts_reduce_strategy {
    TS_STRATEGY_MPI = 0,   /* MPI_Allreduce / MPI_Reduce_scatter / MPI_Allgatherv */
    TS_STRATEGY_RING,      /* tessera's ring: reduce-scatter then all-gather over neighbours */
    TS_STRATEGY_HIER,      /* within a node through MPI-3 shared memory, then across nodes */
    TS_STRATEGY_PS,        /* to a parameter-server rank and back (allreduce = reduce + broadcast) */
} ts_reduce_strategy;

const char *ts_strategy_name(ts_reduce_strategy s);
int ts_strategy_parse(const char *name);   /* -1 if unknown */

/* Sum f32 arrays over the group with a strategy. x may be a buffer from
 * ts_comm_shared_alloc (then HIER works in place, without copies). */
ts_status ts_comm_allreduce_sum(ts_comm *c, float *x, int64_t n, ts_reduce_strategy s,
                                const char *what);
/* Sum and keep only this member's part: part r of n elements is
 * [ts_comm_part_start(n, size, r), ts_comm_part_start(n, size, r + 1)). */
ts_status ts_comm_reduce_scatter_sum(ts_comm *c, float *x, int64_t n, ts_reduce_strategy s,
                                     const char *what);
/* Every member's part to everyone (the inverse of the above's split). */
ts_status ts_comm_allgather_parts(ts_comm *c, float *x, int64_t n, ts_reduce_strategy s,
                                  const char *what);
/* Sum to member root only (parameter server). */
ts_status ts_comm_reduce_sum(ts_comm *c, float *x, int64_t n, int root, const char *what);
int64_t ts_comm_part_start(int64_t n, int size, int part);

/* Host memory that every process on this node can address (an MPI-3 shared
 * window on the node's communicator); NULL without MPI. Collective over
 * the node communicator; freed at finalize. */
float *ts_comm_shared_alloc(ts_comm *c, int64_t n);

/* ---- watchdog ----
 * A collective that waits longer than the timeout asks every member what it
 * is doing (through a helper thread on each process) and reports, on
 * stderr and in ts_watchdog_last_report(), the ranks that have not joined.
 * TESSERA_WATCHDOG=<seconds> (default 300, 0 = off). After hard_timeout
 * seconds (0 = never) the collective fails with TS_ERR_TIMEOUT. */
void ts_watchdog_set(double timeout_s, double hard_timeout_s);
const char *ts_watchdog_last_report(void);

/* ---- trace timeline (Chrome trace JSON, opens in Perfetto) ---- */
void ts_trace_enable(int on);
int ts_trace_enabled(void);
/* Spans on this process's timeline; tid 0 compute, 1 communication. */
int64_t ts_trace_begin(void);
void ts_trace_end(int64_t start_us, const char *cat, const char *name, int tid);
/* Gather every rank's events to world rank 0 and write one file there. */
ts_status ts_trace_write(const char *path);

#ifdef __cplusplus
}
#endif
#endif
