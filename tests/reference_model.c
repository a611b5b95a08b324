#include "reference_model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "reference.h"

static const double *P(const ts_gpt *m, const double *params, int which, int64_t layer)
{
    int per_layer = which >= TS_GPT_QKVW && which <= TS_GPT_FCPROJB;
    return params + ts_gpt_find(m, which, per_layer ? layer : -1)->offset;
}

static void layernorm(double *out, const double *x, const double *w, const double *b, int64_t N, int64_t C)
{
    ref_layernorm_forward(out, NULL, NULL, x, w, b, N, C, 1e-5);
}

/* The trunk up to its final layernorm: features [B*T, C]. Attention sees
 * keys s < lengths[b] (lengths NULL: all T), and s <= t when causal. */
static void trunk(const ts_gpt *m, const double *params, const int32_t *tokens, const int32_t *lengths, bool causal,
                  int64_t B, int64_t T, const double *input_add, double *feat)
{
    const ts_gpt_config *c = &m->cfg;
    int64_t C = c->n_embd, V = c->vocab_size, N = B * T;
    double *x = malloc((size_t)(N * C) * sizeof *x), *h = malloc((size_t)(N * C) * sizeof *h);
    double *qkv = malloc((size_t)(N * 3 * C) * sizeof *qkv), *y = malloc((size_t)(N * C) * sizeof *y);
    double *f = malloc((size_t)(N * 4 * C) * sizeof *f), *g = malloc((size_t)(N * 4 * C) * sizeof *g);
    ref_embedding_forward(x, tokens, P(m, params, TS_GPT_WTE, -1), P(m, params, TS_GPT_WPE, -1), N, T, C, V, 0);
    for (int64_t i = 0; input_add && i < N * C; i++) x[i] += input_add[i];
    for (int64_t l = 0; l < c->n_layer; l++) {
        layernorm(h, x, P(m, params, TS_GPT_LN1W, l), P(m, params, TS_GPT_LN1B, l), N, C);
        ref_gemm(qkv, h, P(m, params, TS_GPT_QKVW, l), P(m, params, TS_GPT_QKVB, l), 1, N, 3 * C, C, false, true, 1, 0, 0);
        ref_attention_masked_forward(y, qkv, B, T, C, c->n_head, lengths, causal);
        ref_gemm(h, y, P(m, params, TS_GPT_ATTPROJW, l), P(m, params, TS_GPT_ATTPROJB, l), 1, N, C, C, false, true, 1, 0, 0);
        for (int64_t i = 0; i < N * C; i++) x[i] += h[i];
        layernorm(h, x, P(m, params, TS_GPT_LN2W, l), P(m, params, TS_GPT_LN2B, l), N, C);
        ref_gemm(f, h, P(m, params, TS_GPT_FCW, l), P(m, params, TS_GPT_FCB, l), 1, N, 4 * C, C, false, true, 1, 0, 0);
        ref_gelu_forward(g, f, N * 4 * C);
        ref_gemm(h, g, P(m, params, TS_GPT_FCPROJW, l), P(m, params, TS_GPT_FCPROJB, l), 1, N, C, 4 * C, false, true, 1, 0, 0);
        for (int64_t i = 0; i < N * C; i++) x[i] += h[i];
    }
    layernorm(feat, x, P(m, params, TS_GPT_LNFW, -1), P(m, params, TS_GPT_LNFB, -1), N, C);
    free(x), free(h), free(qkv), free(y), free(f), free(g);
}

double ref_gpt_loss(const ts_gpt *m, const double *params, const int32_t *tokens, const int32_t *targets,
                    int64_t B, int64_t T)
{
    const ts_gpt_config *c = &m->cfg;
    int64_t C = c->n_embd, V = c->vocab_size, N = B * T;
    double *h = malloc((size_t)(N * C) * sizeof *h);
    double *logits = malloc((size_t)(N * V) * sizeof *logits), *losses = malloc((size_t)N * sizeof *losses);
    trunk(m, params, tokens, NULL, true, B, T, NULL, h);
    ref_gemm(logits, h, P(m, params, TS_GPT_WTE, -1), NULL, 1, N, V, C, false, true, 1, 0, 0);
    ref_cross_entropy(losses, NULL, NULL, logits, targets, N, V, 1.0);
    double sum = 0;
    int64_t valid = 0;
    for (int64_t i = 0; i < N; i++)
        if (targets[i] >= 0 && targets[i] < V) sum += losses[i], valid++;
    free(h), free(logits), free(losses);
    return valid ? sum / (double)valid : 0.0;
}

double ref_classifier_loss(const ts_classifier *c, const double *params, const int32_t *tokens,
                           const int32_t *lengths, const int32_t *labels, const double *weights, int64_t B,
                           int64_t T, double *logits)
{
    return ref_classifier_loss_ngrams(c, params, tokens, lengths, NULL, NULL, labels, weights, B, T, logits);
}

double ref_classifier_loss_ngrams(const ts_classifier *c, const double *params, const int32_t *tokens,
                                  const int32_t *lengths, const int64_t *ngram_off, const int32_t *ngrams,
                                  const int32_t *labels, const double *weights, int64_t B, int64_t T, double *logits)
{
    int64_t C = c->cfg.gpt.n_embd, K = c->cfg.n_classes;
    double *feat = malloc((size_t)(B * T * C) * sizeof *feat), *pooled = calloc((size_t)(B * C), sizeof *pooled);
    double *z = malloc((size_t)(B * K) * sizeof *z), *add = NULL;
    if (ngram_off) { /* each position's n-gram rows, weighted 1/sqrt(count) */
        add = calloc((size_t)(B * T * C), sizeof *add);
        for (int64_t p = 0; p < B * T; p++)
            for (int64_t j = ngram_off[p]; j < ngram_off[p + 1]; j++)
                for (int64_t i = 0; i < C; i++)
                    add[p * C + i] += params[c->ngram_offset + ngrams[j] * C + i] /
                                      sqrt((double)(ngram_off[p + 1] - ngram_off[p]));
    }
    trunk(&c->trunk, params, tokens, lengths, !c->cfg.bidirectional, B, T, add, feat);
    free(add);
    for (int64_t b = 0; b < B; b++) {
        int64_t len = lengths[b];
        if (c->cfg.pool == TS_POOL_LAST)
            memcpy(pooled + b * C, feat + (b * T + len - 1) * C, (size_t)C * sizeof *pooled);
        else if (c->cfg.pool == TS_POOL_MAX)
            for (int64_t i = 0; i < C; i++) {
                double m = feat[b * T * C + i];
                for (int64_t t = 1; t < len; t++) { /* the op's rule: a NaN wins */
                    double v = feat[(b * T + t) * C + i];
                    if (v > m || (isnan(v) && !isnan(m))) m = v;
                }
                pooled[b * C + i] = m;
            }
        else
            for (int64_t t = 0; t < len; t++)
                for (int64_t i = 0; i < C; i++) pooled[b * C + i] += feat[(b * T + t) * C + i] / (double)len;
    }
    const double *hw = params + c->head_offset, *hb = hw + K * C;
    ref_gemm(z, pooled, hw, hb, 1, B, K, C, false, true, 1, 0, 0);
    double sum = 0, wsum = 0;
    for (int64_t b = 0; b < B; b++) {
        double m = -INFINITY, s = 0, w = weights ? weights[b] : 1.0;
        for (int64_t k = 0; k < K; k++) m = fmax(m, z[b * K + k]);
        for (int64_t k = 0; k < K; k++) s += exp(z[b * K + k] - m);
        sum += w * (m + log(s) - z[b * K + labels[b]]);
        wsum += w;
    }
    if (logits) memcpy(logits, z, (size_t)(B * K) * sizeof *logits);
    free(feat), free(pooled), free(z);
    return sum / wsum;
}
