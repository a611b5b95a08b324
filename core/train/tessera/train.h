/* The training loop behind `tessera train`: data, model, optimizer and
 * schedule, gradient accumulation and clipping, validation, checkpoints and
 * exact resume, logs and progress. */
#ifndef TESSERA_TRAIN_H
#define TESSERA_TRAIN_H

#include <stdint.h>
#include <stdio.h>

#include "tessera/gpt.h"
#include "tessera/update.h"
#include "tessera/parallel.h"
#include "tessera/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ts_train_config {
    /* data */
    char data[1024];        /* text file or token file; "" = the built-in task */
    char tokenizer[1024];   /* "byte", "bpe:N" or "word:N" (trained on the data), or a tokenizer file */
    double val_fraction;    /* held-out tail of the data */
    /* model (vocab_size comes from the tokenizer or token file) */
    ts_gpt_config model;
    /* batches: each step sees batch * grad_accum sequences of seq_len tokens
     * (batch is global: data-parallel replicas take batch / dp each;
     * grad_accum is also the number of pipeline micro-batches) */
    int64_t batch, seq_len, grad_accum, steps;
    /* optimizer and schedule */
    ts_optim_kind optim;
    float lr, min_lr, beta1, beta2, eps, weight_decay, grad_clip;
    int64_t warmup;
    int cosine;
    /* parallel layout, under mpirun: tensor x pipeline parallel sizes (the
     * rest of the processes are data-parallel replicas) and how they work */
    int tp, pp;
    ts_reduce_strategy strategy;
    int zero;               /* ZeRO-1: optimizer state sharded over replicas */
    double bucket_mb;       /* gradient bucket size */
    int overlap;            /* reduce buckets during backward */
    ts_schedule schedule;   /* pipeline: 1F1B or GPipe */
    /* matrix products in fp32, bf16 or fp16 (ts_device_set_matmul_dtype);
     * fp16 adds dynamic loss scaling */
    ts_dtype dtype;
    int bind;               /* bind threads and memory near the device (hwloc) */
    char trace_path[1024];  /* Chrome trace JSON of every rank; "" = none */
    /* devices of different speed: "even", "auto" (measured at start-up),
     * "3,1" or a file (ts_balance_parse): each data-parallel replica's
     * share of the batch rows; re-measured from step times every
     * rebalance_every steps (0 = never) and re-split when the predicted
     * gain exceeds rebalance_gain (a fraction; negative: whenever the split
     * changes) */
    char balance[1024];
    int64_t rebalance_every;
    double rebalance_gain;
    /* run */
    char device[128];
    int threads;            /* 0: default */
    uint64_t seed;
    char out_dir[1024];     /* checkpoints, log, tokenizer; "" = none */
    int64_t ckpt_every;     /* 0: at every evaluation and at the end */
    int keep;               /* checkpoints kept besides latest and best (0: all) */
    int resume;             /* continue from out_dir/latest (an error if there is none) */
    int force;              /* a new run into an out_dir that holds one: delete the old */
    char init[1024];        /* start from this checkpoint's weights and tokenizer ("" = none) */
    int64_t eval_every, eval_batches;
    char log_path[1024];    /* JSON lines; "" = out_dir/log.jsonl, "-" = none */
    int progress;           /* 1: live bar on a terminal, lines otherwise; 0: quiet */
    int64_t sample_tokens;  /* text to show at the end (text data) */
    /* observers (tests use them to crash a run at chosen moments): after
     * every step, with the mean training loss; and on world rank 0 when a
     * checkpoint's weights are in its temporary directory, before it is
     * completed and published */
    void (*on_step)(void *ctx, int64_t step, float loss, float lr, double grad_norm);
    void (*on_checkpoint)(void *ctx, const char *tmp_dir, int64_t step);
    void *on_step_ctx;
} ts_train_config;

typedef struct ts_train_result {
    int64_t steps_done;     /* optimizer steps completed, resumed ones included */
    int64_t first_step;     /* 0, or the step a resumed run started from */
    float last_loss;
    double val_loss;        /* at the end; NAN if never evaluated */
    double seconds;
    double tokens_per_second;
    double mfu;             /* model FLOPs / measured GEMM peak of the device */
    double task_accuracy;   /* built-in task only, else NAN */
    int64_t num_params;     /* of the whole model */
    double bubble;          /* pipeline: share of the last step stage 0 spent idle */
    int interrupted;        /* the signal that stopped the run early (ts_train_request_stop), or 0 */
} ts_train_result;

/* Defaults: byte tokenizer, d6-like small model, AdamW 3e-4 with cosine. */
void ts_train_defaults(ts_train_config *cfg);
ts_status ts_train(const ts_train_config *cfg, ts_train_result *res);
/* The run's settings as a flat JSON object (stored in checkpoints and
 * logs, compared across MPI ranks); parse reads such an object back into a
 * config (members it lacks keep their values; wrong types and ranges are
 * errors naming the setting). */
size_t ts_train_settings_json(const ts_train_config *cfg, char *buf, size_t n); /* length needed */
ts_status ts_train_settings_parse(const char *json, ts_train_config *cfg);
/* The settings a resumed run must keep (NULL-terminated names). */
const char *const *ts_train_fixed_settings(void);

/* Ask a running ts_train to stop after the step in flight: it writes a
 * checkpoint (with out_dir), prints its summary and returns with
 * result.interrupted = sig. Async-signal-safe: call it from a signal
 * handler. Under MPI every rank stops at the same step. */
void ts_train_request_stop(int sig);
int ts_train_stop_requested(void);

#ifdef __cplusplus
}
#endif
#endif
