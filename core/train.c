#include "tessera/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fileio.h"
#include "json.h"
#include "tessera/checkpoint.h"
#include "tessera/data.h"
#include "tessera/device.h"
#include "tessera/generate.h"
#include "tessera/optimizer.h"
#include "tessera/task.h"
#include "tessera/tokenizer.h"

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        ts_status st_ = (expr);                                                                    \
        if (st_ != TS_OK) return st_;                                                              \
    } while (0)

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void ts_train_defaults(ts_train_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->tokenizer, sizeof c->tokenizer, "byte");
    c->val_fraction = 0.1;
    c->model = (ts_gpt_config){.vocab_size = 0, .max_seq_len = 256, .n_layer = 6, .n_head = 6, .n_embd = 384};
    c->batch = 8, c->seq_len = 256, c->grad_accum = 1, c->steps = 1000;
    c->optim = TS_OPTIM_ADAMW;
    c->lr = 3e-4f, c->min_lr = 0.0f, c->beta1 = 0.9f, c->beta2 = 0.95f, c->eps = 1e-8f;
    c->weight_decay = 0.1f, c->grad_clip = 1.0f;
    c->warmup = 0, c->cosine = 1;
    snprintf(c->device, sizeof c->device, "auto");
    c->seed = 1337;
    c->keep = 3;
    c->eval_every = 0, c->eval_batches = 8;
    c->progress = 1;
    c->sample_tokens = 200;
}

void ts_train_settings_json(const ts_train_config *c, char *buf, size_t n)
{
    char data[2100], tok[2100];
    ts_json_escape(data, sizeof data, c->data);
    ts_json_escape(tok, sizeof tok, c->tokenizer);
    snprintf(buf, n,
             "{\"data\": %s, \"tokenizer\": %s, \"val_fraction\": %.9g, \"vocab_size\": %lld, "
             "\"max_seq_len\": %lld, \"n_layer\": %lld, \"n_head\": %lld, \"n_embd\": %lld, "
             "\"batch\": %lld, \"seq_len\": %lld, \"grad_accum\": %lld, \"steps\": %lld, "
             "\"optim\": \"%s\", \"lr\": %.9g, \"min_lr\": %.9g, \"beta1\": %.9g, \"beta2\": %.9g, "
             "\"eps\": %.9g, \"weight_decay\": %.9g, \"grad_clip\": %.9g, \"warmup\": %lld, "
             "\"schedule\": \"%s\", \"seed\": %llu}",
             data, tok, c->val_fraction, (long long)c->model.vocab_size, (long long)c->model.max_seq_len,
             (long long)c->model.n_layer, (long long)c->model.n_head, (long long)c->model.n_embd,
             (long long)c->batch, (long long)c->seq_len, (long long)c->grad_accum, (long long)c->steps,
             ts_optim_kind_name(c->optim), c->lr, c->min_lr, c->beta1, c->beta2, c->eps,
             c->weight_decay, c->grad_clip, (long long)c->warmup, c->cosine ? "cosine" : "constant",
             (unsigned long long)c->seed);
}

/* ---- data and tokenizer ---- */

static void data_cache_dir(char *out, size_t n)
{
    const char *env = getenv("TESSERA_DATA_CACHE");
    if (env && *env) snprintf(out, n, "%s", env);
    else if (getenv("XDG_CACHE_HOME") && *getenv("XDG_CACHE_HOME"))
        snprintf(out, n, "%s/tessera/tokens", getenv("XDG_CACHE_HOME"));
    else if (getenv("HOME") && *getenv("HOME")) snprintf(out, n, "%s/.cache/tessera/tokens", getenv("HOME"));
    else snprintf(out, n, "/tmp/tessera-tokens");
}

/* Tokenizer for the run: from the checkpoint when resuming, a file, byte,
 * or BPE trained on the text (then saved to out_dir). */
static ts_status setup_tokenizer(const ts_train_config *c, const char *resume_ckpt, ts_tokenizer *tok)
{
    if (resume_ckpt) {
        char f[4300];
        snprintf(f, sizeof f, "%s/tokenizer.txt", resume_ckpt);
        return ts_tokenizer_load(tok, f);
    }
    if (!c->data[0] || !strcmp(c->tokenizer, "byte")) return ts_tokenizer_init_byte(tok);
    if (ts_tokenizer_spec_is_file(c->tokenizer)) return ts_tokenizer_load(tok, c->tokenizer);
    int vocab = atoi(c->tokenizer + 4);
    if (ts_is_token_file(c->data))
        return ts_error(TS_ERR_INVALID_ARG, "%s is already tokenized: pass its tokenizer file, not %s",
                        c->data, c->tokenizer);
    char *text;
    size_t n;
    TRY(ts_read_file(c->data, &text, &n));
    ts_status st = ts_tokenizer_train_bpe(tok, (const uint8_t *)text, n, vocab);
    free(text);
    if (st) return ts_error_context(st, "training a BPE tokenizer on %s", c->data);
    if (c->out_dir[0]) {
        char f[4300];
        TRY(ts_mkdir_p(c->out_dir));
        snprintf(f, sizeof f, "%s/tokenizer.txt", c->out_dir);
        TRY(ts_tokenizer_save(tok, f));
    }
    return TS_OK;
}

static ts_status setup_data(const ts_train_config *c, const ts_tokenizer *tok, ts_dataset *ds)
{
    if (!c->data[0]) return ts_dataset_open_sort_task(ds);
    if (ts_is_token_file(c->data)) {
        TRY(ts_dataset_open_tokens(ds, c->data, c->val_fraction));
        if (ds->vocab_size > tok->vocab_size) {
            ts_status st = ts_error(TS_ERR_INVALID_ARG,
                                    "%s holds tokens of a %lld-token vocabulary; the tokenizer has %d",
                                    c->data, (long long)ds->vocab_size, tok->vocab_size);
            ts_dataset_close(ds);
            return st;
        }
        return TS_OK;
    }
    char cache[4096];
    data_cache_dir(cache, sizeof cache);
    return ts_dataset_open_text(ds, c->data, tok, cache, c->val_fraction);
}

/* ---- measurement ---- */

/* Best rate of one product shape (5 timed runs after a warm-up). */
static double gemm_rate(ts_device *dev, int64_t M, int64_t N, int64_t K)
{
    ts_tensor a, b, o;
    double best = 0;
    if (ts_tensor_alloc(&a, dev, TS_F32, TS_SHAPE(M, K)) != TS_OK) return 0;
    if (ts_tensor_alloc(&b, dev, TS_F32, TS_SHAPE(N, K)) != TS_OK) {
        ts_tensor_free(&a);
        return 0;
    }
    if (ts_tensor_alloc(&o, dev, TS_F32, TS_SHAPE(M, N)) == TS_OK) {
        ts_fill(&a, 0.01f), ts_fill(&b, 0.02f);
        for (int r = 0; r < 6; r++) {
            ts_device_synchronize(dev);
            double t0 = now_s();
            if (ts_linear_forward(&o, &a, &b, NULL) != TS_OK) break;
            ts_device_synchronize(dev);
            double rate = 2.0 * (double)M * (double)N * (double)K / (now_s() - t0);
            if (r > 0 && rate > best) best = rate;
        }
        ts_tensor_free(&o);
    }
    ts_tensor_free(&a), ts_tensor_free(&b);
    return best;
}

/* The yardstick for MFU: the device's best measured GEMM rate, at the
 * model's MLP shape and at a square 1024 product (TESSERA_PEAK_GFLOPS
 * overrides). */
static double measure_peak(ts_device *dev, const ts_gpt_config *m, int64_t rows)
{
    const char *env = getenv("TESSERA_PEAK_GFLOPS");
    if (env && atof(env) > 0) return atof(env) * 1e9;
    int wp = ts_profile_enabled();
    ts_profile_enable(0);
    if (rows > 4096) rows = 4096;
    double a = gemm_rate(dev, rows, 4 * m->n_embd, m->n_embd), b = gemm_rate(dev, 1024, 1024, 1024);
    ts_profile_enable(wp);
    ts_clear_error();
    return a > b ? a : b;
}

static void fmt_duration(double s, char *buf, size_t n)
{
    if (!isfinite(s) || s < 0) snprintf(buf, n, "?");
    else if (s < 60) snprintf(buf, n, "%.0fs", s);
    else if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
}

static void fmt_rate(double r, char *buf, size_t n)
{
    if (r >= 1e6) snprintf(buf, n, "%.2fM", r / 1e6);
    else if (r >= 1e3) snprintf(buf, n, "%.1fk", r / 1e3);
    else snprintf(buf, n, "%.0f", r);
}

/* ---- evaluation ---- */

static ts_status eval_loss(ts_gpt *m, ts_dataset *ds, const ts_train_config *c, int32_t *in,
                           int32_t *tg, double *loss)
{
    double sum = 0;
    for (int64_t i = 0; i < c->eval_batches; i++) {
        float l;
        TRY(ts_dataset_batch(ds, TS_SPLIT_VAL, c->seed, i * c->batch, c->batch, c->seq_len, in, tg));
        TRY(ts_gpt_forward(m, in, tg, c->batch, c->seq_len, &l));
        sum += l;
    }
    *loss = c->eval_batches ? sum / (double)c->eval_batches : NAN;
    return TS_OK;
}

/* What the model learned: task accuracy, or a sample of text. */
static ts_status show_learning(ts_gpt *m, ts_dataset *ds, const ts_tokenizer *tok,
                               const ts_train_config *c, FILE *out, double *task_accuracy)
{
    *task_accuracy = NAN;
    if (!c->data[0]) {
        if (out) fprintf(out, "\nWhat the model learned (held-out problems, greedy decoding):\n");
        TRY(ts_sort_task_evaluate(m, 200, c->seed, 8, out, task_accuracy));
        if (out) fprintf(out, "accuracy on 200 unseen problems: %.1f%%\n", 100.0 * *task_accuracy);
        return TS_OK;
    }
    if (c->sample_tokens <= 0 || !out) return TS_OK;
    int64_t cap = c->sample_tokens + 64, n = 0;
    int32_t *toks = malloc((size_t)cap * sizeof *toks), *in = malloc((size_t)c->seq_len * sizeof *in),
            *tg = malloc((size_t)c->seq_len * sizeof *tg);
    ts_status st = TS_OK;
    if (!toks || !in || !tg) st = ts_error(TS_ERR_OOM, "no memory");
    /* prompt: the first tokens of a held-out window */
    if (!st) st = ts_dataset_batch(ds, TS_SPLIT_VAL, c->seed, 0, 1, c->seq_len, in, tg);
    if (!st) {
        n = c->seq_len < 16 ? c->seq_len : 16;
        memcpy(toks, in, (size_t)n * sizeof *toks);
        ts_sample_options o = {.temperature = 0.8f, .top_k = 40, .seed = c->seed, .stop_token = -1,
                               .context = c->seq_len};
        st = ts_generate(m, toks, &n, cap, c->sample_tokens, &o);
    }
    if (!st) {
        char *text;
        size_t len;
        st = ts_tokenizer_decode(tok, toks, (size_t)n, &text, &len);
        if (!st) {
            fprintf(out, "\nA sample from the model (temperature 0.8, top-k 40):\n---\n");
            fwrite(text, 1, len, out);
            fprintf(out, "\n---\n");
            free(text);
        }
    }
    free(toks), free(in), free(tg);
    return st;
}

/* ---- the loop ---- */

ts_status ts_train(const ts_train_config *cfg_in, ts_train_result *res)
{
    ts_train_config c = *cfg_in;
    memset(res, 0, sizeof *res);
    res->val_loss = NAN;
    res->task_accuracy = NAN;
    if (c.batch < 1 || c.seq_len < 1 || c.grad_accum < 1 || c.steps < 0)
        return ts_error(TS_ERR_INVALID_ARG, "batch, seq_len and grad_accum must be >= 1, steps >= 0");
    if (!(c.lr > 0) || c.val_fraction < 0 || c.val_fraction >= 1)
        return ts_error(TS_ERR_INVALID_ARG, "lr must be > 0 and val_fraction in [0, 1)");
    if (c.resume && !c.out_dir[0])
        return ts_error(TS_ERR_INVALID_ARG, "resuming needs the run's output directory (--out)");
    if (c.threads > 0) TRY(ts_set_threads(c.threads));
    FILE *out = stdout;
    int verbose = c.progress;

    /* resume point */
    char ckpt[4300] = "";
    ts_train_state state;
    memset(&state, 0, sizeof state);
    state.best_val_loss = INFINITY;
    if (c.resume) {
        if (ts_checkpoint_latest(c.out_dir, ckpt, sizeof ckpt) == TS_OK) {
            TRY(ts_checkpoint_read_state(ckpt, &state));
            char mf[4400];
            snprintf(mf, sizeof mf, "%s/model.safetensors", ckpt);
            ts_gpt_config saved;
            TRY(ts_gpt_read_config(mf, &saved));
            c.model = saved;
            if (verbose) fprintf(out, "resuming from %s (step %lld)\n", ckpt, (long long)state.step);
        } else {
            ckpt[0] = '\0';
            ts_clear_error();
            if (verbose) fprintf(out, "no checkpoint in %s: starting from scratch\n", c.out_dir);
        }
    }

    ts_device *dev;
    TRY(ts_device_open(c.device, &dev));
    ts_tokenizer tok;
    TRY(setup_tokenizer(&c, ckpt[0] ? ckpt : NULL, &tok));
    ts_dataset ds;
    ts_status st = setup_data(&c, &tok, &ds);
    if (st) {
        ts_tokenizer_free(&tok);
        return st;
    }
    if (ckpt[0] && state.data_fingerprint != ds.fingerprint) {
        st = ts_error(TS_ERR_INVALID_ARG,
                      "the data differs from the data of checkpoint %s (fingerprint %016llx, now %016llx)",
                      ckpt, (unsigned long long)state.data_fingerprint, (unsigned long long)ds.fingerprint);
        goto done_data;
    }
    if (!ckpt[0]) {
        c.model.vocab_size = tok.vocab_size;
        if (c.model.max_seq_len < c.seq_len) c.model.max_seq_len = c.seq_len;
    }
    if (c.seq_len > c.model.max_seq_len) {
        st = ts_error(TS_ERR_INVALID_ARG, "seq_len %lld exceeds the model's context %lld",
                      (long long)c.seq_len, (long long)c.model.max_seq_len);
        goto done_data;
    }

    ts_gpt m;
    ts_optimizer opt;
    memset(&opt, 0, sizeof opt);
    if ((st = ts_gpt_create(&m, dev, &c.model))) goto done_data;
    if ((st = ts_gpt_init_weights(&m, c.seed))) goto done_model;
    if ((st = ts_optimizer_create(&opt, dev, c.optim, m.num_params, c.beta1, c.beta2, c.eps, c.weight_decay)))
        goto done_model;
    if (ckpt[0] && (st = ts_checkpoint_load(ckpt, &m, &opt))) goto done_model;
    res->num_params = m.num_params;
    res->first_step = state.step;

    /* log */
    FILE *log = NULL;
    char log_path[4300];
    if (strcmp(c.log_path, "-") != 0 && (c.log_path[0] || c.out_dir[0])) {
        if (c.log_path[0]) snprintf(log_path, sizeof log_path, "%s", c.log_path);
        else {
            if ((st = ts_mkdir_p(c.out_dir))) goto done_model;
            snprintf(log_path, sizeof log_path, "%s/log.jsonl", c.out_dir);
        }
        log = fopen(log_path, ckpt[0] ? "a" : "w");
        if (!log) {
            st = ts_error(TS_ERR_IO, "cannot write the log %s", log_path);
            goto done_model;
        }
    }

    int64_t tokens_per_step = c.batch * c.seq_len * c.grad_accum;
    double flops_per_token = ts_gpt_flops_per_token(&c.model, c.seq_len);
    double peak = measure_peak(dev, &c.model, c.batch * c.seq_len);
    if (verbose) {
        const ts_device_info *di = ts_device_get_info(dev);
        fprintf(out, "device   %s (%s)\n", di->id, di->name);
        fprintf(out, "data     %s: %lld training tokens, vocabulary %d\n", ds.name,
                (long long)(ds.train_tokens > ((int64_t)1 << 40) ? -1 : ds.train_tokens), tok.vocab_size);
        fprintf(out, "model    L=%lld H=%lld C=%lld T=%lld: %.2fM parameters\n", (long long)c.model.n_layer,
                (long long)c.model.n_head, (long long)c.model.n_embd, (long long)c.seq_len,
                (double)m.num_params / 1e6);
        fprintf(out, "training %lld steps of %lld x %lld x %lld tokens, %s lr %.2g%s\n", (long long)c.steps,
                (long long)c.batch, (long long)c.grad_accum, (long long)c.seq_len,
                ts_optim_kind_name(c.optim), c.lr, c.cosine ? " cosine" : "");
        if (peak > 0) fprintf(out, "MFU is measured against this device's GEMM rate: %.1f GFLOP/s\n", peak / 1e9);
    }
    if (log) {
        char settings[8192];
        ts_train_settings_json(&c, settings, sizeof settings);
        fprintf(log, "{\"event\": \"start\", \"step\": %lld, \"device\": ", (long long)state.step);
        ts_json_write_string(log, ts_device_get_info(dev)->id);
        fprintf(log, ", \"params\": %lld, \"peak_gflops\": %.1f, \"settings\": %s}\n",
                (long long)m.num_params, peak / 1e9, settings);
        fflush(log);
    }

    /* a whole step's micro-batches (evaluation uses the first) */
    int32_t *in = malloc((size_t)(c.batch * c.seq_len * c.grad_accum) * sizeof *in);
    int32_t *tg = malloc((size_t)(c.batch * c.seq_len * c.grad_accum) * sizeof *tg);
    if (!in || !tg) {
        st = ts_error(TS_ERR_OOM, "no memory for batches");
        goto done_log;
    }
    ts_lr_schedule sched = {.lr = c.lr, .min_lr = c.min_lr, .warmup_steps = c.warmup,
                            .total_steps = c.steps, .cosine = c.cosine};
    const char *fault = getenv("TESSERA_FAULT_EXIT_AT_STEP");
    int64_t fault_step = fault && *fault ? atoll(fault) : -1;
    int tty = isatty(fileno(out));
    int64_t line_every = c.steps >= 20 ? c.steps / 20 : 1;
    double t_start = now_s(), t_window = t_start;
    int64_t window_steps = 0;
    double rate = 0, mfu = 0;
    state.seed = c.seed;
    state.data_fingerprint = ds.fingerprint;
    ts_train_settings_json(&c, state.settings, sizeof state.settings);
    int64_t step = state.step;
    float loss = NAN;

    for (; step < c.steps; step++) {
        if (step == fault_step) _exit(85); /* test hook: a crash between steps */
        if ((st = ts_gpt_zero_grad(&m))) break;
        /* A step's loss is the mean over all its scored tokens: each
         * micro-batch is weighted by its share of them, so accumulation
         * equals one big batch even when targets are masked. */
        int64_t valid = 0, bt = c.batch * c.seq_len;
        for (int64_t micro = 0; micro < c.grad_accum && !st; micro++) {
            int64_t first = (step * c.grad_accum + micro) * c.batch;
            st = ts_dataset_batch(&ds, TS_SPLIT_TRAIN, c.seed, first, c.batch, c.seq_len, in + micro * bt, tg + micro * bt);
            for (int64_t i = 0; i < bt; i++) valid += tg[micro * bt + i] >= 0 && tg[micro * bt + i] < c.model.vocab_size;
        }
        double lsum = 0;
        for (int64_t micro = 0; micro < c.grad_accum && !st && valid > 0; micro++) {
            int64_t v = 0;
            for (int64_t i = 0; i < bt; i++) v += tg[micro * bt + i] >= 0 && tg[micro * bt + i] < c.model.vocab_size;
            if (v == 0) continue;
            float l, share = (float)v / (float)valid;
            st = ts_gpt_forward_backward(&m, in + micro * bt, tg + micro * bt, c.batch, c.seq_len, share, &l);
            lsum += (double)l * share;
        }
        if (st) break;
        if (valid == 0) {
            st = ts_error(TS_ERR_INVALID_ARG, "step %lld has no scored targets", (long long)step);
            break;
        }
        loss = (float)lsum;
        double sq;
        if ((st = ts_grad_sqnorm(&m.grads, &sq))) break;
        double norm = sqrt(sq);
        if (!isfinite(loss) || !isfinite(norm)) {
            st = ts_error(TS_ERR_INVALID_ARG,
                          "training diverged at step %lld: loss %g, gradient norm %g (try a lower --lr)",
                          (long long)step, loss, norm);
            break;
        }
        float lr = ts_lr_at(&sched, step);
        if ((st = ts_gpt_optimizer_step(&m, &opt, lr, ts_clip_scale(norm, c.grad_clip))))
            break;
        state.step = step + 1;
        state.next_sample = state.step * c.grad_accum * c.batch;
        state.tokens_seen += (double)tokens_per_step;
        if (c.on_step) c.on_step(c.on_step_ctx, step, loss, lr, norm);

        /* throughput over the steps since the last report */
        window_steps++;
        double now = now_s();
        if (now - t_window > 0.5 || step + 1 == c.steps) {
            rate = (double)(window_steps * tokens_per_step) / (now - t_window);
            mfu = peak > 0 ? rate * flops_per_token / peak : 0;
            t_window = now;
            window_steps = 0;
        }
        if (log) {
            fprintf(log,
                    "{\"step\": %lld, \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g, \"tokens_per_s\": %.1f, "
                    "\"mfu\": %.4f, \"elapsed_s\": %.3f}\n",
                    (long long)(step + 1), loss, lr, norm, rate, mfu, now - t_start);
            fflush(log);
        }
        double eta = (now - t_start) / (double)(step + 1 - res->first_step) * (double)(c.steps - step - 1);
        if (verbose && (tty || (step + 1) % line_every == 0 || step + 1 == c.steps)) {
            char r[32], e[32], bar[32];
            fmt_rate(rate, r, sizeof r);
            fmt_duration(eta, e, sizeof e);
            int w = 20, filled = (int)((double)w * (double)(step + 1) / (double)c.steps);
            for (int i = 0; i < w; i++) bar[i] = i < filled ? '#' : '.';
            bar[w] = '\0';
            fprintf(out, "%s[%s] step %lld/%lld | loss %.4f | %s tok/s | MFU %.1f%% | ETA %s%s",
                    tty ? "\r" : "", bar, (long long)(step + 1), (long long)c.steps, loss, r, 100.0 * mfu, e,
                    tty ? "   " : "\n");
            fflush(out);
        }
        int last = step + 1 == c.steps;
        if ((c.eval_every > 0 && (step + 1) % c.eval_every == 0) || (last && c.eval_batches > 0)) {
            double vl;
            if ((st = eval_loss(&m, &ds, &c, in, tg, &vl))) break;
            res->val_loss = vl;
            if (vl < state.best_val_loss) state.best_val_loss = vl;
            if (log) {
                fprintf(log, "{\"step\": %lld, \"val_loss\": %.9g}\n", (long long)(step + 1), vl);
                fflush(log);
            }
            if (verbose) fprintf(out, "%sstep %lld: validation loss %.4f\n", tty ? "\n" : "", (long long)(step + 1), vl);
        }
        if (c.out_dir[0] && ((c.ckpt_every > 0 && (step + 1) % c.ckpt_every == 0) || last)) {
            if ((st = ts_checkpoint_save(c.out_dir, &m, &opt, &state, &tok, c.keep))) break;
        }
    }
    if (verbose && tty) fprintf(out, "\n");
    res->steps_done = state.step;
    res->last_loss = loss;
    res->seconds = now_s() - t_start;
    res->tokens_per_second = res->seconds > 0 ? (double)((state.step - res->first_step) * tokens_per_step) / res->seconds : 0;
    res->mfu = peak > 0 ? res->tokens_per_second * flops_per_token / peak : 0;
    if (!st && verbose) {
        char d[32], r[32];
        fmt_duration(res->seconds, d, sizeof d);
        fmt_rate(res->tokens_per_second, r, sizeof r);
        fprintf(out, "trained %lld steps in %s: %s tokens/s, MFU %.1f%%, final loss %.4f\n",
                (long long)(state.step - res->first_step), d, r, 100.0 * res->mfu, loss);
    }
    if (!st && (verbose || !c.data[0])) st = show_learning(&m, &ds, &tok, &c, verbose ? out : NULL, &res->task_accuracy);
    if (log && !st)
        fprintf(log, "{\"event\": \"end\", \"step\": %lld, \"seconds\": %.3f, \"tokens_per_s\": %.1f, \"mfu\": %.4f}\n",
                (long long)state.step, res->seconds, res->tokens_per_second, res->mfu);
done_log:
    free(in), free(tg);
    if (log) fclose(log);
done_model:
    ts_optimizer_free(&opt);
    ts_gpt_free(&m);
done_data:
    ts_dataset_close(&ds);
    ts_tokenizer_free(&tok);
    return st;
}
