/* A GPT-2 style decoder: token + position embedding, L pre-norm blocks of
 * causal multi-head attention and a 4x GELU MLP, a final layernorm and an
 * output head tied to the token embedding.
 *
 * The model is device-agnostic: it calls the op API only. Parameters,
 * gradients (and, in tessera/optimizer.h, optimizer moments) each live in
 * one contiguous allocation. Parameters are ordered matrices first, so the
 * weight-decayed ones are the prefix [0, num_decay) of the blob. Forward and
 * backward are written out by hand, layer by layer, like llm.c. */
#ifndef TESSERA_GPT_H
#define TESSERA_GPT_H

#include <stdint.h>

#include "tessera/ops.h"
#include "tessera/status.h"
#include "tessera/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ts_gpt_config {
    int64_t vocab_size;   /* V */
    int64_t max_seq_len;  /* maxT: rows of the position embedding */
    int64_t n_layer;      /* L */
    int64_t n_head;       /* NH */
    int64_t n_embd;       /* C, a multiple of NH */
} ts_gpt_config;

/* Parameter tensors, stacked over layers where per-layer ([L, ...]). The
 * first six are matrices (weight-decayed by AdamW). */
typedef enum ts_gpt_param {
    TS_GPT_WTE = 0,   /* [V, C]        token embedding, tied output head */
    TS_GPT_WPE,       /* [maxT, C]     position embedding */
    TS_GPT_QKVW,      /* [L, 3C, C]    attention input projection */
    TS_GPT_ATTPROJW,  /* [L, C, C]     attention output projection */
    TS_GPT_FCW,       /* [L, 4C, C]    MLP up */
    TS_GPT_FCPROJW,   /* [L, C, 4C]    MLP down */
    TS_GPT_LN1W,      /* [L, C] */
    TS_GPT_LN1B,
    TS_GPT_QKVB,      /* [L, 3C] */
    TS_GPT_ATTPROJB,  /* [L, C] */
    TS_GPT_LN2W,
    TS_GPT_LN2B,
    TS_GPT_FCB,       /* [L, 4C] */
    TS_GPT_FCPROJB,   /* [L, C] */
    TS_GPT_LNFW,      /* [C] */
    TS_GPT_LNFB,
    TS_GPT_NPARAMS
} ts_gpt_param;

typedef struct ts_gpt_param_info {
    const char *name;    /* file name pattern: "h.%d.attn.c_attn.weight" or "wte.weight" */
    int64_t offset;      /* elements into the parameter blob */
    int64_t numel;
    int ndim;            /* of one layer's slice (or the whole tensor) */
    int64_t shape[2];
    int per_layer;
    int decay;
} ts_gpt_param_info;

/* Activations of one (B, T) shape. */
typedef struct ts_gpt_acts {
    int64_t B, T;
    ts_tensor block;                  /* one allocation; the rest are views */
    ts_tensor encoded, ln1, ln1_mean, ln1_rstd, qkv, qkvh, att, atty, residual2;
    ts_tensor ln2, ln2_mean, ln2_rstd, fch, fch_gelu, residual3;
    ts_tensor lnf, lnf_mean, lnf_rstd, logits, losses, loss_sum;
    ts_tensor y, att_scratch, dqkvh, proj, dresidual, dC, d3C, d4C;
    ts_attention_ws *ws;              /* per layer, views of the above */
    ts_tensor tokens, targets;        /* i32 [B, T] */
    int64_t valid_targets;            /* targets in [0, V) of the last forward */
    int dlogits_ready;                /* logits hold their gradient (forward_backward) */
} ts_gpt_acts;

typedef struct ts_gpt {
    ts_gpt_config cfg;
    ts_device *device;
    int64_t num_params;
    int64_t num_decay;                /* elements [0, num_decay) are decayed */
    ts_gpt_param_info info[TS_GPT_NPARAMS];
    ts_tensor params, grads;          /* flat blobs */
    ts_tensor p[TS_GPT_NPARAMS], g[TS_GPT_NPARAMS]; /* views */
    ts_gpt_acts acts;
} ts_gpt;

/* Check a configuration; the message says what is wrong. */
ts_status ts_gpt_config_check(const ts_gpt_config *cfg);
/* Presets: "d6", "d12" (GPT-2 124M), "d24", "d36", "d48", "tiny". */
ts_status ts_gpt_config_preset(const char *name, ts_gpt_config *cfg);
int64_t ts_gpt_num_params(const ts_gpt_config *cfg);
/* Model FLOPs per token of one forward + backward at context T (6N plus
 * attention, as in the PaLM appendix), for throughput and MFU. */
double ts_gpt_flops_per_token(const ts_gpt_config *cfg, int64_t T);

/* Allocate parameters and gradients (gradients zeroed). */
ts_status ts_gpt_create(ts_gpt *m, ts_device *dev, const ts_gpt_config *cfg);
void ts_gpt_free(ts_gpt *m);
/* GPT-2 initialisation from a seed: N(0, 0.02) weights, residual output
 * projections scaled by 1/sqrt(2L), zero biases, unit layernorm gains. */
ts_status ts_gpt_init_weights(ts_gpt *m, uint64_t seed);

/* Forward on tokens [B, T] (host i32). With targets (host i32, negative =
 * ignored) also the mean cross-entropy in *loss. Activations are kept for
 * backward and for ts_gpt_read_logits. */
ts_status ts_gpt_forward(ts_gpt *m, const int32_t *tokens, const int32_t *targets, int64_t B,
                         int64_t T, float *loss);
/* A training micro-step: forward with the loss gradient fused into the
 * cross-entropy (one pass over the logits instead of three), then backward.
 * grads += d(loss_scale * mean loss)/d(params); *loss is the mean loss. */
ts_status ts_gpt_forward_backward(ts_gpt *m, const int32_t *tokens, const int32_t *targets,
                                  int64_t B, int64_t T, float loss_scale, float *loss);
/* Backward of the last forward (which needs targets): grads +=
 * d(loss_scale * mean loss)/d(params). Overwrites the logits. */
ts_status ts_gpt_backward(ts_gpt *m, float loss_scale);
ts_status ts_gpt_zero_grad(ts_gpt *m);
/* Logits of position (b, t) of the last forward, V floats. */
ts_status ts_gpt_read_logits(ts_gpt *m, int64_t b, int64_t t, float *out);

/* Weights as safetensors, one tensor per layer and kind ("h.3.mlp.c_fc.weight",
 * Linear layout [out, in]); the config is stored in the metadata.
 * extra_meta: NULL-terminated key, value pairs, may be NULL. */
ts_status ts_gpt_save(const ts_gpt *m, const char *path, const char *const *extra_meta);
/* Any blob laid out like the parameters (gradients, moments) under the
 * same per-layer names, for inspection from Python. */
ts_status ts_gpt_save_blob(const ts_gpt *m, const ts_tensor *blob, const char *path,
                           const char *const *extra_meta);
/* Read a file's config (metadata "config"). */
ts_status ts_gpt_read_config(const char *path, ts_gpt_config *cfg);
/* Load weights into a model of the same config; every tensor is checked. */
ts_status ts_gpt_load(ts_gpt *m, const char *path);
/* The name of tensor `param` of layer `layer` in files (buf of >= 64 bytes). */
const char *ts_gpt_tensor_name(const ts_gpt *m, int param, int64_t layer, char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif
