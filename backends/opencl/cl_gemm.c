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
 *     bf16/fp16 products: the operands are rounded into 16-bit buffers and
 *     tessera's kernel reads them, summing in fp32. (CLBlast's HGEMM sums in
 *     half precision, which a bf16/fp16 product here must not, and CLBlast
 *     has no bf16.)
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

/* Operand i as gemm_tiled reads it: the op's tensor (store 0, fp32), or
 * its 16-bit copy in d->lowp[i] from offset 0 (gemm.cl's STORE_BF16/F16). */
static void arg_operand(ts_cl_args *a, ts_cl_device *d, const ts_op *op, int i, cl_int store)
{
    if (store) {
        ts_cl_arg_mem(a, d->lowp[i]);
        ts_cl_arg_long(a, 0);
    } else {
        ts_cl_arg_tensor(a, op->in[i]);
    }
}

static ts_status gemm_kernel(ts_cl_device *d, const ts_op *op, float beta, const ts_tensor *bias, cl_int store)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    ts_cl_args a;
    memset(&a, 0, sizeof a);
    arg_operand(&a, d, op, 0, store);
    ts_cl_arg_long(&a, g->lda);
    ts_cl_arg_long(&a, g->stride_a);
    arg_operand(&a, d, op, 1, store);
    ts_cl_arg_long(&a, g->ldb);
    ts_cl_arg_long(&a, g->stride_b);
    ts_cl_arg_tensor(&a, op->out[0]);
    ts_cl_arg_long(&a, g->ldc);
    ts_cl_arg_long(&a, g->stride_c);
    ts_cl_arg_long(&a, g->M);
    ts_cl_arg_long(&a, g->N);
    ts_cl_arg_long(&a, g->K);
    cl_int ta = g->trans_a, tb = g->trans_b, hb = bias != NULL;
    a.size[a.n] = sizeof(cl_int), a.value[a.n++] = &ta;
    a.size[a.n] = sizeof(cl_int), a.value[a.n++] = &tb;
    ts_cl_arg_float(&a, g->alpha);
    ts_cl_arg_float(&a, beta);
    ts_cl_arg_tensor(&a, bias);
    a.size[a.n] = sizeof(cl_int), a.value[a.n++] = &hb;
    a.size[a.n] = sizeof(cl_int), a.value[a.n++] = &store;
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

/* ---- bf16/fp16 products in tessera's kernel ---- */

/* d->lowp[i] = the first n elements of t rounded to 16 bits, kept in 16
 * bits for tessera's kernel or widened back to fp32 (wide) for CLBlast. */
static ts_status to_lowp(ts_cl_device *d, const ts_tensor *t, size_t n, int i, cl_int store, int wide)
{
    size_t bytes = (n ? n : 1) * (wide ? sizeof(cl_float) : sizeof(cl_ushort));
    if (bytes > d->lowp_size[i]) {
        ts_cl_release_mem(d, d->lowp[i]);
        d->lowp_size[i] = 0;
        cl_int err;
        d->lowp[i] = clCreateBuffer(d->context, CL_MEM_READ_WRITE, bytes, NULL, &err);
        if (err != CL_SUCCESS) {
            d->lowp[i] = NULL;
            return ts_cl_fail(err, "clCreateBuffer (16-bit copies of GEMM operands)", d);
        }
        d->lowp_size[i] = bytes;
    }
    ts_cl_args a;
    memset(&a, 0, sizeof a);
    ts_cl_arg_tensor(&a, t);
    ts_cl_arg_long(&a, (int64_t)n);
    ts_cl_arg_mem(&a, d->lowp[i]);
    a.size[a.n] = sizeof(cl_int), a.value[a.n++] = &store;
    size_t local = d->elem_wg, global = n < ((size_t)1 << 20) ? n : (size_t)1 << 20;
    return ts_cl_launch(d, "gemm.cl", wide ? "to_lowp_f32" : "to_lowp", 1, &global, &local, &a);
}

/* Elements of A and B a product reads: the sizes of their rounded copies,
 * which keep the operands' layout (offsets from 0, the same strides). */
static void lowp_extents(const ts_op *op, size_t *na, size_t *nb)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    *na = extent(g->trans_a ? g->K : g->M, g->trans_a ? g->M : g->K, g->lda, g->batch, g->stride_a);
    *nb = extent(g->trans_b ? g->N : g->K, g->trans_b ? g->K : g->N, g->ldb, g->stride_b ? g->batch : 1, g->stride_b);
}

static cl_int lowp_store(const ts_op *op) { return op->p.gemm.dtype == TS_BF16 ? 1 : 2; }

/* A bf16/fp16 product in tessera's kernel, which reads 16-bit copies. */
static ts_status gemm_lowp_kernel(ts_cl_device *d, const ts_op *op, float beta, const ts_tensor *bias)
{
    size_t na, nb;
    lowp_extents(op, &na, &nb);
    cl_int store = lowp_store(op);
    ts_status st = to_lowp(d, op->in[0], na, 0, store, 0);
    if (!st) st = to_lowp(d, op->in[1], nb, 1, store, 0);
    return st ? st : gemm_kernel(d, op, beta, bias, store);
}

const char *ts_cl_matmul_route(ts_cl_device *d, ts_dtype dtype)
{
    if (dtype != TS_BF16 && dtype != TS_F16) return NULL;
    char *r = d->lowp_route[dtype == TS_F16];
    if (d->gemm_route == TS_GEMM_HOST_BLAS)
        snprintf(r, sizeof d->lowp_route[0], "host: %s, on mapped buffers", ts_cpu_lowp_route(dtype));
    else if (d->gemm_route == TS_GEMM_CLBLAST)
        snprintf(r, sizeof d->lowp_route[0], "CLBlast SGEMM on operands rounded to %s (fp32 sums); tiny products "
                 "in tessera's kernel", dtype == TS_F16 ? "fp16" : "bf16");
    else
        snprintf(r, sizeof d->lowp_route[0], "tessera kernel (16-bit operands, fp32 sums)");
    return r;
}

/* ---- CLBlast ---- */

#ifdef TS_HAVE_CLBLAST
static ts_status clblast_bias(ts_cl_device *d, const ts_op *op)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    ts_cl_args a;
    memset(&a, 0, sizeof a);
    ts_cl_arg_tensor(&a, op->out[0]);
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

/* lowp: A and B are the rounded copies in d->lowp, from offset 0 */
static int clblast_addressable(const ts_op *op, int lowp)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    size_t na, nb;
    if (lowp) lowp_extents(op, &na, &nb);
    return (lowp ? na <= INT32_MAX && nb <= INT32_MAX
                 : clblast_reaches(op->in[0], g->trans_a ? g->K : g->M, g->lda, g->batch, g->stride_a) &&
                       clblast_reaches(op->in[1], g->trans_b ? g->N : g->K, g->ldb, g->batch, g->stride_b)) &&
           clblast_reaches(op->out[0], g->M, g->ldc, g->batch, g->stride_c);
}

static ts_status clblast_too_far(ts_cl_device *d, const ts_op *op)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    return ts_error(TS_ERR_UNSUPPORTED,
                    "CLBlast GEMM %lldx%lldx%lld (batch %lld) on %s: an operand reaches past element 2^31 - 1 "
                    "of its buffer, which CLBlast's 32-bit offsets cannot address",
                    (long long)g->M, (long long)g->N, (long long)g->K, (long long)g->batch, d->info_id);
}

/* CLBlast's SGEMM on the op's operands, or (lowp) on their rounded fp32
 * copies in d->lowp, which start at offset 0 with the same strides. */
static CLBlastStatusCode clblast_run(ts_cl_device *d, const ts_op *op, float beta, int lowp)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    CLBlastTranspose ta = g->trans_a ? CLBlastTransposeYes : CLBlastTransposeNo;
    CLBlastTranspose tb = g->trans_b ? CLBlastTransposeYes : CLBlastTransposeNo;
    size_t ao = lowp ? 0 : op->in[0]->offset / 4, bo = lowp ? 0 : op->in[1]->offset / 4;
    size_t co = op->out[0]->offset / 4;
    cl_mem A = lowp ? d->lowp[0] : ts_cl_mem(op->in[0]), B = lowp ? d->lowp[1] : ts_cl_mem(op->in[1]);
    cl_mem C = ts_cl_mem(op->out[0]);
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

/* A product through CLBlast's SGEMM. A bf16/fp16 one (lowp) multiplies its
 * operands rounded to 16 bits and widened back to fp32: products of 16-bit
 * values are exact in fp32 and the sums are fp32, the op's contract, at
 * fp32 GEMM speed. Past CLBlast's 32-bit offsets, or when it fails, the
 * product goes to tessera's kernel (an error when CLBlast was asked for). */
static ts_status gemm_clblast(ts_cl_device *d, const ts_op *op)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    int lowp = g->dtype != TS_F32;
    float beta = g->beta;
    ts_status st;
    if (!clblast_addressable(op, lowp)) {
        if (d->gemm_forced) return clblast_too_far(d, op);
        ts_log(TS_LOG_DEBUG, "GEMM on %s: past CLBlast's 32-bit offsets; tessera's kernel", d->info_id);
        return lowp ? gemm_lowp_kernel(d, op, g->beta, op->in[2]) : gemm_kernel(d, op, g->beta, op->in[2], 0);
    }
    if (lowp) {
        size_t na, nb;
        lowp_extents(op, &na, &nb);
        if ((st = to_lowp(d, op->in[0], na, 0, lowp_store(op), 1)) ||
            (st = to_lowp(d, op->in[1], nb, 1, lowp_store(op), 1)))
            return st;
    }
    if (op->in[2]) { /* CLBlast has no bias: c = beta*c + bias, then beta = 1 */
        if ((st = clblast_bias(d, op))) return st;
        beta = 1.0f;
    }
    CLBlastStatusCode s = clblast_run(d, op, beta, lowp);
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
    /* with a bias, C holds beta*C + bias already (beta is 1 now): no bias again */
    return lowp ? gemm_lowp_kernel(d, op, beta, NULL) : gemm_kernel(d, op, beta, NULL, 0);
}
#endif

void ts_cl_gemm_release(ts_cl_device *d)
{
    if (d->clblast_temp) clReleaseMemObject(d->clblast_temp);
    d->clblast_temp = NULL;
    d->clblast_temp_size = 0;
    for (int i = 0; i < 2; i++) {
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
        if (!clblast_addressable(op, 0)) return clblast_too_far(d, op);
        CLBlastStatusCode s = clblast_run(d, op, g->beta, 0);
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
    if (g->dtype != TS_F32) return gemm_lowp_kernel(d, op, g->beta, op->in[2]);
    return gemm_kernel(d, op, g->beta, op->in[2], 0);
}
