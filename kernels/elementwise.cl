/* Elementwise ops: one work-item per element. */

/* tanh from one exp: exact +-1 where f32 tanh saturates, NaN stays NaN.
 * Vendor tanh differs near saturation (PoCL's is 1 ulp short of -1 at -inf,
 * which turns GELU's 0 * inf into inf instead of NaN) and PoCL's is 5x
 * slower than exp; this form is both portable and fast. */
inline float tanh_exp(float u)
{
    float e = exp(-2.0f * fabs(u));
    return copysign((1.0f - e) / (1.0f + e), u);
}

/* Elementwise kernels: one work-item per element. The body sits inside
 * `if (i < n)` rather than after an early return: PoCL vectorises across
 * work-items only without the divergent exit. */

__kernel void fill(__global float *t, ulong to, long n, float value)
{
    size_t i = get_global_id(0);
    if (i < (size_t)n) t[to + i] = value;
}

__kernel void add(__global float *out, ulong oo, __global const float *a, ulong ao,
                  __global const float *b, ulong bo, long n)
{
    size_t i = get_global_id(0);
    if (i < (size_t)n) out[oo + i] = a[ao + i] + b[bo + i];
}

__kernel void scale(__global float *out, ulong oo, __global const float *a, ulong ao, float alpha,
                    long n)
{
    size_t i = get_global_id(0);
    if (i < (size_t)n) out[oo + i] = alpha * a[ao + i];
}

/* GELU (tanh form) and its derivative for x of type float or float8 */
#define GELU_U(x) (GELU_SCALE * ((x) + 0.044715f * (x) * (x) * (x)))
#define GELU_FWD(x, t) (0.5f * (x) * (1.0f + (t)))
#define GELU_GRAD(x, t) \
    (0.5f * (1.0f + (t)) + (x) * 0.5f * (1.0f - (t) * (t)) * GELU_SCALE * (1.0f + 3.0f * 0.044715f * (x) * (x)))

__kernel void gelu_forward(__global float *out, ulong oo, __global const float *inp, ulong io,
                           long n, int out_store, int inp_store)
{
    size_t i = get_global_id(0);
    if (i < (size_t)n) {
        float x = load_act(inp, io + i, inp_store);
        store_act(out, oo + i, GELU_FWD(x, tanh_exp(GELU_U(x))), out_store);
    }
}

__kernel void gelu_backward(__global float *dinp, ulong dio, __global const float *inp, ulong io,
                            __global const float *dout, ulong doo, long n, int inp_store)
{
    size_t i = get_global_id(0);
    if (i < (size_t)n) {
        float x = load_act(inp, io + i, inp_store);
        dinp[dio + i] = GELU_GRAD(x, tanh_exp(GELU_U(x))) * dout[doo + i];
    }
}

/* out = in, between fp32 and bf16 or f16 storage (or a copy within one) */
__kernel void cast(__global float *out, ulong oo, __global const float *in, ulong io, long n, int out_store,
                   int in_store)
{
    size_t i = get_global_id(0);
    if (i < (size_t)n) store_act(out, oo + i, load_act(in, io + i, in_store), out_store);
}

#if TS_CPU_DEVICE
/* CPU devices: 8 elements an item, so that exp runs on float8 (PoCL's
 * vector exp) and loads and stores are vectors */
inline float8 tanh_exp8(float8 u)
{
    float8 e = exp(-2.0f * fabs(u));
    return copysign((1.0f - e) / (1.0f + e), u);
}

__kernel void gelu_forward8(__global float *out, ulong oo, __global const float *inp, ulong io, long n,
                            int out_store, int inp_store)
{
    size_t i = get_global_id(0) * 8;
    if (i + 8 <= (size_t)n) {
        float8 x = load_act8(inp, io + i, inp_store);
        store_act8(out, oo + i, GELU_FWD(x, tanh_exp8(GELU_U(x))), out_store);
    } else
        for (int k = 0; k < 8; k++)
            if (i + k < (size_t)n) {
                float x = load_act(inp, io + i + k, inp_store);
                store_act(out, oo + i + k, GELU_FWD(x, tanh_exp(GELU_U(x))), out_store);
            }
}

__kernel void gelu_backward8(__global float *dinp, ulong dio, __global const float *inp, ulong io,
                             __global const float *dout, ulong doo, long n, int inp_store)
{
    size_t i = get_global_id(0) * 8;
    if (i + 8 <= (size_t)n) {
        float8 x = load_act8(inp, io + i, inp_store);
        vstore8(GELU_GRAD(x, tanh_exp8(GELU_U(x))) * vload8(0, dout + doo + i), 0, dinp + dio + i);
    } else
        for (int k = 0; k < 8; k++)
            if (i + k < (size_t)n) {
                float x = load_act(inp, io + i + k, inp_store);
                dinp[dio + i + k] = GELU_GRAD(x, tanh_exp(GELU_U(x))) * dout[doo + i + k];
            }
}
#endif

/* c[i,j] = beta*c[i,j] + bias[j] (beta == 0: c is not read). Runs before a
 * GEMM with beta = 1 when the GEMM library has no bias. */
__kernel void bias_rows(__global float *c, ulong co, long ldc, long M, long N,
                        __global const float *bias, ulong bo, float beta)
{
    size_t j = get_global_id(0), i = get_global_id(1);
    if (i < (size_t)M && j < (size_t)N) {
        __global float *p = c + co + i * ldc + j;
        *p = (beta == 0.0f ? 0.0f : beta * *p) + bias[bo + j];
    }
}

/* Transfers as kernels (devices with kernel_transfers, see cl_backend.c):
 * n words or bytes from src[so..] to dst[dso..]. */
__kernel void copy_words(__global uint *dst, ulong dso, __global const uint *src, ulong so, long n)
{
    size_t i = get_global_id(0);
    if (i < (size_t)n) dst[dso + i] = src[so + i];
}

__kernel void copy_bytes(__global uchar *dst, ulong dso, __global const uchar *src, ulong so, long n)
{
    size_t i = get_global_id(0);
    if (i < (size_t)n) dst[dso + i] = src[so + i];
}

/* STREAM's triad, the bandwidth yardstick: a = b + s*c. */
__kernel void triad(__global float *a, ulong ao, __global const float *b, ulong bo,
                    __global const float *c, ulong co, float s, long n)
{
    size_t i = get_global_id(0);
    if (i < (size_t)n) a[ao + i] = b[bo + i] + s * c[co + i];
}

/* Peak arithmetic: x = fma(x, a, b) repeated, FMA_CHAINS float16 chains
 * per work-item. A CPU core needs FMA latency (4 cycles) x FMA units (2)
 * independent vectors in flight, and PoCL runs a group's items one after
 * another on a core: with four chains it measured half the peak on Zen 5.
 * GPUs hide latency across work-items and keep four (fewer registers an
 * item). The host launches one item per 16 * FMA_CHAINS elements. */
#if TS_CPU_DEVICE
#define FMA_CHAINS 8
#else
#define FMA_CHAINS 4
#endif
__kernel void fma_loop(__global float *x, ulong xo, long n, long iterations, float a, float b)
{
    long base = (long)get_global_id(0) * (16 * FMA_CHAINS);
    __global float *p = x + xo + base;
    if (base + 16 * FMA_CHAINS <= n) {
        float16 va = (float16)(a), vb = (float16)(b), r[FMA_CHAINS];
#pragma unroll
        for (int j = 0; j < FMA_CHAINS; j++) r[j] = vload16(j, p);
        for (long k = 0; k < iterations; k++) {
#pragma unroll
            for (int j = 0; j < FMA_CHAINS; j++) r[j] = fma(r[j], va, vb);
        }
#pragma unroll
        for (int j = 0; j < FMA_CHAINS; j++) vstore16(r[j], j, p);
    } else if (base < n) {
        for (long i = 0; i < 16 * FMA_CHAINS; i++) { /* trip count uniform over the group */
            if (base + i >= n) continue;
            float v = p[i];
            for (long k = 0; k < iterations; k++) v = fma(v, a, b);
            p[i] = v;
        }
    }
}
