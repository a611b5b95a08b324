/* Helper for the PyTorch parity test: on one device, write
 *   init.safetensors   initial weights
 *   batch.safetensors  tokens and targets (i32 [B, T]; -1 = ignored)
 *   grads.safetensors  gradients of the mean loss at the initial weights
 *   final.safetensors  weights after STEPS clipped AdamW steps on the batch
 *   results.json       loss, per-step losses and gradient norms, settings
 * usage: gpt_dump OUT_DIR DEVICE [DTYPE]
 * DTYPE (bf16, fp16) sets the device's matrix products
 * (ts_device_set_matmul_dtype); exit status 3 if the device has none. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/tessera.h"

#define STEPS 10

static int fail(const char *what)
{
    fprintf(stderr, "gpt_dump: %s: %s\n", what, ts_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s OUT_DIR DEVICE [DTYPE]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    ts_device *dev;
    if (ts_device_open(argv[2], &dev)) return fail("device");
    if (argc > 3) {
        ts_status st = ts_device_set_matmul_dtype(dev, (ts_dtype)ts_dtype_parse(argv[3]));
        if (st == TS_ERR_UNSUPPORTED) {
            fprintf(stderr, "gpt_dump: %s\n", ts_last_error());
            return 3;
        }
        if (st) return fail("dtype");
    }
    ts_gpt_config c = {.vocab_size = 67, .max_seq_len = 16, .n_layer = 2, .n_head = 4, .n_embd = 32};
    enum { B = 3, T = 16 };
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, clip = 1.0f;
    ts_gpt m;
    ts_optimizer o;
    if (ts_gpt_create(&m, dev, &c) || ts_gpt_init_weights(&m, 21)) return fail("model");
    if (ts_optimizer_create(&o, dev, TS_OPTIM_ADAMW, m.num_params, b1, b2, eps, wd)) return fail("optimizer");
    int32_t tok[B * T], tgt[B * T];
    uint64_t s = 99;
    for (int i = 0; i < B * T; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int32_t)((s >> 33) % (uint64_t)c.vocab_size);
    }
    for (int i = 0; i < B * T; i++) tgt[i] = (i % T == T - 1) ? -1 : tok[i + 1]; /* next token */
    tgt[5] = -1;
    char path[4096];
    snprintf(path, sizeof path, "%s/init.safetensors", dir);
    if (ts_gpt_save(&m, path, NULL)) return fail("saving weights");
    ts_st_writer *w;
    ts_st_writer_new(&w);
    ts_st_writer_add_host(w, "tokens", TS_I32, TS_SHAPE(B, T), tok);
    ts_st_writer_add_host(w, "targets", TS_I32, TS_SHAPE(B, T), tgt);
    snprintf(path, sizeof path, "%s/batch.safetensors", dir);
    if (ts_st_writer_write(w, path)) return fail("saving the batch");
    ts_st_writer_free(w);

    float losses[STEPS + 1];
    double norms[STEPS];
    for (int step = 0; step <= STEPS; step++) {
        if (ts_gpt_zero_grad(&m) || ts_gpt_forward(&m, tok, tgt, B, T, &losses[step])) return fail("forward");
        if (step == STEPS) break; /* the loss after the last update */
        if (ts_gpt_backward(&m, 1.0f)) return fail("backward");
        if (step == 0) {
            snprintf(path, sizeof path, "%s/grads.safetensors", dir);
            if (ts_gpt_save_blob(&m, &m.grads, path, NULL)) return fail("saving gradients");
        }
        double sq;
        if (ts_grad_sqnorm(&m.grads, &sq)) return fail("norm");
        norms[step] = sqrt(sq);
        if (ts_gpt_optimizer_step(&m, &o, lr, ts_clip_scale(norms[step], clip)))
            return fail("optimizer");
    }
    snprintf(path, sizeof path, "%s/final.safetensors", dir);
    if (ts_gpt_save(&m, path, NULL)) return fail("saving final weights");
    snprintf(path, sizeof path, "%s/results.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return fail("results");
    fprintf(f, "{\"device\": \"%s\", \"lr\": %.9g, \"beta1\": %.9g, \"beta2\": %.9g, \"eps\": %.9g, "
               "\"weight_decay\": %.9g, \"grad_clip\": %.9g, \"losses\": [",
            ts_device_get_info(dev)->id, lr, b1, b2, eps, wd, clip);
    for (int i = 0; i <= STEPS; i++) fprintf(f, "%s%.9g", i ? ", " : "", losses[i]);
    fprintf(f, "], \"grad_norms\": [");
    for (int i = 0; i < STEPS; i++) fprintf(f, "%s%.9g", i ? ", " : "", norms[i]);
    fprintf(f, "]}\n");
    fclose(f);
    ts_optimizer_free(&o);
    ts_gpt_free(&m);
    ts_shutdown();
    return 0;
}
