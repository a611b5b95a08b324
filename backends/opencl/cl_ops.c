/* The OpenCL backend's ops: argument packing, launches, and the op switch.
 * Nothing here waits for the device: every op is enqueued on the device's one
 * in-order queue and returns. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../cpu/cpu_attention.h"
#include "cl_internal.h"

/* ---- argument packing ---- */

static void push(ts_cl_args *a, size_t size, const void *value)
{
    a->size[a->n] = size;
    a->value[a->n] = value;
    a->n++;
}

void ts_cl_arg_mem(ts_cl_args *a, cl_mem m)
{
    int k = a->nm++;
    a->mem[k] = m;
    push(a, sizeof(cl_mem), &a->mem[k]);
}

void ts_cl_arg_tensor(ts_cl_args *a, const ts_tensor *t)
{
    int k = a->nm++;
    a->mem[k] = t ? ts_cl_mem(t) : NULL;
    a->off[k] = t ? (cl_ulong)(t->offset / ts_dtype_size(t->dtype)) : 0;
    push(a, sizeof(cl_mem), &a->mem[k]);
    push(a, sizeof(cl_ulong), &a->off[k]);
}

int ts_cl_store_of(ts_dtype t)
{
    return t == TS_BF16 ? 1 : t == TS_F16 ? 2 : 0;
}

void ts_cl_arg_long(ts_cl_args *a, int64_t v)
{
    int k = a->ni++;
    a->ints[k] = (cl_long)v;
    push(a, sizeof(cl_long), &a->ints[k]);
}

/* OpenCL `int` arguments (flags). */
void ts_cl_arg_int(ts_cl_args *a, int v)
{
    int k = a->ni++;
    memcpy(&a->ints[k], &(cl_int){(cl_int)v}, sizeof(cl_int));
    push(a, sizeof(cl_int), &a->ints[k]);
}

void ts_cl_arg_float(ts_cl_args *a, float v)
{
    int k = a->nf++;
    a->floats[k] = v;
    push(a, sizeof(float), &a->floats[k]);
}

void ts_cl_arg_local(ts_cl_args *a, size_t bytes) { push(a, bytes, NULL); }

static void args_init(ts_cl_args *a) { memset(a, 0, sizeof *a); }

ts_status ts_cl_launch(ts_cl_device *d, const char *file, const char *name, cl_uint dims,
                       const size_t *global, const size_t *local, const ts_cl_args *args)
{
    cl_kernel k;
    ts_status st = ts_cl_get_kernel(d, file, name, &k);
    if (st) return st;
    for (int i = 0; i < args->n; i++) {
        cl_int err = clSetKernelArg(k, (cl_uint)i, args->size[i], args->value[i]);
        if (err != CL_SUCCESS) {
            char what[128];
            snprintf(what, sizeof what, "clSetKernelArg(%s, %d)", name, i);
            return ts_cl_fail(err, what, d);
        }
    }
    size_t g[3];
    for (cl_uint i = 0; i < dims; i++) {
        g[i] = global[i];
        if (g[i] == 0) return TS_OK;
        if (local) g[i] = (g[i] + local[i] - 1) / local[i] * local[i];
    }
    cl_int err = clEnqueueNDRangeKernel(d->queue, k, dims, NULL, g, local, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        char what[128];
        snprintf(what, sizeof what, "enqueueing kernel %s", name);
        return ts_cl_fail(err, what, d);
    }
    return TS_OK;
}

/* ---- launch shapes ---- */

static ts_status launch_1d(ts_cl_device *d, const char *file, const char *name, int64_t n,
                           const ts_cl_args *a)
{
    size_t g = (size_t)n, l = d->elem_wg;
    return ts_cl_launch(d, file, name, 1, &g, &l, a);
}

/* One work-group of row_wg items per row. */
static ts_status launch_rows(ts_cl_device *d, const char *file, const char *name, int64_t rows,
                             const ts_cl_args *a)
{
    size_t g = (size_t)rows * d->row_wg, l = d->row_wg;
    return ts_cl_launch(d, file, name, 1, &g, &l, a);
}

/* A column kernel over C columns and R row chunks: on CPU devices, when C
 * is a multiple of 8, its `8` variant (8 columns an item as float8, in
 * groups of 4 items so that every core gets some: left to itself PoCL made
 * one group of them all). */
static ts_status launch_columns(ts_cl_device *d, const char *file, const char *name, int64_t C, int64_t R,
                                const ts_cl_args *a)
{
    int vec = d->cpu_kernels && C % 8 == 0;
    char name8[64];
    snprintf(name8, sizeof name8, "%s8", name);
    size_t g[2] = {(size_t)(vec ? C / 8 : C), (size_t)R}, l[2] = {4, 1};
    return ts_cl_launch(d, file, vec ? name8 : name, 2, g, vec ? l : NULL, a);
}

/* Column reductions split rows into R chunks: CPU devices use one (a
 * work-item per column is already enough parallelism); GPUs use up to 64. */
static void row_chunks(const ts_cl_device *d, int64_t N, int64_t *R, int64_t *chunk)
{
    int64_t r = d->is_cpu ? 1 : (N + 31) / 32;
    if (r > 64) r = 64;
    if (r < 1) r = 1;
    *chunk = (N + r - 1) / r;
    *R = (N + *chunk - 1) / *chunk;
    if (*R < 1) *R = 1;
}

static ts_status finish_partials(ts_cl_device *d, ts_tensor *out, cl_mem partial, int64_t base,
                                 int64_t R, int64_t C, int accumulate)
{
    ts_cl_args a;
    args_init(&a);
    ts_cl_arg_tensor(&a, out);
    ts_cl_arg_mem(&a, partial);
    ts_cl_arg_long(&a, base);
    ts_cl_arg_long(&a, R);
    ts_cl_arg_long(&a, C);
    ts_cl_arg_int(&a, accumulate);
    return launch_1d(d, "reduce.cl", "partials_finish", C, &a);
}

/* ---- ops ---- */

static ts_status op_elementwise(ts_cl_device *d, const ts_op *op)
{
    ts_cl_args a;
    args_init(&a);
    int64_t n = ts_tensor_numel(op->out[0]);
    ts_cl_arg_tensor(&a, op->out[0]);
    switch (op->kind) {
    case TS_OP_FILL:
        ts_cl_arg_long(&a, n);
        ts_cl_arg_float(&a, op->p.fill.value);
        return launch_1d(d, "elementwise.cl", "fill", n, &a);
    case TS_OP_ADD:
        ts_cl_arg_tensor(&a, op->in[0]);
        ts_cl_arg_tensor(&a, op->in[1]);
        ts_cl_arg_long(&a, n);
        return launch_1d(d, "elementwise.cl", "add", n, &a);
    case TS_OP_SCALE:
        ts_cl_arg_tensor(&a, op->in[0]);
        ts_cl_arg_float(&a, op->p.scale.alpha);
        ts_cl_arg_long(&a, n);
        return launch_1d(d, "elementwise.cl", "scale", n, &a);
    case TS_OP_GELU_FWD:
        ts_cl_arg_tensor(&a, op->in[0]);
        ts_cl_arg_long(&a, n);
        ts_cl_arg_int(&a, ts_cl_store_of(op->out[0]->dtype));
        ts_cl_arg_int(&a, ts_cl_store_of(op->in[0]->dtype));
        /* CPU devices: 8 elements an item (float8) */
        if (d->cpu_kernels) return launch_1d(d, "elementwise.cl", "gelu_forward8", (n + 7) / 8, &a);
        return launch_1d(d, "elementwise.cl", "gelu_forward", n, &a);
    case TS_OP_GELU_BWD:
        ts_cl_arg_tensor(&a, op->in[0]);
        ts_cl_arg_tensor(&a, op->in[1]);
        ts_cl_arg_long(&a, n);
        ts_cl_arg_int(&a, ts_cl_store_of(op->in[0]->dtype));
        if (d->cpu_kernels) return launch_1d(d, "elementwise.cl", "gelu_backward8", (n + 7) / 8, &a);
        return launch_1d(d, "elementwise.cl", "gelu_backward", n, &a);
    case TS_OP_CAST:
        ts_cl_arg_tensor(&a, op->in[0]);
        ts_cl_arg_long(&a, n);
        ts_cl_arg_int(&a, ts_cl_store_of(op->out[0]->dtype));
        ts_cl_arg_int(&a, ts_cl_store_of(op->in[0]->dtype));
        return launch_1d(d, "elementwise.cl", "cast", n, &a);
    default:
        return ts_error(TS_ERR_UNSUPPORTED, "not an elementwise op");
    }
}

static ts_status op_embedding_forward(ts_cl_device *d, const ts_op *op)
{
    const __typeof__(op->p.embedding) *e = &op->p.embedding;
    ts_cl_args a;
    args_init(&a);
    ts_cl_arg_tensor(&a, op->out[0]);
    ts_cl_arg_tensor(&a, op->in[0]);
    ts_cl_arg_tensor(&a, op->in[1]);
    ts_cl_arg_tensor(&a, op->in[2]);
    ts_cl_arg_int(&a, op->in[2] != NULL);
    ts_cl_arg_long(&a, e->N);
    ts_cl_arg_long(&a, e->T);
    ts_cl_arg_long(&a, e->C);
    ts_cl_arg_long(&a, e->V);
    ts_cl_arg_long(&a, e->vocab_start);
    return launch_1d(d, "embedding.cl", "embedding_forward", e->N * e->C, &a);
}

/* CPU-type devices' scatters into [rows, C] (embedding_backward_wte_run,
 * embedding_bag_backward): groups of one item, a run of channels each (a
 * multiple of 8, the kernel's last argument; the kernels shorten the last
 * run), as many runs as compute units, so that each walks long rows */
static ts_status launch_channel_runs(ts_cl_device *d, const char *kernel, int64_t C, ts_cl_args *a)
{
    int64_t per = (C + d->compute_units - 1) / d->compute_units;
    per = (per + 7) / 8 * 8;
    ts_cl_arg_long(a, per);
    size_t g = (size_t)((C + per - 1) / per), l = 1;
    return ts_cl_launch(d, "embedding.cl", kernel, 1, &g, &l, a);
}

/* GPUs' scatters into [rows, C] (embedding_backward_wte,
 * embedding_bag_backward): rows spread over this many items a channel, so
 * that an item's chain of dependent read-modify-writes is about 1/64 of
 * the entries, not all of them; CPU-type devices keep one (there every
 * item scans every entry, and a run of channels is the parallelism). */
static int64_t scatter_chunks(const ts_cl_device *d, int64_t rows)
{
    int64_t chunks = d->cpu_kernels ? 1 : 64;
    return rows < chunks ? (rows > 0 ? rows : 1) : chunks;
}

static ts_status op_embedding_backward(ts_cl_device *d, const ts_op *op)
{
    const __typeof__(op->p.embedding) *e = &op->p.embedding;
    ts_status st;
    if (op->out[0]) {
        ts_cl_args a;
        args_init(&a);
        ts_cl_arg_tensor(&a, op->out[0]);
        ts_cl_arg_tensor(&a, op->in[0]);
        ts_cl_arg_tensor(&a, op->in[1]);
        ts_cl_arg_long(&a, e->N);
        ts_cl_arg_long(&a, e->C);
        ts_cl_arg_long(&a, e->V);
        ts_cl_arg_long(&a, e->vocab_start);
        if (d->cpu_kernels && e->C > 0 && e->C % 8 == 0) {
            st = launch_channel_runs(d, "embedding_backward_wte_run", e->C, &a);
        } else {
            int64_t chunks = scatter_chunks(d, e->V);
            ts_cl_arg_long(&a, chunks);
            st = launch_1d(d, "embedding.cl", "embedding_backward_wte", chunks * e->C, &a);
        }
        if (st) return st;
    }
    if (op->out[1]) {
        ts_cl_args a;
        args_init(&a);
        ts_cl_arg_tensor(&a, op->out[1]);
        ts_cl_arg_tensor(&a, op->in[0]);
        ts_cl_arg_long(&a, e->N);
        ts_cl_arg_long(&a, e->T);
        ts_cl_arg_long(&a, e->C);
        if (d->cpu_kernels && e->C % 8 == 0)
            st = launch_1d(d, "embedding.cl", "embedding_backward_wpe8", e->T * e->C / 8, &a);
        else
            st = launch_1d(d, "embedding.cl", "embedding_backward_wpe", e->T * e->C, &a);
        if (st) return st;
    }
    return TS_OK;
}

static ts_status op_embedding_bag(ts_cl_device *d, const ts_op *op)
{
    const __typeof__(op->p.bag) *e = &op->p.bag;
    ts_cl_args a;
    args_init(&a);
    ts_cl_arg_tensor(&a, op->out[0]);
    ts_cl_arg_tensor(&a, op->in[0]);
    ts_cl_arg_tensor(&a, op->in[1]);
    ts_cl_arg_tensor(&a, op->in[2]);
    ts_cl_arg_long(&a, e->N);
    ts_cl_arg_long(&a, e->K);
    ts_cl_arg_long(&a, e->C);
    ts_cl_arg_long(&a, e->G);
    if (op->kind == TS_OP_EMBEDDING_BAG_FWD)
        return launch_1d(d, "embedding.cl", "embedding_bag_forward", e->N * e->C, &a);
    int64_t chunks = scatter_chunks(d, e->G);
    ts_cl_arg_long(&a, chunks);
    if (d->cpu_kernels) return launch_channel_runs(d, "embedding_bag_backward", e->C, &a);
    ts_cl_arg_long(&a, 1); /* a channel an item */
    return launch_1d(d, "embedding.cl", "embedding_bag_backward", chunks * e->C, &a);
}

static ts_status op_layernorm_forward(ts_cl_device *d, const ts_op *op)
{
    ts_cl_args a;
    args_init(&a);
    ts_cl_arg_tensor(&a, op->out[0]);
    ts_cl_arg_tensor(&a, op->out[1]);
    ts_cl_arg_tensor(&a, op->out[2]);
    ts_cl_arg_int(&a, (op->out[1] ? 1 : 0) | (op->out[2] ? 2 : 0));
    ts_cl_arg_tensor(&a, op->in[0]);
    ts_cl_arg_tensor(&a, op->in[1]);
    ts_cl_arg_tensor(&a, op->in[2]);
    ts_cl_arg_long(&a, op->p.layernorm.N);
    ts_cl_arg_long(&a, op->p.layernorm.C);
    ts_cl_arg_float(&a, op->p.layernorm.eps);
    ts_cl_arg_int(&a, ts_cl_store_of(op->out[0]->dtype));
    return launch_rows(d, "layernorm.cl", "layernorm_forward", op->p.layernorm.N, &a);
}

static ts_status op_layernorm_backward(ts_cl_device *d, const ts_op *op)
{
    int64_t N = op->p.layernorm.N, C = op->p.layernorm.C;
    ts_status st;
    ts_cl_args a;
    args_init(&a);
    ts_cl_arg_tensor(&a, op->out[0]);
    ts_cl_arg_tensor(&a, op->in[0]);
    ts_cl_arg_tensor(&a, op->in[1]);
    ts_cl_arg_tensor(&a, op->in[2]);
    ts_cl_arg_tensor(&a, op->in[3]);
    ts_cl_arg_tensor(&a, op->in[4]);
    ts_cl_arg_long(&a, N);
    ts_cl_arg_long(&a, C);
    int64_t R, chunk;
    cl_mem partial;
    if (d->cpu_kernels) { /* one pass: groups of 64 rows (at most 64 groups) */
        R = (N + 63) / 64 < 64 ? (N + 63) / 64 : 64;
        chunk = (N + R - 1) / R;
        R = (N + chunk - 1) / chunk;
        if ((st = ts_cl_scratch(d, (size_t)(2 * R * C) * sizeof(float), &partial))) return st;
        ts_cl_arg_mem(&a, partial);
        ts_cl_arg_long(&a, chunk);
        if ((st = launch_rows(d, "layernorm.cl", "layernorm_backward_fused8", R, &a))) return st;
        if ((st = finish_partials(d, op->out[1], partial, 0, R, C, 1))) return st;
        return finish_partials(d, op->out[2], partial, R * C, R, C, 1);
    }
    if ((st = launch_rows(d, "layernorm.cl", "layernorm_backward_dinp", N, &a))) return st;

    row_chunks(d, N, &R, &chunk);
    if ((st = ts_cl_scratch(d, (size_t)(2 * R * C) * sizeof(float), &partial))) return st;
    args_init(&a);
    ts_cl_arg_mem(&a, partial);
    ts_cl_arg_tensor(&a, op->in[0]);
    ts_cl_arg_tensor(&a, op->in[1]);
    ts_cl_arg_tensor(&a, op->in[3]);
    ts_cl_arg_tensor(&a, op->in[4]);
    ts_cl_arg_long(&a, N);
    ts_cl_arg_long(&a, C);
    ts_cl_arg_long(&a, chunk);
    if ((st = launch_columns(d, "layernorm.cl", "layernorm_backward_params", C, R, &a))) return st;
    if ((st = finish_partials(d, op->out[1], partial, 0, R, C, 1))) return st;
    return finish_partials(d, op->out[2], partial, R * C, R, C, 1);
}

static ts_status op_sum_rows(ts_cl_device *d, const ts_op *op)
{
    int64_t N = op->p.sum_rows.N, C = op->p.sum_rows.C, R, chunk;
    row_chunks(d, N, &R, &chunk);
    cl_mem partial;
    ts_status st = ts_cl_scratch(d, (size_t)(R * C) * sizeof(float), &partial);
    if (st) return st;
    ts_cl_args a;
    args_init(&a);
    ts_cl_arg_mem(&a, partial);
    ts_cl_arg_tensor(&a, op->in[0]);
    ts_cl_arg_long(&a, N);
    ts_cl_arg_long(&a, C);
    ts_cl_arg_long(&a, chunk);
    if ((st = launch_columns(d, "reduce.cl", "sum_rows_partial", C, R, &a))) return st;
    return finish_partials(d, op->out[0], partial, 0, R, C, op->p.sum_rows.accumulate);
}

static void arg_i32(ts_cl_args *a, int64_t v) { ts_cl_arg_int(a, (int)v); }

static ts_status op_heads(ts_cl_device *d, const ts_op *op)
{
    const __typeof__(op->p.heads) *h = &op->p.heads;
    int64_t rows = h->K * h->B * h->NH * h->T;
    if (rows * h->HS > INT32_MAX)
        return ts_error(TS_ERR_UNSUPPORTED, "head permute of %lld elements exceeds 32-bit indexing",
                        (long long)(rows * h->HS));
    ts_cl_args a;
    args_init(&a);
    ts_cl_arg_tensor(&a, op->out[0]);
    ts_cl_arg_tensor(&a, op->in[0]);
    arg_i32(&a, h->B);
    arg_i32(&a, h->T);
    arg_i32(&a, h->K);
    arg_i32(&a, h->NH);
    arg_i32(&a, h->HS);
    ts_cl_arg_int(&a, op->kind == TS_OP_SPLIT_HEADS);
    ts_cl_arg_int(&a, ts_cl_store_of((op->kind == TS_OP_SPLIT_HEADS ? op->in[0] : op->out[0])->dtype));
    if (d->cpu_kernels) { /* an item per row, groups of row_wg rows */
        size_t g1[1] = {((size_t)rows + d->row_wg - 1) / d->row_wg * d->row_wg}, l1[1] = {d->row_wg};
        return ts_cl_launch(d, "attention.cl", "heads_permute_rows", 1, g1, l1, &a);
    }
    /* a group spans one row's elements: contiguous on every device */
    size_t l0 = (size_t)h->HS < d->elem_wg ? (size_t)h->HS : d->elem_wg;
    size_t g[2] = {(size_t)h->HS, (size_t)rows}, l[2] = {l0, 1};
    return ts_cl_launch(d, "attention.cl", "heads_permute", 2, g, l, &a);
}

/* CPU-type devices, T a multiple of 8: attention.cl's row8 kernels (an
 * item per row, groups of 8 rows) for the causal and the masked softmax. */
static ts_status softmax_row8(ts_cl_device *d, const ts_op *op, int fwd, const ts_tensor *lengths, int causal)
{
    int64_t rows = op->p.softmax.BH * op->p.softmax.T;
    ts_cl_args a;
    args_init(&a);
    ts_cl_arg_tensor(&a, op->out[0]);
    ts_cl_arg_tensor(&a, op->in[0]);
    if (fwd) {
        ts_cl_arg_tensor(&a, lengths);
        ts_cl_arg_int(&a, lengths != NULL);
    } else {
        ts_cl_arg_tensor(&a, op->in[1]);
    }
    ts_cl_arg_long(&a, rows);
    ts_cl_arg_long(&a, op->p.softmax.T);
    if (fwd) ts_cl_arg_long(&a, op->p.softmax.NH);
    ts_cl_arg_float(&a, op->p.softmax.scale);
    ts_cl_arg_int(&a, causal);
    size_t g = ((size_t)rows + 7) / 8 * 8, l = 8;
    return ts_cl_launch(d, "attention.cl", fwd ? "softmax_forward_row8" : "softmax_backward_row8", 1, &g, &l, &a);
}

static int use_row8(const ts_cl_device *d, const ts_op *op) { return d->cpu_kernels && op->p.softmax.T % 8 == 0; }

static ts_status op_softmax(ts_cl_device *d, const ts_op *op)
{
    int fwd = op->kind == TS_OP_SOFTMAX_CAUSAL_FWD;
    if (use_row8(d, op)) return softmax_row8(d, op, fwd, NULL, 1);
    ts_cl_args a;
    args_init(&a);
    ts_cl_arg_tensor(&a, op->out[0]);
    ts_cl_arg_tensor(&a, op->in[0]);
    if (!fwd) ts_cl_arg_tensor(&a, op->in[1]);
    int64_t rows = op->p.softmax.BH * op->p.softmax.T;
    ts_cl_arg_long(&a, rows);
    ts_cl_arg_long(&a, op->p.softmax.T);
    ts_cl_arg_float(&a, op->p.softmax.scale);
    return launch_rows(d, "attention.cl", fwd ? "softmax_causal_forward" : "softmax_causal_backward", rows, &a);
}

static ts_status op_softmax_masked(ts_cl_device *d, const ts_op *op)
{
    int fwd = op->kind == TS_OP_SOFTMAX_MASKED_FWD;
    if (use_row8(d, op)) return softmax_row8(d, op, fwd, fwd ? op->in[1] : NULL, fwd && op->p.softmax.causal);
    ts_cl_args a;
    args_init(&a);
    int64_t rows = op->p.softmax.BH * op->p.softmax.T;
    ts_cl_arg_tensor(&a, op->out[0]);
    ts_cl_arg_tensor(&a, op->in[0]);
    ts_cl_arg_tensor(&a, op->in[1]);
    ts_cl_arg_long(&a, rows);
    ts_cl_arg_long(&a, op->p.softmax.T);
    if (!fwd) {
        ts_cl_arg_float(&a, op->p.softmax.scale);
        return launch_rows(d, "attention.cl", "softmax_masked_backward", rows, &a);
    }
    ts_cl_arg_long(&a, op->p.softmax.NH);
    ts_cl_arg_float(&a, op->p.softmax.scale);
    ts_cl_arg_int(&a, op->p.softmax.causal);
    return launch_rows(d, "attention.cl", "softmax_masked_forward", rows, &a);
}

static ts_status op_pool_max(ts_cl_device *d, const ts_op *op)
{
    int64_t B = op->p.pool.B, T = op->p.pool.T, C = op->p.pool.C;
    int fwd = op->kind == TS_OP_POOL_MAX_FWD;
    int64_t n = fwd ? B * C : B * T * C;
    ts_cl_args a;
    args_init(&a);
    ts_cl_arg_tensor(&a, op->out[0]);
    if (fwd) ts_cl_arg_tensor(&a, op->out[1]);
    ts_cl_arg_tensor(&a, op->in[0]);
    ts_cl_arg_tensor(&a, op->in[1]);
    ts_cl_arg_long(&a, T);
    ts_cl_arg_long(&a, C);
    ts_cl_arg_long(&a, n);
    return launch_1d(d, "reduce.cl", fwd ? "pool_max_forward" : "pool_max_backward", n, &a);
}

static ts_status op_cross_entropy(ts_cl_device *d, const ts_op *op)
{
    ts_cl_args a;
    args_init(&a);
    ts_cl_arg_tensor(&a, op->out[0]);
    ts_cl_arg_tensor(&a, op->out[1]);
    ts_cl_arg_tensor(&a, op->out[2]);
    ts_cl_arg_int(&a, (op->out[0] ? 1 : 0) | (op->out[1] ? 2 : 0) | (op->out[2] ? 4 : 0));
    ts_cl_arg_tensor(&a, op->in[0]);
    ts_cl_arg_tensor(&a, op->in[1]);
    ts_cl_arg_int(&a, op->in[1] != NULL);
    ts_cl_arg_long(&a, op->p.cross_entropy.N);
    ts_cl_arg_long(&a, op->p.cross_entropy.V);
    ts_cl_arg_float(&a, op->p.cross_entropy.scale);
    ts_cl_arg_int(&a, op->in[0]->dtype == TS_BF16);
    ts_cl_arg_int(&a, op->out[2] && op->out[2]->dtype == TS_BF16);
    return launch_rows(d, "cross_entropy.cl", "cross_entropy", op->p.cross_entropy.N, &a);
}

static ts_status op_ce_shard(ts_cl_device *d, const ts_op *op)
{
    const __typeof__(op->p.ce_shard) *c = &op->p.ce_shard;
    ts_cl_args a;
    args_init(&a);
    switch (c->phase) {
    case 0:
        ts_cl_arg_tensor(&a, op->out[0]);
        ts_cl_arg_tensor(&a, op->out[1]);
        ts_cl_arg_tensor(&a, op->in[0]);
        ts_cl_arg_tensor(&a, op->in[1]);
        ts_cl_arg_long(&a, c->N);
        ts_cl_arg_long(&a, c->V);
        ts_cl_arg_long(&a, c->vocab_start);
        ts_cl_arg_int(&a, op->in[0]->dtype == TS_BF16);
        return launch_rows(d, "cross_entropy.cl", "ce_shard_stats", c->N, &a);
    case 1:
        ts_cl_arg_tensor(&a, op->out[0]);
        ts_cl_arg_tensor(&a, op->in[0]);
        ts_cl_arg_tensor(&a, op->in[1]);
        ts_cl_arg_long(&a, c->N);
        ts_cl_arg_long(&a, c->V);
        ts_cl_arg_int(&a, op->in[0]->dtype == TS_BF16);
        return launch_rows(d, "cross_entropy.cl", "ce_shard_sumexp", c->N, &a);
    case 2:
        ts_cl_arg_tensor(&a, op->out[0]);
        ts_cl_arg_tensor(&a, op->in[0]);
        ts_cl_arg_tensor(&a, op->in[1]);
        ts_cl_arg_tensor(&a, op->in[2]);
        ts_cl_arg_tensor(&a, op->in[3]);
        ts_cl_arg_long(&a, c->N);
        ts_cl_arg_long(&a, c->vocab_size);
        return launch_1d(d, "cross_entropy.cl", "ce_shard_loss", c->N, &a);
    default:
        ts_cl_arg_tensor(&a, op->out[0]);
        ts_cl_arg_tensor(&a, op->in[0]);
        ts_cl_arg_tensor(&a, op->in[1]);
        ts_cl_arg_tensor(&a, op->in[2]);
        ts_cl_arg_tensor(&a, op->in[3]);
        ts_cl_arg_long(&a, c->N);
        ts_cl_arg_long(&a, c->V);
        ts_cl_arg_long(&a, c->vocab_start);
        ts_cl_arg_long(&a, c->vocab_size);
        ts_cl_arg_float(&a, c->scale);
        ts_cl_arg_int(&a, op->in[0]->dtype == TS_BF16);
        return launch_rows(d, "cross_entropy.cl", "ce_shard_grad", c->N, &a);
    }
}

static ts_status op_reduce(ts_cl_device *d, const ts_op *op)
{
    int64_t n = op->p.reduce.n;
    int64_t G = (n + 4095) / 4096;
    if (G > 256) G = 256;
    if (G < 1) G = 1;
    int64_t chunk = (n + G - 1) / G;
    cl_mem partial;
    ts_status st = ts_cl_scratch(d, (size_t)G * sizeof(float), &partial);
    if (st) return st;
    ts_cl_args a;
    args_init(&a);
    ts_cl_arg_mem(&a, partial);
    ts_cl_arg_tensor(&a, op->in[0]);
    ts_cl_arg_long(&a, n);
    ts_cl_arg_long(&a, chunk);
    ts_cl_arg_int(&a, op->kind == TS_OP_SQNORM);
    if ((st = launch_rows(d, "reduce.cl", "reduce_partial", G, &a))) return st;
    args_init(&a);
    ts_cl_arg_tensor(&a, op->out[0]);
    ts_cl_arg_mem(&a, partial);
    ts_cl_arg_long(&a, G);
    return launch_rows(d, "reduce.cl", "reduce_finish", 1, &a);
}

static ts_status op_optim(ts_cl_device *d, const ts_op *op)
{
    const __typeof__(op->p.optim) *o = &op->p.optim;
    ts_cl_args a;
    args_init(&a);
    ts_cl_arg_tensor(&a, op->out[0]);
    switch (o->kind) {
    case TS_OPTIM_SGD:
        ts_cl_arg_tensor(&a, op->in[0]);
        ts_cl_arg_long(&a, o->n);
        ts_cl_arg_float(&a, o->lr);
        ts_cl_arg_float(&a, o->weight_decay);
        ts_cl_arg_float(&a, o->grad_scale);
        return launch_1d(d, "optim.cl", "optim_sgd", o->n, &a);
    case TS_OPTIM_SGD_MOMENTUM:
        ts_cl_arg_tensor(&a, op->out[1]);
        ts_cl_arg_tensor(&a, op->in[0]);
        ts_cl_arg_long(&a, o->n);
        ts_cl_arg_float(&a, o->lr);
        ts_cl_arg_float(&a, o->beta1);
        ts_cl_arg_float(&a, o->weight_decay);
        ts_cl_arg_float(&a, o->grad_scale);
        return launch_1d(d, "optim.cl", "optim_momentum", o->n, &a);
    case TS_OPTIM_ADAM:
    case TS_OPTIM_ADAMW:
        ts_cl_arg_tensor(&a, op->out[1]);
        ts_cl_arg_tensor(&a, op->out[2]);
        ts_cl_arg_tensor(&a, op->in[0]);
        ts_cl_arg_long(&a, o->n);
        ts_cl_arg_float(&a, o->lr);
        ts_cl_arg_float(&a, o->beta1);
        ts_cl_arg_float(&a, o->beta2);
        ts_cl_arg_float(&a, o->eps);
        ts_cl_arg_float(&a, o->kind == TS_OPTIM_ADAM ? o->weight_decay : 0.0f);
        ts_cl_arg_float(&a, o->kind == TS_OPTIM_ADAMW ? o->weight_decay : 0.0f);
        ts_cl_arg_float(&a, o->grad_scale);
        ts_cl_arg_float(&a, o->bias_correction1);
        ts_cl_arg_float(&a, o->bias_correction2);
        /* CPU devices: 8 elements an item (float8) */
        if (d->cpu_kernels) return launch_1d(d, "optim.cl", "optim_adam8", (o->n + 7) / 8, &a);
        return launch_1d(d, "optim.cl", "optim_adam", o->n, &a);
    }
    return ts_error(TS_ERR_UNSUPPORTED, "OpenCL backend has no optimizer %d", (int)o->kind);
}

static ts_status op_triad(ts_cl_device *d, const ts_op *op)
{
    ts_cl_args a;
    args_init(&a);
    ts_cl_arg_tensor(&a, op->out[0]);
    ts_cl_arg_tensor(&a, op->in[0]);
    ts_cl_arg_tensor(&a, op->in[1]);
    ts_cl_arg_float(&a, op->p.triad.s);
    ts_cl_arg_long(&a, op->p.triad.n);
    return launch_1d(d, "elementwise.cl", "triad", op->p.triad.n, &a);
}

/* One work-item per 16 * FMA_CHAINS elements (see elementwise.cl). */
static int64_t fma_loop_block(const ts_cl_device *d) { return d->cpu_kernels ? 128 : 64; }

static ts_status op_fma_loop(ts_cl_device *d, const ts_op *op)
{
    ts_cl_args a;
    args_init(&a);
    ts_cl_arg_tensor(&a, op->out[0]);
    ts_cl_arg_long(&a, op->p.fma_loop.n);
    ts_cl_arg_long(&a, op->p.fma_loop.iterations);
    ts_cl_arg_float(&a, op->p.fma_loop.a);
    ts_cl_arg_float(&a, op->p.fma_loop.b);
    int64_t block = fma_loop_block(d);
    return launch_1d(d, "elementwise.cl", "fma_loop", (op->p.fma_loop.n + block - 1) / block, &a);
}

/* ---- fused attention (attention_fused.cl) ---- */

/* Local memory a row group of the fused kernels needs: k, v (or q, dout)
 * rows and two rows of T scores. */
static uint64_t attention_local_bytes(const ts_cl_device *d, int64_t T, int64_t HS)
{
    return (uint64_t)(2 * HS + 2 * T + (int64_t)d->row_wg) * sizeof(float);
}

/* CPU-type devices: the row kernels with 8 keys at a time (the `8`
 * kernels of attention_fused.cl) take T % 8 == 0, HS % 16 == 0, HS <= 128. */
static int attention_rows8(const ts_cl_device *d, int64_t T, int64_t HS)
{
    return d->cpu_kernels && T % 8 == 0 && HS % 16 == 0 && HS <= 128;
}

/* CPU-type devices whose products run in host BLAS on mapped buffers (PoCL
 * by default) run fused attention the same way: the CPU backend's fused
 * plan, whose per-head products are BLAS calls too. Zen 5, B=4 NH=12
 * HS=64, T=1024: 28 ms forward and 56 ms backward, against 53 and 152 ms
 * for the OpenCL row kernels below on PoCL (7 row products a query-key
 * pair backward, as an item may not add into another's dq) and 80 and
 * 104 ms for BLAS + softmax kernels. Bidirectional too at every T, unlike
 * the CPU backend (composite here pays PoCL's launches): T=32 0.18-0.24 /
 * 0.21-0.29 ms against 0.33-0.45 / 0.46-0.61, T=64 0.34-0.39 / 0.50-0.58
 * against 0.68-0.70 / 0.86-0.87, T=128 0.97-1.05 / 1.77-1.92 against
 * 1.88-1.91 / 2.30-2.40. TESSERA_GEMM=kernel or clblast keeps the
 * kernels. */
static int attention_on_host(const ts_cl_device *d)
{
    return d->is_cpu && d->gemm_route == TS_GEMM_HOST_BLAS;
}

const char *ts_cl_attention_route_name(const ts_cl_device *d)
{
    if (attention_on_host(d)) return "fused, the CPU backend's plan on mapped buffers";
    if (d->cpu_kernels) return "fused row kernels where T % 8 == 0 and the head size a multiple of 16 up to 128";
    return "composite (TESSERA_ATTENTION=fused: local-memory kernels)";
}

bool ts_cl_supports_op(ts_device *dev, const ts_op *op)
{
    if (op->kind == TS_OP_GEMM) return ts_cl_gemm_takes(dev->context, op);
    if (op->kind != TS_OP_ATTENTION_FWD && op->kind != TS_OP_ATTENTION_BWD) return true;
    const ts_cl_device *d = dev->context;
    const __typeof__(op->p.attention) *a = &op->p.attention;
    if (a->NH < 1 || a->C % a->NH) return false;
    /* 16-bit activations: only the local-memory kernels read them (the
     * host plan's products are fp32 BLAS calls, the row kernels' loads
     * fp32 vectors); elsewhere the core makes fp32 copies. Those casts
     * are 0.9% of a bf16 step (Xeon, PoCL, TESSERA_GEMM=kernel, d6 B=4
     * T=64: 14 of 1524 ms; the CPU backend's d6 B=2 T=1024: 6.5 of 727
     * ms), not worth 16-bit row kernels: a second specialization of the
     * program PoCL is slowest to build (32 s cold) */
    bool lowp = ts_attention_op_16bit(op);
    if (attention_on_host(d)) return !lowp;
    int64_t HS = a->C / a->NH;
    /* by default also the row kernels of CPU-type devices whose products do
     * not run in host BLAS (TESSERA_GEMM=kernel or clblast): on PoCL with
     * TESSERA_GEMM=kernel (Zen 5, B=4 NH=12 HS=64, forward / backward) T=64
     * 0.37 / 0.72 ms against 5.5 / 10.3 for the tiled GEMM + softmax, T=1024
     * 53 / 152 ms against 1.2 / 2.4 s; the local-memory kernels are not yet
     * faster than CLBlast + softmax on any GPU */
    if (attention_rows8(d, a->T, HS)) return !lowp;
    if (a->by_default) return false;
    return attention_local_bytes(d, a->T, HS) <= dev->info.local_mem_bytes;
}

static void attention_args(ts_cl_args *a, const ts_op *op, const ts_tensor *key_len)
{
    const __typeof__(op->p.attention) *p = &op->p.attention;
    ts_cl_arg_tensor(a, key_len);
    ts_cl_arg_int(a, key_len != NULL);
    ts_cl_arg_long(a, p->T);
    ts_cl_arg_long(a, p->C);
    ts_cl_arg_long(a, p->NH);
    ts_cl_arg_int(a, p->causal);
    ts_cl_arg_float(a, 1.0f / sqrtf((float)(p->C / p->NH)));
}

/* Forward: out, lse <- qkv, key_len. Backward: dqkv <- dout, qkv, out, lse,
 * key_len. Every output is written whole. */
static ts_status attention_host(ts_cl_device *d, const ts_op *op)
{
    const __typeof__(op->p.attention) *p = &op->p.attention;
    int fwd = op->kind == TS_OP_ATTENTION_FWD;
    size_t act = sizeof(float) * (size_t)(p->B * p->T * p->C), lse = sizeof(float) * (size_t)(p->B * p->NH * p->T);
    const ts_tensor *key_len = op->in[fwd ? 1 : 4];
    /* fwd: out, lse, qkv; bwd: dqkv, dout, qkv, out, lse; then key_len */
    const ts_tensor *t[6] = {op->out[0], fwd ? op->out[1] : op->in[0], fwd ? op->in[0] : op->in[1],
                             fwd ? NULL : op->in[2], fwd ? NULL : op->in[3], key_len};
    size_t bytes[6] = {fwd ? act : 3 * act, fwd ? lse : act, 3 * act, act, lse, sizeof(int32_t) * (size_t)p->B};
    cl_map_flags flags[6] = {CL_MAP_WRITE, fwd ? CL_MAP_WRITE : CL_MAP_READ, CL_MAP_READ, CL_MAP_READ, CL_MAP_READ,
                             CL_MAP_READ};
    ts_cl_mapping maps[6] = {{0}};
    void *ptr[6] = {0};
    ts_status st = TS_OK;
    for (int i = 0; i < 6 && !st; i++)
        if (t[i]) st = ts_cl_map(d, t[i], bytes[i], flags[i], "clEnqueueMapBuffer (host attention)", &maps[i], &ptr[i]);
    if (!st) {
        cl_int err = clFinish(d->queue);
        if (err != CL_SUCCESS) st = ts_cl_fail(err, "clFinish (host attention's maps)", d);
    }
    if (!st) {
        int rc = fwd ? cpu_attention_forward(ptr[0], ptr[1], ptr[2], ptr[5], p->B, p->T, p->C, p->NH, p->causal)
                     : cpu_attention_backward(ptr[0], ptr[1], ptr[2], ptr[3], ptr[4], ptr[5], p->B, p->T, p->C,
                                              p->NH, p->causal);
        if (rc)
            st = ts_error(TS_ERR_OOM, "%s: no host memory for the host attention's buffers (per thread, up to 128 "
                          "rows x %lld keys)", d->name, (long long)p->T);
    }
    return ts_cl_unmap_all(d, maps, 6, st);
}

static ts_status op_attention(ts_cl_device *d, const ts_op *op)
{
    if (attention_on_host(d)) return attention_host(d, op);
    const __typeof__(op->p.attention) *p = &op->p.attention;
    int64_t rows = p->B * p->NH * p->T, HS = p->C / p->NH;
    size_t row = sizeof(float) * (size_t)HS, keys = sizeof(float) * (size_t)p->T;
    int rows8 = attention_rows8(d, p->T, HS);
    size_t g8[2] = {(size_t)p->T, (size_t)(p->B * p->NH)}, l8[2] = {8, 1};
    ts_cl_args a;
    args_init(&a);
    if (op->kind == TS_OP_ATTENTION_FWD) { /* out, lse <- qkv, key_len */
        ts_cl_arg_tensor(&a, op->out[0]);
        ts_cl_arg_tensor(&a, op->out[1]);
        ts_cl_arg_tensor(&a, op->in[0]);
        attention_args(&a, op, op->in[1]);
        if (rows8) return ts_cl_launch(d, "attention_fused.cl", "attention_fused_forward8", 2, g8, l8, &a);
        ts_cl_arg_int(&a, ts_cl_store_of(op->in[0]->dtype));
        ts_cl_arg_int(&a, ts_cl_store_of(op->out[0]->dtype));
        ts_cl_arg_local(&a, row);
        ts_cl_arg_local(&a, keys);
        return launch_rows(d, "attention_fused.cl", "attention_fused_forward", rows, &a);
    }
    /* dqkv <- dout, qkv, out, lse, key_len; delta between the two passes */
    cl_mem delta;
    ts_status st = ts_cl_scratch(d, (size_t)rows * sizeof(float), &delta);
    if (st) return st;
    ts_cl_arg_tensor(&a, op->out[0]);
    ts_cl_arg_mem(&a, delta);
    ts_cl_arg_long(&a, 0);
    ts_cl_arg_tensor(&a, op->in[0]);
    ts_cl_arg_tensor(&a, op->in[1]);
    ts_cl_arg_tensor(&a, op->in[2]);
    ts_cl_arg_tensor(&a, op->in[3]);
    attention_args(&a, op, op->in[4]);
    if (rows8) {
        st = ts_cl_launch(d, "attention_fused.cl", "attention_fused_backward_q8", 2, g8, l8, &a);
    } else {
        ts_cl_arg_int(&a, ts_cl_store_of(op->in[0]->dtype));
        ts_cl_arg_int(&a, ts_cl_store_of(op->in[1]->dtype));
        ts_cl_arg_int(&a, ts_cl_store_of(op->in[2]->dtype));
        ts_cl_arg_local(&a, row);
        ts_cl_arg_local(&a, row);
        ts_cl_arg_local(&a, keys);
        st = launch_rows(d, "attention_fused.cl", "attention_fused_backward_q", rows, &a);
    }
    if (st) return st;
    args_init(&a);
    ts_cl_arg_tensor(&a, op->out[0]);
    ts_cl_arg_mem(&a, delta);
    ts_cl_arg_long(&a, 0);
    ts_cl_arg_tensor(&a, op->in[0]);
    ts_cl_arg_tensor(&a, op->in[1]);
    ts_cl_arg_tensor(&a, op->in[3]);
    attention_args(&a, op, op->in[4]);
    if (rows8) return ts_cl_launch(d, "attention_fused.cl", "attention_fused_backward_kv8", 2, g8, l8, &a);
    ts_cl_arg_int(&a, ts_cl_store_of(op->in[0]->dtype));
    ts_cl_arg_int(&a, ts_cl_store_of(op->in[1]->dtype));
    ts_cl_arg_local(&a, row);
    ts_cl_arg_local(&a, row);
    ts_cl_arg_local(&a, keys);
    ts_cl_arg_local(&a, keys);
    return launch_rows(d, "attention_fused.cl", "attention_fused_backward_kv", rows, &a);
}

ts_status ts_cl_run_op(ts_device *dev, const ts_op *op)
{
    ts_cl_device *d = dev->context;
    ts_status st = ts_cl_ensure_ready(d);
    if (st) return st;
    /* the host's bf16 copies of what the op writes are stale from now on */
    for (int i = 0; i < 3 && d->nbases; i++)
        if (op->out[i] && op->out[i]->block)
            ts_cl_host_written(d, ts_cl_mem(op->out[i]), op->out[i]->offset, ts_tensor_nbytes(op->out[i]));
    switch (op->kind) {
    case TS_OP_FILL:
    case TS_OP_ADD:
    case TS_OP_SCALE:
    case TS_OP_GELU_FWD:
    case TS_OP_GELU_BWD:
    case TS_OP_CAST: return op_elementwise(d, op);
    case TS_OP_EMBEDDING_FWD: return op_embedding_forward(d, op);
    case TS_OP_EMBEDDING_BWD: return op_embedding_backward(d, op);
    case TS_OP_EMBEDDING_BAG_FWD:
    case TS_OP_EMBEDDING_BAG_BWD: return op_embedding_bag(d, op);
    case TS_OP_LAYERNORM_FWD: return op_layernorm_forward(d, op);
    case TS_OP_LAYERNORM_BWD: return op_layernorm_backward(d, op);
    case TS_OP_GEMM: return ts_cl_gemm(d, op);
    case TS_OP_SUM_ROWS: return op_sum_rows(d, op);
    case TS_OP_POOL_MAX_FWD:
    case TS_OP_POOL_MAX_BWD: return op_pool_max(d, op);
    case TS_OP_SPLIT_HEADS:
    case TS_OP_MERGE_HEADS: return op_heads(d, op);
    case TS_OP_SOFTMAX_CAUSAL_FWD:
    case TS_OP_SOFTMAX_CAUSAL_BWD: return op_softmax(d, op);
    case TS_OP_SOFTMAX_MASKED_FWD:
    case TS_OP_SOFTMAX_MASKED_BWD: return op_softmax_masked(d, op);
    case TS_OP_ATTENTION_FWD:
    case TS_OP_ATTENTION_BWD: return op_attention(d, op);
    case TS_OP_CROSS_ENTROPY: return op_cross_entropy(d, op);
    case TS_OP_CE_SHARD: return op_ce_shard(d, op);
    case TS_OP_SUM:
    case TS_OP_SQNORM: return op_reduce(d, op);
    case TS_OP_OPTIM_UPDATE: return op_optim(d, op);
    case TS_OP_TRIAD: return op_triad(d, op);
    case TS_OP_FMA_LOOP: return op_fma_loop(d, op);
    default: break;
    }
    return ts_error(TS_ERR_UNSUPPORTED, "OpenCL backend has no op %s", ts_op_kind_name(op->kind));
}
