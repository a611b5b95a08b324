/* GEMM on OpenCL devices, routed by device type:
 *   CPU-type devices (PoCL): host CBLAS on mapped buffers. Memory is host
 *     memory there, so mapping costs nothing, and OpenBLAS runs at the
 *     machine's peak where CLBlast on PoCL manages 10-18 GFLOP/s. bf16/fp16
 *     products take the CPU backend's route on the mapped buffers (oneDNN's
 *     bf16 kernels where present).
 *   GPUs: CLBlast (SgemmStridedBatched for batches, Sgemm with a
 *     pre-allocated temporary buffer otherwise); tessera's kernels for
 *     tiny shapes (an item per element of C) and whenever CLBlast is
 *     missing or returns an error (tiled).
 *     bf16/fp16 products: CLBlast's SGEMM multiplies the operands rounded
 *     to 16 bits and widened back to fp32; tessera's kernel reads 16-bit
 *     values, a bf16 tensor as it is and others rounded into 16-bit
 *     buffers, summing in fp32. (CLBlast's HGEMM sums in half precision,
 *     which a bf16/fp16 product here must not, and CLBlast has no bf16.)
 *     bf16 activations (inputs and results) are read and written here, so
 *     the core makes no fp32 copies of them: tessera's kernel reads and
 *     writes bf16 itself; for CLBlast they are widened into fp32 working
 *     copies, one kernel each way.
 * TESSERA_GEMM=blas|clblast|kernel overrides the choice (tests use it to
 * run every route on PoCL and oclgrind); a route chosen that way takes every
 * shape and reports its errors instead of falling back. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../blas/blas.h"
#include "../cpu/cpu_lowp_gemm.h"
#include "cl_internal.h"

#ifdef TS_HAVE_CLBLAST
#include <clblast_c.h>
#endif

const char *ts_cl_gemm_route_name(ts_gemm_route r)
{
    switch (r) {
    case TS_GEMM_HOST_BLAS: return "host BLAS";
    case TS_GEMM_CLBLAST: return "CLBlast";
    case TS_GEMM_KERNEL: return "tessera kernel";
    default: return "auto";
    }
}

/* The most a bf16 result's fp32 working copy for CLBlast holds: the head's
 * logits (B*T rows of the vocabulary) are made in blocks of rows, not kept
 * whole in fp32 beside their bf16 storage. */
size_t ts_cl_gemm_work_bytes(void)
{
    const char *env = getenv("TESSERA_GEMM_WORK_BYTES");
    char *end = NULL;
    unsigned long long v = env && *env ? strtoull(env, &end, 10) : 0;
    if (env && *env && (*end || v < sizeof(cl_float))) {
        ts_log(TS_LOG_WARN, "TESSERA_GEMM_WORK_BYTES=%s is not a number of bytes (at least 4); 128 MiB", env);
        v = 0;
    }
    return v ? (size_t)v : (size_t)128 << 20;
}

ts_gemm_route ts_cl_default_gemm_route(const ts_cl_device *d)
{
    const char *env = getenv("TESSERA_GEMM");
    if (env && *env && strcmp(env, "auto") != 0) {
        if (!strcmp(env, "blas")) return TS_GEMM_HOST_BLAS;
        if (!strcmp(env, "kernel")) return TS_GEMM_KERNEL;
        if (!strcmp(env, "clblast")) {
#ifdef TS_HAVE_CLBLAST
            return TS_GEMM_CLBLAST;
#else
            ts_log(TS_LOG_WARN, "TESSERA_GEMM=clblast but tessera was built without CLBlast; "
                                "using its own kernel");
            return TS_GEMM_KERNEL;
#endif
        }
        ts_log(TS_LOG_WARN, "TESSERA_GEMM=%s is not one of auto, blas, clblast, kernel", env);
    }
    if (d->is_cpu) return TS_GEMM_HOST_BLAS;
#ifdef TS_HAVE_CLBLAST
    return TS_GEMM_CLBLAST;
#else
    return TS_GEMM_KERNEL;
#endif
}

/* Elements spanned by a row-major matrix of `rows` x `cols` with leading
 * dimension ld, repeated `batch` times `stride` apart. */
static size_t extent(int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride)
{
    if (rows == 0 || cols == 0) return 0;
    return (size_t)((rows - 1) * ld + cols + (batch - 1) * stride);
}

/* ---- tessera's kernel ---- */

/* What a product reads for A and B: operand i is the op's tensor, or where
 * copied[i] its copy in d->lowp[i] from offset 0; store[i] says how the
 * kernel reads it (gemm.cl's STORE_*). */
typedef struct {
    cl_int store[2];
    int copied[2];
} gemm_operands;

static void arg_operand(ts_cl_args *a, ts_cl_device *d, const ts_op *op, int i, const gemm_operands *o)
{
    if (o->copied[i]) {
        ts_cl_arg_mem(a, d->lowp[i]);
        ts_cl_arg_long(a, 0);
    } else {
        ts_cl_arg_tensor(a, op->in[i]);
    }
}

/* C (fp32, bf16 or f16, as the op's result is) = alpha*A*B + beta*C + bias */
static ts_status gemm_kernel(ts_cl_device *d, const ts_op *op, float beta, const ts_tensor *bias,
                             const gemm_operands *o)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    ts_cl_args a;
    memset(&a, 0, sizeof a);
    arg_operand(&a, d, op, 0, o);
    ts_cl_arg_long(&a, g->lda);
    ts_cl_arg_long(&a, g->stride_a);
    arg_operand(&a, d, op, 1, o);
    ts_cl_arg_long(&a, g->ldb);
    ts_cl_arg_long(&a, g->stride_b);
    ts_cl_arg_tensor(&a, op->out[0]);
    ts_cl_arg_long(&a, g->ldc);
    ts_cl_arg_long(&a, g->stride_c);
    ts_cl_arg_long(&a, g->M);
    ts_cl_arg_long(&a, g->N);
    ts_cl_arg_long(&a, g->K);
    ts_cl_arg_int(&a, g->trans_a);
    ts_cl_arg_int(&a, g->trans_b);
    ts_cl_arg_float(&a, g->alpha);
    ts_cl_arg_float(&a, beta);
    ts_cl_arg_tensor(&a, bias);
    ts_cl_arg_int(&a, bias != NULL);
    ts_cl_arg_int(&a, o->store[0]);
    ts_cl_arg_int(&a, o->store[1]);
    ts_cl_arg_int(&a, ts_cl_store_of(op->out[0]->dtype));
    size_t local[3] = {d->tile_wg, d->tile_wg, 1};
    if (g->M * g->N * g->K < 32 * 32 * 32) { /* an item per element of C */
        size_t global[3] = {(size_t)g->N, (size_t)g->M, (size_t)g->batch};
        return ts_cl_launch(d, "gemm.cl", "gemm_small", 3, global, local, &a);
    }
    size_t ts = d->tile_wg * 4;
    size_t global[3] = {(g->N + ts - 1) / ts * d->tile_wg, (g->M + ts - 1) / ts * d->tile_wg,
                        (size_t)g->batch};
    return ts_cl_launch(d, "gemm.cl", "gemm_tiled", 3, global, local, &a);
}

/* ---- host BLAS on mapped memory ---- */

/* The CPU backend's bf16 route keeps converted copies of its operands by
 * host address (a layer's weights serve two products a step, its output
 * gradient two more). On a CPU-type device every write to a buffer goes
 * through this backend, so copies may be kept where each write first drops
 * the copies over the bytes it writes: the host address of every buffer
 * mapped here is remembered (its mapping is its host memory on PoCL; a
 * buffer mapped elsewhere another time has its old range dropped). */
static struct ts_cl_host_base *find_base(ts_cl_device *d, cl_mem m)
{
    for (int i = 0; i < d->nbases; i++)
        if (d->bases[i].mem == m) return &d->bases[i];
    return NULL;
}

/* Returns 0 when the table cannot grow: then nothing may be kept. */
static int remember_base(ts_cl_device *d, cl_mem m, char *base)
{
    struct ts_cl_host_base *b = find_base(d, m);
    if (b && b->base == base) return 1;
    /* copies over the new range are another buffer's (memory the process
     * freed and reused; writes before now were not tracked): drop them */
    if (b) { /* mapped at another address: its copies at the old one go too */
        ts_cpu_lowp_written(b->base, b->size);
        ts_cpu_lowp_written(base, b->size);
        b->base = base;
        return 1;
    }
    size_t size = 0;
    if (clGetMemObjectInfo(m, CL_MEM_SIZE, sizeof size, &size, NULL) != CL_SUCCESS) return 0;
    if (d->nbases == d->cap_bases) {
        int cap = d->cap_bases ? 2 * d->cap_bases : 16;
        struct ts_cl_host_base *nb = realloc(d->bases, (size_t)cap * sizeof *nb);
        if (!nb) return 0;
        d->bases = nb, d->cap_bases = cap;
    }
    ts_cpu_lowp_written(base, size);
    d->bases[d->nbases++] = (struct ts_cl_host_base){m, base, size};
    return 1;
}

void ts_cl_host_written(ts_cl_device *d, cl_mem m, size_t offset, size_t size)
{
    struct ts_cl_host_base *b = d->nbases ? find_base(d, m) : NULL;
    if (b && offset < b->size) ts_cpu_lowp_written(b->base + offset, size < b->size - offset ? size : b->size - offset);
}

void ts_cl_host_forget(ts_cl_device *d, cl_mem m)
{
    struct ts_cl_host_base *b = d->nbases ? find_base(d, m) : NULL;
    if (!b) return;
    ts_cpu_lowp_written(b->base, b->size);
    *b = d->bases[--d->nbases];
}

ts_status ts_cl_map(ts_cl_device *d, const ts_tensor *t, size_t bytes, cl_map_flags flags, const char *what,
                    ts_cl_mapping *m, void **out)
{
    cl_int err;
    m->mem = ts_cl_mem(t);
    m->ptr = clEnqueueMapBuffer(d->queue, m->mem, CL_FALSE, flags, t->offset, bytes ? bytes : 4, 0, NULL, NULL, &err);
    if (err != CL_SUCCESS) {
        m->ptr = NULL;
        return ts_cl_fail(err, what, d);
    }
    *out = m->ptr;
    return TS_OK;
}

ts_status ts_cl_unmap_all(ts_cl_device *d, ts_cl_mapping *maps, int n, ts_status st)
{
    for (int i = n - 1; i >= 0; i--) {
        if (!maps[i].ptr) continue;
        cl_int err = clEnqueueUnmapMemObject(d->queue, maps[i].mem, maps[i].ptr, 0, NULL, NULL);
        if (err != CL_SUCCESS && !st) st = ts_cl_fail(err, "clEnqueueUnmapMemObject", d);
        maps[i].ptr = NULL;
    }
    return st;
}

static ts_status map_region(ts_cl_device *d, const ts_tensor *t, size_t elems, cl_map_flags flags,
                            ts_cl_mapping *m, void **out)
{
    return ts_cl_map(d, t, elems * ts_dtype_size(t->dtype), flags, "clEnqueueMapBuffer (host GEMM)", m, out);
}

static ts_status gemm_host(ts_cl_device *d, const ts_op *op)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    ts_cl_mapping maps[4] = {{0}};
    void *A = NULL, *B = NULL, *C = NULL, *bias = NULL;
    ts_gemm_bf16_io io = {op->in[0]->dtype == TS_BF16, op->in[1]->dtype == TS_BF16, op->out[0]->dtype == TS_BF16};
    int64_t arows = g->trans_a ? g->K : g->M, acols = g->trans_a ? g->M : g->K;
    int64_t brows = g->trans_b ? g->N : g->K, bcols = g->trans_b ? g->K : g->N;
    int64_t bbatch = g->stride_b ? g->batch : 1;
    ts_status st = map_region(d, op->in[0], extent(arows, acols, g->lda, g->batch, g->stride_a),
                              CL_MAP_READ, &maps[0], &A);
    if (!st)
        st = map_region(d, op->in[1], extent(brows, bcols, g->ldb, bbatch, g->stride_b),
                        CL_MAP_READ, &maps[1], &B);
    if (!st)
        st = map_region(d, op->out[0], extent(g->M, g->N, g->ldc, g->batch, g->stride_c),
                        CL_MAP_READ | CL_MAP_WRITE, &maps[2], &C);
    if (!st && op->in[2]) st = map_region(d, op->in[2], (size_t)g->N, CL_MAP_READ, &maps[3], &bias);
    /* the maps were enqueued without waiting: one wait for all of them
     * (a blocking map each cost PoCL a round trip to its worker threads) */
    if (!st) {
        cl_int err = clFinish(d->queue);
        if (err != CL_SUCCESS) st = ts_cl_fail(err, "clFinish (host GEMM's maps)", d);
    }
    int keep = !st && g->dtype != TS_F32 && d->keep_lowp &&
               remember_base(d, maps[0].mem, (char *)A - op->in[0]->offset) &&
               remember_base(d, maps[1].mem, (char *)B - op->in[1]->offset);
    if (!st && (io.a || io.b || io.c)) { /* bf16 activations: the CPU backend's route for them */
        if (!ts_cpu_gemm_mixed(g->dtype, g->trans_a, g->trans_b, g->batch, g->M, g->N, g->K, g->alpha, A, g->stride_a,
                               g->lda, B, g->stride_b, g->ldb, g->beta, C, g->stride_c, g->ldc, bias, keep, &io))
            st = ts_error(TS_ERR_OOM, "%s: no host memory for fp32 copies of a product's bf16 operands", d->info_id);
    } else if (!st && g->dtype != TS_F32) { /* the CPU backend's route, copies kept where writes are seen */
        ts_cpu_gemm_lowp(g->dtype, g->trans_a, g->trans_b, g->batch, g->M, g->N, g->K, g->alpha, A, g->stride_a,
                         g->lda, B, g->stride_b, g->ldb, g->beta, C, g->stride_c, g->ldc, bias, keep);
    }
    else if (!st)
        ts_blas_sgemm_bias(g->trans_a, g->trans_b, g->batch, g->M, g->N, g->K, g->alpha, A, g->stride_a, g->lda, B,
                           g->stride_b, g->ldb, g->beta, C, g->stride_c, g->ldc, bias);
    return ts_cl_unmap_all(d, maps, 4, st);
}

/* ---- copies of operands: 16-bit ones for tessera's kernel, fp32 ones for CLBlast ---- */

/* A copy kernel of gemm.cl over n elements: at most 2^20 items, each
 * striding over the rest. */
static ts_status launch_copy(ts_cl_device *d, const char *kernel, size_t n, const ts_cl_args *a)
{
    size_t local = d->elem_wg, global = n < ((size_t)1 << 20) ? n : (size_t)1 << 20;
    return ts_cl_launch(d, "gemm.cl", kernel, 1, &global, &local, a);
}

/* d->lowp[i] holding at least `bytes` */
static ts_status lowp_buffer(ts_cl_device *d, int i, size_t bytes)
{
    if (bytes <= d->lowp_size[i]) return TS_OK;
    ts_cl_release_mem(d, d->lowp[i]);
    d->lowp_size[i] = 0;
    cl_int err;
    d->lowp[i] = clCreateBuffer(d->context, CL_MEM_READ_WRITE, bytes, NULL, &err);
    if (err != CL_SUCCESS) {
        d->lowp[i] = NULL;
        return ts_cl_fail(err, "clCreateBuffer (copies of GEMM operands)", d);
    }
    d->lowp_size[i] = bytes;
    return TS_OK;
}

/* d->lowp[i] = the first n elements of t (fp32, bf16 or f16) rounded to `store`
 * (wide: and widened back to fp32, for CLBlast; store 0 only widens). */
static ts_status to_lowp(ts_cl_device *d, const ts_tensor *t, size_t n, int i, cl_int store, int wide)
{
    ts_status st = lowp_buffer(d, i, (n ? n : 1) * (wide ? sizeof(cl_float) : sizeof(cl_ushort)));
    if (st) return st;
    ts_cl_args a;
    memset(&a, 0, sizeof a);
    ts_cl_arg_tensor(&a, t);
    ts_cl_arg_int(&a, ts_cl_store_of(t->dtype));
    ts_cl_arg_long(&a, (int64_t)n);
    ts_cl_arg_mem(&a, d->lowp[i]);
    ts_cl_arg_int(&a, store);
    return launch_copy(d, wide ? "to_lowp_f32" : "to_lowp", n, &a);
}

/* Elements of A and B a product reads: the sizes of their copies, which
 * keep the operands' layout (offsets from 0, the same strides). */
static void lowp_extents(const ts_op *op, size_t *na, size_t *nb)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    *na = extent(g->trans_a ? g->K : g->M, g->trans_a ? g->M : g->K, g->lda, g->batch, g->stride_a);
    *nb = extent(g->trans_b ? g->N : g->K, g->trans_b ? g->K : g->N, g->ldb, g->stride_b ? g->batch : 1, g->stride_b);
}

static size_t c_extent(const ts_op *op)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    return extent(g->M, g->N, g->ldc, g->batch, g->stride_c);
}

/* Operands for tessera's kernel. A bf16/fp16 product reads 16-bit values:
 * a tensor of the product's type as it is, any other rounded into
 * d->lowp[i]. An fp32 product reads its tensors as stored (bf16 widens
 * exactly). */
static ts_status kernel_operands(ts_cl_device *d, const ts_op *op, gemm_operands *o)
{
    size_t n[2];
    lowp_extents(op, &n[0], &n[1]);
    for (int i = 0; i < 2; i++) {
        ts_dtype have = op->in[i]->dtype, want = op->p.gemm.dtype;
        o->copied[i] = want != TS_F32 && have != want;
        o->store[i] = ts_cl_store_of(want != TS_F32 ? want : have);
        ts_status st = o->copied[i] ? to_lowp(d, op->in[i], n[i], i, o->store[i], 0) : TS_OK;
        if (st) return st;
    }
    return TS_OK;
}

/* A product in tessera's kernel, on any operands (fp32, bf16 or f16 tensors,
 * any product dtype). */
static ts_status gemm_tessera(ts_cl_device *d, const ts_op *op, float beta, const ts_tensor *bias)
{
    gemm_operands o;
    ts_status st = kernel_operands(d, op, &o);
    return st ? st : gemm_kernel(d, op, beta, bias, &o);
}

const char *ts_cl_matmul_route(ts_cl_device *d, ts_dtype dtype)
{
    if (dtype != TS_BF16 && dtype != TS_F16) return NULL;
    char *r = d->lowp_route[dtype == TS_F16];
    if (d->gemm_route == TS_GEMM_HOST_BLAS)
        snprintf(r, sizeof d->lowp_route[0], "host: %s, on mapped buffers", ts_cpu_lowp_route(dtype));
    else if (d->gemm_route == TS_GEMM_CLBLAST)
        snprintf(r, sizeof d->lowp_route[0], "CLBlast SGEMM on operands rounded to %s (fp32 sums; %s activations "
                 "widened for it here, no copies by the core); tiny products in tessera's kernel",
                 dtype == TS_F16 ? "fp16" : "bf16", dtype == TS_F16 ? "fp16" : "bf16");
    else
        snprintf(r, sizeof d->lowp_route[0], "tessera kernel (16-bit operands, fp32 sums; %s activations read and "
                 "written as they are)", dtype == TS_F16 ? "fp16" : "bf16");
    return r;
}

/* ---- CLBlast ---- */

#ifdef TS_HAVE_CLBLAST
/* Where CLBlast writes C: the op's fp32 result, or the fp32 working copy
 * of rows of its bf16 result in d->lowp[2], from offset 0; a_skip
 * elements of A are passed over (the rows before the block's). */
typedef struct {
    cl_mem mem;
    size_t offset; /* in floats */
    size_t a_skip;
} clblast_c;



static ts_status clblast_bias(ts_cl_device *d, const ts_op *op, const clblast_c *c)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    ts_cl_args a;
    memset(&a, 0, sizeof a);
    ts_cl_arg_mem(&a, c->mem);
    ts_cl_arg_long(&a, (int64_t)c->offset);
    ts_cl_arg_long(&a, g->ldc);
    ts_cl_arg_long(&a, g->M);
    ts_cl_arg_long(&a, g->N);
    ts_cl_arg_tensor(&a, op->in[2]);
    ts_cl_arg_float(&a, g->beta);
    size_t global[2] = {(size_t)g->N, (size_t)g->M};
    return ts_cl_launch(d, "elementwise.cl", "bias_rows", 2, global, NULL, &a);
}

/* CLBlast passes offsets and indexes elements with 32-bit ints: an operand
 * reaching past element 2^31 - 1 of its buffer would be read elsewhere. */
static int clblast_reaches(const ts_tensor *t, int64_t rows, int64_t ld, int64_t batch, int64_t stride)
{
    int64_t end = t->offset / 4 + (batch - 1) * stride + rows * ld;
    return end <= INT32_MAX;
}

/* What CLBlast reads: the op's fp32 tensors, and copies (from offset 0)
 * of the others and of every operand of a bf16/fp16 product. */
static void clblast_operands(const ts_op *op, gemm_operands *o)
{
    for (int i = 0; i < 2; i++) {
        ts_dtype have = op->in[i]->dtype, want = op->p.gemm.dtype;
        o->copied[i] = want != TS_F32 || have != TS_F32;
        o->store[i] = have == want ? 0 : ts_cl_store_of(want); /* rounding on the way, or none */
    }
}

static int clblast_addressable(const ts_op *op, const gemm_operands *o)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    size_t n[2];
    lowp_extents(op, &n[0], &n[1]);
    return (o->copied[0] ? n[0] <= INT32_MAX : clblast_reaches(op->in[0], g->trans_a ? g->K : g->M, g->lda,
                                                                 g->batch, g->stride_a)) &&
           (o->copied[1] ? n[1] <= INT32_MAX : clblast_reaches(op->in[1], g->trans_b ? g->N : g->K, g->ldb,
                                                                 g->batch, g->stride_b)) &&
           (op->out[0]->dtype != TS_F32 ? g->batch == 1 || c_extent(op) <= INT32_MAX /* blocks of rows */
                                        : clblast_reaches(op->out[0], g->M, g->ldc, g->batch, g->stride_c));
}

static ts_status clblast_too_far(ts_cl_device *d, const ts_op *op)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    return ts_error(TS_ERR_UNSUPPORTED,
                    "CLBlast GEMM %lldx%lldx%lld (batch %lld) on %s: an operand reaches past element 2^31 - 1 "
                    "of its buffer, which CLBlast's 32-bit offsets cannot address",
                    (long long)g->M, (long long)g->N, (long long)g->K, (long long)g->batch, d->info_id);
}

/* CLBlast's SGEMM on the op's operands or their fp32 copies in d->lowp
 * (which start at offset 0 with the same strides), into c. */
static CLBlastStatusCode clblast_run(ts_cl_device *d, const ts_op *op, float beta, const gemm_operands *o,
                                     const clblast_c *c)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    CLBlastTranspose ta = g->trans_a ? CLBlastTransposeYes : CLBlastTransposeNo;
    CLBlastTranspose tb = g->trans_b ? CLBlastTransposeYes : CLBlastTransposeNo;
    size_t ao = (o->copied[0] ? 0 : op->in[0]->offset / 4) + c->a_skip, bo = o->copied[1] ? 0 : op->in[1]->offset / 4;
    size_t co = c->offset;
    cl_mem A = o->copied[0] ? d->lowp[0] : ts_cl_mem(op->in[0]), B = o->copied[1] ? d->lowp[1] : ts_cl_mem(op->in[1]);
    cl_mem C = c->mem;
    if (g->batch > 1)
        return CLBlastSgemmStridedBatched(CLBlastLayoutRowMajor, ta, tb, (size_t)g->M,
                                          (size_t)g->N, (size_t)g->K, g->alpha, A, ao,
                                          (size_t)g->lda, (size_t)g->stride_a, B, bo,
                                          (size_t)g->ldb, (size_t)g->stride_b, beta, C, co,
                                          (size_t)g->ldc, (size_t)g->stride_c, (size_t)g->batch,
                                          &d->queue, NULL);
    size_t need = 0;
    CLBlastStatusCode s = CLBlastSGemmTempBufferSize(
        CLBlastLayoutRowMajor, ta, tb, (size_t)g->M, (size_t)g->N, (size_t)g->K, ao,
        (size_t)g->lda, bo, (size_t)g->ldb, co, (size_t)g->ldc, &d->queue, &need);
    if (s != CLBlastSuccess) return s;
    if (need > d->clblast_temp_size) {
        ts_cl_release_mem(d, d->clblast_temp);
        d->clblast_temp = NULL;
        d->clblast_temp_size = 0;
        cl_int err;
        d->clblast_temp = clCreateBuffer(d->context, CL_MEM_READ_WRITE, need, NULL, &err);
        if (err != CL_SUCCESS) return (CLBlastStatusCode)err;
        d->clblast_temp_size = need;
    }
    return CLBlastSgemmWithTempBuffer(CLBlastLayoutRowMajor, ta, tb, (size_t)g->M, (size_t)g->N,
                                      (size_t)g->K, g->alpha, A, ao, (size_t)g->lda, B, bo,
                                      (size_t)g->ldb, beta, C, co, (size_t)g->ldc, &d->queue, NULL,
                                      d->clblast_temp);
}

/* n elements of the op's bf16 result from `first` on, from its fp32
 * working copy in d->lowp[2]. */
static ts_status clblast_result(ts_cl_device *d, const ts_op *op, size_t first, size_t n)
{
    ts_tensor at = *op->out[0];
    at.offset += first * ts_dtype_size(at.dtype);
    ts_cl_args a;
    memset(&a, 0, sizeof a);
    ts_cl_arg_mem(&a, d->lowp[2]);
    ts_cl_arg_long(&a, (int64_t)n);
    ts_cl_arg_tensor(&a, &at);
    ts_cl_arg_int(&a, ts_cl_store_of(at.dtype));
    return launch_copy(d, "from_f32", n, &a);
}

/* A bf16 result (beta 0, rows dense: ts_cl_gemm_takes) in blocks of rows,
 * each made by CLBlast in the fp32 working copy, the bias added there, and
 * rounded into C; a batched product in one block. */
static CLBlastStatusCode clblast_bf16_result(ts_cl_device *d, const ts_op *op, const gemm_operands *o,
                                             ts_status *st)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    int64_t rows = g->M;
    if (g->batch == 1) {
        int64_t fit = (int64_t)(d->work_bytes / sizeof(cl_float)) / g->N;
        rows = fit < 1 ? 1 : fit < g->M ? fit : g->M;
    }
    if ((*st = lowp_buffer(d, 2, (g->batch == 1 ? (size_t)(rows * g->N) : c_extent(op)) * sizeof(cl_float))))
        return CLBlastSuccess;
    for (int64_t m0 = 0; m0 < g->M; m0 += rows) {
        ts_op part = *op;
        part.p.gemm.M = g->M - m0 < rows ? g->M - m0 : rows;
        clblast_c c = {d->lowp[2], 0, (size_t)(m0 * (g->trans_a ? 1 : g->lda))};
        float beta = 0.0f;
        if (op->in[2]) { /* c = bias, then beta = 1 */
            if ((*st = clblast_bias(d, &part, &c))) return CLBlastSuccess;
            beta = 1.0f;
        }
        CLBlastStatusCode s = clblast_run(d, &part, beta, o, &c);
        if (s != CLBlastSuccess) return s;
        size_t n = g->batch == 1 ? (size_t)(part.p.gemm.M * g->N) : c_extent(op);
        if ((*st = clblast_result(d, op, (size_t)(m0 * g->ldc), n))) return CLBlastSuccess;
    }
    return CLBlastSuccess;
}

/* A product through CLBlast's SGEMM. A bf16/fp16 one multiplies its
 * operands rounded to 16 bits and widened back to fp32: products of 16-bit
 * values are exact in fp32 and the sums are fp32, the op's contract, at
 * fp32 GEMM speed. 16-bit tensors are widened into fp32 copies, a 16-bit
 * result computed in an fp32 working copy and rounded into it. Past CLBlast's 32-bit
 * offsets, or when it fails, the product goes to tessera's kernel (an
 * error when CLBlast was asked for). */
static ts_status gemm_clblast(ts_cl_device *d, const ts_op *op)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    gemm_operands o;
    clblast_operands(op, &o);
    float beta = g->beta;
    ts_status st;
    if (!clblast_addressable(op, &o)) {
        if (d->gemm_forced) return clblast_too_far(d, op);
        ts_log(TS_LOG_DEBUG, "GEMM on %s: past CLBlast's 32-bit offsets; tessera's kernel", d->info_id);
        return gemm_tessera(d, op, g->beta, op->in[2]);
    }
    size_t n[2];
    lowp_extents(op, &n[0], &n[1]);
    for (int i = 0; i < 2; i++)
        if (o.copied[i] && (st = to_lowp(d, op->in[i], n[i], i, o.store[i], 1))) return st;
    int work = op->out[0]->dtype != TS_F32;
    CLBlastStatusCode s;
    if (work) {
        st = TS_OK;
        s = clblast_bf16_result(d, op, &o, &st);
        if (st) return st;
    } else {
        clblast_c c = {ts_cl_mem(op->out[0]), op->out[0]->offset / 4, 0};
        if (op->in[2]) { /* CLBlast has no bias: c = beta*c + bias, then beta = 1 */
            if ((st = clblast_bias(d, op, &c))) return st;
            beta = 1.0f;
        }
        s = clblast_run(d, op, beta, &o, &c);
    }
    if (s == CLBlastSuccess) {
        ts_log(TS_LOG_DEBUG, "GEMM %lldx%lldx%lld (batch %lld) on %s via CLBlast", (long long)g->M,
               (long long)g->N, (long long)g->K, (long long)g->batch, d->info_id);
        return TS_OK;
    }
    if (d->gemm_forced) /* asked for by name: an error, not a quiet fallback */
        return ts_error(TS_ERR_BACKEND, "CLBlast GEMM %lldx%lldx%lld (batch %lld) failed on %s: status %d",
                        (long long)g->M, (long long)g->N, (long long)g->K, (long long)g->batch,
                        d->info_id, (int)s);
    if (!d->clblast_warned) {
        ts_log(TS_LOG_WARN, "CLBlast GEMM failed on %s (status %d); using tessera's kernel",
               d->info_id, (int)s);
        d->clblast_warned = 1;
    }
    /* with a bias, an fp32 C holds beta*C + bias already (beta is 1 now):
     * no bias again; a bf16 C is made again whole (its beta is 0) */
    if (work) return gemm_tessera(d, op, g->beta, op->in[2]);
    return gemm_tessera(d, op, beta, NULL);
}
#endif

bool ts_cl_gemm_takes(const ts_cl_device *d, const ts_op *op)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    const ts_tensor *t[3] = {op->in[0], op->in[1], op->out[0]};
    int lowp = 0;
    if (op->in[2] && g->batch > 1) return false; /* CLBlast's bias (bias_rows) is one matrix's */
    for (int i = 0; i < 3; i++) {
        if (t[i]->dtype != TS_F32 && t[i]->dtype != TS_BF16 && t[i]->dtype != TS_F16) return false;
        /* the host route's products (the CPU backend's) take bf16 tensors, not f16 */
        if (t[i]->dtype == TS_F16 && d->gemm_route == TS_GEMM_HOST_BLAS) return false;
        lowp |= t[i]->dtype != TS_F32;
    }
    if (!lowp) return true;
    if (g->reference) return false; /* the reference library multiplies fp32 */
    if (d->gemm_route == TS_GEMM_HOST_BLAS || t[2]->dtype == TS_F32) return true;
    /* a 16-bit result elsewhere: written whole, never read (CLBlast's goes
     * through an fp32 working copy of C's extent), as a linear layer's is */
    return g->beta == 0.0f && g->ldc == g->N && (g->batch == 1 || g->stride_c == g->M * g->N);
}

void ts_cl_gemm_release(ts_cl_device *d)
{
    if (d->clblast_temp) clReleaseMemObject(d->clblast_temp);
    d->clblast_temp = NULL;
    d->clblast_temp_size = 0;
    for (int i = 0; i < 3; i++) {
        if (d->lowp[i]) clReleaseMemObject(d->lowp[i]);
        d->lowp[i] = NULL;
        d->lowp_size[i] = 0;
    }
}

ts_status ts_cl_gemm(ts_cl_device *d, const ts_op *op)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    if (g->reference) { /* the reference library, never a fallback that would flatter it */
#ifdef TS_HAVE_CLBLAST
        gemm_operands o = {{0, 0}, {0, 0}}; /* fp32 tensors only (ts_cl_supports_op) */
        clblast_c c = {ts_cl_mem(op->out[0]), op->out[0]->offset / 4, 0};
        if (!clblast_addressable(op, &o)) return clblast_too_far(d, op);
        CLBlastStatusCode s = clblast_run(d, op, g->beta, &o, &c);
        if (s != CLBlastSuccess)
            return ts_error(TS_ERR_BACKEND, "CLBlast GEMM %lldx%lldx%lld (batch %lld) failed on %s: status %d",
                            (long long)g->M, (long long)g->N, (long long)g->K, (long long)g->batch,
                            d->info_id, (int)s);
        return TS_OK;
#else
        return ts_error(TS_ERR_UNSUPPORTED, "%s: tessera was built without CLBlast", d->info_id);
#endif
    }
    switch (d->gemm_route) {
    case TS_GEMM_HOST_BLAS: return gemm_host(d, op);
#ifdef TS_HAVE_CLBLAST
    case TS_GEMM_CLBLAST:
        /* Tiny products cost CLBlast more in launches than they compute. */
        if (d->gemm_forced || g->M * g->N * g->K >= 32 * 32 * 32) return gemm_clblast(d, op);
        break;
#endif
    default: break;
    }
    return gemm_tessera(d, op, g->beta, op->in[2]);
}
