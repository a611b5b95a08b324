/* tessera sample / eval / tokenize: use a trained checkpoint, prepare data. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "options.h"
#include "tessera/checkpoint.h"
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

int cmd_sample(int argc, char **argv)
{
    char ckpt[1024] = "", prompt[4096] = "\n", device[128] = "auto";
    int64_t tokens = 200, top_k = 40;
    float temperature = 0.8f;
    uint64_t seed = 1;
    const cli_option opts[] = {
        {"--checkpoint", OPT_STRING, ckpt, sizeof ckpt, "checkpoint or run directory (required)"},
        {"--prompt", OPT_STRING, prompt, sizeof prompt, "text to continue (default: a newline)"},
        {"--tokens", OPT_INT, &tokens, 0, "tokens to generate (200)"},
        {"--temperature", OPT_FLOAT, &temperature, 0, "0 = greedy (0.8)"},
        {"--top-k", OPT_INT, &top_k, 0, "sample among the k most likely tokens, 0 = all (40)"},
        {"--seed", OPT_UINT, &seed, 0, "sampling seed"},
        {"--device", OPT_STRING, device, sizeof device, "device"},
    };
    int rc = cli_parse("sample", "--checkpoint DIR [options]", opts, (int)(sizeof opts / sizeof *opts), argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (!ckpt[0]) {
        fprintf(stderr, "tessera sample: --checkpoint is required\n");
        return 2;
    }
    if (temperature < 0 || top_k < 0 || tokens < 0) {
        fprintf(stderr, "tessera sample: --temperature, --top-k and --tokens must be >= 0\n");
        return 2;
    }
    ts_gpt m;
    ts_tokenizer tok;
    if (open_model(ckpt, device, &m, &tok) != TS_OK) return cli_fail("sample");
    int32_t *ids = NULL;
    size_t n = 0;
    if (ts_tokenizer_encode(&tok, (const uint8_t *)prompt, strlen(prompt), &ids, &n) != TS_OK) return cli_fail("sample");
    int64_t cap = (int64_t)n + tokens, len = (int64_t)n;
    int32_t *buf = malloc((size_t)(cap > 0 ? cap : 1) * sizeof *buf);
    memcpy(buf, ids, n * sizeof *ids);
    free(ids);
    ts_sample_options o = {.temperature = temperature, .top_k = (int)top_k, .seed = seed, .stop_token = -1};
    int status = 0;
    if (ts_generate(&m, buf, &len, cap, tokens, &o) != TS_OK) status = cli_fail("sample");
    else {
        char *text;
        size_t tl;
        if (ts_tokenizer_decode(&tok, buf, (size_t)len, &text, &tl) != TS_OK) status = cli_fail("sample");
        else {
            fwrite(text, 1, tl, stdout);
            fputc('\n', stdout);
            free(text);
        }
    }
    free(buf);
    ts_gpt_free(&m);
    ts_tokenizer_free(&tok);
    return status;
}

int cmd_eval(int argc, char **argv)
{
    char ckpt[1024] = "", data[1024] = "", device[128] = "auto";
    int64_t seq_len = 0, batch = 8, max_batches = 0;
    const cli_option opts[] = {
        {"--checkpoint", OPT_STRING, ckpt, sizeof ckpt, "checkpoint or run directory (required)"},
        {"--data", OPT_STRING, data, sizeof data, "text or token file (required)"},
        {"--seq-len", OPT_INT, &seq_len, 0, "tokens per window (default: the model's context)"},
        {"--batch", OPT_INT, &batch, 0, "windows per forward pass (8)"},
        {"--max-batches", OPT_INT, &max_batches, 0, "stop after this many batches (0 = the whole file)"},
        {"--device", OPT_STRING, device, sizeof device, "device"},
    };
    int rc = cli_parse("eval", "--checkpoint DIR --data FILE [options]", opts, (int)(sizeof opts / sizeof *opts), argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (!ckpt[0] || !data[0]) {
        fprintf(stderr, "tessera eval: --checkpoint and --data are required\n");
        return 2;
    }
    ts_gpt m;
    ts_tokenizer tok;
    if (open_model(ckpt, device, &m, &tok) != TS_OK) return cli_fail("eval");
    int64_t T = seq_len > 0 ? seq_len : m.cfg.max_seq_len;
    if (T > m.cfg.max_seq_len || batch < 1) {
        fprintf(stderr, "tessera eval: --seq-len must be <= %lld and --batch >= 1\n", (long long)m.cfg.max_seq_len);
        return 2;
    }
    /* every consecutive window of the file counts: it is all "validation" */
    ts_dataset ds;
    ts_status st;
    if (ts_is_token_file(data)) st = ts_dataset_open_tokens(&ds, data, 0.999999);
    else {
        char cache[4096];
        const char *env = getenv("TESSERA_DATA_CACHE");
        snprintf(cache, sizeof cache, "%s", env && *env ? env : "/tmp/tessera-tokens");
        st = ts_dataset_open_text(&ds, data, &tok, cache, 0.999999);
    }
    if (st) return cli_fail("eval");
    int64_t windows = ds.val_tokens > T ? (ds.val_tokens - 1) / T : 0;
    int64_t nb = windows / batch;
    if (max_batches > 0 && nb > max_batches) nb = max_batches;
    if (nb < 1) {
        fprintf(stderr, "tessera eval: %s has too few tokens for one batch of %lld x %lld\n", data,
                (long long)batch, (long long)T);
        return 1;
    }
    int32_t *in = malloc((size_t)(batch * T) * sizeof *in), *tg = malloc((size_t)(batch * T) * sizeof *tg);
    double sum = 0;
    int status = 0;
    for (int64_t b = 0; b < nb; b++) {
        float loss;
        if (ts_dataset_batch(&ds, TS_SPLIT_VAL, 0, b * batch, batch, T, in, tg) != TS_OK ||
            ts_gpt_forward(&m, in, tg, batch, T, &loss) != TS_OK) {
            status = cli_fail("eval");
            break;
        }
        sum += loss;
    }
    if (!status) {
        double loss = sum / (double)nb;
        printf("loss %.4f (perplexity %.2f, %.3f bits per token) over %lld tokens of %s\n", loss, exp(loss),
               loss / log(2.0), (long long)(nb * batch * T), data);
    }
    free(in), free(tg);
    ts_dataset_close(&ds);
    ts_gpt_free(&m);
    ts_tokenizer_free(&tok);
    return status;
}

int cmd_tokenize(int argc, char **argv)
{
    char input[1024] = "", output[1024] = "", spec[1024] = "byte", save[1024] = "";
    const cli_option opts[] = {
        {"--input", OPT_STRING, input, sizeof input, "UTF-8 text (required)"},
        {"--output", OPT_STRING, output, sizeof output, "token file to write (required)"},
        {"--tokenizer", OPT_STRING, spec, sizeof spec, "byte | bpe:N (trained on the input) | tokenizer file"},
        {"--save-tokenizer", OPT_STRING, save, sizeof save, "write the tokenizer here"},
    };
    int rc = cli_parse("tokenize", "--input FILE --output FILE [options]", opts, (int)(sizeof opts / sizeof *opts), argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (!input[0] || !output[0]) {
        fprintf(stderr, "tessera tokenize: --input and --output are required\n");
        return 2;
    }
    char *text;
    size_t n;
    FILE *f = fopen(input, "rb");
    if (!f) {
        fprintf(stderr, "tessera tokenize: cannot open %s\n", input);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = malloc((size_t)(len > 0 ? len : 1));
    n = fread(text, 1, (size_t)len, f);
    fclose(f);
    ts_tokenizer tok;
    ts_status st;
    if (!strcmp(spec, "byte")) st = ts_tokenizer_init_byte(&tok);
    else if (!strncmp(spec, "bpe:", 4)) st = ts_tokenizer_train_bpe(&tok, (const uint8_t *)text, n, atoi(spec + 4));
    else st = ts_tokenizer_load(&tok, spec);
    if (st) {
        free(text);
        return cli_fail("tokenize");
    }
    int32_t *ids;
    size_t count;
    int status = 0;
    if (ts_tokenizer_encode(&tok, (const uint8_t *)text, n, &ids, &count) != TS_OK ||
        ts_tokens_write(output, ids, count, tok.vocab_size, tok.fingerprint) != TS_OK ||
        (save[0] && ts_tokenizer_save(&tok, save) != TS_OK))
        status = cli_fail("tokenize");
    else
        printf("%s: %zu bytes -> %zu tokens (vocabulary %d, %.2f bytes per token)\n", output, n, count,
               tok.vocab_size, count ? (double)n / (double)count : 0.0);
    if (!status) free(ids);
    free(text);
    ts_tokenizer_free(&tok);
    return status;
}
