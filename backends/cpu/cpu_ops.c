#include "cpu_ops.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TS_X86_KERNELS 1
#endif

#include "cpu_math.h"

#ifdef _OPENMP
#include <omp.h>
#endif

int ts_cpu_threads = 1;

#define TS_PRAGMA(x) _Pragma(#x)
/* Parallel only when there is enough work to pay for waking the threads. */
#define PFOR(cond) TS_PRAGMA(omp parallel for schedule(static) num_threads(ts_cpu_threads) if (cond))
#define PFOR_SIMD(cond)                                                                            \
    TS_PRAGMA(omp parallel for simd schedule(static) num_threads(ts_cpu_threads) if (cond))

enum { SMALL = 1 << 14 };   /* elements below which loops stay serial */
enum { REDUCE_CHUNKS = 64 }; /* fixed: results do not depend on thread count */
enum { COL_BLOCK = 64 };     /* columns per task in row reductions */

TS_CLONES void cpu_fill(float *t, int64_t n, float value)
{
    PFOR_SIMD(n > SMALL)
    for (int64_t i = 0; i < n; i++) t[i] = value;
}

TS_CLONES void cpu_add(float *out, const float *a, const float *b, int64_t n)
{
    PFOR_SIMD(n > SMALL)
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

TS_CLONES void cpu_scale(float *out, const float *a, float alpha, int64_t n)
{
    PFOR_SIMD(n > SMALL)
    for (int64_t i = 0; i < n; i++) out[i] = alpha * a[i];
}

/* bf16 storage: the upper half of an fp32 (ts_bf16_bits rounds into it) */
static inline float bf16_value(uint16_t b)
{
    union { uint32_t u; float f; } v = {.u = (uint32_t)b << 16};
    return v.f;
}

#define LOAD_F32(p, i) (((const float *)(p))[i])
#define LOAD_BF16(p, i) bf16_value(((const uint16_t *)(p))[i])
#define STORE_F32(p, i, v) (((float *)(p))[i] = (v))
#define STORE_BF16(p, i, v) (((uint16_t *)(p))[i] = ts_bf16_bits(v))

/* One loop per pair of storage types, each vectorised on its own. */
#define GELU_FWD_LOOP(LOAD, STORE)                                                                  \
    do {                                                                                           \
        PFOR_SIMD(n > SMALL / 4)                                                                   \
        for (int64_t i = 0; i < n; i++) {                                                          \
            float x = LOAD(inp, i);                                                                \
            float u = TS_GELU_SCALE * (x + 0.044715f * x * x * x);                                 \
            STORE(out, i, 0.5f * x * (1.0f + ts_tanhf(u)));                                        \
        }                                                                                          \
    } while (0)

TS_CLONES void cpu_gelu_forward(void *out, bool out_bf16, const void *inp, bool inp_bf16, int64_t n)
{
    if (!out_bf16 && !inp_bf16) GELU_FWD_LOOP(LOAD_F32, STORE_F32);
    else if (!out_bf16) GELU_FWD_LOOP(LOAD_BF16, STORE_F32);
    else if (!inp_bf16) GELU_FWD_LOOP(LOAD_F32, STORE_BF16);
    else GELU_FWD_LOOP(LOAD_BF16, STORE_BF16);
}

#define GELU_BWD_LOOP(LOAD)                                                                         \
    do {                                                                                           \
        PFOR_SIMD(n > SMALL / 4)                                                                   \
        for (int64_t i = 0; i < n; i++) {                                                          \
            float x = LOAD(inp, i);                                                                \
            float u = TS_GELU_SCALE * (x + 0.044715f * x * x * x);                                 \
            float t = ts_tanhf(u);                                                                 \
            float sech2 = 1.0f - t * t;                                                            \
            float local = 0.5f * (1.0f + t) +                                                      \
                          x * 0.5f * sech2 * TS_GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);    \
            dinp[i] = local * dout[i];                                                             \
        }                                                                                          \
    } while (0)

TS_CLONES void cpu_gelu_backward(float *dinp, const void *inp, bool inp_bf16, const float *dout, int64_t n)
{
    if (inp_bf16) GELU_BWD_LOOP(LOAD_BF16);
    else GELU_BWD_LOOP(LOAD_F32);
}

/* f16 storage: to nearest even, overflow to inf, subnormals, NaN kept
 * quiet (a NaN's payload may not fit: its top bits are kept) */
static inline uint16_t f16_bits(float f)
{
    union { float f; uint32_t u; } v = {.f = f};
    uint32_t sign = (v.u >> 16) & 0x8000u, x = v.u & 0x7fffffffu;
    if (x > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
    if (x >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* from 65520 (and inf) on: inf */
    if (x < 0x38800000u) /* below 2^-14: subnormal, steps of 2^-24, exact in float */
        return (uint16_t)(sign | (uint32_t)lrintf(fabsf(f) * 0x1p24f));
    return (uint16_t)(sign | (((x + 0xfffu + ((x >> 13) & 1u)) >> 13) - (112u << 10)));
}

static inline float f16_value(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    union { uint32_t u; float f; } v;
    if (e == 0) return sign ? -(float)m * 0x1p-24f : (float)m * 0x1p-24f;
    v.u = sign | (e == 31 ? 0x7f800000u | m << 13 : (e + 112u) << 23 | m << 13);
    return v.f;
}

/* out = in between fp32 and a 16-bit type (CPU_ACT_*), or a copy within one */
TS_CLONES void cpu_cast(void *out, int out_type, const void *in, int in_type, int64_t n)
{
    if (out_type == in_type) {
        memmove(out, in, (size_t)n * (out_type ? 2 : 4));
        return;
    }
    if (out_type == CPU_ACT_F16) {
        PFOR_SIMD(n > SMALL)
        for (int64_t i = 0; i < n; i++) ((uint16_t *)out)[i] = f16_bits(((const float *)in)[i]);
    } else if (in_type == CPU_ACT_F16) {
        PFOR_SIMD(n > SMALL)
        for (int64_t i = 0; i < n; i++) ((float *)out)[i] = f16_value(((const uint16_t *)in)[i]);
    } else if (out_type == CPU_ACT_BF16) {
        PFOR_SIMD(n > SMALL)
        for (int64_t i = 0; i < n; i++) STORE_BF16(out, i, LOAD_F32(in, i));
    } else {
        PFOR_SIMD(n > SMALL)
        for (int64_t i = 0; i < n; i++) STORE_F32(out, i, LOAD_BF16(in, i));
    }
}

/* ---- embedding ---- */

void cpu_embedding_forward(float *out, const int32_t *tokens, const float *wte, const float *wpe,
                           int64_t N, int64_t T, int64_t C, int64_t V, int64_t vocab_start)
{
    PFOR(N * C > SMALL)
    for (int64_t n = 0; n < N; n++) {
        float *o = out + n * C;
        int64_t row = (int64_t)tokens[n] - vocab_start;
        const float *w = (row >= 0 && row < V) ? wte + row * C : NULL;
        const float *p = wpe ? wpe + (n % T) * C : NULL;
        if (w && p)
            for (int64_t c = 0; c < C; c++) o[c] = w[c] + p[c];
        else if (w)
            memcpy(o, w, (size_t)C * sizeof *o);
        else if (p)
            memcpy(o, p, (size_t)C * sizeof *o);
        else
            memset(o, 0, (size_t)C * sizeof *o);
    }
}

/* Each thread one contiguous share of the C columns of a scatter (rows are
 * summed in order, so the result does not depend on the split): long runs
 * of every row, which the prefetchers follow, where 64-column blocks
 * jumped C floats a row. Returns the share's width. */
static int64_t scatter_share(int64_t C)
{
    int64_t threads = ts_cpu_threads > 0 ? ts_cpu_threads : 1;
    int64_t width = ((C + threads - 1) / threads + 15) / 16 * 16;
    return width < COL_BLOCK ? COL_BLOCK : width;
}

/* Each task owns a share of the channels and walks every position in
 * order: no atomics, and the same sums whatever the thread count. */
TS_CLONES void cpu_embedding_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens,
                                      int64_t N, int64_t T, int64_t C, int64_t V, int64_t vocab_start)
{
    int64_t width = scatter_share(C), nblocks = (C + width - 1) / width;
    PFOR(N * C > SMALL)
    for (int64_t cb = 0; cb < nblocks; cb++) {
        int64_t c0 = cb * width, c1 = c0 + width < C ? c0 + width : C;
        for (int64_t n = 0; n < N; n++) {
            const float *d = dout + n * C;
            if (dwte && n + 8 < N) { /* the rows are random: fetch a later one's share ahead */
                int64_t ahead = (int64_t)tokens[n + 8] - vocab_start;
                if (ahead >= 0 && ahead < V)
                    for (int64_t c = c0; c < c1; c += 16) __builtin_prefetch(dwte + ahead * C + c, 1, 3);
            }
            if (dwte) {
                int64_t row = (int64_t)tokens[n] - vocab_start;
                if (row >= 0 && row < V) {
                    float *w = dwte + row * C;
#pragma omp simd
                    for (int64_t c = c0; c < c1; c++) w[c] += d[c];
                }
            }
            if (dwpe) {
                float *p = dwpe + (n % T) * C;
#pragma omp simd
                for (int64_t c = c0; c < c1; c++) p[c] += d[c];
            }
        }
    }
}

/* An entry (n, j) adds when its weight is not 0 and its id is in [0, G) */
static inline const float *bag_row(const float *table, const int32_t *ids, const float *w, int64_t e, int64_t C,
                                   int64_t G)
{
    return w[e] != 0.0f && ids[e] >= 0 && ids[e] < G ? table + (int64_t)ids[e] * C : NULL;
}

TS_CLONES void cpu_embedding_bag_forward(float *out, const int32_t *ids, const float *w, const float *table,
                                         int64_t N, int64_t K, int64_t C, int64_t G)
{
    PFOR(N * K * C > SMALL)
    for (int64_t n = 0; n < N; n++) {
        float *o = out + n * C;
        memset(o, 0, (size_t)C * sizeof *o);
        for (int64_t e = n * K; e < (n + 1) * K; e++) {
            const float *r = bag_row(table, ids, w, e, C, G);
            if (!r) continue;
            float we = w[e];
#pragma omp simd
            for (int64_t c = 0; c < C; c++) o[c] += we * r[c];
        }
    }
}

/* as cpu_embedding_backward: a share of the columns a thread, every entry
 * in order */
TS_CLONES void cpu_embedding_bag_backward(float *dtable, const float *dout, const int32_t *ids, const float *w,
                                          int64_t N, int64_t K, int64_t C, int64_t G)
{
    int64_t width = scatter_share(C), nblocks = (C + width - 1) / width, E = N * K;
    PFOR(E * C > SMALL)
    for (int64_t cb = 0; cb < nblocks; cb++) {
        int64_t c0 = cb * width, c1 = c0 + width < C ? c0 + width : C;
        for (int64_t e = 0; e < E; e++) {
            if (e + 8 < E) { /* the rows are random: fetch a later one's share ahead */
                const float *ahead = bag_row(dtable, ids, w, e + 8, C, G);
                if (ahead)
                    for (int64_t c = c0; c < c1; c += 16) __builtin_prefetch(ahead + c, 1, 3);
            }
            float *r = (float *)bag_row(dtable, ids, w, e, C, G);
            if (!r) continue;
            const float *d = dout + (e / K) * C;
            float we = w[e];
#pragma omp simd
            for (int64_t c = c0; c < c1; c++) r[c] += we * d[c];
        }
    }
}

/* ---- layernorm ---- */

TS_CLONES void cpu_layernorm_forward(void *out, bool out_bf16, float *mean, float *rstd, const float *inp,
                                     const float *weight, const float *bias, int64_t N, int64_t C, float eps)
{
    PFOR(N * C > SMALL)
    for (int64_t n = 0; n < N; n++) {
        const float *x = inp + n * C;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < C; c++) s += x[c];
        float m = s / (float)C;
        float v = 0.0f;
#pragma omp simd reduction(+ : v)
        for (int64_t c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        float r = 1.0f / sqrtf(v / (float)C + eps);
        if (out_bf16) {
            uint16_t *o = (uint16_t *)out + n * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) o[c] = ts_bf16_bits((x[c] - m) * r * weight[c] + bias[c]);
        } else {
            float *o = (float *)out + n * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) o[c] = (x[c] - m) * r * weight[c] + bias[c];
        }
        if (mean) mean[n] = m;
        if (rstd) rstd[n] = r;
    }
}

TS_CLONES void cpu_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, const float *mean,
                            const float *rstd, int64_t N, int64_t C)
{
    /* Pass 1, by rows: the input gradient. */
    PFOR(N * C > SMALL)
    for (int64_t n = 0; n < N; n++) {
        const float *x = inp + n * C, *d = dout + n * C;
        float m = mean[n], r = rstd[n];
        float a = 0.0f, b = 0.0f;
#pragma omp simd reduction(+ : a, b)
        for (int64_t c = 0; c < C; c++) {
            float dn = weight[c] * d[c];
            a += dn;
            b += dn * (x[c] - m) * r;
        }
        a /= (float)C;
        b /= (float)C;
        float *di = dinp + n * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) {
            float norm = (x[c] - m) * r;
            di[c] += (weight[c] * d[c] - a - norm * b) * r;
        }
    }
    /* Pass 2, by column blocks: the parameter gradients, rows in order. */
    int64_t nblocks = (C + COL_BLOCK - 1) / COL_BLOCK;
    PFOR(N * C > SMALL)
    for (int64_t cb = 0; cb < nblocks; cb++) {
        int64_t c0 = cb * COL_BLOCK, w = (c0 + COL_BLOCK < C ? COL_BLOCK : C - c0);
        double accw[COL_BLOCK] = {0}, accb[COL_BLOCK] = {0};
        for (int64_t n = 0; n < N; n++) {
            const float *x = inp + n * C + c0, *d = dout + n * C + c0;
            float m = mean[n], r = rstd[n];
            for (int64_t j = 0; j < w; j++) {
                accw[j] += (double)((x[j] - m) * r * d[j]);
                accb[j] += (double)d[j];
            }
        }
        for (int64_t j = 0; j < w; j++) {
            dweight[c0 + j] += (float)accw[j];
            dbias[c0 + j] += (float)accb[j];
        }
    }
}

/* out[b,c] = max over t < L_b of x[b,t,c], the first such t in argmax;
 * rows are walked in order, so each channel's comparison vectorises */
void cpu_pool_max_forward(float *out, int32_t *argmax, const float *x, const int32_t *lengths, int64_t B, int64_t T,
                          int64_t C)
{
    PFOR(B * T * C > SMALL)
    for (int64_t b = 0; b < B; b++) {
        int64_t L = lengths[b] < 0 ? 0 : lengths[b] > T ? T : lengths[b];
        float *best = out + b * C;
        int32_t *at = argmax + b * C;
        for (int64_t c = 0; c < C; c++) {
            best[c] = L ? x[b * T * C + c] : 0.0f;
            at[c] = L ? 0 : -1;
        }
        for (int64_t t = 1; t < L; t++) {
            const float *r = x + (b * T + t) * C;
            for (int64_t c = 0; c < C; c++)
                if (r[c] > best[c] || (r[c] != r[c] && best[c] == best[c])) { /* NaN wins */
                    best[c] = r[c];
                    at[c] = (int32_t)t;
                }
        }
    }
}

void cpu_pool_max_backward(float *dx, const float *dout, const int32_t *argmax, int64_t B, int64_t T, int64_t C)
{
    PFOR(B * T * C > SMALL)
    for (int64_t bt = 0; bt < B * T; bt++) {
        int64_t b = bt / T, t = bt % T;
        const float *d = dout + b * C;
        const int32_t *at = argmax + b * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) dx[bt * C + c] = at[c] == t ? d[c] : 0.0f;
    }
}

TS_CLONES void cpu_sum_rows(float *out, const float *x, int64_t N, int64_t C, bool accumulate)
{
    int64_t nblocks = (C + COL_BLOCK - 1) / COL_BLOCK;
    PFOR(N * C > SMALL)
    for (int64_t cb = 0; cb < nblocks; cb++) {
        int64_t c0 = cb * COL_BLOCK, w = (c0 + COL_BLOCK < C ? COL_BLOCK : C - c0);
        double acc[COL_BLOCK] = {0};
        for (int64_t n = 0; n < N; n++) {
            const float *r = x + n * C + c0;
#pragma omp simd
            for (int64_t j = 0; j < w; j++) acc[j] += (double)r[j];
        }
        for (int64_t j = 0; j < w; j++)
            out[c0 + j] = accumulate ? out[c0 + j] + (float)acc[j] : (float)acc[j];
    }
}

/* ---- attention ---- */

/* inp[b,t,k,h,:] <-> out[k,b,h,t,:], one HS-long row at a time. */
static void heads_permute(float *out, const float *inp, int64_t B, int64_t T, int64_t K,
                          int64_t NH, int64_t HS, int split)
{
    int64_t rows = K * B * NH * T;
    PFOR(rows * HS > SMALL)
    for (int64_t r = 0; r < rows; r++) {
        int64_t t = r % T, h = (r / T) % NH, b = (r / (T * NH)) % B, k = r / (T * NH * B);
        int64_t packed = (((b * T + t) * K + k) * NH + h) * HS; /* [B,T,K,NH,HS] */
        int64_t heads = r * HS;                                 /* [K,B,NH,T,HS] */
        if (split)
            memcpy(out + heads, inp + packed, (size_t)HS * sizeof(float));
        else
            memcpy(out + packed, inp + heads, (size_t)HS * sizeof(float));
    }
}

void cpu_split_heads(float *out, const float *inp, int64_t B, int64_t T, int64_t K, int64_t NH,
                     int64_t HS)
{
    heads_permute(out, inp, B, T, K, NH, HS, 1);
}

void cpu_merge_heads(float *out, const float *inp, int64_t B, int64_t T, int64_t K, int64_t NH,
                     int64_t HS)
{
    heads_permute(out, inp, B, T, K, NH, HS, 0);
}

TS_CLONES void cpu_softmax_causal_forward(float *att, const float *preatt, int64_t BH, int64_t T, float scale)
{
    int64_t rows = BH * T;
    PFOR(rows * T > SMALL)
    for (int64_t r = 0; r < rows; r++) {
        int64_t t = r % T;
        const float *x = preatt + r * T;
        float *o = att + r * T;
        float m = ts_row_max(x, t + 1, scale);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t s = 0; s <= t; s++) {
            float e = ts_expf(scale * x[s] - m);
            o[s] = e;
            sum += e;
        }
        float inv = 1.0f / sum;
#pragma omp simd
        for (int64_t s = 0; s <= t; s++) o[s] *= inv;
        for (int64_t s = t + 1; s < T; s++) o[s] = 0.0f;
    }
}

TS_CLONES void cpu_softmax_causal_backward(float *dpreatt, const float *att, const float *datt, int64_t BH,
                                 int64_t T, float scale)
{
    int64_t rows = BH * T;
    PFOR(rows * T > SMALL)
    for (int64_t r = 0; r < rows; r++) {
        int64_t t = r % T;
        const float *a = att + r * T, *d = datt + r * T;
        float *o = dpreatt + r * T;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t s = 0; s <= t; s++) dot += a[s] * d[s];
#pragma omp simd
        for (int64_t s = 0; s <= t; s++) o[s] = scale * a[s] * (d[s] - dot);
        for (int64_t s = t + 1; s < T; s++) o[s] = 0.0f;
    }
}

/* Keys s < lengths[bh / NH] (and s <= t when causal); see ts_softmax_masked_forward. */
TS_CLONES void cpu_softmax_masked_forward(float *att, const float *preatt, const int32_t *lengths, int64_t BH,
                                          int64_t NH, int64_t T, float scale, bool causal)
{
    int64_t rows = BH * T;
    PFOR(rows * T > SMALL)
    for (int64_t r = 0; r < rows; r++) {
        int64_t t = r % T, len = lengths[r / T / NH];
        int64_t end = len < 0 ? 0 : len > T ? T : len;
        if (causal && end > t + 1) end = t + 1;
        const float *x = preatt + r * T;
        float *o = att + r * T;
        float m = ts_row_max(x, end, scale);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t s = 0; s < end; s++) {
            float e = ts_expf(scale * x[s] - m);
            o[s] = e;
            sum += e;
        }
        float inv = end > 0 ? 1.0f / sum : 0.0f;
#pragma omp simd
        for (int64_t s = 0; s < end; s++) o[s] *= inv;
        for (int64_t s = end; s < T; s++) o[s] = 0.0f;
    }
}

TS_CLONES void cpu_softmax_masked_backward(float *dpreatt, const float *att, const float *datt, int64_t BH,
                                           int64_t T, float scale)
{
    int64_t rows = BH * T;
    PFOR(rows * T > SMALL)
    for (int64_t r = 0; r < rows; r++) {
        const float *a = att + r * T, *d = datt + r * T;
        float *o = dpreatt + r * T;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t s = 0; s < T; s++) dot += a[s] * d[s];
#pragma omp simd
        for (int64_t s = 0; s < T; s++) o[s] = scale * a[s] * (d[s] - dot);
    }
}

/* ---- fused softmax + cross-entropy ---- */

/* One row: d may be x (in place); p, d, loss may be NULL. */
static inline __attribute__((always_inline)) void ce_row(float *loss, float *p, float *d, const float *x, int64_t target, int64_t V, float scale)
{
    int valid = target >= 0 && target < V;
    float xt = valid ? x[target] : 0.0f; /* read before any output overwrites it */
    float m = ts_row_max(x, V, 1.0f);
    float sum = 0.0f;
    if (d && !p) {
        /* training: one exp per element, kept in d, then scaled. Each
         * element is read before it is written (d may be x). */
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < V; j++) {
            float e = ts_expf(x[j] - m);
            d[j] = e;
            sum += e;
        }
        float s = valid ? scale / sum : 0.0f;
#pragma omp simd
        for (int64_t j = 0; j < V; j++) d[j] *= s;
        if (valid) d[target] -= scale;
    } else {
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < V; j++) sum += ts_expf(x[j] - m);
        float inv = 1.0f / sum, s = valid ? scale : 0.0f;
        if (p && !d) {
#pragma omp simd
            for (int64_t j = 0; j < V; j++) p[j] = ts_expf(x[j] - m) * inv;
        } else if (p || d) {
            for (int64_t j = 0; j < V; j++) {
                float e = ts_expf(x[j] - m) * inv;
                if (p) p[j] = e;
                if (d) d[j] = s * e;
            }
            if (d && valid) d[target] -= scale;
        }
    }
    if (loss) *loss = valid ? m + logf(sum) - xt : 0.0f;
}

TS_CLONES void cpu_cross_entropy(float *losses, float *probs, float *dlogits, const float *logits,
                                 const int32_t *targets, int64_t N, int64_t V, float scale)
{
    PFOR(N * V > SMALL)
    for (int64_t n = 0; n < N; n++)
        ce_row(losses ? losses + n : NULL, probs ? probs + n * V : NULL, dlogits ? dlogits + n * V : NULL,
               logits + n * V, targets ? targets[n] : -1, V, scale);
}

/* This thread's row of floats in rows[threads * V] */
static float *thread_row(float *rows, int64_t V)
{
    int thread = 0;
#ifdef _OPENMP
    thread = omp_get_thread_num();
#endif
    return rows + (int64_t)thread * V;
}

TS_CLONES void cpu_cross_entropy_bf16(float *losses, float *probs, void *dlogits, bool d_bf16, const void *logits,
                                      bool x_bf16, const int32_t *targets, int64_t N, int64_t V, float scale,
                                      float *rows)
{
    PFOR(N * V > SMALL)
    for (int64_t n = 0; n < N; n++) {
        float *buf = thread_row(rows, V);
        const float *x = (const float *)logits + n * V;
        if (x_bf16) {
            const uint16_t *xs = (const uint16_t *)logits + n * V;
#pragma omp simd
            for (int64_t j = 0; j < V; j++) buf[j] = bf16_value(xs[j]);
            x = buf;
        }
        float *d = !dlogits ? NULL : d_bf16 ? buf : (float *)dlogits + n * V;
        ce_row(losses ? losses + n : NULL, probs ? probs + n * V : NULL, d, x, targets ? targets[n] : -1, V, scale);
        if (d && d_bf16) {
            uint16_t *ds = (uint16_t *)dlogits + n * V;
#pragma omp simd
            for (int64_t j = 0; j < V; j++) ds[j] = ts_bf16_bits(buf[j]);
        }
    }
}

/* ---- vocabulary-parallel cross-entropy (phases: see tessera/backend.h) ---- */

TS_CLONES void cpu_ce_shard(int phase, float *out0, float *out1, const float *in0, const float *in1,
                            const float *in2, const int32_t *targets, int64_t N, int64_t V,
                            int64_t vocab_start, int64_t vocab_size, float scale)
{
    PFOR(N * (V > 0 ? V : 1) > SMALL)
    for (int64_t n = 0; n < N; n++) {
        int64_t t = targets ? targets[n] : -1;
        switch (phase) {
        case 0: { /* rowmax, target logit: in0 logits */
            const float *x = in0 + n * V;
            float m = ts_row_max(x, V, 1.0f);
            out0[n] = m;
            out1[n] = (t >= vocab_start && t < vocab_start + V) ? x[t - vocab_start] : 0.0f;
            break;
        }
        case 1: { /* sumexp: in0 logits, in1 rowmax */
            const float *x = in0 + n * V;
            float m = in1[n], s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int64_t j = 0; j < V; j++) s += ts_expf(x[j] - m);
            out0[n] = s;
            break;
        }
        case 2: /* loss: in0 rowmax, in1 sumexp, in2 target logit */
            out0[n] = (t >= 0 && t < vocab_size) ? logf(in1[n]) + in0[n] - in2[n] : 0.0f;
            break;
        default: { /* gradient: in0 logits, in1 rowmax, in2 sumexp; out0 may be in0 */
            const float *x = in0 + n * V;
            float *d = out0 + n * V;
            int valid = t >= 0 && t < vocab_size;
            float m = in1[n], k = valid ? scale / in2[n] : 0.0f;
#pragma omp simd
            for (int64_t j = 0; j < V; j++) d[j] = k * ts_expf(x[j] - m);
            if (valid && t >= vocab_start && t < vocab_start + V) d[t - vocab_start] -= scale;
            break;
        }
        }
    }
}

/* The same phases on bf16 logits (the model's under bf16 products): each
 * row widened into rows[thread * V..] and run through the fp32 phase; the
 * gradient (phase 3, in place) rounded back into dlogits once. */
void cpu_ce_shard_bf16(int phase, void *out0, float *out1, const void *in0, const float *in1, const float *in2,
                       const int32_t *targets, int64_t N, int64_t V, int64_t vocab_start, int64_t vocab_size,
                       float scale, float *rows)
{
    PFOR(N * V > SMALL)
    for (int64_t n = 0; n < N; n++) {
        float *buf = thread_row(rows, V);
        const uint16_t *xs = (const uint16_t *)in0 + n * V;
        for (int64_t j = 0; j < V; j++) buf[j] = bf16_value(xs[j]);
        const int32_t *t = targets ? targets + n : NULL;
        if (phase == 0) {
            cpu_ce_shard(0, (float *)out0 + n, out1 + n, buf, NULL, NULL, t, 1, V, vocab_start, vocab_size, scale);
        } else if (phase == 1) {
            cpu_ce_shard(1, (float *)out0 + n, NULL, buf, in1 + n, NULL, NULL, 1, V, vocab_start, vocab_size, scale);
        } else {
            cpu_ce_shard(3, buf, NULL, buf, in1 + n, in2 + n, t, 1, V, vocab_start, vocab_size, scale);
            uint16_t *ds = (uint16_t *)out0 + n * V;
            for (int64_t j = 0; j < V; j++) ds[j] = ts_bf16_bits(buf[j]);
        }
    }
}

/* ---- reductions ---- */

TS_CLONES static float reduce(const float *x, int64_t n, int squares)
{
    double part[REDUCE_CHUNKS];
    int64_t chunk = (n + REDUCE_CHUNKS - 1) / REDUCE_CHUNKS;
    PFOR(n > SMALL)
    for (int c = 0; c < REDUCE_CHUNKS; c++) {
        int64_t i0 = c * chunk, i1 = i0 + chunk < n ? i0 + chunk : n;
        double acc = 0.0;
        if (squares) {
#pragma omp simd reduction(+ : acc)
            for (int64_t i = i0; i < i1; i++) acc += (double)x[i] * (double)x[i];
        } else {
#pragma omp simd reduction(+ : acc)
            for (int64_t i = i0; i < i1; i++) acc += (double)x[i];
        }
        part[c] = acc;
    }
    double total = 0.0;
    for (int c = 0; c < REDUCE_CHUNKS; c++) total += part[c];
    return (float)total;
}

float cpu_sum(const float *x, int64_t n) { return reduce(x, n, 0); }
float cpu_sqnorm(const float *x, int64_t n) { return reduce(x, n, 1); }

/* ---- optimizers (PyTorch's order of operations; see tessera/optim.h) ---- */

/* One Adam/AdamW step of element i; returns the new parameter. */
static inline __attribute__((always_inline)) float adam_element(float *param, float *m, float *v,
                                                               const float *grad, int64_t i, const float *c)
{
    /* c: decay, l2, beta1, beta2, grad_scale, step, bc2_sqrt, eps */
    float p = param[i] * c[0];
    float g = grad[i] * c[4] + c[1] * param[i];
    float mi = c[2] * m[i] + (1.0f - c[2]) * g;
    float vi = c[3] * v[i] + (1.0f - c[3]) * g * g;
    m[i] = mi;
    v[i] = vi;
    return param[i] = p - c[5] * (mi / (sqrtf(vi) / c[6] + c[7]));
}

/* Adam over [i0, i1); with bf, also bf[i - i0] = the new value in bf16
 * (a kept copy for bf16 products, refreshed here rather than by a second
 * pass over the weights). */
TS_CLONES static void adam_part(float *param, float *m, float *v, const float *grad, int64_t i0, int64_t i1,
                                uint16_t *bf, const float *c)
{
    if (bf) {
        PFOR_SIMD(i1 - i0 > SMALL)
        for (int64_t i = i0; i < i1; i++) bf[i - i0] = ts_bf16_bits(adam_element(param, m, v, grad, i, c));
    } else {
        PFOR_SIMD(i1 - i0 > SMALL)
        for (int64_t i = i0; i < i1; i++) adam_element(param, m, v, grad, i, c);
    }
}

TS_CLONES void cpu_optim_update(float *param, float *m, float *v, const float *grad, int64_t n,
                      ts_optim_kind kind, float lr, float beta1, float beta2, float eps,
                      float weight_decay, float grad_scale, float bc1, float bc2,
                      const ts_lowp_span *spans, int nspans)
{
    switch (kind) {
    case TS_OPTIM_SGD:
        PFOR_SIMD(n > SMALL)
        for (int64_t i = 0; i < n; i++) {
            float g = grad[i] * grad_scale + weight_decay * param[i];
            param[i] -= lr * g;
        }
        break;
    case TS_OPTIM_SGD_MOMENTUM:
        PFOR_SIMD(n > SMALL)
        for (int64_t i = 0; i < n; i++) {
            float g = grad[i] * grad_scale + weight_decay * param[i];
            m[i] = beta1 * m[i] + g;
            param[i] -= lr * m[i];
        }
        break;
    case TS_OPTIM_ADAM:
    case TS_OPTIM_ADAMW: {
        const float c[8] = {kind == TS_OPTIM_ADAMW ? 1.0f - lr * weight_decay : 1.0f,
                            kind == TS_OPTIM_ADAM ? weight_decay : 0.0f, beta1, beta2, grad_scale,
                            lr / bc1, sqrtf(bc2), eps};
        int64_t at = 0; /* the spans with kept copies, and the gaps between them */
        for (int s = 0; s < nspans; s++) {
            if (spans[s].off > at) adam_part(param, m, v, grad, at, spans[s].off, NULL, c);
            adam_part(param, m, v, grad, spans[s].off, spans[s].off + spans[s].n, spans[s].bf, c);
            at = spans[s].off + spans[s].n;
        }
        if (at < n) adam_part(param, m, v, grad, at, n, NULL, c);
        break;
    }
    }
}

/* ---- device limits ---- */

void cpu_triad(float *a, const float *b, const float *c, float s, int64_t n)
{
    PFOR_SIMD(n > SMALL)
    for (int64_t i = 0; i < n; i++) a[i] = b[i] + s * c[i];
}

/* Peak arithmetic: blocks of elements held in registers, each element an
 * independent FMA chain, enough chains per core to cover the FMA units'
 * latency (2 units x 4-5 cycles). Intrinsics, because C11 mode turns off
 * contraction of x*a+b into one FMA. */
#ifdef TS_X86_KERNELS
enum { FMA512_BLOCK = 8 * 16, FMA256_BLOCK = 12 * 8 };

__attribute__((target("avx512f"))) static void fma_block_avx512(float *x, int64_t iterations, float a, float b)
{
    __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b), r[8];
    for (int j = 0; j < 8; j++) r[j] = _mm512_loadu_ps(x + 16 * j);
    for (int64_t k = 0; k < iterations; k++)
        for (int j = 0; j < 8; j++) r[j] = _mm512_fmadd_ps(r[j], va, vb);
    for (int j = 0; j < 8; j++) _mm512_storeu_ps(x + 16 * j, r[j]);
}

__attribute__((target("avx2,fma"))) static void fma_block_avx2(float *x, int64_t iterations, float a, float b)
{
    __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b), r[12];
    for (int j = 0; j < 12; j++) r[j] = _mm256_loadu_ps(x + 8 * j);
    for (int64_t k = 0; k < iterations; k++)
        for (int j = 0; j < 12; j++) r[j] = _mm256_fmadd_ps(r[j], va, vb);
    for (int j = 0; j < 12; j++) _mm256_storeu_ps(x + 8 * j, r[j]);
}
#endif

static void fma_scalar(float *x, int64_t n, int64_t iterations, float a, float b)
{
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        for (int64_t k = 0; k < iterations; k++) v = fmaf(v, a, b);
        x[i] = v;
    }
}

void cpu_fma_loop(float *x, int64_t n, int64_t iterations, float a, float b)
{
    int64_t block = 8;
    void (*kernel)(float *, int64_t, float, float) = NULL;
#ifdef TS_X86_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) kernel = fma_block_avx512, block = FMA512_BLOCK;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        kernel = fma_block_avx2, block = FMA256_BLOCK;
#endif
    int64_t blocks = kernel ? n / block : 0;
    PFOR(blocks > 1)
    for (int64_t i = 0; i < blocks; i++) kernel(x + i * block, iterations, a, b);
    /* the rest (and machines without the kernels above): independent chains per element */
    int64_t done = blocks * block, rest = n - done;
    int64_t per = 64;
    PFOR(rest > per)
    for (int64_t i = 0; i < rest; i += per)
        fma_scalar(x + done + i, rest - i < per ? rest - i : per, iterations, a, b);
}
