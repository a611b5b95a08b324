/* The backend interface, for those who implement a device.
 *
 * A device is { iface; context }: a table of function pointers shared by all
 * devices of a backend, plus that device's private state. The core validates
 * every op (shapes, dtypes, one device) before it reaches a backend, so a
 * backend may assume well-formed operands. supports_op may be NULL (then every
 * op is supported); an op it declines fails with TS_ERR_UNSUPPORTED naming the
 * op and the device, never with a wrong answer. */
#ifndef TESSERA_BACKEND_H
#define TESSERA_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/device.h"
#include "tessera/update.h"
#include "tessera/status.h"
#include "tessera/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A storage block from the caching allocator: the backend's handle (a host
 * pointer for the CPU backend, a cl_mem for OpenCL) and its size. */
struct ts_block {
    ts_device *device;
    void *handle;
    size_t size;
    struct ts_block *next;    /* allocator free list */
};

/* Every op the core dispatches. Operands: out[] are written, in[] are read.
 * Unless noted, outputs are overwritten (=); "+=" marks accumulation.
 * Tensors are fp32 (i32 where marked), except 16-bit activations. Every
 * backend takes bf16 in GELU's inp and out, LAYERNORM_FWD's out and
 * CROSS_ENTROPY's/CE_SHARD's logits and dlogits, and bf16 or f16 in CAST.
 * Only where supports_op takes them with those types (else the core passes
 * fp32 copies): f16 in GELU and LAYERNORM_FWD, bf16 or f16 in GEMM's a, b
 * and c, the packed side of SPLIT/MERGE_HEADS and the fused attention's
 * qkv, out and dout.
 *
 *  op                    out[0]        out[1]      out[2]      in[0]     in[1]    in[2]  in[3]  in[4]
 *  FILL                  t
 *  ADD                   out (=a+b)                            a         b
 *  SCALE                 out (=alpha*a)                        a
 *  GELU_FWD              out                                   inp
 *  GELU_BWD              dinp                                  inp       dout
 *  EMBEDDING_FWD         out[N,C]                              tokens[N] wte[V,C] wpe|NULL
 *  EMBEDDING_BWD         dwte|NULL +=  dwpe|NULL +=            dout[N,C] tokens[N]
 *  EMBEDDING_BAG_FWD     out[N,C]                              ids[N,K]  weights[N,K] table[G,C]
 *  EMBEDDING_BAG_BWD     dtable[G,C] +=                        dout[N,C] ids[N,K] weights[N,K]
 *    (out[n] = sum_j weights[n,j] * table[ids[n,j]]; an entry of weight 0
 *    or an id outside [0,G) adds nothing)
 *  LAYERNORM_FWD         out[N,C]      mean|NULL   rstd|NULL   inp       weight   bias
 *  LAYERNORM_BWD         dinp +=       dweight +=  dbias +=    dout      inp      weight mean   rstd
 *  GEMM                  c                                     a         b        bias|NULL
 *  SUM_ROWS              out[C] (= or +=)                      x[N,C]
 *  SPLIT_HEADS           out[K,B,NH,T,HS]                      inp[B,T,K*NH*HS]
 *  MERGE_HEADS           out[B,T,K*NH*HS]                      inp[K,B,NH,T,HS]
 *  SOFTMAX_CAUSAL_FWD    att[BH,T,T]                           preatt
 *  SOFTMAX_CAUSAL_BWD    dpreatt                               att       datt
 *  SOFTMAX_MASKED_FWD    att[BH,T,T]                           preatt    lengths[BH/NH] (i32)
 *  SOFTMAX_MASKED_BWD    dpreatt (whole rows)                  att       datt
 *  ATTENTION_FWD         out[B,T,C]    lse[B*NH,T]             qkv[B,T,3C] key_len[B]|NULL
 *  ATTENTION_BWD         dqkv[B,T,3C]                          dout[B,T,C] qkv out lse key_len|NULL
 *    (fused attention: scores, mask, softmax and the weighted sum without a
 *    [T,T] matrix in memory; lse is each row's log-sum-exp of the scaled
 *    scores, -inf for a row without keys; optional: where supports_op says
 *    no, the core composes GEMM and SOFTMAX ops instead; out, qkv and dout
 *    may be bf16 or f16 where supports_op takes them, else the core gives
 *    fp32 copies: ts_attention_op_16bit)
 *  CROSS_ENTROPY         losses|NULL   probs|NULL  dlogits|NULL logits[N,V] targets[N]|NULL
 *  CE_SHARD phase 0      rowmax[N]     tgt[N]                  logits[N,Vl] targets
 *  CE_SHARD phase 1      sumexp[N]                             logits    rowmax
 *  CE_SHARD phase 2      losses[N]                             rowmax    sumexp   tgt    targets
 *  CE_SHARD phase 3      dlogits                               logits    rowmax   sumexp targets
 *  SUM, SQNORM           out[1]                                x
 *  OPTIM_UPDATE          param         m|NULL      v|NULL      grad
 *  TRIAD                 a (=b+s*c)                            b         c
 *  FMA_LOOP              x (in place: x = x*a + b, repeated)
 *  POOL_MAX_FWD          out[B,C]      argmax[B,C] (i32)       x[B,T,C]  lengths[B] (i32)
 *  POOL_MAX_BWD          dx[B,T,C]                             dout[B,C] argmax[B,C]
 *
 * Aliasing allowed: ADD out with a or b; SCALE, GELU_FWD, GELU_BWD (dinp with dout),
 * SOFTMAX_CAUSAL_BWD and SOFTMAX_MASKED_BWD (dpreatt with datt), SOFTMAX_MASKED_FWD
 * (att with preatt), CROSS_ENTROPY (probs or dlogits with logits), CE_SHARD
 * phase 3 (dlogits with logits). Nothing else aliases. */
typedef enum ts_op_kind {
    TS_OP_FILL = 0,
    TS_OP_ADD,
    TS_OP_SCALE,
    TS_OP_GELU_FWD,
    TS_OP_GELU_BWD,
    TS_OP_EMBEDDING_FWD,
    TS_OP_EMBEDDING_BWD,
    TS_OP_LAYERNORM_FWD,
    TS_OP_LAYERNORM_BWD,
    TS_OP_GEMM,
    TS_OP_SUM_ROWS,
    TS_OP_SPLIT_HEADS,
    TS_OP_MERGE_HEADS,
    TS_OP_SOFTMAX_CAUSAL_FWD,
    TS_OP_SOFTMAX_CAUSAL_BWD,
    TS_OP_CROSS_ENTROPY,
    TS_OP_CE_SHARD,
    TS_OP_SUM,
    TS_OP_SQNORM,
    TS_OP_OPTIM_UPDATE,
    TS_OP_TRIAD,
    TS_OP_FMA_LOOP,
    TS_OP_SOFTMAX_MASKED_FWD,
    TS_OP_SOFTMAX_MASKED_BWD,
    TS_OP_ATTENTION_FWD,
    TS_OP_ATTENTION_BWD,
    TS_OP_POOL_MAX_FWD,
    TS_OP_POOL_MAX_BWD,
    TS_OP_CAST,
    TS_OP_EMBEDDING_BAG_FWD,
    TS_OP_EMBEDDING_BAG_BWD,
    TS_OP_COUNT
} ts_op_kind;

const char *ts_op_kind_name(ts_op_kind kind);

typedef struct ts_op {
    ts_op_kind kind;
    ts_tensor *out[3];
    const ts_tensor *in[5];
    union {
        struct { float value; } fill;
        struct { float alpha; } scale;
        struct {
            int64_t N, C;          /* rows (positions) and channels */
            int64_t T;             /* position of row n is n % T */
            int64_t vocab_start;   /* wte holds rows [vocab_start, vocab_start+V) */
            int64_t V;
        } embedding;
        struct { int64_t N, K, C, G; } bag; /* positions, entries each, channels, table rows */
        struct { int64_t N, C; float eps; } layernorm;
        struct {
            int64_t M, N, K;       /* c[M,N] = alpha*op(a)[M,K]*op(b)[K,N] + beta*c (+bias[N]) */
            bool trans_a, trans_b;
            float alpha, beta;
            int64_t batch;         /* >= 1; batch i adds i*stride_* elements */
            int64_t lda, ldb, ldc; /* row strides in elements (row-major) */
            int64_t stride_a, stride_b, stride_c;
            bool reference;        /* through the device's reference BLAS library */
            ts_dtype dtype;        /* TS_F32, or TS_BF16/TS_F16: a and b rounded to it first,
                                    * products summed in fp32 (ts_device_set_matmul_dtype) */
        } gemm;
        struct { int64_t N, C; bool accumulate; } sum_rows;
        struct { int64_t B, T, C; } pool;
        struct { int64_t B, T, K, NH, HS; } heads;
        struct {
            int64_t BH, T;
            float scale;
            int64_t NH;            /* MASKED_FWD: row block bh reads lengths[bh / NH] */
            bool causal;           /* MASKED_FWD: also keys s <= t only */
        } softmax;
        struct {
            int64_t B, T, C, NH;   /* qkv [B,T,3C], heads of C/NH */
            bool causal;           /* keys s <= t only (and s < key_len[b] when given) */
            bool by_default;       /* supports_op probe: also faster than the composite route here? */
        } attention;
        struct {
            int64_t N, V;
            float scale;           /* dlogits = scale * (softmax - onehot) */
        } cross_entropy;
        struct {
            int phase;             /* 0 stats, 1 sumexp, 2 loss, 3 grad */
            int64_t N, V;          /* rows, vocabulary rows held */
            int64_t vocab_start, vocab_size;
            float scale;
        } ce_shard;
        struct { int64_t n; } reduce;
        struct { int64_t n; float s; } triad;
        struct { int64_t n, iterations; float a, b; } fma_loop;
        struct {
            ts_optim_kind kind;
            int64_t n;
            float lr, beta1, beta2, eps, weight_decay;
            float grad_scale;      /* grad is multiplied by this first */
            float bias_correction1, bias_correction2; /* 1 - beta^t */
        } optim;
    } p;
} ts_op;

/* The interface version a backend was written against; registration
 * refuses any other, so a backend cannot run against a core whose structs
 * it does not know. */
#define TS_BACKEND_INTERFACE_VERSION 1

/* Required: alloc, free, write, read, run_op. The others may be NULL and
 * the core then does without: copy goes through host memory, synchronize
 * and prepare do nothing, every op is supported, there are no build stats. */
typedef struct ts_backend_iface {
    int version;                                          /* TS_BACKEND_INTERFACE_VERSION */
    const char *name;
    ts_status (*alloc)(ts_device *dev, size_t size, void **handle);
    void (*free)(ts_device *dev, void *handle);
    ts_status (*write)(ts_device *dev, void *handle, size_t offset,
                       const void *src, size_t size);
    ts_status (*read)(ts_device *dev, void *handle, size_t offset, void *dst,
                      size_t size);
    ts_status (*copy)(ts_device *dev, void *dst, size_t dst_offset, void *src,
                      size_t src_offset, size_t size);     /* may be NULL */
    ts_status (*synchronize)(ts_device *dev);            /* may be NULL */
    bool (*supports_op)(ts_device *dev, const ts_op *op); /* may be NULL */
    ts_status (*run_op)(ts_device *dev, const ts_op *op);
    void (*release)(ts_device *dev);                     /* may be NULL */
    ts_status (*prepare)(ts_device *dev);                /* may be NULL */
    void (*build_stats)(ts_device *dev, ts_build_stats *stats); /* may be NULL */
    /* how GEMM ops of a bf16/fp16 dtype run here; NULL (or the member NULL):
     * not at all */
    const char *(*matmul_route)(ts_device *dev, ts_dtype dtype);
    /* the host writes [p, p + bytes) of this device's memory directly:
     * a backend that keeps derived copies of memory must drop them there,
     * and when kept (ts_tensor_host_ptr, ts_tensor_wrap_host: the address
     * stays in the host's hands) never make them again; may be NULL */
    void (*host_access)(ts_device *dev, const void *p, size_t bytes, int kept);
} ts_backend_iface;

struct ts_allocator;

struct ts_device {
    const ts_backend_iface *iface;
    void *context;
    ts_device_info info;
    struct ts_allocator *allocator;
    ts_dtype matmul_dtype;  /* ts_device_set_matmul_dtype; TS_F32 when opened */
};

/* Backends call this from their registration function. The registry takes
 * a copy of info and keeps context until release; *out (may be NULL)
 * receives the new device. */
ts_status ts_device_register(const ts_backend_iface *iface, void *context,
                             const ts_device_info *info, ts_device **out);

/* Byte address helpers for backends. */
static inline void *ts_block_handle(const ts_tensor *t) { return t->block->handle; }

/* Whether a fused attention op's activations (forward: out, qkv; backward:
 * dout, qkv, out) hold a 16-bit type; dqkv and lse are always fp32. */
static inline bool ts_attention_op_16bit(const ts_op *op)
{
    int fwd = op->kind == TS_OP_ATTENTION_FWD;
    const ts_tensor *t[4] = {fwd ? op->out[0] : NULL, op->in[0], fwd ? NULL : op->in[1], fwd ? NULL : op->in[2]};
    for (int i = 0; i < 4; i++)
        if (t[i] && t[i]->dtype != TS_F32) return true;
    return false;
}

#ifdef __cplusplus
}
#endif
#endif
