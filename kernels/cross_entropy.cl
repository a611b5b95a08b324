/* Fused softmax + cross-entropy, one work-group per row of V logits.
 * outputs: bit 0 losses, bit 1 probs, bit 2 dlogits. probs or dlogits may be
 * the logits buffer: each element is read before the same item writes it.
 * Targets outside [0, V) are ignored (loss 0, no gradient). logits and
 * dlogits may be bf16 (x_bf16, d_bf16; in place both or neither): each
 * gradient is then rounded once, from its fp32 value. */
__kernel void cross_entropy(__global float *losses, ulong lo, __global float *probs, ulong po,
                            __global float *dlogits, ulong dlo, int outputs,
                            __global const float *logits, ulong xo, __global const int *targets,
                            ulong to, int has_targets, long N, long V, float scale, int x_bf16, int d_bf16)
{
    __local float scratch[ROW_WG];
    long n = get_group_id(0);
    int lid = (int)get_local_id(0);
    if (n >= N) return;
    ulong xr = xo + (ulong)n * (ulong)V, dr = dlo + (ulong)n * (ulong)V; /* the row, in elements of each type */
    long target = has_targets ? (long)targets[to + n] : -1;
    int valid = target >= 0 && target < V;
    /* the target's logit, read before anything overwrites the row (the
     * barriers in wg_max order this read before every write below) */
    float xt = valid ? load_act(logits, xr + target, x_bf16) : 0.0f;
    /* a fence over global memory: the item that owns x[target] may write it
     * below (in place), and a local-memory barrier does not order that */
    barrier(CLK_GLOBAL_MEM_FENCE);
    float m = -INFINITY;
#if TS_CPU_DEVICE
    float8 m8 = (float8)(-INFINITY);
    RUN8_FOR(k, V) {
        if (k + 8 <= V) m8 = fmax(m8, load_act8(logits, xr + k, x_bf16));
        else
            for (int t = 0; t < 8; t++)
                if (k + t < V) m = fmax(m, load_act(logits, xr + k + t, x_bf16));
    }
    m = fmax(m, hmax8(m8));
#else
    ROW_FOR(j, V) m = fmax(m, load_act(logits, xr + j, x_bf16));
#endif
    m = wg_max(m, scratch);
    float s = 0.0f;
    if ((outputs & 6) == 4 && d_bf16) {
        /* training, bf16 gradient: the exp twice rather than a rounded one
         * kept, so that each value is rounded once */
#if TS_CPU_DEVICE
        float8 s8 = (float8)(0.0f);
        RUN8_FOR(k, V) {
            if (k + 8 <= V) s8 += exp(load_act8(logits, xr + k, x_bf16) - m);
            else
                for (int t = 0; t < 8; t++)
                    if (k + t < V) s += exp(load_act(logits, xr + k + t, x_bf16) - m);
        }
        s += hsum8(s8);
#else
        ROW_FOR(j, V) s += exp(load_act(logits, xr + j, x_bf16) - m);
#endif
        float sum = wg_sum(s, scratch);
        float k = valid ? scale / sum : 0.0f;
        /* in place: every item's reads above before any write below */
        barrier(CLK_GLOBAL_MEM_FENCE);
#if TS_CPU_DEVICE
        RUN8_FOR(j, V) {
            if (j + 8 <= V) store_act8(dlogits, dr + j, exp(load_act8(logits, xr + j, x_bf16) - m) * k, 1);
            else
                for (int t = 0; t < 8; t++)
                    if (j + t < V) store_act(dlogits, dr + j + t, exp(load_act(logits, xr + j + t, x_bf16) - m) * k, 1);
        }
#else
        ROW_FOR(j, V) store_act(dlogits, dr + j, exp(load_act(logits, xr + j, x_bf16) - m) * k, 1);
#endif
        barrier(CLK_GLOBAL_MEM_FENCE);
        if (lid == 0 && valid) store_act(dlogits, dr + target, exp(xt - m) * k - scale, 1);
        if ((outputs & 1) && lid == 0) losses[lo + n] = valid ? m + log(sum) - xt : 0.0f;
        return;
    }
    if ((outputs & 6) == 4) {
        /* training: one exp per logit, kept in dlogits, then scaled */
        __global float *d = dlogits + dr;
#if TS_CPU_DEVICE
        float8 s8 = (float8)(0.0f);
        RUN8_FOR(k, V) {
            if (k + 8 <= V) {
                float8 e = exp(load_act8(logits, xr + k, x_bf16) - m);
                vstore8(e, 0, d + k);
                s8 += e;
            } else
                for (int t = 0; t < 8; t++)
                    if (k + t < V) {
                        float e = exp(load_act(logits, xr + k + t, x_bf16) - m);
                        d[k + t] = e;
                        s += e;
                    }
        }
        s += hsum8(s8);
#else
        ROW_FOR(j, V) {
            float e = exp(load_act(logits, xr + j, x_bf16) - m);
            d[j] = e;
            s += e;
        }
#endif
        float sum = wg_sum(s, scratch);
        float k = valid ? scale / sum : 0.0f;
#if TS_CPU_DEVICE
        RUN8_FOR(j, V) {
            if (j + 8 <= V) vstore8(vload8(0, d + j) * k, 0, d + j);
            else
                for (int t = 0; t < 8; t++)
                    if (j + t < V) d[j + t] *= k;
        }
#else
        ROW_FOR(j, V) d[j] *= k;
#endif
        barrier(CLK_GLOBAL_MEM_FENCE);
        if (lid == 0 && valid) d[target] -= scale;
        if ((outputs & 1) && lid == 0) losses[lo + n] = valid ? m + log(sum) - xt : 0.0f;
        return;
    }
    ROW_FOR(j, V) s += exp(load_act(logits, xr + j, x_bf16) - m);
    float sum = wg_sum(s, scratch);
    if ((outputs & 1) && lid == 0) losses[lo + n] = valid ? m + log(sum) - xt : 0.0f;
    if (!(outputs & 6)) return;
    /* in place, CPU-type devices: the runs of 8 above read elements that
     * other items write below, and wg_sum's barriers fence local memory only */
    barrier(CLK_GLOBAL_MEM_FENCE);
    float inv = 1.0f / sum;
    float ds = valid ? scale : 0.0f;
    ROW_FOR(j, V) {
        float p = exp(load_act(logits, xr + j, x_bf16) - m) * inv;
        if (outputs & 2) probs[po + n * V + j] = p;
        if (outputs & 4) store_act(dlogits, dr + j, ds * (p - (j == target ? 1.0f : 0.0f)), d_bf16);
    }
}

/* Vocabulary-parallel cross-entropy: each process holds V vocabulary rows
 * starting at vocab_start; the host combines the row statistics across
 * processes between these phases. One work-group per row. The logits (and
 * their gradient, in place) may be bf16 (x_bf16): fp32 inside. */
__kernel void ce_shard_stats(__global float *rowmax, ulong mo, __global float *tgt, ulong go,
                             __global const float *logits, ulong xo, __global const int *targets,
                             ulong to, long N, long V, long vocab_start, int x_bf16)
{
    __local float scratch[ROW_WG];
    long n = get_group_id(0);
    int lid = (int)get_local_id(0);
    if (n >= N) return;
    size_t x0 = xo + n * V; /* row n: [V] */
    float m = -INFINITY;
    ROW_FOR(j, V) m = fmax(m, load_act(logits, x0 + j, x_bf16));
    m = wg_max(m, scratch);
    if (lid == 0) {
        long t = (long)targets[to + n];
        rowmax[mo + n] = m;
        tgt[go + n] = (t >= vocab_start && t < vocab_start + V) ? load_act(logits, x0 + t - vocab_start, x_bf16) : 0.0f;
    }
}

__kernel void ce_shard_sumexp(__global float *sumexp, ulong so, __global const float *logits, ulong xo,
                              __global const float *rowmax, ulong mo, long N, long V, int x_bf16)
{
    __local float scratch[ROW_WG];
    long n = get_group_id(0);
    int lid = (int)get_local_id(0);
    if (n >= N) return;
    size_t x0 = xo + n * V; /* row n: [V] */
    float m = rowmax[mo + n], s = 0.0f;
    ROW_FOR(j, V) s += exp(load_act(logits, x0 + j, x_bf16) - m);
    s = wg_sum(s, scratch);
    if (lid == 0) sumexp[so + n] = s;
}

__kernel void ce_shard_loss(__global float *losses, ulong lo, __global const float *rowmax, ulong mo,
                            __global const float *sumexp, ulong so, __global const float *tgt, ulong go,
                            __global const int *targets, ulong to, long N, long vocab_size)
{
    size_t n = get_global_id(0);
    if (n < (size_t)N) {
        long t = (long)targets[to + n];
        losses[lo + n] = (t >= 0 && t < vocab_size) ? log(sumexp[so + n]) + rowmax[mo + n] - tgt[go + n] : 0.0f;
    }
}

/* dlogits may be logits: each element is read before the same item writes it. */
__kernel void ce_shard_grad(__global float *dlogits, ulong dlo, __global const float *logits, ulong xo,
                            __global const float *rowmax, ulong mo, __global const float *sumexp, ulong so,
                            __global const int *targets, ulong to, long N, long V, long vocab_start,
                            long vocab_size, float scale, int x_bf16)
{
    long n = get_group_id(0);
    int lid = (int)get_local_id(0);
    if (n >= N) return;
    long t = (long)targets[to + n];
    int valid = t >= 0 && t < vocab_size;
    float m = rowmax[mo + n], k = valid ? scale / sumexp[so + n] : 0.0f;
    size_t x0 = xo + n * V, d0 = dlo + n * V; /* row n: [V] */
    ROW_FOR(j, V) {
        float g = k * exp(load_act(logits, x0 + j, x_bf16) - m);
        if (valid && j == t - vocab_start) g -= scale;
        store_act(dlogits, d0 + j, g, x_bf16);
    }
}
