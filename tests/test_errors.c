/* Bad input gets a clear error and the library keeps working: shape and
 * dtype mismatches, unknown devices, operands on two devices, allocations
 * beyond a device's memory, and a kernel source that fails to build (its
 * build log must reach the caller). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

static ts_device *opencl_device(void)
{
    ts_device *d = NULL;
    if (ts_device_open("opencl", &d) != TS_OK) return NULL;
    return d;
}

static int contains(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

/* Runs first, before any test builds elementwise.cl on the OpenCL device. */
TEST(broken_kernel_source_reports_its_build_log)
{
    ts_device *dev = opencl_device();
    if (!dev) SKIP("no OpenCL device");
    const char *src_root = getenv("TESSERA_SOURCE_ROOT");
    if (!src_root) SKIP("TESSERA_SOURCE_ROOT is not set");
    char dir[] = "/tmp/tessera-broken-XXXXXX";
    REQUIRE(mkdtemp(dir));
    char path[512], cmd[1024];
    snprintf(cmd, sizeof cmd, "cp '%s/kernels/common.cl' '%s/'", src_root, dir);
    REQUIRE(system(cmd) == 0);
    snprintf(path, sizeof path, "%s/elementwise.cl", dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs("__kernel void fill(__global float *t, ulong to, long n, float value)\n"
          "{\n    t[to + get_global_id(0)] = undeclared_identifier_xyz;\n}\n",
          f);
    fclose(f);
    setenv("TESSERA_KERNEL_DIR", dir, 1);
    ts_tensor t;
    REQUIRE_OK(ts_tensor_alloc(&t, dev, TS_F32, TS_SHAPE(16)));
    ts_status st = ts_fill(&t, 1.0f);
    unsetenv("TESSERA_KERNEL_DIR");
    EXPECTF(st == TS_ERR_BUILD, "got %s", ts_status_name(st));
    const char *msg = ts_last_error();
    EXPECTF(contains(msg, "build log") && contains(msg, "elementwise.cl") &&
                contains(msg, "undeclared_identifier_xyz") && contains(msg, "ts_fill"),
            "message lacks the op, file or compiler output:\n%s", msg);
    /* The failure is not cached: the embedded source builds and runs now. */
    REQUIRE_OK(ts_fill(&t, 2.5f));
    float v[16];
    REQUIRE_OK(ts_tensor_read(&t, v, sizeof v));
    EXPECT(v[15] == 2.5f);
    ts_tensor_free(&t);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) th_note("could not remove %s", dir);
}

TEST(shape_mismatch_names_op_and_shapes)
{
    for (int d = 0; d < ts_device_count(); d++) {
        ts_device *dev = ts_device_at(d);
        ts_tensor a, b, c;
        REQUIRE_OK(ts_tensor_zeros(&a, dev, TS_F32, TS_SHAPE(4, 3)));
        REQUIRE_OK(ts_tensor_zeros(&b, dev, TS_F32, TS_SHAPE(5, 3)));
        REQUIRE_OK(ts_tensor_zeros(&c, dev, TS_F32, TS_SHAPE(4, 3)));
        EXPECT_STATUS(ts_add(&c, &a, &b), TS_ERR_SHAPE);
        EXPECTF(contains(ts_last_error(), "ts_add") && contains(ts_last_error(), "[5, 3]"),
                "%s", ts_last_error());
        EXPECT_STATUS(ts_matmul(&c, &a, &b, false, false, 1, 0), TS_ERR_SHAPE);
        EXPECTF(contains(ts_last_error(), "ts_matmul") && contains(ts_last_error(), "[4, 3]"),
                "%s", ts_last_error());
        /* the valid product still works afterwards */
        ts_tensor p;
        REQUIRE_OK(ts_tensor_alloc(&p, dev, TS_F32, TS_SHAPE(4, 5)));
        REQUIRE_OK(ts_matmul(&p, &a, &b, false, true, 1, 0));
        ts_tensor_free(&a), ts_tensor_free(&b), ts_tensor_free(&c), ts_tensor_free(&p);
    }
}

TEST(wrong_dtype_is_rejected)
{
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    ts_tensor i, f;
    REQUIRE_OK(ts_tensor_alloc(&i, cpu, TS_I32, TS_SHAPE(8)));
    REQUIRE_OK(ts_tensor_alloc(&f, cpu, TS_F32, TS_SHAPE(8)));
    EXPECT_STATUS(ts_gelu_forward(&f, &i), TS_ERR_SHAPE);
    EXPECT(contains(ts_last_error(), "i32"));
    ts_tensor wte, out;
    REQUIRE_OK(ts_tensor_alloc(&wte, cpu, TS_F32, TS_SHAPE(10, 4)));
    REQUIRE_OK(ts_tensor_alloc(&out, cpu, TS_F32, TS_SHAPE(2, 4, 4)));
    ts_tensor ftok;
    REQUIRE_OK(ts_tensor_reshape(&ftok, &f, TS_SHAPE(2, 4)));
    EXPECT_STATUS(ts_embedding_forward(&out, &ftok, &wte, NULL), TS_ERR_SHAPE); /* f32 tokens */
    ts_tensor_free(&i), ts_tensor_free(&f), ts_tensor_free(&wte), ts_tensor_free(&out);
}

TEST(embedding_bag_rejects_bad_shapes_and_shared_memory)
{
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    ts_tensor ids, w, w3, table, out, small;
    REQUIRE_OK(ts_tensor_alloc(&ids, cpu, TS_I32, TS_SHAPE(2, 4)));
    REQUIRE_OK(ts_tensor_alloc(&w, cpu, TS_F32, TS_SHAPE(2, 4)));
    REQUIRE_OK(ts_tensor_alloc(&w3, cpu, TS_F32, TS_SHAPE(2, 3)));
    REQUIRE_OK(ts_tensor_alloc(&table, cpu, TS_F32, TS_SHAPE(10, 5)));
    REQUIRE_OK(ts_tensor_alloc(&out, cpu, TS_F32, TS_SHAPE(2, 5)));
    REQUIRE_OK(ts_tensor_alloc(&small, cpu, TS_F32, TS_SHAPE(2, 4)));
    EXPECT_STATUS(ts_embedding_bag_forward(&out, &ids, &w3, &table), TS_ERR_SHAPE);
    EXPECTF(contains(ts_last_error(), "ts_embedding_bag_forward") && contains(ts_last_error(), "[2, 3]") &&
                contains(ts_last_error(), "[2, 4]"),
            "%s", ts_last_error());
    EXPECT_STATUS(ts_embedding_bag_forward(&out, &w, &w, &table), TS_ERR_SHAPE); /* f32 ids */
    EXPECT_STATUS(ts_embedding_bag_forward(&small, &ids, &w, &table), TS_ERR_SHAPE); /* out of 8, not 10 */
    EXPECT_STATUS(ts_embedding_bag_backward(&table, &small, &ids, &w), TS_ERR_SHAPE); /* dout of 8, not 10 */
    EXPECTF(contains(ts_last_error(), "ts_embedding_bag_backward"), "%s", ts_last_error());
    /* the output may not share memory with an input */
    ts_tensor half;
    REQUIRE_OK(ts_tensor_view(&half, &table, 0, TS_SHAPE(2, 5)));
    EXPECT_STATUS(ts_embedding_bag_forward(&half, &ids, &w, &table), TS_ERR_INVALID_ARG);
    EXPECTF(contains(ts_last_error(), "shares memory"), "%s", ts_last_error());
    EXPECT_STATUS(ts_embedding_bag_backward(&table, &half, &ids, &w), TS_ERR_INVALID_ARG);
    int32_t host_ids[8] = {0, 1, 2, 3, 9, 10, -1, 4};
    float ones[50];
    for (int k = 0; k < 50; k++) ones[k] = 1.0f;
    REQUIRE_OK(ts_tensor_write(&ids, host_ids, sizeof host_ids));
    REQUIRE_OK(ts_tensor_write(&w, ones, 8 * sizeof *ones));
    REQUIRE_OK(ts_tensor_write(&table, ones, sizeof ones));
    REQUIRE_OK(ts_embedding_bag_forward(&out, &ids, &w, &table)); /* the valid call still works */
    float got[10];
    REQUIRE_OK(ts_tensor_read(&out, got, sizeof got));
    EXPECTF(got[0] == 4.0f && got[5] == 2.0f, "sums %g and %g, expected 4 and 2 (ids 10 and -1 add nothing)",
            (double)got[0], (double)got[5]);
    ts_tensor_free(&ids), ts_tensor_free(&w), ts_tensor_free(&w3), ts_tensor_free(&table), ts_tensor_free(&out);
    ts_tensor_free(&small);
}

/* bf16 and f16 activations go where an op says so, and nowhere else */
TEST(low_precision_only_where_an_op_takes_activations)
{
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    ts_tensor a, b, h, f, w, wb, s;
    REQUIRE_OK(ts_tensor_zeros(&a, cpu, TS_BF16, TS_SHAPE(2, 4)));
    REQUIRE_OK(ts_tensor_zeros(&b, cpu, TS_BF16, TS_SHAPE(2, 4)));
    REQUIRE_OK(ts_tensor_zeros(&h, cpu, TS_F16, TS_SHAPE(2, 4)));
    REQUIRE_OK(ts_tensor_zeros(&f, cpu, TS_F32, TS_SHAPE(2, 4)));
    REQUIRE_OK(ts_tensor_zeros(&w, cpu, TS_F32, TS_SHAPE(4, 4)));
    REQUIRE_OK(ts_tensor_zeros(&wb, cpu, TS_BF16, TS_SHAPE(4, 4)));
    REQUIRE_OK(ts_tensor_zeros(&s, cpu, TS_BF16, TS_SHAPE(7)));
    /* accepted */
    REQUIRE_OK(ts_gelu_forward(&a, &b));
    REQUIRE_OK(ts_gelu_backward(&f, &a, &f));
    REQUIRE_OK(ts_cast(&f, &a));
    REQUIRE_OK(ts_linear_forward(&a, &b, &w, NULL));
    REQUIRE_OK(ts_linear_backward(&f, &w, NULL, &f, &a, &w));
    /* refused, naming the operand */
    EXPECT_STATUS(ts_gelu_backward(&a, &a, &f), TS_ERR_SHAPE); /* a bf16 gradient */
    EXPECTF(contains(ts_last_error(), "dinp") && contains(ts_last_error(), "bf16"), "%s", ts_last_error());
    EXPECT_STATUS(ts_gelu_backward(&f, &a, &b), TS_ERR_SHAPE); /* dout */
    REQUIRE_OK(ts_gelu_forward(&f, &h)); /* f16 activations, through fp32 copies */
    REQUIRE_OK(ts_cast(&h, &f));
    EXPECT_STATUS(ts_cast(&h, &a), TS_ERR_SHAPE); /* bf16 to f16: through f32 */
    EXPECTF(contains(ts_last_error(), "one side must be f32"), "%s", ts_last_error());
    EXPECT_STATUS(ts_gelu_backward(&h, &a, &f), TS_ERR_SHAPE); /* an f16 gradient */
    ts_tensor tg16;
    int32_t t16[2] = {0, 3};
    REQUIRE_OK(ts_tensor_alloc(&tg16, cpu, TS_I32, TS_SHAPE(2)));
    REQUIRE_OK(ts_tensor_write(&tg16, t16, sizeof t16));
    EXPECT_STATUS(ts_cross_entropy(NULL, NULL, &h, &h, &tg16, 1.0f), TS_ERR_SHAPE); /* f16 logits: no */
    EXPECTF(contains(ts_last_error(), "logits") && contains(ts_last_error(), "f16"), "%s", ts_last_error());
    ts_tensor rm, se; /* the vocabulary-parallel cross-entropy takes bf16 logits, with a bf16 gradient */
    REQUIRE_OK(ts_tensor_zeros(&rm, cpu, TS_F32, TS_SHAPE(2)));
    REQUIRE_OK(ts_tensor_zeros(&se, cpu, TS_F32, TS_SHAPE(2)));
    REQUIRE_OK(ts_ce_shard_stats(&rm, &se, &a, &tg16, 0));
    EXPECT_STATUS(ts_ce_shard_grad(&f, &a, &rm, &se, &tg16, 0, 4, 1.0f), TS_ERR_SHAPE);
    EXPECTF(contains(ts_last_error(), "dlogits must be bf16"), "%s", ts_last_error());
    EXPECT_STATUS(ts_ce_shard_sumexp(&rm, &h, &se), TS_ERR_SHAPE); /* f16 logits: no */
    ts_tensor_free(&rm), ts_tensor_free(&se);
    ts_tensor_free(&tg16);
    EXPECT_STATUS(ts_linear_forward(&a, &b, &wb, NULL), TS_ERR_SHAPE); /* bf16 weights */
    EXPECTF(contains(ts_last_error(), "w must be f32"), "%s", ts_last_error());
    EXPECT_STATUS(ts_linear_backward(&a, NULL, NULL, &f, &a, &w), TS_ERR_SHAPE); /* bf16 dinp */
    REQUIRE_OK(ts_linear_backward(&f, &w, NULL, &a, &a, &w)); /* a bf16 dout (the head's dlogits) is taken */
    EXPECT_STATUS(ts_add(&a, &a, &b), TS_ERR_SHAPE);
    EXPECT_STATUS(ts_cast(&f, &s), TS_ERR_SHAPE); /* 7 elements into 8 */
    /* the cross-entropy in place keeps the logits' type */
    ts_tensor tg, a16;
    int32_t tgt[2] = {1, 2};
    REQUIRE_OK(ts_tensor_alloc(&tg, cpu, TS_I32, TS_SHAPE(2)));
    REQUIRE_OK(ts_tensor_write(&tg, tgt, sizeof tgt));
    REQUIRE_OK(ts_cross_entropy(NULL, NULL, &a, &a, &tg, 1.0f)); /* bf16 in place */
    REQUIRE_OK(ts_tensor_view_typed(&a16, &f, 0, TS_BF16, TS_SHAPE(2, 4))); /* f's bytes as bf16 */
    EXPECT_STATUS(ts_cross_entropy(NULL, NULL, &a16, &f, &tg, 1.0f), TS_ERR_INVALID_ARG);
    EXPECTF(contains(ts_last_error(), "in place"), "%s", ts_last_error());
    EXPECT_STATUS(ts_cross_entropy(NULL, &f, NULL, &a16, NULL, 1.0f), TS_ERR_INVALID_ARG); /* f32 probs over them */
    EXPECTF(contains(ts_last_error(), "probs in place"), "%s", ts_last_error());
    EXPECT_STATUS(ts_gelu_forward(&a16, &f), TS_ERR_INVALID_ARG); /* bf16 out over f32 inp, in place */
    EXPECT_STATUS(ts_cast(&a16, &f), TS_ERR_INVALID_ARG);
    EXPECT_STATUS(ts_tensor_view_typed(&a16, &a, 1, TS_F32, TS_SHAPE(1)), TS_ERR_SHAPE); /* byte 2: misaligned */
    EXPECT_STATUS(ts_tensor_view_typed(&a16, &a, 0, TS_F32, TS_SHAPE(2, 4)), TS_ERR_SHAPE); /* 32 bytes in 16 */
    ts_tensor_free(&tg);
    ts_tensor_free(&a), ts_tensor_free(&b), ts_tensor_free(&h), ts_tensor_free(&f);
    ts_tensor_free(&w), ts_tensor_free(&wb), ts_tensor_free(&s);
}

/* attention takes bf16 and f16 qkv, output and output gradient, never a
 * 16-bit dqkv or an integer activation, on either route */
TEST(attention_takes_16_bit_activations_but_no_16_bit_gradient)
{
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    for (int route = TS_ATTENTION_COMPOSITE; route <= TS_ATTENTION_FUSED; route++) {
        ts_attention_ws ws;
        ts_tensor qkv, q16, qi, out, d, dq, dq16;
        REQUIRE_OK(ts_attention_ws_alloc_route(&ws, cpu, 1, 2, 4, 1, (ts_attention_route)route));
        REQUIRE_OK(ts_tensor_zeros(&qkv, cpu, TS_BF16, TS_SHAPE(1, 2, 12)));
        REQUIRE_OK(ts_tensor_zeros(&q16, cpu, TS_F16, TS_SHAPE(1, 2, 12)));
        REQUIRE_OK(ts_tensor_zeros(&qi, cpu, TS_I32, TS_SHAPE(1, 2, 12)));
        REQUIRE_OK(ts_tensor_zeros(&out, cpu, TS_BF16, TS_SHAPE(1, 2, 4)));
        REQUIRE_OK(ts_tensor_zeros(&d, cpu, TS_BF16, TS_SHAPE(1, 2, 4)));
        REQUIRE_OK(ts_tensor_zeros(&dq, cpu, TS_F32, TS_SHAPE(1, 2, 12)));
        REQUIRE_OK(ts_tensor_zeros(&dq16, cpu, TS_BF16, TS_SHAPE(1, 2, 12)));
        EXPECT_STATUS(ts_attention_forward(&out, &qi, &ws), TS_ERR_SHAPE);
        EXPECTF(contains(ts_last_error(), "qkv") && contains(ts_last_error(), "i32"), "%s", ts_last_error());
        REQUIRE_OK(ts_attention_forward(&out, &q16, &ws)); /* f16 qkv into a bf16 output */
        REQUIRE_OK(ts_attention_forward(&out, &qkv, &ws));
        REQUIRE_OK(ts_attention_backward(&dq, &d, &ws));
        EXPECT_STATUS(ts_attention_backward(&dq16, &d, &ws), TS_ERR_SHAPE);
        EXPECTF(contains(ts_last_error(), "dqkv") && contains(ts_last_error(), "bf16"), "%s", ts_last_error());
        ts_attention_ws_free(&ws);
        ts_tensor_free(&qkv), ts_tensor_free(&q16), ts_tensor_free(&qi), ts_tensor_free(&out), ts_tensor_free(&d);
        ts_tensor_free(&dq), ts_tensor_free(&dq16);
    }
}

TEST(operands_on_two_devices_are_rejected)
{
    if (ts_device_count() < 2) SKIP("only one device");
    ts_tensor a, b;
    REQUIRE_OK(ts_tensor_zeros(&a, ts_device_at(0), TS_F32, TS_SHAPE(8)));
    REQUIRE_OK(ts_tensor_zeros(&b, ts_device_at(1), TS_F32, TS_SHAPE(8)));
    EXPECT_STATUS(ts_add(&a, &a, &b), TS_ERR_DEVICE);
    EXPECTF(contains(ts_last_error(), "different devices"), "%s", ts_last_error());
    ts_tensor_free(&a), ts_tensor_free(&b);
}

TEST(unknown_device_is_an_error_listing_devices)
{
    ts_device *d = (ts_device *)1;
    EXPECT_STATUS(ts_device_open("tpu:3", &d), TS_ERR_DEVICE);
    EXPECT(d == NULL);
    EXPECTF(contains(ts_last_error(), "tpu:3") && contains(ts_last_error(), "available"), "%s",
            ts_last_error());
}

TEST(allocation_beyond_device_memory_fails_cleanly)
{
    for (int d = 0; d < ts_device_count(); d++) {
        ts_device *dev = ts_device_at(d);
        const ts_device_info *info = ts_device_get_info(dev);
        ts_tensor t;
        int64_t too_many = (int64_t)(info->global_mem_bytes / 4) * 2 + 1024;
        EXPECT_STATUS(ts_tensor_alloc(&t, dev, TS_F32, TS_SHAPE(too_many)), TS_ERR_OOM);
        EXPECTF(contains(ts_last_error(), info->id), "%s", ts_last_error());
        EXPECT(t.block == NULL);
        EXPECT_STATUS(ts_tensor_alloc(&t, dev, TS_F32, TS_SHAPE(INT64_MAX / 2, 4)), TS_ERR_SHAPE);
        /* the device still works */
        REQUIRE_OK(ts_tensor_zeros(&t, dev, TS_F32, TS_SHAPE(1024)));
        ts_tensor_free(&t);
    }
}

TEST(null_and_unallocated_arguments_are_rejected)
{
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    ts_tensor t, empty, fresh;
    memset(&empty, 0, sizeof empty);
    REQUIRE_OK(ts_tensor_zeros(&t, cpu, TS_F32, TS_SHAPE(4)));
    EXPECT_STATUS(ts_add(&t, NULL, &t), TS_ERR_INVALID_ARG);
    EXPECT_STATUS(ts_add(&t, &empty, &t), TS_ERR_INVALID_ARG);
    EXPECT_STATUS(ts_tensor_alloc(&fresh, NULL, TS_F32, TS_SHAPE(4)), TS_ERR_DEVICE);
    EXPECT(fresh.block == NULL);
    EXPECT_STATUS(ts_tensor_alloc(&fresh, cpu, TS_F32, 5, (const int64_t[]){1, 1, 1, 1, 1}),
                  TS_ERR_SHAPE);
    EXPECT_STATUS(ts_tensor_alloc(&fresh, cpu, TS_F32, TS_SHAPE(-3)), TS_ERR_SHAPE);
    ts_tensor_free(&t);
}

TEST(invalid_op_parameters_are_rejected)
{
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    ts_tensor x, w, b, o, s;
    REQUIRE_OK(ts_tensor_zeros(&x, cpu, TS_F32, TS_SHAPE(2, 8)));
    REQUIRE_OK(ts_tensor_zeros(&w, cpu, TS_F32, TS_SHAPE(8)));
    REQUIRE_OK(ts_tensor_zeros(&b, cpu, TS_F32, TS_SHAPE(8)));
    REQUIRE_OK(ts_tensor_zeros(&o, cpu, TS_F32, TS_SHAPE(2, 8)));
    REQUIRE_OK(ts_tensor_zeros(&s, cpu, TS_F32, TS_SHAPE(2)));
    EXPECT_STATUS(ts_layernorm_forward(&o, NULL, NULL, &x, &w, &b, 0.0f), TS_ERR_INVALID_ARG);
    EXPECT_STATUS(ts_layernorm_forward(&o, &s, &w, &x, &w, &b, 1e-5f), TS_ERR_SHAPE); /* rstd [8] */
    EXPECT_STATUS(ts_cross_entropy(&s, NULL, NULL, &x, NULL, 1.0f), TS_ERR_INVALID_ARG);
    EXPECT_STATUS(ts_softmax_causal_forward(&o, &x, 1.0f), TS_ERR_SHAPE); /* not [BH,T,T] */
    EXPECT_STATUS(ts_split_heads(&o, &x, 2, 3, 1, 1), TS_ERR_SHAPE);     /* 16 % 6 != 0 */
    ts_tensor x3, len, at;
    REQUIRE_OK(ts_tensor_zeros(&x3, cpu, TS_F32, TS_SHAPE(2, 3, 8)));
    int32_t lengths[2] = {3, 1};
    REQUIRE_OK(upload(&len, cpu, TS_I32, TS_SHAPE(2), lengths));
    REQUIRE_OK(ts_tensor_alloc(&at, cpu, TS_I32, TS_SHAPE(2, 8)));
    EXPECT_STATUS(ts_pool_max_forward(&o, &at, &x, &len), TS_ERR_SHAPE);   /* x not [B,T,C] */
    EXPECT_STATUS(ts_pool_max_forward(&o, &at, &x3, &s), TS_ERR_SHAPE);    /* f32 lengths */
    EXPECT_STATUS(ts_pool_max_forward(&o, &o, &x3, &len), TS_ERR_SHAPE);   /* f32 argmax */
    EXPECT_STATUS(ts_pool_max_forward(&w, &at, &x3, &len), TS_ERR_SHAPE);  /* out [8], not [2,8] */
    EXPECT_STATUS(ts_pool_max_forward(&o, &at, &x3, &at), TS_ERR_SHAPE);   /* lengths [2,8], not [2] */
    EXPECT_STATUS(ts_pool_max_forward(&o, &len, &x3, &len), TS_ERR_SHAPE); /* argmax [2], not [2,8] */
    EXPECT_STATUS(ts_pool_max_backward(&x3, &w, &at), TS_ERR_SHAPE);       /* dout [8] */
    EXPECT_STATUS(ts_pool_max_backward(&o, &o, &at), TS_ERR_SHAPE);        /* dx not [B,T,C] */
    REQUIRE_OK(ts_pool_max_forward(&o, &at, &x3, &len)); /* and the right shapes pass */
    ts_tensor_free(&x3), ts_tensor_free(&len), ts_tensor_free(&at);
    ts_optim_params p = {.kind = TS_OPTIM_ADAMW, .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f,
                         .eps = 1e-8f, .grad_scale = 1.0f, .step = 0};
    EXPECT_STATUS(ts_optimizer_update(&w, &b, &x, &x, &p), TS_ERR_SHAPE);      /* m is [2,8] */
    EXPECT_STATUS(ts_optimizer_update(&w, &b, &b, &b, &p), TS_ERR_INVALID_ARG); /* step 0 */
    p.kind = (ts_optim_kind)42;
    EXPECT_STATUS(ts_optimizer_update(&w, &b, &b, &b, &p), TS_ERR_INVALID_ARG);
    ts_tensor_free(&x), ts_tensor_free(&w), ts_tensor_free(&b), ts_tensor_free(&o), ts_tensor_free(&s);
}

TEST(status_names_and_context_chain)
{
    EXPECT(!strcmp(ts_status_name(TS_ERR_OOM), "TS_ERR_OOM"));
    ts_error(TS_ERR_IO, "inner %d", 7);
    ts_error_context(TS_ERR_IO, "outer");
    EXPECTF(!strcmp(ts_last_error(), "outer: inner 7"), "%s", ts_last_error());
    EXPECT(ts_last_status() == TS_ERR_IO);
    ts_clear_error();
    EXPECT(ts_last_error()[0] == '\0');
}

int main(int argc, char **argv)
{
    TH_ADD(broken_kernel_source_reports_its_build_log);
    TH_ADD(shape_mismatch_names_op_and_shapes);
    TH_ADD(wrong_dtype_is_rejected);
    TH_ADD(embedding_bag_rejects_bad_shapes_and_shared_memory);
    TH_ADD(low_precision_only_where_an_op_takes_activations);
    TH_ADD(attention_takes_16_bit_activations_but_no_16_bit_gradient);
    TH_ADD(operands_on_two_devices_are_rejected);
    TH_ADD(unknown_device_is_an_error_listing_devices);
    TH_ADD(allocation_beyond_device_memory_fails_cleanly);
    TH_ADD(null_and_unallocated_arguments_are_rejected);
    TH_ADD(invalid_op_parameters_are_rejected);
    TH_ADD(status_names_and_context_chain);
    return th_run(argc, argv);
}
