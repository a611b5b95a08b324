#include "tessera/tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allocator.h"
#include "backend.h"
#include "tessera/ops.h"

size_t ts_dtype_size(ts_dtype dtype)
{
    switch (dtype) {
    case TS_F32: return 4;
    case TS_F16: return 2;
    case TS_BF16: return 2;
    case TS_I32: return 4;
    }
    return 0;
}

const char *ts_dtype_name(ts_dtype dtype)
{
    switch (dtype) {
    case TS_F32: return "f32";
    case TS_F16: return "f16";
    case TS_BF16: return "bf16";
    case TS_I32: return "i32";
    }
    return "?";
}

int ts_dtype_parse(const char *name)
{
    if (!name) return -1;
    if (!strcmp(name, "fp32") || !strcmp(name, "f32") || !strcmp(name, "float32")) return TS_F32;
    if (!strcmp(name, "bf16") || !strcmp(name, "bfloat16")) return TS_BF16;
    if (!strcmp(name, "fp16") || !strcmp(name, "f16") || !strcmp(name, "float16")) return TS_F16;
    if (!strcmp(name, "i32") || !strcmp(name, "int32")) return TS_I32;
    return -1;
}

int64_t ts_tensor_numel(const ts_tensor *t)
{
    if (!t || t->ndim <= 0) return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t ts_tensor_nbytes(const ts_tensor *t)
{
    return (size_t)ts_tensor_numel(t) * ts_dtype_size(t->dtype);
}

int ts_tensor_same_shape(const ts_tensor *a, const ts_tensor *b)
{
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

const char *ts_tensor_describe(const ts_tensor *t, char *buf, size_t size)
{
    if (!t) {
        snprintf(buf, size, "(null)");
        return buf;
    }
    size_t n = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < t->ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (n < size) snprintf(buf + n, size - n, "] %s", ts_dtype_name(t->dtype));
    return buf;
}

static ts_status check_shape(int ndim, const int64_t *shape, int64_t *numel)
{
    if (ndim < 1 || ndim > TS_MAX_DIMS)
        return ts_error(TS_ERR_SHAPE, "a tensor has 1 to %d dimensions, not %d", TS_MAX_DIMS, ndim);
    if (!shape) return ts_error(TS_ERR_INVALID_ARG, "shape is NULL");
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return ts_error(TS_ERR_SHAPE, "dimension %d is negative (%lld)", i, (long long)shape[i]);
        if (shape[i] > 0 && n > INT64_MAX / shape[i])
            return ts_error(TS_ERR_SHAPE, "shape overflows 64-bit element count");
        n *= shape[i];
    }
    *numel = n;
    return TS_OK;
}

ts_status ts_tensor_alloc(ts_tensor *t, ts_device *device, ts_dtype dtype, int ndim,
                          const int64_t *shape)
{
    if (!t) return ts_error(TS_ERR_INVALID_ARG, "ts_tensor_alloc: tensor is NULL");
    memset(t, 0, sizeof *t);
    if (!device) return ts_error(TS_ERR_DEVICE, "ts_tensor_alloc: device is NULL");
    if (ts_dtype_size(dtype) == 0) return ts_error(TS_ERR_INVALID_ARG, "unknown dtype %d", (int)dtype);
    int64_t numel;
    ts_status st = check_shape(ndim, shape, &numel);
    if (st) return st;
    size_t esize = ts_dtype_size(dtype);
    if ((uint64_t)numel > SIZE_MAX / esize)
        return ts_error(TS_ERR_OOM, "tensor of %lld elements does not fit in memory", (long long)numel);
    ts_block *b = NULL;
    st = ts_allocator_get(device, (size_t)numel * esize, &b);
    if (st) return st;
    t->device = device;
    t->block = b;
    t->offset = 0;
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->owner = 1;
    return TS_OK;
}

ts_status ts_tensor_zeros(ts_tensor *t, ts_device *device, ts_dtype dtype, int ndim,
                          const int64_t *shape)
{
    ts_status st = ts_tensor_alloc(t, device, dtype, ndim, shape);
    if (st) return st;
    if (dtype == TS_F32) {
        st = ts_fill(t, 0.0f);
    } else { /* zero bits are zero in every type; ts_fill takes f32 only */
        size_t n = ts_tensor_nbytes(t);
        void *z = calloc(n ? n : 1, 1);
        st = z ? ts_tensor_write(t, z, n) : ts_error(TS_ERR_OOM, "ts_tensor_zeros: no host memory for %zu bytes", n);
        free(z);
    }
    if (st) ts_tensor_free(t);
    return st;
}

void ts_tensor_free(ts_tensor *t)
{
    if (!t) return;
    if (t->owner && t->block) ts_allocator_put(t->block);
    memset(t, 0, sizeof *t);
}

ts_status ts_tensor_view(ts_tensor *view, const ts_tensor *base, int64_t elem_offset,
                         int ndim, const int64_t *shape)
{
    if (!view || !base || !base->block)
        return ts_error(TS_ERR_INVALID_ARG, "ts_tensor_view: NULL or unallocated tensor");
    int64_t numel;
    ts_status st = check_shape(ndim, shape, &numel);
    if (st) return st;
    int64_t base_n = ts_tensor_numel(base);
    if (elem_offset < 0 || elem_offset > base_n || numel > base_n - elem_offset) {
        char b[96];
        return ts_error(TS_ERR_SHAPE,
                        "view of %lld elements at offset %lld reaches outside its base %s",
                        (long long)numel, (long long)elem_offset, ts_tensor_describe(base, b, sizeof b));
    }
    ts_tensor v = *base;
    v.offset = base->offset + (size_t)elem_offset * ts_dtype_size(base->dtype);
    v.ndim = ndim;
    memset(v.shape, 0, sizeof v.shape);
    memcpy(v.shape, shape, (size_t)ndim * sizeof *shape);
    v.owner = 0;
    *view = v;
    return TS_OK;
}

ts_status ts_tensor_view_typed(ts_tensor *view, const ts_tensor *base, int64_t elem_offset, ts_dtype dtype,
                               int ndim, const int64_t *shape)
{
    if (!view || !base || !base->block)
        return ts_error(TS_ERR_INVALID_ARG, "ts_tensor_view_typed: NULL or unallocated tensor");
    int64_t numel;
    ts_status st = check_shape(ndim, shape, &numel);
    if (st) return st;
    size_t esize = ts_dtype_size(dtype), bsize = ts_dtype_size(base->dtype);
    if (!esize) return ts_error(TS_ERR_INVALID_ARG, "ts_tensor_view_typed: unknown dtype %d", (int)dtype);
    int64_t base_n = ts_tensor_numel(base);
    /* bytes, in 64 bits: a view of 2^31 bf16 elements is 4 GiB */
    if (elem_offset < 0 || elem_offset > base_n ||
        (uint64_t)numel * esize > (uint64_t)(base_n - elem_offset) * bsize) {
        char b[96];
        return ts_error(TS_ERR_SHAPE, "view of %lld %s elements at offset %lld reaches outside its base %s",
                        (long long)numel, ts_dtype_name(dtype), (long long)elem_offset,
                        ts_tensor_describe(base, b, sizeof b));
    }
    if ((base->offset + (size_t)elem_offset * bsize) % esize)
        return ts_error(TS_ERR_SHAPE, "view of %s elements at byte %zu is not aligned to their %zu bytes",
                        ts_dtype_name(dtype), base->offset + (size_t)elem_offset * bsize, esize);
    st = ts_tensor_view(view, base, elem_offset, TS_SHAPE(0));
    if (st) return st;
    view->dtype = dtype;
    view->ndim = ndim;
    memcpy(view->shape, shape, (size_t)ndim * sizeof *shape);
    return TS_OK;
}

ts_status ts_tensor_reshape(ts_tensor *view, const ts_tensor *base, int ndim, const int64_t *shape)
{
    int64_t numel;
    ts_status st = check_shape(ndim, shape, &numel);
    if (st) return st;
    if (numel != ts_tensor_numel(base)) {
        char b[96];
        return ts_error(TS_ERR_SHAPE, "cannot reshape %s to %lld elements",
                        ts_tensor_describe(base, b, sizeof b), (long long)numel);
    }
    return ts_tensor_view(view, base, 0, ndim, shape);
}

ts_status ts_tensor_wrap_host(ts_tensor *t, ts_block *block, ts_device *cpu, void *ptr,
                              size_t bytes, ts_dtype dtype, int ndim, const int64_t *shape)
{
    memset(t, 0, sizeof *t);
    if (!cpu || strcmp(cpu->info.backend, "cpu") != 0)
        return ts_error(TS_ERR_DEVICE, "only the CPU backend addresses host memory directly");
    int64_t numel;
    ts_status st = check_shape(ndim, shape, &numel);
    if (st) return st;
    if ((size_t)numel * ts_dtype_size(dtype) > bytes)
        return ts_error(TS_ERR_SHAPE, "%lld elements do not fit in %zu bytes", (long long)numel, bytes);
    memset(block, 0, sizeof *block);
    block->device = cpu;
    block->handle = ptr;
    block->size = bytes;
    if (cpu->iface->host_access) cpu->iface->host_access(cpu, ptr, bytes, 1);
    t->device = cpu;
    t->block = block;
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->owner = 0;
    return TS_OK;
}

static void *host_address(const ts_tensor *t, int kept)
{
    if (!t || !t->block || !t->device || strcmp(t->device->info.backend, "cpu") != 0) return NULL;
    void *p = (char *)t->block->handle + t->offset;
    if (t->device->iface->host_access) t->device->iface->host_access(t->device, p, ts_tensor_nbytes(t), kept);
    return p;
}

void *ts_tensor_host_ptr(const ts_tensor *t) { return host_address(t, 1); }
void *ts_tensor_host_io(const ts_tensor *t) { return host_address(t, 0); }

static ts_status check_transfer(const ts_tensor *t, size_t nbytes, const char *what)
{
    if (!t || !t->block) return ts_error(TS_ERR_INVALID_ARG, "%s: unallocated tensor", what);
    if (nbytes != ts_tensor_nbytes(t)) {
        char b[96];
        return ts_error(TS_ERR_SHAPE, "%s: %zu bytes given for tensor %s of %zu bytes", what,
                        nbytes, ts_tensor_describe(t, b, sizeof b), ts_tensor_nbytes(t));
    }
    return TS_OK;
}

ts_status ts_tensor_write(ts_tensor *t, const void *src, size_t nbytes)
{
    ts_status st = check_transfer(t, nbytes, "ts_tensor_write");
    if (st) return st;
    if (nbytes == 0) return TS_OK;
    ts_device *d = t->device;
    st = d->iface->write(d, t->block->handle, t->offset, src, nbytes);
    if (st) return ts_error_context(st, "writing %zu bytes to %s", nbytes, d->info.id);
    return TS_OK;
}

ts_status ts_tensor_read(const ts_tensor *t, void *dst, size_t nbytes)
{
    ts_status st = check_transfer(t, nbytes, "ts_tensor_read");
    if (st) return st;
    if (nbytes == 0) return TS_OK;
    ts_device *d = t->device;
    st = d->iface->read(d, t->block->handle, t->offset, dst, nbytes);
    if (st) return ts_error_context(st, "reading %zu bytes from %s", nbytes, d->info.id);
    return TS_OK;
}

ts_status ts_tensor_copy(ts_tensor *dst, const ts_tensor *src)
{
    if (!dst || !src || !dst->block || !src->block)
        return ts_error(TS_ERR_INVALID_ARG, "ts_tensor_copy: unallocated tensor");
    if (dst->dtype != src->dtype || ts_tensor_numel(dst) != ts_tensor_numel(src)) {
        char a[96], b[96];
        return ts_error(TS_ERR_SHAPE, "ts_tensor_copy: %s does not match %s",
                        ts_tensor_describe(dst, a, sizeof a), ts_tensor_describe(src, b, sizeof b));
    }
    size_t n = ts_tensor_nbytes(src);
    if (n == 0) return TS_OK;
    if (dst->device == src->device && dst->device->iface->copy) {
        ts_device *d = dst->device;
        ts_status st = d->iface->copy(d, dst->block->handle, dst->offset, src->block->handle,
                                      src->offset, n);
        if (st) return ts_error_context(st, "copying %zu bytes on %s", n, d->info.id);
        return TS_OK;
    }
    /* Across devices, or a backend without copy: stage through host memory. */
    void *host = malloc(n);
    if (!host) return ts_error(TS_ERR_OOM, "ts_tensor_copy: no host memory for %zu bytes", n);
    ts_status st = ts_tensor_read(src, host, n);
    if (!st) st = ts_tensor_write(dst, host, n);
    free(host);
    return st;
}
