#include "tessera/classifier.h"
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "tessera/device.h"
#include "tessera/safetensors.h"

/* ---- configuration ---- */

const char *ts_pool_name(ts_pool pool) { return pool == TS_POOL_MAX ? "max" : pool == TS_POOL_MEAN ? "mean" : "last"; }

int ts_pool_parse(const char *name)
{
    if (!strcmp(name, "last")) return TS_POOL_LAST;
    if (!strcmp(name, "mean")) return TS_POOL_MEAN;
    if (!strcmp(name, "max")) return TS_POOL_MAX;
    return -1;
}

ts_status ts_classifier_config_check(const ts_classifier_config *cfg)
{
    TRY(ts_gpt_config_check(&cfg->gpt));
    if (cfg->n_classes < 2 || cfg->n_classes > 65536)
        return ts_error(TS_ERR_INVALID_ARG, "a classifier needs 2 to 65536 classes, not %lld", (long long)cfg->n_classes);
    if (cfg->pool != TS_POOL_LAST && cfg->pool != TS_POOL_MEAN && cfg->pool != TS_POOL_MAX)
        return ts_error(TS_ERR_INVALID_ARG, "unknown pooling %d", (int)cfg->pool);
    if (cfg->char_ngrams < 0 || cfg->char_ngrams > (1 << 24))
        return ts_error(TS_ERR_INVALID_ARG, "character n-grams need 0 (none) to 16777216 buckets, not %lld",
                        (long long)cfg->char_ngrams);
    return TS_OK;
}

/* ---- lifecycle ---- */

static void free_shape(ts_classifier *c)
{
    ts_gpt_acts_free(&c->acts);
    ts_tensor_free(&c->pool);
    ts_tensor_free(&c->lengths);
    ts_tensor_free(&c->argmax);
    ts_tensor_free(&c->pooled);
    ts_tensor_free(&c->logits);
    ts_tensor_free(&c->dpooled);
    ts_tensor_free(&c->dfeatures);
    ts_tensor_free(&c->lm_targets);
    ts_tensor_free(&c->dlm);
    free(c->host_pool);
    free(c->host_targets);
    c->host_pool = NULL;
    c->host_targets = NULL;
    ts_tensor_free(&c->ngram_ids);
    ts_tensor_free(&c->ngram_weights);
    ts_tensor_free(&c->ngram_sum);
    free(c->host_ngram_ids);
    free(c->host_ngram_weights);
    c->host_ngram_ids = NULL;
    c->host_ngram_weights = NULL;
    c->ngram_k = c->ngram_cap = 0;
    c->lm_pending = 0;
    c->B = c->T = 0;
}

void ts_classifier_free(ts_classifier *c)
{
    free_shape(c);
    ts_tensor_free(&c->lm_logits);
    ts_gpt_free(&c->trunk);
    ts_tensor_free(&c->params);
    ts_tensor_free(&c->grads);
    memset(c, 0, sizeof *c);
}

ts_status ts_classifier_create(ts_classifier *c, ts_device *dev, const ts_classifier_config *cfg)
{
    memset(c, 0, sizeof *c);
    TRY(ts_classifier_config_check(cfg));
    c->cfg = *cfg;
    c->device = dev;
    ts_gpt_layout lay;
    ts_gpt_layout_single(&cfg->gpt, &lay);
    /* the trunk's table without its own storage: it lives in our blobs */
    TRY(ts_gpt_plan(&c->trunk, &cfg->gpt, &lay));
    int64_t C = cfg->gpt.n_embd, K = cfg->n_classes;
    c->head_offset = c->trunk.num_params;
    c->ngram_offset = c->head_offset + K * C + K;
    c->num_params = c->ngram_offset + cfg->char_ngrams * C;
    ts_status st = ts_tensor_alloc(&c->params, dev, TS_F32, TS_SHAPE(c->num_params));
    if (!st) st = ts_tensor_zeros(&c->grads, dev, TS_F32, TS_SHAPE(c->num_params));
    if (!st) st = ts_tensor_view(&c->trunk.params, &c->params, 0, TS_SHAPE(c->head_offset));
    if (!st) st = ts_tensor_view(&c->trunk.grads, &c->grads, 0, TS_SHAPE(c->head_offset));
    if (!st) st = ts_tensor_view(&c->head_w, &c->params, c->head_offset, TS_SHAPE(K, C));
    if (!st) st = ts_tensor_view(&c->head_b, &c->params, c->head_offset + K * C, TS_SHAPE(K));
    if (!st) st = ts_tensor_view(&c->head_dw, &c->grads, c->head_offset, TS_SHAPE(K, C));
    if (!st) st = ts_tensor_view(&c->head_db, &c->grads, c->head_offset + K * C, TS_SHAPE(K));
    if (!st && cfg->char_ngrams) st = ts_tensor_view(&c->ngram_w, &c->params, c->ngram_offset, TS_SHAPE(cfg->char_ngrams, C));
    if (!st && cfg->char_ngrams) st = ts_tensor_view(&c->ngram_dw, &c->grads, c->ngram_offset, TS_SHAPE(cfg->char_ngrams, C));
    c->trunk.device = dev;
    c->trunk.bidirectional = cfg->bidirectional;
    if (st) {
        ts_classifier_free(c);
        return ts_error_context(st, "creating a classifier of %lld parameters", (long long)(c->num_params));
    }
    return TS_OK;
}

ts_status ts_classifier_zero_grad(ts_classifier *c) { return ts_fill(&c->grads, 0.0f); }

ts_status ts_classifier_init_weights(ts_classifier *c, uint64_t seed)
{
    TRY(ts_gpt_init_weights(&c->trunk, seed));
    TRY(ts_fill(&c->head_w, 0.0f));
    TRY(ts_fill(&c->head_b, 0.0f));
    if (c->cfg.char_ngrams) {
        /* small like the token embedding (std 0.02), its own stream */
        int64_t n = c->cfg.char_ngrams * c->cfg.gpt.n_embd;
        float *x = malloc((size_t)n * sizeof *x);
        if (!x) return ts_error(TS_ERR_OOM, "no host memory to initialise the n-gram table");
        ts_gpt_fill_normal(x, n, 0.02, seed * 1000003ull + 0x6e6772616d73ull);
        ts_status st = ts_tensor_write(&c->ngram_w, x, (size_t)n * sizeof *x);
        free(x);
        TRY(st);
    }
    return ts_classifier_zero_grad(c);
}

int ts_classifier_decay_ranges(const ts_classifier *c, int64_t (*ranges)[2], int max)
{
    int n = ts_gpt_decay_ranges(&c->trunk, ranges, max);
    int64_t a = c->head_offset, b = a + c->cfg.n_classes * c->cfg.gpt.n_embd;
    if (n > 0 && ranges[n - 1][1] == a) ranges[n - 1][1] = b;
    else if (n < max) ranges[n][0] = a, ranges[n][1] = b, n++;
    /* the n-gram table decays like the token embedding */
    if (c->cfg.char_ngrams && n < max) ranges[n][0] = c->ngram_offset, ranges[n][1] = c->num_params, n++;
    return n;
}

/* Update blob elements [a, b) as a shard of o at the given step. */
static ts_status step_range(ts_classifier *c, const ts_optimizer *o, int64_t a, int64_t b,
                            const int64_t (*ranges)[2], int n, float lr, float grad_scale)
{
    ts_optimizer part = *o;
    ts_tensor pv, gv;
    part.n = b - a;
    TRY(ts_tensor_view(&pv, &c->params, a, TS_SHAPE(b - a)));
    TRY(ts_tensor_view(&gv, &c->grads, a, TS_SHAPE(b - a)));
    if (o->m.block) TRY(ts_tensor_view(&part.m, &o->m, a, TS_SHAPE(b - a)));
    if (o->v.block) TRY(ts_tensor_view(&part.v, &o->v, a, TS_SHAPE(b - a)));
    return ts_optimizer_step(&part, &pv, &gv, a, ranges, n, lr, grad_scale);
}

ts_status ts_classifier_optimizer_step(ts_classifier *c, ts_optimizer *o, float trunk_lr, float head_lr,
                                       float grad_scale)
{
    if (o->n != c->num_params)
        return ts_error(TS_ERR_SHAPE, "an optimizer of %lld elements for a classifier of %lld parameters",
                        (long long)o->n, (long long)c->num_params);
    int max = c->trunk.ntensors + 3;
    int64_t(*ranges)[2] = malloc((size_t)max * sizeof *ranges);
    if (!ranges) return ts_error(TS_ERR_OOM, "no memory");
    int n = ts_classifier_decay_ranges(c, ranges, max);
    const int64_t(*r)[2] = (const int64_t(*)[2])ranges;
    ts_status st = TS_OK;
    if (trunk_lr == head_lr) st = step_range(c, o, 0, c->num_params, r, n, head_lr, grad_scale);
    else {
        if (trunk_lr > 0.0f) st = step_range(c, o, 0, c->head_offset, r, n, trunk_lr, grad_scale);
        if (!st) st = step_range(c, o, c->head_offset, c->num_params, r, n, head_lr, grad_scale);
    }
    if (!st) o->step++;
    free(ranges);
    return st;
}

/* ---- forward and backward ---- */

/* Activations and pooling tensors for a batch of B x T. */
static ts_status ensure_shape(ts_classifier *c, int64_t B, int64_t T)
{
    if (c->B == B && c->T == T) return TS_OK;
    free_shape(c);
    int64_t C = c->cfg.gpt.n_embd, K = c->cfg.n_classes;
    ts_status st = ts_gpt_acts_alloc_features(&c->trunk, &c->acts, B, T);
    int max = c->cfg.pool == TS_POOL_MAX; /* its own op; the others a product with pooling weights */
    if (!st && !max) st = ts_tensor_alloc(&c->pool, c->device, TS_F32, TS_SHAPE(B, 1, T));
    if (!st && max) st = ts_tensor_alloc(&c->lengths, c->device, TS_I32, TS_SHAPE(B));
    if (!st && max) st = ts_tensor_alloc(&c->argmax, c->device, TS_I32, TS_SHAPE(B, C));
    if (!st) st = ts_tensor_alloc(&c->pooled, c->device, TS_F32, TS_SHAPE(B, C));
    if (!st) st = ts_tensor_alloc(&c->logits, c->device, TS_F32, TS_SHAPE(B, K));
    if (!st) st = ts_tensor_alloc(&c->dpooled, c->device, TS_F32, TS_SHAPE(B, C));
    if (!st) st = ts_tensor_alloc(&c->dfeatures, c->device, TS_F32, TS_SHAPE(B * T, C));
    if (!st && !max && !(c->host_pool = malloc((size_t)(B * T) * sizeof *c->host_pool)))
        st = ts_error(TS_ERR_OOM, "no memory");
    if (st) {
        free_shape(c);
        return ts_error_context(st, "classifier activations for %lld x %lld tokens", (long long)B, (long long)T);
    }
    c->B = B, c->T = T;
    return TS_OK;
}

/* Room for K n-grams per position of the current shape (N positions). */
static ts_status ngram_buffers(ts_classifier *c, int64_t N, int64_t K)
{
    if (K <= c->ngram_cap) return TS_OK;
    int64_t C = c->cfg.gpt.n_embd;
    ts_tensor_free(&c->ngram_ids);
    ts_tensor_free(&c->ngram_weights);
    free(c->host_ngram_ids);
    free(c->host_ngram_weights);
    c->ngram_cap = 0;
    c->host_ngram_ids = malloc((size_t)(N * K) * sizeof *c->host_ngram_ids);
    c->host_ngram_weights = malloc((size_t)(N * K) * sizeof *c->host_ngram_weights);
    ts_status st = c->host_ngram_ids && c->host_ngram_weights ? TS_OK : ts_error(TS_ERR_OOM, "no memory");
    if (!st) st = ts_tensor_alloc(&c->ngram_ids, c->device, TS_I32, TS_SHAPE(N * K));
    if (!st) st = ts_tensor_alloc(&c->ngram_weights, c->device, TS_F32, TS_SHAPE(N * K));
    if (!st && !c->ngram_sum.block) st = ts_tensor_alloc(&c->ngram_sum, c->device, TS_F32, TS_SHAPE(N, C));
    if (st) return ts_error_context(st, "n-gram buffers for %lld positions of %lld n-grams", (long long)N, (long long)K);
    c->ngram_cap = K;
    return TS_OK;
}

/* Each position's n-gram rows summed into ngram_sum, which the trunk adds
 * to the embedding: sum[p] = sum_j w_p * table[ngrams[off[p] + j]] with
 * w_p = 1/sqrt(count), as an embedding bag of K entries per position
 * (padding entries weigh 0). */
static ts_status ngram_forward(ts_classifier *c, const int64_t *off, const int32_t *ngrams, int64_t N)
{
    c->acts.input_add = NULL;
    c->ngram_k = 0;
    int64_t G = c->cfg.char_ngrams, K = 0;
    for (int64_t p = 0; off && p < N; p++) {
        int64_t n = off[p + 1] - off[p];
        if (n < 0 || n > TS_CLASSIFIER_MAX_NGRAMS)
            return ts_error(TS_ERR_INVALID_ARG, "classifier: position %lld has %lld n-grams (0 to %d)", (long long)p,
                            (long long)n, TS_CLASSIFIER_MAX_NGRAMS);
        for (int64_t j = off[p]; j < off[p + 1]; j++)
            if (ngrams[j] < 0 || ngrams[j] >= G)
                return ts_error(TS_ERR_INVALID_ARG, "classifier: n-gram %d at position %lld is outside the table [0, %lld)",
                                ngrams[j], (long long)p, (long long)G);
        if (n > K) K = n;
    }
    if (K == 0) return TS_OK;
    TRY(ngram_buffers(c, N, K));
    for (int64_t p = 0; p < N; p++) {
        int64_t n = off[p + 1] - off[p];
        float w = n ? (float)(1.0 / sqrt((double)n)) : 0.0f;
        for (int64_t j = 0; j < K; j++) {
            c->host_ngram_ids[p * K + j] = j < n ? ngrams[off[p] + j] : 0;
            c->host_ngram_weights[p * K + j] = j < n ? w : 0.0f;
        }
    }
    ts_tensor ids, w;
    TRY(ts_tensor_view(&ids, &c->ngram_ids, 0, TS_SHAPE(N, K)));
    TRY(ts_tensor_view(&w, &c->ngram_weights, 0, TS_SHAPE(N, K)));
    TRY(ts_tensor_write(&ids, c->host_ngram_ids, (size_t)(N * K) * sizeof *c->host_ngram_ids));
    TRY(ts_tensor_write(&w, c->host_ngram_weights, (size_t)(N * K) * sizeof *c->host_ngram_weights));
    TRY(ts_embedding_bag_forward(&c->ngram_sum, &ids, &w, &c->ngram_w));
    c->ngram_k = K;
    c->acts.input_add = &c->ngram_sum;
    return TS_OK;
}

/* table gradient: w_p * dinput[p] added to each of p's rows */
static ts_status ngram_backward(ts_classifier *c)
{
    int64_t N = c->B * c->T, K = c->ngram_k;
    if (!K) return TS_OK;
    ts_tensor ids, w;
    TRY(ts_tensor_view(&ids, &c->ngram_ids, 0, TS_SHAPE(N, K)));
    TRY(ts_tensor_view(&w, &c->ngram_weights, 0, TS_SHAPE(N, K)));
    return ts_embedding_bag_backward(&c->ngram_dw, &c->acts.dres, &ids, &w);
}

ts_status ts_classifier_forward(ts_classifier *c, const int32_t *tokens, const int32_t *lengths, int64_t B,
                                int64_t T, float *logits)
{
    return ts_classifier_forward_ngrams(c, tokens, lengths, NULL, NULL, B, T, logits);
}

ts_status ts_classifier_forward_ngrams(ts_classifier *c, const int32_t *tokens, const int32_t *lengths,
                                       const int64_t *ngram_off, const int32_t *ngrams, int64_t B, int64_t T,
                                       float *logits)
{
    if (B < 1 || T < 1 || T > c->cfg.gpt.max_seq_len)
        return ts_error(TS_ERR_SHAPE, "classifier: a batch of %lld x %lld tokens (T must be 1..%lld)", (long long)B,
                        (long long)T, (long long)c->cfg.gpt.max_seq_len);
    for (int64_t b = 0; b < B; b++)
        if (lengths[b] < 1 || lengths[b] > T)
            return ts_error(TS_ERR_INVALID_ARG, "classifier: sequence %lld has %d tokens, outside 1..%lld",
                            (long long)b, lengths[b], (long long)T);
    TRY(ensure_shape(c, B, T));
    int64_t C = c->cfg.gpt.n_embd;
    c->lm_pending = 0;
    if (ngram_off && !c->cfg.char_ngrams && ngram_off[B * T] > ngram_off[0])
        return ts_error(TS_ERR_INVALID_ARG, "classifier: n-grams given to a classifier without an n-gram table");
    TRY(ngram_forward(c, ngram_off, ngrams, B * T));
    TRY(ts_gpt_features_forward(&c->trunk, &c->acts, tokens, lengths, c->cfg.bidirectional));
    ts_tensor feats, pooled3;
    TRY(ts_tensor_reshape(&feats, &c->acts.lnf, TS_SHAPE(B, T, C)));
    if (c->cfg.pool == TS_POOL_MAX) {
        TRY(ts_tensor_write(&c->lengths, lengths, (size_t)B * sizeof *lengths));
        TRY(ts_pool_max_forward(&c->pooled, &c->argmax, &feats, &c->lengths));
    } else {
        /* pooled[b] = sum_t pool[b, t] * features[b, t]: the last real
         * token, or the mean of the real ones */
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = 0; t < T; t++)
                c->host_pool[b * T + t] = c->cfg.pool == TS_POOL_LAST ? (t == lengths[b] - 1 ? 1.0f : 0.0f)
                                          : t < lengths[b]            ? 1.0f / (float)lengths[b]
                                                                      : 0.0f;
        TRY(ts_tensor_write(&c->pool, c->host_pool, (size_t)(B * T) * sizeof *c->host_pool));
        TRY(ts_tensor_reshape(&pooled3, &c->pooled, TS_SHAPE(B, 1, C)));
        TRY(ts_matmul(&pooled3, &c->pool, &feats, false, false, 1.0f, 0.0f));
    }
    TRY(ts_linear_forward(&c->logits, &c->pooled, &c->head_w, &c->head_b));
    return ts_tensor_read(&c->logits, logits, (size_t)(B * c->cfg.n_classes) * sizeof *logits);
}

/* LM logits are made this many floats at a time (16 MB): with a GPT-2
 * vocabulary a batch's [B*T, V] logits would take hundreds of MB */
enum { LM_CHUNK_FLOATS = 1 << 22 };

static ts_status lm_buffers(ts_classifier *c, int64_t N, int64_t rows, int64_t V, int64_t C)
{
    if (!c->lm_logits.block || c->lm_logits.shape[0] < rows) {
        ts_tensor_free(&c->lm_logits);
        TRY(ts_tensor_alloc(&c->lm_logits, c->device, TS_F32, TS_SHAPE(rows, V)));
    }
    if (c->lm_targets.block) return TS_OK; /* the shape's, freed with it */
    ts_status st = ts_tensor_alloc(&c->lm_targets, c->device, TS_I32, TS_SHAPE(N));
    if (!st) st = ts_tensor_alloc(&c->dlm, c->device, TS_F32, TS_SHAPE(N, C));
    if (!st && !(c->host_targets = malloc((size_t)N * sizeof *c->host_targets)))
        st = ts_error(TS_ERR_OOM, "no memory");
    if (st) {
        ts_tensor_free(&c->lm_targets);
        ts_tensor_free(&c->dlm);
        free(c->host_targets);
        c->host_targets = NULL;
    }
    return st;
}

ts_status ts_classifier_lm_loss(ts_classifier *c, const int32_t *tokens, const int32_t *lengths, float weight,
                                double *loss_sum, int64_t *count)
{
    if (!c->B) return ts_error(TS_ERR_INVALID_ARG, "classifier LM loss: no forward pass");
    if (c->cfg.bidirectional)
        return ts_error(TS_ERR_INVALID_ARG, "classifier LM loss: a bidirectional trunk sees the tokens it would predict");
    if (c->lm_pending)
        return ts_error(TS_ERR_INVALID_ARG, "classifier LM loss: the last one's gradient awaits ts_classifier_backward");
    int64_t B = c->B, T = c->T, N = B * T, V = c->cfg.gpt.vocab_size, C = c->cfg.gpt.n_embd, n = 0;
    int64_t chunk = LM_CHUNK_FLOATS / V < 1 ? 1 : LM_CHUNK_FLOATS / V;
    if (chunk > N) chunk = N;
    ts_status st = lm_buffers(c, N, chunk, V, C);
    if (st) return ts_error_context(st, "classifier LM loss for %lld x %lld tokens", (long long)B, (long long)T);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            int real = t + 1 < lengths[b];
            c->host_targets[b * T + t] = real ? tokens[b * T + t + 1] : -1;
            n += real;
        }
    TRY(ts_tensor_write(&c->lm_targets, c->host_targets, (size_t)N * sizeof *c->host_targets));
    const ts_gpt_tensor *wt = ts_gpt_find(&c->trunk, TS_GPT_WTE, -1);
    ts_tensor wte, dwte;
    TRY(ts_gpt_param_view(&c->trunk, wt, 0, &wte));
    TRY(ts_gpt_param_view(&c->trunk, wt, 1, &dwte));
    float *host = malloc((size_t)chunk * sizeof *host);
    if (!host) return ts_error(TS_ERR_OOM, "no memory");
    double sum = 0.0;
    for (int64_t r0 = 0; r0 < N && !st; r0 += chunk) {
        int64_t rows = N - r0 < chunk ? N - r0 : chunk;
        ts_tensor feats, logits, targets, dfeats, losses;
        st = ts_tensor_view(&feats, &c->acts.lnf, r0 * C, TS_SHAPE(rows, C));
        if (!st) st = ts_tensor_view(&logits, &c->lm_logits, 0, TS_SHAPE(rows, V));
        if (!st) st = ts_tensor_view(&targets, &c->lm_targets, r0, TS_SHAPE(rows));
        if (!st) st = ts_tensor_view(&dfeats, &c->dlm, r0 * C, TS_SHAPE(rows, C));
        /* the rows' losses go in their dlm rows, which their gradient then overwrites */
        if (!st) st = ts_tensor_view(&losses, &c->dlm, r0 * C, TS_SHAPE(rows));
        /* logits [rows, V] = features [rows, C] @ wte^T */
        if (!st) st = ts_linear_forward(&logits, &feats, &wte, NULL);
        if (!st) st = ts_cross_entropy(&losses, NULL, weight != 0.0f ? &logits : NULL, &logits, &targets, weight);
        if (!st) st = ts_tensor_read(&losses, host, (size_t)rows * sizeof *host);
        for (int64_t i = 0; i < rows && !st; i++) sum += c->host_targets[r0 + i] >= 0 ? (double)host[i] : 0.0;
        /* dfeatures = dlogits @ wte; dwte += dlogits^T @ features */
        if (!st && weight != 0.0f) st = ts_linear_backward(&dfeats, &dwte, NULL, &logits, &feats, &wte);
    }
    free(host);
    TRY(st);
    *loss_sum = sum;
    *count = n;
    c->lm_pending = weight != 0.0f;
    return TS_OK;
}

ts_status ts_classifier_backward(ts_classifier *c, const float *dlogits)
{
    if (!c->B) return ts_error(TS_ERR_INVALID_ARG, "classifier backward: no forward pass to differentiate");
    int64_t B = c->B, T = c->T, C = c->cfg.gpt.n_embd;
    TRY(ts_tensor_write(&c->logits, dlogits, (size_t)(B * c->cfg.n_classes) * sizeof *dlogits));
    TRY(ts_linear_backward(&c->dpooled, &c->head_dw, &c->head_db, &c->logits, &c->pooled, &c->head_w));
    ts_tensor dfeats, dpooled3;
    TRY(ts_tensor_reshape(&dfeats, &c->dfeatures, TS_SHAPE(B, T, C)));
    TRY(ts_tensor_reshape(&dpooled3, &c->dpooled, TS_SHAPE(B, 1, C)));
    if (c->cfg.pool == TS_POOL_MAX) TRY(ts_pool_max_backward(&dfeats, &c->dpooled, &c->argmax));
    else TRY(ts_matmul(&dfeats, &c->pool, &dpooled3, true, false, 1.0f, 0.0f));
    if (c->lm_pending) TRY(ts_add(&c->dfeatures, &c->dfeatures, &c->dlm));
    c->lm_pending = 0;
    TRY(ts_gpt_features_backward(&c->trunk, &c->acts, &c->dfeatures));
    return ngram_backward(c);
}

void ts_classifier_cross_entropy(const float *logits, int64_t B, int64_t K, const int32_t *labels,
                                 const float *weights, double scale, double *loss_sum, float *dlogits,
                                 float *probs)
{
    double sum = 0.0;
    for (int64_t b = 0; b < B; b++) {
        const float *x = logits + b * K;
        double m = -INFINITY, z = 0.0;
        for (int64_t k = 0; k < K; k++) m = fmax(m, (double)x[k]);
        for (int64_t k = 0; k < K; k++) z += exp((double)x[k] - m);
        int32_t y = labels ? labels[b] : -1;
        int valid = y >= 0 && y < K;
        double w = valid ? (weights ? (double)weights[b] : 1.0) : 0.0;
        if (valid) sum += w * (m + log(z) - (double)x[y]);
        for (int64_t k = 0; k < K; k++) {
            double p = exp((double)x[k] - m) / z;
            if (probs) probs[b * K + k] = (float)p;
            if (dlogits) dlogits[b * K + k] = (float)(scale * w * (p - (k == y ? 1.0 : 0.0)));
        }
    }
    if (loss_sum) *loss_sum = sum;
}

/* ---- files ---- */

static void classifier_meta_json(const ts_classifier_config *cfg, char *buf, size_t n)
{
    snprintf(buf, n, "{\"n_classes\": %lld, \"pool\": \"%s\", \"attention\": \"%s\", \"char_ngrams\": %lld}",
             (long long)cfg->n_classes, ts_pool_name(cfg->pool), cfg->bidirectional ? "bidirectional" : "causal",
             (long long)cfg->char_ngrams);
}

ts_status ts_classifier_save_blobs(const ts_classifier *c, const ts_tensor *const *blobs,
                                   const char *const *prefixes, int n, const char *path,
                                   const char *const *extra_meta)
{
    for (int b = 0; b < n; b++)
        if (ts_tensor_numel(blobs[b]) != c->num_params)
            return ts_error(TS_ERR_SHAPE, "saving a blob of %lld elements for a classifier of %lld parameters",
                            (long long)ts_tensor_numel(blobs[b]), (long long)c->num_params);
    int per = c->trunk.ntensors + 4; /* trunk view, its tensors, the head's two, the n-gram table */
    ts_tensor *views = calloc((size_t)(per * (n > 0 ? n : 1)), sizeof *views);
    if (!views) return ts_error(TS_ERR_OOM, "no memory");
    ts_st_writer *w;
    ts_status st = ts_st_writer_new(&w);
    if (st) {
        free(views);
        return st;
    }
    char cfg[512], cls[256];
    ts_gpt_config_json(&c->cfg.gpt, cfg, sizeof cfg);
    classifier_meta_json(&c->cfg, cls, sizeof cls);
    st = ts_st_writer_meta(w, "format", "tessera-classifier");
    if (!st) st = ts_st_writer_meta(w, "config", cfg);
    if (!st) st = ts_st_writer_meta(w, "classifier", cls);
    if (!st) st = ts_st_writer_meta(w, "linear_layout", "out,in");
    for (int i = 0; !st && extra_meta && extra_meta[i]; i += 2) st = ts_st_writer_meta(w, extra_meta[i], extra_meta[i + 1]);
    int64_t K = c->cfg.n_classes, C = c->cfg.gpt.n_embd, G = c->cfg.char_ngrams;
    for (int b = 0; b < n && !st; b++) {
        ts_tensor *v = views + b * per;
        char wname[64], bname[64], gname[64];
        snprintf(wname, sizeof wname, "%sscore.weight", prefixes[b]);
        snprintf(bname, sizeof bname, "%sscore.bias", prefixes[b]);
        snprintf(gname, sizeof gname, "%sngram.weight", prefixes[b]);
        st = ts_tensor_view(&v[0], blobs[b], 0, TS_SHAPE(c->head_offset));
        if (!st) st = ts_gpt_writer_add(&c->trunk, w, &v[0], prefixes[b], v + 4);
        if (!st) st = ts_tensor_view(&v[1], blobs[b], c->head_offset, TS_SHAPE(K * C));
        if (!st) st = ts_tensor_view(&v[2], blobs[b], c->head_offset + K * C, TS_SHAPE(K));
        if (!st) st = ts_st_writer_add(w, wname, &v[1], TS_SHAPE(K, C));
        if (!st) st = ts_st_writer_add(w, bname, &v[2], TS_SHAPE(K));
        if (!st && G) st = ts_tensor_view(&v[3], blobs[b], c->ngram_offset, TS_SHAPE(G * C));
        if (!st && G) st = ts_st_writer_add(w, gname, &v[3], TS_SHAPE(G, C));
    }
    if (!st) st = ts_st_writer_write(w, path);
    ts_st_writer_free(w);
    free(views);
    return st;
}

ts_status ts_classifier_save(const ts_classifier *c, const char *path, const char *const *extra_meta)
{
    const ts_tensor *blob = &c->params;
    const char *prefix = "";
    return ts_classifier_save_blobs(c, &blob, &prefix, 1, path, extra_meta);
}

ts_status ts_classifier_read_config(const char *path, ts_classifier_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    TRY(ts_gpt_read_config(path, &cfg->gpt));
    ts_safetensors f;
    TRY(ts_safetensors_open(path, &f));
    const char *js = ts_safetensors_meta(&f, "classifier");
    ts_json *j = NULL;
    ts_status st = TS_OK;
    if (!js)
        st = ts_error(TS_ERR_FORMAT, "%s is a language model, not a classifier (no \"classifier\" in its metadata)",
                      path);
    else if (ts_json_parse(js, strlen(js), &j) != TS_OK)
        st = ts_error_context(TS_ERR_FORMAT, "%s: classifier metadata", path);
    if (!st) {
        cfg->n_classes = ts_json_get_int(j, "n_classes", -1);
        cfg->char_ngrams = ts_json_get_int(j, "char_ngrams", 0); /* files from before n-grams have none */
        int pool = ts_pool_parse(ts_json_get_str(j, "pool", ""));
        const char *att = ts_json_get_str(j, "attention", "");
        cfg->pool = pool < 0 ? TS_POOL_LAST : (ts_pool)pool;
        cfg->bidirectional = !strcmp(att, "bidirectional");
        if (pool < 0 || (strcmp(att, "causal") && strcmp(att, "bidirectional")))
            st = ts_error(TS_ERR_FORMAT, "%s: classifier metadata names an unknown pooling or attention: %s", path, js);
        if (!st) st = ts_classifier_config_check(cfg);
        if (st) st = ts_error_context(st, "%s", path);
    }
    ts_json_free(j);
    ts_safetensors_close(&f);
    return st;
}

static ts_status load_head(const ts_classifier *c, ts_tensor *blob, const char *path, const char *prefix)
{
    ts_safetensors f;
    TRY(ts_safetensors_open(path, &f));
    int64_t K = c->cfg.n_classes, C = c->cfg.gpt.n_embd;
    char wname[64], bname[64];
    snprintf(wname, sizeof wname, "%sscore.weight", prefix);
    snprintf(bname, sizeof bname, "%sscore.bias", prefix);
    ts_tensor w, b;
    ts_status st = ts_tensor_view(&w, blob, c->head_offset, TS_SHAPE(K, C));
    if (!st) st = ts_tensor_view(&b, blob, c->head_offset + K * C, TS_SHAPE(K));
    if (!st) st = ts_safetensors_load(&f, wname, &w, 1);
    if (!st) st = ts_safetensors_load(&f, bname, &b, 1);
    int64_t G = c->cfg.char_ngrams;
    if (G) {
        char gname[64];
        snprintf(gname, sizeof gname, "%sngram.weight", prefix);
        ts_tensor g;
        if (!st) st = ts_tensor_view(&g, blob, c->ngram_offset, TS_SHAPE(G, C));
        if (!st) st = ts_safetensors_load(&f, gname, &g, 1);
    }
    ts_safetensors_close(&f);
    return st;
}

ts_status ts_classifier_load_blob(const ts_classifier *c, ts_tensor *blob, const char *path, const char *prefix)
{
    ts_tensor trunk;
    TRY(ts_tensor_view(&trunk, blob, 0, TS_SHAPE(c->head_offset)));
    TRY(ts_gpt_load_blob(&c->trunk, &trunk, path, prefix));
    return load_head(c, blob, path, prefix);
}

ts_status ts_classifier_load(ts_classifier *c, const char *path)
{
    ts_classifier_config cfg;
    TRY(ts_classifier_read_config(path, &cfg));
    if (memcmp(&cfg.gpt, &c->cfg.gpt, sizeof cfg.gpt) != 0 || cfg.n_classes != c->cfg.n_classes ||
        cfg.pool != c->cfg.pool || cfg.bidirectional != c->cfg.bidirectional || cfg.char_ngrams != c->cfg.char_ngrams)
        return ts_error(TS_ERR_SHAPE, "%s holds another classifier than this one (%lld classes, L=%lld C=%lld)", path,
                        (long long)cfg.n_classes, (long long)cfg.gpt.n_layer, (long long)cfg.gpt.n_embd);
    return ts_classifier_load_blob(c, &c->params, path, "");
}

ts_status ts_classifier_load_trunk(ts_classifier *c, const char *path)
{
    /* the trunk's params are its part of our blob */
    return ts_gpt_load(&c->trunk, path);
}
