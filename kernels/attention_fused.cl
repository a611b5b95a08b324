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

/* out row t of head (b, h) and its log-sum-exp. Local: q[HS], p[T]. */
__kernel void attention_fused_forward(__global float *out, ulong oo, __global float *lse, ulong lo,
                                      __global const float *qkv, ulong qo, __global const int *key_len, ulong ko,
                                      int has_len, long T, long C, long NH, int causal, float scale,
                                      __local float *q, __local float *p)
{
    __local float scratch[ROW_WG];
    long row = get_group_id(0);
    int lid = (int)get_local_id(0);
    long bh = row / T, t = row - bh * T, b = bh / NH, h = bh - b * NH, HS = C / NH;
    long len = key_count(key_len, ko, has_len, b, T);
    long n = causal && len > t + 1 ? t + 1 : len;
    __global const float *qr = qkv + qo + (b * T + t) * 3 * C + h * HS;
    __global const float *k = qkv + qo + b * T * 3 * C + C + h * HS, *v = k + C; /* row s at s * 3C */
    __global float *o = out + oo + (b * T + t) * C + h * HS;
    ROW_FOR(d, HS) q[d] = qr[d];
    barrier(CLK_LOCAL_MEM_FENCE);
    float m = -INFINITY;
    ROW_FOR(s, n) {
        __global const float *ks = k + s * 3 * C;
        float dot = 0.0f;
        for (long d = 0; d < HS; d++) dot += q[d] * ks[d];
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
        for (long s = 0; s < n; s++) acc += p[s] * v[s * 3 * C + d];
        o[d] = acc * inv;
    }
    if (lid == 0) lse[lo + row] = n > 0 ? m + log(sum) : -INFINITY;
}

/* dq of query row t, and delta = dout_t . out_t for the key-row pass.
 * Local: q[HS], dy[HS], g[T]. */
__kernel void attention_fused_backward_q(__global float *dqkv, ulong dqo, __global float *delta, ulong deo,
                                         __global const float *dout, ulong doo, __global const float *qkv, ulong qo,
                                         __global const float *out, ulong oo, __global const float *lse, ulong lo,
                                         __global const int *key_len, ulong ko, int has_len, long T, long C, long NH,
                                         int causal, float scale, __local float *q, __local float *dy,
                                         __local float *g)
{
    __local float scratch[ROW_WG];
    long row = get_group_id(0);
    int lid = (int)get_local_id(0);
    long bh = row / T, t = row - bh * T, b = bh / NH, h = bh - b * NH, HS = C / NH;
    long len = key_count(key_len, ko, has_len, b, T);
    long n = causal && len > t + 1 ? t + 1 : len;
    long at = (b * T + t) * C + h * HS;
    __global const float *k = qkv + qo + b * T * 3 * C + C + h * HS, *v = k + C;
    float D = 0.0f;
    ROW_FOR(d, HS) {
        q[d] = qkv[qo + (b * T + t) * 3 * C + h * HS + d];
        dy[d] = dout[doo + at + d];
        D += dy[d] * out[oo + at + d];
    }
    D = wg_sum(D, scratch); /* its barriers also publish q and dy */
    float L = lse[lo + row];
    ROW_FOR(s, n) {
        __global const float *ks = k + s * 3 * C, *vs = v + s * 3 * C;
        float x = 0.0f, dp = 0.0f;
        for (long d = 0; d < HS; d++) x += q[d] * ks[d], dp += dy[d] * vs[d];
        float pr = exp(scale * x - L);
        g[s] = scale * pr * (dp - D);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    __global float *dq = dqkv + dqo + (b * T + t) * 3 * C + h * HS;
    ROW_FOR(d, HS) {
        float acc = 0.0f;
        for (long s = 0; s < n; s++) acc += g[s] * k[s * 3 * C + d];
        dq[d] = acc;
    }
    if (lid == 0) delta[deo + row] = D;
}

/* dk and dv of key row s: sums over the queries that see it (t >= s when
 * causal; none when s is padding). Local: k[HS], v[HS], pt[T], gt[T]. */
__kernel void attention_fused_backward_kv(__global float *dqkv, ulong dqo, __global const float *delta, ulong deo,
                                          __global const float *dout, ulong doo, __global const float *qkv, ulong qo,
                                          __global const float *lse, ulong lo, __global const int *key_len, ulong ko,
                                          int has_len, long T, long C, long NH, int causal, float scale,
                                          __local float *k, __local float *v, __local float *pt, __local float *gt)
{
    long row = get_group_id(0);
    long bh = row / T, s = row - bh * T, b = bh / NH, h = bh - b * NH, HS = C / NH;
    long len = key_count(key_len, ko, has_len, b, T);
    long first = causal ? s : 0, m = s < len ? T - first : 0; /* queries first .. T-1 */
    ROW_FOR(d, HS) {
        k[d] = qkv[qo + (b * T + s) * 3 * C + C + h * HS + d];
        v[d] = qkv[qo + (b * T + s) * 3 * C + 2 * C + h * HS + d];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    __global const float *q = qkv + qo + b * T * 3 * C + h * HS, *dy = dout + doo + b * T * C + h * HS;
    ROW_FOR(i, m) {
        long t = first + i;
        __global const float *qt = q + t * 3 * C, *dyt = dy + t * C;
        float x = 0.0f, dp = 0.0f;
        for (long d = 0; d < HS; d++) x += qt[d] * k[d], dp += dyt[d] * v[d];
        float L = lse[lo + bh * T + t];
        float pr = isinf(L) ? 0.0f : exp(scale * x - L);
        pt[i] = pr;
        gt[i] = scale * pr * (dp - delta[deo + bh * T + t]);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    __global float *dk = dqkv + dqo + (b * T + s) * 3 * C + C + h * HS, *dv = dk + C;
    ROW_FOR(d, HS) {
        float ak = 0.0f, av = 0.0f;
        for (long i = 0; i < m; i++) ak += gt[i] * q[(first + i) * 3 * C + d], av += pt[i] * dy[(first + i) * C + d];
        dk[d] = ak;
        dv[d] = av;
    }
}
