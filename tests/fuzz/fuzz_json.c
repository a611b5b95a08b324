/* The JSON reader behind every header and settings file: ts_json_parse on
 * the raw bytes (not NUL-terminated), a walk over what it returns, and
 * ts_json_object_diff on the two parts of the input (split at its first
 * NUL byte, else in halves). */
#include <stdlib.h>
#include <string.h>

#include "../../core/json.h"
#include "fuzz_common.h"

static void walk(const ts_json *j, int depth)
{
    if (depth > 200) fuzz_fail("JSON nested deeper than the parser allows");
    char buf[64];
    switch (j->type) {
    case TS_JSON_STRING:
        if (!j->string) fuzz_fail("JSON string without text");
        (void)ts_json_escape(buf, sizeof buf, j->string);
        break;
    case TS_JSON_NUMBER: (void)ts_json_float(buf, sizeof buf, j->number); break;
    case TS_JSON_OBJECT:
        for (size_t i = 0; i < j->count; i++) {
            if (!j->keys[i]) fuzz_fail("JSON member without a name");
            if (ts_json_get(j, j->keys[i]) == NULL) fuzz_fail("JSON member not found by name");
            (void)ts_json_get_int(j, j->keys[i], 0);
            (void)ts_json_get_num(j, j->keys[i], 0);
            (void)ts_json_get_str(j, j->keys[i], NULL);
        }
        /* fall through */
    case TS_JSON_ARRAY:
        for (size_t i = 0; i < j->count; i++) walk(&j->items[i], depth + 1);
        break;
    default: break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ts_json *j = NULL;
    if (ts_json_parse((const char *)data, size, &j) == TS_OK) {
        walk(j, 0);
        ts_json_free(j);
    } else if (j) {
        fuzz_fail("failed parse left a tree behind");
    }
    ts_clear_error();

    const uint8_t *nul = memchr(data, 0, size);
    size_t na = nul ? (size_t)(nul - data) : size / 2;
    size_t nb_start = nul ? na + 1 : na;
    char *a = fuzz_strndup(data, na), *b = fuzz_strndup(data + nb_start, size - nb_start);
    char out[256], tiny[8];
    static const char *const only[] = {"seq_len", "n_embd", "data", "", NULL};
    int d = ts_json_object_diff(a, b, NULL, out, sizeof out);
    if (d >= 0 && memchr(out, '\0', sizeof out) == NULL) fuzz_fail("diff text not NUL-terminated");
    if (ts_json_object_diff(a, b, only, tiny, sizeof tiny) > d) fuzz_fail("diff of some keys found more");
    /* counts may differ with duplicate keys, whether anything differs may not */
    if (d >= 0 && (ts_json_object_diff(b, a, NULL, NULL, 0) > 0) != (d > 0)) fuzz_fail("diff is not symmetric");
    if (d >= 0 && ts_json_object_diff(a, a, NULL, out, sizeof out) != 0) fuzz_fail("object differs from itself");
    ts_clear_error();
    free(a);
    free(b);
    return 0;
}
