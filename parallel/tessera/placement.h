/* Where a device sits in the machine, through hwloc: the cores and NUMA
 * nodes closest to it. GPUs are located by PCI bus id; CPU devices span the
 * whole machine. Without hwloc, `known` is 0. */
#ifndef TESSERA_PLACEMENT_H
#define TESSERA_PLACEMENT_H

#include <stddef.h>

#include "tessera/device.h"
#include "tessera/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ts_locality {
    int known;            /* hwloc located the device */
    char cpus[128];       /* logical PUs near it, as a list: "0-15,32-47" */
    char numa_nodes[64];  /* NUMA nodes near it: "0" */
    int cores;            /* physical cores near it */
    int pus;              /* logical processors near it */
    char how[64];         /* "PCI 0000:17:00.0" or "whole machine" */
} ts_locality;

ts_status ts_device_locality(const ts_device *device, ts_locality *out);

typedef struct ts_binding {
    int bound;            /* this process's threads and memory are bound */
    int cores;            /* cores it was given */
    char report[512];     /* what was done, or why not */
} ts_binding;

/* Bind this process's threads and memory to its share of the cores (and
 * their NUMA nodes) near the device: share_count processes on this node
 * use devices with the same locality, this one is share_rank of them.
 * Skipped, and said so in the report, when they outnumber the cores. */
ts_status ts_placement_bind(const ts_device *device, int share_rank, int share_count, ts_binding *out);
/* The processing units this process may run on, as text. */
void ts_placement_current(char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif
