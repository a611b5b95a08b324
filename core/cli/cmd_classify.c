/* tessera classify train | eval | predict: fine-tune a language model's
 * trunk as a text classifier, measure it, use it (tessera/classify.h). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "json.h"
#include "options.h"
#include "tessera/checkpoint.h"
#include "tessera/classify.h"
#include "tessera/tessera.h"

/* SIGINT or SIGTERM: stop after the step in flight with a checkpoint; a
 * second one ends the process. */
static void stop_after_step(int sig)
{
    if (!ts_train_stop_requested()) {
        ts_train_request_stop(sig);
        return;
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

/* "--max-len" -> "max_len": the setting an option sets. */
static void option_key(const char *option, char *key, size_t n)
{
    snprintf(key, n, "%s", option + 2);
    for (char *p = key; *p; p++)
        if (*p == '-') *p = '_';
}

/* --resume: the run continues with its saved settings. A given option that
 * a resumed run may not change must equal the saved setting. */
static int merge_resume(ts_classify_config *c, const cli_option *opts, int n)
{
    char *settings = NULL;
    if (ts_classify_run_settings(c->out, &settings)) return cli_fail("--resume");
    ts_classify_config saved;
    ts_classify_defaults(&saved);
    ts_status st = ts_classify_settings_parse(settings, &saved);
    free(settings);
    if (st) {
        fprintf(stderr, "tessera classify train: --resume: the settings saved in %s: %s\n", c->out, ts_last_error());
        return 1;
    }
    static char keys[64][48];
    const char *only[65];
    int k = 0;
    const char *const *may = ts_classify_resumable_settings();
    for (int i = 0; i < n && k < 64; i++) {
        if (!opts[i].given) continue;
        option_key(opts[i].name, keys[k], sizeof keys[k]);
        int changeable = 0;
        for (const char *const *p = may; *p; p++) changeable |= !strcmp(*p, keys[k]);
        if (!changeable) only[k] = keys[k], k++;
    }
    only[k] = NULL;
    static char a[TS_SETTINGS_MAX], b[TS_SETTINGS_MAX];
    char diff[2048];
    ts_classify_settings_json(&saved, a, sizeof a);
    ts_classify_settings_json(c, b, sizeof b);
    if (k > 0 && ts_json_object_diff(a, b, only, diff, sizeof diff) > 0) {
        fprintf(stderr, "tessera classify train: --resume continues %s with its own settings, and these given options "
                "differ from them (saved vs given): %s\n", c->out, diff);
        return 2;
    }
    if (cli_given(opts, n, "--epochs")) saved.epochs = c->epochs;
    if (cli_given(opts, n, "--keep")) saved.keep = c->keep;
    if (cli_given(opts, n, "--log")) snprintf(saved.log, sizeof saved.log, "%s", c->log);
    if (cli_given(opts, n, "--eval-batch")) saved.eval_batch = c->eval_batch;
    snprintf(saved.out, sizeof saved.out, "%s", c->out);
    snprintf(saved.device, sizeof saved.device, "%s", c->device);
    saved.threads = c->threads, saved.progress = c->progress, saved.resume = 1;
    *c = saved;
    return 0;
}

static int classify_train(int argc, char **argv)
{
    ts_classify_config c;
    ts_classify_defaults(&c);
    int64_t threads = 0, keep = c.keep;
    int quiet = 0;
    double watchdog = 300;
    const double big = 1e15;
    cli_option opts[] = {
        {"--train", OPT_STRING, c.train, sizeof c.train, "labeled training file: JSON lines, CSV or TSV (required)",
         NULL, 0, 0, 0},
        {"--val", OPT_STRING, c.val, sizeof c.val, "labeled held-out file", "a --val-fraction split of --train", 0, 0,
         0},
        {"--val-fraction", OPT_DOUBLE, &c.val_fraction, 0, "held-out share of --train (0: no evaluation)", "0.1", 0,
         0.9, 0},
        {"--format", OPT_STRING, c.format, sizeof c.format, "auto | jsonl | csv | tsv", "auto (by file name)", 0, 0, 0},
        {"--text-field", OPT_STRING, c.text_field, sizeof c.text_field, "member or column of the text", "text", 0, 0,
         0},
        {"--label-field", OPT_STRING, c.label_field, sizeof c.label_field, "member or column of the label", "label",
         0, 0, 0},
        {"--init", OPT_STRING, c.init, sizeof c.init,
         "a `tessera train` run or checkpoint: its weights become the trunk, its tokenizer the tokenizer",
         "a new model", 0, 0, 0},
        {"--tokenizer", OPT_STRING, c.tokenizer, sizeof c.tokenizer,
         "without --init: byte | bpe:N | word:N (trained on the texts) | tokenizer file", "byte", 0, 0, 0},
        {"--layers", OPT_INT, &c.layers, 0, "without --init: transformer blocks", "4", 1, 1024, 0},
        {"--heads", OPT_INT, &c.heads, 0, "without --init: attention heads", "4", 1, 65536, 0},
        {"--width", OPT_INT, &c.width, 0, "without --init: embedding width", "256", 1, 65536, 0},
        {"--max-len", OPT_INT, &c.max_len, 0, "tokens per text (longer ones are cut; batches are padded to "
         "their longest)", "128", 1, 1 << 20, 0},
        {"--pool", OPT_STRING, c.pool, sizeof c.pool, "last (the last real token) | mean (of the real tokens) | "
         "max (each channel's max over the real tokens) | mixed (an ensemble's members alternate last and mean)", "last", 0, 0, 0},
        {"--attention", OPT_STRING, c.attention, sizeof c.attention, "causal | bidirectional (encoder style)",
         "causal", 0, 0, 0},
        {"--char-ngrams", OPT_INT, &c.char_ngrams, 0, "buckets of a table of hashed character 2- to 5-grams "
         "whose rows are added to each token's embedding (fastText's subwords of its word; 65536 is a fair size)",
         "0 (none)", 0, 1 << 24, 0},
        {"--class-weights", OPT_STRING, c.class_weights, sizeof c.class_weights,
         "balanced | w1,w2,... in label order: weigh the loss for unbalanced classes", "none", 0, 0, 0},
        {"--epochs", OPT_INT, &c.epochs, 0, "passes over the training examples", "5", 0, 1e6, 0},
        {"--batch", OPT_INT, &c.batch, 0, "examples per step (global: processes take a share each)", "32", 1,
         1 << 20, 0},
        {"--warmup", OPT_INT, &c.warmup, 0, "linear warmup steps", "5% of the steps", 0, big, 0},
        {"--optim", OPT_STRING, c.optim, sizeof c.optim, "sgd | momentum | adam | adamw", "adamw", 0, 0, 0},
        {"--lr", OPT_FLOAT, &c.lr, 0, "peak learning rate", "1e-3", 1e-12, 100, 0},
        {"--trunk-lr", OPT_FLOAT, &c.trunk_lr, 0, "the trunk's peak learning rate (0: train the head only)", "--lr",
         0, 100, 0},
        {"--min-lr", OPT_FLOAT, &c.min_lr, 0, "cosine floor", "lr/10", 0, 100, 0},
        {"--schedule", OPT_STRING, c.schedule, sizeof c.schedule, "cosine | constant", "cosine", 0, 0, 0},
        {"--beta1", OPT_FLOAT, &c.beta1, 0, "Adam beta1, or SGD momentum", "0.9", 0, 0.999999, 0},
        {"--beta2", OPT_FLOAT, &c.beta2, 0, "Adam beta2", "0.999", 0, 0.999999, 0},
        {"--eps", OPT_FLOAT, &c.eps, 0, "Adam epsilon", "1e-8", 1e-30, 1, 0},
        {"--weight-decay", OPT_FLOAT, &c.weight_decay, 0, "decoupled (AdamW) weight decay on matrices", "0.01", 0, 100,
         0},
        {"--token-dropout", OPT_DOUBLE, &c.token_dropout, 0, "share of a training text's tokens left out each "
         "time it is seen (word dropout, a regulariser)", "0", 0, 0.9, 0},
        {"--lm-weight", OPT_DOUBLE, &c.lm_weight, 0, "weight of the texts' language-model loss added to the "
         "classes' (GPT-1's auxiliary objective; causal attention)", "0", 0, 100, 0},
        {"--grad-clip", OPT_FLOAT, &c.grad_clip, 0, "global gradient norm limit, 0 = off", "1.0", 0, 1e30, 0},
        {"--best-by", OPT_STRING, c.best_by, sizeof c.best_by, "held-out score that picks `best`: accuracy | "
         "macro_f1 | loss", "accuracy", 0, 0, 0},
        {"--seed", OPT_UINT, &c.seed, 0, "seed of the weights, the split and the order", "1337", 0,
         9223372036854775807.0, 0},
        {"--ensemble", OPT_INT, &c.ensemble, 0, "train this many classifiers (seeds seed, seed+1, ...) into "
         "<out>/member-i; eval and predict average their probabilities", "1", 1, 1024, 0},
        {"--device", OPT_STRING, c.device, sizeof c.device, "cpu | opencl | opencl:N | opencl:<name> | auto", "auto", 0,
         0, 0},
        {"--threads", OPT_INT, &threads, 0, "CPU threads", "all cores (their share under mpirun)", 1, 4096, 0},
        {"--out", OPT_STRING, c.out, sizeof c.out, "directory for checkpoints, log, labels and tokenizer", NULL, 0, 0,
         0},
        {"--force", OPT_FLAG, &c.force, 0, "start a new run in an --out that holds one (deletes its checkpoints)",
         NULL, 0, 0, 0},
        {"--resume", OPT_FLAG, &c.resume, 0, "continue the run in --out from its latest checkpoint", NULL, 0, 0, 0},
        {"--keep", OPT_INT, &keep, 0, "checkpoints kept besides latest and best; 0 = all", "3", 0, 1 << 30, 0},
        {"--log", OPT_STRING, c.log, sizeof c.log, "JSON-lines log, - for none", "<out>/log.jsonl", 0, 0, 0},
        {"--eval-batch", OPT_INT, &c.eval_batch, 0, "examples per evaluation batch", "64", 1, 1 << 20, 0},
        {"--quiet", OPT_FLAG, &quiet, 0, "no progress output", NULL, 0, 0, 0},
        {"--watchdog", OPT_DOUBLE, &watchdog, 0, "seconds a collective may wait (mpirun); 0 = never", "300", 0, 1e9,
         0},
    };
    int n = (int)(sizeof opts / sizeof *opts);
    int rc = cli_parse("classify train", "--train FILE [options]", opts, n, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (!c.train[0] && !c.resume) {
        fprintf(stderr, "tessera classify train: --train is required\n");
        return 2;
    }
    if (!cli_given(opts, n, "--min-lr")) { /* a tenth of lr as typed: 1e-3 gives 1e-4, not 1.00000005e-4 */
        char typed[32];
        c.min_lr = (float)(strtod(ts_json_float(typed, sizeof typed, c.lr), NULL) / 10.0);
    }
    if (!cli_given(opts, n, "--trunk-lr")) c.trunk_lr = -1.0f;
    if (!cli_given(opts, n, "--warmup")) c.warmup = -1;
    c.threads = (int)threads, c.keep = (int)keep, c.progress = !quiet;
    if ((c.resume || c.force) && !c.out[0]) {
        fprintf(stderr, "tessera classify train: %s needs the run's directory (--out)\n", c.resume ? "--resume" : "--force");
        return 2;
    }
    if (c.resume && c.force) {
        fprintf(stderr, "tessera classify train: --resume continues a run, --force starts one over: not both\n");
        return 2;
    }
    if (c.resume && (rc = merge_resume(&c, opts, n))) return rc;
    if (cli_given(opts, n, "--watchdog")) ts_watchdog_set(watchdog, 2 * watchdog);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = stop_after_step;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    ts_classify_result r;
    if (ts_classify_train(&c, &r) != TS_OK) return cli_fail("classify train");
    return r.interrupted ? 128 + r.interrupted : 0;
}

/* The options eval and predict share, and their parse. */
static int use_options(const char *command, ts_classify_use *u, int argc, char **argv, int eval)
{
    int64_t threads = 0;
    cli_option opts[] = {
        {"--checkpoint", OPT_STRING, u->checkpoint, sizeof u->checkpoint,
         "a classifier run (its best checkpoint, else latest), an ensemble's directory, or a checkpoint (required)",
         NULL, 0, 0, 0},
        {"--data", OPT_STRING, u->data, sizeof u->data,
         eval ? "labeled file: JSON lines, CSV or TSV (required)" : "texts: JSON lines, CSV, TSV or lines (required)",
         NULL, 0, 0, 0},
        {"--format", OPT_STRING, u->format, sizeof u->format, eval ? "auto | jsonl | csv | tsv" : "auto | jsonl | csv | tsv | lines",
         "auto (by file name)", 0, 0, 0},
        {"--text-field", OPT_STRING, u->text_field, sizeof u->text_field, "member or column of the text", "text", 0, 0,
         0},
        {"--label-field", OPT_STRING, u->label_field, sizeof u->label_field, "member or column of the label", "label",
         0, 0, 0},
        {"--out", OPT_STRING, u->out, sizeof u->out,
         eval ? "write the metrics as JSON to this file (- = standard output, instead of the table)"
              : "JSON lines: text, predicted label, probabilities", eval ? "none" : "standard output", 0, 0, 0},
        {"--count-unseen", OPT_FLAG, &u->count_unseen, 0, "count labels the model never saw as errors instead of failing",
         NULL, 0, 0, 0},
        {"--batch", OPT_INT, &u->batch, 0, "examples per batch", "64", 1, 1 << 20, 0},
        {"--device", OPT_STRING, u->device, sizeof u->device, "cpu | opencl | opencl:N | opencl:<name> | auto", "auto", 0,
         0, 0},
        {"--threads", OPT_INT, &threads, 0, "CPU threads", "all cores", 1, 4096, 0},
        {"--quiet", OPT_FLAG, &u->quiet, 0, "no table", NULL, 0, 0, 0},
    };
    int n = 0;
    for (size_t i = 0; i < sizeof opts / sizeof *opts; i++) /* predict has no labels to count, no table */
        if (eval || (strcmp(opts[i].name, "--count-unseen") && strcmp(opts[i].name, "--quiet"))) opts[n++] = opts[i];
    int rc = cli_parse(command, "--checkpoint DIR --data FILE [options]", opts, n, argc, argv);
    if (rc) return rc == 1 ? -1 : rc;
    if (!u->checkpoint[0] || !u->data[0]) {
        fprintf(stderr, "tessera %s: --checkpoint and --data are required\n", command);
        return 2;
    }
    u->threads = (int)threads;
    return 0;
}

int cmd_classify(int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    if (!strcmp(sub, "train")) return classify_train(argc - 1, argv + 1);
    if (!strcmp(sub, "eval") || !strcmp(sub, "predict")) {
        int eval = !strcmp(sub, "eval");
        ts_classify_use u;
        ts_classify_use_defaults(&u);
        int rc = use_options(eval ? "classify eval" : "classify predict", &u, argc - 1, argv + 1, eval);
        if (rc) return rc < 0 ? 0 : rc;
        if (!eval) return ts_classify_predict(&u) ? cli_fail("classify predict") : 0;
        ts_class_metrics m;
        ts_label_set labels;
        if (ts_classify_evaluate(&u, &m, &labels)) return cli_fail("classify eval");
        ts_metrics_free(&m);
        ts_label_set_free(&labels);
        return 0;
    }
    FILE *f = strcmp(sub, "help") && strcmp(sub, "--help") && strcmp(sub, "-h") ? stderr : stdout;
    if (f == stderr && sub[0]) fprintf(stderr, "tessera classify: unknown subcommand '%s'\n\n", sub);
    fprintf(f,
            "usage: tessera classify <train | eval | predict> [options]\n\n"
            "  train     fine-tune a classifier on labeled text (from a `tessera train` checkpoint with --init,\n"
            "            or from scratch); evaluates on held-out examples every epoch and keeps the best\n"
            "  eval      accuracy, macro and per-class precision, recall and F1, and the confusion matrix\n"
            "  predict   one JSON line per text: the text, the predicted label, every class's probability\n\n"
            "tessera classify <subcommand> --help lists its options.\n");
    return f == stdout ? 0 : 2;
}
