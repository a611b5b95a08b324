#include "allocator.h"

#include <pthread.h>
#include <stdlib.h>

struct ts_allocator {
    pthread_mutex_t lock;
    ts_block *free_list;
    ts_memory_stats stats;
};

ts_allocator *ts_allocator_create(void)
{
    ts_allocator *a = calloc(1, sizeof *a);
    if (a) pthread_mutex_init(&a->lock, NULL);
    return a;
}

static void release_cached(ts_allocator *a, ts_device *dev)
{
    ts_block *b = a->free_list;
    while (b) {
        ts_block *next = b->next;
        dev->iface->free(dev, b->handle);
        a->stats.cached -= b->size;
        free(b);
        b = next;
    }
    a->free_list = NULL;
}

void ts_allocator_destroy(ts_allocator *a, ts_device *dev)
{
    if (!a) return;
    release_cached(a, dev);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

size_t ts_allocator_size_class(size_t size)
{
    if (size == 0) size = 1;
    if (size < ((size_t)1 << 20)) return (size + 511) & ~(size_t)511;
    /* Eighths of the power of two at or below size. */
    size_t p = (size_t)1 << (63 - __builtin_clzll((unsigned long long)size));
    size_t step = p / 8;
    return (size + step - 1) / step * step;
}

size_t ts_allocator_largest_fit(size_t limit)
{
    if (limit < ((size_t)1 << 20)) return limit & ~(size_t)511;
    size_t p = (size_t)1 << (63 - __builtin_clzll((unsigned long long)limit));
    size_t step = p / 8;
    return limit / step * step; /* a multiple of its own step: its class is itself */
}

ts_status ts_allocator_get(ts_device *dev, size_t size, ts_block **out)
{
    ts_allocator *a = dev->allocator;
    size_t cls = ts_allocator_size_class(size);
    *out = NULL;
    if (cls > dev->info.max_alloc_bytes)
        return ts_error(TS_ERR_OOM,
                        "cannot allocate %zu bytes on %s: the device's largest "
                        "allocation is %llu bytes",
                        size, dev->info.id, (unsigned long long)dev->info.max_alloc_bytes);

    pthread_mutex_lock(&a->lock);
    a->stats.allocations++;
    for (ts_block **pp = &a->free_list; *pp; pp = &(*pp)->next) {
        if ((*pp)->size == cls) {
            ts_block *b = *pp;
            *pp = b->next;
            b->next = NULL;
            a->stats.cached -= cls;
            a->stats.in_use += cls;
            a->stats.cache_hits++;
            if (a->stats.in_use > a->stats.peak_in_use) a->stats.peak_in_use = a->stats.in_use;
            pthread_mutex_unlock(&a->lock);
            *out = b;
            return TS_OK;
        }
    }
    pthread_mutex_unlock(&a->lock);

    ts_block *b = calloc(1, sizeof *b);
    if (!b) return ts_error(TS_ERR_OOM, "out of host memory for a block record");
    void *handle = NULL;
    ts_status st = dev->iface->alloc(dev, cls, &handle);
    if (st == TS_ERR_OOM) {
        /* Cached blocks may be what fills the device: drop them and retry. */
        pthread_mutex_lock(&a->lock);
        release_cached(a, dev);
        pthread_mutex_unlock(&a->lock);
        st = dev->iface->alloc(dev, cls, &handle);
    }
    if (st != TS_OK) {
        free(b);
        return ts_error_context(st, "allocating %zu bytes on %s", size, dev->info.id);
    }
    b->device = dev;
    b->handle = handle;
    b->size = cls;
    pthread_mutex_lock(&a->lock);
    a->stats.in_use += cls;
    if (a->stats.in_use > a->stats.peak_in_use) a->stats.peak_in_use = a->stats.in_use;
    pthread_mutex_unlock(&a->lock);
    *out = b;
    return TS_OK;
}

void ts_allocator_put(ts_block *b)
{
    if (!b) return;
    ts_allocator *a = b->device->allocator;
    pthread_mutex_lock(&a->lock);
    a->stats.in_use -= b->size;
    a->stats.cached += b->size;
    b->next = a->free_list;
    a->free_list = b;
    pthread_mutex_unlock(&a->lock);
}

void ts_allocator_empty(ts_device *dev)
{
    pthread_mutex_lock(&dev->allocator->lock);
    release_cached(dev->allocator, dev);
    pthread_mutex_unlock(&dev->allocator->lock);
}

void ts_allocator_reset_peak(ts_device *dev)
{
    pthread_mutex_lock(&dev->allocator->lock);
    dev->allocator->stats.peak_in_use = dev->allocator->stats.in_use;
    pthread_mutex_unlock(&dev->allocator->lock);
}

void ts_allocator_stats(ts_device *dev, ts_memory_stats *stats)
{
    pthread_mutex_lock(&dev->allocator->lock);
    *stats = dev->allocator->stats;
    pthread_mutex_unlock(&dev->allocator->lock);
}
