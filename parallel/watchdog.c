/* The collective watchdog.
 *
 * Every process keeps a board per communicator: how many collectives it has
 * entered, the one it is in, since when. A helper thread answers questions
 * about that board over a private duplicate of the world communicator,
 * polling every 20 ms (it never spins). A collective that waits past the
 * timeout asks each member of its group for its board and names the ones
 * that have not reached it, or that do not answer; Horovod's stall report,
 * for any group. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm_internal.h"

/* Defaults: name the missing ranks after 300 s, end the job after twice
 * that; g_hard < 0 means "twice the timeout". */
static double g_timeout = 300.0, g_hard = -1.0;
static int g_timeout_read;
static char g_last[4096];

static void read_env(void)
{
    if (g_timeout_read) return;
    g_timeout_read = 1;
    const char *e = getenv("TESSERA_WATCHDOG");
    if (e && *e) g_timeout = atof(e);
    e = getenv("TESSERA_WATCHDOG_HARD");
    if (e && *e) g_hard = atof(e);
}

void ts_watchdog_set(double timeout_s, double hard_timeout_s)
{
    g_timeout_read = 1;
    g_timeout = timeout_s;
    g_hard = hard_timeout_s;
}

double ts_watchdog_timeout(void)
{
    read_env();
    return g_timeout;
}

double ts_watchdog_hard_timeout(void)
{
    read_env();
    return g_hard < 0 ? 2.0 * g_timeout : g_hard;
}

const char *ts_watchdog_last_report(void) { return g_last; }

#ifdef TS_HAVE_MPI

enum { TAG_QUERY = 4711, TAG_REPLY = 4712 };

typedef struct query {
    uint64_t comm_id;
} query;

typedef struct reply {
    uint64_t entered;
    double age;        /* seconds in the current state */
    int known;         /* the process is a member of that group */
    char current[96];  /* the collective it is in, "" when computing */
} reply;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static ts_comm *g_comms[256];
static int g_ncomms;
static MPI_Comm g_ctl = MPI_COMM_NULL;
static pthread_t g_thread;
static int g_running, g_stop;

void ts_watchdog_lock(void) { pthread_mutex_lock(&g_lock); }
void ts_watchdog_unlock(void) { pthread_mutex_unlock(&g_lock); }

void ts_watchdog_register(ts_comm *c)
{
    pthread_mutex_lock(&g_lock);
    if (g_ncomms < (int)(sizeof g_comms / sizeof *g_comms)) g_comms[g_ncomms++] = c;
    pthread_mutex_unlock(&g_lock);
}

void ts_watchdog_unregister(ts_comm *c)
{
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < g_ncomms; i++)
        if (g_comms[i] == c) g_comms[i] = g_comms[--g_ncomms];
    pthread_mutex_unlock(&g_lock);
}

static void answer(int src, const query *q)
{
    reply r;
    memset(&r, 0, sizeof r);
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < g_ncomms; i++) {
        ts_comm *c = g_comms[i];
        if (c->id != q->comm_id) continue;
        r.known = 1;
        r.entered = c->entered;
        r.age = ts_now() - c->since;
        snprintf(r.current, sizeof r.current, "%s", c->current);
        break;
    }
    pthread_mutex_unlock(&g_lock);
    MPI_Send(&r, (int)sizeof r, MPI_BYTE, src, TAG_REPLY, g_ctl);
}

static void *responder(void *arg)
{
    (void)arg;
    struct timespec pause = {0, 20 * 1000 * 1000};
    while (!__atomic_load_n(&g_stop, __ATOMIC_ACQUIRE)) {
        int flag = 0;
        MPI_Status s;
        MPI_Iprobe(MPI_ANY_SOURCE, TAG_QUERY, g_ctl, &flag, &s);
        if (!flag) {
            nanosleep(&pause, NULL);
            continue;
        }
        query q;
        MPI_Recv(&q, (int)sizeof q, MPI_BYTE, s.MPI_SOURCE, TAG_QUERY, g_ctl, MPI_STATUS_IGNORE);
        answer(s.MPI_SOURCE, &q);
    }
    return NULL;
}

void ts_watchdog_start(void)
{
    int level = 0;
    MPI_Query_thread(&level);
    if (ts_watchdog_timeout() <= 0 || level < MPI_THREAD_MULTIPLE || g_running) return;
    MPI_Comm_dup(MPI_COMM_WORLD, &g_ctl);
    g_stop = 0;
    if (pthread_create(&g_thread, NULL, responder, NULL) == 0) g_running = 1;
}

void ts_watchdog_stop(void)
{
    if (!g_running) return;
    /* nobody may still be asking when the helpers go */
    MPI_Barrier(g_ctl);
    __atomic_store_n(&g_stop, 1, __ATOMIC_RELEASE);
    pthread_join(g_thread, NULL);
    g_running = 0;
    MPI_Comm_free(&g_ctl);
}

void ts_watchdog_report(ts_comm *c, const char *what, double waited)
{
    int n = 0;
    size_t k = (size_t)snprintf(g_last, sizeof g_last,
                                "watchdog: '%s' (collective #%llu on %s, %d ranks) has waited %.1f s;", what,
                                (unsigned long long)c->entered, c->name, c->size, waited);
    if (!g_running) {
        snprintf(g_last + k, sizeof g_last - k, " cannot ask the other ranks (watchdog helper not running)");
        fprintf(stderr, "tessera [rank %d] %s\n", ts_comm_rank(ts_comm_world()), g_last);
        return;
    }
    reply *replies = calloc((size_t)c->size, sizeof *replies);
    MPI_Request *reqs = calloc((size_t)c->size * 2, sizeof *reqs);
    if (!replies || !reqs) {
        free(replies), free(reqs);
        return;
    }
    query q = {c->id};
    for (int r = 0; r < c->size; r++) {
        reqs[2 * r] = reqs[2 * r + 1] = MPI_REQUEST_NULL;
        if (r == c->rank) continue;
        int w = ts_comm_world_rank(c, r);
        MPI_Irecv(&replies[r], (int)sizeof replies[r], MPI_BYTE, w, TAG_REPLY, g_ctl, &reqs[2 * r + 1]);
        MPI_Isend(&q, (int)sizeof q, MPI_BYTE, w, TAG_QUERY, g_ctl, &reqs[2 * r]);
    }
    /* give the helpers up to two seconds to answer (a quarter of the
     * timeout when that is shorter: lost ranks never answer, and the
     * report should come out before the job is ended) */
    double t0 = ts_now(), window = ts_watchdog_timeout() / 4;
    if (window > 2.0) window = 2.0;
    if (window < 0.25) window = 0.25;
    int *answered = calloc((size_t)c->size, sizeof *answered);
    struct timespec pause = {0, 5 * 1000 * 1000};
    while (ts_now() - t0 < window) {
        int all = 1;
        for (int r = 0; r < c->size; r++) {
            if (r == c->rank || answered[r]) continue;
            int done = 0;
            MPI_Test(&reqs[2 * r + 1], &done, MPI_STATUS_IGNORE);
            if (done) answered[r] = 1;
            else all = 0;
        }
        if (all) break;
        nanosleep(&pause, NULL);
    }
    int joined = 0;
    char lost[512] = "";
    size_t lk = 0;
    k += (size_t)snprintf(g_last + k, sizeof g_last - k, " not joined:");
    for (int r = 0; r < c->size && k < sizeof g_last; r++) {
        if (r == c->rank) continue;
        int w = ts_comm_world_rank(c, r);
        if (!answered[r]) {
            MPI_Cancel(&reqs[2 * r + 1]);
            MPI_Request_free(&reqs[2 * r + 1]);
            k += (size_t)snprintf(g_last + k, sizeof g_last - k, "%s rank %d (world %d on node %s) not responding",
                                  n++ ? ";" : "", r, w, ts_comm_host(w));
            /* the nodes of the silent ranks, each once: a lost node */
            int seen = 0;
            for (int p = 0; p < r && !seen; p++)
                seen = p != c->rank && !answered[p] && !strcmp(ts_comm_host(ts_comm_world_rank(c, p)), ts_comm_host(w));
            if (!seen && lk < sizeof lost)
                lk += (size_t)snprintf(lost + lk, sizeof lost - lk, "%s%s", lk ? ", " : "", ts_comm_host(w));
        } else if (!replies[r].known || replies[r].entered < c->entered) {
            k += (size_t)snprintf(g_last + k, sizeof g_last - k,
                                  "%s rank %d (world %d on node %s) at collective #%llu, %s for %.1f s",
                                  n++ ? ";" : "", r, w, ts_comm_host(w), (unsigned long long)replies[r].entered,
                                  replies[r].current[0] ? replies[r].current : "computing", replies[r].age);
        } else {
            joined++;
        }
        /* the query send completes once the helper has taken it */
        if (reqs[2 * r] != MPI_REQUEST_NULL) {
            int done = 0;
            MPI_Test(&reqs[2 * r], &done, MPI_STATUS_IGNORE);
            if (!done) {
                MPI_Cancel(&reqs[2 * r]);
                MPI_Request_free(&reqs[2 * r]);
            }
        }
    }
    if (!n) snprintf(g_last + k, sizeof g_last - k, " none (all %d other ranks are in it: a slow collective)", joined);
    else if (lk && k < sizeof g_last)
        snprintf(g_last + k, sizeof g_last - k, "; not responding from node%s %s (lost?)", strchr(lost, ',') ? "s" : "",
                 lost);
    fprintf(stderr, "tessera [rank %d] %s\n", ts_comm_rank(ts_comm_world()), g_last);
    free(replies), free(reqs), free(answered);
}

#else

void ts_watchdog_lock(void) {}
void ts_watchdog_unlock(void) {}
void ts_watchdog_register(ts_comm *c) { (void)c; }
void ts_watchdog_unregister(ts_comm *c) { (void)c; }
void ts_watchdog_start(void) {}
void ts_watchdog_stop(void) {}
void ts_watchdog_report(ts_comm *c, const char *what, double waited)
{
    (void)c, (void)what, (void)waited;
}

#endif
