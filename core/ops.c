/* The device-agnostic op API: validate, describe, dispatch.
 *
 * Each public op checks its operands completely (presence, dtype, sizes, one
 * device) so that backends receive only well-formed work, fills a ts_op and
 * hands it to the device's backend. Failures carry the op name, the operand
 * shapes and the device. */
#include "tessera/ops.h"
#include "internal.h"
#include "profile.h"

#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "backend.h"

const char *ts_op_kind_name(ts_op_kind kind)
{
    static const char *names[TS_OP_COUNT] = {
        [TS_OP_FILL] = "fill",
        [TS_OP_ADD] = "add",
        [TS_OP_SCALE] = "scale",
        [TS_OP_GELU_FWD] = "gelu_forward",
        [TS_OP_GELU_BWD] = "gelu_backward",
        [TS_OP_EMBEDDING_FWD] = "embedding_forward",
        [TS_OP_EMBEDDING_BWD] = "embedding_backward",
        [TS_OP_LAYERNORM_FWD] = "layernorm_forward",
        [TS_OP_LAYERNORM_BWD] = "layernorm_backward",
        [TS_OP_GEMM] = "gemm",
        [TS_OP_SUM_ROWS] = "sum_rows",
        [TS_OP_SPLIT_HEADS] = "split_heads",
        [TS_OP_MERGE_HEADS] = "merge_heads",
        [TS_OP_SOFTMAX_CAUSAL_FWD] = "softmax_causal_forward",
        [TS_OP_SOFTMAX_CAUSAL_BWD] = "softmax_causal_backward",
        [TS_OP_CROSS_ENTROPY] = "cross_entropy",
        [TS_OP_CE_SHARD] = "ce_shard",
        [TS_OP_SUM] = "sum",
        [TS_OP_SQNORM] = "sqnorm",
        [TS_OP_OPTIM_UPDATE] = "optimizer_update",
        [TS_OP_TRIAD] = "triad",
        [TS_OP_FMA_LOOP] = "fma_loop",
        [TS_OP_SOFTMAX_MASKED_FWD] = "softmax_masked_forward",
        [TS_OP_SOFTMAX_MASKED_BWD] = "softmax_masked_backward",
        [TS_OP_ATTENTION_FWD] = "attention_forward",
        [TS_OP_ATTENTION_BWD] = "attention_backward",
        [TS_OP_POOL_MAX_FWD] = "pool_max_forward",
        [TS_OP_POOL_MAX_BWD] = "pool_max_backward",
        [TS_OP_CAST] = "cast",
        [TS_OP_EMBEDDING_BAG_FWD] = "embedding_bag_forward",
        [TS_OP_EMBEDDING_BAG_BWD] = "embedding_bag_backward",
    };
    if ((int)kind < 0 || kind >= TS_OP_COUNT) return "?";
    return names[kind];
}

/* ---- validation helpers ---- */

static _Thread_local char g_desc[8][96];

static const char *desc(int slot, const ts_tensor *t)
{
    return ts_tensor_describe(t, g_desc[slot & 7], sizeof g_desc[0]);
}

static ts_status need(const char *op, const char *name, const ts_tensor *t, ts_dtype dtype)
{
    if (!t) return ts_error(TS_ERR_INVALID_ARG, "%s: %s is NULL", op, name);
    if (!t->block || !t->device)
        return ts_error(TS_ERR_INVALID_ARG, "%s: %s is not allocated", op, name);
    if (t->dtype != dtype)
        return ts_error(TS_ERR_SHAPE, "%s: %s must be %s, got %s", op, name, ts_dtype_name(dtype),
                        desc(0, t));
    return TS_OK;
}

/* An activation: f32, or bf16 storage (read as its exact fp32 value,
 * written rounded to nearest even) where the op says so. */
static ts_status need_act(const char *op, const char *name, const ts_tensor *t)
{
    TRY(need(op, name, t, t && t->dtype == TS_BF16 ? TS_BF16 : TS_F32));
    return TS_OK;
}

/* An activation an op also takes in f16 (the model's under fp16
 * products): read and written as it is where the device takes it
 * (dispatch_16bit: OpenCL's kernels), else through fp32 copies. */
static ts_status need_act16(const char *op, const char *name, const ts_tensor *t)
{
    return t && t->dtype == TS_F16 ? need(op, name, t, TS_F16) : need_act(op, name, t);
}

/* A backend that does not take a tensor's 16-bit type gets an fp32 copy: it
 * is widened into a temporary fp32 tensor (from the device's block cache);
 * `*use` is t itself where t is fp32. */
static ts_status f32_operand(const ts_tensor *t, ts_tensor *tmp, const ts_tensor **use)
{
    *use = t;
    if (t->dtype == TS_F32) return TS_OK;
    TRY(ts_tensor_alloc(tmp, t->device, TS_F32, t->ndim, t->shape));
    *use = tmp;
    return ts_cast(tmp, t);
}

/* Where t is 16-bit, an fp32 temporary for an op to write, narrowed into t
 * by f32_result_done; else t itself. */
static ts_status f32_result(ts_tensor *t, ts_tensor *tmp, ts_tensor **use)
{
    *use = t;
    if (t->dtype == TS_F32) return TS_OK;
    TRY(ts_tensor_alloc(tmp, t->device, TS_F32, t->ndim, t->shape));
    *use = tmp;
    return TS_OK;
}

static ts_status f32_result_done(ts_status st, ts_tensor *t, ts_tensor *tmp)
{
    if (!st && tmp->block) st = ts_cast(t, tmp);
    ts_tensor_free(tmp);
    return st;
}

/* Whether t's device runs op on its tensors as they are: an op's f16 (or a
 * fused attention's bf16) tensors, which a backend must say it takes
 * (supports_op); where it does not, the core makes fp32 copies. */
static bool device_takes(const ts_op *op, const ts_tensor *t)
{
    ts_device *dev = t->device;
    return dev->iface->supports_op && dev->iface->supports_op(dev, op);
}

/* An output computed in place of an input (the same bytes) keeps its type:
 * with two, the op's loops would write elements they have not read yet. */
static ts_status same_type_in_place(const char *op, const char *out_name, const ts_tensor *out, const char *in_name,
                                    const ts_tensor *in)
{
    if (out->block == in->block && out->offset == in->offset && out->dtype != in->dtype)
        return ts_error(TS_ERR_INVALID_ARG, "%s: %s in place of %s must be %s like it, got %s", op, out_name, in_name,
                        ts_dtype_name(in->dtype), ts_dtype_name(out->dtype));
    return TS_OK;
}

static ts_status need_numel(const char *op, const char *name, const ts_tensor *t, int64_t n)
{
    if (ts_tensor_numel(t) != n)
        return ts_error(TS_ERR_SHAPE, "%s: %s %s has %lld elements, expected %lld", op, name,
                        desc(0, t), (long long)ts_tensor_numel(t), (long long)n);
    return TS_OK;
}

static int64_t last_dim(const ts_tensor *t) { return t->shape[t->ndim - 1]; }


/* Send a validated op to its device. */
static ts_status dispatch(const char *name, ts_op *op)
{
    ts_device *dev = NULL;
    const ts_tensor *all[8];
    int n = 0;
    for (int i = 0; i < 3; i++)
        if (op->out[i]) all[n++] = op->out[i];
    for (int i = 0; i < 5; i++)
        if (op->in[i]) all[n++] = op->in[i];
    for (int i = 0; i < n; i++) {
        if (!dev) dev = all[i]->device;
        else if (all[i]->device != dev)
            return ts_error(TS_ERR_DEVICE, "%s: operands are on different devices (%s and %s)",
                            name, dev->info.id, all[i]->device->info.id);
    }
    if (!dev) return ts_error(TS_ERR_INVALID_ARG, "%s: no operands", name);
    if (dev->iface->supports_op && !dev->iface->supports_op(dev, op))
        return ts_error(TS_ERR_UNSUPPORTED, "%s is not supported on device %s (%s)", name,
                        dev->info.id, dev->info.name);
    int prof = ts_profile_enabled();
    double t0 = prof ? ts_profile_begin(dev) : 0;
    ts_status st = dev->iface->run_op(dev, op);
    if (prof) ts_profile_end(dev, op, t0);
    if (st) {
        char shapes[512];
        size_t k = 0;
        shapes[0] = '\0';
        for (int i = 0; i < n && k < sizeof shapes; i++)
            k += (size_t)snprintf(shapes + k, sizeof shapes - k, "%s%s", i ? ", " : "",
                                  desc(i, all[i]));
        return ts_error_context(st, "%s(%s) on %s", name, shapes, dev->info.id);
    }
    return TS_OK;
}

static bool is_16bit(const ts_tensor *t)
{
    return t && (t->dtype == TS_BF16 || t->dtype == TS_F16);
}

/* dispatch, on fp32 copies of op's 16-bit tensors where its device does not
 * take them as they are (device_takes): each 16-bit input widened, each
 * 16-bit output computed in fp32 and rounded into it after. */
static ts_status dispatch_16bit(const char *name, ts_op *op)
{
    if (device_takes(op, op->out[0])) return dispatch(name, op);
    ts_tensor in32[5] = {{0}}, out32[3] = {{0}}, *out[3] = {op->out[0], op->out[1], op->out[2]};
    ts_status st = TS_OK;
    for (int i = 0; i < 5 && !st; i++)
        if (is_16bit(op->in[i])) st = f32_operand(op->in[i], &in32[i], &op->in[i]);
    for (int i = 0; i < 3 && !st; i++)
        if (is_16bit(op->out[i])) st = f32_result(op->out[i], &out32[i], &op->out[i]);
    if (!st) st = dispatch(name, op);
    for (int i = 0; i < 3; i++) st = f32_result_done(st, out[i], &out32[i]);
    for (int i = 0; i < 5; i++) ts_tensor_free(&in32[i]);
    return st;
}

static ts_op op_new(ts_op_kind kind)
{
    ts_op op;
    memset(&op, 0, sizeof op);
    op.kind = kind;
    return op;
}

/* ---- elementwise ---- */

ts_status ts_fill(ts_tensor *t, float value)
{
    const char *name = "ts_fill";
    TRY(need(name, "t", t, TS_F32));
    if (ts_tensor_numel(t) == 0) return TS_OK;
    ts_op op = op_new(TS_OP_FILL);
    op.out[0] = t;
    op.p.fill.value = value;
    return dispatch(name, &op);
}

ts_status ts_add(ts_tensor *out, const ts_tensor *a, const ts_tensor *b)
{
    const char *name = "ts_add";
    TRY(need(name, "out", out, TS_F32));
    TRY(need(name, "a", a, TS_F32));
    TRY(need(name, "b", b, TS_F32));
    int64_t n = ts_tensor_numel(out);
    TRY(need_numel(name, "a", a, n));
    TRY(need_numel(name, "b", b, n));
    if (n == 0) return TS_OK;
    ts_op op = op_new(TS_OP_ADD);
    op.out[0] = out;
    op.in[0] = a;
    op.in[1] = b;
    return dispatch(name, &op);
}

ts_status ts_scale(ts_tensor *out, const ts_tensor *a, float alpha)
{
    const char *name = "ts_scale";
    TRY(need(name, "out", out, TS_F32));
    TRY(need(name, "a", a, TS_F32));
    TRY(need_numel(name, "a", a, ts_tensor_numel(out)));
    if (ts_tensor_numel(out) == 0) return TS_OK;
    ts_op op = op_new(TS_OP_SCALE);
    op.out[0] = out;
    op.in[0] = a;
    op.p.scale.alpha = alpha;
    return dispatch(name, &op);
}

ts_status ts_gelu_forward(ts_tensor *out, const ts_tensor *inp)
{
    const char *name = "ts_gelu_forward";
    TRY(need_act16(name, "out", out));
    TRY(need_act16(name, "inp", inp));
    TRY(same_type_in_place(name, "out", out, "inp", inp));
    TRY(need_numel(name, "inp", inp, ts_tensor_numel(out)));
    if (ts_tensor_numel(out) == 0) return TS_OK;
    ts_op op = op_new(TS_OP_GELU_FWD);
    op.out[0] = out;
    op.in[0] = inp;
    return dispatch_16bit(name, &op);
}

ts_status ts_gelu_backward(ts_tensor *dinp, const ts_tensor *inp, const ts_tensor *dout)
{
    const char *name = "ts_gelu_backward";
    TRY(need(name, "dinp", dinp, TS_F32));
    TRY(need_act16(name, "inp", inp));
    TRY(need(name, "dout", dout, TS_F32));
    int64_t n = ts_tensor_numel(dinp);
    TRY(need_numel(name, "inp", inp, n));
    TRY(need_numel(name, "dout", dout, n));
    if (n == 0) return TS_OK;
    ts_op op = op_new(TS_OP_GELU_BWD);
    op.out[0] = dinp;
    op.in[0] = inp;
    op.in[1] = dout;
    return dispatch_16bit(name, &op);
}

ts_status ts_cast(ts_tensor *out, const ts_tensor *in)
{
    const char *name = "ts_cast";
    TRY(need_act16(name, "out", out));
    TRY(need_act16(name, "inp", in));
    if (out->dtype != in->dtype && out->dtype != TS_F32 && in->dtype != TS_F32)
        return ts_error(TS_ERR_SHAPE, "%s: from %s to %s: one side must be f32", name, ts_dtype_name(in->dtype),
                        ts_dtype_name(out->dtype));
    TRY(need_numel(name, "inp", in, ts_tensor_numel(out)));
    TRY(same_type_in_place(name, "out", out, "inp", in));
    if (ts_tensor_numel(out) == 0) return TS_OK;
    if (out->dtype == in->dtype && out->device == in->device) /* a copy, bit for bit (a kernel's would quiet NaNs) */
        return out->block == in->block && out->offset == in->offset ? TS_OK : ts_tensor_copy(out, in);
    ts_op op = op_new(TS_OP_CAST);
    op.out[0] = out;
    op.in[0] = in;
    return dispatch(name, &op);
}

/* ---- embedding ---- */

static ts_status embedding_common(const char *name, const ts_tensor *tokens, const ts_tensor *wte,
                                  const ts_tensor *wpe, int64_t C_known, ts_op *op)
{
    TRY(need(name, "tokens", tokens, TS_I32));
    if (tokens->ndim != 2)
        return ts_error(TS_ERR_SHAPE, "%s: tokens must be [B, T], got %s", name, desc(0, tokens));
    int64_t B = tokens->shape[0], T = tokens->shape[1];
    int64_t C = C_known, V = 0;
    if (wte) {
        TRY(need(name, "wte", wte, TS_F32));
        if (wte->ndim != 2)
            return ts_error(TS_ERR_SHAPE, "%s: wte must be [V, C], got %s", name, desc(0, wte));
        V = wte->shape[0];
        if (C >= 0 && wte->shape[1] != C)
            return ts_error(TS_ERR_SHAPE, "%s: wte %s has %lld channels, expected %lld", name,
                            desc(0, wte), (long long)wte->shape[1], (long long)C);
        C = wte->shape[1];
    }
    if (wpe) {
        TRY(need(name, "wpe", wpe, TS_F32));
        if (wpe->ndim != 2 || wpe->shape[0] < T || (C >= 0 && wpe->shape[1] != C))
            return ts_error(TS_ERR_SHAPE, "%s: wpe must be [>= %lld, %lld], got %s", name,
                            (long long)T, (long long)C, desc(0, wpe));
        C = wpe->shape[1];
    }
    op->p.embedding.N = B * T;
    op->p.embedding.T = T;
    op->p.embedding.C = C;
    op->p.embedding.V = V;
    return TS_OK;
}

ts_status ts_embedding_forward_shard(ts_tensor *out, const ts_tensor *tokens, const ts_tensor *wte,
                                     const ts_tensor *wpe, int64_t vocab_start)
{
    const char *name = "ts_embedding_forward";
    TRY(need(name, "out", out, TS_F32));
    if (!wte) return ts_error(TS_ERR_INVALID_ARG, "%s: wte is NULL", name);
    ts_op op = op_new(TS_OP_EMBEDDING_FWD);
    TRY(embedding_common(name, tokens, wte, wpe, -1, &op));
    TRY(need_numel(name, "out", out, op.p.embedding.N * op.p.embedding.C));
    if (vocab_start < 0) return ts_error(TS_ERR_INVALID_ARG, "%s: vocab_start < 0", name);
    if (op.p.embedding.N == 0) return TS_OK;
    op.p.embedding.vocab_start = vocab_start;
    op.out[0] = out;
    op.in[0] = tokens;
    op.in[1] = wte;
    op.in[2] = wpe;
    return dispatch(name, &op);
}

ts_status ts_embedding_forward(ts_tensor *out, const ts_tensor *tokens, const ts_tensor *wte,
                               const ts_tensor *wpe)
{
    return ts_embedding_forward_shard(out, tokens, wte, wpe, 0);
}

ts_status ts_embedding_backward_shard(ts_tensor *dwte, ts_tensor *dwpe, const ts_tensor *dout,
                                      const ts_tensor *tokens, int64_t vocab_start)
{
    const char *name = "ts_embedding_backward";
    if (!dwte && !dwpe) return ts_error(TS_ERR_INVALID_ARG, "%s: dwte and dwpe are both NULL", name);
    TRY(need(name, "dout", dout, TS_F32));
    ts_op op = op_new(TS_OP_EMBEDDING_BWD);
    TRY(embedding_common(name, tokens, dwte, dwpe, -1, &op));
    TRY(need_numel(name, "dout", dout, op.p.embedding.N * op.p.embedding.C));
    if (vocab_start < 0) return ts_error(TS_ERR_INVALID_ARG, "%s: vocab_start < 0", name);
    if (op.p.embedding.N == 0) return TS_OK;
    op.p.embedding.vocab_start = vocab_start;
    op.out[0] = dwte;
    op.out[1] = dwpe;
    op.in[0] = dout;
    op.in[1] = tokens;
    return dispatch(name, &op);
}

ts_status ts_embedding_backward(ts_tensor *dwte, ts_tensor *dwpe, const ts_tensor *dout,
                                const ts_tensor *tokens)
{
    return ts_embedding_backward_shard(dwte, dwpe, dout, tokens, 0);
}

/* whether two tensors' bytes meet */
static bool overlap(const ts_tensor *a, const ts_tensor *b)
{
    size_t ea = a->offset + (size_t)ts_tensor_numel(a) * ts_dtype_size(a->dtype);
    size_t eb = b->offset + (size_t)ts_tensor_numel(b) * ts_dtype_size(b->dtype);
    return a->block == b->block && a->offset < eb && b->offset < ea;
}

/* ---- embedding bag ---- */

/* ids i32 [N, K] and weights [N, K]; the table (or its gradient) [G, C];
 * the rows (out or dout) N*C elements. The one written (the rows forward,
 * the table backward) may share memory with no other operand: the
 * kernels' pointers are restrict. */
static ts_status bag_operands(const char *name, const ts_tensor *ids, const ts_tensor *weights,
                              const ts_tensor *table, const char *table_name, const ts_tensor *rows,
                              const char *rows_name, bool table_written, ts_op *op)
{
    TRY(need(name, rows_name, rows, TS_F32));
    TRY(need(name, "ids", ids, TS_I32));
    TRY(need(name, "weights", weights, TS_F32));
    TRY(need(name, table_name, table, TS_F32));
    if (ids->ndim != 2)
        return ts_error(TS_ERR_SHAPE, "%s: ids must be [N, K], got %s", name, desc(0, ids));
    if (weights->ndim != 2 || weights->shape[0] != ids->shape[0] || weights->shape[1] != ids->shape[1])
        return ts_error(TS_ERR_SHAPE, "%s: weights %s must have the shape of ids %s", name, desc(0, weights),
                        desc(1, ids));
    if (table->ndim != 2)
        return ts_error(TS_ERR_SHAPE, "%s: %s must be [G, C], got %s", name, table_name, desc(0, table));
    op->p.bag.N = ids->shape[0];
    op->p.bag.K = ids->shape[1];
    op->p.bag.G = table->shape[0];
    op->p.bag.C = table->shape[1];
    TRY(need_numel(name, rows_name, rows, op->p.bag.N * op->p.bag.C));
    const ts_tensor *written = table_written ? table : rows, *other = table_written ? rows : table;
    if (overlap(written, other) || overlap(written, ids) || overlap(written, weights))
        return ts_error(TS_ERR_INVALID_ARG, "%s: %s shares memory with an input", name,
                        table_written ? table_name : rows_name);
    return TS_OK;
}

ts_status ts_embedding_bag_forward(ts_tensor *out, const ts_tensor *ids, const ts_tensor *weights,
                                   const ts_tensor *table)
{
    const char *name = "ts_embedding_bag_forward";
    ts_op op = op_new(TS_OP_EMBEDDING_BAG_FWD);
    TRY(bag_operands(name, ids, weights, table, "table", out, "out", false, &op));
    if (op.p.bag.N * op.p.bag.C == 0) return TS_OK;
    op.out[0] = out;
    op.in[0] = ids;
    op.in[1] = weights;
    op.in[2] = table;
    return dispatch(name, &op);
}

ts_status ts_embedding_bag_backward(ts_tensor *dtable, const ts_tensor *dout, const ts_tensor *ids,
                                    const ts_tensor *weights)
{
    const char *name = "ts_embedding_bag_backward";
    ts_op op = op_new(TS_OP_EMBEDDING_BAG_BWD);
    TRY(bag_operands(name, ids, weights, dtable, "dtable", dout, "dout", true, &op));
    if (op.p.bag.N * op.p.bag.K * op.p.bag.C == 0) return TS_OK;
    op.out[0] = dtable;
    op.in[0] = dout;
    op.in[1] = ids;
    op.in[2] = weights;
    return dispatch(name, &op);
}

/* ---- layernorm ---- */

static ts_status layernorm_rows(const char *name, const ts_tensor *inp, const ts_tensor *weight,
                                const ts_tensor *bias, int64_t *N, int64_t *C)
{
    TRY(need(name, "inp", inp, TS_F32));
    TRY(need(name, "weight", weight, TS_F32));
    TRY(need(name, "bias", bias, TS_F32));
    *C = last_dim(inp);
    *N = *C ? ts_tensor_numel(inp) / *C : 0;
    TRY(need_numel(name, "weight", weight, *C));
    TRY(need_numel(name, "bias", bias, *C));
    return TS_OK;
}

ts_status ts_layernorm_forward(ts_tensor *out, ts_tensor *mean, ts_tensor *rstd,
                               const ts_tensor *inp, const ts_tensor *weight, const ts_tensor *bias,
                               float eps)
{
    const char *name = "ts_layernorm_forward";
    int64_t N, C;
    TRY(layernorm_rows(name, inp, weight, bias, &N, &C));
    TRY(need_act16(name, "out", out));
    TRY(need_numel(name, "out", out, N * C));
    TRY(same_type_in_place(name, "out", out, "inp", inp));
    if (mean) {
        TRY(need(name, "mean", mean, TS_F32));
        TRY(need_numel(name, "mean", mean, N));
    }
    if (rstd) {
        TRY(need(name, "rstd", rstd, TS_F32));
        TRY(need_numel(name, "rstd", rstd, N));
    }
    if (!(eps > 0.0f)) return ts_error(TS_ERR_INVALID_ARG, "%s: eps must be > 0, got %g", name, eps);
    if (N == 0) return TS_OK;
    ts_op op = op_new(TS_OP_LAYERNORM_FWD);
    op.out[0] = out;
    op.out[1] = mean;
    op.out[2] = rstd;
    op.in[0] = inp;
    op.in[1] = weight;
    op.in[2] = bias;
    op.p.layernorm.N = N;
    op.p.layernorm.C = C;
    op.p.layernorm.eps = eps;
    return dispatch_16bit(name, &op);
}

ts_status ts_layernorm_backward(ts_tensor *dinp, ts_tensor *dweight, ts_tensor *dbias,
                                const ts_tensor *dout, const ts_tensor *inp,
                                const ts_tensor *weight, const ts_tensor *mean,
                                const ts_tensor *rstd)
{
    const char *name = "ts_layernorm_backward";
    int64_t N, C;
    TRY(layernorm_rows(name, inp, weight, weight, &N, &C));
    TRY(need(name, "dinp", dinp, TS_F32));
    TRY(need(name, "dweight", dweight, TS_F32));
    TRY(need(name, "dbias", dbias, TS_F32));
    TRY(need(name, "dout", dout, TS_F32));
    TRY(need(name, "mean", mean, TS_F32));
    TRY(need(name, "rstd", rstd, TS_F32));
    TRY(need_numel(name, "dinp", dinp, N * C));
    TRY(need_numel(name, "dout", dout, N * C));
    TRY(need_numel(name, "dweight", dweight, C));
    TRY(need_numel(name, "dbias", dbias, C));
    TRY(need_numel(name, "mean", mean, N));
    TRY(need_numel(name, "rstd", rstd, N));
    if (N == 0) return TS_OK;
    ts_op op = op_new(TS_OP_LAYERNORM_BWD);
    op.out[0] = dinp;
    op.out[1] = dweight;
    op.out[2] = dbias;
    op.in[0] = dout;
    op.in[1] = inp;
    op.in[2] = weight;
    op.in[3] = mean;
    op.in[4] = rstd;
    op.p.layernorm.N = N;
    op.p.layernorm.C = C;
    return dispatch(name, &op);
}

/* ---- matrix products ---- */

static ts_op gemm_desc(ts_tensor *c, const ts_tensor *a, const ts_tensor *b, const ts_tensor *bias, int64_t batch,
                       int64_t M, int64_t N, int64_t K, bool ta, bool tb, float alpha, float beta, int64_t stride_b,
                       bool reference)
{
    ts_op op = op_new(TS_OP_GEMM);
    op.p.gemm.reference = reference;
    op.p.gemm.dtype = reference ? TS_F32 : c->device->matmul_dtype;
    op.out[0] = c;
    op.in[0] = a;
    op.in[1] = b;
    op.in[2] = bias;
    op.p.gemm.M = M;
    op.p.gemm.N = N;
    op.p.gemm.K = K;
    op.p.gemm.trans_a = ta;
    op.p.gemm.trans_b = tb;
    op.p.gemm.alpha = alpha;
    op.p.gemm.beta = beta;
    op.p.gemm.batch = batch;
    op.p.gemm.lda = ta ? M : K;
    op.p.gemm.ldb = tb ? K : N;
    op.p.gemm.ldc = N;
    op.p.gemm.stride_a = M * K;
    op.p.gemm.stride_b = stride_b;
    op.p.gemm.stride_c = M * N;
    return op;
}

static ts_status gemm_op(const char *name, ts_tensor *c, const ts_tensor *a, const ts_tensor *b,
                         const ts_tensor *bias, int64_t batch, int64_t M, int64_t N, int64_t K,
                         bool ta, bool tb, float alpha, float beta, int64_t stride_b, bool reference)
{
    if (M == 0 || N == 0 || batch == 0) return TS_OK;
    if (reference && !c->device->info.reference_blas[0])
        return ts_error(TS_ERR_UNSUPPORTED, "%s: device %s (%s) has no reference BLAS library", name,
                        c->device->info.id, c->device->info.name);
    ts_op op = gemm_desc(c, a, b, bias, batch, M, N, K, ta, tb, alpha, beta, stride_b, reference);
    return dispatch(name, &op);
}

/* Whether the device's backend takes this product's bf16 or f16 tensors
 * itself (a backend must say so: one without supports_op gets fp32
 * copies). */
static bool takes_16bit(ts_tensor *c, const ts_tensor *a, const ts_tensor *b, const ts_tensor *bias, int64_t M,
                        int64_t N, int64_t K, bool ta, bool tb, float beta)
{
    ts_op op = gemm_desc(c, a, b, bias, 1, M, N, K, ta, tb, 1.0f, beta, 0, false);
    return device_takes(&op, c);
}

static ts_status matmul(const char *name, ts_tensor *c, const ts_tensor *a, const ts_tensor *b,
                        bool trans_a, bool trans_b, float alpha, float beta, bool reference)
{
    TRY(need(name, "c", c, TS_F32));
    TRY(need(name, "a", a, TS_F32));
    TRY(need(name, "b", b, TS_F32));
    if (a->ndim != c->ndim || (a->ndim != 2 && a->ndim != 3) || (b->ndim != 2 && b->ndim != a->ndim))
        return ts_error(TS_ERR_SHAPE,
                        "%s: a and c must both be 2-D or 3-D (b 2-D or like a); got a %s, b %s, c %s",
                        name, desc(0, a), desc(1, b), desc(2, c));
    int64_t batch = a->ndim == 3 ? a->shape[0] : 1;
    if (a->ndim == 3 && c->shape[0] != batch)
        return ts_error(TS_ERR_SHAPE, "%s: batch sizes differ: a %s, c %s", name, desc(0, a),
                        desc(1, c));
    if (b->ndim == 3 && b->shape[0] != batch)
        return ts_error(TS_ERR_SHAPE, "%s: batch sizes differ: a %s, b %s", name, desc(0, a),
                        desc(1, b));
    int d = a->ndim - 2;
    int64_t M = trans_a ? a->shape[d + 1] : a->shape[d];
    int64_t K = trans_a ? a->shape[d] : a->shape[d + 1];
    int db = b->ndim - 2;
    int64_t Kb = trans_b ? b->shape[db + 1] : b->shape[db];
    int64_t N = trans_b ? b->shape[db] : b->shape[db + 1];
    if (K != Kb || c->shape[d] != M || c->shape[d + 1] != N)
        return ts_error(TS_ERR_SHAPE,
                        "%s: cannot multiply a %s%s by b %s%s into c %s (inner %lld vs %lld)",
                        name, desc(0, a), trans_a ? "^T" : "", desc(1, b), trans_b ? "^T" : "",
                        desc(2, c), (long long)K, (long long)Kb);
    int64_t stride_b = b->ndim == 3 ? K * N : 0;
    return gemm_op(name, c, a, b, NULL, batch, M, N, K, trans_a, trans_b, alpha, beta, stride_b,
                   reference);
}

ts_status ts_matmul(ts_tensor *c, const ts_tensor *a, const ts_tensor *b, bool trans_a,
                    bool trans_b, float alpha, float beta)
{
    return matmul("ts_matmul", c, a, b, trans_a, trans_b, alpha, beta, false);
}

ts_status ts_matmul_reference(ts_tensor *c, const ts_tensor *a, const ts_tensor *b, bool trans_a,
                              bool trans_b, float alpha, float beta)
{
    return matmul("ts_matmul_reference", c, a, b, trans_a, trans_b, alpha, beta, true);
}

/* A backend that does not take 16-bit tensors in its products
 * (supports_op) gets fp32 copies (f32_operand, f32_result). */
bool ts_linear_takes_bf16(ts_device *dev)
{
    /* a probe: a product whose operands and result are all bf16 */
    ts_tensor t;
    memset(&t, 0, sizeof t);
    t.device = dev;
    t.dtype = TS_BF16;
    return takes_16bit(&t, &t, &t, NULL, 1, 1, 1, false, true, 0.0f);
}

ts_status ts_linear_forward(ts_tensor *out, const ts_tensor *inp, const ts_tensor *w,
                            const ts_tensor *bias)
{
    const char *name = "ts_linear_forward";
    TRY(need_act16(name, "out", out));
    TRY(need_act16(name, "inp", inp));
    TRY(need(name, "w", w, TS_F32));
    if (w->ndim != 2) return ts_error(TS_ERR_SHAPE, "%s: w must be [OC, C], got %s", name, desc(0, w));
    int64_t OC = w->shape[0], C = w->shape[1];
    if (last_dim(inp) != C)
        return ts_error(TS_ERR_SHAPE, "%s: inp %s does not end in C=%lld of w %s", name,
                        desc(0, inp), (long long)C, desc(1, w));
    int64_t N = ts_tensor_numel(inp) / (C ? C : 1);
    TRY(need_numel(name, "out", out, N * OC));
    if (bias) {
        TRY(need(name, "bias", bias, TS_F32));
        TRY(need_numel(name, "bias", bias, OC));
    }
    if ((inp->dtype != TS_F32 || out->dtype != TS_F32) && takes_16bit(out, inp, w, bias, N, OC, C, false, true, 0.0f))
        return gemm_op(name, out, inp, w, bias, 1, N, OC, C, false, true, 1.0f, 0.0f, 0, false);
    ts_tensor in32 = {0}, out32 = {0}, *y = out;
    const ts_tensor *x;
    ts_status st = f32_operand(inp, &in32, &x);
    if (!st && out->dtype != TS_F32 && !(st = ts_tensor_alloc(&out32, out->device, TS_F32, out->ndim, out->shape)))
        y = &out32;
    if (!st) st = gemm_op(name, y, x, w, bias, 1, N, OC, C, false, true, 1.0f, 0.0f, 0, false);
    if (!st && y != out) st = ts_cast(out, y);
    ts_tensor_free(&in32);
    ts_tensor_free(&out32);
    return st;
}

ts_status ts_linear_backward(ts_tensor *dinp, ts_tensor *dw, ts_tensor *dbias,
                             const ts_tensor *dout, const ts_tensor *inp, const ts_tensor *w)
{
    const char *name = "ts_linear_backward";
    TRY(need_act16(name, "dout", dout));
    TRY(need_act16(name, "inp", inp));
    TRY(need(name, "w", w, TS_F32));
    if (w->ndim != 2) return ts_error(TS_ERR_SHAPE, "%s: w must be [OC, C], got %s", name, desc(0, w));
    int64_t OC = w->shape[0], C = w->shape[1];
    if (last_dim(inp) != C)
        return ts_error(TS_ERR_SHAPE, "%s: inp %s does not end in C=%lld of w %s", name,
                        desc(0, inp), (long long)C, desc(1, w));
    int64_t N = ts_tensor_numel(inp) / (C ? C : 1);
    TRY(need_numel(name, "dout", dout, N * OC));
    if (dinp) {
        TRY(need(name, "dinp", dinp, TS_F32));
        TRY(need_numel(name, "dinp", dinp, N * C));
    }
    if (dw) {
        TRY(need(name, "dw", dw, TS_F32));
        TRY(need_numel(name, "dw", dw, OC * C));
    }
    ts_tensor in32 = {0}, dout32 = {0};
    const ts_tensor *x = inp, *dy = dout;
    ts_status st = TS_OK;
    /* fp32 copies of bf16 operands for a backend that does not take them */
    if (dinp && dout->dtype != TS_F32 && !takes_16bit(dinp, dout, w, NULL, N, C, OC, false, false, 0.0f))
        st = f32_operand(dout, &dout32, &dy);
    if (!st && dinp) st = gemm_op(name, dinp, dy, w, NULL, 1, N, C, OC, false, false, 1.0f, 0.0f, 0, false);
    if (!st && dw && (inp->dtype != TS_F32 || dy->dtype != TS_F32) &&
        !takes_16bit(dw, dy, inp, NULL, OC, C, N, true, false, 1.0f)) {
        if (dy->dtype != TS_F32) st = f32_operand(dout, &dout32, &dy);
        if (!st && inp->dtype != TS_F32) st = f32_operand(inp, &in32, &x);
    }
    if (!st && dw) st = gemm_op(name, dw, dy, x, NULL, 1, OC, C, N, true, false, 1.0f, 1.0f, 0, false);
    if (!st && dbias) {
        ts_tensor d2;
        st = ts_tensor_reshape(&d2, dy, TS_SHAPE(N, OC));
        if (!st && d2.dtype != TS_F32) { /* sum_rows reads fp32 */
            st = f32_operand(dout, &dout32, &dy);
            if (!st) st = ts_tensor_reshape(&d2, dy, TS_SHAPE(N, OC));
        }
        if (!st) st = ts_sum_rows(dbias, &d2, true);
    }
    ts_tensor_free(&in32);
    ts_tensor_free(&dout32);
    return st;
}

ts_status ts_sum_rows(ts_tensor *out, const ts_tensor *x, bool accumulate)
{
    const char *name = "ts_sum_rows";
    TRY(need(name, "out", out, TS_F32));
    TRY(need(name, "x", x, TS_F32));
    int64_t C = last_dim(x);
    int64_t N = C ? ts_tensor_numel(x) / C : 0;
    TRY(need_numel(name, "out", out, C));
    if (C == 0) return TS_OK;
    ts_op op = op_new(TS_OP_SUM_ROWS);
    op.out[0] = out;
    op.in[0] = x;
    op.p.sum_rows.N = N;
    op.p.sum_rows.C = C;
    op.p.sum_rows.accumulate = accumulate;
    return dispatch(name, &op);
}

/* ---- attention ---- */

static ts_status heads_op(const char *name, ts_op_kind kind, ts_tensor *out, const ts_tensor *inp,
                          int64_t B, int64_t T, int64_t K, int64_t NH)
{
    int split = kind == TS_OP_SPLIT_HEADS;
    /* the packed side may be 16-bit (the model's qkv, out, dout), the heads side is fp32 */
    TRY(split ? need(name, "out", out, TS_F32) : need_act16(name, "out", out));
    TRY(split ? need_act16(name, "inp", inp) : need(name, "inp", inp, TS_F32));
    if (B <= 0 || T <= 0 || K <= 0 || NH <= 0)
        return ts_error(TS_ERR_INVALID_ARG, "%s: B, T, K, NH must be positive", name);
    int64_t n = ts_tensor_numel(inp);
    if (n % (B * T * K * NH) != 0)
        return ts_error(TS_ERR_SHAPE, "%s: %s does not split into B=%lld T=%lld K=%lld NH=%lld",
                        name, desc(0, inp), (long long)B, (long long)T, (long long)K, (long long)NH);
    TRY(need_numel(name, "out", out, n));
    ts_op op = op_new(kind);
    op.out[0] = out;
    op.in[0] = inp;
    op.p.heads.B = B;
    op.p.heads.T = T;
    op.p.heads.K = K;
    op.p.heads.NH = NH;
    op.p.heads.HS = n / (B * T * K * NH);
    if (op.p.heads.HS == 0) return TS_OK;
    return dispatch_16bit(name, &op);
}

ts_status ts_split_heads(ts_tensor *out, const ts_tensor *inp, int64_t B, int64_t T, int64_t K,
                         int64_t NH)
{
    return heads_op("ts_split_heads", TS_OP_SPLIT_HEADS, out, inp, B, T, K, NH);
}

ts_status ts_merge_heads(ts_tensor *out, const ts_tensor *inp, int64_t B, int64_t T, int64_t K,
                         int64_t NH)
{
    return heads_op("ts_merge_heads", TS_OP_MERGE_HEADS, out, inp, B, T, K, NH);
}

static ts_status softmax_shape(const char *name, const ts_tensor *t, int64_t *BH, int64_t *T)
{
    if (t->ndim != 3 || t->shape[1] != t->shape[2])
        return ts_error(TS_ERR_SHAPE, "%s: scores must be [BH, T, T], got %s", name, desc(0, t));
    *BH = t->shape[0];
    *T = t->shape[1];
    return TS_OK;
}

ts_status ts_softmax_causal_forward(ts_tensor *att, const ts_tensor *preatt, float scale)
{
    const char *name = "ts_softmax_causal_forward";
    TRY(need(name, "att", att, TS_F32));
    TRY(need(name, "preatt", preatt, TS_F32));
    int64_t BH = 0, T = 0;
    TRY(softmax_shape(name, preatt, &BH, &T));
    TRY(need_numel(name, "att", att, BH * T * T));
    if (BH * T == 0) return TS_OK;
    ts_op op = op_new(TS_OP_SOFTMAX_CAUSAL_FWD);
    op.out[0] = att;
    op.in[0] = preatt;
    op.p.softmax.BH = BH;
    op.p.softmax.T = T;
    op.p.softmax.scale = scale;
    return dispatch(name, &op);
}

/* The softmax backward is the same for every mask: masked-out entries have
 * att = 0 and so get no gradient. */
static ts_status softmax_backward(const char *name, ts_op_kind kind, ts_tensor *dpreatt, const ts_tensor *att,
                                  const ts_tensor *datt, float scale)
{
    TRY(need(name, "dpreatt", dpreatt, TS_F32));
    TRY(need(name, "att", att, TS_F32));
    TRY(need(name, "datt", datt, TS_F32));
    int64_t BH = 0, T = 0;
    TRY(softmax_shape(name, att, &BH, &T));
    TRY(need_numel(name, "datt", datt, BH * T * T));
    TRY(need_numel(name, "dpreatt", dpreatt, BH * T * T));
    if (BH * T == 0) return TS_OK;
    ts_op op = op_new(kind);
    op.out[0] = dpreatt;
    op.in[0] = att;
    op.in[1] = datt;
    op.p.softmax.BH = BH;
    op.p.softmax.T = T;
    op.p.softmax.scale = scale;
    return dispatch(name, &op);
}

ts_status ts_softmax_causal_backward(ts_tensor *dpreatt, const ts_tensor *att,
                                     const ts_tensor *datt, float scale)
{
    return softmax_backward("ts_softmax_causal_backward", TS_OP_SOFTMAX_CAUSAL_BWD, dpreatt, att, datt, scale);
}

ts_status ts_softmax_masked_forward(ts_tensor *att, const ts_tensor *preatt, const ts_tensor *lengths,
                                    int64_t NH, float scale, bool causal)
{
    const char *name = "ts_softmax_masked_forward";
    TRY(need(name, "att", att, TS_F32));
    TRY(need(name, "preatt", preatt, TS_F32));
    TRY(need(name, "lengths", lengths, TS_I32));
    int64_t BH = 0, T = 0;
    TRY(softmax_shape(name, preatt, &BH, &T));
    TRY(need_numel(name, "att", att, BH * T * T));
    if (NH < 1 || BH % NH != 0)
        return ts_error(TS_ERR_SHAPE, "%s: %lld score blocks are not a whole number of batches of %lld heads", name,
                        (long long)BH, (long long)NH);
    TRY(need_numel(name, "lengths", lengths, BH / NH));
    if (BH * T == 0) return TS_OK;
    ts_op op = op_new(TS_OP_SOFTMAX_MASKED_FWD);
    op.out[0] = att;
    op.in[0] = preatt;
    op.in[1] = lengths;
    op.p.softmax.BH = BH;
    op.p.softmax.T = T;
    op.p.softmax.scale = scale;
    op.p.softmax.NH = NH;
    op.p.softmax.causal = causal;
    return dispatch(name, &op);
}

ts_status ts_softmax_masked_backward(ts_tensor *dpreatt, const ts_tensor *att, const ts_tensor *datt, float scale)
{
    return softmax_backward("ts_softmax_masked_backward", TS_OP_SOFTMAX_MASKED_BWD, dpreatt, att, datt, scale);
}

/* ---- pooling ---- */

ts_status ts_pool_max_forward(ts_tensor *out, ts_tensor *argmax, const ts_tensor *x, const ts_tensor *lengths)
{
    const char *name = "ts_pool_max_forward";
    TRY(need(name, "out", out, TS_F32));
    TRY(need(name, "argmax", argmax, TS_I32));
    TRY(need(name, "x", x, TS_F32));
    TRY(need(name, "lengths", lengths, TS_I32));
    if (x->ndim != 3) return ts_error(TS_ERR_SHAPE, "%s: x must be [B,T,C], got %s", name, desc(0, x));
    int64_t B = x->shape[0], T = x->shape[1], C = x->shape[2];
    TRY(need_numel(name, "out", out, B * C));
    TRY(need_numel(name, "argmax", argmax, B * C));
    TRY(need_numel(name, "lengths", lengths, B));
    if (B * C == 0) return TS_OK;
    ts_op op = op_new(TS_OP_POOL_MAX_FWD);
    op.out[0] = out;
    op.out[1] = argmax;
    op.in[0] = x;
    op.in[1] = lengths;
    op.p.pool.B = B, op.p.pool.T = T, op.p.pool.C = C;
    return dispatch(name, &op);
}

ts_status ts_pool_max_backward(ts_tensor *dx, const ts_tensor *dout, const ts_tensor *argmax)
{
    const char *name = "ts_pool_max_backward";
    TRY(need(name, "dx", dx, TS_F32));
    TRY(need(name, "dout", dout, TS_F32));
    TRY(need(name, "argmax", argmax, TS_I32));
    if (dx->ndim != 3) return ts_error(TS_ERR_SHAPE, "%s: dx must be [B,T,C], got %s", name, desc(0, dx));
    int64_t B = dx->shape[0], T = dx->shape[1], C = dx->shape[2];
    TRY(need_numel(name, "dout", dout, B * C));
    TRY(need_numel(name, "argmax", argmax, B * C));
    if (B * T * C == 0) return TS_OK;
    ts_op op = op_new(TS_OP_POOL_MAX_BWD);
    op.out[0] = dx;
    op.in[0] = dout;
    op.in[1] = argmax;
    op.p.pool.B = B, op.p.pool.T = T, op.p.pool.C = C;
    return dispatch(name, &op);
}

/* The fused op's probe: whether dev runs TS_OP_ATTENTION_FWD/BWD at this
 * shape (by_default: and takes it without being asked, for this mask). */
static bool device_has_fused_attention(ts_device *dev, int64_t B, int64_t T, int64_t C, int64_t NH, bool by_default,
                                       bool bidirectional)
{
    if (!dev->iface->supports_op) return false; /* says nothing: do not guess */
    ts_op op = op_new(TS_OP_ATTENTION_FWD), bw = op_new(TS_OP_ATTENTION_BWD);
    op.p.attention.B = B, op.p.attention.T = T, op.p.attention.C = C, op.p.attention.NH = NH;
    op.p.attention.causal = !bidirectional;
    op.p.attention.by_default = by_default;
    bw.p.attention = op.p.attention;
    return dev->iface->supports_op(dev, &op) && dev->iface->supports_op(dev, &bw);
}

ts_status ts_attention_route_fused(ts_device *dev, ts_attention_route route, int64_t B, int64_t T, int64_t C,
                                   int64_t NH, bool *fused)
{
    return ts_attention_route_fused_mask(dev, route, B, T, C, NH, false, fused);
}

ts_status ts_attention_route_fused_mask(ts_device *dev, ts_attention_route route, int64_t B, int64_t T, int64_t C,
                                        int64_t NH, bool bidirectional, bool *fused)
{
    if (!dev) return ts_error(TS_ERR_INVALID_ARG, "attention: no device");
    if (route == TS_ATTENTION_AUTO) {
        const char *env = getenv("TESSERA_ATTENTION");
        if (env && *env && strcmp(env, "fused") && strcmp(env, "composite") && strcmp(env, "auto"))
            return ts_error(TS_ERR_INVALID_ARG, "TESSERA_ATTENTION=%s: expected fused, composite or auto", env);
        if (env && !strcmp(env, "composite")) route = TS_ATTENTION_COMPOSITE;
        else if (env && !strcmp(env, "fused")) { /* asked for: wherever the device can */
            *fused = device_has_fused_attention(dev, B, T, C, NH, false, bidirectional);
            return TS_OK;
        } else {
            *fused = device_has_fused_attention(dev, B, T, C, NH, true, bidirectional);
            return TS_OK;
        }
    }
    if (route == TS_ATTENTION_FUSED && !device_has_fused_attention(dev, B, T, C, NH, false, bidirectional))
        return ts_error(TS_ERR_UNSUPPORTED, "fused attention (T=%lld, head size %lld) is not available on device %s (%s)",
                        (long long)T, (long long)(NH > 0 ? C / NH : 0), dev->info.id, dev->info.name);
    *fused = route == TS_ATTENTION_FUSED;
    return TS_OK;
}

ts_status ts_attention_ws_alloc_route(ts_attention_ws *ws, ts_device *dev, int64_t B, int64_t T, int64_t C,
                                      int64_t NH, ts_attention_route route)
{
    memset(ws, 0, sizeof *ws);
    if (B <= 0 || T <= 0 || NH <= 0 || C <= 0 || C % NH)
        return ts_error(TS_ERR_SHAPE, "attention: C=%lld must be a positive multiple of NH=%lld",
                        (long long)C, (long long)NH);
    TRY(ts_attention_route_fused(dev, route, B, T, C, NH, &ws->fused));
    int64_t HS = C / NH;
    ws->B = B, ws->T = T, ws->C = C, ws->NH = NH;
    ts_status st;
    if (ws->fused)
        st = ts_tensor_alloc(&ws->lse, dev, TS_F32, TS_SHAPE(B * NH, T));
    else if (!(st = ts_tensor_alloc(&ws->qkvh, dev, TS_F32, TS_SHAPE(3, B * NH, T, HS))) &&
             !(st = ts_tensor_alloc(&ws->att, dev, TS_F32, TS_SHAPE(B * NH, T, T))) &&
             !(st = ts_tensor_alloc(&ws->y, dev, TS_F32, TS_SHAPE(B * NH, T, HS))) &&
             !(st = ts_tensor_alloc(&ws->scratch, dev, TS_F32, TS_SHAPE(B * NH, T, T))))
        st = ts_tensor_alloc(&ws->dqkvh, dev, TS_F32, TS_SHAPE(3, B * NH, T, HS));
    if (!st && ws->fused) st = ts_tensor_alloc(&ws->o, dev, TS_F32, TS_SHAPE(B, T, C));
    if (st) ts_attention_ws_free(ws);
    return st;
}

ts_status ts_attention_ws_alloc(ts_attention_ws *ws, ts_device *dev, int64_t B, int64_t T, int64_t C, int64_t NH)
{
    return ts_attention_ws_alloc_route(ws, dev, B, T, C, NH, TS_ATTENTION_AUTO);
}

void ts_attention_ws_free(ts_attention_ws *ws)
{
    ts_tensor_free(&ws->qkvh);
    ts_tensor_free(&ws->att);
    ts_tensor_free(&ws->y);
    ts_tensor_free(&ws->scratch);
    ts_tensor_free(&ws->dqkvh);
    ts_tensor_free(&ws->lse);
    ts_tensor_free(&ws->o);
}

/* q, k, v (or their gradients) as [BH, T, HS] views of a [3, BH, T, HS] tensor. */
static ts_status qkv_views(const ts_tensor *qkvh, ts_attention_ws *ws, ts_tensor v[3])
{
    int64_t BH = ws->B * ws->NH, HS = ws->C / ws->NH, n = BH * ws->T * HS;
    for (int i = 0; i < 3; i++) TRY(ts_tensor_view(&v[i], qkvh, i * n, TS_SHAPE(BH, ws->T, HS)));
    return TS_OK;
}

static bool same_storage(const ts_tensor *a, const ts_tensor *b)
{
    return a->block == b->block && a->offset == b->offset;
}

/* Shapes the fused ops share: qkv [B,T,3C] and out-like [B,T,C] tensors
 * (fp32, bf16 or f16). */
static ts_status fused_operands(const char *name, ts_attention_ws *ws, const ts_tensor *qkv, const ts_tensor *o,
                                const char *oname)
{
    int64_t B = ws->B, T = ws->T, C = ws->C;
    TRY(need_act16(name, "qkv", qkv));
    TRY(need_numel(name, "qkv", qkv, B * T * 3 * C));
    TRY(need_act16(name, oname, o));
    TRY(need_numel(name, oname, o, B * T * C));
    if (ws->key_len) {
        TRY(need(name, "key_len", ws->key_len, TS_I32));
        TRY(need_numel(name, "key_len", ws->key_len, B));
    }
    if (!ws->lse.block || !ws->o.block)
        return ts_error(TS_ERR_INVALID_ARG, "%s: the workspace was not set up for the fused route", name);
    if (ws->bidirectional && !ws->key_len)
        return ts_error(TS_ERR_INVALID_ARG, "bidirectional attention needs the sequence lengths");
    return TS_OK;
}

static ts_op fused_op(ts_op_kind kind, const ts_attention_ws *ws)
{
    ts_op op = op_new(kind);
    op.p.attention.B = ws->B, op.p.attention.T = ws->T, op.p.attention.C = ws->C, op.p.attention.NH = ws->NH;
    op.p.attention.causal = !ws->bidirectional;
    return op;
}

/* The composite route: head permutes (which read and write 16-bit qkv
 * and out where the device takes them), batched GEMMs and a softmax. */
static ts_status attention_forward_composite(ts_tensor *out, const ts_tensor *qkv, ts_attention_ws *ws)
{
    int64_t B = ws->B, T = ws->T, NH = ws->NH, HS = ws->C / ws->NH;
    ts_tensor h[3];
    TRY(ts_split_heads(&ws->qkvh, qkv, B, T, 3, NH));
    TRY(qkv_views(&ws->qkvh, ws, h));
    TRY(ts_matmul(&ws->att, &h[0], &h[1], false, true, 1.0f, 0.0f));
    if (ws->key_len || ws->bidirectional) {
        if (!ws->key_len) return ts_error(TS_ERR_INVALID_ARG, "bidirectional attention needs the sequence lengths");
        TRY(ts_softmax_masked_forward(&ws->att, &ws->att, ws->key_len, NH, 1.0f / sqrtf((float)HS), !ws->bidirectional));
    } else
        TRY(ts_softmax_causal_forward(&ws->att, &ws->att, 1.0f / sqrtf((float)HS)));
    TRY(ts_matmul(&ws->y, &ws->att, &h[2], false, false, 1.0f, 0.0f));
    return ts_merge_heads(out, &ws->y, B, T, 1, NH);
}

/* Attention computes in fp32 on every device. A bf16 or f16 qkv and
 * output (the model's under 16-bit products, as autocast leaves them) are
 * read and written as they are where the device's fused op takes them (the
 * OpenCL local-memory kernels, GPUs'), else through fp32 copies made one
 * layer at a time; either way what a step keeps is half the size. The
 * fused route's backward reads the output as kept, rounded. */
ts_status ts_attention_forward(ts_tensor *out, const ts_tensor *qkv, ts_attention_ws *ws)
{
    const char *name = ws->fused ? "ts_attention_forward (fused)" : "ts_attention_forward";
    TRY(need_act16(name, "qkv", qkv));
    TRY(need_act16(name, "out", out));
    if (ws->fused) {
        TRY(fused_operands(name, ws, qkv, out, "out"));
        if (overlap(out, qkv) || overlap(out, &ws->lse))
            return ts_error(TS_ERR_INVALID_ARG, "%s: out shares memory with qkv or the workspace", name);
    }
    if (!ws->fused) return attention_forward_composite(out, qkv, ws);
    ts_op op = fused_op(TS_OP_ATTENTION_FWD, ws);
    op.out[0] = out, op.out[1] = &ws->lse;
    op.in[0] = qkv, op.in[1] = ws->key_len;
    TRY(dispatch_16bit(name, &op));
    ws->qkv_in = *qkv; /* a view: backward reads the scores' inputs again */
    ws->qkv_in.owner = 0;
    if (same_storage(out, &ws->o)) return TS_OK;
    return ws->o.dtype == out->dtype ? ts_tensor_copy(&ws->o, out) : ts_cast(&ws->o, out);
}

ts_status ts_attention_backward(ts_tensor *dqkv, const ts_tensor *dout, ts_attention_ws *ws)
{
    int64_t B = ws->B, T = ws->T, NH = ws->NH, HS = ws->C / ws->NH;
    const char *name = ws->fused ? "ts_attention_backward (fused)" : "ts_attention_backward";
    TRY(need_act16(name, "dout", dout));
    TRY(need(name, "dqkv", dqkv, TS_F32));
    if (ws->fused) {
        const ts_tensor *qkv = &ws->qkv_in;
        if (!qkv->block) return ts_error(TS_ERR_INVALID_ARG, "%s: no forward to go back through", name);
        TRY(fused_operands(name, ws, qkv, dout, "dout"));
        TRY(need_numel(name, "dqkv", dqkv, B * T * 3 * ws->C));
        if (overlap(dqkv, qkv) || overlap(dqkv, dout) || overlap(dqkv, &ws->o) || overlap(dqkv, &ws->lse))
            return ts_error(TS_ERR_INVALID_ARG, "%s: dqkv shares memory with qkv, dout or the workspace", name);
        ts_op op = fused_op(TS_OP_ATTENTION_BWD, ws);
        op.out[0] = dqkv;
        op.in[0] = dout, op.in[1] = qkv, op.in[2] = &ws->o, op.in[3] = &ws->lse, op.in[4] = ws->key_len;
        return dispatch_16bit(name, &op);
    }
    ts_tensor h[3], dh[3];
    TRY(qkv_views(&ws->qkvh, ws, h));
    TRY(qkv_views(&ws->dqkvh, ws, dh));
    ts_tensor *dy = &ws->y; /* y is not needed after forward: reuse it */
    TRY(ts_split_heads(dy, dout, B, T, 1, NH));
    TRY(ts_matmul(&ws->scratch, dy, &h[2], false, true, 1.0f, 0.0f));    /* datt */
    TRY(ts_matmul(&dh[2], &ws->att, dy, true, false, 1.0f, 0.0f));       /* dv */
    if (ws->key_len) TRY(ts_softmax_masked_backward(&ws->scratch, &ws->att, &ws->scratch, 1.0f / sqrtf((float)HS)));
    else TRY(ts_softmax_causal_backward(&ws->scratch, &ws->att, &ws->scratch, 1.0f / sqrtf((float)HS)));
    TRY(ts_matmul(&dh[0], &ws->scratch, &h[1], false, false, 1.0f, 0.0f)); /* dq */
    TRY(ts_matmul(&dh[1], &ws->scratch, &h[0], true, false, 1.0f, 0.0f));  /* dk */
    return ts_merge_heads(dqkv, &ws->dqkvh, B, T, 3, NH);
}

/* ---- cross-entropy ---- */

ts_status ts_cross_entropy(ts_tensor *losses, ts_tensor *probs, ts_tensor *dlogits,
                           const ts_tensor *logits, const ts_tensor *targets, float scale)
{
    const char *name = "ts_cross_entropy";
    TRY(need_act(name, "logits", logits));
    int64_t V = last_dim(logits);
    int64_t N = V ? ts_tensor_numel(logits) / V : 0;
    if (!losses && !probs && !dlogits)
        return ts_error(TS_ERR_INVALID_ARG, "%s: no output requested", name);
    if ((losses || dlogits) && !targets)
        return ts_error(TS_ERR_INVALID_ARG, "%s: losses and dlogits need targets", name);
    if (targets) {
        TRY(need(name, "targets", targets, TS_I32));
        TRY(need_numel(name, "targets", targets, N));
    }
    if (losses) {
        TRY(need(name, "losses", losses, TS_F32));
        TRY(need_numel(name, "losses", losses, N));
    }
    if (probs) {
        TRY(need(name, "probs", probs, TS_F32));
        TRY(need_numel(name, "probs", probs, N * V));
        TRY(same_type_in_place(name, "probs", probs, "logits", logits));
    }
    if (dlogits) {
        TRY(need_act(name, "dlogits", dlogits));
        TRY(need_numel(name, "dlogits", dlogits, N * V));
        TRY(same_type_in_place(name, "dlogits", dlogits, "logits", logits));
    }
    if (probs && dlogits && probs->block == dlogits->block && probs->offset == dlogits->offset)
        return ts_error(TS_ERR_INVALID_ARG, "%s: probs and dlogits cannot share memory", name);
    if (N == 0) return TS_OK;
    ts_op op = op_new(TS_OP_CROSS_ENTROPY);
    op.out[0] = losses;
    op.out[1] = probs;
    op.out[2] = dlogits;
    op.in[0] = logits;
    op.in[1] = targets;
    op.p.cross_entropy.N = N;
    op.p.cross_entropy.V = V;
    op.p.cross_entropy.scale = scale;
    return dispatch(name, &op);
}

/* ---- vocabulary-parallel cross-entropy ---- */

static ts_status ce_rows(const char *name, const ts_tensor *t, int64_t N)
{
    TRY(need(name, "row statistic", t, TS_F32));
    return need_numel(name, "row statistic", t, N);
}

ts_status ts_ce_shard_stats(ts_tensor *rowmax, ts_tensor *target_logit, const ts_tensor *logits,
                            const ts_tensor *targets, int64_t vocab_start)
{
    const char *name = "ts_ce_shard_stats";
    TRY(need_act(name, "logits", logits));
    int64_t V = last_dim(logits), N = V ? ts_tensor_numel(logits) / V : 0;
    TRY(ce_rows(name, rowmax, N));
    TRY(ce_rows(name, target_logit, N));
    TRY(need(name, "targets", targets, TS_I32));
    TRY(need_numel(name, "targets", targets, N));
    if (N == 0 || V == 0) return TS_OK;
    ts_op op = op_new(TS_OP_CE_SHARD);
    op.out[0] = rowmax;
    op.out[1] = target_logit;
    op.in[0] = logits;
    op.in[1] = targets;
    op.p.ce_shard.phase = 0;
    op.p.ce_shard.N = N, op.p.ce_shard.V = V, op.p.ce_shard.vocab_start = vocab_start;
    return dispatch(name, &op);
}

ts_status ts_ce_shard_sumexp(ts_tensor *sumexp, const ts_tensor *logits, const ts_tensor *rowmax)
{
    const char *name = "ts_ce_shard_sumexp";
    TRY(need_act(name, "logits", logits));
    int64_t V = last_dim(logits), N = V ? ts_tensor_numel(logits) / V : 0;
    TRY(ce_rows(name, sumexp, N));
    TRY(ce_rows(name, rowmax, N));
    if (N == 0) return TS_OK;
    ts_op op = op_new(TS_OP_CE_SHARD);
    op.out[0] = sumexp;
    op.in[0] = logits;
    op.in[1] = rowmax;
    op.p.ce_shard.phase = 1;
    op.p.ce_shard.N = N, op.p.ce_shard.V = V;
    return dispatch(name, &op);
}

ts_status ts_ce_shard_loss(ts_tensor *losses, const ts_tensor *rowmax, const ts_tensor *sumexp,
                           const ts_tensor *target_logit, const ts_tensor *targets, int64_t vocab_size)
{
    const char *name = "ts_ce_shard_loss";
    int64_t N = ts_tensor_numel(losses);
    TRY(ce_rows(name, losses, N));
    TRY(ce_rows(name, rowmax, N));
    TRY(ce_rows(name, sumexp, N));
    TRY(ce_rows(name, target_logit, N));
    TRY(need(name, "targets", targets, TS_I32));
    TRY(need_numel(name, "targets", targets, N));
    if (N == 0) return TS_OK;
    ts_op op = op_new(TS_OP_CE_SHARD);
    op.out[0] = losses;
    op.in[0] = rowmax;
    op.in[1] = sumexp;
    op.in[2] = target_logit;
    op.in[3] = targets;
    op.p.ce_shard.phase = 2;
    op.p.ce_shard.N = N, op.p.ce_shard.vocab_size = vocab_size;
    return dispatch(name, &op);
}

ts_status ts_ce_shard_grad(ts_tensor *dlogits, const ts_tensor *logits, const ts_tensor *rowmax,
                           const ts_tensor *sumexp, const ts_tensor *targets, int64_t vocab_start,
                           int64_t vocab_size, float scale)
{
    const char *name = "ts_ce_shard_grad";
    TRY(need_act(name, "logits", logits));
    TRY(need(name, "dlogits", dlogits, logits->dtype)); /* bf16 logits: a bf16 gradient, in place as the model does */
    int64_t V = last_dim(logits), N = V ? ts_tensor_numel(logits) / V : 0;
    TRY(need_numel(name, "dlogits", dlogits, N * V));
    TRY(ce_rows(name, rowmax, N));
    TRY(ce_rows(name, sumexp, N));
    TRY(need(name, "targets", targets, TS_I32));
    TRY(need_numel(name, "targets", targets, N));
    if (N == 0 || V == 0) return TS_OK;
    ts_op op = op_new(TS_OP_CE_SHARD);
    op.out[0] = dlogits;
    op.in[0] = logits;
    op.in[1] = rowmax;
    op.in[2] = sumexp;
    op.in[3] = targets;
    op.p.ce_shard.phase = 3;
    op.p.ce_shard.N = N, op.p.ce_shard.V = V, op.p.ce_shard.vocab_start = vocab_start;
    op.p.ce_shard.vocab_size = vocab_size, op.p.ce_shard.scale = scale;
    return dispatch(name, &op);
}

/* ---- reductions ---- */

static ts_status reduce_op(const char *name, ts_op_kind kind, ts_tensor *out, const ts_tensor *x)
{
    TRY(need(name, "out", out, TS_F32));
    TRY(need(name, "x", x, TS_F32));
    TRY(need_numel(name, "out", out, 1));
    ts_op op = op_new(kind);
    op.out[0] = out;
    op.in[0] = x;
    op.p.reduce.n = ts_tensor_numel(x);
    if (op.p.reduce.n == 0) return ts_fill(out, 0.0f);
    return dispatch(name, &op);
}

ts_status ts_sum(ts_tensor *out, const ts_tensor *x) { return reduce_op("ts_sum", TS_OP_SUM, out, x); }

ts_status ts_sqnorm(ts_tensor *out, const ts_tensor *x)
{
    return reduce_op("ts_sqnorm", TS_OP_SQNORM, out, x);
}

/* ---- optimizer ---- */

const char *ts_optim_kind_name(ts_optim_kind kind)
{
    switch (kind) {
    case TS_OPTIM_SGD: return "sgd";
    case TS_OPTIM_SGD_MOMENTUM: return "momentum";
    case TS_OPTIM_ADAM: return "adam";
    case TS_OPTIM_ADAMW: return "adamw";
    }
    return "?";
}

int ts_optim_kind_parse(const char *name)
{
    if (!name) return -1;
    if (!strcmp(name, "sgd")) return TS_OPTIM_SGD;
    if (!strcmp(name, "momentum") || !strcmp(name, "sgd-momentum")) return TS_OPTIM_SGD_MOMENTUM;
    if (!strcmp(name, "adam")) return TS_OPTIM_ADAM;
    if (!strcmp(name, "adamw")) return TS_OPTIM_ADAMW;
    return -1;
}

ts_status ts_optimizer_update(ts_tensor *param, const ts_tensor *grad, ts_tensor *m, ts_tensor *v,
                              const ts_optim_params *p)
{
    const char *name = "ts_optimizer_update";
    if (!p) return ts_error(TS_ERR_INVALID_ARG, "%s: params is NULL", name);
    TRY(need(name, "param", param, TS_F32));
    TRY(need(name, "grad", grad, TS_F32));
    int64_t n = ts_tensor_numel(param);
    TRY(need_numel(name, "grad", grad, n));
    bool needs_m = p->kind != TS_OPTIM_SGD;
    bool needs_v = p->kind == TS_OPTIM_ADAM || p->kind == TS_OPTIM_ADAMW;
    if (p->kind < TS_OPTIM_SGD || p->kind > TS_OPTIM_ADAMW)
        return ts_error(TS_ERR_INVALID_ARG, "%s: unknown optimizer kind %d", name, (int)p->kind);
    if (needs_m) {
        TRY(need(name, "m", m, TS_F32));
        TRY(need_numel(name, "m", m, n));
    }
    if (needs_v) {
        TRY(need(name, "v", v, TS_F32));
        TRY(need_numel(name, "v", v, n));
        if (p->step < 1)
            return ts_error(TS_ERR_INVALID_ARG, "%s: Adam step must be >= 1, got %lld", name,
                            (long long)p->step);
    }
    if (n == 0) return TS_OK;
    ts_op op = op_new(TS_OP_OPTIM_UPDATE);
    op.out[0] = param;
    op.out[1] = needs_m ? m : NULL;
    op.out[2] = needs_v ? v : NULL;
    op.in[0] = grad;
    op.p.optim.kind = p->kind;
    op.p.optim.n = n;
    op.p.optim.lr = p->lr;
    op.p.optim.beta1 = p->beta1;
    op.p.optim.beta2 = p->beta2;
    op.p.optim.eps = p->eps;
    op.p.optim.weight_decay = p->weight_decay;
    op.p.optim.grad_scale = p->grad_scale;
    if (needs_v) {
        op.p.optim.bias_correction1 = (float)(1.0 - pow((double)p->beta1, (double)p->step));
        op.p.optim.bias_correction2 = (float)(1.0 - pow((double)p->beta2, (double)p->step));
    }
    return dispatch(name, &op);
}

/* ---- device limits ---- */

ts_status ts_triad(ts_tensor *a, const ts_tensor *b, const ts_tensor *c, float s)
{
    const char *name = "ts_triad";
    TRY(need(name, "a", a, TS_F32));
    TRY(need(name, "b", b, TS_F32));
    TRY(need(name, "c", c, TS_F32));
    int64_t n = ts_tensor_numel(a);
    TRY(need_numel(name, "b", b, n));
    TRY(need_numel(name, "c", c, n));
    if (n == 0) return TS_OK;
    ts_op op = op_new(TS_OP_TRIAD);
    op.out[0] = a;
    op.in[0] = b;
    op.in[1] = c;
    op.p.triad.n = n;
    op.p.triad.s = s;
    return dispatch(name, &op);
}

ts_status ts_fma_loop(ts_tensor *x, int64_t iterations, float a, float b)
{
    const char *name = "ts_fma_loop";
    TRY(need(name, "x", x, TS_F32));
    if (iterations < 0)
        return ts_error(TS_ERR_INVALID_ARG, "%s: iterations must be >= 0, got %lld", name,
                        (long long)iterations);
    int64_t n = ts_tensor_numel(x);
    if (n == 0 || iterations == 0) return TS_OK;
    ts_op op = op_new(TS_OP_FMA_LOOP);
    op.out[0] = x;
    op.p.fma_loop.n = n;
    op.p.fma_loop.iterations = iterations;
    op.p.fma_loop.a = a;
    op.p.fma_loop.b = b;
    return dispatch(name, &op);
}
