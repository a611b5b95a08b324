/* Double-precision host references for every op, written for clarity, not
 * speed. Semantics mirror tessera/ops.h exactly (accumulation included). */
#ifndef TESSERA_REFERENCE_H
#define TESSERA_REFERENCE_H

#include <stdbool.h>
#include <stdint.h>

#include "tessera/update.h"

void ref_gelu_forward(double *out, const double *x, int64_t n);
void ref_gelu_backward(double *dx, const double *x, const double *dout, int64_t n);

/* out = wte[tok - vocab_start] (zero outside [0, V)) + wpe[n % T] */
void ref_embedding_forward(double *out, const int32_t *tok, const double *wte, const double *wpe,
                           int64_t N, int64_t T, int64_t C, int64_t V, int64_t vocab_start);
/* dwte += ..., dwpe += ... (either may be NULL) */
void ref_embedding_backward(double *dwte, double *dwpe, const double *dout, const int32_t *tok,
                            int64_t N, int64_t T, int64_t C, int64_t V, int64_t vocab_start);
void ref_embedding_bag_forward(double *out, const int32_t *ids, const double *w, const double *table, int64_t N,
                               int64_t K, int64_t C, int64_t G);
void ref_embedding_bag_backward(double *dtable, const double *dout, const int32_t *ids, const double *w, int64_t N,
                                int64_t K, int64_t C, int64_t G);

void ref_layernorm_forward(double *out, double *mean, double *rstd, const double *x,
                           const double *w, const double *b, int64_t N, int64_t C, double eps);
/* dx += ..., dw += ..., db += ... (mean and rstd recomputed from x) */
void ref_layernorm_backward(double *dx, double *dw, double *db, const double *dout,
                            const double *x, const double *w, int64_t N, int64_t C, double eps);

/* Row-major batched GEMM: c = alpha*op(a)op(b) + beta*c + bias (beta == 0
 * ignores c's contents); stride_b 0 shares b across the batch. */
void ref_gemm(double *c, const double *a, const double *b, const double *bias, int64_t batch,
              int64_t M, int64_t N, int64_t K, bool ta, bool tb, double alpha, double beta,
              int64_t stride_b);

/* max over t < lengths[b] (clamped to [0, T]; NaN wins; none: 0 and -1) */
void ref_pool_max_forward(double *out, int32_t *argmax, const double *x, const int32_t *lengths, int64_t B,
                          int64_t T, int64_t C);
void ref_pool_max_backward(double *dx, const double *dout, const int32_t *argmax, int64_t B, int64_t T, int64_t C);
void ref_sum_rows(double *out, const double *x, int64_t N, int64_t C, bool accumulate);

void ref_split_heads(double *out, const double *inp, int64_t B, int64_t T, int64_t K, int64_t NH,
                     int64_t HS);
void ref_merge_heads(double *out, const double *inp, int64_t B, int64_t T, int64_t K, int64_t NH,
                     int64_t HS);
void ref_softmax_causal_forward(double *att, const double *pre, int64_t BH, int64_t T,
                                double scale);
void ref_softmax_causal_backward(double *dpre, const double *att, const double *datt, int64_t BH,
                                 int64_t T, double scale);
/* Whole causal attention: out[B,T,C] from qkv[B,T,3C]. */
void ref_attention_forward(double *out, const double *qkv, int64_t B, int64_t T, int64_t C,
                           int64_t NH);
/* Attention over the keys of a padded batch: s < lengths[b] (lengths NULL:
 * all T), and s <= t when causal. */
void ref_attention_masked_forward(double *out, const double *qkv, int64_t B, int64_t T, int64_t C,
                                  int64_t NH, const int32_t *lengths, bool causal);
/* Its gradient: dqkv[B,T,3C] (written) from dout[B,T,C]. out: NULL, or
 * the forward's output as kept (rounded to bf16, say), whose product with
 * dout stands for the exact sum of p * dp in each row, as FlashAttention's
 * backward takes it. */
void ref_attention_masked_backward(double *dqkv, const double *dout, const double *qkv, const double *out, int64_t B,
                                   int64_t T, int64_t C, int64_t NH, const int32_t *lengths, bool causal);
/* Softmax over keys s < lengths[bh / NH] (and s <= t when causal); its
 * backward over whole rows. */
void ref_softmax_masked_forward(double *att, const double *pre, const int32_t *lengths, int64_t BH, int64_t NH,
                                int64_t T, double scale, bool causal);
void ref_softmax_masked_backward(double *dpre, const double *att, const double *datt, int64_t BH, int64_t T,
                                 double scale);

void ref_cross_entropy(double *losses, double *probs, double *dlogits, const double *logits,
                       const int32_t *targets, int64_t N, int64_t V, double scale);

double ref_sum(const double *x, int64_t n);
double ref_sqnorm(const double *x, int64_t n);

void ref_optim_update(double *p, double *m, double *v, const double *g, int64_t n,
                      const ts_optim_params *o);

#endif
