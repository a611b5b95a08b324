#include "tessera/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"
#include "json.h"

#define MAX_HEADER (100u << 20)

static const struct {
    const char *name;
    ts_dtype dtype;
} dtypes[] = {{"F32", TS_F32}, {"F16", TS_F16}, {"BF16", TS_BF16}, {"I32", TS_I32}};

static const char *dtype_tag(ts_dtype d)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof *dtypes; i++)
        if (dtypes[i].dtype == d) return dtypes[i].name;
    return NULL;
}

void ts_safetensors_close(ts_safetensors *st)
{
    if (st->map) munmap((void *)st->map, st->size);
    for (size_t i = 0; i < st->count; i++) free(st->entries[i].name);
    free(st->entries);
    for (size_t i = 0; i < st->meta_count; i++) {
        free(st->meta_keys[i]);
        free(st->meta_values[i]);
    }
    free(st->meta_keys);
    free(st->meta_values);
    memset(st, 0, sizeof *st);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const ts_st_entry *const *)a)->name, (*(const ts_st_entry *const *)b)->name);
}

static int cmp_begin(const void *a, const void *b)
{
    const ts_st_entry *x = *(const ts_st_entry *const *)a, *y = *(const ts_st_entry *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

#define BAD(...) (ts_error(TS_ERR_FORMAT, __VA_ARGS__))

static ts_status parse_entry(ts_safetensors *st, const char *name, const ts_json *v, size_t data_size,
                             ts_st_entry *e)
{
    const char *path = st->path;
    if (v->type != TS_JSON_OBJECT) return BAD("%s: entry '%s' is not an object", path, name);
    const char *dt = ts_json_get_str(v, "dtype", NULL);
    int found = 0;
    for (size_t i = 0; dt && i < sizeof dtypes / sizeof *dtypes; i++)
        if (!strcmp(dt, dtypes[i].name)) e->dtype = dtypes[i].dtype, found = 1;
    if (!found) return BAD("%s: tensor '%s' has unsupported dtype %s", path, name, dt ? dt : "(none)");
    const ts_json *shape = ts_json_get(v, "shape");
    if (!shape || shape->type != TS_JSON_ARRAY || shape->count > TS_ST_MAX_DIMS)
        return BAD("%s: tensor '%s' has no valid shape", path, name);
    uint64_t numel = 1;
    e->ndim = (int)shape->count;
    for (size_t i = 0; i < shape->count; i++) {
        const ts_json *d = &shape->items[i];
        if (d->type != TS_JSON_NUMBER || !d->is_integer || d->integer < 0 || d->integer > (1ll << 40))
            return BAD("%s: tensor '%s' has a bad dimension", path, name);
        e->shape[i] = d->integer;
        /* checked before multiplying: a product past 2^64 wraps (to 0) */
        if (d->integer > 0 && numel > (1ull << 48) / (uint64_t)d->integer)
            return BAD("%s: tensor '%s' is implausibly large (over 2^48 elements)", path, name);
        numel *= (uint64_t)d->integer;
    }
    const ts_json *off = ts_json_get(v, "data_offsets");
    if (!off || off->type != TS_JSON_ARRAY || off->count != 2 || !off->items[0].is_integer ||
        !off->items[1].is_integer || off->items[0].integer < 0 ||
        off->items[1].integer < off->items[0].integer)
        return BAD("%s: tensor '%s' has bad data_offsets", path, name);
    e->begin = (uint64_t)off->items[0].integer;
    e->end = (uint64_t)off->items[1].integer;
    if (e->end > data_size)
        return BAD("%s: tensor '%s' ends at byte %llu but the file holds %zu data bytes "
                   "(truncated?)",
                   path, name, (unsigned long long)e->end, data_size);
    if (e->end - e->begin != numel * ts_dtype_size(e->dtype))
        return BAD("%s: tensor '%s' spans %llu bytes, its shape needs %llu", path, name,
                   (unsigned long long)(e->end - e->begin),
                   (unsigned long long)(numel * ts_dtype_size(e->dtype)));
    e->name = strdup(name);
    return e->name ? TS_OK : ts_error(TS_ERR_OOM, "no memory");
}

ts_status ts_safetensors_open(const char *path, ts_safetensors *st)
{
    memset(st, 0, sizeof *st);
    snprintf(st->path, sizeof st->path, "%s", path);
    int fd;
    size_t size;
    ts_status opened = ts_open_regular(path, &fd, &size);
    if (opened) return opened;
    if (size < 8) {
        close(fd);
        return BAD("%s: %zu bytes is too short for a safetensors file", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return ts_error(TS_ERR_IO, "cannot map %s: %s", path, strerror(errno));
    st->map = map;
    st->size = size;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | st->map[i];
    ts_status rc;
    if (hlen > MAX_HEADER || hlen > size - 8) {
        rc = BAD("%s: header claims %llu bytes but the file has %zu (truncated or not safetensors)",
                 path, (unsigned long long)hlen, size);
        goto fail;
    }
    st->data_start = 8 + (size_t)hlen;
    size_t data_size = size - st->data_start;
    ts_json *root = NULL;
    rc = ts_json_parse((const char *)st->map + 8, (size_t)hlen, &root);
    if (rc) {
        rc = ts_error_context(TS_ERR_FORMAT, "%s: corrupt header", path);
        goto fail;
    }
    if (root->type != TS_JSON_OBJECT) {
        ts_json_free(root);
        rc = BAD("%s: header is not a JSON object", path);
        goto fail;
    }
    st->entries = calloc(root->count ? root->count : 1, sizeof *st->entries);
    if (!st->entries) {
        ts_json_free(root);
        rc = ts_error(TS_ERR_OOM, "no memory");
        goto fail;
    }
    for (size_t i = 0; i < root->count; i++) {
        const char *key = root->keys[i];
        const ts_json *v = &root->items[i];
        if (!strcmp(key, "__metadata__")) {
            if (v->type != TS_JSON_OBJECT) {
                rc = BAD("%s: __metadata__ is not an object", path);
                break;
            }
            if (st->meta_keys) {
                rc = BAD("%s: the header has more than one __metadata__", path);
                break;
            }
            st->meta_keys = calloc(v->count + 1, sizeof(char *));
            st->meta_values = calloc(v->count + 1, sizeof(char *));
            if (!st->meta_keys || !st->meta_values) {
                rc = ts_error(TS_ERR_OOM, "no memory for the metadata of %s", path);
                break;
            }
            for (size_t j = 0; j < v->count && !rc; j++) {
                if (v->items[j].type != TS_JSON_STRING) continue;
                st->meta_keys[st->meta_count] = strdup(v->keys[j]);
                st->meta_values[st->meta_count] = strdup(v->items[j].string);
                if (!st->meta_keys[st->meta_count] || !st->meta_values[st->meta_count])
                    rc = ts_error(TS_ERR_OOM, "no memory for the metadata of %s", path);
                st->meta_count++;
            }
            if (rc) break;
            continue;
        }
        if ((rc = parse_entry(st, key, v, data_size, &st->entries[st->count]))) break;
        st->count++;
    }
    ts_json_free(root);
    if (rc) goto fail;
    /* byte ranges must tile the data section exactly */
    {
        const ts_st_entry **order = malloc((st->count ? st->count : 1) * sizeof *order);
        if (!order) {
            rc = ts_error(TS_ERR_OOM, "no memory");
            goto fail;
        }
        for (size_t i = 0; i < st->count; i++) order[i] = &st->entries[i];
        /* names are unique (sorted, so the check is not quadratic) */
        qsort(order, st->count, sizeof *order, cmp_name);
        for (size_t i = 1; i < st->count && !rc; i++)
            if (!strcmp(order[i - 1]->name, order[i]->name))
                rc = BAD("%s: tensor '%s' appears twice in the header", path, order[i]->name);
        qsort(order, st->count, sizeof *order, cmp_begin);
        uint64_t pos = 0;
        for (size_t i = 0; i < st->count && !rc; i++) {
            if (order[i]->begin != pos)
                rc = BAD("%s: tensor '%s' starts at byte %llu, expected %llu (overlap or hole)",
                         path, order[i]->name, (unsigned long long)order[i]->begin,
                         (unsigned long long)pos);
            pos = order[i]->end;
        }
        free(order);
        if (!rc && pos != data_size)
            rc = BAD("%s: %zu data bytes but the tensors cover %llu (truncated or padded?)", path,
                     data_size, (unsigned long long)pos);
        if (rc) goto fail;
    }
    return TS_OK;
fail:
    ts_safetensors_close(st);
    return rc;
}

const ts_st_entry *ts_safetensors_find(const ts_safetensors *st, const char *name)
{
    for (size_t i = 0; i < st->count; i++)
        if (!strcmp(st->entries[i].name, name)) return &st->entries[i];
    return NULL;
}

const void *ts_safetensors_data(const ts_safetensors *st, const ts_st_entry *e)
{
    return st->map + st->data_start + e->begin;
}

const char *ts_safetensors_meta(const ts_safetensors *st, const char *key)
{
    for (size_t i = 0; i < st->meta_count; i++)
        if (!strcmp(st->meta_keys[i], key)) return st->meta_values[i];
    return NULL;
}

ts_status ts_safetensors_load(const ts_safetensors *st, const char *name, ts_tensor *dst,
                              int exact_shape)
{
    const ts_st_entry *e = ts_safetensors_find(st, name);
    if (!e) return ts_error(TS_ERR_FORMAT, "%s: no tensor named '%s'", st->path, name);
    char want[96];
    ts_tensor_describe(dst, want, sizeof want);
    int64_t numel = 1;
    for (int i = 0; i < e->ndim; i++) numel *= e->shape[i];
    int same = e->dtype == dst->dtype && numel == ts_tensor_numel(dst);
    if (same && exact_shape) {
        same = e->ndim == dst->ndim;
        for (int i = 0; same && i < e->ndim; i++) same = e->shape[i] == dst->shape[i];
    }
    if (!same) {
        char got[160];
        size_t k = (size_t)snprintf(got, sizeof got, "[");
        for (int i = 0; i < e->ndim && k < sizeof got; i++)
            k += (size_t)snprintf(got + k, sizeof got - k, i ? ", %lld" : "%lld", (long long)e->shape[i]);
        if (k < sizeof got) snprintf(got + k, sizeof got - k, "] %s", dtype_tag(e->dtype));
        return ts_error(TS_ERR_SHAPE, "%s: tensor '%s' is %s, expected %s", st->path, name, got, want);
    }
    return ts_tensor_write(dst, ts_safetensors_data(st, e), (size_t)(e->end - e->begin));
}

/* ---- writer ---- */

typedef struct wentry {
    char *name;
    ts_dtype dtype;
    int ndim;
    int64_t shape[TS_ST_MAX_DIMS];
    const ts_tensor *tensor; /* device data, or */
    const void *host;        /* host data */
    size_t bytes;
} wentry;

struct ts_st_writer {
    wentry *e;
    size_t n, cap;
    char **mk, **mv;
    size_t nm;
};

ts_status ts_st_writer_new(ts_st_writer **w)
{
    *w = calloc(1, sizeof **w);
    return *w ? TS_OK : ts_error(TS_ERR_OOM, "no memory");
}

void ts_st_writer_free(ts_st_writer *w)
{
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) free(w->e[i].name);
    for (size_t i = 0; i < w->nm; i++) free(w->mk[i]), free(w->mv[i]);
    free(w->e);
    free(w->mk);
    free(w->mv);
    free(w);
}

static ts_status add_entry(ts_st_writer *w, const char *name, ts_dtype dtype, int ndim,
                           const int64_t *shape, const ts_tensor *t, const void *host)
{
    if (ndim < 0 || ndim > TS_ST_MAX_DIMS) return ts_error(TS_ERR_SHAPE, "safetensors: bad ndim %d", ndim);
    if (!dtype_tag(dtype)) return ts_error(TS_ERR_INVALID_ARG, "safetensors: unsupported dtype");
    for (size_t i = 0; i < w->n; i++)
        if (!strcmp(w->e[i].name, name))
            return ts_error(TS_ERR_INVALID_ARG, "safetensors: duplicate tensor name '%s'", name);
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 32;
        wentry *e = realloc(w->e, cap * sizeof *e);
        if (!e) return ts_error(TS_ERR_OOM, "no memory");
        w->e = e, w->cap = cap;
    }
    wentry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= shape[i], e->shape[i] = shape[i];
    if (t && numel != ts_tensor_numel(t))
        return ts_error(TS_ERR_SHAPE, "safetensors: '%s' shape has %lld elements, tensor has %lld",
                        name, (long long)numel, (long long)ts_tensor_numel(t));
    e->name = strdup(name);
    if (!e->name) return ts_error(TS_ERR_OOM, "no memory");
    e->dtype = dtype, e->ndim = ndim, e->tensor = t, e->host = host;
    e->bytes = (size_t)numel * ts_dtype_size(dtype);
    w->n++;
    return TS_OK;
}

ts_status ts_st_writer_add(ts_st_writer *w, const char *name, const ts_tensor *t, int ndim,
                           const int64_t *shape)
{
    return add_entry(w, name, t->dtype, ndim, shape, t, NULL);
}

ts_status ts_st_writer_add_host(ts_st_writer *w, const char *name, ts_dtype dtype, int ndim,
                                const int64_t *shape, const void *data)
{
    return add_entry(w, name, dtype, ndim, shape, NULL, data);
}

ts_status ts_st_writer_meta(ts_st_writer *w, const char *key, const char *value)
{
    char **mk = realloc(w->mk, (w->nm + 1) * sizeof *mk);
    if (!mk) return ts_error(TS_ERR_OOM, "no memory");
    w->mk = mk;
    char **mv = realloc(w->mv, (w->nm + 1) * sizeof *mv);
    if (!mv) return ts_error(TS_ERR_OOM, "no memory");
    w->mv = mv;
    w->mk[w->nm] = strdup(key);
    w->mv[w->nm] = strdup(value);
    w->nm++;
    return TS_OK;
}

/* Append to a growing string buffer. */
typedef struct sbuf {
    char *s;
    size_t n, cap;
} sbuf;

static int sb_add(sbuf *b, const char *text, size_t len)
{
    if (b->n + len + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 4096) + len;
        char *s = realloc(b->s, cap);
        if (!s) return -1;
        b->s = s, b->cap = cap;
    }
    memcpy(b->s + b->n, text, len);
    b->n += len;
    b->s[b->n] = '\0';
    return 0;
}

static int sb_str(sbuf *b, const char *s)
{
    size_t n = ts_json_escape(NULL, 0, s);
    char *tmp = malloc(n + 1);
    if (!tmp) return -1;
    ts_json_escape(tmp, n + 1, s);
    int rc = sb_add(b, tmp, n);
    free(tmp);
    return rc;
}

ts_status ts_st_writer_write(ts_st_writer *w, const char *path)
{
    sbuf h = {0};
    int bad = sb_add(&h, "{", 1);
    if (w->nm) {
        bad |= sb_add(&h, "\"__metadata__\":{", 16);
        for (size_t i = 0; i < w->nm; i++) {
            if (i) bad |= sb_add(&h, ",", 1);
            bad |= sb_str(&h, w->mk[i]);
            bad |= sb_add(&h, ":", 1);
            bad |= sb_str(&h, w->mv[i]);
        }
        bad |= sb_add(&h, "}", 1);
    }
    uint64_t pos = 0;
    for (size_t i = 0; i < w->n; i++) {
        const wentry *e = &w->e[i];
        char buf[512];
        if (w->nm || i) bad |= sb_add(&h, ",", 1);
        bad |= sb_str(&h, e->name);
        int k = snprintf(buf, sizeof buf, ":{\"dtype\":\"%s\",\"shape\":[", dtype_tag(e->dtype));
        for (int d = 0; d < e->ndim; d++)
            k += snprintf(buf + k, sizeof buf - (size_t)k, d ? ",%lld" : "%lld", (long long)e->shape[d]);
        k += snprintf(buf + k, sizeof buf - (size_t)k, "],\"data_offsets\":[%llu,%llu]}",
                      (unsigned long long)pos, (unsigned long long)(pos + e->bytes));
        bad |= sb_add(&h, buf, (size_t)k);
        pos += e->bytes;
    }
    bad |= sb_add(&h, "}", 1);
    while (!bad && (h.n % 8) != 0) bad |= sb_add(&h, " ", 1); /* align the data to 8 bytes */
    if (bad) {
        free(h.s);
        return ts_error(TS_ERR_OOM, "no memory for a safetensors header");
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
    ts_atomic_file af;
    ts_status st = ts_atomic_open(&af, path);
    if (!st) st = ts_atomic_write(&af, len8, 8);
    if (!st) st = ts_atomic_write(&af, h.s, h.n);
    free(h.s);
    /* Device tensors go through a bounded staging buffer. */
    size_t stage_cap = 0;
    for (size_t i = 0; i < w->n; i++)
        if (w->e[i].tensor && w->e[i].bytes > stage_cap) stage_cap = w->e[i].bytes;
    void *stage = stage_cap ? malloc(stage_cap) : NULL;
    if (stage_cap && !stage && !st) st = ts_error(TS_ERR_OOM, "no memory to stage %zu bytes", stage_cap);
    for (size_t i = 0; i < w->n && !st; i++) {
        const wentry *e = &w->e[i];
        if (e->tensor) {
            st = ts_tensor_read(e->tensor, stage, e->bytes);
            if (!st) st = ts_atomic_write(&af, stage, e->bytes);
        } else {
            st = ts_atomic_write(&af, e->host, e->bytes);
        }
    }
    free(stage);
    if (st) {
        ts_atomic_abort(&af);
        return ts_error_context(st, "writing %s", path);
    }
    return ts_atomic_commit(&af);
}

/* ---- streaming writer ---- */

struct ts_st_stream {
    ts_atomic_file af;
    uint64_t expected, written;
    char path[1024];
};

ts_status ts_st_stream_open(ts_st_stream **out, const char *path, int n, const char *const *names,
                            const int *ndims, const int64_t (*shapes)[2], const char *const *meta_kv)
{
    *out = NULL;
    sbuf h = {0};
    int bad = sb_add(&h, "{", 1), first = 1;
    if (meta_kv && meta_kv[0]) {
        bad |= sb_add(&h, "\"__metadata__\":{", 16);
        for (int i = 0; meta_kv[i]; i += 2) {
            if (i) bad |= sb_add(&h, ",", 1);
            bad |= sb_str(&h, meta_kv[i]);
            bad |= sb_add(&h, ":", 1);
            bad |= sb_str(&h, meta_kv[i + 1]);
        }
        bad |= sb_add(&h, "}", 1);
        first = 0;
    }
    uint64_t pos = 0;
    for (int i = 0; i < n; i++) {
        char buf[256];
        uint64_t bytes = (uint64_t)shapes[i][0] * (uint64_t)(ndims[i] > 1 ? shapes[i][1] : 1) * 4;
        if (!first) bad |= sb_add(&h, ",", 1);
        first = 0;
        bad |= sb_str(&h, names[i]);
        int k = ndims[i] > 1
                    ? snprintf(buf, sizeof buf, ":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],\"data_offsets\":[%llu,%llu]}",
                               (long long)shapes[i][0], (long long)shapes[i][1], (unsigned long long)pos,
                               (unsigned long long)(pos + bytes))
                    : snprintf(buf, sizeof buf, ":{\"dtype\":\"F32\",\"shape\":[%lld],\"data_offsets\":[%llu,%llu]}",
                               (long long)shapes[i][0], (unsigned long long)pos, (unsigned long long)(pos + bytes));
        bad |= sb_add(&h, buf, (size_t)k);
        pos += bytes;
    }
    bad |= sb_add(&h, "}", 1);
    while (!bad && (h.n % 8) != 0) bad |= sb_add(&h, " ", 1);
    if (bad) {
        free(h.s);
        return ts_error(TS_ERR_OOM, "no memory for a safetensors header");
    }
    ts_st_stream *s = calloc(1, sizeof *s);
    if (!s) {
        free(h.s);
        return ts_error(TS_ERR_OOM, "no memory");
    }
    snprintf(s->path, sizeof s->path, "%s", path);
    s->expected = pos;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
    ts_status st = ts_atomic_open(&s->af, path);
    if (!st) st = ts_atomic_write(&s->af, len8, 8);
    if (!st) st = ts_atomic_write(&s->af, h.s, h.n);
    free(h.s);
    if (st) {
        ts_atomic_abort(&s->af);
        free(s);
        return st;
    }
    *out = s;
    return TS_OK;
}

ts_status ts_st_stream_write(ts_st_stream *s, const float *data, int64_t count)
{
    if (s->written + (uint64_t)count * 4 > s->expected)
        return ts_error(TS_ERR_INVALID_ARG, "%s: more data than the header promises", s->path);
    s->written += (uint64_t)count * 4;
    return ts_atomic_write(&s->af, data, (size_t)count * 4);
}

ts_status ts_st_stream_close(ts_st_stream *s, int commit)
{
    if (!s) return TS_OK;
    ts_status st = TS_OK;
    if (commit && s->written != s->expected)
        st = ts_error(TS_ERR_INVALID_ARG, "%s: %llu of %llu data bytes written", s->path,
                      (unsigned long long)s->written, (unsigned long long)s->expected);
    if (commit && !st) st = ts_atomic_commit(&s->af);
    else ts_atomic_abort(&s->af);
    free(s);
    return st;
}
