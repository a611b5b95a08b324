/* A GPT-2 style decoder: token + position embedding, L pre-norm blocks of
 * causal multi-head attention and a 4x GELU MLP, a final layernorm and an
 * output head tied to the token embedding.
 *
 * The model is device-agnostic: it calls the op API only. Parameters,
 * gradients (and, in tessera/optimizer.h, optimizer moments) each live in
 * one contiguous allocation, laid out layer by layer so that data-parallel
 * gradient buckets can start as soon as backward has passed a layer:
 *   [wte] [wpe] [layer l0: 4 matrices | 8 vectors] ... [layer l1-1] [ln_f]
 * Forward and backward are written out by hand, layer by layer, like llm.c.
 *
 * A layout says which part of the model this process holds (for tensor and
 * pipeline parallelism): a range of layers, the embedding (first stage) and
 * the head (last stage), and a tensor-parallel slice: attention heads and
 * MLP columns divided Megatron-style (QKV and MLP-up split by output rows,
 * attention and MLP-down projections by input columns), the vocabulary of
 * the embedding and head divided by rows. Weights are always initialised,
 * saved and loaded as the global tensors, so every layout of the same seed
 * or file holds the same model. */
#ifndef TESSERA_GPT_H
#define TESSERA_GPT_H

#include <stdint.h>

#include "tessera/comm.h"
#include "tessera/ops.h"
#include "tessera/optimizer.h"
#include "tessera/safetensors.h"
#include "tessera/status.h"
#include "tessera/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Activations and scratch live in a few large allocations, a new one begun
 * where the next tensor would pass the device's largest allocation or 2^31
 * floats (CLBlast addresses with 32-bit ints); at most one per tensor. */
#define TS_GPT_BLOCKS 32

typedef struct ts_gpt_config {
    int64_t vocab_size;   /* V */
    int64_t max_seq_len;  /* maxT: rows of the position embedding */
    int64_t n_layer;      /* L */
    int64_t n_head;       /* NH */
    int64_t n_embd;       /* C, a multiple of NH */
} ts_gpt_config;

/* Kinds of parameter tensor; per-layer kinds exist once per layer. */
typedef enum ts_gpt_param {
    TS_GPT_WTE = 0,   /* [V, C]     token embedding, tied output head */
    TS_GPT_WPE,       /* [maxT, C]  position embedding */
    TS_GPT_QKVW,      /* [3C, C]    attention input projection (q, k, v rows) */
    TS_GPT_ATTPROJW,  /* [C, C]     attention output projection */
    TS_GPT_FCW,       /* [4C, C]    MLP up */
    TS_GPT_FCPROJW,   /* [C, 4C]    MLP down */
    TS_GPT_LN1W,      /* [C] */
    TS_GPT_LN1B,
    TS_GPT_QKVB,      /* [3C] */
    TS_GPT_ATTPROJB,  /* [C] */
    TS_GPT_LN2W,
    TS_GPT_LN2B,
    TS_GPT_FCB,       /* [4C] */
    TS_GPT_FCPROJB,   /* [C] */
    TS_GPT_LNFW,      /* [C] */
    TS_GPT_LNFB,
    TS_GPT_NPARAMS
} ts_gpt_param;

/* How a tensor is divided among tensor-parallel ranks. */
typedef enum ts_gpt_split {
    TS_SPLIT_NONE = 0,  /* replicated */
    TS_SPLIT_ROWS,      /* by output rows (column-parallel layers, vocabulary) */
    TS_SPLIT_COLS,      /* by input columns (row-parallel layers) */
    TS_SPLIT_QKV,       /* the q, k and v row blocks, each by rows */
} ts_gpt_split;

typedef struct ts_gpt_layout {
    int tp_size, tp_rank;
    int64_t layer_begin, layer_end; /* layers [begin, end) */
    int embedding;                  /* holds wte (input use) and wpe */
    int head;                       /* holds ln_f and wte (output use) */
} ts_gpt_layout;

/* One local tensor: a slice of a global one. */
typedef struct ts_gpt_tensor {
    int kind;
    int64_t layer;          /* global layer index, -1 for non-layer tensors */
    int64_t offset;         /* elements into the blob */
    int64_t rows, cols;     /* local shape (cols 1 for vectors) */
    int64_t grows, gcols;   /* global shape */
    ts_gpt_split split;
    int64_t first;          /* first global row (ROWS, QKV per block) or column (COLS) held */
    int decay;              /* a matrix: AdamW decays it */
    int replicated;         /* identical on every tensor-parallel rank */
} ts_gpt_tensor;

/* Activations of one micro-batch of shape (B, T): what backward needs. */
typedef struct ts_gpt_acts {
    int64_t B, T;
    ts_tensor block[TS_GPT_BLOCKS];   /* few allocations; the rest are views */
    ts_tensor input;                  /* [B,T,C] residual stream into the first local layer */
    ts_tensor ln1, ln1_mean, ln1_rstd, qkv, qkvh, att, atty, residual2;  /* stacked over local layers */
    ts_tensor ln2, ln2_mean, ln2_rstd, fch, fch_gelu, residual3;
    ts_tensor lnf, lnf_mean, lnf_rstd, logits, losses, loss_sum;
    ts_tensor ce_max, ce_sum, ce_tgt; /* vocabulary-parallel cross-entropy statistics */
    ts_tensor dres;                   /* [B,T,C] residual-stream gradient; d(input) after backward */
    ts_attention_ws *ws;              /* per local layer */
    ts_tensor tokens, targets;        /* i32 [B, T] */
    ts_tensor key_len;                /* i32 [B]: real tokens per sequence (features, bidirectional) */
    const ts_tensor *input_add;       /* [B*T, C] added to the embedding when set (a classifier's
                                       * subwords); its gradient is dres after backward */
    int64_t valid_targets;
    int dlogits_ready;
} ts_gpt_acts;

/* Called during backward when every gradient at blob offsets >= `offset`
 * is final (data-parallel overlap). */
typedef void (*ts_grads_ready_fn)(void *ctx, int64_t offset);

typedef struct ts_gpt {
    ts_gpt_config cfg;
    ts_gpt_layout lay;
    ts_device *device;
    int64_t C_att;      /* attention width held: C / tp */
    int64_t NH_local;   /* heads held: NH / tp */
    int64_t F_local;    /* MLP width held: 4C / tp */
    int64_t V_local;    /* vocabulary rows held */
    int64_t vocab_start;
    int64_t num_params; /* elements held */
    int ntensors;
    ts_gpt_tensor *tensors;       /* in blob order */
    ts_tensor params, grads;      /* flat blobs */
    ts_comm *tp_comm;             /* tensor-parallel group (NULL: none) */
    bool bidirectional;           /* the mask activations will run, for the attention route: set before
                                     making any */
    ts_grads_ready_fn grads_ready;
    void *grads_ready_ctx;
    ts_gpt_acts acts;             /* for the single-micro-batch calls below */
    /* scratch shared by every micro-batch of one shape */
    int64_t scratch_B, scratch_T;
    bool scratch_fused;           /* the route the scratch was sized for */
    ts_tensor scratch[TS_GPT_BLOCKS], y, att_scratch, dqkvh, proj, dC, dCatt, d3C, d4C;
} ts_gpt;

/* Check a configuration; the message says what is wrong. */
ts_status ts_gpt_config_check(const ts_gpt_config *cfg);
/* Presets: "tiny", "d6", "d12" (GPT-2 124M), "d24", "d36", "d48". */
ts_status ts_gpt_config_preset(const char *name, ts_gpt_config *cfg);
int64_t ts_gpt_num_params(const ts_gpt_config *cfg);
/* Model FLOPs per token of one forward + backward at context T (6N plus
 * attention, as in the PaLM appendix), for throughput and MFU. */
double ts_gpt_flops_per_token(const ts_gpt_config *cfg, int64_t T);
/* Bytes one process needs to train the whole model on B x T tokens with
 * `moments` optimizer moments per parameter (AdamW 2, momentum 1, SGD 0):
 * parameters, gradients, moments, activations and scratch. An
 * estimate for refusing runs that cannot fit, not an allocation plan.
 * fused_attention: the route that keeps a log-sum-exp a row instead of
 * T x T probabilities (ts_attention_route_fused); matmul_dtype: the
 * device's (TS_BF16 and TS_F16 store some activations in 16 bits). */
double ts_gpt_train_bytes(const ts_gpt_config *cfg, int64_t B, int64_t T, int moments, bool fused_attention,
                          ts_dtype matmul_dtype);

/* The whole model on one process. */
void ts_gpt_layout_single(const ts_gpt_config *cfg, ts_gpt_layout *lay);
/* Can cfg be divided this way? (heads and MLP width by tp, layers in range) */
ts_status ts_gpt_layout_check(const ts_gpt_config *cfg, const ts_gpt_layout *lay);

/* Allocate parameters and gradients (gradients zeroed): the whole model, or
 * one layout's part of it with its tensor-parallel communicator. */
ts_status ts_gpt_create(ts_gpt *m, ts_device *dev, const ts_gpt_config *cfg);
ts_status ts_gpt_create_layout(ts_gpt *m, ts_device *dev, const ts_gpt_config *cfg,
                               const ts_gpt_layout *lay, ts_comm *tp_comm);
void ts_gpt_free(ts_gpt *m);
/* The tensor table of a layout without allocating anything (to reason
 * about another rank's part); free with ts_gpt_free. */
ts_status ts_gpt_plan(ts_gpt *m, const ts_gpt_config *cfg, const ts_gpt_layout *lay);
/* GPT-2 initialisation from a seed (the same global values in every
 * layout): N(0, 0.02) weights, residual output projections scaled by
 * 1/sqrt(2L), zero biases, unit layernorm gains. */
ts_status ts_gpt_init_weights(ts_gpt *m, uint64_t seed);
/* x[0..n) from N(0, std^2), a stream that depends on seed only (Box-Muller on splitmix64). */
void ts_gpt_fill_normal(float *x, int64_t n, double std, uint64_t seed);
ts_status ts_gpt_zero_grad(ts_gpt *m);

/* The local tensor of (kind, global layer), or NULL if not held. */
const ts_gpt_tensor *ts_gpt_find(const ts_gpt *m, int kind, int64_t layer);
/* Views of that tensor's parameters or gradients (shape rows x cols). */
ts_status ts_gpt_param_view(const ts_gpt *m, const ts_gpt_tensor *t, int grads, ts_tensor *view);
/* Contiguous blob ranges of decayed matrices; returns the count (<= max). */
int ts_gpt_decay_ranges(const ts_gpt *m, int64_t (*ranges)[2], int max);
/* An optimizer step over the whole blob with this model's decay ranges. */
ts_status ts_gpt_optimizer_step(ts_gpt *m, ts_optimizer *o, float lr, float grad_scale);
/* The name of a global tensor in files ("h.3.attn.c_attn.weight"). */
const char *ts_gpt_tensor_name(int kind, int64_t layer, char *buf, size_t n);
/* Copy between a local slice and its global tensor (host arrays). */
void ts_gpt_slice_from_global(const ts_gpt_tensor *t, const float *global, float *local);
void ts_gpt_slice_to_global(const ts_gpt_tensor *t, const float *local, float *global);

/* ---- micro-batches (pipeline stages) ---- */
ts_status ts_gpt_acts_alloc(ts_gpt *m, ts_gpt_acts *a, int64_t B, int64_t T);
void ts_gpt_acts_free(ts_gpt_acts *a);
/* Forward of this process's part. The embedding stage reads tokens (host
 * i32 [B,T]); other stages read a->input, which the caller fills. The head
 * stage, given targets (host, negative = ignored), computes the losses;
 * with grad_weight != 0 it also puts d(grad_weight * sum of losses)/dlogits
 * in place of the logits for backward. *loss_sum and *valid (may be NULL)
 * receive the summed loss and the count of scored targets. A non-head
 * stage's output is ts_gpt_stage_output(). */
ts_status ts_gpt_stage_forward(ts_gpt *m, ts_gpt_acts *a, const int32_t *tokens,
                               const int32_t *targets, float grad_weight, double *loss_sum,
                               int64_t *valid);
ts_status ts_gpt_stage_output(ts_gpt *m, ts_gpt_acts *a, ts_tensor *out);
/* Backward of the last forward of a. The head stage starts from its fused
 * loss gradient; other stages from a->dres, which the caller fills with
 * d(output). Gradients accumulate into m->grads. Afterwards a->dres holds
 * d(input) (for the previous stage). */
ts_status ts_gpt_stage_backward(ts_gpt *m, ts_gpt_acts *a);

/* ---- one process, one micro-batch ---- */
/* Forward on tokens [B, T] (host i32). With targets also the mean
 * cross-entropy in *loss. Activations are kept for backward and for
 * ts_gpt_read_logits. */
ts_status ts_gpt_forward(ts_gpt *m, const int32_t *tokens, const int32_t *targets, int64_t B,
                         int64_t T, float *loss);
/* A training micro-step: forward with the loss gradient fused into the
 * cross-entropy (one pass over the logits), then backward.
 * grads += d(loss_scale * mean loss)/d(params); *loss is the mean loss. */
ts_status ts_gpt_forward_backward(ts_gpt *m, const int32_t *tokens, const int32_t *targets,
                                  int64_t B, int64_t T, float loss_scale, float *loss);
/* Backward of the last forward (which needs targets): grads +=
 * d(loss_scale * mean loss)/d(params). Overwrites the logits. */
ts_status ts_gpt_backward(ts_gpt *m, float loss_scale);
/* Logits of position (b, t) of the last forward, V floats (single layout). */
ts_status ts_gpt_read_logits(ts_gpt *m, int64_t b, int64_t t, float *out);

/* ---- features: the trunk without its output head (classifiers) ----
 * One process, the whole unsharded model. Activations without the
 * logits; then forward on tokens (host i32 [B, T]) up to the final
 * layernorm: a->lnf holds the features [B*T, C]. lengths (host i32 [B],
 * each 1..T; may be NULL when causal) are the real tokens of right-padded
 * sequences: with `bidirectional` every position attends to every real one
 * and padded keys are masked; causal attention needs no mask, since no real
 * position sees a later one. Padding never changes a real position's
 * features. Backward starts from dfeatures [B*T, C] = d(loss)/d(a->lnf)
 * and accumulates into m->grads (the tied embedding gets its input share). */
ts_status ts_gpt_acts_alloc_features(ts_gpt *m, ts_gpt_acts *a, int64_t B, int64_t T);
ts_status ts_gpt_features_forward(ts_gpt *m, ts_gpt_acts *a, const int32_t *tokens, const int32_t *lengths,
                                  int bidirectional);
ts_status ts_gpt_features_backward(ts_gpt *m, ts_gpt_acts *a, const ts_tensor *dfeatures);

/* ---- files (whole-model layout) ----
 * Weights as safetensors, one tensor per layer and kind ("h.3.mlp.c_fc.weight",
 * Linear layout [out, in]); the config is stored in the metadata.
 * extra_meta: NULL-terminated key, value pairs, may be NULL. */
ts_status ts_gpt_save(const ts_gpt *m, const char *path, const char *const *extra_meta);
/* Any blob laid out like the parameters (gradients, moments). */
ts_status ts_gpt_save_blob(const ts_gpt *m, const ts_tensor *blob, const char *path,
                           const char *const *extra_meta);
/* Several blobs in one file, each tensor's name behind its blob's prefix
 * ("m.", "v." for optimizer moments). */
ts_status ts_gpt_save_blobs(const ts_gpt *m, const ts_tensor *const *blobs,
                            const char *const *prefixes, int n, const char *path,
                            const char *const *extra_meta);
/* Add a blob laid out like the parameters to a safetensors writer, each
 * tensor named behind `prefix`, through views[m->ntensors] that must live
 * until the file is written (for files that hold more than the model). */
ts_status ts_gpt_writer_add(const ts_gpt *m, ts_st_writer *w, const ts_tensor *blob, const char *prefix,
                           ts_tensor *views);
/* The config as the JSON object stored in files' metadata "config". */
void ts_gpt_config_json(const ts_gpt_config *cfg, char *buf, size_t n);
/* Read a file's config (metadata "config"). */
ts_status ts_gpt_read_config(const char *path, ts_gpt_config *cfg);
/* Load this layout's slices of a file's global tensors (any layout: each
 * process reads what it holds). prefix: "" for weights, "m." / "v." for
 * optimizer moments stored under the same names. */
ts_status ts_gpt_load(ts_gpt *m, const char *path);
ts_status ts_gpt_load_blob(const ts_gpt *m, ts_tensor *blob, const char *path, const char *prefix);

#ifdef __cplusplus
}
#endif
#endif
