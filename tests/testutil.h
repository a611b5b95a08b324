/* Shared helpers for tessera's tests: random data, guarded device outputs,
 * comparisons against double-precision references. */
#ifndef TESSERA_TESTUTIL_H
#define TESSERA_TESTUTIL_H

#include <stdbool.h>
#include <stdint.h>

#include "harness.h"
#include "tessera/tessera.h"

typedef struct rng_t {
    uint64_t s;
} rng_t;

void rng_seed(rng_t *r, uint64_t seed);
uint64_t rng_next(rng_t *r);
float rng_uniform(rng_t *r, float lo, float hi);
float rng_normal(rng_t *r);
/* malloc'ed arrays of uniform floats in [lo, hi) */
float *rand_floats(rng_t *r, int64_t n, float lo, float hi);
double *to_double(const float *x, int64_t n);
int32_t *rand_ints(rng_t *r, int64_t n, int32_t lo, int32_t hi); /* [lo, hi) */

/* An output tensor with guard zones on both sides inside the same block,
 * filled with a sentinel bit pattern, to catch out-of-bounds writes. The
 * interior starts as `init` (n floats) or, if init is NULL, a NaN poison so
 * that any element the op fails to write shows up. */
typedef struct guarded {
    ts_tensor base;
    ts_tensor t;
    int64_t n, guard;
} guarded;

ts_status guarded_alloc(guarded *g, ts_device *d, int ndim, const int64_t *shape,
                        const float *init);
/* The same with bf16 storage (init rounded to bf16; 16-bit sentinel and
 * poison); guarded_read widens it to floats. */
ts_status guarded_alloc_bf16(guarded *g, ts_device *d, int ndim, const int64_t *shape,
                             const float *init);
/* The same with f16 storage */
ts_status guarded_alloc_f16(guarded *g, ts_device *d, int ndim, const int64_t *shape, const float *init);
/* The same (bf16) with `guard` elements each side: a view at element `guard` of
 * its block (guard > 0), as the model's bf16 activations are views into
 * larger blocks. */
ts_status guarded_alloc_bf16_at(guarded *g, ts_device *d, int64_t guard, int ndim, const int64_t *shape,
                                const float *init);
/* Read the interior into out (n floats). Returns TS_OK, and *bad_guards is
 * the number of guard elements that changed. */
ts_status guarded_read(const guarded *g, float *out, int64_t *bad_guards);
void guarded_free(guarded *g);

/* Allocate a tensor on d and copy host data (nbytes of it) in. */
ts_status upload(ts_tensor *t, ts_device *d, ts_dtype dtype, int ndim, const int64_t *shape,
                 const void *host);

/* Normalized mean squared error of out against ref over elements where ref
 * is finite; NaN and Inf in ref must be matched exactly in out. Reports a
 * failure (with the worst element) and returns false when nmse > tol. */
bool check_close(const char *what, const float *out, const double *ref, int64_t n, double tol);
double nmse(const float *out, const double *ref, int64_t n);

/* bf16 storage: x rounded to nearest even (NaN stays NaN), and back */
uint16_t bf16_from_float(float x);
float bf16_to_float(uint16_t b);
/* f16 storage likewise (overflow to inf, subnormals; NaN a quiet NaN) */
uint16_t f16_from_float(float x);
float f16_to_float(uint16_t h);

/* A NaN with a payload no arithmetic produces. */
float poison_nan(void);

#endif
