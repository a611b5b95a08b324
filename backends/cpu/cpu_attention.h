/* Fused multi-head attention on the CPU backend (TS_OP_ATTENTION_FWD/BWD):
 * scores, mask, softmax and the weighted sum per block of query rows, with
 * no [T,T] matrix in memory. qkv is [B,T,3C] (q, k, v, each NH heads of
 * C/NH), out and dout [B,T,C], lse [B*NH,T]; key_len (NULL: all T) masks
 * keys s >= key_len[b], and causal also keys s > t. Both return 0, or -1
 * when there is no memory for the per-thread buffers. */
#ifndef TESSERA_CPU_ATTENTION_H
#define TESSERA_CPU_ATTENTION_H

#include <stdbool.h>
#include <stdint.h>

int cpu_attention_forward(float *out, float *lse, const float *qkv, const int32_t *key_len, int64_t B, int64_t T,
                          int64_t C, int64_t NH, bool causal);
/* dqkv is written whole; out and lse are the forward's. */
int cpu_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *out, const float *lse,
                           const int32_t *key_len, int64_t B, int64_t T, int64_t C, int64_t NH, bool causal);

#endif
