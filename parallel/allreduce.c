/* Gradient reduction strategies: MPI's collectives, tessera's ring, a
 * hierarchical path through MPI-3 shared memory, and a parameter server.
 *
 * Parts: member r owns elements [part_start(n, p, r), part_start(n, p, r+1)),
 * sizes differing by at most one, so any n works for any group size.
 *
 * Ring: p-1 steps pass each part around the ring accumulating it
 * (reduce-scatter), then p-1 steps pass the finished parts around
 * (all-gather): 2(p-1)/p of the data crosses each link, the optimum.
 *
 * Hierarchical: the members on one node share a window; each sums its part
 * across everyone's slot, the parts go across nodes between members of the
 * same local rank, and everyone reads the result. When the data already
 * lives in the window (ts_comm_shared_alloc) nothing is copied in or out:
 * each member writes its summed part straight into every slot. */
#include <stdlib.h>
#include <string.h>

#include "comm_internal.h"

const char *ts_strategy_name(ts_reduce_strategy s)
{
    switch (s) {
    case TS_STRATEGY_MPI: return "mpi";
    case TS_STRATEGY_RING: return "ring";
    case TS_STRATEGY_HIER: return "hier";
    case TS_STRATEGY_PS: return "ps";
    }
    return "?";
}

int ts_strategy_parse(const char *name)
{
    if (!name) return -1;
    if (!strcmp(name, "mpi")) return TS_STRATEGY_MPI;
    if (!strcmp(name, "ring")) return TS_STRATEGY_RING;
    if (!strcmp(name, "hier") || !strcmp(name, "shm")) return TS_STRATEGY_HIER;
    if (!strcmp(name, "ps")) return TS_STRATEGY_PS;
    return -1;
}

int64_t ts_comm_part_start(int64_t n, int size, int part)
{
    return (int64_t)((__int128)n * part / size);
}

#ifdef TS_HAVE_MPI

#define CHUNK (1 << 26) /* floats per message */

/* Send part `sp` of x to `right` while receiving part `rp` from `left`;
 * add the received elements (or copy them when !add). Every part travels
 * as max(1, ceil(count / CHUNK)) messages, empty parts too, so each send
 * meets its receive whatever the part sizes. */
static ts_status exchange(ts_comm *c, float *x, int64_t n, int sp, int rp, int right, int left,
                          float *tmp, int add, const char *what)
{
    int p = c->size;
    int64_t s0 = ts_comm_part_start(n, p, sp), s1 = ts_comm_part_start(n, p, sp + 1);
    int64_t r0 = ts_comm_part_start(n, p, rp), r1 = ts_comm_part_start(n, p, rp + 1);
    int64_t ns = (s1 - s0 + CHUNK - 1) / CHUNK, nr = (r1 - r0 + CHUNK - 1) / CHUNK;
    if (ns < 1) ns = 1;
    if (nr < 1) nr = 1;
    for (int64_t k = 0; k < ns || k < nr; k++) {
        int64_t off = k * CHUNK;
        int sc = (int)(s1 - s0 - off > CHUNK ? CHUNK : (s1 - s0 - off > 0 ? s1 - s0 - off : 0));
        int rc = (int)(r1 - r0 - off > CHUNK ? CHUNK : (r1 - r0 - off > 0 ? r1 - r0 - off : 0));
        MPI_Request req[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
        float *dst = add ? tmp : x + r0 + off;
        if (k < nr) MPI_Irecv(dst, rc, MPI_FLOAT, left, 77, c->comm, &req[0]);
        if (k < ns) MPI_Isend(x + s0 + off, sc, MPI_FLOAT, right, 77, c->comm, &req[1]);
        ts_status st = ts_comm_waitall(c, 2, req, what);
        if (st) return st;
        if (add && k < nr) {
            float *y = x + r0 + off;
            for (int i = 0; i < rc; i++) y[i] += tmp[i];
        }
    }
    return TS_OK;
}

static ts_status ring_reduce_scatter(ts_comm *c, float *x, int64_t n, const char *what)
{
    int p = c->size, r = c->rank;
    int64_t maxpart = n / p + 1;
    float *tmp = malloc((size_t)(maxpart < CHUNK ? maxpart : CHUNK) * sizeof *tmp);
    if (!tmp) return ts_error(TS_ERR_OOM, "no memory for the ring");
    ts_status st = TS_OK;
    for (int s = 0; s < p - 1 && !st; s++)
        st = exchange(c, x, n, ((r - s - 1) % p + p) % p, ((r - s - 2) % p + p) % p, (r + 1) % p,
                      (r - 1 + p) % p, tmp, 1, what);
    free(tmp);
    return st;
}

static ts_status ring_allgather(ts_comm *c, float *x, int64_t n, const char *what)
{
    int p = c->size, r = c->rank;
    ts_status st = TS_OK;
    for (int s = 0; s < p - 1 && !st; s++)
        st = exchange(c, x, n, ((r - s) % p + p) % p, ((r - s - 1) % p + p) % p, (r + 1) % p,
                      (r - 1 + p) % p, NULL, 0, what);
    return st;
}

/* ---- hierarchical ---- */

typedef struct shm_window {
    MPI_Win win;
    float *base;       /* slot 0 */
    int64_t cap;       /* floats per slot */
} shm_window;

typedef struct hier_state {
    ts_comm *owner;
    ts_comm *node;     /* members of the group on this node */
    ts_comm *cross;    /* members with the same local rank, one per node */
    int uniform;       /* every node holds the same number of members */
    shm_window user;   /* ts_comm_shared_alloc buffers: never moved */
    shm_window scratch;/* staging for data that lives elsewhere */
} hier_state;

/* the inter-node phase's work so far (ts_comm_hier_stats) */
static int64_t g_cross_calls, g_cross_bytes;

void ts_comm_hier_stats(int64_t *calls, int64_t *bytes)
{
    *calls = __atomic_load_n(&g_cross_calls, __ATOMIC_RELAXED);
    *bytes = __atomic_load_n(&g_cross_bytes, __ATOMIC_RELAXED);
}

static ts_status hier_setup(ts_comm *c, hier_state **out)
{
    if (c->hier) {
        *out = c->hier;
        return TS_OK;
    }
    hier_state *h = calloc(1, sizeof *h);
    if (!h) return ts_error(TS_ERR_OOM, "no memory");
    h->owner = c;
    h->user.win = h->scratch.win = MPI_WIN_NULL;
    MPI_Comm nodec, crossc;
    int err = MPI_Comm_split_type(c->comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &nodec);
    if (err != MPI_SUCCESS) {
        free(h);
        return ts_mpi_fail(err, "splitting by node", c);
    }
    int lrank, lsize;
    MPI_Comm_rank(nodec, &lrank);
    MPI_Comm_size(nodec, &lsize);
    MPI_Comm_split(c->comm, lrank, c->rank, &crossc);
    int64_t range[2] = {-lsize, lsize};
    ts_status st = ts_comm_allreduce_i64(c, range, 2, TS_REDUCE_MAX, "hier set-up");
    if (st) {
        MPI_Comm_free(&nodec);
        MPI_Comm_free(&crossc);
        free(h);
        return st;
    }
    h->uniform = -range[0] == range[1];
    char nn[48], cn[48];
    snprintf(nn, sizeof nn, "%s.node", c->name);
    snprintf(cn, sizeof cn, "%s.cross", c->name);
    h->node = ts_comm_wrap(nodec, nn);
    h->cross = ts_comm_wrap(crossc, cn);
    if (!h->node || !h->cross) {
        free(h);
        return ts_error(TS_ERR_OOM, "no memory");
    }
    c->hier = h;
    *out = h;
    return TS_OK;
}

static void window_free(shm_window *w)
{
    if (w->win == MPI_WIN_NULL) return;
    MPI_Win_unlock_all(w->win);
    MPI_Win_free(&w->win);
}

void ts_comm_hier_free(ts_comm *c)
{
    hier_state *h = c->hier;
    if (!h) return;
    window_free(&h->user);
    window_free(&h->scratch);
    ts_comm_free(h->node);
    ts_comm_free(h->cross);
    free(h);
    c->hier = NULL;
}

/* A window with at least n floats per slot (collective on the node). */
static ts_status shm_reserve(hier_state *h, shm_window *w, int64_t n)
{
    int64_t need = n;
    ts_status st = ts_comm_allreduce_i64(h->node, &need, 1, TS_REDUCE_MAX, "shared window size");
    if (st) return st;
    if (need <= w->cap) return TS_OK;
    if (w->win != MPI_WIN_NULL) {
        MPI_Win_unlock_all(w->win);
        MPI_Win_free(&w->win);
        w->base = NULL;
        w->cap = 0;
    }
    int64_t cap = need < 1024 ? 1024 : (need + 15) / 16 * 16;
    float *mine;
    int err = MPI_Win_allocate_shared((MPI_Aint)cap * (MPI_Aint)sizeof(float), sizeof(float), MPI_INFO_NULL,
                                      h->node->comm, &mine, &w->win);
    if (err != MPI_SUCCESS) return ts_mpi_fail(err, "MPI_Win_allocate_shared", h->node);
    MPI_Aint size;
    int disp;
    MPI_Win_shared_query(w->win, 0, &size, &disp, &w->base);
    MPI_Win_lock_all(MPI_MODE_NOCHECK, w->win);
    w->cap = cap;
    return TS_OK;
}

/* Make every member's stores to the window visible to all. */
static ts_status shm_sync(hier_state *h, shm_window *w, const char *what)
{
    MPI_Win_sync(w->win);
    ts_status st = ts_comm_barrier(h->node, what);
    MPI_Win_sync(w->win);
    return st;
}

static ts_status hier_allreduce(ts_comm *c, float *x, int64_t n, const char *what)
{
    hier_state *h = NULL;
    ts_status st = hier_setup(c, &h);
    if (st) return st;
    if (!h->uniform) return ts_comm_allreduce_f32(c, x, n, TS_REDUCE_SUM, what);
    int L = h->node->size, l = h->node->rank;
    /* in place when every member's data sits at the same offset of its
     * slot of the user window */
    int64_t off = -1;
    if (h->user.base) {
        float *mine = h->user.base + (int64_t)l * h->user.cap;
        if (x >= mine && x + n <= mine + h->user.cap) off = x - mine;
    }
    int64_t agree[2] = {off, -off};
    /* through the watchdog like every phase: a node that vanished is named */
    if ((st = ts_comm_allreduce_i64(h->node, agree, 2, TS_REDUCE_MAX, what))) return st;
    int in_place = off >= 0 && agree[0] == off && -agree[1] == off;
    shm_window *w = in_place ? &h->user : &h->scratch;
    if (!in_place) {
        if ((st = shm_reserve(h, w, n))) return st;
        off = 0;
        memcpy(w->base + (int64_t)l * w->cap, x, (size_t)n * sizeof *x);
    }
    if ((st = shm_sync(h, w, what))) return st;
    int64_t a = ts_comm_part_start(n, L, l), b = ts_comm_part_start(n, L, l + 1);
    float *acc = w->base + (int64_t)l * w->cap + off + a; /* my slot holds my summed part */
    for (int k = 0; k < L; k++) {
        if (k == l) continue;
        const float *y = w->base + (int64_t)k * w->cap + off + a;
        for (int64_t i = 0; i < b - a; i++) acc[i] += y[i];
    }
    if (h->cross->size > 1) {
        if ((st = ts_comm_allreduce_f32(h->cross, acc, b - a, TS_REDUCE_SUM, what))) return st;
        __atomic_add_fetch(&g_cross_calls, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&g_cross_bytes, (b - a) * (int64_t)sizeof *acc, __ATOMIC_RELAXED);
    }
    if ((st = shm_sync(h, w, what))) return st;
    if (in_place) {
        /* copy the other members' summed parts into my slot */
        for (int k = 0; k < L; k++) {
            if (k == l) continue;
            int64_t ka = ts_comm_part_start(n, L, k), kb = ts_comm_part_start(n, L, k + 1);
            memcpy(x + ka, w->base + (int64_t)k * w->cap + off + ka, (size_t)(kb - ka) * sizeof *x);
        }
    } else {
        for (int k = 0; k < L; k++) {
            int64_t ka = ts_comm_part_start(n, L, k), kb = ts_comm_part_start(n, L, k + 1);
            memcpy(x + ka, w->base + (int64_t)k * w->cap + ka, (size_t)(kb - ka) * sizeof *x);
        }
    }
    /* nobody changes a slot before everyone has read the parts */
    return shm_sync(h, w, what);
}

float *ts_comm_shared_alloc(ts_comm *c, int64_t n)
{
    hier_state *h = NULL;
    if (!c || c->size == 1 || hier_setup(c, &h) != TS_OK) return NULL;
    if (h->user.base) return NULL; /* one user buffer per group */
    if (shm_reserve(h, &h->user, n) != TS_OK) return NULL;
    return h->user.base + (int64_t)h->node->rank * h->user.cap;
}

ts_status ts_comm_allreduce_sum(ts_comm *c, float *x, int64_t n, ts_reduce_strategy s, const char *what)
{
    if (!c || c->size == 1 || n == 0) return TS_OK;
    ts_status st;
    int64_t t0;
    switch (s) {
    case TS_STRATEGY_MPI: return ts_comm_allreduce_f32(c, x, n, TS_REDUCE_SUM, what);
    case TS_STRATEGY_RING:
        t0 = ts_comm_enter(c, what);
        st = ring_reduce_scatter(c, x, n, what);
        if (!st) st = ring_allgather(c, x, n, what);
        ts_comm_leave(c, t0, what);
        return st;
    case TS_STRATEGY_HIER:
        t0 = ts_comm_enter(c, what);
        st = hier_allreduce(c, x, n, what);
        ts_comm_leave(c, t0, what);
        return st;
    case TS_STRATEGY_PS:
        st = ts_comm_reduce_sum(c, x, n, 0, what);
        if (!st) st = ts_comm_bcast(c, x, (size_t)n * sizeof *x, 0, what);
        return st;
    }
    return ts_error(TS_ERR_INVALID_ARG, "unknown reduction strategy %d", (int)s);
}

ts_status ts_comm_reduce_scatter_sum(ts_comm *c, float *x, int64_t n, ts_reduce_strategy s, const char *what)
{
    if (!c || c->size == 1 || n == 0) return TS_OK;
    int p = c->size;
    if (s == TS_STRATEGY_RING) {
        int64_t t0 = ts_comm_enter(c, what);
        ts_status st = ring_reduce_scatter(c, x, n, what);
        ts_comm_leave(c, t0, what);
        return st;
    }
    if (s == TS_STRATEGY_MPI) {
        int *counts = malloc((size_t)p * sizeof *counts);
        if (!counts) return ts_error(TS_ERR_OOM, "no memory");
        int fits = 1;
        for (int r = 0; r < p; r++) {
            int64_t k = ts_comm_part_start(n, p, r + 1) - ts_comm_part_start(n, p, r);
            fits &= k < (1ll << 30);
            counts[r] = (int)k;
        }
        ts_status st = TS_OK;
        if (fits) {
            int64_t t0 = ts_comm_enter(c, what);
            int64_t a = ts_comm_part_start(n, p, c->rank);
            float *part = malloc((size_t)(counts[c->rank] ? counts[c->rank] : 1) * sizeof *part);
            MPI_Request r;
            int err = part ? MPI_Ireduce_scatter(x, part, counts, MPI_FLOAT, MPI_SUM, c->comm, &r) : MPI_ERR_NO_MEM;
            st = err == MPI_SUCCESS ? ts_comm_wait(c, &r, what) : ts_mpi_fail(err, what, c);
            if (!st) memcpy(x + a, part, (size_t)counts[c->rank] * sizeof *part);
            free(part);
            ts_comm_leave(c, t0, what);
        }
        free(counts);
        if (fits) return st;
    }
    /* hierarchical, parameter server, or parts too large for MPI counts */
    return ts_comm_allreduce_sum(c, x, n, s == TS_STRATEGY_PS ? TS_STRATEGY_PS : (s == TS_STRATEGY_HIER ? s : TS_STRATEGY_MPI), what);
}

ts_status ts_comm_allgather_parts(ts_comm *c, float *x, int64_t n, ts_reduce_strategy s, const char *what)
{
    if (!c || c->size == 1 || n == 0) return TS_OK;
    int p = c->size;
    if (s == TS_STRATEGY_RING) {
        int64_t t0 = ts_comm_enter(c, what);
        ts_status st = ring_allgather(c, x, n, what);
        ts_comm_leave(c, t0, what);
        return st;
    }
    int *counts = malloc((size_t)p * sizeof *counts), *displs = malloc((size_t)p * sizeof *displs);
    if (!counts || !displs) {
        free(counts), free(displs);
        return ts_error(TS_ERR_OOM, "no memory");
    }
    int fits = n < (1ll << 30);
    for (int r = 0; r < p; r++) {
        displs[r] = (int)ts_comm_part_start(n, p, r);
        counts[r] = (int)(ts_comm_part_start(n, p, r + 1) - ts_comm_part_start(n, p, r));
    }
    ts_status st = TS_OK;
    int64_t t0 = ts_comm_enter(c, what);
    if (fits) {
        MPI_Request r;
        int err = MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, x, counts, displs, MPI_FLOAT, c->comm, &r);
        st = err == MPI_SUCCESS ? ts_comm_wait(c, &r, what) : ts_mpi_fail(err, what, c);
    } else {
        /* every member broadcasts its part in turn */
        for (int r = 0; r < p && !st; r++) {
            int64_t a = ts_comm_part_start(n, p, r), b = ts_comm_part_start(n, p, r + 1);
            st = ts_comm_bcast(c, x + a, (size_t)(b - a) * sizeof *x, r, what);
        }
    }
    ts_comm_leave(c, t0, what);
    free(counts), free(displs);
    return st;
}

ts_status ts_comm_reduce_sum(ts_comm *c, float *x, int64_t n, int root, const char *what)
{
    return ts_comm_reduce_mpi(c, x, n, MPI_FLOAT, sizeof *x, MPI_SUM, root, what);
}

#else /* one process: every reduction is the identity */

void ts_comm_hier_stats(int64_t *calls, int64_t *bytes) { *calls = *bytes = 0; }

float *ts_comm_shared_alloc(ts_comm *c, int64_t n)
{
    (void)c, (void)n;
    return NULL;
}
ts_status ts_comm_allreduce_sum(ts_comm *c, float *x, int64_t n, ts_reduce_strategy s, const char *what)
{
    (void)c, (void)x, (void)n, (void)s, (void)what;
    return TS_OK;
}
ts_status ts_comm_reduce_scatter_sum(ts_comm *c, float *x, int64_t n, ts_reduce_strategy s, const char *what)
{
    (void)c, (void)x, (void)n, (void)s, (void)what;
    return TS_OK;
}
ts_status ts_comm_allgather_parts(ts_comm *c, float *x, int64_t n, ts_reduce_strategy s, const char *what)
{
    (void)c, (void)x, (void)n, (void)s, (void)what;
    return TS_OK;
}
ts_status ts_comm_reduce_sum(ts_comm *c, float *x, int64_t n, int root, const char *what)
{
    (void)c, (void)x, (void)n, (void)root, (void)what;
    return TS_OK;
}

#endif
