/* Training state: ts_checkpoint_read_state (DIR/state.json) and
 * ts_train_settings_parse, on the input and on the settings read back. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "tessera/checkpoint.h"
#include "tessera/train.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_write("state.json", data, size);
    ts_train_state *state = malloc(sizeof *state);
    ts_train_config *cfg = malloc(sizeof *cfg);
    if (!state || !cfg) abort();
    if (ts_checkpoint_read_state(fuzz_dir(), state) == TS_OK) {
        if (memchr(state->settings, '\0', sizeof state->settings) == NULL)
            fuzz_fail("state settings not NUL-terminated");
        ts_train_defaults(cfg);
        (void)ts_train_settings_parse(state->settings, cfg);
    }
    ts_clear_error();
    char *text = fuzz_strndup(data, size);
    ts_train_defaults(cfg);
    if (ts_train_settings_parse(text, cfg) == TS_OK) {
        /* what was read back is written out (into a buffer of the size
         * state.json and the run keep) and must read back */
        char *again = malloc(sizeof state->settings);
        if (!again) abort();
        ts_train_settings_json(cfg, again, sizeof state->settings);
        ts_train_config *cfg2 = malloc(sizeof *cfg2);
        if (!cfg2) abort();
        ts_train_defaults(cfg2);
        if (ts_train_settings_parse(again, cfg2) != TS_OK) fuzz_fail("settings written by tessera do not parse");
        free(cfg2);
        free(again);
    }
    ts_clear_error();
    free(text);
    free(cfg);
    free(state);
    return 0;
}
