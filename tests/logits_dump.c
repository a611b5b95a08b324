/* Helper for the interchange test: the logits of a tessera model on given
 * token ids, as JSON ([T][V] floats), on the CPU backend.
 * usage: logits_dump CHECKPOINT_DIR TOKEN... */
#include <stdio.h>
#include <stdlib.h>

#include "tessera/tessera.h"

static int fail(const char *what)
{
    fprintf(stderr, "logits_dump: %s: %s\n", what, ts_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s CHECKPOINT_DIR TOKEN...\n", argv[0]);
        return 2;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", argv[1]);
    ts_gpt_config cfg;
    ts_device *cpu;
    ts_gpt m;
    if (ts_gpt_read_config(path, &cfg) || ts_device_open("cpu", &cpu) || ts_gpt_create(&m, cpu, &cfg))
        return fail("opening the model");
    if (ts_gpt_load(&m, path)) return fail("loading the weights");
    int T = argc - 2;
    int32_t *tok = calloc((size_t)T, sizeof *tok);
    float *row = malloc((size_t)cfg.vocab_size * sizeof *row);
    for (int t = 0; t < T; t++) tok[t] = atoi(argv[2 + t]);
    if (ts_gpt_forward(&m, tok, NULL, 1, T, NULL)) return fail("forward");
    printf("[");
    for (int t = 0; t < T; t++) {
        if (ts_gpt_read_logits(&m, 0, t, row)) return fail("reading logits");
        printf("%s[", t ? ",\n" : "");
        for (int64_t v = 0; v < cfg.vocab_size; v++) printf("%s%.9g", v ? "," : "", row[v]);
        printf("]");
    }
    printf("]\n");
    free(tok), free(row);
    ts_gpt_free(&m);
    ts_shutdown();
    return 0;
}
