/* The registry of backends: the one place that names them (see registry.h). */
#include "registry.h"

#include <string.h>

void ts_registry_load(int threads)
{
    ts_status st = ts_cpu_backend_register(threads);
    if (st) ts_log(TS_LOG_WARN, "CPU backend unavailable: %s", ts_last_error());
#ifdef TS_HAVE_OPENCL
    st = ts_opencl_backend_register(threads);
    if (st) ts_log(TS_LOG_WARN, "OpenCL backend unavailable: %s", ts_last_error());
#endif
    ts_clear_error();
}

void ts_registry_set_threads(int threads) { ts_cpu_backend_set_threads(threads); }

int ts_registry_get_threads(void) { return ts_cpu_backend_get_threads(); }

int ts_registry_runs_own_threads(const char *item)
{
    return !strncmp(item, "opencl", 6) && (item[6] == '\0' || item[6] == ':');
}

int ts_registry_quiet_host_threads(int quiet) { return ts_cpu_backend_wait_passively(quiet); }

int ts_registry_host_threads_quiet(void) { return ts_cpu_backend_waits_passively(); }

void ts_registry_shutdown(void)
{
#ifdef TS_HAVE_OPENCL
    ts_opencl_backend_shutdown();
#endif
}
