/* Training steps of a GPT in any parallel layout, timed: the figures behind
 * data-parallel weak scaling and the pipeline bubble.
 *   mpirun -np N bench/parallel_train [--tp T] [--pp P] [--micro M]
 *       [--batch B (per replica)] [--layers L] [--heads H] [--width C]
 *       [--seq T] [--steps S] [--strategy mpi|ring|hier|ps] [--no-overlap]
 *       [--device D]
 * Prints one JSON line on rank 0: median step time, tokens/s over all
 * processes, and the pipeline bubble (each stage's idle share of the
 * pipeline phase, averaged over stages) beside (P-1)/(M+P-1). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "tessera/tessera.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int fail(const char *what)
{
    fprintf(stderr, "parallel_train [rank %d]: %s: %s\n", ts_comm_rank(ts_comm_world()), what, ts_last_error());
    ts_parallel_finalize();
    return 1;
}

int main(int argc, char **argv)
{
    if (ts_parallel_init(&argc, &argv) != TS_OK) return fail("MPI");
    int tp = 1, pp = 1, micro = 1, steps = 8, overlap = 1;
    int64_t batch = 8, seq = 64;
    ts_gpt_config cfg = {.vocab_size = 4096, .max_seq_len = 64, .n_layer = 4, .n_head = 4, .n_embd = 256};
    const char *strategy = "mpi", *device = "cpu";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-overlap")) { overlap = 0; continue; }
        if (!v) break;
        if (!strcmp(a, "--tp")) tp = atoi(v);
        else if (!strcmp(a, "--pp")) pp = atoi(v);
        else if (!strcmp(a, "--micro")) micro = atoi(v);
        else if (!strcmp(a, "--batch")) batch = atoll(v);
        else if (!strcmp(a, "--layers")) cfg.n_layer = atoll(v);
        else if (!strcmp(a, "--heads")) cfg.n_head = atoll(v);
        else if (!strcmp(a, "--width")) cfg.n_embd = atoll(v);
        else if (!strcmp(a, "--seq")) seq = atoll(v);
        else if (!strcmp(a, "--vocab")) cfg.vocab_size = atoll(v);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--strategy")) strategy = v;
        else if (!strcmp(a, "--device")) device = v;
        else {
            fprintf(stderr, "parallel_train: unknown option %s\n", a);
            ts_parallel_finalize();
            return 2;
        }
        i++;
    }
    cfg.max_seq_len = seq;
    int s = ts_strategy_parse(strategy);
    if (s < 0 || steps < 2) {
        fprintf(stderr, "parallel_train: bad --strategy or --steps\n");
        ts_parallel_finalize();
        return 2;
    }
    ts_grid g;
    ts_gpt m;
    ts_gpt_layout lay;
    ts_device *dev;
    ts_engine *e;
    if (ts_grid_create(&g, tp, pp) != TS_OK) return fail("grid");
    if (ts_device_open_local(device, g.local_rank, &dev) != TS_OK) return fail("device");
    if (ts_grid_layout(&g, cfg.n_layer, &lay.tp_size, &lay.tp_rank, &lay.layer_begin, &lay.layer_end,
                       &lay.embedding, &lay.head) != TS_OK)
        return fail("layout");
    if (ts_gpt_create_layout(&m, dev, &cfg, &lay, g.tp_comm) != TS_OK) return fail("model");
    if (ts_gpt_init_weights(&m, 1) != TS_OK) return fail("init");
    ts_engine_config ec = {.strategy = (ts_reduce_strategy)s, .bucket_mb = 25, .overlap = overlap,
                           .schedule = TS_SCHEDULE_1F1B, .optim = TS_OPTIM_ADAMW, .beta1 = 0.9f,
                           .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
    if (ts_engine_create(&e, &g, &m, &ec) != TS_OK) return fail("engine");
    int64_t n = (int64_t)micro * batch * seq;
    int32_t *tok = malloc((size_t)n * sizeof *tok), *tgt = malloc((size_t)n * sizeof *tgt);
    uint64_t x = 88172645463325252ull + (uint64_t)g.dp_rank;
    for (int64_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        tok[i] = (int32_t)(x % (uint64_t)cfg.vocab_size);
        tgt[i] = (int32_t)((x >> 20) % (uint64_t)cfg.vocab_size);
    }
    double *times = calloc((size_t)steps, sizeof *times), *bubbles = calloc((size_t)steps, sizeof *bubbles);
    for (int k = 0; k < steps; k++) {
        float loss;
        double norm;
        ts_comm_barrier(g.world, "step start");
        double t0 = now();
        if (ts_engine_step(e, micro, batch, seq, tok, tgt, 1e-4f, 1.0f, &loss, &norm) != TS_OK) return fail("step");
        ts_device_synchronize(dev);
        double t = now() - t0;
        ts_comm_allreduce_f64(g.world, &t, 1, TS_REDUCE_MAX, "step time");
        /* every stage's idle share of the whole pipeline phase (which ends
         * when the slowest stage finishes) */
        const ts_pipeline_stats *ps = ts_engine_pipeline_stats(e);
        double phase = ps->schedule_s;
        ts_comm_allreduce_f64(g.pp_comm, &phase, 1, TS_REDUCE_MAX, "pipeline phase");
        double b = phase > 0 ? 1.0 - ps->busy_s / phase : 0;
        ts_comm_allreduce_f64(g.pp_comm, &b, 1, TS_REDUCE_SUM, "bubble");
        times[k] = t, bubbles[k] = b / pp;
    }
    /* the first step warms caches and builds kernels: leave it out */
    double med, bub;
    ts_bench_summarize(times + 1, steps - 1, NULL, &med, NULL);
    ts_bench_summarize(bubbles + 1, steps - 1, NULL, &bub, NULL);
    double tokens = (double)g.dp * (double)n;
    if (g.rank == 0)
        printf("{\"processes\": %d, \"tp\": %d, \"pp\": %d, \"dp\": %d, \"micro\": %d, \"batch_per_replica\": %lld, "
               "\"seq\": %lld, \"params\": %lld, \"strategy\": \"%s\", \"overlap\": %d, \"median_step_s\": %.6f, "
               "\"tokens_per_s\": %.1f, \"bubble\": %.4f, \"bubble_theory\": %.4f}\n",
               g.size, tp, pp, g.dp, micro, (long long)batch, (long long)seq, (long long)ts_gpt_num_params(&cfg),
               strategy, overlap, med, tokens / med, bub, (double)(pp - 1) / (double)(micro + pp - 1));
    free(tok), free(tgt), free(times), free(bubbles);
    ts_engine_free(e);
    ts_gpt_free(&m);
    ts_grid_free(&g);
    ts_parallel_finalize();
    return 0;
}
