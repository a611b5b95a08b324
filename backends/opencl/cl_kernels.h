/* The OpenCL C sources embedded by kernels/embed.py. */
#ifndef TESSERA_CL_KERNELS_H
#define TESSERA_CL_KERNELS_H

#include <stddef.h>

typedef struct ts_embedded_kernel {
    const char *name;            /* file name, e.g. "layernorm.cl" */
    const unsigned char *data;   /* NUL-terminated */
    size_t size;                 /* bytes, without the terminator */
} ts_embedded_kernel;

extern const ts_embedded_kernel ts_embedded_kernels[];
extern const int ts_embedded_kernel_count;

#endif
