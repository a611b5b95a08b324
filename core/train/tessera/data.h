/* Training data: token files, text corpora tokenized once, batches.
 *
 * A token file is a 64-byte header ("TSTOKENS", version, bytes per token,
 * vocabulary size, token count, tokenizer fingerprint) and the tokens as
 * little-endian u16 or u32. Training memory-maps it. Opening checks the
 * header, the size and every token against the vocabulary.
 *
 * Batches are a pure function of (seed, sample index): row r of a batch
 * whose first sample is s is sample s + r, a window of T+1 tokens at an
 * offset hashed from (seed, s + r). Resuming at a step or splitting a batch
 * over data-parallel ranks therefore reproduces exactly the samples of an
 * uninterrupted single process. Validation batches are consecutive windows
 * of the held-out tail, the same every time. */
#ifndef TESSERA_DATA_H
#define TESSERA_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "tessera/status.h"
#include "tessera/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { TS_SPLIT_TRAIN = 0, TS_SPLIT_VAL = 1 } ts_split;

typedef struct ts_dataset ts_dataset;
struct ts_dataset {
    char name[256];
    int64_t vocab_size;
    int64_t train_tokens, val_tokens;
    uint64_t fingerprint;  /* identifies the data (file contents and tokenizer) */
    uint64_t tokenizer_fingerprint; /* of the tokenizer that made a token file; 0 if unknown (llm.c) */
    /* Fill inputs and targets ([B, T] each, targets < 0 are ignored). */
    ts_status (*batch)(ts_dataset *ds, ts_split split, uint64_t seed, int64_t first_sample,
                       int64_t B, int64_t T, int32_t *inputs, int32_t *targets);
    void (*close)(ts_dataset *ds);
    void *ctx;
};

ts_status ts_dataset_batch(ts_dataset *ds, ts_split split, uint64_t seed, int64_t first_sample,
                           int64_t B, int64_t T, int32_t *inputs, int32_t *targets);
void ts_dataset_close(ts_dataset *ds);

/* Write a token file atomically. */
ts_status ts_tokens_write(const char *path, const int32_t *ids, size_t count, int64_t vocab_size,
                          uint64_t tokenizer_fingerprint);
/* Open a token file (tessera's, or llm.c's dev/data .bin with its
 * 20240520 header: GPT-2 or LLaMA 3 tokens); the last val_fraction of it
 * (0 to 1: 1 = all of it) is the validation split. */
ts_status ts_dataset_open_tokens(ts_dataset *ds, const char *path, double val_fraction);
/* Open a text corpus: tokenized once with tok into cache_dir (reused while
 * the text and the tokenizer are unchanged), then as above. */
ts_status ts_dataset_open_text(ts_dataset *ds, const char *path, const ts_tokenizer *tok,
                               const char *cache_dir, double val_fraction);
/* Is this a token file, tessera's or llm.c's (by its magic)? */
int ts_is_token_file(const char *path);
/* Text must be UTF-8 without NUL bytes; else an error naming the file and
 * the byte offset. */
ts_status ts_check_text(const uint8_t *s, size_t n, const char *name);
/* Where text is tokenized once and kept: TESSERA_DATA_CACHE,
 * $XDG_CACHE_HOME/tessera/tokens, ~/.cache/tessera/tokens. */
void ts_data_cache_dir(char *out, size_t n);

#ifdef __cplusplus
}
#endif
#endif
