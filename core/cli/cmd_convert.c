/* tessera convert: a model to and from Hugging Face GPT-2 directories and
 * llm.c model files (tessera/convert.h), with its tokenizer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "fileio.h"
#include "internal.h"
#include "options.h"
#include "tessera/checkpoint.h"
#include "tessera/convert.h"
#include "tessera/tessera.h"

typedef enum { FMT_TESSERA, FMT_HF, FMT_LLMC, FMT_UNKNOWN } model_format;

static const char *format_name(model_format f)
{
    return f == FMT_TESSERA ? "tessera" : f == FMT_HF ? "hf" : f == FMT_LLMC ? "llmc" : "?";
}

static int exists(const char *path, int dir)
{
    struct stat sb;
    return stat(path, &sb) == 0 && (dir ? S_ISDIR(sb.st_mode) : S_ISREG(sb.st_mode));
}

/* What a path holds: a Hugging Face directory (config.json), an llm.c model
 * file (its magic), a tessera checkpoint or run directory. */
static model_format detect(const char *path, char *ckpt, size_t n)
{
    char f[4300];
    snprintf(f, sizeof f, "%s/config.json", path);
    if (exists(f, 0)) return FMT_HF;
    if (exists(path, 0)) {
        FILE *fp = fopen(path, "rb");
        int32_t magic = 0;
        int ok = fp && fread(&magic, sizeof magic, 1, fp) == 1;
        if (fp) fclose(fp);
        return ok && magic == 20240326 ? FMT_LLMC : FMT_UNKNOWN;
    }
    snprintf(f, sizeof f, "%s/model.safetensors", path);
    if (exists(f, 0)) {
        snprintf(ckpt, n, "%s", path);
        return FMT_TESSERA;
    }
    if (ts_checkpoint_latest(path, ckpt, n) == TS_OK) return FMT_TESSERA;
    ts_clear_error();
    return FMT_UNKNOWN;
}

/* The tokenizer that goes with a converted model: --tokenizer, else the one
 * next to the input (tokenizer.txt), else bytes. */
static ts_status pick_tokenizer(const char *spec, const char *input_dir, int64_t vocab, ts_tokenizer *tok)
{
    char f[4300];
    snprintf(f, sizeof f, "%s/tokenizer.txt", input_dir);
    ts_status st;
    if (spec[0] && strcmp(spec, "byte")) st = ts_tokenizer_load(tok, spec);
    else if (!spec[0] && input_dir[0] && exists(f, 0)) st = ts_tokenizer_load(tok, f);
    else st = ts_tokenizer_init_byte(tok);
    if (!st && tok->vocab_size > vocab) {
        ts_tokenizer_free(tok);
        st = ts_error(TS_ERR_INVALID_ARG, "the tokenizer has %d tokens, the model only %lld", tok->vocab_size,
                      (long long)vocab);
    }
    return st;
}

/* A tessera model directory: model.safetensors (made by `make`) and
 * tokenizer.txt; `sample --checkpoint` and `train --init` take it. */
static ts_status import_model(model_format from, const char *input, const char *out, const char *tok_spec)
{
    TRY(ts_mkdir_p(out));
    ts_gpt_config cfg;
    char input_dir[4300] = "";
    if (from == FMT_HF) {
        TRY(ts_convert_read_hf_config(input, &cfg));
        snprintf(input_dir, sizeof input_dir, "%s", input);
    } else {
        FILE *f = fopen(input, "rb");
        int32_t h[8] = {0};
        int ok = f && fread(h, sizeof h, 1, f) == 1;
        if (f) fclose(f);
        if (!ok) return ts_error(TS_ERR_FORMAT, "%s: too short for an llm.c model", input);
        cfg.vocab_size = h[3];
    }
    ts_tokenizer tok;
    TRY(pick_tokenizer(tok_spec, input_dir, from == FMT_HF ? cfg.vocab_size : cfg.vocab_size, &tok));
    char fp[32], path[4400];
    const char *meta[4];
    ts_checkpoint_model_meta(tok.fingerprint, fp, meta);
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    ts_status st = from == FMT_HF ? ts_convert_from_hf(input, path, meta) : ts_convert_from_llmc(input, path, meta);
    snprintf(path, sizeof path, "%s/tokenizer.txt", out);
    if (!st) st = ts_tokenizer_save(&tok, path);
    ts_tokenizer_free(&tok);
    return st;
}

int cmd_convert(int argc, char **argv)
{
    char to[16] = "", tok_spec[1024] = "";
    cli_option opts[] = {
        {"--to", OPT_STRING, to, sizeof to, "hf | llmc | tessera (required)", NULL, 0, 0, 0},
        {"--tokenizer", OPT_STRING, tok_spec, sizeof tok_spec,
         "into tessera: the tokenizer file to go with the model (byte: bytes)", "the input's tokenizer.txt, else byte",
         0, 0, 0},
    };
    /* positional: INPUT OUTPUT, anywhere among the options */
    const char *pos[2] = {NULL, NULL};
    char *rest[64];
    int nrest = 0, npos = 0;
    rest[nrest++] = argv[0];
    for (int i = 1; i < argc && nrest < 63; i++) {
        if (argv[i][0] == '-' && argv[i][1]) {
            rest[nrest++] = argv[i];
            if (!strchr(argv[i], '=') && i + 1 < argc && strcmp(argv[i], "--help") && strcmp(argv[i], "-h"))
                rest[nrest++] = argv[++i];
        } else if (npos < 2) {
            pos[npos++] = argv[i];
        } else {
            fprintf(stderr, "tessera convert: one input and one output, not '%s' too\n", argv[i]);
            return 2;
        }
    }
    int rc = cli_parse("convert",
                       "--to hf|llmc|tessera INPUT OUTPUT\n\n"
                       "  --to hf       a tessera checkpoint (or run directory) -> a Hugging Face GPT-2\n"
                       "                directory (config.json, model.safetensors; GPT2LMHeadModel loads it)\n"
                       "  --to llmc     a tessera checkpoint -> an llm.c model file (float32)\n"
                       "  --to tessera  a Hugging Face GPT-2 directory or an llm.c model file -> a tessera\n"
                       "                model directory (model.safetensors, tokenizer.txt) that\n"
                       "                `sample --checkpoint` and `train --init` take",
                       opts, (int)(sizeof opts / sizeof *opts), nrest, rest);
    if (rc) return rc == 1 ? 0 : rc;
    if (!to[0] || !pos[0] || !pos[1]) {
        fprintf(stderr, "tessera convert: --to, an input and an output are required (see tessera convert --help)\n");
        return 2;
    }
    char ckpt[4300] = "";
    model_format from = detect(pos[0], ckpt, sizeof ckpt);
    if (from == FMT_UNKNOWN) {
        fprintf(stderr, "tessera convert: %s is not a tessera checkpoint, a Hugging Face GPT-2 directory "
                        "(config.json) or an llm.c model file\n", pos[0]);
        return 1;
    }
    ts_status st;
    char model[4400];
    snprintf(model, sizeof model, "%s/model.safetensors", ckpt);
    if (!strcmp(to, "hf") || !strcmp(to, "llmc")) {
        if (from != FMT_TESSERA) {
            fprintf(stderr, "tessera convert: --to %s takes a tessera checkpoint; %s is %s (convert it --to tessera "
                            "first)\n", to, pos[0], format_name(from));
            return 2;
        }
        st = !strcmp(to, "hf") ? ts_convert_to_hf(model, pos[1]) : ts_convert_to_llmc(model, pos[1]);
        if (!st && !strcmp(to, "hf")) { /* the tokenizer travels with it, for the way back */
            char src[4400], dst[4400], *text;
            size_t n;
            snprintf(src, sizeof src, "%s/tokenizer.txt", ckpt);
            snprintf(dst, sizeof dst, "%s/tokenizer.txt", pos[1]);
            st = ts_read_file(src, &text, &n);
            if (!st) {
                st = ts_write_file_atomic(dst, text, n);
                free(text);
            }
        }
    } else if (!strcmp(to, "tessera")) {
        if (from == FMT_TESSERA) {
            fprintf(stderr, "tessera convert: %s is already a tessera checkpoint\n", pos[0]);
            return 2;
        }
        st = import_model(from, pos[0], pos[1], tok_spec);
    } else {
        fprintf(stderr, "tessera convert: --to must be hf, llmc or tessera, not '%s'\n", to);
        return 2;
    }
    if (st) return cli_fail("convert");
    printf("%s (%s) -> %s (%s)\n", pos[0], format_name(from), pos[1], to);
    return 0;
}
