#include "tessera/checkpoint.h"
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"
#include "json.h"
#include "tessera/safetensors.h"


/* Remove a directory and its files (one level: checkpoints have no subdirs). */
static void remove_dir(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        char f[4300];
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(f, sizeof f, "%s/%s", path, e->d_name);
            unlink(f);
        }
        closedir(d);
    }
    rmdir(path);
}

static ts_status write_state(const char *path, const ts_train_state *s)
{
    char buf[16384];
    char best[64], loss[64], val[64];
    if (isfinite(s->best_val_loss)) snprintf(best, sizeof best, "%.9g", s->best_val_loss);
    else snprintf(best, sizeof best, "null");
    if (isfinite(s->loss)) snprintf(loss, sizeof loss, "%.9g", s->loss);
    else snprintf(loss, sizeof loss, "null");
    if (isfinite(s->val_loss)) snprintf(val, sizeof val, "%.9g", s->val_loss);
    else snprintf(val, sizeof val, "null");
    int n = snprintf(buf, sizeof buf,
                     "{\n  \"format\": \"tessera-train-state\",\n  \"step\": %lld,\n  \"seed\": %llu,\n"
                     "  \"next_sample\": %lld,\n  \"data_fingerprint\": \"%016llx\",\n"
                     "  \"tokens_seen\": %.17g,\n  \"loss\": %s,\n  \"val_loss\": %s,\n"
                     "  \"best_val_loss\": %s,\n  \"loss_scale\": %.9g,\n  \"loss_scale_good_steps\": %lld,\n"
                     "  \"settings\": %s\n}\n",
                     (long long)s->step, (unsigned long long)s->seed, (long long)s->next_sample,
                     (unsigned long long)s->data_fingerprint, s->tokens_seen, loss, val, best,
                     isfinite(s->loss_scale) && s->loss_scale > 0 ? s->loss_scale : 0.0,
                     (long long)s->loss_scale_good_steps, s->settings[0] ? s->settings : "{}");
    if (n < 0 || n >= (int)sizeof buf) return ts_error(TS_ERR_INVALID_ARG, "training state too large");
    return ts_write_file_atomic(path, buf, (size_t)n);
}

void ts_checkpoint_optim_meta(const ts_optimizer *o, char step[32], char hyper[256], const char *meta[8])
{
    snprintf(step, 32, "%lld", (long long)o->step);
    snprintf(hyper, 256,
             "{\"kind\": \"%s\", \"beta1\": %.9g, \"beta2\": %.9g, \"eps\": %.9g, \"weight_decay\": %.9g}",
             ts_optim_kind_name(o->kind), o->beta1, o->beta2, o->eps, o->weight_decay);
    const char *kv[] = {"optimizer_format", "tessera-optimizer", "step", step, "optimizer", hyper, NULL};
    memcpy(meta, kv, sizeof kv);
}

/* Moments under the parameters' names ("m.h.3.attn.c_attn.weight"), so
 * they load into any layout like the weights. */
static ts_status write_optim(const char *path, const ts_gpt *model, const ts_optimizer *o)
{
    char step[32], hyper[256];
    const char *meta[8];
    ts_checkpoint_optim_meta(o, step, hyper, meta);
    const ts_tensor *blobs[2];
    const char *prefixes[2];
    int n = 0;
    if (o->m.block) blobs[n] = &o->m, prefixes[n++] = "m.";
    if (o->v.block) blobs[n] = &o->v, prefixes[n++] = "v.";
    return ts_gpt_save_blobs(model, blobs, prefixes, n, path, meta);
}

/* The step of a checkpoint directory name "step_NNNNNNNN" (8 or more
 * digits, nothing else), or -1. */
static int64_t step_of(const char *name)
{
    if (strncmp(name, "step_", 5) != 0) return -1;
    const char *p = name + 5;
    size_t n = strspn(p, "0123456789");
    if (n < 8 || n > 18 || p[n] != '\0') return -1;
    return strtoll(p, NULL, 10);
}

/* The checkpoint a pointer file (latest, best) names, or "" when it is
 * absent or names nothing valid. */
static void read_pointer(const char *dir, const char *file, char *name, size_t n)
{
    char f[4200], *text;
    size_t len;
    name[0] = '\0';
    snprintf(f, sizeof f, "%s/%s", dir, file);
    if (ts_read_file(f, &text, &len) != TS_OK) {
        ts_clear_error();
        return;
    }
    text[strcspn(text, "\r\n")] = '\0';
    if (step_of(text) >= 0) snprintf(name, n, "%s", text);
    free(text);
}

typedef struct step_dir {
    int64_t step;
    char name[256];
} step_dir;

static int cmp_step(const void *a, const void *b)
{
    int64_t x = ((const step_dir *)a)->step, y = ((const step_dir *)b)->step;
    return x < y ? -1 : x > y;
}

/* Delete all but the `keep` checkpoints of the highest steps, never the one
 * `latest` or `best` names. */
static void prune(const char *dir, int keep)
{
    if (keep <= 0) return;
    char latest[64], best[64];
    read_pointer(dir, "latest", latest, sizeof latest);
    read_pointer(dir, "best", best, sizeof best);
    DIR *d = opendir(dir);
    if (!d) return;
    step_dir *all = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t s = step_of(e->d_name);
        if (s < 0) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            step_dir *p = realloc(all, cap * sizeof *p);
            if (!p) break;
            all = p;
        }
        all[n].step = s;
        snprintf(all[n].name, sizeof all[n].name, "%s", e->d_name);
        n++;
    }
    closedir(d);
    if (all) qsort(all, n, sizeof *all, cmp_step);
    for (size_t i = 0; i + (size_t)keep < n; i++) {
        if (!strcmp(all[i].name, latest) || !strcmp(all[i].name, best)) continue;
        char p[4300];
        snprintf(p, sizeof p, "%s/%s", dir, all[i].name);
        remove_dir(p);
    }
    free(all);
}

ts_status ts_run_dir_inspect(const char *dir, ts_run_dir_info *info)
{
    memset(info, 0, sizeof *info);
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return TS_OK;
        return ts_error(TS_ERR_IO, "cannot read the run directory %s: %s", dir, strerror(errno));
    }
    info->exists = 1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        info->entries++;
        if (step_of(e->d_name) >= 0) info->checkpoints++;
        else if (!strcmp(e->d_name, "log.jsonl")) info->has_log = 1;
        else if (!strncmp(e->d_name, ".tmp-", 5)) info->temporaries++;
    }
    closedir(d);
    read_pointer(dir, "latest", info->latest, sizeof info->latest);
    return TS_OK;
}

void ts_run_dir_clean(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, ".tmp-", 5) != 0) continue;
        char p[4300];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (lstat(p, &sb) != 0) continue;
        if (S_ISDIR(sb.st_mode)) remove_dir(p); /* .tmp-step_N of a save that died */
        else unlink(p);                          /* .tmp-tessera-* of an atomic write */
    }
    closedir(d);
}

ts_status ts_run_dir_reset(const char *dir)
{
    ts_run_dir_clean(dir);
    DIR *d = opendir(dir);
    if (!d) return TS_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        char p[4300];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (step_of(e->d_name) >= 0) remove_dir(p);
        else if (!strcmp(e->d_name, "latest") || !strcmp(e->d_name, "best") || !strcmp(e->d_name, "log.jsonl") ||
                 !strcmp(e->d_name, "tokenizer.txt"))
            unlink(p);
    }
    closedir(d);
    return ts_fsync_dir(dir);
}

ts_status ts_run_log_truncate(const char *path, int64_t step)
{
    char *text;
    size_t n;
    struct stat sb;
    if (stat(path, &sb) != 0) return TS_OK; /* no log yet */
    TRY(ts_read_file(path, &text, &n));
    char *keep = malloc(n + 1);
    if (!keep) {
        free(text);
        return ts_error(TS_ERR_OOM, "no memory to rewrite %s", path);
    }
    size_t k = 0;
    for (char *line = text; line < text + n;) {
        char *end = memchr(line, '\n', (size_t)(text + n - line));
        size_t len = end ? (size_t)(end - line) + 1 : (size_t)(text + n - line);
        /* every line names its step; keep those up to the checkpoint's (a
         * torn last line without a newline is dropped) */
        const char *s = strstr(line, "\"step\": ");
        int complete = end != NULL;
        if (complete && s && s < line + len && strtoll(s + 8, NULL, 10) <= step) {
            memcpy(keep + k, line, len);
            k += len;
        }
        line += len;
    }
    free(text);
    ts_status st = ts_write_file_atomic(path, keep, k);
    free(keep);
    return st;
}

ts_status ts_checkpoint_begin(const char *dir, int64_t step, char *tmp, size_t n)
{
    TRY(ts_mkdir_p(dir));
    snprintf(tmp, n, "%s/.tmp-step_%08lld", dir, (long long)step);
    remove_dir(tmp); /* leftovers of an earlier crash */
    TRY(ts_mkdir_p(tmp));
    return TS_OK;
}

void ts_checkpoint_model_meta(uint64_t tokenizer_fingerprint, char fp[32], const char *meta[4])
{
    snprintf(fp, 32, "%016llx", (unsigned long long)tokenizer_fingerprint);
    meta[0] = "tokenizer_fingerprint", meta[1] = fp, meta[2] = NULL;
}

ts_status ts_checkpoint_finish(const char *dir, const char *tmp, const ts_train_state *state,
                               const ts_checkpoint_file *files, int nfiles, int keep)
{
    char name[64], final[4200], f[4300];
    snprintf(name, sizeof name, "step_%08lld", (long long)state->step);
    snprintf(final, sizeof final, "%s/%s", dir, name);
    ts_status st = TS_OK;
    for (int i = 0; i < nfiles && !st; i++) {
        if (strchr(files[i].name, '/') || !strcmp(files[i].name, "state.json"))
            st = ts_error(TS_ERR_INVALID_ARG, "a checkpoint file may not be called '%s'", files[i].name);
        snprintf(f, sizeof f, "%s/%s", tmp, files[i].name);
        if (!st) st = ts_write_file_atomic(f, files[i].data, files[i].size);
    }
    if (!st) {
        snprintf(f, sizeof f, "%s/state.json", tmp);
        st = write_state(f, state);
    }
    if (!st) st = ts_fsync_dir(tmp);
    if (!st) {
        remove_dir(final); /* an older save of the same step */
        if (rename(tmp, final) != 0)
            st = ts_error(TS_ERR_IO, "renaming %s to %s failed: %s", tmp, final, strerror(errno));
    }
    if (!st) st = ts_fsync_dir(dir);
    char line[80];
    int n = snprintf(line, sizeof line, "%s\n", name);
    if (!st) {
        snprintf(f, sizeof f, "%s/latest", dir);
        st = ts_write_file_atomic(f, line, (size_t)n);
    }
    /* the best validation loss so far: this checkpoint is kept as `best` */
    if (!st && isfinite(state->val_loss) && state->val_loss <= state->best_val_loss) {
        snprintf(f, sizeof f, "%s/best", dir);
        st = ts_write_file_atomic(f, line, (size_t)n);
    }
    if (st) {
        ts_checkpoint_abandon(tmp);
        return ts_error_context(st, "saving checkpoint %s", final);
    }
    prune(dir, keep);
    return TS_OK;
}

void ts_checkpoint_abandon(const char *tmp) { remove_dir(tmp); }

ts_status ts_checkpoint_save(const char *dir, const ts_gpt *model, const ts_optimizer *opt,
                             const ts_train_state *state, uint64_t tokenizer_fingerprint,
                             const ts_checkpoint_file *files, int nfiles, int keep)
{
    char tmp[4200], f[4300], fp[32];
    const char *meta[4];
    TRY(ts_checkpoint_begin(dir, state->step, tmp, sizeof tmp));
    ts_checkpoint_model_meta(tokenizer_fingerprint, fp, meta);
    snprintf(f, sizeof f, "%s/model.safetensors", tmp);
    ts_status st = ts_gpt_save(model, f, meta);
    if (!st) {
        snprintf(f, sizeof f, "%s/optim.safetensors", tmp);
        st = write_optim(f, model, opt);
    }
    if (st) {
        ts_checkpoint_abandon(tmp);
        return ts_error_context(st, "saving checkpoint step %lld in %s", (long long)state->step, dir);
    }
    return ts_checkpoint_finish(dir, tmp, state, files, nfiles, keep);
}

ts_status ts_checkpoint_latest(const char *dir, char *path, size_t n)
{
    char f[4200];
    snprintf(f, sizeof f, "%s/latest", dir);
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return ts_error(TS_ERR_IO, "no checkpoint to resume: %s is not a directory", dir);
    char *text;
    size_t len;
    if (ts_read_file(f, &text, &len) != TS_OK)
        return ts_error(TS_ERR_IO, "no checkpoint to resume in %s: it has no 'latest' file", dir);
    text[strcspn(text, "\r\n")] = '\0';
    if (step_of(text) < 0) {
        ts_error(TS_ERR_FORMAT, "%s does not name a checkpoint of this directory (it holds '%.60s'; expected step_ and "
                 "8 digits)", f, text);
        free(text);
        return TS_ERR_FORMAT;
    }
    snprintf(path, n, "%s/%s", dir, text);
    free(text);
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return ts_error(TS_ERR_FORMAT, "%s names %s, which does not exist", f, path);
    static const char *files[] = {"model.safetensors", "state.json", "tokenizer.txt"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char p[4400];
        snprintf(p, sizeof p, "%s/%s", path, files[i]);
        if (stat(p, &sb) != 0 || !S_ISREG(sb.st_mode))
            return ts_error(TS_ERR_FORMAT, "checkpoint %s is incomplete: %s is missing", path, files[i]);
    }
    return TS_OK;
}

ts_status ts_checkpoint_read_state(const char *ckpt, ts_train_state *s)
{
    memset(s, 0, sizeof *s);
    char f[4200];
    snprintf(f, sizeof f, "%s/state.json", ckpt);
    char *text;
    size_t n;
    TRY(ts_read_file(f, &text, &n));
    ts_json *j = NULL;
    ts_status st = ts_json_parse(text, n, &j);
    free(text);
    if (st) return ts_error_context(TS_ERR_FORMAT, "%s", f);
    if (strcmp(ts_json_get_str(j, "format", ""), "tessera-train-state") != 0 ||
        ts_json_get_int(j, "step", -1) < 0 || ts_json_get_int(j, "next_sample", -1) < 0) {
        ts_json_free(j);
        return ts_error(TS_ERR_FORMAT, "%s is not a tessera training state", f);
    }
    s->step = ts_json_get_int(j, "step", 0);
    const ts_json *seed = ts_json_get(j, "seed");
    const char *fp = ts_json_get_str(j, "data_fingerprint", "");
    if (!seed || seed->type != TS_JSON_NUMBER || !seed->is_integer || seed->integer < 0 ||
        strlen(fp) != 16 || strspn(fp, "0123456789abcdefABCDEF") != 16) {
        ts_json_free(j);
        return ts_error(TS_ERR_FORMAT, "%s: \"seed\" must be a non-negative integer and \"data_fingerprint\" 16 hex "
                        "digits", f);
    }
    s->seed = (uint64_t)seed->integer;
    s->next_sample = ts_json_get_int(j, "next_sample", 0);
    s->data_fingerprint = strtoull(fp, NULL, 16);
    s->tokens_seen = ts_json_get_num(j, "tokens_seen", 0);
    const ts_json *best = ts_json_get(j, "best_val_loss");
    s->best_val_loss = best && best->type == TS_JSON_NUMBER ? best->number : INFINITY;
    s->loss = ts_json_get_num(j, "loss", NAN);
    s->val_loss = ts_json_get_num(j, "val_loss", NAN);
    s->loss_scale = ts_json_get_num(j, "loss_scale", 0);
    s->loss_scale_good_steps = ts_json_get_int(j, "loss_scale_good_steps", 0);
    if (!(s->loss_scale >= 0 && s->loss_scale < 1e38) || s->loss_scale_good_steps < 0) {
        ts_json_free(j);
        return ts_error(TS_ERR_FORMAT, "%s: \"loss_scale\" must be a number >= 0 and \"loss_scale_good_steps\" >= 0", f);
    }
    const ts_json *set = ts_json_get(j, "settings");
    if (set && set->type != TS_JSON_OBJECT) {
        ts_json_free(j);
        return ts_error(TS_ERR_FORMAT, "%s: \"settings\" must be an object", f);
    }
    /* keep the settings object as text (flat: written again from the parse) */
    if (set && ts_json_serialize(set, s->settings, sizeof s->settings) >= sizeof s->settings) {
        ts_json_free(j);
        return ts_error(TS_ERR_FORMAT, "%s: \"settings\" is larger than %d bytes", f, TS_SETTINGS_MAX);
    }
    ts_json_free(j);
    return TS_OK;
}

ts_status ts_checkpoint_load_optimizer(const char *path, const ts_gpt *model, ts_optimizer *opt,
                                       int64_t shard_begin)
{
    ts_safetensors st;
    TRY(ts_safetensors_open(path, &st));
    ts_status rc = TS_OK;
    const char *step = ts_safetensors_meta(&st, "step");
    const char *hyper = ts_safetensors_meta(&st, "optimizer");
    char want_kind[32];
    snprintf(want_kind, sizeof want_kind, "\"kind\": \"%s\"", ts_optim_kind_name(opt->kind));
    if (!step || !hyper) rc = ts_error(TS_ERR_FORMAT, "%s: not a tessera optimizer state", path);
    else if (!strstr(hyper, want_kind))
        rc = ts_error(TS_ERR_INVALID_ARG, "%s holds %s state; this run uses %s", path, hyper,
                      ts_optim_kind_name(opt->kind));
    if (!rc) opt->step = strtoll(step, NULL, 10);
    ts_safetensors_close(&st);
    ts_tensor *moments[2] = {opt->m.block ? &opt->m : NULL, opt->v.block ? &opt->v : NULL};
    const char *prefixes[2] = {"m.", "v."};
    int whole = opt->n == model->num_params && shard_begin == 0;
    for (int i = 0; i < 2 && !rc; i++) {
        if (!moments[i]) continue;
        if (whole) {
            rc = ts_gpt_load_blob(model, moments[i], path, prefixes[i]);
            continue;
        }
        /* a shard (ZeRO): load the local blob, keep the shard's part */
        ts_tensor full, part;
        rc = ts_tensor_alloc(&full, moments[i]->device, TS_F32, TS_SHAPE(model->num_params));
        if (rc) break;
        rc = ts_gpt_load_blob(model, &full, path, prefixes[i]);
        if (!rc) rc = ts_tensor_view(&part, &full, shard_begin, TS_SHAPE(opt->n));
        if (!rc) rc = ts_tensor_copy(moments[i], &part);
        ts_tensor_free(&full);
    }
    return rc;
}

ts_status ts_checkpoint_load(const char *ckpt, ts_gpt *model, ts_optimizer *opt)
{
    char f[4300];
    snprintf(f, sizeof f, "%s/model.safetensors", ckpt);
    TRY(ts_gpt_load(model, f));
    if (!opt) return TS_OK;
    snprintf(f, sizeof f, "%s/optim.safetensors", ckpt);
    return ts_checkpoint_load_optimizer(f, model, opt, 0);
}
