/* Devices: the registry of everything tessera can compute on.
 *
 * The registry is built on first use: the native CPU backend is always
 * device 0 ("cpu"); every OpenCL device of every platform follows as
 * "opencl:0", "opencl:1", ... A device spec string picks one:
 *   "cpu"                 the native CPU backend
 *   "opencl"              the first OpenCL device
 *   "opencl:N"            the N-th OpenCL device
 *   "opencl:<substring>"  the first OpenCL device whose name, vendor or
 *                         platform contains <substring> (case-insensitive)
 *   "auto" or NULL        $TESSERA_DEVICE if set, else the fastest GPU,
 *                         else the CPU backend */
#ifndef TESSERA_DEVICE_H
#define TESSERA_DEVICE_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "tessera/status.h"
#include "tessera/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ts_device_type {
    TS_DEVICE_CPU = 0,
    TS_DEVICE_GPU,
    TS_DEVICE_ACCELERATOR,
    TS_DEVICE_OTHER,
} ts_device_type;

typedef struct ts_device_info {
    char id[32];              /* "cpu", "opencl:0" */
    char backend[16];         /* "cpu", "opencl" */
    char name[128];
    char vendor[128];
    char driver_version[128];
    char platform[256];       /* platform name and version */
    char version[128];        /* device and language version */
    ts_device_type type;
    uint64_t global_mem_bytes;
    uint64_t max_alloc_bytes;
    uint64_t local_mem_bytes;
    uint64_t max_work_group_size;
    int compute_units;
    int clock_mhz;
    int fp64, fp16, subgroups;
    int host_memory;          /* device memory is host memory */
    int pci_domain, pci_bus, pci_device, pci_function; /* -1 if unknown */
    char details[512];        /* backend notes: threads, BLAS, GEMM route */
    char reference_blas[64];  /* library ts_matmul_reference uses ("" if none) */
} ts_device_info;

typedef struct ts_memory_stats {
    size_t in_use;            /* bytes in live blocks */
    size_t cached;            /* bytes held for reuse */
    size_t peak_in_use;
    uint64_t allocations;     /* block requests */
    uint64_t cache_hits;      /* requests served from the cache */
} ts_memory_stats;

int ts_device_count(void);
/* NULL if index is out of range. */
ts_device *ts_device_at(int index);
/* Resolve a spec string (see above). Unknown specs fail with TS_ERR_DEVICE
 * and a message listing the devices that exist. */
ts_status ts_device_open(const char *spec, ts_device **out);
/* A comma list of specs ("cpu,opencl:0"); "auto" in it stands for every
 * GPU of every kind, fastest first (the CPU backend if there is none), so
 * "auto,cpu" is every GPU, then the CPU. At most cap devices. */
ts_status ts_device_list(const char *spec, ts_device **out, int cap, int *count);
/* The device of one of several processes on a node: the list (spec, or
 * $TESSERA_DEVICE if set, which overrides it) dealt out by node-local
 * rank: rank r takes item r mod count. */
ts_status ts_device_open_local(const char *spec, int local_rank, ts_device **out);
/* Settings of the process that must precede its threads, for the devices
 * a command will open (spec; $TESSERA_DEVICE where it is set and
 * env_overrides, as ts_device_open_local reads it, or spec is empty or
 * "auto", as ts_device_open does): when every item names an OpenCL device,
 * the host's idle threads are set to wait without spinning on the cores
 * those devices' own threads need (PoCL). Returns 1 when it changed the
 * environment: the host's thread runtime read it when the program loaded,
 * so the program should re-execute itself (the same argv, before opening
 * anything); the run again calls this too, which then takes its settings
 * back out of the environment so that child processes do not inherit
 * them. 0 when nothing changed (the user's setting stands). Opens no
 * device. */
int ts_device_prepare_process(const char *spec, int env_overrides);
/* 1 in a process that ts_device_prepare_process ran again with its host
 * threads waiting passively. */
int ts_device_process_quiet(void);
const ts_device_info *ts_device_get_info(const ts_device *device);
const char *ts_device_type_name(ts_device_type type);
/* Every field of info as JSON object members, each followed by ", " (the
 * caller writes the braces and may add members after). */
void ts_device_info_write_json(FILE *f, const ts_device_info *info);

/* Wait until all work queued on the device has finished; reports errors of
 * work that ran asynchronously. */
ts_status ts_device_synchronize(ts_device *device);

void ts_device_memory_stats(ts_device *device, ts_memory_stats *stats);
/* peak_in_use starts again from what is in use now (as PyTorch's
 * reset_peak_memory_stats): the peak of one phase of a program. */
void ts_device_memory_reset_peak(ts_device *device);
/* Return cached blocks to the backend. */
void ts_device_empty_cache(ts_device *device);

/* Kernel programs: build counts and time (OpenCL devices; zeros elsewhere). */
typedef struct ts_build_stats {
    int built_from_source;   /* programs compiled from source */
    int loaded_from_disk;    /* programs served by the on-disk binary cache */
    int cache_rejected;      /* cache entries found corrupt or stale, rebuilt */
    double seconds;          /* time spent building or loading */
} ts_build_stats;

/* Build every kernel program of the device now instead of on first use. */
ts_status ts_device_prepare(ts_device *device);
void ts_device_build_stats(ts_device *device, ts_build_stats *stats);

/* Mixed precision for matrix products, as PyTorch autocast does them: with
 * TS_BF16 or TS_F16 every GEMM the device runs afterwards (linear layers,
 * attention's products) rounds both inputs to that type, sums the products
 * in fp32 and writes fp32; every other op, the weights, gradients and
 * optimizer state stay fp32. TS_F32 (the default) turns it off. Fails with
 * TS_ERR_UNSUPPORTED on a device without such products (a backend with no
 * matmul_route),
 * TS_ERR_INVALID_ARG for another dtype. ts_matmul_reference stays fp32. */
ts_status ts_device_set_matmul_dtype(ts_device *device, ts_dtype dtype);
ts_dtype ts_device_get_matmul_dtype(const ts_device *device);
/* How this device runs products of that dtype, e.g. "oneDNN 2.6.3
 * brg:avx512_core_bf16" or "emulated (rounded inputs, fp32 GEMM)"; "" if
 * it cannot. */
const char *ts_device_matmul_route(ts_device *device, ts_dtype dtype);

/* Threads used by the CPU backend and by host BLAS (OpenMP and OpenBLAS).
 * Also read from $TESSERA_THREADS at start; 0 means all cores. */
ts_status ts_set_threads(int threads);
int ts_get_threads(void);

/* What this build of the library contains, e.g.
 * "opencl clblast openblas openmp mpi hwloc" (space-separated). */
const char *ts_build_features(void);

/* Release every device and backend (leak checkers want this at exit).
 * Tensors must have been freed first. The registry is rebuilt on next use. */
void ts_shutdown(void);

#ifdef __cplusplus
}
#endif
#endif
