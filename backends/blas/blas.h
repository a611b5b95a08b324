/* Host BLAS for backends whose memory the host can address (the CPU backend
 * and CPU-type OpenCL devices such as PoCL).
 *
 * On first use it inspects OpenBLAS: Debian's OpenBLAS 0.3.21 does not know
 * recent AMD and some Intel CPUs and falls back to AVX2 kernels even where
 * AVX-512 is present (about 215 vs 410 GFLOP/s measured on a Zen 5). If the
 * CPU has AVX-512 (F, CD, BW, DQ, VL) and OpenBLAS chose a core without it,
 * and the user has not set OPENBLAS_CORETYPE, it re-selects the SkylakeX
 * kernels in-process through OpenBLAS's dynamic-arch entry points. Set
 * TESSERA_BLAS_CORE=<OpenBLAS core name> to force a core, or "keep" to leave
 * OpenBLAS's choice alone. Without a BLAS library, a plain C GEMM is used. */
#ifndef TESSERA_BLAS_H
#define TESSERA_BLAS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct ts_blas_info {
    int have_blas;        /* a CBLAS library is linked */
    char library[64];     /* "OpenBLAS 0.3.21" or "built-in" */
    char core[64];        /* OpenBLAS core in use, e.g. "Zen", "SkylakeX" */
    char initial_core[64];/* the core OpenBLAS picked itself */
    int cpu_avx512;       /* the CPU and OS support AVX-512 F/CD/BW/DQ/VL */
    int reselected;       /* tessera switched the core */
} ts_blas_info;

const ts_blas_info *ts_blas_get_info(void);
void ts_blas_set_threads(int threads);

/* Row-major single-precision GEMM: C = alpha*op(A)*op(B) + beta*C. When
 * beta == 0, C is not read (NaN in C does not propagate). Large products are
 * split over the OpenMP team, each part a single-threaded BLAS call. */
void ts_blas_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                   const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                   int64_t ldc);
/* Strided batch of products; small ones run one per thread. */
/* The same product on the calling thread only (for callers that split the
 * work among their own threads). */
void ts_blas_sgemm_serial(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                          const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                          int64_t ldc);

void ts_blas_sgemm_batched(bool trans_a, bool trans_b, int64_t batch, int64_t M, int64_t N,
                           int64_t K, float alpha, const float *A, int64_t stride_a, int64_t lda,
                           const float *B, int64_t stride_b, int64_t ldb, float beta, float *C,
                           int64_t stride_c, int64_t ldc);

/* The same plus a bias row: C = alpha*op(A)*op(B) + beta*C + bias[N] for
 * every row (bias may be NULL; with a bias, batch must be 1). What both
 * host-memory backends run for a GEMM op. */
void ts_blas_sgemm_bias(bool trans_a, bool trans_b, int64_t batch, int64_t M, int64_t N, int64_t K,
                        float alpha, const float *A, int64_t stride_a, int64_t lda, const float *B,
                        int64_t stride_b, int64_t ldb, float beta, float *C, int64_t stride_c, int64_t ldc,
                        const float *bias);

/* The BLAS library's own GEMM with its own threads (as many as tessera
 * uses), called directly: the reference that benchmarks compare tessera's
 * GEMM against. Returns 0 without a BLAS library or for sizes beyond int. */
int ts_blas_sgemm_library(bool trans_a, bool trans_b, int64_t batch, int64_t M, int64_t N, int64_t K,
                          float alpha, const float *A, int64_t stride_a, int64_t lda, const float *B,
                          int64_t stride_b, int64_t ldb, float beta, float *C, int64_t stride_c,
                          int64_t ldc);

/* The built-in single-threaded GEMM, used when no BLAS is linked. */
void ts_blas_sgemm_builtin_serial(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                                  float alpha, const float *A, int64_t lda, const float *B,
                                  int64_t ldb, float beta, float *C, int64_t ldc);

#endif
