/* Gradient checks: every backward op, on every device, against central
 * finite differences of the double-precision forward reference.
 *
 * For an op y = f(x) and a random weighting g, the loss L = sum(g * y) has
 * dL/dx = the op's backward with dout = g. Finite differences of L in double
 * (step 1e-6) are exact to about 1e-10, far below f32 rounding, so an
 * NMSE bound of 1e-8 separates a right gradient from a wrong one. */
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "reference.h"
#include "testutil.h"

#define TOL 1e-8
#define STEP 1e-6

typedef void (*forward_fn)(void *ctx, double *out);

/* d(sum(g * f))/d(x[j]) for each j, perturbing x in place (x is read by f
 * through ctx). */
static void finite_diff(forward_fn f, void *ctx, double *x, int64_t nx, const double *g,
                        int64_t nout, double *grad)
{
    double *out = malloc((size_t)nout * sizeof *out);
    for (int64_t j = 0; j < nx; j++) {
        double keep = x[j], lp = 0.0, lm = 0.0;
        x[j] = keep + STEP;
        f(ctx, out);
        for (int64_t i = 0; i < nout; i++) lp += g[i] * out[i];
        x[j] = keep - STEP;
        f(ctx, out);
        for (int64_t i = 0; i < nout; i++) lm += g[i] * out[i];
        x[j] = keep;
        grad[j] = (lp - lm) / (2.0 * STEP);
    }
    free(out);
}

/* Doubles rounded to f32 and back, so the reference sees the device's inputs. */
static double *rand_doubles(rng_t *r, int64_t n, float lo, float hi)
{
    double *x = malloc((size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = (double)rng_uniform(r, lo, hi);
    return x;
}

static ts_status upload_d(ts_tensor *t, ts_device *dev, int ndim, const int64_t *shape,
                          const double *x)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *f = malloc((size_t)n * sizeof *f);
    for (int64_t i = 0; i < n; i++) f[i] = (float)x[i];
    ts_status st = upload(t, dev, TS_F32, ndim, shape, f);
    free(f);
    return st;
}

static void expect_grad(const char *what, const ts_tensor *t, const double *fd)
{
    int64_t n = ts_tensor_numel(t);
    float *out = malloc((size_t)n * sizeof *out);
    ts_status st = ts_tensor_read(t, out, (size_t)n * sizeof *out);
    if (st) th_fail(__FILE__, __LINE__, "%s: %s", what, ts_last_error());
    else check_close(what, out, fd, n, TOL);
    free(out);
}

/* ---- GELU ---- */

typedef struct { double *x; int64_t n; } gelu_ctx;
static void gelu_f(void *c, double *out) { ref_gelu_forward(out, ((gelu_ctx *)c)->x, ((gelu_ctx *)c)->n); }

static void grad_gelu(void *arg)
{
    ts_device *dev = arg;
    int64_t n = 257;
    rng_t r;
    rng_seed(&r, 11);
    gelu_ctx c = {rand_doubles(&r, n, -4, 4), n};
    double *g = rand_doubles(&r, n, -1, 1), *fd = malloc((size_t)n * sizeof *fd);
    finite_diff(gelu_f, &c, c.x, n, g, n, fd);
    ts_tensor tx, tg, tdx;
    REQUIRE_OK(upload_d(&tx, dev, TS_SHAPE(n), c.x));
    REQUIRE_OK(upload_d(&tg, dev, TS_SHAPE(n), g));
    REQUIRE_OK(ts_tensor_alloc(&tdx, dev, TS_F32, TS_SHAPE(n)));
    REQUIRE_OK(ts_gelu_backward(&tdx, &tx, &tg));
    expect_grad("gelu dinp", &tdx, fd);
    ts_tensor_free(&tx), ts_tensor_free(&tg), ts_tensor_free(&tdx);
    free(c.x), free(g), free(fd);
}

/* ---- layernorm ---- */

typedef struct { double *x, *w, *b; int64_t N, C; } ln_ctx;
static void ln_f(void *p, double *out)
{
    ln_ctx *c = p;
    ref_layernorm_forward(out, NULL, NULL, c->x, c->w, c->b, c->N, c->C, 1e-5);
}

static void grad_layernorm(void *arg)
{
    ts_device *dev = arg;
    int64_t N = 3, C = 13;
    rng_t r;
    rng_seed(&r, 12);
    ln_ctx c = {rand_doubles(&r, N * C, -2, 2), rand_doubles(&r, C, 0.5f, 1.5f),
                rand_doubles(&r, C, -1, 1), N, C};
    double *g = rand_doubles(&r, N * C, -1, 1);
    double *fdx = malloc((size_t)(N * C) * sizeof(double)), *fdw = malloc((size_t)C * sizeof(double)),
           *fdb = malloc((size_t)C * sizeof(double));
    finite_diff(ln_f, &c, c.x, N * C, g, N * C, fdx);
    finite_diff(ln_f, &c, c.w, C, g, N * C, fdw);
    finite_diff(ln_f, &c, c.b, C, g, N * C, fdb);
    ts_tensor tx, tw, tb, tg, to, tm, trs, tdx, tdw, tdb;
    REQUIRE_OK(upload_d(&tx, dev, TS_SHAPE(N, C), c.x));
    REQUIRE_OK(upload_d(&tw, dev, TS_SHAPE(C), c.w));
    REQUIRE_OK(upload_d(&tb, dev, TS_SHAPE(C), c.b));
    REQUIRE_OK(upload_d(&tg, dev, TS_SHAPE(N, C), g));
    REQUIRE_OK(ts_tensor_alloc(&to, dev, TS_F32, TS_SHAPE(N, C)));
    REQUIRE_OK(ts_tensor_alloc(&tm, dev, TS_F32, TS_SHAPE(N)));
    REQUIRE_OK(ts_tensor_alloc(&trs, dev, TS_F32, TS_SHAPE(N)));
    REQUIRE_OK(ts_tensor_zeros(&tdx, dev, TS_F32, TS_SHAPE(N, C)));
    REQUIRE_OK(ts_tensor_zeros(&tdw, dev, TS_F32, TS_SHAPE(C)));
    REQUIRE_OK(ts_tensor_zeros(&tdb, dev, TS_F32, TS_SHAPE(C)));
    REQUIRE_OK(ts_layernorm_forward(&to, &tm, &trs, &tx, &tw, &tb, 1e-5f));
    REQUIRE_OK(ts_layernorm_backward(&tdx, &tdw, &tdb, &tg, &tx, &tw, &tm, &trs));
    expect_grad("layernorm dinp", &tdx, fdx);
    expect_grad("layernorm dweight", &tdw, fdw);
    expect_grad("layernorm dbias", &tdb, fdb);
    ts_tensor *all[] = {&tx, &tw, &tb, &tg, &to, &tm, &trs, &tdx, &tdw, &tdb};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) ts_tensor_free(all[i]);
    free(c.x), free(c.w), free(c.b), free(g), free(fdx), free(fdw), free(fdb);
}

/* ---- linear ---- */

typedef struct { double *x, *w, *b; int64_t N, C, OC; } lin_ctx;
static void lin_f(void *p, double *out)
{
    lin_ctx *c = p;
    ref_gemm(out, c->x, c->w, c->b, 1, c->N, c->OC, c->C, false, true, 1.0, 0.0, 0);
}

static void grad_linear(void *arg)
{
    ts_device *dev = arg;
    int64_t N = 5, C = 7, OC = 6;
    rng_t r;
    rng_seed(&r, 13);
    lin_ctx c = {rand_doubles(&r, N * C, -1, 1), rand_doubles(&r, OC * C, -1, 1),
                 rand_doubles(&r, OC, -1, 1), N, C, OC};
    double *g = rand_doubles(&r, N * OC, -1, 1);
    double *fdx = malloc((size_t)(N * C) * sizeof(double)),
           *fdw = malloc((size_t)(OC * C) * sizeof(double)), *fdb = malloc((size_t)OC * sizeof(double));
    finite_diff(lin_f, &c, c.x, N * C, g, N * OC, fdx);
    finite_diff(lin_f, &c, c.w, OC * C, g, N * OC, fdw);
    finite_diff(lin_f, &c, c.b, OC, g, N * OC, fdb);
    ts_tensor tx, tw, tg, tdx, tdw, tdb;
    REQUIRE_OK(upload_d(&tx, dev, TS_SHAPE(N, C), c.x));
    REQUIRE_OK(upload_d(&tw, dev, TS_SHAPE(OC, C), c.w));
    REQUIRE_OK(upload_d(&tg, dev, TS_SHAPE(N, OC), g));
    REQUIRE_OK(ts_tensor_alloc(&tdx, dev, TS_F32, TS_SHAPE(N, C)));
    REQUIRE_OK(ts_tensor_zeros(&tdw, dev, TS_F32, TS_SHAPE(OC, C)));
    REQUIRE_OK(ts_tensor_zeros(&tdb, dev, TS_F32, TS_SHAPE(OC)));
    REQUIRE_OK(ts_linear_backward(&tdx, &tdw, &tdb, &tg, &tx, &tw));
    expect_grad("linear dinp", &tdx, fdx);
    expect_grad("linear dweight", &tdw, fdw);
    expect_grad("linear dbias", &tdb, fdb);
    ts_tensor *all[] = {&tx, &tw, &tg, &tdx, &tdw, &tdb};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) ts_tensor_free(all[i]);
    free(c.x), free(c.w), free(c.b), free(g), free(fdx), free(fdw), free(fdb);
}

/* ---- causal softmax ---- */

typedef struct { double *x; int64_t BH, T; double scale; } sm_ctx;
static void sm_f(void *p, double *out)
{
    sm_ctx *c = p;
    ref_softmax_causal_forward(out, c->x, c->BH, c->T, c->scale);
}

static void grad_softmax(void *arg)
{
    ts_device *dev = arg;
    int64_t BH = 2, T = 6, n = BH * T * T;
    rng_t r;
    rng_seed(&r, 14);
    sm_ctx c = {rand_doubles(&r, n, -3, 3), BH, T, 0.5};
    double *g = rand_doubles(&r, n, -1, 1), *fd = malloc((size_t)n * sizeof *fd);
    finite_diff(sm_f, &c, c.x, n, g, n, fd);
    ts_tensor tx, tg, tatt, tdx;
    REQUIRE_OK(upload_d(&tx, dev, TS_SHAPE(BH, T, T), c.x));
    REQUIRE_OK(upload_d(&tg, dev, TS_SHAPE(BH, T, T), g));
    REQUIRE_OK(ts_tensor_alloc(&tatt, dev, TS_F32, TS_SHAPE(BH, T, T)));
    REQUIRE_OK(ts_tensor_alloc(&tdx, dev, TS_F32, TS_SHAPE(BH, T, T)));
    REQUIRE_OK(ts_softmax_causal_forward(&tatt, &tx, 0.5f));
    REQUIRE_OK(ts_softmax_causal_backward(&tdx, &tatt, &tg, 0.5f));
    expect_grad("softmax_causal dpreatt", &tdx, fd);
    ts_tensor_free(&tx), ts_tensor_free(&tg), ts_tensor_free(&tatt), ts_tensor_free(&tdx);
    free(c.x), free(g), free(fd);
}

/* ---- attention (split heads, batched matmuls, softmax, merge heads) ---- */

typedef struct { double *qkv; int64_t B, T, C, NH; } att_ctx;
static void att_f(void *p, double *out)
{
    att_ctx *c = p;
    ref_attention_forward(out, c->qkv, c->B, c->T, c->C, c->NH);
}

static void grad_attention(void *arg)
{
    ts_device *dev = arg;
    int64_t B = 2, T = 5, C = 8, NH = 2;
    rng_t r;
    rng_seed(&r, 15);
    att_ctx c = {rand_doubles(&r, B * T * 3 * C, -1, 1), B, T, C, NH};
    double *g = rand_doubles(&r, B * T * C, -1, 1);
    double *fd = malloc((size_t)(B * T * 3 * C) * sizeof *fd);
    finite_diff(att_f, &c, c.qkv, B * T * 3 * C, g, B * T * C, fd);
    ts_tensor tq, tg, to, tdq;
    ts_attention_ws ws;
    REQUIRE_OK(upload_d(&tq, dev, TS_SHAPE(B, T, 3 * C), c.qkv));
    REQUIRE_OK(upload_d(&tg, dev, TS_SHAPE(B, T, C), g));
    REQUIRE_OK(ts_tensor_alloc(&to, dev, TS_F32, TS_SHAPE(B, T, C)));
    REQUIRE_OK(ts_tensor_alloc(&tdq, dev, TS_F32, TS_SHAPE(B, T, 3 * C)));
    REQUIRE_OK(ts_attention_ws_alloc(&ws, dev, B, T, C, NH));
    REQUIRE_OK(ts_attention_forward(&to, &tq, &ws));
    REQUIRE_OK(ts_attention_backward(&tdq, &tg, &ws));
    expect_grad("attention dqkv", &tdq, fd);
    ts_attention_ws_free(&ws);
    ts_tensor_free(&tq), ts_tensor_free(&tg), ts_tensor_free(&to), ts_tensor_free(&tdq);
    free(c.qkv), free(g), free(fd);
}

/* ---- masked softmax and attention over a padded batch ---- */

typedef struct { double *x; const int32_t *len; int64_t BH, NH, T; double scale; int causal; } msm_ctx;
static void msm_f(void *p, double *out)
{
    msm_ctx *c = p;
    ref_softmax_masked_forward(out, c->x, c->len, c->BH, c->NH, c->T, c->scale, c->causal);
}

static void grad_softmax_masked(void *arg)
{
    ts_device *dev = arg;
    int64_t B = 3, NH = 2, BH = B * NH, T = 6, n = BH * T * T;
    int32_t len[3] = {6, 2, 4};
    rng_t r;
    rng_seed(&r, 19);
    for (int causal = 0; causal < 2; causal++) {
        msm_ctx c = {rand_doubles(&r, n, -3, 3), len, BH, NH, T, 0.5, causal};
        double *g = rand_doubles(&r, n, -1, 1), *fd = malloc((size_t)n * sizeof *fd);
        finite_diff(msm_f, &c, c.x, n, g, n, fd);
        ts_tensor tx, tg, tl, tatt, tdx;
        REQUIRE_OK(upload_d(&tx, dev, TS_SHAPE(BH, T, T), c.x));
        REQUIRE_OK(upload_d(&tg, dev, TS_SHAPE(BH, T, T), g));
        REQUIRE_OK(upload(&tl, dev, TS_I32, TS_SHAPE(B), len));
        REQUIRE_OK(ts_tensor_alloc(&tatt, dev, TS_F32, TS_SHAPE(BH, T, T)));
        REQUIRE_OK(ts_tensor_alloc(&tdx, dev, TS_F32, TS_SHAPE(BH, T, T)));
        REQUIRE_OK(ts_softmax_masked_forward(&tatt, &tx, &tl, NH, 0.5f, causal));
        REQUIRE_OK(ts_softmax_masked_backward(&tdx, &tatt, &tg, 0.5f));
        expect_grad(causal ? "softmax_masked (causal) dpreatt" : "softmax_masked dpreatt", &tdx, fd);
        ts_tensor_free(&tx), ts_tensor_free(&tg), ts_tensor_free(&tl), ts_tensor_free(&tatt), ts_tensor_free(&tdx);
        free(c.x), free(g), free(fd);
    }
}

typedef struct { double *qkv; const int32_t *len; int64_t B, T, C, NH; } matt_ctx;
static void matt_f(void *p, double *out)
{
    matt_ctx *c = p;
    ref_attention_masked_forward(out, c->qkv, c->B, c->T, c->C, c->NH, c->len, false);
}

static void grad_attention_bidirectional(void *arg)
{
    ts_device *dev = arg;
    int64_t B = 2, T = 5, C = 8, NH = 2;
    int32_t len[2] = {3, 5};
    rng_t r;
    rng_seed(&r, 20);
    matt_ctx c = {rand_doubles(&r, B * T * 3 * C, -1, 1), len, B, T, C, NH};
    double *g = rand_doubles(&r, B * T * C, -1, 1);
    double *fd = malloc((size_t)(B * T * 3 * C) * sizeof *fd);
    finite_diff(matt_f, &c, c.qkv, B * T * 3 * C, g, B * T * C, fd);
    ts_tensor tq, tg, tl, to, tdq;
    ts_attention_ws ws;
    REQUIRE_OK(upload_d(&tq, dev, TS_SHAPE(B, T, 3 * C), c.qkv));
    REQUIRE_OK(upload_d(&tg, dev, TS_SHAPE(B, T, C), g));
    REQUIRE_OK(upload(&tl, dev, TS_I32, TS_SHAPE(B), len));
    REQUIRE_OK(ts_tensor_alloc(&to, dev, TS_F32, TS_SHAPE(B, T, C)));
    REQUIRE_OK(ts_tensor_alloc(&tdq, dev, TS_F32, TS_SHAPE(B, T, 3 * C)));
    REQUIRE_OK(ts_attention_ws_alloc(&ws, dev, B, T, C, NH));
    ws.key_len = &tl;
    ws.bidirectional = true;
    REQUIRE_OK(ts_attention_forward(&to, &tq, &ws));
    REQUIRE_OK(ts_attention_backward(&tdq, &tg, &ws));
    expect_grad("bidirectional attention dqkv", &tdq, fd);
    ts_attention_ws_free(&ws);
    ts_tensor_free(&tq), ts_tensor_free(&tg), ts_tensor_free(&tl), ts_tensor_free(&to), ts_tensor_free(&tdq);
    free(c.qkv), free(g), free(fd);
}

/* ---- embedding ---- */

typedef struct { double *wte, *wpe; int32_t *tok; int64_t N, T, C, V; } emb_ctx;
static void emb_f(void *p, double *out)
{
    emb_ctx *c = p;
    ref_embedding_forward(out, c->tok, c->wte, c->wpe, c->N, c->T, c->C, c->V, 0);
}

static void grad_embedding(void *arg)
{
    ts_device *dev = arg;
    int64_t B = 3, T = 4, C = 5, V = 6, N = B * T;
    rng_t r;
    rng_seed(&r, 16);
    emb_ctx c = {rand_doubles(&r, V * C, -1, 1), rand_doubles(&r, T * C, -1, 1),
                 rand_ints(&r, N, 0, (int32_t)V), N, T, C, V};
    double *g = rand_doubles(&r, N * C, -1, 1);
    double *fdte = malloc((size_t)(V * C) * sizeof(double)), *fdpe = malloc((size_t)(T * C) * sizeof(double));
    finite_diff(emb_f, &c, c.wte, V * C, g, N * C, fdte);
    finite_diff(emb_f, &c, c.wpe, T * C, g, N * C, fdpe);
    ts_tensor ttok, tg, tdte, tdpe;
    REQUIRE_OK(upload(&ttok, dev, TS_I32, TS_SHAPE(B, T), c.tok));
    REQUIRE_OK(upload_d(&tg, dev, TS_SHAPE(B, T, C), g));
    REQUIRE_OK(ts_tensor_zeros(&tdte, dev, TS_F32, TS_SHAPE(V, C)));
    REQUIRE_OK(ts_tensor_zeros(&tdpe, dev, TS_F32, TS_SHAPE(T, C)));
    REQUIRE_OK(ts_embedding_backward(&tdte, &tdpe, &tg, &ttok));
    expect_grad("embedding dwte", &tdte, fdte);
    expect_grad("embedding dwpe", &tdpe, fdpe);
    ts_tensor_free(&ttok), ts_tensor_free(&tg), ts_tensor_free(&tdte), ts_tensor_free(&tdpe);
    free(c.wte), free(c.wpe), free(c.tok), free(g), free(fdte), free(fdpe);
}

/* ---- fused softmax + cross-entropy ---- */

typedef struct { double *x; int32_t *t; int64_t N, V; } ce_ctx;
static void ce_f(void *p, double *out)
{
    ce_ctx *c = p;
    ref_cross_entropy(out, NULL, NULL, c->x, c->t, c->N, c->V, 1.0);
}

static void grad_cross_entropy(void *arg)
{
    ts_device *dev = arg;
    int64_t N = 4, V = 9;
    rng_t r;
    rng_seed(&r, 17);
    ce_ctx c = {rand_doubles(&r, N * V, -3, 3), rand_ints(&r, N, 0, (int32_t)V), N, V};
    c.t[2] = -1; /* an ignored position has no gradient */
    double *g = malloc((size_t)N * sizeof *g);
    for (int64_t i = 0; i < N; i++) g[i] = 1.0 / (double)N; /* mean loss */
    double *fd = malloc((size_t)(N * V) * sizeof *fd);
    finite_diff(ce_f, &c, c.x, N * V, g, N, fd);
    ts_tensor tx, tt, td;
    REQUIRE_OK(upload_d(&tx, dev, TS_SHAPE(N, V), c.x));
    REQUIRE_OK(upload(&tt, dev, TS_I32, TS_SHAPE(N), c.t));
    REQUIRE_OK(ts_tensor_alloc(&td, dev, TS_F32, TS_SHAPE(N, V)));
    REQUIRE_OK(ts_cross_entropy(NULL, NULL, &td, &tx, &tt, 1.0f / (float)N));
    expect_grad("cross_entropy dlogits", &td, fd);
    ts_tensor_free(&tx), ts_tensor_free(&tt), ts_tensor_free(&td);
    free(c.x), free(c.t), free(g), free(fd);
}

/* ---- heads permutes: each is the other's backward ---- */

typedef struct { double *x; int64_t B, T, K, NH, HS; } heads_ctx;
static void split_f(void *p, double *out)
{
    heads_ctx *c = p;
    ref_split_heads(out, c->x, c->B, c->T, c->K, c->NH, c->HS);
}

static void grad_split_heads(void *arg)
{
    ts_device *dev = arg;
    int64_t B = 2, T = 3, K = 3, NH = 2, HS = 4, n = B * T * K * NH * HS;
    rng_t r;
    rng_seed(&r, 18);
    heads_ctx c = {rand_doubles(&r, n, -1, 1), B, T, K, NH, HS};
    double *g = rand_doubles(&r, n, -1, 1), *fd = malloc((size_t)n * sizeof *fd);
    finite_diff(split_f, &c, c.x, n, g, n, fd);
    ts_tensor tg, tdx;
    REQUIRE_OK(upload_d(&tg, dev, TS_SHAPE(n), g));
    REQUIRE_OK(ts_tensor_alloc(&tdx, dev, TS_F32, TS_SHAPE(n)));
    REQUIRE_OK(ts_merge_heads(&tdx, &tg, B, T, K, NH));
    expect_grad("split_heads dinp (merge_heads)", &tdx, fd);
    ts_tensor_free(&tg), ts_tensor_free(&tdx);
    free(c.x), free(g), free(fd);
}

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        th_fn fn;
    } checks[] = {
        {"gelu backward matches finite differences", grad_gelu},
        {"layernorm backward matches finite differences", grad_layernorm},
        {"linear backward matches finite differences", grad_linear},
        {"causal softmax backward matches finite differences", grad_softmax},
        {"attention backward matches finite differences", grad_attention},
        {"masked softmax backward matches finite differences", grad_softmax_masked},
        {"bidirectional attention over a padded batch matches finite differences", grad_attention_bidirectional},
        {"embedding backward matches finite differences", grad_embedding},
        {"cross-entropy gradient matches finite differences", grad_cross_entropy},
        {"merge_heads is split_heads' gradient", grad_split_heads},
    };
    th_header_devices();
    for (int d = 0; d < ts_device_count(); d++) {
        ts_device *dev = ts_device_at(d);
        for (size_t i = 0; i < sizeof checks / sizeof *checks; i++) {
            char name[256];
            snprintf(name, sizeof name, "%s on %s", checks[i].name, ts_device_get_info(dev)->id);
            th_add(name, checks[i].fn, dev);
        }
    }
    return th_run(argc, argv);
}
