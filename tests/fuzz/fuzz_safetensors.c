/* safetensors files: ts_safetensors_open (header bounds, JSON, dtypes,
 * shapes, byte ranges) and ts_gpt_read_config (the model config in the
 * __metadata__).
 *
 * An input is the file, except one that starts with '{': that is the JSON
 * header, then (after a NUL byte) the data, and the harness writes the
 * 8-byte header length in front. A mutation inside the JSON then keeps a
 * consistent length, so the fuzzer explores the header's structure too. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "tessera/gpt.h"
#include "tessera/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path;
    if (size && data[0] == '{') {
        const uint8_t *nul = memchr(data, 0, size);
        size_t hlen = nul ? (size_t)(nul - data) : size, rest = nul ? size - hlen - 1 : 0;
        uint8_t *file = malloc(8 + hlen + rest);
        if (!file) abort();
        for (int i = 0; i < 8; i++) file[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
        memcpy(file + 8, data, hlen);
        if (rest) memcpy(file + 8 + hlen, nul + 1, rest);
        path = fuzz_write("model.safetensors", file, 8 + hlen + rest);
        free(file);
    } else {
        path = fuzz_write("model.safetensors", data, size);
    }
    ts_safetensors st;
    if (ts_safetensors_open(path, &st) == TS_OK) {
        /* what open promises: every tensor lies inside the file */
        volatile uint8_t sink = 0;
        for (size_t i = 0; i < st.count; i++) {
            const ts_st_entry *e = &st.entries[i];
            if (e->ndim < 0 || e->ndim > TS_ST_MAX_DIMS || e->begin > e->end ||
                st.data_start + e->end > st.size)
                fuzz_fail("safetensors entry outside the file");
            if (ts_safetensors_find(&st, e->name) == NULL) fuzz_fail("safetensors entry not found by name");
            const uint8_t *p = ts_safetensors_data(&st, e);
            if (e->end > e->begin) sink ^= p[0] ^ p[e->end - e->begin - 1];
        }
        for (size_t i = 0; i < st.meta_count; i++)
            if (ts_safetensors_meta(&st, st.meta_keys[i]) == NULL) fuzz_fail("metadata key not found");
        (void)ts_safetensors_meta(&st, "config");
        (void)sink;
        ts_safetensors_close(&st);
    }
    ts_clear_error();
    ts_gpt_config cfg;
    if (ts_gpt_read_config(path, &cfg) == TS_OK && ts_gpt_config_check(&cfg) != TS_OK)
        fuzz_fail("ts_gpt_read_config accepted an invalid config");
    ts_clear_error();
    return 0;
}
