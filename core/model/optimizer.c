#include "tessera/optimizer.h"

#include <math.h>
#include <string.h>

#include "tessera/device.h"
#include "tessera/ops.h"

ts_status ts_optimizer_create(ts_optimizer *o, ts_device *dev, ts_optim_kind kind, int64_t n,
                              float beta1, float beta2, float eps, float weight_decay)
{
    memset(o, 0, sizeof *o);
    if ((int)kind < TS_OPTIM_SGD || kind > TS_OPTIM_ADAMW)
        return ts_error(TS_ERR_INVALID_ARG, "unknown optimizer kind %d", (int)kind);
    if (!(beta1 >= 0.0f && beta1 < 1.0f) || !(beta2 >= 0.0f && beta2 < 1.0f) || !(eps >= 0.0f) ||
        !(weight_decay >= 0.0f))
        return ts_error(TS_ERR_INVALID_ARG,
                        "optimizer: beta1 %g and beta2 %g must be in [0, 1), eps %g and weight "
                        "decay %g non-negative",
                        beta1, beta2, eps, weight_decay);
    o->kind = kind, o->beta1 = beta1, o->beta2 = beta2, o->eps = eps, o->weight_decay = weight_decay;
    o->n = n;
    ts_status st = TS_OK;
    if (kind != TS_OPTIM_SGD) st = ts_tensor_zeros(&o->m, dev, TS_F32, TS_SHAPE(n));
    if (!st && (kind == TS_OPTIM_ADAM || kind == TS_OPTIM_ADAMW))
        st = ts_tensor_zeros(&o->v, dev, TS_F32, TS_SHAPE(n));
    if (st) {
        ts_optimizer_free(o);
        return ts_error_context(st, "optimizer state for %lld parameters", (long long)n);
    }
    return TS_OK;
}

void ts_optimizer_free(ts_optimizer *o)
{
    ts_tensor_free(&o->m);
    ts_tensor_free(&o->v);
    memset(o, 0, sizeof *o);
}

/* Update elements [a, b) of the shard (relative offsets) with decay wd. */
static ts_status update_range(ts_optimizer *o, ts_tensor *params, const ts_tensor *grads, int64_t a,
                              int64_t b, ts_optim_params *p, float wd)
{
    if (b <= a) return TS_OK;
    ts_tensor pv, gv, mv, vv;
    ts_status st = ts_tensor_view(&pv, params, a, TS_SHAPE(b - a));
    if (!st) st = ts_tensor_view(&gv, grads, a, TS_SHAPE(b - a));
    if (!st && o->m.block) st = ts_tensor_view(&mv, &o->m, a, TS_SHAPE(b - a));
    if (!st && o->v.block) st = ts_tensor_view(&vv, &o->v, a, TS_SHAPE(b - a));
    if (st) return st;
    p->weight_decay = wd;
    return ts_optimizer_update(&pv, &gv, o->m.block ? &mv : NULL, o->v.block ? &vv : NULL, p);
}

ts_status ts_optimizer_step(ts_optimizer *o, ts_tensor *params, const ts_tensor *grads,
                            int64_t base, const int64_t (*decay)[2], int ndecay, float lr,
                            float grad_scale)
{
    if (ts_tensor_numel(params) != o->n || ts_tensor_numel(grads) != o->n)
        return ts_error(TS_ERR_SHAPE, "optimizer of %lld elements given %lld parameters and %lld gradients",
                        (long long)o->n, (long long)ts_tensor_numel(params), (long long)ts_tensor_numel(grads));
    o->step++;
    ts_optim_params p = {.kind = o->kind, .lr = lr, .beta1 = o->beta1, .beta2 = o->beta2,
                         .eps = o->eps, .grad_scale = grad_scale, .step = o->step};
    /* alternate undecayed gaps and decayed ranges, clipped to the shard */
    int64_t pos = 0;
    for (int i = 0; i < ndecay; i++) {
        int64_t a = decay[i][0] - base, b = decay[i][1] - base;
        if (a < pos) a = pos;
        if (b > o->n) b = o->n;
        if (b <= a) continue;
        ts_status st = update_range(o, params, grads, pos, a, &p, 0.0f);
        if (!st) st = update_range(o, params, grads, a, b, &p, o->weight_decay);
        if (st) return st;
        pos = b;
    }
    return update_range(o, params, grads, pos, o->n, &p, 0.0f);
}

float ts_lr_at(const ts_lr_schedule *s, int64_t step)
{
    if (s->warmup_steps > 0 && step < s->warmup_steps)
        return s->lr * (float)(step + 1) / (float)s->warmup_steps;
    if (!s->cosine || s->total_steps <= s->warmup_steps) return s->lr;
    double progress = (double)(step - s->warmup_steps) / (double)(s->total_steps - s->warmup_steps);
    if (progress > 1.0) progress = 1.0;
    double c = 0.5 * (1.0 + cos(3.14159265358979323846 * progress));
    return (float)(s->min_lr + (s->lr - s->min_lr) * c);
}

ts_status ts_grad_sqnorm(const ts_tensor *grads, double *sqnorm)
{
    ts_tensor out;
    ts_status st = ts_tensor_alloc(&out, grads->device, TS_F32, TS_SHAPE(1));
    if (st) return st;
    float v = 0.0f;
    st = ts_sqnorm(&out, grads);
    if (!st) st = ts_tensor_read(&out, &v, sizeof v);
    ts_tensor_free(&out);
    *sqnorm = v;
    return st;
}

float ts_clip_scale(double norm, float max_norm)
{
    if (max_norm <= 0.0f || !(norm > max_norm)) return 1.0f;
    return (float)(max_norm / norm);
}
