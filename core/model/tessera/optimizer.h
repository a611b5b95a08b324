/* Optimizers over one flat parameter blob (or a shard of it), the learning
 * rate schedule, and global-norm gradient clipping.
 *
 * Moments live in one allocation each, like the parameters. Weight decay
 * applies to the prefix [0, n_decay) of the blob, where tessera's models put
 * their matrices. The per-element rules are in tessera/optim.h. */
#ifndef TESSERA_OPTIMIZER_H
#define TESSERA_OPTIMIZER_H

#include <stdint.h>

#include "tessera/update.h"
#include "tessera/status.h"
#include "tessera/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ts_optimizer {
    ts_optim_kind kind;
    float beta1, beta2, eps, weight_decay;
    int64_t step;          /* updates done so far */
    int64_t n;             /* elements updated */
    ts_tensor m, v;        /* moments (unallocated where the kind has none) */
} ts_optimizer;

ts_status ts_optimizer_create(ts_optimizer *o, ts_device *dev, ts_optim_kind kind, int64_t n,
                              float beta1, float beta2, float eps, float weight_decay);
void ts_optimizer_free(ts_optimizer *o);
/* One update of the blob elements [base, base + o->n), held by params and
 * grads (o->n elements each), from grads * grad_scale. decay lists the
 * blob ranges [begin, end) that weight decay applies to (the model's
 * matrices: ts_gpt_decay_ranges); base lets a shard (ZeRO) use the model's
 * ranges directly. */
ts_status ts_optimizer_step(ts_optimizer *o, ts_tensor *params, const ts_tensor *grads,
                            int64_t base, const int64_t (*decay)[2], int ndecay, float lr,
                            float grad_scale);

typedef struct ts_lr_schedule {
    float lr;              /* peak */
    float min_lr;          /* floor of the cosine */
    int64_t warmup_steps;  /* linear from lr/warmup to lr */
    int64_t total_steps;   /* cosine reaches min_lr here */
    int cosine;            /* 0: constant lr after warmup */
} ts_lr_schedule;

/* Learning rate for step (0-based). */
float ts_lr_at(const ts_lr_schedule *s, int64_t step);

/* Sum of squares of a gradient blob (a device scalar is read back). */
ts_status ts_grad_sqnorm(const ts_tensor *grads, double *sqnorm);
/* Gradient multiplier for global-norm clipping: min(1, max_norm / norm);
 * 1 when max_norm <= 0 (clipping off). */
float ts_clip_scale(double norm, float max_norm);

#ifdef __cplusplus
}
#endif
#endif
