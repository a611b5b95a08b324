/* The registry of backends: the one file of the runtime that names every
 * backend compiled in (registry.c). Each backend's entry points are
 * declared here and defined in backends/<name>/; the runtime includes no
 * backend header and reaches devices only through their ts_backend_iface
 * (backend.h). Private to the library. */
#ifndef TESSERA_REGISTRY_H
#define TESSERA_REGISTRY_H

#include "tessera/status.h"

/* Register the devices of every backend (threads = 0: all cores). A backend
 * that fails to start is logged and left out; the others still come up. */
void ts_registry_load(int threads);
/* Threads of the backends that run host code (OpenMP, host BLAS). */
void ts_registry_set_threads(int threads);
int ts_registry_get_threads(void);
/* Whether a device spec item names a backend whose devices run threads of
 * their own (OpenCL: "opencl", "opencl:N", "opencl:<name>"). */
int ts_registry_runs_own_threads(const char *item);
/* Before any backend starts: for a process whose devices all run threads
 * of their own (quiet), make the host's idle threads wait without
 * spinning; 0: the process keeps the defaults (and a run again tidies
 * its environment). 1: the environment changed, and the program must
 * re-execute itself for it to take effect. */
int ts_registry_quiet_host_threads(int quiet);
/* 1 in the run again after ts_registry_quiet_host_threads asked for it. */
int ts_registry_host_threads_quiet(void);
/* After every device is released. */
void ts_registry_shutdown(void);

/* ---- the backends' entry points ---- */

/* CPU backend (backends/cpu): registers the one CPU device. */
ts_status ts_cpu_backend_register(int threads);
void ts_cpu_backend_set_threads(int threads);
int ts_cpu_backend_get_threads(void);
int ts_cpu_backend_wait_passively(int quiet);
int ts_cpu_backend_waits_passively(void);

#ifdef TS_HAVE_OPENCL
/* OpenCL backend (backends/opencl): every device of every platform; zero
 * devices is not an error. threads caps PoCL's worker threads (0: its own). */
ts_status ts_opencl_backend_register(int threads);
void ts_opencl_backend_shutdown(void);
#endif

#endif
