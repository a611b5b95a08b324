/* LayerNorm over the last dimension: one work-group of ROW_WG items per row,
 * each striding over the row's C channels. */

__kernel void layernorm_forward(__global float *out, ulong oo, __global float *mean, ulong mo,
                                __global float *rstd, ulong ro, int has_stats,
                                __global const float *inp, ulong io, __global const float *weight,
                                ulong wo, __global const float *bias, ulong bo, long N, long C,
                                float eps, int out_store)
{
    __local float scratch[ROW_WG];
    long n = get_group_id(0);
    int lid = (int)get_local_id(0);
    if (n >= N) return; /* whole groups only: every item of a group agrees */
    __global const float *x = inp + io + n * C;
    ulong o = oo + (ulong)n * (ulong)C; /* out's elements, f32, bf16 or f16 (store_act) */
    float s = 0.0f, v = 0.0f;
#if TS_CPU_DEVICE /* contiguous runs, 8 at a time (see RUN8_FOR) */
    float8 s8 = (float8)(0.0f), v8 = (float8)(0.0f);
    RUN8_FOR(c, C) {
        if (c + 8 <= C) s8 += vload8(0, x + c);
        else
            for (int t = 0; t < 8; t++)
                if (c + t < C) s += x[c + t];
    }
    float m = wg_sum(s + hsum8(s8), scratch) / (float)C;
    RUN8_FOR(c, C) {
        if (c + 8 <= C) {
            float8 d = vload8(0, x + c) - m;
            v8 += d * d;
        } else
            for (int t = 0; t < 8; t++)
                if (c + t < C) v += (x[c + t] - m) * (x[c + t] - m);
    }
    float r = rsqrt(wg_sum(v + hsum8(v8), scratch) / (float)C + eps);
    RUN8_FOR(c, C) {
        if (c + 8 <= C)
            store_act8(out, o + c, (vload8(0, x + c) - m) * r * vload8(0, weight + wo + c) + vload8(0, bias + bo + c),
                       out_store);
        else
            for (int t = 0; t < 8; t++)
                if (c + t < C) store_act(out, o + c + t, (x[c + t] - m) * r * weight[wo + c + t] + bias[bo + c + t], out_store);
    }
#else
    ROW_FOR(c, C) s += x[c];
    float m = wg_sum(s, scratch) / (float)C;
    ROW_FOR(c, C) {
        float d = x[c] - m;
        v += d * d;
    }
    float r = rsqrt(wg_sum(v, scratch) / (float)C + eps);
    ROW_FOR(c, C)
        store_act(out, o + c, (x[c] - m) * r * weight[wo + c] + bias[bo + c], out_store);
#endif
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
    __global float *di = dinp + dio + n * C;
    ROW_FOR(c, C) {
        float dn = w[c] * d[c];
        a += dn;
        b += dn * (x[c] - m) * r;
    }
    a = wg_sum(a, scratch) / (float)C;
    b = wg_sum(b, scratch) / (float)C;
    ROW_FOR(c, C) {
        float norm = (x[c] - m) * r;
        di[c] += (w[c] * d[c] - a - norm * b) * r;
    }
}

#if TS_CPU_DEVICE
/* CPU-type devices: dinp and the parameter gradients' partial sums in one
 * pass. Group r takes rows [r*chunk, (r+1)*chunk) in order, each item its
 * run of columns (RUN8_FOR), whose sums it keeps in partial[r*C + c]
 * (weight) and partial[(R + r)*C + c] (bias): a few KB that stay in cache
 * while the group walks its rows, so x and dout come from memory once, not
 * a second time for a column kernel. partials_finish adds the R up. */
__kernel void layernorm_backward_fused8(__global float *dinp, ulong dio, __global const float *dout,
                                        ulong doo, __global const float *inp, ulong io,
                                        __global const float *weight, ulong wo,
                                        __global const float *mean, ulong mo,
                                        __global const float *rstd, ulong ro, long N, long C,
                                        __global float *partial, long chunk)
{
    __local float scratch[ROW_WG];
    long g = get_group_id(0), R = get_num_groups(0);
    long n0 = g * chunk, rows = N - n0 < chunk ? N - n0 : chunk; /* the same for the whole group */
    __global const float *w = weight + wo;
    __global float *pw = partial + g * C, *pb = partial + (R + g) * C;
    RUN8_FOR(c, C) {
        for (int t = 0; t < 8; t++)
            if (c + t < C) pw[c + t] = 0.0f, pb[c + t] = 0.0f;
    }
    for (long k = 0; k < rows; k++) {
        long n = n0 + k;
        __global const float *x = inp + io + n * C, *d = dout + doo + n * C;
        __global float *di = dinp + dio + n * C;
        float m = mean[mo + n], r = rstd[ro + n];
        float a = 0.0f, b = 0.0f;
        float8 a8 = (float8)(0.0f), b8 = (float8)(0.0f);
        RUN8_FOR(c, C) {
            if (c + 8 <= C) {
                float8 dn = vload8(0, w + c) * vload8(0, d + c);
                a8 += dn;
                b8 += dn * (vload8(0, x + c) - m) * r;
            } else
                for (int t = 0; t < 8; t++)
                    if (c + t < C) {
                        float dn = w[c + t] * d[c + t];
                        a += dn;
                        b += dn * (x[c + t] - m) * r;
                    }
        }
        a = wg_sum(a + hsum8(a8), scratch) / (float)C;
        b = wg_sum(b + hsum8(b8), scratch) / (float)C;
        RUN8_FOR(c, C) {
            if (c + 8 <= C) {
                float8 d8 = vload8(0, d + c), norm = (vload8(0, x + c) - m) * r;
                vstore8(vload8(0, di + c) + (vload8(0, w + c) * d8 - a - norm * b) * r, 0, di + c);
                vstore8(vload8(0, pw + c) + norm * d8, 0, pw + c);
                vstore8(vload8(0, pb + c) + d8, 0, pb + c);
            } else
                for (int t = 0; t < 8; t++)
                    if (c + t < C) {
                        float norm = (x[c + t] - m) * r;
                        di[c + t] += (w[c + t] * d[c + t] - a - norm * b) * r;
                        pw[c + t] += norm * d[c + t];
                        pb[c + t] += d[c + t];
                    }
        }
    }
}
#endif

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

