/* The whole GPT, and the sequence classifier built on its trunk, in double
 * precision on the host, from the reference ops, over parameter blobs laid
 * out as tessera's (ts_gpt.info; ts_classifier's trunk then head). */
#ifndef TESSERA_REFERENCE_MODEL_H
#define TESSERA_REFERENCE_MODEL_H

#include <stdint.h>

#include "tessera/classifier.h"
#include "tessera/gpt.h"

/* Mean cross-entropy over targets in [0, V). */
double ref_gpt_loss(const ts_gpt *layout, const double *params, const int32_t *tokens,
                    const int32_t *targets, int64_t B, int64_t T);

/* The classifier of tessera/classifier.h on B right-padded sequences of T
 * tokens with lengths[b] real ones: the trunk attends over the real keys
 * only (and causally unless c->cfg.bidirectional), pooling takes the last
 * real token's features or the mean of the real ones, then the head. The
 * class-weighted mean cross-entropy sum_b w_b * loss_b / sum_b w_b
 * (weights NULL: all 1); logits (may be NULL) receives [B, K]. */
double ref_classifier_loss(const ts_classifier *c, const double *params, const int32_t *tokens,
                           const int32_t *lengths, const int32_t *labels, const double *weights, int64_t B,
                           int64_t T, double *logits);
/* The same with character n-grams (ts_classifier_forward_ngrams): position
 * p adds rows ngrams[ngram_off[p] .. ngram_off[p+1]) of the table at
 * c->ngram_offset, each weighted 1/sqrt(count), to its embedding. */
double ref_classifier_loss_ngrams(const ts_classifier *c, const double *params, const int32_t *tokens,
                                  const int32_t *lengths, const int64_t *ngram_off, const int32_t *ngrams,
                                  const int32_t *labels, const double *weights, int64_t B, int64_t T, double *logits);

#endif
