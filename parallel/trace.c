/* The trace timeline: spans of compute and communication per rank, written
 * as one Chrome trace JSON file (chrome://tracing, ui.perfetto.dev) with a
 * process per rank and three tracks: compute, communication, and set-up
 * (everything before the first training step, communication included).
 * Every span carries the training step it belongs to. Clocks are aligned
 * at a barrier when tracing starts. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "json.h"
#include "comm_internal.h"

typedef struct event {
    int64_t ts, dur;   /* microseconds */
    int64_t step;      /* the training step, -1 before the first */
    int tid;
    char cat[24];
    char name[56];
} event;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static event *g_events;
static size_t g_n, g_cap;
static int g_on;
static double g_origin;
static int64_t g_step = -1;

void ts_trace_step(int64_t step) { __atomic_store_n(&g_step, step, __ATOMIC_RELAXED); }

void ts_trace_enable(int on)
{
    if (on && !g_on) {
        /* a common zero for every rank's clock */
        ts_comm_barrier(ts_comm_world(), "trace start");
        g_origin = ts_now();
    }
    g_on = on;
}

int ts_trace_enabled(void) { return g_on; }

int64_t ts_trace_begin(void)
{
    if (!g_on) return -1;
    return (int64_t)((ts_now() - g_origin) * 1e6);
}

void ts_trace_end(int64_t start_us, const char *cat, const char *name, int tid)
{
    if (!g_on || start_us < 0) return;
    int64_t end = (int64_t)((ts_now() - g_origin) * 1e6);
    pthread_mutex_lock(&g_lock);
    if (g_n == g_cap) {
        size_t cap = g_cap ? g_cap * 2 : 4096;
        event *e = realloc(g_events, cap * sizeof *e);
        if (!e) {
            pthread_mutex_unlock(&g_lock);
            return;
        }
        g_events = e, g_cap = cap;
    }
    event *e = &g_events[g_n++];
    e->ts = start_us;
    e->dur = end - start_us;
    e->step = __atomic_load_n(&g_step, __ATOMIC_RELAXED);
    e->tid = e->step < 0 && tid == 1 ? 2 : tid; /* set-up collectives on the set-up track */
    snprintf(e->cat, sizeof e->cat, "%s", cat);
    snprintf(e->name, sizeof e->name, "%s", name);
    pthread_mutex_unlock(&g_lock);
}

/* This rank's events as JSON objects separated by commas. */
static char *local_json(int rank, size_t *len)
{
    pthread_mutex_lock(&g_lock);
    size_t cap = 640 + g_n * 230, k = 0;
    char *buf = malloc(cap);
    if (!buf) {
        pthread_mutex_unlock(&g_lock);
        return NULL;
    }
    k += (size_t)snprintf(buf + k, cap - k,
                          "{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": %d, \"args\": {\"name\": \"rank %d\"}},\n"
                          "{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": %d, \"tid\": 0, \"args\": {\"name\": \"compute\"}},\n"
                          "{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": %d, \"tid\": 1, \"args\": {\"name\": \"communication\"}},\n"
                          "{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": %d, \"tid\": 2, \"args\": {\"name\": \"set-up\"}}",
                          rank, rank, rank, rank, rank);
    for (size_t i = 0; i < g_n && k < cap; i++) {
        char name[128], cat[64];
        ts_json_escape(name, sizeof name, g_events[i].name);
        ts_json_escape(cat, sizeof cat, g_events[i].cat);
        k += (size_t)snprintf(buf + k, cap - k,
                              ",\n{\"name\": %s, \"cat\": %s, \"ph\": \"X\", \"ts\": %lld, \"dur\": %lld, \"pid\": %d, "
                              "\"tid\": %d, \"args\": {\"step\": %lld}}",
                              name, cat, (long long)g_events[i].ts, (long long)g_events[i].dur, rank,
                              g_events[i].tid, (long long)g_events[i].step);
    }
    pthread_mutex_unlock(&g_lock);
    *len = k < cap ? k : cap - 1;
    return buf;
}

ts_status ts_trace_write(const char *path)
{
    ts_comm *w = ts_comm_world();
    int rank = ts_comm_rank(w), size = ts_comm_size(w);
    size_t len;
    char *mine = local_json(rank, &len);
    if (!mine) return ts_error(TS_ERR_OOM, "no memory for the trace");
    /* gather every rank's text to rank 0 */
    int64_t *lens = calloc((size_t)size, sizeof *lens);
    int64_t l64 = (int64_t)len;
    ts_status st = ts_comm_allgather(w, &l64, lens, sizeof l64, "trace sizes");
    char *all = NULL;
    size_t total = 0;
    for (int r = 0; r < size; r++) total += (size_t)lens[r];
    if (!st && rank == 0) {
        all = malloc(total + 1);
        if (!all) st = ts_error(TS_ERR_OOM, "no memory for the trace");
        else memcpy(all, mine, len);
    }
    size_t off = len;
    for (int r = 1; r < size && !st; r++) {
        /* each rank sends in turn to rank 0 (small and rare) */
        if (rank == r) {
            st = ts_comm_bcast(w, mine, len, r, "trace events");
        } else {
            char *tmp = rank == 0 ? all + off : malloc((size_t)lens[r] ? (size_t)lens[r] : 1);
            st = ts_comm_bcast(w, tmp, (size_t)lens[r], r, "trace events");
            if (rank != 0) free(tmp);
        }
        off += (size_t)lens[r];
    }
    if (!st && rank == 0) {
        ts_atomic_file af;
        st = ts_atomic_open(&af, path);
        const char *head = "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n", *tail = "\n]}\n";
        if (!st) st = ts_atomic_write(&af, head, strlen(head));
        size_t pos = 0;
        for (int r = 0; r < size && !st; r++) {
            if (r) st = ts_atomic_write(&af, ",\n", 2);
            if (!st) st = ts_atomic_write(&af, all + pos, (size_t)lens[r]);
            pos += (size_t)lens[r];
        }
        if (!st) st = ts_atomic_write(&af, tail, strlen(tail));
        if (!st) st = ts_atomic_commit(&af);
        else ts_atomic_abort(&af);
    }
    free(all), free(lens), free(mine);
    return st;
}
