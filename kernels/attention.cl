/* Attention helpers: head permutes, the causal softmax and the softmax over
 * a padded batch's keys (masked, causal or not). */

/* packed [B,T,K,NH,HS] <-> heads [K,B,NH,T,HS]. Item (d, r) moves element d
 * of head-row r; groups span a row (contiguous on every device). Index
 * arithmetic is 32-bit, which the host guarantees fits. The packed side is
 * stored as ps says (load_act: fp32, bf16 or fp16: the model's qkv, out
 * and dout), the heads side is fp32. */
__kernel void heads_permute(__global float *out, ulong oo, __global const float *inp, ulong io,
                            int B, int T, int K, int NH, int HS, int split, int ps)
{
    int d = (int)get_global_id(0), r = (int)get_global_id(1);
    if (d < HS) {
        int rt = r / T, t = r - rt * T;
        int rh = rt / NH, h = rt - rh * NH;
        int k = rh / B, b = rh - k * B;
        int packed = (((b * T + t) * K + k) * NH + h) * HS + d;
        int heads = r * HS + d;
        if (split)
            out[oo + heads] = load_act(inp, io + packed, ps);
        else
            store_act(out, oo + packed, inp[io + heads], ps);
    }
}

/* The same permute for CPU-type devices: item r moves all of head-row r,
 * its index arithmetic once per row (an item per element spent most of
 * its time in four integer divisions). */
__kernel void heads_permute_rows(__global float *out, ulong oo, __global const float *inp, ulong io,
                                 int B, int T, int K, int NH, int HS, int split, int ps)
{
    int r = (int)get_global_id(0);
    if (r >= K * B * NH * T) return;
    int rt = r / T, t = r - rt * T;
    int rh = rt / NH, h = rt - rh * NH;
    int k = rh / B, b = rh - k * B;
    int packed = (((b * T + t) * K + k) * NH + h) * HS, heads = r * HS;
    if (split)
        for (int d = 0; d < HS; d++) out[oo + heads + d] = load_act(inp, io + packed + d, ps);
    else
        for (int d = 0; d < HS; d++) store_act(out, oo + packed + d, inp[io + heads + d], ps);
}

#if TS_CPU_DEVICE
/* CPU-type devices: the causal and the masked softmax with an item per row,
 * the row 8 at a time and no barriers. Every item walks the whole row (a
 * uniform trip count, see UNIFORM_FOR) and masks the keys s >= end: end is
 * the sequence's length (lengths[bh / NH] clamped to [0, T]; T without
 * lengths), and at most t + 1 when causal. Needs T % 8 == 0 (the host
 * checks). att may be preatt, dpreatt may be datt: an item reads each
 * element of its row before writing it. */
#define KEYS8(k, end) ((int8)((int)(k)) + (int8)(0, 1, 2, 3, 4, 5, 6, 7) < (int8)((int)(end)))

inline long row_end(long row, long T, __global const int *lengths, ulong lo, int has_lengths, long NH, int causal)
{
    long bh = row / T, t = row - bh * T, end = T;
    if (has_lengths) {
        long len = lengths[lo + bh / NH];
        end = len < 0 ? 0 : len > T ? T : len;
    }
    return causal && end > t + 1 ? t + 1 : end;
}

__kernel void softmax_forward_row8(__global float *att, ulong ao, __global const float *preatt, ulong po,
                                   __global const int *lengths, ulong lo, int has_lengths, long rows, long T,
                                   long NH, float scale, int causal)
{
    long row = get_global_id(0);
    if (row >= rows) return;
    long end = row_end(row, T, lengths, lo, has_lengths, NH, causal);
    __global const float *x = preatt + po + row * T;
    __global float *o = att + ao + row * T;
    float8 m8 = (float8)(-INFINITY);
    for (long k = 0; k < T; k += 8)
        m8 = fmax(m8, select((float8)(-INFINITY), scale * vload8(0, x + k), KEYS8(k, end)));
    float m = hmax8(m8);
    float8 s8 = (float8)(0.0f);
    for (long k = 0; k < T; k += 8)
        s8 += select((float8)(0.0f), exp(scale * vload8(0, x + k) - m), KEYS8(k, end));
    float inv = end > 0 ? 1.0f / hsum8(s8) : 0.0f;
    for (long k = 0; k < T; k += 8)
        vstore8(select((float8)(0.0f), exp(scale * vload8(0, x + k) - m) * inv, KEYS8(k, end)), 0, o + k);
}

/* dpreatt = scale * att * (datt - sum_s att*datt) over s < end (t + 1
 * when causal, else T: masked keys have att = 0), zeros after. */
__kernel void softmax_backward_row8(__global float *dpre, ulong dpo, __global const float *att, ulong ao,
                                    __global const float *datt, ulong dao, long rows, long T, float scale,
                                    int causal)
{
    long row = get_global_id(0);
    if (row >= rows) return;
    long end = causal ? row % T + 1 : T;
    __global const float *a = att + ao + row * T, *d = datt + dao + row * T;
    __global float *o = dpre + dpo + row * T;
    float8 dot8 = (float8)(0.0f);
    for (long k = 0; k < T; k += 8)
        dot8 += select((float8)(0.0f), vload8(0, a + k) * vload8(0, d + k), KEYS8(k, end));
    float dot = hsum8(dot8);
    for (long k = 0; k < T; k += 8)
        vstore8(select((float8)(0.0f), scale * vload8(0, a + k) * (vload8(0, d + k) - dot), KEYS8(k, end)), 0,
                o + k);
}
#endif

/* One group per row (bh, t): softmax of scale*x over s <= t, zeros after.
 * att may be preatt: every element is read before the same item writes it. */
__kernel void softmax_causal_forward(__global float *att, ulong ao, __global const float *preatt,
                                     ulong po, long rows, long T, float scale)
{
    __local float scratch[ROW_WG];
    long row = get_group_id(0);
    int lid = (int)get_local_id(0);
    if (row >= rows) return;
    long t = row % T;
    __global const float *x = preatt + po + row * T;
    __global float *o = att + ao + row * T;
    float m = -INFINITY;
    ROW_FOR(s, t + 1) m = fmax(m, scale * x[s]);
    m = wg_max(m, scratch);
    float sum = 0.0f;
    ROW_FOR(s, t + 1) sum += exp(scale * x[s] - m);
    float inv = 1.0f / wg_sum(sum, scratch);
    ROW_FOR(s, T) o[s] = s <= t ? exp(scale * x[s] - m) * inv : 0.0f;
}

/* dpreatt = scale * att * (datt - sum_s att*datt); dpreatt may be datt. */
__kernel void softmax_causal_backward(__global float *dpre, ulong dpo, __global const float *att,
                                      ulong ao, __global const float *datt, ulong dao, long rows,
                                      long T, float scale)
{
    __local float scratch[ROW_WG];
    long row = get_group_id(0);
    int lid = (int)get_local_id(0);
    if (row >= rows) return;
    long t = row % T;
    __global const float *a = att + ao + row * T, *d = datt + dao + row * T;
    __global float *o = dpre + dpo + row * T;
    float dot = 0.0f;
    ROW_FOR(s, t + 1) dot += a[s] * d[s];
    dot = wg_sum(dot, scratch);
    ROW_FOR(s, T) o[s] = s <= t ? scale * a[s] * (d[s] - dot) : 0.0f;
}

/* One group per row (bh, t): softmax of scale*x over the keys s < the
 * sequence's length (lengths[bh / NH], clamped to [0, T]) and, if causal,
 * s <= t; zeros elsewhere. att may be preatt. The key count is the same for
 * every item of the group, so the loops stay uniform. */
__kernel void softmax_masked_forward(__global float *att, ulong ao, __global const float *preatt, ulong po,
                                     __global const int *lengths, ulong lo, long rows, long T, long NH,
                                     float scale, int causal)
{
    __local float scratch[ROW_WG];
    long row = get_group_id(0);
    int lid = (int)get_local_id(0);
    if (row >= rows) return;
    /* row = bh * T + t, as a quotient and a product: with both row / T and
     * row % T, LLVM pairs them through a `freeze`, which oclgrind cannot run */
    long bh = row / T, t = row - bh * T, len = lengths[lo + bh / NH];
    long end = len < 0 ? 0 : len > T ? T : len;
    if (causal && end > t + 1) end = t + 1;
    __global const float *x = preatt + po + row * T;
    __global float *o = att + ao + row * T;
    float m = -INFINITY;
    ROW_FOR(s, end) m = fmax(m, scale * x[s]);
    m = wg_max(m, scratch);
    float sum = 0.0f;
    ROW_FOR(s, end) sum += exp(scale * x[s] - m);
    sum = wg_sum(sum, scratch);
    float inv = end > 0 ? 1.0f / sum : 0.0f;
    ROW_FOR(s, T) o[s] = s < end ? exp(scale * x[s] - m) * inv : 0.0f;
}

/* The softmax backward over whole rows: dpreatt = scale * att * (datt -
 * sum_s att*datt); masked keys have att = 0. dpreatt may be datt. */
__kernel void softmax_masked_backward(__global float *dpre, ulong dpo, __global const float *att, ulong ao,
                                      __global const float *datt, ulong dao, long rows, long T, float scale)
{
    __local float scratch[ROW_WG];
    long row = get_group_id(0);
    int lid = (int)get_local_id(0);
    if (row >= rows) return;
    __global const float *a = att + ao + row * T, *d = datt + dao + row * T;
    __global float *o = dpre + dpo + row * T;
    float dot = 0.0f;
    ROW_FOR(s, T) dot += a[s] * d[s];
    dot = wg_sum(dot, scratch);
    ROW_FOR(s, T) o[s] = scale * a[s] * (d[s] - dot);
}
