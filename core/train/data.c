#include "tessera/data.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"
#include "tessera/classify.h"

#define TOKENS_MAGIC "TSTOKENS"
enum { HEADER_BYTES = 64 };
/* llm.c's token files (its dev/data .bin files): 256 int32 of header, magic
 * 20240520, version 1 = GPT-2 tokens as u16, version 2 = LLaMA 3 as u32,
 * then the token count; then the tokens. */
enum { LLMC_MAGIC = 20240520, LLMC_HEADER_BYTES = 1024 };

void ts_data_cache_dir(char *out, size_t n)
{
    const char *env = getenv("TESSERA_DATA_CACHE");
    if (env && *env) snprintf(out, n, "%s", env);
    else if (getenv("XDG_CACHE_HOME") && *getenv("XDG_CACHE_HOME"))
        snprintf(out, n, "%s/tessera/tokens", getenv("XDG_CACHE_HOME"));
    else if (getenv("HOME") && *getenv("HOME")) snprintf(out, n, "%s/.cache/tessera/tokens", getenv("HOME"));
    else snprintf(out, n, "/tmp/tessera-tokens");
}

ts_status ts_check_text(const uint8_t *s, size_t n, const char *name)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        if (c == 0)
            return ts_error(TS_ERR_FORMAT, "%s is not text: it has a NUL byte at offset %zu (binary data? a token "
                            "file needs the tessera or llm.c header)", name, i);
        if (c < 0x80) {
            i++;
            continue;
        }
        /* the length of a well-formed UTF-8 sequence, its second byte's range */
        size_t len = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        uint8_t lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80, hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
        int ok = len > 0 && i + len <= n && s[i + 1] >= lo && s[i + 1] <= hi;
        for (size_t k = 2; ok && k < len; k++) ok = s[i + k] >= 0x80 && s[i + k] <= 0xBF;
        if (!ok)
            return ts_error(TS_ERR_FORMAT, "%s is not valid UTF-8: byte 0x%02x at offset %zu does not start a valid "
                            "sequence", name, c, i);
        i += len;
    }
    return TS_OK;
}

ts_status ts_dataset_batch(ts_dataset *ds, ts_split split, uint64_t seed, int64_t first_sample,
                           int64_t B, int64_t T, int32_t *inputs, int32_t *targets)
{
    if (B < 1 || T < 1 || first_sample < 0)
        return ts_error(TS_ERR_INVALID_ARG, "batch: B=%lld T=%lld first sample %lld", (long long)B,
                        (long long)T, (long long)first_sample);
    return ds->batch(ds, split, seed, first_sample, B, T, inputs, targets);
}

void ts_dataset_close(ts_dataset *ds)
{
    if (ds->close) ds->close(ds);
    memset(ds, 0, sizeof *ds);
}

static uint64_t mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* ---- token files ---- */

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

ts_status ts_tokens_write(const char *path, const int32_t *ids, size_t count, int64_t vocab_size,
                          uint64_t tokenizer_fingerprint)
{
    if (vocab_size < 1 || vocab_size > ((int64_t)1 << 31))
        return ts_error(TS_ERR_INVALID_ARG, "token file: vocabulary size %lld", (long long)vocab_size);
    unsigned width = vocab_size <= 65536 ? 2 : 4;
    unsigned char header[HEADER_BYTES] = {0};
    memcpy(header, TOKENS_MAGIC, 8);
    header[8] = 1;          /* version */
    header[12] = (unsigned char)width;
    put64(header + 16, (uint64_t)vocab_size);
    put64(header + 24, (uint64_t)count);
    put64(header + 32, tokenizer_fingerprint);
    ts_atomic_file af;
    ts_status st = ts_atomic_open(&af, path);
    if (st) return st;
    st = ts_atomic_write(&af, header, sizeof header);
    enum { CHUNK = 1 << 16 };
    unsigned char *buf = malloc(CHUNK * 4);
    if (!buf && !st) st = ts_error(TS_ERR_OOM, "no memory");
    for (size_t i = 0; i < count && !st; i += CHUNK) {
        size_t m = count - i < CHUNK ? count - i : CHUNK;
        for (size_t k = 0; k < m; k++) {
            int32_t id = ids[i + k];
            if (id < 0 || id >= vocab_size) {
                st = ts_error(TS_ERR_INVALID_ARG, "token %d at %zu is outside the vocabulary", id, i + k);
                break;
            }
            for (unsigned b = 0; b < width; b++) buf[k * width + b] = (unsigned char)((uint32_t)id >> (8 * b));
        }
        if (!st) st = ts_atomic_write(&af, buf, m * width);
    }
    free(buf);
    if (st) {
        ts_atomic_abort(&af);
        return st;
    }
    return ts_atomic_commit(&af);
}

typedef struct tokfile {
    const unsigned char *map;
    size_t size, header;  /* header bytes before the first token */
    unsigned width;
    int64_t count, split; /* tokens [0, split) train, [split, count) validation */
} tokfile;

static int32_t token_at(const tokfile *f, int64_t i)
{
    const unsigned char *p = f->map + f->header + (size_t)i * f->width;
    return f->width == 2 ? (int32_t)(p[0] | p[1] << 8)
                         : (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                                     (uint32_t)p[3] << 24);
}

static ts_status tokfile_batch(ts_dataset *ds, ts_split split, uint64_t seed, int64_t first,
                               int64_t B, int64_t T, int32_t *inputs, int32_t *targets)
{
    const tokfile *f = ds->ctx;
    int64_t begin = split == TS_SPLIT_TRAIN ? 0 : f->split;
    int64_t len = split == TS_SPLIT_TRAIN ? f->split : f->count - f->split;
    if (len < T + 1)
        return ts_error(TS_ERR_INVALID_ARG, "%s: the %s split has %lld tokens, fewer than T+1 = %lld",
                        ds->name, split == TS_SPLIT_TRAIN ? "training" : "validation",
                        (long long)len, (long long)(T + 1));
    int64_t positions = len - T; /* valid starts */
    for (int64_t r = 0; r < B; r++) {
        int64_t s = first + r, start;
        if (split == TS_SPLIT_TRAIN) start = (int64_t)(mix64(seed ^ mix64((uint64_t)s)) % (uint64_t)positions);
        else start = (s * T) % positions;
        for (int64_t t = 0; t < T; t++) {
            inputs[r * T + t] = token_at(f, begin + start + t);
            targets[r * T + t] = token_at(f, begin + start + t + 1);
        }
    }
    return TS_OK;
}

static void tokfile_close(ts_dataset *ds)
{
    tokfile *f = ds->ctx;
    if (f) {
        munmap((void *)f->map, f->size);
        free(f);
    }
}

static uint32_t get32(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

int ts_is_token_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    unsigned char magic[8];
    int yes = fread(magic, 1, 8, f) == 8 && (!memcmp(magic, TOKENS_MAGIC, 8) || get32(magic) == LLMC_MAGIC);
    fclose(f);
    return yes;
}

ts_status ts_dataset_open_tokens(ts_dataset *ds, const char *path, double val_fraction)
{
    memset(ds, 0, sizeof *ds);
    if (!(val_fraction >= 0.0 && val_fraction <= 1.0))
        return ts_error(TS_ERR_INVALID_ARG, "validation fraction %g must be in [0, 1]", val_fraction);
    int fd;
    size_t size;
    ts_status opened = ts_open_regular(path, &fd, &size);
    if (opened) return opened;
    if (size < HEADER_BYTES) {
        close(fd);
        return ts_error(TS_ERR_FORMAT, "%s: %zu bytes is too short for a token file", path, size);
    }
    const unsigned char *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return ts_error(TS_ERR_IO, "cannot map %s: %s", path, strerror(errno));
    ts_status st = TS_OK;
    unsigned width = map[12];
    uint64_t vocab = get64(map + 16), count = get64(map + 24), tok_fp = get64(map + 32);
    size_t header = HEADER_BYTES;
    int llmc = get32(map) == LLMC_MAGIC;
    if (llmc) {
        /* llm.c: the vocabulary is its tokenizer's (GPT-2 or LLaMA 3) */
        uint32_t version = size >= LLMC_HEADER_BYTES ? get32(map + 4) : 0;
        header = LLMC_HEADER_BYTES;
        width = version == 1 ? 2 : 4;
        vocab = version == 1 ? 50257 : 128256;
        count = size >= LLMC_HEADER_BYTES ? get32(map + 8) : 0;
        tok_fp = 0;
        if (version != 1 && version != 2)
            st = ts_error(TS_ERR_FORMAT, "%s: llm.c token file version %u is not supported (1: GPT-2, 2: LLaMA 3)", path,
                          version);
    } else if (memcmp(map, TOKENS_MAGIC, 8) != 0)
        st = ts_error(TS_ERR_FORMAT, "%s is not a tessera or llm.c token file (bad magic)", path);
    else if (map[8] != 1)
        st = ts_error(TS_ERR_FORMAT, "%s: token file version %d is not supported", path, map[8]);
    else if ((width != 2 && width != 4) || vocab < 1 || vocab > ((uint64_t)1 << 31) ||
             (width == 2 && vocab > 65536))
        st = ts_error(TS_ERR_FORMAT, "%s: corrupt header (width %u, vocabulary %llu)", path, width,
                      (unsigned long long)vocab);
    if (!st && (size < header || count > (size - header) / width || header + count * width != size))
        st = ts_error(TS_ERR_FORMAT, "%s: header promises %llu tokens (%llu bytes) but the file has %zu bytes (truncated?)",
                      path, (unsigned long long)count, (unsigned long long)(header + count * width), size);
    tokfile *f = NULL;
    if (!st) {
        f = calloc(1, sizeof *f);
        if (!f) st = ts_error(TS_ERR_OOM, "no memory");
    }
    if (!st) {
        f->map = map, f->size = size, f->header = header, f->width = width, f->count = (int64_t)count;
        for (int64_t i = 0; i < f->count; i++) {
            int32_t id = token_at(f, i);
            if (id < 0 || (uint64_t)id >= vocab) {
                st = ts_error(TS_ERR_FORMAT, "%s: token %d at %lld is outside the vocabulary of %llu (corrupt file?)",
                              path, id, (long long)i, (unsigned long long)vocab);
                break;
            }
        }
    }
    if (st) {
        free(f);
        munmap((void *)map, size);
        return st;
    }
    f->split = f->count - (int64_t)((double)f->count * val_fraction);
    snprintf(ds->name, sizeof ds->name, "%s", path);
    ds->vocab_size = (int64_t)vocab;
    ds->train_tokens = f->split;
    ds->val_tokens = f->count - f->split;
    ds->tokenizer_fingerprint = tok_fp;
    /* an llm.c file names no tokenizer: its first tokens stand in (a file of
     * fewer than 8 bytes of tokens uses what it has) */
    uint64_t first = 0;
    for (size_t b = 0; b < 8 && header + b < size; b++) first |= (uint64_t)map[header + b] << (8 * b);
    ds->fingerprint = llmc ? mix64(0x11c0ull ^ mix64(count) ^ mix64(first)) : mix64(tok_fp ^ mix64(count));
    ds->batch = tokfile_batch;
    ds->close = tokfile_close;
    ds->ctx = f;
    return TS_OK;
}

ts_status ts_dataset_open_text(ts_dataset *ds, const char *path, const ts_tokenizer *tok,
                               const char *cache_dir, double val_fraction)
{
    memset(ds, 0, sizeof *ds);
    char *text;
    size_t n;
    /* labeled files (JSON lines, CSV, TSV): their texts, one a line */
    ts_status st = ts_labeled_corpus(path, &text, &n);
    if (st) return st;
    if (n < 2) {
        free(text);
        return ts_error(TS_ERR_FORMAT, "%s: %zu bytes is too little text to train on", path, n);
    }
    if ((st = ts_check_text((const uint8_t *)text, n, path))) {
        free(text);
        return st;
    }
    /* the cache key covers the whole text and the tokenizer */
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)text[i]) * 1099511628211ull;
    h = mix64(h ^ mix64(tok->fingerprint) ^ n);
    char tokpath[4096];
    snprintf(tokpath, sizeof tokpath, "%s/%016llx.tok", cache_dir, (unsigned long long)h);
    int reuse = 0;
    if (ts_is_token_file(tokpath)) {
        reuse = ts_dataset_open_tokens(ds, tokpath, val_fraction) == TS_OK;
        if (!reuse) ts_log(TS_LOG_WARN, "rebuilding the unusable token cache %s: %s", tokpath, ts_last_error());
    }
    if (!reuse) {
        int32_t *ids = NULL;
        size_t count = 0;
        st = ts_mkdir_p(cache_dir);
        if (!st) st = ts_tokenizer_encode(tok, (const uint8_t *)text, n, &ids, &count);
        if (!st) st = ts_tokens_write(tokpath, ids, count, tok->vocab_size, tok->fingerprint);
        free(ids);
        if (!st) st = ts_dataset_open_tokens(ds, tokpath, val_fraction);
    }
    free(text);
    if (st) return ts_error_context(st, "tokenizing %s", path);
    snprintf(ds->name, sizeof ds->name, "%s", path);
    return TS_OK;
}
