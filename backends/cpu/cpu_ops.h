/* The CPU backend's kernels on raw host pointers (C11 + OpenMP).
 *
 * Reductions are deterministic and independent of the thread count: sums
 * over many elements use a fixed number of chunks combined in order, and
 * sums over rows are split by column so each thread walks rows in order. */
#ifndef TESSERA_CPU_OPS_H
#define TESSERA_CPU_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "cpu_lowp_gemm.h"
#include "tessera/update.h"

extern int ts_cpu_threads; /* OpenMP threads for every parallel loop */

void cpu_fill(float *t, int64_t n, float value);
void cpu_add(float *out, const float *a, const float *b, int64_t n);
void cpu_scale(float *out, const float *a, float alpha, int64_t n);
/* inp, out: fp32, or bf16 storage where the flag says so */
void cpu_gelu_forward(void *out, bool out_bf16, const void *inp, bool inp_bf16, int64_t n);
void cpu_gelu_backward(float *dinp, const void *inp, bool inp_bf16, const float *dout, int64_t n);
/* storage types of cpu_cast (the others take bf16 flags: f16 reaches only this) */
enum { CPU_ACT_F32 = 0, CPU_ACT_BF16 = 1, CPU_ACT_F16 = 2 };
void cpu_cast(void *out, int out_type, const void *in, int in_type, int64_t n);

void cpu_embedding_forward(float *out, const int32_t *tokens, const float *wte, const float *wpe,
                           int64_t N, int64_t T, int64_t C, int64_t V, int64_t vocab_start);
void cpu_embedding_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens,
                            int64_t N, int64_t T, int64_t C, int64_t V, int64_t vocab_start);
void cpu_embedding_bag_forward(float *out, const int32_t *ids, const float *w, const float *table, int64_t N,
                               int64_t K, int64_t C, int64_t G);
void cpu_embedding_bag_backward(float *dtable, const float *dout, const int32_t *ids, const float *w, int64_t N,
                                int64_t K, int64_t C, int64_t G);

/* out: fp32, or bf16 storage (out_bf16) */
void cpu_layernorm_forward(void *out, bool out_bf16, float *mean, float *rstd, const float *inp,
                           const float *weight, const float *bias, int64_t N, int64_t C, float eps);
void cpu_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, const float *mean,
                            const float *rstd, int64_t N, int64_t C);

void cpu_sum_rows(float *out, const float *x, int64_t N, int64_t C, bool accumulate);
void cpu_pool_max_forward(float *out, int32_t *argmax, const float *x, const int32_t *lengths, int64_t B, int64_t T,
                          int64_t C);
void cpu_pool_max_backward(float *dx, const float *dout, const int32_t *argmax, int64_t B, int64_t T, int64_t C);

void cpu_split_heads(float *out, const float *inp, int64_t B, int64_t T, int64_t K, int64_t NH,
                     int64_t HS);
void cpu_merge_heads(float *out, const float *inp, int64_t B, int64_t T, int64_t K, int64_t NH,
                     int64_t HS);
void cpu_softmax_causal_forward(float *att, const float *preatt, int64_t BH, int64_t T,
                                float scale);
void cpu_softmax_causal_backward(float *dpreatt, const float *att, const float *datt, int64_t BH,
                                 int64_t T, float scale);
void cpu_softmax_masked_forward(float *att, const float *preatt, const int32_t *lengths, int64_t BH,
                                int64_t NH, int64_t T, float scale, bool causal);
void cpu_softmax_masked_backward(float *dpreatt, const float *att, const float *datt, int64_t BH,
                                 int64_t T, float scale);

void cpu_cross_entropy(float *losses, float *probs, float *dlogits, const float *logits,
                       const int32_t *targets, int64_t N, int64_t V, float scale);
/* bf16 logits and/or dlogits (the flags), each row through rows[thread * V
 * ... + V) (ts_cpu_threads rows of V floats); each gradient rounded once */
void cpu_cross_entropy_bf16(float *losses, float *probs, void *dlogits, bool d_bf16, const void *logits, bool x_bf16,
                            const int32_t *targets, int64_t N, int64_t V, float scale, float *rows);

void cpu_ce_shard(int phase, float *out0, float *out1, const float *in0, const float *in1,
                  const float *in2, const int32_t *targets, int64_t N, int64_t V, int64_t vocab_start,
                  int64_t vocab_size, float scale);
/* phases 0, 1 and 3 on bf16 logits (and, in phase 3, bf16 dlogits), each
 * row through rows[thread * V .. + V) */
void cpu_ce_shard_bf16(int phase, void *out0, float *out1, const void *in0, const float *in1, const float *in2,
                       const int32_t *targets, int64_t N, int64_t V, int64_t vocab_start, int64_t vocab_size,
                       float scale, float *rows);

float cpu_sum(const float *x, int64_t n);
float cpu_sqnorm(const float *x, int64_t n);

void cpu_triad(float *a, const float *b, const float *c, float s, int64_t n);
void cpu_fma_loop(float *x, int64_t n, int64_t iterations, float a, float b);

/* Adam/AdamW also write the bf16 copies of `spans` (ts_cpu_lowp_refresh_begin) */
void cpu_optim_update(float *param, float *m, float *v, const float *grad, int64_t n,
                      ts_optim_kind kind, float lr, float beta1, float beta2, float eps,
                      float weight_decay, float grad_scale, float bc1, float bc2,
                      const ts_lowp_span *spans, int nspans);

#endif
