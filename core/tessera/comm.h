/* Communicators, as the core sees them (implemented in parallel/).
 *
 * A ts_comm is a group of processes (MPI underneath when built with MPI).
 * Every collective is over the group's members; a NULL communicator or one
 * of size 1 makes every call a no-op, so single-process code needs no
 * special cases. Collectives on tensors of any device stage through host
 * memory where the device's memory is not host memory. */
#ifndef TESSERA_COMM_H
#define TESSERA_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "tessera/status.h"
#include "tessera/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ts_comm ts_comm;

typedef enum ts_reduce_op { TS_REDUCE_SUM = 0, TS_REDUCE_MAX = 1 } ts_reduce_op;

/* Every process of the job (one process: size 1), and the processes
 * sharing this node (memory: MPI_COMM_TYPE_SHARED). */
ts_comm *ts_comm_world(void);
ts_comm *ts_comm_node(void);

int ts_comm_size(const ts_comm *c);
int ts_comm_rank(const ts_comm *c);
/* The world rank of member `rank` (for messages). */
int ts_comm_world_rank(const ts_comm *c, int rank);

/* In-place allreduce of f32 tensor elements. `what` names the collective in
 * traces and watchdog reports. */
ts_status ts_comm_allreduce_tensor(ts_comm *c, ts_tensor *t, ts_reduce_op op, const char *what);
/* In-place allreduce of host arrays. */
ts_status ts_comm_allreduce_f32(ts_comm *c, float *x, int64_t n, ts_reduce_op op, const char *what);
ts_status ts_comm_allreduce_f64(ts_comm *c, double *x, int64_t n, ts_reduce_op op, const char *what);
ts_status ts_comm_allreduce_i64(ts_comm *c, int64_t *x, int64_t n, ts_reduce_op op, const char *what);
/* Broadcast bytes from member root. */
ts_status ts_comm_bcast(ts_comm *c, void *data, size_t bytes, int root, const char *what);
ts_status ts_comm_bcast_tensor(ts_comm *c, ts_tensor *t, int root, const char *what);
/* Point-to-point transfers of a tensor's bytes between members. */
ts_status ts_comm_send_tensor(ts_comm *c, const ts_tensor *t, int dest, int tag, const char *what);
ts_status ts_comm_recv_tensor(ts_comm *c, ts_tensor *t, int src, int tag, const char *what);
ts_status ts_comm_barrier(ts_comm *c, const char *what);
/* Collective: every member learns whether any failed. Returns st on a
 * member that failed; on the others, the first failure's status with its
 * rank and message ("what failed on rank 3: ..."). */
ts_status ts_comm_agree(ts_comm *c, ts_status st, const char *what);

#ifdef __cplusplus
}
#endif
#endif
