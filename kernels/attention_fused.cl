/* Fused attention (TS_OP_ATTENTION_FWD/BWD): scores, mask, softmax and the
 * weighted sum with no [T,T] matrix in global memory. One work-group per
 * row: a query row (bh, t) forward and for dq, a key row (bh, s) for dk and
 * dv. The row's q (or k, v) and its T scores sit in local memory; the
 * backward recomputes probabilities from the forward's log-sum-exp.
 *
 * qkv [B,T,3C] holds q, k, v, each NH heads of HS = C/NH; out and dout are
 * [B,T,C]; lse and delta [B*NH,T]. Key s is visible to query t when
 * s < len (key_len[b], clamped to [0,T]; T without key_len) and, if causal,
 * s <= t. Loops over keys have the same trip count for every item of a
 * group (ROW_FOR), as common.cl explains. */

/* row = bh * T + t and bh = b * NH + h as quotients and products (no / and
 * % pair, which LLVM joins through a `freeze` that oclgrind cannot run) */
inline long key_count(__global const int *key_len, ulong ko, int has_len, long b, long T)
{
    long len = has_len ? (long)key_len[ko + b] : T;
    return len < 0 ? 0 : len > T ? T : len;
}

/* out row t of head (b, h) and its log-sum-exp. Local: q[HS], p[T].
 * qkv and out are stored as sq and so say (load_act: fp32, bf16 or fp16;
 * out rounded once from the fp32 sum). */
__kernel void attention_fused_forward(__global float *out, ulong oo, __global float *lse, ulong lo,
                                      __global const float *qkv, ulong qo, __global const int *key_len, ulong ko,
                                      int has_len, long T, long C, long NH, int causal, float scale, int sq, int so,
                                      __local float *q, __local float *p)
{
    __local float scratch[ROW_WG];
    long row = get_group_id(0);
    int lid = (int)get_local_id(0);
    long bh = row / T, t = row - bh * T, b = bh / NH, h = bh - b * NH, HS = C / NH;
    long len = key_count(key_len, ko, has_len, b, T);
    long n = causal && len > t + 1 ? t + 1 : len;
    long qr = qo + (b * T + t) * 3 * C + h * HS;      /* element offsets: qkv may be 16-bit */
    long k = qo + b * T * 3 * C + C + h * HS, v = k + C; /* row s at s * 3C */
    long o = oo + (b * T + t) * C + h * HS;
    ROW_FOR(d, HS) q[d] = load_act(qkv, qr + d, sq);
    barrier(CLK_LOCAL_MEM_FENCE);
    float m = -INFINITY;
    ROW_FOR(s, n) {
        long ks = k + s * 3 * C;
        float dot = 0.0f;
        for (long d = 0; d < HS; d++) dot += q[d] * load_act(qkv, ks + d, sq);
        p[s] = scale * dot;
        m = fmax(m, scale * dot);
    }
    m = wg_max(m, scratch); /* its barriers also publish p */
    float sum = 0.0f;
    ROW_FOR(s, n) {
        float e = exp(p[s] - m);
        p[s] = e;
        sum += e;
    }
    sum = wg_sum(sum, scratch);
    float inv = n > 0 ? 1.0f / sum : 0.0f;
    ROW_FOR(d, HS) {
        float acc = 0.0f;
        for (long s = 0; s < n; s++) acc += p[s] * load_act(qkv, v + s * 3 * C + d, sq);
        store_act(out, o + d, acc * inv, so);
    }
    if (lid == 0) lse[lo + row] = n > 0 ? m + log(sum) : -INFINITY;
}

/* dq of query row t, and delta = dout_t . out_t for the key-row pass.
 * Local: q[HS], dy[HS], g[T]. dout, qkv and out stored as sd, sq, so say. */
__kernel void attention_fused_backward_q(__global float *dqkv, ulong dqo, __global float *delta, ulong deo,
                                         __global const float *dout, ulong doo, __global const float *qkv, ulong qo,
                                         __global const float *out, ulong oo, __global const float *lse, ulong lo,
                                         __global const int *key_len, ulong ko, int has_len, long T, long C, long NH,
                                         int causal, float scale, int sd, int sq, int so, __local float *q,
                                         __local float *dy, __local float *g)
{
    __local float scratch[ROW_WG];
    long row = get_group_id(0);
    int lid = (int)get_local_id(0);
    long bh = row / T, t = row - bh * T, b = bh / NH, h = bh - b * NH, HS = C / NH;
    long len = key_count(key_len, ko, has_len, b, T);
    long n = causal && len > t + 1 ? t + 1 : len;
    long at = (b * T + t) * C + h * HS;
    long k = qo + b * T * 3 * C + C + h * HS, v = k + C; /* element offsets, row s at s * 3C */
    float D = 0.0f;
    ROW_FOR(d, HS) {
        q[d] = load_act(qkv, qo + (b * T + t) * 3 * C + h * HS + d, sq);
        dy[d] = load_act(dout, doo + at + d, sd);
        D += dy[d] * load_act(out, oo + at + d, so);
    }
    D = wg_sum(D, scratch); /* its barriers also publish q and dy */
    float L = lse[lo + row];
    ROW_FOR(s, n) {
        long ks = k + s * 3 * C, vs = v + s * 3 * C;
        float x = 0.0f, dp = 0.0f;
        for (long d = 0; d < HS; d++) x += q[d] * load_act(qkv, ks + d, sq), dp += dy[d] * load_act(qkv, vs + d, sq);
        float pr = exp(scale * x - L);
        g[s] = scale * pr * (dp - D);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    __global float *dq = dqkv + dqo + (b * T + t) * 3 * C + h * HS;
    ROW_FOR(d, HS) {
        float acc = 0.0f;
        for (long s = 0; s < n; s++) acc += g[s] * load_act(qkv, k + s * 3 * C + d, sq);
        dq[d] = acc;
    }
    if (lid == 0) delta[deo + row] = D;
}

/* dk and dv of key row s: sums over the queries that see it (t >= s when
 * causal; none when s is padding). Local: k[HS], v[HS], pt[T], gt[T].
 * dout and qkv stored as sd and sq say. */
__kernel void attention_fused_backward_kv(__global float *dqkv, ulong dqo, __global const float *delta, ulong deo,
                                          __global const float *dout, ulong doo, __global const float *qkv, ulong qo,
                                          __global const float *lse, ulong lo, __global const int *key_len, ulong ko,
                                          int has_len, long T, long C, long NH, int causal, float scale, int sd,
                                          int sq, __local float *k, __local float *v, __local float *pt,
                                          __local float *gt)
{
    long row = get_group_id(0);
    long bh = row / T, s = row - bh * T, b = bh / NH, h = bh - b * NH, HS = C / NH;
    long len = key_count(key_len, ko, has_len, b, T);
    long first = causal ? s : 0, m = s < len ? T - first : 0; /* queries first .. T-1 */
    ROW_FOR(d, HS) {
        k[d] = load_act(qkv, qo + (b * T + s) * 3 * C + C + h * HS + d, sq);
        v[d] = load_act(qkv, qo + (b * T + s) * 3 * C + 2 * C + h * HS + d, sq);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    long q = qo + b * T * 3 * C + h * HS, dy = doo + b * T * C + h * HS; /* element offsets */
    ROW_FOR(i, m) {
        long t = first + i;
        long qt = q + t * 3 * C, dyt = dy + t * C;
        float x = 0.0f, dp = 0.0f;
        for (long d = 0; d < HS; d++) x += load_act(qkv, qt + d, sq) * k[d], dp += load_act(dout, dyt + d, sd) * v[d];
        float L = lse[lo + bh * T + t];
        float pr = isinf(L) ? 0.0f : exp(scale * x - L);
        pt[i] = pr;
        gt[i] = scale * pr * (dp - delta[deo + bh * T + t]);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    __global float *dk = dqkv + dqo + (b * T + s) * 3 * C + C + h * HS, *dv = dk + C;
    ROW_FOR(d, HS) {
        float ak = 0.0f, av = 0.0f;
        for (long i = 0; i < m; i++)
            ak += gt[i] * load_act(qkv, q + (first + i) * 3 * C + d, sq),
                av += pt[i] * load_act(dout, dy + (first + i) * C + d, sd);
        dk[d] = ak;
        dv[d] = av;
    }
}

#if TS_CPU_DEVICE
/* CPU-type devices: the same three passes with an item per row and no
 * local memory. An item keeps its row's q (or k and v) and its
 * accumulators in float16 registers (HS = 16 * nc) and walks the keys (the
 * queries) in tiles: 8 dot products at once, a tile's scores before its
 * products, so that the forward's online softmax rescales the output once
 * a tile, not once a block of 8 (a scalar exp on the critical path: T=1024
 * forward 74 -> 52 ms). The NDRange is (T, B*NH) in groups of 8 rows of one head;
 * the barrier after each tile makes PoCL run the group's 8 items over a
 * tile before the next, which then comes from L1, not L2 (T=1024 forward
 * 96 -> 74 ms). Every loop's trip count is the same for the group's items
 * (its widest row, see UNIFORM_FOR), the rest masked. The host checks
 * T % 8 == 0, HS % 16 == 0 and HS <= 16 * FA_MAXC. */
#define FA_MAXC 8
#define FA_TILE 64  /* keys a forward tile */
#define FA_BTILE 32 /* backward: fewer live dS blocks (T=1024: 158 -> 124 ms against 64) */
/* PoCL left plain `inline` helpers as calls, their rows in memory */
#define FA_INLINE inline __attribute__((always_inline))

/* The 8 sums of a0 .. a7's lanes, as one float8 in that order. */
FA_INLINE float8 hsum8x8(float8 a0, float8 a1, float8 a2, float8 a3, float8 a4, float8 a5, float8 a6, float8 a7)
{
    float8 s01 = (float8)(a0.lo + a0.hi, a1.lo + a1.hi), s23 = (float8)(a2.lo + a2.hi, a3.lo + a3.hi);
    float8 s45 = (float8)(a4.lo + a4.hi, a5.lo + a5.hi), s67 = (float8)(a6.lo + a6.hi, a7.lo + a7.hi);
    float8 t0 = (float8)(s01.even + s01.odd, s23.even + s23.odd), t1 = (float8)(s45.even + s45.odd, s67.even + s67.odd);
    return (float8)(t0.even + t0.odd, t1.even + t1.odd);
}

/* x . r_j for the 8 rows r_j = r + j * ld (nc float16 each) */
FA_INLINE float8 dots8(const float16 *x, __global const float *r, long ld, int nc)
{
    float16 a0 = (float16)(0.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
#pragma unroll
    for (int c = 0; c < nc; c++) {
        float16 xc = x[c];
        a0 = fma(xc, vload16(c, r), a0);
        a1 = fma(xc, vload16(c, r + ld), a1);
        a2 = fma(xc, vload16(c, r + 2 * ld), a2);
        a3 = fma(xc, vload16(c, r + 3 * ld), a3);
        a4 = fma(xc, vload16(c, r + 4 * ld), a4);
        a5 = fma(xc, vload16(c, r + 5 * ld), a5);
        a6 = fma(xc, vload16(c, r + 6 * ld), a6);
        a7 = fma(xc, vload16(c, r + 7 * ld), a7);
    }
    return hsum8x8(a0.lo + a0.hi, a1.lo + a1.hi, a2.lo + a2.hi, a3.lo + a3.hi, a4.lo + a4.hi, a5.lo + a5.hi,
                   a6.lo + a6.hi, a7.lo + a7.hi);
}

/* acc += sum_j w_j * r_j over the 8 rows r_j = r + j * ld */
FA_INLINE void axpy8(float16 *acc, float8 w, __global const float *r, long ld, int nc)
{
    float wj[8];
    vstore8(w, 0, wj);
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int c = 0; c < nc; c++) acc[c] = fma((float16)(wj[j]), vload16(c, r + j * ld), acc[c]);
}

/* lanes i with first + i >= from and < to */
#define LANES8(first, from, to)                                                                     \
    (((int8)((int)(first)) + (int8)(0, 1, 2, 3, 4, 5, 6, 7) >= (int8)((int)(from))) &                   \
     ((int8)((int)(first)) + (int8)(0, 1, 2, 3, 4, 5, 6, 7) < (int8)((int)(to))))

/* nc is a constant where the kernels call these (8: HS = 64) so that
 * LLVM unrolls the loops and keeps the rows in registers. */
FA_INLINE void fa_forward_row(__global float *out, ulong oo, __global float *lse, ulong lo, __global const float *qkv,
                           ulong qo, long len, long T, long C, long NH, int causal, float scale, const int nc)
{
    long t = get_global_id(0), bh = get_global_id(1), b = bh / NH, h = bh - b * NH, HS = 16 * nc, ld = 3 * C;
    long n = causal && len > t + 1 ? t + 1 : len;                        /* this row's keys */
    long last = ((long)get_group_id(0) + 1) * (long)get_local_size(0), nk = causal && len > last ? last : len; /* the group's */
    __global const float *qr = qkv + qo + (b * T + t) * ld + h * HS;
    __global const float *k = qkv + qo + b * T * ld + C + h * HS, *v = k + C;
    float16 q[FA_MAXC], o[FA_MAXC];
#pragma unroll
    for (int c = 0; c < nc; c++) q[c] = vload16(c, qr), o[c] = (float16)(0.0f);
    float m = -INFINITY, l = 0.0f;
    for (long tile = 0; tile < nk; tile += FA_TILE) {
        /* the tile's scores first, so that the output is rescaled (a
         * scalar exp on the critical path) once a tile, not once a block */
        float8 x[FA_TILE / 8], tmax = (float8)(-INFINITY);
#pragma unroll
        for (int j = 0; j < FA_TILE / 8; j++) {
            long s0 = tile + 8 * j;
            x[j] = (float8)(-INFINITY);
            if (s0 < nk) x[j] = select((float8)(-INFINITY), scale * dots8(q, k + s0 * ld, ld, nc), LANES8(s0, 0, n));
            tmax = fmax(tmax, x[j]);
        }
        float mn = fmax(m, hmax8(tmax));
        if (mn > -INFINITY) { /* else no key of this row yet */
            float corr = exp(m - mn);
            float8 l8 = (float8)(0.0f);
            m = mn;
#pragma unroll
            for (int c = 0; c < nc; c++) o[c] *= corr;
#pragma unroll
            for (int j = 0; j < FA_TILE / 8; j++) {
                long s0 = tile + 8 * j;
                if (s0 < nk) {
                    float8 p = exp(x[j] - mn);
                    l8 += p;
                    axpy8(o, p, v + s0 * ld, ld, nc);
                }
            }
            l = l * corr + hsum8(l8);
        }
        barrier(CLK_LOCAL_MEM_FENCE); /* the group's items take this tile of keys before the next */
    }
    float inv = n > 0 ? 1.0f / l : 0.0f;
    __global float *orow = out + oo + (b * T + t) * C + h * HS;
#pragma unroll
    for (int c = 0; c < nc; c++) vstore16(o[c] * inv, c, orow);
    lse[lo + bh * T + t] = n > 0 ? m + log(l) : -INFINITY;
}

__kernel void attention_fused_forward8(__global float *out, ulong oo, __global float *lse, ulong lo,
                                       __global const float *qkv, ulong qo, __global const int *key_len, ulong ko,
                                       int has_len, long T, long C, long NH, int causal, float scale)
{
    long b = (long)get_global_id(1) / NH, len = key_count(key_len, ko, has_len, b, T);
    if (C / NH == 64) /* nc = 4 */ fa_forward_row(out, oo, lse, lo, qkv, qo, len, T, C, NH, causal, scale, 4);
    else fa_forward_row(out, oo, lse, lo, qkv, qo, len, T, C, NH, causal, scale, (int)(C / NH / 16));
}

/* dq of query row t and delta_t = dout_t . out_t */
FA_INLINE void fa_backward_q_row(__global float *dqkv, ulong dqo, __global float *delta, ulong deo,
                              __global const float *dout, ulong doo, __global const float *qkv, ulong qo,
                              __global const float *out, ulong oo, __global const float *lse, ulong lo, long len,
                              long T, long C, long NH, int causal, float scale, const int nc)
{
    long t = get_global_id(0), bh = get_global_id(1), b = bh / NH, h = bh - b * NH, HS = 16 * nc, ld = 3 * C;
    long n = causal && len > t + 1 ? t + 1 : len;
    long last = ((long)get_group_id(0) + 1) * (long)get_local_size(0), nk = causal && len > last ? last : len;
    long at = (b * T + t) * C + h * HS;
    __global const float *k = qkv + qo + b * T * ld + C + h * HS, *v = k + C;
    float16 q[FA_MAXC], dy[FA_MAXC], dq[FA_MAXC], D16 = (float16)(0.0f);
#pragma unroll
    for (int c = 0; c < nc; c++) {
        q[c] = vload16(c, qkv + qo + (b * T + t) * ld + h * HS);
        dy[c] = vload16(c, dout + doo + at);
        dq[c] = (float16)(0.0f);
        D16 = fma(dy[c], vload16(c, out + oo + at), D16);
    }
    float D = hsum8(D16.lo + D16.hi), L = lse[lo + bh * T + t];
    for (long tile = 0; tile < nk; tile += FA_BTILE) {
        float8 g[FA_BTILE / 8]; /* the tile's dS first, then its products (as forward) */
#pragma unroll
        for (int j = 0; j < FA_BTILE / 8; j++) {
            long s0 = tile + 8 * j;
            g[j] = (float8)(0.0f);
            if (s0 < nk) {
                float8 x = dots8(q, k + s0 * ld, ld, nc), dp = dots8(dy, v + s0 * ld, ld, nc);
                g[j] = scale * select((float8)(0.0f), exp(scale * x - L), LANES8(s0, 0, n)) * (dp - D);
            }
        }
#pragma unroll
        for (int j = 0; j < FA_BTILE / 8; j++)
            if (tile + 8 * j < nk) axpy8(dq, g[j], k + (tile + 8 * j) * ld, ld, nc);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    __global float *dqr = dqkv + dqo + (b * T + t) * ld + h * HS;
#pragma unroll
    for (int c = 0; c < nc; c++) vstore16(dq[c], c, dqr);
    delta[deo + bh * T + t] = D;
}

__kernel void attention_fused_backward_q8(__global float *dqkv, ulong dqo, __global float *delta, ulong deo,
                                          __global const float *dout, ulong doo, __global const float *qkv, ulong qo,
                                          __global const float *out, ulong oo, __global const float *lse, ulong lo,
                                          __global const int *key_len, ulong ko, int has_len, long T, long C,
                                          long NH, int causal, float scale)
{
    long b = (long)get_global_id(1) / NH, len = key_count(key_len, ko, has_len, b, T);
    if (C / NH == 64) /* nc = 4 */
        fa_backward_q_row(dqkv, dqo, delta, deo, dout, doo, qkv, qo, out, oo, lse, lo, len, T, C, NH, causal, scale, 4);
    else
        fa_backward_q_row(dqkv, dqo, delta, deo, dout, doo, qkv, qo, out, oo, lse, lo, len, T, C, NH, causal, scale,
                          (int)(C / NH / 16));
}

/* dk and dv of key row s: sums over the queries t that see it (t >= s when
 * causal; none when s is padding), 8 queries at a time */
FA_INLINE void fa_backward_kv_row(__global float *dqkv, ulong dqo, __global const float *delta, ulong deo,
                               __global const float *dout, ulong doo, __global const float *qkv, ulong qo,
                               __global const float *lse, ulong lo, long len, long T, long C, long NH, int causal,
                               float scale, const int nc)
{
    long s = get_global_id(0), bh = get_global_id(1), b = bh / NH, h = bh - b * NH, HS = 16 * nc, ld = 3 * C;
    long from = causal ? s : 0, first = causal ? (long)get_group_id(0) * (long)get_local_size(0) : 0; /* the group's first query */
    __global const float *kr = qkv + qo + (b * T + s) * ld + C + h * HS;
    __global const float *q = qkv + qo + b * T * ld + h * HS, *dy = dout + doo + b * T * C + h * HS;
    float16 kk[FA_MAXC], vv[FA_MAXC], dk[FA_MAXC], dv[FA_MAXC];
#pragma unroll
    for (int c = 0; c < nc; c++) kk[c] = vload16(c, kr), vv[c] = vload16(c, kr + C), dk[c] = dv[c] = (float16)(0.0f);
    for (long tile = first; tile < T; tile += FA_BTILE) {
        float8 pr[FA_BTILE / 8], g[FA_BTILE / 8]; /* the tile's P and dS first, then its products */
#pragma unroll
        for (int j = 0; j < FA_BTILE / 8; j++) {
            long t0 = tile + 8 * j;
            pr[j] = g[j] = (float8)(0.0f);
            if (t0 < T) {
                float8 x = dots8(kk, q + t0 * ld, ld, nc), dp = dots8(vv, dy + t0 * C, C, nc);
                float8 L = vload8(0, lse + lo + bh * T + t0), D = vload8(0, delta + deo + bh * T + t0);
                int8 seen = LANES8(t0, from, T) & (int8)(s < len ? -1 : 0) & ~isinf(L);
                pr[j] = select((float8)(0.0f), exp(scale * x - L), seen);
                g[j] = scale * pr[j] * (dp - D);
            }
        }
#pragma unroll
        for (int j = 0; j < FA_BTILE / 8; j++) {
            long t0 = tile + 8 * j;
            if (t0 < T) {
                axpy8(dv, pr[j], dy + t0 * C, C, nc);
                axpy8(dk, g[j], q + t0 * ld, ld, nc);
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    __global float *dkr = dqkv + dqo + (b * T + s) * ld + C + h * HS;
#pragma unroll
    for (int c = 0; c < nc; c++) vstore16(dk[c], c, dkr), vstore16(dv[c], c, dkr + C);
}

__kernel void attention_fused_backward_kv8(__global float *dqkv, ulong dqo, __global const float *delta, ulong deo,
                                           __global const float *dout, ulong doo, __global const float *qkv, ulong qo,
                                           __global const float *lse, ulong lo, __global const int *key_len, ulong ko,
                                           int has_len, long T, long C, long NH, int causal, float scale)
{
    long b = (long)get_global_id(1) / NH, len = key_count(key_len, ko, has_len, b, T);
    if (C / NH == 64) /* nc = 4 */
        fa_backward_kv_row(dqkv, dqo, delta, deo, dout, doo, qkv, qo, lse, lo, len, T, C, NH, causal, scale, 4);
    else
        fa_backward_kv_row(dqkv, dqo, delta, deo, dout, doo, qkv, qo, lse, lo, len, T, C, NH, causal, scale,
                           (int)(C / NH / 16));
}
#endif
