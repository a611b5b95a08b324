#include "tessera/device.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allocator.h"
#include "registry.h"
#include "json.h"
#include "backend.h"

#define TS_MAX_DEVICES 64

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static ts_device *devices[TS_MAX_DEVICES];
static int n_devices;
static int registry_ready;
static int thread_count; /* 0: all cores */

ts_status ts_device_register(const ts_backend_iface *iface, void *context,
                             const ts_device_info *info, ts_device **out)
{
    if (!iface || iface->version != TS_BACKEND_INTERFACE_VERSION || !iface->alloc || !iface->free ||
        !iface->write || !iface->read || !iface->run_op)
        return ts_error(TS_ERR_DEVICE, "backend '%s' for %s: interface version %d (this core: %d) or a required "
                        "entry missing", iface && iface->name ? iface->name : "?", info->name,
                        iface ? iface->version : -1, TS_BACKEND_INTERFACE_VERSION);
    if (n_devices >= TS_MAX_DEVICES)
        return ts_error(TS_ERR_DEVICE, "more than %d devices; %s not registered", TS_MAX_DEVICES,
                        info->name);
    ts_device *d = calloc(1, sizeof *d);
    if (!d) return ts_error(TS_ERR_OOM, "no memory to register device %s", info->name);
    d->iface = iface;
    d->context = context;
    d->info = *info;
    d->allocator = ts_allocator_create();
    if (!d->allocator) {
        free(d);
        return ts_error(TS_ERR_OOM, "no memory for the allocator of %s", info->name);
    }
    devices[n_devices++] = d;
    if (out) *out = d;
    return TS_OK;
}

static void read_thread_env(void)
{
    const char *env = getenv("TESSERA_THREADS");
    if (env && *env) {
        int n = atoi(env);
        if (n > 0) thread_count = n;
    }
}

/* Build the registry once. A backend that fails to start is logged and left
 * out; the others still come up. */
static void ensure_registry(void)
{
    pthread_mutex_lock(&registry_lock);
    if (!registry_ready) {
        registry_ready = 1;
        read_thread_env();
        ts_registry_load(thread_count);
    }
    pthread_mutex_unlock(&registry_lock);
}

int ts_device_count(void)
{
    ensure_registry();
    return n_devices;
}

ts_device *ts_device_at(int index)
{
    ensure_registry();
    if (index < 0 || index >= n_devices) return NULL;
    return devices[index];
}

const ts_device_info *ts_device_get_info(const ts_device *device)
{
    return device ? &device->info : NULL;
}

const char *ts_device_type_name(ts_device_type type)
{
    switch (type) {
    case TS_DEVICE_CPU: return "CPU";
    case TS_DEVICE_GPU: return "GPU";
    case TS_DEVICE_ACCELERATOR: return "accelerator";
    case TS_DEVICE_OTHER: return "other";
    }
    return "?";
}

static int contains_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    if (n == 0) return 1;
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
            i++;
        if (i == n) return 1;
    }
    return 0;
}

/* A rough speed rank for the default choice: GPUs first, then by compute
 * units times clock. */
static double speed_rank(const ts_device *d)
{
    return (double)d->info.compute_units * (d->info.clock_mhz > 0 ? d->info.clock_mhz : 1000);
}

static ts_status unknown_device(const char *spec)
{
    char list[1024];
    size_t n = 0;
    list[0] = '\0';
    for (int i = 0; i < n_devices && n < sizeof list; i++)
        n += (size_t)snprintf(list + n, sizeof list - n, "%s%s (%s)", i ? ", " : "",
                              devices[i]->info.id, devices[i]->info.name);
    return ts_error(TS_ERR_DEVICE, "unknown device '%s'; available: %s", spec,
                    n_devices ? list : "none");
}

ts_status ts_device_open(const char *spec, ts_device **out)
{
    if (!out) return ts_error(TS_ERR_INVALID_ARG, "ts_device_open: out is NULL");
    *out = NULL;
    ensure_registry();
    if (!spec || !*spec || !strcmp(spec, "auto")) {
        const char *env = getenv("TESSERA_DEVICE");
        if (env && *env && strcmp(env, "auto") != 0) {
            ts_status st = ts_device_open(env, out);
            if (st) return ts_error_context(st, "TESSERA_DEVICE=%s", env);
            return TS_OK;
        }
        ts_device *best = NULL;
        for (int i = 0; i < n_devices; i++) {
            ts_device *d = devices[i];
            if (d->info.type != TS_DEVICE_GPU) continue;
            if (!best || speed_rank(d) > speed_rank(best)) best = d;
        }
        if (!best) {
            for (int i = 0; i < n_devices; i++)
                if (!strcmp(devices[i]->info.backend, "cpu")) best = devices[i];
        }
        if (!best) return ts_error(TS_ERR_DEVICE, "no device is available");
        *out = best;
        return TS_OK;
    }
    for (int i = 0; i < n_devices; i++) {
        if (!strcmp(devices[i]->info.id, spec)) {
            *out = devices[i];
            return TS_OK;
        }
    }
    const char *colon = strchr(spec, ':');
    size_t blen = colon ? (size_t)(colon - spec) : strlen(spec);
    const char *rest = colon ? colon + 1 : "";
    for (int i = 0; i < n_devices; i++) {
        ts_device *d = devices[i];
        if (strlen(d->info.backend) != blen || strncmp(d->info.backend, spec, blen) != 0) continue;
        if (!*rest) { /* "opencl": the first of that backend */
            *out = d;
            return TS_OK;
        }
        int all_digits = 1;
        for (const char *p = rest; *p; p++)
            if (!isdigit((unsigned char)*p)) all_digits = 0;
        if (all_digits) continue; /* an index that matched no id above */
        if (contains_nocase(d->info.name, rest) || contains_nocase(d->info.vendor, rest) ||
            contains_nocase(d->info.platform, rest)) {
            *out = d;
            return TS_OK;
        }
    }
    return unknown_device(spec);
}

/* "auto" inside a list: every GPU of every kind, fastest first (so mixed
 * vendors and generations are all used), or the CPU backend if none. */
static int expand_auto(ts_device **out, int cap)
{
    int n = 0;
    for (int i = 0; i < n_devices && n < cap; i++)
        if (devices[i]->info.type == TS_DEVICE_GPU) out[n++] = devices[i];
    for (int i = 1; i < n; i++) /* insertion sort, stable: equal speeds keep discovery order */
        for (int j = i; j > 0 && speed_rank(out[j]) > speed_rank(out[j - 1]); j--) {
            ts_device *t = out[j];
            out[j] = out[j - 1], out[j - 1] = t;
        }
    if (n == 0)
        for (int i = 0; i < n_devices && n < cap; i++)
            if (!strcmp(devices[i]->info.backend, "cpu")) out[n++] = devices[i];
    return n;
}

/* The item of a comma list at *p, trimmed, into item (when it fits);
 * *comma: the comma after it, or NULL at the last. Returns its length. */
static size_t list_item(const char **p, char *item, size_t cap, const char **comma)
{
    const char *q = *p;
    *comma = strchr(q, ',');
    size_t len = *comma ? (size_t)(*comma - q) : strlen(q);
    while (len && isspace((unsigned char)*q)) q++, len--;
    while (len && isspace((unsigned char)q[len - 1])) len--;
    if (len < cap) memcpy(item, q, len), item[len] = '\0';
    *p = q;
    return len;
}

ts_status ts_device_list(const char *spec, ts_device **out, int cap, int *count)
{
    if (!out || !count || cap < 1) return ts_error(TS_ERR_INVALID_ARG, "ts_device_list: no room for devices");
    *count = 0;
    ensure_registry();
    if (!spec || !*spec) spec = "auto";
    char item[256];
    const char *p = spec;
    int n = 0;
    for (;;) {
        const char *comma;
        size_t len = list_item(&p, item, sizeof item, &comma);
        if (len == 0 || len >= sizeof item)
            return ts_error(TS_ERR_DEVICE, "device list '%s': %s item", spec, len ? "an overlong" : "an empty");
        if (!strcmp(item, "auto")) {
            if (n >= cap) return ts_error(TS_ERR_DEVICE, "device list '%s' has more than %d devices", spec, cap);
            int k = expand_auto(out + n, cap - n);
            if (k == 0) return ts_error(TS_ERR_DEVICE, "device list '%s': no device is available", spec);
            n += k;
        } else {
            if (n >= cap) return ts_error(TS_ERR_DEVICE, "device list '%s' has more than %d devices", spec, cap);
            ts_status st = ts_device_open(item, &out[n]);
            if (st) return ts_error_context(st, "device list '%s', item %d", spec, n + 1);
            n++;
        }
        if (!comma) break;
        p = comma + 1;
    }
    *count = n;
    return TS_OK;
}

ts_status ts_device_open_local(const char *spec, int local_rank, ts_device **out)
{
    if (!out) return ts_error(TS_ERR_INVALID_ARG, "ts_device_open_local: out is NULL");
    *out = NULL;
    /* the environment wins: a wrapper or mpirun -x sets it per rank */
    const char *env = getenv("TESSERA_DEVICE");
    int from_env = env && *env;
    const char *use = from_env ? env : spec;
    ts_device *list[TS_MAX_DEVICES];
    int n = 0;
    ts_status st = ts_device_list(use, list, TS_MAX_DEVICES, &n);
    if (st) return from_env ? ts_error_context(st, "TESSERA_DEVICE=%s", env) : st;
    *out = list[(local_rank < 0 ? 0 : local_rank) % n];
    return TS_OK;
}

int ts_device_prepare_process(const char *spec, int env_overrides)
{
    const char *env = getenv("TESSERA_DEVICE");
    int spec_auto = !spec || !*spec || !strcmp(spec, "auto");
    if (env && *env && (env_overrides || spec_auto)) spec = env;
    if (!spec || !*spec) return ts_registry_quiet_host_threads(0);
    char item[256];
    for (const char *p = spec;;) { /* every item must run threads of its own */
        const char *comma;
        size_t len = list_item(&p, item, sizeof item, &comma);
        if (len == 0 || len >= sizeof item || !ts_registry_runs_own_threads(item))
            return ts_registry_quiet_host_threads(0);
        if (!comma) break;
        p = comma + 1;
    }
    return ts_registry_quiet_host_threads(1);
}

int ts_device_process_quiet(void) { return ts_registry_host_threads_quiet(); }

ts_status ts_device_synchronize(ts_device *device)
{
    if (!device) return ts_error(TS_ERR_DEVICE, "ts_device_synchronize: device is NULL");
    ts_status st = device->iface->synchronize ? device->iface->synchronize(device) : TS_OK;
    if (st) return ts_error_context(st, "synchronizing %s", device->info.id);
    return TS_OK;
}

ts_status ts_device_prepare(ts_device *device)
{
    if (!device) return ts_error(TS_ERR_DEVICE, "ts_device_prepare: device is NULL");
    if (!device->iface->prepare) return TS_OK;
    ts_status st = device->iface->prepare(device);
    if (st) return ts_error_context(st, "preparing %s", device->info.id);
    return TS_OK;
}

void ts_device_build_stats(ts_device *device, ts_build_stats *stats)
{
    memset(stats, 0, sizeof *stats);
    if (device && device->iface->build_stats) device->iface->build_stats(device, stats);
}

void ts_device_memory_stats(ts_device *device, ts_memory_stats *stats)
{
    memset(stats, 0, sizeof *stats);
    if (device) ts_allocator_stats(device, stats);
}

void ts_device_memory_reset_peak(ts_device *device)
{
    if (device) ts_allocator_reset_peak(device);
}

void ts_device_empty_cache(ts_device *device)
{
    if (device) ts_allocator_empty(device);
}

ts_status ts_set_threads(int threads)
{
    if (threads < 0) return ts_error(TS_ERR_INVALID_ARG, "thread count %d is negative", threads);
    thread_count = threads;
    ts_registry_set_threads(threads);
    return TS_OK;
}

int ts_get_threads(void)
{
    ensure_registry();
    return ts_registry_get_threads();
}

ts_status ts_device_set_matmul_dtype(ts_device *device, ts_dtype dtype)
{
    if (!device) return ts_error(TS_ERR_INVALID_ARG, "ts_device_set_matmul_dtype: no device");
    if (dtype != TS_F32 && dtype != TS_BF16 && dtype != TS_F16)
        return ts_error(TS_ERR_INVALID_ARG, "ts_device_set_matmul_dtype: %s is not a matmul dtype (fp32, bf16, fp16)",
                        ts_dtype_name(dtype));
    if (dtype != TS_F32 && !ts_device_matmul_route(device, dtype)[0])
        return ts_error(TS_ERR_UNSUPPORTED, "device %s (%s) has no %s matrix products; use fp32 there",
                        device->info.id, device->info.name, ts_dtype_name(dtype));
    device->matmul_dtype = dtype;
    return TS_OK;
}

ts_dtype ts_device_get_matmul_dtype(const ts_device *device)
{
    return device ? device->matmul_dtype : TS_F32;
}

const char *ts_device_matmul_route(ts_device *device, ts_dtype dtype)
{
    if (!device) return "";
    if (dtype == TS_F32) return "fp32";
    const char *r = device->iface->matmul_route ? device->iface->matmul_route(device, dtype) : NULL;
    return r ? r : "";
}

const char *ts_build_features(void)
{
    return ""
#ifdef TS_HAVE_OPENCL
           "opencl "
#endif
#ifdef TS_HAVE_CLBLAST
           "clblast "
#endif
#ifdef TS_HAVE_CBLAS
           "openblas "
#endif
#ifdef TS_HAVE_ONEDNN
           "onednn "
#endif
#ifdef _OPENMP
           "openmp "
#endif
#ifdef TS_HAVE_MPI
           "mpi "
#endif
#ifdef TS_HAVE_HWLOC
           "hwloc "
#endif
           "cpu";
}

void ts_shutdown(void)
{
    pthread_mutex_lock(&registry_lock);
    for (int i = n_devices - 1; i >= 0; i--) {
        ts_device *d = devices[i];
        ts_allocator_destroy(d->allocator, d);
        if (d->iface->release) d->iface->release(d);
        free(d);
        devices[i] = NULL;
    }
    n_devices = 0;
    ts_registry_shutdown();
    registry_ready = 0;
    pthread_mutex_unlock(&registry_lock);
}

void ts_device_info_write_json(FILE *f, const ts_device_info *d)
{
    ts_json_write_member(f, "id", d->id, ", ");
    ts_json_write_member(f, "backend", d->backend, ", ");
    ts_json_write_member(f, "name", d->name, ", ");
    ts_json_write_member(f, "type", ts_device_type_name(d->type), ", ");
    ts_json_write_member(f, "vendor", d->vendor, ", ");
    ts_json_write_member(f, "platform", d->platform, ", ");
    ts_json_write_member(f, "driver", d->driver_version, ", ");
    ts_json_write_member(f, "version", d->version, ", ");
    fprintf(f,
            "\"global_mem_bytes\": %llu, \"max_alloc_bytes\": %llu, \"local_mem_bytes\": %llu, "
            "\"max_work_group_size\": %llu, \"compute_units\": %d, \"clock_mhz\": %d, "
            "\"fp64\": %s, \"fp16\": %s, \"subgroups\": %s, \"host_memory\": %s, ",
            (unsigned long long)d->global_mem_bytes, (unsigned long long)d->max_alloc_bytes,
            (unsigned long long)d->local_mem_bytes, (unsigned long long)d->max_work_group_size, d->compute_units,
            d->clock_mhz, d->fp64 ? "true" : "false", d->fp16 ? "true" : "false", d->subgroups ? "true" : "false",
            d->host_memory ? "true" : "false");
    ts_json_write_member(f, "details", d->details, ", ");
    ts_json_write_member(f, "reference_blas", d->reference_blas, ", ");
}
