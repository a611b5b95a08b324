/* A training run that dies on purpose, for the end-to-end tests: it trains
 * with the settings of an existing run's checkpoint (state.json) into
 * another directory and kills itself with SIGKILL after a given step, or
 * in the middle of writing a given step's checkpoint, as a crash or
 * `kill -9` would. The library has no fault hooks of its own.
 *
 * usage: train_fault SETTINGS_STATE_JSON OUT_DIR after-step|in-save N [--resume] */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tessera/checkpoint.h"
#include "tessera/tessera.h"
#include "tessera/train.h"

static int64_t g_at;
static int g_in_save;

static void after_step(void *ctx, int64_t step, float loss, float lr, double norm)
{
    (void)ctx, (void)loss, (void)lr, (void)norm;
    if (!g_in_save && step + 1 == g_at) kill(getpid(), SIGKILL);
}

static void in_save(void *ctx, const char *tmp, int64_t step)
{
    (void)ctx, (void)tmp;
    if (g_in_save && step == g_at) kill(getpid(), SIGKILL);
}

int main(int argc, char **argv)
{
    if (argc < 5 || (strcmp(argv[3], "after-step") && strcmp(argv[3], "in-save"))) {
        fprintf(stderr, "usage: %s CHECKPOINT_DIR OUT_DIR after-step|in-save N [--resume]\n", argv[0]);
        return 2;
    }
    ts_train_state *s = calloc(1, sizeof *s);
    if (!s || ts_checkpoint_read_state(argv[1], s) != TS_OK) {
        fprintf(stderr, "train_fault: %s\n", ts_last_error());
        return 1;
    }
    ts_train_config c;
    ts_train_defaults(&c);
    if (ts_train_settings_parse(s->settings, &c) != TS_OK) {
        fprintf(stderr, "train_fault: %s\n", ts_last_error());
        return 1;
    }
    free(s);
    snprintf(c.out_dir, sizeof c.out_dir, "%s", argv[2]);
    c.log_path[0] = '\0';
    snprintf(c.device, sizeof c.device, "cpu");
    c.resume = argc > 5 && !strcmp(argv[5], "--resume");
    c.progress = 0;
    g_in_save = !strcmp(argv[3], "in-save");
    g_at = atoll(argv[4]);
    c.on_step = after_step;
    c.on_checkpoint = in_save;
    ts_train_result r;
    if (ts_train(&c, &r) != TS_OK) {
        fprintf(stderr, "train_fault: %s\n", ts_last_error());
        return 1;
    }
    fprintf(stderr, "train_fault: the run ended without reaching its fault\n");
    return 3;
}
