/* Files written atomically (temporary file in the same directory, fsync,
 * rename, fsync of the directory), so a crash mid-write leaves the old file
 * intact; and whole-file reads with clear errors. */
#ifndef TESSERA_FILEIO_H
#define TESSERA_FILEIO_H

#include <stddef.h>
#include <stdio.h>

#include "tessera/status.h"

typedef struct ts_atomic_file {
    FILE *f;
    char path[4096];
    char tmp[4200];
} ts_atomic_file;

ts_status ts_atomic_open(ts_atomic_file *af, const char *path);
ts_status ts_atomic_write(ts_atomic_file *af, const void *data, size_t n);
/* Flush, fsync, rename over path, fsync the directory. */
ts_status ts_atomic_commit(ts_atomic_file *af);
/* Drop the temporary file (after an error). */
void ts_atomic_abort(ts_atomic_file *af);
/* Write a whole buffer to path atomically. */
ts_status ts_write_file_atomic(const char *path, const void *data, size_t n);

/* Read a whole file (NUL-terminated for convenience); caller frees. */
ts_status ts_read_file(const char *path, char **data, size_t *n);
ts_status ts_mkdir_p(const char *path);
/* Open a regular file for reading: *fd and its *size, or an error naming it. */
ts_status ts_open_regular(const char *path, int *fd, size_t *size);
ts_status ts_fsync_dir(const char *dir);

#endif
