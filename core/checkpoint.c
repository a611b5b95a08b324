#include "tessera/checkpoint.h"

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

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        ts_status st_ = (expr);                                                                    \
        if (st_ != TS_OK) return st_;                                                              \
    } while (0)

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

/* Test hook: TESSERA_FAULT_IN_SAVE=1 makes the process die halfway through
 * writing a checkpoint, as a crash would. */
static void maybe_die_in_save(void)
{
    const char *e = getenv("TESSERA_FAULT_IN_SAVE");
    if (e && !strcmp(e, "1")) _exit(86);
}

static ts_status write_state(const char *path, const ts_train_state *s)
{
    char buf[16384];
    char best[64];
    if (isfinite(s->best_val_loss)) snprintf(best, sizeof best, "%.9g", s->best_val_loss);
    else snprintf(best, sizeof best, "null");
    int n = snprintf(buf, sizeof buf,
                     "{\n  \"format\": \"tessera-train-state\",\n  \"step\": %lld,\n  \"seed\": %llu,\n"
                     "  \"next_sample\": %lld,\n  \"data_fingerprint\": \"%016llx\",\n"
                     "  \"tokens_seen\": %.17g,\n  \"best_val_loss\": %s,\n  \"settings\": %s\n}\n",
                     (long long)s->step, (unsigned long long)s->seed, (long long)s->next_sample,
                     (unsigned long long)s->data_fingerprint, s->tokens_seen, best,
                     s->settings[0] ? s->settings : "{}");
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

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Delete all but the newest `keep` step_* directories. */
static void prune(const char *dir, int keep)
{
    if (keep <= 0) return;
    DIR *d = opendir(dir);
    if (!d) return;
    char *names[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096)
        if (!strncmp(e->d_name, "step_", 5)) names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int i = 0; i < n; i++) {
        if (i < n - keep) {
            char p[4300];
            snprintf(p, sizeof p, "%s/%s", dir, names[i]);
            remove_dir(p);
        }
        free(names[i]);
    }
}

ts_status ts_checkpoint_begin(const char *dir, int64_t step, char *tmp, size_t n)
{
    TRY(ts_mkdir_p(dir));
    snprintf(tmp, n, "%s/.tmp-step_%08lld", dir, (long long)step);
    remove_dir(tmp); /* leftovers of an earlier crash */
    TRY(ts_mkdir_p(tmp));
    return TS_OK;
}

void ts_checkpoint_model_meta(const ts_tokenizer *tok, char fp[32], const char *meta[4])
{
    snprintf(fp, 32, "%016llx", (unsigned long long)tok->fingerprint);
    meta[0] = "tokenizer_fingerprint", meta[1] = fp, meta[2] = NULL;
}

ts_status ts_checkpoint_finish(const char *dir, const char *tmp, const ts_train_state *state,
                               const ts_tokenizer *tok, int keep)
{
    char name[64], final[4200], f[4300];
    snprintf(name, sizeof name, "step_%08lld", (long long)state->step);
    snprintf(final, sizeof final, "%s/%s", dir, name);
    maybe_die_in_save(); /* the weights are written, the checkpoint is not complete */
    snprintf(f, sizeof f, "%s/tokenizer.txt", tmp);
    ts_status st = ts_tokenizer_save(tok, f);
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
    if (!st) {
        snprintf(f, sizeof f, "%s/latest", dir);
        char line[80];
        int n = snprintf(line, sizeof line, "%s\n", name);
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
                             const ts_train_state *state, const ts_tokenizer *tok, int keep)
{
    char tmp[4200], f[4300], fp[32];
    const char *meta[4];
    TRY(ts_checkpoint_begin(dir, state->step, tmp, sizeof tmp));
    ts_checkpoint_model_meta(tok, fp, meta);
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
    return ts_checkpoint_finish(dir, tmp, state, tok, keep);
}

ts_status ts_checkpoint_latest(const char *dir, char *path, size_t n)
{
    char f[4200];
    snprintf(f, sizeof f, "%s/latest", dir);
    char *text;
    size_t len;
    ts_status st = ts_read_file(f, &text, &len);
    if (st) return ts_error_context(TS_ERR_IO, "no checkpoint in %s", dir);
    text[strcspn(text, "\r\n")] = '\0';
    if (strncmp(text, "step_", 5) != 0 || strchr(text, '/')) {
        free(text);
        return ts_error(TS_ERR_FORMAT, "%s does not name a checkpoint", f);
    }
    snprintf(path, n, "%s/%s", dir, text);
    free(text);
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return ts_error(TS_ERR_FORMAT, "%s names %s, which does not exist", f, path);
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
    s->seed = seed && seed->is_integer ? (uint64_t)seed->integer : 0;
    if (seed && !seed->is_integer) s->seed = (uint64_t)seed->number;
    s->next_sample = ts_json_get_int(j, "next_sample", 0);
    s->data_fingerprint = strtoull(ts_json_get_str(j, "data_fingerprint", "0"), NULL, 16);
    s->tokens_seen = ts_json_get_num(j, "tokens_seen", 0);
    const ts_json *best = ts_json_get(j, "best_val_loss");
    s->best_val_loss = best && best->type == TS_JSON_NUMBER ? best->number : INFINITY;
    /* keep the settings object as text: find its span in the file */
    ts_json_free(j);
    TRY(ts_read_file(f, &text, &n));
    const char *p = strstr(text, "\"settings\":");
    if (p) {
        p += strlen("\"settings\":");
        while (*p == ' ') p++;
        const char *end = strrchr(text, '}');
        if (end && end > p) {
            end--;
            while (end > p && (*end == '\n' || *end == ' ')) end--;
            size_t len = (size_t)(end - p + 1);
            if (len < sizeof s->settings) {
                memcpy(s->settings, p, len);
                s->settings[len] = '\0';
            }
        }
    }
    free(text);
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
