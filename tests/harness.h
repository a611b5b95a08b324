/* A small TAP producer for meson's `protocol: 'tap'`.
 *
 * Tests are functions registered by name (statically with TEST/th_add, or
 * built at run time for op x device x shape matrices). Each prints one
 * `ok N - name`, `not ok N - name` or `ok N - name # SKIP reason` line;
 * diagnostics go out as `# ...` comments. A failed check records the file,
 * line and message and lets the test go on; REQUIRE stops it. */
#ifndef TESSERA_TEST_HARNESS_H
#define TESSERA_TEST_HARNESS_H

#include <stdio.h>

#include "tessera/tessera.h"

typedef void (*th_fn)(void *arg);

/* Register a test; name is copied, arg is passed to fn. th_add_owned
 * frees arg (malloc'ed) when the run ends. */
void th_add(const char *name, th_fn fn, void *arg);
void th_add_owned(const char *name, th_fn fn, void *arg);
/* Run the registered tests whose names contain every argv[1..] substring
 * (or all; an argument "a|b" matches names containing a or b, "!a" those
 * without a); print TAP;
 * return the process exit code. Single-process tests run in a child
 * process (TH_ISOLATE=0: in this one): a crash fails the test it happened
 * in, names the signal, and the rest still run. With TH_OCLGRIND=1, any
 * oclgrind diagnostic on the child's stderr fails the test it came from. */
int th_run(int argc, char **argv);

/* Multi-process tests (MPI): only a printing process writes TAP, and after
 * each test `combine` turns this process's failure count into the group's
 * (e.g. an allreduce), so every process agrees on the verdict. */
void th_set_printing(int print);
void th_set_combiner(int (*combine)(int failed));

/* A comment printed after the plan, before the first test (e.g. which route
 * each device takes). */
void th_header(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The header lines naming every device's route: type, GEMM route,
 * work-group sizes (from its details). */
void th_header_devices(void);

void th_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void th_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void th_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int th_current_failed(void);

#define TEST(name)                                                                                 \
    static void name##_body(void);                                                                 \
    static void name(void *arg_)                                                                   \
    {                                                                                              \
        (void)arg_;                                                                                \
        name##_body();                                                                             \
    }                                                                                              \
    static void name##_body(void)

#define TH_ADD(fn) th_add(#fn, fn, NULL)

#define EXPECT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond)) th_fail(__FILE__, __LINE__, "expected: %s", #cond);                           \
    } while (0)
#define EXPECTF(cond, ...)                                                                         \
    do {                                                                                           \
        if (!(cond)) th_fail(__FILE__, __LINE__, __VA_ARGS__);                                     \
    } while (0)
#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            th_fail(__FILE__, __LINE__, "required: %s", #cond);                                    \
            return;                                                                                \
        }                                                                                          \
    } while (0)
/* A tessera call that must succeed; on failure print its error and stop. */
#define REQUIRE_OK(expr)                                                                           \
    do {                                                                                           \
        ts_status s_ = (expr);                                                                     \
        if (s_ != TS_OK) {                                                                         \
            th_fail(__FILE__, __LINE__, "%s -> %s: %s", #expr, ts_status_name(s_),                 \
                    ts_last_error());                                                              \
            return;                                                                                \
        }                                                                                          \
    } while (0)
/* A tessera call that must fail with `code`. */
#define EXPECT_STATUS(expr, code)                                                                  \
    do {                                                                                           \
        ts_status s_ = (expr);                                                                     \
        if (s_ != (code))                                                                          \
            th_fail(__FILE__, __LINE__, "%s -> %s, expected %s (%s)", #expr, ts_status_name(s_),   \
                    ts_status_name(code), ts_last_error());                                        \
    } while (0)
#define SKIP(...)                                                                                  \
    do {                                                                                           \
        th_skip(__VA_ARGS__);                                                                      \
        return;                                                                                    \
    } while (0)

#endif
