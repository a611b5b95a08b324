/* Unit tests of the core: tensors and views, transfers, the caching
 * allocator, the device registry and spec strings, thread settings. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

TEST(alloc_sets_shape_dtype_and_size)
{
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    ts_tensor t;
    REQUIRE_OK(ts_tensor_alloc(&t, cpu, TS_F32, TS_SHAPE(2, 3, 5)));
    EXPECT(t.ndim == 3 && t.shape[0] == 2 && t.shape[1] == 3 && t.shape[2] == 5);
    EXPECT(ts_tensor_numel(&t) == 30);
    EXPECT(ts_tensor_nbytes(&t) == 120);
    EXPECT(t.owner == 1 && t.offset == 0);
    char buf[64];
    EXPECTF(!strcmp(ts_tensor_describe(&t, buf, sizeof buf), "[2, 3, 5] f32"), "got %s", buf);
    ts_tensor_free(&t);
    EXPECT(t.block == NULL && t.ndim == 0);
    ts_tensor_free(&t); /* freeing twice is harmless */
}

TEST(dtype_sizes_allow_half_storage)
{
    EXPECT(ts_dtype_size(TS_F32) == 4 && ts_dtype_size(TS_I32) == 4);
    EXPECT(ts_dtype_size(TS_F16) == 2 && ts_dtype_size(TS_BF16) == 2);
    EXPECT(!strcmp(ts_dtype_name(TS_BF16), "bf16"));
}

TEST(views_share_storage_and_stay_in_bounds)
{
    for (int d = 0; d < ts_device_count(); d++) {
        ts_device *dev = ts_device_at(d);
        float host[12];
        for (int i = 0; i < 12; i++) host[i] = (float)i;
        ts_tensor t, v, r;
        REQUIRE_OK(upload(&t, dev, TS_F32, TS_SHAPE(3, 4), host));
        REQUIRE_OK(ts_tensor_view(&v, &t, 5, TS_SHAPE(2, 3)));
        EXPECT(v.block == t.block && v.offset == 20 && v.owner == 0);
        REQUIRE_OK(ts_fill(&v, -1.0f));
        REQUIRE_OK(ts_tensor_read(&t, host, sizeof host));
        for (int i = 0; i < 12; i++)
            EXPECTF(host[i] == ((i >= 5 && i < 11) ? -1.0f : (float)i), "%s element %d = %g",
                    ts_device_get_info(dev)->id, i, host[i]);
        EXPECT_STATUS(ts_tensor_view(&v, &t, 7, TS_SHAPE(6)), TS_ERR_SHAPE);
        EXPECT_STATUS(ts_tensor_view(&v, &t, -1, TS_SHAPE(2)), TS_ERR_SHAPE);
        REQUIRE_OK(ts_tensor_reshape(&r, &t, TS_SHAPE(12)));
        EXPECT(r.ndim == 1 && r.shape[0] == 12);
        EXPECT_STATUS(ts_tensor_reshape(&r, &t, TS_SHAPE(5, 2)), TS_ERR_SHAPE);
        ts_tensor_free(&v); /* a view: clears it, the block stays */
        REQUIRE_OK(ts_tensor_read(&t, host, sizeof host));
        ts_tensor_free(&t);
    }
}

TEST(write_read_round_trip_on_every_device)
{
    rng_t r;
    rng_seed(&r, 3);
    int64_t n = 100003;
    float *x = rand_floats(&r, n, -10, 10), *y = malloc((size_t)n * sizeof *y);
    for (int d = 0; d < ts_device_count(); d++) {
        ts_tensor t;
        REQUIRE_OK(upload(&t, ts_device_at(d), TS_F32, TS_SHAPE(n), x));
        memset(y, 0, (size_t)n * sizeof *y);
        REQUIRE_OK(ts_tensor_read(&t, y, (size_t)n * sizeof *y));
        EXPECTF(!memcmp(x, y, (size_t)n * sizeof *y), "round trip differs on %s",
                ts_device_get_info(ts_device_at(d))->id);
        EXPECT_STATUS(ts_tensor_read(&t, y, 4), TS_ERR_SHAPE);
        ts_tensor_free(&t);
    }
    free(x), free(y);
}

TEST(copy_moves_data_between_devices)
{
    int n = ts_device_count();
    if (n < 2) SKIP("only one device");
    float x[37], y[37];
    for (int i = 0; i < 37; i++) x[i] = (float)i * 0.5f;
    ts_tensor a, b;
    REQUIRE_OK(upload(&a, ts_device_at(0), TS_F32, TS_SHAPE(37), x));
    REQUIRE_OK(ts_tensor_alloc(&b, ts_device_at(n - 1), TS_F32, TS_SHAPE(37)));
    REQUIRE_OK(ts_tensor_copy(&b, &a));
    REQUIRE_OK(ts_tensor_read(&b, y, sizeof y));
    EXPECT(!memcmp(x, y, sizeof x));
    ts_tensor c;
    REQUIRE_OK(ts_tensor_alloc(&c, ts_device_at(0), TS_F32, TS_SHAPE(36)));
    EXPECT_STATUS(ts_tensor_copy(&c, &b), TS_ERR_SHAPE);
    ts_tensor_free(&a), ts_tensor_free(&b), ts_tensor_free(&c);
}

TEST(allocator_reuses_freed_blocks)
{
    for (int d = 0; d < ts_device_count(); d++) {
        ts_device *dev = ts_device_at(d);
        ts_device_empty_cache(dev);
        ts_memory_stats s0, s1, s2;
        ts_device_memory_stats(dev, &s0);
        ts_tensor t;
        REQUIRE_OK(ts_tensor_alloc(&t, dev, TS_F32, TS_SHAPE(1000, 1000)));
        ts_device_memory_stats(dev, &s1);
        EXPECT(s1.in_use >= s0.in_use + 4000000);
        ts_tensor_free(&t);
        REQUIRE_OK(ts_tensor_alloc(&t, dev, TS_F32, TS_SHAPE(999, 1001))); /* same size class */
        ts_device_memory_stats(dev, &s2);
        EXPECTF(s2.cache_hits == s1.cache_hits + 1, "%s: cache hits %llu -> %llu",
                ts_device_get_info(dev)->id, (unsigned long long)s1.cache_hits,
                (unsigned long long)s2.cache_hits);
        EXPECT(s2.peak_in_use >= s2.in_use);
        ts_tensor_free(&t);
        ts_device_memory_stats(dev, &s2);
        EXPECT(s2.cached >= 4000000);
        ts_device_empty_cache(dev);
        ts_device_memory_stats(dev, &s2);
        EXPECT(s2.cached == 0);
    }
}

/* the peak of one phase: what bench train reports as a run's memory */
TEST(memory_peak_restarts_from_what_is_in_use)
{
    ts_device *dev = ts_device_at(0);
    ts_tensor big, small;
    REQUIRE_OK(ts_tensor_alloc(&big, dev, TS_F32, TS_SHAPE(1 << 20)));
    ts_tensor_free(&big);
    ts_memory_stats s;
    ts_device_memory_stats(dev, &s);
    EXPECT(s.peak_in_use >= s.in_use + (4u << 20));
    ts_device_memory_reset_peak(dev);
    ts_device_memory_stats(dev, &s);
    EXPECTF(s.peak_in_use == s.in_use, "peak %zu, in use %zu", s.peak_in_use, s.in_use);
    size_t before = s.in_use;
    REQUIRE_OK(ts_tensor_alloc(&small, dev, TS_F32, TS_SHAPE(1000)));
    ts_tensor_free(&small);
    ts_device_memory_stats(dev, &s);
    EXPECTF(s.peak_in_use >= before + 4000 && s.peak_in_use < before + (4u << 20), "peak %zu after %zu in use",
            s.peak_in_use, before);
}

size_t ts_allocator_size_class(size_t size);

TEST(size_classes_bound_waste)
{
    size_t prev = 0;
    for (size_t n = 1; n < ((size_t)1 << 34); n = n * 3 / 2 + 7) {
        size_t c = ts_allocator_size_class(n);
        EXPECTF(c >= n, "class %zu below size %zu", c, n);
        if (n >= ((size_t)1 << 20)) EXPECTF(c - n <= n / 8, "class %zu wastes > 1/8 of %zu", c, n);
        else EXPECTF(c % 512 == 0 && c - n < 512, "class %zu for %zu", c, n);
        EXPECT(c >= prev);
        prev = c;
    }
}

size_t ts_allocator_largest_fit(size_t limit);

/* A device's largest allocation, as requests: the largest request whose
 * size class fits (activations are split there; a block one byte larger
 * would be refused). */
TEST(largest_fit_is_the_largest_request_that_fits)
{
    size_t limits[] = {4096, 1000000, 4244635648u, 6360000000u, 8589934592u, 37527470080u};
    for (size_t i = 0; i < sizeof limits / sizeof *limits; i++) {
        size_t L = limits[i], f = ts_allocator_largest_fit(L);
        EXPECTF(f > 0 && ts_allocator_size_class(f) <= L, "limit %zu: %zu has class %zu", L, f,
                ts_allocator_size_class(f));
        EXPECTF(ts_allocator_size_class(f + 1) > L, "limit %zu: %zu + 1 fits too", L, f);
        EXPECTF(f >= L - L / 8, "limit %zu: only %zu", L, f);
    }
}

TEST(device_specs_resolve)
{
    ts_device *d = NULL;
    REQUIRE_OK(ts_device_open("cpu", &d));
    EXPECT(!strcmp(ts_device_get_info(d)->id, "cpu"));
    EXPECT(d == ts_device_at(0));
    int has_cl = 0;
    for (int i = 0; i < ts_device_count(); i++)
        if (!strcmp(ts_device_get_info(ts_device_at(i))->backend, "opencl")) has_cl = 1;
    if (has_cl) {
        REQUIRE_OK(ts_device_open("opencl", &d));
        EXPECT(!strcmp(ts_device_get_info(d)->id, "opencl:0"));
        REQUIRE_OK(ts_device_open("opencl:0", &d));
        EXPECT(!strcmp(ts_device_get_info(d)->id, "opencl:0"));
        /* a name substring, case-insensitive */
        char sub[8] = {0};
        memcpy(sub, ts_device_get_info(d)->name, 4);
        for (int i = 0; sub[i]; i++) sub[i] = (char)((sub[i] >= 'a' && sub[i] <= 'z') ? sub[i] - 32 : sub[i]);
        char spec[32];
        snprintf(spec, sizeof spec, "opencl:%s", sub);
        ts_device *byname = NULL;
        REQUIRE_OK(ts_device_open(spec, &byname));
        EXPECT(!strcmp(ts_device_get_info(byname)->backend, "opencl"));
    }
    EXPECT_STATUS(ts_device_open("opencl:99", &d), TS_ERR_DEVICE);
    EXPECT_STATUS(ts_device_open("cuda:0", &d), TS_ERR_DEVICE);
    EXPECTF(strstr(ts_last_error(), "cuda:0") && strstr(ts_last_error(), "cpu"),
            "message should name the spec and the devices: %s", ts_last_error());
}

TEST(default_device_is_a_gpu_or_the_cpu_backend)
{
    unsetenv("TESSERA_DEVICE");
    ts_device *d = NULL;
    REQUIRE_OK(ts_device_open(NULL, &d));
    int gpus = 0;
    for (int i = 0; i < ts_device_count(); i++)
        gpus += ts_device_get_info(ts_device_at(i))->type == TS_DEVICE_GPU;
    if (gpus) EXPECT(ts_device_get_info(d)->type == TS_DEVICE_GPU);
    else EXPECT(!strcmp(ts_device_get_info(d)->id, "cpu"));
    setenv("TESSERA_DEVICE", "cpu", 1);
    REQUIRE_OK(ts_device_open("auto", &d));
    EXPECT(!strcmp(ts_device_get_info(d)->id, "cpu"));
    setenv("TESSERA_DEVICE", "nonsense:7", 1);
    EXPECT_STATUS(ts_device_open(NULL, &d), TS_ERR_DEVICE);
    EXPECT(strstr(ts_last_error(), "TESSERA_DEVICE") != NULL);
    unsetenv("TESSERA_DEVICE");
}

TEST(device_info_is_filled_in)
{
    for (int i = 0; i < ts_device_count(); i++) {
        const ts_device_info *info = ts_device_get_info(ts_device_at(i));
        EXPECT(info->name[0] && info->id[0] && info->backend[0] && info->details[0]);
        EXPECT(info->global_mem_bytes > 0 && info->max_alloc_bytes > 0);
        EXPECT(info->max_alloc_bytes <= info->global_mem_bytes);
        EXPECT(info->compute_units > 0);
    }
}

/* The same sums whatever the thread count: reductions use fixed partitions. */
TEST(cpu_results_do_not_depend_on_thread_count)
{
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    rng_t r;
    rng_seed(&r, 5);
    int64_t N = 3000, C = 257;
    float *x = rand_floats(&r, N * C, -1, 1);
    ts_tensor tx, s, rows;
    REQUIRE_OK(upload(&tx, cpu, TS_F32, TS_SHAPE(N, C), x));
    REQUIRE_OK(ts_tensor_alloc(&s, cpu, TS_F32, TS_SHAPE(1)));
    REQUIRE_OK(ts_tensor_alloc(&rows, cpu, TS_F32, TS_SHAPE(C)));
    int keep = ts_get_threads();
    float a[2], ra[2][257];
    for (int k = 0; k < 2; k++) {
        REQUIRE_OK(ts_set_threads(k == 0 ? 1 : 3));
        REQUIRE_OK(ts_sqnorm(&s, &tx));
        REQUIRE_OK(ts_tensor_read(&s, &a[k], sizeof a[k]));
        REQUIRE_OK(ts_sum_rows(&rows, &tx, false));
        REQUIRE_OK(ts_tensor_read(&rows, ra[k], sizeof ra[k]));
    }
    REQUIRE_OK(ts_set_threads(keep));
    EXPECTF(!memcmp(&a[0], &a[1], sizeof a[0]), "sqnorm %.9g vs %.9g", a[0], a[1]);
    EXPECT(!memcmp(ra[0], ra[1], sizeof ra[0]));
    EXPECT_STATUS(ts_set_threads(-2), TS_ERR_INVALID_ARG);
    ts_tensor_free(&tx), ts_tensor_free(&s), ts_tensor_free(&rows);
    free(x);
}

TEST(empty_tensors_are_no_ops)
{
    for (int d = 0; d < ts_device_count(); d++) {
        ts_tensor t, s;
        REQUIRE_OK(ts_tensor_alloc(&t, ts_device_at(d), TS_F32, TS_SHAPE(0, 5)));
        REQUIRE_OK(ts_tensor_alloc(&s, ts_device_at(d), TS_F32, TS_SHAPE(1)));
        REQUIRE_OK(ts_fill(&t, 1.0f));
        REQUIRE_OK(ts_gelu_forward(&t, &t));
        REQUIRE_OK(ts_sum(&s, &t));
        float v = -1;
        REQUIRE_OK(ts_tensor_read(&s, &v, sizeof v));
        EXPECT(v == 0.0f);
        ts_tensor_free(&t), ts_tensor_free(&s);
    }
}

TEST(synchronize_succeeds_on_every_device)
{
    for (int d = 0; d < ts_device_count(); d++) REQUIRE_OK(ts_device_synchronize(ts_device_at(d)));
    EXPECT_STATUS(ts_device_synchronize(NULL), TS_ERR_DEVICE);
}

/* --device lists are dealt out by node-local rank; TESSERA_DEVICE (also a
 * list) overrides the option */
TEST(device_lists_are_dealt_out_by_local_rank_and_the_environment_overrides)
{
    unsetenv("TESSERA_DEVICE");
    ts_device *list[8], *d = NULL, *cpu = NULL;
    int n = 0;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    REQUIRE_OK(ts_device_list("cpu, cpu", list, 8, &n));
    EXPECT(n == 2 && list[0] == cpu && list[1] == cpu);
    /* auto: every GPU, or the CPU backend where there is none */
    REQUIRE_OK(ts_device_list("auto", list, 8, &n));
    EXPECT(n >= 1);
    for (int i = 0; i < n; i++)
        EXPECTF(ts_device_get_info(list[i])->type == TS_DEVICE_GPU || (n == 1 && list[0] == cpu),
                "auto item %d is %s", i, ts_device_get_info(list[i])->id);
    EXPECT_STATUS(ts_device_list("cpu,,cpu", list, 8, &n), TS_ERR_DEVICE);
    EXPECTF(strstr(ts_last_error(), "empty item"), "message: %s", ts_last_error());
    EXPECT_STATUS(ts_device_list("cpu,nonesuch", list, 8, &n), TS_ERR_DEVICE);
    EXPECTF(strstr(ts_last_error(), "item 2") && strstr(ts_last_error(), "nonesuch"), "message: %s", ts_last_error());
    EXPECT_STATUS(ts_device_list("cpu,cpu,cpu", list, 2, &n), TS_ERR_DEVICE);
    int have_ocl = ts_device_open("opencl:0", &d) == TS_OK;
    ts_clear_error();
    if (have_ocl) {
        ts_device *ocl = d;
        REQUIRE_OK(ts_device_open_local("cpu,opencl:0", 0, &d));
        EXPECT(d == cpu);
        REQUIRE_OK(ts_device_open_local("cpu,opencl:0", 1, &d));
        EXPECT(d == ocl);
        REQUIRE_OK(ts_device_open_local("cpu,opencl:0", 2, &d));
        EXPECT(d == cpu);
        setenv("TESSERA_DEVICE", "opencl:0,cpu", 1);
        REQUIRE_OK(ts_device_open_local("cpu,opencl:0", 0, &d));
        EXPECT(d == ocl);
    }
    setenv("TESSERA_DEVICE", "cpu,nonesuch", 1);
    EXPECT_STATUS(ts_device_open_local("cpu", 0, &d), TS_ERR_DEVICE);
    EXPECTF(strstr(ts_last_error(), "TESSERA_DEVICE=cpu,nonesuch"), "message: %s", ts_last_error());
    unsetenv("TESSERA_DEVICE");
}

/* The CPU backend's vectorized exp and tanh (cpu_math.h) through GELU and
 * the cross-entropy's softmax: within a few ulp of double precision over the whole float range
 * that matters, saturating beyond it, and a NaN in is a NaN out, in the
 * vector body and in the scalar tail alike. */
TEST(cpu_gelu_and_softmax_are_accurate_and_keep_nan)
{
    ts_device *cpu;
    REQUIRE_OK(ts_device_open("cpu", &cpu));
    enum { N = 4099 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    REQUIRE(x && y);
    for (int i = 0; i < N; i++) x[i] = -12.0f + 24.0f * (float)i / (float)(N - 1);
    x[17] = NAN, x[N - 2] = NAN, x[100] = INFINITY, x[200] = 200.0f, x[300] = -200.0f, x[400] = 1e-30f;
    ts_tensor t, o;
    REQUIRE_OK(ts_tensor_alloc(&t, cpu, TS_F32, TS_SHAPE(N)));
    REQUIRE_OK(ts_tensor_write(&t, x, N * sizeof *x));
    REQUIRE_OK(ts_tensor_alloc(&o, cpu, TS_F32, TS_SHAPE(N)));
    REQUIRE_OK(ts_gelu_forward(&o, &t));
    REQUIRE_OK(ts_tensor_read(&o, y, N * sizeof *y));
    double worst = 0;
    int nan_ok = 1;
    for (int i = 0; i < N; i++) {
        if (isnan(x[i])) {
            nan_ok &= isnan(y[i]);
            continue;
        }
        double v = x[i], want = 0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
        if (isinf(v)) {
            nan_ok &= y[i] == INFINITY;
            continue;
        }
        /* 1 + tanh cancels for negative x: an absolute bound, scaled by |x| */
        double err = fabs(y[i] - want) / fmax(1.0, fabs(v));
        worst = err > worst ? err : worst;
    }
    EXPECTF(nan_ok, "GELU of NaN (or +inf) is %g (%g)", (double)y[17], (double)y[100]);
    EXPECTF(worst < 1e-6, "GELU's largest error against double precision (over max(1, |x|)): %.3g", worst);
    /* softmax over rows of 1000: exp's whole useful range, and a row with a NaN */
    float *p = malloc(N * sizeof *p);
    REQUIRE(p);
    ts_tensor rows, probs;
    for (int i = 0; i < 4000; i++) x[i] = -100.0f + 0.05f * (float)(i % 1000) * (i < 2000 ? 1.0f : 2.0f);
    x[3333] = NAN;
    REQUIRE_OK(ts_tensor_alloc(&rows, cpu, TS_F32, TS_SHAPE(4, 1000)));
    REQUIRE_OK(ts_tensor_write(&rows, x, 4000 * sizeof *x));
    REQUIRE_OK(ts_tensor_alloc(&probs, cpu, TS_F32, TS_SHAPE(4, 1000)));
    REQUIRE_OK(ts_cross_entropy(NULL, &probs, NULL, &rows, NULL, 1.0f));
    REQUIRE_OK(ts_tensor_read(&probs, p, 4000 * sizeof *p));
    worst = 0;
    for (int r = 0; r < 2; r++) {
        double m = -INFINITY, sum = 0;
        for (int k = 0; k < 1000; k++) m = fmax(m, x[r * 1000 + k]);
        for (int k = 0; k < 1000; k++) sum += exp((double)x[r * 1000 + k] - m);
        for (int k = 0; k < 1000; k++) {
            double want = exp((double)x[r * 1000 + k] - m) / sum;
            if (want < 1e-30) continue;
            double err = fabs(p[r * 1000 + k] - want) / want;
            worst = err > worst ? err : worst;
        }
    }
    EXPECTF(worst < 2e-6, "softmax's largest relative error against double precision: %.3g", worst);
    EXPECTF(isnan(p[3333]) && isnan(p[3000]), "a row with a NaN has NaN probabilities: %g %g", (double)p[3333],
            (double)p[3000]);
    ts_tensor_free(&t), ts_tensor_free(&o), ts_tensor_free(&rows), ts_tensor_free(&probs);
    free(x), free(y), free(p);
}

int main(int argc, char **argv)
{
    TH_ADD(cpu_gelu_and_softmax_are_accurate_and_keep_nan);
    TH_ADD(alloc_sets_shape_dtype_and_size);
    TH_ADD(device_lists_are_dealt_out_by_local_rank_and_the_environment_overrides);
    TH_ADD(dtype_sizes_allow_half_storage);
    TH_ADD(views_share_storage_and_stay_in_bounds);
    TH_ADD(write_read_round_trip_on_every_device);
    TH_ADD(copy_moves_data_between_devices);
    TH_ADD(memory_peak_restarts_from_what_is_in_use);
    TH_ADD(allocator_reuses_freed_blocks);
    TH_ADD(size_classes_bound_waste);
    TH_ADD(largest_fit_is_the_largest_request_that_fits);
    TH_ADD(device_specs_resolve);
    TH_ADD(default_device_is_a_gpu_or_the_cpu_backend);
    TH_ADD(device_info_is_filled_in);
    TH_ADD(cpu_results_do_not_depend_on_thread_count);
    TH_ADD(empty_tensors_are_no_ops);
    TH_ADD(synchronize_succeeds_on_every_device);
    return th_run(argc, argv);
}
