/* Matrix products with bf16 or fp16 inputs on the CPU backend: what PyTorch
 * autocast does for a matmul. Both inputs are rounded to the low-precision
 * type (round to nearest even; fp16 overflows to inf), products are summed in
 * fp32 and written in fp32.
 *
 * Routes: with oneDNN (meson feature 'onednn') a bf16 product runs on
 * oneDNN's bf16 kernels (AVX512_BF16 on Zen 4/5 and Sapphire Rapids, AMX
 * where present), about twice the fp32 GEMM's speed. Where oneDNN is absent,
 * or has only its reference kernels for this CPU and type (fp16 without
 * AVX512-FP16, bf16 on AVX2-only CPUs), the inputs are rounded into fp32
 * copies and the fp32 GEMM runs: the same values, without the speed. */
#ifndef TESSERA_CPU_LOWP_GEMM_H
#define TESSERA_CPU_LOWP_GEMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/tensor.h"

/* C = alpha*op(A)*op(B) + beta*C (+ bias[N] per row; bias only with
 * batch == 1), A and B rounded to dtype (TS_BF16 or TS_F16) first. With
 * `keep`, bf16 copies of the operands may be kept for later products (below);
 * callers whose memory is written unseen (the OpenCL backend's mapped
 * buffers) pass false. */
void ts_cpu_gemm_lowp(ts_dtype dtype, bool trans_a, bool trans_b, int64_t batch, int64_t M, int64_t N,
                      int64_t K, float alpha, const float *A, int64_t stride_a, int64_t lda, const float *B,
                      int64_t stride_b, int64_t ldb, float beta, float *C, int64_t stride_c, int64_t ldc,
                      const float *bias, bool keep);

/* bf16 copies of B operands (a linear layer's weights, read by its forward
 * and its backward product) are kept until their memory is written: the
 * backend reports every op output, write and copy here, and memory the host
 * may write directly (a host pointer handed out, wrapped user memory) is
 * never copied. */
void ts_cpu_lowp_written(const void *p, size_t bytes);
void ts_cpu_lowp_host_access(const void *p, size_t bytes);

/* An op that writes p[0, n) itself (the optimizer) may refresh the kept
 * copies of those bytes instead of dropping them, saving the next product
 * a pass over the weights: ts_cpu_lowp_refresh_begin returns the spans of
 * the range whose copies it must rewrite (packed copies wholly inside, in
 * order, not overlapping; bf[i] is element off + i) and drops every other
 * copy over the range. The writer stores ts_bf16_bits of each new value of
 * a span into its bf, then calls ts_cpu_lowp_refresh_end; the copies are
 * locked in between. */
typedef struct ts_lowp_span {
    int64_t off, n;
    uint16_t *bf;
} ts_lowp_span;
enum { TS_LOWP_MAX_SPANS = 64 };
int ts_cpu_lowp_refresh_begin(const float *p, int64_t n, ts_lowp_span *spans, int max);
void ts_cpu_lowp_refresh_end(void);

/* x rounded to bf16 (to nearest, ties to even; NaN stays NaN), its bits */
static inline uint16_t ts_bf16_bits(float x)
{
    union { float f; uint32_t u; } b = {.f = x};
    uint32_t u = b.u;
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* A product whose operands or result are bf16 tensors themselves
 * (activations stored in bf16; io flags which), in dtype (TS_F32, or a
 * low-precision type as ts_cpu_gemm_lowp): a bf16 product of batch 1 reads
 * and writes them in bf16 on oneDNN; anything else goes through fp32
 * copies of them. keep as for ts_cpu_gemm_lowp, for the fp32 operands.
 * Returns 0, C untouched, without memory for the copies. */
typedef struct ts_gemm_bf16_io { bool a, b, c; } ts_gemm_bf16_io;
int ts_cpu_gemm_mixed(ts_dtype dtype, bool trans_a, bool trans_b, int64_t batch, int64_t M, int64_t N, int64_t K,
                      float alpha, const void *A, int64_t stride_a, int64_t lda, const void *B, int64_t stride_b,
                      int64_t ldb, float beta, void *C, int64_t stride_c, int64_t ldc, const float *bias, bool keep,
                      const ts_gemm_bf16_io *io);

/* The route a product of this dtype takes on this CPU: "oneDNN 2.6.3
 * brg:avx512_core_bf16" or "emulated (rounded inputs, fp32 GEMM)". */
const char *ts_cpu_lowp_route(ts_dtype dtype);

#endif
