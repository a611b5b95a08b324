/* LayerNorm over the last dimension: one work-group of ROW_WG items per row,
 * each striding over the row's C channels. */

__kernel void layernorm_forward(__global float *out, ulong oo, __global float *mean, ulong mo,
                                __global float *rstd, ulong ro, int has_stats,
                                __global const float *inp, ulong io, __global const float *weight,
                                ulong wo, __global const float *bias, ulong bo, long N, long C,
                                float eps)
{
    __local float scratch[ROW_WG];
    long n = get_group_id(0);
    int lid = (int)get_local_id(0);
    if (n >= N) return; /* whole groups only: every item of a group agrees */
    __global const float *x = inp + io + n * C;
    float s = 0.0f;
    ROW_FOR(c, C) s += x[c];
    float m = wg_sum(s, scratch) / (float)C;
    float v = 0.0f;
    ROW_FOR(c, C) {
        float d = x[c] - m;
        v += d * d;
    }
    float r = rsqrt(wg_sum(v, scratch) / (float)C + eps);
    __global float *o = out + oo + n * C;
    ROW_FOR(c, C)
        o[c] = (x[c] - m) * r * weight[wo + c] + bias[bo + c];
    if (lid == 0 && (has_stats & 1)) mean[mo + n] = m;
    if (lid == 0 && (has_stats & 2)) rstd[ro + n] = r;
}

/* dinp += (w*dout - mean(w*dout) - norm*mean(w*dout*norm)) * rstd */
__kernel void layernorm_backward_dinp(__global float *dinp, ulong dio, __global const float *dout,
                                      ulong doo, __global const float *inp, ulong io,
                                      __global const float *weight, ulong wo,
                                      __global const float *mean, ulong mo,
                                      __global const float *rstd, ulong ro, long N, long C)
{
    __local float scratch[ROW_WG];
    long n = get_group_id(0);
    int lid = (int)get_local_id(0);
    if (n >= N) return;
    __global const float *x = inp + io + n * C, *d = dout + doo + n * C;
    __global const float *w = weight + wo;
    float m = mean[mo + n], r = rstd[ro + n];
    float a = 0.0f, b = 0.0f;
    ROW_FOR(c, C) {
        float dn = w[c] * d[c];
        a += dn;
        b += dn * (x[c] - m) * r;
    }
    a = wg_sum(a, scratch) / (float)C;
    b = wg_sum(b, scratch) / (float)C;
    __global float *di = dinp + dio + n * C;
    ROW_FOR(c, C) {
        float norm = (x[c] - m) * r;
        di[c] += (w[c] * d[c] - a - norm * b) * r;
    }
}

/* Partial parameter gradients: item (c, r) sums rows [r*chunk, (r+1)*chunk)
 * of column c into partial[r*C + c] (weight) and partial[(R + r)*C + c]
 * (bias); partials_finish adds them up in order. */
__kernel void layernorm_backward_params(__global float *partial, __global const float *dout,
                                        ulong doo, __global const float *inp, ulong io,
                                        __global const float *mean, ulong mo,
                                        __global const float *rstd, ulong ro, long N, long C,
                                        long chunk)
{
    long c = get_global_id(0), r = get_global_id(1), R = get_global_size(1);
    if (c >= C) return;
    float aw = 0.0f, ab = 0.0f;
    for (long k = 0; k < chunk; k++) { /* trip count uniform over the group */
        long n = r * chunk + k;
        if (n >= N) continue;
        float d = dout[doo + n * C + c];
        aw += (inp[io + n * C + c] - mean[mo + n]) * rstd[ro + n] * d;
        ab += d;
    }
    partial[r * C + c] = aw;
    partial[(R + r) * C + c] = ab;
}
