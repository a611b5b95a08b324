#include "harness.h"

#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* a child's exit status when it selects other tests than its parent, or
 * sees other devices behind their ids */
#define TH_EXIT_OTHER_TESTS 3

typedef struct th_test {
    char *name;
    th_fn fn;
    void *arg;
    int owned;
} th_test;

static th_test *tests;
static int ntests, captests;
static int cur_failed, cur_skipped;
static int printing = 1, multiprocess;
static int (*combiner)(int failed);

void th_set_printing(int print)
{
    printing = print;
    multiprocess = 1;
}
void th_set_combiner(int (*combine)(int failed))
{
    combiner = combine;
    multiprocess = 1;
}
static char skip_reason[512];
static char header[8192];

void th_header(const char *fmt, ...)
{
    size_t n = strlen(header);
    if (n + 4 >= sizeof header) return;
    memcpy(header + n, "# ", 2);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(header + n + 2, sizeof header - n - 3, fmt, ap);
    va_end(ap);
    n = strlen(header);
    if (n + 1 < sizeof header) memcpy(header + n, "\n", 2);
}

void th_header_devices(void)
{
    static const char *types[] = {"CPU", "GPU", "accelerator", "other"};
    for (int d = 0; d < ts_device_count(); d++) {
        const ts_device_info *i = ts_device_get_info(ts_device_at(d));
        th_header("%s: %s, %s-type (%s): %s", i->id, i->name,
                  (unsigned)i->type < 4 ? types[i->type] : "?", i->version, i->details);
    }
}

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

/* Does name contain one of the '|'-separated alternatives of pattern? */
static int matches(const char *name, const char *pattern)
{
    char alt[256];
    for (const char *p = pattern;;) {
        size_t n = strcspn(p, "|");
        if (n < sizeof alt) {
            memcpy(alt, p, n);
            alt[n] = '\0';
            if (strstr(name, alt)) return 1;
        }
        if (!p[n]) return 0;
        p += n + 1;
    }
}

/* Selected: the name matches every argument (each a|b|c of alternatives),
 * and none of those written !pattern. */
static int selected(const char *name, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        int negate = argv[i][0] == '!';
        if (matches(name, argv[i] + negate) == negate) return 0;
    }
    return 1;
}

/* Run the selected tests from number `first` (1-based) on, in this process. */
static int run_here(int argc, char **argv, int first)
{
    int k = 0, failures = 0;
    for (int i = 0; i < ntests; i++) {
        if (!selected(tests[i].name, argc, argv)) continue;
        if (++k < first) continue;
        cur_failed = cur_skipped = 0;
        skip_reason[0] = '\0';
        ts_clear_error();
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        tests[i].fn(tests[i].arg);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
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
    return failures;
}

/* ---- isolation: the tests run in a child process; when it dies (a
 * signal, a sanitizer report), the test it was in is reported as failed
 * with the cause and a new child goes on from the next test. ---- */

typedef struct diag_state {
    int count;          /* oclgrind diagnostics seen in the current test */
    char first[3][512]; /* the first few, summarised */
    char headline[256]; /* last unindented line: the message of a block */
} diag_state;

/* oclgrind reports problems on stderr as blocks: a message line, then
 * indented "Kernel:", "Entity:" and "At line N ... of FILE:" lines (or
 * "Oclgrind - OpenCL runtime error detected" for API errors). */
static void diag_line(diag_state *d, const char *line)
{
    const char *p = line;
    while (*p == ' ' || *p == '\t') p++;
    int indented = p != line;
    if (!indented && *p) {
        snprintf(d->headline, sizeof d->headline, "%s", p);
        if (!strncmp(p, "Oclgrind - OpenCL runtime error", 31) || !strncmp(p, "OCLGRIND FATAL", 14)) {
            if (d->count < 3) snprintf(d->first[d->count], sizeof d->first[0], "%s", p);
            d->count++;
        }
        return;
    }
    if (!strncmp(p, "Kernel:", 7)) {
        if (d->count < 3)
            snprintf(d->first[d->count], sizeof d->first[0], "%s (kernel %s)", d->headline,
                     p + 7 + strspn(p + 7, " "));
        d->count++;
    } else if (!strncmp(p, "At line", 7) && d->count >= 1 && d->count <= 3) {
        size_t n = strlen(d->first[d->count - 1]);
        snprintf(d->first[d->count - 1] + n, sizeof d->first[0] - n, " %s", p);
    } else if (!strncmp(p, "Function:", 9) && d->count >= 1 && d->count <= 3) {
        size_t n = strlen(d->first[d->count - 1]);
        snprintf(d->first[d->count - 1] + n, sizeof d->first[0] - n, " (%s)", p);
    }
}

static const char *test_name(int argc, char **argv, int number)
{
    int k = 0;
    for (int i = 0; i < ntests; i++)
        if (selected(tests[i].name, argc, argv) && ++k == number) return tests[i].name;
    return "?";
}

/* This process's own command line (main may have shifted argv before
 * th_run), for the child to start exactly as this process did. */
static char **own_command_line(void)
{
    FILE *f = fopen("/proc/self/cmdline", "rb");
    if (!f) return NULL;
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    if (n == 0 || n >= sizeof buf - 1) return NULL;
    buf[n] = '\0';
    static char *args[1024];
    int k = 0;
    for (size_t i = 0; i < n && k < 1023; i += strlen(buf + i) + 1) args[k++] = buf + i;
    args[k] = NULL;
    return args;
}

static unsigned long long fnv1a(unsigned long long h, const char *s)
{
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* What a child must select to number the tests as its parent does: the
 * selected names and the devices behind their ids (the header names them),
 * FNV-1a. */
static unsigned long long selection_print(int argc, char **argv)
{
    unsigned long long h = fnv1a(1469598103934665603ull, header);
    for (int i = 0; i < ntests; i++)
        if (selected(tests[i].name, argc, argv)) h = fnv1a(fnv1a(h, tests[i].name), "\n");
    return h;
}

/* Relay one child's output from test `first` on. Returns the number of the
 * last test it reported; *status is its wait status. */
static int relay_child(char **argv, int first, unsigned long long expected, int *failures, int *status,
                       int oclgrind)
{
    char **cmdline = own_command_line();
    if (cmdline) argv = cmdline;
    int fd[2];
    if (pipe(fd)) return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(fd[1], 1);
        dup2(fd[1], 2);
        close(fd[0]);
        close(fd[1]);
        char from[32], print[32];
        snprintf(from, sizeof from, "%d", first);
        snprintf(print, sizeof print, "%llx", expected);
        setenv("TH_CHILD_FROM", from, 1);
        setenv("TH_CHILD_SELECTION", print, 1);
        execv("/proc/self/exe", argv);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(fd[1]);
    FILE *in = fdopen(fd[0], "r");
    char line[65536];
    int last = first - 1;
    diag_state d;
    memset(&d, 0, sizeof d);
    while (in && fgets(line, sizeof line, in)) {
        size_t n = strlen(line);
        if (n && line[n - 1] == '\n') line[n - 1] = '\0';
        int ok = !strncmp(line, "ok ", 3), notok = !strncmp(line, "not ok ", 7);
        if (ok || notok) {
            last = atoi(line + (ok ? 3 : 7));
            if (d.count && ok && !strstr(line, "# SKIP")) {
                printf("not ok%s\n", line + 2);
                notok = 1;
            } else {
                printf("%s\n", line);
            }
            if (d.count) {
                printf("# oclgrind reported %d problem%s in this test:\n", d.count,
                       d.count == 1 ? "" : "s");
                for (int i = 0; i < d.count && i < 3; i++) printf("#   %s\n", d.first[i]);
            }
            if (notok) (*failures)++;
            memset(&d, 0, sizeof d);
            fflush(stdout);
        } else if (line[0] == '#') {
            printf("%s\n", line);
        } else {
            if (oclgrind) diag_line(&d, line);
            fprintf(stderr, "%s\n", line);
        }
    }
    if (in) fclose(in);
    while (waitpid(pid, status, 0) < 0) {
    }
    if (d.count) { /* diagnostics after the last result: the test that died */
        printf("# oclgrind reported %d problem%s before the process ended:\n", d.count,
               d.count == 1 ? "" : "s");
        for (int i = 0; i < d.count && i < 3; i++) printf("#   %s\n", d.first[i]);
    }
    return last;
}

static int supervise(int argc, char **argv, int n)
{
    int failures = 0, next = 1, exit_code = 0;
    int oclgrind = getenv("TH_OCLGRIND") && *getenv("TH_OCLGRIND") == '1';
    unsigned long long print = selection_print(argc, argv);
    while (next <= n) {
        int status = 0;
        int last = relay_child(argv, next, print, &failures, &status, oclgrind);
        if (last < 0) {
            printf("# cannot start a test process: running the tests in this one\n");
            return run_here(argc, argv, next);
        }
        if (last < next && WIFEXITED(status) && WEXITSTATUS(status) == TH_EXIT_OTHER_TESTS) {
            /* NVIDIA's OpenCL, for one, hides its GPUs from the children of
             * a process that has listed them */
            printf("# a test process does not see this one's devices: the remaining tests run in this one\n");
            fflush(stdout);
            return run_here(argc, argv, next) || failures ? 1 : 0;
        }
        if (last >= n) {
            if (WIFEXITED(status) && WEXITSTATUS(status) > 1) exit_code = WEXITSTATUS(status);
            else if (WIFSIGNALED(status)) exit_code = 128 + WTERMSIG(status);
            break;
        }
        /* The child ended inside test last + 1. */
        char why[128];
        if (WIFSIGNALED(status))
            snprintf(why, sizeof why, "killed by signal %d (%s)", WTERMSIG(status),
                     strsignal(WTERMSIG(status)));
        else
            snprintf(why, sizeof why, "the process exited with status %d inside the test",
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        printf("not ok %d - %s\n# crashed: %s; the remaining tests run in a new process\n",
               last + 1, test_name(argc, argv, last + 1), why);
        fflush(stdout);
        failures++;
        next = last + 2;
    }
    return failures ? 1 : exit_code;
}

static void release_tests(void)
{
    for (int i = 0; i < ntests; i++) {
        free(tests[i].name);
        if (tests[i].owned) free(tests[i].arg);
    }
    free(tests);
    tests = NULL;
    ntests = captests = 0;
}

int th_run(int argc, char **argv)
{
    int n = 0;
    for (int i = 0; i < ntests; i++) n += selected(tests[i].name, argc, argv);
    const char *from = getenv("TH_CHILD_FROM");
    const char *iso = getenv("TH_ISOLATE");
    int rc;
    if (from && *from) { /* a child of supervise(): no plan, numbers go on */
        int first = atoi(from);
        const char *print = getenv("TH_CHILD_SELECTION");
        unsigned long long expected = print ? strtoull(print, NULL, 16) : 0, here = selection_print(argc, argv);
        if (getenv("TH_TEST_CHILD_DIFFERS")) here ^= 1; /* tests/test_harness.sh: as NVIDIA's children do */
        unsetenv("TH_CHILD_FROM");
        unsetenv("TH_CHILD_SELECTION");
        if (print && expected != here) { /* other devices here: the numbers would name other tests */
            fprintf(stderr, "test process: other tests or devices than in the parent (%d tests selected here)\n", n);
            rc = TH_EXIT_OTHER_TESTS;
        } else {
            rc = run_here(argc, argv, first) ? 1 : 0;
        }
    } else {
        if (printing) {
            printf("TAP version 13\n1..%d\n%s", n, header);
            fflush(stdout);
        }
        if (!multiprocess && !(iso && *iso == '0') && n > 0)
            rc = supervise(argc, argv, n);
        else
            rc = run_here(argc, argv, 1) ? 1 : 0;
    }
    release_tests();
    ts_shutdown();
    return rc;
}
