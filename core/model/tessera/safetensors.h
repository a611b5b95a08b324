/* safetensors files (https://github.com/huggingface/safetensors): an 8-byte
 * little-endian header length, a JSON header naming each tensor's dtype,
 * shape and byte range, then the data. Readable from Python with the
 * safetensors package or a few lines of numpy.
 *
 * Opening validates everything before any data is used: header bounds and
 * JSON, dtypes, shapes, byte ranges that match the shapes, lie inside the
 * file, do not overlap and leave no holes. A truncated or corrupt file is
 * rejected with a message naming the file and the problem. */
#ifndef TESSERA_SAFETENSORS_H
#define TESSERA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "tessera/status.h"
#include "tessera/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TS_ST_MAX_DIMS 8

typedef struct ts_st_entry {
    char *name;
    ts_dtype dtype;
    int ndim;
    int64_t shape[TS_ST_MAX_DIMS];
    uint64_t begin, end;         /* byte range within the data section */
} ts_st_entry;

typedef struct ts_safetensors {
    char path[1024];
    const unsigned char *map;    /* the whole file, mapped read-only */
    size_t size;
    size_t data_start;
    ts_st_entry *entries;
    size_t count;
    char **meta_keys, **meta_values;
    size_t meta_count;
} ts_safetensors;

ts_status ts_safetensors_open(const char *path, ts_safetensors *st);
void ts_safetensors_close(ts_safetensors *st);
const ts_st_entry *ts_safetensors_find(const ts_safetensors *st, const char *name);
const void *ts_safetensors_data(const ts_safetensors *st, const ts_st_entry *e);
/* A __metadata__ value, or NULL. */
const char *ts_safetensors_meta(const ts_safetensors *st, const char *key);
/* Copy tensor `name` into dst after checking its dtype and element count
 * (and, when `exact_shape`, its shape). */
ts_status ts_safetensors_load(const ts_safetensors *st, const char *name, ts_tensor *dst,
                              int exact_shape);

/* Writer: tensors are referenced, not copied, and read from their devices
 * while the file is written (atomically: temp file, fsync, rename). */
typedef struct ts_st_writer ts_st_writer;
ts_status ts_st_writer_new(ts_st_writer **w);
/* The tensor must stay alive until ts_st_writer_write returns. Its shape in
 * the file is `ndim`/`shape` (may differ from the tensor's, same count). */
ts_status ts_st_writer_add(ts_st_writer *w, const char *name, const ts_tensor *t, int ndim,
                           const int64_t *shape);
ts_status ts_st_writer_add_host(ts_st_writer *w, const char *name, ts_dtype dtype, int ndim,
                                const int64_t *shape, const void *data);
ts_status ts_st_writer_meta(ts_st_writer *w, const char *key, const char *value);
ts_status ts_st_writer_write(ts_st_writer *w, const char *path);
void ts_st_writer_free(ts_st_writer *w);

/* Streaming writer: the header (all names and shapes) first, then each
 * tensor's f32 data in order, in as many pieces as convenient. Written
 * atomically on close(commit = 1). */
typedef struct ts_st_stream ts_st_stream;
ts_status ts_st_stream_open(ts_st_stream **s, const char *path, int n, const char *const *names,
                            const int *ndims, const int64_t (*shapes)[2],
                            const char *const *meta_kv);
ts_status ts_st_stream_write(ts_st_stream *s, const float *data, int64_t count);
ts_status ts_st_stream_close(ts_st_stream *s, int commit);

#ifdef __cplusplus
}
#endif
#endif
