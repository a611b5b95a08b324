/* Weights in other projects' formats: a Hugging Face GPT-2 directory
 * (config.json and model.safetensors in GPT2LMHeadModel layout) and
 * llm.c's model file (gpt2_124M.bin), both ways.
 *
 * tessera's tensors carry GPT-2's names already. Hugging Face prefixes them
 * with "transformer." and stores the four projection matrices transposed
 * (its Conv1D keeps [in, out]); the head is tied to wte. llm.c writes a
 * 256-int header (magic 20240326, version 3 = float32) and then every
 * parameter in a fixed order, layers stacked, wte padded to a multiple of
 * 128 rows; its matrices are [out, in] like tessera's. */
#include "tessera/convert.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "internal.h"
#include "json.h"
#include "tessera/device.h"
#include "tessera/safetensors.h"

enum { LLMC_MAGIC = 20240326, LLMC_VERSION_F32 = 3 };

/* The whole model on the CPU backend, with its config. */
static ts_status open_cpu(const ts_gpt_config *cfg, ts_gpt *m)
{
    ts_device *cpu;
    TRY(ts_device_open("cpu", &cpu));
    return ts_gpt_create(m, cpu, cfg);
}

/* A global tensor's values (host floats, [grows, gcols]). */
static ts_status read_tensor(const ts_gpt *m, const ts_gpt_tensor *t, float *out)
{
    ts_tensor v;
    TRY(ts_gpt_param_view(m, t, 0, &v));
    return ts_tensor_read(&v, out, (size_t)(t->rows * t->cols) * sizeof *out);
}

static ts_status write_tensor(ts_gpt *m, const ts_gpt_tensor *t, const float *in)
{
    ts_tensor v;
    TRY(ts_gpt_param_view(m, t, 0, &v));
    return ts_tensor_write(&v, in, (size_t)(t->rows * t->cols) * sizeof *in);
}

static void transpose(const float *in, int64_t rows, int64_t cols, float *out)
{
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) out[j * rows + i] = in[i * cols + j];
}

/* The four matrices Hugging Face's Conv1D stores [in, out]. */
static int conv1d(int kind)
{
    return kind == TS_GPT_QKVW || kind == TS_GPT_ATTPROJW || kind == TS_GPT_FCW || kind == TS_GPT_FCPROJW;
}

static int64_t largest(const ts_gpt *m)
{
    int64_t k = 1;
    for (int i = 0; i < m->ntensors; i++)
        if (m->tensors[i].rows * m->tensors[i].cols > k) k = m->tensors[i].rows * m->tensors[i].cols;
    return k;
}

/* ---- Hugging Face ---- */

ts_status ts_convert_to_hf(const char *model_path, const char *dir)
{
    ts_gpt_config cfg;
    TRY(ts_gpt_read_config(model_path, &cfg));
    ts_gpt m;
    TRY(open_cpu(&cfg, &m));
    ts_status st = ts_gpt_load(&m, model_path);
    if (!st) st = ts_mkdir_p(dir);
    int64_t big = largest(&m);
    float *a = st ? NULL : malloc((size_t)big * sizeof *a);
    float **keep = st ? NULL : calloc((size_t)m.ntensors, sizeof *keep);
    if (!st && (!a || !keep)) st = ts_error(TS_ERR_OOM, "no memory to convert %s", model_path);
    ts_st_writer *w = NULL;
    if (!st) st = ts_st_writer_new(&w);
    if (!st) st = ts_st_writer_meta(w, "format", "pt");
    for (int i = 0; i < m.ntensors && !st; i++) {
        const ts_gpt_tensor *t = &m.tensors[i];
        char base[96], name[128];
        ts_gpt_tensor_name(t->kind, t->layer, base, sizeof base);
        snprintf(name, sizeof name, "transformer.%s", base);
        st = read_tensor(&m, t, a);
        keep[i] = malloc((size_t)(t->rows * t->cols) * sizeof(float));
        if (!st && !keep[i]) st = ts_error(TS_ERR_OOM, "no memory");
        if (st) break;
        if (conv1d(t->kind)) {
            transpose(a, t->grows, t->gcols, keep[i]);
            st = ts_st_writer_add_host(w, name, TS_F32, TS_SHAPE(t->gcols, t->grows), keep[i]);
        } else {
            memcpy(keep[i], a, (size_t)(t->rows * t->cols) * sizeof(float));
            if (t->gcols > 1) st = ts_st_writer_add_host(w, name, TS_F32, TS_SHAPE(t->grows, t->gcols), keep[i]);
            else st = ts_st_writer_add_host(w, name, TS_F32, TS_SHAPE(t->grows), keep[i]);
        }
    }
    char path[4300];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!st) st = ts_st_writer_write(w, path);
    if (w) ts_st_writer_free(w);
    for (int i = 0; keep && i < m.ntensors; i++) free(keep[i]);
    free(keep), free(a);
    if (!st) {
        char json[2048];
        int n = snprintf(json, sizeof json,
                         "{\n  \"architectures\": [\"GPT2LMHeadModel\"],\n  \"model_type\": \"gpt2\",\n"
                         "  \"vocab_size\": %lld,\n  \"n_positions\": %lld,\n  \"n_ctx\": %lld,\n  \"n_embd\": %lld,\n"
                         "  \"n_layer\": %lld,\n  \"n_head\": %lld,\n  \"n_inner\": null,\n"
                         "  \"activation_function\": \"gelu_new\",\n  \"layer_norm_epsilon\": 1e-05,\n"
                         "  \"resid_pdrop\": 0.0,\n  \"embd_pdrop\": 0.0,\n  \"attn_pdrop\": 0.0,\n"
                         "  \"initializer_range\": 0.02,\n  \"scale_attn_weights\": true,\n"
                         "  \"tie_word_embeddings\": true,\n  \"bos_token_id\": %lld,\n  \"eos_token_id\": %lld,\n"
                         "  \"torch_dtype\": \"float32\"\n}\n",
                         (long long)cfg.vocab_size, (long long)cfg.max_seq_len, (long long)cfg.max_seq_len,
                         (long long)cfg.n_embd, (long long)cfg.n_layer, (long long)cfg.n_head,
                         (long long)cfg.vocab_size - 1, (long long)cfg.vocab_size - 1);
        snprintf(path, sizeof path, "%s/config.json", dir);
        st = ts_write_file_atomic(path, json, (size_t)n);
    }
    ts_gpt_free(&m);
    return st ? ts_error_context(st, "writing a Hugging Face model in %s", dir) : TS_OK;
}

/* An integer of config.json, under any of its names (GPT-2 has aliases). */
static int64_t cfg_int(const ts_json *j, const char *a, const char *b)
{
    int64_t v = ts_json_get_int(j, a, -1);
    return v >= 0 || !b ? v : ts_json_get_int(j, b, -1);
}

ts_status ts_convert_read_hf_config(const char *dir, ts_gpt_config *cfg)
{
    char path[4300], *text;
    size_t n;
    snprintf(path, sizeof path, "%s/config.json", dir);
    TRY(ts_read_file(path, &text, &n));
    ts_json *j = NULL;
    ts_status st = ts_json_parse(text, n, &j);
    free(text);
    if (st) return ts_error_context(TS_ERR_FORMAT, "%s", path);
    const char *type = ts_json_get_str(j, "model_type", "");
    const char *act = ts_json_get_str(j, "activation_function", "gelu_new");
    const ts_json *inner = ts_json_get(j, "n_inner");
    cfg->vocab_size = cfg_int(j, "vocab_size", NULL);
    cfg->max_seq_len = cfg_int(j, "n_positions", "n_ctx");
    cfg->n_layer = cfg_int(j, "n_layer", "num_hidden_layers");
    cfg->n_head = cfg_int(j, "n_head", "num_attention_heads");
    cfg->n_embd = cfg_int(j, "n_embd", "hidden_size");
    if (strcmp(type, "gpt2") != 0)
        st = ts_error(TS_ERR_FORMAT, "%s: model_type '%s' is not gpt2", path, type);
    else if (strcmp(act, "gelu_new") && strcmp(act, "gelu_pytorch_tanh"))
        st = ts_error(TS_ERR_FORMAT, "%s: activation '%s' (tessera's GELU is the tanh approximation, gelu_new)",
                      path, act);
    else if (inner && inner->type != TS_JSON_NULL && !(inner->is_integer && inner->integer == 4 * cfg->n_embd))
        st = ts_error(TS_ERR_FORMAT, "%s: n_inner must be 4 * n_embd", path);
    else if (fabs(ts_json_get_num(j, "layer_norm_epsilon", 1e-5) - 1e-5) > 1e-9)
        st = ts_error(TS_ERR_FORMAT, "%s: layer_norm_epsilon must be 1e-5", path);
    else
        st = ts_gpt_config_check(cfg);
    ts_json_free(j);
    return st ? ts_error_context(st, "%s", path) : TS_OK;
}

ts_status ts_convert_from_hf(const char *dir, const char *model_path, const char *const *meta)
{
    ts_gpt_config cfg;
    TRY(ts_convert_read_hf_config(dir, &cfg));
    char path[4300];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ts_safetensors f;
    TRY(ts_safetensors_open(path, &f));
    ts_gpt m;
    ts_status st = open_cpu(&cfg, &m);
    int have_model = !st;
    float *buf = st ? NULL : malloc((size_t)largest(&m) * sizeof *buf);
    if (!st && !buf) st = ts_error(TS_ERR_OOM, "no memory");
    for (int i = 0; have_model && i < m.ntensors && !st; i++) {
        const ts_gpt_tensor *t = &m.tensors[i];
        char base[96], name[128];
        ts_gpt_tensor_name(t->kind, t->layer, base, sizeof base);
        snprintf(name, sizeof name, "transformer.%s", base);
        const ts_st_entry *e = ts_safetensors_find(&f, name);
        if (!e) e = ts_safetensors_find(&f, base); /* GPT2Model files have no prefix */
        int64_t r = conv1d(t->kind) ? t->gcols : t->grows, c = conv1d(t->kind) ? t->grows : t->gcols;
        if (!e) st = ts_error(TS_ERR_FORMAT, "%s: no tensor '%s'", path, name);
        else if (e->dtype != TS_F32 || e->ndim != (t->gcols > 1 ? 2 : 1) || e->shape[0] != r ||
                 (t->gcols > 1 && e->shape[1] != c))
            st = ts_error(TS_ERR_SHAPE, "%s: '%s' is not f32 [%lld%s%lld]", path, name, (long long)r,
                          t->gcols > 1 ? ", " : "", t->gcols > 1 ? (long long)c : 0LL);
        if (st) break;
        const float *data = ts_safetensors_data(&f, e);
        if (conv1d(t->kind)) transpose(data, r, c, buf);
        else memcpy(buf, data, (size_t)(t->grows * t->gcols) * sizeof *buf);
        st = write_tensor(&m, t, buf);
    }
    /* a head that is not tied to wte cannot be represented */
    const ts_st_entry *head = ts_safetensors_find(&f, "lm_head.weight"), *wte = ts_safetensors_find(&f, "transformer.wte.weight");
    if (!st && head && wte && memcmp(ts_safetensors_data(&f, head), ts_safetensors_data(&f, wte),
                                      (size_t)(cfg.vocab_size * cfg.n_embd) * sizeof(float)) != 0)
        st = ts_error(TS_ERR_FORMAT, "%s: lm_head.weight differs from wte (tessera ties the head to the embedding)",
                      path);
    if (!st) st = ts_gpt_save(&m, model_path, meta);
    free(buf);
    if (have_model) ts_gpt_free(&m);
    ts_safetensors_close(&f);
    return st;
}

/* ---- llm.c ---- */

static int64_t padded_vocab(int64_t V) { return (V + 127) / 128 * 128; }

/* llm.c's order: each kind stacked over the layers */
static const int order[] = {TS_GPT_WTE,  TS_GPT_WPE,      TS_GPT_LN1W,     TS_GPT_LN1B, TS_GPT_QKVW,
                            TS_GPT_QKVB, TS_GPT_ATTPROJW, TS_GPT_ATTPROJB, TS_GPT_LN2W, TS_GPT_LN2B,
                            TS_GPT_FCW,  TS_GPT_FCB,      TS_GPT_FCPROJW,  TS_GPT_FCPROJB, TS_GPT_LNFW,
                            TS_GPT_LNFB};

ts_status ts_convert_to_llmc(const char *model_path, const char *bin_path)
{
    ts_gpt_config cfg;
    TRY(ts_gpt_read_config(model_path, &cfg));
    ts_gpt m;
    TRY(open_cpu(&cfg, &m));
    ts_status st = ts_gpt_load(&m, model_path);
    int32_t header[256] = {0};
    int64_t Vp = padded_vocab(cfg.vocab_size);
    header[0] = LLMC_MAGIC, header[1] = LLMC_VERSION_F32, header[2] = (int32_t)cfg.max_seq_len;
    header[3] = (int32_t)cfg.vocab_size, header[4] = (int32_t)cfg.n_layer, header[5] = (int32_t)cfg.n_head;
    header[6] = (int32_t)cfg.n_embd, header[7] = (int32_t)Vp;
    ts_atomic_file af;
    if (!st) st = ts_atomic_open(&af, bin_path);
    int open = !st;
    if (!st) st = ts_atomic_write(&af, header, sizeof header);
    float *buf = malloc((size_t)largest(&m) * sizeof *buf);
    if (!st && !buf) st = ts_error(TS_ERR_OOM, "no memory");
    for (size_t o = 0; o < sizeof order / sizeof *order && !st; o++) {
        int per_layer = order[o] != TS_GPT_WTE && order[o] != TS_GPT_WPE && order[o] < TS_GPT_LNFW;
        for (int64_t l = 0; l < (per_layer ? cfg.n_layer : 1) && !st; l++) {
            const ts_gpt_tensor *t = ts_gpt_find(&m, order[o], per_layer ? l : -1);
            if (!t) st = ts_error(TS_ERR_FORMAT, "llm.c export: tensor kind %d layer %lld missing", order[o], (long long)l);
            if (!st) st = read_tensor(&m, t, buf);
            if (!st) st = ts_atomic_write(&af, buf, (size_t)(t->grows * t->gcols) * sizeof *buf);
            if (!st && order[o] == TS_GPT_WTE) { /* padding rows: zeros */
                float zero[256] = {0};
                for (int64_t k = (Vp - cfg.vocab_size) * cfg.n_embd; k > 0 && !st; k -= 256)
                    st = ts_atomic_write(&af, zero, (size_t)(k < 256 ? k : 256) * sizeof(float));
            }
        }
    }
    if (open) st = st ? (ts_atomic_abort(&af), st) : ts_atomic_commit(&af);
    free(buf);
    ts_gpt_free(&m);
    return st ? ts_error_context(st, "writing the llm.c model %s", bin_path) : TS_OK;
}

ts_status ts_convert_from_llmc(const char *bin_path, const char *model_path, const char *const *meta)
{
    FILE *f = fopen(bin_path, "rb");
    if (!f) return ts_error(TS_ERR_IO, "cannot open %s: %s", bin_path, strerror(errno));
    int32_t h[256];
    ts_status st = fread(h, sizeof h, 1, f) == 1 ? TS_OK : ts_error(TS_ERR_FORMAT, "%s: too short for llm.c's header", bin_path);
    if (!st && h[0] != LLMC_MAGIC)
        st = ts_error(TS_ERR_FORMAT, "%s is not an llm.c model file (magic %d, want %d)", bin_path, h[0], LLMC_MAGIC);
    if (!st && h[1] != LLMC_VERSION_F32)
        st = ts_error(TS_ERR_FORMAT, "%s: llm.c version %d; only float32 files (version 3) are read", bin_path, h[1]);
    ts_gpt_config cfg = {.max_seq_len = h[2], .vocab_size = h[3], .n_layer = h[4], .n_head = h[5], .n_embd = h[6]};
    int64_t Vp = h[7];
    if (!st) st = ts_gpt_config_check(&cfg);
    if (!st && (Vp < cfg.vocab_size || Vp > cfg.vocab_size + 4096))
        st = ts_error(TS_ERR_FORMAT, "%s: padded vocabulary %lld for a vocabulary of %lld", bin_path, (long long)Vp,
                      (long long)cfg.vocab_size);
    ts_gpt m;
    int have_model = 0;
    if (!st) have_model = !(st = open_cpu(&cfg, &m));
    float *buf = have_model ? malloc((size_t)largest(&m) * sizeof *buf) : NULL;
    if (have_model && !buf) st = ts_error(TS_ERR_OOM, "no memory");
    for (size_t o = 0; o < sizeof order / sizeof *order && !st; o++) {
        int per_layer = order[o] != TS_GPT_WTE && order[o] != TS_GPT_WPE && order[o] < TS_GPT_LNFW;
        for (int64_t l = 0; l < (per_layer ? cfg.n_layer : 1) && !st; l++) {
            const ts_gpt_tensor *t = ts_gpt_find(&m, order[o], per_layer ? l : -1);
            size_t count = (size_t)(t->grows * t->gcols);
            if (fread(buf, sizeof *buf, count, f) != count)
                st = ts_error(TS_ERR_FORMAT, "%s is truncated (in tensor kind %d)", bin_path, order[o]);
            if (!st) st = write_tensor(&m, t, buf);
            if (!st && order[o] == TS_GPT_WTE && fseek(f, (long)((Vp - cfg.vocab_size) * cfg.n_embd * 4), SEEK_CUR))
                st = ts_error(TS_ERR_FORMAT, "%s is truncated (padded vocabulary rows)", bin_path);
        }
    }
    if (!st && fgetc(f) != EOF) st = ts_error(TS_ERR_FORMAT, "%s: data after the last tensor", bin_path);
    fclose(f);
    if (!st) st = ts_gpt_save(&m, model_path, meta);
    free(buf);
    if (have_model) ts_gpt_free(&m);
    return st;
}
