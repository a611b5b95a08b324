/* Branch-free exp and tanh that GCC vectorizes inside `omp simd` loops.
 *
 * libm's expf and tanhf are scalar calls unless -ffast-math is on, which
 * would loosen every other loop too. These follow the Cephes scheme: round
 * x/ln2 to an integer n with the 1.5*2^23 trick (no SSE4.1 needed), reduce
 * with a two-part ln2, evaluate a degree-6 polynomial, and scale by 2^n
 * through the exponent bits. Relative error is about 2 ulp on [-87, 88].
 * They are static inline so that loops inline and vectorize them (the
 * library is built with -fno-trapping-math so the clamps if-convert). */
#ifndef TESSERA_CPU_MATH_H
#define TESSERA_CPU_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) for x already in [-87.34, 88.38] */
static inline __attribute__((always_inline)) float ts_expf_in_range(float x)
{
    const float shifter = 12582912.0f; /* 1.5 * 2^23 */
    float n = (x * 1.44269504088896341f + shifter) - shifter;
    float r = x - n * 0.693359375f;   /* ln2 high part, exact in float */
    r = r - n * -2.12194440e-4f;      /* ln2 low part */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23; /* n is in [-126, 127] */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* The clamps are written so that NaN fails both tests and is clamped too
 * (the integer path stays defined); the NaN is handed back at the end. One
 * select there costs less than testing n for NaN, which GCC if-converts
 * into a second copy of the polynomial: the same bits for every number,
 * and 1.5x the rate on AVX-512. */
static inline __attribute__((always_inline)) float ts_expf(float x)
{
    float c = x >= -87.33654f ? x : -87.33654f;
    c = c <= 88.37626f ? c : 88.37626f;
    float e = ts_expf_in_range(c);
    return x == x ? e : x;
}

/* tanh(x) = sign(x) * (1 - 2/(exp(2|x|) + 1)); absolute error ~1e-7, which
 * is what GELU needs (it adds tanh to 1). exp's argument is >= 0, so only
 * the upper clamp is needed (1.55x the rate of going through ts_expf). */
static inline __attribute__((always_inline)) float ts_tanhf(float x)
{
    float ax = x < 0.0f ? -x : x;
    float y = 2.0f * ax;
    y = y <= 88.37626f ? y : 88.37626f; /* NaN too */
    float t = 1.0f - 2.0f / (ts_expf_in_range(y) + 1.0f);
    t = x < 0.0f ? -t : t;
    return x == x ? t : x;
}

/* Loops heavy in arithmetic (exp, tanh, divisions) get AVX2 and AVX-512
 * clones chosen at load time (ifunc), since the library itself targets
 * baseline x86-64. The clones are named by CPU feature: "arch=" clones
 * dispatch on the CPU model and never fire on, say, AMD parts. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define TS_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define TS_CLONES
#endif

#define TS_GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */

/* max over scale * x[0..n), -inf for n == 0, NaNs skipped (as fmaxf does).
 * A max reduction GCC vectorizes: fmaxf in a loop is a libm call per
 * element. */
static inline __attribute__((always_inline)) float ts_row_max(const float *x, int64_t n, float scale)
{
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t k = 0; k < n; k++) {
        float v = scale * x[k];
        m = v > m ? v : m;
    }
    return m;
}

#endif
