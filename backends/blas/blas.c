#include "blas.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#ifdef TS_HAVE_CBLAS
#include <cblas.h>
#endif

#include "tessera/status.h"

static ts_blas_info g_info;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_threads = 1;
static void (*g_openblas_set_threads)(int); /* OpenBLAS's own thread count, when it is OpenBLAS */

static int cpu_has_avx512(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

#ifdef TS_HAVE_CBLAS
static int is_avx512_core(const char *core)
{
    return !strcasecmp(core, "SkylakeX") || !strcasecmp(core, "Cooperlake") ||
           !strcasecmp(core, "SapphireRapids");
}

/* OpenBLAS cores tessera may select; anything else is refused rather than
 * handed to OpenBLAS, which falls back silently on unknown names. */
static const char *known_cores[] = {"Prescott", "Core2", "Nehalem", "SandyBridge", "Haswell",
                                    "Zen", "SkylakeX", "Cooperlake", "Excavator"};

static void reselect_core(const char *want)
{
    char *(*corename)(void) = (char *(*)(void))dlsym(RTLD_DEFAULT, "openblas_get_corename");
    void (*dyn_quit)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "gotoblas_dynamic_quit");
    void (*dyn_init)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "gotoblas_dynamic_init");
    if (!corename || !dyn_quit || !dyn_init) {
        ts_log(TS_LOG_INFO, "BLAS: OpenBLAS is not a dynamic-arch build; keeping its kernels");
        return;
    }
    int known = 0;
    for (size_t i = 0; i < sizeof known_cores / sizeof *known_cores; i++)
        if (!strcasecmp(want, known_cores[i])) known = 1;
    if (!known) {
        ts_log(TS_LOG_WARN, "BLAS: unknown OpenBLAS core '%s'; keeping %s", want, corename());
        return;
    }
    if (is_avx512_core(want) && !g_info.cpu_avx512) {
        ts_log(TS_LOG_WARN, "BLAS: core %s needs AVX-512, which this CPU lacks; keeping %s", want,
               corename());
        return;
    }
    /* OpenBLAS reads OPENBLAS_CORETYPE in gotoblas_dynamic_init; restore the
     * environment afterwards so child processes choose for themselves. */
    const char *prev = getenv("OPENBLAS_CORETYPE");
    char saved[64] = {0};
    if (prev) snprintf(saved, sizeof saved, "%s", prev);
    setenv("OPENBLAS_CORETYPE", want, 1);
    dyn_quit();
    dyn_init();
    if (prev) setenv("OPENBLAS_CORETYPE", saved, 1);
    else unsetenv("OPENBLAS_CORETYPE");
    g_info.reselected = strcasecmp(corename(), g_info.initial_core) != 0;
}
#endif

static void blas_init(void)
{
    g_info.cpu_avx512 = cpu_has_avx512();
    g_openblas_set_threads = (void (*)(int))dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
#ifdef TS_HAVE_CBLAS
    g_info.have_blas = 1;
    snprintf(g_info.library, sizeof g_info.library, "CBLAS");
    char *(*corename)(void) = (char *(*)(void))dlsym(RTLD_DEFAULT, "openblas_get_corename");
    char *(*config)(void) = (char *(*)(void))dlsym(RTLD_DEFAULT, "openblas_get_config");
    if (corename) {
        char version[32] = "";
        if (config) { /* "OpenBLAS 0.3.21 DYNAMIC_ARCH ..." */
            const char *c = config();
            if (!strncmp(c, "OpenBLAS ", 9)) sscanf(c + 9, "%31s", version);
        }
        snprintf(g_info.library, sizeof g_info.library, "OpenBLAS%s%s", version[0] ? " " : "",
                 version);
        snprintf(g_info.initial_core, sizeof g_info.initial_core, "%s", corename());
        const char *force = getenv("TESSERA_BLAS_CORE");
        if (force && *force && strcasecmp(force, "keep") != 0)
            reselect_core(force);
        else if (!force && !getenv("OPENBLAS_CORETYPE") && g_info.cpu_avx512 &&
                 !is_avx512_core(g_info.initial_core))
            reselect_core("SkylakeX");
        snprintf(g_info.core, sizeof g_info.core, "%s", corename());
        if (g_info.reselected)
            ts_log(TS_LOG_INFO, "BLAS: OpenBLAS chose %s; switched to %s", g_info.initial_core,
                   g_info.core);
    }
#else
    snprintf(g_info.library, sizeof g_info.library, "built-in");
#endif
}

const ts_blas_info *ts_blas_get_info(void)
{
    pthread_once(&g_once, blas_init);
    return &g_info;
}

void ts_blas_set_threads(int threads)
{
    pthread_once(&g_once, blas_init);
    if (threads < 1) threads = 1;
    g_threads = threads;
    /* OpenBLAS stays single-threaded: tessera splits products over its own
     * OpenMP team. Two thread pools spinning on the same cores (OpenBLAS's
     * pthreads and OpenMP's) starve each other: measured 97 vs 158 GFLOP/s
     * for GPT-2 124M's products on 2 cores, and 20x slower small ops. */
    if (g_openblas_set_threads) g_openblas_set_threads(1);
}

void ts_blas_sgemm_builtin_serial(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                                  const float *A, int64_t lda, const float *B, int64_t ldb,
                                  float beta, float *C, int64_t ldc)
{
    for (int64_t i = 0; i < M; i++) {
        float *c = C + i * ldc;
        if (beta == 0.0f)
            for (int64_t j = 0; j < N; j++) c[j] = 0.0f;
        else if (beta != 1.0f)
            for (int64_t j = 0; j < N; j++) c[j] *= beta;
        if (!tb) {
            for (int64_t k = 0; k < K; k++) {
                float a = alpha * (ta ? A[k * lda + i] : A[i * lda + k]);
                const float *b = B + k * ldb;
                for (int64_t j = 0; j < N; j++) c[j] += a * b[j];
            }
        } else {
            for (int64_t j = 0; j < N; j++) {
                const float *b = B + j * ldb;
                float acc = 0.0f;
                if (!ta)
                    for (int64_t k = 0; k < K; k++) acc += A[i * lda + k] * b[k];
                else
                    for (int64_t k = 0; k < K; k++) acc += A[k * lda + i] * b[k];
                c[j] += alpha * acc;
            }
        }
    }
}

/* One thread's product. */
static void sgemm_serial(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                         const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                         float *C, int64_t ldc)
{
#ifdef TS_HAVE_CBLAS
    if (M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX &&
        ldc <= INT_MAX) {
        if (K == 0) { /* BLAS leaves C alone when K == 0; define it as beta*C */
            ts_blas_sgemm_builtin_serial(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
            return;
        }
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
        return;
    }
#endif
    ts_blas_sgemm_builtin_serial(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void ts_blas_sgemm_serial(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                          int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
{
    pthread_once(&g_once, blas_init);
    if (M == 0 || N == 0) return;
    sgemm_serial(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* Split the larger of M and N into one block per thread (multiples of 16
 * so kernels keep full register tiles). */
void ts_blas_sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                   int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
{
    pthread_once(&g_once, blas_init);
    if (M == 0 || N == 0) return;
    int threads = g_threads;
    if (threads <= 1 || 2.0 * (double)M * (double)N * (double)K < 4e6) {
        sgemm_serial(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int split_n = N >= M;
    int64_t dim = split_n ? N : M;
    int64_t block = (dim + threads - 1) / threads;
    block = (block + 15) / 16 * 16;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int t = 0; t < threads; t++) {
        int64_t a = (int64_t)t * block, b = a + block < dim ? a + block : dim;
        if (a >= b) continue;
        if (split_n) /* C[:, a:b] = op(A) op(B)[:, a:b] */
            sgemm_serial(ta, tb, M, b - a, K, alpha, A, lda, tb ? B + a * ldb : B + a, ldb, beta,
                         C + a, ldc);
        else /* C[a:b, :] = op(A)[a:b, :] op(B) */
            sgemm_serial(ta, tb, b - a, N, K, alpha, ta ? A + a : A + a * lda, lda, B, ldb, beta,
                         C + a * ldc, ldc);
    }
}

void ts_blas_sgemm_batched(bool ta, bool tb, int64_t batch, int64_t M, int64_t N, int64_t K,
                           float alpha, const float *A, int64_t stride_a, int64_t lda,
                           const float *B, int64_t stride_b, int64_t ldb, float beta, float *C,
                           int64_t stride_c, int64_t ldc)
{
    pthread_once(&g_once, blas_init);
    if (batch == 1 || g_threads <= 1) {
        for (int64_t i = 0; i < batch; i++)
            ts_blas_sgemm(ta, tb, M, N, K, alpha, A + i * stride_a, lda, B + i * stride_b, ldb,
                          beta, C + i * stride_c, ldc);
        return;
    }
    /* many small products: one per thread at a time */
#pragma omp parallel for schedule(static) num_threads(g_threads)
    for (int64_t i = 0; i < batch; i++)
        sgemm_serial(ta, tb, M, N, K, alpha, A + i * stride_a, lda, B + i * stride_b, ldb, beta,
                     C + i * stride_c, ldc);
}

void ts_blas_sgemm_bias(bool ta, bool tb, int64_t batch, int64_t M, int64_t N, int64_t K, float alpha,
                        const float *A, int64_t stride_a, int64_t lda, const float *B, int64_t stride_b,
                        int64_t ldb, float beta, float *C, int64_t stride_c, int64_t ldc, const float *bias)
{
    if (bias) { /* c = beta*c + bias, then accumulate the product */
        for (int64_t i = 0; i < M; i++) {
            float *row = C + i * ldc;
            for (int64_t j = 0; j < N; j++) row[j] = (beta == 0.0f ? 0.0f : beta * row[j]) + bias[j];
        }
        beta = 1.0f;
    }
    ts_blas_sgemm_batched(ta, tb, batch, M, N, K, alpha, A, stride_a, lda, B, stride_b, ldb, beta, C, stride_c,
                          ldc);
}

int ts_blas_sgemm_library(bool ta, bool tb, int64_t batch, int64_t M, int64_t N, int64_t K,
                          float alpha, const float *A, int64_t stride_a, int64_t lda, const float *B,
                          int64_t stride_b, int64_t ldb, float beta, float *C, int64_t stride_c,
                          int64_t ldc)
{
    pthread_once(&g_once, blas_init);
#ifdef TS_HAVE_CBLAS
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX || ldb > INT_MAX || ldc > INT_MAX)
        return 0;
    if (g_openblas_set_threads) g_openblas_set_threads(g_threads);
    for (int64_t i = 0; i < batch; i++)
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M,
                    (int)N, (int)K, alpha, A + i * stride_a, (int)lda, B + i * stride_b, (int)ldb, beta,
                    C + i * stride_c, (int)ldc);
    if (g_openblas_set_threads) g_openblas_set_threads(1); /* back to tessera's own split (ts_blas_set_threads) */
    return 1;
#else
    (void)ta, (void)tb, (void)batch, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)stride_a;
    (void)lda, (void)B, (void)stride_b, (void)ldb, (void)beta, (void)C, (void)stride_c, (void)ldc;
    return 0;
#endif
}
