/* Fused softmax + cross-entropy, one work-group per row of V logits.
 * outputs: bit 0 losses, bit 1 probs, bit 2 dlogits. probs or dlogits may be
 * the logits buffer: each element is read before the same item writes it.
 * Targets outside [0, V) are ignored (loss 0, no gradient). */
__kernel void cross_entropy(__global float *losses, ulong lo, __global float *probs, ulong po,
                            __global float *dlogits, ulong dlo, int outputs,
                            __global const float *logits, ulong xo, __global const int *targets,
                            ulong to, int has_targets, long N, long V, float scale)
{
    __local float scratch[ROW_WG];
    long n = get_group_id(0);
    int lid = (int)get_local_id(0);
    if (n >= N) return;
    __global const float *x = logits + xo + n * V;
    long target = has_targets ? (long)targets[to + n] : -1;
    int valid = target >= 0 && target < V;
    /* the target's logit, read before anything overwrites the row (the
     * barriers in wg_max order this read before every write below) */
    float xt = valid ? x[target] : 0.0f;
    float m = -INFINITY;
    for (long j = lid; j < V; j += ROW_WG) m = fmax(m, x[j]);
    m = wg_max(m, scratch);
    float s = 0.0f;
    if ((outputs & 6) == 4) {
        /* training: one exp per logit, kept in dlogits, then scaled */
        __global float *d = dlogits + dlo + n * V;
        for (long j = lid; j < V; j += ROW_WG) {
            float e = exp(x[j] - m);
            d[j] = e;
            s += e;
        }
        float sum = wg_sum(s, scratch);
        float k = valid ? scale / sum : 0.0f;
        for (long j = lid; j < V; j += ROW_WG) d[j] *= k;
        barrier(CLK_GLOBAL_MEM_FENCE);
        if (lid == 0 && valid) d[target] -= scale;
        if ((outputs & 1) && lid == 0) losses[lo + n] = valid ? m + log(sum) - xt : 0.0f;
        return;
    }
    for (long j = lid; j < V; j += ROW_WG) s += exp(x[j] - m);
    float sum = wg_sum(s, scratch);
    if ((outputs & 1) && lid == 0) losses[lo + n] = valid ? m + log(sum) - xt : 0.0f;
    if (!(outputs & 6)) return;
    float inv = 1.0f / sum;
    float ds = valid ? scale : 0.0f;
    for (long j = lid; j < V; j += ROW_WG) {
        float p = exp(x[j] - m) * inv;
        if (outputs & 2) probs[po + n * V + j] = p;
        if (outputs & 4) dlogits[dlo + n * V + j] = ds * (p - (j == target ? 1.0f : 0.0f));
    }
}
