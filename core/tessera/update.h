/* Optimizer kinds and hyper-parameters shared by the op API and training.
 *
 * Update rules follow PyTorch's torch.optim, so results can be compared
 * with it at tight tolerances (g = grad * grad_scale):
 *   SGD           g += wd*p;  p -= lr*g
 *   SGD_MOMENTUM  g += wd*p;  m = beta1*m + g;  p -= lr*m
 *   ADAM          g += wd*p;  m = b1*m+(1-b1)*g;  v = b2*v+(1-b2)*g^2;
 *                 p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
 *   ADAMW         p *= 1 - lr*wd;  then ADAM without the wd term
 * where bc1 = 1-b1^t, bc2 = 1-b2^t at step t (1-based). */
#ifndef TESSERA_OPTIM_H
#define TESSERA_OPTIM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ts_optim_kind {
    TS_OPTIM_SGD = 0,
    TS_OPTIM_SGD_MOMENTUM,
    TS_OPTIM_ADAM,
    TS_OPTIM_ADAMW,
} ts_optim_kind;

typedef struct ts_optim_params {
    ts_optim_kind kind;
    float lr;
    float beta1;        /* momentum for SGD_MOMENTUM */
    float beta2;
    float eps;
    float weight_decay;
    float grad_scale;   /* applied to the gradient first (clipping, averaging) */
    int64_t step;       /* 1-based step count, for Adam's bias correction */
} ts_optim_params;

const char *ts_optim_kind_name(ts_optim_kind kind);
/* Parse "sgd", "momentum", "adam", "adamw"; returns -1 if unknown. */
int ts_optim_kind_parse(const char *name);

#ifdef __cplusplus
}
#endif
#endif
