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
#include "tessera/placement.h"
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
    c->tp = 1, c->pp = 1;
    c->strategy = TS_STRATEGY_MPI;
    c->bucket_mb = 25.0;
    c->overlap = 1;
    c->schedule = TS_SCHEDULE_1F1B;
    c->bind = 1;
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
             "\"schedule\": \"%s\", \"seed\": %llu, \"tp\": %d, \"pp\": %d, \"strategy\": \"%s\", "
             "\"zero\": %d, \"pipeline\": \"%s\"}",
             data, tok, c->val_fraction, (long long)c->model.vocab_size, (long long)c->model.max_seq_len,
             (long long)c->model.n_layer, (long long)c->model.n_head, (long long)c->model.n_embd,
             (long long)c->batch, (long long)c->seq_len, (long long)c->grad_accum, (long long)c->steps,
             ts_optim_kind_name(c->optim), c->lr, c->min_lr, c->beta1, c->beta2, c->eps,
             c->weight_decay, c->grad_clip, (long long)c->warmup, c->cosine ? "cosine" : "constant",
             (unsigned long long)c->seed, c->tp, c->pp, ts_strategy_name(c->strategy), c->zero,
             c->schedule == TS_SCHEDULE_GPIPE ? "gpipe" : "1f1b");
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
static ts_status setup_tokenizer(const ts_train_config *c, const char *resume_ckpt, int writer, ts_tokenizer *tok)
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
    if (c->out_dir[0] && writer) {
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

/* Validation loss: eval_batches batches of `batch` sequences, each
 * replica scoring its rows, through the pipeline. */
static ts_status eval_loss(ts_engine *e, const ts_grid *g, ts_dataset *ds, const ts_train_config *c,
                           int32_t *in, int32_t *tg, double *loss)
{
    int64_t bl = c->batch / g->dp, n = bl * c->seq_len;
    for (int64_t i = 0; i < c->eval_batches; i++)
        TRY(ts_dataset_batch(ds, TS_SPLIT_VAL, c->seed, i * c->batch + g->dp_rank * bl, bl, c->seq_len,
                             in + i * n, tg + i * n));
    return ts_engine_eval(e, (int)c->eval_batches, bl, c->seq_len, in, tg, loss);
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

/* ---- processes: grid, placement, checkpoints ---- */

/* Bind near the device: the processes on this node whose devices share a
 * locality split its cores. Returns the report; sets threads to the cores
 * given unless the user chose a count. */
static ts_status place_process(const ts_train_config *c, const ts_grid *g, ts_device *dev, ts_binding *b)
{
    memset(b, 0, sizeof *b);
    ts_locality loc;
    TRY(ts_device_locality(dev, &loc));
    ts_comm *node = ts_comm_node();
    int n = ts_comm_size(node), me = ts_comm_rank(node);
    char(*all)[128] = calloc((size_t)n, sizeof *all);
    if (!all) return ts_error(TS_ERR_OOM, "no memory");
    char mine[128];
    snprintf(mine, sizeof mine, "%s", loc.cpus);
    ts_status st = ts_comm_allgather(node, mine, all, sizeof mine, "placement");
    int share = 0, count = 0;
    for (int r = 0; r < n && !st; r++)
        if (!strcmp(all[r], mine)) {
            if (r < me) share++;
            count++;
        }
    free(all);
    if (st) return st;
    if (!c->bind) snprintf(b->report, sizeof b->report, "not bound (--no-bind)");
    else TRY(ts_placement_bind(dev, share, count, b));
    /* threads: the cores given, or this process's share of the node's */
    if (c->threads <= 0 && !getenv("TESSERA_THREADS")) {
        int threads = b->bound ? b->cores : 0;
        if (!b->bound && g->local_size > 1) {
            long cpus = sysconf(_SC_NPROCESSORS_ONLN);
            threads = (int)(cpus / g->local_size);
            if (threads < 1) threads = 1;
        }
        if (threads > 0) TRY(ts_set_threads(threads));
    }
    return TS_OK;
}

/* A checkpoint that every process takes part in: world rank 0 prepares
 * the directory and writes the files that the engine assembles. */
static ts_status save_checkpoint(ts_engine *e, const ts_grid *g, const ts_train_config *c,
                                 const ts_train_state *state, const ts_tokenizer *tok)
{
    char tmp[4200] = "", f[4300], fp[32];
    const char *meta[4];
    int root = g->rank == 0;
    ts_status st = root ? ts_checkpoint_begin(c->out_dir, state->step, tmp, sizeof tmp) : TS_OK;
    st = ts_comm_agree(g->world, st, "preparing a checkpoint");
    if (st) return st;
    ts_checkpoint_model_meta(tok, fp, meta);
    snprintf(f, sizeof f, "%s/model.safetensors", tmp);
    st = ts_engine_save_model(e, f, meta);
    snprintf(f, sizeof f, "%s/optim.safetensors", tmp);
    if (!st) st = ts_engine_save_optimizer(e, f);
    if (root) {
        if (st) ts_checkpoint_abandon(tmp);
        else st = ts_checkpoint_finish(c->out_dir, tmp, state, tok, c->keep);
    }
    return ts_comm_agree(g->world, st, "saving a checkpoint");
}

static void fmt_layout(const ts_grid *g, const ts_train_config *c, char *buf, size_t n)
{
    if (g->size == 1) {
        snprintf(buf, n, "one process");
        return;
    }
    size_t k = (size_t)snprintf(buf, n, "%d processes: tensor %d x pipeline %d x data %d", g->size, g->tp, g->pp, g->dp);
    if (g->dp > 1 && k < n)
        k += (size_t)snprintf(buf + k, n - k, ", gradients by %s%s%s", ts_strategy_name(c->strategy),
                              c->zero ? " with ZeRO-1" : "", c->overlap ? " overlapped with backward" : "");
    if (g->pp > 1 && k < n)
        snprintf(buf + k, n - k, ", %s over %lld micro-batches", c->schedule == TS_SCHEDULE_GPIPE ? "GPipe" : "1F1B",
                 (long long)c->grad_accum);
}

/* ---- the loop ---- */

typedef struct run {
    ts_grid g;
    int have_grid;
    ts_device *dev;
    ts_tokenizer tok;
    int have_tok;
    ts_dataset ds;
    int have_ds;
    ts_gpt m;
    int have_model;
    ts_engine *e;
    FILE *log;
    int32_t *in, *tg;
} run;

static void run_free(run *r)
{
    free(r->in), free(r->tg);
    if (r->log) fclose(r->log);
    ts_engine_free(r->e);
    if (r->have_model) ts_gpt_free(&r->m);
    if (r->have_ds) ts_dataset_close(&r->ds);
    if (r->have_tok) ts_tokenizer_free(&r->tok);
    if (r->have_grid) ts_grid_free(&r->g);
}

static ts_status train_run(run *r, ts_train_config c, ts_train_result *res)
{
    if (c.batch < 1 || c.seq_len < 1 || c.grad_accum < 1 || c.steps < 0)
        return ts_error(TS_ERR_INVALID_ARG, "batch, seq_len and grad_accum must be >= 1, steps >= 0");
    if (!(c.lr > 0) || c.val_fraction < 0 || c.val_fraction >= 1)
        return ts_error(TS_ERR_INVALID_ARG, "lr must be > 0 and val_fraction in [0, 1)");
    if (c.resume && !c.out_dir[0])
        return ts_error(TS_ERR_INVALID_ARG, "resuming needs the run's output directory (--out)");
    if (c.threads > 0) TRY(ts_set_threads(c.threads));
    if (c.trace_path[0]) ts_trace_enable(1);

    /* the process grid: every rank reports the same error */
    TRY(ts_grid_create(&r->g, c.tp, c.pp));
    r->have_grid = 1;
    ts_grid *g = &r->g;
    int root = g->rank == 0;
    FILE *out = stdout;
    int verbose = c.progress && root;
    if (c.batch % g->dp != 0)
        return ts_comm_agree(g->world, ts_error(TS_ERR_INVALID_ARG,
                                                "--batch %lld does not divide among %d data-parallel replicas",
                                                (long long)c.batch, g->dp),
                             "checking the batch");

    /* resume point (every rank reads the same directory) */
    char ckpt[4300] = "";
    ts_train_state state;
    memset(&state, 0, sizeof state);
    state.best_val_loss = INFINITY;
    ts_status st = TS_OK;
    if (c.resume) {
        if (ts_checkpoint_latest(c.out_dir, ckpt, sizeof ckpt) == TS_OK) {
            char mf[4400];
            snprintf(mf, sizeof mf, "%s/model.safetensors", ckpt);
            st = ts_checkpoint_read_state(ckpt, &state);
            ts_gpt_config saved;
            if (!st) st = ts_gpt_read_config(mf, &saved);
            if (!st) c.model = saved;
            if (!st && verbose) fprintf(out, "resuming from %s (step %lld)\n", ckpt, (long long)state.step);
        } else {
            ckpt[0] = '\0';
            ts_clear_error();
            if (verbose) fprintf(out, "no checkpoint in %s: starting from scratch\n", c.out_dir);
        }
    }
    TRY(ts_comm_agree(g->world, st, "reading the checkpoint"));

    /* device (dealt out by node-local rank) and placement near it */
    st = ts_device_open_local(c.device, g->local_rank, &r->dev);
    ts_binding bind;
    memset(&bind, 0, sizeof bind);
    if (!st) st = place_process(&c, g, r->dev, &bind);
    TRY(ts_comm_agree(g->world, st, "opening the device"));

    /* tokenizer and data */
    st = setup_tokenizer(&c, ckpt[0] ? ckpt : NULL, root, &r->tok);
    r->have_tok = !st;
    if (!st) {
        st = setup_data(&c, &r->tok, &r->ds);
        r->have_ds = !st;
    }
    if (!st && ckpt[0] && state.data_fingerprint != r->ds.fingerprint)
        st = ts_error(TS_ERR_INVALID_ARG,
                      "the data differs from the data of checkpoint %s (fingerprint %016llx, now %016llx)", ckpt,
                      (unsigned long long)state.data_fingerprint, (unsigned long long)r->ds.fingerprint);
    if (!st && !ckpt[0]) {
        c.model.vocab_size = r->tok.vocab_size;
        if (c.model.max_seq_len < c.seq_len) c.model.max_seq_len = c.seq_len;
    }
    if (!st && c.seq_len > c.model.max_seq_len)
        st = ts_error(TS_ERR_INVALID_ARG, "seq_len %lld exceeds the model's context %lld", (long long)c.seq_len,
                      (long long)c.model.max_seq_len);
    TRY(ts_comm_agree(g->world, st, "preparing the data"));

    /* every rank must train the same thing: settings, data, checkpoint */
    char settings[8192], check[8192 + 512];
    ts_train_settings_json(&c, settings, sizeof settings);
    snprintf(check, sizeof check, "%s data %016llx resume %s step %lld processes %d", settings,
             (unsigned long long)r->ds.fingerprint, ckpt, (long long)state.step, g->size);
    TRY(ts_grid_check_settings(g, check));

    /* this rank's part of the model, and the engine that trains it */
    ts_gpt_layout lay;
    st = ts_gpt_config_check(&c.model);
    if (!st) st = ts_grid_layout(g, c.model.n_layer, &lay.tp_size, &lay.tp_rank, &lay.layer_begin, &lay.layer_end,
                                 &lay.embedding, &lay.head);
    if (!st) st = ts_gpt_layout_check(&c.model, &lay);
    if (!st) {
        st = ts_gpt_create_layout(&r->m, r->dev, &c.model, &lay, g->tp_comm);
        r->have_model = !st;
    }
    if (!st) st = ts_gpt_init_weights(&r->m, c.seed);
    TRY(ts_comm_agree(g->world, st, "creating the model"));
    ts_engine_config ec = {.strategy = c.strategy, .zero = c.zero, .bucket_mb = c.bucket_mb, .overlap = c.overlap,
                           .schedule = c.schedule, .optim = c.optim, .beta1 = c.beta1, .beta2 = c.beta2,
                           .eps = c.eps, .weight_decay = c.weight_decay};
    st = ts_engine_create(&r->e, g, &r->m, &ec);
    TRY(ts_comm_agree(g->world, st, "setting up training"));
    TRY(ts_engine_broadcast_params(r->e));
    if (ckpt[0]) {
        char mf[4400], of[4400];
        snprintf(mf, sizeof mf, "%s/model.safetensors", ckpt);
        snprintf(of, sizeof of, "%s/optim.safetensors", ckpt);
        TRY(ts_engine_load(r->e, mf, of));
    }
    res->num_params = ts_gpt_num_params(&c.model);
    res->first_step = state.step;

    /* log (world rank 0) */
    char log_path[4300];
    st = TS_OK;
    if (root && strcmp(c.log_path, "-") != 0 && (c.log_path[0] || c.out_dir[0])) {
        if (c.log_path[0]) snprintf(log_path, sizeof log_path, "%s", c.log_path);
        else {
            st = ts_mkdir_p(c.out_dir);
            snprintf(log_path, sizeof log_path, "%s/log.jsonl", c.out_dir);
        }
        if (!st && !(r->log = fopen(log_path, ckpt[0] ? "a" : "w")))
            st = ts_error(TS_ERR_IO, "cannot write the log %s", log_path);
    }
    TRY(ts_comm_agree(g->world, st, "opening the log"));

    /* the yardstick for MFU: every process's GEMM rate, measured at once */
    int64_t bl = c.batch / g->dp, tokens_per_step = c.batch * c.seq_len * c.grad_accum;
    double flops_per_token = ts_gpt_flops_per_token(&c.model, c.seq_len);
    TRY(ts_comm_barrier(g->world, "measuring the GEMM rate"));
    double peak = measure_peak(r->dev, &c.model, bl * c.seq_len);
    TRY(ts_comm_allreduce_f64(g->world, &peak, 1, TS_REDUCE_SUM, "GEMM rates"));

    /* where every process runs */
    char(*places)[640] = calloc((size_t)g->size, sizeof *places);
    if (!places) return ts_error(TS_ERR_OOM, "no memory");
    char mine[640];
    snprintf(mine, sizeof mine, "%s: %s", ts_device_get_info(r->dev)->id, bind.report);
    st = ts_comm_allgather(g->world, mine, places, sizeof mine, "placement report");
    if (st) {
        free(places);
        return st;
    }
    char layout[256];
    fmt_layout(g, &c, layout, sizeof layout);
    if (verbose) {
        const ts_device_info *di = ts_device_get_info(r->dev);
        fprintf(out, "device   %s (%s)\n", di->id, di->name);
        fprintf(out, "data     %s: %lld training tokens, vocabulary %d\n", r->ds.name,
                (long long)(r->ds.train_tokens > ((int64_t)1 << 40) ? -1 : r->ds.train_tokens), r->tok.vocab_size);
        fprintf(out, "model    L=%lld H=%lld C=%lld T=%lld: %.2fM parameters\n", (long long)c.model.n_layer,
                (long long)c.model.n_head, (long long)c.model.n_embd, (long long)c.seq_len,
                (double)res->num_params / 1e6);
        fprintf(out, "training %lld steps of %lld x %lld x %lld tokens, %s lr %.2g%s\n", (long long)c.steps,
                (long long)c.batch, (long long)c.grad_accum, (long long)c.seq_len, ts_optim_kind_name(c.optim), c.lr,
                c.cosine ? " cosine" : "");
        fprintf(out, "layout   %s\n", layout);
        for (int i = 0; i < g->size; i++)
            if (g->size > 1 || bind.bound) fprintf(out, "rank %-3d %s\n", i, places[i]);
        if (peak > 0)
            fprintf(out, "MFU is measured against %s GEMM rate: %.1f GFLOP/s\n",
                    g->size > 1 ? "the processes' summed" : "this device's", peak / 1e9);
    }
    if (r->log) {
        fprintf(r->log, "{\"event\": \"start\", \"step\": %lld, \"device\": ", (long long)state.step);
        ts_json_write_string(r->log, ts_device_get_info(r->dev)->id);
        fprintf(r->log, ", \"params\": %lld, \"peak_gflops\": %.1f, \"processes\": %d, \"layout\": ",
                (long long)res->num_params, peak / 1e9, g->size);
        ts_json_write_string(r->log, layout);
        fprintf(r->log, ", \"placement\": [");
        for (int i = 0; i < g->size; i++) {
            if (i) fprintf(r->log, ", ");
            ts_json_write_string(r->log, places[i]);
        }
        fprintf(r->log, "], \"settings\": %s}\n", settings);
        fflush(r->log);
    }
    free(places);

    /* a step's micro-batches for this replica (evaluation uses the same room) */
    int64_t rows = c.grad_accum > c.eval_batches ? c.grad_accum : c.eval_batches;
    r->in = malloc((size_t)(rows * bl * c.seq_len) * sizeof *r->in);
    r->tg = malloc((size_t)(rows * bl * c.seq_len) * sizeof *r->tg);
    if (!r->in || !r->tg) return ts_error(TS_ERR_OOM, "no memory for batches");
    ts_lr_schedule sched = {.lr = c.lr, .min_lr = c.min_lr, .warmup_steps = c.warmup, .total_steps = c.steps,
                            .cosine = c.cosine};
    const char *fault = getenv("TESSERA_FAULT_EXIT_AT_STEP");
    int64_t fault_step = fault && *fault ? atoll(fault) : -1;
    /* test hook: a rank that stays away from its collectives for a while */
    const char *absent = getenv("TESSERA_FAULT_ABSENT_RANK");
    int absent_rank = absent && *absent ? atoi(absent) : -1;
    double absent_s = getenv("TESSERA_FAULT_ABSENT_SECONDS") ? atof(getenv("TESSERA_FAULT_ABSENT_SECONDS")) : 5.0;
    int tty = isatty(fileno(out));
    int64_t line_every = c.steps >= 20 ? c.steps / 20 : 1;
    double t_start = now_s(), t_window = t_start;
    int64_t window_steps = 0;
    double rate = 0, mfu = 0;
    state.seed = c.seed;
    state.data_fingerprint = r->ds.fingerprint;
    snprintf(state.settings, sizeof state.settings, "%s", settings);
    int64_t step = state.step, n = bl * c.seq_len;
    float loss = NAN;

    for (; step < c.steps; step++) {
        if (step == fault_step) _exit(85); /* test hook: a crash between steps */
        if (g->rank == absent_rank && step == state.step) {
            struct timespec pause = {(time_t)absent_s, (long)((absent_s - (double)(time_t)absent_s) * 1e9)};
            nanosleep(&pause, NULL);
        }
        /* this replica's rows of each micro-batch: together the replicas
         * see exactly the batch one process would */
        st = TS_OK;
        for (int64_t k = 0; k < c.grad_accum && !st; k++) {
            int64_t first = (step * c.grad_accum + k) * c.batch + g->dp_rank * bl;
            st = ts_dataset_batch(&r->ds, TS_SPLIT_TRAIN, c.seed, first, bl, c.seq_len, r->in + k * n, r->tg + k * n);
        }
        TRY(ts_comm_agree(g->world, st, "reading a batch"));
        float lr = ts_lr_at(&sched, step);
        double norm;
        st = ts_engine_step(r->e, (int)c.grad_accum, bl, c.seq_len, r->in, r->tg, lr, c.grad_clip, &loss, &norm);
        if (st) return ts_error_context(st, "step %lld", (long long)step);
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
        if (r->log) {
            fprintf(r->log,
                    "{\"step\": %lld, \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g, \"tokens_per_s\": %.1f, "
                    "\"mfu\": %.4f, \"elapsed_s\": %.3f}\n",
                    (long long)(step + 1), loss, lr, norm, rate, mfu, now - t_start);
            fflush(r->log);
        }
        double eta = (now - t_start) / (double)(step + 1 - res->first_step) * (double)(c.steps - step - 1);
        if (verbose && (tty || (step + 1) % line_every == 0 || step + 1 == c.steps)) {
            char rt[32], et[32], bar[32];
            fmt_rate(rate, rt, sizeof rt);
            fmt_duration(eta, et, sizeof et);
            int w = 20, filled = (int)((double)w * (double)(step + 1) / (double)c.steps);
            for (int i = 0; i < w; i++) bar[i] = i < filled ? '#' : '.';
            bar[w] = '\0';
            fprintf(out, "%s[%s] step %lld/%lld | loss %.4f | %s tok/s | MFU %.1f%% | ETA %s%s", tty ? "\r" : "", bar,
                    (long long)(step + 1), (long long)c.steps, loss, rt, 100.0 * mfu, et, tty ? "   " : "\n");
            fflush(out);
        }
        int last = step + 1 == c.steps;
        if ((c.eval_every > 0 && (step + 1) % c.eval_every == 0) || (last && c.eval_batches > 0)) {
            double vl;
            TRY(eval_loss(r->e, g, &r->ds, &c, r->in, r->tg, &vl));
            res->val_loss = vl;
            if (vl < state.best_val_loss) state.best_val_loss = vl;
            if (r->log) {
                fprintf(r->log, "{\"step\": %lld, \"val_loss\": %.9g}\n", (long long)(step + 1), vl);
                fflush(r->log);
            }
            if (verbose) fprintf(out, "%sstep %lld: validation loss %.4f\n", tty ? "\n" : "", (long long)(step + 1), vl);
        }
        if (c.out_dir[0] && ((c.ckpt_every > 0 && (step + 1) % c.ckpt_every == 0) || last))
            TRY(save_checkpoint(r->e, g, &c, &state, &r->tok));
    }
    if (verbose && tty) fprintf(out, "\n");
    const ts_pipeline_stats *ps = ts_engine_pipeline_stats(r->e);
    res->bubble = ps->schedule_s > 0 ? 1.0 - ps->busy_s / ps->schedule_s : 0;
    res->steps_done = state.step;
    res->last_loss = loss;
    res->seconds = now_s() - t_start;
    res->tokens_per_second =
        res->seconds > 0 ? (double)((state.step - res->first_step) * tokens_per_step) / res->seconds : 0;
    res->mfu = peak > 0 ? res->tokens_per_second * flops_per_token / peak : 0;
    if (verbose) {
        char d[32], rt[32];
        fmt_duration(res->seconds, d, sizeof d);
        fmt_rate(res->tokens_per_second, rt, sizeof rt);
        fprintf(out, "trained %lld steps in %s: %s tokens/s, MFU %.1f%%, final loss %.4f\n",
                (long long)(state.step - res->first_step), d, rt, 100.0 * res->mfu, loss);
    }
    if (c.trace_path[0]) {
        TRY(ts_trace_write(c.trace_path));
        if (verbose) fprintf(out, "timeline of every rank in %s (open it in Perfetto or chrome://tracing)\n", c.trace_path);
    }

    /* what the model learned, on world rank 0 with the whole model */
    if (verbose || !c.data[0]) {
        ts_gpt whole, *shown = &r->m;
        int gathered = g->tp > 1 || g->pp > 1;
        if (gathered) {
            TRY(ts_engine_gather_model(r->e, &whole));
            shown = &whole;
        }
        st = root ? show_learning(shown, &r->ds, &r->tok, &c, verbose ? out : NULL, &res->task_accuracy) : TS_OK;
        if (gathered && root) ts_gpt_free(&whole);
        TRY(ts_comm_agree(g->world, st, "showing what the model learned"));
        TRY(ts_comm_bcast(g->world, &res->task_accuracy, sizeof res->task_accuracy, 0, "task accuracy"));
    }
    if (r->log)
        fprintf(r->log, "{\"event\": \"end\", \"step\": %lld, \"seconds\": %.3f, \"tokens_per_s\": %.1f, \"mfu\": %.4f}\n",
                (long long)state.step, res->seconds, res->tokens_per_second, res->mfu);
    return TS_OK;
}

ts_status ts_train(const ts_train_config *cfg, ts_train_result *res)
{
    memset(res, 0, sizeof *res);
    res->val_loss = NAN;
    res->task_accuracy = NAN;
    run r;
    memset(&r, 0, sizeof r);
    ts_status st = train_run(&r, *cfg, res);
    /* keep the message: freeing may call into MPI */
    char msg[2048];
    snprintf(msg, sizeof msg, "%s", st ? ts_last_error() : "");
    run_free(&r);
    if (st) ts_error(st, "%s", msg);
    return st;
}
