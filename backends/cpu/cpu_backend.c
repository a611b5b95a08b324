/* The native CPU backend: host memory, OpenMP loops, host BLAS. Every op
 * runs synchronously on the calling thread's OpenMP team. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __linux__
#include <link.h>
#include <sys/auxv.h>
#endif

#include "registry.h"
#include "../blas/blas.h"
#include "cpu_attention.h"
#include "cpu_lowp_gemm.h"
#include "cpu_ops.h"
#include "backend.h"

enum { CPU_ALIGN = 64 };

static ts_status cpu_alloc(ts_device *dev, size_t size, void **handle)
{
    size_t rounded = (size + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
    void *p = aligned_alloc(CPU_ALIGN, rounded ? rounded : CPU_ALIGN);
    if (!p)
        return ts_error(TS_ERR_OOM, "host allocation of %zu bytes failed (%s has %llu bytes)",
                        size, dev->info.id, (unsigned long long)dev->info.global_mem_bytes);
    *handle = p;
    return TS_OK;
}

static void cpu_free(ts_device *dev, void *handle)
{
    (void)dev;
    free(handle);
}

static ts_status cpu_write(ts_device *dev, void *handle, size_t offset, const void *src, size_t size)
{
    (void)dev;
    ts_cpu_lowp_written((char *)handle + offset, size);
    memcpy((char *)handle + offset, src, size);
    return TS_OK;
}

static ts_status cpu_read(ts_device *dev, void *handle, size_t offset, void *dst, size_t size)
{
    (void)dev;
    memcpy(dst, (char *)handle + offset, size);
    return TS_OK;
}

static ts_status cpu_copy(ts_device *dev, void *dst, size_t dst_offset, void *src,
                          size_t src_offset, size_t size)
{
    ts_cpu_lowp_written((char *)dst + dst_offset, size);
    (void)dev;
    memmove((char *)dst + dst_offset, (char *)src + src_offset, size);
    return TS_OK;
}

static ts_status cpu_synchronize(ts_device *dev)
{
    (void)dev;
    return TS_OK;
}

static float *F(const ts_tensor *t)
{
    return t ? (float *)((char *)t->block->handle + t->offset) : NULL;
}

static const int32_t *I(const ts_tensor *t)
{
    return t ? (const int32_t *)((const char *)t->block->handle + t->offset) : NULL;
}

static void cpu_gemm_f32(const ts_op *op, const float *A, const float *B, float *C)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    const float *bias = F(op->in[2]);
    if (g->dtype != TS_F32)
        ts_cpu_gemm_lowp(g->dtype, g->trans_a, g->trans_b, g->batch, g->M, g->N, g->K, g->alpha, A, g->stride_a,
                         g->lda, B, g->stride_b, g->ldb, g->beta, C, g->stride_c, g->ldc, bias, true);
    else if (g->reference) /* no bias: ts_matmul_reference has none */
        ts_blas_sgemm_library(g->trans_a, g->trans_b, g->batch, g->M, g->N, g->K, g->alpha, A, g->stride_a,
                              g->lda, B, g->stride_b, g->ldb, g->beta, C, g->stride_c, g->ldc);
    else
        ts_blas_sgemm_bias(g->trans_a, g->trans_b, g->batch, g->M, g->N, g->K, g->alpha, A, g->stride_a, g->lda,
                           B, g->stride_b, g->ldb, g->beta, C, g->stride_c, g->ldc, bias);
}

static int act_type(const ts_tensor *t)
{
    return t->dtype == TS_BF16 ? CPU_ACT_BF16 : t->dtype == TS_F16 ? CPU_ACT_F16 : CPU_ACT_F32;
}

/* A product with bf16 operands or result (activations stored in bf16). */
static ts_status cpu_gemm(const ts_op *op)
{
    const __typeof__(op->p.gemm) *g = &op->p.gemm;
    ts_gemm_bf16_io io = {op->in[0]->dtype == TS_BF16, op->in[1]->dtype == TS_BF16, op->out[0]->dtype == TS_BF16};
    void *A = F(op->in[0]), *B = F(op->in[1]), *C = F(op->out[0]);
    if (!io.a && !io.b && !io.c) {
        cpu_gemm_f32(op, A, B, C);
        return TS_OK;
    }
    if (!ts_cpu_gemm_mixed(g->dtype, g->trans_a, g->trans_b, g->batch, g->M, g->N, g->K, g->alpha, A, g->stride_a,
                           g->lda, B, g->stride_b, g->ldb, g->beta, C, g->stride_c, g->ldc, F(op->in[2]), true, &io))
        return ts_error(TS_ERR_OOM, "no host memory for fp32 copies of a %lldx%lldx%lld product's bf16 operands",
                        (long long)g->M, (long long)g->N, (long long)g->K);
    return TS_OK;
}

static ts_status cpu_run_op(ts_device *dev, const ts_op *op)
{
    (void)dev;
    ts_tensor *const *o = op->out;
    const ts_tensor *const *in = op->in;
    /* bf16 copies of what the op writes are stale from now on, but for
     * Adam's parameters: it rewrites their copies itself */
    bool refresh = op->kind == TS_OP_OPTIM_UPDATE &&
                   (op->p.optim.kind == TS_OPTIM_ADAM || op->p.optim.kind == TS_OPTIM_ADAMW);
    for (int i = refresh ? 1 : 0; i < 3; i++)
        if (o[i] && o[i]->block) ts_cpu_lowp_written((char *)ts_block_handle(o[i]) + o[i]->offset, ts_tensor_nbytes(o[i]));
    switch (op->kind) {
    case TS_OP_FILL:
        cpu_fill(F(o[0]), ts_tensor_numel(o[0]), op->p.fill.value);
        break;
    case TS_OP_ADD:
        cpu_add(F(o[0]), F(in[0]), F(in[1]), ts_tensor_numel(o[0]));
        break;
    case TS_OP_SCALE:
        cpu_scale(F(o[0]), F(in[0]), op->p.scale.alpha, ts_tensor_numel(o[0]));
        break;
    case TS_OP_GELU_FWD:
        cpu_gelu_forward(F(o[0]), o[0]->dtype == TS_BF16, F(in[0]), in[0]->dtype == TS_BF16, ts_tensor_numel(o[0]));
        break;
    case TS_OP_GELU_BWD:
        cpu_gelu_backward(F(o[0]), F(in[0]), in[0]->dtype == TS_BF16, F(in[1]), ts_tensor_numel(o[0]));
        break;
    case TS_OP_CAST:
        cpu_cast(F(o[0]), act_type(o[0]), F(in[0]), act_type(in[0]), ts_tensor_numel(o[0]));
        break;
    case TS_OP_EMBEDDING_FWD:
        cpu_embedding_forward(F(o[0]), I(in[0]), F(in[1]), F(in[2]), op->p.embedding.N,
                              op->p.embedding.T, op->p.embedding.C, op->p.embedding.V,
                              op->p.embedding.vocab_start);
        break;
    case TS_OP_EMBEDDING_BWD:
        cpu_embedding_backward(F(o[0]), F(o[1]), F(in[0]), I(in[1]), op->p.embedding.N,
                               op->p.embedding.T, op->p.embedding.C, op->p.embedding.V,
                               op->p.embedding.vocab_start);
        break;
    case TS_OP_EMBEDDING_BAG_FWD:
        cpu_embedding_bag_forward(F(o[0]), I(in[0]), F(in[1]), F(in[2]), op->p.bag.N, op->p.bag.K, op->p.bag.C,
                                  op->p.bag.G);
        break;
    case TS_OP_EMBEDDING_BAG_BWD:
        cpu_embedding_bag_backward(F(o[0]), F(in[0]), I(in[1]), F(in[2]), op->p.bag.N, op->p.bag.K, op->p.bag.C,
                                   op->p.bag.G);
        break;
    case TS_OP_LAYERNORM_FWD:
        cpu_layernorm_forward(F(o[0]), o[0]->dtype == TS_BF16, F(o[1]), F(o[2]), F(in[0]), F(in[1]), F(in[2]),
                              op->p.layernorm.N, op->p.layernorm.C, op->p.layernorm.eps);
        break;
    case TS_OP_LAYERNORM_BWD:
        cpu_layernorm_backward(F(o[0]), F(o[1]), F(o[2]), F(in[0]), F(in[1]), F(in[2]),
                               F(in[3]), F(in[4]), op->p.layernorm.N, op->p.layernorm.C);
        break;
    case TS_OP_GEMM:
        return cpu_gemm(op);
    case TS_OP_SUM_ROWS:
        cpu_sum_rows(F(o[0]), F(in[0]), op->p.sum_rows.N, op->p.sum_rows.C,
                     op->p.sum_rows.accumulate);
        break;
    case TS_OP_POOL_MAX_FWD:
        cpu_pool_max_forward(F(o[0]), (int32_t *)I(o[1]), F(in[0]), I(in[1]), op->p.pool.B, op->p.pool.T,
                             op->p.pool.C);
        break;
    case TS_OP_POOL_MAX_BWD:
        cpu_pool_max_backward(F(o[0]), F(in[0]), I(in[1]), op->p.pool.B, op->p.pool.T, op->p.pool.C);
        break;
    case TS_OP_SPLIT_HEADS:
    case TS_OP_MERGE_HEADS:
        (op->kind == TS_OP_SPLIT_HEADS ? cpu_split_heads : cpu_merge_heads)(
            F(o[0]), F(in[0]), op->p.heads.B, op->p.heads.T, op->p.heads.K, op->p.heads.NH,
            op->p.heads.HS);
        break;
    case TS_OP_SOFTMAX_CAUSAL_FWD:
        cpu_softmax_causal_forward(F(o[0]), F(in[0]), op->p.softmax.BH, op->p.softmax.T,
                                   op->p.softmax.scale);
        break;
    case TS_OP_SOFTMAX_CAUSAL_BWD:
        cpu_softmax_causal_backward(F(o[0]), F(in[0]), F(in[1]), op->p.softmax.BH,
                                    op->p.softmax.T, op->p.softmax.scale);
        break;
    case TS_OP_SOFTMAX_MASKED_FWD:
        cpu_softmax_masked_forward(F(o[0]), F(in[0]), I(in[1]), op->p.softmax.BH, op->p.softmax.NH,
                                   op->p.softmax.T, op->p.softmax.scale, op->p.softmax.causal);
        break;
    case TS_OP_SOFTMAX_MASKED_BWD:
        cpu_softmax_masked_backward(F(o[0]), F(in[0]), F(in[1]), op->p.softmax.BH, op->p.softmax.T,
                                    op->p.softmax.scale);
        break;
    case TS_OP_CROSS_ENTROPY:
        if (in[0]->dtype == TS_BF16 || (o[2] && o[2]->dtype == TS_BF16)) {
            int64_t V = op->p.cross_entropy.V;
            float *rows = malloc((size_t)(ts_cpu_threads > 0 ? ts_cpu_threads : 1) * (size_t)(V > 0 ? V : 1) * 4);
            if (!rows)
                return ts_error(TS_ERR_OOM, "cross-entropy: no host memory for %d rows of %lld floats", ts_cpu_threads,
                                (long long)V);
            cpu_cross_entropy_bf16(F(o[0]), F(o[1]), F(o[2]), o[2] && o[2]->dtype == TS_BF16, F(in[0]),
                                   in[0]->dtype == TS_BF16, I(in[1]), op->p.cross_entropy.N, V,
                                   op->p.cross_entropy.scale, rows);
            free(rows);
        } else {
            cpu_cross_entropy(F(o[0]), F(o[1]), F(o[2]), F(in[0]), I(in[1]), op->p.cross_entropy.N,
                              op->p.cross_entropy.V, op->p.cross_entropy.scale);
        }
        break;
    case TS_OP_CE_SHARD: {
        const __typeof__(op->p.ce_shard) *c = &op->p.ce_shard;
        const int32_t *tg = c->phase == 0 ? I(in[1]) : c->phase >= 2 ? I(in[3]) : NULL;
        if (c->phase != 2 && in[0]->dtype == TS_BF16) {
            float *rows = malloc((size_t)(ts_cpu_threads > 0 ? ts_cpu_threads : 1) * (size_t)(c->V > 0 ? c->V : 1) * 4);
            if (!rows)
                return ts_error(TS_ERR_OOM, "vocabulary-parallel cross-entropy: no host memory for %d rows of %lld floats",
                                ts_cpu_threads, (long long)c->V);
            cpu_ce_shard_bf16(c->phase, F(o[0]), o[1] ? F(o[1]) : NULL, F(in[0]), F(in[1]), c->phase >= 2 ? F(in[2]) : NULL,
                              tg, c->N, c->V, c->vocab_start, c->vocab_size, c->scale, rows);
            free(rows);
            break;
        }
        cpu_ce_shard(c->phase, F(o[0]), F(o[1]), F(in[0]), F(in[1]), c->phase >= 2 ? F(in[2]) : NULL, tg,
                     c->N, c->V, c->vocab_start, c->vocab_size, c->scale);
        break;
    }
    case TS_OP_SUM:
        *F(o[0]) = cpu_sum(F(in[0]), op->p.reduce.n);
        break;
    case TS_OP_SQNORM:
        *F(o[0]) = cpu_sqnorm(F(in[0]), op->p.reduce.n);
        break;
    case TS_OP_OPTIM_UPDATE:
    {
        ts_lowp_span spans[TS_LOWP_MAX_SPANS];
        int ns = refresh ? ts_cpu_lowp_refresh_begin(F(o[0]), op->p.optim.n, spans, TS_LOWP_MAX_SPANS) : 0;
        cpu_optim_update(F(o[0]), F(o[1]), F(o[2]), F(in[0]), op->p.optim.n, op->p.optim.kind,
                         op->p.optim.lr, op->p.optim.beta1, op->p.optim.beta2, op->p.optim.eps,
                         op->p.optim.weight_decay, op->p.optim.grad_scale,
                         op->p.optim.bias_correction1, op->p.optim.bias_correction2, spans, ns);
        if (refresh) ts_cpu_lowp_refresh_end();
        break;
    }
    case TS_OP_ATTENTION_FWD:
    case TS_OP_ATTENTION_BWD: {
        const __typeof__(op->p.attention) *a = &op->p.attention;
        int rc = op->kind == TS_OP_ATTENTION_FWD
                     ? cpu_attention_forward(F(o[0]), F(o[1]), F(in[0]), I(in[1]), a->B, a->T, a->C, a->NH, a->causal)
                     : cpu_attention_backward(F(o[0]), F(in[0]), F(in[1]), F(in[2]), F(in[3]), I(in[4]), a->B, a->T,
                                              a->C, a->NH, a->causal);
        if (rc) return ts_error(TS_ERR_OOM, "no host memory for the attention buffers (%d threads x %lld keys)",
                                ts_cpu_threads, (long long)a->T);
        break;
    }
    case TS_OP_TRIAD:
        cpu_triad(F(o[0]), F(in[0]), F(in[1]), op->p.triad.s, op->p.triad.n);
        break;
    case TS_OP_FMA_LOOP:
        cpu_fma_loop(F(o[0]), op->p.fma_loop.n, op->p.fma_loop.iterations, op->p.fma_loop.a, op->p.fma_loop.b);
        break;
    default:
        return ts_error(TS_ERR_UNSUPPORTED, "CPU backend has no op %s", ts_op_kind_name(op->kind));
    }
    return TS_OK;
}

static ts_device *g_cpu_device;

static void cpu_release(ts_device *dev)
{
    if (dev == g_cpu_device) g_cpu_device = NULL;
}

/* Every op, fused attention included (the core asks before it takes that
 * route). It is the default for causal attention at every T (B=4 NH=12
 * HS=64, forward + backward: T=16 0.12 against 0.20 ms composite, T=32
 * 0.20 against 0.22, T=64 0.57 against 0.62) and for bidirectional from
 * T=128: below, with no masked keys to skip, its backward is slower (T=64
 * 0.40 against 0.33 ms, forward + backward 0.62 against 0.58). */
static bool cpu_supports_op(ts_device *dev, const ts_op *op)
{
    (void)dev;
    bool attention = op->kind == TS_OP_ATTENTION_FWD || op->kind == TS_OP_ATTENTION_BWD;
    /* its plan's products are fp32 BLAS calls; the core's fp32 copies are
     * 0.9% of a bf16 step (d6 B=2 T=1024: 6.5 of 727 ms) */
    if (attention && ts_attention_op_16bit(op)) return false;
    if ((op->kind == TS_OP_SPLIT_HEADS || op->kind == TS_OP_MERGE_HEADS) &&
        (op->in[0]->dtype != TS_F32 || op->out[0]->dtype != TS_F32))
        return false; /* fp32 permutes */
    if (attention && op->p.attention.by_default) return op->p.attention.causal || op->p.attention.T >= 128;
    /* f16 storage only in casts: the other ops read and write fp32 and bf16 */
    for (int i = 0; i < 5 && op->kind != TS_OP_CAST; i++)
        if ((op->in[i] && op->in[i]->dtype == TS_F16) || (i < 3 && op->out[i] && op->out[i]->dtype == TS_F16))
            return false;
    return op->kind >= 0 && op->kind < TS_OP_COUNT;
}

static void cpu_host_access(ts_device *dev, const void *p, size_t bytes, int kept)
{
    (void)dev;
    if (kept) ts_cpu_lowp_host_access(p, bytes);
    else ts_cpu_lowp_written(p, bytes);
}

static const char *cpu_matmul_route(ts_device *dev, ts_dtype dtype)
{
    (void)dev;
    return ts_cpu_lowp_route(dtype);
}

static const ts_backend_iface cpu_iface = {
    .version = TS_BACKEND_INTERFACE_VERSION,
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .write = cpu_write,
    .read = cpu_read,
    .copy = cpu_copy,
    .synchronize = cpu_synchronize,
    .supports_op = cpu_supports_op,
    .run_op = cpu_run_op,
    .release = cpu_release,
    .matmul_route = cpu_matmul_route,
    .host_access = cpu_host_access,
};

/* "model name", "vendor_id" and "cpu MHz" from /proc/cpuinfo. */
static void read_cpuinfo(ts_device_info *info)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    snprintf(info->name, sizeof info->name, "host CPU");
    if (!f) return;
    char line[512];
    int got_name = 0, got_vendor = 0, got_mhz = 0;
    while (fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (!colon) continue;
        char *val = colon + 1;
        while (*val == ' ' || *val == '\t') val++;
        val[strcspn(val, "\n")] = '\0';
        if (!got_name && !strncmp(line, "model name", 10)) {
            snprintf(info->name, sizeof info->name, "%s", val);
            got_name = 1;
        } else if (!got_vendor && !strncmp(line, "vendor_id", 9)) {
            snprintf(info->vendor, sizeof info->vendor, "%s", val);
            got_vendor = 1;
        } else if (!got_mhz && !strncmp(line, "cpu MHz", 7)) {
            info->clock_mhz = (int)atof(val);
            got_mhz = 1;
        }
    }
    fclose(f);
}

static int default_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
#endif
}

static void describe(ts_device_info *info)
{
    const ts_blas_info *b = ts_blas_get_info();
    char core[160] = "";
    if (b->core[0]) {
        if (b->reselected)
            snprintf(core, sizeof core, ", kernels %s (OpenBLAS chose %s)", b->core,
                     b->initial_core);
        else
            snprintf(core, sizeof core, ", kernels %s", b->core);
    }
    snprintf(info->details, sizeof info->details, "threads %d (OpenMP%s); GEMM: %s%s%s; attention: fused (bidirectional: from T=128)",
             ts_cpu_threads,
#ifdef _OPENMP
             "",
#else
             " disabled",
#endif
             b->library, core, b->cpu_avx512 ? "; AVX-512" : "");
}

void ts_cpu_backend_set_threads(int threads)
{
    ts_cpu_threads = threads > 0 ? threads : default_threads();
    ts_blas_set_threads(ts_cpu_threads);
    if (g_cpu_device) describe(&g_cpu_device->info);
}

int ts_cpu_backend_get_threads(void) { return ts_cpu_threads; }

/* libgomp reads OMP_WAIT_POLICY once, when it loads, and by default its
 * idle workers spin for a while after each parallel region. A process
 * whose devices run threads of their own (PoCL's) loses those cores to the
 * spinning; one that runs this backend wants the spin (README: How devices
 * run ops). So the policy is set in the environment with a marker, and the
 * caller re-executes the program; the program, run again, finds the
 * marker and takes both out of its environment (libgomp has read the
 * policy by then), so the processes it starts (PyTorch, for bench train)
 * keep their own defaults. */
#define WAIT_MARKER "TESSERA_SET_OMP_WAIT_POLICY"
static int g_wait_set; /* this run's policy was set so */

int ts_cpu_backend_waits_passively(void) { return g_wait_set; }

#if defined(_OPENMP) && defined(__linux__)
/* dl_iterate_phdr visits the program first: whether it names an interpreter */
static int program_has_interp(struct dl_phdr_info *info, size_t size, void *found)
{
    (void)size;
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_INTERP) *(int *)found = 1;
    return 1; /* the first object only */
}

/* /proc/self/exe is this program unless the kernel ran its interpreter by
 * hand (`ld.so tessera ...`): then the kernel loaded no interpreter
 * (AT_BASE 0) for a program that names one. A static program names none. */
static int started_through_loader(void)
{
    int interp = 0;
    dl_iterate_phdr(program_has_interp, &interp);
    return interp && getauxval(AT_BASE) == 0;
}
#endif

int ts_cpu_backend_wait_passively(int quiet)
{
    if (getenv(WAIT_MARKER)) { /* the run again */
        g_wait_set = 1;
        unsetenv("OMP_WAIT_POLICY");
        unsetenv(WAIT_MARKER);
        return 0;
    }
#if defined(_OPENMP) && defined(__linux__)
    if (!quiet || getenv("OMP_WAIT_POLICY")) return 0; /* the user's choice stands */
    /* run again, the loader would take the command's first argument for
     * the program to load */
    if (started_through_loader()) {
        ts_log(TS_LOG_INFO, "the devices run threads of their own, but this process was started through its "
               "loader by hand (ld.so tessera) and cannot run itself again: set OMP_WAIT_POLICY=passive for "
               "their full speed");
        return 0;
    }
    if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return 0;
    if (setenv(WAIT_MARKER, "1", 1) != 0) {
        unsetenv("OMP_WAIT_POLICY");
        return 0;
    }
    ts_log(TS_LOG_INFO, "the devices run threads of their own: the host's idle OpenMP threads wait passively "
           "(OMP_WAIT_POLICY=passive; set it to keep another policy)");
    return 1;
#else
    (void)quiet; /* no OpenMP runtime to tell, or no /proc/self/exe to run again */
    return 0;
#endif
}

ts_status ts_cpu_backend_register(int threads)
{
    ts_device_info info;
    memset(&info, 0, sizeof info);
    snprintf(info.id, sizeof info.id, "cpu");
    snprintf(info.backend, sizeof info.backend, "cpu");
    read_cpuinfo(&info);
    snprintf(info.driver_version, sizeof info.driver_version, "tessera native");
    snprintf(info.platform, sizeof info.platform, "tessera CPU backend");
    snprintf(info.version, sizeof info.version, "C11");
    info.type = TS_DEVICE_CPU;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    info.global_mem_bytes = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
    info.max_alloc_bytes = info.global_mem_bytes;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    info.compute_units = cores > 0 ? (int)cores : 1;
    info.fp64 = 1;
    info.host_memory = 1;
    info.pci_domain = info.pci_bus = info.pci_device = info.pci_function = -1;
    ts_cpu_backend_set_threads(threads);
    const ts_blas_info *blas = ts_blas_get_info();
    if (blas->have_blas) snprintf(info.reference_blas, sizeof info.reference_blas, "%s", blas->library);
    describe(&info);
    return ts_device_register(&cpu_iface, NULL, &info, &g_cpu_device);
}
