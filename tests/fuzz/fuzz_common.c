#include "fuzz_common.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[256];
static char files[8][512]; /* the files written, removed at exit */
static int nfiles;

static void cleanup(void)
{
    for (int i = 0; i < nfiles; i++) unlink(files[i]);
    if (dir[0]) rmdir(dir);
}

_Noreturn void fuzz_fail(const char *what)
{
    fprintf(stderr, "fuzz: library invariant broken: %s\n", what);
    abort();
}

const char *fuzz_dir(void)
{
    if (dir[0]) return dir;
    /* tmpfs when there is one: an input is written for every execution */
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof dir, "%s/tessera-fuzz-XXXXXX", base);
    if (!mkdtemp(dir)) {
        perror("fuzz: mkdtemp");
        abort();
    }
    atexit(cleanup);
    return dir;
}

const char *fuzz_write(const char *name, const uint8_t *data, size_t size)
{
    static char file[512];
    if (snprintf(file, sizeof file, "%s/%s", fuzz_dir(), name) >= (int)sizeof file) abort();
    int known = 0;
    for (int i = 0; i < nfiles; i++) known |= !strcmp(files[i], file);
    if (!known) {
        if (nfiles == 8) abort();
        memcpy(files[nfiles++], file, sizeof file);
    }
    int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        perror("fuzz: open");
        abort();
    }
    for (size_t k = 0; k < size;) {
        ssize_t w = write(fd, data + k, size - k);
        if (w <= 0) {
            perror("fuzz: write");
            abort();
        }
        k += (size_t)w;
    }
    close(fd);
    return file;
}

char *fuzz_strndup(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s) abort();
    if (size) memcpy(s, data, size);
    s[size] = '\0';
    return s;
}
