/* Communicators over MPI, and the single-process fallback. */
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm_internal.h"

static ts_comm g_world_single = {.size = 1, .rank = 0, .name = "world"};
#ifdef TS_HAVE_MPI
static ts_comm *g_world, *g_node;
static int g_started_mpi;
static char (*g_hosts)[64]; /* every world rank's node name, for reports */
static int g_timed_out;     /* a collective gave up on lost ranks */
#endif

int ts_parallel_have_mpi(void)
{
#ifdef TS_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

int ts_comm_size(const ts_comm *c) { return c ? c->size : 1; }
int ts_comm_rank(const ts_comm *c) { return c ? c->rank : 0; }
const char *ts_comm_name(const ts_comm *c) { return c ? c->name : "none"; }

int ts_comm_world_rank(const ts_comm *c, int rank)
{
    if (!c || !c->world_ranks || rank < 0 || rank >= c->size) return rank;
    return c->world_ranks[rank];
}

int64_t ts_comm_enter(ts_comm *c, const char *what)
{
    ts_watchdog_lock();
    c->entered++;
    snprintf(c->current, sizeof c->current, "%s", what);
    c->since = ts_now();
    ts_watchdog_unlock();
    return ts_trace_begin();
}

void ts_comm_leave(ts_comm *c, int64_t t0, const char *what)
{
    ts_watchdog_lock();
    c->current[0] = '\0';
    c->since = ts_now();
    ts_watchdog_unlock();
    if (t0 >= 0) ts_trace_end(t0, c->name, what, 1);
}

#ifdef TS_HAVE_MPI

static uint64_t comm_id(const char *name, const int *ranks, int n)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    for (int i = 0; i < n; i++) h = (h ^ (uint64_t)(unsigned)ranks[i]) * 1099511628211ull;
    return h;
}

ts_status ts_mpi_fail(int err, const char *what, const ts_comm *c)
{
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(err, msg, &len);
    return ts_error(TS_ERR_COMM, "%s on %s (rank %d of %d) failed: %s", what, c ? c->name : "?",
                    c ? c->rank : -1, c ? c->size : 0, msg);
}

ts_status ts_comm_waitall(ts_comm *c, int n, MPI_Request *reqs, const char *what)
{
    double t0 = ts_now(), timeout = ts_watchdog_timeout(), hard = ts_watchdog_hard_timeout();
    double next = timeout;
    int spins = 0, reported = 0;
    for (;;) {
        int done = 0;
        int err = MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE);
        if (err != MPI_SUCCESS) return ts_mpi_fail(err, what, c);
        if (done) return TS_OK;
        /* spin briefly, then yield: ranks may outnumber cores */
        if (++spins > 1000) sched_yield();
        if (timeout > 0 || hard > 0) {
            double waited = ts_now() - t0;
            /* the hard limit first: a report asks every member and waits up
             * to 2 s for answers, which lost ranks never give; at the
             * limit the last report says who is missing */
            if (hard > 0 && waited > hard) {
                g_timed_out = 1;
                if (!reported) ts_watchdog_report(c, what, waited);
                return ts_error(TS_ERR_TIMEOUT, "%s on %s waited %.0f s for the other ranks: %s", what, c->name,
                                waited, ts_watchdog_last_report());
            }
            if (timeout > 0 && waited > next) {
                ts_watchdog_report(c, what, waited);
                reported = 1;
                next *= 2;
            }
        }
    }
}

const char *ts_comm_host(int world_rank)
{
    if (!g_hosts || !g_world || world_rank < 0 || world_rank >= g_world->size) return "?";
    return g_hosts[world_rank];
}

ts_status ts_comm_wait(ts_comm *c, MPI_Request *req, const char *what)
{
    return ts_comm_waitall(c, 1, req, what);
}

static ts_comm *wrap(MPI_Comm mc, const char *name, int free_mpi)
{
    ts_comm *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->comm = mc;
    c->free_mpi = free_mpi;
    MPI_Comm_size(mc, &c->size);
    MPI_Comm_rank(mc, &c->rank);
    snprintf(c->name, sizeof c->name, "%s", name);
    c->world_ranks = calloc((size_t)c->size, sizeof *c->world_ranks);
    int *mine = calloc((size_t)c->size, sizeof *mine);
    if (!c->world_ranks || !mine) {
        free(mine);
        free(c->world_ranks);
        free(c);
        return NULL;
    }
    MPI_Group g, w;
    MPI_Comm_group(mc, &g);
    MPI_Comm_group(MPI_COMM_WORLD, &w);
    for (int i = 0; i < c->size; i++) mine[i] = i;
    MPI_Group_translate_ranks(g, c->size, mine, w, c->world_ranks);
    MPI_Group_free(&g);
    MPI_Group_free(&w);
    free(mine);
    c->id = comm_id(name, c->world_ranks, c->size);
    c->shm_win = MPI_WIN_NULL;
    c->since = ts_now();
    ts_watchdog_register(c);
    return c;
}

ts_comm *ts_comm_wrap(MPI_Comm mc, const char *name) { return wrap(mc, name, 1); }

ts_status ts_parallel_init(int *argc, char ***argv)
{
    if (g_world) return TS_OK;
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided = 0;
        int err = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
        if (err != MPI_SUCCESS) return ts_error(TS_ERR_COMM, "MPI_Init_thread failed");
        g_started_mpi = 1;
        if (provided < MPI_THREAD_MULTIPLE)
            ts_log(TS_LOG_WARN, "MPI provides no MPI_THREAD_MULTIPLE: the watchdog and overlapped "
                                "gradient reduction are off");
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    /* a peer on another node that dies leaves TCP sockets that raise
     * SIGPIPE on the next write, which would kill this process before the
     * watchdog could name the lost ranks: take the write's error instead */
    signal(SIGPIPE, SIG_IGN);
    MPI_Comm dup;
    MPI_Comm_dup(MPI_COMM_WORLD, &dup);
    g_world = wrap(dup, "world", 1);
    MPI_Comm nodec;
    MPI_Comm_split_type(dup, MPI_COMM_TYPE_SHARED, g_world->rank, MPI_INFO_NULL, &nodec);
    g_node = wrap(nodec, "node", 1);
    if (!g_world || !g_node) return ts_error(TS_ERR_OOM, "no memory for communicators");
    /* node names, so that reports can say which node a lost rank was on */
    g_hosts = calloc((size_t)g_world->size, sizeof *g_hosts);
    if (!g_hosts) return ts_error(TS_ERR_OOM, "no memory for node names");
    char host[MPI_MAX_PROCESSOR_NAME + 1] = "", mine[64];
    int hl = 0;
    MPI_Get_processor_name(host, &hl);
    snprintf(mine, sizeof mine, "%s", host);
    MPI_Allgather(mine, sizeof mine, MPI_CHAR, g_hosts, sizeof mine, MPI_CHAR, dup);
    ts_watchdog_start();
    return TS_OK;
}

void ts_parallel_finalize(void)
{
    ts_watchdog_stop();
    if (g_node) ts_comm_free(g_node);
    if (g_world) ts_comm_free(g_world);
    g_node = g_world = NULL;
    free(g_hosts);
    g_hosts = NULL;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (g_started_mpi && !finalized) MPI_Finalize();
    g_started_mpi = 0;
}

void ts_parallel_finalize_failed(double wait_s)
{
    if (g_world && g_world->size > 1) {
        /* did every rank fail together? if not, the others wait in a
         * collective that will never complete: end the job */
        MPI_Request r;
        int done = 0;
        double t0 = ts_now();
        /* when a collective already gave up on ranks that vanished (a node
         * lost), they will not join this either: do not wait long */
        if (g_timed_out && wait_s > 2.0) wait_s = 2.0;
        struct timespec pause = {0, 1000 * 1000};
        if (MPI_Ibarrier(g_world->comm, &r) == MPI_SUCCESS)
            while (!done && ts_now() - t0 < wait_s) {
                MPI_Test(&r, &done, MPI_STATUS_IGNORE);
                if (!done) nanosleep(&pause, NULL);
            }
        if (!done) {
            fprintf(stderr, "tessera [rank %d]: the other ranks did not stop with this one: ending the job\n",
                    g_world->rank);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
    }
    ts_parallel_finalize();
}

ts_comm *ts_comm_world(void) { return g_world ? g_world : &g_world_single; }
ts_comm *ts_comm_node(void) { return g_node ? g_node : &g_world_single; }

ts_status ts_comm_split(ts_comm *parent, int color, int key, const char *name, ts_comm **out)
{
    *out = NULL;
    if (!parent || parent == &g_world_single) {
        ts_comm *c = calloc(1, sizeof *c);
        if (!c) return ts_error(TS_ERR_OOM, "no memory");
        c->size = 1;
        snprintf(c->name, sizeof c->name, "%s", name);
        *out = c;
        return TS_OK;
    }
    MPI_Comm mc;
    int err = MPI_Comm_split(parent->comm, color < 0 ? MPI_UNDEFINED : color, key, &mc);
    if (err != MPI_SUCCESS) return ts_mpi_fail(err, "MPI_Comm_split", parent);
    if (mc == MPI_COMM_NULL) return TS_OK; /* color < 0: in no group */
    *out = wrap(mc, name, 1);
    return *out ? TS_OK : ts_error(TS_ERR_OOM, "no memory");
}

void ts_comm_free(ts_comm *c)
{
    if (!c || c == &g_world_single) return;
    if (c->world_ranks) ts_watchdog_unregister(c);
    ts_comm_hier_free(c);
    if (c->shm_win != MPI_WIN_NULL && c->world_ranks) MPI_Win_free(&c->shm_win);
    if (c->free_mpi) MPI_Comm_free(&c->comm);
    free(c->world_ranks);
    free(c);
}

/* MPI counts are ints: move large arrays in chunks. */
#define CHUNK (1 << 28)
/* Open MPI's non-blocking reduce and broadcast (libnbc) build a schedule
 * per call that grows with the message; an earlier multi-node run saw one
 * of tens of MiB overflow its stack (not reproduced since: 100 MB through
 * ps on 2 namespace nodes x 2 passes either way). 1 MiB pieces cost
 * nothing measurable and keep every schedule small. */
#define NBC_CHUNK_BYTES ((int64_t)1 << 20)

static ts_status allreduce(ts_comm *c, void *x, int64_t n, MPI_Datatype t, size_t esize, ts_reduce_op op,
                           const char *what)
{
    if (!c || c->size == 1 || n == 0) return TS_OK;
    int64_t t0 = ts_comm_enter(c, what);
    ts_status st = TS_OK;
    for (int64_t i = 0; i < n && !st; i += CHUNK) {
        int cnt = (int)(n - i < CHUNK ? n - i : CHUNK);
        MPI_Request r;
        int err = MPI_Iallreduce(MPI_IN_PLACE, (char *)x + (size_t)i * esize, cnt, t,
                                 op == TS_REDUCE_MAX ? MPI_MAX : MPI_SUM, c->comm, &r);
        st = err == MPI_SUCCESS ? ts_comm_wait(c, &r, what) : ts_mpi_fail(err, what, c);
    }
    ts_comm_leave(c, t0, what);
    return st;
}

ts_status ts_comm_allreduce_f32(ts_comm *c, float *x, int64_t n, ts_reduce_op op, const char *what)
{
    return allreduce(c, x, n, MPI_FLOAT, sizeof *x, op, what);
}
ts_status ts_comm_allreduce_f64(ts_comm *c, double *x, int64_t n, ts_reduce_op op, const char *what)
{
    return allreduce(c, x, n, MPI_DOUBLE, sizeof *x, op, what);
}
ts_status ts_comm_allreduce_i64(ts_comm *c, int64_t *x, int64_t n, ts_reduce_op op, const char *what)
{
    return allreduce(c, x, n, MPI_INT64_T, sizeof *x, op, what);
}

ts_status ts_comm_bcast(ts_comm *c, void *data, size_t bytes, int root, const char *what)
{
    if (!c || c->size == 1 || bytes == 0) return TS_OK;
    int64_t t0 = ts_comm_enter(c, what);
    ts_status st = TS_OK;
    for (size_t i = 0; i < bytes && !st; i += (size_t)NBC_CHUNK_BYTES) {
        int cnt = (int)(bytes - i < (size_t)NBC_CHUNK_BYTES ? bytes - i : (size_t)NBC_CHUNK_BYTES);
        MPI_Request r;
        int err = MPI_Ibcast((char *)data + i, cnt, MPI_BYTE, root, c->comm, &r);
        st = err == MPI_SUCCESS ? ts_comm_wait(c, &r, what) : ts_mpi_fail(err, what, c);
    }
    ts_comm_leave(c, t0, what);
    return st;
}

ts_status ts_comm_barrier(ts_comm *c, const char *what)
{
    if (!c || c->size == 1) return TS_OK;
    int64_t t0 = ts_comm_enter(c, what);
    MPI_Request r;
    int err = MPI_Ibarrier(c->comm, &r);
    ts_status st = err == MPI_SUCCESS ? ts_comm_wait(c, &r, what) : ts_mpi_fail(err, what, c);
    ts_comm_leave(c, t0, what);
    return st;
}

ts_status ts_comm_allgather(ts_comm *c, const void *in, void *out, size_t bytes, const char *what)
{
    if (!c || c->size == 1) {
        memcpy(out, in, bytes);
        return TS_OK;
    }
    if (bytes > INT_MAX) return ts_error(TS_ERR_INVALID_ARG, "%s: %zu bytes is too large to gather", what, bytes);
    int64_t t0 = ts_comm_enter(c, what);
    MPI_Request r;
    int err = MPI_Iallgather(in, (int)bytes, MPI_BYTE, out, (int)bytes, MPI_BYTE, c->comm, &r);
    ts_status st = err == MPI_SUCCESS ? ts_comm_wait(c, &r, what) : ts_mpi_fail(err, what, c);
    ts_comm_leave(c, t0, what);
    return st;
}

ts_status ts_comm_reduce_mpi(ts_comm *c, void *x, int64_t n, MPI_Datatype t, size_t esize, MPI_Op op, int root,
                             const char *what)
{
    if (!c || c->size == 1 || n == 0) return TS_OK;
    int64_t t0 = ts_comm_enter(c, what);
    ts_status st = TS_OK;
    int64_t chunk = NBC_CHUNK_BYTES / (int64_t)esize;
    for (int64_t i = 0; i < n && !st; i += chunk) {
        int cnt = (int)(n - i < chunk ? n - i : chunk);
        char *p = (char *)x + (size_t)i * esize;
        MPI_Request r;
        int err = MPI_Ireduce(c->rank == root ? MPI_IN_PLACE : p, p, cnt, t, op, root, c->comm, &r);
        st = err == MPI_SUCCESS ? ts_comm_wait(c, &r, what) : ts_mpi_fail(err, what, c);
    }
    ts_comm_leave(c, t0, what);
    return st;
}

ts_status ts_comm_reduce_bits(ts_comm *c, uint32_t *x, int64_t n, int root, const char *what)
{
    return ts_comm_reduce_mpi(c, x, n, MPI_UINT32_T, sizeof *x, MPI_BOR, root, what);
}

static ts_status p2p(ts_comm *c, void *data, size_t bytes, int peer, int tag, int send, const char *what)
{
    int64_t t0 = ts_comm_enter(c, what);
    ts_status st = TS_OK;
    for (size_t i = 0; i < bytes && !st; i += CHUNK) {
        int cnt = (int)(bytes - i < CHUNK ? bytes - i : CHUNK);
        MPI_Request r;
        int err = send ? MPI_Isend((char *)data + i, cnt, MPI_BYTE, peer, tag, c->comm, &r)
                       : MPI_Irecv((char *)data + i, cnt, MPI_BYTE, peer, tag, c->comm, &r);
        st = err == MPI_SUCCESS ? ts_comm_wait(c, &r, what) : ts_mpi_fail(err, what, c);
    }
    ts_comm_leave(c, t0, what);
    return st;
}

#else /* without MPI: one process, nothing to exchange */

ts_status ts_parallel_init(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    return TS_OK;
}
void ts_parallel_finalize(void) {}
void ts_parallel_finalize_failed(double wait_s) { (void)wait_s; }
const char *ts_comm_host(int world_rank) { return world_rank == 0 ? "localhost" : "?"; }
ts_comm *ts_comm_world(void) { return &g_world_single; }
ts_comm *ts_comm_node(void) { return &g_world_single; }

ts_status ts_comm_split(ts_comm *parent, int color, int key, const char *name, ts_comm **out)
{
    (void)parent, (void)color, (void)key;
    ts_comm *c = calloc(1, sizeof *c);
    if (!c) return ts_error(TS_ERR_OOM, "no memory");
    c->size = 1;
    snprintf(c->name, sizeof c->name, "%s", name);
    *out = c;
    return TS_OK;
}

void ts_comm_free(ts_comm *c)
{
    if (c && c != &g_world_single) free(c);
}

ts_status ts_comm_allreduce_f32(ts_comm *c, float *x, int64_t n, ts_reduce_op op, const char *what)
{
    (void)c, (void)x, (void)n, (void)op, (void)what;
    return TS_OK;
}
ts_status ts_comm_allreduce_f64(ts_comm *c, double *x, int64_t n, ts_reduce_op op, const char *what)
{
    (void)c, (void)x, (void)n, (void)op, (void)what;
    return TS_OK;
}
ts_status ts_comm_allreduce_i64(ts_comm *c, int64_t *x, int64_t n, ts_reduce_op op, const char *what)
{
    (void)c, (void)x, (void)n, (void)op, (void)what;
    return TS_OK;
}
ts_status ts_comm_bcast(ts_comm *c, void *data, size_t bytes, int root, const char *what)
{
    (void)c, (void)data, (void)bytes, (void)root, (void)what;
    return TS_OK;
}
ts_status ts_comm_barrier(ts_comm *c, const char *what)
{
    (void)c, (void)what;
    return TS_OK;
}
ts_status ts_comm_allgather(ts_comm *c, const void *in, void *out, size_t bytes, const char *what)
{
    (void)c, (void)what;
    memcpy(out, in, bytes);
    return TS_OK;
}
ts_status ts_comm_reduce_bits(ts_comm *c, uint32_t *x, int64_t n, int root, const char *what)
{
    (void)c, (void)x, (void)n, (void)root, (void)what;
    return TS_OK;
}
static ts_status p2p(ts_comm *c, void *data, size_t bytes, int peer, int tag, int send, const char *what)
{
    (void)c, (void)data, (void)bytes, (void)tag, (void)send;
    return ts_error(TS_ERR_COMM, "%s: no peer %d in a single-process run", what, peer);
}
#endif

ts_status ts_comm_agree(ts_comm *c, ts_status st, const char *what)
{
    if (!c || c->size == 1) return st;
    typedef struct {
        int32_t status;
        char msg[500];
    } outcome;
    outcome mine = {.status = (int32_t)st};
    if (st) snprintf(mine.msg, sizeof mine.msg, "%s", ts_last_error());
    outcome *all = calloc((size_t)c->size, sizeof *all);
    if (!all) return st ? st : ts_error(TS_ERR_OOM, "no memory");
    ts_status cst = ts_comm_allgather(c, &mine, all, sizeof mine, what);
    ts_status out = st ? st : cst;
    for (int r = 0; r < c->size && !cst && !out; r++)
        if (all[r].status)
            out = ts_error((ts_status)all[r].status, "%s failed on rank %d: %s", what, ts_comm_world_rank(c, r),
                           all[r].msg);
    free(all);
    return out;
}

/* ---- tensors: in place where memory is host memory, else staged ---- */

static ts_status stage_in(const ts_tensor *t, float **buf, int *staged)
{
    *staged = 0;
    *buf = ts_tensor_host_io(t);
    if (*buf) return TS_OK;
    *buf = malloc(ts_tensor_nbytes(t) ? ts_tensor_nbytes(t) : 1);
    if (!*buf) return ts_error(TS_ERR_OOM, "no host memory to stage %zu bytes", ts_tensor_nbytes(t));
    *staged = 1;
    ts_status st = ts_tensor_read(t, *buf, ts_tensor_nbytes(t));
    if (st) free(*buf);
    return st;
}

ts_status ts_comm_allreduce_tensor(ts_comm *c, ts_tensor *t, ts_reduce_op op, const char *what)
{
    if (!c || c->size == 1) return TS_OK;
    float *buf;
    int staged;
    ts_status st = stage_in(t, &buf, &staged);
    if (st) return st;
    st = ts_comm_allreduce_f32(c, buf, ts_tensor_numel(t), op, what);
    if (staged) {
        if (!st) st = ts_tensor_write(t, buf, ts_tensor_nbytes(t));
        free(buf);
    }
    return st;
}

ts_status ts_comm_bcast_tensor(ts_comm *c, ts_tensor *t, int root, const char *what)
{
    if (!c || c->size == 1) return TS_OK;
    float *buf;
    int staged;
    ts_status st = stage_in(t, &buf, &staged);
    if (st) return st;
    st = ts_comm_bcast(c, buf, ts_tensor_nbytes(t), root, what);
    if (staged) {
        if (!st && ts_comm_rank(c) != root) st = ts_tensor_write(t, buf, ts_tensor_nbytes(t));
        free(buf);
    }
    return st;
}

ts_status ts_comm_send_tensor(ts_comm *c, const ts_tensor *t, int dest, int tag, const char *what)
{
    float *buf;
    int staged;
    ts_status st = stage_in(t, &buf, &staged);
    if (st) return st;
    st = p2p(c, buf, ts_tensor_nbytes(t), dest, tag, 1, what);
    if (staged) free(buf);
    return st;
}

ts_status ts_comm_recv_tensor(ts_comm *c, ts_tensor *t, int src, int tag, const char *what)
{
    void *host = ts_tensor_host_io(t);
    if (host) return p2p(c, host, ts_tensor_nbytes(t), src, tag, 0, what);
    void *buf = malloc(ts_tensor_nbytes(t) ? ts_tensor_nbytes(t) : 1);
    if (!buf) return ts_error(TS_ERR_OOM, "no host memory to stage %zu bytes", ts_tensor_nbytes(t));
    ts_status st = p2p(c, buf, ts_tensor_nbytes(t), src, tag, 0, what);
    if (!st) st = ts_tensor_write(t, buf, ts_tensor_nbytes(t));
    free(buf);
    return st;
}
