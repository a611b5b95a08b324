/* Parallel training under mpirun (2 or 4 ranks): every layout of tensor,
 * data and pipeline parallelism against one process training the whole
 * model on the whole batch through the plain model API (no engine), which
 * every rank computes for itself.
 *
 * Tolerances (stated here, checked below): losses agree to 2e-5 relative;
 * the first step's gradients to 1e-5 of the largest gradient; parameters
 * after AdamW steps (lr 1e-3) to 1e-7 root-mean-square, and no element by
 * more than 1% of lr per step: Adam divides each gradient by its own
 * magnitude, so an element whose gradient is as small as its rounding
 * noise moves by a fraction of lr whatever the summation order.
 * Data-parallel replicas are compared bit for bit. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

static ts_comm *W;
static int rank_, size_;
static ts_device *CPU;

static int combine(int failed)
{
    int64_t f = failed;
    ts_comm_allreduce_i64(W, &f, 1, TS_REDUCE_SUM, "test verdict");
    return (int)f;
}

/* a vocabulary that no number of ranks divides, four layers, four heads */
static const ts_gpt_config CFG = {.vocab_size = 53, .max_seq_len = 16, .n_layer = 4, .n_head = 4, .n_embd = 32};
enum { T = 8, BG = 8, SEED = 7 };
static const float LR = 1e-3f, CLIP = 1.0f;

#define LOSS_RTOL 2e-5
#define GRAD_TOL 1e-5
#define PARAM_TOL 1e-5      /* per step: 1% of lr */
#define PARAM_RMS_TOL 1e-7

/* The global batch of a step: M micro-batches of BG x T; every 7th target
 * is ignored so that replicas score different numbers of tokens. */
static void global_batch(int step, int M, int32_t *tok, int32_t *tgt)
{
    rng_t r;
    rng_seed(&r, 1000 + (uint64_t)step);
    int64_t n = (int64_t)M * BG * T;
    for (int64_t i = 0; i < n; i++) {
        tok[i] = (int32_t)(rng_next(&r) % (uint64_t)CFG.vocab_size);
        tgt[i] = (int32_t)(rng_next(&r) % (uint64_t)CFG.vocab_size);
        if ((i * 5 + step) % 7 == 0) tgt[i] = -1;
    }
}

/* This replica's rows of every micro-batch. */
static void replica_batch(const int32_t *g, int M, int dp, int dp_rank, int32_t *out)
{
    int64_t bl = BG / dp;
    for (int k = 0; k < M; k++)
        memcpy(out + (int64_t)k * bl * T, g + ((int64_t)k * BG + dp_rank * bl) * T, (size_t)(bl * T) * sizeof *out);
}

static ts_engine_config engine_config(ts_reduce_strategy s, int zero)
{
    ts_engine_config c = {.strategy = s, .zero = zero, .bucket_mb = 0.01, .overlap = 1,
                          .schedule = TS_SCHEDULE_1F1B, .optim = TS_OPTIM_ADAMW,
                          .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
    return c;
}

/* ---- the single-process reference ---- */

typedef struct reference {
    ts_gpt m;
    ts_optimizer o;
    float loss[8];
    double norm[8];
} reference;

static ts_status ref_create(reference *r, const ts_engine_config *ec)
{
    memset(r, 0, sizeof *r);
    ts_status st = ts_gpt_create(&r->m, CPU, &CFG);
    if (!st) st = ts_gpt_init_weights(&r->m, SEED);
    if (!st) st = ts_optimizer_create(&r->o, CPU, ec->optim, r->m.num_params, ec->beta1, ec->beta2, ec->eps,
                                      ec->weight_decay);
    return st;
}

static void ref_free(reference *r)
{
    ts_optimizer_free(&r->o);
    ts_gpt_free(&r->m);
}

/* Gradient of one step's mean loss over all M micro-batches (no update). */
static ts_status ref_grads(reference *r, int step, int M, float *loss)
{
    int64_t n = (int64_t)M * BG * T, valid = 0;
    int32_t *tok = malloc((size_t)n * sizeof *tok), *tgt = malloc((size_t)n * sizeof *tgt);
    global_batch(step, M, tok, tgt);
    for (int64_t i = 0; i < n; i++) valid += tgt[i] >= 0;
    ts_status st = ts_gpt_zero_grad(&r->m);
    double lsum = 0;
    for (int k = 0; k < M && !st; k++) {
        int64_t v = 0, o = (int64_t)k * BG * T;
        for (int64_t i = 0; i < BG * T; i++) v += tgt[o + i] >= 0;
        float l, share = (float)v / (float)valid;
        st = ts_gpt_forward_backward(&r->m, tok + o, tgt + o, BG, T, share, &l);
        lsum += (double)l * share;
    }
    *loss = (float)lsum;
    free(tok), free(tgt);
    return st;
}

static ts_status ref_step(reference *r, int step, int M, float clip)
{
    double sq;
    ts_status st = ref_grads(r, step, M, &r->loss[step]);
    if (!st) st = ts_grad_sqnorm(&r->m.grads, &sq);
    if (st) return st;
    r->norm[step] = sqrt(sq);
    return ts_gpt_optimizer_step(&r->m, &r->o, LR, ts_clip_scale(r->norm[step], clip));
}

/* ---- a parallel run ---- */

typedef struct prun {
    ts_grid g;
    ts_gpt m;
    ts_engine *e;
    float loss[8];
    double norm[8];
    int replicas_identical;
} prun;

static ts_status prun_create(prun *p, int tp, int pp, const ts_engine_config *ec, ts_device *dev)
{
    memset(p, 0, sizeof *p);
    p->replicas_identical = 1;
    ts_gpt_layout lay;
    ts_status st = ts_grid_create(&p->g, tp, pp);
    if (!st) st = ts_grid_layout(&p->g, CFG.n_layer, &lay.tp_size, &lay.tp_rank, &lay.layer_begin,
                                 &lay.layer_end, &lay.embedding, &lay.head);
    if (!st) st = ts_gpt_create_layout(&p->m, dev, &CFG, &lay, p->g.tp_comm);
    if (!st) st = ts_gpt_init_weights(&p->m, SEED);
    if (!st) st = ts_engine_create(&p->e, &p->g, &p->m, ec);
    if (!st) st = ts_engine_broadcast_params(p->e);
    return st;
}

static void prun_free(prun *p)
{
    ts_engine_free(p->e);
    ts_gpt_free(&p->m);
    ts_grid_free(&p->g);
}

static uint64_t blob_hash(const ts_tensor *t)
{
    int64_t n = ts_tensor_numel(t);
    uint32_t *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x);
    uint64_t h = 1469598103934665603ull;
    if (x && ts_tensor_read(t, x, (size_t)n * sizeof *x) == TS_OK)
        for (int64_t i = 0; i < n; i++) h = (h ^ x[i]) * 1099511628211ull;
    free(x);
    return h;
}

static ts_status prun_step(prun *p, int step, int M, float clip)
{
    int64_t n = (int64_t)M * BG * T, nl = n / p->g.dp;
    int32_t *tok = malloc((size_t)n * sizeof *tok), *tgt = malloc((size_t)n * sizeof *tgt);
    int32_t *ltok = malloc((size_t)nl * sizeof *ltok), *ltgt = malloc((size_t)nl * sizeof *ltgt);
    global_batch(step, M, tok, tgt);
    replica_batch(tok, M, p->g.dp, p->g.dp_rank, ltok);
    replica_batch(tgt, M, p->g.dp, p->g.dp_rank, ltgt);
    ts_status st = ts_engine_step(p->e, M, BG / p->g.dp, T, ltok, ltgt, LR, clip, &p->loss[step], &p->norm[step]);
    free(tok), free(tgt), free(ltok), free(ltgt);
    if (st) return st;
    /* every replica of this slice holds the same bits */
    uint64_t mine = blob_hash(&p->m.params), *all = calloc((size_t)p->g.dp, sizeof *all);
    st = ts_comm_allgather(p->g.dp_comm, &mine, all, sizeof mine, "replica hashes");
    for (int r = 0; r < p->g.dp && !st; r++)
        if (all[r] != mine) p->replicas_identical = 0;
    free(all);
    return st;
}

/* Largest |local - reference slice| over this rank's tensors (params or
 * grads), and the largest |reference| element, maximised over the world. */
static double g_rms; /* root-mean-square difference of the last comparison */

static ts_status compare_blobs(const ts_gpt *m, const ts_gpt *ref, int grads, int64_t lo, int64_t hi,
                               double *maxdiff, double *maxref)
{
    const ts_tensor *a = grads ? &m->grads : &m->params, *b = grads ? &ref->grads : &ref->params;
    float *la = malloc((size_t)m->num_params * sizeof *la), *rb = malloc((size_t)ref->num_params * sizeof *rb);
    float *slice = malloc((size_t)ref->num_params * sizeof *slice);
    ts_status st = ts_tensor_read(a, la, (size_t)m->num_params * sizeof *la);
    if (!st) st = ts_tensor_read(b, rb, (size_t)ref->num_params * sizeof *rb);
    double d[2] = {0, 0}, sq[2] = {0, 0};
    char where[96] = "";
    for (int i = 0; i < m->ntensors && !st; i++) {
        const ts_gpt_tensor *lt = &m->tensors[i];
        const ts_gpt_tensor *rt = ts_gpt_find(ref, lt->kind, lt->layer);
        ts_gpt_slice_from_global(lt, rb + rt->offset, slice);
        for (int64_t j = 0; j < lt->rows * lt->cols; j++) {
            if (lt->offset + j < lo || lt->offset + j >= hi) continue;
            double diff = fabs((double)la[lt->offset + j] - (double)slice[j]);
            sq[0] += diff * diff, sq[1] += 1;
            if (!(diff <= d[0])) {
                d[0] = isnan(diff) ? INFINITY : diff;
                char nm[64];
                snprintf(where, sizeof where, "%s[%lld] (%g vs %g)", ts_gpt_tensor_name(lt->kind, lt->layer, nm, sizeof nm),
                         (long long)j, la[lt->offset + j], slice[j]);
            }
            if (fabs(slice[j]) > d[1]) d[1] = fabs(slice[j]);
        }
    }
    free(la), free(rb), free(slice);
    if (getenv("TEST_VERBOSE") && where[0]) fprintf(stderr, "# rank %d: largest difference at %s\n", rank_, where);
    if (!st) st = ts_comm_allreduce_f64(W, d, 2, TS_REDUCE_MAX, "compare");
    if (!st) st = ts_comm_allreduce_f64(W, sq, 2, TS_REDUCE_SUM, "compare");
    g_rms = sq[1] > 0 ? sqrt(sq[0] / sq[1]) : 0;
    *maxdiff = d[0], *maxref = d[1];
    return st;
}

static double rel(double a, double b) { return fabs(a - b) / (fabs(b) > 1e-30 ? fabs(b) : 1e-30); }

/* Train `steps` steps in a layout and against the reference: losses and
 * norms every step, replicas bit for bit, parameters at the end. */
static void layout_matches_reference(int tp, int pp, int M, const ts_engine_config *ec, const char *device)
{
    ts_device *dev = CPU;
    if (device && ts_device_open(device, &dev) != TS_OK) SKIP("no %s device", device);
    enum { STEPS = 4 };
    reference r;
    prun p;
    REQUIRE_OK(ref_create(&r, ec));
    ts_status st = prun_create(&p, tp, pp, ec, dev);
    if (st) {
        th_fail(__FILE__, __LINE__, "creating tp %d pp %d: %s", tp, pp, ts_last_error());
        ref_free(&r);
        return;
    }
    for (int s = 0; s < STEPS && !st; s++) {
        st = ref_step(&r, s, M, CLIP);
        if (!st) st = prun_step(&p, s, M, CLIP);
        if (s > 0 || st) continue;
        /* the first step's summed gradients, where this rank holds them */
        int64_t lo = 0, hi = p.m.num_params;
        if (ec->zero && p.g.dp > 1)
            lo = ts_comm_part_start(hi, p.g.dp, p.g.dp_rank), hi = ts_comm_part_start(hi, p.g.dp, p.g.dp_rank + 1);
        if (ec->strategy == TS_STRATEGY_PS && p.g.dp_rank != 0) hi = 0;
        double gd, gmax;
        st = compare_blobs(&p.m, &r.m, 1, lo, hi, &gd, &gmax);
        EXPECTF(st || gd <= GRAD_TOL * gmax, "first step's gradients differ by %.3g (largest %.3g)", gd, gmax);
    }
    if (st) th_fail(__FILE__, __LINE__, "training: %s", ts_last_error());
    for (int s = 0; s < STEPS && !st; s++) {
        EXPECTF(rel(p.loss[s], r.loss[s]) < LOSS_RTOL, "step %d loss %.8g, one process %.8g", s, p.loss[s], r.loss[s]);
        EXPECTF(rel(p.norm[s], r.norm[s]) < 1e-4, "step %d gradient norm %.8g, one process %.8g", s, p.norm[s], r.norm[s]);
    }
    EXPECTF(p.replicas_identical, "data-parallel replicas differ after a step");
    double diff, mref;
    if (!st) {
        REQUIRE_OK(compare_blobs(&p.m, &r.m, 0, 0, INT64_MAX, &diff, &mref));
        EXPECTF(diff <= PARAM_TOL * STEPS, "parameters after %d steps differ by %.3g (tolerance %.1g)", STEPS, diff,
                PARAM_TOL * STEPS);
        EXPECTF(g_rms <= PARAM_RMS_TOL, "parameters after %d steps differ by %.3g RMS (tolerance %.1g)", STEPS, g_rms,
                PARAM_RMS_TOL);
        th_note("tp %d pp %d dp %d %s%s: losses %.6f..%.6f, parameters within %.2g (RMS %.2g)", tp, pp, p.g.dp,
                ts_strategy_name(ec->strategy), ec->zero ? " zero-1" : "", p.loss[0], p.loss[STEPS - 1], diff, g_rms);
    }
    prun_free(&p);
    ref_free(&r);
}

typedef struct layout_case {
    int tp, pp, M, zero;
    ts_reduce_strategy strategy;
    ts_schedule schedule;
    const char *device;
} layout_case;

static void layout_test(void *arg)
{
    layout_case *c = arg;
    ts_engine_config ec = engine_config(c->strategy, c->zero);
    ec.schedule = c->schedule;
    layout_matches_reference(c->tp, c->pp, c->M, &ec, c->device);
}

static void add_layout(const char *name, int tp, int pp, int M, ts_reduce_strategy s, int zero, ts_schedule sch,
                       const char *device)
{
    if (size_ % (tp * pp)) return;
    layout_case *c = malloc(sizeof *c);
    *c = (layout_case){tp, pp, M, zero, s, sch, device};
    th_add_owned(name, layout_test, c);
}

/* ---- fp16 products with dynamic loss scaling ---- */

/* A scale so large that the scaled gradients overflow fp16: each such step
 * leaves the weights alone and halves the scale, on every rank alike,
 * until a step fits; then training goes on like the fp32 run. */
TEST(fp16_loss_scaling_skips_overflowing_steps_and_then_trains_like_fp32)
{
    ts_engine_config ec = engine_config(TS_STRATEGY_MPI, 0);
    ec.loss_scaling = 1;
    prun p, f;
    REQUIRE_OK(prun_create(&p, 1, 1, &ec, CPU));
    const ts_loss_scaler *ls = ts_engine_loss_scaler(p.e);
    EXPECTF(ls->enabled && ls->scale == 65536.0, "loss scaling starts at 65536, got %g", ls->scale);
    ts_engine_set_loss_scale(p.e, 0x1p40, 0);
    REQUIRE_OK(ts_device_set_matmul_dtype(CPU, TS_F16));
    uint64_t before = blob_hash(&p.m.params);
    ts_status st = prun_step(&p, 0, 1, 1.0f);
    EXPECTF(!st && ls->last_skipped && ls->scale == 0x1p39 && ls->skipped == 1,
            "an overflowing step is skipped and halves the scale (skipped %d, scale %g)", ls->last_skipped, ls->scale);
    EXPECTF(blob_hash(&p.m.params) == before, "a skipped step leaves the weights alone");
    int steps = 1;
    while (!st && ls->last_skipped && steps < 40) st = prun_step(&p, 0, 1, 1.0f), steps++;
    EXPECTF(!st && !ls->last_skipped && ls->scale < 0x1p40, "a smaller scale fits after %d steps (scale %g): %s",
            steps, ls->scale, st ? ts_last_error() : "");
    EXPECTF(blob_hash(&p.m.params) != before, "the first step that fits updates the weights");
    /* from equal weights, three steps at a scale that fits track fp32 */
    REQUIRE_OK(ts_device_set_matmul_dtype(CPU, TS_F32));
    prun_free(&p);
    REQUIRE_OK(prun_create(&p, 1, 1, &ec, CPU));
    ts_engine_config ec32 = engine_config(TS_STRATEGY_MPI, 0);
    REQUIRE_OK(prun_create(&f, 1, 1, &ec32, CPU));
    for (int s = 0; s < 3 && !st; s++) {
        REQUIRE_OK(ts_device_set_matmul_dtype(CPU, TS_F16));
        st = prun_step(&p, s, 1, 1.0f);
        REQUIRE_OK(ts_device_set_matmul_dtype(CPU, TS_F32));
        if (!st) st = prun_step(&f, s, 1, 1.0f);
    }
    REQUIRE_OK(st);
    for (int s = 0; s < 3; s++)
        EXPECTF(fabs(p.loss[s] - f.loss[s]) < 2e-3 * fabs(f.loss[s]), "step %d: fp16 loss %.6f, fp32 %.6f", s,
                p.loss[s], f.loss[s]);
    EXPECTF(ts_engine_loss_scaler(p.e)->skipped == 0, "no step skipped at the starting scale");
    prun_free(&p), prun_free(&f);
}

/* ---- tensor parallelism at the level of the layers ---- */

TEST(tensor_parallel_forward_and_gradients_equal_one_rank)
{
    ts_grid g;
    REQUIRE_OK(ts_grid_create(&g, size_, 1));
    ts_gpt_layout lay;
    REQUIRE_OK(ts_grid_layout(&g, CFG.n_layer, &lay.tp_size, &lay.tp_rank, &lay.layer_begin, &lay.layer_end,
                              &lay.embedding, &lay.head));
    ts_gpt m, ref;
    REQUIRE_OK(ts_gpt_create_layout(&m, CPU, &CFG, &lay, g.tp_comm));
    REQUIRE_OK(ts_gpt_create(&ref, CPU, &CFG));
    REQUIRE_OK(ts_gpt_init_weights(&m, SEED));
    REQUIRE_OK(ts_gpt_init_weights(&ref, SEED));
    int64_t n = BG * T, valid = 0;
    int32_t tok[BG * T], tgt[BG * T];
    global_batch(0, 1, tok, tgt);
    for (int64_t i = 0; i < n; i++) valid += tgt[i] >= 0;
    ts_gpt_acts a;
    REQUIRE_OK(ts_gpt_acts_alloc(&m, &a, BG, T));
    /* forward: the logits this rank holds and every position's loss */
    double lsum = 0;
    float ref_loss;
    REQUIRE_OK(ts_gpt_stage_forward(&m, &a, tok, tgt, 0.0f, &lsum, NULL));
    REQUIRE_OK(ts_gpt_forward(&ref, tok, tgt, BG, T, &ref_loss));
    float *logits = malloc((size_t)(n * m.V_local) * sizeof *logits), *row = malloc((size_t)CFG.vocab_size * sizeof *row);
    REQUIRE_OK(ts_tensor_read(&a.logits, logits, (size_t)(n * m.V_local) * sizeof *logits));
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        REQUIRE_OK(ts_gpt_read_logits(&ref, i / T, i % T, row));
        for (int64_t v = 0; v < m.V_local; v++)
            worst = fmax(worst, fabs((double)logits[i * m.V_local + v] - row[m.vocab_start + v]));
    }
    float *losses = malloc((size_t)n * sizeof *losses), *ref_losses = malloc((size_t)n * sizeof *ref_losses);
    REQUIRE_OK(ts_tensor_read(&a.losses, losses, (size_t)n * sizeof *losses));
    REQUIRE_OK(ts_tensor_read(&ref.acts.losses, ref_losses, (size_t)n * sizeof *ref_losses));
    double worst_loss = 0;
    for (int64_t i = 0; i < n; i++) worst_loss = fmax(worst_loss, fabs((double)losses[i] - ref_losses[i]));
    double w[2] = {worst, worst_loss};
    REQUIRE_OK(ts_comm_allreduce_f64(W, w, 2, TS_REDUCE_MAX, "compare"));
    EXPECTF(w[0] < 1e-5, "logits differ from one rank's by %.3g", w[0]);
    EXPECTF(w[1] < 1e-5, "per-position losses differ from one rank's by %.3g", w[1]);
    EXPECTF(rel(lsum / (double)valid, ref_loss) < LOSS_RTOL, "mean loss %.8g, one rank %.8g", lsum / (double)valid, ref_loss);
    /* backward: every gradient slice */
    REQUIRE_OK(ts_gpt_zero_grad(&m));
    REQUIRE_OK(ts_gpt_stage_forward(&m, &a, tok, tgt, 1.0f / (float)valid, NULL, NULL));
    REQUIRE_OK(ts_gpt_stage_backward(&m, &a));
    float l;
    REQUIRE_OK(ts_gpt_zero_grad(&ref));
    REQUIRE_OK(ts_gpt_forward_backward(&ref, tok, tgt, BG, T, 1.0f, &l));
    double diff, gmax;
    REQUIRE_OK(compare_blobs(&m, &ref, 1, 0, INT64_MAX, &diff, &gmax));
    EXPECTF(diff <= GRAD_TOL * gmax, "gradients differ by %.3g (largest gradient %.3g)", diff, gmax);
    th_note("tp %d: logits within %.2g, losses within %.2g, gradients within %.2g of %.2g", size_, w[0], w[1], diff, gmax);
    free(logits), free(row), free(losses), free(ref_losses);
    ts_gpt_acts_free(&a);
    ts_gpt_free(&m), ts_gpt_free(&ref);
    ts_grid_free(&g);
}

/* ---- pipeline schedule ---- */

static void schedule_test(ts_schedule sch)
{
    ts_engine_config ec = engine_config(TS_STRATEGY_MPI, 0);
    ec.schedule = sch;
    prun p;
    enum { M = 6 };
    REQUIRE_OK(prun_create(&p, 1, size_, &ec, CPU));
    ts_status st = prun_step(&p, 0, M, CLIP);
    if (st) th_fail(__FILE__, __LINE__, "step: %s", ts_last_error());
    const ts_pipeline_stats *s = ts_engine_pipeline_stats(p.e);
    int P = size_, stage = p.g.pp_rank;
    int64_t v[3] = {s->order_ok ? 0 : 1, s->max_in_flight, 0};
    int want = sch == TS_SCHEDULE_GPIPE ? M : (P - stage < M ? P - stage : M);
    v[2] = s->max_in_flight != want;
    if (v[2]) fprintf(stderr, "# stage %d: %d in flight, expected %d: %s\n", stage, s->max_in_flight, want, s->order);
    if (stage == 0) th_note("stage 0 order: %s", s->order);
    ts_comm_allreduce_i64(W, v, 3, TS_REDUCE_MAX, "schedule");
    EXPECTF(v[0] == 0, "a backward ran before its forward");
    EXPECTF(v[2] == 0, "a stage's micro-batches in flight differ from the schedule's");
    if (sch == TS_SCHEDULE_1F1B) EXPECTF(v[1] <= P, "%lld micro-batches in flight, more than %d stages", (long long)v[1], P);
    prun_free(&p);
}

TEST(one_f_one_b_keeps_at_most_p_micro_batches_in_flight) { schedule_test(TS_SCHEDULE_1F1B); }
TEST(gpipe_runs_every_forward_before_the_backwards) { schedule_test(TS_SCHEDULE_GPIPE); }

/* ---- ZeRO-1 against plain data parallelism, bit for bit ---- */

TEST(zero1_gives_the_same_weights_as_plain_data_parallel)
{
    /* the ring reduces both ways in the same order; clipping off so the
     * norm's summation order cannot matter */
    ts_engine_config plain = engine_config(TS_STRATEGY_RING, 0), zero = engine_config(TS_STRATEGY_RING, 1);
    prun a, b;
    REQUIRE_OK(prun_create(&a, 1, 1, &plain, CPU));
    REQUIRE_OK(prun_create(&b, 1, 1, &zero, CPU));
    for (int s = 0; s < 3; s++) {
        REQUIRE_OK(prun_step(&a, s, 2, 0.0f));
        REQUIRE_OK(prun_step(&b, s, 2, 0.0f));
        EXPECTF(a.loss[s] == b.loss[s], "step %d: loss %.9g vs ZeRO %.9g", s, a.loss[s], b.loss[s]);
    }
    int64_t same = blob_hash(&a.m.params) == blob_hash(&b.m.params);
    REQUIRE_OK(ts_comm_allreduce_i64(W, &same, 1, TS_REDUCE_SUM, "compare"));
    EXPECTF(same == size_, "weights differ bit-wise on %lld of %d ranks", (long long)(size_ - same), size_);
    EXPECT(a.replicas_identical && b.replicas_identical);
    prun_free(&a), prun_free(&b);
}

/* ---- checkpoints across layouts ---- */

static void checkpoint_test(int tp, int pp)
{
    char dir[256];
    snprintf(dir, sizeof dir, "%s/tessera-parallel-ckpt-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    int64_t ok = 1;
    if (rank_ == 0) ok = mkdtemp(dir) != NULL;
    REQUIRE_OK(ts_comm_bcast(W, dir, sizeof dir, 0, "dir"));
    REQUIRE_OK(ts_comm_bcast(W, &ok, sizeof ok, 0, "dir"));
    REQUIRE(ok);
    char mf[400], of[400];
    snprintf(mf, sizeof mf, "%s/model.safetensors", dir);
    snprintf(of, sizeof of, "%s/optim.safetensors", dir);
    ts_engine_config ec = engine_config(TS_STRATEGY_MPI, 0);
    enum { M = 2 };
    /* saved at tp x pp after two steps, then two more steps there */
    prun a;
    REQUIRE_OK(prun_create(&a, tp, pp, &ec, CPU));
    REQUIRE_OK(prun_step(&a, 0, M, CLIP));
    REQUIRE_OK(prun_step(&a, 1, M, CLIP));
    REQUIRE_OK(ts_engine_save_model(a.e, mf, NULL));
    REQUIRE_OK(ts_engine_save_optimizer(a.e, of));
    REQUIRE_OK(prun_step(&a, 2, M, CLIP));
    REQUIRE_OK(prun_step(&a, 3, M, CLIP));
    /* resumed with every rank a replica (with ZeRO sharding the moments) */
    ts_engine_config ez = engine_config(TS_STRATEGY_MPI, 1);
    prun b;
    REQUIRE_OK(prun_create(&b, 1, 1, &ez, CPU));
    REQUIRE_OK(ts_engine_load(b.e, mf, of));
    REQUIRE_OK(prun_step(&b, 2, M, CLIP));
    REQUIRE_OK(prun_step(&b, 3, M, CLIP));
    /* resumed by one process through the plain model API */
    reference r;
    REQUIRE_OK(ref_create(&r, &ec));
    REQUIRE_OK(ts_gpt_load(&r.m, mf));
    REQUIRE_OK(ts_checkpoint_load_optimizer(of, &r.m, &r.o, 0));
    EXPECTF(r.o.step == 2, "the optimizer file says %lld steps, not 2", (long long)r.o.step);
    REQUIRE_OK(ref_step(&r, 2, M, CLIP));
    REQUIRE_OK(ref_step(&r, 3, M, CLIP));
    for (int s = 2; s < 4; s++) {
        EXPECTF(rel(b.loss[s], a.loss[s]) < LOSS_RTOL, "step %d: resumed at dp %d loss %.8g, tp %d x pp %d %.8g", s,
                size_, b.loss[s], tp, pp, a.loss[s]);
        EXPECTF(rel(r.loss[s], a.loss[s]) < LOSS_RTOL, "step %d: resumed on one process loss %.8g, tp %d x pp %d %.8g",
                s, r.loss[s], tp, pp, a.loss[s]);
    }
    th_note("losses at steps 3, 4: tp %d x pp %d %.7f %.7f; dp %d %.7f %.7f; one process %.7f %.7f", tp, pp,
            a.loss[2], a.loss[3], size_, b.loss[2], b.loss[3], r.loss[2], r.loss[3]);
    /* the file reads in Python's terms: global shapes, GPT-2 names */
    ts_safetensors f;
    REQUIRE_OK(ts_safetensors_open(mf, &f));
    const ts_st_entry *q = ts_safetensors_find(&f, "h.1.attn.c_attn.weight");
    EXPECT(q && q->ndim == 2 && q->shape[0] == 3 * CFG.n_embd && q->shape[1] == CFG.n_embd);
    ts_safetensors_close(&f);
    ref_free(&r);
    prun_free(&a), prun_free(&b);
    ts_comm_barrier(W, "cleanup");
    if (rank_ == 0) {
        unlink(mf), unlink(of);
        rmdir(dir);
    }
}

TEST(checkpoint_from_tp_x_pp_resumes_data_parallel_and_on_one_process)
{
    if (size_ == 4) checkpoint_test(2, 2);
    else checkpoint_test(size_, 1);
}

/* ---- errors everyone sees ---- */

TEST(mismatched_settings_fail_on_every_rank)
{
    ts_grid g;
    REQUIRE_OK(ts_grid_create(&g, 1, 1));
    REQUIRE_OK(ts_grid_check_settings(&g, "model L=4 C=32 seed 7"));
    char mine[64];
    snprintf(mine, sizeof mine, "model L=4 C=32 seed %d", rank_ == size_ - 1 ? 8 : 7);
    ts_status st = ts_grid_check_settings(&g, mine);
    char want[32];
    snprintf(want, sizeof want, "ranks %d", size_ - 1);
    int64_t good = st == TS_ERR_INVALID_ARG && strstr(ts_last_error(), want) && strstr(ts_last_error(), "seed 8");
    if (!good) fprintf(stderr, "# rank %d: %s\n", rank_, ts_last_error());
    REQUIRE_OK(ts_comm_allreduce_i64(W, &good, 1, TS_REDUCE_SUM, "verdict"));
    EXPECTF(good == size_, "only %lld of %d ranks reported the difference", (long long)good, size_);
    ts_grid_free(&g);
}

TEST(a_grid_that_does_not_fit_fails_on_every_rank)
{
    ts_grid g;
    EXPECT_STATUS(ts_grid_create(&g, size_ + 1, 1), TS_ERR_INVALID_ARG);
    EXPECT_STATUS(ts_grid_create(&g, 1, 3), TS_ERR_INVALID_ARG);
}

TEST(the_watchdog_names_the_rank_that_has_not_joined)
{
    ts_watchdog_set(0.3, 0);
    if (rank_ == size_ - 1) usleep(1500 * 1000); /* absent for 1.5 s */
    REQUIRE_OK(ts_comm_barrier(W, "test barrier"));
    ts_watchdog_set(300, 0);
    if (rank_ == 0) {
        char want[64];
        snprintf(want, sizeof want, "(world %d on node ", size_ - 1);
        const char *rep = ts_watchdog_last_report();
        EXPECTF(strstr(rep, want) && strstr(rep, "not joined") && strstr(rep, "test barrier"),
                "report does not name world rank %d: %s", size_ - 1, rep);
        for (int r = 1; r < size_ - 1; r++) {
            snprintf(want, sizeof want, "(world %d on node ", r);
            EXPECTF(!strstr(rep, want), "report names rank %d, which had joined: %s", r, rep);
        }
        th_note("%s", rep);
    }
}

/* ---- heterogeneous balancing: the pure parts, on every rank ---- */

TEST(batch_rows_split_in_proportion_to_speed_with_a_row_each)
{
    int64_t rows[4];
    REQUIRE_OK(ts_balance_split(8, 2, (double[]){3, 1}, rows));
    EXPECTF(rows[0] == 6 && rows[1] == 2, "3:1 of 8 gave %lld+%lld", (long long)rows[0], (long long)rows[1]);
    /* a very slow replica still gets one row, the total is kept */
    REQUIRE_OK(ts_balance_split(8, 3, (double[]){1000, 1, 1000}, rows));
    EXPECTF(rows[1] == 1 && rows[0] + rows[1] + rows[2] == 8 && llabs(rows[0] - rows[2]) <= 1,
            "1000:1:1000 of 8 gave %lld+%lld+%lld", (long long)rows[0], (long long)rows[1], (long long)rows[2]);
    REQUIRE_OK(ts_balance_split(7, 3, (double[]){1, 1, 1}, rows));
    EXPECTF(rows[0] == 3 && rows[1] == 2 && rows[2] == 2, "even 7/3 gave %lld+%lld+%lld", (long long)rows[0],
            (long long)rows[1], (long long)rows[2]);
    EXPECT_STATUS(ts_balance_split(1, 2, (double[]){1, 1}, rows), TS_ERR_INVALID_ARG);
    EXPECT_STATUS(ts_balance_split(8, 2, (double[]){1, 0}, rows), TS_ERR_INVALID_ARG);
    /* the slower split is predicted slower */
    double cost[2] = {1.0, 3.0};
    EXPECT(ts_balance_predict(2, cost, (int64_t[]){6, 2}) < ts_balance_predict(2, cost, (int64_t[]){4, 4}));
}

TEST(balance_specs_parse_lists_files_and_bench_json_and_name_what_is_wrong)
{
    double w[2];
    ts_balance_mode mode;
    REQUIRE_OK(ts_balance_parse("even", 2, NULL, &mode, w));
    EXPECT(mode == TS_BALANCE_EVEN && w[0] == 1 && w[1] == 1);
    REQUIRE_OK(ts_balance_parse("auto", 2, NULL, &mode, w));
    EXPECT(mode == TS_BALANCE_AUTO);
    REQUIRE_OK(ts_balance_parse("3,1.5", 2, NULL, &mode, w));
    EXPECT(mode == TS_BALANCE_SHARES && w[0] == 3 && w[1] == 1.5);
    EXPECT_STATUS(ts_balance_parse("3", 2, NULL, &mode, w), TS_ERR_INVALID_ARG);
    EXPECTF(strstr(ts_last_error(), "has 1 share for 2"), "message: %s", ts_last_error());
    EXPECT_STATUS(ts_balance_parse("3,-1", 2, NULL, &mode, w), TS_ERR_INVALID_ARG);
    char path[64];
    snprintf(path, sizeof path, "/tmp/tessera-balance-%d-%d.txt", (int)getpid(), rank_);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fprintf(f, "# one share per replica\n2\n5\n");
    fclose(f);
    REQUIRE_OK(ts_balance_parse(path, 2, NULL, &mode, w));
    EXPECT(w[0] == 2 && w[1] == 5);
    /* tessera bench train --json: the rate of each replica's device */
    f = fopen(path, "w");
    REQUIRE(f);
    fprintf(f, "{\"format\": \"tessera-bench-1\", \"results\": [\n"
               "{\"device\": \"cpu\", \"suite\": \"train\", \"name\": \"step\", \"impl\": \"tessera\", \"median_s\": 0.5},\n"
               "{\"device\": \"opencl:0\", \"suite\": \"train\", \"name\": \"step\", \"impl\": \"tessera\", \"median_s\": 2},\n"
               "{\"device\": \"cpu\", \"suite\": \"gemm\", \"name\": \"x\", \"impl\": \"tessera\", \"median_s\": 9}]}\n");
    fclose(f);
    const char *ids[2] = {"opencl:0", "cpu"};
    REQUIRE_OK(ts_balance_parse(path, 2, ids, &mode, w));
    EXPECTF(fabs(w[0] - 0.5) < 1e-12 && fabs(w[1] - 2) < 1e-12, "bench shares %g, %g", w[0], w[1]);
    const char *missing[2] = {"cpu", "opencl:7"};
    EXPECT_STATUS(ts_balance_parse(path, 2, missing, &mode, w), TS_ERR_INVALID_ARG);
    EXPECTF(strstr(ts_last_error(), "opencl:7"), "message: %s", ts_last_error());
    unlink(path);
    EXPECT(ts_balance_parse(path, 2, NULL, &mode, w) != TS_OK);
    EXPECTF(strstr(ts_last_error(), path), "message: %s", ts_last_error());
}

TEST(pipeline_stages_follow_measured_layer_costs_with_embedding_and_head)
{
    int64_t b[4];
    REQUIRE_OK(ts_balance_stages(8, 2, (double[]){1, 1}, 0, 0, b));
    EXPECT(b[0] == 0 && b[1] == 4 && b[2] == 8);
    /* stage 1 three times slower per layer: 6 layers to 2 */
    REQUIRE_OK(ts_balance_stages(8, 2, (double[]){1, 3}, 0, 0, b));
    EXPECTF(b[1] == 6, "split at %lld", (long long)b[1]);
    /* a costly head on the last stage moves layers to the first */
    REQUIRE_OK(ts_balance_stages(8, 2, (double[]){1, 1}, 0, 4, b));
    EXPECTF(b[1] == 6, "split at %lld with the head", (long long)b[1]);
    /* every stage keeps a layer */
    REQUIRE_OK(ts_balance_stages(4, 3, (double[]){1, 100, 100}, 0, 0, b));
    EXPECTF(b[1] == 2 && b[2] == 3 && b[3] == 4, "%lld %lld %lld", (long long)b[1], (long long)b[2], (long long)b[3]);
    EXPECT_STATUS(ts_balance_stages(4, 2, (double[]){1, 0}, 0, 0, b), TS_ERR_INVALID_ARG);
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
    if (ts_device_open("cpu", &CPU) != TS_OK) {
        fprintf(stderr, "%s\n", ts_last_error());
        return 1;
    }
    char name[160];
    const int N = size_;
    TH_ADD(tensor_parallel_forward_and_gradients_equal_one_rank);
    static const ts_reduce_strategy strategies[] = {TS_STRATEGY_MPI, TS_STRATEGY_RING, TS_STRATEGY_HIER, TS_STRATEGY_PS};
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "data parallel %d (%s) equals one process on the whole batch, replicas bit for bit",
                 N, ts_strategy_name(strategies[i]));
        add_layout(name, 1, 1, 2, strategies[i], 0, TS_SCHEDULE_1F1B, NULL);
    }
    snprintf(name, sizeof name, "data parallel %d with ZeRO-1 equals one process", N);
    add_layout(name, 1, 1, 2, TS_STRATEGY_MPI, 1, TS_SCHEDULE_1F1B, NULL);
    TH_ADD(zero1_gives_the_same_weights_as_plain_data_parallel);
    snprintf(name, sizeof name, "tensor parallel %d training equals one process", N);
    add_layout(name, N, 1, 2, TS_STRATEGY_MPI, 0, TS_SCHEDULE_1F1B, NULL);
    snprintf(name, sizeof name, "pipeline %d stages (1F1B, 4 micro-batches) equals one process", N);
    add_layout(name, 1, N, 4, TS_STRATEGY_MPI, 0, TS_SCHEDULE_1F1B, NULL);
    snprintf(name, sizeof name, "pipeline %d stages (GPipe, 4 micro-batches) equals one process", N);
    add_layout(name, 1, N, 4, TS_STRATEGY_MPI, 0, TS_SCHEDULE_GPIPE, NULL);
    TH_ADD(one_f_one_b_keeps_at_most_p_micro_batches_in_flight);
    TH_ADD(gpipe_runs_every_forward_before_the_backwards);
    if (N == 4) {
        add_layout("hybrid tp 2 x dp 2 equals one process", 2, 1, 2, TS_STRATEGY_RING, 0, TS_SCHEDULE_1F1B, NULL);
        add_layout("hybrid tp 2 x pp 2 equals one process", 2, 2, 4, TS_STRATEGY_MPI, 0, TS_SCHEDULE_1F1B, NULL);
        add_layout("hybrid dp 2 x pp 2 (ZeRO-1) equals one process", 1, 2, 4, TS_STRATEGY_HIER, 1, TS_SCHEDULE_1F1B, NULL);
        add_layout("hybrid tp 2 x dp 2 on OpenCL equals one process on the CPU", 2, 1, 2, TS_STRATEGY_MPI, 0,
                   TS_SCHEDULE_1F1B, "opencl");
    } else {
        snprintf(name, sizeof name, "pipeline %d stages on OpenCL equals one process on the CPU", N);
        add_layout(name, 1, N, 4, TS_STRATEGY_MPI, 0, TS_SCHEDULE_1F1B, "opencl");
    }
    TH_ADD(fp16_loss_scaling_skips_overflowing_steps_and_then_trains_like_fp32);
    TH_ADD(checkpoint_from_tp_x_pp_resumes_data_parallel_and_on_one_process);
    TH_ADD(mismatched_settings_fail_on_every_rank);
    TH_ADD(a_grid_that_does_not_fit_fails_on_every_rank);
    TH_ADD(the_watchdog_names_the_rank_that_has_not_joined);
    TH_ADD(batch_rows_split_in_proportion_to_speed_with_a_row_each);
    TH_ADD(balance_specs_parse_lists_files_and_bench_json_and_name_what_is_wrong);
    TH_ADD(pipeline_stages_follow_measured_layer_costs_with_embedding_and_head);
    int rc = th_run(argc, argv);
    ts_parallel_finalize();
    return rc;
}
