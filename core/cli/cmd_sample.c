/* tessera sample / eval / tokenize: use a trained checkpoint, prepare data. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fileio.h"
#include "cli.h"
#include "options.h"
#include "tessera/checkpoint.h"
#include "tessera/data.h"
#include "tessera/generate.h"
#include "tessera/tessera.h"

/* A checkpoint directory, or a run directory whose `latest` names one. */
static ts_status resolve_checkpoint(const char *path, char *out, size_t n)
{
    char f[4300];
    struct stat sb;
    snprintf(f, sizeof f, "%s/model.safetensors", path);
    if (stat(f, &sb) == 0) {
        snprintf(out, n, "%s", path);
        return TS_OK;
    }
    return ts_checkpoint_latest(path, out, n);
}

/* Model and tokenizer of a checkpoint, on a device. */
static ts_status open_model(const char *path, const char *device, ts_gpt *m, ts_tokenizer *tok)
{
    char ckpt[4300], f[4400];
    ts_status st = resolve_checkpoint(path, ckpt, sizeof ckpt);
    if (st) return st;
    ts_device *dev;
    if ((st = ts_device_open(device, &dev))) return st;
    snprintf(f, sizeof f, "%s/model.safetensors", ckpt);
    ts_gpt_config cfg;
    if ((st = ts_gpt_read_config(f, &cfg))) return st;
    if ((st = ts_gpt_create(m, dev, &cfg))) return st;
    if ((st = ts_gpt_load(m, f))) {
        ts_gpt_free(m);
        return st;
    }
    snprintf(f, sizeof f, "%s/tokenizer.txt", ckpt);
    if ((st = ts_tokenizer_load(tok, f))) {
        ts_gpt_free(m);
        return st;
    }
    if (tok->vocab_size > cfg.vocab_size) {
        ts_gpt_free(m);
        ts_tokenizer_free(tok);
        return ts_error(TS_ERR_FORMAT, "%s: the tokenizer has %d tokens, the model %lld", ckpt,
                        tok->vocab_size, (long long)cfg.vocab_size);
    }
    return TS_OK;
}

/* A whole input: a regular file, or standard input ("-") or a pipe read to
 * its end; directories and unreadable files are errors that name them. */
static ts_status read_input(const char *path, char **data, size_t *n)
{
    *data = NULL;
    *n = 0;
    struct stat sb;
    if (strcmp(path, "-") != 0) {
        if (stat(path, &sb) != 0) return ts_error(TS_ERR_IO, "cannot open %s: %s", path, strerror(errno));
        if (S_ISDIR(sb.st_mode)) return ts_error(TS_ERR_IO, "%s is a directory, not a text file", path);
        if (S_ISREG(sb.st_mode)) return ts_read_file(path, data, n);
    }
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) return ts_error(TS_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    ts_status st = buf ? TS_OK : ts_error(TS_ERR_OOM, "no memory to read %s", path);
    while (!st) {
        if (len == cap) {
            char *b = cap < ((size_t)1 << 40) ? realloc(buf, 2 * cap + 1) : NULL;
            if (!b) {
                st = ts_error(TS_ERR_OOM, "no memory to read %s (%zu bytes so far)", path, len);
                break;
            }
            buf = b, cap *= 2;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f)) st = ts_error(TS_ERR_IO, "reading %s failed: %s", path, strerror(errno));
            break;
        }
    }
    if (f != stdin) fclose(f);
    if (st) {
        free(buf);
        return st;
    }
    buf[len] = '\0';
    *data = buf, *n = len;
    return TS_OK;
}

int cmd_sample(int argc, char **argv)
{
    char ckpt[1024] = "", prompt[4096] = "\n", prompt_file[1024] = "", device[128] = "auto";
    int64_t tokens = 200, top_k = 40, samples = 1;
    float temperature = 0.8f, top_p = 1.0f;
    uint64_t seed = 1;
    cli_option opts[] = {
        {"--checkpoint", OPT_STRING, ckpt, sizeof ckpt, "checkpoint or run directory (required)", NULL, 0, 0, 0},
        {"--prompt", OPT_STRING, prompt, sizeof prompt, "text to continue", "a newline", 0, 0, 0},
        {"--prompt-file", OPT_STRING, prompt_file, sizeof prompt_file, "read the prompt from a file (- = stdin)",
         NULL, 0, 0, 0},
        {"--tokens", OPT_INT, &tokens, 0, "tokens to generate per sample", "200", 0, 1 << 24, 0},
        {"--num-samples", OPT_INT, &samples, 0, "samples to draw (each from its own seed)", "1", 1, 100000, 0},
        {"--temperature", OPT_FLOAT, &temperature, 0, "0 = greedy", "0.8", 0, 100, 0},
        {"--top-k", OPT_INT, &top_k, 0, "sample among the k most likely tokens, 0 = all", "40", 0, 1 << 30, 0},
        {"--top-p", OPT_FLOAT, &top_p, 0, "nucleus: the most likely tokens holding this share, 1 = all", "1", 0.0001,
         1, 0},
        {"--seed", OPT_UINT, &seed, 0, "sampling seed (sample i uses seed + i)", "1", 0, 9223372036854775807.0, 0},
        {"--device", OPT_STRING, device, sizeof device, "cpu | opencl | opencl:N | auto", "auto", 0, 0, 0},
    };
    int n_opts = (int)(sizeof opts / sizeof *opts);
    int rc = cli_parse("sample", "--checkpoint DIR [options]", opts, n_opts, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (!ckpt[0]) {
        fprintf(stderr, "tessera sample: --checkpoint is required\n");
        return 2;
    }
    if (prompt_file[0] && cli_given(opts, n_opts, "--prompt")) {
        fprintf(stderr, "tessera sample: give --prompt or --prompt-file, not both\n");
        return 2;
    }
    char *text = NULL;
    size_t text_len = 0;
    if (prompt_file[0]) {
        if (read_input(prompt_file, &text, &text_len) != TS_OK) return cli_fail("--prompt-file");
        if (text_len == 0) {
            free(text);
            fprintf(stderr, "tessera sample: %s is empty\n", prompt_file);
            return 2;
        }
    }
    ts_gpt m;
    ts_tokenizer tok;
    if (open_model(ckpt, device, &m, &tok) != TS_OK) {
        free(text);
        return cli_fail("sample");
    }
    int32_t *ids = NULL;
    size_t n = 0;
    ts_status st = ts_tokenizer_encode(&tok, (const uint8_t *)(text ? text : prompt), text ? text_len : strlen(prompt),
                                       &ids, &n);
    free(text);
    int64_t cap = (int64_t)n + tokens;
    int32_t *buf = st ? NULL : malloc((size_t)(cap > 0 ? cap : 1) * sizeof *buf);
    if (!st && !buf) st = ts_error(TS_ERR_OOM, "no memory for %lld tokens", (long long)cap);
    int status = st ? cli_fail("sample") : 0;
    for (int64_t s = 0; s < samples && !status; s++) {
        memcpy(buf, ids, n * sizeof *ids);
        int64_t len = (int64_t)n;
        ts_sample_options o = {.temperature = temperature, .top_k = (int)top_k, .top_p = top_p,
                               .seed = seed + (uint64_t)s, .stop_token = -1};
        char *out;
        size_t out_len;
        if (ts_generate(&m, buf, &len, cap, tokens, &o) != TS_OK ||
            ts_tokenizer_decode(&tok, buf, (size_t)len, &out, &out_len) != TS_OK) {
            status = cli_fail("sample");
            break;
        }
        if (samples > 1) printf("%s--- sample %lld (seed %llu)\n", s ? "\n" : "", (long long)s + 1,
                                (unsigned long long)(seed + (uint64_t)s));
        fwrite(out, 1, out_len, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        free(out);
    }
    free(buf), free(ids);
    ts_gpt_free(&m);
    ts_tokenizer_free(&tok);
    return status;
}

int cmd_eval(int argc, char **argv)
{
    char ckpt[1024] = "", data[1024] = "", device[128] = "auto", split[16] = "all";
    int64_t seq_len = 0, batch = 8, max_batches = 0;
    double val_fraction = 0.1;
    cli_option opts[] = {
        {"--checkpoint", OPT_STRING, ckpt, sizeof ckpt, "checkpoint or run directory (required)", NULL, 0, 0, 0},
        {"--data", OPT_STRING, data, sizeof data, "text or token file (required)", NULL, 0, 0, 0},
        {"--split", OPT_STRING, split, sizeof split,
         "all: every token of the file; val: its held-out tail (as tessera train splits it)", "all", 0, 0, 0},
        {"--val-fraction", OPT_DOUBLE, &val_fraction, 0, "the held-out share, for --split val", "0.1", 0.000001,
         0.999999, 0},
        {"--seq-len", OPT_INT, &seq_len, 0, "tokens per window", "the model's context", 1, 1 << 20, 0},
        {"--batch", OPT_INT, &batch, 0, "windows per forward pass", "8", 1, 1 << 20, 0},
        {"--max-batches", OPT_INT, &max_batches, 0, "stop after this many batches, 0 = all", "0", 0, 1LL << 40, 0},
        {"--device", OPT_STRING, device, sizeof device, "cpu | opencl | opencl:N | auto", "auto", 0, 0, 0},
    };
    int rc = cli_parse("eval", "--checkpoint DIR --data FILE [options]", opts, (int)(sizeof opts / sizeof *opts),
                       argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (!ckpt[0] || !data[0]) {
        fprintf(stderr, "tessera eval: --checkpoint and --data are required\n");
        return 2;
    }
    if (strcmp(split, "all") && strcmp(split, "val")) {
        fprintf(stderr, "tessera eval: --split must be all or val, not '%s'\n", split);
        return 2;
    }
    ts_gpt m;
    ts_tokenizer tok;
    if (open_model(ckpt, device, &m, &tok) != TS_OK) return cli_fail("eval");
    int64_t T = seq_len > 0 ? seq_len : m.cfg.max_seq_len;
    int status = 0;
    ts_dataset ds;
    int have_ds = 0;
    ts_status st = TS_OK;
    if (T > m.cfg.max_seq_len) {
        fprintf(stderr, "tessera eval: --seq-len %lld exceeds the model's context %lld\n", (long long)T,
                (long long)m.cfg.max_seq_len);
        status = 2;
    }
    /* the scored part is the "validation" split: all of the file, or its tail */
    double vf = strcmp(split, "all") ? val_fraction : 1.0;
    if (!status && ts_is_token_file(data)) {
        st = ts_dataset_open_tokens(&ds, data, vf);
        have_ds = !st;
        if (!st && ds.tokenizer_fingerprint && ds.tokenizer_fingerprint != tok.fingerprint)
            st = ts_error(TS_ERR_INVALID_ARG, "%s was made by another tokenizer than the checkpoint's (fingerprint "
                          "%016llx, the checkpoint's %016llx)", data, (unsigned long long)ds.tokenizer_fingerprint,
                          (unsigned long long)tok.fingerprint);
        if (!st && ds.vocab_size > m.cfg.vocab_size)
            st = ts_error(TS_ERR_INVALID_ARG, "%s holds tokens of a %lld-token vocabulary; the model has %lld", data,
                          (long long)ds.vocab_size, (long long)m.cfg.vocab_size);
    } else if (!status) {
        char cache[4096];
        ts_data_cache_dir(cache, sizeof cache);
        st = ts_dataset_open_text(&ds, data, &tok, cache, vf);
        have_ds = !st;
    }
    if (!status && st) status = cli_fail("eval");
    int64_t windows = !status && ds.val_tokens > T ? (ds.val_tokens - 1) / T : 0;
    int64_t nb = windows / batch;
    if (max_batches > 0 && nb > max_batches) nb = max_batches;
    if (!status && nb < 1) {
        fprintf(stderr, "tessera eval: %s has %lld tokens to score, too few for one batch of %lld x %lld\n", data,
                (long long)ds.val_tokens, (long long)batch, (long long)T);
        status = 1;
    }
    int32_t *in = status ? NULL : malloc((size_t)(batch * T) * sizeof *in);
    int32_t *tg = status ? NULL : malloc((size_t)(batch * T) * sizeof *tg);
    if (!status && (!in || !tg)) {
        fprintf(stderr, "tessera eval: no memory for a batch of %lld x %lld\n", (long long)batch, (long long)T);
        status = 1;
    }
    double sum = 0;
    for (int64_t b = 0; b < nb && !status; b++) {
        float loss;
        if (ts_dataset_batch(&ds, TS_SPLIT_VAL, 0, b * batch, batch, T, in, tg) != TS_OK ||
            ts_gpt_forward(&m, in, tg, batch, T, &loss) != TS_OK)
            status = cli_fail("eval");
        else sum += loss;
    }
    if (!status) {
        double loss = sum / (double)nb;
        printf("loss %.4f (perplexity %.2f, %.3f bits per token) over %lld tokens of %s (%s)\n", loss, exp(loss),
               loss / log(2.0), (long long)(nb * batch * T), data,
               strcmp(split, "all") ? "its held-out tail" : "the whole file");
    }
    free(in), free(tg);
    if (have_ds) ts_dataset_close(&ds);
    ts_gpt_free(&m);
    ts_tokenizer_free(&tok);
    return status;
}

int cmd_tokenize(int argc, char **argv)
{
    char input[1024] = "", output[1024] = "", spec[1024] = "byte", save[1024] = "";
    cli_option opts[] = {
        {"--input", OPT_STRING, input, sizeof input, "UTF-8 text, - for standard input (required)", NULL, 0, 0, 0},
        {"--output", OPT_STRING, output, sizeof output, "token file to write (required)", NULL, 0, 0, 0},
        {"--tokenizer", OPT_STRING, spec, sizeof spec, "byte | bpe:N | word:N (trained on the input) | tokenizer file", "byte",
         0, 0, 0},
        {"--save-tokenizer", OPT_STRING, save, sizeof save, "write the tokenizer here", NULL, 0, 0, 0},
    };
    int rc = cli_parse("tokenize", "--input FILE --output FILE [options]", opts, (int)(sizeof opts / sizeof *opts),
                       argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (!input[0] || !output[0]) {
        fprintf(stderr, "tessera tokenize: --input and --output are required\n");
        return 2;
    }
    char *text;
    size_t n;
    if (read_input(input, &text, &n) != TS_OK) return cli_fail("tokenize");
    if (n == 0) {
        free(text);
        fprintf(stderr, "tessera tokenize: %s holds no text\n", input);
        return 1;
    }
    ts_tokenizer tok;
    ts_status st = ts_check_text((const uint8_t *)text, n, input);
    int have_tok = 0;
    if (!st) {
        st = ts_tokenizer_from_spec(&tok, spec, (const uint8_t *)text, n);
        have_tok = !st;
    }
    int32_t *ids = NULL;
    size_t count = 0;
    if (!st) st = ts_tokenizer_encode(&tok, (const uint8_t *)text, n, &ids, &count);
    if (!st) st = ts_tokens_write(output, ids, count, tok.vocab_size, tok.fingerprint);
    if (!st && save[0]) st = ts_tokenizer_save(&tok, save);
    int status = st ? cli_fail("tokenize") : 0;
    if (!status)
        printf("%s: %zu bytes -> %zu tokens (vocabulary %d, %.2f bytes per token)\n", output, n, count,
               tok.vocab_size, count ? (double)n / (double)count : 0.0);
    free(ids);
    free(text);
    if (have_tok) ts_tokenizer_free(&tok);
    return status;
}
