/* A deliberately broken OpenCL ICD for tests: one platform that answers
 * platform queries but fails to list its devices (CL_OUT_OF_RESOURCES).
 * Installed beside a working ICD, it must not hide that one's devices. */
#define CL_TARGET_OPENCL_VERSION 300
#include <CL/cl_icd.h>
#include <string.h>

struct _cl_platform_id {
    cl_icd_dispatch *dispatch;
};

static cl_icd_dispatch table;
static struct _cl_platform_id broken_platform = {&table};

static cl_int CL_API_CALL get_platform_info(cl_platform_id p, cl_platform_info what, size_t size,
                                            void *value, size_t *ret)
{
    (void)p;
    const char *s;
    switch (what) {
    case CL_PLATFORM_ICD_SUFFIX_KHR: s = "BROKEN"; break;
    case CL_PLATFORM_NAME: s = "Broken test platform"; break;
    case CL_PLATFORM_VENDOR: s = "tessera tests"; break;
    case CL_PLATFORM_VERSION: s = "OpenCL 1.2 broken"; break;
    case CL_PLATFORM_PROFILE: s = "FULL_PROFILE"; break;
    case CL_PLATFORM_EXTENSIONS: s = "cl_khr_icd"; break;
    default: return CL_INVALID_VALUE;
    }
    size_t n = strlen(s) + 1;
    if (ret) *ret = n;
    if (value) {
        if (size < n) return CL_INVALID_VALUE;
        memcpy(value, s, n);
    }
    return CL_SUCCESS;
}

static cl_int CL_API_CALL get_device_ids(cl_platform_id p, cl_device_type type, cl_uint n,
                                         cl_device_id *devices, cl_uint *count)
{
    (void)p, (void)type, (void)n, (void)devices, (void)count;
    return CL_OUT_OF_RESOURCES;
}

CL_API_ENTRY cl_int CL_API_CALL clIcdGetPlatformIDsKHR(cl_uint n, cl_platform_id *platforms,
                                                       cl_uint *count)
{
    table.clGetPlatformInfo = get_platform_info;
    table.clGetDeviceIDs = get_device_ids;
    if (count) *count = 1;
    if (platforms && n) platforms[0] = &broken_platform;
    return CL_SUCCESS;
}

CL_API_ENTRY void *CL_API_CALL clGetExtensionFunctionAddress(const char *name)
{
    if (!strcmp(name, "clIcdGetPlatformIDsKHR")) return (void *)clIcdGetPlatformIDsKHR;
    return NULL;
}

/* The loader resolves these three by name (cl_khr_icd). */
CL_API_ENTRY cl_int CL_API_CALL clGetPlatformInfo(cl_platform_id p, cl_platform_info what,
                                                  size_t size, void *value, size_t *ret)
{
    return get_platform_info(p, what, size, value, ret);
}
