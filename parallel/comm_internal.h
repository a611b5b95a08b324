/* Private to parallel/: the communicator behind ts_comm, and the pieces the
 * collective implementations share (waiting with a watchdog, traces). */
#ifndef TESSERA_COMM_INTERNAL_H
#define TESSERA_COMM_INTERNAL_H

#include <stdint.h>

#ifdef TS_HAVE_MPI
#include <mpi.h>
#endif

#include "internal.h"
#include "tessera/parallel.h"

struct ts_comm {
#ifdef TS_HAVE_MPI
    MPI_Comm comm;
    MPI_Win shm_win;        /* node shared memory (node communicator only) */
#endif
    int size, rank;
    int *world_ranks;       /* member -> world rank */
    char name[32];
    uint64_t id;            /* the same on every member: hash of name and world ranks */
    uint64_t entered;       /* collectives this process has entered */
    char current[96];       /* the collective it is in, "" when computing */
    double since;           /* when it entered it (or left the last one) */
    float *shm;             /* shared window base (node communicator) */
    int64_t shm_floats;     /* per member */
    int free_mpi;           /* MPI_Comm_free on release */
    void *hier;             /* the hierarchical strategy's groups and windows */
};


#ifdef TS_HAVE_MPI
/* A ts_comm over an MPI communicator it then owns. */
ts_comm *ts_comm_wrap(MPI_Comm mc, const char *name);
/* Complete a request, watching the clock: past the watchdog timeout, ask
 * the members what they are doing and report. */
ts_status ts_comm_wait(ts_comm *c, MPI_Request *req, const char *what);
ts_status ts_comm_waitall(ts_comm *c, int n, MPI_Request *reqs, const char *what);
ts_status ts_mpi_fail(int err, const char *what, const ts_comm *c);
/* Reduce n elements of type t to member root (in place there). */
ts_status ts_comm_reduce_mpi(ts_comm *c, void *x, int64_t n, MPI_Datatype t, size_t esize, MPI_Op op, int root,
                             const char *what);
#endif

/* Bitwise OR of u32 arrays to member root (assembles tensors exactly from
 * slices that others hold as zeros). */
ts_status ts_comm_reduce_bits(ts_comm *c, uint32_t *x, int64_t n, int root, const char *what);

/* Release what the hierarchical strategy set up for c (collective). */
void ts_comm_hier_free(ts_comm *c);

/* Mark entry to and exit from a collective (watchdog board, trace). */
int64_t ts_comm_enter(ts_comm *c, const char *what);
void ts_comm_leave(ts_comm *c, int64_t t0, const char *what);

/* The node name (MPI_Get_processor_name) of a world rank; "?" unknown. */
const char *ts_comm_host(int world_rank);

/* Watchdog plumbing (watchdog.c). The board (entered, current, since) is
 * read by the helper thread: update it under the lock. */
void ts_watchdog_lock(void);
void ts_watchdog_unlock(void);
void ts_watchdog_register(ts_comm *c);
void ts_watchdog_unregister(ts_comm *c);
void ts_watchdog_start(void);
void ts_watchdog_stop(void);
double ts_watchdog_timeout(void);
double ts_watchdog_hard_timeout(void);
/* Ask the members of c about collective number `seq` and report laggards. */
void ts_watchdog_report(ts_comm *c, const char *what, double waited);

#endif
