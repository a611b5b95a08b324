/* tessera train: train a GPT language model (tessera/train.h). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "options.h"
#include "tessera/tessera.h"
#include "tessera/train.h"

int cmd_train(int argc, char **argv)
{
    ts_train_config c;
    ts_train_defaults(&c);
    char preset[32] = "", optim[32] = "adamw", schedule[32] = "cosine";
    int64_t layers = 0, heads = 0, width = 0, context = 0, batch = 0, seq_len = 0, accum = 1;
    int64_t steps = 0, warmup = -1, threads = 0, ckpt_every = 0, keep = 3, eval_every = 0;
    int64_t eval_batches = -1, sample_tokens = 200;
    uint64_t seed = 1337;
    float lr = 0, min_lr = -1, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, wd = 0.1f, clip = 1.0f;
    double val_fraction = 0.1;
    int resume = 0, quiet = 0, zero = 0, no_overlap = 0, no_bind = 0;
    int64_t tp = 1, pp = 1;
    double bucket_mb = 25.0, watchdog = -1;
    char strategy[32] = "mpi", pipeline[32] = "1f1b";
    const cli_option opts[] = {
        {"--data", OPT_STRING, c.data, sizeof c.data, "UTF-8 text or token file (default: the built-in sorting task)"},
        {"--tokenizer", OPT_STRING, c.tokenizer, sizeof c.tokenizer, "byte | bpe:N (trained on the data) | tokenizer file"},
        {"--val-fraction", OPT_DOUBLE, &val_fraction, 0, "held-out share of the data (0.1)"},
        {"--model", OPT_STRING, preset, sizeof preset, "preset: tiny | d6 | d12 | d24 | d36 | d48"},
        {"--layers", OPT_INT, &layers, 0, "transformer blocks"},
        {"--heads", OPT_INT, &heads, 0, "attention heads"},
        {"--width", OPT_INT, &width, 0, "embedding width (a multiple of heads)"},
        {"--context", OPT_INT, &context, 0, "the model's maximum sequence length (default: --seq-len)"},
        {"--seq-len", OPT_INT, &seq_len, 0, "tokens per training sequence"},
        {"--batch", OPT_INT, &batch, 0, "sequences per micro-batch"},
        {"--accum", OPT_INT, &accum, 0, "micro-batches per step (gradient accumulation)"},
        {"--steps", OPT_INT, &steps, 0, "optimizer steps"},
        {"--optim", OPT_STRING, optim, sizeof optim, "sgd | momentum | adam | adamw"},
        {"--lr", OPT_FLOAT, &lr, 0, "peak learning rate"},
        {"--min-lr", OPT_FLOAT, &min_lr, 0, "cosine floor (default lr/10)"},
        {"--warmup", OPT_INT, &warmup, 0, "linear warmup steps"},
        {"--schedule", OPT_STRING, schedule, sizeof schedule, "cosine | constant"},
        {"--beta1", OPT_FLOAT, &beta1, 0, "Adam beta1, or SGD momentum (0.9)"},
        {"--beta2", OPT_FLOAT, &beta2, 0, "Adam beta2 (0.95)"},
        {"--eps", OPT_FLOAT, &eps, 0, "Adam epsilon (1e-8)"},
        {"--weight-decay", OPT_FLOAT, &wd, 0, "decoupled (AdamW) or L2 weight decay on matrices (0.1)"},
        {"--grad-clip", OPT_FLOAT, &clip, 0, "global gradient norm limit, 0 = off (1.0)"},
        {"--device", OPT_STRING, c.device, sizeof c.device, "cpu | opencl | opencl:N | opencl:<name> | auto"},
        {"--threads", OPT_INT, &threads, 0, "CPU threads"},
        {"--seed", OPT_UINT, &seed, 0, "seed of weights and batches"},
        {"--out", OPT_STRING, c.out_dir, sizeof c.out_dir, "directory for checkpoints, log and tokenizer"},
        {"--ckpt-every", OPT_INT, &ckpt_every, 0, "checkpoint interval in steps (and at the end)"},
        {"--keep", OPT_INT, &keep, 0, "checkpoints to keep (3; 0 = all)"},
        {"--resume", OPT_FLAG, &resume, 0, "continue from the latest checkpoint in --out"},
        {"--eval-every", OPT_INT, &eval_every, 0, "validation interval in steps (and at the end)"},
        {"--eval-batches", OPT_INT, &eval_batches, 0, "validation batches per evaluation"},
        {"--log", OPT_STRING, c.log_path, sizeof c.log_path, "JSON-lines log (default <out>/log.jsonl, - for none)"},
        {"--sample-tokens", OPT_INT, &sample_tokens, 0, "tokens of text to generate at the end (200)"},
        {"--quiet", OPT_FLAG, &quiet, 0, "no progress output"},
        {"--tp", OPT_INT, &tp, 0, "tensor-parallel processes per model replica (under mpirun)"},
        {"--pp", OPT_INT, &pp, 0, "pipeline stages (the rest of the processes are data-parallel)"},
        {"--strategy", OPT_STRING, strategy, sizeof strategy, "gradient reduction: mpi | ring | hier | ps"},
        {"--zero", OPT_FLAG, &zero, 0, "ZeRO-1: shard the optimizer state over the replicas"},
        {"--bucket-mb", OPT_DOUBLE, &bucket_mb, 0, "gradient bucket size in MB (25)"},
        {"--no-overlap", OPT_FLAG, &no_overlap, 0, "reduce gradients after backward, not during it"},
        {"--pipeline", OPT_STRING, pipeline, sizeof pipeline, "pipeline schedule: 1f1b | gpipe"},
        {"--no-bind", OPT_FLAG, &no_bind, 0, "do not bind threads and memory near the device"},
        {"--trace", OPT_STRING, c.trace_path, sizeof c.trace_path, "write every rank's timeline (Chrome trace JSON)"},
        {"--watchdog", OPT_DOUBLE, &watchdog, 0, "seconds before a stuck collective names the missing ranks (300)"},
    };
    int rc = cli_parse("train", "[options]", opts, (int)(sizeof opts / sizeof *opts), argc, argv);
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
    if (layers) c.model.n_layer = layers;
    if (heads) c.model.n_head = heads;
    if (width) c.model.n_embd = width;
    if (seq_len) c.seq_len = seq_len;
    c.model.max_seq_len = context ? context : c.seq_len;
    if (batch) c.batch = batch;
    if (steps) c.steps = steps;
    if (lr > 0) c.lr = lr;
    if (warmup >= 0) c.warmup = warmup;
    c.min_lr = min_lr >= 0 ? min_lr : c.lr / 10.0f;
    c.grad_accum = accum;
    int kind = ts_optim_kind_parse(optim);
    if (kind < 0) {
        fprintf(stderr, "tessera train: --optim must be sgd, momentum, adam or adamw, not '%s'\n", optim);
        return 2;
    }
    c.optim = (ts_optim_kind)kind;
    if (strcmp(schedule, "cosine") && strcmp(schedule, "constant")) {
        fprintf(stderr, "tessera train: --schedule must be cosine or constant\n");
        return 2;
    }
    c.cosine = !strcmp(schedule, "cosine");
    c.beta1 = beta1, c.beta2 = beta2, c.eps = eps, c.weight_decay = wd, c.grad_clip = clip;
    c.val_fraction = val_fraction;
    c.threads = (int)threads;
    c.seed = seed;
    c.ckpt_every = ckpt_every, c.keep = (int)keep, c.resume = resume;
    c.eval_every = eval_every;
    c.eval_batches = eval_batches >= 0 ? eval_batches : (task ? 4 : 8);
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
    c.tp = (int)tp, c.pp = (int)pp;
    c.strategy = (ts_reduce_strategy)strat;
    c.zero = zero, c.bucket_mb = bucket_mb, c.overlap = !no_overlap, c.bind = !no_bind;
    c.schedule = strcmp(pipeline, "gpipe") ? TS_SCHEDULE_1F1B : TS_SCHEDULE_GPIPE;
    if (watchdog >= 0) ts_watchdog_set(watchdog, 0);

    ts_train_result r;
    if (ts_train(&c, &r) != TS_OK) return cli_fail("train");
    return 0;
}
