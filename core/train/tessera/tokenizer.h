/* Tokenizers: byte-level (256 tokens, the default), byte-level BPE that
 * tessera trains on a corpus, and whole words with a byte fallback.
 *
 * BPE: text is first cut into chunks the way GPT-2 does (an optional leading
 * space plus a run of letters, of digits, or of other symbols; runs of
 * whitespace), so merges never cross word boundaries. Training repeatedly
 * merges the most frequent adjacent pair (ties to the smaller pair, so the
 * result is deterministic). Token ids 0..255 are bytes; 256+i is merge i.
 * Any byte sequence encodes, and decode(encode(x)) == x.
 *
 * Words: text is cut into runs of letters, of digits, of other symbols, and
 * single whitespace bytes (a space is its own token, so " data" and "data"
 * are one word: a small classifier learns each word once). Every run seen
 * at least twice in the corpus is a token (the most frequent first, up to
 * the vocabulary size); any other run is its bytes. Token ids 0..255 are
 * bytes, 256+i is word i; decode(encode(x)) == x.
 *
 * File format (text): "tessera-tokenizer 1", "type byte|bpe|word",
 * "vocab_size N", "merges M", then M lines "a b"; a word tokenizer has no
 * merges and then "words W" and W lines, each word's bytes in hex. */
#ifndef TESSERA_TOKENIZER_H
#define TESSERA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "tessera/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { TS_TOKENIZER_BYTE = 0, TS_TOKENIZER_BPE = 1, TS_TOKENIZER_WORD = 2 } ts_tokenizer_kind;

typedef struct ts_tokenizer {
    ts_tokenizer_kind kind;
    int32_t vocab_size;
    int32_t n_merges;
    int32_t (*merges)[2];   /* merge i makes token 256+i from (a, b) */
    int32_t n_words;        /* word tokenizer: tokens 256.. are whole words */
    uint8_t **bytes;        /* bytes of each token */
    int32_t *len;
    struct ts_merge_table *table; /* (a, b) -> merge rank; a word's bytes -> its id */
    uint64_t fingerprint;   /* hash of the merges or words: identifies the tokenizer */
} ts_tokenizer;

ts_status ts_tokenizer_init_byte(ts_tokenizer *t);
/* Train a BPE tokenizer with vocab_size >= 256 tokens on text. Stops early
 * (fewer tokens) when no pair occurs twice. */
ts_status ts_tokenizer_train_bpe(ts_tokenizer *t, const uint8_t *text, size_t n, int32_t vocab_size);
/* Train a word tokenizer of at most vocab_size >= 256 tokens on text: the
 * runs seen at least twice, the most frequent first (ties in byte order). */
ts_status ts_tokenizer_train_words(ts_tokenizer *t, const uint8_t *text, size_t n, int32_t vocab_size);
/* A tokenizer from a spec: "byte", "bpe:N" or "word:N" (trained on the n
 * bytes of text), or a tokenizer file's path. */
ts_status ts_tokenizer_from_spec(ts_tokenizer *t, const char *spec, const uint8_t *text, size_t n);
/* The tokenizer file's text (ts_tokenizer_save writes it); caller frees. */
ts_status ts_tokenizer_serialize(const ts_tokenizer *t, char **text, size_t *len);
ts_status ts_tokenizer_save(const ts_tokenizer *t, const char *path);
ts_status ts_tokenizer_load(ts_tokenizer *t, const char *path);
/* "byte", "bpe:N" or "word:N" (train on the corpus), or a tokenizer file path. */
int ts_tokenizer_spec_is_file(const char *spec);
void ts_tokenizer_free(ts_tokenizer *t);

/* Encode n bytes; *ids is malloc'ed (caller frees). */
ts_status ts_tokenizer_encode(const ts_tokenizer *t, const uint8_t *text, size_t n, int32_t **ids,
                              size_t *count);
/* The unit of text each of the count tokens that ts_tokenizer_encode made
 * of text came from: start[i] and len[i] in bytes. A unit is a word
 * tokenizer's run (a word, an unknown run spelled in bytes, one space) or a
 * BPE chunk (" data"); the byte tokenizer cuts runs as the word tokenizer
 * does. An error if ids do not spell text. */
ts_status ts_tokenizer_units(const ts_tokenizer *t, const uint8_t *text, size_t n, const int32_t *ids,
                             size_t count, uint32_t *start, uint32_t *len);
/* fastText's subwords of a unit: the character 2- to 5-grams of "<unit>"
 * (ASCII lowercased, surrounding whitespace trimmed unless that is all there
 * is), each hashed (32-bit FNV-1a) to one of `buckets`; position by position
 * (the 2- to 5-grams starting at '<', then at the next byte, ...) so that
 * at most max of a long unit keep its beginning. Returns how many it wrote. */
int ts_char_ngrams(const uint8_t *unit, size_t len, int64_t buckets, int32_t *out, int max);
/* Decode ids into a malloc'ed NUL-terminated buffer (*len bytes, which may
 * contain any bytes). Ids outside the vocabulary are an error. */
ts_status ts_tokenizer_decode(const ts_tokenizer *t, const int32_t *ids, size_t count, char **text,
                              size_t *len);

#ifdef __cplusplus
}
#endif
#endif
