/* Where a device sits in the machine, through hwloc: the cores and NUMA
 * nodes closest to it. GPUs are located by PCI bus id; CPU devices span the
 * whole machine. Without hwloc, `known` is 0. */
#ifndef TESSERA_PLACEMENT_H
#define TESSERA_PLACEMENT_H

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

#ifdef __cplusplus
}
#endif
#endif
