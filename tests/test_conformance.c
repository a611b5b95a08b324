/* Conformance: every op, forward and backward, on every device, against a
 * double-precision host reference, at several shapes including odd ones.
 *
 * Each output is a view inside a larger block whose guard zones hold a
 * sentinel (out-of-bounds writes fail the test), and outputs that an op
 * overwrites start as NaN (unwritten elements fail the test). Accumulating
 * outputs start from random values. Errors are normalized mean squared
 * errors under a per-op bound; NaN and Inf must match the reference. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reference.h"
#include "testutil.h"

/* Per-op NMSE bounds (see the note in the file header). */
#define TOL_EXACT 1e-14   /* data movement and single roundings */
#define TOL_ELEM 1e-11    /* elementwise with transcendentals */
#define TOL_REDUCE 1e-10  /* sums over rows, layernorm, softmax, cross-entropy */
#define TOL_GEMM 1e-10    /* products with K up to a few hundred */
/* bf16 outputs, against the double reference rounded to bf16 as the op
 * rounds its fp32 result: only an fp32 error across a rounding boundary
 * may differ, by one bf16 step, in a few elements (truncating instead of
 * rounding gives about 2e-5) */
#define TOL_BF16_OUT 1e-7
#define ATTENTION_FMT "B=%lld T=%lld C=%lld NH=%lld mask=%lld route=%lld backward=%lld"

typedef struct conf_arg {
    ts_device *dev;
    int64_t p[8];
    uint64_t seed;
} conf_arg;

static conf_arg *arg_new(ts_device *dev, const int64_t *p, int np)
{
    conf_arg *a = calloc(1, sizeof *a);
    a->dev = dev;
    for (int i = 0; i < np; i++) a->p[i] = p[i];
    a->seed = 1234567;
    for (int i = 0; i < np; i++) a->seed = a->seed * 31 + (uint64_t)p[i];
    return a;
}

/* Read a guarded output, check its guards, compare with ref. */
static void expect_output(const char *what, const guarded *g, const double *ref, double tol)
{
    float *out = malloc((size_t)(g->n ? g->n : 1) * sizeof *out);
    int64_t bad = 0;
    ts_status st = guarded_read(g, out, &bad);
    if (st) th_fail(__FILE__, __LINE__, "%s: read failed: %s", what, ts_last_error());
    else {
        EXPECTF(bad == 0, "%s: %lld guard elements around the output were overwritten", what,
                (long long)bad);
        check_close(what, out, ref, g->n, tol);
    }
    free(out);
}

/* A bf16 output element by element, beside expect_output's NMSE: each
 * within one bf16 step of ref, the reference rounded to bf16 (2^-7 of the
 * power of two at or below |ref|: an fp32 error across a rounding boundary
 * moves an element one step, a wrong element more). The floor for values
 * near zero is 2^-14 of the largest |ref| in the element's row of `row`
 * elements (an fp32 result that cancels carries its row's error, not its
 * own), and 2^-126 at least. NaN and inf must match exactly. */
/* Each element of a 16-bit output within one step of its type (bf16: 8
 * significant bits, f16: 11) of the rounded reference, with a floor for
 * values near zero: the smallest normal (f16: its subnormals' step) or
 * 2^-14 of the row's largest. */
static void expect_within_one_step(const char *what, const guarded *g, const double *ref, int64_t row)
{
    bool f16 = g->t.dtype == TS_F16;
    int bits = f16 ? 10 : 7;
    float *out = malloc((size_t)(g->n ? g->n : 1) * sizeof *out);
    int64_t bad = 0, wrong = 0;
    ts_status st = guarded_read(g, out, &bad);
    if (st) {
        th_fail(__FILE__, __LINE__, "%s: read failed: %s", what, ts_last_error());
        free(out);
        return;
    }
    EXPECTF(bad == 0, "%s: %lld guard elements around the output were overwritten", what, (long long)bad);
    if (row < 1) row = 1;
    for (int64_t r0 = 0; r0 < g->n; r0 += row) {
        int64_t r1 = r0 + row < g->n ? r0 + row : g->n;
        double scale = 0.0;
        for (int64_t i = r0; i < r1; i++)
            if (isfinite(ref[i]) && fabs(ref[i]) > scale) scale = fabs(ref[i]);
        double floor_ = fmax(f16 ? ldexp(1, -24) : ldexp(1, -126), scale * 0x1p-14);
        for (int64_t i = r0; i < r1; i++) {
            double allowed = floor_;
            bool ok;
            if (isnan(ref[i])) ok = isnan(out[i]);
            else if (isinf(ref[i])) ok = (double)out[i] == ref[i];
            else {
                if (ref[i] != 0.0) allowed = fmax(allowed, ldexp(1, ilogb(ref[i]) - bits));
                ok = fabs((double)out[i] - ref[i]) <= allowed; /* false for a NaN or inf out */
            }
            if (!ok && wrong++ < 3)
                th_fail(__FILE__, __LINE__, "%s: element %lld is %.9g, want %.9g (one %s step: %.3g)", what,
                        (long long)i, (double)out[i], ref[i], f16 ? "f16" : "bf16", allowed);
        }
    }
    EXPECTF(wrong == 0, "%s: %lld of %lld elements more than one %s step from the rounded reference", what,
            (long long)wrong, (long long)g->n, f16 ? "f16" : "bf16");
    free(out);
}

/* ---- elementwise ---- */

static float special_value(rng_t *r, int i)
{
    static const float specials[] = {INFINITY, -INFINITY, NAN, 0.0f, -0.0f, 1e30f, -1e30f};
    (void)r;
    return specials[i % 7];
}

static float *inputs(rng_t *r, int64_t n, int with_specials)
{
    float *x = rand_floats(r, n, -3.0f, 3.0f);
    if (with_specials)
        for (int64_t i = 0; i < n; i += 5) x[i] = special_value(r, (int)(i / 5));
    return x;
}

static void conf_fill(void *argp)
{
    conf_arg *a = argp;
    int64_t n = a->p[0];
    float value = a->p[1] == 0 ? 3.25f : a->p[1] == 1 ? INFINITY : NAN;
    guarded g;
    REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(n), NULL));
    REQUIRE_OK(ts_fill(&g.t, value));
    double *ref = malloc((size_t)n * sizeof *ref);
    for (int64_t i = 0; i < n; i++) ref[i] = value;
    expect_output("fill", &g, ref, TOL_EXACT);
    free(ref);
    guarded_free(&g);
}

static void conf_copy(void *argp)
{
    conf_arg *a = argp;
    int64_t n = a->p[0];
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = inputs(&r, n, 1);
    double *ref = to_double(x, n);
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    /* from the same device, and from the CPU backend into this device */
    ts_device *sources[2] = {a->dev, cpu};
    for (int s = 0; s < 2; s++) {
        ts_tensor src;
        guarded g;
        REQUIRE_OK(upload(&src, sources[s], TS_F32, TS_SHAPE(n), x));
        REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(n), NULL));
        REQUIRE_OK(ts_tensor_copy(&g.t, &src));
        expect_output(s ? "copy from cpu" : "copy", &g, ref, TOL_EXACT);
        guarded_free(&g);
        ts_tensor_free(&src);
    }
    free(x);
    free(ref);
}

/* p: n, specials, variant (0 add, 1 add in place, 2 scale, 3 gelu fwd, 4 gelu bwd) */
static void conf_elementwise(void *argp)
{
    conf_arg *a = argp;
    int64_t n = a->p[0];
    int variant = (int)a->p[2];
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = inputs(&r, n, (int)a->p[1]);
    float *y = inputs(&r, n, (int)a->p[1]);
    double *dx = to_double(x, n), *dy = to_double(y, n);
    double *ref = malloc((size_t)n * sizeof *ref);
    ts_tensor tx, ty;
    guarded g;
    REQUIRE_OK(upload(&tx, a->dev, TS_F32, TS_SHAPE(n), x));
    REQUIRE_OK(upload(&ty, a->dev, TS_F32, TS_SHAPE(n), y));
    REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(n), variant == 1 ? x : NULL));
    const char *what = "?";
    switch (variant) {
    case 0:
        what = "add";
        REQUIRE_OK(ts_add(&g.t, &tx, &ty));
        for (int64_t i = 0; i < n; i++) ref[i] = (double)(float)(dx[i] + dy[i]);
        break;
    case 1:
        what = "add in place";
        REQUIRE_OK(ts_add(&g.t, &g.t, &ty));
        for (int64_t i = 0; i < n; i++) ref[i] = (double)(float)(dx[i] + dy[i]);
        break;
    case 2:
        what = "scale";
        REQUIRE_OK(ts_scale(&g.t, &tx, -0.375f));
        for (int64_t i = 0; i < n; i++) ref[i] = -0.375 * dx[i];
        break;
    case 3:
        what = "gelu_forward";
        REQUIRE_OK(ts_gelu_forward(&g.t, &tx));
        ref_gelu_forward(ref, dx, n);
        break;
    case 4:
        what = "gelu_backward";
        REQUIRE_OK(ts_gelu_backward(&g.t, &tx, &ty));
        ref_gelu_backward(ref, dx, dy, n);
        break;
    }
    expect_output(what, &g, ref, TOL_ELEM);
    guarded_free(&g);
    ts_tensor_free(&tx);
    ts_tensor_free(&ty);
    free(x), free(y), free(dx), free(dy), free(ref);
}

/* ---- embedding: p = B, T, C, V, vocab_start, with_wpe ---- */

static void conf_embedding(void *argp, int backward)
{
    conf_arg *a = argp;
    int64_t B = a->p[0], T = a->p[1], C = a->p[2], V = a->p[3], vs = a->p[4];
    int with_wpe = (int)a->p[5];
    int64_t N = B * T, P = T + 3;
    rng_t r;
    rng_seed(&r, a->seed);
    /* tokens span beyond the shard on both sides when vs > 0 */
    int32_t *tok = rand_ints(&r, N, 0, (int32_t)(vs + V + (vs ? 5 : 0)));
    float *wte = rand_floats(&r, V * C, -1, 1), *wpe = rand_floats(&r, P * C, -1, 1);
    float *dout = rand_floats(&r, N * C, -1, 1);
    ts_tensor ttok, twte, twpe, tdout;
    REQUIRE_OK(upload(&ttok, a->dev, TS_I32, TS_SHAPE(B, T), tok));
    if (!backward) {
        REQUIRE_OK(upload(&twte, a->dev, TS_F32, TS_SHAPE(V, C), wte));
        REQUIRE_OK(upload(&twpe, a->dev, TS_F32, TS_SHAPE(P, C), wpe));
        guarded g;
        REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(B, T, C), NULL));
        REQUIRE_OK(ts_embedding_forward_shard(&g.t, &ttok, &twte, with_wpe ? &twpe : NULL, vs));
        double *dwte = to_double(wte, V * C), *dwpe = to_double(wpe, P * C);
        double *ref = malloc((size_t)(N * C) * sizeof *ref);
        ref_embedding_forward(ref, tok, dwte, with_wpe ? dwpe : NULL, N, T, C, V, vs);
        expect_output("embedding_forward", &g, ref, TOL_EXACT);
        free(ref), free(dwte), free(dwpe);
        guarded_free(&g);
        ts_tensor_free(&twte);
        ts_tensor_free(&twpe);
    } else {
        REQUIRE_OK(upload(&tdout, a->dev, TS_F32, TS_SHAPE(B, T, C), dout));
        guarded gw, gp;
        REQUIRE_OK(guarded_alloc(&gw, a->dev, TS_SHAPE(V, C), wte)); /* accumulates onto wte */
        REQUIRE_OK(guarded_alloc(&gp, a->dev, TS_SHAPE(P, C), wpe));
        REQUIRE_OK(ts_embedding_backward_shard(&gw.t, with_wpe ? &gp.t : NULL, &tdout, &ttok, vs));
        double *rw = to_double(wte, V * C), *rp = to_double(wpe, P * C), *dd = to_double(dout, N * C);
        ref_embedding_backward(rw, with_wpe ? rp : NULL, dd, tok, N, T, C, V, vs);
        expect_output("embedding_backward dwte", &gw, rw, TOL_REDUCE);
        expect_output("embedding_backward dwpe", &gp, rp, TOL_REDUCE);
        free(rw), free(rp), free(dd);
        guarded_free(&gw);
        guarded_free(&gp);
        ts_tensor_free(&tdout);
    }
    ts_tensor_free(&ttok);
    free(tok), free(wte), free(wpe), free(dout);
}

static void conf_embedding_fwd(void *a) { conf_embedding(a, 0); }
static void conf_embedding_bwd(void *a) { conf_embedding(a, 1); }

/* ---- embedding bag: p = N, K, C, G. Ids span [-2, G + 2) and every
 * third weight is 0: neither kind of entry may add anything, which the
 * forward checks by pointing the weight-0 entries at a row of NaN. Every
 * operand sits at an offset in its buffer (guarded tensors; ids 5
 * elements in), as the classifier's views do. ---- */

static void conf_embedding_bag(void *argp, int backward)
{
    conf_arg *a = argp;
    int64_t N = a->p[0], K = a->p[1], C = a->p[2], G = a->p[3], E = N * K;
    rng_t r;
    rng_seed(&r, a->seed);
    int32_t *ids = rand_ints(&r, E, -2, (int32_t)G + 2);
    float *w = rand_floats(&r, E, -1, 1), *table = rand_floats(&r, G * C, -1, 1);
    float *dout = rand_floats(&r, N * C, -1, 1);
    int32_t poisoned = (int32_t)(G / 2); /* forward: the row every weight-0 entry reads */
    for (int64_t e = 0; e < E; e++) {
        if (e % 3 == 2) w[e] = 0.0f;
        if (!backward && e % 3 == 2) ids[e] = poisoned;
        else if (!backward && ids[e] == poisoned) ids[e] = -1;
    }
    if (!backward)
        for (int64_t c = 0; c < C; c++) table[poisoned * C + c] = NAN;
    double *dw = to_double(w, E), *dt = to_double(table, G * C);
    ts_tensor ids_buf, tids;
    REQUIRE_OK(ts_tensor_alloc(&ids_buf, a->dev, TS_I32, TS_SHAPE(E + 5)));
    REQUIRE_OK(ts_tensor_view(&tids, &ids_buf, 5, TS_SHAPE(N, K)));
    REQUIRE_OK(ts_tensor_write(&tids, ids, (size_t)E * sizeof *ids));
    guarded gw;
    REQUIRE_OK(guarded_alloc(&gw, a->dev, TS_SHAPE(N, K), w));
    if (!backward) {
        guarded gt, g;
        REQUIRE_OK(guarded_alloc(&gt, a->dev, TS_SHAPE(G, C), table));
        REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(N, C), NULL));
        REQUIRE_OK(ts_embedding_bag_forward(&g.t, &tids, &gw.t, &gt.t));
        double *ref = malloc((size_t)(N * C) * sizeof *ref);
        ref_embedding_bag_forward(ref, ids, dw, dt, N, K, C, G);
        expect_output("embedding_bag_forward", &g, ref, TOL_REDUCE);
        free(ref);
        guarded_free(&g);
        guarded_free(&gt);
    } else {
        guarded gd, g;
        REQUIRE_OK(guarded_alloc(&gd, a->dev, TS_SHAPE(N, C), dout));
        REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(G, C), table)); /* accumulates onto table */
        REQUIRE_OK(ts_embedding_bag_backward(&g.t, &gd.t, &tids, &gw.t));
        double *dd = to_double(dout, N * C);
        ref_embedding_bag_backward(dt, dd, ids, dw, N, K, C, G);
        expect_output("embedding_bag_backward dtable", &g, dt, TOL_REDUCE);
        free(dd);
        guarded_free(&g);
        guarded_free(&gd);
    }
    guarded_free(&gw);
    ts_tensor_free(&ids_buf);
    free(ids), free(w), free(table), free(dout), free(dw), free(dt);
}

static void conf_embedding_bag_fwd(void *a) { conf_embedding_bag(a, 0); }
static void conf_embedding_bag_bwd(void *a) { conf_embedding_bag(a, 1); }

/* ---- layernorm: p = N, C ---- */

static double round_to(double x, ts_dtype dt);

/* p = N, C, out_bf16 (the input of a bf16 product, stored in bf16) */
static void conf_layernorm_fwd(void *argp)
{
    conf_arg *a = argp;
    int64_t N = a->p[0], C = a->p[1];
    bool out_bf16 = a->p[2];
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = rand_floats(&r, N * C, -2, 3), *w = rand_floats(&r, C, 0.5f, 1.5f);
    float *b = rand_floats(&r, C, -0.5f, 0.5f);
    ts_tensor tx, tw, tb;
    guarded go, gm, gr;
    REQUIRE_OK(upload(&tx, a->dev, TS_F32, TS_SHAPE(N, C), x));
    REQUIRE_OK(upload(&tw, a->dev, TS_F32, TS_SHAPE(C), w));
    REQUIRE_OK(upload(&tb, a->dev, TS_F32, TS_SHAPE(C), b));
    REQUIRE_OK(out_bf16 ? guarded_alloc_bf16(&go, a->dev, TS_SHAPE(N, C), NULL)
                        : guarded_alloc(&go, a->dev, TS_SHAPE(N, C), NULL));
    REQUIRE_OK(guarded_alloc(&gm, a->dev, TS_SHAPE(N), NULL));
    REQUIRE_OK(guarded_alloc(&gr, a->dev, TS_SHAPE(N), NULL));
    REQUIRE_OK(ts_layernorm_forward(&go.t, &gm.t, &gr.t, &tx, &tw, &tb, 1e-5f));
    double *dx = to_double(x, N * C), *dw = to_double(w, C), *db = to_double(b, C);
    double *ro = malloc((size_t)(N * C) * sizeof *ro), *rm = malloc((size_t)N * sizeof *rm),
           *rr = malloc((size_t)N * sizeof *rr);
    ref_layernorm_forward(ro, rm, rr, dx, dw, db, N, C, 1e-5);
    if (out_bf16)
        for (int64_t i = 0; i < N * C; i++) ro[i] = round_to(ro[i], TS_BF16);
    expect_output(out_bf16 ? "layernorm out in bf16" : "layernorm out", &go, ro, out_bf16 ? TOL_BF16_OUT : TOL_REDUCE);
    if (out_bf16) expect_within_one_step("layernorm out in bf16", &go, ro, C);
    expect_output("layernorm mean", &gm, rm, TOL_REDUCE);
    expect_output("layernorm rstd", &gr, rr, TOL_REDUCE);
    free(x), free(w), free(b), free(dx), free(dw), free(db), free(ro), free(rm), free(rr);
    guarded_free(&go), guarded_free(&gm), guarded_free(&gr);
    ts_tensor_free(&tx), ts_tensor_free(&tw), ts_tensor_free(&tb);
}

static void conf_layernorm_bwd(void *argp)
{
    conf_arg *a = argp;
    int64_t N = a->p[0], C = a->p[1];
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = rand_floats(&r, N * C, -2, 3), *w = rand_floats(&r, C, 0.5f, 1.5f);
    float *b = rand_floats(&r, C, -0.5f, 0.5f), *dout = rand_floats(&r, N * C, -1, 1);
    float *dx0 = rand_floats(&r, N * C, -1, 1), *dw0 = rand_floats(&r, C, -1, 1),
          *db0 = rand_floats(&r, C, -1, 1);
    ts_tensor tx, tw, tb, tdout, tout, tm, tr;
    guarded gdx, gdw, gdb;
    REQUIRE_OK(upload(&tx, a->dev, TS_F32, TS_SHAPE(N, C), x));
    REQUIRE_OK(upload(&tw, a->dev, TS_F32, TS_SHAPE(C), w));
    REQUIRE_OK(upload(&tb, a->dev, TS_F32, TS_SHAPE(C), b));
    REQUIRE_OK(upload(&tdout, a->dev, TS_F32, TS_SHAPE(N, C), dout));
    REQUIRE_OK(ts_tensor_alloc(&tout, a->dev, TS_F32, TS_SHAPE(N, C)));
    REQUIRE_OK(ts_tensor_alloc(&tm, a->dev, TS_F32, TS_SHAPE(N)));
    REQUIRE_OK(ts_tensor_alloc(&tr, a->dev, TS_F32, TS_SHAPE(N)));
    REQUIRE_OK(ts_layernorm_forward(&tout, &tm, &tr, &tx, &tw, &tb, 1e-5f));
    REQUIRE_OK(guarded_alloc(&gdx, a->dev, TS_SHAPE(N, C), dx0));
    REQUIRE_OK(guarded_alloc(&gdw, a->dev, TS_SHAPE(C), dw0));
    REQUIRE_OK(guarded_alloc(&gdb, a->dev, TS_SHAPE(C), db0));
    REQUIRE_OK(ts_layernorm_backward(&gdx.t, &gdw.t, &gdb.t, &tdout, &tx, &tw, &tm, &tr));
    double *rdx = to_double(dx0, N * C), *rdw = to_double(dw0, C), *rdb = to_double(db0, C);
    double *ddx = to_double(x, N * C), *ddw = to_double(w, C), *ddo = to_double(dout, N * C);
    ref_layernorm_backward(rdx, rdw, rdb, ddo, ddx, ddw, N, C, 1e-5);
    expect_output("layernorm dinp", &gdx, rdx, TOL_REDUCE);
    expect_output("layernorm dweight", &gdw, rdw, TOL_REDUCE);
    expect_output("layernorm dbias", &gdb, rdb, TOL_REDUCE);
    free(x), free(w), free(b), free(dout), free(dx0), free(dw0), free(db0);
    free(rdx), free(rdw), free(rdb), free(ddx), free(ddw), free(ddo);
    guarded_free(&gdx), guarded_free(&gdw), guarded_free(&gdb);
    ts_tensor_free(&tx), ts_tensor_free(&tw), ts_tensor_free(&tb), ts_tensor_free(&tdout);
    ts_tensor_free(&tout), ts_tensor_free(&tm), ts_tensor_free(&tr);
}

/* ---- matmul: p = batch, M, N, K, trans_a, trans_b, beta*4, b_shared ---- */

static void matmul_case(conf_arg *a, bool reference)
{
    int64_t batch = a->p[0], M = a->p[1], N = a->p[2], K = a->p[3];
    bool ta = a->p[4], tb = a->p[5], shared = a->p[7];
    float alpha = 0.75f, beta = (float)a->p[6] / 4.0f;
    rng_t r;
    rng_seed(&r, a->seed);
    int64_t nb = shared ? K * N : batch * K * N;
    float *A = rand_floats(&r, batch * M * K, -1, 1), *B = rand_floats(&r, nb, -1, 1);
    float *C0 = rand_floats(&r, batch * M * N, -1, 1);
    ts_tensor tA, tB;
    guarded gC;
    int three = batch > 1 || a->p[7] == 2;
    if (three) {
        REQUIRE_OK(upload(&tA, a->dev, TS_F32, TS_SHAPE(batch, ta ? K : M, ta ? M : K), A));
        if (shared) REQUIRE_OK(upload(&tB, a->dev, TS_F32, TS_SHAPE(tb ? N : K, tb ? K : N), B));
        else REQUIRE_OK(upload(&tB, a->dev, TS_F32, TS_SHAPE(batch, tb ? N : K, tb ? K : N), B));
        /* beta == 0: C starts as NaN and must not be read */
        REQUIRE_OK(guarded_alloc(&gC, a->dev, TS_SHAPE(batch, M, N), beta != 0.0f ? C0 : NULL));
    } else {
        REQUIRE_OK(upload(&tA, a->dev, TS_F32, TS_SHAPE(ta ? K : M, ta ? M : K), A));
        REQUIRE_OK(upload(&tB, a->dev, TS_F32, TS_SHAPE(tb ? N : K, tb ? K : N), B));
        REQUIRE_OK(guarded_alloc(&gC, a->dev, TS_SHAPE(M, N), beta != 0.0f ? C0 : NULL));
    }
    if (reference && !ts_device_get_info(a->dev)->reference_blas[0]) {
        EXPECTF(ts_matmul_reference(&gC.t, &tA, &tB, ta, tb, alpha, beta) == TS_ERR_UNSUPPORTED,
                "a device without a reference BLAS must refuse ts_matmul_reference");
        guarded_free(&gC);
        ts_tensor_free(&tA), ts_tensor_free(&tB);
        free(A), free(B), free(C0);
        SKIP("%s has no reference BLAS library", ts_device_get_info(a->dev)->id);
    }
    if (reference) REQUIRE_OK(ts_matmul_reference(&gC.t, &tA, &tB, ta, tb, alpha, beta));
    else REQUIRE_OK(ts_matmul(&gC.t, &tA, &tB, ta, tb, alpha, beta));
    double *dA = to_double(A, batch * M * K), *dB = to_double(B, nb),
           *ref = to_double(C0, batch * M * N);
    ref_gemm(ref, dA, dB, NULL, batch, M, N, K, ta, tb, alpha, beta, shared ? 0 : K * N);
    expect_output(reference ? "matmul_reference" : "matmul", &gC, ref, TOL_GEMM);
    free(A), free(B), free(C0), free(dA), free(dB), free(ref);
    guarded_free(&gC);
    ts_tensor_free(&tA), ts_tensor_free(&tB);
}

static void conf_matmul(void *argp) { matmul_case(argp, false); }

/* ---- matmul with bf16/fp16 inputs: p = dtype, batch, M, N, K, trans_a,
 * trans_b, beta*4. The reference rounds the inputs to the dtype in double
 * (frexp/ldexp: an implementation independent of the library's bit tricks)
 * and multiplies exactly, so the bound is fp32 accumulation's, not the
 * dtype's: wrong rounding fails it. A second check against the unrounded
 * product holds the error to the dtype's size. ---- */

/* Products of dtype on dev from here on, or skip the test where the device
 * has none (the caller sets TS_F32 back). */
#define USE_MATMUL_DTYPE(dev, dt)                                                                  \
    do {                                                                                       \
        ts_status set_ = ts_device_set_matmul_dtype(dev, dt);                                  \
        if (set_ == TS_ERR_UNSUPPORTED)                                                        \
            SKIP("%s has no %s products", ts_device_get_info(dev)->id, ts_dtype_name(dt));      \
        REQUIRE_OK(set_);                                                                      \
    } while (0)

static double round_to(double x, ts_dtype dt)
{
    if (!isfinite(x) || x == 0) return x;
    int bits = dt == TS_BF16 ? 8 : 11, e;
    if (dt == TS_F16 && fabs(x) < ldexp(1, -14)) /* half subnormals: steps of 2^-24 */
        return nearbyint(ldexp(x, 24)) * ldexp(1, -24);
    if (dt == TS_BF16 && fabs(x) < ldexp(1, -126)) /* bf16 subnormals: steps of 2^-133 */
        return nearbyint(ldexp(x, 133)) * ldexp(1, -133);
    double m = frexp(x, &e); /* |m| in [0.5, 1) */
    double r = ldexp(nearbyint(ldexp(m, bits)), e - bits);
    if (dt == TS_F16 && fabs(r) > 65504) return copysign(INFINITY, x);
    if (dt == TS_BF16 && fabs(r) >= ldexp(1, 128)) return copysign(INFINITY, x); /* past bf16's (and fp32's) largest */
    return r;
}

/* The rounding itself, value by value, where it is hardest: ties, fp16's
 * subnormals and overflow, bf16's overflow, NaN and inf. A column of these
 * times [1] (M x 1 by 1 x 1) must give each value rounded, exactly. */
static void conf_lowp_rounding(void *argp)
{
    conf_arg *a = argp;
    ts_dtype dt = (ts_dtype)a->p[0];
    static const float v[] = {
        0.0f, -0.0f, 1.0f, NAN, INFINITY, -INFINITY,
        1.0f + 0x1p-11f, 1.0f + 0x3p-11f, 1.0f + 0x1p-8f, 1.0f + 0x3p-8f, 1.0f + 0x1p-8f + 0x1p-20f, /* ties */
        257.0f, 2049.0f, 12345.678f, -0.1f, 1e-30f,
        65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e5f, 3e38f, 3.4028235e38f, /* overflow */
        0x1p-14f, 0x1p-15f, 4e-5f, -7.5e-8f, 0x1p-24f, 0x1p-25f, 0x3p-26f, 4.5e-8f, 1e-8f, /* fp16 subnormals */
    };
    enum { M = sizeof v / sizeof v[0] };
    USE_MATMUL_DTYPE(a->dev, dt);
    const float one = 1.0f;
    ts_tensor tA, tB;
    guarded gC;
    REQUIRE_OK(upload(&tA, a->dev, TS_F32, TS_SHAPE(M, 1), v));
    REQUIRE_OK(upload(&tB, a->dev, TS_F32, TS_SHAPE(1, 1), &one));
    REQUIRE_OK(guarded_alloc(&gC, a->dev, TS_SHAPE(M, 1), NULL));
    ts_status st = ts_matmul(&gC.t, &tA, &tB, false, false, 1.0f, 0.0f);
    REQUIRE_OK(ts_device_set_matmul_dtype(a->dev, TS_F32));
    REQUIRE_OK(st);
    float out[M];
    int64_t bad = 0;
    REQUIRE_OK(guarded_read(&gC, out, &bad));
    EXPECTF(bad == 0, "%lld guard elements overwritten", (long long)bad);
    for (int i = 0; i < M; i++) {
        float want = (float)round_to(v[i], dt);
        int same = isnan(want) ? isnan(out[i]) : want == out[i]; /* (-0 + 0 sums to +0) */
        EXPECTF(same, "%s(%.9g) gave %.9g, want %.9g", ts_dtype_name(dt), (double)v[i], (double)out[i],
                (double)want);
    }
    guarded_free(&gC);
    ts_tensor_free(&tA), ts_tensor_free(&tB);
}

static void conf_matmul_lowp(void *argp)
{
    conf_arg *a = argp;
    ts_dtype dt = (ts_dtype)a->p[0];
    int64_t batch = a->p[1], M = a->p[2], N = a->p[3], K = a->p[4];
    bool ta = a->p[5], tb = a->p[6];
    float alpha = 0.75f, beta = (float)a->p[7] / 4.0f;
    USE_MATMUL_DTYPE(a->dev, dt);
    rng_t r;
    rng_seed(&r, a->seed);
    float *A = rand_floats(&r, batch * M * K, -3, 3), *B = rand_floats(&r, batch * K * N, -3, 3);
    float *C0 = rand_floats(&r, batch * M * N, -1, 1);
    ts_tensor tA, tB;
    guarded gC;
    REQUIRE_OK(upload(&tA, a->dev, TS_F32, TS_SHAPE(batch, ta ? K : M, ta ? M : K), A));
    REQUIRE_OK(upload(&tB, a->dev, TS_F32, TS_SHAPE(batch, tb ? N : K, tb ? K : N), B));
    REQUIRE_OK(guarded_alloc(&gC, a->dev, TS_SHAPE(batch, M, N), beta != 0.0f ? C0 : NULL));
    ts_status st = ts_matmul(&gC.t, &tA, &tB, ta, tb, alpha, beta);
    REQUIRE_OK(ts_device_set_matmul_dtype(a->dev, TS_F32));
    REQUIRE_OK(st);
    double *dA = to_double(A, batch * M * K), *dB = to_double(B, batch * K * N);
    double *exact = to_double(C0, batch * M * N), *ref = to_double(C0, batch * M * N);
    ref_gemm(exact, dA, dB, NULL, batch, M, N, K, ta, tb, alpha, beta, K * N);
    for (int64_t i = 0; i < batch * M * K; i++) dA[i] = round_to(dA[i], dt);
    for (int64_t i = 0; i < batch * K * N; i++) dB[i] = round_to(dB[i], dt);
    ref_gemm(ref, dA, dB, NULL, batch, M, N, K, ta, tb, alpha, beta, K * N);
    expect_output(dt == TS_BF16 ? "matmul bf16 (rounded inputs)" : "matmul fp16 (rounded inputs)", &gC, ref,
                  TOL_GEMM);
    /* against the fp32 product: about the dtype's unit roundoff squared */
    expect_output("matmul low precision vs exact", &gC, exact, dt == TS_BF16 ? 1e-4 : 2e-6);
    free(A), free(B), free(C0), free(dA), free(dB), free(ref), free(exact);
    guarded_free(&gC);
    ts_tensor_free(&tA), ts_tensor_free(&tB);
}

/* A device may keep low-precision copies of a product's operands (the CPU
 * backend keeps its weights' bf16 copy between forward and backward): every
 * way of changing the weights must show in the next product. p = dtype, N,
 * C, OC. */
static void conf_lowp_sees_writes(void *argp)
{
    conf_arg *a = argp;
    ts_dtype dt = (ts_dtype)a->p[0];
    int64_t N = a->p[1], C = a->p[2], OC = a->p[3];
    USE_MATMUL_DTYPE(a->dev, dt);
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = rand_floats(&r, N * C, -2, 2), *w = rand_floats(&r, OC * C, -1, 1);
    ts_tensor tx, tw, tsrc;
    guarded go;
    REQUIRE_OK(upload(&tx, a->dev, TS_F32, TS_SHAPE(N, C), x));
    REQUIRE_OK(upload(&tw, a->dev, TS_F32, TS_SHAPE(OC, C), w));
    REQUIRE_OK(guarded_alloc(&go, a->dev, TS_SHAPE(N, OC), NULL));
    double *dx = to_double(x, N * C), *dw = malloc((size_t)(OC * C) * sizeof *dw);
    double *ref = malloc((size_t)(N * OC) * sizeof *ref);
    for (int64_t i = 0; i < N * C; i++) dx[i] = round_to(dx[i], dt);
    static const char *const how[] = {"first product", "ts_tensor_write", "an op (scale)", "ts_tensor_copy",
                                      "a host pointer"};
    ts_status st = TS_OK;
    for (int k = 0; k < 5 && !st; k++) {
        float *nw = rand_floats(&r, OC * C, -1, 1);
        if (k == 1) st = ts_tensor_write(&tw, nw, (size_t)(OC * C) * sizeof *nw);
        if (k == 2) { /* w = 0.5 * w */
            st = ts_scale(&tw, &tw, 0.5f);
            for (int64_t i = 0; i < OC * C; i++) w[i] *= 0.5f;
        }
        if (k == 3 && !(st = upload(&tsrc, a->dev, TS_F32, TS_SHAPE(OC, C), nw))) {
            st = ts_tensor_copy(&tw, &tsrc);
            ts_tensor_free(&tsrc);
        }
        float *hp = k == 4 ? ts_tensor_host_ptr(&tw) : NULL;
        if (hp) memcpy(hp, nw, (size_t)(OC * C) * sizeof *nw);
        if (k == 1 || k == 3 || (k == 4 && hp)) memcpy(w, nw, (size_t)(OC * C) * sizeof *nw);
        free(nw);
        if (!st) st = ts_linear_forward(&go.t, &tx, &tw, NULL);
        if (st) break;
        for (int64_t i = 0; i < OC * C; i++) dw[i] = round_to(w[i], dt);
        ref_gemm(ref, dx, dw, NULL, 1, N, OC, C, false, true, 1.0, 0.0, 0);
        char what[96];
        snprintf(what, sizeof what, "product after %s", how[k]);
        expect_output(what, &go, ref, TOL_GEMM);
    }
    REQUIRE_OK(ts_device_set_matmul_dtype(a->dev, TS_F32));
    REQUIRE_OK(st);
    free(x), free(w), free(dx), free(dw), free(ref);
    guarded_free(&go);
    ts_tensor_free(&tx), ts_tensor_free(&tw);
}

/* Optimizer steps over a flat parameter buffer holding two weight matrices
 * (after a gap, as a model's biases and layernorm gains sit between them)
 * rewrite the bf16 copies the products keep: after each step the products
 * use the new weights rounded, whether the optimizer refreshed the copies
 * (Adam, AdamW on the CPU backend) or dropped them (SGD; every step on
 * OpenCL), and the parameters equal, bit for bit, those of the same steps
 * on a buffer no product reads (no copies: one unsplit pass). p = dtype,
 * N, C, OC. */
static void conf_lowp_sees_optimizer(void *argp)
{
    conf_arg *a = argp;
    ts_dtype dt = (ts_dtype)a->p[0];
    int64_t N = a->p[1], C = a->p[2], OC = a->p[3], gap = 5, np = gap + 2 * OC * C + 7;
    USE_MATMUL_DTYPE(a->dev, dt);
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = rand_floats(&r, N * C, -2, 2), *p = rand_floats(&r, np, -1, 1), *g = rand_floats(&r, np, -1, 1);
    float *zero = calloc((size_t)np, sizeof *zero), *p2 = malloc((size_t)np * sizeof *p2);
    ts_tensor tx, tp, tg, tm, tv, w[2], tp2, tm2, tv2; /* tp2: the same steps, no product reads it */
    guarded go[2];
    REQUIRE_OK(upload(&tx, a->dev, TS_F32, TS_SHAPE(N, C), x));
    REQUIRE_OK(upload(&tp, a->dev, TS_F32, TS_SHAPE(np), p));
    REQUIRE_OK(upload(&tg, a->dev, TS_F32, TS_SHAPE(np), g));
    REQUIRE_OK(upload(&tm, a->dev, TS_F32, TS_SHAPE(np), zero));
    REQUIRE_OK(upload(&tv, a->dev, TS_F32, TS_SHAPE(np), zero));
    REQUIRE_OK(upload(&tp2, a->dev, TS_F32, TS_SHAPE(np), p));
    REQUIRE_OK(upload(&tm2, a->dev, TS_F32, TS_SHAPE(np), zero));
    REQUIRE_OK(upload(&tv2, a->dev, TS_F32, TS_SHAPE(np), zero));
    for (int l = 0; l < 2; l++) {
        REQUIRE_OK(ts_tensor_view(&w[l], &tp, gap + l * OC * C, TS_SHAPE(OC, C)));
        REQUIRE_OK(guarded_alloc(&go[l], a->dev, TS_SHAPE(N, OC), NULL));
    }
    double *dx = to_double(x, N * C), *dw = malloc((size_t)(OC * C) * sizeof *dw);
    double *ref = malloc((size_t)(N * OC) * sizeof *ref);
    for (int64_t i = 0; i < N * C; i++) dx[i] = round_to(dx[i], dt);
    static const char *const how[] = {"no step", "AdamW step 1", "AdamW step 2", "SGD step", "Adam step 3"};
    static const ts_optim_kind kinds[] = {0, TS_OPTIM_ADAMW, TS_OPTIM_ADAMW, TS_OPTIM_SGD, TS_OPTIM_ADAM};
    ts_status st = TS_OK;
    for (int k = 0; k < 5 && !st; k++) {
        if (k) {
            ts_optim_params op = {.kind = kinds[k], .lr = 0.05f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                                  .weight_decay = 0.1f, .grad_scale = 1.0f, .step = k < 3 ? k : 3};
            st = ts_optimizer_update(&tp, &tg, &tm, &tv, &op);
            if (!st) st = ts_optimizer_update(&tp2, &tg, &tm2, &tv2, &op);
        }
        if (!st) st = ts_tensor_read(&tp, p, (size_t)np * sizeof *p);
        if (!st) st = ts_tensor_read(&tp2, p2, (size_t)np * sizeof *p2);
        /* the update itself, gaps and tail included, whatever copies it refreshed */
        int64_t differ = 0;
        for (int64_t i = 0; i < np && !st; i++) differ += memcmp(&p[i], &p2[i], sizeof *p) != 0;
        EXPECTF(differ == 0, "after %s, %lld of %lld parameters differ from the same step without kept copies",
                how[k], (long long)differ, (long long)np);
        for (int l = 0; l < 2 && !st; l++) {
            if ((st = ts_linear_forward(&go[l].t, &tx, &w[l], NULL))) break;
            for (int64_t i = 0; i < OC * C; i++) dw[i] = round_to(p[gap + l * OC * C + i], dt);
            ref_gemm(ref, dx, dw, NULL, 1, N, OC, C, false, true, 1.0, 0.0, 0);
            char what[96];
            snprintf(what, sizeof what, "weights %d after %s", l, how[k]);
            expect_output(what, &go[l], ref, TOL_GEMM);
        }
    }
    REQUIRE_OK(ts_device_set_matmul_dtype(a->dev, TS_F32));
    REQUIRE_OK(st);
    free(x), free(p), free(p2), free(g), free(zero), free(dx), free(dw), free(ref);
    for (int l = 0; l < 2; l++) guarded_free(&go[l]);
    ts_tensor_free(&tx), ts_tensor_free(&tp), ts_tensor_free(&tg), ts_tensor_free(&tm), ts_tensor_free(&tv);
    ts_tensor_free(&tp2), ts_tensor_free(&tm2), ts_tensor_free(&tv2);
}

static void conf_matmul_reference(void *argp) { matmul_case(argp, true); }

/* ---- bf16 activations (stored in 16 bits, computed in fp32) ---- */

/* x as a bf16 tensor holds it */
static void host_bf16(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) x[i] = bf16_to_float(bf16_from_float(x[i]));
}


static void upload_act(ts_tensor *t, ts_device *d, bool bf16, int ndim, const int64_t *shape, const float *x)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    if (!bf16) {
        REQUIRE_OK(upload(t, d, TS_F32, ndim, shape, x));
        return;
    }
    uint16_t *b = malloc((size_t)n * sizeof *b);
    for (int64_t i = 0; i < n; i++) b[i] = bf16_from_float(x[i]);
    ts_status st = upload(t, d, TS_BF16, ndim, shape, b);
    free(b);
    REQUIRE_OK(st);
}

/* A bf16 output at element off (> 0) of a larger block, off sentinel
 * elements each side; else at the default guard's offset. */
static ts_status out_bf16_at(guarded *g, ts_device *d, int64_t off, int ndim, const int64_t *shape)
{
    return off ? guarded_alloc_bf16_at(g, d, off, ndim, shape, NULL) : guarded_alloc_bf16(g, d, ndim, shape, NULL);
}

/* A bf16 input at element off of a larger block (guarded_alloc_bf16_at's,
 * init x) after the op: it and the off elements either side of it unchanged. */
static void expect_input_intact(const char *what, const guarded *g, const float *x)
{
    float *got = malloc((size_t)(g->n ? g->n : 1) * sizeof *got);
    int64_t bad = 0, changed = 0;
    ts_status st = guarded_read(g, got, &bad);
    if (st) th_fail(__FILE__, __LINE__, "%s: read failed: %s", what, ts_last_error());
    else {
        for (int64_t i = 0; i < g->n; i++) changed += bf16_from_float(got[i]) != bf16_from_float(x[i]);
        EXPECTF(bad == 0, "%s: %lld elements around the input (a view at element %lld) were written", what,
                (long long)bad, (long long)g->guard);
        EXPECTF(changed == 0, "%s: the op wrote %lld of its input's %lld elements", what, (long long)changed,
                (long long)g->n);
    }
    free(got);
}

/* out = in between fp32 and bf16: every value exactly as round_to gives it
 * (ties to even, overflow to inf, NaN kept: NaNs whose payload would carry
 * a plain rounding into inf or into the sign keep their sign and stay NaN),
 * p = n, out_bf16, in_bf16, offset (bf16 input and output as views at that
 * element of larger blocks) */
static void conf_cast(void *argp)
{
    conf_arg *a = argp;
    int64_t n = a->p[0], off = a->p[3];
    bool out_bf16 = a->p[1], in_bf16 = a->p[2];
    static const float hard[] = {0.0f, -0.0f, NAN, INFINITY, -INFINITY, 1.0f + 0x1p-8f, 1.0f + 0x3p-8f,
                                 1.0f + 0x1p-8f + 0x1p-20f, -(1.0f + 0x3p-8f), 3e38f, 3.4028235e38f, 1e-40f};
    /* after them: NaNs that adding the rounding bias turns into +inf (the
     * smallest payload), -inf, -0 (carry into the sign) and +0 (out of it) */
    static const uint32_t nan_bits[] = {0x7f800001u, 0xff800001u, 0x7fffffffu, 0xffffffffu};
    enum { NHARD = sizeof hard / sizeof *hard, NNAN = sizeof nan_bits / sizeof *nan_bits };
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = inputs(&r, n, 1);
    for (int64_t i = 0; i < n && i < NHARD; i++) x[i] = hard[i];
    for (int64_t i = NHARD; i < n && i < NHARD + NNAN; i++) memcpy(&x[i], &nan_bits[i - NHARD], sizeof x[i]);
    ts_tensor tx = {0};
    guarded g, gx;
    if (in_bf16 && off) REQUIRE_OK(guarded_alloc_bf16_at(&gx, a->dev, off, TS_SHAPE(n), x));
    else upload_act(&tx, a->dev, in_bf16, TS_SHAPE(n), x);
    REQUIRE_OK(out_bf16 ? out_bf16_at(&g, a->dev, off, TS_SHAPE(n)) : guarded_alloc(&g, a->dev, TS_SHAPE(n), NULL));
    REQUIRE_OK(ts_cast(&g.t, in_bf16 && off ? &gx.t : &tx));
    float *out = malloc((size_t)n * sizeof *out);
    int64_t bad = 0, wrong = 0;
    REQUIRE_OK(guarded_read(&g, out, &bad));
    EXPECTF(bad == 0, "%lld guard elements overwritten", (long long)bad);
    for (int64_t i = 0; i < n; i++) {
        float want = out_bf16 || in_bf16 ? (float)round_to(x[i], TS_BF16) : x[i];
        /* a NaN (bf16: exponent all ones, mantissa nonzero) of x's sign */
        int same = isnan(x[i]) ? isnan(out[i]) && signbit(out[i]) == signbit(x[i])
                               : want == out[i] && signbit(want) == signbit(out[i]);
        uint32_t xb, ob;
        memcpy(&xb, &x[i], 4), memcpy(&ob, &out[i], 4);
        if (!same && wrong++ < 5)
            th_fail(__FILE__, __LINE__, "cast of %.9g (0x%08x) gave %.9g (0x%08x), want %.9g", (double)x[i],
                    (unsigned)xb, (double)out[i], (unsigned)ob, (double)want);
    }
    EXPECTF(wrong == 0, "%lld of %lld values cast wrong", (long long)wrong, (long long)n);
    if (in_bf16 && off) {
        expect_input_intact("cast's bf16 input", &gx, x);
        guarded_free(&gx);
    }
    free(x), free(out);
    guarded_free(&g);
    ts_tensor_free(&tx);
}

/* GELU on bf16 activations: p = n, specials, out_bf16, inp_bf16, backward
 * (backward: the gradient dinp is fp32, inp bf16 or not; without specials,
 * as gelu_backward above: x^3 overflows at 1e30 in fp32), offset (the bf16
 * input and output as views at that element of larger blocks) */
static void conf_gelu_bf16(void *argp)
{
    conf_arg *a = argp;
    int64_t n = a->p[0], off = a->p[5];
    bool out_bf16 = a->p[2] && !a->p[4], inp_bf16 = a->p[3], backward = a->p[4];
    bool x_at = inp_bf16 && off;
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = inputs(&r, n, (int)a->p[1]), *y = inputs(&r, n, 0);
    if (inp_bf16) host_bf16(x, n);
    double *dx = to_double(x, n), *dy = to_double(y, n), *ref = malloc((size_t)n * sizeof *ref);
    ts_tensor tx = {0}, ty;
    guarded g, gx;
    if (x_at) REQUIRE_OK(guarded_alloc_bf16_at(&gx, a->dev, off, TS_SHAPE(n), x));
    else upload_act(&tx, a->dev, inp_bf16, TS_SHAPE(n), x);
    REQUIRE_OK(upload(&ty, a->dev, TS_F32, TS_SHAPE(n), y));
    REQUIRE_OK(out_bf16 ? out_bf16_at(&g, a->dev, off, TS_SHAPE(n)) : guarded_alloc(&g, a->dev, TS_SHAPE(n), NULL));
    if (backward) {
        REQUIRE_OK(ts_gelu_backward(&g.t, x_at ? &gx.t : &tx, &ty));
        ref_gelu_backward(ref, dx, dy, n);
    } else {
        REQUIRE_OK(ts_gelu_forward(&g.t, x_at ? &gx.t : &tx));
        ref_gelu_forward(ref, dx, n);
    }
    if (out_bf16)
        for (int64_t i = 0; i < n; i++) ref[i] = round_to(ref[i], TS_BF16);
    expect_output(backward ? "gelu_backward, bf16 input" : "gelu_forward, bf16 storage", &g, ref,
                  out_bf16 ? TOL_BF16_OUT : TOL_ELEM);
    if (out_bf16) expect_within_one_step("gelu_forward, bf16 storage", &g, ref, 1);
    if (x_at) {
        expect_input_intact(backward ? "gelu_backward's bf16 input" : "gelu_forward's bf16 input", &gx, x);
        guarded_free(&gx);
    }
    guarded_free(&g);
    ts_tensor_free(&tx), ts_tensor_free(&ty);
    free(x), free(y), free(dx), free(dy), free(ref);
}

/* The device's matmul dtype reaches linear layers, forward and backward,
 * with a bias and accumulation into dw; and a linear layer reads and
 * writes bf16 activations (the MLP's hidden layer under --dtype bf16) in
 * any matmul dtype: p = dtype, N, C, OC, inp_bf16, out_bf16, dout_bf16
 * (the head's dlogits; with a bias gradient too), offset (the bf16 inp,
 * out and dout as views at that element of larger blocks, as the model's
 * activations are). N > OC with 2*N*C*OC >= 4e6: the CPU's oneDNN product
 * splits the rows of C among threads. */
static void conf_linear_bf16_acts(void *argp)
{
    conf_arg *a = argp;
    ts_dtype dt = (ts_dtype)a->p[0];
    int64_t N = a->p[1], C = a->p[2], OC = a->p[3], off = a->p[7];
    bool inp_bf16 = a->p[4], out_bf16 = a->p[5], dout_bf16 = a->p[6];
    bool x_at = inp_bf16 && off, dout_at = dout_bf16 && off;
    USE_MATMUL_DTYPE(a->dev, dt);
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = rand_floats(&r, N * C, -2, 2), *w = rand_floats(&r, OC * C, -1, 1), *b = rand_floats(&r, OC, -1, 1);
    float *dout = rand_floats(&r, N * OC, -1, 1), *dw0 = rand_floats(&r, OC * C, -1, 1);
    float *db0 = rand_floats(&r, OC, -1, 1);
    if (inp_bf16) host_bf16(x, N * C);
    if (dout_bf16) host_bf16(dout, N * OC);
    ts_tensor tx, tx2 = {0}, tw, tb, tdout, tdout1 = {0};
    guarded go, gdx, gdw, gdb, gx, gdout;
    if (x_at) {
        REQUIRE_OK(guarded_alloc_bf16_at(&gx, a->dev, off, TS_SHAPE(N, C), x));
        tx = gx.t;
    } else {
        upload_act(&tx2, a->dev, inp_bf16, TS_SHAPE(N * C), x);
        REQUIRE_OK(ts_tensor_reshape(&tx, &tx2, TS_SHAPE(N, C)));
    }
    REQUIRE_OK(upload(&tw, a->dev, TS_F32, TS_SHAPE(OC, C), w));
    REQUIRE_OK(upload(&tb, a->dev, TS_F32, TS_SHAPE(OC), b));
    if (dout_at) {
        REQUIRE_OK(guarded_alloc_bf16_at(&gdout, a->dev, off, TS_SHAPE(N, OC), dout));
        tdout = gdout.t;
    } else {
        upload_act(&tdout1, a->dev, dout_bf16, TS_SHAPE(N * OC), dout);
        REQUIRE_OK(ts_tensor_reshape(&tdout, &tdout1, TS_SHAPE(N, OC)));
    }
    REQUIRE_OK(guarded_alloc(&gdb, a->dev, TS_SHAPE(OC), db0));
    REQUIRE_OK(out_bf16 ? out_bf16_at(&go, a->dev, off, TS_SHAPE(N, OC))
                        : guarded_alloc(&go, a->dev, TS_SHAPE(N, OC), NULL));
    REQUIRE_OK(guarded_alloc(&gdx, a->dev, TS_SHAPE(N, C), NULL));
    REQUIRE_OK(guarded_alloc(&gdw, a->dev, TS_SHAPE(OC, C), dw0));
    /* OpenCL devices read and write bf16 activations in their products on
     * every route (no fp32 copies of them): a GPU's too */
    if (!strncmp(ts_device_get_info(a->dev)->id, "opencl", 6))
        EXPECTF(ts_linear_takes_bf16(a->dev), "%s: a product's bf16 tensors go to fp32 copies", ts_device_get_info(a->dev)->id);
    ts_status st = ts_linear_forward(&go.t, &tx, &tw, &tb);
    if (!st) st = ts_linear_backward(&gdx.t, &gdw.t, dout_bf16 ? &gdb.t : NULL, &tdout, &tx, &tw);
    REQUIRE_OK(ts_device_set_matmul_dtype(a->dev, TS_F32));
    REQUIRE_OK(st);
    double *dx = to_double(x, N * C), *dw = to_double(w, OC * C), *db = to_double(b, OC);
    double *dd = to_double(dout, N * OC), *ro = malloc((size_t)(N * OC) * sizeof *ro);
    double *rdx = malloc((size_t)(N * C) * sizeof *rdx), *rdw = to_double(dw0, OC * C), *rdb = to_double(db0, OC);
    if (dout_bf16) ref_sum_rows(rdb, dd, N, OC, true); /* from the (bf16) values the op holds */
    if (dt != TS_F32) {
        for (int64_t i = 0; i < N * C; i++) dx[i] = round_to(dx[i], dt);
        for (int64_t i = 0; i < OC * C; i++) dw[i] = round_to(dw[i], dt);
        for (int64_t i = 0; i < N * OC; i++) dd[i] = round_to(dd[i], dt);
    }
    ref_gemm(ro, dx, dw, db, 1, N, OC, C, false, true, 1.0, 0.0, 0);
    ref_gemm(rdx, dd, dw, NULL, 1, N, C, OC, false, false, 1.0, 0.0, 0);
    ref_gemm(rdw, dd, dx, NULL, 1, OC, C, N, true, false, 1.0, 1.0, 0);
    if (out_bf16)
        for (int64_t i = 0; i < N * OC; i++) ro[i] = round_to(ro[i], TS_BF16);
    expect_output("linear_forward, bf16 activations", &go, ro, out_bf16 ? TOL_BF16_OUT : TOL_GEMM);
    if (out_bf16) expect_within_one_step("linear_forward, bf16 activations", &go, ro, OC);
    expect_output("linear_backward dinp, bf16 activations", &gdx, rdx, TOL_GEMM);
    expect_output("linear_backward dweight, bf16 activations", &gdw, rdw, TOL_GEMM);
    if (dout_bf16) expect_output("linear_backward dbias from a bf16 dout", &gdb, rdb, TOL_REDUCE);
    if (x_at) {
        expect_input_intact("linear's bf16 inp", &gx, x);
        guarded_free(&gx);
    }
    if (dout_at) {
        expect_input_intact("linear_backward's bf16 dout", &gdout, dout);
        guarded_free(&gdout);
    }
    free(x), free(w), free(b), free(dout), free(dw0), free(db0);
    free(dx), free(dw), free(db), free(dd), free(ro), free(rdx), free(rdw), free(rdb);
    guarded_free(&go), guarded_free(&gdx), guarded_free(&gdw), guarded_free(&gdb);
    ts_tensor_free(&tx2), ts_tensor_free(&tw), ts_tensor_free(&tb), ts_tensor_free(&tdout1);
}



/* ---- linear: p = N, C, OC, bias ---- */

static void conf_linear_fwd(void *argp)
{
    conf_arg *a = argp;
    int64_t N = a->p[0], C = a->p[1], OC = a->p[2];
    int has_bias = (int)a->p[3];
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = rand_floats(&r, N * C, -1, 1), *w = rand_floats(&r, OC * C, -1, 1);
    float *b = rand_floats(&r, OC, -1, 1);
    ts_tensor tx, tw, tb;
    guarded go;
    REQUIRE_OK(upload(&tx, a->dev, TS_F32, TS_SHAPE(N, C), x));
    REQUIRE_OK(upload(&tw, a->dev, TS_F32, TS_SHAPE(OC, C), w));
    REQUIRE_OK(upload(&tb, a->dev, TS_F32, TS_SHAPE(OC), b));
    REQUIRE_OK(guarded_alloc(&go, a->dev, TS_SHAPE(N, OC), NULL));
    REQUIRE_OK(ts_linear_forward(&go.t, &tx, &tw, has_bias ? &tb : NULL));
    double *dx = to_double(x, N * C), *dw = to_double(w, OC * C), *db = to_double(b, OC);
    double *ref = malloc((size_t)(N * OC) * sizeof *ref);
    ref_gemm(ref, dx, dw, has_bias ? db : NULL, 1, N, OC, C, false, true, 1.0, 0.0, 0);
    expect_output("linear_forward", &go, ref, TOL_GEMM);
    free(x), free(w), free(b), free(dx), free(dw), free(db), free(ref);
    guarded_free(&go);
    ts_tensor_free(&tx), ts_tensor_free(&tw), ts_tensor_free(&tb);
}

static void conf_linear_bwd(void *argp)
{
    conf_arg *a = argp;
    int64_t N = a->p[0], C = a->p[1], OC = a->p[2];
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = rand_floats(&r, N * C, -1, 1), *w = rand_floats(&r, OC * C, -1, 1);
    float *dout = rand_floats(&r, N * OC, -1, 1);
    float *dw0 = rand_floats(&r, OC * C, -1, 1), *db0 = rand_floats(&r, OC, -1, 1);
    ts_tensor tx, tw, tdout;
    guarded gdx, gdw, gdb;
    REQUIRE_OK(upload(&tx, a->dev, TS_F32, TS_SHAPE(N, C), x));
    REQUIRE_OK(upload(&tw, a->dev, TS_F32, TS_SHAPE(OC, C), w));
    REQUIRE_OK(upload(&tdout, a->dev, TS_F32, TS_SHAPE(N, OC), dout));
    REQUIRE_OK(guarded_alloc(&gdx, a->dev, TS_SHAPE(N, C), NULL));
    REQUIRE_OK(guarded_alloc(&gdw, a->dev, TS_SHAPE(OC, C), dw0));
    REQUIRE_OK(guarded_alloc(&gdb, a->dev, TS_SHAPE(OC), db0));
    REQUIRE_OK(ts_linear_backward(&gdx.t, &gdw.t, &gdb.t, &tdout, &tx, &tw));
    double *dx = to_double(x, N * C), *dw = to_double(w, OC * C), *dd = to_double(dout, N * OC);
    double *rdx = malloc((size_t)(N * C) * sizeof *rdx);
    double *rdw = to_double(dw0, OC * C), *rdb = to_double(db0, OC);
    ref_gemm(rdx, dd, dw, NULL, 1, N, C, OC, false, false, 1.0, 0.0, 0);
    ref_gemm(rdw, dd, dx, NULL, 1, OC, C, N, true, false, 1.0, 1.0, 0);
    ref_sum_rows(rdb, dd, N, OC, true);
    expect_output("linear_backward dinp", &gdx, rdx, TOL_GEMM);
    expect_output("linear_backward dweight", &gdw, rdw, TOL_GEMM);
    expect_output("linear_backward dbias", &gdb, rdb, TOL_REDUCE);
    free(x), free(w), free(dout), free(dw0), free(db0);
    free(dx), free(dw), free(dd), free(rdx), free(rdw), free(rdb);
    guarded_free(&gdx), guarded_free(&gdw), guarded_free(&gdb);
    ts_tensor_free(&tx), ts_tensor_free(&tw), ts_tensor_free(&tdout);
}

/* ---- sum_rows: p = N, C, accumulate ---- */

static void conf_sum_rows(void *argp)
{
    conf_arg *a = argp;
    int64_t N = a->p[0], C = a->p[1];
    bool acc = a->p[2];
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = rand_floats(&r, N * C, -1, 1), *o0 = rand_floats(&r, C, -1, 1);
    ts_tensor tx;
    guarded g;
    REQUIRE_OK(upload(&tx, a->dev, TS_F32, TS_SHAPE(N, C), x));
    REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(C), acc ? o0 : NULL));
    REQUIRE_OK(ts_sum_rows(&g.t, &tx, acc));
    double *dx = to_double(x, N * C), *ref = to_double(o0, C);
    ref_sum_rows(ref, dx, N, C, acc);
    expect_output("sum_rows", &g, ref, TOL_REDUCE);
    free(x), free(o0), free(dx), free(ref);
    guarded_free(&g);
    ts_tensor_free(&tx);
}

/* ---- causal softmax: p = BH, T, in_place, backward ---- */

static void conf_softmax(void *argp)
{
    conf_arg *a = argp;
    int64_t BH = a->p[0], T = a->p[1], n = BH * T * T;
    int in_place = (int)a->p[2], backward = (int)a->p[3];
    float scale = 0.35f;
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = rand_floats(&r, n, -4, 4), *d = rand_floats(&r, n, -1, 1);
    double *dx = to_double(x, n), *dd = to_double(d, n), *ref = malloc((size_t)n * sizeof *ref);
    double *att = malloc((size_t)n * sizeof *att);
    ref_softmax_causal_forward(att, dx, BH, T, scale);
    ts_tensor tin, td;
    guarded g;
    if (!backward) {
        REQUIRE_OK(upload(&tin, a->dev, TS_F32, TS_SHAPE(BH, T, T), x));
        REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(BH, T, T), in_place ? x : NULL));
        REQUIRE_OK(ts_softmax_causal_forward(&g.t, in_place ? &g.t : &tin, scale));
        expect_output("softmax_causal_forward", &g, att, TOL_REDUCE);
    } else {
        /* att is the f32 rounding of the reference probabilities */
        float *fatt = malloc((size_t)n * sizeof *fatt);
        for (int64_t i = 0; i < n; i++) fatt[i] = (float)att[i], att[i] = fatt[i];
        REQUIRE_OK(upload(&tin, a->dev, TS_F32, TS_SHAPE(BH, T, T), fatt));
        REQUIRE_OK(upload(&td, a->dev, TS_F32, TS_SHAPE(BH, T, T), d));
        REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(BH, T, T), in_place ? d : NULL));
        REQUIRE_OK(ts_softmax_causal_backward(&g.t, &tin, in_place ? &g.t : &td, scale));
        ref_softmax_causal_backward(ref, att, dd, BH, T, scale);
        expect_output("softmax_causal_backward", &g, ref, TOL_REDUCE);
        ts_tensor_free(&td);
        free(fatt);
    }
    guarded_free(&g);
    ts_tensor_free(&tin);
    free(x), free(d), free(dx), free(dd), free(ref), free(att);
}

/* ---- masked softmax: p = B, NH, T, causal, in_place, backward; lengths
 * from 0 to T+1 (clamped) ---- */

static void conf_softmax_masked(void *argp)
{
    conf_arg *a = argp;
    int64_t B = a->p[0], NH = a->p[1], T = a->p[2], BH = B * NH, n = BH * T * T;
    int causal = (int)a->p[3], in_place = (int)a->p[4], backward = (int)a->p[5];
    float scale = 0.35f;
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = rand_floats(&r, n, -4, 4), *d = rand_floats(&r, n, -1, 1);
    int32_t *len = rand_ints(&r, B, 0, (int32_t)T + 2);
    len[0] = (int32_t)T; /* one full sequence */
    if (B > 2) len[1] = 0; /* one without keys */
    double *dx = to_double(x, n), *dd = to_double(d, n), *ref = malloc((size_t)n * sizeof *ref);
    double *att = malloc((size_t)n * sizeof *att);
    ref_softmax_masked_forward(att, dx, len, BH, NH, T, scale, causal);
    ts_tensor tin, td, tl;
    guarded g;
    REQUIRE_OK(upload(&tl, a->dev, TS_I32, TS_SHAPE(B), len));
    if (!backward) {
        REQUIRE_OK(upload(&tin, a->dev, TS_F32, TS_SHAPE(BH, T, T), x));
        REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(BH, T, T), in_place ? x : NULL));
        REQUIRE_OK(ts_softmax_masked_forward(&g.t, in_place ? &g.t : &tin, &tl, NH, scale, causal));
        expect_output("softmax_masked_forward", &g, att, TOL_REDUCE);
    } else {
        float *fatt = malloc((size_t)n * sizeof *fatt);
        for (int64_t i = 0; i < n; i++) fatt[i] = (float)att[i], att[i] = fatt[i];
        REQUIRE_OK(upload(&tin, a->dev, TS_F32, TS_SHAPE(BH, T, T), fatt));
        REQUIRE_OK(upload(&td, a->dev, TS_F32, TS_SHAPE(BH, T, T), d));
        REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(BH, T, T), in_place ? d : NULL));
        REQUIRE_OK(ts_softmax_masked_backward(&g.t, &tin, in_place ? &g.t : &td, scale));
        ref_softmax_masked_backward(ref, att, dd, BH, T, scale);
        expect_output("softmax_masked_backward", &g, ref, TOL_REDUCE);
        ts_tensor_free(&td);
        free(fatt);
    }
    guarded_free(&g);
    ts_tensor_free(&tin), ts_tensor_free(&tl);
    free(x), free(d), free(len), free(dx), free(dd), free(ref), free(att);
}

/* ---- pool_max: p = B, T, C, backward ----
 * Lengths from -2 and 0 (pool to 0) to T + 2 (clamped); ties from rounded
 * values take the first position; a NaN wins its channel, at t = 0 and
 * after a finite max. argmax sits between guard values that must stay. */

static void conf_pool_max(void *argp)
{
    conf_arg *a = argp;
    int64_t B = a->p[0], T = a->p[1], C = a->p[2], backward = a->p[3], n = B * T * C;
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = rand_floats(&r, n, -4, 4), *d = rand_floats(&r, B * C, -1, 1);
    for (int64_t i = 0; i < n; i += 3) x[i] = roundf(x[i]); /* ties between positions */
    if (n > 7) x[7] = NAN;
    if (T > 1 && C > 5) x[C + 5] = NAN; /* b 0, t 1: after a finite value */
    int32_t *len = rand_ints(&r, B, 0, (int32_t)T + 3);
    len[0] = (int32_t)T;
    if (B > 2) len[1] = 0;
    if (B > 3) len[3] = -2;
    enum { GUARD = 16 };
    int32_t *at = malloc((size_t)(B * C) * sizeof *at), *got = malloc((size_t)(B * C + 2 * GUARD) * sizeof *got);
    double *dx = to_double(x, n), *dd = to_double(d, B * C);
    double *ref = malloc((size_t)(backward ? n : B * C) * sizeof *ref);
    ref_pool_max_forward(ref, at, dx, len, B, T, C);
    ts_tensor tx, tl, ta, tab, td;
    guarded g;
    if (!backward) {
        REQUIRE_OK(upload(&tx, a->dev, TS_F32, TS_SHAPE(B, T, C), x));
        REQUIRE_OK(upload(&tl, a->dev, TS_I32, TS_SHAPE(B), len));
        for (int64_t i = 0; i < B * C + 2 * GUARD; i++) got[i] = 0x5eed;
        REQUIRE_OK(upload(&tab, a->dev, TS_I32, TS_SHAPE(B * C + 2 * GUARD), got));
        REQUIRE_OK(ts_tensor_view(&ta, &tab, GUARD, TS_SHAPE(B, C)));
        REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(B, C), NULL));
        REQUIRE_OK(ts_pool_max_forward(&g.t, &ta, &tx, &tl));
        expect_output("pool_max_forward", &g, ref, TOL_EXACT);
        REQUIRE_OK(ts_tensor_read(&tab, got, (size_t)(B * C + 2 * GUARD) * sizeof *got));
        int64_t wrong = 0, guards = 0;
        for (int64_t i = 0; i < B * C; i++) wrong += got[GUARD + i] != at[i];
        for (int64_t i = 0; i < GUARD; i++) guards += (got[i] != 0x5eed) + (got[GUARD + B * C + i] != 0x5eed);
        EXPECTF(wrong == 0, "pool_max_forward: %lld of %lld positions differ from the reference", (long long)wrong,
                (long long)(B * C));
        EXPECTF(guards == 0, "pool_max_forward: %lld guard values around argmax were overwritten", (long long)guards);
        ts_tensor_free(&tx), ts_tensor_free(&tl), ts_tensor_free(&tab);
    } else { /* the reference's positions, -1 included, scatter dout */
        ref_pool_max_backward(ref, dd, at, B, T, C);
        REQUIRE_OK(upload(&td, a->dev, TS_F32, TS_SHAPE(B, C), d));
        REQUIRE_OK(upload(&ta, a->dev, TS_I32, TS_SHAPE(B, C), at));
        REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(B, T, C), NULL));
        REQUIRE_OK(ts_pool_max_backward(&g.t, &td, &ta));
        expect_output("pool_max_backward", &g, ref, TOL_EXACT);
        ts_tensor_free(&td), ts_tensor_free(&ta);
    }
    guarded_free(&g);
    free(x), free(d), free(len), free(at), free(got), free(dx), free(dd), free(ref);
}

/* How many cast ops the profiler booked since its last reset (0 where
 * the report has no row for them). */
static unsigned long long profiled_casts(void)
{
    char *text = NULL, *row;
    size_t n = 0;
    unsigned long long calls = 0;
    FILE *f = open_memstream(&text, &n);
    if (!f) return ~0ull;
    ts_profile_report(f);
    fclose(f);
    if ((row = strstr(text, "\ncast ")) && sscanf(row + 6, "%llu", &calls) != 1) calls = ~0ull;
    free(text);
    return calls;
}

/* Where a device reads and writes 16-bit tensors as they are, an op makes
 * no fp32 copies of them (casts): counted from count_casts (on: the
 * profiler on) to expect_casts, which leaves the profiler as it was. */
static int g_profiling_before;

static bool count_casts(bool on)
{
    if (on) g_profiling_before = ts_profile_enabled(), ts_profile_reset(), ts_profile_enable(1);
    return on;
}

static void expect_casts(bool on, unsigned long long want, const char *what)
{
    if (!on) return;
    unsigned long long casts = profiled_casts();
    ts_profile_enable(g_profiling_before);
    EXPECTF(casts == want, "%llu casts, not %llu: %s went to fp32 copies", casts, want, what);
}

static bool is_opencl(ts_device *dev)
{
    return !strcmp(ts_device_get_info(dev)->backend, "opencl");
}

/* 16-bit attention activations as they are: on OpenCL the composite
 * route's head permutes read and write them (no casts), and on a GPU the
 * fused local-memory kernels do (not the CPU-type row kernels, which
 * TESSERA_OPENCL_CPU_KERNELS=1 selects there); where the workspace keeps
 * the output for backward in fp32 (its own), that copy is one cast. */
static bool count_attention_casts(ts_device *dev, bool lowp, bool fused)
{
    const char *cpu_kernels = getenv("TESSERA_OPENCL_CPU_KERNELS");
    bool gpu_kernels = ts_device_get_info(dev)->type == TS_DEVICE_GPU && !(cpu_kernels && !strcmp(cpu_kernels, "1"));
    return count_casts(lowp && is_opencl(dev) && (!fused || gpu_kernels));
}

/* The workspace keeps the forward's output as out itself (the model's
 * way, ws->o a view of its activation): backward reads it as stored. */
static void keep_output(ts_attention_ws *ws, const ts_tensor *out)
{
    ts_tensor_free(&ws->o);
    REQUIRE_OK(ts_tensor_view(&ws->o, out, 0, out->ndim, out->shape));
}

/* ---- f16 activations (the model's under fp16 products): stored in 16
 * bits; OpenCL's kernels read and write them (GELU, layernorm, the products
 * off the host route, the fused attention's local-memory kernels), other
 * routes compute on fp32 copies the core makes ---- */

static void upload_f16(ts_tensor *t, ts_device *d, int ndim, const int64_t *shape, const float *x)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    uint16_t *h = malloc((size_t)n * sizeof *h);
    for (int64_t i = 0; i < n; i++) h[i] = f16_from_float(x[i]);
    ts_status st = upload(t, d, TS_F16, ndim, shape, h);
    free(h);
    REQUIRE_OK(st);
}

/* x as an f16 tensor holds it */
static void host_f16(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) x[i] = f16_to_float(f16_from_float(x[i]));
}

/* Casts between fp32 and f16, every value as testutil's f16 from its
 * definition gives it (a NaN: a NaN of its sign): p = n, direction 0:
 * fp32 to f16 (ties both ways, subnormals, the overflow edge, NaN payloads
 * that plain rounding would carry into inf or the sign); 1: f16 to fp32
 * (random patterns, or all 65536); 2: f16 to f16, a copy. */
static void conf_cast_f16(void *argp)
{
    conf_arg *a = argp;
    int64_t n = a->p[0], dir = a->p[1];
    static const float hard[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e6f, 0x1p-24f,
                                 0x1p-25f, 0x3p-25f, -0x5p-25f, 0x1p-14f, 0x1p-14f - 0x1p-25f, 1.0f + 0x1p-11f,
                                 1.0f + 0x3p-11f, -(1.0f + 0x3p-11f), 1e-8f, NAN, INFINITY, -INFINITY, 3e38f};
    static const uint32_t nan_bits[] = {0x7f800001u, 0xff800001u, 0x7fffffffu, 0xffffffffu};
    enum { NHARD = sizeof hard / sizeof *hard, NNAN = sizeof nan_bits / sizeof *nan_bits };
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = inputs(&r, n, 1), *want = malloc((size_t)n * sizeof *want), *got = malloc((size_t)n * sizeof *got);
    ts_tensor tx;
    guarded g;
    if (dir == 0) {
        for (int64_t i = 0; i < n && i < NHARD; i++) x[i] = hard[i];
        for (int64_t i = NHARD; i < n && i < NHARD + NNAN; i++) memcpy(&x[i], &nan_bits[i - NHARD], sizeof x[i]);
        for (int64_t i = NHARD + NNAN; i < n; i++) x[i] *= i % 3 == 2 ? 1e-4f : 1.0f; /* into the subnormals too */
        REQUIRE_OK(upload(&tx, a->dev, TS_F32, TS_SHAPE(n), x));
        REQUIRE_OK(guarded_alloc_f16(&g, a->dev, TS_SHAPE(n), NULL));
        for (int64_t i = 0; i < n; i++) want[i] = f16_to_float(f16_from_float(x[i]));
    } else {
        uint16_t *h = malloc((size_t)n * sizeof *h);
        for (int64_t i = 0; i < n; i++) h[i] = n == 65536 ? (uint16_t)i : (uint16_t)rng_next(&r);
        for (int64_t i = 0; i < n; i++) want[i] = f16_to_float(h[i]);
        ts_status st = upload(&tx, a->dev, TS_F16, TS_SHAPE(n), h);
        free(h);
        REQUIRE_OK(st);
        REQUIRE_OK(dir == 1 ? guarded_alloc(&g, a->dev, TS_SHAPE(n), NULL) : guarded_alloc_f16(&g, a->dev, TS_SHAPE(n), NULL));
    }
    REQUIRE_OK(ts_cast(&g.t, &tx));
    int64_t bad = 0, wrong = 0;
    REQUIRE_OK(guarded_read(&g, got, &bad));
    EXPECTF(bad == 0, "%lld guard elements overwritten", (long long)bad);
    for (int64_t i = 0; i < n; i++) {
        int same = isnan(want[i]) ? isnan(got[i]) && signbit(got[i]) == signbit(want[i])
                                  : want[i] == got[i] && signbit(want[i]) == signbit(got[i]);
        if (!same && wrong++ < 5)
            th_fail(__FILE__, __LINE__, "cast %lld of %.9g gave %.9g, want %.9g", (long long)i, (double)x[i],
                    (double)got[i], (double)want[i]);
    }
    EXPECTF(wrong == 0, "%lld of %lld values cast wrong", (long long)wrong, (long long)n);
    if (dir == 2) { /* a copy: every bit, NaN payloads included */
        uint16_t *in = malloc((size_t)n * 2), *out = malloc((size_t)n * 2);
        REQUIRE_OK(ts_tensor_read(&tx, in, (size_t)n * 2));
        REQUIRE_OK(ts_tensor_read(&g.t, out, (size_t)n * 2));
        EXPECTF(memcmp(in, out, (size_t)n * 2) == 0, "the f16 copy changed bits");
        free(in), free(out);
    }
    free(x), free(want), free(got);
    guarded_free(&g);
    ts_tensor_free(&tx);
}

/* ---- heads: p = B, T, K, NH, HS, merge[, dtype] ----
 * dtype 1 bf16, 2 f16: the packed side 16-bit (the model's qkv, attention
 * output and its gradient on the composite route). Split reads the 16-bit
 * values exactly, merge rounds once: exact against the rounded reference
 * either way; OpenCL's kernels make no fp32 copies of them. */
static void conf_heads(void *argp)
{
    conf_arg *a = argp;
    int64_t B = a->p[0], T = a->p[1], K = a->p[2], NH = a->p[3], HS = a->p[4];
    int merge = (int)a->p[5];
    ts_dtype dt = a->p[6] == 2 ? TS_F16 : a->p[6] == 1 ? TS_BF16 : TS_F32;
    int64_t n = B * T * K * NH * HS;
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = rand_floats(&r, n, -1, 1);
    ts_tensor tx;
    guarded g;
    if (merge || dt == TS_F32) REQUIRE_OK(upload(&tx, a->dev, TS_F32, TS_SHAPE(n), x));
    else if (dt == TS_F16) host_f16(x, n), upload_f16(&tx, a->dev, TS_SHAPE(n), x);
    else host_bf16(x, n), upload_act(&tx, a->dev, true, TS_SHAPE(n), x);
    if (merge && dt == TS_F16) REQUIRE_OK(guarded_alloc_f16(&g, a->dev, TS_SHAPE(n), NULL));
    else if (merge && dt == TS_BF16) REQUIRE_OK(guarded_alloc_bf16(&g, a->dev, TS_SHAPE(n), NULL));
    else REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(n), NULL));
    double *dx = to_double(x, n), *ref = malloc((size_t)n * sizeof *ref);
    bool counted = count_casts(dt != TS_F32 && is_opencl(a->dev));
    if (merge) {
        REQUIRE_OK(ts_merge_heads(&g.t, &tx, B, T, K, NH));
        ref_merge_heads(ref, dx, B, T, K, NH, HS);
        if (dt != TS_F32)
            for (int64_t i = 0; i < n; i++) ref[i] = round_to(ref[i], dt);
    } else {
        REQUIRE_OK(ts_split_heads(&g.t, &tx, B, T, K, NH));
        ref_split_heads(ref, dx, B, T, K, NH, HS);
    }
    expect_casts(counted, 0, "the packed side's 16-bit values");
    expect_output(merge ? "merge_heads" : "split_heads", &g, ref, TOL_EXACT);
    free(x), free(dx), free(ref);
    guarded_free(&g);
    ts_tensor_free(&tx);
}

/* Ops on f16 activations against the double reference on the f16 values
 * they hold, f16 outputs rounded (NMSE TOL_BF16_OUT: an f16 step is 2^-11),
 * fp32 gradients at the fp32 bounds: p = op, then its shape.
 * op 0: GELU forward, f16 in and out (n); 1: GELU backward, f16 input (n);
 * 2: layernorm, f16 out (N, C); 3: linear forward, f16 in and out, and
 * backward from an f16 dout (N, C, OC, -, product: 0 fp32, 1 fp16 as the
 * model's, its weight rounded); 4: attention forward and backward,
 * f16 qkv and out (B, T, C, NH, route: 1 composite, 2 fused). f16 outputs
 * also element by element within one f16 step. */
static void conf_f16_ops(void *argp)
{
    conf_arg *a = argp;
    int64_t op = a->p[0];
    rng_t r;
    rng_seed(&r, a->seed);
    if (op <= 1) {
        int64_t n = a->p[1];
        float *x = inputs(&r, n, 0), *y = inputs(&r, n, 0);
        host_f16(x, n);
        double *dx = to_double(x, n), *dy = to_double(y, n), *ref = malloc((size_t)n * sizeof *ref);
        ts_tensor tx, ty;
        guarded g;
        upload_f16(&tx, a->dev, TS_SHAPE(n), x);
        REQUIRE_OK(upload(&ty, a->dev, TS_F32, TS_SHAPE(n), y));
        bool counted = count_casts(is_opencl(a->dev)); /* OpenCL's kernels read and write f16 */
        if (op == 0) {
            REQUIRE_OK(guarded_alloc_f16(&g, a->dev, TS_SHAPE(n), NULL));
            REQUIRE_OK(ts_gelu_forward(&g.t, &tx));
            expect_casts(counted, 0, "GELU's f16 input and output");
            ref_gelu_forward(ref, dx, n);
            for (int64_t i = 0; i < n; i++) ref[i] = round_to(ref[i], TS_F16);
            expect_output("gelu_forward, f16 storage", &g, ref, TOL_BF16_OUT);
            expect_within_one_step("gelu_forward, f16 storage", &g, ref, 1);
        } else {
            REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(n), NULL));
            REQUIRE_OK(ts_gelu_backward(&g.t, &tx, &ty));
            expect_casts(counted, 0, "GELU backward's f16 input");
            ref_gelu_backward(ref, dx, dy, n);
            expect_output("gelu_backward, f16 input", &g, ref, TOL_ELEM);
        }
        guarded_free(&g);
        ts_tensor_free(&tx), ts_tensor_free(&ty);
        free(x), free(y), free(dx), free(dy), free(ref);
    } else if (op == 2) {
        int64_t N = a->p[1], C = a->p[2];
        float *x = rand_floats(&r, N * C, -2, 3), *w = rand_floats(&r, C, 0.5f, 1.5f), *b = rand_floats(&r, C, -0.5f, 0.5f);
        ts_tensor tx, tw, tb;
        guarded go;
        REQUIRE_OK(upload(&tx, a->dev, TS_F32, TS_SHAPE(N, C), x));
        REQUIRE_OK(upload(&tw, a->dev, TS_F32, TS_SHAPE(C), w));
        REQUIRE_OK(upload(&tb, a->dev, TS_F32, TS_SHAPE(C), b));
        REQUIRE_OK(guarded_alloc_f16(&go, a->dev, TS_SHAPE(N, C), NULL));
        bool counted = count_casts(is_opencl(a->dev));
        REQUIRE_OK(ts_layernorm_forward(&go.t, NULL, NULL, &tx, &tw, &tb, 1e-5f));
        expect_casts(counted, 0, "layernorm's f16 output");
        double *dx = to_double(x, N * C), *dw = to_double(w, C), *db = to_double(b, C);
        double *ro = malloc((size_t)(N * C) * sizeof *ro), *rm = malloc((size_t)N * sizeof *rm),
               *rr = malloc((size_t)N * sizeof *rr);
        ref_layernorm_forward(ro, rm, rr, dx, dw, db, N, C, 1e-5);
        for (int64_t i = 0; i < N * C; i++) ro[i] = round_to(ro[i], TS_F16);
        expect_output("layernorm out in f16", &go, ro, TOL_BF16_OUT);
        expect_within_one_step("layernorm out in f16", &go, ro, C);
        free(x), free(w), free(b), free(dx), free(dw), free(db), free(ro), free(rm), free(rr);
        guarded_free(&go);
        ts_tensor_free(&tx), ts_tensor_free(&tw), ts_tensor_free(&tb);
    } else if (op == 3) {
        int64_t N = a->p[1], C = a->p[2], OC = a->p[3];
        float *x = rand_floats(&r, N * C, -1, 1), *w = rand_floats(&r, OC * C, -1, 1), *bias = rand_floats(&r, OC, -1, 1);
        float *dout = rand_floats(&r, N * OC, -1, 1), *dw0 = rand_floats(&r, OC * C, -1, 1);
        host_f16(x, N * C), host_f16(dout, N * OC);
        ts_tensor tx, tw, tb, tdout;
        guarded go, gdx, gdw;
        upload_f16(&tx, a->dev, TS_SHAPE(N, C), x);
        upload_f16(&tdout, a->dev, TS_SHAPE(N, OC), dout);
        REQUIRE_OK(upload(&tw, a->dev, TS_F32, TS_SHAPE(OC, C), w));
        REQUIRE_OK(upload(&tb, a->dev, TS_F32, TS_SHAPE(OC), bias));
        REQUIRE_OK(guarded_alloc_f16(&go, a->dev, TS_SHAPE(N, OC), NULL));
        REQUIRE_OK(guarded_alloc(&gdx, a->dev, TS_SHAPE(N, C), NULL));
        REQUIRE_OK(guarded_alloc(&gdw, a->dev, TS_SHAPE(OC, C), dw0));
        bool f16_product = a->p[5] == 1;
        /* OpenCL's products off the host route read and write f16 tensors
         * as they are: no casts (fp32 copies) */
        const char *route = getenv("TESSERA_GEMM");
        bool counted = count_casts(is_opencl(a->dev) && (ts_device_get_info(a->dev)->type == TS_DEVICE_GPU ||
                                                         (route && (!strcmp(route, "kernel") || !strcmp(route, "clblast")))));
        if (f16_product) REQUIRE_OK(ts_device_set_matmul_dtype(a->dev, TS_F16));
        ts_status st = ts_linear_forward(&go.t, &tx, &tw, &tb);
        if (!st) st = ts_linear_backward(&gdx.t, &gdw.t, NULL, &tdout, &tx, &tw);
        REQUIRE_OK(ts_device_set_matmul_dtype(a->dev, TS_F32));
        REQUIRE_OK(st);
        expect_casts(counted, 0, "the product's f16 tensors");
        if (f16_product) host_f16(w, OC * C);
        double *dx = to_double(x, N * C), *dw = to_double(w, OC * C), *db = to_double(bias, OC);
        double *dd = to_double(dout, N * OC), *rdw = to_double(dw0, OC * C);
        double *ro = malloc((size_t)(N * OC) * sizeof *ro), *rdx = malloc((size_t)(N * C) * sizeof *rdx);
        ref_gemm(ro, dx, dw, db, 1, N, OC, C, false, true, 1.0, 0.0, 0);
        for (int64_t i = 0; i < N * OC; i++) ro[i] = round_to(ro[i], TS_F16);
        ref_gemm(rdx, dd, dw, NULL, 1, N, C, OC, false, false, 1.0, 0.0, 0);
        ref_gemm(rdw, dd, dx, NULL, 1, OC, C, N, true, false, 1.0, 1.0, 0);
        expect_output("linear_forward, f16 activations", &go, ro, TOL_BF16_OUT);
        expect_within_one_step("linear_forward, f16 activations", &go, ro, OC);
        expect_output("linear_backward dinp, f16 dout", &gdx, rdx, TOL_GEMM);
        expect_output("linear_backward dweight, f16 activations", &gdw, rdw, TOL_GEMM);
        free(x), free(w), free(bias), free(dout), free(dw0), free(dx), free(dw), free(db), free(dd), free(rdw), free(ro), free(rdx);
        guarded_free(&go), guarded_free(&gdx), guarded_free(&gdw);
        ts_tensor_free(&tx), ts_tensor_free(&tw), ts_tensor_free(&tb), ts_tensor_free(&tdout);
    } else {
        int64_t B = a->p[1], T = a->p[2], C = a->p[3], NH = a->p[4];
        float *qkv = rand_floats(&r, B * T * 3 * C, -1, 1), *dout = rand_floats(&r, B * T * C, -1, 1);
        host_f16(qkv, B * T * 3 * C);
        ts_tensor tq, tdout;
        guarded go, gd;
        ts_attention_ws ws;
        upload_f16(&tq, a->dev, TS_SHAPE(B, T, 3 * C), qkv);
        REQUIRE_OK(upload(&tdout, a->dev, TS_F32, TS_SHAPE(B, T, C), dout));
        ts_attention_route route = a->p[5] == 2 ? TS_ATTENTION_FUSED : TS_ATTENTION_COMPOSITE;
        bool fused;
        if (route == TS_ATTENTION_FUSED && ts_attention_route_fused(a->dev, route, B, T, C, NH, &fused) != TS_OK) {
            ts_clear_error();
            free(qkv), free(dout);
            SKIP("no fused attention on this device");
        }
        REQUIRE_OK(ts_attention_ws_alloc_route(&ws, a->dev, B, T, C, NH, route));
        REQUIRE_OK(guarded_alloc_f16(&go, a->dev, TS_SHAPE(B, T, C), NULL));
        REQUIRE_OK(guarded_alloc(&gd, a->dev, TS_SHAPE(B, T, 3 * C), NULL));
        if (ws.fused) keep_output(&ws, &go.t); /* backward reads the f16 output */
        bool counted = count_attention_casts(a->dev, true, ws.fused);
        REQUIRE_OK(ts_attention_forward(&go.t, &tq, &ws));
        REQUIRE_OK(ts_attention_backward(&gd.t, &tdout, &ws));
        expect_casts(counted, 0, "the attention's f16 activations");
        double *dq = to_double(qkv, B * T * 3 * C), *ddout = to_double(dout, B * T * C);
        double *ro = malloc((size_t)(B * T * C) * sizeof *ro), *rd = malloc((size_t)(B * T * 3 * C) * sizeof *rd);
        ref_attention_masked_forward(ro, dq, B, T, C, NH, NULL, true);
        for (int64_t i = 0; i < B * T * C; i++) ro[i] = round_to(ro[i], TS_F16);
        ref_attention_masked_backward(rd, ddout, dq, ws.fused ? ro : NULL, B, T, C, NH, NULL, true);
        expect_output(ws.fused ? "attention_forward fused, f16 qkv and out" : "attention_forward composite, f16 qkv and out",
                      &go, ro, TOL_BF16_OUT);
        expect_within_one_step("attention_forward, f16 qkv and out", &go, ro, C);
        expect_output("attention_backward, f16 activations", &gd, rd, TOL_GEMM);
        free(qkv), free(dout), free(dq), free(ddout), free(ro), free(rd);
        ts_attention_ws_free(&ws);
        guarded_free(&go), guarded_free(&gd);
        ts_tensor_free(&tq), ts_tensor_free(&tdout);
    }
}

/* ---- attention: p = B, T, C, NH, mask, route, backward[, bf16] ----
 * mask 0: causal over all T keys; 1: causal over lengths 1..T; 2:
 * bidirectional over lengths 1..T (the first of 3 or more sequences has
 * none, the last of 2 or more one past T). route 1: composite (GEMM + softmax ops),
 * 2: fused (skipped where the device has no fused op). bf16 1: qkv and out
 * in bf16 (the model's under bf16 products), 2: dout too, 3: as 2 and the
 * fused workspace keeps out itself for backward (the model's way; else its
 * own fp32 copy); the reference takes the rounded values the op holds, and
 * the fused backward's row sums from the rounded output it keeps. */

static void conf_attention(void *argp)
{
    conf_arg *a = argp;
    int64_t B = a->p[0], T = a->p[1], C = a->p[2], NH = a->p[3], mask = a->p[4];
    ts_attention_route route = a->p[5] == 2 ? TS_ATTENTION_FUSED : TS_ATTENTION_COMPOSITE;
    int backward = (int)a->p[6];
    bool bf16 = a->p[7] >= 1, dout_bf16 = a->p[7] >= 2, keep = a->p[7] == 3;
    bool fused;
    if (ts_attention_route_fused(a->dev, TS_ATTENTION_FUSED, B, T, C, NH, &fused) != TS_OK) {
        ts_clear_error();
        if (route == TS_ATTENTION_FUSED) SKIP("no fused attention on this device");
    }
    rng_t r;
    rng_seed(&r, a->seed);
    float *qkv = rand_floats(&r, B * T * 3 * C, -1, 1), *dout = rand_floats(&r, B * T * C, -1, 1);
    int32_t *len = rand_ints(&r, B, 1, (int32_t)T + 1);
    if (B >= 3) len[0] = 0;         /* a sequence without keys: zeros out and back */
    if (B >= 2) len[B - 1] = (int32_t)T + 7; /* lengths past T count as T */
    if (bf16) host_bf16(qkv, B * T * 3 * C);
    if (dout_bf16) host_bf16(dout, B * T * C);
    ts_tensor tq, tl, tout, tdout;
    guarded g;
    ts_attention_ws ws;
    upload_act(&tq, a->dev, bf16, TS_SHAPE(B, T, 3 * C), qkv);
    REQUIRE_OK(upload(&tl, a->dev, TS_I32, TS_SHAPE(B), len));
    upload_act(&tdout, a->dev, dout_bf16, TS_SHAPE(B, T, C), dout);
    REQUIRE_OK(ts_attention_ws_alloc_route(&ws, a->dev, B, T, C, NH, route));
    EXPECTF(ws.fused == (route == TS_ATTENTION_FUSED), "the workspace took the %s route",
            ws.fused ? "fused" : "composite");
    if (mask) ws.key_len = &tl;
    ws.bidirectional = mask == 2;
    double *dq = to_double(qkv, B * T * 3 * C), *ddout = to_double(dout, B * T * C);
    double *ref_out = malloc((size_t)(B * T * C) * sizeof *ref_out);
    ref_attention_masked_forward(ref_out, dq, B, T, C, NH, mask ? len : NULL, mask != 2);
    if (bf16)
        for (int64_t i = 0; i < B * T * C; i++) ref_out[i] = round_to(ref_out[i], TS_BF16);
    bool counted = count_attention_casts(a->dev, bf16, ws.fused);
    if (!backward) {
        REQUIRE_OK(bf16 ? guarded_alloc_bf16(&g, a->dev, TS_SHAPE(B, T, C), NULL)
                        : guarded_alloc(&g, a->dev, TS_SHAPE(B, T, C), NULL));
        REQUIRE_OK(ts_attention_forward(&g.t, &tq, &ws));
        expect_output(bf16 ? "attention_forward, bf16 qkv and out" : "attention_forward", &g, ref_out,
                      bf16 ? TOL_BF16_OUT : TOL_GEMM);
        if (bf16) expect_within_one_step("attention_forward, bf16 qkv and out", &g, ref_out, C);
    } else {
        REQUIRE_OK(ts_tensor_alloc(&tout, a->dev, bf16 ? TS_BF16 : TS_F32, TS_SHAPE(B, T, C)));
        if (keep && ws.fused) keep_output(&ws, &tout);
        REQUIRE_OK(ts_attention_forward(&tout, &tq, &ws));
        REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(B, T, 3 * C), NULL));
        REQUIRE_OK(ts_attention_backward(&g.t, &tdout, &ws));
        double *ref = malloc((size_t)(B * T * 3 * C) * sizeof *ref);
        ref_attention_masked_backward(ref, ddout, dq, bf16 && ws.fused ? ref_out : NULL, B, T, C, NH,
                                      mask ? len : NULL, mask != 2);
        expect_output(bf16 ? "attention_backward, bf16 activations" : "attention_backward", &g, ref, TOL_GEMM);
        free(ref);
        ts_tensor_free(&tout);
    }
    expect_casts(counted, ws.fused && !(keep && backward), "the attention's bf16 activations");
    free(qkv), free(dout), free(len), free(dq), free(ddout), free(ref_out);
    ts_attention_ws_free(&ws);
    guarded_free(&g);
    ts_tensor_free(&tq), ts_tensor_free(&tl), ts_tensor_free(&tdout);
}

/* ---- cross-entropy: p = N, V, outputs (1 losses 2 probs 4 dlogits), in_place ---- */

/* p = N, V, outputs (bits: losses, probs, dlogits), in_place, bf16 (0 none,
 * 1 logits and dlogits, 2 logits only, 3 dlogits only: the head's under bf16
 * products) */
static void conf_cross_entropy(void *argp)
{
    conf_arg *a = argp;
    int64_t N = a->p[0], V = a->p[1];
    int outputs = (int)a->p[2], in_place = (int)a->p[3];
    bool x_bf16 = a->p[4] == 1 || a->p[4] == 2, d_bf16 = a->p[4] == 1 || a->p[4] == 3;
    float scale = 1.0f / (float)N;
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = rand_floats(&r, N * V, -6, 6);
    if (x_bf16) host_bf16(x, N * V);
    int32_t *tg = rand_ints(&r, N, 0, (int32_t)V);
    if (N > 2) tg[1] = -1;         /* ignored position */
    if (V > 3) x[2] = -INFINITY;   /* a masked logit: probability 0, finite loss */
    if (V > 3 && N > 2 && tg[0] != 2) x[V + 3] = -INFINITY;
    ts_tensor tx, tt;
    guarded gl, gp, gd;
    ts_tensor tx1;
    upload_act(&tx1, a->dev, x_bf16, TS_SHAPE(N * V), x);
    REQUIRE_OK(ts_tensor_reshape(&tx, &tx1, TS_SHAPE(N, V)));
    REQUIRE_OK(upload(&tt, a->dev, TS_I32, TS_SHAPE(N), tg));
    ts_tensor *probs = NULL, *dlogits = NULL, *losses = NULL;
    if (in_place) {
        REQUIRE_OK(x_bf16 ? guarded_alloc_bf16(&gp, a->dev, TS_SHAPE(N, V), x)
                          : guarded_alloc(&gp, a->dev, TS_SHAPE(N, V), x));
        if (outputs & 2) probs = &gp.t;
        else dlogits = &gp.t;
    } else {
        REQUIRE_OK(guarded_alloc(&gp, a->dev, TS_SHAPE(N, V), NULL));
        REQUIRE_OK(d_bf16 ? guarded_alloc_bf16(&gd, a->dev, TS_SHAPE(N, V), NULL)
                          : guarded_alloc(&gd, a->dev, TS_SHAPE(N, V), NULL));
        if (outputs & 2) probs = &gp.t;
        if (outputs & 4) dlogits = &gd.t;
    }
    REQUIRE_OK(guarded_alloc(&gl, a->dev, TS_SHAPE(N), NULL));
    if (outputs & 1) losses = &gl.t;
    REQUIRE_OK(ts_cross_entropy(losses, probs, dlogits, in_place ? &gp.t : &tx, &tt, scale));
    double *dx = to_double(x, N * V), *rl = malloc((size_t)N * sizeof *rl);
    double *rp = malloc((size_t)(N * V) * sizeof *rp), *rd = malloc((size_t)(N * V) * sizeof *rd);
    ref_cross_entropy(rl, rp, rd, dx, tg, N, V, scale);
    if (d_bf16)
        for (int64_t i = 0; i < N * V; i++) rd[i] = round_to(rd[i], TS_BF16);
    double tol_d = d_bf16 ? TOL_BF16_OUT : TOL_REDUCE;
    if (losses) expect_output("cross_entropy losses", &gl, rl, TOL_REDUCE);
    if (in_place) {
        expect_output(probs ? "probs in place" : "dlogits in place", &gp, probs ? rp : rd, probs ? TOL_REDUCE : tol_d);
        if (!probs && d_bf16 && gp.base.dtype == TS_BF16)
            expect_within_one_step("dlogits in place in bf16", &gp, rd, V);
    } else {
        if (probs) expect_output("cross_entropy probs", &gp, rp, TOL_REDUCE);
        if (dlogits) expect_output(d_bf16 ? "cross_entropy dlogits in bf16" : "cross_entropy dlogits", &gd, rd, tol_d);
        if (dlogits && d_bf16) expect_within_one_step("cross_entropy dlogits in bf16", &gd, rd, V);
        guarded_free(&gd);
    }
    free(x), free(tg), free(dx), free(rl), free(rp), free(rd);
    guarded_free(&gl), guarded_free(&gp);
    ts_tensor_free(&tx1), ts_tensor_free(&tt);
}

/* ---- vocabulary-parallel cross-entropy: p = N, V, shards ----
 * The logits are split into shards as tensor-parallel ranks hold them; the
 * per-shard statistics are combined on the host as the ranks' allreduces
 * would, and the losses and gradients must match the whole-vocabulary
 * reference. */

static void conf_ce_shard(void *argp)
{
    conf_arg *a = argp;
    int64_t N = a->p[0], V = a->p[1], S = a->p[2];
    bool bf16 = a->p[3]; /* bf16 logits, and their gradient in place */
    float scale = 0.5f / (float)N;
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = rand_floats(&r, N * V, -5, 5);
    int32_t *tg = rand_ints(&r, N, 0, (int32_t)V);
    if (N > 2) tg[1] = -1;
    if (bf16) host_bf16(x, N * V);
    double *dx = to_double(x, N * V), *rl = malloc((size_t)N * sizeof *rl), *rd = malloc((size_t)(N * V) * sizeof *rd);
    ref_cross_entropy(rl, NULL, rd, dx, tg, N, V, scale);
    if (bf16)
        for (int64_t i = 0; i < N * V; i++) rd[i] = round_to(rd[i], TS_BF16);
    float *gmax = malloc((size_t)N * sizeof *gmax), *gsum = calloc((size_t)N, sizeof *gsum),
          *gtgt = calloc((size_t)N, sizeof *gtgt), *dl = malloc((size_t)(N * V) * sizeof *dl);
    for (int64_t n = 0; n < N; n++) gmax[n] = -INFINITY;
    ts_tensor tt, rowmax, tgt, sumexp, losses;
    REQUIRE_OK(upload(&tt, a->dev, TS_I32, TS_SHAPE(N), tg));
    REQUIRE_OK(ts_tensor_alloc(&rowmax, a->dev, TS_F32, TS_SHAPE(N)));
    REQUIRE_OK(ts_tensor_alloc(&tgt, a->dev, TS_F32, TS_SHAPE(N)));
    REQUIRE_OK(ts_tensor_alloc(&sumexp, a->dev, TS_F32, TS_SHAPE(N)));
    REQUIRE_OK(ts_tensor_alloc(&losses, a->dev, TS_F32, TS_SHAPE(N)));
    ts_tensor shard[8];
    int64_t start[9];
    float *hs = malloc((size_t)(N * V) * sizeof *hs), *hv = malloc((size_t)N * sizeof *hv);
    for (int64_t k = 0; k <= S; k++) start[k] = V * k / S;
    for (int64_t k = 0; k < S; k++) { /* phase 0 per shard: row maxima and target logits */
        int64_t w = start[k + 1] - start[k];
        for (int64_t n = 0; n < N; n++) memcpy(hs + n * w, x + n * V + start[k], (size_t)w * sizeof *hs);
        upload_act(&shard[k], a->dev, bf16, TS_SHAPE(N, w), hs);
        REQUIRE_OK(ts_ce_shard_stats(&rowmax, &tgt, &shard[k], &tt, start[k]));
        REQUIRE_OK(ts_tensor_read(&rowmax, hv, (size_t)N * sizeof *hv));
        for (int64_t n = 0; n < N; n++) gmax[n] = fmaxf(gmax[n], hv[n]);
        REQUIRE_OK(ts_tensor_read(&tgt, hv, (size_t)N * sizeof *hv));
        for (int64_t n = 0; n < N; n++) gtgt[n] += hv[n];
    }
    REQUIRE_OK(ts_tensor_write(&rowmax, gmax, (size_t)N * sizeof *gmax));
    for (int64_t k = 0; k < S; k++) { /* phase 1: sums with the global maxima */
        REQUIRE_OK(ts_ce_shard_sumexp(&sumexp, &shard[k], &rowmax));
        REQUIRE_OK(ts_tensor_read(&sumexp, hv, (size_t)N * sizeof *hv));
        for (int64_t n = 0; n < N; n++) gsum[n] += hv[n];
    }
    REQUIRE_OK(ts_tensor_write(&sumexp, gsum, (size_t)N * sizeof *gsum));
    REQUIRE_OK(ts_tensor_write(&tgt, gtgt, (size_t)N * sizeof *gtgt));
    guarded gl;
    REQUIRE_OK(guarded_alloc(&gl, a->dev, TS_SHAPE(N), NULL));
    REQUIRE_OK(ts_ce_shard_loss(&gl.t, &rowmax, &sumexp, &tgt, &tt, V)); /* phase 2 */
    expect_output("sharded losses", &gl, rl, TOL_REDUCE);
    for (int64_t k = 0; k < S; k++) { /* phase 3, in place */
        int64_t w = start[k + 1] - start[k];
        REQUIRE_OK(ts_ce_shard_grad(&shard[k], &shard[k], &rowmax, &sumexp, &tt, start[k], V, scale));
        REQUIRE_OK(ts_tensor_read(&shard[k], hs, ts_tensor_nbytes(&shard[k])));
        if (bf16) /* widened in place, from the end */
            for (int64_t i = N * w - 1; i >= 0; i--) hs[i] = bf16_to_float(((const uint16_t *)hs)[i]);
        for (int64_t n = 0; n < N; n++) memcpy(dl + n * V + start[k], hs + n * w, (size_t)w * sizeof *dl);
        ts_tensor_free(&shard[k]);
    }
    check_close(bf16 ? "sharded dlogits in bf16" : "sharded dlogits", dl, rd, N * V, bf16 ? TOL_BF16_OUT : TOL_REDUCE);
    guarded_free(&gl);
    ts_tensor_free(&tt), ts_tensor_free(&rowmax), ts_tensor_free(&tgt), ts_tensor_free(&sumexp), ts_tensor_free(&losses);
    free(x), free(tg), free(dx), free(rl), free(rd), free(gmax), free(gsum), free(gtgt), free(dl), free(hs), free(hv);
}

/* ---- reductions: p = n, squares ---- */

static void conf_reduce(void *argp)
{
    conf_arg *a = argp;
    int64_t n = a->p[0];
    int squares = (int)a->p[1];
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = rand_floats(&r, n, -1, 1);
    ts_tensor tx;
    guarded g;
    REQUIRE_OK(upload(&tx, a->dev, TS_F32, TS_SHAPE(n), x));
    REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(1), NULL));
    REQUIRE_OK(squares ? ts_sqnorm(&g.t, &tx) : ts_sum(&g.t, &tx));
    double *dx = to_double(x, n);
    double ref = squares ? ref_sqnorm(dx, n) : ref_sum(dx, n);
    expect_output(squares ? "sqnorm" : "sum", &g, &ref, TOL_REDUCE);
    free(x), free(dx);
    guarded_free(&g);
    ts_tensor_free(&tx);
}

/* ---- optimizer: p = kind, n, step, weight_decay*100 ---- */

static void conf_optim(void *argp)
{
    conf_arg *a = argp;
    ts_optim_params o = {.kind = (ts_optim_kind)a->p[0], .lr = 0.1f, .beta1 = 0.9f,
                         .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = (float)a->p[3] / 100.0f,
                         .grad_scale = 0.5f, .step = a->p[2]};
    int64_t n = a->p[1];
    rng_t r;
    rng_seed(&r, a->seed);
    float *p = rand_floats(&r, n, -1, 1), *g = rand_floats(&r, n, -1, 1);
    float *m = rand_floats(&r, n, -0.1f, 0.1f), *v = rand_floats(&r, n, 0, 0.01f);
    ts_tensor tg;
    guarded gp, gm, gv;
    REQUIRE_OK(upload(&tg, a->dev, TS_F32, TS_SHAPE(n), g));
    REQUIRE_OK(guarded_alloc(&gp, a->dev, TS_SHAPE(n), p));
    REQUIRE_OK(guarded_alloc(&gm, a->dev, TS_SHAPE(n), m));
    REQUIRE_OK(guarded_alloc(&gv, a->dev, TS_SHAPE(n), v));
    REQUIRE_OK(ts_optimizer_update(&gp.t, &tg, &gm.t, &gv.t, &o));
    double *rp = to_double(p, n), *rm = to_double(m, n), *rv = to_double(v, n), *dg = to_double(g, n);
    ref_optim_update(rp, rm, rv, dg, n, &o);
    expect_output("param", &gp, rp, TOL_ELEM);
    /* The update itself, not only the parameter it lands on. */
    float *out = malloc((size_t)n * sizeof *out);
    int64_t bad;
    REQUIRE_OK(guarded_read(&gp, out, &bad));
    double *dref = malloc((size_t)n * sizeof *dref);
    for (int64_t i = 0; i < n; i++) dref[i] = rp[i] - p[i], out[i] -= p[i];
    check_close("update", out, dref, n, 1e-9);
    if (o.kind != TS_OPTIM_SGD) expect_output("m", &gm, rm, TOL_ELEM);
    if (o.kind >= TS_OPTIM_ADAM) expect_output("v", &gv, rv, TOL_ELEM);
    free(p), free(g), free(m), free(v), free(rp), free(rm), free(rv), free(dg), free(out), free(dref);
    guarded_free(&gp), guarded_free(&gm), guarded_free(&gv);
    ts_tensor_free(&tg);
}

/* ---- device limits: p = n, s100 (triad) or n, iterations (fma loop) ---- */

static void conf_triad(void *argp)
{
    conf_arg *a = argp;
    int64_t n = a->p[0];
    float sc = (float)a->p[1] / 100.0f;
    rng_t r;
    rng_seed(&r, a->seed);
    float *b = rand_floats(&r, n, -2, 2), *c = rand_floats(&r, n, -2, 2);
    ts_tensor tb, tc;
    guarded g;
    REQUIRE_OK(upload(&tb, a->dev, TS_F32, TS_SHAPE(n), b));
    REQUIRE_OK(upload(&tc, a->dev, TS_F32, TS_SHAPE(n), c));
    REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(n), NULL));
    REQUIRE_OK(ts_triad(&g.t, &tb, &tc, sc));
    double *ref = malloc((size_t)n * sizeof *ref);
    for (int64_t i = 0; i < n; i++) ref[i] = (double)b[i] + (double)sc * (double)c[i];
    expect_output("triad", &g, ref, TOL_EXACT);
    free(b), free(c), free(ref);
    guarded_free(&g);
    ts_tensor_free(&tb), ts_tensor_free(&tc);
}

static void conf_fma_loop(void *argp)
{
    conf_arg *a = argp;
    int64_t n = a->p[0], iters = a->p[1];
    const float fa = 0.999f, fb = 0.0007f; /* a contraction: rounding errors stay bounded */
    rng_t r;
    rng_seed(&r, a->seed);
    float *x = rand_floats(&r, n, -3, 3);
    guarded g;
    REQUIRE_OK(guarded_alloc(&g, a->dev, TS_SHAPE(n), x));
    REQUIRE_OK(ts_fma_loop(&g.t, iters, fa, fb));
    double *ref = malloc((size_t)n * sizeof *ref);
    for (int64_t i = 0; i < n; i++) {
        double v = x[i];
        for (int64_t k = 0; k < iters; k++) v = v * (double)fa + (double)fb;
        ref[i] = v;
    }
    expect_output("fma_loop", &g, ref, TOL_ELEM);
    free(x), free(ref);
    guarded_free(&g);
}

/* ---- registration ---- */

typedef struct case_def {
    const char *name;
    th_fn fn;
    const char *fmt; /* names of the parameters, for the test name */
    int np;
    int64_t params[20][8];
    int nshapes;
} case_def;

static const case_def cases[] = {
    {"fill", conf_fill, "n=%lld value#%lld", 2, {{1, 0}, {1000, 0}, {4099, 1}, {37, 2}}, 4},
    {"copy", conf_copy, "n=%lld", 1, {{1}, {777}, {65537}}, 3},
    {"add", conf_elementwise, "n=%lld specials=%lld variant=%lld", 3,
     {{1, 0, 0}, {1001, 1, 0}, {70001, 0, 0}, {513, 0, 1}}, 4},
    {"scale", conf_elementwise, "n=%lld specials=%lld variant=%lld", 3,
     {{3, 0, 2}, {4097, 1, 2}}, 2},
    {"gelu_forward", conf_elementwise, "n=%lld specials=%lld variant=%lld", 3,
     {{1, 0, 3}, {1003, 0, 3}, {20011, 1, 3}}, 3},
    {"gelu_backward", conf_elementwise, "n=%lld specials=%lld variant=%lld", 3,
     {{1, 0, 4}, {1003, 0, 4}, {20011, 0, 4}}, 3},
    {"embedding_forward", conf_embedding_fwd, "B=%lld T=%lld C=%lld V=%lld start=%lld wpe=%lld", 6,
     {{1, 1, 1, 1, 0, 1}, {2, 7, 33, 50, 0, 1}, {3, 16, 64, 100, 0, 0}, {2, 5, 9, 20, 10, 1}}, 4},
    {"embedding_backward", conf_embedding_bwd, "B=%lld T=%lld C=%lld V=%lld start=%lld wpe=%lld", 6,
     {{1, 1, 1, 1, 0, 1}, {2, 7, 33, 50, 0, 1}, {4, 16, 64, 10, 0, 1}, {2, 5, 9, 20, 10, 0}, {3, 8, 200, 30, 5, 1},
      {2, 3, 0, 4, 0, 1}, {2, 9, 16, 100, 0, 1}, {3, 11, 24, 150, 20, 0}}, 8},
    {"embedding_bag_forward", conf_embedding_bag_fwd, "N=%lld K=%lld C=%lld G=%lld", 4,
     {{1, 1, 1, 1}, {7, 5, 33, 50}, {24, 16, 64, 3000}, {3, 64, 9, 20}, {5, 3, 200, 4}}, 5},
    {"embedding_bag_backward", conf_embedding_bag_bwd, "N=%lld K=%lld C=%lld G=%lld", 4,
     {{1, 1, 1, 1}, {7, 5, 33, 50}, {24, 16, 64, 3000}, {3, 64, 9, 20}, {5, 3, 200, 4}, {40, 8, 20, 3}}, 6},
    {"layernorm_forward", conf_layernorm_fwd, "N=%lld C=%lld out_bf16=%lld", 3,
     {{1, 1, 0}, {7, 33, 0}, {64, 768, 0}, {5, 1000, 0}, {1, 1, 1}, {7, 33, 1}, {64, 768, 1}, {5, 1000, 1}}, 8},
    {"layernorm_backward", conf_layernorm_bwd, "N=%lld C=%lld", 2,
     {{1, 2}, {7, 33}, {64, 768}, {130, 17}}, 4},
    {"matmul", conf_matmul, "batch=%lld M=%lld N=%lld K=%lld ta=%lld tb=%lld beta4=%lld shared=%lld",
     8,
     {{1, 1, 1, 1, 0, 0, 0, 0},
      {1, 7, 13, 5, 0, 0, 0, 0},
      {1, 33, 65, 17, 1, 0, 2, 0},
      {1, 33, 65, 17, 0, 1, 0, 0},
      {1, 33, 65, 17, 1, 1, 4, 0},
      {1, 128, 96, 257, 0, 1, 0, 0},
      {5, 19, 23, 11, 0, 1, 0, 0},
      {4, 16, 9, 31, 1, 0, 2, 0},
      {3, 17, 7, 5, 0, 0, 0, 1},
      {2, 9, 11, 7, 1, 1, 4, 0}},
     10},
    {"matmul_reference", conf_matmul_reference,
     "batch=%lld M=%lld N=%lld K=%lld ta=%lld tb=%lld beta4=%lld shared=%lld", 8,
     {{1, 33, 65, 17, 1, 0, 2, 0}, {1, 128, 96, 257, 0, 1, 0, 0}}, 2},
    /* small shapes take one thread; 64x300x130 and up are split over threads */
    {"matmul bf16", conf_matmul_lowp, "dtype=%lld batch=%lld M=%lld N=%lld K=%lld ta=%lld tb=%lld beta4=%lld", 8,
     {{TS_BF16, 1, 1, 1, 1, 0, 0, 0},
      {TS_BF16, 1, 33, 65, 17, 1, 0, 2},
      {TS_BF16, 1, 33, 65, 17, 0, 1, 0},
      {TS_BF16, 1, 33, 65, 17, 1, 1, 4},
      {TS_BF16, 1, 64, 300, 130, 0, 1, 0},
      {TS_BF16, 1, 300, 64, 130, 1, 0, 4},
      {TS_BF16, 1, 130, 257, 96, 0, 0, 2},
      {TS_BF16, 4, 16, 9, 31, 1, 0, 2},
      {TS_BF16, 2, 9, 11, 7, 1, 1, 4}},
     9},
    {"matmul fp16", conf_matmul_lowp, "dtype=%lld batch=%lld M=%lld N=%lld K=%lld ta=%lld tb=%lld beta4=%lld", 8,
     {{TS_F16, 1, 33, 65, 17, 1, 0, 2}, {TS_F16, 1, 64, 300, 130, 0, 1, 0}, {TS_F16, 3, 16, 9, 31, 0, 0, 4}}, 3},
#define LINEAR_FMT "dtype=%lld N=%lld C=%lld OC=%lld inp_bf16=%lld out_bf16=%lld dout_bf16=%lld"
    {"linear bf16", conf_linear_bf16_acts, LINEAR_FMT, 7,
     {{TS_BF16, 7, 33, 65, 0, 0, 0}, {TS_BF16, 64, 96, 288, 0, 0, 0}, {TS_BF16, 256, 128, 384, 0, 0, 0}}, 3},
    {"bf16 products see every write to their weights", conf_lowp_sees_writes, "dtype=%lld N=%lld C=%lld OC=%lld",
     4, {{TS_BF16, 64, 96, 288}}, 1},
    {"bf16 products see every optimizer step", conf_lowp_sees_optimizer, "dtype=%lld N=%lld C=%lld OC=%lld", 4,
     {{TS_BF16, 64, 96, 288}}, 1},
    {"linear fp16", conf_linear_bf16_acts, LINEAR_FMT, 7, {{TS_F16, 64, 96, 288, 0, 0, 0}}, 1},
    {"bf16 and fp16 rounding of ties, subnormals, overflow and NaN", conf_lowp_rounding, "dtype=%lld", 1,
     {{TS_BF16}, {TS_F16}}, 2},
    {"cast", conf_cast, "n=%lld out_bf16=%lld in_bf16=%lld", 3,
     {{1, 1, 0}, {12, 1, 0}, {1003, 1, 0}, {20011, 1, 0}, {1003, 0, 1}, {20011, 0, 1}, {1003, 1, 1}, {77, 0, 0}},
     8},
    {"cast at an offset", conf_cast, "n=%lld out_bf16=%lld in_bf16=%lld offset=%lld", 4,
     {{1003, 1, 0, 3}, {1003, 0, 1, 3}, {1003, 1, 1, 8}, {16, 1, 1, 3}}, 4},
    {"gelu bf16", conf_gelu_bf16, "n=%lld specials=%lld out_bf16=%lld inp_bf16=%lld backward=%lld", 5,
     {{1, 0, 1, 1, 0}, {1003, 1, 1, 1, 0}, {20011, 1, 1, 1, 0}, {1003, 0, 1, 0, 0}, {1003, 1, 0, 1, 0},
      {1, 0, 0, 1, 1}, {1003, 0, 0, 1, 1}, {20011, 0, 0, 1, 1}},
     8},
    {"gelu bf16 at an offset", conf_gelu_bf16,
     "n=%lld specials=%lld out_bf16=%lld inp_bf16=%lld backward=%lld offset=%lld", 6,
     {{1003, 1, 1, 1, 0, 3}, {1, 0, 1, 1, 0, 8}, {1003, 0, 1, 1, 0, 8}, {1003, 0, 0, 1, 0, 3}, {1003, 0, 0, 1, 1, 3},
      {1003, 0, 0, 1, 1, 8}},
     6},
    {"linear bf16 activations", conf_linear_bf16_acts, LINEAR_FMT, 7,
     {{TS_F32, 7, 33, 65, 1, 1, 0}, {TS_F32, 33, 40, 72, 1, 0, 0}, {TS_F32, 33, 40, 72, 0, 1, 0},
      {TS_F32, 9, 16, 67, 0, 1, 1}, {TS_BF16, 7, 33, 65, 1, 1, 0}, {TS_BF16, 256, 128, 384, 1, 1, 0},
      {TS_BF16, 64, 96, 288, 0, 1, 0}, {TS_BF16, 64, 96, 288, 1, 0, 0}, {TS_BF16, 9, 16, 67, 0, 1, 1},
      {TS_BF16, 64, 96, 288, 1, 1, 1}, {TS_BF16, 257, 96, 130, 0, 1, 0}, {TS_BF16, 257, 96, 130, 1, 1, 1}},
     12},
    {"linear bf16 activations at an offset", conf_linear_bf16_acts, LINEAR_FMT " offset=%lld", 8,
     {{TS_F32, 7, 33, 65, 1, 1, 1, 3}, {TS_BF16, 7, 33, 65, 1, 1, 1, 3}, {TS_BF16, 9, 16, 67, 1, 1, 1, 8},
      {TS_F32, 9, 16, 67, 1, 0, 1, 8}},
     4},
    {"linear_forward", conf_linear_fwd, "N=%lld C=%lld OC=%lld bias=%lld", 4,
     {{1, 1, 1, 1}, {7, 33, 65, 1}, {64, 96, 288, 1}, {9, 16, 5, 0}}, 4},
    {"linear_backward", conf_linear_bwd, "N=%lld C=%lld OC=%lld", 3,
     {{1, 1, 1}, {7, 33, 65}, {64, 96, 288}}, 3},
    {"sum_rows", conf_sum_rows, "N=%lld C=%lld accumulate=%lld", 3,
     {{1, 1, 0}, {7, 33, 1}, {300, 65, 0}, {1000, 129, 1}, {70, 96, 1}}, 5},
    {"split_heads", conf_heads, "B=%lld T=%lld K=%lld NH=%lld HS=%lld merge=%lld", 6,
     {{1, 1, 1, 1, 1, 0}, {2, 5, 3, 4, 7, 0}, {3, 9, 1, 2, 16, 0}}, 3},
    {"merge_heads", conf_heads, "B=%lld T=%lld K=%lld NH=%lld HS=%lld merge=%lld", 6,
     {{1, 1, 1, 1, 1, 1}, {2, 5, 3, 4, 7, 1}, {3, 9, 1, 2, 16, 1}}, 3},
    {"heads 16-bit", conf_heads, "B=%lld T=%lld K=%lld NH=%lld HS=%lld merge=%lld dtype=%lld", 7,
     {{1, 1, 1, 1, 1, 0, 1}, {2, 5, 3, 4, 7, 0, 1}, {3, 9, 1, 2, 16, 1, 1}, {2, 5, 3, 4, 7, 1, 2},
      {3, 9, 1, 2, 16, 0, 2}, {2, 5, 3, 4, 7, 1, 1}},
     6},
    {"softmax_causal_forward", conf_softmax, "BH=%lld T=%lld in_place=%lld backward=%lld", 4,
     {{1, 1, 0, 0}, {3, 17, 0, 0}, {8, 64, 1, 0}, {2, 130, 0, 0}, {1, 8, 0, 0}, {5, 24, 0, 0}}, 6},
    {"softmax_causal_backward", conf_softmax, "BH=%lld T=%lld in_place=%lld backward=%lld", 4,
     {{1, 1, 0, 1}, {3, 17, 0, 1}, {8, 64, 1, 1}, {2, 130, 0, 1}, {1, 8, 0, 1}, {5, 24, 0, 1}}, 6},
    {"softmax_masked_forward", conf_softmax_masked, "B=%lld NH=%lld T=%lld causal=%lld in_place=%lld backward=%lld",
     6, {{1, 1, 1, 0, 0, 0}, {3, 2, 17, 0, 0, 0}, {4, 2, 64, 1, 1, 0}, {2, 1, 130, 0, 1, 0}, {5, 3, 9, 1, 0, 0},
         {5, 2, 24, 0, 0, 0}, {5, 2, 24, 1, 0, 0}}, 7},
    {"softmax_masked_backward", conf_softmax_masked, "B=%lld NH=%lld T=%lld causal=%lld in_place=%lld backward=%lld",
     6, {{1, 1, 1, 0, 0, 1}, {3, 2, 17, 0, 0, 1}, {4, 2, 64, 1, 1, 1}, {2, 1, 130, 0, 1, 1}, {5, 2, 24, 0, 0, 1}}, 5},
    {"pool_max_forward", conf_pool_max, "B=%lld T=%lld C=%lld backward=%lld", 4,
     {{1, 1, 1, 0}, {3, 9, 33, 0}, {4, 48, 128, 0}, {2, 130, 7, 0}}, 4},
    {"pool_max_backward", conf_pool_max, "B=%lld T=%lld C=%lld backward=%lld", 4,
     {{1, 1, 1, 1}, {3, 9, 33, 1}, {4, 48, 128, 1}, {2, 130, 7, 1}}, 4},
/* fused blocks hold 64 query rows (in the CPU's causal backward 16 up to
 * T=64, 32 up to T=128): T=40, 72, 130 and 150 cross block edges. The
 * composite route's kernels are the softmax and GEMM ops checked above, so
 * it keeps to small shapes (oclgrind runs these too, slowly). */
#define ATTENTION_SMALL(route, bw)                                                                 \
    {1, 1, 4, 1, 0, route, bw}, {2, 9, 12, 3, 0, route, bw}, {1, 1, 4, 1, 2, route, bw},                \
        {3, 9, 12, 3, 2, route, bw}, {3, 9, 12, 3, 1, route, bw}
#define ATTENTION_LARGE(route, bw)                                                                 \
    {2, 32, 64, 4, 0, route, bw}, {2, 32, 64, 4, 2, route, bw}, {2, 130, 32, 2, 1, route, bw},         \
        {1, 150, 16, 1, 0, route, bw}, {2, 200, 16, 2, 2, route, bw}, {2, 72, 32, 2, 0, route, bw},          \
        {2, 72, 32, 2, 2, route, bw}, {2, 64, 128, 2, 1, route, bw}, {1, 24, 256, 2, 2, route, bw},       \
        {3, 16, 32, 2, 1, route, bw}, {3, 16, 32, 2, 2, route, bw}, {2, 40, 32, 2, 0, route, bw},                 \
        {3, 40, 32, 2, 1, route, bw}
    {"attention_forward composite", conf_attention, ATTENTION_FMT, 7,
     {ATTENTION_SMALL(1, 0), {2, 32, 64, 4, 0, 1, 0}, {2, 32, 64, 4, 2, 1, 0}}, 7},
    {"attention_forward fused", conf_attention, ATTENTION_FMT, 7, {ATTENTION_SMALL(2, 0), ATTENTION_LARGE(2, 0)}, 18},
    {"attention_backward composite", conf_attention, ATTENTION_FMT, 7, {ATTENTION_SMALL(1, 1)}, 5},
    {"attention_backward fused", conf_attention, ATTENTION_FMT, 7, {ATTENTION_SMALL(2, 1), ATTENTION_LARGE(2, 1)}, 18},
    {"cast fp16", conf_cast_f16, "n=%lld direction=%lld", 2,
     {{1, 0}, {57, 0}, {10007, 0}, {65536, 1}, {333, 1}, {1001, 2}}, 6},
    {"fp16 activations", conf_f16_ops, "op=%lld shape=%lld,%lld,%lld,%lld route=%lld", 6,
     {{0, 1}, {0, 10007}, {1, 4099}, {2, 5, 96}, {2, 64, 768}, {3, 7, 33, 65}, {3, 64, 96, 130}, {3, 7, 33, 65, 0, 1},
      {3, 64, 96, 130, 0, 1}, {4, 2, 9, 12, 3, 1}, {4, 2, 9, 12, 3, 2}, {4, 2, 40, 32, 2, 2}},
     12},
    {"attention bf16 composite", conf_attention, ATTENTION_FMT " bf16=%lld", 8,
     {{2, 9, 12, 3, 0, 1, 0, 1}, {3, 9, 12, 3, 1, 1, 1, 1}, {2, 9, 12, 3, 2, 1, 1, 2}}, 3},
    {"attention bf16 fused", conf_attention, ATTENTION_FMT " bf16=%lld", 8,
     {{3, 9, 12, 3, 2, 2, 0, 1}, {3, 9, 12, 3, 2, 2, 1, 2}, {2, 72, 32, 2, 0, 2, 0, 1}, {3, 40, 32, 2, 1, 2, 1, 1},
      {2, 72, 32, 2, 2, 2, 1, 2}, {2, 64, 128, 2, 0, 2, 1, 1}, {3, 9, 12, 3, 1, 2, 1, 3}, {2, 40, 32, 2, 0, 2, 1, 3}},
     8},
    {"cross_entropy", conf_cross_entropy, "N=%lld V=%lld outputs=%lld in_place=%lld", 4,
     {{1, 1, 7, 0}, {5, 33, 7, 0}, {9, 1000, 5, 0}, {4, 50257, 5, 0}, {6, 301, 1, 0},
      {6, 301, 5, 1}, {3, 77, 3, 1}},
     7},
    {"cross_entropy bf16", conf_cross_entropy, "N=%lld V=%lld outputs=%lld in_place=%lld bf16=%lld", 5,
     {{1, 1, 5, 1, 1}, {5, 33, 7, 0, 1}, {9, 1000, 5, 1, 1}, {4, 5003, 5, 1, 1}, {6, 301, 5, 0, 1}, {9, 1000, 1, 0, 2},
      {6, 301, 7, 0, 2}, {9, 1000, 4, 0, 3}, {3, 77, 5, 1, 1}},
     9},
    {"cross_entropy vocabulary-parallel", conf_ce_shard, "N=%lld V=%lld shards=%lld", 3,
     {{1, 2, 2}, {5, 33, 2}, {9, 1001, 4}, {4, 50257, 3}}, 4},
    {"cross_entropy vocabulary-parallel bf16", conf_ce_shard, "N=%lld V=%lld shards=%lld bf16=%lld", 4,
     {{1, 2, 2, 1}, {5, 33, 2, 1}, {9, 1001, 4, 1}, {4, 5003, 3, 1}}, 4},
    {"sum", conf_reduce, "n=%lld squares=%lld", 2, {{1, 0}, {1000, 0}, {1000003, 0}}, 3},
    {"sqnorm", conf_reduce, "n=%lld squares=%lld", 2, {{1, 1}, {4097, 1}, {1000003, 1}}, 3},
    {"optimizer sgd", conf_optim, "kind=%lld n=%lld step=%lld wd100=%lld", 4,
     {{0, 1, 1, 0}, {0, 10007, 3, 10}}, 2},
    {"optimizer momentum", conf_optim, "kind=%lld n=%lld step=%lld wd100=%lld", 4,
     {{1, 1, 1, 0}, {1, 10007, 3, 10}}, 2},
    {"optimizer adam", conf_optim, "kind=%lld n=%lld step=%lld wd100=%lld", 4,
     {{2, 1, 1, 0}, {2, 10007, 7, 10}}, 2},
    {"optimizer adamw", conf_optim, "kind=%lld n=%lld step=%lld wd100=%lld", 4,
     {{3, 1, 1, 0}, {3, 10007, 7, 10}, {3, 333, 1000, 0}}, 3},
    {"triad", conf_triad, "n=%lld s100=%lld", 2, {{1, 300}, {1001, -75}, {70001, 300}}, 3},
    {"fma_loop", conf_fma_loop, "n=%lld iterations=%lld", 2,
     {{1, 1}, {63, 100}, {96, 1000}, {1000, 37}, {12345, 1000}}, 5},
};

int main(int argc, char **argv)
{
    int ndev = ts_device_count();
    th_header_devices();
    for (int d = 0; d < ndev; d++) {
        ts_device *dev = ts_device_at(d);
        const ts_device_info *info = ts_device_get_info(dev);
        for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
            for (int s = 0; s < cases[c].nshapes; s++) {
                const int64_t *p = cases[c].params[s];
                char params[256], name[384];
                snprintf(params, sizeof params, cases[c].fmt, (long long)p[0], (long long)p[1],
                         (long long)p[2], (long long)p[3], (long long)p[4], (long long)p[5],
                         (long long)p[6], (long long)p[7]);
                snprintf(name, sizeof name, "%s %s on %s", cases[c].name, params, info->id);
                th_add_owned(name, cases[c].fn, arg_new(dev, p, cases[c].np));
            }
        }
    }
    return th_run(argc, argv);
}
