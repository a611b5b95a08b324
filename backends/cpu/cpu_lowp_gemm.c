/* bf16/fp16 matrix products for the CPU backend (see cpu_lowp_gemm.h). */
#include "cpu_lowp_gemm.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef TS_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

#include "../blas/blas.h"
#include "cpu_math.h"

static inline float round_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return x; /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);               /* to nearest, ties to even */
    u &= 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

static inline float round_f16(float x)
{
    float a = fabsf(x);
    if (a != a) return x;
    if (a >= 65520.0f) return copysignf(INFINITY, x); /* past the largest half (65504) */
    if (a < 6.103515625e-05f) {                       /* half subnormals: steps of 2^-24 */
        const float q = 5.9604644775390625e-08f;
        volatile float v = a / q + 8388608.0f;         /* integer part rounds to even */
        return copysignf((v - 8388608.0f) * q, x);
    }
    uint32_t u;
    memcpy(&u, &a, 4);
    u += 0x0fffu + ((u >> 13) & 1u); /* keep 10 fraction bits, ties to even */
    u &= 0xffffe000u;
    memcpy(&a, &u, 4);
    return copysignf(a, x);
}

/* Scratch for the rounded copies: grown on demand, one product at a time. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static void *g_buf[2];
static size_t g_cap[2];

static void *scratch(int i, size_t bytes)
{
    if (bytes > g_cap[i]) {
        free(g_buf[i]);
        g_buf[i] = aligned_alloc(64, (bytes + 63) / 64 * 64);
        g_cap[i] = g_buf[i] ? bytes : 0;
    }
    return g_buf[i];
}

/* dst[r, c] = round(src[r, c]) for an R x Cc block with row stride ld (or of
 * its transpose when trans: dst[r, c] = round(src[c, r])), dst packed. */
TS_CLONES static void round_f32(ts_dtype dt, float *dst, const float *src, int64_t R, int64_t Cc,
                                int64_t ld, bool trans)
{
#pragma omp parallel for schedule(static) if (R * Cc > 65536)
    for (int64_t r = 0; r < R; r++) {
        float *d = dst + r * Cc;
        if (dt == TS_BF16)
            for (int64_t c = 0; c < Cc; c++) d[c] = round_bf16(trans ? src[c * ld + r] : src[r * ld + c]);
        else
            for (int64_t c = 0; c < Cc; c++) d[c] = round_f16(trans ? src[c * ld + r] : src[r * ld + c]);
    }
}

/* The fallback: round both operands into fp32 copies, then the fp32 GEMM. */
static void gemm_emulated(ts_dtype dt, bool ta, bool tb, int64_t batch, int64_t M, int64_t N, int64_t K,
                          float alpha, const float *A, int64_t sa, int64_t lda, const float *B, int64_t sb,
                          int64_t ldb, float beta, float *C, int64_t sc, int64_t ldc, const float *bias)
{
    /* rounded A as [batch][M][K], rounded B as [batch][K][N] */
    float *a = scratch(0, (size_t)(batch * M * K) * sizeof(float));
    float *b = scratch(1, (size_t)(batch * K * N) * sizeof(float));
    if (!a || !b) { /* no memory for copies: round in place is not allowed; fall back to fp32 */
        ts_blas_sgemm_bias(ta, tb, batch, M, N, K, alpha, A, sa, lda, B, sb, ldb, beta, C, sc, ldc, bias);
        return;
    }
    for (int64_t i = 0; i < batch; i++) {
        round_f32(dt, a + i * M * K, A + i * sa, M, K, lda, ta);
        round_f32(dt, b + i * K * N, B + i * sb, K, N, ldb, tb);
    }
    ts_blas_sgemm_bias(false, false, batch, M, N, K, alpha, a, M * K, K, b, K * N, N, beta, C, sc, ldc, bias);
}

/* ---- bf16 copies of B operands, valid until their memory is written ---- */

typedef struct kept_b {
    const char *lo, *hi;      /* the source bytes */
    const float *src;
    int64_t rows, cols, ld;
    uint16_t *bf;             /* rows x cols, packed */
    size_t cap;               /* elements bf holds */
    int valid;
} kept_b;

enum { MAX_COPIES = 512, MAX_EXTERNAL = 64 };
static kept_b g_copies[MAX_COPIES];
static int g_used; /* slots holding a buffer: a prefix, filled in order and never emptied */
static struct { const char *lo, *hi; } g_external[MAX_EXTERNAL];
static int g_nexternal, g_external_full;

static int overlaps(const char *lo, const char *hi, const char *a, const char *b) { return lo < b && a < hi; }

void ts_cpu_lowp_written(const void *p, size_t bytes)
{
    /* every op of every run calls this: nothing to do (and no lock) until
     * a bf16 product has kept a copy */
    if (!__atomic_load_n(&g_used, __ATOMIC_ACQUIRE)) return;
    const char *a = p, *b = a + bytes;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < g_used; i++)
        if (g_copies[i].valid && overlaps(g_copies[i].lo, g_copies[i].hi, a, b)) g_copies[i].valid = 0;
    pthread_mutex_unlock(&g_lock);
}

static int span_order(const void *a, const void *b)
{
    const ts_lowp_span *x = a, *y = b;
    return (x->off > y->off) - (x->off < y->off);
}

static __thread int g_refreshing; /* this thread holds g_lock for a refresh */

int ts_cpu_lowp_refresh_begin(const float *p, int64_t n, ts_lowp_span *spans, int max)
{
    if (!__atomic_load_n(&g_used, __ATOMIC_ACQUIRE)) return 0;
    const char *a = (const char *)p, *b = (const char *)(p + n);
    pthread_mutex_lock(&g_lock);
    g_refreshing = 1;
    int ns = 0;
    for (int i = 0; i < g_used; i++) {
        kept_b *c = &g_copies[i];
        if (!c->valid || !overlaps(c->lo, c->hi, a, b)) continue;
        int packed = c->ld == c->cols && c->lo >= a && c->hi <= b && ns < max;
        if (packed) spans[ns++] = (ts_lowp_span){c->src - p, c->rows * c->cols, c->bf};
        else c->valid = 0;
    }
    qsort(spans, (size_t)ns, sizeof *spans, span_order);
    /* two copies of overlapping bytes: keep the first, drop the other */
    int kept = 0;
    for (int s = 0; s < ns; s++) {
        if (kept && spans[s].off < spans[kept - 1].off + spans[kept - 1].n) {
            for (int i = 0; i < g_used; i++)
                if (g_copies[i].bf == spans[s].bf) g_copies[i].valid = 0;
            continue;
        }
        spans[kept++] = spans[s];
    }
    return kept;
}

void ts_cpu_lowp_refresh_end(void)
{
    if (!g_refreshing) return;
    g_refreshing = 0;
    pthread_mutex_unlock(&g_lock);
}

void ts_cpu_lowp_host_access(const void *p, size_t bytes)
{
    const char *a = p, *b = a + bytes;
    pthread_mutex_lock(&g_lock);
    int known = 0;
    for (int i = 0; i < g_nexternal && !known; i++) known = g_external[i].lo <= a && b <= g_external[i].hi;
    if (!known) {
        if (g_nexternal < MAX_EXTERNAL) g_external[g_nexternal].lo = a, g_external[g_nexternal++].hi = b;
        else g_external_full = 1; /* too many to track: copy nothing from now on */
    }
    for (int i = 0; i < g_used; i++)
        if (g_copies[i].valid && overlaps(g_copies[i].lo, g_copies[i].hi, a, b)) g_copies[i].valid = 0;
    pthread_mutex_unlock(&g_lock);
}

#ifdef TS_HAVE_ONEDNN
static size_t g_copy_bytes;                       /* held by all copies */
static const size_t COPY_BUDGET = (size_t)2 << 30;

/* dst = bf16(src) for an R x Cc block (row stride ld), packed. */
TS_CLONES static void to_bf16(uint16_t *dst, const float *src, int64_t R, int64_t Cc, int64_t ld)
{
#pragma omp parallel for schedule(static) if (R * Cc > 65536)
    for (int64_t r = 0; r < R; r++) {
        uint16_t *d = dst + r * Cc;
        const float *s = src + r * ld;
#pragma omp simd
        for (int64_t c = 0; c < Cc; c++) d[c] = ts_bf16_bits(s[c]);
    }
}

/* The bf16 copy of an R x Cc block of src (row stride ld), converted now
 * unless a valid one is kept; NULL where none may be kept (the caller
 * converts into scratch). Called with g_lock held. */
static const uint16_t *kept_copy(const float *src, int64_t R, int64_t Cc, int64_t ld)
{
    const char *lo = (const char *)src, *hi = (const char *)(src + (R - 1) * ld + Cc);
    if (g_external_full) return NULL;
    for (int i = 0; i < g_nexternal; i++)
        if (overlaps(lo, hi, g_external[i].lo, g_external[i].hi)) return NULL;
    kept_b *slot = NULL;
    for (int i = 0; i < g_used && !slot; i++) {
        kept_b *c = &g_copies[i];
        if (c->src == src && c->rows == R && c->cols == Cc && c->ld == ld) {
            if (c->valid) return c->bf;
            slot = c; /* the same block again: its buffer fits */
        }
    }
    if (!slot && g_used < MAX_COPIES) slot = &g_copies[g_used];
    if (!slot) return NULL;
    size_t n = (size_t)(R * Cc);
    if (slot->cap < n) {
        if (g_copy_bytes + n * 2 > COPY_BUDGET) return NULL;
        uint16_t *bf = aligned_alloc(64, (n * 2 + 63) / 64 * 64);
        if (!bf) return NULL;
        g_copy_bytes += n * 2 - slot->cap * 2;
        free(slot->bf);
        slot->bf = bf, slot->cap = n;
        if (slot == &g_copies[g_used]) __atomic_store_n(&g_used, g_used + 1, __ATOMIC_RELEASE);
    }
    to_bf16(slot->bf, src, R, Cc, ld);
    slot->lo = lo, slot->hi = hi, slot->src = src, slot->rows = R, slot->cols = Cc, slot->ld = ld, slot->valid = 1;
    return slot->bf;
}

/* An operand's bf16 form: the kept copy, else converted into scratch i;
 * NULL without memory for either. */
static const uint16_t *bf16_operand(const float *src, int64_t R, int64_t Cc, int64_t ld, int i, bool keep)
{
    const uint16_t *kept = keep ? kept_copy(src, R, Cc, ld) : NULL;
    if (kept) return kept;
    uint16_t *s = scratch(i, (size_t)(R * Cc) * 2);
    if (s) to_bf16(s, src, R, Cc, ld);
    return s;
}

/* An operand already in bf16 (an activation): itself where packed, else
 * its rows packed into scratch i. */
static const uint16_t *bf16_source(const uint16_t *src, int64_t R, int64_t Cc, int64_t ld, int i)
{
    if (ld == Cc) return src;
    uint16_t *s = scratch(i, (size_t)(R * Cc) * 2);
    if (s)
        for (int64_t r = 0; r < R; r++) memcpy(s + r * Cc, src + r * ld, (size_t)Cc * 2);
    return s;
}

/* oneDNN matmul primitives, one per part shape, made once and kept. */
typedef struct prim_key {
    int64_t M, N, K, lda, ldb, ldc;
    int ta, tb, sum, bias, c_bf16;
    float alpha;
} prim_key;

enum { MAX_PRIMS = 256, MAX_THREADS = 256 };
static struct { prim_key key; dnnl_primitive_t prim; } g_prims[MAX_PRIMS];
static int g_nprims;
static dnnl_engine_t g_engine;
static dnnl_stream_t g_streams[MAX_THREADS];
static int g_onednn_state; /* 0 untried, 1 usable, -1 not */
static char g_impl[96];

static dnnl_primitive_t make_prim(const prim_key *k, char *impl, size_t impl_size)
{
    dnnl_memory_desc_t a, b, c, bias;
    dnnl_dims_t ad = {k->M, k->K}, as = {k->lda, 1}, as_t = {1, k->lda};
    dnnl_dims_t bd = {k->K, k->N}, bs_t = {1, k->ldb}, bs_n = {k->ldb, 1};
    dnnl_dims_t cd = {k->M, k->N}, cs = {k->ldc, 1};
    dnnl_dims_t biasd = {1, k->N}, biass = {k->N, 1};
    if (dnnl_memory_desc_init_by_strides(&a, 2, ad, dnnl_bf16, k->ta ? as_t : as) != dnnl_success ||
        dnnl_memory_desc_init_by_strides(&b, 2, bd, dnnl_bf16, k->tb ? bs_t : bs_n) != dnnl_success ||
        dnnl_memory_desc_init_by_strides(&c, 2, cd, k->c_bf16 ? dnnl_bf16 : dnnl_f32, cs) != dnnl_success ||
        dnnl_memory_desc_init_by_strides(&bias, 2, biasd, dnnl_f32, biass) != dnnl_success)
        return NULL;
    dnnl_matmul_desc_t md;
    if (dnnl_matmul_desc_init(&md, &a, &b, k->bias ? &bias : NULL, &c) != dnnl_success) return NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    if (dnnl_primitive_attr_create(&attr) != dnnl_success) return NULL;
    /* parts run at once on several threads: each brings its own scratchpad
     * (the library's shared one is not safe for concurrent primitives) */
    dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (k->alpha != 1.0f) dnnl_primitive_attr_set_output_scales(attr, 1, 0, &k->alpha);
    if (k->sum) {
        dnnl_post_ops_create(&po);
        dnnl_post_ops_append_sum(po, 1.0f);
        dnnl_primitive_attr_set_post_ops(attr, po);
    }
    if (dnnl_primitive_desc_create(&pd, &md, attr, g_engine, NULL) == dnnl_success) {
        const char *name = "";
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name);
        /* oneDNN's reference kernels are far slower than the fallback */
        if (strncmp(name, "ref", 3) != 0 && dnnl_primitive_create(&prim, pd) != dnnl_success) prim = NULL;
        if (impl) snprintf(impl, impl_size, "%s", name);
        dnnl_primitive_desc_destroy(pd);
    }
    if (po) dnnl_post_ops_destroy(po);
    dnnl_primitive_attr_destroy(attr);
    return prim;
}

/* Called with g_lock held. */
static int onednn_ready(void)
{
    if (g_onednn_state) return g_onednn_state > 0;
    g_onednn_state = -1;
    if (dnnl_engine_create(&g_engine, dnnl_cpu, 0) != dnnl_success) return 0;
    prim_key probe;
    memset(&probe, 0, sizeof probe);
    probe.M = probe.N = probe.K = probe.lda = probe.ldb = probe.ldc = 64, probe.tb = 1, probe.alpha = 1.0f;
    dnnl_primitive_t p = make_prim(&probe, g_impl, sizeof g_impl);
    if (!p) return 0;
    dnnl_primitive_destroy(p);
    g_onednn_state = 1;
    return 1;
}

static dnnl_primitive_t get_prim(const prim_key *k)
{
    for (int i = 0; i < g_nprims; i++)
        if (!memcmp(&g_prims[i].key, k, sizeof *k)) return g_prims[i].prim;
    dnnl_primitive_t p = make_prim(k, NULL, 0);
    if (!p) return NULL;
    if (g_nprims == MAX_PRIMS) { /* a model with this many shapes: start over */
        for (int i = 0; i < g_nprims; i++) dnnl_primitive_destroy(g_prims[i].prim);
        g_nprims = 0;
    }
    g_prims[g_nprims].key = *k;
    g_prims[g_nprims++].prim = p;
    return p;
}

/* The memory objects of one part, made before any part runs so that a
 * failure leaves C untouched. */
typedef struct part { dnnl_primitive_t prim; dnnl_memory_t m[5]; } part;

static void *g_pad[MAX_THREADS];
static size_t g_pad_cap[MAX_THREADS];

static int make_part(part *p, dnnl_primitive_t prim, const uint16_t *a, const uint16_t *b, void *c,
                     const float *bias, int thread)
{
    const_dnnl_primitive_desc_t pd;
    p->prim = prim;
    p->m[0] = p->m[1] = p->m[2] = p->m[3] = p->m[4] = NULL;
    if (dnnl_primitive_get_primitive_desc(prim, &pd) != dnnl_success) return 0;
    const dnnl_query_t q[3] = {dnnl_query_src_md, dnnl_query_weights_md, dnnl_query_dst_md};
    void *h[3] = {(void *)a, (void *)b, c};
    for (int i = 0; i < 3; i++)
        if (dnnl_memory_create(&p->m[i], dnnl_primitive_desc_query_md(pd, q[i], 0), g_engine, h[i]) !=
            dnnl_success)
            return 0;
    if (bias && dnnl_memory_create(&p->m[4], dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 1), g_engine,
                                   (void *)bias) != dnnl_success)
        return 0;
    const dnnl_memory_desc_t *pad = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t bytes = pad ? dnnl_memory_desc_get_size(pad) : 0;
    if (bytes > g_pad_cap[thread]) {
        free(g_pad[thread]);
        g_pad[thread] = aligned_alloc(64, (bytes + 63) / 64 * 64);
        g_pad_cap[thread] = g_pad[thread] ? bytes : 0;
        if (!g_pad[thread]) return 0;
    }
    if (bytes && dnnl_memory_create(&p->m[3], pad, g_engine, g_pad[thread]) != dnnl_success) return 0;
    return 1;
}

static void free_part(part *p)
{
    for (int i = 0; i < 5; i++)
        if (p->m[i]) dnnl_memory_destroy(p->m[i]);
}

static int run_part(const part *p, int thread)
{
    dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, p->m[0]}, {DNNL_ARG_WEIGHTS, p->m[1]}, {DNNL_ARG_DST, p->m[2]}};
    int n = 3;
    if (p->m[3]) args[n].arg = DNNL_ARG_SCRATCHPAD, args[n++].memory = p->m[3];
    if (p->m[4]) args[n].arg = DNNL_ARG_BIAS, args[n++].memory = p->m[4];
    return dnnl_primitive_execute(p->prim, g_streams[thread], n, args) == dnnl_success &&
           dnnl_stream_wait(g_streams[thread]) == dnnl_success;
}

/* One product (batch 1) through oneDNN; 0 if a primitive could not be made. */
static int gemm_onednn(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void *A,
                       int64_t lda, const void *B, int64_t ldb, float beta, void *C, int64_t ldc,
                       const float *bias, bool keep, const ts_gemm_bf16_io *io)
{
    bool a16 = io && io->a, b16 = io && io->b, c16 = io && io->c;
    /* A and B keep their orientation (oneDNN reads either by strides):
     * A is [M,K] rows, or [K,M] when ta; B [N,K] when tb (a linear's
     * weights), else [K,N] */
    /* kept: a layer's weights (B) serve its forward and input-gradient
     * products, its output gradient (A) both backward products */
    const uint16_t *a = a16 ? (ta ? bf16_source(A, K, M, lda, 0) : bf16_source(A, M, K, lda, 0))
                            : ta ? bf16_operand(A, K, M, lda, 0, keep) : bf16_operand(A, M, K, lda, 0, keep);
    const uint16_t *b = b16 ? (tb ? bf16_source(B, N, K, ldb, 1) : bf16_source(B, K, N, ldb, 1))
                            : tb ? bf16_operand(B, N, K, ldb, 1, keep) : bf16_operand(B, K, N, ldb, 1, keep);
    if (!a || !b) return 0;
    int64_t lda_packed = ta ? M : K, ldb_packed = tb ? K : N;
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (2.0 * (double)M * (double)N * (double)K < 4e6) threads = 1;
    int split_n = N >= M;
    int64_t dim = split_n ? N : M;
    int64_t block = (dim + threads - 1) / threads;
    block = (block + 31) / 32 * 32;
    /* the bias goes into the primitive (no pass over C before it, which ran
     * on one thread); with alpha != 1 oneDNN would scale it too, and where
     * oneDNN has no such primitive C starts as the bias and is accumulated */
    int prim_bias = bias != NULL && alpha == 1.0f;
    /* one primitive per distinct part shape (all parts but the last share
     * one), and each part's memory objects, before C is touched */
    part parts[MAX_THREADS];
    int nparts = 0, ok = 1;
    for (int t = 0; t < threads && ok; t++) {
        int64_t lo = (int64_t)t * block, hi = lo + block < dim ? lo + block : dim;
        if (lo >= hi) break;
        prim_key k;
        memset(&k, 0, sizeof k); /* the key is compared with memcmp: no stray padding */
        k.M = split_n ? M : hi - lo, k.N = split_n ? hi - lo : N, k.K = K;
        k.lda = lda_packed, k.ldb = ldb_packed, k.ldc = ldc;
        k.ta = ta, k.tb = tb, k.alpha = alpha, k.bias = prim_bias, k.c_bf16 = c16;
        k.sum = beta != 0.0f || (bias != NULL && !prim_bias);
        dnnl_primitive_t prim = get_prim(&k);
        if (!prim && prim_bias && t == 0) { /* again, the bias in C */
            prim_bias = 0, t = -1;
            continue;
        }
        if (!g_streams[t] &&
            dnnl_stream_create(&g_streams[t], g_engine, dnnl_stream_default_flags) != dnnl_success)
            prim = NULL;
        if (!prim) { ok = 0; break; }
        const uint16_t *ap = split_n ? a : ta ? a + lo : a + lo * K;
        const uint16_t *bp = split_n ? (tb ? b + lo * K : b + lo) : b;
        const float *biasp = !prim_bias ? NULL : split_n ? bias + lo : bias;
        int64_t coff = split_n ? lo : lo * ldc;
        ok = make_part(&parts[nparts], prim, ap, bp, c16 ? (void *)((uint16_t *)C + coff) : (void *)((float *)C + coff),
                       biasp, nparts);
        nparts++;
    }
    if (ok && c16 && ((bias && !prim_bias) || (beta != 0.0f && beta != 1.0f))) ok = 0; /* no fp32 pass over bf16 C */
    if (ok && ((bias && !prim_bias) || (beta != 0.0f && beta != 1.0f))) { /* c = beta*c (+ bias), then accumulate */
        const float *cbias = prim_bias ? NULL : bias;
#pragma omp parallel for schedule(static) if (M * N > 65536)
        for (int64_t i = 0; i < M; i++) {
            float *row = (float *)C + i * ldc;
            for (int64_t j = 0; j < N; j++)
                row[j] = (beta == 0.0f ? 0.0f : beta * row[j]) + (cbias ? cbias[j] : 0.0f);
        }
    }
    int failed = !ok;
    if (ok && nparts == 1) { /* oneDNN may use the team itself (a team of one would nest a second team) */
        failed = !run_part(&parts[0], 0);
    } else if (ok) { /* inside our team, oneDNN runs each part on its own thread */
#pragma omp parallel for schedule(static) num_threads(nparts) reduction(| : failed)
        for (int t = 0; t < nparts; t++) failed |= !run_part(&parts[t], t);
    }
    for (int t = 0; t < nparts; t++) free_part(&parts[t]);
    return !failed;
}
#endif

void ts_cpu_gemm_lowp(ts_dtype dt, bool ta, bool tb, int64_t batch, int64_t M, int64_t N, int64_t K,
                      float alpha, const float *A, int64_t sa, int64_t lda, const float *B, int64_t sb,
                      int64_t ldb, float beta, float *C, int64_t sc, int64_t ldc, const float *bias, bool keep)
{
    if (M == 0 || N == 0 || batch == 0) return;
    pthread_mutex_lock(&g_lock);
#ifdef TS_HAVE_ONEDNN
    /* K == 0 and batched products (attention's small ones) take the fallback */
    if (dt == TS_BF16 && batch == 1 && K > 0 && onednn_ready() &&
        gemm_onednn(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias, keep, NULL)) {
        pthread_mutex_unlock(&g_lock);
        return;
    }
#endif
    (void)keep;
    gemm_emulated(dt, ta, tb, batch, M, N, K, alpha, A, sa, lda, B, sb, ldb, beta, C, sc, ldc, bias);
    pthread_mutex_unlock(&g_lock);
}

/* Elements a strided operand spans: batch blocks of rows x cols, row stride ld. */
static int64_t span(int64_t batch, int64_t stride, int64_t rows, int64_t cols, int64_t ld)
{
    return (batch - 1) * stride + (rows - 1) * ld + cols;
}

static void widen_bf16(float *dst, const uint16_t *src, int64_t n)
{
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[i] << 16;
        memcpy(&dst[i], &u, 4);
    }
}

int ts_cpu_gemm_mixed(ts_dtype dt, bool ta, bool tb, int64_t batch, int64_t M, int64_t N, int64_t K, float alpha,
                      const void *A, int64_t sa, int64_t lda, const void *B, int64_t sb, int64_t ldb, float beta,
                      void *C, int64_t sc, int64_t ldc, const float *bias, bool keep, const ts_gemm_bf16_io *io)
{
    if (M == 0 || N == 0 || batch == 0) return 1;
#ifdef TS_HAVE_ONEDNN
    if (dt == TS_BF16 && batch == 1 && K > 0) {
        pthread_mutex_lock(&g_lock);
        int done = onednn_ready() && gemm_onednn(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias, keep, io);
        pthread_mutex_unlock(&g_lock);
        if (done) return 1;
    }
#else
    (void)keep; /* only oneDNN's route keeps copies */
#endif
    /* through fp32 copies of the bf16 tensors (never kept: a later buffer
     * at a copy's address would find it stale) */
    int64_t na = span(batch, sa, ta ? K : M, ta ? M : K, lda);
    int64_t nb = span(sb ? batch : 1, sb, tb ? N : K, tb ? K : N, ldb);
    int64_t nc = span(batch, sc, M, N, ldc);
    float *a = io->a ? malloc((size_t)na * 4) : (float *)A, *b = io->b ? malloc((size_t)nb * 4) : (float *)B;
    float *c = io->c ? malloc((size_t)nc * 4) : (float *)C;
    int ok = a && b && c;
    if (ok) {
        if (io->a) widen_bf16(a, A, na);
        if (io->b) widen_bf16(b, B, nb);
        if (io->c && beta != 0.0f) widen_bf16(c, C, nc);
        if (dt != TS_F32)
            ts_cpu_gemm_lowp(dt, ta, tb, batch, M, N, K, alpha, a, sa, lda, b, sb, ldb, beta, c, sc, ldc, bias, false);
        else
            ts_blas_sgemm_bias(ta, tb, batch, M, N, K, alpha, a, sa, lda, b, sb, ldb, beta, c, sc, ldc, bias);
        if (io->c) /* C's windows only: between rows (ldc > N) is other memory */
            for (int64_t t = 0; t < batch; t++) {
#pragma omp parallel for schedule(static) if (M * N > 65536)
                for (int64_t i = 0; i < M; i++) {
                    uint16_t *out = (uint16_t *)C + t * sc + i * ldc;
                    const float *row = c + t * sc + i * ldc;
#pragma omp simd
                    for (int64_t j = 0; j < N; j++) out[j] = ts_bf16_bits(row[j]);
                }
            }
    }
    if (io->a) free(a);
    if (io->b) free(b);
    if (io->c) free(c);
    return ok;
}

const char *ts_cpu_lowp_route(ts_dtype dt)
{
#ifdef TS_HAVE_ONEDNN
    static char route[160];
    pthread_mutex_lock(&g_lock);
    int ok = dt == TS_BF16 && onednn_ready();
    if (ok) {
        const dnnl_version_t *v = dnnl_version();
        snprintf(route, sizeof route, "oneDNN %d.%d.%d %s", v->major, v->minor, v->patch, g_impl);
    }
    pthread_mutex_unlock(&g_lock);
    if (ok) return route;
#endif
    (void)dt;
    return "emulated (rounded inputs, fp32 GEMM)";
}
