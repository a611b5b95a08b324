/* The per-device caching allocator.
 *
 * Blocks come from the backend's alloc and go back to a free list when the
 * tensor that owns them is freed; a later request of the same size class
 * reuses them without touching the driver (clCreateBuffer and large mallocs
 * are slow, and a training step allocates the same sizes every time). Sizes
 * are rounded to a class: 512-byte steps below 1 MiB, then eighths of a power
 * of two, so reuse wastes at most 12.5%. On an allocation failure the cache
 * is emptied and the request retried once. */
#ifndef TESSERA_ALLOCATOR_H
#define TESSERA_ALLOCATOR_H

#include <stddef.h>

#include "backend.h"

typedef struct ts_allocator ts_allocator;

ts_allocator *ts_allocator_create(void);
void ts_allocator_destroy(ts_allocator *a, ts_device *dev);

ts_status ts_allocator_get(ts_device *dev, size_t size, ts_block **out);
void ts_allocator_put(ts_block *block);
void ts_allocator_empty(ts_device *dev);
void ts_allocator_stats(ts_device *dev, ts_memory_stats *stats);
void ts_allocator_reset_peak(ts_device *dev);

size_t ts_allocator_size_class(size_t size);
/* The largest request whose size class is at most limit bytes. */
size_t ts_allocator_largest_fit(size_t limit);

#endif
