/* The backends compiled into libtessera, as the registry sees them.
 * (Private to the library: no OpenCL types here.) */
#ifndef TESSERA_BACKENDS_H
#define TESSERA_BACKENDS_H

#include "tessera/status.h"

/* Register the CPU device; threads = 0 means all cores. */
ts_status ts_cpu_backend_register(int threads);
void ts_cpu_backend_set_threads(int threads);
int ts_cpu_backend_get_threads(void);

#ifdef TS_HAVE_OPENCL
/* Register every OpenCL device of every platform. Zero devices is not an
 * error. threads caps PoCL's worker threads (0: its default). */
ts_status ts_opencl_backend_register(int threads);
void ts_opencl_backend_shutdown(void);
#endif

#endif
