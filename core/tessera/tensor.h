/* Tensors: a device, a storage block, a byte offset, a dtype and a shape.
 *
 * Tensors are contiguous and row-major, up to TS_MAX_DIMS dimensions. Device
 * memory is always addressed as (block, byte offset): a view is the same block
 * at another offset and shape, never a sub-buffer object. A tensor made by
 * ts_tensor_alloc owns its block; views do not, and stay valid only while the
 * tensor they were cut from lives. */
#ifndef TESSERA_TENSOR_H
#define TESSERA_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "tessera/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Storage types. Ops compute in f32; F16 and BF16 are storage formats that
 * later kernels may read and write (the ops reject them today). */
typedef enum ts_dtype { TS_F32 = 0, TS_F16 = 1, TS_BF16 = 2, TS_I32 = 3 } ts_dtype;

#define TS_MAX_DIMS 4

typedef struct ts_device ts_device;
typedef struct ts_block ts_block;

typedef struct ts_tensor {
    ts_device *device;
    ts_block *block;   /* storage, shared by views */
    size_t offset;     /* byte offset of element 0 in the block */
    ts_dtype dtype;
    int ndim;
    int64_t shape[TS_MAX_DIMS];
    int owner;         /* 1 if ts_tensor_free must release the block */
} ts_tensor;

/* Shape literal: ts_tensor_alloc(&t, dev, TS_F32, TS_SHAPE(B, T, C)). */
#define TS_SHAPE(...)                                                          \
    (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)),                 \
        (const int64_t[]){__VA_ARGS__}

size_t ts_dtype_size(ts_dtype dtype);
const char *ts_dtype_name(ts_dtype dtype);
/* "fp32"/"f32", "bf16", "fp16"/"f16" (and i32); -1 for anything else. */
int ts_dtype_parse(const char *name);

/* Allocate uninitialised storage from the device's caching allocator. */
ts_status ts_tensor_alloc(ts_tensor *t, ts_device *device, ts_dtype dtype,
                          int ndim, const int64_t *shape);
/* Allocate and fill with zeros. */
ts_status ts_tensor_zeros(ts_tensor *t, ts_device *device, ts_dtype dtype,
                          int ndim, const int64_t *shape);
/* Release an owning tensor (its block returns to the cache); clears *t.
 * Safe on a zeroed struct and on views (which it only clears). */
void ts_tensor_free(ts_tensor *t);

/* A view of `numel(shape)` elements starting `elem_offset` elements into
 * `base`. Fails with TS_ERR_SHAPE if it would reach outside `base`. */
ts_status ts_tensor_view(ts_tensor *view, const ts_tensor *base,
                         int64_t elem_offset, int ndim, const int64_t *shape);
/* The same, with elements of another type (bf16 activations inside an
 * f32 block): the view's bytes must lie within base's from elem_offset
 * (counted in base's elements). */
ts_status ts_tensor_view_typed(ts_tensor *view, const ts_tensor *base, int64_t elem_offset, ts_dtype dtype,
                               int ndim, const int64_t *shape);
/* The same elements with another shape of equal element count. */
ts_status ts_tensor_reshape(ts_tensor *view, const ts_tensor *base, int ndim,
                            const int64_t *shape);

int64_t ts_tensor_numel(const ts_tensor *t);
size_t ts_tensor_nbytes(const ts_tensor *t);
int ts_tensor_same_shape(const ts_tensor *a, const ts_tensor *b);
/* "[4, 64, 768] f32" into buf; returns buf. */
const char *ts_tensor_describe(const ts_tensor *t, char *buf, size_t size);

/* A tensor over host memory owned elsewhere (CPU backend only): block
 * must outlive the tensor; ts_tensor_free leaves the memory alone. */
ts_status ts_tensor_wrap_host(ts_tensor *t, ts_block *block, ts_device *cpu, void *ptr,
                              size_t bytes, ts_dtype dtype, int ndim, const int64_t *shape);

/* The host address of element 0 when the tensor lives in the native CPU
 * backend's memory (no staging needed), else NULL. The caller may keep it
 * and write through it at any time. */
void *ts_tensor_host_ptr(const ts_tensor *t);
/* The same address for I/O that is over before the next op on the device
 * runs (an MPI send or receive): the device may keep derived copies of
 * this memory again afterwards (bf16 copies of weights), which it may not
 * for memory whose address ts_tensor_host_ptr handed out. */
void *ts_tensor_host_io(const ts_tensor *t);

/* Host <-> device transfers of the whole tensor (nbytes must match).
 * Reads wait for all work queued before them on the device. */
ts_status ts_tensor_write(ts_tensor *t, const void *src, size_t nbytes);
ts_status ts_tensor_read(const ts_tensor *t, void *dst, size_t nbytes);
/* Copy elements between tensors of equal element count and dtype, on the
 * same device or across devices (through host memory). */
ts_status ts_tensor_copy(ts_tensor *dst, const ts_tensor *src);

#ifdef __cplusplus
}
#endif
#endif
