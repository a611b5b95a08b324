/* A sequence classifier: the GPT trunk (tessera/gpt.h) up to its final
 * layernorm, a pooling of the token features into one vector per sequence,
 * and a linear head to class logits.
 *
 * Pooling: the last real token (causal models, as Hugging Face's
 * GPT2ForSequenceClassification), the mean over the real tokens, or each
 * channel's max over them (ts_pool_max_forward). The
 * trunk attends causally, or bidirectionally (encoder style: every token
 * sees every real token of its sequence). Sequences of a batch are padded
 * on the right to a common length T; padding never changes a result (it is
 * masked as a key, and pooling reads real tokens only).
 *
 * Parameters and gradients each live in one blob: the trunk laid out as
 * tessera/gpt.h lays out a GPT, then the head's weight [K, C] and bias [K].
 * Files name the trunk's tensors like a GPT's ("h.0.attn.c_attn.weight")
 * and the head "score.weight", "score.bias", so a language model's
 * checkpoint initialises the trunk and any GPT reader finds it. */
#ifndef TESSERA_CLASSIFIER_H
#define TESSERA_CLASSIFIER_H

#include <stdint.h>

#include "tessera/gpt.h"
#include "tessera/optimizer.h"
#include "tessera/status.h"
#include "tessera/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* the head reads the last real token's features, their mean, or their
 * per-channel max over the real tokens */
typedef enum ts_pool { TS_POOL_LAST = 0, TS_POOL_MEAN = 1, TS_POOL_MAX = 2 } ts_pool;

typedef struct ts_classifier_config {
    ts_gpt_config gpt;        /* the trunk */
    int64_t n_classes;        /* K, 2 to 65536 */
    ts_pool pool;
    int bidirectional;        /* 0: causal attention */
    int64_t char_ngrams;      /* buckets of hashed character n-grams added to each token's
                               * embedding (fastText's subwords), 0 = none */
} ts_classifier_config;

/* Most n-grams one token reads (a long word keeps its beginning's). */
#define TS_CLASSIFIER_MAX_NGRAMS 64

typedef struct ts_classifier {
    ts_classifier_config cfg;
    ts_device *device;
    ts_gpt trunk;             /* its params and grads are views of the blobs below */
    int64_t num_params;       /* trunk and head */
    int64_t head_offset;      /* the head's weight [K, C] starts here, its bias [K] follows */
    int64_t ngram_offset;     /* then the n-gram table [char_ngrams, C] (num_params when none) */
    ts_tensor params, grads;  /* flat blobs */
    ts_tensor head_w, head_b, head_dw, head_db;
    ts_tensor ngram_w, ngram_dw;
    /* the last forward: its shape, activations and pooling */
    int64_t B, T;
    ts_gpt_acts acts;
    ts_tensor pool;           /* [B, 1, T] pooling weights (last, mean) */
    ts_tensor lengths;        /* i32 [B]; max pooling's */
    ts_tensor argmax;         /* i32 [B, C]: each channel's position under max pooling */
    ts_tensor pooled;         /* [B, C] */
    ts_tensor logits;         /* [B, K]; its gradient in backward */
    ts_tensor dpooled;        /* [B, C] */
    ts_tensor dfeatures;      /* [B*T, C] */
    float *host_pool;         /* [B * T] */
    /* the language-model loss of the last forward (ts_classifier_lm_loss) */
    ts_tensor lm_logits;      /* [rows, V] for a chunk of rows; their gradient after */
    ts_tensor lm_targets;     /* i32 [B*T]: the next token, or -1 */
    ts_tensor dlm;            /* [B*T, C] its gradient of the features */
    int lm_pending;           /* dlm waits for the next backward */
    int32_t *host_targets;    /* [B * T] */
    /* subwords of the last forward: each position's n-gram rows, K per
     * position (padded with weight 0), summed with weights 1/sqrt(count) */
    int64_t ngram_k, ngram_cap;
    ts_tensor ngram_ids;      /* i32 [B*T*K] */
    ts_tensor ngram_weights;  /* [B*T*K] */
    ts_tensor ngram_sum;      /* [B*T, C] */
    int32_t *host_ngram_ids;
    float *host_ngram_weights;
} ts_classifier;

ts_status ts_classifier_config_check(const ts_classifier_config *cfg);
const char *ts_pool_name(ts_pool pool);
int ts_pool_parse(const char *name); /* -1 if unknown */

/* Allocate parameters and gradients (gradients zeroed). */
ts_status ts_classifier_create(ts_classifier *c, ts_device *dev, const ts_classifier_config *cfg);
void ts_classifier_free(ts_classifier *c);
/* The trunk as ts_gpt_init_weights makes it from seed; the head zero (the
 * first loss is ln K). */
ts_status ts_classifier_init_weights(ts_classifier *c, uint64_t seed);
ts_status ts_classifier_zero_grad(ts_classifier *c);
/* Blob ranges that weight decay applies to: the trunk's matrices and the
 * head's weight. Returns the count (<= max). */
int ts_classifier_decay_ranges(const ts_classifier *c, int64_t (*ranges)[2], int max);
/* One optimizer update of the whole blob (o made for num_params elements)
 * from grads * grad_scale, the trunk at trunk_lr and the head at head_lr
 * (trunk_lr 0 leaves the trunk as it is: a linear probe). */
ts_status ts_classifier_optimizer_step(ts_classifier *c, ts_optimizer *o, float trunk_lr, float head_lr,
                                       float grad_scale);

/* Forward on B right-padded sequences of T tokens (host i32 [B, T]; pad
 * with any token in the vocabulary) with lengths[b] in 1..T real tokens:
 * the class logits (host, [B, K]). Activations are kept for backward. */
ts_status ts_classifier_forward(ts_classifier *c, const int32_t *tokens, const int32_t *lengths, int64_t B,
                                int64_t T, float *logits);
/* The same for a classifier with character n-grams: position p = b*T + t
 * reads rows ngrams[ngram_off[p] .. ngram_off[p+1]) of the n-gram table
 * (at most TS_CLASSIFIER_MAX_NGRAMS, each in [0, char_ngrams); a position
 * may have none), summed with weights 1/sqrt(count) into its token's
 * embedding. ts_classifier_forward is this with no n-grams anywhere. */
ts_status ts_classifier_forward_ngrams(ts_classifier *c, const int32_t *tokens, const int32_t *lengths,
                                       const int64_t *ngram_off, const int32_t *ngrams, int64_t B, int64_t T,
                                       float *logits);
/* The language-model loss of the last forward's sequences, as GPT-1 adds
 * it while fine-tuning: each real token but the last predicts the next
 * through the trunk's tied output head (logits = features @ wte^T). Sets
 * *loss_sum to the sum of their cross-entropies and *count to how many
 * there are. With weight != 0 the gradient of weight * loss_sum is taken:
 * wte's share goes into grads now, the features' share into the next
 * ts_classifier_backward. Causal trunks only (bidirectional attention sees
 * the token it would predict). */
ts_status ts_classifier_lm_loss(ts_classifier *c, const int32_t *tokens, const int32_t *lengths, float weight,
                                double *loss_sum, int64_t *count);
/* Backward of the last forward from d(loss)/d(logits) (host, [B, K]):
 * grads += d(loss)/d(params). */
ts_status ts_classifier_backward(ts_classifier *c, const float *dlogits);

/* Cross-entropy over classes on the host, in double precision. For each
 * row b with label labels[b] in [0, K) and weight w = weights ?
 * weights[b] : 1: loss_b = -log softmax(logits_b)[label]; *loss_sum =
 * sum_b w * loss_b; dlogits (may be NULL) = scale * w * (softmax - onehot).
 * A label outside [0, K) is ignored (no loss, zero gradient). probs (may
 * be NULL, labels may then be NULL) receives the softmax. */
void ts_classifier_cross_entropy(const float *logits, int64_t B, int64_t K, const int32_t *labels,
                                 const float *weights, double scale, double *loss_sum, float *dlogits,
                                 float *probs);

/* ---- files ----
 * Weights as safetensors: the trunk's tensors under their GPT names, the
 * head as "score.weight" [K, C] and "score.bias" [K]; metadata "config"
 * (the trunk, as a GPT's) and "classifier" (classes, pooling, attention).
 * A blob laid out like the parameters (moments) is saved the same way with
 * a prefix per blob. extra_meta: NULL-terminated key, value pairs. */
ts_status ts_classifier_save_blobs(const ts_classifier *c, const ts_tensor *const *blobs,
                                   const char *const *prefixes, int n, const char *path,
                                   const char *const *extra_meta);
ts_status ts_classifier_save(const ts_classifier *c, const char *path, const char *const *extra_meta);
/* A classifier file's config; an error naming the file if it is a plain
 * GPT's or damaged. */
ts_status ts_classifier_read_config(const char *path, ts_classifier_config *cfg);
/* Every weight of a classifier file made with this config. */
ts_status ts_classifier_load(ts_classifier *c, const char *path);
ts_status ts_classifier_load_blob(const ts_classifier *c, ts_tensor *blob, const char *path, const char *prefix);
/* The trunk from a language model's (or classifier's) weight file whose
 * GPT config equals the trunk's; the head is left as it is. */
ts_status ts_classifier_load_trunk(ts_classifier *c, const char *path);

#ifdef __cplusplus
}
#endif
#endif
