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

double ref_gpt_loss(const ts_gpt *m, const double *params, const int32_t *tokens, const int32_t *targets,
                    int64_t B, int64_t T)
{
    const ts_gpt_config *c = &m->cfg;
    int64_t C = c->n_embd, V = c->vocab_size, N = B * T;
    double *x = malloc((size_t)(N * C) * sizeof *x), *h = malloc((size_t)(N * C) * sizeof *h);
    double *qkv = malloc((size_t)(N * 3 * C) * sizeof *qkv), *y = malloc((size_t)(N * C) * sizeof *y);
    double *f = malloc((size_t)(N * 4 * C) * sizeof *f), *g = malloc((size_t)(N * 4 * C) * sizeof *g);
    double *logits = malloc((size_t)(N * V) * sizeof *logits), *losses = malloc((size_t)N * sizeof *losses);
    ref_embedding_forward(x, tokens, P(m, params, TS_GPT_WTE, -1), P(m, params, TS_GPT_WPE, -1), N, T, C, V, 0);
    for (int64_t l = 0; l < c->n_layer; l++) {
        layernorm(h, x, P(m, params, TS_GPT_LN1W, l), P(m, params, TS_GPT_LN1B, l), N, C);
        ref_gemm(qkv, h, P(m, params, TS_GPT_QKVW, l), P(m, params, TS_GPT_QKVB, l), 1, N, 3 * C, C, false, true, 1, 0, 0);
        ref_attention_forward(y, qkv, B, T, C, c->n_head);
        ref_gemm(h, y, P(m, params, TS_GPT_ATTPROJW, l), P(m, params, TS_GPT_ATTPROJB, l), 1, N, C, C, false, true, 1, 0, 0);
        for (int64_t i = 0; i < N * C; i++) x[i] += h[i];
        layernorm(h, x, P(m, params, TS_GPT_LN2W, l), P(m, params, TS_GPT_LN2B, l), N, C);
        ref_gemm(f, h, P(m, params, TS_GPT_FCW, l), P(m, params, TS_GPT_FCB, l), 1, N, 4 * C, C, false, true, 1, 0, 0);
        ref_gelu_forward(g, f, N * 4 * C);
        ref_gemm(h, g, P(m, params, TS_GPT_FCPROJW, l), P(m, params, TS_GPT_FCPROJB, l), 1, N, C, 4 * C, false, true, 1, 0, 0);
        for (int64_t i = 0; i < N * C; i++) x[i] += h[i];
    }
    layernorm(h, x, P(m, params, TS_GPT_LNFW, -1), P(m, params, TS_GPT_LNFB, -1), N, C);
    ref_gemm(logits, h, P(m, params, TS_GPT_WTE, -1), NULL, 1, N, V, C, false, true, 1, 0, 0);
    ref_cross_entropy(losses, NULL, NULL, logits, targets, N, V, 1.0);
    double sum = 0;
    int64_t valid = 0;
    for (int64_t i = 0; i < N; i++)
        if (targets[i] >= 0 && targets[i] < V) sum += losses[i], valid++;
    free(x), free(h), free(qkv), free(y), free(f), free(g), free(logits), free(losses);
    return valid ? sum / (double)valid : 0.0;
}
