#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void dir_of(const char *path, char *out, size_t n)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    snprintf(out, n, "%s", dirname(buf));
}

ts_status ts_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return ts_error(TS_ERR_IO, "cannot open directory %s: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    /* Some file systems refuse fsync on directories; the rename still stands. */
    if (rc != 0 && err != EINVAL && err != EROFS)
        return ts_error(TS_ERR_IO, "fsync of directory %s failed: %s", dir, strerror(err));
    return TS_OK;
}

ts_status ts_mkdir_p(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return ts_error(TS_ERR_IO, "path too long: %s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return ts_error(TS_ERR_IO, "cannot create directory %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return ts_error(TS_ERR_IO, "cannot create directory %s: %s", buf, strerror(errno));
    struct stat sb;
    if (stat(buf, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return ts_error(TS_ERR_IO, "%s exists and is not a directory", buf);
    return TS_OK;
}

ts_status ts_atomic_open(ts_atomic_file *af, const char *path)
{
    memset(af, 0, sizeof af[0]);
    if (snprintf(af->path, sizeof af->path, "%s", path) >= (int)sizeof af->path)
        return ts_error(TS_ERR_IO, "path too long: %s", path);
    char dir[4096];
    dir_of(path, dir, sizeof dir);
    snprintf(af->tmp, sizeof af->tmp, "%s/.tmp-tessera-XXXXXX", dir);
    int fd = mkstemp(af->tmp);
    if (fd < 0) {
        af->tmp[0] = '\0';
        return ts_error(TS_ERR_IO, "cannot create a file in %s: %s", dir, strerror(errno));
    }
    af->f = fdopen(fd, "wb");
    if (!af->f) {
        close(fd);
        unlink(af->tmp);
        af->tmp[0] = '\0';
        return ts_error(TS_ERR_IO, "cannot open %s: %s", af->tmp, strerror(errno));
    }
    return TS_OK;
}

ts_status ts_atomic_write(ts_atomic_file *af, const void *data, size_t n)
{
    if (n && fwrite(data, 1, n, af->f) != n)
        return ts_error(TS_ERR_IO, "writing %s failed: %s", af->path, strerror(errno));
    return TS_OK;
}

void ts_atomic_abort(ts_atomic_file *af)
{
    if (af->f) fclose(af->f);
    af->f = NULL;
    if (af->tmp[0]) unlink(af->tmp);
    af->tmp[0] = '\0';
}

ts_status ts_atomic_commit(ts_atomic_file *af)
{
    if (fflush(af->f) != 0 || fsync(fileno(af->f)) != 0) {
        ts_status st = ts_error(TS_ERR_IO, "flushing %s failed: %s", af->path, strerror(errno));
        ts_atomic_abort(af);
        return st;
    }
    fchmod(fileno(af->f), 0644);
    if (fclose(af->f) != 0) {
        af->f = NULL;
        ts_status st = ts_error(TS_ERR_IO, "closing %s failed: %s", af->path, strerror(errno));
        ts_atomic_abort(af);
        return st;
    }
    af->f = NULL;
    if (rename(af->tmp, af->path) != 0) {
        ts_status st = ts_error(TS_ERR_IO, "renaming to %s failed: %s", af->path, strerror(errno));
        ts_atomic_abort(af);
        return st;
    }
    af->tmp[0] = '\0';
    char dir[4096];
    dir_of(af->path, dir, sizeof dir);
    return ts_fsync_dir(dir);
}

ts_status ts_write_file_atomic(const char *path, const void *data, size_t n)
{
    ts_atomic_file af;
    ts_status st = ts_atomic_open(&af, path);
    if (st) return st;
    if ((st = ts_atomic_write(&af, data, n))) {
        ts_atomic_abort(&af);
        return st;
    }
    return ts_atomic_commit(&af);
}

ts_status ts_read_file(const char *path, char **data, size_t *n)
{
    *data = NULL;
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return ts_error(TS_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return ts_error(TS_ERR_IO, "%s is not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    char *buf = malloc(size + 1);
    if (!buf) {
        fclose(f);
        return ts_error(TS_ERR_OOM, "no memory to read %s (%zu bytes)", path, size);
    }
    if (size && fread(buf, 1, size, f) != size) {
        free(buf);
        fclose(f);
        return ts_error(TS_ERR_IO, "reading %s failed", path);
    }
    fclose(f);
    buf[size] = '\0';
    *data = buf;
    *n = size;
    return TS_OK;
}

ts_status ts_open_regular(const char *path, int *fd, size_t *size)
{
    *fd = open(path, O_RDONLY);
    if (*fd < 0) return ts_error(TS_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(*fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(*fd);
        *fd = -1;
        return ts_error(TS_ERR_IO, "%s is not a regular file", path);
    }
    *size = (size_t)sb.st_size;
    return TS_OK;
}
