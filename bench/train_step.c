/* Time training steps (forward + backward + AdamW, gradients zeroed and
 * clipped as in `tessera train`) of a GPT shape on one device.
 * usage: train_step [--device D] [--model d12] [--vocab V] [--batch B]
 *                   [--seq-len T] [--steps N] [--warmup N] [--threads N]
 * Prints one JSON object: median, min and max seconds per step, the
 * median's forward+backward / optimizer split, tokens/s. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tessera/tessera.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int fail(const char *what)
{
    fprintf(stderr, "train_step: %s: %s\n", what, ts_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    const char *device = "cpu", *preset = "d12";
    int64_t V = 50257, B = 4, T = 64, steps = 5, warmup = 2, threads = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--device")) device = argv[i + 1];
        else if (!strcmp(argv[i], "--model")) preset = argv[i + 1];
        else if (!strcmp(argv[i], "--vocab")) V = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch")) B = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--seq-len")) T = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--warmup")) warmup = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoll(argv[i + 1]);
        else {
            fprintf(stderr, "train_step: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (threads > 0 && ts_set_threads((int)threads)) return fail("threads");
    ts_device *dev;
    if (ts_device_open(device, &dev)) return fail("device");
    ts_gpt_config c = {.vocab_size = V, .max_seq_len = 1024};
    if (ts_gpt_config_preset(preset, &c)) return fail("model");
    if (c.max_seq_len < T) c.max_seq_len = T;
    ts_gpt m;
    ts_optimizer o;
    if (ts_gpt_create(&m, dev, &c) || ts_gpt_init_weights(&m, 1)) return fail("model");
    if (ts_optimizer_create(&o, dev, TS_OPTIM_ADAMW, m.num_params, 0.9f, 0.95f, 1e-8f, 0.1f)) return fail("optimizer");
    int32_t *tok = malloc((size_t)(B * T) * sizeof *tok), *tgt = malloc((size_t)(B * T) * sizeof *tgt);
    for (int64_t i = 0; i < B * T; i++) tok[i] = (int32_t)((i * 7919) % V), tgt[i] = (int32_t)((i * 104729 + 1) % V);
    double *total = malloc((size_t)(steps + warmup) * sizeof *total);
    double *split = malloc((size_t)(steps + warmup) * 3 * sizeof *split);
    for (int64_t s = 0; s < warmup + steps; s++) {
        float loss;
        double t0 = now();
        if (ts_gpt_zero_grad(&m) || ts_gpt_forward_backward(&m, tok, tgt, B, T, 1.0f, &loss) ||
            ts_device_synchronize(dev))
            return fail("forward and backward");
        double t2 = now(), sq;
        if (ts_grad_sqnorm(&m.grads, &sq) ||
            ts_gpt_optimizer_step(&m, &o, 1e-4f, ts_clip_scale(sqrt(sq), 1.0f)) ||
            ts_device_synchronize(dev))
            return fail("optimizer");
        double t3 = now();
        total[s] = t3 - t0;
        split[3 * s] = 0, split[3 * s + 1] = t2 - t0, split[3 * s + 2] = t3 - t2;
    }
    double *sorted = malloc((size_t)steps * sizeof *sorted);
    memcpy(sorted, total + warmup, (size_t)steps * sizeof *sorted);
    qsort(sorted, (size_t)steps, sizeof *sorted, cmp);
    double med = steps % 2 ? sorted[steps / 2] : 0.5 * (sorted[steps / 2 - 1] + sorted[steps / 2]);
    int64_t mi = warmup; /* the step closest to the median, for the split */
    for (int64_t s = warmup; s < warmup + steps; s++)
        if (fabs(total[s] - med) < fabs(total[mi] - med)) mi = s;
    printf("{\"device\": \"%s\", \"model\": \"%s\", \"params\": %lld, \"batch\": %lld, \"seq_len\": %lld, "
           "\"threads\": %d, \"steps\": %lld, \"median_s\": %.4f, \"min_s\": %.4f, \"max_s\": %.4f, "
           "\"fwd_bwd_s\": %.4f, \"optimizer_s\": %.4f, \"tokens_per_s\": %.1f}\n",
           ts_device_get_info(dev)->id, preset, (long long)m.num_params, (long long)B, (long long)T,
           ts_get_threads(), (long long)steps, med, sorted[0], sorted[steps - 1], split[3 * mi + 1],
           split[3 * mi + 2], (double)(B * T) / med);
    free(tok), free(tgt), free(total), free(split), free(sorted);
    ts_optimizer_free(&o);
    ts_gpt_free(&m);
    ts_shutdown();
    return 0;
}
