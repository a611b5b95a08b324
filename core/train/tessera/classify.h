/* Text classification behind `tessera classify`: labeled data, metrics,
 * and the fine-tuning, evaluation and prediction loops around the
 * classifier of tessera/classifier.h.
 *
 * Labeled data: JSON lines ({"text": ..., "label": ...}, the Hugging Face
 * datasets convention), CSV (RFC 4180 quoting) or TSV with a header row
 * naming the text and label columns, or plain lines of text (prediction
 * only). Labels are strings (a number label is read as its text). A
 * malformed line, an empty text or a missing column is an error that names
 * the file and the line. The label set is the sorted set of the training
 * file's labels; it is saved with the model (labels.json) and a label
 * outside it in another file is an error naming the file and line, or,
 * when asked, an example counted as wrongly classified.
 *
 * Training: the classifier's trunk starts from a language model's
 * checkpoint (`tessera train`: its weights and tokenizer; the head new) or
 * from a seed; each epoch visits the training examples in a seeded order
 * in batches padded to their longest text; after each epoch the held-out
 * split is evaluated and a checkpoint written, `best` naming the one of the
 * best held-out score. Under MPI every process takes its share of each
 * batch and the gradients are summed before the update, weighted so that
 * any number of processes makes the same update as one. Checkpoints resume
 * exactly (state.json keeps the run's settings). */
#ifndef TESSERA_CLASSIFY_H
#define TESSERA_CLASSIFY_H

#include <stdint.h>
#include <stdio.h>

#include "tessera/classifier.h"
#include "tessera/status.h"
#include "tessera/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- labeled data ---- */

typedef enum ts_text_format {
    TS_FORMAT_AUTO = 0, /* by the file name: .jsonl/.json, .csv, .tsv/.tab, else lines */
    TS_FORMAT_JSONL,
    TS_FORMAT_CSV,
    TS_FORMAT_TSV,
    TS_FORMAT_LINES,    /* one text per line, no labels */
} ts_text_format;

const char *ts_text_format_name(ts_text_format f);
int ts_text_format_parse(const char *name); /* -1 if unknown */
/* The format a file of this name is read as under TS_FORMAT_AUTO. */
ts_text_format ts_text_format_of(const char *path);

typedef struct ts_labeled_data {
    char path[1024];
    int64_t n;
    char **texts;         /* UTF-8, NUL-terminated */
    char **labels;        /* the label of each example, or NULL where the file has none */
    int64_t *lines;       /* the line (1-based) each example starts on */
    int32_t *ids;         /* index in a label set (ts_labeled_assign), -1 = none or unseen */
} ts_labeled_data;

typedef struct ts_labeled_options {
    ts_text_format format;
    const char *text_field;   /* "text" */
    const char *label_field;  /* "label" */
    int need_labels;          /* every example must have a label */
} ts_labeled_options;

/* Read a labeled file (a whole file; "-" is not accepted). */
ts_status ts_labeled_load(ts_labeled_data *d, const char *path, const ts_labeled_options *o);
void ts_labeled_free(ts_labeled_data *d);
/* The texts of a labeled file joined by newlines (a corpus for `tessera
 * train`); a file of another format (by name) is returned as it is. */
ts_status ts_labeled_corpus(const char *path, char **text, size_t *n);

typedef struct ts_label_set {
    int n;
    char **names;         /* sorted (bytewise) */
} ts_label_set;

ts_status ts_label_set_from(ts_label_set *s, const ts_labeled_data *d);
/* JSON array of the names; caller frees. */
ts_status ts_label_set_json(const ts_label_set *s, char **json, size_t *n);
ts_status ts_label_set_parse(ts_label_set *s, const char *json, size_t n, const char *name);
void ts_label_set_free(ts_label_set *s);
int ts_label_set_find(const ts_label_set *s, const char *name); /* -1 if absent */
/* d->ids from d->labels. A label outside s is an error naming the file and
 * line, unless allow_unseen (then its id is -1 and *unseen counts it). */
ts_status ts_labeled_assign(ts_labeled_data *d, const ts_label_set *s, int allow_unseen, int64_t *unseen);

/* ---- metrics ----
 * From a confusion matrix of K+1 rows (true class; row K: examples whose
 * label is unseen) and K columns (predicted class): accuracy over every
 * example, per-class precision, recall, F1 and support, and their macro
 * (unweighted) means. A class never predicted has precision 0, one never
 * true recall 0, and F1 is 0 where precision + recall is 0 (scikit-learn's
 * zero_division=0). */
typedef struct ts_class_metrics {
    int K;
    int64_t *confusion;   /* (K+1) x K */
    int64_t total, correct, unseen;
    double accuracy, macro_precision, macro_recall, macro_f1;
    double *precision, *recall, *f1;
    int64_t *support;
    double loss;          /* mean cross-entropy over the examples with a known label (NAN: none) */
} ts_class_metrics;

ts_status ts_metrics_compute(ts_class_metrics *m, int K, const int64_t *confusion, double loss);
void ts_metrics_free(ts_class_metrics *m);
/* The table: per class precision, recall, F1 and support, the macro means,
 * the accuracy, then the confusion matrix. */
void ts_metrics_print(FILE *f, const ts_class_metrics *m, const ts_label_set *labels);
/* The same as one JSON object (no newline). */
void ts_metrics_write_json(FILE *f, const ts_class_metrics *m, const ts_label_set *labels);

/* ---- fine-tuning ---- */

typedef struct ts_classify_config {
    /* data */
    char train[1024];         /* labeled training file */
    char val[1024];           /* labeled held-out file; "" = the val_fraction split of train */
    double val_fraction;
    char format[16];          /* auto | jsonl | csv | tsv */
    char text_field[128], label_field[128];
    /* model: a language model's checkpoint (its trunk and tokenizer), or a
     * new trunk of these sizes with this tokenizer */
    char init[1024];          /* checkpoint or run directory of `tessera train`; "" = from scratch */
    char tokenizer[1024];     /* byte | bpe:N | word:N (trained on the training texts) | tokenizer file */
    int64_t layers, heads, width;
    int64_t max_len;          /* tokens per text (longer texts are cut) */
    char pool[16];            /* last | mean | max | mixed (an ensemble's members alternate last, mean) */
    char attention[16];       /* causal | bidirectional */
    char class_weights[1024]; /* "" (none) | balanced | w1,w2,... in label order */
    int64_t char_ngrams;      /* buckets of hashed character n-grams added to each token's embedding
                               * (fastText's subwords of the word it belongs to), 0 = none */
    /* optimisation */
    int64_t epochs, batch, warmup;
    char optim[16];
    float lr, trunk_lr;       /* trunk_lr < 0: lr */
    float min_lr, beta1, beta2, eps, weight_decay, grad_clip;
    double token_dropout;     /* share of a training text's tokens left out each time it is seen */
    double lm_weight;         /* weight of the texts' language-model loss beside the classes' (GPT-1's
                                 auxiliary objective; causal trunks), 0 = none */
    char schedule[16];        /* cosine | constant */
    char best_by[16];         /* accuracy | macro_f1 | loss */
    uint64_t seed;
    /* an ensemble: this many classifiers, member i trained with seed + i
     * (its weights, order and held-out split) into out/member-i, their
     * class probabilities averaged by eval and predict */
    int64_t ensemble;         /* 1 = one classifier */
    /* run */
    char device[128];
    int threads;
    char out[1024];           /* checkpoints, log, labels, tokenizer ("" = none) */
    int keep, resume, force;
    char log[1024];           /* JSON lines; "" = out/log.jsonl, "-" = none */
    int64_t eval_batch;
    int progress;
    /* tests: after every step */
    void (*on_step)(void *ctx, int64_t step, float loss);
    void *on_step_ctx;
} ts_classify_config;

typedef struct ts_classify_result {
    int64_t steps_done, first_step, steps_per_epoch;
    float last_loss;
    double seconds;
    int64_t best_step;        /* -1: never evaluated */
    double best_accuracy, best_macro_f1, best_loss;
    double val_accuracy, val_macro_f1, val_loss; /* the last evaluation */
    int64_t num_params;
    int interrupted;          /* the signal that stopped the run (ts_train_request_stop), or 0 */
} ts_classify_result;

void ts_classify_defaults(ts_classify_config *c);
/* One classifier, or an ensemble's members one after another (res then
 * sums their steps and time; best_* are the last member's). */
ts_status ts_classify_train(const ts_classify_config *c, ts_classify_result *res);
/* The settings of the run in `out` (an ensemble's, or its latest
 * checkpoint's) as JSON; caller frees. */
ts_status ts_classify_run_settings(const char *out, char **json);
/* The settings as a flat JSON object (state.json, MPI agreement) and back
 * (members absent keep their value; wrong types and ranges are errors). */
size_t ts_classify_settings_json(const ts_classify_config *c, char *buf, size_t n);
ts_status ts_classify_settings_parse(const char *json, ts_classify_config *c);
/* Settings a resumed run may take from the command line (NULL-terminated). */
const char *const *ts_classify_resumable_settings(void);

/* ---- using a trained classifier ---- */

typedef struct ts_classify_use {
    char checkpoint[1024];    /* a checkpoint, a run directory (its best, else latest), or an ensemble's */
    char data[1024];
    char format[16], text_field[128], label_field[128];
    char device[128];
    int threads;
    int64_t batch;
    int count_unseen;         /* eval: unseen labels count as errors instead of failing */
    char out[1024];           /* eval: JSON file ("" none, "-" stdout); predict: JSON lines ("" or "-": stdout) */
    int quiet;
} ts_classify_use;

void ts_classify_use_defaults(ts_classify_use *u);
/* Accuracy, macro and per-class metrics and the confusion matrix of a
 * checkpoint (an ensemble: of its members' mean probabilities) on a labeled file; printed (unless quiet) and written as JSON
 * (out). m and labels are the caller's to free. */
ts_status ts_classify_evaluate(const ts_classify_use *u, ts_class_metrics *m, ts_label_set *labels);
/* One JSON line per text: the text, the predicted label and every class's
 * probability, in the input's order. */
ts_status ts_classify_predict(const ts_classify_use *u);

#ifdef __cplusplus
}
#endif
#endif
