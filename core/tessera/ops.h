/* The op API: the same calls whatever the device.
 *
 * Every op runs on the device of its tensors (all operands must share one
 * device) and is queued asynchronously where the device allows; errors in
 * arguments are reported at once with the op, shapes and device. Tensors are
 * f32 unless noted (tokens and targets are i32). Shapes below are logical:
 * any tensor whose element count matches may be passed (leading dims are
 * flattened), except where the op reads its sizes from a shape.
 *
 * Gradient conventions (as in llm.c): parameter gradients accumulate (+=),
 * so micro-batches and tied weights add up without extra passes; activation
 * gradients are written (=) unless the op says "+=". */
#ifndef TESSERA_OPS_H
#define TESSERA_OPS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "tessera/update.h"
#include "tessera/status.h"
#include "tessera/profile.h"
#include "tessera/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- elementwise and data movement ---- */
ts_status ts_fill(ts_tensor *t, float value);
ts_status ts_add(ts_tensor *out, const ts_tensor *a, const ts_tensor *b);  /* out = a + b; out may be a or b */
ts_status ts_scale(ts_tensor *out, const ts_tensor *a, float alpha);       /* out = alpha*a; out may be a */
/* GELU, tanh form: 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))). out and inp
 * may be bf16 or f16 (activations under --dtype bf16 or fp16): computed in
 * fp32 (f16 on fp32 copies), written rounded to nearest even. */
ts_status ts_gelu_forward(ts_tensor *out, const ts_tensor *inp);                        /* out may be inp */
ts_status ts_gelu_backward(ts_tensor *dinp, const ts_tensor *inp, const ts_tensor *dout); /* dinp may be dout; inp
                                                                                           * may be bf16 or f16 */
/* out = in, each f32, bf16 or f16, one of them f32 (or both the same
 * type: a copy): widening is exact, narrowing rounds to nearest even (a NaN
 * stays NaN, overflow becomes inf, f16 subnormals kept). */
ts_status ts_cast(ts_tensor *out, const ts_tensor *in);

/* ---- embedding: out[b,t,:] = wte[tokens[b,t]] + wpe[t] ----
 * tokens is i32 [B,T] (B and T are read from its shape), wte [V,C], wpe
 * [maxT >= T, C] or NULL, out has B*T*C elements. */
ts_status ts_embedding_forward(ts_tensor *out, const ts_tensor *tokens,
                               const ts_tensor *wte, const ts_tensor *wpe);
/* dwte[tokens[n]] += dout[n]; dwpe[n % T] += dout[n]. Deterministic (no
 * atomics). dwte or dwpe may be NULL. */
ts_status ts_embedding_backward(ts_tensor *dwte, ts_tensor *dwpe,
                                const ts_tensor *dout, const ts_tensor *tokens);
/* Vocabulary-parallel variants: wte holds rows [vocab_start, vocab_start+V);
 * tokens outside that range contribute zero. */
ts_status ts_embedding_forward_shard(ts_tensor *out, const ts_tensor *tokens,
                                     const ts_tensor *wte, const ts_tensor *wpe,
                                     int64_t vocab_start);
ts_status ts_embedding_backward_shard(ts_tensor *dwte, ts_tensor *dwpe,
                                      const ts_tensor *dout, const ts_tensor *tokens,
                                      int64_t vocab_start);

/* ---- embedding bag: out[n] = sum_j weights[n,j] * table[ids[n,j]] ----
 * (subword sums, as fastText's character n-grams.) ids is i32 [N,K],
 * weights [N,K], table [G,C], out has N*C elements. An entry of weight 0
 * or with an id outside [0,G) adds nothing: rows of fewer than K entries
 * are padded that way. */
ts_status ts_embedding_bag_forward(ts_tensor *out, const ts_tensor *ids,
                                   const ts_tensor *weights, const ts_tensor *table);
/* dtable[ids[n,j]] += weights[n,j] * dout[n], summed in the order of n and
 * j whatever the device (no atomics). */
ts_status ts_embedding_bag_backward(ts_tensor *dtable, const ts_tensor *dout,
                                    const ts_tensor *ids, const ts_tensor *weights);

/* ---- layernorm over the last dimension ----
 * out[N,C], mean[N], rstd[N] (mean, rstd may be NULL), weight[C], bias[C].
 * out may be bf16 or f16 (the input of a 16-bit product, which rounds it
 * anyway; f16 through an fp32 copy). */
ts_status ts_layernorm_forward(ts_tensor *out, ts_tensor *mean, ts_tensor *rstd,
                               const ts_tensor *inp, const ts_tensor *weight,
                               const ts_tensor *bias, float eps);
/* dinp += ..., dweight += ..., dbias += ... (dinp is the residual stream's
 * gradient, so it accumulates). */
ts_status ts_layernorm_backward(ts_tensor *dinp, ts_tensor *dweight, ts_tensor *dbias,
                                const ts_tensor *dout, const ts_tensor *inp,
                                const ts_tensor *weight, const ts_tensor *mean,
                                const ts_tensor *rstd);

/* ---- matrix products ----
 * c = alpha*op(a)*op(b) + beta*c, op = transpose or not. 2-D tensors, or
 * 3-D with a leading batch dimension shared by all three (b may be 2-D and
 * then is shared by every batch). */
ts_status ts_matmul(ts_tensor *c, const ts_tensor *a, const ts_tensor *b,
                    bool trans_a, bool trans_b, float alpha, float beta);
/* out[N,OC] = inp[N,C] @ w[OC,C]^T + bias[OC] (bias may be NULL). inp and
 * out may be bf16 or f16 activations, and in ts_linear_backward inp and
 * dout: the product runs in the device's matmul dtype, reading and writing
 * bf16 where the backend can (oneDNN's bf16 products), else (and f16
 * always) on fp32 copies. */
/* Whether dev's backend runs a linear layer's bf16 tensors itself (false:
 * through fp32 copies, which cost memory as large as the tensor). */
bool ts_linear_takes_bf16(ts_device *dev);
ts_status ts_linear_forward(ts_tensor *out, const ts_tensor *inp,
                            const ts_tensor *w, const ts_tensor *bias);
/* dinp = dout @ w (NULL to skip); dw += dout^T @ inp; dbias += sum_rows(dout)
 * (NULL to skip). */
ts_status ts_linear_backward(ts_tensor *dinp, ts_tensor *dw, ts_tensor *dbias,
                             const ts_tensor *dout, const ts_tensor *inp,
                             const ts_tensor *w);
/* out[C] = (or +=) the sum over rows of x[N,C]. */
ts_status ts_sum_rows(ts_tensor *out, const ts_tensor *x, bool accumulate);

/* Max pooling over each sequence's real positions (a classifier's head):
 * x is [B,T,C], lengths i32 [B] (clamped to [0, T]); out[b,c] = the max of
 * x[b,t,c] over t < lengths[b] (NaN wins), argmax[b,c] (i32) the first t
 * that holds it. A sequence without positions pools to 0, argmax -1. */
ts_status ts_pool_max_forward(ts_tensor *out, ts_tensor *argmax, const ts_tensor *x, const ts_tensor *lengths);
/* dx[B,T,C] = dout[b,c] at t = argmax[b,c], 0 elsewhere (all of dx is written). */
ts_status ts_pool_max_backward(ts_tensor *dx, const ts_tensor *dout, const ts_tensor *argmax);

/* ---- attention ----
 * Heads: inp[B,T,K*NH*HS] <-> out[K,B,NH,T,HS] (K = 3 splits q,k,v). The
 * heads side is fp32; the packed side may be bf16 or f16 (read exactly,
 * written rounded once; OpenCL's kernels read and write it, elsewhere
 * through an fp32 copy). */
ts_status ts_split_heads(ts_tensor *out, const ts_tensor *inp, int64_t B,
                         int64_t T, int64_t K, int64_t NH);
ts_status ts_merge_heads(ts_tensor *out, const ts_tensor *inp, int64_t B,
                         int64_t T, int64_t K, int64_t NH);
/* att[bh,t,s] = softmax_s(scale*preatt[bh,t,s]) over s <= t, 0 for s > t.
 * preatt and att are [BH,T,T]; att may be preatt. */
ts_status ts_softmax_causal_forward(ts_tensor *att, const ts_tensor *preatt, float scale);
/* dpreatt = scale * att * (datt - sum_s att*datt); dpreatt may be datt. */
ts_status ts_softmax_causal_backward(ts_tensor *dpreatt, const ts_tensor *att,
                                     const ts_tensor *datt, float scale);

/* Softmax over the keys a padded batch holds: preatt and att are [BH,T,T]
 * with BH = B*NH, lengths is i32 [B]; row (bh, t) takes keys s <
 * lengths[bh / NH] (and s <= t when causal), zeros elsewhere. Lengths are
 * clamped to [0, T]; a row without keys is all zeros. att may be preatt. */
ts_status ts_softmax_masked_forward(ts_tensor *att, const ts_tensor *preatt, const ts_tensor *lengths,
                                    int64_t NH, float scale, bool causal);
/* Its backward over whole rows (att is zero at masked keys, so they get
 * zero): dpreatt = scale * att * (datt - sum_s att*datt); dpreatt may be datt. */
ts_status ts_softmax_masked_backward(ts_tensor *dpreatt, const ts_tensor *att,
                                     const ts_tensor *datt, float scale);

/* Multi-head self-attention as one call: out[B,T,C] from qkv[B,T,3C]. The
 * workspace keeps what backward needs. Causal unless told otherwise: with
 * key_len set, keys at or past a sequence's length are masked (padding),
 * and `bidirectional` lets every position attend to every unmasked key
 * (encoder style).
 *
 * Two routes. Fused, where the device has the fused op (the CPU backend):
 * one pass per block of query rows computes scores, mask, softmax and the
 * weighted sum, keeping only each row's log-sum-exp; backward recomputes
 * the scores (FlashAttention's plan), so no [T,T] matrix is ever stored and
 * causal attention skips the masked half. Composite, elsewhere: batched
 * GEMMs and a softmax op over stored [B*NH,T,T] probabilities.
 * TESSERA_ATTENTION=composite|fused chooses for a run (fused falls back to
 * composite on a device without it). CPU-type OpenCL devices whose
 * products run in host BLAS (PoCL) take the CPU backend's fused plan on
 * mapped buffers; GPUs have fused kernels (the row's scores in local
 * memory) but take them only when asked, until they are measured faster
 * than GEMM + softmax there. The fused route reads the forward's
 * qkv again in backward, so it must stay unchanged until then (the models
 * keep it as an activation). */
typedef struct ts_attention_ws {
    bool fused;       /* which route; the tensors below that it needs are set */
    /* composite */
    ts_tensor qkvh;   /* [3,B,NH,T,HS] */
    ts_tensor att;    /* [B*NH,T,T] softmax probabilities */
    ts_tensor y;      /* [B,NH,T,HS] */
    ts_tensor scratch;/* [B*NH,T,T] gradients of scores (backward) */
    ts_tensor dqkvh;  /* [3,B,NH,T,HS] (backward) */
    /* fused */
    ts_tensor lse;    /* [B*NH,T] log-sum-exp of each row's scaled scores */
    ts_tensor o;      /* [B,T,C] the forward's output, kept for backward (may be out itself) */
    ts_tensor qkv_in; /* a view of the forward's qkv: keep that unchanged until backward */
    int64_t B, T, C, NH;
    const ts_tensor *key_len; /* i32 [B] real tokens per sequence, or NULL (all T) */
    bool bidirectional;
} ts_attention_ws;
typedef enum { TS_ATTENTION_AUTO = 0, TS_ATTENTION_COMPOSITE, TS_ATTENTION_FUSED } ts_attention_route;
/* Whether attention of this shape on dev takes the fused route when asked
 * for `route` (AUTO: TESSERA_ATTENTION, else fused where the device's
 * backend takes it by default for causal attention). FUSED where the
 * device cannot is an error. _mask: for the mask the workspace will run
 * (a backend may prefer another route for bidirectional attention). */
ts_status ts_attention_route_fused(ts_device *dev, ts_attention_route route, int64_t B, int64_t T, int64_t C,
                                   int64_t NH, bool *fused);
ts_status ts_attention_route_fused_mask(ts_device *dev, ts_attention_route route, int64_t B, int64_t T, int64_t C,
                                        int64_t NH, bool bidirectional, bool *fused);
/* _alloc takes the AUTO route for causal attention; a workspace that will
 * be bidirectional asks ts_attention_route_fused_mask and passes its answer
 * to _alloc_route (either route computes the same attention). */
ts_status ts_attention_ws_alloc(ts_attention_ws *ws, ts_device *dev,
                                int64_t B, int64_t T, int64_t C, int64_t NH);
ts_status ts_attention_ws_alloc_route(ts_attention_ws *ws, ts_device *dev, int64_t B, int64_t T, int64_t C,
                                      int64_t NH, ts_attention_route route);
void ts_attention_ws_free(ts_attention_ws *ws);
/* qkv, out and dout may be bf16 or f16 (the model's under 16-bit
 * products): computed in fp32, out rounded once; read and written as they
 * are where the device's fused op takes them (OpenCL's local-memory
 * kernels), else through fp32 copies; the fused route's backward reads out
 * as kept. */
ts_status ts_attention_forward(ts_tensor *out, const ts_tensor *qkv, ts_attention_ws *ws);
/* dqkv = (written) gradient of qkv; uses ws from the matching forward. */
ts_status ts_attention_backward(ts_tensor *dqkv, const ts_tensor *dout, ts_attention_ws *ws);

/* ---- fused softmax + cross-entropy ----
 * logits[N,V], targets i32 [N] (a negative target is ignored: loss 0, no
 * gradient). Any of losses[N], probs[N,V], dlogits[N,V] may be NULL; losses
 * and dlogits need targets. dlogits = scale*(softmax(logits) - onehot);
 * probs or dlogits may be logits itself (computed in place). logits and
 * dlogits may be bf16 (the head's under bf16 products): computed in fp32,
 * each gradient rounded once. */
ts_status ts_cross_entropy(ts_tensor *losses, ts_tensor *probs, ts_tensor *dlogits,
                           const ts_tensor *logits, const ts_tensor *targets,
                           float scale);

/* ---- vocabulary-parallel cross-entropy ----
 * Each process holds logits[N, Vl] for vocabulary rows [vocab_start,
 * vocab_start + Vl) of a vocab_size-token vocabulary; the caller combines
 * the per-row statistics across processes (max, then sums) in between.
 * rowmax[n] = max_j logits[n, j]; target_logit[n] = the target's logit if
 * this shard holds it, else 0. The logits may be bf16 (the model's under
 * bf16 products), and then their gradient is bf16 too: fp32 inside. */
ts_status ts_ce_shard_stats(ts_tensor *rowmax, ts_tensor *target_logit, const ts_tensor *logits,
                            const ts_tensor *targets, int64_t vocab_start);
/* sumexp[n] = sum_j exp(logits[n, j] - rowmax[n]), rowmax global. */
ts_status ts_ce_shard_sumexp(ts_tensor *sumexp, const ts_tensor *logits, const ts_tensor *rowmax);
/* losses[n] = log(sumexp[n]) + rowmax[n] - target_logit[n], or 0 where the
 * target is outside [0, vocab_size). */
ts_status ts_ce_shard_loss(ts_tensor *losses, const ts_tensor *rowmax, const ts_tensor *sumexp,
                           const ts_tensor *target_logit, const ts_tensor *targets,
                           int64_t vocab_size);
/* dlogits = scale * (exp(logits - rowmax) / sumexp - onehot(target -
 * vocab_start)); zero rows where the target is outside [0, vocab_size).
 * dlogits may be logits. */
ts_status ts_ce_shard_grad(ts_tensor *dlogits, const ts_tensor *logits, const ts_tensor *rowmax,
                           const ts_tensor *sumexp, const ts_tensor *targets, int64_t vocab_start,
                           int64_t vocab_size, float scale);

/* ---- reductions (out is a 1-element tensor) ---- */
ts_status ts_sum(ts_tensor *out, const ts_tensor *x);
ts_status ts_sqnorm(ts_tensor *out, const ts_tensor *x);   /* sum of squares */

/* ---- optimizer step on one flat range of parameters ----
 * m is needed by SGD_MOMENTUM, ADAM, ADAMW; v by ADAM, ADAMW. */
ts_status ts_optimizer_update(ts_tensor *param, const ts_tensor *grad,
                              ts_tensor *m, ts_tensor *v,
                              const ts_optim_params *params);

/* ---- device limits (what `tessera bench` measures a device against) ----
 * STREAM's triad: a = b + s*c (n elements each; 12 bytes moved per element). */
ts_status ts_triad(ts_tensor *a, const ts_tensor *b, const ts_tensor *c, float s);
/* x = x*a + b, `iterations` times for every element, in place: 2 flops per
 * element per iteration, from registers only (a peak-arithmetic kernel). */
ts_status ts_fma_loop(ts_tensor *x, int64_t iterations, float a, float b);
/* ts_matmul through the device's reference BLAS library instead of
 * tessera's route: OpenBLAS's own threaded cblas_sgemm for the CPU backend,
 * CLBlast for OpenCL devices. TS_ERR_UNSUPPORTED where the device has none
 * (see ts_device_info.reference_blas). For benchmarks and tests. */
ts_status ts_matmul_reference(ts_tensor *c, const ts_tensor *a, const ts_tensor *b,
                              bool trans_a, bool trans_b, float alpha, float beta);


#ifdef __cplusplus
}
#endif
#endif
