#include "tessera/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t next_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* Pick a token from logits (modified in place). */
static int32_t pick(float *logits, int64_t V, const ts_sample_options *o, uint64_t *rng, float *scratch)
{
    int64_t best = 0;
    for (int64_t j = 1; j < V; j++)
        if (logits[j] > logits[best]) best = j;
    if (o->temperature <= 0.0f) return (int32_t)best;
    float cutoff = -INFINITY;
    if (o->top_k > 0 && o->top_k < V) {
        memcpy(scratch, logits, (size_t)V * sizeof *scratch);
        qsort(scratch, (size_t)V, sizeof *scratch, cmp_desc);
        cutoff = scratch[o->top_k - 1];
    }
    double sum = 0.0;
    for (int64_t j = 0; j < V; j++) {
        double p = logits[j] < cutoff ? 0.0 : exp((double)(logits[j] - logits[best]) / o->temperature);
        logits[j] = (float)p;
        sum += p;
    }
    if (o->top_p > 0.0f && o->top_p < 1.0f) {
        /* nucleus: the smallest set of most likely tokens holding top_p of
         * the probability (ties at the edge stay in) */
        memcpy(scratch, logits, (size_t)V * sizeof *scratch);
        qsort(scratch, (size_t)V, sizeof *scratch, cmp_desc);
        double acc = 0.0, want = (double)o->top_p * sum;
        float edge = scratch[0];
        for (int64_t j = 0; j < V; j++) {
            acc += scratch[j];
            edge = scratch[j];
            if (acc >= want) break;
        }
        sum = 0.0;
        for (int64_t j = 0; j < V; j++) {
            if (logits[j] < edge) logits[j] = 0.0f;
            sum += logits[j];
        }
    }
    double u = (double)(next_u64(rng) >> 11) * (1.0 / 9007199254740992.0) * sum;
    for (int64_t j = 0; j < V; j++) {
        u -= logits[j];
        if (u <= 0.0) return (int32_t)j;
    }
    return (int32_t)best;
}

ts_status ts_generate(ts_gpt *m, int32_t *tokens, int64_t *n, int64_t cap, int64_t max_new,
                      const ts_sample_options *o)
{
    int64_t V = m->cfg.vocab_size;
    int64_t T = o->context > 0 && o->context < m->cfg.max_seq_len ? o->context : m->cfg.max_seq_len;
    if (*n < 1) return ts_error(TS_ERR_INVALID_ARG, "generate: the prompt is empty");
    float *logits = malloc((size_t)V * sizeof *logits), *scratch = malloc((size_t)V * sizeof *scratch);
    int32_t *window = calloc((size_t)T, sizeof *window);
    if (!logits || !scratch || !window) {
        free(logits), free(scratch), free(window);
        return ts_error(TS_ERR_OOM, "no memory to generate");
    }
    uint64_t rng = o->seed * 0x2545F4914F6CDD1Dull + 1;
    ts_status st = TS_OK;
    for (int64_t k = 0; k < max_new && *n < cap && !st; k++) {
        /* the last T tokens, left-aligned; positions after them are padding
         * that causal attention keeps out of the logits we read */
        int64_t len = *n < T ? *n : T;
        memcpy(window, tokens + *n - len, (size_t)len * sizeof *window);
        memset(window + len, 0, (size_t)(T - len) * sizeof *window);
        st = ts_gpt_forward(m, window, NULL, 1, T, NULL);
        if (!st) st = ts_gpt_read_logits(m, 0, len - 1, logits);
        if (st) break;
        int32_t tok = pick(logits, V, o, &rng, scratch);
        tokens[(*n)++] = tok;
        if (tok == o->stop_token) break;
    }
    free(logits), free(scratch), free(window);
    return st;
}
