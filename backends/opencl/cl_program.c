/* OpenCL programs: sources, lazy builds, the in-memory and on-disk caches.
 *
 * A program is one kernels/<file>.cl, prefixed with kernels/common.cl, built
 * for one device with that device's -D options. TESSERA_KERNEL_DIR=<dir>
 * reads sources from a directory instead of the embedded copies (edit a
 * kernel without rebuilding tessera).
 *
 * Disk cache: $TESSERA_CACHE_DIR, else $XDG_CACHE_HOME/tessera/kernels, else
 * ~/.cache/tessera/kernels ("off" disables it). An entry's key is the text
 * of everything that decides the binary: source hash, options, device name,
 * device version, driver version, platform version. The file stores the key
 * in full (a hash collision cannot serve a wrong binary) and a checksum of
 * the binary; a missing, corrupt, truncated or stale entry is rebuilt from
 * source and rewritten, never fatal. Writes go to a temporary file that is
 * fsync'ed and renamed over the entry. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cl_internal.h"
#include "internal.h"
#include "cl_kernels.h"

#define CACHE_MAGIC "TSCLBIN1"

static uint64_t fnv1a(const void *data, size_t n, uint64_t h)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}
#define FNV_INIT 14695981039346656037ull

/* ---- sources ---- */

static char *read_whole_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0) {
            buf = malloc((size_t)n + 1);
            if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) {
                buf[n] = '\0';
                *size = (size_t)n;
            } else {
                free(buf);
                buf = NULL;
            }
        }
    }
    fclose(f);
    return buf;
}

/* The text of kernels/<file>: from TESSERA_KERNEL_DIR if it has the file,
 * else the embedded copy. Caller frees. */
static char *kernel_text(const char *file, ts_status *st)
{
    const char *dir = getenv("TESSERA_KERNEL_DIR");
    if (dir && *dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, file);
        size_t n;
        char *text = read_whole_file(path, &n);
        if (text) return text;
    }
    for (int i = 0; i < ts_embedded_kernel_count; i++) {
        if (!strcmp(ts_embedded_kernels[i].name, file)) {
            char *text = malloc(ts_embedded_kernels[i].size + 1);
            if (!text) break;
            memcpy(text, ts_embedded_kernels[i].data, ts_embedded_kernels[i].size + 1);
            return text;
        }
    }
    *st = ts_error(TS_ERR_BUILD, "no kernel source named %s", file);
    return NULL;
}

/* common.cl, then the file, with a #line so build logs name the file. */
static char *program_source(const char *file, ts_status *st)
{
    char *common = kernel_text("common.cl", st);
    if (!common) return NULL;
    char *body = kernel_text(file, st);
    if (!body) {
        free(common);
        return NULL;
    }
    size_t n = strlen(common) + strlen(body) + strlen(file) + 64;
    char *src = malloc(n);
    if (src) snprintf(src, n, "%s\n#line 1 \"%s\"\n%s", common, file, body);
    else *st = ts_error(TS_ERR_OOM, "no memory for kernel source");
    free(common);
    free(body);
    return src;
}

/* ---- disk cache ---- */

static int cache_dir(char *out, size_t n)
{
    const char *env = getenv("TESSERA_CACHE_DIR");
    if (env && !strcmp(env, "off")) return 0;
    if (env && *env) snprintf(out, n, "%s", env);
    else if (getenv("XDG_CACHE_HOME") && *getenv("XDG_CACHE_HOME"))
        snprintf(out, n, "%s/tessera/kernels", getenv("XDG_CACHE_HOME"));
    else if (getenv("HOME") && *getenv("HOME"))
        snprintf(out, n, "%s/.cache/tessera/kernels", getenv("HOME"));
    else
        return 0;
    return 1;
}

static int mkdir_p(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
            *p = '/';
        }
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
    return 0;
}

static char *cache_key(const ts_cl_device *d, const char *src)
{
    uint64_t h = fnv1a(src, strlen(src), FNV_INIT);
    size_t n = 2048;
    char *key = malloc(n);
    if (!key) return NULL;
    snprintf(key, n,
             "tessera kernel cache v1\nsource-fnv1a64: %016llx\nsource-bytes: %zu\n"
             "options: %s\ndevice: %s\ndevice-version: %s\ndriver: %s\nplatform: %s\n",
             (unsigned long long)h, strlen(src), d->options, d->name, d->device_version,
             d->driver, d->platform_version);
    return key;
}

static void cache_path(const char *dir, const char *key, const char *file, char *out, size_t n)
{
    uint64_t h = fnv1a(key, strlen(key), FNV_INIT);
    char stem[64];
    snprintf(stem, sizeof stem, "%s", file);
    char *dot = strrchr(stem, '.');
    if (dot) *dot = '\0';
    snprintf(out, n, "%s/%s-%016llx.bin", dir, stem, (unsigned long long)h);
}

/* The binary stored for key at path, or NULL (missing, corrupt, stale). */
static unsigned char *cache_load(const char *path, const char *key, size_t *bin_size, int *rejected)
{
    size_t n;
    char *data = read_whole_file(path, &n);
    *rejected = 0;
    if (!data) return NULL;
    size_t klen = strlen(key), pos = 0;
    uint32_t stored_klen;
    uint64_t blen, sum;
    unsigned char *bin = NULL;
    if (n < 8 + 4 || memcmp(data, CACHE_MAGIC, 8) != 0) goto bad;
    pos = 8;
    memcpy(&stored_klen, data + pos, 4);
    pos += 4;
    if (stored_klen != klen || n - pos < klen + 16) goto bad;
    if (memcmp(data + pos, key, klen) != 0) goto bad;
    pos += klen;
    memcpy(&blen, data + pos, 8);
    pos += 8;
    if (blen == 0 || n - pos != blen + 8) goto bad;
    memcpy(&sum, data + pos + blen, 8);
    if (fnv1a(data + pos, blen, FNV_INIT) != sum) goto bad;
    bin = malloc(blen);
    if (!bin) goto bad;
    memcpy(bin, data + pos, blen);
    *bin_size = blen;
    free(data);
    return bin;
bad:
    *rejected = 1;
    free(data);
    return NULL;
}

static void cache_store(const char *dir, const char *path, const char *key,
                        const unsigned char *bin, size_t blen)
{
    if (mkdir_p(dir) != 0) {
        ts_log(TS_LOG_INFO, "kernel cache: cannot create %s: %s", dir, strerror(errno));
        return;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s/.tmp-XXXXXX", dir);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        ts_log(TS_LOG_INFO, "kernel cache: cannot write in %s: %s", dir, strerror(errno));
        return;
    }
    uint32_t klen = (uint32_t)strlen(key);
    uint64_t b64 = blen, sum = fnv1a(bin, blen, FNV_INIT);
    FILE *f = fdopen(fd, "wb");
    int ok = f && fwrite(CACHE_MAGIC, 1, 8, f) == 8 && fwrite(&klen, 4, 1, f) == 1 &&
             fwrite(key, 1, klen, f) == klen && fwrite(&b64, 8, 1, f) == 1 &&
             fwrite(bin, 1, blen, f) == blen && fwrite(&sum, 8, 1, f) == 1 && fflush(f) == 0 &&
             fsync(fd) == 0;
    if (f) fclose(f);
    else close(fd);
    if (!ok || rename(tmp, path) != 0) {
        ts_log(TS_LOG_INFO, "kernel cache: writing %s failed: %s", path, strerror(errno));
        unlink(tmp);
    }
}

/* ---- building ---- */

static ts_status build_log_error(ts_cl_device *d, cl_program prog, cl_int err, const char *file)
{
    size_t n = 0;
    clGetProgramBuildInfo(prog, d->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &n);
    char *log = malloc(n + 1);
    if (log) {
        log[0] = '\0';
        if (n) clGetProgramBuildInfo(prog, d->device, CL_PROGRAM_BUILD_LOG, n, log, NULL);
        log[n] = '\0';
    }
    ts_status st = ts_error(TS_ERR_BUILD,
                            "building kernels/%s for %s (%s) failed: %s (%d); options: %s; "
                            "build log:\n%s",
                            file, d->info_id, d->name, ts_cl_error_name(err), (int)err, d->options,
                            log && *log ? log : "(empty)");
    free(log);
    return st;
}

static ts_status build_program(ts_cl_device *d, const char *file, cl_program *out)
{
    ts_status st = TS_OK;
    char *src = program_source(file, &st);
    if (!src) return st;
    double t0 = ts_now();
    char dir[4096], path[4300];
    char *key = NULL;
    int use_cache = cache_dir(dir, sizeof dir);
    if (use_cache) {
        key = cache_key(d, src);
        if (!key) use_cache = 0;
        else cache_path(dir, key, file, path, sizeof path);
    }
    cl_int err;
    if (use_cache) {
        size_t blen = 0;
        int rejected = 0;
        unsigned char *bin = cache_load(path, key, &blen, &rejected);
        if (bin) {
            cl_int bin_status;
            const unsigned char *bins[1] = {bin};
            cl_program prog = clCreateProgramWithBinary(d->context, 1, &d->device, &blen, bins,
                                                        &bin_status, &err);
            free(bin);
            if (err == CL_SUCCESS && bin_status == CL_SUCCESS &&
                clBuildProgram(prog, 1, &d->device, d->options, NULL, NULL) == CL_SUCCESS) {
                d->stats.loaded_from_disk++;
                d->stats.build_seconds += ts_now() - t0;
                ts_log(TS_LOG_DEBUG, "kernels/%s for %s: loaded from %s", file, d->info_id, path);
                free(key);
                free(src);
                *out = prog;
                return TS_OK;
            }
            if (prog) clReleaseProgram(prog);
            rejected = 1;
        }
        if (rejected) {
            d->stats.disk_rejected++;
            ts_log(TS_LOG_INFO, "kernel cache entry %s is unusable; rebuilding", path);
        }
    }
    const char *srcs[1] = {src};
    cl_program prog = clCreateProgramWithSource(d->context, 1, srcs, NULL, &err);
    if (err != CL_SUCCESS) {
        free(key);
        free(src);
        return ts_cl_fail(err, "clCreateProgramWithSource", d);
    }
    err = clBuildProgram(prog, 1, &d->device, d->options, NULL, NULL);
    if (err != CL_SUCCESS) {
        st = build_log_error(d, prog, err, file);
        clReleaseProgram(prog);
        free(key);
        free(src);
        return st;
    }
    d->stats.built_from_source++;
    if (use_cache) {
        size_t blen = 0;
        if (clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof blen, &blen, NULL) ==
                CL_SUCCESS &&
            blen > 0) {
            unsigned char *bin = malloc(blen);
            unsigned char *bins[1] = {bin};
            if (bin && clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof bins, bins, NULL) ==
                           CL_SUCCESS)
                cache_store(dir, path, key, bin, blen);
            free(bin);
        }
    }
    d->stats.build_seconds += ts_now() - t0;
    free(key);
    free(src);
    *out = prog;
    return TS_OK;
}

/* The program of `file`, built (or loaded) on first request. */
static ts_status find_or_build(ts_cl_device *d, const char *file, ts_cl_program **out)
{
    ts_cl_program *p = d->programs;
    while (p && strcmp(p->file, file) != 0) p = p->next;
    if (!p) {
        cl_program prog;
        ts_status st = build_program(d, file, &prog);
        if (st) return st;
        p = calloc(1, sizeof *p);
        if (!p) {
            clReleaseProgram(prog);
            return ts_error(TS_ERR_OOM, "no memory for a program record");
        }
        snprintf(p->file, sizeof p->file, "%s", file);
        p->program = prog;
        p->next = d->programs;
        d->programs = p;
    }
    *out = p;
    return TS_OK;
}

ts_status ts_cl_get_kernel(ts_cl_device *d, const char *file, const char *name, cl_kernel *out)
{
    ts_status st = ts_cl_ensure_ready(d);
    if (st) return st;
    ts_cl_program *p;
    if ((st = find_or_build(d, file, &p))) return st;
    for (ts_cl_kernel_entry *k = p->kernels; k; k = k->next) {
        if (!strcmp(k->name, name)) {
            *out = k->kernel;
            return TS_OK;
        }
    }
    cl_int err;
    cl_kernel kernel = clCreateKernel(p->program, name, &err);
    if (err != CL_SUCCESS)
        return ts_error(TS_ERR_BUILD, "kernel %s not found in kernels/%s for %s: %s", name, file,
                        d->info_id, ts_cl_error_name(err));
    ts_cl_kernel_entry *k = calloc(1, sizeof *k);
    if (!k) {
        clReleaseKernel(kernel);
        return ts_error(TS_ERR_OOM, "no memory for a kernel record");
    }
    snprintf(k->name, sizeof k->name, "%s", name);
    k->kernel = kernel;
    k->next = p->kernels;
    p->kernels = k;
    *out = kernel;
    return TS_OK;
}

void ts_cl_release_programs(ts_cl_device *d)
{
    ts_cl_program *p = d->programs;
    while (p) {
        ts_cl_kernel_entry *k = p->kernels;
        while (k) {
            ts_cl_kernel_entry *next = k->next;
            clReleaseKernel(k->kernel);
            free(k);
            k = next;
        }
        clReleaseProgram(p->program);
        ts_cl_program *next = p->next;
        free(p);
        p = next;
    }
    d->programs = NULL;
}

ts_status ts_cl_prepare(ts_device *dev)
{
    ts_cl_device *d = dev->context;
    ts_status st = ts_cl_ensure_ready(d);
    if (st) return st;
    for (int i = 0; i < ts_embedded_kernel_count; i++) {
        const char *file = ts_embedded_kernels[i].name;
        if (!strcmp(file, "common.cl")) continue;
        ts_cl_program *p;
        if ((st = find_or_build(d, file, &p))) return st;
    }
    return TS_OK;
}

void ts_cl_get_build_stats(ts_device *dev, ts_build_stats *out)
{
    const ts_cl_device *d = dev->context;
    out->built_from_source = d->stats.built_from_source;
    out->loaded_from_disk = d->stats.loaded_from_disk;
    out->cache_rejected = d->stats.disk_rejected;
    out->seconds = d->stats.build_seconds;
}
