#include "harness.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct th_test {
    char *name;
    th_fn fn;
    void *arg;
    int owned;
} th_test;

static th_test *tests;
static int ntests, captests;
static int cur_failed, cur_skipped;
static int printing = 1;
static int (*combiner)(int failed);

void th_set_printing(int print) { printing = print; }
void th_set_combiner(int (*combine)(int failed)) { combiner = combine; }
static char skip_reason[512];

void th_add(const char *name, th_fn fn, void *arg)
{
    if (ntests == captests) {
        captests = captests ? captests * 2 : 64;
        tests = realloc(tests, (size_t)captests * sizeof *tests);
        if (!tests) {
            fprintf(stderr, "test harness: out of memory\n");
            exit(99);
        }
    }
    tests[ntests].name = strdup(name);
    tests[ntests].fn = fn;
    tests[ntests].arg = arg;
    tests[ntests].owned = 0;
    ntests++;
}

void th_add_owned(const char *name, th_fn fn, void *arg)
{
    th_add(name, fn, arg);
    tests[ntests - 1].owned = 1;
}

static void vnote(const char *prefix, const char *fmt, va_list ap)
{
    char buf[16384];
    vsnprintf(buf, sizeof buf, fmt, ap);
    if (!printing && !combiner) return;
    if (!printing) { /* diagnostics of other processes go to stderr */
        fprintf(stderr, "# %s%s\n", prefix, buf);
        return;
    }
    /* Every line of a diagnostic is a TAP comment. */
    char *line = buf;
    while (line && *line) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        printf("# %s%s\n", prefix, line);
        line = nl ? nl + 1 : NULL;
        prefix = "  ";
    }
}

void th_fail(const char *file, int line, const char *fmt, ...)
{
    char prefix[256];
    snprintf(prefix, sizeof prefix, "%s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vnote(prefix, fmt, ap);
    va_end(ap);
    cur_failed++;
}

void th_skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(skip_reason, sizeof skip_reason, fmt, ap);
    va_end(ap);
    for (char *p = skip_reason; *p; p++)
        if (*p == '\n' || *p == '#') *p = ' ';
    cur_skipped = 1;
}

void th_note(const char *fmt, ...)
{
    if (!printing) return; /* notes come from the printing process only */
    va_list ap;
    va_start(ap, fmt);
    vnote("", fmt, ap);
    va_end(ap);
}

int th_current_failed(void) { return cur_failed; }

static int selected(const char *name, int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strstr(name, argv[i])) return 0;
    return 1;
}

int th_run(int argc, char **argv)
{
    int n = 0;
    for (int i = 0; i < ntests; i++) n += selected(tests[i].name, argc, argv);
    if (printing) {
        printf("TAP version 13\n1..%d\n", n);
        fflush(stdout);
    }
    int k = 0, failures = 0;
    for (int i = 0; i < ntests; i++) {
        if (!selected(tests[i].name, argc, argv)) continue;
        cur_failed = cur_skipped = 0;
        skip_reason[0] = '\0';
        ts_clear_error();
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        tests[i].fn(tests[i].arg);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
        k++;
        if (combiner) cur_failed = combiner(cur_failed);
        if (cur_failed) failures++;
        if (printing) {
            if (cur_failed) printf("not ok %d - %s\n", k, tests[i].name);
            else if (cur_skipped) printf("ok %d - %s # SKIP %s\n", k, tests[i].name, skip_reason);
            else printf("ok %d - %s\n", k, tests[i].name);
            if (ms > 2000) printf("# %s took %.1f s\n", tests[i].name, ms / 1e3);
            fflush(stdout);
        }
    }
    for (int i = 0; i < ntests; i++) {
        free(tests[i].name);
        if (tests[i].owned) free(tests[i].arg);
    }
    free(tests);
    tests = NULL;
    ntests = captests = 0;
    ts_shutdown();
    return failures ? 1 : 0;
}
