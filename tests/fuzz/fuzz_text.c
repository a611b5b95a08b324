/* Text corpora: ts_check_text (UTF-8 without NUL bytes) and, for text that
 * passes, the byte tokenizer and a BPE and a word tokenizer trained on it
 * (300 tokens), each encoding and decoding the text back. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "tessera/data.h"
#include "tessera/tokenizer.h"

static void round_trip(const ts_tokenizer *tok, const uint8_t *text, size_t n)
{
    int32_t *ids = NULL;
    size_t count = 0;
    if (ts_tokenizer_encode(tok, text, n, &ids, &count) != TS_OK) fuzz_fail("encode failed");
    char *back = NULL;
    size_t len = 0;
    if (ts_tokenizer_decode(tok, ids, count, &back, &len) != TS_OK) fuzz_fail("decode refused encode's tokens");
    if (len != n || memcmp(back, text, n) != 0) fuzz_fail("decode(encode(x)) != x");
    free(back);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t n = size < 4096 ? size : 4096; /* BPE training is quadratic-ish: keep runs fast */
    if (ts_check_text(data, n, "fuzz") != TS_OK) {
        ts_clear_error();
        return 0;
    }
    ts_tokenizer tok;
    if (ts_tokenizer_init_byte(&tok) != TS_OK) fuzz_fail("byte tokenizer failed");
    round_trip(&tok, data, n);
    ts_tokenizer_free(&tok);
    if (ts_tokenizer_train_bpe(&tok, data, n, 300) == TS_OK) {
        if (tok.vocab_size < 256 || tok.vocab_size > 300) fuzz_fail("BPE vocabulary size out of range");
        round_trip(&tok, data, n);
        ts_tokenizer_free(&tok);
    }
    if (ts_tokenizer_train_words(&tok, data, n, 300) == TS_OK) {
        if (tok.vocab_size < 256 || tok.vocab_size > 300) fuzz_fail("word vocabulary size out of range");
        round_trip(&tok, data, n);
        ts_tokenizer_free(&tok);
    }
    ts_clear_error();
    return 0;
}
