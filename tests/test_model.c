/* The GPT model: whole-model gradients against finite differences of a
 * double-precision host model, agreement between devices, gradient
 * accumulation, weight files and their validation, optimizer decay and the
 * learning-rate schedule. Then the sequence classifier on its trunk: its
 * loss and every gradient against the double-precision classifier, and
 * padding that changes nothing. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "reference_model.h"
#include "tessera/classifier.h"
#include "testutil.h"

static const ts_gpt_config tiny = {.vocab_size = 13, .max_seq_len = 8, .n_layer = 2, .n_head = 2, .n_embd = 8};

/* Random parameters of moderate size (layernorm gains near 1), so every
 * path carries gradient. */
static ts_status randomize(ts_gpt *m, uint64_t seed, float *host)
{
    rng_t r;
    rng_seed(&r, seed);
    for (int i = 0; i < m->ntensors; i++) {
        const ts_gpt_tensor *p = &m->tensors[i];
        int gain = p->kind == TS_GPT_LN1W || p->kind == TS_GPT_LN2W || p->kind == TS_GPT_LNFW;
        for (int64_t k = 0; k < p->rows * p->cols; k++)
            host[p->offset + k] = gain ? rng_uniform(&r, 0.7f, 1.3f) : rng_uniform(&r, -0.4f, 0.4f);
    }
    return ts_tensor_write(&m->params, host, (size_t)m->num_params * sizeof *host);
}

static void make_batch(rng_t *r, int64_t n, int64_t V, int32_t *tok, int32_t *tgt)
{
    for (int64_t i = 0; i < n; i++) {
        tok[i] = (int32_t)(rng_next(r) % (uint64_t)V);
        tgt[i] = (int32_t)(rng_next(r) % (uint64_t)V);
    }
}

static void grads_match_finite_differences(void *arg)
{
    ts_device *dev = arg;
    ts_gpt m;
    REQUIRE_OK(ts_gpt_create(&m, dev, &tiny));
    int64_t B = 2, T = 5, n = m.num_params;
    float *hp = malloc((size_t)n * sizeof *hp), *hg = malloc((size_t)n * sizeof *hg);
    REQUIRE_OK(randomize(&m, 7, hp));
    int32_t tok[10], tgt[10];
    rng_t r;
    rng_seed(&r, 8);
    make_batch(&r, B * T, tiny.vocab_size, tok, tgt);
    tgt[3] = -1; /* an ignored position */
    float loss;
    REQUIRE_OK(ts_gpt_forward(&m, tok, tgt, B, T, &loss));
    REQUIRE_OK(ts_gpt_backward(&m, 1.0f));
    REQUIRE_OK(ts_tensor_read(&m.grads, hg, (size_t)n * sizeof *hg));
    double *dp = to_double(hp, n), *fd = malloc((size_t)n * sizeof *fd);
    double ref_loss = ref_gpt_loss(&m, dp, tok, tgt, B, T);
    EXPECTF(fabs(loss - ref_loss) < 1e-5 * fabs(ref_loss), "loss %.9g vs double %.9g", loss, ref_loss);
    const double h = 1e-6;
    for (int64_t i = 0; i < n; i++) {
        double keep = dp[i];
        dp[i] = keep + h;
        double lp = ref_gpt_loss(&m, dp, tok, tgt, B, T);
        dp[i] = keep - h;
        double lm = ref_gpt_loss(&m, dp, tok, tgt, B, T);
        dp[i] = keep;
        fd[i] = (lp - lm) / (2 * h);
    }
    /* per parameter tensor, so a failure names the broken one */
    for (int k = 0; k < m.ntensors; k++) {
        const ts_gpt_tensor *p = &m.tensors[k];
        char what[160], name[96];
        snprintf(what, sizeof what, "gradient of %s", ts_gpt_tensor_name(p->kind, p->layer, name, sizeof name));
        check_close(what, hg + p->offset, fd + p->offset, p->rows * p->cols, 1e-10);
    }
    th_note("whole-model gradient NMSE against finite differences: %.2e over %lld parameters",
            nmse(hg, fd, n), (long long)n);
    free(hp), free(hg), free(dp), free(fd);
    ts_gpt_free(&m);
}

TEST(initial_loss_is_near_log_vocabulary)
{
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    ts_gpt_config c = {.vocab_size = 300, .max_seq_len = 32, .n_layer = 3, .n_head = 4, .n_embd = 64};
    ts_gpt m;
    REQUIRE_OK(ts_gpt_create(&m, cpu, &c));
    REQUIRE_OK(ts_gpt_init_weights(&m, 1));
    int32_t tok[64], tgt[64];
    rng_t r;
    rng_seed(&r, 2);
    make_batch(&r, 64, c.vocab_size, tok, tgt);
    float loss;
    REQUIRE_OK(ts_gpt_forward(&m, tok, tgt, 2, 32, &loss));
    EXPECTF(fabs(loss - log(300.0)) < 0.1, "initial loss %.4f, ln V = %.4f", loss, log(300.0));
    ts_gpt_free(&m);
}

/* Under bf16 products the logits are stored in bf16 where the device's
 * products take bf16 tensors (the activations made again when the dtype
 * changes): read back widened, each the fp32 logit rounded, give nearly
 * the fp32 loss. */
TEST(logits_read_back_from_bf16_storage)
{
    for (int d = 0; d < ts_device_count(); d++) {
        ts_device *dev = ts_device_at(d);
        ts_gpt_config c = {.vocab_size = 301, .max_seq_len = 16, .n_layer = 2, .n_head = 2, .n_embd = 32};
        ts_gpt m;
        REQUIRE_OK(ts_gpt_create(&m, dev, &c));
        REQUIRE_OK(ts_gpt_init_weights(&m, 3));
        int32_t tok[32], tgt[32];
        rng_t r;
        rng_seed(&r, 5);
        make_batch(&r, 32, c.vocab_size, tok, tgt);
        float l32, l16, a[301], b[301];
        REQUIRE_OK(ts_gpt_forward(&m, tok, tgt, 2, 16, &l32));
        REQUIRE_OK(ts_gpt_read_logits(&m, 1, 7, a));
        ts_status st = ts_device_set_matmul_dtype(dev, TS_BF16);
        if (st == TS_ERR_UNSUPPORTED) {
            ts_gpt_free(&m);
            continue;
        }
        REQUIRE_OK(st);
        st = ts_gpt_forward(&m, tok, tgt, 2, 16, &l16);
        if (!st) st = ts_gpt_read_logits(&m, 1, 7, b);
        REQUIRE_OK(ts_device_set_matmul_dtype(dev, TS_F32));
        REQUIRE_OK(st);
        bool bf16 = ts_linear_takes_bf16(dev);
        EXPECTF(m.acts.logits.dtype == (bf16 ? TS_BF16 : TS_F32), "%s: logits stored as %s", ts_device_get_info(dev)->id,
                ts_dtype_name(m.acts.logits.dtype));
        int64_t unrounded = 0;
        double err = 0, norm = 0;
        for (int j = 0; j < 301; j++) {
            uint32_t u;
            memcpy(&u, &b[j], 4);
            unrounded += bf16 && (u & 0xffff) != 0;
            err += (b[j] - a[j]) * (b[j] - a[j]), norm += a[j] * a[j];
        }
        EXPECTF(unrounded == 0, "%s: %lld logits read back are not bf16 values", ts_device_get_info(dev)->id,
                (long long)unrounded);
        EXPECTF(err / norm < 1e-4, "%s: bf16 logits against fp32: NMSE %.3g", ts_device_get_info(dev)->id, err / norm);
        EXPECTF(fabsf(l16 - l32) < 1e-2f * l32, "%s: loss %.6f in bf16, %.6f in fp32", ts_device_get_info(dev)->id,
                (double)l16, (double)l32);
        REQUIRE_OK(ts_gpt_forward(&m, tok, tgt, 2, 16, &l16)); /* fp32 again: the activations too */
        EXPECTF(m.acts.logits.dtype == TS_F32 && l16 == l32, "%s: back in fp32, logits %s, loss %.6f against %.6f",
                ts_device_get_info(dev)->id, ts_dtype_name(m.acts.logits.dtype), (double)l16, (double)l32);
        ts_gpt_free(&m);
    }
}

/* Under bf16 and fp16 products the activations that products read (the
 * layernorms' outputs, qkv, the attention's output, the MLP's hidden ones)
 * are stored in that type on every device, the logits only in bf16 (and
 * only where the products take bf16 tensors); the loss and the gradients
 * stay near fp32's. */
TEST(activations_stored_in_the_products_type)
{
    static const ts_dtype types[] = {TS_BF16, TS_F16};
    for (int d = 0; d < ts_device_count(); d++) {
        ts_device *dev = ts_device_at(d);
        const char *id = ts_device_get_info(dev)->id;
        ts_gpt_config c = {.vocab_size = 301, .max_seq_len = 16, .n_layer = 2, .n_head = 2, .n_embd = 32};
        ts_gpt m;
        REQUIRE_OK(ts_gpt_create(&m, dev, &c));
        REQUIRE_OK(ts_gpt_init_weights(&m, 3));
        int32_t tok[32], tgt[32];
        rng_t r;
        rng_seed(&r, 9);
        make_batch(&r, 32, c.vocab_size, tok, tgt);
        size_t n = (size_t)m.num_params;
        float l32, l16, *g32 = malloc(n * sizeof *g32), *g16 = malloc(n * sizeof *g16);
        REQUIRE_OK(ts_gpt_zero_grad(&m));
        REQUIRE_OK(ts_gpt_forward_backward(&m, tok, tgt, 2, 16, 1.0f, &l32));
        REQUIRE_OK(ts_tensor_read(&m.grads, g32, n * sizeof *g32));
        for (int k = 0; k < 2; k++) {
            ts_status st = ts_device_set_matmul_dtype(dev, types[k]);
            if (st == TS_ERR_UNSUPPORTED) {
                ts_clear_error();
                continue;
            }
            REQUIRE_OK(st);
            st = ts_gpt_zero_grad(&m);
            if (!st) st = ts_gpt_forward_backward(&m, tok, tgt, 2, 16, 1.0f, &l16);
            if (!st) st = ts_tensor_read(&m.grads, g16, n * sizeof *g16);
            REQUIRE_OK(ts_device_set_matmul_dtype(dev, TS_F32));
            REQUIRE_OK(st);
            const char *name = ts_dtype_name(types[k]);
            const ts_tensor *acts[] = {&m.acts.ln1, &m.acts.qkv, &m.acts.atty, &m.acts.ln2, &m.acts.fch, &m.acts.fch_gelu};
            for (size_t i = 0; i < sizeof acts / sizeof *acts; i++)
                EXPECTF(acts[i]->dtype == types[k], "%s, %s products: activation %zu stored as %s", id, name, i,
                        ts_dtype_name(acts[i]->dtype));
            ts_dtype logits = types[k] == TS_BF16 && ts_linear_takes_bf16(dev) ? TS_BF16 : TS_F32;
            EXPECTF(m.acts.logits.dtype == logits && m.acts.residual2.dtype == TS_F32, "%s, %s: logits %s, residual %s",
                    id, name, ts_dtype_name(m.acts.logits.dtype), ts_dtype_name(m.acts.residual2.dtype));
            double err = 0, norm = 0;
            for (size_t i = 0; i < n; i++) err += (g16[i] - g32[i]) * (g16[i] - g32[i]), norm += g32[i] * g32[i];
            double bound = types[k] == TS_BF16 ? 1e-3 : 1e-5;
            EXPECTF(err / norm < bound, "%s, %s: gradients against fp32's: NMSE %.3g", id, name, err / norm);
            EXPECTF(fabsf(l16 - l32) < (types[k] == TS_BF16 ? 1e-2f : 1e-3f) * l32, "%s: loss %.6f in %s, %.6f in fp32",
                    id, (double)l16, name, (double)l32);
        }
        free(g32), free(g16);
        ts_gpt_free(&m);
    }
}

/* Two micro-batches at loss scale 1/2 give the gradient of their union. */
TEST(gradient_accumulation_equals_one_big_batch)
{
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    ts_gpt m;
    REQUIRE_OK(ts_gpt_create(&m, cpu, &tiny));
    float *hp = malloc((size_t)m.num_params * sizeof *hp);
    float *g1 = malloc((size_t)m.num_params * sizeof *g1), *g2 = malloc((size_t)m.num_params * sizeof *g2);
    REQUIRE_OK(randomize(&m, 3, hp));
    int32_t tok[16], tgt[16];
    rng_t r;
    rng_seed(&r, 4);
    make_batch(&r, 16, tiny.vocab_size, tok, tgt);
    float l;
    REQUIRE_OK(ts_gpt_zero_grad(&m));
    REQUIRE_OK(ts_gpt_forward(&m, tok, tgt, 2, 8, &l));
    REQUIRE_OK(ts_gpt_backward(&m, 1.0f));
    REQUIRE_OK(ts_tensor_read(&m.grads, g1, (size_t)m.num_params * sizeof *g1));
    REQUIRE_OK(ts_gpt_zero_grad(&m));
    for (int k = 0; k < 2; k++) {
        REQUIRE_OK(ts_gpt_forward(&m, tok + 8 * k, tgt + 8 * k, 1, 8, &l));
        REQUIRE_OK(ts_gpt_backward(&m, 0.5f));
    }
    REQUIRE_OK(ts_tensor_read(&m.grads, g2, (size_t)m.num_params * sizeof *g2));
    double *d1 = to_double(g1, m.num_params);
    check_close("accumulated gradient", g2, d1, m.num_params, 1e-10);
    free(hp), free(g1), free(g2), free(d1);
    ts_gpt_free(&m);
}

/* The fused training call gives what forward then backward give. */
static void fused_forward_backward_matches(void *arg)
{
    ts_device *dev = arg;
    ts_gpt m;
    REQUIRE_OK(ts_gpt_create(&m, dev, &tiny));
    float *hp = malloc((size_t)m.num_params * sizeof *hp);
    float *g1 = malloc((size_t)m.num_params * sizeof *g1), *g2 = malloc((size_t)m.num_params * sizeof *g2);
    REQUIRE_OK(randomize(&m, 13, hp));
    int32_t tok[16], tgt[16];
    rng_t r;
    rng_seed(&r, 14);
    make_batch(&r, 16, tiny.vocab_size, tok, tgt);
    tgt[2] = -1;
    float l1, l2;
    REQUIRE_OK(ts_gpt_zero_grad(&m));
    REQUIRE_OK(ts_gpt_forward(&m, tok, tgt, 2, 8, &l1));
    REQUIRE_OK(ts_gpt_backward(&m, 0.5f));
    REQUIRE_OK(ts_tensor_read(&m.grads, g1, (size_t)m.num_params * sizeof *g1));
    REQUIRE_OK(ts_gpt_zero_grad(&m));
    REQUIRE_OK(ts_gpt_forward_backward(&m, tok, tgt, 2, 8, 0.5f, &l2));
    REQUIRE_OK(ts_tensor_read(&m.grads, g2, (size_t)m.num_params * sizeof *g2));
    EXPECTF(fabsf(l1 - l2) <= 1e-6f * fabsf(l1), "loss %.9g vs %.9g", l1, l2);
    double *d1 = to_double(g1, m.num_params);
    check_close("fused gradient", g2, d1, m.num_params, 1e-12);
    free(hp), free(g1), free(g2), free(d1);
    ts_gpt_free(&m);
}

/* Activations of another shape in between (as sampling at B=1 does in a
 * training run) reallocate the model's attention scratch. The first
 * activations' next forward and backward must use the new scratch, not
 * the released one, which the allocator may meanwhile have handed to
 * another tensor (here `bystander`, of the same size, which must come out
 * untouched). The composite attention route keeps its buffers there. */
static void other_shapes_in_between_change_nothing(void *arg)
{
    ts_device *dev = arg;
    setenv("TESSERA_ATTENTION", "composite", 1); /* this case runs in a child of its own */
    ts_gpt m;
    REQUIRE_OK(ts_gpt_create(&m, dev, &tiny));
    float *hp = malloc((size_t)m.num_params * sizeof *hp);
    float *g1 = malloc((size_t)m.num_params * sizeof *g1), *g2 = malloc((size_t)m.num_params * sizeof *g2);
    REQUIRE_OK(randomize(&m, 15, hp));
    int32_t tok[16], tgt[16];
    rng_t r;
    rng_seed(&r, 16);
    make_batch(&r, 16, tiny.vocab_size, tok, tgt);
    float l1, l2;
    REQUIRE_OK(ts_gpt_zero_grad(&m));
    REQUIRE_OK(ts_gpt_forward_backward(&m, tok, tgt, 2, 8, 1.0f, &l1));
    REQUIRE_OK(ts_tensor_read(&m.grads, g1, (size_t)m.num_params * sizeof *g1));
    int64_t n = ts_tensor_numel(&m.scratch[0]); /* small shapes: the scratch is one block */
    ts_gpt_acts other;
    REQUIRE_OK(ts_gpt_acts_alloc(&m, &other, 1, 4));
    REQUIRE_OK(ts_gpt_stage_forward(&m, &other, tok, NULL, 0.0f, NULL, NULL));
    ts_gpt_acts_free(&other);
    ts_tensor bystander;
    REQUIRE_OK(ts_tensor_alloc(&bystander, dev, TS_F32, TS_SHAPE(n)));
    REQUIRE_OK(ts_fill(&bystander, 7.0f));
    REQUIRE_OK(ts_gpt_zero_grad(&m));
    REQUIRE_OK(ts_gpt_forward_backward(&m, tok, tgt, 2, 8, 1.0f, &l2));
    REQUIRE_OK(ts_tensor_read(&m.grads, g2, (size_t)m.num_params * sizeof *g2));
    EXPECTF(l1 == l2, "loss %.9g, then %.9g", l1, l2);
    double *d1 = to_double(g1, m.num_params);
    check_close("gradient after another shape", g2, d1, m.num_params, 0.0);
    float *by = malloc((size_t)n * sizeof *by);
    REQUIRE_OK(ts_tensor_read(&bystander, by, (size_t)n * sizeof *by));
    int64_t changed = 0;
    for (int64_t i = 0; i < n; i++) changed += by[i] != 7.0f;
    EXPECTF(changed == 0, "%lld of %lld elements of another tensor were overwritten", (long long)changed,
            (long long)n);
    free(hp), free(g1), free(g2), free(d1), free(by);
    ts_tensor_free(&bystander);
    ts_gpt_free(&m);
}

/* Activations and scratch past the device's largest allocation (or
 * CLBlast's 2^31 floats) are split over several allocations. Forcing a
 * split at every tensor must change no bit of the loss or the gradients. */
static void split_activations_change_nothing(void *arg)
{
    ts_device *dev = arg;
    unsetenv("TESSERA_BLOCK_LIMIT");
    ts_gpt m;
    REQUIRE_OK(ts_gpt_create(&m, dev, &tiny));
    float *hp = malloc((size_t)m.num_params * sizeof *hp);
    float *g1 = malloc((size_t)m.num_params * sizeof *g1), *g2 = malloc((size_t)m.num_params * sizeof *g2);
    REQUIRE_OK(randomize(&m, 17, hp));
    int32_t tok[16], tgt[16];
    rng_t r;
    rng_seed(&r, 18);
    make_batch(&r, 16, tiny.vocab_size, tok, tgt);
    float l1, l2;
    REQUIRE_OK(ts_gpt_zero_grad(&m));
    REQUIRE_OK(ts_gpt_forward_backward(&m, tok, tgt, 2, 8, 1.0f, &l1));
    REQUIRE_OK(ts_tensor_read(&m.grads, g1, (size_t)m.num_params * sizeof *g1));
    EXPECT(m.acts.block[1].block == NULL); /* one block without a limit */
    ts_gpt_acts_free(&m.acts);
    /* 16 floats: every tensor its own block. The scratch is reallocated
     * for a new shape: B=1 in between forces it. */
    setenv("TESSERA_BLOCK_LIMIT", "64", 1);
    ts_gpt_acts other;
    ts_status st = ts_gpt_acts_alloc(&m, &other, 1, 8);
    if (!st) st = ts_gpt_stage_forward(&m, &other, tok, NULL, 0.0f, NULL, NULL);
    ts_gpt_acts_free(&other);
    if (!st) st = ts_gpt_zero_grad(&m);
    if (!st) st = ts_gpt_forward_backward(&m, tok, tgt, 2, 8, 1.0f, &l2);
    unsetenv("TESSERA_BLOCK_LIMIT");
    REQUIRE_OK(st);
    REQUIRE_OK(ts_tensor_read(&m.grads, g2, (size_t)m.num_params * sizeof *g2));
    int nb = 0;
    while (nb < TS_GPT_BLOCKS && m.acts.block[nb].block) nb++;
    EXPECTF(nb > 10, "activations in %d blocks with a 64-byte limit", nb);
    EXPECTF(l1 == l2, "loss %.9g in one block, %.9g split", l1, l2);
    double *d1 = to_double(g1, m.num_params);
    check_close("gradient with split activations", g2, d1, m.num_params, 0.0);
    free(hp), free(g1), free(g2), free(d1);
    ts_gpt_free(&m);
}

/* The same training run on the CPU backend and on an OpenCL device. */
TEST(training_agrees_between_cpu_and_opencl)
{
    ts_device *cpu, *cl;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    if (ts_device_open("opencl", &cl) != TS_OK) SKIP("no OpenCL device");
    ts_gpt_config c = {.vocab_size = 50, .max_seq_len = 16, .n_layer = 2, .n_head = 2, .n_embd = 32};
    float losses[2][15];
    float *params[2];
    ts_device *devs[2] = {cpu, cl};
    for (int d = 0; d < 2; d++) {
        ts_gpt m;
        ts_optimizer o;
        REQUIRE_OK(ts_gpt_create(&m, devs[d], &c));
        REQUIRE_OK(ts_gpt_init_weights(&m, 11));
        REQUIRE_OK(ts_optimizer_create(&o, devs[d], TS_OPTIM_ADAMW, m.num_params, 0.9f, 0.95f, 1e-8f, 0.1f));
        rng_t r;
        rng_seed(&r, 12);
        for (int s = 0; s < 15; s++) {
            int32_t tok[64], tgt[64];
            make_batch(&r, 64, c.vocab_size, tok, tgt);
            for (int i = 0; i < 63; i++) tgt[i] = tok[i + 1]; /* learnable: predict the next input */
            REQUIRE_OK(ts_gpt_zero_grad(&m));
            REQUIRE_OK(ts_gpt_forward(&m, tok, tgt, 4, 16, &losses[d][s]));
            REQUIRE_OK(ts_gpt_backward(&m, 1.0f));
            double sq;
            REQUIRE_OK(ts_grad_sqnorm(&m.grads, &sq));
            REQUIRE_OK(ts_gpt_optimizer_step(&m, &o, 3e-3f, ts_clip_scale(sqrt(sq), 1.0f)));
        }
        params[d] = malloc((size_t)m.num_params * sizeof(float));
        REQUIRE_OK(ts_tensor_read(&m.params, params[d], (size_t)m.num_params * sizeof(float)));
        ts_optimizer_free(&o);
        ts_gpt_free(&m);
    }
    double worst = 0;
    for (int s = 0; s < 15; s++) worst = fmax(worst, fabs(losses[0][s] - losses[1][s]) / losses[0][s]);
    /* f32 on both; only summation orders differ */
    EXPECTF(worst < 1e-4, "losses differ by up to %.2e (relative)", worst);
    int64_t n = ts_gpt_num_params(&c);
    double *ref = to_double(params[0], n);
    check_close("parameters after 15 steps", params[1], ref, n, 1e-8);
    th_note("CPU vs OpenCL over 15 AdamW steps: loss %.6f vs %.6f, largest relative loss difference %.2e",
            losses[0][14], losses[1][14], worst);
    free(ref), free(params[0]), free(params[1]);
}

/* An empty file at path, whose XXXXXX mkstemp fills in; false if none could be made. */
static int make_temp_file(char *path)
{
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
    return fd >= 0;
}

TEST(weights_round_trip_exactly_through_safetensors)
{
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    ts_gpt a, b;
    REQUIRE_OK(ts_gpt_create(&a, cpu, &tiny));
    REQUIRE_OK(ts_gpt_init_weights(&a, 5));
    char path[] = "/tmp/tessera-weights-XXXXXX";
    REQUIRE(make_temp_file(path));
    REQUIRE_OK(ts_gpt_save(&a, path, NULL));
    ts_gpt_config c;
    REQUIRE_OK(ts_gpt_read_config(path, &c));
    EXPECT(!memcmp(&c, &tiny, sizeof c));
    REQUIRE_OK(ts_gpt_create(&b, cpu, &c));
    REQUIRE_OK(ts_gpt_load(&b, path));
    float *x = malloc((size_t)a.num_params * 4), *y = malloc((size_t)a.num_params * 4);
    REQUIRE_OK(ts_tensor_read(&a.params, x, (size_t)a.num_params * 4));
    REQUIRE_OK(ts_tensor_read(&b.params, y, (size_t)a.num_params * 4));
    EXPECT(!memcmp(x, y, (size_t)a.num_params * 4));
    /* the file names tensors per layer, readable from Python */
    ts_safetensors f;
    REQUIRE_OK(ts_safetensors_open(path, &f));
    const ts_st_entry *e = ts_safetensors_find(&f, "h.1.mlp.c_fc.weight");
    EXPECT(e && e->ndim == 2 && e->shape[0] == 4 * tiny.n_embd && e->shape[1] == tiny.n_embd);
    EXPECT(ts_safetensors_find(&f, "wte.weight") && ts_safetensors_find(&f, "ln_f.bias"));
    ts_safetensors_close(&f);
    free(x), free(y);
    unlink(path);
    ts_gpt_free(&a), ts_gpt_free(&b);
}

/* Damage a weights file in several ways; every load must fail cleanly. */
TEST(damaged_weight_files_are_rejected)
{
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    ts_gpt a;
    REQUIRE_OK(ts_gpt_create(&a, cpu, &tiny));
    REQUIRE_OK(ts_gpt_init_weights(&a, 5));
    char good[] = "/tmp/tessera-good-XXXXXX", bad[] = "/tmp/tessera-bad-XXXXXX";
    REQUIRE(make_temp_file(good) && make_temp_file(bad));
    REQUIRE_OK(ts_gpt_save(&a, good, NULL));
    FILE *f = fopen(good, "rb");
    REQUIRE(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc((size_t)size);
    REQUIRE(fread(data, 1, (size_t)size, f) == (size_t)size);
    fclose(f);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | data[i];
    struct {
        const char *what;
        long keep;          /* bytes kept (truncation) */
        long flip;          /* a byte to overwrite, or -1 */
        unsigned char with;
        ts_status want;
    } cases[] = {
        {"truncated in the data", size - 100, -1, 0, TS_ERR_FORMAT},
        {"truncated in the header", 8 + (long)hlen / 2, -1, 0, TS_ERR_FORMAT},
        {"shorter than a header", 5, -1, 0, TS_ERR_FORMAT},
        {"header length corrupt", size, 6, 0x7f, TS_ERR_FORMAT},
        {"header JSON corrupt", size, 8, '[', TS_ERR_FORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        if (cases[i].flip >= 0 && cases[i].flip >= size) continue;
        unsigned char keep = 0;
        if (cases[i].flip >= 0) keep = data[cases[i].flip], data[cases[i].flip] = cases[i].with;
        f = fopen(bad, "wb");
        fwrite(data, 1, (size_t)cases[i].keep, f);
        fclose(f);
        if (cases[i].flip >= 0) data[cases[i].flip] = keep;
        ts_status st = ts_gpt_load(&a, bad);
        EXPECTF(st == cases[i].want, "%s: got %s (%s)", cases[i].what, ts_status_name(st), ts_last_error());
        EXPECTF(strstr(ts_last_error(), bad) != NULL, "%s: message does not name the file: %s",
                cases[i].what, ts_last_error());
    }
    /* a model of another shape */
    ts_gpt_config other = tiny;
    other.n_embd = 12;
    ts_gpt b;
    REQUIRE_OK(ts_gpt_create(&b, cpu, &other));
    EXPECT_STATUS(ts_gpt_load(&b, good), TS_ERR_SHAPE);
    EXPECT(strstr(ts_last_error(), "C=8") && strstr(ts_last_error(), "C=12"));
    ts_gpt_free(&b);
    /* a tensor with a wrong shape, under the right config */
    ts_st_writer *w;
    REQUIRE_OK(ts_st_writer_new(&w));
    REQUIRE_OK(ts_st_writer_meta(w, "config", "{\"vocab_size\": 13, \"max_seq_len\": 8, \"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8}"));
    float junk[13 * 9] = {0};
    REQUIRE_OK(ts_st_writer_add_host(w, "wte.weight", TS_F32, TS_SHAPE(13, 9), junk));
    REQUIRE_OK(ts_st_writer_write(w, bad));
    ts_st_writer_free(w);
    EXPECT_STATUS(ts_gpt_load(&a, bad), TS_ERR_SHAPE);
    EXPECTF(strstr(ts_last_error(), "wte.weight"), "%s", ts_last_error());
    EXPECT_STATUS(ts_gpt_load(&a, "/nonexistent/weights.safetensors"), TS_ERR_IO);
    free(data);
    unlink(good), unlink(bad);
    ts_gpt_free(&a);
}

TEST(forward_rejects_bad_tokens_and_lengths)
{
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    ts_gpt m;
    REQUIRE_OK(ts_gpt_create(&m, cpu, &tiny));
    int32_t tok[16] = {0}, tgt[16] = {0};
    float l;
    EXPECT_STATUS(ts_gpt_backward(&m, 1.0f), TS_ERR_INVALID_ARG);
    tok[3] = 13;
    EXPECT_STATUS(ts_gpt_forward(&m, tok, tgt, 2, 8, &l), TS_ERR_INVALID_ARG);
    EXPECT(strstr(ts_last_error(), "token 13"));
    tok[3] = 0;
    EXPECT_STATUS(ts_gpt_forward(&m, tok, tgt, 1, 9, &l), TS_ERR_SHAPE);
    ts_gpt_config bad = tiny;
    bad.n_head = 3;
    ts_gpt m2;
    EXPECT_STATUS(ts_gpt_create(&m2, cpu, &bad), TS_ERR_INVALID_ARG);
    ts_gpt_free(&m);
}

/* The attention route follows the model's mask hint; activations made
 * under either route at one shape each get scratch of their own route
 * (the scratch is shared and was once cached by shape alone), and both
 * routes give the same features. */
TEST(activations_of_both_attention_routes_share_one_model)
{
    unsetenv("TESSERA_ATTENTION"); /* the routes the hint picks (a forced one, here or in a case before, picks one) */
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    ts_gpt m;
    REQUIRE_OK(ts_gpt_create(&m, cpu, &tiny));
    REQUIRE_OK(ts_gpt_init_weights(&m, 3));
    int32_t tok[16], len[2] = {8, 5};
    for (int i = 0; i < 16; i++) tok[i] = (i * 7 + 3) % 13;
    ts_gpt_acts a[2];
    float f[2][16 * 8];
    for (int k = 0; k < 2; k++) {
        m.bidirectional = k == 1; /* causal: fused on the CPU backend; bidirectional at T=8: composite */
        REQUIRE_OK(ts_gpt_acts_alloc_features(&m, &a[k], 2, 8));
    }
    EXPECTF(a[0].ws[0].fused && !a[1].ws[0].fused, "routes: %s, %s", a[0].ws[0].fused ? "fused" : "composite",
            a[1].ws[0].fused ? "fused" : "composite");
    for (int k = 0; k < 2; k++) {
        REQUIRE_OK(ts_gpt_features_forward(&m, &a[k], tok, len, 1));
        REQUIRE_OK(ts_tensor_read(&a[k].lnf, f[k], sizeof f[k]));
    }
    double worst = 0;
    for (int i = 0; i < 16 * 8; i++) worst = fmax(worst, fabs((double)f[0][i] - f[1][i]));
    EXPECTF(worst < 1e-5, "features differ between the routes by %.3g", worst);
    ts_gpt_acts_free(&a[0]), ts_gpt_acts_free(&a[1]);
    ts_gpt_free(&m);
}

/* Weight decay reaches the matrices and nothing else. */
TEST(weight_decay_applies_to_matrices_only)
{
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    ts_gpt m;
    ts_optimizer o;
    REQUIRE_OK(ts_gpt_create(&m, cpu, &tiny));
    REQUIRE_OK(ts_gpt_init_weights(&m, 9));
    float *before = malloc((size_t)m.num_params * 4), *after = malloc((size_t)m.num_params * 4);
    REQUIRE_OK(ts_fill(&m.params, 1.0f));
    REQUIRE_OK(ts_optimizer_create(&o, cpu, TS_OPTIM_ADAMW, m.num_params, 0.9f, 0.95f, 1e-8f, 0.5f));
    REQUIRE_OK(ts_gpt_zero_grad(&m)); /* zero gradient: only decay moves parameters */
    REQUIRE_OK(ts_tensor_read(&m.params, before, (size_t)m.num_params * 4));
    REQUIRE_OK(ts_gpt_optimizer_step(&m, &o, 0.1f, 1.0f));
    REQUIRE_OK(ts_tensor_read(&m.params, after, (size_t)m.num_params * 4));
    for (int k = 0; k < m.ntensors; k++) {
        const ts_gpt_tensor *p = &m.tensors[k];
        float want = p->decay ? 1.0f * (1.0f - 0.1f * 0.5f) : 1.0f;
        char name[96];
        for (int64_t e = 0; e < p->rows * p->cols; e += 7)
            EXPECTF(fabsf(after[p->offset + e] - want) < 1e-7f, "%s[%lld]: %g, want %g",
                    ts_gpt_tensor_name(p->kind, p->layer, name, sizeof name), (long long)e, after[p->offset + e], want);
    }
    free(before), free(after);
    ts_optimizer_free(&o);
    ts_gpt_free(&m);
}

TEST(learning_rate_warms_up_then_follows_a_cosine)
{
    ts_lr_schedule s = {.lr = 1.0f, .min_lr = 0.1f, .warmup_steps = 10, .total_steps = 110, .cosine = 1};
    EXPECT(fabsf(ts_lr_at(&s, 0) - 0.1f) < 1e-6f);
    EXPECT(fabsf(ts_lr_at(&s, 9) - 1.0f) < 1e-6f);
    EXPECT(fabsf(ts_lr_at(&s, 10) - 1.0f) < 1e-6f);
    EXPECT(fabsf(ts_lr_at(&s, 60) - 0.55f) < 1e-5f); /* halfway: (max+min)/2 */
    EXPECT(fabsf(ts_lr_at(&s, 110) - 0.1f) < 1e-6f);
    EXPECT(fabsf(ts_lr_at(&s, 500) - 0.1f) < 1e-6f);
    s.cosine = 0;
    EXPECT(ts_lr_at(&s, 80) == 1.0f);
    EXPECT(ts_clip_scale(2.0, 1.0f) == 0.5f && ts_clip_scale(0.5, 1.0f) == 1.0f && ts_clip_scale(9, 0) == 1.0f);
}

/* ---- the classifier: the trunk, pooling over real tokens, the head ---- */

typedef struct cls_case {
    ts_device *dev;
    ts_pool pool;
    int bidirectional;
    int64_t ngrams;   /* buckets of character n-grams, 0 = none */
} cls_case;

/* n-grams for B*T positions: position p has p % 5 of them (so some none),
 * repeats included, padding positions too (they must change nothing) */
static void some_ngrams(int64_t N, int64_t G, int64_t *off, int32_t *ng)
{
    off[0] = 0;
    for (int64_t p = 0; p < N; p++) {
        off[p + 1] = off[p] + p % 5;
        for (int64_t j = off[p]; j < off[p + 1]; j++) ng[j] = (int32_t)((p * 7 + j * 3) % G);
    }
}

/* A classifier with random parameters (also in *host, malloc'ed). */
static ts_status classifier_create_random(ts_classifier *c, const cls_case *k, uint64_t seed, float **hostp)
{
    ts_classifier_config cfg = {.gpt = tiny, .n_classes = 3, .pool = k->pool, .bidirectional = k->bidirectional,
                                .char_ngrams = k->ngrams};
    ts_status st = ts_classifier_create(c, k->dev, &cfg);
    if (st) return st;
    float *host = *hostp = malloc((size_t)c->num_params * sizeof *host);
    rng_t r;
    rng_seed(&r, seed);
    for (int i = 0; i < c->trunk.ntensors; i++) {
        const ts_gpt_tensor *p = &c->trunk.tensors[i];
        int gain = p->kind == TS_GPT_LN1W || p->kind == TS_GPT_LN2W || p->kind == TS_GPT_LNFW;
        for (int64_t e = 0; e < p->rows * p->cols; e++)
            host[p->offset + e] = gain ? rng_uniform(&r, 0.7f, 1.3f) : rng_uniform(&r, -0.4f, 0.4f);
    }
    for (int64_t e = c->head_offset; e < c->num_params; e++) host[e] = rng_uniform(&r, -1.0f, 1.0f);
    return ts_tensor_write(&c->params, host, (size_t)c->num_params * sizeof *host);
}

/* The loss of ts_classifier (forward, the class-weighted cross-entropy,
 * backward) and every parameter's gradient against the double-precision
 * classifier and its central differences, on a padded batch of three
 * sequences of different lengths (padding with random tokens). */
static void classifier_grads_match_finite_differences(void *arg)
{
    const cls_case *k = arg;
    enum { B = 3, T = 6, K = 3 };
    ts_classifier c;
    float *hp;
    REQUIRE_OK(classifier_create_random(&c, k, 31, &hp));
    int64_t n = c.num_params;
    float *hg = malloc((size_t)n * sizeof *hg);
    int32_t tok[B * T], len[B] = {6, 2, 4}, labels[B] = {2, 0, 1};
    float w[B] = {0.5f, 2.0f, 1.0f};
    double wd[B] = {0.5, 2.0, 1.0}, W = 3.5;
    rng_t r;
    rng_seed(&r, 32);
    for (int i = 0; i < B * T; i++) tok[i] = (int32_t)(rng_next(&r) % (uint64_t)tiny.vocab_size);
    float logits[B * K], dlogits[B * K];
    double lsum;
    int64_t ng_off[B * T + 1], *off = k->ngrams ? ng_off : NULL;
    int32_t ng[B * T * 4];
    some_ngrams(B * T, k->ngrams ? k->ngrams : 1, ng_off, ng);
    REQUIRE_OK(ts_classifier_forward_ngrams(&c, tok, len, off, ng, B, T, logits));
    ts_classifier_cross_entropy(logits, B, K, labels, w, 1.0 / W, &lsum, dlogits, NULL);
    REQUIRE_OK(ts_classifier_backward(&c, dlogits));
    REQUIRE_OK(ts_tensor_read(&c.grads, hg, (size_t)n * sizeof *hg));
    double *dp = to_double(hp, n), *fd = malloc((size_t)n * sizeof *fd), ref_logits[B * K];
    double loss = lsum / W,
           ref_loss = ref_classifier_loss_ngrams(&c, dp, tok, len, off, ng, labels, wd, B, T, ref_logits);
    check_close("logits", logits, ref_logits, B * K, 1e-10);
    EXPECTF(fabs(loss - ref_loss) < 1e-5 * fabs(ref_loss), "loss %.9g vs double %.9g", loss, ref_loss);
    const double h = 1e-6;
    for (int64_t i = 0; i < n; i++) {
        double keep = dp[i];
        dp[i] = keep + h;
        double lp = ref_classifier_loss_ngrams(&c, dp, tok, len, off, ng, labels, wd, B, T, NULL);
        dp[i] = keep - h;
        double lm = ref_classifier_loss_ngrams(&c, dp, tok, len, off, ng, labels, wd, B, T, NULL);
        dp[i] = keep;
        fd[i] = (lp - lm) / (2 * h);
    }
    for (int i = 0; i < c.trunk.ntensors; i++) {
        const ts_gpt_tensor *p = &c.trunk.tensors[i];
        char what[160], name[96];
        snprintf(what, sizeof what, "gradient of %s", ts_gpt_tensor_name(p->kind, p->layer, name, sizeof name));
        check_close(what, hg + p->offset, fd + p->offset, p->rows * p->cols, 1e-10);
    }
    check_close("gradient of score.weight", hg + c.head_offset, fd + c.head_offset, K * tiny.n_embd, 1e-10);
    check_close("gradient of score.bias", hg + c.head_offset + K * tiny.n_embd, fd + c.head_offset + K * tiny.n_embd,
                K, 1e-10);
    if (k->ngrams)
        check_close("gradient of ngram.weight", hg + c.ngram_offset, fd + c.ngram_offset, k->ngrams * tiny.n_embd,
                    1e-10);
    th_note("loss %.9g (double %.9g); gradient NMSE against finite differences %.2e over %lld parameters", loss,
            ref_loss, nmse(hg, fd, n), (long long)n);
    free(hp), free(hg), free(dp), free(fd);
    ts_classifier_free(&c);
}

/* Each sequence of a padded batch gets the logits it gets alone, whatever
 * the padding tokens. */
static void classifier_padding_changes_nothing(void *arg)
{
    const cls_case *k = arg;
    enum { B = 3, T = 7, K = 3 };
    ts_classifier c;
    float *hp;
    REQUIRE_OK(classifier_create_random(&c, k, 41, &hp));
    int32_t tok[B * T], len[B] = {3, 7, 1};
    rng_t r;
    rng_seed(&r, 42);
    for (int i = 0; i < B * T; i++) tok[i] = (int32_t)(rng_next(&r) % (uint64_t)tiny.vocab_size);
    float batch[B * K], alone[B * K];
    int64_t ng_off[B * T + 1], *off = k->ngrams ? ng_off : NULL, one_off[T + 1];
    int32_t ng[B * T * 4];
    some_ngrams(B * T, k->ngrams ? k->ngrams : 1, ng_off, ng);
    REQUIRE_OK(ts_classifier_forward_ngrams(&c, tok, len, off, ng, B, T, batch));
    for (int b = 0; b < B; b++) {
        for (int t = 0; t <= len[b]; t++) one_off[t] = ng_off[b * T + t]; /* the sequence's own positions */
        REQUIRE_OK(ts_classifier_forward_ngrams(&c, tok + b * T, &len[b], off ? one_off : NULL, ng, 1, len[b],
                                                alone + b * K));
    }
    double *ref = to_double(alone, B * K);
    check_close("padded batch's logits against each sequence alone", batch, ref, B * K, 1e-12);
    for (int i = 0; i < B * T; i++) /* other padding tokens and n-grams */
        if (i % T >= len[i / T]) {
            tok[i] = (tok[i] + 5) % (int32_t)tiny.vocab_size;
            for (int64_t j = ng_off[i]; j < ng_off[i + 1]; j++) ng[j] = (ng[j] + 1) % 11;
        }
    REQUIRE_OK(ts_classifier_forward_ngrams(&c, tok, len, off, ng, B, T, alone));
    check_close("logits with other padding tokens", alone, ref, B * K, 1e-12);
    free(ref), free(hp);
    ts_classifier_free(&c);
}

/* A classifier with an n-gram table saves it ("ngram.weight"), reads its
 * size back from the file, and loads every weight; n-grams out of the
 * table, too many at a position, or given to a classifier without a table
 * are refused with the position named. */
TEST(classifier_ngram_table_round_trips_and_bad_ngrams_are_refused)
{
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    cls_case k = {cpu, TS_POOL_MEAN, 0, 11};
    ts_classifier a, b;
    float *hp;
    REQUIRE_OK(classifier_create_random(&a, &k, 51, &hp));
    char path[] = "/tmp/tessera-classifier-XXXXXX";
    REQUIRE(make_temp_file(path));
    REQUIRE_OK(ts_classifier_save(&a, path, NULL));
    ts_classifier_config cfg;
    REQUIRE_OK(ts_classifier_read_config(path, &cfg));
    EXPECT(cfg.char_ngrams == 11);
    ts_safetensors f;
    REQUIRE_OK(ts_safetensors_open(path, &f));
    const ts_st_entry *e = ts_safetensors_find(&f, "ngram.weight");
    EXPECT(e && e->ndim == 2 && e->shape[0] == 11 && e->shape[1] == tiny.n_embd);
    ts_safetensors_close(&f);
    REQUIRE_OK(ts_classifier_create(&b, cpu, &cfg));
    REQUIRE_OK(ts_classifier_load(&b, path));
    float *y = malloc((size_t)b.num_params * sizeof *y);
    REQUIRE_OK(ts_tensor_read(&b.params, y, (size_t)b.num_params * sizeof *y));
    EXPECT(b.num_params == a.num_params && !memcmp(hp, y, (size_t)a.num_params * sizeof *y));
    /* a classifier of another table size is not this file's */
    ts_classifier c;
    cfg.char_ngrams = 12;
    REQUIRE_OK(ts_classifier_create(&c, cpu, &cfg));
    EXPECT_STATUS(ts_classifier_load(&c, path), TS_ERR_SHAPE);
    ts_classifier_free(&c);
    unlink(path);

    enum { B = 1, T = 3 };
    int32_t tok[B * T] = {1, 2, 3}, len[B] = {3}, ng[80] = {0};
    int64_t off[T + 1] = {0, 1, 2, 3};
    float logits[3];
    ng[1] = 11;
    EXPECT_STATUS(ts_classifier_forward_ngrams(&a, tok, len, off, ng, B, T, logits), TS_ERR_INVALID_ARG);
    EXPECT(strstr(ts_last_error(), "n-gram 11 at position 1"));
    ng[1] = -1;
    EXPECT_STATUS(ts_classifier_forward_ngrams(&a, tok, len, off, ng, B, T, logits), TS_ERR_INVALID_ARG);
    ng[1] = 0;
    off[2] = off[1] + TS_CLASSIFIER_MAX_NGRAMS + 1, off[3] = off[2] + 1;
    EXPECT_STATUS(ts_classifier_forward_ngrams(&a, tok, len, off, ng, B, T, logits), TS_ERR_INVALID_ARG);
    EXPECT(strstr(ts_last_error(), "position 1 has"));
    off[2] = 1, off[3] = 0; /* a count below zero */
    EXPECT_STATUS(ts_classifier_forward_ngrams(&a, tok, len, off, ng, B, T, logits), TS_ERR_INVALID_ARG);
    off[2] = 2, off[3] = 3;
    REQUIRE_OK(ts_classifier_forward_ngrams(&a, tok, len, off, ng, B, T, logits));
    cls_case plain = {cpu, TS_POOL_MEAN, 0, 0};
    ts_classifier d;
    float *hd;
    REQUIRE_OK(classifier_create_random(&d, &plain, 52, &hd));
    EXPECT_STATUS(ts_classifier_forward_ngrams(&d, tok, len, off, ng, B, T, logits), TS_ERR_INVALID_ARG);
    EXPECT(strstr(ts_last_error(), "without an n-gram table"));
    free(hp), free(hd), free(y);
    ts_classifier_free(&a), ts_classifier_free(&b), ts_classifier_free(&d);
}

int main(int argc, char **argv)
{
    th_header_devices();
    for (int d = 0; d < ts_device_count(); d++) {
        char name[256];
        snprintf(name, sizeof name, "whole-model gradients match finite differences on %s",
                 ts_device_get_info(ts_device_at(d))->id);
        th_add(name, grads_match_finite_differences, ts_device_at(d));
        snprintf(name, sizeof name, "fused forward_backward equals forward then backward on %s",
                 ts_device_get_info(ts_device_at(d))->id);
        th_add(name, fused_forward_backward_matches, ts_device_at(d));
        snprintf(name, sizeof name, "activations of another shape in between change no gradient (composite "
                 "attention's scratch) on %s", ts_device_get_info(ts_device_at(d))->id);
        th_add(name, other_shapes_in_between_change_nothing, ts_device_at(d));
        snprintf(name, sizeof name, "activations split over many allocations change no bit on %s",
                 ts_device_get_info(ts_device_at(d))->id);
        th_add(name, split_activations_change_nothing, ts_device_at(d));
        for (int v = 0; v < 6; v++) { /* last, mean, max; causal, bidirectional */
            cls_case *k = malloc(sizeof *k), *k2 = malloc(sizeof *k2);
            ts_pool pools[3] = {TS_POOL_LAST, TS_POOL_MEAN, TS_POOL_MAX};
            *k = (cls_case){ts_device_at(d), pools[v % 3], v / 3, 0};
            *k2 = *k;
            const char *how = v / 3 ? "bidirectional" : "causal";
            snprintf(name, sizeof name, "classifier gradients (%s pooling, %s attention, padded batch, class weights) "
                     "match finite differences on %s", ts_pool_name(k->pool), how, ts_device_get_info(ts_device_at(d))->id);
            th_add_owned(name, classifier_grads_match_finite_differences, k);
            snprintf(name, sizeof name, "classifier logits (%s pooling, %s attention) ignore padding on %s",
                     ts_pool_name(k->pool), how, ts_device_get_info(ts_device_at(d))->id);
            th_add_owned(name, classifier_padding_changes_nothing, k2);
        }
        for (int v = 0; v < 2; v++) { /* character n-grams: causal last, bidirectional mean */
            cls_case *k = malloc(sizeof *k), *k2 = malloc(sizeof *k2);
            *k = (cls_case){ts_device_at(d), v ? TS_POOL_MEAN : TS_POOL_LAST, v, 11};
            *k2 = *k;
            snprintf(name, sizeof name, "classifier gradients with character n-grams (the table's too; %s pooling) "
                     "match finite differences on %s", ts_pool_name(k->pool), ts_device_get_info(ts_device_at(d))->id);
            th_add_owned(name, classifier_grads_match_finite_differences, k);
            snprintf(name, sizeof name, "classifier logits with character n-grams (%s pooling) ignore padding on %s",
                     ts_pool_name(k->pool), ts_device_get_info(ts_device_at(d))->id);
            th_add_owned(name, classifier_padding_changes_nothing, k2);
        }
    }
    TH_ADD(initial_loss_is_near_log_vocabulary);
    TH_ADD(logits_read_back_from_bf16_storage);
    TH_ADD(activations_stored_in_the_products_type);
    TH_ADD(gradient_accumulation_equals_one_big_batch);
    TH_ADD(training_agrees_between_cpu_and_opencl);
    TH_ADD(weights_round_trip_exactly_through_safetensors);
    TH_ADD(damaged_weight_files_are_rejected);
    TH_ADD(forward_rejects_bad_tokens_and_lengths);
    TH_ADD(classifier_ngram_table_round_trips_and_bad_ngrams_are_refused);
    TH_ADD(activations_of_both_attention_routes_share_one_model);
    TH_ADD(weight_decay_applies_to_matrices_only);
    TH_ADD(learning_rate_warms_up_then_follows_a_cosine);
    return th_run(argc, argv);
}
