#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void rng_seed(rng_t *r, uint64_t seed) { r->s = seed * 0x9E3779B97F4A7C15ull + 1; }

uint64_t rng_next(rng_t *r)
{
    /* splitmix64 */
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

float rng_uniform(rng_t *r, float lo, float hi)
{
    double u = (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(lo + (hi - lo) * u);
}

float rng_normal(rng_t *r)
{
    double u1 = ((double)(rng_next(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double u2 = (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

float *rand_floats(rng_t *r, int64_t n, float lo, float hi)
{
    float *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = rng_uniform(r, lo, hi);
    return x;
}

double *to_double(const float *x, int64_t n)
{
    double *d = malloc((size_t)(n > 0 ? n : 1) * sizeof *d);
    for (int64_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

int32_t *rand_ints(rng_t *r, int64_t n, int32_t lo, int32_t hi)
{
    int32_t *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = lo + (int32_t)(rng_next(r) % (uint64_t)(hi - lo));
    return x;
}

float poison_nan(void)
{
    uint32_t bits = 0x7fc0deadu;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static float sentinel(void)
{
    uint32_t bits = 0x7fbeef01u;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

enum { GUARD = 67 }; /* odd on purpose: misaligned views must work too */

uint16_t bf16_from_float(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

float bf16_to_float(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* f16 from its definition (not the library's bit tricks): to nearest even
 * in double arithmetic, overflow from 65520 on, subnormals in steps of
 * 2^-24, NaN a quiet NaN of the same sign */
uint16_t f16_from_float(float x)
{
    uint16_t s = signbit(x) ? 0x8000u : 0;
    if (isnan(x)) return (uint16_t)(s | 0x7e00u);
    double a = fabs((double)x);
    if (a >= 65520.0) return (uint16_t)(s | 0x7c00u);
    if (a < 0x1p-14) return (uint16_t)(s | (uint16_t)nearbyint(a * 0x1p24));
    int e;
    double q = nearbyint(frexp(a, &e) * 2048.0); /* a = q * 2^(e-11), q in [1024, 2048] */
    if (q == 2048.0) q = 1024.0, e++;
    return (uint16_t)(s | (uint16_t)((e + 14) << 10) | (uint16_t)(q - 1024.0));
}

float f16_to_float(uint16_t h)
{
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return (float)((h & 0x8000u) ? -v : v);
}

/* NaN payloads no bf16 rounding produces; NaNs in f16 too, where a narrowed
 * NaN could match them (the ops' outputs are finite in those tests) */
enum { SENTINEL_BF16 = 0x7fb3, POISON_BF16 = 0x7fde };

/* Element i of a host copy of g's block, as the tensor's type stores it
 * (bits16: the 16-bit types' pattern). */
static void put(void *host, ts_dtype dt, int64_t i, float f32, uint16_t bits16)
{
    if (dt == TS_BF16 || dt == TS_F16) ((uint16_t *)host)[i] = bits16;
    else ((float *)host)[i] = f32;
}

static ts_status guarded_alloc_as(guarded *g, ts_device *d, ts_dtype dt, int64_t guard, int ndim,
                                  const int64_t *shape, const float *init)
{
    memset(g, 0, sizeof *g);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    g->n = n;
    g->guard = guard;
    int64_t total = n + 2 * guard;
    ts_status st = ts_tensor_alloc(&g->base, d, dt, TS_SHAPE(total));
    if (st) return st;
    size_t bytes = ts_tensor_nbytes(&g->base);
    void *host = malloc(bytes);
    for (int64_t i = 0; i < total; i++) put(host, dt, i, sentinel(), SENTINEL_BF16);
    for (int64_t i = 0; i < n; i++)
        put(host, dt, guard + i, init ? init[i] : poison_nan(),
            !init ? POISON_BF16 : dt == TS_F16 ? f16_from_float(init[i]) : bf16_from_float(init[i]));
    st = ts_tensor_write(&g->base, host, bytes);
    free(host);
    if (!st) st = ts_tensor_view(&g->t, &g->base, guard, ndim, shape);
    if (st) ts_tensor_free(&g->base);
    return st;
}

ts_status guarded_alloc(guarded *g, ts_device *d, int ndim, const int64_t *shape, const float *init)
{
    return guarded_alloc_as(g, d, TS_F32, GUARD, ndim, shape, init);
}

ts_status guarded_alloc_bf16(guarded *g, ts_device *d, int ndim, const int64_t *shape, const float *init)
{
    return guarded_alloc_as(g, d, TS_BF16, GUARD, ndim, shape, init);
}

ts_status guarded_alloc_f16(guarded *g, ts_device *d, int ndim, const int64_t *shape, const float *init)
{
    return guarded_alloc_as(g, d, TS_F16, GUARD, ndim, shape, init);
}

ts_status guarded_alloc_bf16_at(guarded *g, ts_device *d, int64_t guard, int ndim, const int64_t *shape,
                                const float *init)
{
    return guarded_alloc_as(g, d, TS_BF16, guard, ndim, shape, init);
}

ts_status guarded_read(const guarded *g, float *out, int64_t *bad_guards)
{
    ts_dtype dt = g->base.dtype;
    size_t es = ts_dtype_size(dt), bytes = ts_tensor_nbytes(&g->base);
    char *host = malloc(bytes), sent[4];
    put(sent, dt, 0, sentinel(), SENTINEL_BF16);
    ts_status st = ts_tensor_read(&g->base, host, bytes);
    if (!st) {
        int64_t bad = 0;
        for (int64_t i = 0; i < g->guard; i++) {
            bad += memcmp(host + i * es, sent, es) != 0;
            bad += memcmp(host + (g->guard + g->n + i) * es, sent, es) != 0;
        }
        *bad_guards = bad;
        for (int64_t i = 0; i < g->n; i++) {
            const char *e = host + (g->guard + i) * es;
            uint16_t b;
            if (dt == TS_BF16) memcpy(&b, e, 2), out[i] = bf16_to_float(b);
            else if (dt == TS_F16) memcpy(&b, e, 2), out[i] = f16_to_float(b);
            else memcpy(&out[i], e, 4);
        }
    }
    free(host);
    return st;
}

void guarded_free(guarded *g) { ts_tensor_free(&g->base); }

ts_status upload(ts_tensor *t, ts_device *d, ts_dtype dtype, int ndim, const int64_t *shape,
                 const void *host)
{
    ts_status st = ts_tensor_alloc(t, d, dtype, ndim, shape);
    if (st) return st;
    st = ts_tensor_write(t, host, ts_tensor_nbytes(t));
    if (st) ts_tensor_free(t);
    return st;
}

double nmse(const float *out, const double *ref, int64_t n)
{
    double err = 0.0, norm = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(ref[i])) continue;
        double e = (double)out[i] - ref[i];
        err += e * e;
        norm += ref[i] * ref[i];
    }
    return norm > 0.0 ? err / norm : err;
}

bool check_close(const char *what, const float *out, const double *ref, int64_t n, double tol)
{
    int64_t nonfinite_bad = 0, first_bad = -1, worst = -1;
    double worst_err = -1.0;
    for (int64_t i = 0; i < n; i++) {
        int ok;
        if (isnan(ref[i])) ok = isnan(out[i]);
        else if (isinf(ref[i])) ok = isinf(out[i]) && ((out[i] > 0) == (ref[i] > 0));
        else ok = isfinite(out[i]);
        if (!ok) {
            nonfinite_bad++;
            if (first_bad < 0) first_bad = i;
            continue;
        }
        if (isfinite(ref[i])) {
            double e = fabs((double)out[i] - ref[i]);
            if (e > worst_err) {
                worst_err = e;
                worst = i;
            }
        }
    }
    double m = nmse(out, ref, n);
    if (nonfinite_bad) {
        th_fail(__FILE__, __LINE__,
                "%s: %lld of %lld elements disagree on NaN/Inf (first at %lld: got %g, want %g)",
                what, (long long)nonfinite_bad, (long long)n, (long long)first_bad,
                (double)out[first_bad], ref[first_bad]);
        return false;
    }
    if (!(m <= tol)) {
        th_fail(__FILE__, __LINE__,
                "%s: nmse %.3g > %.3g over %lld elements (worst at %lld: got %.9g, want %.9g)",
                what, m, tol, (long long)n, (long long)worst, worst >= 0 ? (double)out[worst] : 0.0,
                worst >= 0 ? ref[worst] : 0.0);
        return false;
    }
    return true;
}
