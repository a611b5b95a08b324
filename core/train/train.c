#include "tessera/train.h"
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fileio.h"
#include "json.h"
#include "tessera/checkpoint.h"
#include "tessera/classify.h"
#include "tessera/data.h"
#include "tessera/device.h"
#include "tessera/generate.h"
#include "tessera/optimizer.h"
#include "tessera/placement.h"
#include "tessera/task.h"
#include "tessera/tokenizer.h"


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
    snprintf(c->balance, sizeof c->balance, "even");
    c->rebalance_gain = 0.05;
}

/* Every setting of a run, as one flat JSON object: what state.json keeps,
 * what a resumed run reads back, and what every MPI rank must agree on.
 * Settings that may differ between ranks (threads, device, binding, bucket
 * size, progress output) are not in it. */
size_t ts_train_settings_json(const ts_train_config *c, char *buf, size_t n)
{
    enum { ESC = 6 * 1024 + 3 }; /* a 1023-byte string, every byte escaped as \u00XX */
    char data[ESC], tok[ESC], out[ESC], logp[ESC], trace[ESC];
    ts_json_escape(data, sizeof data, c->data);
    ts_json_escape(tok, sizeof tok, c->tokenizer);
    ts_json_escape(out, sizeof out, c->out_dir);
    ts_json_escape(logp, sizeof logp, c->log_path);
    ts_json_escape(trace, sizeof trace, c->trace_path);
    int k = snprintf(buf, n,
             "{\"data\": %s, \"tokenizer\": %s, \"val_fraction\": %.9g, \"vocab_size\": %lld, "
             "\"max_seq_len\": %lld, \"n_layer\": %lld, \"n_head\": %lld, \"n_embd\": %lld, "
             "\"batch\": %lld, \"seq_len\": %lld, \"grad_accum\": %lld, \"steps\": %lld, "
             "\"optim\": \"%s\", \"lr\": %.9g, \"min_lr\": %.9g, \"beta1\": %.9g, \"beta2\": %.9g, "
             "\"eps\": %.9g, \"weight_decay\": %.9g, \"grad_clip\": %.9g, \"warmup\": %lld, "
             "\"schedule\": \"%s\", \"seed\": %llu, \"tp\": %d, \"pp\": %d, \"strategy\": \"%s\", "
             "\"zero\": %d, \"pipeline\": \"%s\", \"overlap\": %d, \"out\": %s, \"log\": %s, "
             "\"trace\": %s, \"ckpt_every\": %lld, \"keep\": %d, \"eval_every\": %lld, "
             "\"eval_batches\": %lld, \"sample_tokens\": %lld, \"dtype\": \"%s\"}",
             data, tok, c->val_fraction, (long long)c->model.vocab_size, (long long)c->model.max_seq_len,
             (long long)c->model.n_layer, (long long)c->model.n_head, (long long)c->model.n_embd,
             (long long)c->batch, (long long)c->seq_len, (long long)c->grad_accum, (long long)c->steps,
             ts_optim_kind_name(c->optim), c->lr, c->min_lr, c->beta1, c->beta2, c->eps,
             c->weight_decay, c->grad_clip, (long long)c->warmup, c->cosine ? "cosine" : "constant",
             (unsigned long long)c->seed, c->tp, c->pp, ts_strategy_name(c->strategy), c->zero,
             c->schedule == TS_SCHEDULE_GPIPE ? "gpipe" : "1f1b", c->overlap, out, logp, trace,
             (long long)c->ckpt_every, c->keep, (long long)c->eval_every, (long long)c->eval_batches,
             (long long)c->sample_tokens, c->dtype == TS_F32 ? "fp32" : c->dtype == TS_BF16 ? "bf16" : "fp16");
    return k < 0 ? 0 : (size_t)k;
}

/* Read one setting: a number member into an integer or float, a string
 * member into a buffer. Absent members keep the value; a member of the
 * wrong type or out of range is an error naming it. */
static ts_status get_i64(const ts_json *j, const char *key, int64_t lo, int64_t hi, int64_t *v)
{
    const ts_json *m = ts_json_get(j, key);
    if (!m) return TS_OK;
    if (m->type != TS_JSON_NUMBER || !m->is_integer || m->integer < lo || m->integer > hi)
        return ts_error(TS_ERR_FORMAT, "setting \"%s\" must be an integer from %lld to %lld", key, (long long)lo,
                        (long long)hi);
    *v = m->integer;
    return TS_OK;
}

static ts_status get_int(const ts_json *j, const char *key, int lo, int hi, int *v)
{
    int64_t x = *v;
    TRY(get_i64(j, key, lo, hi, &x));
    *v = (int)x;
    return TS_OK;
}

static ts_status get_f32(const ts_json *j, const char *key, double lo, double hi, float *v)
{
    const ts_json *m = ts_json_get(j, key);
    if (!m) return TS_OK;
    if (m->type != TS_JSON_NUMBER || !(m->number >= lo && m->number <= hi))
        return ts_error(TS_ERR_FORMAT, "setting \"%s\" must be a number from %g to %g", key, lo, hi);
    *v = (float)m->number;
    return TS_OK;
}

static ts_status get_str(const ts_json *j, const char *key, char *out, size_t n)
{
    const ts_json *m = ts_json_get(j, key);
    if (!m) return TS_OK;
    if (m->type != TS_JSON_STRING || strlen(m->string) >= n)
        return ts_error(TS_ERR_FORMAT, "setting \"%s\" must be a string of at most %zu bytes", key, n - 1);
    memcpy(out, m->string, strlen(m->string) + 1);
    return TS_OK;
}

/* A setting of two values: *which = 0 for a, 1 for b. */
static ts_status one_of(const char *key, const char *value, const char *a, const char *b, int *which)
{
    if (strcmp(value, a) && strcmp(value, b))
        return ts_error(TS_ERR_FORMAT, "setting \"%s\" must be %s or %s, not '%s'", key, a, b, value);
    *which = !strcmp(value, b);
    return TS_OK;
}

ts_status ts_train_settings_parse(const char *json, ts_train_config *c)
{
    ts_json *j = NULL;
    TRY(ts_json_parse(json, strlen(json), &j));
    ts_status st = j->type == TS_JSON_OBJECT ? TS_OK : ts_error(TS_ERR_FORMAT, "settings are not a JSON object");
    char optim[32] = "", schedule[32] = "", strategy[32] = "", pipeline[32] = "", dtype[32] = "";
    const ts_json *seed = ts_json_get(j, "seed");
    if (!st && seed && (seed->type != TS_JSON_NUMBER || !seed->is_integer || seed->integer < 0))
        st = ts_error(TS_ERR_FORMAT, "setting \"seed\" must be a non-negative integer");
    if (!st && seed) c->seed = (uint64_t)seed->integer;
    const ts_json *vf = ts_json_get(j, "val_fraction");
    if (!st && vf && (vf->type != TS_JSON_NUMBER || !(vf->number >= 0 && vf->number < 1)))
        st = ts_error(TS_ERR_FORMAT, "setting \"val_fraction\" must be in [0, 1)");
    if (!st && vf) c->val_fraction = vf->number;
    if (!st) st = get_str(j, "data", c->data, sizeof c->data);
    if (!st) st = get_str(j, "tokenizer", c->tokenizer, sizeof c->tokenizer);
    if (!st) st = get_i64(j, "vocab_size", 0, 1 << 30, &c->model.vocab_size);
    if (!st) st = get_i64(j, "max_seq_len", 1, 1 << 20, &c->model.max_seq_len);
    if (!st) st = get_i64(j, "n_layer", 1, 1024, &c->model.n_layer);
    if (!st) st = get_i64(j, "n_head", 1, 1 << 16, &c->model.n_head);
    if (!st) st = get_i64(j, "n_embd", 1, 1 << 16, &c->model.n_embd);
    if (!st) st = get_i64(j, "batch", 1, 1 << 24, &c->batch);
    if (!st) st = get_i64(j, "seq_len", 1, 1 << 20, &c->seq_len);
    if (!st) st = get_i64(j, "grad_accum", 1, 1 << 20, &c->grad_accum);
    if (!st) st = get_i64(j, "steps", 0, (int64_t)1 << 50, &c->steps);
    if (!st) st = get_str(j, "optim", optim, sizeof optim);
    if (!st) st = get_f32(j, "lr", 1e-30, 1e6, &c->lr);
    if (!st) st = get_f32(j, "min_lr", 0, 1e6, &c->min_lr);
    if (!st) st = get_f32(j, "beta1", 0, 1, &c->beta1);
    if (!st) st = get_f32(j, "beta2", 0, 1, &c->beta2);
    if (!st) st = get_f32(j, "eps", 0, 1, &c->eps);
    if (!st) st = get_f32(j, "weight_decay", 0, 1e6, &c->weight_decay);
    if (!st) st = get_f32(j, "grad_clip", 0, 1e30, &c->grad_clip);
    if (!st) st = get_i64(j, "warmup", 0, (int64_t)1 << 50, &c->warmup);
    if (!st) st = get_str(j, "schedule", schedule, sizeof schedule);
    if (!st) st = get_int(j, "tp", 1, 1 << 16, &c->tp);
    if (!st) st = get_int(j, "pp", 1, 1 << 16, &c->pp);
    if (!st) st = get_str(j, "strategy", strategy, sizeof strategy);
    if (!st) st = get_int(j, "zero", 0, 1, &c->zero);
    if (!st) st = get_str(j, "pipeline", pipeline, sizeof pipeline);
    if (!st) st = get_int(j, "overlap", 0, 1, &c->overlap);
    if (!st) st = get_str(j, "out", c->out_dir, sizeof c->out_dir);
    if (!st) st = get_str(j, "log", c->log_path, sizeof c->log_path);
    if (!st) st = get_str(j, "trace", c->trace_path, sizeof c->trace_path);
    if (!st) st = get_i64(j, "ckpt_every", 0, (int64_t)1 << 50, &c->ckpt_every);
    if (!st) st = get_int(j, "keep", 0, 1 << 30, &c->keep);
    if (!st) st = get_i64(j, "eval_every", 0, (int64_t)1 << 50, &c->eval_every);
    if (!st) st = get_i64(j, "eval_batches", 0, 1 << 20, &c->eval_batches);
    if (!st) st = get_i64(j, "sample_tokens", 0, 1 << 24, &c->sample_tokens);
    if (!st) st = get_str(j, "dtype", dtype, sizeof dtype);
    if (!st && dtype[0]) {
        int k = ts_dtype_parse(dtype);
        if (k != TS_F32 && k != TS_BF16 && k != TS_F16)
            st = ts_error(TS_ERR_FORMAT, "setting \"dtype\" must be fp32, bf16 or fp16, not '%s'", dtype);
        else c->dtype = (ts_dtype)k;
    }
    if (!st && optim[0]) {
        int k = ts_optim_kind_parse(optim);
        if (k < 0) st = ts_error(TS_ERR_FORMAT, "setting \"optim\": unknown optimizer '%s'", optim);
        else c->optim = (ts_optim_kind)k;
    }
    if (!st && schedule[0]) st = one_of("schedule", schedule, "constant", "cosine", &c->cosine);
    if (!st && strategy[0]) {
        int k = ts_strategy_parse(strategy);
        if (k < 0) st = ts_error(TS_ERR_FORMAT, "setting \"strategy\": unknown strategy '%s'", strategy);
        else c->strategy = (ts_reduce_strategy)k;
    }
    int gpipe = c->schedule == TS_SCHEDULE_GPIPE;
    if (!st && pipeline[0] && !(st = one_of("pipeline", pipeline, "1f1b", "gpipe", &gpipe)))
        c->schedule = gpipe ? TS_SCHEDULE_GPIPE : TS_SCHEDULE_1F1B;
    ts_json_free(j);
    return st;
}


/* ---- data and tokenizer ---- */

/* Tokenizer for the run: a checkpoint's (when resuming or starting from
 * one), a file, byte, or BPE or words trained on the text. */
static ts_status setup_tokenizer(const ts_train_config *c, const char *ckpt, ts_tokenizer *tok)
{
    if (ckpt) {
        char f[4400];
        snprintf(f, sizeof f, "%s/tokenizer.txt", ckpt);
        return ts_tokenizer_load(tok, f);
    }
    if (!c->data[0] || !strcmp(c->tokenizer, "byte")) return ts_tokenizer_init_byte(tok);
    if (ts_tokenizer_spec_is_file(c->tokenizer)) return ts_tokenizer_load(tok, c->tokenizer);
    if (ts_is_token_file(c->data))
        return ts_error(TS_ERR_INVALID_ARG, "%s is already tokenized: pass its tokenizer file, not %s",
                        c->data, c->tokenizer);
    char *text;
    size_t n;
    TRY(ts_labeled_corpus(c->data, &text, &n)); /* a labeled file's texts */
    ts_status st = ts_check_text((const uint8_t *)text, n, c->data);
    if (!st) st = ts_tokenizer_from_spec(tok, c->tokenizer, (const uint8_t *)text, n);
    free(text);
    if (st) return ts_error_context(st, "training a %s tokenizer on %s", c->tokenizer[0] == 'w' ? "word" : "BPE", c->data);
    return TS_OK;
}

static ts_status setup_data(const ts_train_config *c, const ts_tokenizer *tok, ts_dataset *ds)
{
    if (!c->data[0]) return ts_dataset_open_sort_task(ds);
    if (ts_is_token_file(c->data)) {
        TRY(ts_dataset_open_tokens(ds, c->data, c->val_fraction));
        /* a tessera token file names its tokenizer; llm.c's do not (their
         * tokens are GPT-2's or LLaMA 3's: the model takes that vocabulary) */
        if (ds->tokenizer_fingerprint && ds->tokenizer_fingerprint != tok->fingerprint) {
            ts_status st = ts_error(TS_ERR_INVALID_ARG,
                                    "%s was made by another tokenizer (fingerprint %016llx; this run's is %016llx): "
                                    "pass the tokenizer file it was made with (--tokenizer)",
                                    c->data, (unsigned long long)ds->tokenizer_fingerprint,
                                    (unsigned long long)tok->fingerprint);
            ts_dataset_close(ds);
            return st;
        }
        return TS_OK;
    }
    char cache[4096];
    ts_data_cache_dir(cache, sizeof cache);
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
            double t0 = ts_now();
            if (ts_linear_forward(&o, &a, &b, NULL) != TS_OK) break;
            ts_device_synchronize(dev);
            double rate = 2.0 * (double)M * (double)N * (double)K / (ts_now() - t0);
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
    if (ds->vocab_size > tok->vocab_size) {
        fprintf(out, "\n(no text sample: the data's tokens come from a %lld-token vocabulary this run's tokenizer "
                "cannot decode)\n", (long long)ds->vocab_size);
        return TS_OK;
    }
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

static void fmt_layout(const ts_grid *g, const ts_train_config *c, char *buf, size_t n)
{
    if (g->size == 1) {
        snprintf(buf, n, "one process");
        return;
    }
    size_t k = (size_t)snprintf(buf, n, "%d processes on %d node%s: tensor %d x pipeline %d x data %d", g->size,
                                g->nodes, g->nodes == 1 ? "" : "s", g->tp, g->pp, g->dp);
    if (g->dp > 1 && k < n)
        k += (size_t)snprintf(buf + k, n - k, ", gradients by %s%s%s", ts_strategy_name(c->strategy),
                              c->zero ? " with ZeRO-1" : "", c->overlap ? " overlapped with backward" : "");
    if (g->pp > 1 && k < n)
        snprintf(buf + k, n - k, ", %s over %lld micro-batches", c->schedule == TS_SCHEDULE_GPIPE ? "GPipe" : "1F1B",
                 (long long)c->grad_accum);
}

/* ---- stopping on a signal ---- */

static volatile sig_atomic_t g_stop_signal;

void ts_train_request_stop(int sig) { g_stop_signal = sig > 0 ? sig : 1; }
int ts_train_stop_requested(void) { return g_stop_signal; }

/* ---- a run, step by step ---- */

typedef struct run {
    ts_train_config c;       /* the settings in force (a resumed run's come from state.json) */
    ts_train_result *res;
    ts_grid g;
    int have_grid;
    int root, verbose, tty;
    FILE *out;
    ts_device *dev;
    ts_binding bind;
    ts_tokenizer tok;
    int have_tok;
    ts_dataset ds;
    int have_ds;
    ts_gpt m;
    int have_model;
    ts_engine *e;
    FILE *log;
    int32_t *in, *tg;
    char ckpt[4300];         /* the checkpoint this run resumes from, or "" */
    ts_train_state state;
    char settings[TS_SETTINGS_MAX];
    double peak;             /* the processes' summed GEMM rate, for MFU */
    int made_out_dir;        /* this run created --out (removed again if it fails before training) */
    int64_t saved_step;      /* the step of the last checkpoint written, -1 */
    double last_val;         /* validation loss at the last evaluation, NAN */
    int node_cores;          /* cores of this node (for the MFU line) */
    int64_t last_val_step;
    /* rows of the global batch per data-parallel replica (balance) */
    int64_t *share, row0, my_rows;
    double *rank_cost;       /* seconds per row of each world rank, last measured */
    void *dev_ids;           /* each world rank's device (dev_tag) */
    int64_t *prev_share;     /* the split before the last re-split */
    int64_t stage_layers[2]; /* this rank's layers [begin, end) */
    char stage_map[512];     /* "0-5 | 6-7" when measured */
} run;

static void run_free(run *r)
{
    free(r->in), free(r->tg);
    free(r->share), free(r->rank_cost), free(r->dev_ids), free(r->prev_share);
    if (r->log) fclose(r->log);
    ts_engine_free(r->e);
    if (r->have_model) ts_gpt_free(&r->m);
    if (r->have_ds) ts_dataset_close(&r->ds);
    if (r->have_tok) ts_tokenizer_free(&r->tok);
    if (r->have_grid) ts_grid_free(&r->g);
}

/* The settings a run must never change once it has begun (a resumed run
 * keeps them); the rest (steps, output, evaluation, checkpoints, the
 * parallel layout) may change. */
static const char *const fixed_settings[] = {
    "data", "tokenizer", "val_fraction", "vocab_size", "max_seq_len", "n_layer", "n_head", "n_embd", "batch",
    "seq_len", "grad_accum", "optim", "lr", "min_lr", "beta1", "beta2", "eps", "weight_decay", "grad_clip",
    "warmup", "schedule", "seed", NULL};

const char *const *ts_train_fixed_settings(void) { return fixed_settings; }

/* 1. Values in range, before anything touches a device or a file. */
static ts_status check_config(const ts_train_config *c)
{
    if (c->batch < 1 || c->batch > (1 << 24) || c->seq_len < 1 || c->seq_len > (1 << 20) || c->grad_accum < 1 ||
        c->grad_accum > (1 << 20) || c->steps < 0 || c->steps > ((int64_t)1 << 50))
        return ts_error(TS_ERR_INVALID_ARG, "batch (1..2^24), seq_len (1..2^20), grad_accum (1..2^20) and steps "
                        "(0..2^50) are out of range: %lld, %lld, %lld, %lld", (long long)c->batch,
                        (long long)c->seq_len, (long long)c->grad_accum, (long long)c->steps);
    if (!(c->lr > 0) || !(c->min_lr >= 0) || c->val_fraction < 0 || c->val_fraction >= 1 || c->warmup < 0 ||
        !(c->beta1 >= 0 && c->beta1 < 1) || !(c->beta2 >= 0 && c->beta2 < 1) || !(c->eps > 0) ||
        !(c->weight_decay >= 0) || !(c->grad_clip >= 0))
        return ts_error(TS_ERR_INVALID_ARG, "lr must be > 0, min_lr and warmup >= 0, val_fraction in [0, 1), betas in "
                        "[0, 1), eps > 0, weight decay and grad clip >= 0");
    if (c->keep < 0 || c->ckpt_every < 0 || c->eval_every < 0 || c->eval_batches < 0 || c->sample_tokens < 0 ||
        c->tp < 1 || c->pp < 1 || !(c->bucket_mb > 0))
        return ts_error(TS_ERR_INVALID_ARG, "keep, ckpt_every, eval_every, eval_batches and sample_tokens must be "
                        ">= 0, tp and pp >= 1, bucket_mb > 0");
    if (c->resume && !c->out_dir[0])
        return ts_error(TS_ERR_INVALID_ARG, "resuming needs the run's output directory (--out)");
    if (c->resume && c->init[0])
        return ts_error(TS_ERR_INVALID_ARG, "a run either resumes (--resume) or starts from a checkpoint's weights "
                        "(--init), not both");
    return TS_OK;
}

/* 2. Threads, the trace, the process grid. */
static ts_status setup_processes(run *r)
{
    ts_train_config *c = &r->c;
    if (c->threads > 0) TRY(ts_set_threads(c->threads));
    if (c->trace_path[0]) ts_trace_enable(1);
    TRY(ts_grid_create(&r->g, c->tp, c->pp));
    r->have_grid = 1;
    r->root = r->g.rank == 0;
    r->out = stdout;
    r->verbose = c->progress && r->root;
    r->tty = isatty(fileno(r->out));
    int even = !c->balance[0] || !strcmp(c->balance, "even");
    if (!even && c->batch < r->g.dp)
        return ts_comm_agree(r->g.world, ts_error(TS_ERR_INVALID_ARG,
                                                  "--batch %lld gives no row to some of %d data-parallel replicas",
                                                  (long long)c->batch, r->g.dp),
                             "checking the batch");
    if (even && c->batch % r->g.dp != 0)
        return ts_comm_agree(r->g.world, ts_error(TS_ERR_INVALID_ARG,
                                                  "--batch %lld does not divide among %d data-parallel replicas",
                                                  (long long)c->batch, r->g.dp),
                             "checking the batch");
    return TS_OK;
}

/* 3. The run directory: resume from it, start over in it (force), or
 * refuse to write a new run over an old one. Rank 0 looks, every rank
 * learns the outcome. */
static ts_status prepare_run_dir(run *r)
{
    ts_train_config *c = &r->c;
    ts_status st = TS_OK;
    if (r->root && c->out_dir[0]) {
        ts_run_dir_info info;
        st = ts_run_dir_inspect(c->out_dir, &info);
        if (!st && c->resume) ts_run_dir_clean(c->out_dir);
        else if (!st && info.exists && (info.checkpoints || info.has_log || info.latest[0]) && !c->force)
            st = ts_error(TS_ERR_INVALID_ARG,
                          "%s already holds a run (%d checkpoint%s%s%s): pass --resume to continue it, or --force "
                          "to start a new run there (its checkpoints and log are deleted)",
                          c->out_dir, info.checkpoints, info.checkpoints == 1 ? "" : "s",
                          info.latest[0] ? ", latest " : "", info.latest);
        else if (!st && info.exists && c->force) st = ts_run_dir_reset(c->out_dir);
        if (!st && !info.exists && !c->resume) r->made_out_dir = 1;
    }
    return ts_comm_agree(r->g.world, st, "preparing the run directory");
}

/* --init: a checkpoint (or a run directory's latest) whose weights and
 * tokenizer a new run starts from; the model's shape is the checkpoint's. */
static ts_status read_init_point(run *r)
{
    ts_train_config *c = &r->c;
    char mf[4400], ckpt[4300];
    snprintf(mf, sizeof mf, "%s/model.safetensors", c->init);
    struct stat sb;
    ts_status st = TS_OK;
    if (stat(mf, &sb) != 0) {
        st = ts_checkpoint_latest(c->init, ckpt, sizeof ckpt);
        if (!st && strlen(ckpt) >= sizeof c->init) st = ts_error(TS_ERR_INVALID_ARG, "the path %s is too long", ckpt);
        if (!st) memcpy(c->init, ckpt, strlen(ckpt) + 1);
        snprintf(mf, sizeof mf, "%s/model.safetensors", c->init);
    }
    ts_gpt_config saved;
    if (!st) st = ts_gpt_read_config(mf, &saved);
    if (!st) c->model = saved;
    if (!st && c->seq_len > saved.max_seq_len)
        st = ts_error(TS_ERR_INVALID_ARG, "--seq-len %lld exceeds the context %lld of the model in %s",
                      (long long)c->seq_len, (long long)saved.max_seq_len, c->init);
    return ts_comm_agree(r->g.world, st, "reading the checkpoint to start from");
}

/* 4. Where a resumed run starts: its checkpoint, state and settings. Every
 * rank reads the same files. */
static ts_status read_resume_point(run *r)
{
    ts_train_config *c = &r->c;
    memset(&r->state, 0, sizeof r->state);
    r->state.best_val_loss = INFINITY;
    r->state.loss = r->state.val_loss = NAN;
    if (c->init[0]) return read_init_point(r);
    if (!c->resume) return TS_OK;
    ts_status st = ts_checkpoint_latest(c->out_dir, r->ckpt, sizeof r->ckpt);
    if (!st) st = ts_checkpoint_read_state(r->ckpt, &r->state);
    /* the settings that shaped the run must be the ones it continues with */
    char *mine = malloc(TS_SETTINGS_MAX), diff[2048];
    if (!mine) return ts_error(TS_ERR_OOM, "no memory");
    ts_train_settings_json(c, mine, TS_SETTINGS_MAX);
    int n = st ? 0 : ts_json_object_diff(r->state.settings, mine, fixed_settings, diff, sizeof diff);
    if (!st && n < 0) st = ts_error(TS_ERR_FORMAT, "%s/state.json: its settings are not a JSON object", r->ckpt);
    else if (!st && n > 0)
        st = ts_error(TS_ERR_INVALID_ARG, "resuming %s: these settings differ from the run's (saved vs now): %s. A "
                      "resumed run keeps its settings; start a new run from its weights with --init to change them",
                      r->ckpt, diff);
    free(mine);
    ts_gpt_config saved;
    char mf[4400];
    snprintf(mf, sizeof mf, "%s/model.safetensors", r->ckpt);
    if (!st) st = ts_gpt_read_config(mf, &saved);
    if (!st && (saved.n_layer != c->model.n_layer || saved.n_head != c->model.n_head ||
                saved.n_embd != c->model.n_embd || saved.max_seq_len != c->model.max_seq_len ||
                (c->model.vocab_size && saved.vocab_size != c->model.vocab_size)))
        st = ts_error(TS_ERR_FORMAT, "%s: the model in model.safetensors (L=%lld H=%lld C=%lld T=%lld) is not the one "
                      "state.json describes (L=%lld H=%lld C=%lld T=%lld)", r->ckpt, (long long)saved.n_layer,
                      (long long)saved.n_head, (long long)saved.n_embd, (long long)saved.max_seq_len,
                      (long long)c->model.n_layer, (long long)c->model.n_head, (long long)c->model.n_embd,
                      (long long)c->model.max_seq_len);
    if (!st) c->model = saved;
    if (st) r->ckpt[0] = '\0';
    return ts_comm_agree(r->g.world, st, "reading the checkpoint to resume");
}

/* 5. The device (dealt out by node-local rank) and placement near it. */
static ts_status open_device(run *r)
{
    ts_status st = ts_device_open_local(r->c.device, r->g.local_rank, &r->dev);
    memset(&r->bind, 0, sizeof r->bind);
    if (!st) st = place_process(&r->c, &r->g, r->dev, &r->bind);
    if (!st) st = ts_device_set_matmul_dtype(r->dev, r->c.dtype);
    return ts_comm_agree(r->g.world, st, "opening the device");
}

/* 6. Tokenizer and data (the tokenizer of --init's or the resumed
 * checkpoint when there is one). */
static ts_status open_data(run *r)
{
    ts_train_config *c = &r->c;
    const char *from = r->ckpt[0] ? r->ckpt : c->init[0] ? c->init : NULL;
    ts_status st = setup_tokenizer(c, from, &r->tok);
    r->have_tok = !st;
    if (!st) {
        st = setup_data(c, &r->tok, &r->ds);
        r->have_ds = !st;
    }
    if (!st && r->ckpt[0] && r->state.data_fingerprint != r->ds.fingerprint)
        st = ts_error(TS_ERR_INVALID_ARG,
                      "the data differs from the data of checkpoint %s (fingerprint %016llx, now %016llx)", r->ckpt,
                      (unsigned long long)r->state.data_fingerprint, (unsigned long long)r->ds.fingerprint);
    if (!st && !r->ckpt[0] && !c->init[0]) {
        c->model.vocab_size = r->tok.vocab_size > r->ds.vocab_size ? r->tok.vocab_size : r->ds.vocab_size;
        if (c->model.max_seq_len < c->seq_len) c->model.max_seq_len = c->seq_len;
    }
    if (!st && r->ds.vocab_size > c->model.vocab_size)
        st = ts_error(TS_ERR_INVALID_ARG, "the data holds tokens of a %lld-token vocabulary; the model has %lld",
                      (long long)r->ds.vocab_size, (long long)c->model.vocab_size);
    if (!st && c->seq_len > c->model.max_seq_len)
        st = ts_error(TS_ERR_INVALID_ARG, "seq_len %lld exceeds the model's context %lld", (long long)c->seq_len,
                      (long long)c->model.max_seq_len);
    return ts_comm_agree(r->g.world, st, "preparing the data");
}

/* This rank's part of the model on the grid (stages even, or bounds[0..pp]
 * when given), its initial weights and the engine that trains it. */
static ts_status make_model(run *r, const int64_t *bounds)
{
    ts_train_config *c = &r->c;
    ts_grid *g = &r->g;
    ts_gpt_layout lay;
    ts_status st = ts_grid_layout(g, c->model.n_layer, &lay.tp_size, &lay.tp_rank, &lay.layer_begin, &lay.layer_end,
                                  &lay.embedding, &lay.head);
    if (!st && bounds) lay.layer_begin = bounds[g->pp_rank], lay.layer_end = bounds[g->pp_rank + 1];
    r->stage_layers[0] = lay.layer_begin, r->stage_layers[1] = lay.layer_end;
    if (!st) st = ts_gpt_layout_check(&c->model, &lay);
    if (!st) {
        st = ts_gpt_create_layout(&r->m, r->dev, &c->model, &lay, g->tp_comm);
        r->have_model = !st;
    }
    if (!st) st = ts_gpt_init_weights(&r->m, c->seed);
    TRY(ts_comm_agree(g->world, st, "creating the model"));
    ts_engine_config ec = {.strategy = c->strategy, .zero = c->zero, .bucket_mb = c->bucket_mb,
                           .overlap = c->overlap, .schedule = c->schedule, .optim = c->optim, .beta1 = c->beta1,
                           .beta2 = c->beta2, .eps = c->eps, .weight_decay = c->weight_decay,
                           .loss_scaling = c->dtype == TS_F16};
    st = ts_engine_create(&r->e, g, &r->m, &ec);
    TRY(ts_comm_agree(g->world, st, "setting up training"));
    return ts_engine_broadcast_params(r->e);
}

static ts_status measure_rank(run *r, double *cost);

/* The model rebuilt with layers split at bounds[0..pp] when `rebuild` (not
 * when bounds are the even split it already has), and the map as the log
 * prints it. */
static ts_status use_stage_map(run *r, const int64_t *bounds, int rebuild)
{
    const ts_grid *g = &r->g;
    ts_status st = TS_OK;
    if (rebuild) {
        ts_engine_free(r->e);
        r->e = NULL;
        ts_gpt_free(&r->m);
        r->have_model = 0;
        st = make_model(r, bounds);
    }
    if (!st) {
        size_t k = 0;
        r->stage_map[0] = '\0';
        for (int s = 0; s < g->pp && k < sizeof r->stage_map; s++)
            k += (size_t)snprintf(r->stage_map + k, sizeof r->stage_map - k, "%s%lld-%lld", s ? " | " : "",
                                  (long long)bounds[s], (long long)bounds[s + 1] - 1);
    }
    return st;
}

/* Pipeline stages over devices of different speed: each stage's device
 * speed from timing its part of the real model (per FLOP of its layers,
 * embedding and head), the slowest replica's for each stage; then the
 * stage map that minimises the slowest stage, and the model again on it. */
static ts_status plan_stages(run *r)
{
    ts_train_config *c = &r->c;
    ts_grid *g = &r->g;
    double C = (double)c->model.n_embd, T = (double)c->seq_len, V = (double)c->model.vocab_size;
    double layer_f = 24 * C * C + 2 * T * C, head_f = 2 * C * V, embed_f = 2 * C;
    /* TESSERA_STAGES=3,1: layers per stage as given (tests, benchmarks) */
    const char *given = getenv("TESSERA_STAGES");
    if (given && *given) {
        double *n = calloc((size_t)g->pp, sizeof *n);
        int64_t *gb = calloc((size_t)g->pp + 1, sizeof *gb);
        ts_balance_mode mode;
        ts_status gs = n && gb ? ts_balance_parse(given, g->pp, NULL, &mode, n) : ts_error(TS_ERR_OOM, "no memory");
        for (int s = 0; !gs && s < g->pp; s++) {
            gb[s + 1] = gb[s] + (int64_t)n[s];
            if (n[s] != floor(n[s])) gs = ts_error(TS_ERR_INVALID_ARG, "TESSERA_STAGES=%s: %g layers", given, n[s]);
        }
        if (!gs && gb[g->pp] != c->model.n_layer)
            gs = ts_error(TS_ERR_INVALID_ARG, "TESSERA_STAGES=%s has %lld layers, the model %lld", given,
                          (long long)gb[g->pp], (long long)c->model.n_layer);
        gs = ts_comm_agree(g->world, gs, "reading TESSERA_STAGES");
        if (!gs) gs = use_stage_map(r, gb, 1);
        free(n), free(gb);
        return gs;
    }
    double cost = 0;
    TRY(ts_comm_agree(g->world, measure_rank(r, &cost), "measuring stage speed"));
    double mine = (double)(r->stage_layers[1] - r->stage_layers[0]) * layer_f + (g->pp_rank == 0 ? embed_f : 0) +
                  (g->pp_rank == g->pp - 1 ? head_f : 0);
    double v = cost / mine, *all = calloc((size_t)g->size, sizeof *all), *per = calloc((size_t)g->pp, sizeof *per);
    int64_t *b = calloc((size_t)g->pp + 1, sizeof *b);
    ts_status st = all && per && b ? TS_OK : ts_error(TS_ERR_OOM, "no memory");
    if (!st) st = ts_comm_allgather(g->world, &v, all, sizeof v, "stage speeds");
    if (!st) {
        for (int i = 0; i < g->size; i++) {
            int s = i / (g->tp * g->dp);
            if (all[i] > per[s]) per[s] = all[i];
        }
        for (int s = 0; s < g->pp; s++) per[s] *= layer_f;
        st = ts_balance_stages(c->model.n_layer, g->pp, per, per[0] / layer_f * embed_f,
                               per[g->pp - 1] / layer_f * head_f, b);
    }
    int same = 1;
    for (int s = 0; !st && s <= g->pp; s++) same &= b[s] == c->model.n_layer * s / g->pp;
    if (!st) st = use_stage_map(r, b, !same);
    free(all), free(per), free(b);
    return st;
}

/* 7. Every rank trains the same thing; then this rank's part of the model
 * (if it fits the device) and the engine that trains it, from the resumed
 * checkpoint or --init's weights. */
static ts_status build_model(run *r)
{
    ts_train_config *c = &r->c;
    ts_grid *g = &r->g;
    size_t k = ts_train_settings_json(c, r->settings, sizeof r->settings);
    if (k >= sizeof r->settings) return ts_error(TS_ERR_INVALID_ARG, "the run's settings exceed %zu bytes", k);
    char *check = malloc(TS_SETTINGS_MAX + 8192), ckpt[6 * 4300];
    if (!check) return ts_error(TS_ERR_OOM, "no memory");
    ts_json_escape(ckpt, sizeof ckpt, r->ckpt);
    snprintf(check, TS_SETTINGS_MAX + 8192, "%.*s, \"data_fingerprint\": \"%016llx\", \"resume_from\": %s, "
             "\"resume_step\": %lld, \"processes\": %d}", (int)(k ? k - 1 : 0), r->settings,
             (unsigned long long)r->ds.fingerprint, ckpt, (long long)r->state.step, g->size);
    ts_status cs = ts_grid_check_settings(g, check);
    free(check);
    TRY(cs);

    ts_status st = ts_gpt_config_check(&c->model);
    if (!st) {
        int moments = c->optim == TS_OPTIM_SGD ? 0 : c->optim == TS_OPTIM_SGD_MOMENTUM ? 1 : 2;
        bool fused = false;
        st = ts_attention_route_fused(r->dev, TS_ATTENTION_AUTO, c->batch / g->dp, c->seq_len,
                                      c->model.n_embd / g->tp, c->model.n_head / g->tp, &fused);
        double need =
            ts_gpt_train_bytes(&c->model, c->batch / g->dp, c->seq_len, moments, fused, c->dtype) /
            (double)(g->tp * g->pp);
        double have = (double)ts_device_get_info(r->dev)->global_mem_bytes;
        if (!st && have > 0 && need > have)
            st = ts_error(TS_ERR_OOM, "training L=%lld C=%lld on %lld x %lld tokens needs about %.1f GiB on %s, which "
                          "has %.1f GiB: use a smaller --batch, --seq-len or model, or more pipeline stages",
                          (long long)c->model.n_layer, (long long)c->model.n_embd, (long long)(c->batch / g->dp),
                          (long long)c->seq_len, need / 1073741824.0, ts_device_get_info(r->dev)->id,
                          have / 1073741824.0);
    }
    TRY(ts_comm_agree(g->world, st, "creating the model"));
    TRY(make_model(r, NULL));
    /* devices of different speed: stages by measured cost (the checkpoint
     * stays layout-free, so loading below works on any stage map) */
    const char *stages = getenv("TESSERA_STAGES");
    if (g->pp > 1 && (!strcmp(c->balance, "auto") || (stages && *stages))) TRY(plan_stages(r));
    char mf[4400], of[4400];
    if (r->ckpt[0]) {
        snprintf(mf, sizeof mf, "%s/model.safetensors", r->ckpt);
        snprintf(of, sizeof of, "%s/optim.safetensors", r->ckpt);
        TRY(ts_engine_load(r->e, mf, of));
        /* an fp16 run continues with its loss scale */
        if (r->state.loss_scale > 0) ts_engine_set_loss_scale(r->e, r->state.loss_scale, r->state.loss_scale_good_steps);
    } else if (c->init[0]) {
        snprintf(mf, sizeof mf, "%s/model.safetensors", c->init);
        TRY(ts_engine_load(r->e, mf, NULL));
    }
    r->res->num_params = ts_gpt_num_params(&c->model);
    r->res->first_step = r->state.step;
    return TS_OK;
}

typedef struct dev_tag {
    char id[32];
    char name[128];
} dev_tag;

/* Each replica's seconds per row: its slowest rank's (the stages and
 * tensor slices of a replica wait for each other). */
static void replica_costs(const run *r, const double *rank_cost, double *rep)
{
    const ts_grid *g = &r->g;
    for (int d = 0; d < g->dp; d++) rep[d] = 0;
    for (int i = 0; i < g->size; i++) {
        int d = (i / g->tp) % g->dp;
        if (rank_cost[i] > rep[d]) rep[d] = rank_cost[i];
    }
}

static void set_rows(run *r, const int64_t *rows)
{
    r->row0 = 0;
    for (int d = 0; d < r->g.dp; d++) {
        r->share[d] = rows[d];
        if (d < r->g.dp_rank) r->row0 += rows[d];
    }
    r->my_rows = r->share[r->g.dp_rank];
}

/* This rank's seconds per row of its replica's share, timed on the real
 * model and step shape (one micro-batch of the even share's rows). */
static ts_status measure_rank(run *r, double *cost)
{
    ts_train_config *c = &r->c;
    int64_t B = c->batch / r->g.dp > 0 ? c->batch / r->g.dp : 1, n = B * c->seq_len;
    int32_t *tok = malloc((size_t)n * sizeof *tok), *tg = malloc((size_t)n * sizeof *tg);
    ts_status st = tok && tg ? TS_OK : ts_error(TS_ERR_OOM, "no memory to measure speed");
    if (!st) st = ts_dataset_batch(&r->ds, TS_SPLIT_TRAIN, c->seed, 0, B, c->seq_len, tok, tg);
    double busy = 0;
    int64_t t0 = ts_trace_begin();
    if (!st) st = ts_engine_measure(r->e, 1, B, c->seq_len, tok, tg, 2, &busy);
    ts_trace_end(t0, "setup", "measuring speed", 2);
    free(tok), free(tg);
    *cost = busy > 0 ? busy / (double)B : 1e-9;
    return st;
}

/* 7b. Devices of different speed: tensor-parallel groups must be equal;
 * each data-parallel replica's rows of the batch, even, from shares, or in
 * proportion to speed measured here. */
static ts_status plan_balance(run *r)
{
    ts_train_config *c = &r->c;
    ts_grid *g = &r->g;
    r->share = calloc((size_t)g->dp, sizeof *r->share);
    r->prev_share = calloc((size_t)g->dp, sizeof *r->prev_share);
    r->rank_cost = calloc((size_t)g->size, sizeof *r->rank_cost);
    r->dev_ids = calloc((size_t)g->size, sizeof(dev_tag));
    double *w = calloc((size_t)g->dp, sizeof *w);
    const char **ids = calloc((size_t)g->dp, sizeof *ids);
    ts_status st = r->share && r->prev_share && r->rank_cost && r->dev_ids && w && ids ? TS_OK : ts_error(TS_ERR_OOM, "no memory");
    dev_tag mine = {0};
    const ts_device_info *di = ts_device_get_info(r->dev);
    snprintf(mine.id, sizeof mine.id, "%s", di->id);
    snprintf(mine.name, sizeof mine.name, "%s", di->name);
    dev_tag *tags = (dev_tag *)(void *)r->dev_ids;
    if (!st) st = ts_comm_allgather(g->world, &mine, tags, sizeof mine, "devices");
    /* tensor-parallel slices run in lockstep on equal shapes: unequal
     * devices would leave the fast ones waiting every layer */
    for (int i = 0; i < g->size && !st; i++) {
        int lead = i - i % g->tp;
        if (strcmp(tags[i].id, tags[lead].id) != 0 && strcmp(tags[i].name, tags[lead].name) != 0)
            st = ts_error(TS_ERR_INVALID_ARG, "tensor-parallel groups need equal devices: rank %d has %s (%s) and "
                          "rank %d %s (%s); give a --tp group devices of one kind (--device lists are dealt out by "
                          "node-local rank)", lead, tags[lead].id, tags[lead].name, i, tags[i].id, tags[i].name);
    }
    ts_balance_mode mode = TS_BALANCE_EVEN;
    if (!st) {
        for (int d = 0; d < g->dp; d++) ids[d] = tags[d * g->tp].id;
        st = ts_balance_parse(c->balance, g->dp, ids, &mode, w);
    }
    st = ts_comm_agree(g->world, st, "planning the balance");
    /* each replica's share as read on its own first rank: a bench file per
     * node (same path, that node's devices) gives each replica its own
     * device's rate; the same on every rank afterwards */
    if (!st) {
        double own = w[g->dp_rank], *all = calloc((size_t)g->size, sizeof *all);
        st = all ? ts_comm_allgather(g->world, &own, all, sizeof own, "balance shares") : ts_error(TS_ERR_OOM, "no memory");
        for (int d = 0; !st && d < g->dp; d++) w[d] = all[d * g->tp];
        free(all);
    }
    /* every multi-process run measures (a few micro-steps): the start-up
     * lines and the log name each rank's speed, whatever the split */
    if (!st && (mode == TS_BALANCE_AUTO || c->rebalance_every > 0 || g->size > 1)) {
        double cost = 0;
        st = ts_comm_agree(g->world, measure_rank(r, &cost), "measuring speed");
        if (!st) st = ts_comm_allgather(g->world, &cost, r->rank_cost, sizeof cost, "measured speeds");
        if (!st && mode == TS_BALANCE_AUTO) {
            replica_costs(r, r->rank_cost, w);
            for (int d = 0; d < g->dp; d++) w[d] = 1.0 / w[d];
        }
    }
    int64_t *rows = calloc((size_t)g->dp, sizeof *rows);
    if (!st && !rows) st = ts_error(TS_ERR_OOM, "no memory");
    if (!st) st = ts_balance_split(c->batch, g->dp, w, rows);
    if (!st) set_rows(r, rows);
    free(rows), free(w), free(ids);
    return ts_comm_agree(g->world, st, "splitting the batch");
}

/* Rows per replica as "6+2", for the log and the start-up lines. */
static void fmt_rows(const run *r, char *buf, size_t n)
{
    size_t k = 0;
    buf[0] = '\0';
    for (int d = 0; d < r->g.dp && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", d ? "+" : "", (long long)r->share[d]);
}

/* Re-measuring during the run: each rank's compute seconds per row over a
 * window of steps; a re-split when the predicted gain is worth it, undone
 * if the window after it was slower. */
typedef struct rebalancer {
    double busy, wall;           /* this window's compute and step time */
    int64_t steps, rows;
    double last_window_step_s;   /* mean step time of the window before a re-split, 0 if none */
    int64_t *prev;               /* the split before the last re-split */
    int just_split;
} rebalancer;

static void log_balance(run *r, const char *event, int64_t step, double predicted_gain)
{
    if (!r->log) return;
    char rows[256];
    fmt_rows(r, rows, sizeof rows);
    fprintf(r->log, "{\"event\": \"%s\", \"step\": %lld, \"rows\": \"%s\", \"predicted_gain\": %.4f, \"rank_tokens_per_s\": [",
            event, (long long)step, rows, predicted_gain);
    for (int i = 0; i < r->g.size; i++)
        fprintf(r->log, "%s%.1f", i ? ", " : "", r->rank_cost[i] > 0 ? (double)r->c.seq_len / r->rank_cost[i] : 0);
    fprintf(r->log, "]}\n");
    fflush(r->log);
}

static ts_status rebalance(run *r, rebalancer *rb, int64_t step)
{
    ts_train_config *c = &r->c;
    ts_grid *g = &r->g;
    if (c->rebalance_every <= 0 || g->dp < 2) return TS_OK;
    const ts_pipeline_stats *ps = ts_engine_pipeline_stats(r->e);
    rb->busy += ps->busy_s, rb->wall += ps->step_s, rb->steps++, rb->rows += r->my_rows * c->grad_accum;
    if (step % c->rebalance_every != 0) return TS_OK;
    double cost = rb->busy / (double)(rb->rows > 0 ? rb->rows : 1), wall = rb->wall / (double)rb->steps;
    rb->busy = rb->wall = 0, rb->steps = rb->rows = 0;
    TRY(ts_comm_allgather(g->world, &cost, r->rank_cost, sizeof cost, "step times"));
    TRY(ts_comm_allreduce_f64(g->world, &wall, 1, TS_REDUCE_MAX, "step times"));
    int64_t *rows = calloc((size_t)g->dp, sizeof *rows);
    double *rep = calloc((size_t)g->dp, sizeof *rep), *w = calloc((size_t)g->dp, sizeof *w);
    rb->prev = r->prev_share;
    ts_status st = rows && rep && w && rb->prev ? TS_OK : ts_error(TS_ERR_OOM, "no memory");
    if (!st && rb->just_split && wall > rb->last_window_step_s) {
        /* the new split was slower in practice: back to the old one */
        rb->just_split = 0;
        set_rows(r, rb->prev);
        if (r->root) log_balance(r, "rebalance_reverted", step, 0);
    } else if (!st) {
        rb->just_split = 0;
        replica_costs(r, r->rank_cost, rep);
        for (int d = 0; d < g->dp; d++) w[d] = 1.0 / rep[d];
        st = ts_balance_split(c->batch, g->dp, w, rows);
        if (!st) {
            double now = ts_balance_predict(g->dp, rep, r->share), then = ts_balance_predict(g->dp, rep, rows);
            double gain = now > 0 ? (now - then) / now : 0;
            int changed = memcmp(rows, r->share, (size_t)g->dp * sizeof *rows) != 0;
            if (changed && (gain > c->rebalance_gain || c->rebalance_gain < 0)) {
                memcpy(rb->prev, r->share, (size_t)g->dp * sizeof *rows);
                rb->last_window_step_s = wall;
                rb->just_split = 1;
                set_rows(r, rows);
                if (r->root) log_balance(r, "rebalance", step, gain);
                if (r->verbose) {
                    char b[256];
                    fmt_rows(r, b, sizeof b);
                    fprintf(r->out, "rebalance at step %lld: rows %s (predicted %.0f%% faster)\n", (long long)step,
                            b, 100 * gain);
                }
            }
        }
    }
    free(rows), free(rep), free(w);
    return st;
}

/* 8. Files of the run, once everything checked out (world rank 0): the
 * tokenizer, the log (a resumed run's without the steps it will redo). */
static ts_status open_outputs(run *r)
{
    ts_train_config *c = &r->c;
    ts_status st = TS_OK;
    if (r->root && c->out_dir[0] && !r->ckpt[0]) {
        char f[4300];
        st = ts_mkdir_p(c->out_dir);
        snprintf(f, sizeof f, "%s/tokenizer.txt", c->out_dir);
        if (!st) st = ts_tokenizer_save(&r->tok, f);
    }
    if (!st && r->root && strcmp(c->log_path, "-") != 0 && (c->log_path[0] || c->out_dir[0])) {
        char path[4300];
        if (c->log_path[0]) snprintf(path, sizeof path, "%s", c->log_path);
        else snprintf(path, sizeof path, "%s/log.jsonl", c->out_dir);
        if (r->ckpt[0]) st = ts_run_log_truncate(path, r->state.step);
        if (!st && !(r->log = fopen(path, r->ckpt[0] ? "a" : "w")))
            st = ts_error(TS_ERR_IO, "cannot write the log %s: %s", path, strerror(errno));
    }
    return ts_comm_agree(r->g.world, st, "opening the log");
}

/* The yardstick for MFU: each process's GEMM rate measured while the
 * other processes of its node wait, so none measures with cores another is
 * using; a node's rate is their sum, capped at its cores times the best
 * rate per thread (processes that share cores cannot add up past them). */
static ts_status measure_job_peak(run *r)
{
    ts_grid *g = &r->g;
    ts_comm *node = ts_comm_node();
    int n = ts_comm_size(node), me = ts_comm_rank(node);
    double mine = 0;
    int64_t t0 = ts_trace_begin();
    for (int k = 0; k < n; k++) {
        TRY(ts_comm_barrier(node, "measuring the GEMM rate"));
        if (k == me) mine = measure_peak(r->dev, &r->c.model, r->c.batch / g->dp * r->c.seq_len);
    }
    ts_trace_end(t0, "setup", "measuring the GEMM rate", 2);
    int threads = ts_get_threads() > 0 ? ts_get_threads() : 1;
    double node_stats[2] = {mine, mine / threads};
    TRY(ts_comm_allreduce_f64(node, &node_stats[0], 1, TS_REDUCE_SUM, "GEMM rates"));
    TRY(ts_comm_allreduce_f64(node, &node_stats[1], 1, TS_REDUCE_MAX, "GEMM rates"));
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    double node_peak = node_stats[0];
    if (cores > 0 && node_stats[1] * (double)cores < node_peak) node_peak = node_stats[1] * (double)cores;
    /* the job's rate: every node's once */
    r->peak = me == 0 ? node_peak : 0;
    r->node_cores = (int)cores;
    return ts_comm_allreduce_f64(g->world, &r->peak, 1, TS_REDUCE_SUM, "GEMM rates");
}

/* 9. The yardstick for MFU, and the header: where every process runs and
 * what it trains. */
static ts_status report_start(run *r)
{
    ts_train_config *c = &r->c;
    ts_grid *g = &r->g;
    TRY(measure_job_peak(r));
    char(*places)[640] = calloc((size_t)g->size, sizeof *places);
    if (!places) return ts_error(TS_ERR_OOM, "no memory");
    /* where each rank runs: its node (host name), its rank there (which
     * chose its device and its cores), the device and the binding */
    char mine[640], host[64] = "?";
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "?");
    host[sizeof host - 1] = '\0';
    if (g->size > 1)
        snprintf(mine, sizeof mine, "node %d %s, local rank %d of %d, %s: %s", g->node, host, g->local_rank,
                 g->local_size, ts_device_get_info(r->dev)->id, r->bind.report);
    else
        snprintf(mine, sizeof mine, "%s: %s", ts_device_get_info(r->dev)->id, r->bind.report);
    ts_status st = ts_comm_allgather(g->world, mine, places, sizeof mine, "placement report");
    char layout[256];
    fmt_layout(g, c, layout, sizeof layout);
    if (!st && r->verbose) {
        const ts_device_info *di = ts_device_get_info(r->dev);
        FILE *out = r->out;
        if (r->ckpt[0]) fprintf(out, "resuming %s (step %lld of %lld)\n", r->ckpt, (long long)r->state.step,
                                (long long)c->steps);
        if (c->init[0]) fprintf(out, "weights  from %s\n", c->init);
        fprintf(out, "device   %s (%s)\n", di->id, di->name);
        if (r->ds.train_tokens > ((int64_t)1 << 40))
            fprintf(out, "data     %s: generated without end, vocabulary %d\n", r->ds.name, r->tok.vocab_size);
        else
            fprintf(out, "data     %s: %lld training tokens, vocabulary %d\n", r->ds.name,
                    (long long)r->ds.train_tokens, r->tok.vocab_size);
        fprintf(out, "model    L=%lld H=%lld C=%lld T=%lld: %.2fM parameters\n", (long long)c->model.n_layer,
                (long long)c->model.n_head, (long long)c->model.n_embd, (long long)c->seq_len,
                (double)r->res->num_params / 1e6);
        fprintf(out, "training %lld steps of %lld x %lld x %lld tokens, %s lr %.2g%s\n", (long long)c->steps,
                (long long)c->batch, (long long)c->grad_accum, (long long)c->seq_len, ts_optim_kind_name(c->optim),
                c->lr, c->cosine ? " cosine" : "");
        fprintf(out, "layout   %s\n", layout);
        if (g->size > 1) {
            char rows[256];
            fmt_rows(r, rows, sizeof rows);
            fprintf(out, "balance  %s: rows %s of %lld per replica\n", c->balance, rows, (long long)c->batch);
            if (r->stage_map[0]) fprintf(out, "stages   layers %s (by measured cost per stage)\n", r->stage_map);
            const dev_tag *tags = r->dev_ids;
            for (int i = 0; i < g->size; i++) {
                fprintf(out, "rank %-3d device %s (%s)", i, tags[i].id, tags[i].name);
                if (r->rank_cost[i] > 0) fprintf(out, ", measured %.0f tokens/s", (double)c->seq_len / r->rank_cost[i]);
                fprintf(out, "\n");
            }
        }
        for (int i = 0; i < g->size; i++)
            if (g->size > 1 || r->bind.bound) fprintf(out, "rank %-3d %s\n", i, places[i]);
        if (r->peak > 0 && g->size > 1)
            fprintf(out, "MFU is measured against the nodes' GEMM rate: %.1f GFLOP/s (each process measured alone on "
                    "its cores, a node's sum capped at its %d cores)\n", r->peak / 1e9, r->node_cores);
        else if (r->peak > 0)
            fprintf(out, "MFU is measured against this device's GEMM rate: %.1f GFLOP/s\n", r->peak / 1e9);
        fflush(out); /* before the first step, also when stdout is a pipe */
    }
    if (!st && r->log) {
        fprintf(r->log, "{\"event\": \"start\", \"step\": %lld, \"device\": ", (long long)r->state.step);
        ts_json_write_string(r->log, ts_device_get_info(r->dev)->id);
        fprintf(r->log, ", \"params\": %lld, \"peak_gflops\": %.1f, \"processes\": %d, \"layout\": ",
                (long long)r->res->num_params, r->peak / 1e9, g->size);
        ts_json_write_string(r->log, layout);
        fprintf(r->log, ", \"placement\": [");
        for (int i = 0; i < g->size; i++) {
            if (i) fprintf(r->log, ", ");
            ts_json_write_string(r->log, places[i]);
        }
        const dev_tag *tags = r->dev_ids;
        char rows[256];
        fmt_rows(r, rows, sizeof rows);
        fprintf(r->log, "], \"devices\": [");
        for (int i = 0; i < g->size; i++) {
            fprintf(r->log, "%s{\"rank\": %d, \"device\": ", i ? ", " : "", i);
            ts_json_write_string(r->log, tags[i].id);
            fprintf(r->log, ", \"name\": ");
            ts_json_write_string(r->log, tags[i].name);
            fprintf(r->log, ", \"tokens_per_s\": %.1f}", r->rank_cost[i] > 0 ? (double)c->seq_len / r->rank_cost[i] : 0);
        }
        fprintf(r->log, "], \"balance\": ");
        ts_json_write_string(r->log, c->balance);
        fprintf(r->log, ", \"rows\": \"%s\"", rows);
        if (r->stage_map[0]) fprintf(r->log, ", \"stage_map\": \"%s\"", r->stage_map);
        fprintf(r->log, ", \"settings\": %s}\n", r->settings);
        fflush(r->log);
    }
    free(places);
    return st;
}

/* A checkpoint that every process takes part in: world rank 0 prepares
 * the directory and writes the files that the engine assembles. */
static ts_status save_checkpoint(run *r)
{
    ts_train_config *c = &r->c;
    ts_grid *g = &r->g;
    if (!c->out_dir[0] || r->saved_step == r->state.step) return TS_OK;
    char tmp[4200] = "", f[4300], fp[32];
    const char *meta[4];
    r->state.val_loss = r->last_val_step == r->state.step ? r->last_val : NAN;
    const ts_loss_scaler *ls = ts_engine_loss_scaler(r->e);
    r->state.loss_scale = ls->enabled ? ls->scale : 0.0;
    r->state.loss_scale_good_steps = ls->enabled ? ls->good_steps : 0;
    ts_status st = r->root ? ts_checkpoint_begin(c->out_dir, r->state.step, tmp, sizeof tmp) : TS_OK;
    st = ts_comm_agree(g->world, st, "preparing a checkpoint");
    if (st) return st;
    ts_checkpoint_model_meta(r->tok.fingerprint, fp, meta);
    snprintf(f, sizeof f, "%s/model.safetensors", tmp);
    st = ts_engine_save_model(r->e, f, meta);
    snprintf(f, sizeof f, "%s/optim.safetensors", tmp);
    if (!st) st = ts_engine_save_optimizer(r->e, f);
    if (r->root) {
        if (!st && c->on_checkpoint) c->on_checkpoint(c->on_step_ctx, tmp, r->state.step);
        char *tok_text = NULL;
        size_t tok_len = 0;
        if (!st) st = ts_tokenizer_serialize(&r->tok, &tok_text, &tok_len);
        ts_checkpoint_file files[] = {{"tokenizer.txt", tok_text, tok_len}};
        if (st) ts_checkpoint_abandon(tmp);
        else st = ts_checkpoint_finish(c->out_dir, tmp, &r->state, files, 1, c->keep);
        free(tok_text);
    }
    TRY(ts_comm_agree(g->world, st, "saving a checkpoint"));
    r->saved_step = r->state.step;
    return TS_OK;
}

/* Validation loss: eval_batches batches of `batch` sequences, each replica
 * scoring its rows, through the pipeline; logged and shown. */
static ts_status evaluate(run *r)
{
    ts_train_config *c = &r->c;
    int64_t bl = r->my_rows, n = bl * c->seq_len;
    for (int64_t i = 0; i < c->eval_batches; i++)
        TRY(ts_dataset_batch(&r->ds, TS_SPLIT_VAL, c->seed, i * c->batch + r->row0, bl, c->seq_len,
                             r->in + i * n, r->tg + i * n));
    double vl;
    TRY(ts_engine_eval(r->e, (int)c->eval_batches, bl, c->seq_len, r->in, r->tg, &vl));
    r->res->val_loss = vl;
    r->last_val = vl;
    r->last_val_step = r->state.step;
    if (vl < r->state.best_val_loss) r->state.best_val_loss = vl;
    if (r->log) {
        char v[32];
        fprintf(r->log, "{\"step\": %lld, \"val_loss\": %s}\n", (long long)r->state.step, ts_json_float(v, sizeof v, vl));
        fflush(r->log);
    }
    if (r->verbose) {
        fprintf(r->out, "%sstep %lld: validation loss %.4f\n", r->tty ? "\n" : "", (long long)r->state.step, vl);
        fflush(r->out);
    }
    return TS_OK;
}

/* The progress line and the step's log entry. */
static void report_step(run *r, int64_t step, float loss, float lr, double norm, double rate, double mfu,
                        double elapsed)
{
    ts_train_config *c = &r->c;
    if (r->log) {
        char l[32], a[32], g[32];
        fprintf(r->log,
                "{\"step\": %lld, \"loss\": %s, \"lr\": %s, \"grad_norm\": %s, \"tokens_per_s\": %.1f, "
                "\"mfu\": %.4f, \"elapsed_s\": %.3f",
                (long long)(step + 1), ts_json_float(l, sizeof l, loss), ts_json_float(a, sizeof a, lr),
                ts_json_float(g, sizeof g, norm), rate, mfu, elapsed);
        const ts_loss_scaler *ls = ts_engine_loss_scaler(r->e);
        if (ls->enabled)
            fprintf(r->log, ", \"loss_scale\": %.9g, \"skipped\": %s", ls->last_scale, ls->last_skipped ? "true" : "false");
        fprintf(r->log, "}\n");
        fflush(r->log);
    }
    int64_t line_every = c->steps >= 20 ? c->steps / 20 : 1;
    if (!r->verbose || !(r->tty || (step + 1) % line_every == 0 || step + 1 == c->steps)) return;
    double eta = elapsed / (double)(step + 1 - r->res->first_step) * (double)(c->steps - step - 1);
    char rt[32], et[32], bar[32];
    fmt_rate(rate, rt, sizeof rt);
    fmt_duration(eta, et, sizeof et);
    int w = 20, filled = (int)((double)w * (double)(step + 1) / (double)c->steps);
    for (int i = 0; i < w; i++) bar[i] = i < filled ? '#' : '.';
    bar[w] = '\0';
    fprintf(r->out, "%s[%s] step %lld/%lld | loss %.4f | %s tok/s | MFU %.1f%% | ETA %s%s", r->tty ? "\r" : "", bar,
            (long long)(step + 1), (long long)c->steps, loss, rt, 100.0 * mfu, et, r->tty ? "   " : "\n");
    fflush(r->out);
}

/* 10. The loop: a step, its report, evaluation and checkpoints; a signal
 * (ts_train_request_stop) ends it after the step in flight, on every rank
 * at the same step. */
static ts_status train_loop(run *r)
{
    ts_train_config *c = &r->c;
    ts_grid *g = &r->g;
    /* room for the most rows a replica can be given (re-splits change them) */
    int64_t most = (c->batch - g->dp + 1) * c->seq_len, tokens_per_step = c->batch * c->seq_len * c->grad_accum;
    int64_t rows = c->grad_accum > c->eval_batches ? c->grad_accum : c->eval_batches;
    r->in = malloc((size_t)(rows * most) * sizeof *r->in);
    r->tg = malloc((size_t)(rows * most) * sizeof *r->tg);
    rebalancer rb = {0};
    if (!r->in || !r->tg) return ts_error(TS_ERR_OOM, "no memory for batches");
    ts_lr_schedule sched = {.lr = c->lr, .min_lr = c->min_lr, .warmup_steps = c->warmup, .total_steps = c->steps,
                            .cosine = c->cosine};
    double flops_per_token = ts_gpt_flops_per_token(&c->model, c->seq_len), t_start = ts_now();
    /* tokens/s over the last few seconds of steps, honest from the first */
    double window_t[8];
    int64_t window_step[8];
    int wn = 0;
    window_t[0] = t_start, window_step[0] = r->state.step, wn = 1;
    r->state.seed = c->seed;
    r->state.data_fingerprint = r->ds.fingerprint;
    snprintf(r->state.settings, sizeof r->state.settings, "%s", r->settings);
    /* checkpoints: every ckpt_every steps, else at every evaluation (with
     * --out), and at the end */
    int64_t save_every = c->ckpt_every > 0 ? c->ckpt_every : c->eval_every;
    for (int64_t step = r->state.step; step < c->steps; step++) {
        ts_trace_step(step + 1);
        ts_status st = TS_OK;
        int64_t bl = r->my_rows, n = bl * c->seq_len;
        for (int64_t k = 0; k < c->grad_accum && !st; k++) {
            int64_t first = (step * c->grad_accum + k) * c->batch + r->row0;
            st = ts_dataset_batch(&r->ds, TS_SPLIT_TRAIN, c->seed, first, bl, c->seq_len, r->in + k * n, r->tg + k * n);
        }
        TRY(ts_comm_agree(g->world, st, "reading a batch"));
        float lr = ts_lr_at(&sched, step), loss;
        double norm;
        st = ts_engine_step(r->e, (int)c->grad_accum, bl, c->seq_len, r->in, r->tg, lr, c->grad_clip, &loss, &norm);
        if (st) return ts_error_context(st, "step %lld", (long long)step);
        TRY(rebalance(r, &rb, step + 1));
        r->state.step = step + 1;
        r->state.next_sample = r->state.step * c->grad_accum * c->batch;
        r->state.tokens_seen += (double)tokens_per_step;
        r->state.loss = loss;
        r->res->last_loss = loss;
        if (c->on_step) c->on_step(c->on_step_ctx, step, loss, lr, norm);
        double now = ts_now();
        if (wn == 8) {
            memmove(window_t, window_t + 1, 7 * sizeof *window_t);
            memmove(window_step, window_step + 1, 7 * sizeof *window_step);
            wn = 7;
        }
        window_t[wn] = now, window_step[wn] = step + 1, wn++;
        double rate = (double)((window_step[wn - 1] - window_step[0]) * tokens_per_step) / (now - window_t[0]);
        double mfu = r->peak > 0 ? rate * flops_per_token / r->peak : 0;
        report_step(r, step, loss, lr, norm, rate, mfu, now - t_start);
        int last = step + 1 == c->steps;
        if ((c->eval_every > 0 && (step + 1) % c->eval_every == 0) || (last && c->eval_batches > 0))
            TRY(evaluate(r));
        if ((save_every > 0 && (step + 1) % save_every == 0) || last) TRY(save_checkpoint(r));
        /* a signal on any rank stops every rank after this step */
        double stop = (double)g_stop_signal;
        if (g->size > 1) TRY(ts_comm_allreduce_f64(g->world, &stop, 1, TS_REDUCE_MAX, "stop request"));
        if (stop > 0 && !last) {
            r->res->interrupted = (int)stop;
            TRY(save_checkpoint(r));
            break;
        }
    }
    /* --steps 0: the untrained model is the run's checkpoint */
    if (c->steps == 0 && !r->ckpt[0]) TRY(save_checkpoint(r));
    if (r->verbose && r->tty) fprintf(r->out, "\n");
    r->res->seconds = ts_now() - t_start;
    return TS_OK;
}

/* 11. The summary line, the trace, and what the model learned. */
static ts_status finish_run(run *r)
{
    ts_train_config *c = &r->c;
    ts_grid *g = &r->g;
    ts_train_result *res = r->res;
    int64_t tokens_per_step = c->batch * c->seq_len * c->grad_accum, done = r->state.step - res->first_step;
    const ts_pipeline_stats *ps = ts_engine_pipeline_stats(r->e);
    res->bubble = ps->schedule_s > 0 ? 1.0 - ps->busy_s / ps->schedule_s : 0;
    res->steps_done = r->state.step;
    res->last_loss = (float)r->state.loss;
    res->tokens_per_second = res->seconds > 0 ? (double)(done * tokens_per_step) / res->seconds : 0;
    res->mfu = r->peak > 0 ? res->tokens_per_second * ts_gpt_flops_per_token(&c->model, c->seq_len) / r->peak : 0;
    if (r->verbose) {
        char d[32], rt[32];
        fmt_duration(res->seconds, d, sizeof d);
        fmt_rate(res->tokens_per_second, rt, sizeof rt);
        if (done == 0 && r->ckpt[0])
            fprintf(r->out, "the run in %s is complete: step %lld of %lld, last loss %.4f\n", c->out_dir,
                    (long long)r->state.step, (long long)c->steps, r->state.loss);
        else if (done == 0)
            fprintf(r->out, "trained 0 steps: the untrained model is in %s\n", c->out_dir[0] ? c->out_dir : "memory");
        else
            fprintf(r->out, "trained %lld steps in %s: %s tokens/s, MFU %.1f%%, final loss %.4f\n", (long long)done, d,
                    rt, 100.0 * res->mfu, r->state.loss);
        int64_t cross_calls, cross_bytes;
        ts_comm_hier_stats(&cross_calls, &cross_bytes);
        if (c->strategy == TS_STRATEGY_HIER && g->dp > 1)
            fprintf(r->out, "hier     sums within each node in shared memory, then %lld inter-node allreduces "
                    "(%.2f MB from rank 0) across %d node%s\n", (long long)cross_calls, (double)cross_bytes / 1e6,
                    g->nodes, g->nodes == 1 ? "" : "s");
        if (res->interrupted)
            fprintf(r->out, "stopped by %s after step %lld%s%s%s\n", res->interrupted == SIGINT ? "SIGINT" :
                    res->interrupted == SIGTERM ? "SIGTERM" : "a stop request", (long long)r->state.step,
                    c->out_dir[0] ? ": checkpoint written; continue with --resume --out " : "",
                    c->out_dir[0] ? c->out_dir : "", "");
        fflush(r->out);
    }
    if (c->trace_path[0]) {
        TRY(ts_trace_write(c->trace_path));
        if (r->verbose) fprintf(r->out, "timeline of every rank in %s (open it in Perfetto or chrome://tracing)\n",
                                c->trace_path);
    }
    /* the same choice on every rank: gathering the model is collective */
    if (!res->interrupted && done > 0 && (c->progress || !c->data[0])) {
        ts_gpt whole, *shown = &r->m;
        int gathered = g->tp > 1 || g->pp > 1;
        if (gathered) {
            TRY(ts_engine_gather_model(r->e, &whole));
            shown = &whole;
        }
        ts_status st = r->root ? show_learning(shown, &r->ds, &r->tok, c, r->verbose ? r->out : NULL,
                                               &res->task_accuracy)
                               : TS_OK;
        if (gathered && r->root) ts_gpt_free(&whole);
        TRY(ts_comm_agree(g->world, st, "showing what the model learned"));
        TRY(ts_comm_bcast(g->world, &res->task_accuracy, sizeof res->task_accuracy, 0, "task accuracy"));
    }
    if (r->log) {
        fprintf(r->log, "{\"event\": \"%s\", \"step\": %lld, \"seconds\": %.3f, \"tokens_per_s\": %.1f, \"mfu\": %.4f}\n",
                res->interrupted ? "stopped" : "end", (long long)r->state.step, res->seconds, res->tokens_per_second,
                res->mfu);
        fflush(r->log);
    }
    return TS_OK;
}

static ts_status train_run(run *r)
{
    TRY(check_config(&r->c));
    TRY(setup_processes(r));
    TRY(prepare_run_dir(r));
    TRY(read_resume_point(r));
    TRY(open_device(r));
    TRY(open_data(r));
    TRY(build_model(r));
    TRY(plan_balance(r));
    TRY(open_outputs(r));
    TRY(report_start(r));
    r->made_out_dir = 0; /* from here on the run directory is the run's */
    TRY(train_loop(r));
    return finish_run(r);
}

ts_status ts_train(const ts_train_config *cfg, ts_train_result *res)
{
    memset(res, 0, sizeof *res);
    res->val_loss = NAN;
    res->task_accuracy = NAN;
    res->last_loss = NAN;
    run *r = calloc(1, sizeof *r);
    if (!r) return ts_error(TS_ERR_OOM, "no memory");
    r->c = *cfg;
    r->res = res;
    r->saved_step = -1;
    r->last_val = NAN;
    r->last_val_step = -1;
    ts_status st = train_run(r);
    /* keep the message: freeing may call into MPI */
    char msg[2048];
    snprintf(msg, sizeof msg, "%s", st ? ts_last_error() : "");
    /* a run that failed before it began leaves no directory behind */
    if (st && r->made_out_dir && r->root) rmdir(r->c.out_dir);
    run_free(r);
    free(r);
    if (st) ts_error(st, "%s", msg);
    return st;
}
