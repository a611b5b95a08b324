/* The parallel layer (parallel/): processes and communication. MPI
 * start-up, the process grid, communicators and gradient reduction
 * strategies, the engine that trains a model with data, tensor and pipeline
 * parallelism (one process included), the collective watchdog and the
 * trace timeline; hwloc placement in tessera/placement.h. Sits on the model
 * layer (tessera/model.h) and the runtime; the training layer drives it.
 * Built without MPI, everything still works as one process. */
#ifndef TESSERA_PARALLEL_H
#define TESSERA_PARALLEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "tessera/comm.h"
#include "tessera/gpt.h"
#include "tessera/optimizer.h"
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
/* The same after an error: if the other ranks have not failed too within
 * wait_s (they would wait forever in a collective), end the whole job
 * with MPI_Abort. For programs, not for the library's own use. */
void ts_parallel_finalize_failed(double wait_s);
int ts_parallel_have_mpi(void);

/* Split `parent` like MPI_Comm_split; `name` labels the group in traces and
 * watchdog reports ("tp", "dp", "pp"). Collective over parent. */
ts_status ts_comm_split(ts_comm *parent, int color, int key, const char *name, ts_comm **out);
void ts_comm_free(ts_comm *c);
const char *ts_comm_name(const ts_comm *c);

/* Gather `bytes` from every member into out (size * bytes, in rank order). */
ts_status ts_comm_allgather(ts_comm *c, const void *in, void *out, size_t bytes, const char *what);

/* ---- the process grid ----
 * N = tp * dp * pp processes; world rank = (pp_rank * dp + dp_rank) * tp +
 * tp_rank: tensor-parallel groups are innermost, so they share a node. */
typedef struct ts_grid {
    int size, rank;
    int tp, dp, pp;
    int tp_rank, dp_rank, pp_rank;
    ts_comm *world;
    ts_comm *tp_comm;     /* same pipeline stage and data-parallel replica */
    ts_comm *dp_comm;     /* same stage and tensor slice: the replicas */
    ts_comm *pp_comm;     /* same replica and slice: the stages, in order */
    ts_comm *mp_comm;     /* same replica: the whole model (norms, losses) */
    ts_comm *embed_comm;  /* first and last stage of a pipeline (tied embedding); NULL elsewhere */
    int local_rank, local_size; /* on this node */
    int node, nodes;            /* this node's number (0..nodes-1, in world-rank order) and how many */
} ts_grid;

/* Split the world into tp x dp x pp groups (dp = size / (tp * pp)). Every
 * rank reports the same error when the sizes do not fit. */
ts_status ts_grid_create(ts_grid *g, int tp, int pp);
void ts_grid_free(ts_grid *g);
/* This rank's part of a model: its stage's layers, embedding, head and
 * tensor slice. Layers are divided as evenly as possible over stages. */
ts_status ts_grid_layout(const ts_grid *g, int64_t n_layer, int *tp_size, int *tp_rank,
                         int64_t *layer_begin, int64_t *layer_end, int *embedding, int *head);
/* Settings that must agree on every rank (model, seed, grid, batch...):
 * each rank passes its own flat JSON object (any text works; JSON gets a
 * per-key report); a difference fails on every rank, naming each setting
 * that differs with rank 0's value and the other rank's. */
ts_status ts_grid_check_settings(const ts_grid *g, const char *settings);

/* ---- gradient reduction strategies ---- */
typedef enum ts_reduce_strategy {
    TS_STRATEGY_MPI = 0,   /* MPI_Allreduce / MPI_Reduce_scatter / MPI_Allgatherv */
    TS_STRATEGY_RING,      /* tessera's ring: reduce-scatter then all-gather over neighbours */
    TS_STRATEGY_HIER,      /* within a node through MPI-3 shared memory, then across nodes */
    TS_STRATEGY_PS,        /* to a parameter-server rank and back (allreduce = reduce + broadcast) */
} ts_reduce_strategy;
#define TS_NUM_STRATEGIES 4

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
/* The hierarchical strategy's inter-node phase in this process so far:
 * allreduces across nodes and the bytes they summed (0 on one node). */
void ts_comm_hier_stats(int64_t *calls, int64_t *bytes);

/* ---- the training engine ----
 * One optimizer step of a model laid out on a grid, for any mix of tensor,
 * data and pipeline parallelism (all sizes 1 is plain training):
 *  - the step's loss is the mean over every scored target of every
 *    micro-batch of every data-parallel replica, so any split of the batch
 *    computes the same gradient;
 *  - pipelines run micro-batches 1F1B (at most P in flight) or GPipe;
 *  - data-parallel gradients are summed in buckets, started from a helper
 *    thread as backward finishes each bucket's layers (overlap), by the
 *    chosen strategy; ZeRO-1 reduce-scatters them instead, updates a shard
 *    of the optimizer state and all-gathers the parameters; a parameter
 *    server reduces to replica 0, which updates and broadcasts;
 *  - the tied embedding's gradient is summed between first and last stage;
 *  - gradient clipping uses the norm of the whole model. */
typedef enum ts_schedule { TS_SCHEDULE_1F1B = 0, TS_SCHEDULE_GPIPE = 1 } ts_schedule;

typedef struct ts_engine_config {
    ts_reduce_strategy strategy;
    int zero;              /* ZeRO stage 1: optimizer state sharded over replicas */
    double bucket_mb;      /* gradient bucket size (the first, last layers', is 1 MB) */
    int overlap;           /* reduce buckets during backward */
    ts_schedule schedule;
    ts_optim_kind optim;
    float beta1, beta2, eps, weight_decay;
    /* dynamic loss scaling (for fp16 products): the loss is multiplied by
     * a scale before backward and the gradients divided by it; a step with
     * a non-finite gradient is skipped and halves the scale, 2000 finite
     * steps in a row double it (PyTorch GradScaler's defaults) */
    int loss_scaling;
} ts_engine_config;

typedef struct ts_loss_scaler {
    int enabled;
    double scale;          /* now (starts at 65536) */
    int64_t good_steps;    /* finite steps since the scale last changed */
    double last_scale;     /* the scale the last step ran with */
    int last_skipped;      /* the last step's gradients overflowed: no update */
    int64_t skipped;       /* steps skipped in all */
} ts_loss_scaler;

typedef struct ts_pipeline_stats {
    int max_in_flight;     /* micro-batches forwarded but not yet backwarded */
    int order_ok;          /* every backward came after its forward */
    double busy_s;         /* time in stage compute this step */
    double schedule_s;     /* time from the first forward to the last backward */
    double step_s;         /* time of the whole step */
    char order[512];       /* "F0 F1 B0 F2 B1 ..." of the last step */
} ts_pipeline_stats;

typedef struct ts_engine ts_engine;

ts_status ts_engine_create(ts_engine **e, ts_grid *g, ts_gpt *m, const ts_engine_config *c);
void ts_engine_free(ts_engine *e);
/* Replicas start from data-parallel rank 0's parameters. */
ts_status ts_engine_broadcast_params(ts_engine *e);
/* One step: n_micro micro-batches of [B, T] (host i32, this replica's
 * share: tokens and targets n_micro*B*T each). *loss: the global mean;
 * *norm: the global gradient norm before clipping. */
ts_status ts_engine_step(ts_engine *e, int n_micro, int64_t B, int64_t T, const int32_t *tokens,
                         const int32_t *targets, float lr, float grad_clip, float *loss, double *norm);
/* Forward only: the global mean loss over the micro-batches. */
ts_status ts_engine_eval(ts_engine *e, int n_micro, int64_t B, int64_t T, const int32_t *tokens,
                         const int32_t *targets, double *loss);
/* Time forward and backward of this replica's share without changing the
 * model or optimizer (no gradient reduction, gradients zeroed after): one
 * warm-up, then reps timed runs; *busy_s = this rank's least stage compute
 * time. Collective over the pipeline (stages pass activations). */
ts_status ts_engine_measure(ts_engine *e, int n_micro, int64_t B, int64_t T, const int32_t *tokens,
                            const int32_t *targets, int reps, double *busy_s);
const ts_pipeline_stats *ts_engine_pipeline_stats(const ts_engine *e);
const ts_loss_scaler *ts_engine_loss_scaler(const ts_engine *e);
/* A resumed run's scale (ignored when loss scaling is off). */
void ts_engine_set_loss_scale(ts_engine *e, double scale, int64_t good_steps);
ts_optimizer *ts_engine_optimizer(ts_engine *e);
/* Checkpoint files in the global, layout-independent format, assembled on
 * world rank 0 (collective). */
ts_status ts_engine_save_model(ts_engine *e, const char *path, const char *const *meta);
ts_status ts_engine_save_optimizer(ts_engine *e, const char *path);
ts_status ts_engine_load(ts_engine *e, const char *model_path, const char *optim_path);
/* The whole model on world rank 0 (created there; left empty elsewhere),
 * for generation and evaluation after a parallel run (collective). */
ts_status ts_engine_gather_model(ts_engine *e, ts_gpt *whole);

/* ---- heterogeneous balancing (parallel/balance.c) ----
 * Data-parallel replicas on devices of different speed take different
 * numbers of rows of the global batch; the update stays the one-process
 * update of the whole batch (gradients are weighted by scored targets). */
typedef enum ts_balance_mode {
    TS_BALANCE_EVEN = 0,   /* equal rows (today's split) */
    TS_BALANCE_AUTO,       /* from speeds measured at start-up */
    TS_BALANCE_SHARES,     /* from a list or a file */
} ts_balance_mode;

/* spec: "even" | "auto" | "3,1" (one positive share per replica) | a file:
 * `tessera bench train --json` output (each replica's share is its device's
 * measured training rate; device_ids[i] names replica i's device) or
 * numbers, one per replica. n = data-parallel replicas. Errors name the
 * spec and what is wrong. */
ts_status ts_balance_parse(const char *spec, int n, const char *const *device_ids, ts_balance_mode *mode,
                           double *shares);
/* Split total rows over n replicas in proportion to weights (> 0), at
 * least one row each, the same on every rank. */
ts_status ts_balance_split(int64_t total, int n, const double *weights, int64_t *rows);
/* A step's predicted time: the slowest replica's seconds per row x rows. */
double ts_balance_predict(int n, const double *sec_per_row, const int64_t *rows);
/* Pipeline stages over devices of different speed: contiguous layers per
 * stage (at least one each when n_layer >= P) that minimise the slowest
 * stage, where stage s costs layer_s[s] per layer, plus embed_s on the
 * first and head_s on the last. bounds[0..P]: stage s has layers
 * [bounds[s], bounds[s+1]). */
ts_status ts_balance_stages(int64_t n_layer, int P, const double *layer_s, double embed_s, double head_s,
                            int64_t *bounds);

/* ---- watchdog ----
 * A collective that waits longer than the timeout asks every member what it
 * is doing (through a helper thread on each process) and reports, on
 * stderr and in ts_watchdog_last_report(), the ranks that have not joined.
 * TESSERA_WATCHDOG=<seconds> (default 300, 0 = off). After hard_timeout
 * seconds (default twice the timeout, TESSERA_WATCHDOG_HARD; 0 = never; a
 * negative value: the default) the collective fails with TS_ERR_TIMEOUT,
 * and `tessera train` ends the whole job. */
void ts_watchdog_set(double timeout_s, double hard_timeout_s);
const char *ts_watchdog_last_report(void);

/* ---- trace timeline (Chrome trace JSON, opens in Perfetto) ---- */
void ts_trace_enable(int on);
int ts_trace_enabled(void);
/* Spans on this process's timeline; tid 0 compute, 1 communication, 2
 * set-up (communication before the first step goes there too). */
int64_t ts_trace_begin(void);
void ts_trace_end(int64_t start_us, const char *cat, const char *name, int tid);
/* The training step the spans that follow belong to (-1: set-up). */
void ts_trace_step(int64_t step);
/* Gather every rank's events to world rank 0 and write one file there. */
ts_status ts_trace_write(const char *path);

#ifdef __cplusplus
}
#endif
#endif
