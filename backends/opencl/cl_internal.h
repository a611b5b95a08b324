/* Private to the OpenCL backend: the only place that sees CL/cl.h. */
#ifndef TESSERA_CL_INTERNAL_H
#define TESSERA_CL_INTERNAL_H

#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#include <CL/cl.h>
#include <stdint.h>

#include "backend.h"

/* How GEMM runs on a device (TESSERA_GEMM=auto|blas|clblast|kernel). */
typedef enum ts_gemm_route {
    TS_GEMM_AUTO = 0,
    TS_GEMM_HOST_BLAS, /* CPU-type devices: host CBLAS on mapped memory */
    TS_GEMM_CLBLAST,   /* GPUs: CLBlast, tessera's kernel as fallback */
    TS_GEMM_KERNEL,    /* tessera's tiled kernel */
} ts_gemm_route;

typedef struct ts_cl_kernel_entry {
    char name[64];
    cl_kernel kernel;
    struct ts_cl_kernel_entry *next;
} ts_cl_kernel_entry;

typedef struct ts_cl_program {
    char file[64];
    cl_program program;
    ts_cl_kernel_entry *kernels;
    struct ts_cl_program *next;
} ts_cl_program;

/* Build statistics, for `tessera bench` and the cache test. */
typedef struct ts_cl_build_stats {
    int built_from_source;
    int loaded_from_disk;
    int disk_rejected;       /* corrupt or stale entries that were rebuilt */
    double build_seconds;    /* total time in clBuildProgram/loading */
} ts_cl_build_stats;

typedef struct ts_cl_device {
    cl_platform_id platform;
    cl_device_id device;
    cl_context context;      /* created on first use */
    cl_command_queue queue;  /* one in-order queue */
    int ready;
    ts_device *dev;
    char info_id[32];
    char name[128];
    char driver[128];
    char platform_version[256];
    char device_version[128];
    int is_cpu;
    int compute_units;
    /* the CPU-type kernel variants (TS_CPU_DEVICE): CPU devices, or any
     * device with TESSERA_OPENCL_CPU_KERNELS=1 (so that oclgrind checks them) */
    int cpu_kernels;
    int host_unified;
    /* oclgrind only (see write_by_kernel in cl_backend.c): transfers run as
     * kernels through a staging buffer, and buffers are released at the end
     * of the process, not when freed */
    int kernel_transfers;
    cl_mem staging;
    size_t staging_size;
    cl_mem *retired;
    size_t nretired, capretired;
    int version_major;
    size_t max_wg;
    size_t row_wg;           /* work-group size of row kernels */
    size_t elem_wg;          /* work-group size of elementwise kernels */
    size_t tile_wg;          /* 16 if the device takes 16x16 groups, else 8 */
    char options[256];       /* build options (defines) for every program */
    ts_cl_program *programs;
    ts_gemm_route gemm_route;
    int gemm_forced;         /* set by TESSERA_GEMM: no silent fallback */
    int clblast_warned;
    cl_mem scratch;          /* grows on demand; partial sums */
    size_t scratch_size;
    cl_mem clblast_temp;
    size_t clblast_temp_size;
    /* CPU-type devices with host memory: the host address of each buffer
     * the host GEMM has mapped, so that writes to it drop the bf16 copies
     * the CPU backend's route keeps of it (cl_gemm.c) */
    struct ts_cl_host_base { cl_mem mem; char *base; size_t size; } *bases;
    int nbases, cap_bases, keep_lowp;
    cl_mem lowp[3];          /* copies of a product's A and B (16-bit, or fp32 for
                              * CLBlast), and an fp32 working copy of its bf16 C */
    size_t lowp_size[3];
    size_t work_bytes;       /* the most lowp[2] holds (ts_cl_gemm_work_bytes) */
    char lowp_route[2][192]; /* ts_cl_matmul_route's answers: bf16, fp16 */
    ts_cl_build_stats stats;
} ts_cl_device;

const char *ts_cl_error_name(cl_int err);
/* Record a failed OpenCL call: "what failed on opencl:0 (name): CL_X (-5)". */
ts_status ts_cl_fail(cl_int err, const char *what, const ts_cl_device *d);

ts_status ts_cl_ensure_ready(ts_cl_device *d);
/* clReleaseMemObject, or on kernel_transfers devices kept until the device
 * is released. */
void ts_cl_release_mem(ts_cl_device *d, cl_mem m);

/* Programs (cl_program.c): the kernel `name` from kernels/<file>, built on
 * first use and cached in memory and on disk. */
ts_status ts_cl_get_kernel(ts_cl_device *d, const char *file, const char *name, cl_kernel *out);
void ts_cl_release_programs(ts_cl_device *d);
ts_status ts_cl_prepare(ts_device *dev);
void ts_cl_get_build_stats(ts_device *dev, ts_build_stats *out);

/* Kernel launches (cl_ops.c). */
/* Each kind's array holds as many as a kernel may have arguments, so no
 * mix of kinds overflows one (gemm_tiled has 17 integers). */
#define TS_CL_MAX_ARGS 32
typedef struct ts_cl_args {
    int n;
    size_t size[TS_CL_MAX_ARGS];
    const void *value[TS_CL_MAX_ARGS];
    cl_mem mem[TS_CL_MAX_ARGS];
    cl_ulong off[TS_CL_MAX_ARGS];
    cl_long ints[TS_CL_MAX_ARGS];
    float floats[TS_CL_MAX_ARGS];
    int nm, ni, nf;
} ts_cl_args;

void ts_cl_arg_tensor(ts_cl_args *a, const ts_tensor *t); /* buffer + element offset */
/* A kernel's storage flag for a tensor of this type (common.cl's load_act,
 * gemm.cl's load_operand): 0 fp32, 1 bf16, 2 fp16. */
int ts_cl_store_of(ts_dtype t);
void ts_cl_arg_long(ts_cl_args *a, int64_t v);
void ts_cl_arg_int(ts_cl_args *a, int v);
void ts_cl_arg_float(ts_cl_args *a, float v);
void ts_cl_arg_mem(ts_cl_args *a, cl_mem m);
void ts_cl_arg_local(ts_cl_args *a, size_t bytes);
ts_status ts_cl_launch(ts_cl_device *d, const char *file, const char *kernel, cl_uint dims,
                       const size_t *global, const size_t *local, const ts_cl_args *args);
ts_status ts_cl_run_op(ts_device *dev, const ts_op *op);
bool ts_cl_supports_op(ts_device *dev, const ts_op *op);
/* A device buffer of at least `bytes` for partial results. */
ts_status ts_cl_scratch(ts_cl_device *d, size_t bytes, cl_mem *out);

/* GEMM (cl_gemm.c). */
ts_status ts_cl_gemm(ts_cl_device *d, const ts_op *op);
/* The size of a bf16 result's fp32 working copy for CLBlast: 128 MiB, or
 * TESSERA_GEMM_WORK_BYTES (tests make it small to reach many blocks). */
size_t ts_cl_gemm_work_bytes(void);
/* Whether ts_cl_gemm takes this product's tensors (bf16 ones included). */
bool ts_cl_gemm_takes(const ts_cl_device *d, const ts_op *op);
ts_gemm_route ts_cl_default_gemm_route(const ts_cl_device *d);
const char *ts_cl_gemm_route_name(ts_gemm_route r);
void ts_cl_gemm_release(ts_cl_device *d);
/* The attention route the device takes by default, for `tessera devices`. */
const char *ts_cl_attention_route_name(const ts_cl_device *d);
/* How a bf16 or fp16 product runs on this device (backend.h matmul_route). */
const char *ts_cl_matmul_route(ts_cl_device *d, ts_dtype dtype);

static inline cl_mem ts_cl_mem(const ts_tensor *t) { return (cl_mem)t->block->handle; }

/* Host routes on CPU-type devices: map `bytes` of t from its offset for the
 * host without waiting (clFinish before reading; `what` names the op in
 * an error); unmap maps[0..n) in reverse, returning st or the first unmap
 * error. */
typedef struct ts_cl_mapping {
    cl_mem mem;
    void *ptr;
} ts_cl_mapping;
ts_status ts_cl_map(ts_cl_device *d, const ts_tensor *t, size_t bytes, cl_map_flags flags, const char *what,
                    ts_cl_mapping *m, void **out);
ts_status ts_cl_unmap_all(ts_cl_device *d, ts_cl_mapping *maps, int n, ts_status st);

/* Bytes [offset, offset + size) of m are about to be written (a kernel's
 * output, a transfer): the CPU backend's kept bf16 copies of that memory
 * are dropped; forget: all of m's, before m is released. Nothing unless d
 * keeps such copies. */
void ts_cl_host_written(ts_cl_device *d, cl_mem m, size_t offset, size_t size);
void ts_cl_host_forget(ts_cl_device *d, cl_mem m);

#endif
