/* Deterministic reductions: fixed partitions, partial results combined in a
 * fixed order, no atomics. */

/* partial[r*C + c] = sum of x[n, c] over rows [r*chunk, (r+1)*chunk). */
__kernel void sum_rows_partial(__global float *partial, __global const float *x, ulong xo, long N,
                               long C, long chunk)
{
    long c = get_global_id(0), r = get_global_id(1);
    if (c >= C) return;
    float acc = 0.0f;
    for (long k = 0; k < chunk; k++) { /* trip count uniform over the group */
        long n = r * chunk + k;
        if (n < N) acc += x[xo + n * C + c];
    }
    partial[r * C + c] = acc;
}

#if TS_CPU_DEVICE
/* The same for 8 columns an item, C a multiple of 8 (float8 loads of each
 * row; rows still summed in order, so the same bits): one column an item
 * reads the rows with scalar loads on PoCL. */
__kernel void sum_rows_partial8(__global float *partial, __global const float *x, ulong xo, long N,
                                long C, long chunk)
{
    long c = get_global_id(0) * 8, r = get_global_id(1);
    if (c >= C) return; /* the launch rounds the items up to whole groups */
    float8 acc = (float8)(0.0f);
    for (long k = 0; k < chunk; k++) {
        long n = r * chunk + k;
        if (n < N) acc += vload8(0, x + xo + n * C + c);
    }
    vstore8(acc, 0, partial + r * C + c);
}
#endif

/* out[c] (+)= sum over r of partial[base + r*C + c], r in order. */
__kernel void partials_finish(__global float *out, ulong oo, __global const float *partial,
                              long base, long R, long C, int accumulate)
{
    long c = get_global_id(0);
    if (c >= C) return;
    float acc = 0.0f;
    for (long r = 0; r < R; r++) acc += partial[base + r * C + c];
    out[oo + c] = accumulate ? out[oo + c] + acc : acc;
}

/* Group g reduces x[g*chunk, (g+1)*chunk) (squared if `squares`) into
 * partial[g]. */
__kernel void reduce_partial(__global float *partial, __global const float *x, ulong xo, long n,
                             long chunk, int squares)
{
    __local float scratch[ROW_WG];
    long g = get_group_id(0);
    int lid = (int)get_local_id(0);
    long i0 = g * chunk, len = min(n, i0 + chunk) - i0;
    float acc = 0.0f;
#if TS_CPU_DEVICE
    __global const float *p = x + xo + i0;
    float8 acc8 = (float8)(0.0f);
    RUN8_FOR(k, len) {
        if (k + 8 <= len) {
            float8 v = vload8(0, p + k);
            if (squares) acc8 += v * v;
            else acc8 += v;
        } else
            for (int t = 0; t < 8; t++)
                if (k + t < len) acc += squares ? p[k + t] * p[k + t] : p[k + t];
    }
    acc += hsum8(acc8);
#else
    ROW_FOR(k, len) {
        float v = x[xo + i0 + k];
        acc += squares ? v * v : v;
    }
#endif
    acc = wg_sum(acc, scratch);
    if (lid == 0) partial[g] = acc;
}

/* One group: out[0] = sum of partial[0..G). */
__kernel void reduce_finish(__global float *out, ulong oo, __global const float *partial, long G)
{
    __local float scratch[ROW_WG];
    int lid = (int)get_local_id(0);
    float acc = 0.0f;
    ROW_FOR(g, G) acc += partial[g];
    acc = wg_sum(acc, scratch);
    if (lid == 0) out[oo] = acc;
}

/* Max pooling over each sequence's real positions, one work-item per
 * (b, c): x [B,T,C], lengths [B] clamped to [0, T]; out [B,C] the max
 * (NaN wins), argmax [B,C] the first t that holds it (-1, out 0: none). */
__kernel void pool_max_forward(__global float *out, ulong oo, __global int *argmax, ulong ao,
                               __global const float *x, ulong xo, __global const int *lengths, ulong lo,
                               long T, long C, long n)
{
    long i = get_global_id(0);
    if (i < n) {
        long b = i / C, c = i - b * C; /* no / and % pair: LLVM joins it through a `freeze` oclgrind cannot run */
        long L = clamp((long)lengths[lo + b], 0L, T);
        __global const float *col = x + xo + b * T * C + c; /* B,T,C: row t at col[t * C] */
        float best = L > 0 ? col[0] : 0.0f;
        int at = L > 0 ? 0 : -1;
        for (long t = 1; t < L; t++) {
            float v = col[t * C];
            if (v > best || (isnan(v) && !isnan(best))) {
                best = v;
                at = (int)t;
            }
        }
        out[oo + i] = best;
        argmax[ao + i] = at;
    }
}

/* dx[b,t,c] = dout[b,c] where t is argmax[b,c], else 0: one item an element. */
__kernel void pool_max_backward(__global float *dx, ulong dxo, __global const float *dout, ulong doo,
                                __global const int *argmax, ulong ao, long T, long C, long n)
{
    long i = get_global_id(0);
    if (i < n) {
        long bt = i / C, b = bt / T, t = bt - b * T, c = i - bt * C; /* B,T,C, as quotients and products */
        long bc = b * C + c;
        dx[dxo + i] = argmax[ao + bc] == t ? dout[doo + bc] : 0.0f;
    }
}
