/* The training engine: one optimizer step of a model laid out on a grid of
 * tensor, data and pipeline parallel processes (see tessera/parallel.h). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_internal.h"
#include "internal.h"
#include "backend.h"
#include "tessera/checkpoint.h"
#include "tessera/device.h"
#include "tessera/safetensors.h"


typedef struct bucket {
    int64_t begin, end;
} bucket;

struct ts_engine {
    ts_grid *g;
    ts_gpt *m;
    ts_engine_config c;
    ts_device *dev;
    float *grads_host;        /* the gradient blob in host memory (CPU backend), or NULL */
    float *stage;             /* host staging of the blob for other devices */
    ts_block shm_block;       /* gradients in the node's shared window */
    ts_tensor shm_grads;
    int has_opt;              /* this process updates parameters */
    ts_optimizer opt;
    int64_t shard_begin, shard_end;
    int64_t (*decay)[2];
    int ndecay;
    bucket *buckets;          /* from the end of the blob */
    int nbuckets;
    int64_t embed_end;        /* the tied embedding is [0, embed_end) of the blob (pp > 1) */
    /* the reduction helper thread */
    pthread_t thread;
    int thread_on, stop, armed, launched, done;
    int measuring;         /* timing only: backward launches no reduction */
    pthread_mutex_t lock;
    pthread_cond_t cv;
    ts_status worker_status, launch_status;
    char worker_error[1024], launch_error[1024];
    /* pipeline micro-batch slots */
    ts_gpt_acts *slots;
    int nslots;
    int64_t slot_B, slot_T;
#ifdef TS_HAVE_MPI
    MPI_Request *sreq;        /* per slot: forward send, backward send */
#endif
    float **sbuf;             /* per slot and direction: staging for non-host tensors */
    ts_pipeline_stats stats;
    ts_loss_scaler scaler;
};

const ts_pipeline_stats *ts_engine_pipeline_stats(const ts_engine *e) { return &e->stats; }
ts_optimizer *ts_engine_optimizer(ts_engine *e) { return &e->opt; }
const ts_loss_scaler *ts_engine_loss_scaler(const ts_engine *e) { return &e->scaler; }

void ts_engine_set_loss_scale(ts_engine *e, double scale, int64_t good_steps)
{
    if (!e->scaler.enabled || !(scale > 0) || !isfinite(scale)) return;
    e->scaler.scale = scale, e->scaler.good_steps = good_steps;
}

enum { SCALE_GROWTH_INTERVAL = 2000 };

/* ---- gradient reduction ---- */

static float *grad_ptr(ts_engine *e) { return e->grads_host ? e->grads_host : e->stage; }

/* Bring blob range [a, b) of the gradients to host memory (no-op on host). */
static ts_status stage_grads(ts_engine *e, int64_t a, int64_t b)
{
    if (e->grads_host || b <= a) return TS_OK;
    ts_tensor v;
    TRY(ts_tensor_view(&v, &e->m->grads, a, TS_SHAPE(b - a)));
    return ts_tensor_read(&v, e->stage + a, (size_t)(b - a) * sizeof(float));
}

static ts_status unstage_grads(ts_engine *e, int64_t a, int64_t b)
{
    if (e->grads_host || b <= a) return TS_OK;
    ts_tensor v;
    TRY(ts_tensor_view(&v, &e->m->grads, a, TS_SHAPE(b - a)));
    return ts_tensor_write(&v, e->stage + a, (size_t)(b - a) * sizeof(float));
}

/* The helper thread only communicates: buckets are staged to host memory
 * on the calling thread (device queues belong to it) before launch. */
static ts_status reduce_bucket(ts_engine *e, int j)
{
    bucket *b = &e->buckets[j];
    return ts_comm_allreduce_sum(e->g->dp_comm, grad_ptr(e) + b->begin, b->end - b->begin, e->c.strategy,
                                 "gradient bucket");
}

static void *worker(void *arg)
{
    ts_engine *e = arg;
    pthread_mutex_lock(&e->lock);
    for (;;) {
        while (!e->stop && e->done >= e->launched) pthread_cond_wait(&e->cv, &e->lock);
        if (e->stop) break;
        int j = e->done;
        pthread_mutex_unlock(&e->lock);
        ts_status st = e->worker_status ? TS_OK : reduce_bucket(e, j);
        pthread_mutex_lock(&e->lock);
        if (st && !e->worker_status) {
            e->worker_status = st;
            snprintf(e->worker_error, sizeof e->worker_error, "%s", ts_last_error());
        }
        e->done++;
        pthread_cond_broadcast(&e->cv);
    }
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

/* Stage buckets [launched, n) and hand them to the helper. */
static ts_status launch_upto(ts_engine *e, int n)
{
    ts_status st = TS_OK;
    for (int j = e->launched; j < n && !st; j++) st = stage_grads(e, e->buckets[j].begin, e->buckets[j].end);
    if (st) return st;
    pthread_mutex_lock(&e->lock);
    if (n > e->launched) {
        e->launched = n;
        pthread_cond_broadcast(&e->cv);
    }
    pthread_mutex_unlock(&e->lock);
    return TS_OK;
}

/* Backward has finished every gradient at offsets >= offset: launch the
 * buckets that lie there (the tied embedding's waits for its sum between
 * stages). Runs on the backward's thread. */
static void on_grads_ready(void *ctx, int64_t offset)
{
    ts_engine *e = ctx;
    if (!e->armed || !e->thread_on || e->launch_status) return;
    int n = e->launched;
    while (n < e->nbuckets && e->buckets[n].begin >= offset && e->buckets[n].begin >= e->embed_end) n++;
    if (n > e->launched) {
        e->launch_status = launch_upto(e, n);
        if (e->launch_status) snprintf(e->launch_error, sizeof e->launch_error, "%s", ts_last_error());
    }
}

static ts_status embed_sync(ts_engine *e)
{
    if (!e->g->embed_comm || e->embed_end == 0) return TS_OK;
    if (e->grads_host)
        return ts_comm_allreduce_f32(e->g->embed_comm, e->grads_host, e->embed_end, TS_REDUCE_SUM,
                                     "tied embedding gradient");
    ts_tensor v;
    TRY(ts_tensor_view(&v, &e->m->grads, 0, TS_SHAPE(e->embed_end)));
    return ts_comm_allreduce_tensor(e->g->embed_comm, &v, TS_REDUCE_SUM, "tied embedding gradient");
}

/* Sum the gradients over replicas (and the tied embedding over stages). */
static ts_status reduce_gradients(ts_engine *e)
{
    ts_grid *g = e->g;
    int64_t n = e->m->num_params;
    if (g->dp == 1 || e->c.zero || e->c.strategy == TS_STRATEGY_PS) {
        TRY(embed_sync(e));
        if (g->dp == 1) return TS_OK;
        TRY(stage_grads(e, 0, n));
        if (e->c.zero) {
            TRY(ts_comm_reduce_scatter_sum(g->dp_comm, grad_ptr(e), n, e->c.strategy, "gradients (ZeRO)"));
            return unstage_grads(e, e->shard_begin, e->shard_end);
        }
        TRY(ts_comm_reduce_sum(g->dp_comm, grad_ptr(e), n, 0, "gradients to the server"));
        return g->dp_rank == 0 ? unstage_grads(e, 0, n) : TS_OK;
    }
    if (!e->thread_on) {
        TRY(embed_sync(e));
        for (int j = 0; j < e->nbuckets; j++) {
            TRY(stage_grads(e, e->buckets[j].begin, e->buckets[j].end));
            TRY(reduce_bucket(e, j));
        }
        return unstage_grads(e, 0, n);
    }
    /* overlapped: let the helper finish what backward launched, sum the
     * tied embedding, then launch the rest */
    ts_status st = e->launch_status;
    if (st) ts_error(st, "%s", e->launch_error);
    pthread_mutex_lock(&e->lock);
    while (e->done < e->launched) pthread_cond_wait(&e->cv, &e->lock);
    pthread_mutex_unlock(&e->lock);
    if (!st) st = embed_sync(e);
    if (!st) st = launch_upto(e, e->nbuckets);
    pthread_mutex_lock(&e->lock);
    while (e->done < e->launched) pthread_cond_wait(&e->cv, &e->lock);
    ts_status wst = e->worker_status;
    pthread_mutex_unlock(&e->lock);
    e->armed = 0;
    if (wst) return ts_error(wst, "%s", e->worker_error);
    TRY(st);
    return unstage_grads(e, 0, n);
}

/* Sum of squares of this process's share of the gradients: replicated
 * tensors count on tensor-parallel rank 0 only, the tied embedding on the
 * first stage only, and under ZeRO only this replica's shard. */
static ts_status local_sqnorm(ts_engine *e, double *sq)
{
    ts_gpt *m = e->m;
    ts_grid *g = e->g;
    *sq = 0;
    int64_t lo = 0, hi = m->num_params;
    if (e->c.zero) lo = e->shard_begin, hi = e->shard_end;
    if (e->c.strategy == TS_STRATEGY_PS && g->dp_rank != 0) return TS_OK;
    int simple = g->tp == 1 && g->pp == 1 && !e->c.zero;
    if (simple) return ts_grad_sqnorm(&m->grads, sq);
    ts_tensor out;
    TRY(ts_tensor_alloc(&out, e->dev, TS_F32, TS_SHAPE(1)));
    ts_status st = TS_OK;
    for (int i = 0; i < m->ntensors && !st; i++) {
        const ts_gpt_tensor *t = &m->tensors[i];
        if (t->replicated && g->tp_rank != 0) continue;
        if (t->kind == TS_GPT_WTE && g->pp > 1 && !m->lay.embedding) continue;
        int64_t a = t->offset > lo ? t->offset : lo, b = t->offset + t->rows * t->cols;
        if (b > hi) b = hi;
        if (b <= a) continue;
        ts_tensor v;
        float x = 0;
        st = ts_tensor_view(&v, &m->grads, a, TS_SHAPE(b - a));
        if (!st) st = ts_sqnorm(&out, &v);
        if (!st) st = ts_tensor_read(&out, &x, sizeof x);
        *sq += x;
    }
    ts_tensor_free(&out);
    return st;
}

/* ---- parameters ---- */

static ts_status host_params(ts_engine *e, float **p, int *staged)
{
    *staged = 0;
    *p = ts_tensor_host_io(&e->m->params);
    if (*p) return TS_OK;
    *p = malloc((size_t)e->m->num_params * sizeof(float));
    if (!*p) return ts_error(TS_ERR_OOM, "no memory to stage parameters");
    *staged = 1;
    return ts_tensor_read(&e->m->params, *p, (size_t)e->m->num_params * sizeof(float));
}

ts_status ts_engine_broadcast_params(ts_engine *e)
{
    return ts_comm_bcast_tensor(e->g->dp_comm, &e->m->params, 0, "initial parameters");
}

static ts_status update(ts_engine *e, float lr, float scale)
{
    ts_gpt *m = e->m;
    ts_grid *g = e->g;
    if (e->c.zero && g->dp > 1) {
        ts_tensor pv, gv;
        int64_t a = e->shard_begin, b = e->shard_end;
        TRY(ts_tensor_view(&pv, &m->params, a, TS_SHAPE(b - a > 0 ? b - a : 0)));
        TRY(ts_tensor_view(&gv, &m->grads, a, TS_SHAPE(b - a > 0 ? b - a : 0)));
        TRY(ts_optimizer_step(&e->opt, &pv, &gv, a, (const int64_t(*)[2])e->decay, e->ndecay, lr, scale));
        /* everyone's updated shard to everyone */
        float *p;
        int staged;
        TRY(host_params(e, &p, &staged));
        ts_status st = ts_comm_allgather_parts(g->dp_comm, p, m->num_params, e->c.strategy, "parameters (ZeRO)");
        if (staged) {
            if (!st) st = ts_tensor_write(&m->params, p, (size_t)m->num_params * sizeof(float));
            free(p);
        }
        return st;
    }
    if (e->has_opt)
        TRY(ts_optimizer_step(&e->opt, &m->params, &m->grads, 0, (const int64_t(*)[2])e->decay, e->ndecay, lr, scale));
    if (e->c.strategy == TS_STRATEGY_PS && g->dp > 1)
        TRY(ts_comm_bcast_tensor(g->dp_comm, &m->params, 0, "parameters from the server"));
    return TS_OK;
}

/* ---- pipeline ---- */

static ts_status ensure_slots(ts_engine *e, int n, int64_t B, int64_t T)
{
    if (e->nslots >= n && e->slot_B == B && e->slot_T == T) return TS_OK;
    for (int i = 0; i < e->nslots; i++) ts_gpt_acts_free(&e->slots[i]);
    for (int i = 0; i < 2 * e->nslots; i++) free(e->sbuf[i]);
    free(e->slots), free(e->sbuf);
#ifdef TS_HAVE_MPI
    free(e->sreq);
    e->sreq = calloc((size_t)(2 * n), sizeof *e->sreq);
    for (int i = 0; e->sreq && i < 2 * n; i++) e->sreq[i] = MPI_REQUEST_NULL;
#endif
    e->slots = calloc((size_t)n, sizeof *e->slots);
    e->sbuf = calloc((size_t)(2 * n), sizeof *e->sbuf);
    e->nslots = 0;
    if (!e->slots || !e->sbuf) return ts_error(TS_ERR_OOM, "no memory for pipeline slots");
    for (int i = 0; i < n; i++) {
        ts_status st = ts_gpt_acts_alloc(e->m, &e->slots[i], B, T);
        if (st) return st;
        e->nslots = i + 1;
    }
    e->slot_B = B, e->slot_T = T;
    return TS_OK;
}

#ifdef TS_HAVE_MPI
/* Start sending a tensor without waiting (host memory is sent in place,
 * other memory through a staging buffer that lives until completion). */
static ts_status isend(ts_engine *e, const ts_tensor *t, int dest, int tag, int k)
{
    ts_comm *c = e->g->pp_comm;
    size_t bytes = ts_tensor_nbytes(t);
    if (bytes > (size_t)INT32_MAX) return ts_error(TS_ERR_UNSUPPORTED, "pipeline message of %zu bytes", bytes);
    void *p = ts_tensor_host_io(t);
    if (!p) {
        if (!e->sbuf[k]) e->sbuf[k] = malloc(bytes);
        if (!e->sbuf[k]) return ts_error(TS_ERR_OOM, "no memory to stage a pipeline message");
        TRY(ts_tensor_read(t, e->sbuf[k], bytes));
        p = e->sbuf[k];
    }
    int err = MPI_Isend(p, (int)bytes, MPI_BYTE, dest, tag, c->comm, &e->sreq[k]);
    return err == MPI_SUCCESS ? TS_OK : ts_mpi_fail(err, "pipeline send", c);
}

static ts_status wait_sends(ts_engine *e, int slot)
{
    return ts_comm_waitall(e->g->pp_comm, 2, &e->sreq[2 * slot], "pipeline send");
}
#endif

static void record(ts_engine *e, char what, int k, int *in_flight)
{
    ts_pipeline_stats *s = &e->stats;
    size_t len = strlen(s->order);
    if (len + 12 < sizeof s->order) snprintf(s->order + len, sizeof s->order - len, "%s%c%d", len ? " " : "", what, k);
    if (what == 'F') {
        (*in_flight)++;
        if (*in_flight > s->max_in_flight) s->max_in_flight = *in_flight;
    } else {
        (*in_flight)--;
    }
}

/* Forward of micro-batch k on this stage. */
static ts_status stage_fwd(ts_engine *e, int k, int64_t B, int64_t T, const int32_t *tokens,
                           const int32_t *targets, float weight, double *lsum, int send_async)
{
    ts_grid *g = e->g;
    ts_gpt_acts *a = &e->slots[k % e->nslots];
    int64_t n = B * T;
    int s = g->pp_rank, P = g->pp;
#ifdef TS_HAVE_MPI
    if (P > 1) TRY(wait_sends(e, k % e->nslots));
#endif
    if (s > 0) TRY(ts_comm_recv_tensor(g->pp_comm, &a->input, s - 1, 2 * k, "activations"));
    int64_t t0 = ts_trace_begin();
    double t = ts_now(), ls = 0;
    TRY(ts_gpt_stage_forward(e->m, a, tokens + k * n, targets ? targets + k * n : NULL, weight, &ls, NULL));
    e->stats.busy_s += ts_now() - t;
    char name[32];
    snprintf(name, sizeof name, "forward %d", k);
    ts_trace_end(t0, "compute", name, 0);
    if (e->m->lay.head) *lsum += ls;
    if (s < P - 1) {
        ts_tensor out;
        TRY(ts_gpt_stage_output(e->m, a, &out));
#ifdef TS_HAVE_MPI
        if (send_async) return isend(e, &out, s + 1, 2 * k, 2 * (k % e->nslots));
#endif
        (void)send_async;
        TRY(ts_comm_send_tensor(g->pp_comm, &out, s + 1, 2 * k, "activations"));
    }
    return TS_OK;
}

static ts_status stage_bwd(ts_engine *e, int k, int last)
{
    ts_grid *g = e->g;
    ts_gpt_acts *a = &e->slots[k % e->nslots];
    int s = g->pp_rank, P = g->pp;
    if (s < P - 1) TRY(ts_comm_recv_tensor(g->pp_comm, &a->dres, s + 1, 2 * k + 1, "activation gradients"));
    if (last && !e->measuring) e->armed = 1;
    int64_t t0 = ts_trace_begin();
    double t = ts_now();
    TRY(ts_gpt_stage_backward(e->m, a));
    e->stats.busy_s += ts_now() - t;
    char name[32];
    snprintf(name, sizeof name, "backward %d", k);
    ts_trace_end(t0, "compute", name, 0);
#ifdef TS_HAVE_MPI
    if (s > 0) return isend(e, &a->dres, s - 1, 2 * k + 1, 2 * (k % e->nslots) + 1);
#endif
    return TS_OK;
}

static ts_status run_schedule(ts_engine *e, int M, int64_t B, int64_t T, const int32_t *tokens,
                              const int32_t *targets, float weight, double *lsum)
{
    int P = e->g->pp, s = e->g->pp_rank;
    int gpipe = e->c.schedule == TS_SCHEDULE_GPIPE || P == 1;
    int slots = P == 1 ? 1 : gpipe ? M : (M < P ? M : P);
    TRY(ensure_slots(e, slots, B, T));
    int in_flight = 0, done_f = 0, done_b = 0;
    e->stats.order[0] = '\0';
    e->stats.max_in_flight = 0;
    e->stats.order_ok = 1;
    const int32_t *tg = e->m->lay.head ? targets : NULL;
    if (P == 1) { /* micro-batches one after another */
        for (int k = 0; k < M; k++) {
            TRY(stage_fwd(e, k, B, T, tokens, tg, weight, lsum, 0));
            record(e, 'F', k, &in_flight);
            TRY(stage_bwd(e, k, k == M - 1));
            record(e, 'B', k, &in_flight);
        }
        return TS_OK;
    }
    int warm = gpipe ? M : (P - s - 1 < M ? P - s - 1 : M);
    for (; done_f < warm; done_f++) {
        TRY(stage_fwd(e, done_f, B, T, tokens, tg, weight, lsum, 1));
        record(e, 'F', done_f, &in_flight);
    }
    while (done_f < M) { /* steady state: one forward, one backward */
        TRY(stage_fwd(e, done_f, B, T, tokens, tg, weight, lsum, 1));
        record(e, 'F', done_f, &in_flight);
        done_f++;
        if (done_b >= done_f) e->stats.order_ok = 0;
        TRY(stage_bwd(e, done_b, done_b == M - 1));
        record(e, 'B', done_b, &in_flight);
        done_b++;
    }
    for (; done_b < M; done_b++) {
        if (done_b >= done_f) e->stats.order_ok = 0;
        TRY(stage_bwd(e, done_b, done_b == M - 1));
        record(e, 'B', done_b, &in_flight);
    }
#ifdef TS_HAVE_MPI
    for (int i = 0; i < e->nslots; i++) TRY(wait_sends(e, i));
#endif
    return TS_OK;
}

/* ---- the step ---- */

ts_status ts_engine_step(ts_engine *e, int n_micro, int64_t B, int64_t T, const int32_t *tokens,
                         const int32_t *targets, float lr, float grad_clip, float *loss, double *norm)
{
    ts_grid *g = e->g;
    ts_gpt *m = e->m;
    double t0 = ts_now();
    e->stats.busy_s = 0;
    int64_t valid = 0;
    for (int64_t i = 0; i < n_micro * B * T; i++) valid += targets[i] >= 0 && targets[i] < m->cfg.vocab_size;
    TRY(ts_comm_allreduce_i64(g->dp_comm, &valid, 1, TS_REDUCE_SUM, "scored targets"));
    if (valid == 0) return ts_error(TS_ERR_INVALID_ARG, "the step has no scored targets");
    TRY(ts_gpt_zero_grad(m));
    e->armed = 0;
    pthread_mutex_lock(&e->lock);
    e->launched = e->done = 0;
    e->worker_status = e->launch_status = TS_OK;
    pthread_mutex_unlock(&e->lock);
    double lsum = 0, ts = ts_now();
    ts_loss_scaler *ls = &e->scaler;
    double scale = ls->enabled ? ls->scale : 1.0;
    float weight = (float)(scale / (double)valid);
    TRY(run_schedule(e, n_micro, B, T, tokens, targets, weight, &lsum));
    e->stats.schedule_s = ts_now() - ts;
    int64_t t1 = ts_trace_begin();
    TRY(reduce_gradients(e));
    ts_trace_end(t1, "compute", "gradient reduction wait", 0);
    double sq;
    TRY(local_sqnorm(e, &sq));
    if (e->c.zero) TRY(ts_comm_allreduce_f64(g->dp_comm, &sq, 1, TS_REDUCE_SUM, "gradient norm"));
    TRY(ts_comm_allreduce_f64(g->mp_comm, &sq, 1, TS_REDUCE_SUM, "gradient norm"));
    if (e->c.strategy == TS_STRATEGY_PS && !e->c.zero)
        TRY(ts_comm_bcast(g->dp_comm, &sq, sizeof sq, 0, "gradient norm from the server"));
    *norm = sqrt(sq);
    /* the loss: summed by the last stage's tensor-parallel rank 0 */
    double l = m->lay.head && g->tp_rank == 0 ? lsum : 0.0;
    TRY(ts_comm_allreduce_f64(g->world, &l, 1, TS_REDUCE_SUM, "loss"));
    *loss = (float)(l / (double)valid);
    ls->last_scale = scale;
    ls->last_skipped = 0;
    if (ls->enabled && isfinite(*loss)) {
        /* every rank has the same norm, so every rank takes the same branch */
        if (!isfinite(*norm)) { /* overflow in the scaled gradients: no update, a smaller scale */
            ls->scale = scale * 0.5, ls->good_steps = 0, ls->last_skipped = 1, ls->skipped++;
            if (ls->scale < 1e-30)
                return ts_error(TS_ERR_INVALID_ARG, "training diverged: the fp16 loss scale fell below 1e-30 "
                                "(gradients are not finite at any scale; try --dtype bf16 or a lower --lr)");
            e->stats.step_s = ts_now() - t0;
            return TS_OK;
        }
        *norm /= scale;
        if (++ls->good_steps >= SCALE_GROWTH_INTERVAL && scale * 2 < 1e38) ls->scale = scale * 2, ls->good_steps = 0;
    }
    if (!isfinite(*loss) || !isfinite(*norm))
        return ts_error(TS_ERR_INVALID_ARG, "training diverged: loss %g, gradient norm %g (try a lower --lr)",
                        *loss, *norm);
    int64_t t2 = ts_trace_begin();
    TRY(update(e, lr, (float)(ts_clip_scale(*norm, grad_clip) / scale)));
    ts_trace_end(t2, "compute", "optimizer", 0);
    e->stats.step_s = ts_now() - t0;
    return TS_OK;
}

ts_status ts_engine_measure(ts_engine *e, int n_micro, int64_t B, int64_t T, const int32_t *tokens,
                            const int32_t *targets, int reps, double *busy_s)
{
    *busy_s = 0;
    int64_t valid = 0;
    for (int64_t i = 0; i < n_micro * B * T; i++) valid += targets[i] >= 0 && targets[i] < e->m->cfg.vocab_size;
    float weight = 1.0f / (float)(valid > 0 ? valid : 1);
    double best = INFINITY;
    ts_status st = TS_OK;
    e->measuring = 1;
    for (int r = 0; r <= reps && !st; r++) { /* the first is a warm-up */
        double lsum = 0;
        e->stats.busy_s = 0;
        st = ts_gpt_zero_grad(e->m);
        if (!st) st = run_schedule(e, n_micro, B, T, tokens, targets, weight, &lsum);
#ifdef TS_HAVE_MPI
        for (int i = 0; i < e->nslots && !st; i++) st = wait_sends(e, i);
#endif
        if (!st && r > 0 && e->stats.busy_s < best) best = e->stats.busy_s;
    }
    e->measuring = 0;
    if (!st) st = ts_gpt_zero_grad(e->m);
    if (!st) *busy_s = reps > 0 ? best : e->stats.busy_s;
    return st;
}

ts_status ts_engine_eval(ts_engine *e, int n_micro, int64_t B, int64_t T, const int32_t *tokens,
                         const int32_t *targets, double *loss)
{
    ts_grid *g = e->g;
    ts_gpt *m = e->m;
    int64_t valid = 0;
    for (int64_t i = 0; i < n_micro * B * T; i++) valid += targets[i] >= 0 && targets[i] < m->cfg.vocab_size;
    TRY(ts_comm_allreduce_i64(g->dp_comm, &valid, 1, TS_REDUCE_SUM, "scored targets"));
    TRY(ensure_slots(e, e->nslots > 0 ? e->nslots : 1, B, T));
    double lsum = 0;
    for (int k = 0; k < n_micro; k++) {
        /* forward only, blocking sends: slot 0 is reused */
        ts_gpt_acts *a = &e->slots[0];
        int64_t n = B * T;
        int s = g->pp_rank, P = g->pp;
        double ls = 0;
#ifdef TS_HAVE_MPI
        if (P > 1) TRY(wait_sends(e, 0));
#endif
        if (s > 0) TRY(ts_comm_recv_tensor(g->pp_comm, &a->input, s - 1, 1000000 + k, "activations"));
        TRY(ts_gpt_stage_forward(m, a, tokens + k * n, m->lay.head ? targets + k * n : NULL, 0.0f, &ls, NULL));
        lsum += m->lay.head ? ls : 0;
        if (s < P - 1) {
            ts_tensor out;
            TRY(ts_gpt_stage_output(m, a, &out));
            TRY(ts_comm_send_tensor(g->pp_comm, &out, s + 1, 1000000 + k, "activations"));
        }
    }
    double l = m->lay.head && g->tp_rank == 0 ? lsum : 0.0;
    TRY(ts_comm_allreduce_f64(g->world, &l, 1, TS_REDUCE_SUM, "evaluation loss"));
    *loss = valid ? l / (double)valid : NAN;
    return TS_OK;
}

/* ---- lifecycle ---- */

ts_status ts_engine_create(ts_engine **out, ts_grid *g, ts_gpt *m, const ts_engine_config *c)
{
    *out = NULL;
    ts_engine *e = calloc(1, sizeof *e);
    if (!e) return ts_error(TS_ERR_OOM, "no memory for the engine");
    e->g = g, e->m = m, e->c = *c, e->dev = m->device;
    e->scaler.enabled = c->loss_scaling;
    e->scaler.scale = e->scaler.last_scale = c->loss_scaling ? 65536.0 : 1.0;
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->cv, NULL);
    int64_t n = m->num_params;
    ts_status st = TS_OK;
    if (c->zero && c->strategy == TS_STRATEGY_PS)
        st = ts_error(TS_ERR_INVALID_ARG, "ZeRO shards the optimizer over the replicas; the parameter-server "
                                          "strategy keeps it on one: choose one of them");
    if (!st) e->decay = malloc((size_t)(m->ntensors + 1) * sizeof *e->decay);
    if (!st && !e->decay) st = ts_error(TS_ERR_OOM, "no memory");
    if (!st) e->ndecay = ts_gpt_decay_ranges(m, e->decay, m->ntensors + 1);
    /* where the gradients live on the host */
    /* the shared window is collective: every replica must take it, and a
     * replica on a device without host memory (mixed devices) cannot */
    int64_t not_host = ts_tensor_host_ptr(&m->grads) == NULL;
    if (!st && g->dp > 1 && c->strategy == TS_STRATEGY_HIER)
        st = ts_comm_allreduce_i64(g->dp_comm, &not_host, 1, TS_REDUCE_MAX, "gradient memory");
    if (!st && g->dp > 1 && c->strategy == TS_STRATEGY_HIER && !not_host) {
        float *shm = ts_comm_shared_alloc(g->dp_comm, n);
        if (shm && ts_tensor_wrap_host(&e->shm_grads, &e->shm_block, m->device, shm, (size_t)n * sizeof(float),
                                       TS_F32, TS_SHAPE(n)) == TS_OK) {
            ts_tensor_free(&m->grads);
            m->grads = e->shm_grads;
            memset(shm, 0, (size_t)n * sizeof(float));
        }
        ts_clear_error();
    }
    e->grads_host = ts_tensor_host_ptr(&m->grads);
    if (!st && !e->grads_host && g->size > 1) {
        e->stage = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
        if (!e->stage) st = ts_error(TS_ERR_OOM, "no host memory to stage gradients");
    }
    /* the tied embedding region, summed between first and last stage */
    const ts_gpt_tensor *wte = ts_gpt_find(m, TS_GPT_WTE, -1);
    e->embed_end = g->embed_comm && wte ? wte->offset + wte->rows * wte->cols : 0;
    /* optimizer: everything, this replica's shard (ZeRO), or the server only */
    e->shard_begin = 0, e->shard_end = n;
    if (c->zero && g->dp > 1) {
        e->shard_begin = ts_comm_part_start(n, g->dp, g->dp_rank);
        e->shard_end = ts_comm_part_start(n, g->dp, g->dp_rank + 1);
    }
    e->has_opt = !(c->strategy == TS_STRATEGY_PS && g->dp > 1 && g->dp_rank != 0);
    if (!st && e->has_opt)
        st = ts_optimizer_create(&e->opt, m->device, c->optim, e->shard_end - e->shard_begin, c->beta1, c->beta2,
                                 c->eps, c->weight_decay);
    /* buckets from the end of the blob: the first 1 MB, then bucket_mb;
     * a bucket never straddles the tied embedding's end */
    if (!st && g->dp > 1 && !c->zero && c->strategy != TS_STRATEGY_PS) {
        int64_t big = (int64_t)((c->bucket_mb > 0 ? c->bucket_mb : 25.0) * 1048576.0 / 4.0), first = 262144;
        int cap = (int)(n / (first < big ? first : big)) + 4;
        e->buckets = calloc((size_t)cap, sizeof *e->buckets);
        if (!e->buckets) st = ts_error(TS_ERR_OOM, "no memory");
        int64_t end = n;
        while (!st && end > 0 && e->nbuckets < cap) {
            int64_t size = e->nbuckets == 0 ? first : big;
            int64_t begin = end - size > 0 ? end - size : 0;
            if (e->embed_end > 0 && begin < e->embed_end && end > e->embed_end) begin = e->embed_end;
            e->buckets[e->nbuckets].begin = begin;
            e->buckets[e->nbuckets].end = end;
            e->nbuckets++;
            end = begin;
        }
        int thread_level = 0;
#ifdef TS_HAVE_MPI
        MPI_Query_thread(&thread_level);
        if (thread_level < MPI_THREAD_MULTIPLE) thread_level = 0;
#endif
        if (!st && c->overlap && thread_level && pthread_create(&e->thread, NULL, worker, e) == 0) {
            e->thread_on = 1;
            m->grads_ready = on_grads_ready;
            m->grads_ready_ctx = e;
        }
    }
    if (st) {
        ts_engine_free(e);
        return st;
    }
    *out = e;
    return TS_OK;
}

void ts_engine_free(ts_engine *e)
{
    if (!e) return;
    if (e->thread_on) {
        pthread_mutex_lock(&e->lock);
        e->stop = 1;
        pthread_cond_broadcast(&e->cv);
        pthread_mutex_unlock(&e->lock);
        pthread_join(e->thread, NULL);
        e->m->grads_ready = NULL;
    }
    for (int i = 0; i < e->nslots; i++) ts_gpt_acts_free(&e->slots[i]);
    for (int i = 0; e->sbuf && i < 2 * e->nslots; i++) free(e->sbuf[i]);
    free(e->slots), free(e->sbuf);
#ifdef TS_HAVE_MPI
    free(e->sreq);
#endif
    if (e->m->grads.block == &e->shm_block) memset(&e->m->grads, 0, sizeof e->m->grads);
    ts_optimizer_free(&e->opt);
    free(e->decay), free(e->buckets), free(e->stage);
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->cv);
    free(e);
}

/* ---- checkpoints in the global format ----
 * Replica 0's processes hold the whole model between them. For each global
 * tensor, in file order, every holder puts its slice's bits into a zeroed
 * buffer of the global shape and a bitwise-OR reduction to world rank 0
 * assembles the tensor exactly; rank 0 streams it into the file. A
 * replicated tensor comes from tensor-parallel rank 0 only, the tied
 * embedding from the first stage only. */

static int contributes(const ts_engine *e, const ts_gpt_tensor *t)
{
    if (t->replicated && e->g->tp_rank != 0) return 0;
    if (t->kind == TS_GPT_WTE && !e->m->lay.embedding) return 0;
    return 1;
}

/* Collective over replica 0 (its model-parallel group). */
static ts_status assemble_replica0(ts_engine *e, float *const *blobs, const char *const *prefixes, int nb,
                                   const char *path, const char *const *meta, float *dest)
{
    ts_gpt *m = e->m;
    ts_comm *mp = e->g->mp_comm;
    int root = ts_comm_rank(mp) == 0;
    ts_gpt whole;
    ts_gpt_layout single;
    ts_gpt_layout_single(&m->cfg, &single);
    TRY(ts_gpt_plan(&whole, &m->cfg, &single));
    int ng = whole.ntensors, total = ng * nb;
    char (*names)[128] = calloc((size_t)(total > 0 ? total : 1), sizeof *names);
    const char **name_ptrs = calloc((size_t)(total > 0 ? total : 1), sizeof *name_ptrs);
    int *ndims = calloc((size_t)(total > 0 ? total : 1), sizeof *ndims);
    int64_t(*shapes)[2] = calloc((size_t)(total > 0 ? total : 1), sizeof *shapes);
    int64_t biggest = 0;
    for (int i = 0; i < ng; i++)
        if (whole.tensors[i].grows * whole.tensors[i].gcols > biggest) biggest = whole.tensors[i].grows * whole.tensors[i].gcols;
    uint32_t *buf = malloc((size_t)(biggest > 0 ? biggest : 1) * sizeof *buf);
    ts_status st = names && name_ptrs && ndims && shapes && buf ? TS_OK : ts_error(TS_ERR_OOM, "no memory to assemble %s", path);
    for (int b = 0; b < nb && !st; b++)
        for (int i = 0; i < ng; i++) {
            const ts_gpt_tensor *t = &whole.tensors[i];
            char base[96];
            snprintf(names[b * ng + i], sizeof names[0], "%s%s", prefixes[b],
                     ts_gpt_tensor_name(t->kind, t->layer, base, sizeof base));
            name_ptrs[b * ng + i] = names[b * ng + i];
            ndims[b * ng + i] = t->gcols > 1 ? 2 : 1;
            shapes[b * ng + i][0] = t->grows;
            shapes[b * ng + i][1] = t->gcols;
        }
    /* the file's metadata: the model's, then the caller's */
    char cfg[512];
    ts_gpt_config_json(&m->cfg, cfg, sizeof cfg);
    const char *kv[64] = {"format", "tessera-gpt", "config", cfg, "linear_layout", "out,in"};
    int nkv = 6;
    for (int i = 0; meta && meta[i] && nkv < 62; i += 2) kv[nkv++] = meta[i], kv[nkv++] = meta[i + 1];
    kv[nkv] = NULL;
    ts_st_stream *out = NULL;
    if (!st && root && path) st = ts_st_stream_open(&out, path, total, name_ptrs, ndims, (const int64_t(*)[2])shapes, kv);
    st = ts_comm_agree(mp, st, "opening the checkpoint file");
    ts_status wst = TS_OK; /* rank 0's writes: the reductions go on in step regardless */
    for (int b = 0; b < nb && !st; b++)
        for (int i = 0; i < ng && !st; i++) {
            const ts_gpt_tensor *gt = &whole.tensors[i];
            int64_t count = gt->grows * gt->gcols;
            memset(buf, 0, (size_t)count * sizeof *buf);
            const ts_gpt_tensor *lt = ts_gpt_find(m, gt->kind, gt->layer);
            if (lt && contributes(e, lt)) ts_gpt_slice_to_global(lt, blobs[b] + lt->offset, (float *)buf);
            st = ts_comm_reduce_bits(mp, buf, count, 0, "checkpoint tensor");
            if (!st && root && !wst && out) wst = ts_st_stream_write(out, (const float *)buf, count);
            if (!st && root && dest) memcpy(dest + gt->offset, buf, (size_t)count * sizeof *buf);
        }
    if (root && out) {
        ts_status cst = ts_st_stream_close(out, !st && !wst);
        if (!wst) wst = cst;
    }
    if (!st) st = wst;
    free(names), free(name_ptrs), free(ndims), free(shapes), free(buf);
    ts_gpt_free(&whole);
    return st;
}

static ts_status assemble(ts_engine *e, float *const *blobs, const char *const *prefixes, int nb,
                          const char *path, const char *const *meta)
{
    ts_status st = e->g->dp_rank == 0 ? assemble_replica0(e, blobs, prefixes, nb, path, meta, NULL) : TS_OK;
    return ts_comm_agree(e->g->world, st, "writing a checkpoint");
}

ts_status ts_engine_save_model(ts_engine *e, const char *path, const char *const *meta)
{
    float *p = NULL;
    int staged = 0;
    ts_status st = e->g->dp_rank == 0 ? host_params(e, &p, &staged) : TS_OK;
    st = ts_comm_agree(e->g->world, st, "reading parameters for a checkpoint");
    if (!st) st = assemble(e, &p, (const char *const[]){""}, 1, path, meta);
    if (staged) free(p);
    return st;
}

ts_status ts_engine_gather_model(ts_engine *e, ts_gpt *whole)
{
    memset(whole, 0, sizeof *whole);
    ts_gpt *m = e->m;
    int root = e->g->rank == 0, staged = 0;
    float *p = NULL, *dest = NULL;
    ts_status st = TS_OK;
    if (root) {
        st = ts_gpt_create(whole, m->device, &m->cfg);
        if (!st && !(dest = malloc((size_t)whole->num_params * sizeof *dest)))
            st = ts_error(TS_ERR_OOM, "no memory to gather the model");
    }
    if (!st && e->g->dp_rank == 0) st = host_params(e, &p, &staged);
    st = ts_comm_agree(e->g->world, st, "gathering the model");
    if (!st && e->g->dp_rank == 0) st = assemble_replica0(e, &p, (const char *const[]){""}, 1, NULL, NULL, dest);
    if (!st && root) st = ts_tensor_write(&whole->params, dest, (size_t)whole->num_params * sizeof *dest);
    st = ts_comm_agree(e->g->world, st, "gathering the model");
    if (staged) free(p);
    free(dest);
    if (st && root) ts_gpt_free(whole);
    return st;
}

ts_status ts_engine_save_optimizer(ts_engine *e, const char *path)
{
    ts_gpt *m = e->m;
    ts_optimizer *o = &e->opt;
    int64_t n = m->num_params;
    float *blobs[2] = {NULL, NULL};
    const char *prefixes[2];
    int nb = 0;
    ts_status st = TS_OK;
    /* every replica that updates holds the moments of its shard: gather
     * them into whole local blobs (ZeRO), then assemble from replica 0 */
    int kinds_m = e->c.optim != TS_OPTIM_SGD, kinds_v = e->c.optim == TS_OPTIM_ADAM || e->c.optim == TS_OPTIM_ADAMW;
    const ts_tensor *src[2];
    if (kinds_m) src[nb] = &o->m, prefixes[nb++] = "m.";
    if (kinds_v) src[nb] = &o->v, prefixes[nb++] = "v.";
    int needs = e->has_opt && (e->g->dp_rank == 0 || e->c.zero);
    for (int b = 0; b < nb && !st && needs; b++) {
        blobs[b] = calloc((size_t)(n > 0 ? n : 1), sizeof(float));
        if (!blobs[b]) st = ts_error(TS_ERR_OOM, "no memory to gather optimizer moments");
        else st = ts_tensor_read(src[b], blobs[b] + e->shard_begin,
                                 (size_t)(e->shard_end - e->shard_begin) * sizeof(float));
    }
    st = ts_comm_agree(e->g->world, st, "reading optimizer moments for a checkpoint");
    for (int b = 0; b < nb && !st && e->c.zero && e->g->dp > 1; b++)
        st = ts_comm_allgather_parts(e->g->dp_comm, blobs[b], n, e->c.strategy, "optimizer moments (ZeRO)");
    char step[32], hyper[256];
    const char *meta[8];
    ts_checkpoint_optim_meta(o, step, hyper, meta);
    if (!st) st = assemble(e, blobs, prefixes, nb, path, meta);
    free(blobs[0]), free(blobs[1]);
    return st;
}

ts_status ts_engine_load(ts_engine *e, const char *model_path, const char *optim_path)
{
    ts_status st = ts_gpt_load(e->m, model_path);
    if (!st && optim_path && e->has_opt)
        st = ts_checkpoint_load_optimizer(optim_path, e->m, &e->opt, e->shard_begin);
    return ts_comm_agree(e->g->world, st, "loading a checkpoint");
}
