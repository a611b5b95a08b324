/* tessera train: train a GPT language model (tessera/train.h). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "cli.h"
#include "options.h"
#include "tessera/checkpoint.h"
#include "tessera/tessera.h"
#include "tessera/train.h"

/* The first SIGINT or SIGTERM asks the run to stop after the step in
 * flight (checkpoint, summary, exit 128+signal); a second one ends the
 * process at once. */
static void on_signal(int sig)
{
    if (ts_train_stop_requested()) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    ts_train_request_stop(sig);
}

static void catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* Options a resumed run takes from the command line; every other given
 * option must equal the run's saved setting. */
static const char *const resume_may_change[] = {
    "--steps", "--device", "--threads", "--out", "--ckpt-every", "--keep", "--resume", "--eval-every",
    "--eval-batches", "--log", "--sample-tokens", "--quiet", "--tp", "--pp", "--strategy", "--zero",
    "--bucket-mb", "--no-overlap", "--pipeline", "--no-bind", "--trace", "--watchdog", "--balance", "--rebalance-every",
    "--rebalance-gain", "--dtype", NULL};

static int may_change(const char *name)
{
    for (const char *const *p = resume_may_change; *p; p++)
        if (!strcmp(*p, name)) return 1;
    return 0;
}

/* --resume: the run's settings come from its latest checkpoint; the
 * options given change what a resumed run may change, and any other given
 * option that disagrees with the saved value is refused, naming both. */
static int merge_resume(ts_train_config *c, const cli_option *opts, int n)
{
    const ts_train_config *given = c;
    char ckpt[4300];
    ts_train_state *state = calloc(1, sizeof *state);
    if (!state) return cli_fail("resume");
    if (ts_checkpoint_latest(given->out_dir, ckpt, sizeof ckpt) != TS_OK ||
        ts_checkpoint_read_state(ckpt, state) != TS_OK) {
        free(state);
        return cli_fail("--resume");
    }
    ts_train_config saved = *given;
    int64_t saved_steps = -1;
    if (ts_train_settings_parse(state->settings, &saved) == TS_OK) saved_steps = saved.steps;
    else {
        free(state);
        fprintf(stderr, "tessera train: --resume: %s/state.json: %s\n", ckpt, ts_last_error());
        return 1;
    }
    free(state);
    /* the options that must keep the saved value: compare the settings they
     * set with the saved ones */
    static const struct {
        const char *option, *keys[4];
    } sets[] = {
        {"--data", {"data"}}, {"--tokenizer", {"tokenizer"}}, {"--val-fraction", {"val_fraction"}},
        {"--model", {"n_layer", "n_head", "n_embd"}}, {"--layers", {"n_layer"}}, {"--heads", {"n_head"}},
        {"--width", {"n_embd"}}, {"--context", {"max_seq_len"}}, {"--seq-len", {"seq_len"}},
        {"--batch", {"batch"}}, {"--accum", {"grad_accum"}}, {"--optim", {"optim"}}, {"--lr", {"lr"}},
        {"--min-lr", {"min_lr"}}, {"--warmup", {"warmup"}}, {"--schedule", {"schedule"}}, {"--beta1", {"beta1"}},
        {"--beta2", {"beta2"}}, {"--eps", {"eps"}}, {"--weight-decay", {"weight_decay"}},
        {"--grad-clip", {"grad_clip"}}, {"--seed", {"seed"}}, {"--init", {"init"}}, {"--force", {"force"}},
    };
    const char *only[80];
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (!opts[i].given || may_change(opts[i].name)) continue;
        for (size_t j = 0; j < sizeof sets / sizeof *sets; j++)
            if (!strcmp(sets[j].option, opts[i].name))
                for (int q = 0; q < 4 && sets[j].keys[q] && k < 79; q++) only[k++] = sets[j].keys[q];
    }
    only[k] = NULL;
    static char a[TS_SETTINGS_MAX], b[TS_SETTINGS_MAX];
    char diff[2048];
    ts_train_settings_json(&saved, a, sizeof a);
    ts_train_settings_json(given, b, sizeof b);
    if (k > 0 && ts_json_object_diff(a, b, only, diff, sizeof diff) > 0) {
        fprintf(stderr,
                "tessera train: --resume continues %s with its own settings, and these given options differ from "
                "them (saved vs given): %s. Leave them out, or start a new run from its weights with --init %s\n",
                ckpt, diff, ckpt);
        return 2;
    }
    /* keep what may change from the command line */
    saved.steps = cli_given(opts, n, "--steps") ? given->steps : saved_steps;
    snprintf(saved.device, sizeof saved.device, "%s", given->device);
    saved.threads = given->threads;
    saved.dtype = given->dtype; /* precision may change: the weights stay fp32 */
    saved.progress = given->progress;
    saved.bucket_mb = given->bucket_mb;
    saved.bind = given->bind;
    /* shares are how the run is started now: any split trains the same */
    snprintf(saved.balance, sizeof saved.balance, "%s", given->balance);
    saved.rebalance_every = given->rebalance_every, saved.rebalance_gain = given->rebalance_gain;
    saved.resume = 1;
    if (cli_given(opts, n, "--ckpt-every")) saved.ckpt_every = given->ckpt_every;
    if (cli_given(opts, n, "--keep")) saved.keep = given->keep;
    if (cli_given(opts, n, "--eval-every")) saved.eval_every = given->eval_every;
    if (cli_given(opts, n, "--eval-batches")) saved.eval_batches = given->eval_batches;
    if (cli_given(opts, n, "--log")) snprintf(saved.log_path, sizeof saved.log_path, "%s", given->log_path);
    if (cli_given(opts, n, "--sample-tokens")) saved.sample_tokens = given->sample_tokens;
    if (cli_given(opts, n, "--trace")) snprintf(saved.trace_path, sizeof saved.trace_path, "%s", given->trace_path);
    /* the parallel layout is how the run is started now (checkpoints are
     * layout-free), never the saved one */
    saved.tp = given->tp, saved.pp = given->pp, saved.strategy = given->strategy, saved.zero = given->zero;
    saved.overlap = given->overlap, saved.schedule = given->schedule;
    saved.init[0] = '\0';
    snprintf(saved.out_dir, sizeof saved.out_dir, "%s", given->out_dir);
    *c = saved;
    return 0;
}

int cmd_train(int argc, char **argv)
{
    ts_train_config c;
    ts_train_defaults(&c);
    char preset[32] = "", optim[32] = "adamw", schedule[32] = "cosine";
    int64_t layers = 0, heads = 0, width = 0, context = 0, batch = 0, seq_len = 0, accum = 1;
    int64_t steps = 0, warmup = 0, threads = 0, ckpt_every = 0, keep = 3, eval_every = 0;
    int64_t eval_batches = 0, sample_tokens = 200;
    uint64_t seed = 1337;
    float lr = 0, min_lr = 0, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, wd = 0.1f, clip = 1.0f;
    double val_fraction = 0.1;
    int resume = 0, force = 0, quiet = 0, zero = 0, no_overlap = 0, no_bind = 0;
    int64_t tp = 1, pp = 1;
    double bucket_mb = 25.0, watchdog = 300, rebalance_gain = 0.05;
    int64_t rebalance_every = 0;
    char strategy[32] = "mpi", pipeline[32] = "1f1b", dtype[16] = "fp32";
    const double big = 1125899906842624.0; /* 2^50 */
    cli_option opts[] = {
        {"--data", OPT_STRING, c.data, sizeof c.data, "UTF-8 text, a token file, or an llm.c .bin token file",
         "the built-in sorting task", 0, 0, 0},
        {"--tokenizer", OPT_STRING, c.tokenizer, sizeof c.tokenizer,
         "byte | bpe:N | word:N (trained on the data) | tokenizer file", "byte", 0, 0, 0},
        {"--val-fraction", OPT_DOUBLE, &val_fraction, 0, "held-out share of the data", "0.1", 0, 0.999, 0},
        {"--init", OPT_STRING, c.init, sizeof c.init,
         "start from this checkpoint's weights and tokenizer (new data, schedule, optimizer)", NULL, 0, 0, 0},
        {"--model", OPT_STRING, preset, sizeof preset, "preset: tiny | d6 | d12 | d24 | d36 | d48", NULL, 0, 0, 0},
        {"--layers", OPT_INT, &layers, 0, "transformer blocks", "2 (task) / 6 (text)", 1, 1024, 0},
        {"--heads", OPT_INT, &heads, 0, "attention heads", "4 / 6", 1, 65536, 0},
        {"--width", OPT_INT, &width, 0, "embedding width (a multiple of heads)", "64 / 384", 1, 65536, 0},
        {"--context", OPT_INT, &context, 0, "the model's maximum sequence length", "--seq-len", 1, 1 << 20, 0},
        {"--seq-len", OPT_INT, &seq_len, 0, "tokens per training sequence", "64 / 256", 1, 1 << 20, 0},
        {"--batch", OPT_INT, &batch, 0, "sequences per micro-batch", "16 / 8", 1, 1 << 24, 0},
        {"--accum", OPT_INT, &accum, 0, "micro-batches per step (gradient accumulation)", "1", 1, 1 << 20, 0},
        {"--steps", OPT_INT, &steps, 0, "optimizer steps (0: save the untrained model)", "4000 / 1000", 0, big, 0},
        {"--optim", OPT_STRING, optim, sizeof optim, "sgd | momentum | adam | adamw", "adamw", 0, 0, 0},
        {"--lr", OPT_FLOAT, &lr, 0, "peak learning rate", "3e-3 / 1e-3", 1e-12, 100, 0},
        {"--min-lr", OPT_FLOAT, &min_lr, 0, "cosine floor", "lr/10", 0, 100, 0},
        {"--warmup", OPT_INT, &warmup, 0, "linear warmup steps", "50 / 100", 0, big, 0},
        {"--schedule", OPT_STRING, schedule, sizeof schedule, "cosine | constant", "cosine", 0, 0, 0},
        {"--beta1", OPT_FLOAT, &beta1, 0, "Adam beta1, or SGD momentum", "0.9", 0, 0.999999, 0},
        {"--beta2", OPT_FLOAT, &beta2, 0, "Adam beta2", "0.95", 0, 0.999999, 0},
        {"--eps", OPT_FLOAT, &eps, 0, "Adam epsilon", "1e-8", 1e-30, 1, 0},
        {"--weight-decay", OPT_FLOAT, &wd, 0, "decoupled (AdamW) or L2 weight decay on matrices", "0.1", 0, 100, 0},
        {"--grad-clip", OPT_FLOAT, &clip, 0, "global gradient norm limit, 0 = off", "1.0", 0, 1e30, 0},
        {"--device", OPT_STRING, c.device, sizeof c.device, "cpu | opencl | opencl:N | opencl:<name> | auto, or a comma list dealt out by node-local rank",
         "auto",
         0, 0, 0},
        {"--dtype", OPT_STRING, dtype, sizeof dtype,
         "matrix products in fp32 | bf16 | fp16 (inputs rounded, fp32 sums; weights, gradients and optimizer stay "
         "fp32; fp16 adds dynamic loss scaling)", "fp32", 0, 0, 0},
        {"--threads", OPT_INT, &threads, 0, "CPU threads", "the cores this process owns", 1, 4096, 0},
        {"--seed", OPT_UINT, &seed, 0, "seed of weights and batches", "1337", 0, 9223372036854775807.0, 0},
        {"--out", OPT_STRING, c.out_dir, sizeof c.out_dir, "directory for checkpoints, log and tokenizer", NULL, 0, 0,
         0},
        {"--force", OPT_FLAG, &force, 0, "start a new run in an --out that holds one (deletes its checkpoints)", NULL,
         0, 0, 0},
        {"--ckpt-every", OPT_INT, &ckpt_every, 0, "checkpoint interval in steps; 0 = at every evaluation and the end",
         "0", 0, big, 0},
        {"--keep", OPT_INT, &keep, 0, "checkpoints kept besides latest and best; 0 = all", "3", 0, 1 << 30, 0},
        {"--resume", OPT_FLAG, &resume, 0, "continue the run in --out from its latest checkpoint", NULL, 0, 0, 0},
        {"--eval-every", OPT_INT, &eval_every, 0, "validation interval in steps (and at the end); 0 = at the end",
         "0", 0, big, 0},
        {"--eval-batches", OPT_INT, &eval_batches, 0, "validation batches per evaluation", "4 / 8", 0, 1 << 20, 0},
        {"--log", OPT_STRING, c.log_path, sizeof c.log_path, "JSON-lines log, - for none", "<out>/log.jsonl", 0, 0, 0},
        {"--sample-tokens", OPT_INT, &sample_tokens, 0, "tokens of text to generate at the end", "200", 0, 1 << 24, 0},
        {"--quiet", OPT_FLAG, &quiet, 0, "no progress output", NULL, 0, 0, 0},
        {"--tp", OPT_INT, &tp, 0, "tensor-parallel processes per model replica (under mpirun)", "1", 1, 65536, 0},
        {"--pp", OPT_INT, &pp, 0, "pipeline stages (the rest of the processes are data-parallel)", "1", 1, 65536, 0},
        {"--strategy", OPT_STRING, strategy, sizeof strategy, "gradient reduction: mpi | ring | hier | ps", "mpi", 0, 0,
         0},
        {"--zero", OPT_FLAG, &zero, 0, "ZeRO-1: shard the optimizer state over the replicas", NULL, 0, 0, 0},
        {"--bucket-mb", OPT_DOUBLE, &bucket_mb, 0, "gradient bucket size in MB", "25", 0.001, 65536, 0},
        {"--no-overlap", OPT_FLAG, &no_overlap, 0, "reduce gradients after backward, not during it", NULL, 0, 0, 0},
        {"--pipeline", OPT_STRING, pipeline, sizeof pipeline, "pipeline schedule: 1f1b | gpipe", "1f1b", 0, 0, 0},
        {"--no-bind", OPT_FLAG, &no_bind, 0, "do not bind threads and memory near the device", NULL, 0, 0, 0},
        {"--trace", OPT_STRING, c.trace_path, sizeof c.trace_path, "write every rank's timeline (Chrome trace JSON)",
         NULL, 0, 0, 0},
        {"--balance", OPT_STRING, c.balance, sizeof c.balance,
         "rows of the batch per data-parallel replica: even | auto (by speed measured at start-up) | shares like "
         "3,1 | a file (tessera bench train --json, or one share per replica)", "even", 0, 0, 0},
        {"--rebalance-every", OPT_INT, &rebalance_every, 0,
         "re-measure speeds from step times every N steps and re-split if worth it; 0 = never", "0", 0, big, 0},
        {"--rebalance-gain", OPT_DOUBLE, &rebalance_gain, 0,
         "re-split when the predicted step time falls by more than this fraction (negative: whenever it changes)",
         "0.05", -1, 1, 0},
        {"--watchdog", OPT_DOUBLE, &watchdog, 0,
         "seconds a collective may wait: the missing ranks are named, and the job ends after 2x; 0 = never", "300", 0,
         1e9, 0},
    };
    int n = (int)(sizeof opts / sizeof *opts);
    int rc = cli_parse("train", "[options]", opts, n, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;

    int task = !c.data[0];
    /* defaults: a small model that learns the built-in task in about a
     * minute on two cores, or a d6-sized model for real text */
    if (task) {
        c.model = (ts_gpt_config){.max_seq_len = 64, .n_layer = 2, .n_head = 4, .n_embd = 64};
        c.batch = 16, c.seq_len = 64, c.steps = 4000, c.lr = 3e-3f, c.warmup = 50;
    } else {
        c.model = (ts_gpt_config){.max_seq_len = 256, .n_layer = 6, .n_head = 6, .n_embd = 384};
        c.batch = 8, c.seq_len = 256, c.steps = 1000, c.lr = 1e-3f, c.warmup = 100;
    }
    if (preset[0] && ts_gpt_config_preset(preset, &c.model) != TS_OK) return cli_fail("--model");
    if (cli_given(opts, n, "--layers")) c.model.n_layer = layers;
    if (cli_given(opts, n, "--heads")) c.model.n_head = heads;
    if (cli_given(opts, n, "--width")) c.model.n_embd = width;
    if (c.model.n_embd % c.model.n_head != 0) {
        fprintf(stderr, "tessera train: --width %lld is not a multiple of --heads %lld\n", (long long)c.model.n_embd,
                (long long)c.model.n_head);
        return 2;
    }
    if (cli_given(opts, n, "--seq-len")) c.seq_len = seq_len;
    c.model.max_seq_len = cli_given(opts, n, "--context") ? context : c.seq_len;
    if (c.seq_len > c.model.max_seq_len) {
        fprintf(stderr, "tessera train: --seq-len %lld exceeds --context %lld\n", (long long)c.seq_len,
                (long long)c.model.max_seq_len);
        return 2;
    }
    if (cli_given(opts, n, "--batch")) c.batch = batch;
    if (cli_given(opts, n, "--steps")) c.steps = steps;
    if (cli_given(opts, n, "--lr")) c.lr = lr;
    if (cli_given(opts, n, "--warmup")) c.warmup = warmup;
    c.min_lr = cli_given(opts, n, "--min-lr") ? min_lr : c.lr / 10.0f;
    if (c.min_lr > c.lr) {
        fprintf(stderr, "tessera train: --min-lr %g is above --lr %g\n", c.min_lr, c.lr);
        return 2;
    }
    c.grad_accum = accum;
    int kind = ts_optim_kind_parse(optim);
    if (kind < 0) {
        fprintf(stderr, "tessera train: --optim must be sgd, momentum, adam or adamw, not '%s'\n", optim);
        return 2;
    }
    c.optim = (ts_optim_kind)kind;
    if (strcmp(schedule, "cosine") && strcmp(schedule, "constant")) {
        fprintf(stderr, "tessera train: --schedule must be cosine or constant, not '%s'\n", schedule);
        return 2;
    }
    c.cosine = !strcmp(schedule, "cosine");
    c.beta1 = beta1, c.beta2 = beta2, c.eps = eps, c.weight_decay = wd, c.grad_clip = clip;
    c.val_fraction = val_fraction;
    c.threads = (int)threads;
    c.seed = seed;
    c.ckpt_every = ckpt_every, c.keep = (int)keep, c.resume = resume, c.force = force;
    c.eval_every = eval_every;
    c.eval_batches = cli_given(opts, n, "--eval-batches") ? eval_batches : (task ? 4 : 8);
    c.sample_tokens = sample_tokens;
    c.progress = !quiet;
    int strat = ts_strategy_parse(strategy);
    if (strat < 0) {
        fprintf(stderr, "tessera train: --strategy must be mpi, ring, hier or ps, not '%s'\n", strategy);
        return 2;
    }
    if (strcmp(pipeline, "1f1b") && strcmp(pipeline, "gpipe")) {
        fprintf(stderr, "tessera train: --pipeline must be 1f1b or gpipe, not '%s'\n", pipeline);
        return 2;
    }
    int dt = ts_dtype_parse(dtype);
    if (dt != TS_F32 && dt != TS_BF16 && dt != TS_F16) {
        fprintf(stderr, "tessera train: --dtype must be fp32, bf16 or fp16, not '%s'\n", dtype);
        return 2;
    }
    c.dtype = (ts_dtype)dt;
    c.tp = (int)tp, c.pp = (int)pp;
    c.strategy = (ts_reduce_strategy)strat;
    c.rebalance_every = rebalance_every, c.rebalance_gain = rebalance_gain;
    c.zero = zero, c.bucket_mb = bucket_mb, c.overlap = !no_overlap, c.bind = !no_bind;
    c.schedule = strcmp(pipeline, "gpipe") ? TS_SCHEDULE_1F1B : TS_SCHEDULE_GPIPE;
    if (resume && force) {
        fprintf(stderr, "tessera train: --resume continues a run, --force starts one over: not both\n");
        return 2;
    }
    if ((resume || force) && !c.out_dir[0]) {
        fprintf(stderr, "tessera train: %s needs the run's directory (--out)\n", resume ? "--resume" : "--force");
        return 2;
    }
    if (resume && (rc = merge_resume(&c, opts, n))) return rc;
    if (c.init[0]) {
        static const char *const shape[] = {"--model", "--layers", "--heads", "--width", "--context", NULL};
        for (const char *const *s = shape; *s; s++)
            if (cli_given(opts, n, *s)) {
                fprintf(stderr, "tessera train: %s: with --init the model's shape is the checkpoint's\n", *s);
                return 2;
            }
        /* without --seq-len: the default, or the checkpoint's context if shorter */
        char ckpt[4300], mf[4400];
        ts_gpt_config cfg;
        snprintf(mf, sizeof mf, "%s/model.safetensors", c.init);
        if (ts_gpt_read_config(mf, &cfg) != TS_OK) {
            ts_clear_error();
            if (ts_checkpoint_latest(c.init, ckpt, sizeof ckpt) != TS_OK) return cli_fail("--init");
            snprintf(mf, sizeof mf, "%s/model.safetensors", ckpt);
            if (ts_gpt_read_config(mf, &cfg) != TS_OK) return cli_fail("--init");
        }
        if (!cli_given(opts, n, "--seq-len") && c.seq_len > cfg.max_seq_len) c.seq_len = cfg.max_seq_len;
    }
    /* a stuck collective names the missing ranks after `watchdog` seconds
     * and ends the job after twice that (TESSERA_WATCHDOG otherwise) */
    if (cli_given(opts, n, "--watchdog")) ts_watchdog_set(watchdog, 2 * watchdog);

    catch_signals();
    ts_train_result r;
    if (ts_train(&c, &r) != TS_OK) return cli_fail("train");
    return r.interrupted ? 128 + r.interrupted : 0;
}
