/* Fused multi-head attention on the CPU backend.
 *
 * The composite route writes a [B*NH,T,T] score matrix, reads it back for the
 * softmax and again for the weighted sum, and permutes q, k, v and the output
 * between [B,T,3C] and per-head layouts. Here one task takes a block of QB
 * query rows of one head: its scores go to a [QB, keys] buffer of its own
 * thread (L2-sized), the softmax runs in place, and the weighted sum is
 * written straight into out[B,T,C]; q, k, v are read in place from
 * qkv[B,T,3C] through BLAS leading dimensions. Causal blocks stop at their
 * last row's key, so the masked half of the scores is never computed. Only
 * each row's log-sum-exp is kept; backward recomputes the probabilities from
 * it (FlashAttention's plan), so memory is O(B*NH*T), not O(B*NH*T^2).
 *
 * Each task is computed by one thread in a fixed order, so the results do
 * not depend on the number of threads. */
#include "cpu_attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../blas/blas.h"
#include "cpu_math.h"
#include "cpu_ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

enum { QB = 64 }; /* query rows per task */

static int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Keys row t may see: s < len, and s <= t when causal. */
static int64_t keys_of(int64_t t, int64_t len, bool causal)
{
    return causal && t + 1 < len ? t + 1 : len;
}

static int64_t length_of(const int32_t *key_len, int64_t b, int64_t T)
{
    if (!key_len) return T;
    int64_t n = key_len[b];
    return n < 0 ? 0 : n > T ? T : n;
}

/* p[0..kmax) = softmax(scale * s[0..n)) (zeros from n on); returns the
 * log-sum-exp of the scaled scores, -inf when n == 0. In place (p may be s). */
TS_CLONES static float softmax_row(float *p, const float *s, int64_t n, int64_t kmax, float scale)
{
    if (n == 0) {
        memset(p, 0, (size_t)kmax * sizeof *p);
        return -INFINITY;
    }
    float m = ts_row_max(s, n, scale);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t k = 0; k < n; k++) {
        float e = ts_expf(scale * s[k] - m);
        p[k] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t k = 0; k < n; k++) p[k] *= inv;
    for (int64_t k = n; k < kmax; k++) p[k] = 0.0f;
    return m + logf(sum);
}

/* Backward of one row: p = exp(scale*s - lse) rebuilt in place over s, and
 * g = scale * p * (g - D) with D = dout_t . out_t (zeros from n on). */
TS_CLONES static void softmax_row_backward(float *p, float *g, int64_t n, int64_t kmax, float scale, float lse,
                                           float D)
{
    if (n == 0 || !isfinite(lse)) {
        memset(p, 0, (size_t)kmax * sizeof *p);
        memset(g, 0, (size_t)kmax * sizeof *g);
        return;
    }
#pragma omp simd
    for (int64_t k = 0; k < n; k++) {
        float e = ts_expf(scale * p[k] - lse);
        p[k] = e;
        g[k] = scale * e * (g[k] - D);
    }
    for (int64_t k = n; k < kmax; k++) p[k] = 0.0f, g[k] = 0.0f;
}

TS_CLONES static float dot_row(const float *a, const float *b, int64_t n)
{
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

int cpu_attention_forward(float *out, float *lse, const float *qkv, const int32_t *key_len, int64_t B, int64_t T,
                          int64_t C, int64_t NH, bool causal)
{
    int64_t HS = C / NH, C3 = 3 * C, BH = B * NH, nqb = (T + QB - 1) / QB, tasks = BH * nqb;
    int threads = ts_cpu_threads > 1 && tasks > 1 ? ts_cpu_threads : 1;
    float *buf = malloc((size_t)threads * QB * (size_t)T * sizeof *buf);
    if (!buf) return -1;
    float scale = 1.0f / sqrtf((float)HS);
    /* later causal blocks hold more keys: hand out tasks one at a time */
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
    for (int64_t task = 0; task < tasks; task++) {
        int64_t bh = task / nqb, b = bh / NH, h = bh % NH;
        int64_t t0 = task % nqb * QB, t1 = t0 + QB < T ? t0 + QB : T, rows = t1 - t0;
        int64_t len = length_of(key_len, b, T), kmax = causal && t1 < len ? t1 : len;
        const float *q = qkv + (b * T + t0) * C3 + h * HS; /* [rows, HS], row stride 3C */
        const float *k = qkv + b * T * C3 + C + h * HS;    /* [T, HS] */
        const float *v = k + C;
        float *o = out + (b * T + t0) * C + h * HS;        /* [rows, HS], row stride C */
        float *s = buf + (size_t)thread_id() * QB * (size_t)T; /* [rows, kmax] scores, then probabilities */
        if (kmax > 0) ts_blas_sgemm_serial(false, true, rows, kmax, HS, 1.0f, q, C3, k, C3, 0.0f, s, kmax);
        for (int64_t r = 0; r < rows; r++)
            lse[bh * T + t0 + r] = softmax_row(s + r * kmax, s + r * kmax, keys_of(t0 + r, len, causal), kmax, scale);
        ts_blas_sgemm_serial(false, false, rows, HS, kmax, 1.0f, s, kmax, v, C3, 0.0f, o, C);
    }
    free(buf);
    return 0;
}

int cpu_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *out, const float *lse,
                           const int32_t *key_len, int64_t B, int64_t T, int64_t C, int64_t NH, bool causal)
{
    int64_t HS = C / NH, C3 = 3 * C, BH = B * NH;
    int threads = ts_cpu_threads > 1 && BH > 1 ? ts_cpu_threads : 1;
    float *buf = malloc((size_t)threads * 2 * QB * (size_t)T * sizeof *buf);
    if (!buf) return -1;
    float scale = 1.0f / sqrtf((float)HS);
    /* Short causal rows: smaller blocks skip more of the masked corner (at
     * T=64, blocks of 16 rows see 40 keys per row on average, of 32 rows 48)
     * and keep OpenBLAS on its small-matrix kernels; long ones keep the
     * larger products. B=4 NH=12 HS=64 T=64 on Zen 5, in order with zeroed
     * dk and dv: 16 rows 0.32-0.34 ms, 32 rows 0.38-0.41, 64 rows 0.44-0.46
     * (T=128 and 256 tie between 32 and 64); with 16 and the order below
     * 0.29 ms, the composite route 0.32. */
    int64_t qb = causal && T <= 64 ? QB / 4 : causal && T <= 128 ? QB / 2 : QB;
    /* one head per task: its dk and dv sum over the query blocks in order,
     * last to first: the last block sees every key any block sees (len of
     * them), so its products write dk and dv (beta 0) and the others add */
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
    for (int64_t bh = 0; bh < BH; bh++) {
        int64_t b = bh / NH, h = bh % NH, len = length_of(key_len, b, T);
        const float *k = qkv + b * T * C3 + C + h * HS, *v = k + C;
        float *dk = dqkv + b * T * C3 + C + h * HS, *dv = dk + C;
        float *p = buf + (size_t)thread_id() * 2 * QB * (size_t)T, *g = p + QB * (size_t)T;
        for (int64_t t = len; t < T; t++) { /* keys no query sees */
            memset(dk + t * C3, 0, (size_t)HS * sizeof *dk);
            memset(dv + t * C3, 0, (size_t)HS * sizeof *dv);
        }
        float beta = 0.0f;
        for (int64_t t0 = (T - 1) / qb * qb; t0 >= 0; t0 -= qb) {
            int64_t t1 = t0 + qb < T ? t0 + qb : T, rows = t1 - t0, kmax = causal && t1 < len ? t1 : len;
            const float *q = qkv + (b * T + t0) * C3 + h * HS;
            const float *dy = dout + (b * T + t0) * C + h * HS, *y = out + (b * T + t0) * C + h * HS;
            float *dq = dqkv + (b * T + t0) * C3 + h * HS;
            if (kmax == 0) { /* len == 0: no keys at all */
                for (int64_t r = 0; r < rows; r++) memset(dq + r * C3, 0, (size_t)HS * sizeof *dq);
                continue;
            }
            ts_blas_sgemm_serial(false, true, rows, kmax, HS, 1.0f, q, C3, k, C3, 0.0f, p, kmax);   /* scores */
            ts_blas_sgemm_serial(false, true, rows, kmax, HS, 1.0f, dy, C, v, C3, 0.0f, g, kmax);   /* dP */
            for (int64_t r = 0; r < rows; r++)
                softmax_row_backward(p + r * kmax, g + r * kmax, keys_of(t0 + r, len, causal), kmax, scale,
                                     lse[bh * T + t0 + r], dot_row(dy + r * C, y + r * C, HS));
            ts_blas_sgemm_serial(false, false, rows, HS, kmax, 1.0f, g, kmax, k, C3, 0.0f, dq, C3); /* dq */
            ts_blas_sgemm_serial(true, false, kmax, HS, rows, 1.0f, g, kmax, q, C3, beta, dk, C3);  /* dk += */
            ts_blas_sgemm_serial(true, false, kmax, HS, rows, 1.0f, p, kmax, dy, C, beta, dv, C3);  /* dv += */
            beta = 1.0f;
        }
    }
    free(buf);
    return 0;
}
