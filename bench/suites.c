/* The kernel benchmark suites (see tessera/bench.h). Every measurement
 * goes through ts_bench_time; flop and byte counts are the model counts an
 * op needs at least (for a roofline), stated beside each suite. */
#include "bench.h"
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "fileio.h"
#include "json.h"
#include "tessera/tessera.h"

#ifdef TS_HAVE_MPI
#include <mpi.h>
#endif
#ifdef TS_HAVE_HWLOC
#include <hwloc.h>
#endif


static const char *suite_names[] = {"limits", "gemm", "memory", "attention", "transfer"};

const char *ts_bench_suite_name(int bit)
{
    for (int i = 0; i < 5; i++)
        if (bit == 1 << i) return suite_names[i];
    return "?";
}

int ts_bench_parse_suites(const char *list)
{
    if (!list || !*list || !strcmp(list, "all")) return TS_BENCH_ALL;
    int bits = 0;
    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ",");
        int found = 0;
        for (int i = 0; i < 5; i++)
            if (strlen(suite_names[i]) == n && !strncmp(p, suite_names[i], n)) bits |= 1 << i, found = 1;
        if (!found) return -1;
        p += n;
        if (*p == ',') p++;
    }
    return bits;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void ts_bench_summarize(double *samples, int n, double *min_s, double *median_s, double *max_s)
{
    qsort(samples, (size_t)n, sizeof *samples, cmp_double);
    if (min_s) *min_s = samples[0];
    if (max_s) *max_s = samples[n - 1];
    if (median_s) *median_s = n % 2 ? samples[n / 2] : 0.5 * (samples[n / 2 - 1] + samples[n / 2]);
}

ts_status ts_bench_time(ts_device *dev, ts_status (*fn)(void *ctx), void *ctx, double min_time,
                        int min_reps, double *min_s, double *median_s, double *max_s, int *reps)
{
    if (min_time <= 0) min_time = 0.25;
    if (min_reps < 1) min_reps = 1;
    /* warm-up: first use builds kernels, fills caches, faults pages in; the
     * second call's time sizes the samples */
    TRY(fn(ctx));
    TRY(ts_device_synchronize(dev));
    double t0 = ts_now();
    TRY(fn(ctx));
    TRY(ts_device_synchronize(dev));
    double one = ts_now() - t0;
    if (one <= 0) one = 1e-7;
    int batch = one >= 1e-3 ? 1 : (int)ceil(1e-3 / one);
    if (batch > 10000) batch = 10000;
    /* slow calls: stop after 3 samples once 4x min_time has passed */
    enum { MAX_SAMPLES = 4096 };
    double *samples = malloc(MAX_SAMPLES * sizeof *samples);
    if (!samples) return ts_error(TS_ERR_OOM, "bench: no memory for samples");
    int n = 0;
    double start = ts_now(), elapsed = 0;
    ts_status st = TS_OK;
    while (n < MAX_SAMPLES) {
        double s0 = ts_now();
        for (int k = 0; k < batch && !st; k++) st = fn(ctx);
        if (!st) st = ts_device_synchronize(dev);
        if (st) break;
        samples[n++] = (ts_now() - s0) / batch;
        elapsed = ts_now() - start;
        if (elapsed >= min_time && n >= min_reps) break;
        if (elapsed >= 4 * min_time && n >= 3) break;
    }
    if (!st) {
        ts_bench_summarize(samples, n, min_s, median_s, max_s);
        *reps = n * batch;
    }
    free(samples);
    return st;
}

/* ---- one device's run ---- */

typedef struct run {
    ts_device *dev;
    const ts_bench_options *o;
    ts_bench_sink sink;
    void *user;
    double peak_gflops, triad_gbs;
    /* the next memory-bound op's rate on data in cache (its exp/tanh
     * limit, as GB/s of its full-size traffic), and that function's name */
    double op_limit_gbs;
    const char *op_bound;
    double last_gbs; /* of the last measure() */
} run;

/* Time fn and hand the result on. kind: 'c' compute-bound (fraction of
 * peak), 'm' memory-bound (fraction of triad), 't' transfers (none). */
static ts_status measure(run *r, const char *suite, const char *name, const char *impl, const char *shape,
                         double flops, double bytes, char kind, ts_status (*fn)(void *), void *ctx)
{
    ts_bench_result res;
    memset(&res, 0, sizeof res);
    snprintf(res.device, sizeof res.device, "%s", ts_device_get_info(r->dev)->id);
    snprintf(res.suite, sizeof res.suite, "%s", suite);
    snprintf(res.name, sizeof res.name, "%s", name);
    snprintf(res.impl, sizeof res.impl, "%s", impl);
    snprintf(res.shape, sizeof res.shape, "%s", shape);
    res.flops = flops;
    res.bytes = bytes;
    ts_status st = ts_bench_time(r->dev, fn, ctx, r->o->min_time, r->o->min_reps, &res.min_s, &res.median_s,
                                 &res.max_s, &res.reps);
    if (st) return ts_error(st, "bench %s %s on %s: %s", suite, name, res.device, ts_last_error());
    res.gflops = flops / res.median_s / 1e9;
    res.gbs = bytes / res.median_s / 1e9;
    r->last_gbs = res.gbs;
    if (kind == 'c' && r->peak_gflops > 0) res.fraction = res.gflops / r->peak_gflops;
    if (kind == 'm' && r->triad_gbs > 0) {
        /* the in-cache rate bounds the op unless the op beats it by more
         * than noise: then it measured launch overhead (small arrays on
         * PoCL), not the arithmetic */
        int compute = r->op_limit_gbs > 0 && r->op_limit_gbs < r->triad_gbs && res.gbs <= 1.1 * r->op_limit_gbs;
        res.fraction = res.gbs / (compute ? r->op_limit_gbs : r->triad_gbs);
        snprintf(res.bound, sizeof res.bound, "%s", compute ? r->op_bound : "bandwidth");
    }
    if (r->sink) r->sink(&res, r->user);
    return TS_OK;
}

/* Tensors filled with values in [lo, hi) from a fixed generator. */
static ts_status alloc_random(ts_tensor *t, ts_device *dev, int ndim, const int64_t *shape, float lo, float hi,
                             uint64_t seed)
{
    TRY(ts_tensor_alloc(t, dev, TS_F32, ndim, shape));
    int64_t n = ts_tensor_numel(t);
    float *h = malloc((size_t)(n ? n : 1) * sizeof *h);
    if (!h) return ts_error(TS_ERR_OOM, "bench: no host memory for %lld floats", (long long)n);
    uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = lo + (hi - lo) * (float)((s >> 40) * (1.0 / 16777216.0));
    }
    ts_status st = ts_tensor_write(t, h, (size_t)n * sizeof *h);
    free(h);
    return st;
}

static ts_status alloc_tokens(ts_tensor *t, ts_device *dev, int ndim, const int64_t *shape, int64_t V,
                             uint64_t seed)
{
    TRY(ts_tensor_alloc(t, dev, TS_I32, ndim, shape));
    int64_t n = ts_tensor_numel(t);
    int32_t *h = malloc((size_t)(n ? n : 1) * sizeof *h);
    if (!h) return ts_error(TS_ERR_OOM, "bench: no host memory for %lld tokens", (long long)n);
    uint64_t s = seed;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = (int32_t)((s >> 33) % (uint64_t)V);
    }
    ts_status st = ts_tensor_write(t, h, (size_t)n * sizeof *h);
    free(h);
    return st;
}

/* ---- limits: peak FMA rate and triad bandwidth ---- */

typedef struct fma_ctx { ts_tensor x; int64_t iters; } fma_ctx;
static ts_status run_fma(void *c)
{
    fma_ctx *f = c;
    return ts_fma_loop(&f->x, f->iters, 0.999f, 0.0007f);
}

typedef struct triad_ctx { ts_tensor a, b, c; } triad_ctx;
static ts_status run_triad(void *c)
{
    triad_ctx *t = c;
    return ts_triad(&t->a, &t->b, &t->c, 3.0f);
}

static ts_status bench_limits(run *r)
{
    int64_t n = r->o->quick ? 1 << 16 : 1 << 23, iters = r->o->quick ? 64 : 512;
    char shape[64];
    fma_ctx f = {.iters = iters};
    ts_status st = alloc_random(&f.x, r->dev, TS_SHAPE(n), -1, 1, 1);
    snprintf(shape, sizeof shape, "n=%lld iterations=%lld", (long long)n, (long long)iters);
    if (!st) st = measure(r, "limits", "peak fma", "tessera", shape, 2.0 * (double)n * (double)iters,
                          8.0 * (double)n, 't', run_fma, &f);
    ts_tensor_free(&f.x);
    TRY(st);
    n = r->o->quick ? 1 << 18 : 1 << 24;
    triad_ctx t;
    memset(&t, 0, sizeof t);
    st = ts_tensor_alloc(&t.a, r->dev, TS_F32, TS_SHAPE(n));
    if (!st) st = alloc_random(&t.b, r->dev, TS_SHAPE(n), -1, 1, 2);
    if (!st) st = alloc_random(&t.c, r->dev, TS_SHAPE(n), -1, 1, 3);
    snprintf(shape, sizeof shape, "n=%lld (3 arrays of %lld MB)", (long long)n, (long long)(n * 4 >> 20));
    if (!st) st = measure(r, "limits", "triad", "tessera", shape, 2.0 * n, 12.0 * n, 't', run_triad, &t);
    ts_tensor_free(&t.a), ts_tensor_free(&t.b), ts_tensor_free(&t.c);
    return st;
}

/* ---- GEMM ---- */

typedef struct gemm_ctx {
    ts_tensor a, b, c;
    bool ta, tb, reference;
} gemm_ctx;

static ts_status run_gemm(void *p)
{
    gemm_ctx *g = p;
    return g->reference ? ts_matmul_reference(&g->c, &g->a, &g->b, g->ta, g->tb, 1.0f, 0.0f)
                        : ts_matmul(&g->c, &g->a, &g->b, g->ta, g->tb, 1.0f, 0.0f);
}

typedef struct gemm_shape {
    const char *name;
    int64_t M, N, K;
    bool ta, tb;
} gemm_shape;

static ts_status gemm_one(run *r, const gemm_shape *s, bool reference, ts_dtype dt)
{
    gemm_ctx g = {.ta = s->ta, .tb = s->tb, .reference = reference};
    ts_status st = ts_tensor_alloc(&g.a, r->dev, TS_F32, TS_SHAPE(s->ta ? s->K : s->M, s->ta ? s->M : s->K));
    if (!st) st = ts_tensor_alloc(&g.b, r->dev, TS_F32, TS_SHAPE(s->tb ? s->N : s->K, s->tb ? s->K : s->N));
    if (!st) st = ts_tensor_alloc(&g.c, r->dev, TS_F32, TS_SHAPE(s->M, s->N));
    if (!st) st = ts_fill(&g.a, 0.01f);
    if (!st) st = ts_fill(&g.b, 0.02f);
    char shape[64];
    snprintf(shape, sizeof shape, "M=%lld N=%lld K=%lld %c%c", (long long)s->M, (long long)s->N, (long long)s->K,
             s->ta ? 'T' : 'N', s->tb ? 'T' : 'N');
    double flops = 2.0 * (double)s->M * (double)s->N * (double)s->K;
    double bytes = 4.0 * ((double)s->M * (double)s->K + (double)s->K * (double)s->N + (double)s->M * (double)s->N);
    const char *impl = reference ? ts_device_get_info(r->dev)->reference_blas : dt == TS_BF16 ? "tessera bf16" : "tessera";
    if (!st) st = ts_device_set_matmul_dtype(r->dev, dt);
    if (!st) st = measure(r, "gemm", s->name, impl, shape, flops, bytes, 'c', run_gemm, &g);
    ts_device_set_matmul_dtype(r->dev, TS_F32);
    ts_tensor_free(&g.a), ts_tensor_free(&g.b), ts_tensor_free(&g.c);
    return st;
}

static ts_status bench_gemm(run *r)
{
    /* GPT-2 124M (C=768, V=50257) at B=4, T=64: 256 rows; the products of
     * a forward and backward pass, then squares for the size chart. */
    int q = r->o->quick;
    int64_t BT = q ? 32 : 256, C = q ? 64 : 768, V = q ? 512 : 50257;
    gemm_shape shapes[16];
    int n = 0;
    shapes[n++] = (gemm_shape){"qkv forward", BT, 3 * C, C, false, true};
    shapes[n++] = (gemm_shape){"attn proj forward", BT, C, C, false, true};
    shapes[n++] = (gemm_shape){"mlp fc forward", BT, 4 * C, C, false, true};
    shapes[n++] = (gemm_shape){"mlp proj forward", BT, C, 4 * C, false, true};
    shapes[n++] = (gemm_shape){"lm head forward", BT, V, C, false, true};
    shapes[n++] = (gemm_shape){"mlp proj dinput", BT, 4 * C, C, false, false};
    shapes[n++] = (gemm_shape){"mlp fc dweight", 4 * C, C, BT, true, false};
    shapes[n++] = (gemm_shape){"lm head dweight", V, C, BT, true, false};
    static const int64_t full_sq[] = {128, 256, 512, 1024, 2048}, quick_sq[] = {32, 64, 128};
    const int64_t *sq = q ? quick_sq : full_sq;
    int nsq = q ? 3 : 5;
    for (int i = 0; i < nsq; i++) shapes[n++] = (gemm_shape){"square", sq[i], sq[i], sq[i], false, false};
    for (int i = 0; i < n; i++) TRY(gemm_one(r, &shapes[i], false, TS_F32));
    /* bf16 products (--dtype bf16) where the device has them: the training
     * shapes, as a fraction of the fp32 FMA peak */
    if (ts_device_matmul_route(r->dev, TS_BF16)[0])
        for (int i = 0; i < 8; i++) TRY(gemm_one(r, &shapes[i], false, TS_BF16));
    /* the reference after all of tessera's: OpenBLAS's own threads spin for
     * a while after each call and would slow whatever runs next */
    if (!r->o->no_reference && ts_device_get_info(r->dev)->reference_blas[0])
        for (int i = 0; i < n; i++) TRY(gemm_one(r, &shapes[i], true, TS_F32));
    return TS_OK;
}

/* ---- memory-bound ops ---- */

typedef struct mem_ctx {
    int op;
    ts_tensor x, y, z, w, b, mean, rstd, tok, dw, dwpe, m, v;
    int64_t n, N, C, V, T;
    ts_optim_params adam;
} mem_ctx;

enum { M_LN_FWD, M_LN_BWD, M_GELU_FWD, M_GELU_BWD, M_CE, M_ADAMW, M_EMB_BWD, M_COUNT };

static ts_status run_mem(void *p)
{
    mem_ctx *c = p;
    switch (c->op) {
    case M_LN_FWD: return ts_layernorm_forward(&c->y, &c->mean, &c->rstd, &c->x, &c->w, &c->b, 1e-5f);
    case M_LN_BWD: return ts_layernorm_backward(&c->z, &c->dw, &c->dwpe, &c->y, &c->x, &c->w, &c->mean, &c->rstd);
    case M_GELU_FWD: return ts_gelu_forward(&c->y, &c->x);
    case M_GELU_BWD: return ts_gelu_backward(&c->z, &c->x, &c->y);
    case M_CE: return ts_cross_entropy(&c->mean, NULL, &c->y, &c->x, &c->tok, 1.0f / (float)c->N);
    case M_ADAMW: return ts_optimizer_update(&c->x, &c->y, &c->m, &c->v, &c->adam);
    case M_EMB_BWD: return ts_embedding_backward(&c->dw, &c->dwpe, &c->y, &c->tok);
    }
    return ts_error(TS_ERR_INVALID_ARG, "bench: unknown memory op %d", c->op);
}

static void mem_free(mem_ctx *c)
{
    ts_tensor *all[] = {&c->x, &c->y, &c->z, &c->w, &c->b, &c->mean, &c->rstd, &c->tok, &c->dw, &c->dwpe, &c->m, &c->v};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) ts_tensor_free(all[i]);
}

/* in_cache: the same op on data that fits the caches (a few hundred KB a
 * core), which measures its arithmetic (exp, tanh) rather than memory */
static ts_status mem_setup(run *r, mem_ctx *c, int in_cache, char *name, char *shape, double *flops, double *bytes)
{
    ts_device *d = r->dev;
    int q = r->o->quick;
    /* GPT-2 124M activations at B=8, T=1024 (8192 rows of 768): beyond any
     * cache, as in real training; the cross-entropy at B=4, T=64 over the
     * whole 50257-token vocabulary; AdamW over 16M parameters. */
    int64_t N = q ? 512 : 8192, C = q ? 256 : 768, V = q ? 4096 : 50257;
    double f = 4.0; /* bytes per float */
    switch (c->op) {
    case M_LN_FWD:
    case M_LN_BWD:
        c->N = N, c->C = C;
        TRY(alloc_random(&c->x, d, TS_SHAPE(N, C), -2, 2, 11));
        TRY(alloc_random(&c->w, d, TS_SHAPE(C), 0.5f, 1.5f, 12));
        TRY(alloc_random(&c->b, d, TS_SHAPE(C), -0.1f, 0.1f, 13));
        TRY(ts_tensor_alloc(&c->y, d, TS_F32, TS_SHAPE(N, C)));
        TRY(ts_tensor_alloc(&c->mean, d, TS_F32, TS_SHAPE(N)));
        TRY(ts_tensor_alloc(&c->rstd, d, TS_F32, TS_SHAPE(N)));
        TRY(ts_layernorm_forward(&c->y, &c->mean, &c->rstd, &c->x, &c->w, &c->b, 1e-5f));
        snprintf(shape, 64, "N=%lld C=%lld", (long long)N, (long long)C);
        if (c->op == M_LN_FWD) {
            snprintf(name, 48, "layernorm forward");
            *bytes = f * (2.0 * N * C + 2.0 * C + 2.0 * N), *flops = 8.0 * N * C;
        } else {
            snprintf(name, 48, "layernorm backward");
            TRY(ts_tensor_zeros(&c->z, d, TS_F32, TS_SHAPE(N, C)));
            TRY(ts_tensor_zeros(&c->dw, d, TS_F32, TS_SHAPE(C)));
            TRY(ts_tensor_zeros(&c->dwpe, d, TS_F32, TS_SHAPE(C)));
            /* read dout, inp, dinp; write dinp; mean, rstd; weight, dweight, dbias */
            *bytes = f * (4.0 * N * C + 2.0 * N + 5.0 * C), *flops = 14.0 * N * C;
        }
        return TS_OK;
    case M_GELU_FWD:
    case M_GELU_BWD: {
        int64_t n = in_cache ? 1 << 17 : N * 4 * C;
        TRY(alloc_random(&c->x, d, TS_SHAPE(n), -4, 4, 21));
        TRY(alloc_random(&c->y, d, TS_SHAPE(n), -1, 1, 22));
        TRY(ts_tensor_alloc(&c->z, d, TS_F32, TS_SHAPE(n)));
        if (in_cache) snprintf(shape, 64, "n=%lld", (long long)n);
        else snprintf(shape, 64, "n=%lld (N=%lld x 4C=%lld)", (long long)n, (long long)N, (long long)(4 * C));
        snprintf(name, 48, c->op == M_GELU_FWD ? "gelu forward" : "gelu backward");
        *bytes = f * (c->op == M_GELU_FWD ? 2.0 : 3.0) * n;
        *flops = (c->op == M_GELU_FWD ? 12.0 : 20.0) * n;
        return TS_OK;
    }
    case M_CE: {
        int64_t rows = in_cache ? 4 : q ? 64 : 256;
        if (in_cache && q) V = 16384;
        c->N = rows;
        TRY(alloc_random(&c->x, d, TS_SHAPE(rows, V), -4, 4, 31));
        TRY(ts_tensor_alloc(&c->y, d, TS_F32, TS_SHAPE(rows, V)));
        TRY(ts_tensor_alloc(&c->mean, d, TS_F32, TS_SHAPE(rows)));
        TRY(alloc_tokens(&c->tok, d, TS_SHAPE(rows), V, 32));
        snprintf(name, 48, "softmax + cross-entropy");
        snprintf(shape, 64, "N=%lld V=%lld", (long long)rows, (long long)V);
        /* read logits, write dlogits and losses */
        *bytes = f * (2.0 * rows * V + 3.0 * rows), *flops = 6.0 * rows * V;
        return TS_OK;
    }
    case M_ADAMW: {
        int64_t n = q ? 1 << 18 : 1 << 24;
        TRY(alloc_random(&c->x, d, TS_SHAPE(n), -1, 1, 41));
        TRY(alloc_random(&c->y, d, TS_SHAPE(n), -1e-3f, 1e-3f, 42));
        TRY(ts_tensor_zeros(&c->m, d, TS_F32, TS_SHAPE(n)));
        TRY(ts_tensor_zeros(&c->v, d, TS_F32, TS_SHAPE(n)));
        c->adam = (ts_optim_params){.kind = TS_OPTIM_ADAMW, .lr = 1e-4f, .beta1 = 0.9f, .beta2 = 0.95f,
                                    .eps = 1e-8f, .weight_decay = 0.1f, .grad_scale = 1.0f, .step = 1};
        snprintf(name, 48, "adamw");
        snprintf(shape, 64, "n=%lld", (long long)n);
        *bytes = f * 7.0 * n, *flops = 16.0 * n; /* read p, g, m, v; write p, m, v */
        return TS_OK;
    }
    case M_EMB_BWD: {
        int64_t T = q ? 64 : 1024;
        TRY(alloc_random(&c->y, d, TS_SHAPE(N, C), -1, 1, 51));
        TRY(alloc_tokens(&c->tok, d, TS_SHAPE(N / T, T), V, 52));
        TRY(ts_tensor_zeros(&c->dw, d, TS_F32, TS_SHAPE(V, C)));
        TRY(ts_tensor_zeros(&c->dwpe, d, TS_F32, TS_SHAPE(T, C)));
        snprintf(name, 48, "embedding backward");
        snprintf(shape, 64, "N=%lld C=%lld V=%lld T=%lld", (long long)N, (long long)C, (long long)V, (long long)T);
        int64_t rows = N < V ? N : V; /* at most N distinct token rows are touched */
        *bytes = f * (1.0 * N * C + N + 2.0 * rows * C + 2.0 * T * C), *flops = 2.0 * N * C;
        return TS_OK;
    }
    }
    return ts_error(TS_ERR_INVALID_ARG, "bench: unknown memory op %d", c->op);
}

/* The rate of op on data in cache, in GB/s of the traffic the op counts
 * (the same bytes per element at every size): a row of the limits suite,
 * kept in r->op_limit_gbs for the full-size op after it. */
static ts_status op_limit(run *r, int op, const char *fn)
{
    mem_ctx c;
    memset(&c, 0, sizeof c);
    c.op = op;
    char name[48] = "", shape[64] = "", label[48];
    double flops = 0, bytes = 0;
    ts_status st = mem_setup(r, &c, 1, name, shape, &flops, &bytes);
    snprintf(label, sizeof label, "%s in cache (%s)", name, fn);
    r->last_gbs = 0;
    if (!st) st = measure(r, "limits", label, "tessera", shape, flops, bytes, 't', run_mem, &c);
    mem_free(&c);
    r->op_limit_gbs = r->last_gbs;
    return st;
}

static ts_status bench_memory(run *r)
{
    for (int op = 0; op < M_COUNT; op++) {
        mem_ctx c;
        memset(&c, 0, sizeof c);
        c.op = op;
        char name[48] = "", shape[64] = "";
        double flops = 0, bytes = 0;
        ts_status st = mem_setup(r, &c, 0, name, shape, &flops, &bytes);
        /* ops heavy in exp or tanh: their in-cache rate may be below the triad */
        const char *fn = op == M_GELU_FWD || op == M_GELU_BWD ? "tanh" : op == M_CE ? "exp" : NULL;
        r->op_limit_gbs = 0, r->op_bound = fn;
        if (!st && fn) st = op_limit(r, op, fn);
        if (!st) st = measure(r, "memory", name, "tessera", shape, flops, bytes, 'm', run_mem, &c);
        r->op_limit_gbs = 0;
        mem_free(&c);
        TRY(st);
    }
    return TS_OK;
}

/* ---- attention ---- */

typedef struct att_ctx {
    ts_attention_ws ws;
    ts_tensor qkv, out, dout, dqkv;
    int backward;
} att_ctx;

static ts_status run_attention(void *p)
{
    att_ctx *a = p;
    if (!a->backward) return ts_attention_forward(&a->out, &a->qkv, &a->ws);
    return ts_attention_backward(&a->dqkv, &a->dout, &a->ws);
}

static ts_status bench_attention(run *r)
{
    int q = r->o->quick;
    int64_t B = q ? 1 : 4, NH = q ? 2 : 12, HS = 64, C = NH * HS;
    static const int64_t full_T[] = {64, 256, 1024}, quick_T[] = {16, 64};
    const int64_t *Ts = q ? quick_T : full_T;
    int nT = q ? 2 : 3;
    /* both routes where the device has the fused one, side by side */
    for (int i = 0; i < nT; i++) {
        bool has_fused;
        if (ts_attention_route_fused(r->dev, TS_ATTENTION_FUSED, B, Ts[i], C, NH, &has_fused) != TS_OK) {
            ts_clear_error();
            has_fused = false;
        }
        for (int route = has_fused ? 0 : 1; route < 2; route++) {
            int64_t T = Ts[i];
            att_ctx a;
            memset(&a, 0, sizeof a);
            ts_status st = ts_attention_ws_alloc_route(&a.ws, r->dev, B, T, C, NH,
                                                       route ? TS_ATTENTION_COMPOSITE : TS_ATTENTION_FUSED);
            if (!st) st = alloc_random(&a.qkv, r->dev, TS_SHAPE(B, T, 3 * C), -1, 1, 61);
            if (!st) st = ts_tensor_alloc(&a.out, r->dev, TS_F32, TS_SHAPE(B, T, C));
            if (!st) st = alloc_random(&a.dout, r->dev, TS_SHAPE(B, T, C), -1, 1, 62);
            if (!st) st = ts_tensor_alloc(&a.dqkv, r->dev, TS_F32, TS_SHAPE(B, T, 3 * C));
            if (!st) st = ts_attention_forward(&a.out, &a.qkv, &a.ws);
            char shape[64];
            snprintf(shape, sizeof shape, "B=%lld T=%lld NH=%lld HS=%lld", (long long)B, (long long)T,
                     (long long)NH, (long long)HS);
            /* the same nominal work for both routes, so rates compare as
             * times: scores and weighted sum over the full T x T (the
             * composite route computes the masked half too, the fused one
             * skips it), softmax ~5 flops a score; backward twice the
             * products. Bytes: qkv in, out, and the T x T probabilities the
             * composite route stores. */
            double mm = 4.0 * B * NH * (double)T * T * HS, sm = 5.0 * B * NH * (double)T * T;
            double io = 4.0 * (4.0 * B * T * C), probs = 4.0 * B * NH * (double)T * T;
            const char *impl = route ? (has_fused ? "tessera composite" : "tessera") : "tessera fused";
            if (!st) st = measure(r, "attention", "attention forward", impl, shape, mm + sm, io + 2 * probs, 'c',
                                  run_attention, &a);
            a.backward = 1;
            if (!st) st = measure(r, "attention", "attention backward", impl, shape, 2 * mm + 2 * sm,
                                  2 * io + 3 * probs, 'c', run_attention, &a);
            ts_attention_ws_free(&a.ws);
            ts_tensor_free(&a.qkv), ts_tensor_free(&a.out), ts_tensor_free(&a.dout), ts_tensor_free(&a.dqkv);
            TRY(st);
        }
    }
    return TS_OK;
}

/* ---- transfers and launches ---- */

typedef struct xfer_ctx {
    ts_tensor t, t2;
    void *host;
    size_t bytes;
    int kind; /* 0 write, 1 read, 2 device copy, 3 launch */
} xfer_ctx;

static ts_status run_xfer(void *p)
{
    xfer_ctx *x = p;
    switch (x->kind) {
    case 0: return ts_tensor_write(&x->t, x->host, x->bytes);
    case 1: return ts_tensor_read(&x->t, x->host, x->bytes);
    case 2: return ts_tensor_copy(&x->t2, &x->t);
    default: return ts_fill(&x->t, 1.0f);
    }
}

static ts_status bench_transfer(run *r)
{
    int64_t n = r->o->quick ? 1 << 18 : 1 << 24;
    xfer_ctx x;
    memset(&x, 0, sizeof x);
    x.bytes = (size_t)n * sizeof(float);
    x.host = malloc(x.bytes);
    if (!x.host) return ts_error(TS_ERR_OOM, "bench: no host memory for %zu bytes", x.bytes);
    memset(x.host, 0, x.bytes);
    ts_status st = ts_tensor_alloc(&x.t, r->dev, TS_F32, TS_SHAPE(n));
    if (!st) st = ts_tensor_alloc(&x.t2, r->dev, TS_F32, TS_SHAPE(n));
    if (!st) st = ts_fill(&x.t, 0.0f);
    char shape[64];
    snprintf(shape, sizeof shape, "%zu bytes", x.bytes);
    static const char *names[] = {"host to device", "device to host", "device copy"};
    for (int k = 0; k < 3 && !st; k++) {
        x.kind = k;
        st = measure(r, "transfer", names[k], "tessera", shape, 0, (k == 2 ? 2.0 : 1.0) * (double)x.bytes, 't',
                     run_xfer, &x);
    }
    ts_tensor_free(&x.t), ts_tensor_free(&x.t2);
    free(x.host);
    TRY(st);
    /* one launch of the smallest op, back to back: the per-op overhead */
    x.kind = 3;
    st = ts_tensor_alloc(&x.t, r->dev, TS_F32, TS_SHAPE(1));
    if (!st) st = measure(r, "transfer", "launch overhead", "tessera", "fill of 1 element", 0, 0, 't', run_xfer, &x);
    ts_tensor_free(&x.t);
    return st;
}

/* Remember the limits for the fractions of everything after them, and
 * pass them on as 100% of themselves. */
static void capture_limits(const ts_bench_result *res, void *user)
{
    run *r = user;
    ts_bench_result copy = *res;
    if (!strcmp(res->name, "peak fma")) r->peak_gflops = res->gflops, copy.fraction = 1.0;
    if (!strcmp(res->name, "triad")) r->triad_gbs = res->gbs, copy.fraction = 1.0;
    if (r->sink) r->sink(&copy, r->user);
}

ts_status ts_bench_device(ts_device *dev, const ts_bench_options *opts, ts_bench_sink sink, void *user,
                          double *peak_gflops, double *triad_gbs)
{
    ts_bench_options o = opts ? *opts : (ts_bench_options){0};
    if (!o.suites) o.suites = TS_BENCH_ALL;
    if (o.min_time <= 0) o.min_time = 0.25;
    if (o.min_reps <= 0) o.min_reps = 5;
    run r = {.dev = dev, .o = &o, .sink = sink, .user = user};
    ts_status st = TS_OK;
    if (o.suites & TS_BENCH_LIMITS) { /* first, so every later figure has its fraction */
        run lr = r;
        lr.sink = capture_limits;
        lr.user = &r;
        st = bench_limits(&lr);
    }
    if (!st && (o.suites & TS_BENCH_GEMM)) st = bench_gemm(&r);
    if (!st && (o.suites & TS_BENCH_MEMORY)) st = bench_memory(&r);
    if (!st && (o.suites & TS_BENCH_ATTENTION)) st = bench_attention(&r);
    if (!st && (o.suites & TS_BENCH_TRANSFER)) st = bench_transfer(&r);
    if (peak_gflops) *peak_gflops = r.peak_gflops;
    if (triad_gbs) *triad_gbs = r.triad_gbs;
    return st;
}

/* ---- output ---- */

void ts_bench_write_versions(FILE *f)
{
    fprintf(f, "\"tessera\": \"%s\", \"features\": \"%s\"", TESSERA_VERSION, ts_build_features());
#ifdef __VERSION__
    fprintf(f, ", "), ts_json_write_member(f, "compiler", "gcc-compatible " __VERSION__, "");
#endif
    ts_device *cpu = ts_device_at(0); /* the CPU backend names the BLAS it loaded */
    if (cpu && ts_device_get_info(cpu)->reference_blas[0])
        fprintf(f, ", "), ts_json_write_member(f, "blas", ts_device_get_info(cpu)->reference_blas, "");
#ifdef TS_HAVE_CLBLAST
    fprintf(f, ", \"clblast\": \"%s\"", TS_CLBLAST_VERSION);
#endif
#ifdef TS_HAVE_MPI
    {
        char v[MPI_MAX_LIBRARY_VERSION_STRING];
        int len = 0;
        if (MPI_Get_library_version(v, &len) == MPI_SUCCESS) {
            v[strcspn(v, "\n")] = '\0';
            fprintf(f, ", \"mpi\": ");
            ts_json_write_string(f, v);
        }
    }
#endif
#ifdef TS_HAVE_HWLOC
    {
        unsigned v = hwloc_get_api_version();
        fprintf(f, ", \"hwloc\": \"%u.%u.%u\"", v >> 16, (v >> 8) & 0xff, v & 0xff);
    }
#endif
}

/* Numbers that JSON can hold (no NaN or Inf). */
static double json_num(double x) { return isfinite(x) ? x : 0.0; }

ts_status ts_bench_write_json(const char *path, const char *command, ts_device *const *devices,
                              const double *peaks, const double *triads, int ndevices,
                              const ts_bench_result *results, int n, const char *extra)
{
    ts_atomic_file af;
    TRY(ts_atomic_open(&af, path));
    FILE *f = af.f;
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    char date[32], host[256] = "";
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &tm);
    gethostname(host, sizeof host - 1);
    struct utsname u;
    char os[400] = "";
    if (uname(&u) == 0) snprintf(os, sizeof os, "%s %s %s", u.sysname, u.release, u.machine);
    fprintf(f, "{\n  \"format\": \"tessera-bench-1\",\n  ");
    ts_json_write_member(f, "command", command ? command : "", "");
    fprintf(f, ",\n  ");
    ts_json_write_member(f, "date", date, ", ");
    ts_json_write_member(f, "host", host, ", ");
    ts_json_write_member(f, "os", os, "");
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    fprintf(f, ", \"host_cpus\": %ld, \"threads\": %d,\n  \"versions\": {", cores, ts_get_threads());
    ts_bench_write_versions(f);
    fprintf(f, "},\n");
    if (extra && *extra) fprintf(f, "  %s,\n", extra);
    fprintf(f, "  \"devices\": [");
    for (int i = 0; i < ndevices; i++) {
        const ts_device_info *d = ts_device_get_info(devices[i]);
        fprintf(f, "%s\n    {", i ? "," : "");
        ts_device_info_write_json(f, d);
        fprintf(f, "\"peak_gflops\": %.3f, \"triad_gbs\": %.3f}", json_num(peaks ? peaks[i] : 0),
                json_num(triads ? triads[i] : 0));
    }
    fprintf(f, "\n  ],\n  \"results\": [");
    for (int i = 0; i < n; i++) {
        const ts_bench_result *r = &results[i];
        fprintf(f, "%s\n    {", i ? "," : "");
        ts_json_write_member(f, "device", r->device, ", ");
        ts_json_write_member(f, "suite", r->suite, ", ");
        ts_json_write_member(f, "name", r->name, ", ");
        ts_json_write_member(f, "impl", r->impl, ", ");
        ts_json_write_member(f, "shape", r->shape, ", ");
        fprintf(f,
                "\"flops\": %.6g, \"bytes\": %.6g, \"min_s\": %.9g, \"median_s\": %.9g, \"max_s\": %.9g, "
                "\"reps\": %d, \"gflops\": %.6g, \"gbs\": %.6g, \"fraction\": %.4g, ",
                json_num(r->flops), json_num(r->bytes), json_num(r->min_s), json_num(r->median_s), json_num(r->max_s),
                r->reps, json_num(r->gflops), json_num(r->gbs), json_num(r->fraction));
        ts_json_write_member(f, "bound", r->bound, "}");
    }
    fprintf(f, "\n  ]\n}\n");
    if (ferror(f)) {
        ts_atomic_abort(&af);
        return ts_error(TS_ERR_IO, "writing %s failed", path);
    }
    return ts_atomic_commit(&af);
}

static void csv_field(FILE *f, const char *s)
{
    fputc('"', f);
    for (const char *p = s; *p; p++) {
        if (*p == '"') fputc('"', f);
        fputc(*p, f);
    }
    fputc('"', f);
}

ts_status ts_bench_write_csv(const char *path, const ts_bench_result *results, int n)
{
    ts_atomic_file af;
    TRY(ts_atomic_open(&af, path));
    FILE *f = af.f;
    fprintf(f, "device,suite,name,impl,shape,flops,bytes,min_s,median_s,max_s,reps,gflops,gbs,fraction,bound\n");
    for (int i = 0; i < n; i++) {
        const ts_bench_result *r = &results[i];
        const char *text[] = {r->device, r->suite, r->name, r->impl, r->shape};
        for (int k = 0; k < 5; k++) {
            csv_field(f, text[k]);
            fputc(',', f);
        }
        fprintf(f, "%.6g,%.6g,%.9g,%.9g,%.9g,%d,%.4f,%.4f,%.4f,", json_num(r->flops), json_num(r->bytes),
                json_num(r->min_s), json_num(r->median_s), json_num(r->max_s), r->reps, json_num(r->gflops),
                json_num(r->gbs), json_num(r->fraction));
        csv_field(f, r->bound);
        fputc('\n', f);
    }
    if (ferror(f)) {
        ts_atomic_abort(&af);
        return ts_error(TS_ERR_IO, "writing %s failed", path);
    }
    return ts_atomic_commit(&af);
}

const char *ts_bench_fmt_time(double s, char *buf, size_t n)
{
    if (!(s >= 0)) snprintf(buf, n, "-");
    else if (s < 1e-6) snprintf(buf, n, "%.0f ns", s * 1e9);
    else if (s < 1e-3) snprintf(buf, n, "%.3g us", s * 1e6);
    else if (s < 1.0) snprintf(buf, n, "%.3g ms", s * 1e3);
    else snprintf(buf, n, "%.3g s", s);
    return buf;
}
