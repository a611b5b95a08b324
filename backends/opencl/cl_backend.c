/* The OpenCL backend: discovery, capabilities, memory, the device interface.
 *
 * Discovery guards every platform and device query on its own, so one broken
 * ICD cannot hide the others, and reads CL_PLATFORM_NOT_FOUND_KHR (-1001) as
 * "no OpenCL here". Contexts and queues are created on first use, so listing
 * devices never wakes a GPU. There is no vendor whitelist: what a device can
 * do is read from its properties and extensions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry.h"
#include "cl_internal.h"

/* Vendor queries not in every cl_ext.h. */
#ifndef CL_DEVICE_PCI_BUS_ID_NV
#define CL_DEVICE_PCI_BUS_ID_NV 0x4008
#define CL_DEVICE_PCI_SLOT_ID_NV 0x4009
#endif
#ifndef CL_DEVICE_PCI_DOMAIN_ID_NV
#define CL_DEVICE_PCI_DOMAIN_ID_NV 0x400A
#endif
#ifndef CL_DEVICE_PCI_BUS_INFO_KHR
#define CL_DEVICE_PCI_BUS_INFO_KHR 0x410F
#endif
#ifndef CL_DEVICE_TOPOLOGY_AMD
#define CL_DEVICE_TOPOLOGY_AMD 0x4037
#endif

static int g_ndevices; /* numbers OpenCL devices "opencl:N" */

/* ---- queries ---- */

static void dev_str(cl_device_id dev, cl_device_info what, char *out, size_t n)
{
    out[0] = '\0';
    if (clGetDeviceInfo(dev, what, n, out, NULL) != CL_SUCCESS) out[0] = '\0';
    out[n - 1] = '\0';
}

static char *dev_str_alloc(cl_device_id dev, cl_device_info what)
{
    size_t n = 0;
    if (clGetDeviceInfo(dev, what, 0, NULL, &n) != CL_SUCCESS || n == 0) return NULL;
    char *s = malloc(n + 1);
    if (!s) return NULL;
    if (clGetDeviceInfo(dev, what, n, s, NULL) != CL_SUCCESS) {
        free(s);
        return NULL;
    }
    s[n] = '\0';
    return s;
}

static cl_ulong dev_ulong(cl_device_id dev, cl_device_info what)
{
    cl_ulong v = 0;
    if (clGetDeviceInfo(dev, what, sizeof v, &v, NULL) != CL_SUCCESS) return 0;
    return v;
}

static cl_uint dev_uint(cl_device_id dev, cl_device_info what)
{
    cl_uint v = 0;
    if (clGetDeviceInfo(dev, what, sizeof v, &v, NULL) != CL_SUCCESS) return 0;
    return v;
}

static size_t dev_size(cl_device_id dev, cl_device_info what)
{
    size_t v = 0;
    if (clGetDeviceInfo(dev, what, sizeof v, &v, NULL) != CL_SUCCESS) return 0;
    return v;
}

static int has_ext(const char *exts, const char *name)
{
    if (!exts) return 0;
    size_t n = strlen(name);
    for (const char *p = exts; (p = strstr(p, name)); p += n)
        if ((p == exts || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0')) return 1;
    return 0;
}

/* PCI location through whichever of the KHR, NVIDIA and AMD queries works. */
static void read_pci(cl_device_id dev, const char *exts, ts_device_info *info)
{
    info->pci_domain = info->pci_bus = info->pci_device = info->pci_function = -1;
    if (has_ext(exts, "cl_khr_pci_bus_info")) {
        cl_uint v[4];
        if (clGetDeviceInfo(dev, CL_DEVICE_PCI_BUS_INFO_KHR, sizeof v, v, NULL) == CL_SUCCESS) {
            info->pci_domain = (int)v[0];
            info->pci_bus = (int)v[1];
            info->pci_device = (int)v[2];
            info->pci_function = (int)v[3];
            return;
        }
    }
    if (has_ext(exts, "cl_nv_device_attribute_query")) {
        cl_uint bus = 0, slot = 0, domain = 0;
        if (clGetDeviceInfo(dev, CL_DEVICE_PCI_BUS_ID_NV, sizeof bus, &bus, NULL) == CL_SUCCESS &&
            clGetDeviceInfo(dev, CL_DEVICE_PCI_SLOT_ID_NV, sizeof slot, &slot, NULL) ==
                CL_SUCCESS) {
            if (clGetDeviceInfo(dev, CL_DEVICE_PCI_DOMAIN_ID_NV, sizeof domain, &domain, NULL) !=
                CL_SUCCESS)
                domain = 0;
            info->pci_domain = (int)domain;
            info->pci_bus = (int)bus;
            info->pci_device = (int)(slot >> 3);
            info->pci_function = (int)(slot & 7);
            return;
        }
    }
    if (has_ext(exts, "cl_amd_device_attribute_query")) {
        struct {
            cl_uint type;
            cl_char unused[17];
            cl_char bus, device, function;
        } topo;
        if (clGetDeviceInfo(dev, CL_DEVICE_TOPOLOGY_AMD, sizeof topo, &topo, NULL) == CL_SUCCESS &&
            topo.type == 1) {
            info->pci_domain = 0;
            info->pci_bus = (unsigned char)topo.bus;
            info->pci_device = (unsigned char)topo.device;
            info->pci_function = (unsigned char)topo.function;
        }
    }
}

static size_t pow2_floor(size_t v)
{
    size_t p = 1;
    while (p * 2 <= v) p *= 2;
    return p;
}

/* ---- lifecycle ---- */

ts_status ts_cl_ensure_ready(ts_cl_device *d)
{
    if (d->ready) return TS_OK;
    cl_int err;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)d->platform, 0};
    d->context = clCreateContext(props, 1, &d->device, NULL, NULL, &err);
    if (err != CL_SUCCESS) return ts_cl_fail(err, "clCreateContext", d);
#ifdef CL_VERSION_2_0
    if (d->version_major >= 2) {
        cl_queue_properties qp[] = {0};
        d->queue = clCreateCommandQueueWithProperties(d->context, d->device, qp, &err);
    } else
#endif
        d->queue = clCreateCommandQueue(d->context, d->device, 0, &err);
    if (err != CL_SUCCESS) {
        clReleaseContext(d->context);
        d->context = NULL;
        return ts_cl_fail(err, "clCreateCommandQueue", d);
    }
    d->ready = 1;
    return TS_OK;
}

/* Why retire instead of release on oclgrind: it hands a freed buffer's
 * number to the next buffer created, and its uninitialized-memory checker
 * keeps the freed buffer's record for that number, so the new buffer would
 * be checked against the old one's size and contents. */
void ts_cl_release_mem(ts_cl_device *d, cl_mem m)
{
    if (!m) return;
    if (d->kernel_transfers) {
        if (d->nretired == d->capretired) {
            size_t cap = d->capretired ? 2 * d->capretired : 64;
            cl_mem *r = realloc(d->retired, cap * sizeof *r);
            if (r) {
                d->retired = r;
                d->capretired = cap;
            }
        }
        if (d->nretired < d->capretired) {
            d->retired[d->nretired++] = m;
            return;
        }
    }
    clReleaseMemObject(m);
}

static void cl_release(ts_device *dev)
{
    ts_cl_device *d = dev->context;
    if (!d) return;
    if (d->queue) clFinish(d->queue);
    ts_cl_gemm_release(d);
    if (d->scratch) clReleaseMemObject(d->scratch);
    if (d->staging) clReleaseMemObject(d->staging);
    for (size_t i = 0; i < d->nretired; i++) clReleaseMemObject(d->retired[i]);
    free(d->retired);
    while (d->nbases) ts_cl_host_forget(d, d->bases[0].mem); /* buffers still allocated: their copies go */
    free(d->bases);
    ts_cl_release_programs(d);
    if (d->queue) clReleaseCommandQueue(d->queue);
    if (d->context) clReleaseContext(d->context);
    free(d);
    dev->context = NULL;
}

void ts_opencl_backend_shutdown(void) { g_ndevices = 0; }

/* ---- memory ---- */

static ts_status cl_alloc(ts_device *dev, size_t size, void **handle)
{
    ts_cl_device *d = dev->context;
    ts_status st = ts_cl_ensure_ready(d);
    if (st) return st;
    cl_int err;
    /* Host-allocated memory on CPU devices lets host BLAS map it for free. */
    cl_mem_flags flags = CL_MEM_READ_WRITE | (d->is_cpu ? CL_MEM_ALLOC_HOST_PTR : 0);
    cl_mem m = clCreateBuffer(d->context, flags, size, NULL, &err);
    if (err != CL_SUCCESS) return ts_cl_fail(err, "clCreateBuffer", d);
    *handle = m;
    return TS_OK;
}

static void cl_free(ts_device *dev, void *handle)
{
    ts_cl_host_forget(dev->context, (cl_mem)handle);
    ts_cl_release_mem(dev->context, (cl_mem)handle);
}

/* dst[dst_offset..+size) = src[src_offset..+size) by a kernel, in 32-bit
 * words where offsets and size allow, else in bytes. */
static ts_status copy_by_kernel(ts_cl_device *d, cl_mem dst, size_t dst_offset, cl_mem src,
                                size_t src_offset, size_t size)
{
    int words = dst_offset % 4 == 0 && src_offset % 4 == 0 && size % 4 == 0;
    size_t unit = words ? 4 : 1;
    ts_cl_args a;
    memset(&a, 0, sizeof a);
    ts_cl_arg_mem(&a, dst);
    ts_cl_arg_long(&a, (int64_t)(dst_offset / unit));
    ts_cl_arg_mem(&a, src);
    ts_cl_arg_long(&a, (int64_t)(src_offset / unit));
    ts_cl_arg_long(&a, (int64_t)(size / unit));
    size_t g = size / unit, l = d->elem_wg;
    return ts_cl_launch(d, "elementwise.cl", words ? "copy_words" : "copy_bytes", 1, &g, &l, &a);
}

/* Host to device through the start of a staging buffer, then a kernel.
 * Why: oclgrind 21.10 records which bytes of each buffer are initialized,
 * and a host write (or host-side copy) replaces the buffer's record with one
 * the size of the write, from its start: after a write to part of a buffer,
 * later kernel stores beyond that size are lost and memory a kernel did
 * write is reported as uninitialized. The staging buffer is only ever read
 * from its start up to what was just written, and kernel stores are tracked
 * exactly, so every report the checker makes is a real one. */
static ts_status write_by_kernel(ts_cl_device *d, cl_mem dst, size_t offset, const void *src,
                                 size_t size)
{
    cl_int err;
    if (size > d->staging_size) {
        size_t n = size < 65536 ? 65536 : size;
        cl_mem m = clCreateBuffer(d->context, CL_MEM_READ_ONLY, n, NULL, &err);
        if (err != CL_SUCCESS) return ts_cl_fail(err, "clCreateBuffer (staging)", d);
        ts_cl_release_mem(d, d->staging);
        d->staging = m;
        d->staging_size = n;
    }
    err = clEnqueueWriteBuffer(d->queue, d->staging, CL_TRUE, 0, size, src, 0, NULL, NULL);
    if (err != CL_SUCCESS) return ts_cl_fail(err, "clEnqueueWriteBuffer (staging)", d);
    ts_status st = copy_by_kernel(d, dst, offset, d->staging, 0, size);
    /* the next write reuses the staging buffer */
    if (st == TS_OK && (err = clFinish(d->queue)) != CL_SUCCESS) st = ts_cl_fail(err, "clFinish", d);
    return st;
}

static ts_status cl_write(ts_device *dev, void *handle, size_t offset, const void *src, size_t size)
{
    ts_cl_device *d = dev->context;
    ts_cl_host_written(d, (cl_mem)handle, offset, size);
    if (d->kernel_transfers && size) return write_by_kernel(d, (cl_mem)handle, offset, src, size);
    cl_int err = clEnqueueWriteBuffer(d->queue, (cl_mem)handle, CL_TRUE, offset, size, src, 0,
                                      NULL, NULL);
    return err == CL_SUCCESS ? TS_OK : ts_cl_fail(err, "clEnqueueWriteBuffer", d);
}

static ts_status cl_read(ts_device *dev, void *handle, size_t offset, void *dst, size_t size)
{
    ts_cl_device *d = dev->context;
    cl_int err = clEnqueueReadBuffer(d->queue, (cl_mem)handle, CL_TRUE, offset, size, dst, 0, NULL,
                                     NULL);
    return err == CL_SUCCESS ? TS_OK : ts_cl_fail(err, "clEnqueueReadBuffer", d);
}

static ts_status cl_copy(ts_device *dev, void *dst, size_t dst_offset, void *src,
                         size_t src_offset, size_t size)
{
    ts_cl_device *d = dev->context;
    if (dst == src && !(dst_offset + size <= src_offset || src_offset + size <= dst_offset))
        return ts_error(TS_ERR_INVALID_ARG, "overlapping copy within one buffer on %s", d->info_id);
    ts_cl_host_written(d, (cl_mem)dst, dst_offset, size);
    if (d->kernel_transfers)
        return size ? copy_by_kernel(d, (cl_mem)dst, dst_offset, (cl_mem)src, src_offset, size)
                    : TS_OK;
    cl_int err = clEnqueueCopyBuffer(d->queue, (cl_mem)src, (cl_mem)dst, src_offset, dst_offset,
                                     size, 0, NULL, NULL);
    return err == CL_SUCCESS ? TS_OK : ts_cl_fail(err, "clEnqueueCopyBuffer", d);
}

static ts_status cl_synchronize(ts_device *dev)
{
    ts_cl_device *d = dev->context;
    if (!d->ready) return TS_OK;
    cl_int err = clFinish(d->queue);
    return err == CL_SUCCESS ? TS_OK : ts_cl_fail(err, "clFinish", d);
}

ts_status ts_cl_scratch(ts_cl_device *d, size_t bytes, cl_mem *out)
{
    if (bytes > d->scratch_size) {
        /* The old buffer may still be read by queued kernels; OpenCL keeps
         * it alive until they finish. */
        ts_cl_release_mem(d, d->scratch);
        d->scratch = NULL;
        d->scratch_size = 0;
        cl_int err;
        size_t n = bytes < 65536 ? 65536 : bytes;
        d->scratch = clCreateBuffer(d->context, CL_MEM_READ_WRITE, n, NULL, &err);
        if (err != CL_SUCCESS) return ts_cl_fail(err, "clCreateBuffer (scratch)", d);
        d->scratch_size = n;
    }
    *out = d->scratch;
    return TS_OK;
}

static const char *cl_matmul_route(ts_device *dev, ts_dtype dtype)
{
    return ts_cl_matmul_route(dev->context, dtype);
}

static const ts_backend_iface cl_iface = {
    .version = TS_BACKEND_INTERFACE_VERSION,
    .name = "opencl",
    .alloc = cl_alloc,
    .free = cl_free,
    .write = cl_write,
    .read = cl_read,
    .copy = cl_copy,
    .synchronize = cl_synchronize,
    .supports_op = ts_cl_supports_op,
    .run_op = ts_cl_run_op,
    .release = cl_release,
    .prepare = ts_cl_prepare,
    .build_stats = ts_cl_get_build_stats,
    .matmul_route = cl_matmul_route,
};

/* ---- discovery ---- */

static void describe(ts_cl_device *d, ts_device_info *info, const char *exts, cl_device_id dev)
{
    cl_uint align_bits = dev_uint(dev, CL_DEVICE_MEM_BASE_ADDR_ALIGN);
    size_t param = dev_size(dev, CL_DEVICE_MAX_PARAMETER_SIZE);
    snprintf(info->details, sizeof info->details,
             "GEMM: %s%s; attention: %s; row work-group %zu; max params %zu B; base align %u bits%s%s%s",
             ts_cl_gemm_route_name(d->gemm_route), d->gemm_forced ? " (TESSERA_GEMM)" : "",
             ts_cl_attention_route_name(d), d->row_wg, param, align_bits,
             has_ext(exts, "cl_khr_int64_base_atomics") ? "; int64 atomics" : "",
             d->host_unified ? "; host-unified memory" : "",
             d->kernel_transfers ? "; transfers by kernel (simulator)" : "");
#ifdef TS_HAVE_CLBLAST
    snprintf(info->reference_blas, sizeof info->reference_blas, "CLBlast %s", TS_CLBLAST_VERSION);
#endif
}

static void register_device(cl_platform_id platform, const char *pname, const char *pversion,
                            cl_device_id dev)
{
    ts_device_info info;
    memset(&info, 0, sizeof info);
    int index = g_ndevices;
    snprintf(info.id, sizeof info.id, "opencl:%d", index);
    snprintf(info.backend, sizeof info.backend, "opencl");
    dev_str(dev, CL_DEVICE_NAME, info.name, sizeof info.name);
    dev_str(dev, CL_DEVICE_VENDOR, info.vendor, sizeof info.vendor);
    dev_str(dev, CL_DRIVER_VERSION, info.driver_version, sizeof info.driver_version);
    snprintf(info.platform, sizeof info.platform, "%s (%s)", pname, pversion);
    char dver[96], cver[64];
    dev_str(dev, CL_DEVICE_VERSION, dver, sizeof dver);
    dev_str(dev, CL_DEVICE_OPENCL_C_VERSION, cver, sizeof cver);
    snprintf(info.version, sizeof info.version, "%s; %s", dver, cver);

    cl_device_type type = 0;
    clGetDeviceInfo(dev, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    info.type = (type & CL_DEVICE_TYPE_GPU)           ? TS_DEVICE_GPU
                : (type & CL_DEVICE_TYPE_CPU)         ? TS_DEVICE_CPU
                : (type & CL_DEVICE_TYPE_ACCELERATOR) ? TS_DEVICE_ACCELERATOR
                                                      : TS_DEVICE_OTHER;
    info.global_mem_bytes = dev_ulong(dev, CL_DEVICE_GLOBAL_MEM_SIZE);
    info.max_alloc_bytes = dev_ulong(dev, CL_DEVICE_MAX_MEM_ALLOC_SIZE);
    info.local_mem_bytes = dev_ulong(dev, CL_DEVICE_LOCAL_MEM_SIZE);
    info.max_work_group_size = dev_size(dev, CL_DEVICE_MAX_WORK_GROUP_SIZE);
    info.compute_units = (int)dev_uint(dev, CL_DEVICE_MAX_COMPUTE_UNITS);
    info.clock_mhz = (int)dev_uint(dev, CL_DEVICE_MAX_CLOCK_FREQUENCY);

    char *exts = dev_str_alloc(dev, CL_DEVICE_EXTENSIONS);
    info.fp64 = dev_ulong(dev, CL_DEVICE_DOUBLE_FP_CONFIG) != 0 || has_ext(exts, "cl_khr_fp64");
    /* NVIDIA does not advertise cl_khr_fp16 yet stores halves (vload_half);
     * report arithmetic support only where the device claims it. */
    info.fp16 = has_ext(exts, "cl_khr_fp16");
    info.subgroups = has_ext(exts, "cl_khr_subgroups") || has_ext(exts, "cl_intel_subgroups");
    cl_bool unified = CL_FALSE;
    clGetDeviceInfo(dev, CL_DEVICE_HOST_UNIFIED_MEMORY, sizeof unified, &unified, NULL);
    info.host_memory = info.type == TS_DEVICE_CPU;
    read_pci(dev, exts, &info);

    ts_cl_device *d = calloc(1, sizeof *d);
    if (!d) {
        free(exts);
        ts_log(TS_LOG_WARN, "OpenCL: no memory to register %s", info.name);
        return;
    }
    d->platform = platform;
    d->device = dev;
    snprintf(d->info_id, sizeof d->info_id, "%s", info.id);
    snprintf(d->name, sizeof d->name, "%s", info.name);
    snprintf(d->driver, sizeof d->driver, "%s", info.driver_version);
    snprintf(d->platform_version, sizeof d->platform_version, "%s", info.platform);
    snprintf(d->device_version, sizeof d->device_version, "%s", info.version);
    d->is_cpu = info.type == TS_DEVICE_CPU;
    d->compute_units = info.compute_units > 0 ? info.compute_units : 1;
    const char *cpu_kernels = getenv("TESSERA_OPENCL_CPU_KERNELS");
    d->cpu_kernels = d->is_cpu || (cpu_kernels && strcmp(cpu_kernels, "1") == 0);
    d->host_unified = unified == CL_TRUE;
    d->keep_lowp = d->is_cpu && d->host_unified; /* every write goes through this backend (cl_gemm.c) */
    /* The one device quirk: on the oclgrind simulator, transfers run as
     * kernels so its uninitialized-memory checker stays exact (write_by_kernel). */
    d->kernel_transfers = strncmp(pname, "Oclgrind", 8) == 0;
    int major = 1, minor = 2;
    if (sscanf(dver, "OpenCL %d.%d", &major, &minor) != 2) major = 1;
    d->version_major = major;
    d->max_wg = info.max_work_group_size ? info.max_work_group_size : 1;
    /* CPU devices run a work-group as a loop over work-items (PoCL):
     * small groups with long contiguous loops are what they do well.
     * GPUs want wide groups; 256 is the maximum on many AMD and Intel parts. */
    d->row_wg = pow2_floor(d->cpu_kernels ? 8 : (d->max_wg < 256 ? d->max_wg : 256));
    d->elem_wg = pow2_floor(d->max_wg < 256 ? d->max_wg : 256);
    d->tile_wg = d->max_wg >= 256 ? 16 : 8;
    snprintf(d->options, sizeof d->options,
             "-cl-std=CL1.2 -DROW_WG=%zu -DTILE_WG=%zu -DTS_CPU_DEVICE=%d", d->row_wg, d->tile_wg,
             d->cpu_kernels);
    d->gemm_route = ts_cl_default_gemm_route(d);
    const char *forced = getenv("TESSERA_GEMM");
    d->gemm_forced = forced && *forced && strcmp(forced, "auto") != 0;
    d->work_bytes = ts_cl_gemm_work_bytes();
    describe(d, &info, exts, dev);
    free(exts);

    ts_device *registered = NULL;
    if (ts_device_register(&cl_iface, d, &info, &registered) != TS_OK) {
        ts_log(TS_LOG_WARN, "OpenCL: %s", ts_last_error());
        free(d);
        return;
    }
    d->dev = registered;
    g_ndevices++;
}

ts_status ts_opencl_backend_register(int threads)
{
    /* PoCL reads its thread count when the platform starts. */
    if (threads > 0 && !getenv("POCL_MAX_PTHREAD_COUNT")) {
        char buf[16];
        snprintf(buf, sizeof buf, "%d", threads);
        setenv("POCL_MAX_PTHREAD_COUNT", buf, 0);
    }
    g_ndevices = 0;
    cl_uint np = 0;
    cl_int err = clGetPlatformIDs(0, NULL, &np);
    if (err == -1001 || (err == CL_SUCCESS && np == 0)) {
        ts_log(TS_LOG_INFO, "OpenCL: no platforms installed");
        return TS_OK;
    }
    if (err != CL_SUCCESS) {
        ts_log(TS_LOG_WARN, "OpenCL: clGetPlatformIDs failed: %s (%d); no OpenCL devices",
               ts_cl_error_name(err), (int)err);
        return TS_OK;
    }
    cl_platform_id *plats = calloc(np, sizeof *plats);
    if (!plats) return ts_error(TS_ERR_OOM, "no memory for %u platform ids", np);
    err = clGetPlatformIDs(np, plats, NULL);
    if (err != CL_SUCCESS) {
        ts_log(TS_LOG_WARN, "OpenCL: listing platforms failed: %s", ts_cl_error_name(err));
        free(plats);
        return TS_OK;
    }
    for (cl_uint p = 0; p < np; p++) {
        char pname[128] = "", pversion[128] = "";
        if (clGetPlatformInfo(plats[p], CL_PLATFORM_NAME, sizeof pname, pname, NULL) != CL_SUCCESS)
            snprintf(pname, sizeof pname, "platform %u", p);
        if (clGetPlatformInfo(plats[p], CL_PLATFORM_VERSION, sizeof pversion, pversion, NULL) !=
            CL_SUCCESS)
            pversion[0] = '\0';
        pname[sizeof pname - 1] = pversion[sizeof pversion - 1] = '\0';
        cl_uint nd = 0;
        err = clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 0, NULL, &nd);
        if (err != CL_SUCCESS || nd == 0) {
            if (err != CL_DEVICE_NOT_FOUND && err != CL_SUCCESS)
                ts_log(TS_LOG_WARN, "OpenCL: platform '%s' failed to list devices: %s", pname,
                       ts_cl_error_name(err));
            else
                ts_log(TS_LOG_INFO, "OpenCL: platform '%s' has no devices", pname);
            continue;
        }
        cl_device_id *devs = calloc(nd, sizeof *devs);
        if (!devs) continue;
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, nd, devs, NULL) == CL_SUCCESS) {
            for (cl_uint i = 0; i < nd; i++) {
                cl_bool avail = CL_TRUE;
                clGetDeviceInfo(devs[i], CL_DEVICE_AVAILABLE, sizeof avail, &avail, NULL);
                if (avail) register_device(plats[p], pname, pversion, devs[i]);
                else ts_log(TS_LOG_WARN, "OpenCL: platform '%s': device %u reports itself unavailable; skipped", pname, i);
            }
        }
        free(devs);
    }
    free(plats);
    return TS_OK;
}
