/* Token files (tessera's TSTOKENS and llm.c's 20240520 header):
 * ts_dataset_open_tokens, then a small training and validation batch. */
#include <string.h>

#include "fuzz_common.h"
#include "tessera/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("tokens.bin", data, size);
    (void)ts_is_token_file(path);
    /* 0, 0.25, ..., 1: the validation share varies with the input */
    double val_fraction = (double)(size % 5) / 4.0;
    ts_dataset ds;
    if (ts_dataset_open_tokens(&ds, path, val_fraction) == TS_OK) {
        if (ds.train_tokens < 0 || ds.val_tokens < 0 || ds.vocab_size < 1) fuzz_fail("bad dataset sizes");
        enum { B = 2, T = 4 };
        int32_t inputs[B * T], targets[B * T];
        for (int split = TS_SPLIT_TRAIN; split <= TS_SPLIT_VAL; split++) {
            for (int64_t first = 0; first < 3; first += 2) {
                if (ts_dataset_batch(&ds, (ts_split)split, 1337 + (uint64_t)size, first, B, T, inputs,
                                     targets) != TS_OK)
                    continue;
                for (int i = 0; i < B * T; i++)
                    if (inputs[i] < 0 || inputs[i] >= ds.vocab_size || targets[i] < 0 ||
                        targets[i] >= ds.vocab_size)
                        fuzz_fail("batch token outside the vocabulary");
            }
        }
        ts_dataset_close(&ds);
    }
    ts_clear_error();
    return 0;
}
