/* Helper for the classifier's PyTorch parity test: on one device, for one
 * pooling and attention, write
 *   init.safetensors   the classifier's weights (trunk as a GPT's, score.*)
 *   batch.safetensors  tokens (i32 [B, T], right-padded with random tokens),
 *                      lengths and labels (i32 [B]), class weights (f32 [B])
 *   grads.safetensors  gradients of the class-weighted mean cross-entropy
 *   results.json       the loss and the logits
 * With LM_WEIGHT, the loss adds LM_WEIGHT times the mean language-model
 * loss of the sequences (ts_classifier_lm_loss), results.json its value.
 * With NGRAMS buckets, the classifier has a table of character n-grams and
 * each position reads p % 5 of its rows (repeats and padding included);
 * batch.safetensors then holds ngram_off (i32 [B*T+1]) and ngrams.
 * usage: classifier_dump OUT_DIR DEVICE last|mean|max causal|bidirectional [LM_WEIGHT [NGRAMS]] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/classifier.h"
#include "tessera/tessera.h"

enum { B = 4, T = 16, K = 4 };

static int fail(const char *what)
{
    fprintf(stderr, "classifier_dump: %s: %s\n", what, ts_last_error());
    return 1;
}

static uint64_t next(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

int main(int argc, char **argv)
{
    if (argc < 5 || ts_pool_parse(argv[3]) < 0 || (strcmp(argv[4], "causal") && strcmp(argv[4], "bidirectional"))) {
        fprintf(stderr, "usage: %s OUT_DIR DEVICE last|mean|max causal|bidirectional [LM_WEIGHT [NGRAMS]]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    ts_device *dev;
    if (ts_device_open(argv[2], &dev)) return fail("device");
    ts_classifier_config c = {.gpt = {.vocab_size = 67, .max_seq_len = 16, .n_layer = 2, .n_head = 4, .n_embd = 32},
                              .n_classes = K, .pool = (ts_pool)ts_pool_parse(argv[3]),
                              .bidirectional = !strcmp(argv[4], "bidirectional"),
                              .char_ngrams = argc > 6 ? atoll(argv[6]) : 0};
    ts_classifier m;
    if (ts_classifier_create(&m, dev, &c) || ts_classifier_init_weights(&m, 21)) return fail("model");
    /* a head of random weights (a new one is zero, which would leave the
     * trunk without gradient) */
    uint64_t s = 77;
    float head[K * 32 + K];
    for (int i = 0; i < K * 32 + K; i++) head[i] = ((float)(next(&s) % 2001) - 1000.0f) / 4000.0f;
    if (ts_tensor_write(&m.head_w, head, K * 32 * sizeof *head) || ts_tensor_write(&m.head_b, head + K * 32, K * sizeof *head))
        return fail("head");
    int32_t tok[B * T], len[B] = {16, 5, 11, 1}, labels[B] = {3, 0, 1, 2};
    float w[B] = {1.0f, 0.5f, 2.0f, 1.5f}, logits[B * K], dlogits[B * K];
    for (int i = 0; i < B * T; i++) tok[i] = (int32_t)(next(&s) % (uint64_t)c.gpt.vocab_size);
    double W = 0, lsum;
    for (int b = 0; b < B; b++) W += w[b];
    int64_t G = c.char_ngrams, off[B * T + 1];
    int32_t off32[B * T + 1], ng[B * T * 4];
    off[0] = off32[0] = 0;
    for (int p = 0; p < B * T; p++) {
        off[p + 1] = off[p] + p % 5, off32[p + 1] = (int32_t)off[p + 1];
        for (int64_t j = off[p]; G && j < off[p + 1]; j++) ng[j] = (int32_t)(next(&s) % (uint64_t)G);
    }
    if (ts_classifier_forward_ngrams(&m, tok, len, G ? off : NULL, ng, B, T, logits)) return fail("forward");
    ts_classifier_cross_entropy(logits, B, K, labels, w, 1.0 / W, &lsum, dlogits, NULL);
    double lm_weight = argc > 5 ? atof(argv[5]) : 0.0, lm_sum = 0.0, loss = lsum / W;
    int64_t lm_n = 0, predicted = 0;
    for (int b = 0; b < B; b++) predicted += len[b] - 1;
    if (lm_weight > 0) {
        if (ts_classifier_lm_loss(&m, tok, len, (float)(lm_weight / (double)predicted), &lm_sum, &lm_n))
            return fail("LM loss");
        if (lm_n != predicted) {
            fprintf(stderr, "classifier_dump: the LM loss counted %lld tokens, not %lld\n", (long long)lm_n,
                    (long long)predicted);
            return 1;
        }
        loss += lm_weight * lm_sum / (double)lm_n;
    }
    if (ts_classifier_backward(&m, dlogits)) return fail("backward");

    char path[4096];
    snprintf(path, sizeof path, "%s/init.safetensors", dir);
    if (ts_classifier_save(&m, path, NULL)) return fail("saving weights");
    snprintf(path, sizeof path, "%s/grads.safetensors", dir);
    const ts_tensor *blob = &m.grads;
    const char *prefix = "";
    if (ts_classifier_save_blobs(&m, &blob, &prefix, 1, path, NULL)) return fail("saving gradients");
    ts_st_writer *sw;
    if (ts_st_writer_new(&sw)) return fail("writer");
    ts_st_writer_add_host(sw, "tokens", TS_I32, TS_SHAPE(B, T), tok);
    ts_st_writer_add_host(sw, "lengths", TS_I32, TS_SHAPE(B), len);
    ts_st_writer_add_host(sw, "labels", TS_I32, TS_SHAPE(B), labels);
    ts_st_writer_add_host(sw, "weights", TS_F32, TS_SHAPE(B), w);
    if (G) ts_st_writer_add_host(sw, "ngram_off", TS_I32, TS_SHAPE(B * T + 1), off32);
    if (G) ts_st_writer_add_host(sw, "ngrams", TS_I32, TS_SHAPE(off[B * T]), ng);
    snprintf(path, sizeof path, "%s/batch.safetensors", dir);
    if (ts_st_writer_write(sw, path)) return fail("saving the batch");
    ts_st_writer_free(sw);
    snprintf(path, sizeof path, "%s/results.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return fail("results");
    fprintf(f, "{\"device\": \"%s\", \"loss\": %.9g, \"lm_loss\": %.9g, \"logits\": [", ts_device_get_info(dev)->id,
            loss, lm_n ? lm_sum / (double)lm_n : 0.0);
    for (int i = 0; i < B * K; i++) fprintf(f, "%s%.9g", i ? ", " : "", logits[i]);
    fprintf(f, "]}\n");
    fclose(f);
    ts_classifier_free(&m);
    ts_shutdown();
    return 0;
}
