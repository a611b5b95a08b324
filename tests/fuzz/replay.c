/* Corpus replay for the normal build: feeds every file of the directories
 * (or files) named on the command line to the harness's
 * LLVMFuzzerTestOneInput and prints TAP, one case per argument. A crash or
 * a sanitizer report fails the test. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"

#ifndef FUZZ_HARNESS
#define FUZZ_HARNESS "fuzz"
#endif

/* Run one file; 0 if it could not be read. */
static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return 0;
    }
    size_t n = (size_t)sb.st_size;
    uint8_t *buf = malloc(n ? n : 1); /* exactly n bytes: overreads are caught */
    int ok = buf && fread(buf, 1, n, f) == n;
    fclose(f);
    if (ok) LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return ok;
}

int main(int argc, char **argv)
{
    printf("1..%d\n", argc - 1);
    int failed = 0;
    for (int a = 1; a < argc; a++) {
        struct stat sb;
        int handled = 0, unreadable = 0;
        if (stat(argv[a], &sb) == 0 && S_ISDIR(sb.st_mode)) {
            struct dirent **list;
            int n = scandir(argv[a], &list, NULL, alphasort);
            for (int i = 0; i < n; i++) {
                if (list[i]->d_name[0] != '.') {
                    char path[4096];
                    snprintf(path, sizeof path, "%s/%s", argv[a], list[i]->d_name);
                    if (run_file(path)) handled++;
                    else unreadable++;
                }
                free(list[i]);
            }
            if (n >= 0) free(list);
            else unreadable++;
        } else if (run_file(argv[a])) {
            handled++;
        } else {
            unreadable++;
        }
        int ok = handled > 0 && !unreadable;
        failed |= !ok;
        printf("%sok %d - %s: %d corpus inputs handled", ok ? "" : "not ", a, FUZZ_HARNESS, handled);
        if (unreadable) printf(" (%d unreadable)", unreadable);
        printf(" (%s)\n", argv[a]);
        fflush(stdout);
    }
    return failed;
}
