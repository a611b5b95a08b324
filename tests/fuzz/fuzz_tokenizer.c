/* Tokenizer files: ts_tokenizer_load, then encode the input's first bytes
 * with what was loaded and decode them back (decode(encode(x)) == x). */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "tessera/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("tokenizer.txt", data, size);
    ts_tokenizer tok;
    if (ts_tokenizer_load(&tok, path) == TS_OK) {
        size_t n = size < 512 ? size : 512;
        int32_t *ids = NULL;
        size_t count = 0;
        if (ts_tokenizer_encode(&tok, data, n, &ids, &count) == TS_OK) {
            for (size_t i = 0; i < count; i++)
                if (ids[i] < 0 || ids[i] >= tok.vocab_size) fuzz_fail("encode made a token outside the vocabulary");
            char *text = NULL;
            size_t len = 0;
            if (ts_tokenizer_decode(&tok, ids, count, &text, &len) != TS_OK) fuzz_fail("decode refused encode's tokens");
            if (len != n || memcmp(text, data, n) != 0) fuzz_fail("decode(encode(x)) != x");
            free(text);
            free(ids);
        }
        ts_tokenizer_free(&tok);
    }
    ts_clear_error();
    return 0;
}
