/* Training checkpoints: everything a run needs to continue exactly as if it
 * had never stopped.
 *
 * A checkpoint is a directory <dir>/step_NNNNNNNN holding
 *   model.safetensors   the weights (tessera/gpt.h names), config in metadata
 *   optim.safetensors   optimizer moments "m", "v" and its step count
 *   state.json          step, seed, data position and fingerprint, the run's
 *                       settings, best validation loss
 *   tokenizer.txt       the tokenizer (tessera/tokenizer.h)
 * It is written as <dir>/.tmp-step_NNNNNNNN, every file fsync'ed, then
 * renamed into place; <dir>/latest (naming the newest checkpoint) is
 * replaced last, atomically, and <dir>/best names the checkpoint of the
 * lowest validation loss. A crash at any point leaves the previous
 * checkpoint intact and `latest` pointing at it. Pruning keeps the
 * checkpoints of the highest steps and never the ones `latest` and `best`
 * name. */
#ifndef TESSERA_CHECKPOINT_H
#define TESSERA_CHECKPOINT_H

#include <stdint.h>

#include "tessera/gpt.h"
#include "tessera/optimizer.h"
#include "tessera/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Room for a run's settings as JSON: five paths of up to 1023 bytes, each
 * escaped at up to 6 bytes a byte, and the numbers. */
#define TS_SETTINGS_MAX 32768

typedef struct ts_train_state {
    int64_t step;              /* optimizer steps completed */
    uint64_t seed;
    int64_t next_sample;       /* data position: index of the next training sample */
    uint64_t data_fingerprint;
    double tokens_seen;
    double best_val_loss;      /* +inf if never evaluated */
    double loss;               /* training loss of the last step; NAN if none */
    double val_loss;           /* validation loss at this step; NAN if not evaluated */
    double loss_scale;         /* fp16 dynamic loss scale; 0 if none */
    int64_t loss_scale_good_steps; /* finite steps since it last changed */
    char settings[TS_SETTINGS_MAX]; /* the run's settings as a JSON object */
} ts_train_state;

/* A file the training layer adds to a checkpoint (its tokenizer.txt, say):
 * the model layer knows nothing of what it holds. */
typedef struct ts_checkpoint_file {
    const char *name;          /* a plain name, no '/' */
    const void *data;
    size_t size;
} ts_checkpoint_file;

/* Save a checkpoint for state->step with the model (its metadata naming
 * the tokenizer's fingerprint), the optimizer and `files`; keep the newest
 * `keep` (0 = all). */
ts_status ts_checkpoint_save(const char *dir, const ts_gpt *model, const ts_optimizer *opt,
                             const ts_train_state *state, uint64_t tokenizer_fingerprint,
                             const ts_checkpoint_file *files, int nfiles, int keep);
/* The same in steps, for a save that several processes take part in:
 * begin makes <dir>/.tmp-step_N (its path in tmp); the caller writes
 * model.safetensors and optim.safetensors there; finish adds `files` and
 * the state, then renames, points `latest` at it and prunes. abandon
 * removes a failed attempt. */
ts_status ts_checkpoint_begin(const char *dir, int64_t step, char *tmp, size_t n);
ts_status ts_checkpoint_finish(const char *dir, const char *tmp, const ts_train_state *state,
                               const ts_checkpoint_file *files, int nfiles, int keep);
void ts_checkpoint_abandon(const char *tmp);
/* Metadata of the model and optimizer files (NULL-terminated key, value
 * pairs in meta, pointing into the caller's buffers). */
void ts_checkpoint_model_meta(uint64_t tokenizer_fingerprint, char fp[32], const char *meta[4]);
void ts_checkpoint_optim_meta(const ts_optimizer *o, char step[32], char hyper[256], const char *meta[8]);
/* The directory of the newest complete checkpoint in dir (via `latest`);
 * an error naming what is wrong when there is none, `latest` names
 * something else than a step_N directory of dir, or its files are missing. */
ts_status ts_checkpoint_latest(const char *dir, char *path, size_t n);

/* A run directory at a glance. */
typedef struct ts_run_dir_info {
    int exists;
    int entries;               /* anything in it */
    int checkpoints;           /* step_* directories */
    int has_log;
    int temporaries;           /* .tmp-* left by a crash */
    char latest[64];           /* what `latest` names, "" if nothing valid */
} ts_run_dir_info;
ts_status ts_run_dir_inspect(const char *dir, ts_run_dir_info *info);
/* Remove what a crash can leave: .tmp-step_N directories, .tmp-tessera-*
 * files of atomic writes. */
void ts_run_dir_clean(const char *dir);
/* Start a run directory over: checkpoints, latest, best, log, tokenizer. */
ts_status ts_run_dir_reset(const char *dir);
/* Keep the lines of a JSON-lines log whose "step" is at most `step` (the
 * ones a resumed run will not write again); atomic. */
ts_status ts_run_log_truncate(const char *path, int64_t step);
/* Read state.json of a checkpoint directory. */
ts_status ts_checkpoint_read_state(const char *ckpt, ts_train_state *state);
/* Load weights and optimizer state of a checkpoint directory into a model
 * and optimizer created with the checkpoint's config and settings. */
ts_status ts_checkpoint_load(const char *ckpt, ts_gpt *model, ts_optimizer *opt);
/* Load an optimizer file's step and moments; opt may hold a shard of the
 * model's blob starting at shard_begin (ZeRO). */
ts_status ts_checkpoint_load_optimizer(const char *path, const ts_gpt *model, ts_optimizer *opt,
                                       int64_t shard_begin);

#ifdef __cplusplus
}
#endif
#endif
