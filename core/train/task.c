#include "tessera/task.h"

#include <stdlib.h>
#include <string.h>

#include "tessera/generate.h"

static uint64_t mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Problem `id` of a split: its letters and their sorted order. */
static int problem(uint64_t id, char *in, char *out)
{
    uint64_t h = mix64(id);
    int len = TS_TASK_MIN_LEN + (int)(h % (TS_TASK_MAX_LEN - TS_TASK_MIN_LEN + 1));
    int counts[TS_TASK_ALPHABET] = {0};
    for (int i = 0; i < len; i++) {
        h = mix64(h);
        int c = (int)(h % TS_TASK_ALPHABET);
        in[i] = (char)('a' + c);
        counts[c]++;
    }
    int k = 0;
    for (int c = 0; c < TS_TASK_ALPHABET; c++)
        while (counts[c]--) out[k++] = (char)('a' + c);
    return len;
}

static uint64_t problem_id(ts_split split, uint64_t seed, int64_t sample, int64_t j)
{
    /* validation problems come from another stream than training ones */
    return mix64(seed ^ (split == TS_SPLIT_VAL ? 0x5EED5EED5EEDull : 0)) ^ mix64((uint64_t)sample * 64 + (uint64_t)j);
}

static ts_status task_batch(ts_dataset *ds, ts_split split, uint64_t seed, int64_t first, int64_t B,
                            int64_t T, int32_t *inputs, int32_t *targets)
{
    (void)ds;
    int64_t need = 2 * TS_TASK_MAX_LEN + 3;
    if (T < need)
        return ts_error(TS_ERR_INVALID_ARG, "the sorting task needs sequences of at least %lld tokens",
                        (long long)need);
    /* a row is a stream of problems; inputs[t] = stream[t], targets[t] =
     * stream[t+1]; the last problem may run up to one problem past T + 1 */
    int64_t cap = T + 1 + need;
    int32_t *stream = malloc((size_t)cap * sizeof *stream);
    char *scored = malloc((size_t)cap);
    if (!stream || !scored) {
        free(stream), free(scored);
        return ts_error(TS_ERR_OOM, "no memory for a task row of %lld tokens", (long long)T);
    }
    for (int64_t r = 0; r < B; r++) {
        int64_t len = 0;
        for (int64_t j = 0; len < T + 1; j++) {
            char in[TS_TASK_MAX_LEN], out[TS_TASK_MAX_LEN];
            int n = problem(problem_id(split, seed, first + r, j), in, out);
            for (int i = 0; i < n; i++) scored[len] = 0, stream[len++] = in[i];
            scored[len] = 0, stream[len++] = '=';
            for (int i = 0; i < n; i++) scored[len] = 1, stream[len++] = out[i];
            scored[len] = 1, stream[len++] = '\n';
        }
        for (int64_t t = 0; t < T; t++) {
            inputs[r * T + t] = stream[t];
            targets[r * T + t] = scored[t + 1] ? stream[t + 1] : -1;
        }
    }
    free(stream), free(scored);
    return TS_OK;
}

ts_status ts_dataset_open_sort_task(ts_dataset *ds)
{
    memset(ds, 0, sizeof *ds);
    snprintf(ds->name, sizeof ds->name, "built-in task: sort %d to %d letters from a-%c",
             TS_TASK_MIN_LEN, TS_TASK_MAX_LEN, 'a' + TS_TASK_ALPHABET - 1);
    ds->vocab_size = 256;
    ds->train_tokens = ds->val_tokens = INT64_MAX / 4;
    ds->fingerprint = 0x50a7ull ^ (uint64_t)TS_TASK_ALPHABET << 16 ^ (uint64_t)TS_TASK_MAX_LEN << 24;
    ds->batch = task_batch;
    return TS_OK;
}

ts_status ts_sort_task_evaluate(ts_gpt *m, int n, uint64_t seed, int show, FILE *out, double *accuracy)
{
    int correct = 0;
    ts_sample_options o = {.temperature = 0.0f, .stop_token = '\n', .context = 0};
    /* room for three problems whatever the model's context (generation
     * sees the last max_seq_len tokens) */
    int64_t ctx = m->cfg.max_seq_len, cap = 3 * (2 * TS_TASK_MAX_LEN + 2) + 2;
    int32_t *tok = malloc((size_t)cap * sizeof *tok);
    if (!tok) return ts_error(TS_ERR_OOM, "no memory");
    /* a few solved examples lead the prompt, as in training rows */
    for (int k = 0; k < n; k++) {
        char in[TS_TASK_MAX_LEN], want[TS_TASK_MAX_LEN];
        int64_t len = 0;
        for (int j = 0; j < 2; j++) {
            char a[TS_TASK_MAX_LEN], b[TS_TASK_MAX_LEN];
            int pn = problem(problem_id(TS_SPLIT_VAL, seed ^ 0xE7A1, k, j), a, b);
            for (int i = 0; i < pn; i++) tok[len++] = a[i];
            tok[len++] = '=';
            for (int i = 0; i < pn; i++) tok[len++] = b[i];
            tok[len++] = '\n';
        }
        int pl = problem(problem_id(TS_SPLIT_VAL, seed ^ 0xE7A1, k, 99), in, want);
        for (int i = 0; i < pl; i++) tok[len++] = in[i];
        tok[len++] = '=';
        int64_t start = len;
        o.context = len + pl + 1 < ctx ? len + pl + 1 : ctx;
        ts_status st = ts_generate(m, tok, &len, cap, pl + 1, &o);
        if (st) {
            free(tok);
            return st;
        }
        int ok = len - start == pl + 1 && tok[len - 1] == '\n';
        for (int i = 0; ok && i < pl; i++) ok = tok[start + i] == want[i];
        correct += ok;
        if (out && k < show) {
            fprintf(out, "  %.*s -> ", pl, in);
            for (int64_t i = start; i < len && tok[i] != '\n'; i++)
                fputc(tok[i] >= 32 && tok[i] < 127 ? tok[i] : '?', out);
            if (ok) fprintf(out, "  ok\n");
            else fprintf(out, "  wrong (want %.*s)\n", pl, want);
        }
    }
    free(tok);
    *accuracy = (double)correct / (double)n;
    return TS_OK;
}
