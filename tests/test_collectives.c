/* Collectives under mpirun (any number of ranks): every reduction strategy
 * gives exact sums of integer-valued data, for sizes that do not divide by
 * the number of ranks; reduce-scatter and all-gather agree with the part
 * boundaries; the shared-memory path works in place; broadcasts, maxima
 * and tensors on every device. Rank 0 prints TAP; every rank checks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static ts_comm *W;
static int rank_, size_;

static int combine(int failed)
{
    int64_t f = failed;
    ts_comm_allreduce_i64(W, &f, 1, TS_REDUCE_SUM, "test verdict");
    return (int)f;
}

static const int64_t sizes[] = {1, 2, 7, 1000, 1023, 65537, (1 << 20) + 3};

/* x[i] = (rank + 1) * (i % 97) - 50: integers, so every order sums exactly */
static float value(int r, int64_t i) { return (float)((r + 1) * (int)(i % 97) - 50); }
static float total(int64_t i)
{
    return (float)((size_ * (size_ + 1) / 2) * (int)(i % 97) - 50 * size_);
}

static void allreduce_strategy(void *arg)
{
    ts_reduce_strategy s = (ts_reduce_strategy)(intptr_t)arg;
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        int64_t n = sizes[k];
        float *x = malloc((size_t)n * sizeof *x);
        for (int64_t i = 0; i < n; i++) x[i] = value(rank_, i);
        REQUIRE_OK(ts_comm_allreduce_sum(W, x, n, s, "test allreduce"));
        int64_t bad = 0, first = -1;
        for (int64_t i = 0; i < n; i++)
            if (x[i] != total(i)) bad++, first = first < 0 ? i : first;
        EXPECTF(bad == 0, "rank %d: %s allreduce of %lld: %lld wrong (first at %lld: %g, want %g)", rank_,
                ts_strategy_name(s), (long long)n, (long long)bad, (long long)first, first >= 0 ? x[first] : 0,
                first >= 0 ? total(first) : 0);
        free(x);
    }
}

static void reduce_scatter_allgather(void *arg)
{
    ts_reduce_strategy s = (ts_reduce_strategy)(intptr_t)arg;
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        int64_t n = sizes[k];
        float *x = malloc((size_t)n * sizeof *x);
        for (int64_t i = 0; i < n; i++) x[i] = value(rank_, i);
        REQUIRE_OK(ts_comm_reduce_scatter_sum(W, x, n, s, "test reduce-scatter"));
        int64_t a = ts_comm_part_start(n, size_, rank_), b = ts_comm_part_start(n, size_, rank_ + 1), bad = 0;
        for (int64_t i = a; i < b; i++) bad += x[i] != total(i);
        EXPECTF(bad == 0, "rank %d: %s reduce-scatter of %lld: %lld wrong in my part", rank_, ts_strategy_name(s),
                (long long)n, (long long)bad);
        /* poison everything outside my part; all-gather restores it */
        for (int64_t i = 0; i < n; i++)
            if (i < a || i >= b) x[i] = NAN;
        REQUIRE_OK(ts_comm_allgather_parts(W, x, n, s, "test all-gather"));
        bad = 0;
        for (int64_t i = 0; i < n; i++) bad += x[i] != total(i);
        EXPECTF(bad == 0, "rank %d: %s all-gather of %lld: %lld wrong", rank_, ts_strategy_name(s), (long long)n,
                (long long)bad);
        free(x);
    }
}

TEST(shared_memory_allreduce_works_in_place)
{
    if (size_ == 1) SKIP("one rank");
    int64_t n = 100003;
    float *x = ts_comm_shared_alloc(W, n);
    if (!x) SKIP("no shared window (ranks on different nodes?)");
    for (int round = 0; round < 3; round++) {
        for (int64_t i = 0; i < n; i++) x[i] = value(rank_, i + round);
        /* a sub-range, as gradient buckets are */
        REQUIRE_OK(ts_comm_allreduce_sum(W, x + 11, n - 20, TS_STRATEGY_HIER, "test in place"));
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++) {
            float want = (i >= 11 && i < n - 9) ? total(i + round) : value(rank_, i + round);
            bad += x[i] != want;
        }
        EXPECTF(bad == 0, "rank %d round %d: %lld wrong", rank_, round, (long long)bad);
    }
}

TEST(parameter_server_reduce_reaches_only_the_root)
{
    int64_t n = 1001;
    float *x = malloc((size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = value(rank_, i);
    REQUIRE_OK(ts_comm_reduce_sum(W, x, n, 0, "test reduce"));
    if (rank_ == 0)
        for (int64_t i = 0; i < n; i++) EXPECT(x[i] == total(i));
    free(x);
}

TEST(broadcast_maxima_and_doubles)
{
    char msg[32] = "";
    if (rank_ == size_ - 1) snprintf(msg, sizeof msg, "from the last rank");
    REQUIRE_OK(ts_comm_bcast(W, msg, sizeof msg, size_ - 1, "test bcast"));
    EXPECT(!strcmp(msg, "from the last rank"));
    float m[3] = {(float)rank_, (float)-rank_, 7.0f};
    REQUIRE_OK(ts_comm_allreduce_f32(W, m, 3, TS_REDUCE_MAX, "test max"));
    EXPECT(m[0] == (float)(size_ - 1) && m[1] == 0.0f && m[2] == 7.0f);
    double d = 0.1 * (rank_ + 1);
    REQUIRE_OK(ts_comm_allreduce_f64(W, &d, 1, TS_REDUCE_SUM, "test f64"));
    EXPECT(fabs(d - 0.1 * size_ * (size_ + 1) / 2) < 1e-12);
    int64_t *all = malloc((size_t)size_ * sizeof *all), me = rank_ * 10;
    REQUIRE_OK(ts_comm_allgather(W, &me, all, sizeof me, "test allgather"));
    for (int r = 0; r < size_; r++) EXPECT(all[r] == r * 10);
    free(all);
}

TEST(tensor_collectives_on_every_device)
{
    for (int d = 0; d < ts_device_count(); d++) {
        ts_device *dev = ts_device_at(d);
        int64_t n = 777;
        float *h = malloc((size_t)n * sizeof *h);
        for (int64_t i = 0; i < n; i++) h[i] = value(rank_, i);
        ts_tensor t;
        REQUIRE_OK(upload(&t, dev, TS_F32, TS_SHAPE(n), h));
        REQUIRE_OK(ts_comm_allreduce_tensor(W, &t, TS_REDUCE_SUM, "test tensor"));
        REQUIRE_OK(ts_tensor_read(&t, h, (size_t)n * sizeof *h));
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++) bad += h[i] != total(i);
        EXPECTF(bad == 0, "%s: %lld wrong", ts_device_get_info(dev)->id, (long long)bad);
        /* a ring of sends: each rank passes its rank to the next */
        if (size_ > 1) {
            float mine = (float)rank_, got = -1;
            ts_tensor a, b;
            REQUIRE_OK(upload(&a, dev, TS_F32, TS_SHAPE(1), &mine));
            REQUIRE_OK(ts_tensor_alloc(&b, dev, TS_F32, TS_SHAPE(1)));
            if (rank_ % 2 == 0) {
                REQUIRE_OK(ts_comm_send_tensor(W, &a, (rank_ + 1) % size_, 5, "test send"));
                REQUIRE_OK(ts_comm_recv_tensor(W, &b, (rank_ - 1 + size_) % size_, 5, "test recv"));
            } else {
                REQUIRE_OK(ts_comm_recv_tensor(W, &b, (rank_ - 1 + size_) % size_, 5, "test recv"));
                REQUIRE_OK(ts_comm_send_tensor(W, &a, (rank_ + 1) % size_, 5, "test send"));
            }
            REQUIRE_OK(ts_tensor_read(&b, &got, sizeof got));
            EXPECT(got == (float)((rank_ - 1 + size_) % size_));
            ts_tensor_free(&a), ts_tensor_free(&b);
        }
        ts_tensor_free(&t);
        free(h);
    }
}

TEST(split_groups_reduce_independently)
{
    ts_comm *half;
    REQUIRE_OK(ts_comm_split(W, rank_ % 2, rank_, "half", &half));
    float x = 1.0f;
    REQUIRE_OK(ts_comm_allreduce_f32(half, &x, 1, TS_REDUCE_SUM, "test split"));
    EXPECT(x == (float)((size_ + (rank_ % 2 == 0)) / 2));
    EXPECT(ts_comm_size(half) == (size_ + (rank_ % 2 == 0)) / 2);
    ts_comm_free(half);
}

int main(int argc, char **argv)
{
    if (ts_parallel_init(&argc, &argv) != TS_OK) {
        fprintf(stderr, "%s\n", ts_last_error());
        return 1;
    }
    W = ts_comm_world();
    rank_ = ts_comm_rank(W), size_ = ts_comm_size(W);
    th_set_printing(rank_ == 0);
    th_set_combiner(combine);
    static const ts_reduce_strategy strategies[] = {TS_STRATEGY_MPI, TS_STRATEGY_RING, TS_STRATEGY_HIER,
                                                     TS_STRATEGY_PS};
    for (size_t i = 0; i < sizeof strategies / sizeof *strategies; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s allreduce sums integer data exactly on %d ranks",
                 ts_strategy_name(strategies[i]), size_);
        th_add(name, allreduce_strategy, (void *)(intptr_t)strategies[i]);
        snprintf(name, sizeof name, "%s reduce-scatter and all-gather are exact on %d ranks",
                 ts_strategy_name(strategies[i]), size_);
        th_add(name, reduce_scatter_allgather, (void *)(intptr_t)strategies[i]);
    }
    TH_ADD(shared_memory_allreduce_works_in_place);
    TH_ADD(parameter_server_reduce_reaches_only_the_root);
    TH_ADD(broadcast_maxima_and_doubles);
    TH_ADD(tensor_collectives_on_every_device);
    TH_ADD(split_groups_reduce_independently);
    int rc = th_run(argc, argv);
    ts_parallel_finalize();
    return rc;
}
