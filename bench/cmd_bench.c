/* tessera bench: kernels per device, training throughput, collectives.
 *
 *   tessera bench [--device LIST] [--suite LIST] [--quick] [--json F] [--csv F]
 *                 [--markdown F] [--report DIR] ...
 *   tessera bench train [--device LIST] [--model d12] ... [--vs-pytorch]
 *   tessera bench collectives ...              (under mpirun)
 *   tessera bench report DIR RUN.json...
 *
 * Kernel start-up is measured in child processes of this binary (a fresh
 * process with empty caches, then one with warm caches), since a process
 * can build its programs only once. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "fileio.h"
#include "internal.h"
#include "options.h"
#include "tessera/tessera.h"

extern const char ts_torch_step_py[]; /* bench/torch_step.py, embedded at build time */

/* ---- collected results ---- */

typedef struct bench_run {
    ts_bench_result *r;
    int n, cap;
    int printed_header;
    FILE *tty;              /* the terminal table (stdout) */
    char command[2048];
} bench_run;

static void print_header(FILE *f)
{
    fprintf(f, "%-9s %-9s %-38s %-16s %-34s %10s %10s %10s %9s %8s %-9s\n", "device", "suite", "kernel",
            "impl", "shape", "median", "min", "max", "GFLOP/s", "GB/s", "limit");
}

static void print_row(FILE *f, const ts_bench_result *r)
{
    char g[16] = "", b[16] = "", fr[16] = "";
    if (r->gflops > 0) snprintf(g, sizeof g, "%.1f", r->gflops);
    if (r->gbs > 0) snprintf(b, sizeof b, "%.2f", r->gbs);
    if (r->fraction > 0) /* memory-bound ops limited by their exp/tanh rather than the triad say so */
        snprintf(fr, sizeof fr, "%.0f%%%s%.5s", 100 * r->fraction, r->bound[0] && strcmp(r->bound, "bandwidth") ? " " : "",
                 strcmp(r->bound, "bandwidth") ? r->bound : "");
    char t0[32], t1[32], t2[32];
    fprintf(f, "%-9s %-9s %-38.38s %-16.16s %-34.34s %10s %10s %10s %9s %8s %-9s\n", r->device, r->suite, r->name,
            r->impl, r->shape, ts_bench_fmt_time(r->median_s, t0, sizeof t0), ts_bench_fmt_time(r->min_s, t1, sizeof t1),
            ts_bench_fmt_time(r->max_s, t2, sizeof t2), g, b, fr);
    fflush(f);
}

static void collect(const ts_bench_result *res, void *user)
{
    bench_run *b = user;
    if (b->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 64;
        ts_bench_result *p = realloc(b->r, (size_t)cap * sizeof *p);
        if (!p) return;
        b->r = p, b->cap = cap;
    }
    b->r[b->n++] = *res;
    if (b->tty) {
        if (!b->printed_header) print_header(b->tty), b->printed_header = 1;
        print_row(b->tty, res);
    }
}

static void join_command(char *buf, size_t n, int argc, char **argv)
{
    size_t len = (size_t)snprintf(buf, n, "tessera");
    for (int i = 0; i < argc && len < n; i++) len += (size_t)snprintf(buf + len, n - len, " %s", argv[i]);
}

/* The devices of a comma-separated list ("" = every device). */
static int open_devices(const char *list, ts_device **devs, int max)
{
    int n = 0;
    if (!list[0]) {
        for (int i = 0; i < ts_device_count() && n < max; i++) devs[n++] = ts_device_at(i);
        return n;
    }
    char buf[512];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok && n < max; tok = strtok_r(NULL, ",", &save)) {
        if (ts_device_open(tok, &devs[n]) != TS_OK) return -1;
        n++;
    }
    return n;
}

/* ---- kernel start-up, in child processes ---- */

static int run_child(const char *exe, const char *device, const char *tessera_cache, const char *pocl_cache,
                     char *outbuf, size_t outsize, double *wall)
{
    int fd[2];
    if (pipe(fd) != 0) return -1;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]), close(fd[1]);
        return -1;
    }
    if (pid == 0) {
        dup2(fd[1], 1);
        dup2(fd[1], 2); /* compiler chatter and errors end up in the message */
        close(fd[0]), close(fd[1]);
        setenv("TESSERA_CACHE_DIR", tessera_cache, 1);
        setenv("POCL_CACHE_DIR", pocl_cache, 1);
        execl(exe, exe, "bench", "--startup-child", device, (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    size_t len = 0;
    ssize_t k;
    while (len + 1 < outsize && (k = read(fd[0], outbuf + len, outsize - 1 - len)) > 0) len += (size_t)k;
    outbuf[len] = '\0';
    close(fd[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *wall = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int startup_child(const char *spec)
{
    ts_device *dev;
    if (ts_device_open(spec, &dev) != TS_OK) return cli_fail("opening the device");
    if (ts_device_prepare(dev) != TS_OK) return cli_fail("building the kernel programs");
    ts_build_stats st;
    ts_device_build_stats(dev, &st);
    printf("device=%s\n", ts_device_get_info(dev)->name); /* the parent checks it opened the same one */
    printf("built=%d loaded=%d rejected=%d seconds=%.6f\n", st.built_from_source, st.loaded_from_disk,
           st.cache_rejected, st.seconds);
    return 0;
}

static void rm_tree(const char *dir)
{
    /* the caches hold flat files and one level of subdirectories */
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "tessera bench: could not remove %s\n", dir);
}

static ts_status bench_startup(ts_device *dev, int warm_runs, bench_run *b)
{
    const ts_device_info *info = ts_device_get_info(dev);
    if (strcmp(info->backend, "opencl") != 0) return TS_OK; /* nothing is built for the CPU backend */
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return ts_error(TS_ERR_IO, "bench startup: cannot find this program (/proc/self/exe)");
    exe[n] = '\0';
    char tmp[] = "/tmp/tessera-startup-XXXXXX";
    if (!mkdtemp(tmp)) return ts_error(TS_ERR_IO, "bench startup: cannot make a temporary directory: %s", strerror(errno));
    char tc[4200], pc[4200];
    snprintf(tc, sizeof tc, "%s/tessera", tmp);
    snprintf(pc, sizeof pc, "%s/pocl", tmp);
    mkdir(tc, 0700), mkdir(pc, 0700);
    ts_status st = TS_OK;
    double cold = 0, warm[16];
    int built = 0, loaded = 0, nwarm = 0;
    for (int i = 0; i <= warm_runs && i < 16 && !st; i++) {
        char out[4096];
        double wall;
        int rc = run_child(exe, info->id, tc, pc, out, sizeof out, &wall);
        int bu = 0, lo = 0, rej = 0;
        double sec = 0;
        const char *line = strstr(out, "built=");
        const char *name = strstr(out, "device=");
        size_t nl = strlen(info->name);
        int other = rc == 0 && (!name || strncmp(name + 7, info->name, nl) != 0 || name[7 + nl] != '\n');
        if ((rc != 0 && strstr(out, "unknown device")) || other) { /* NVIDIA's OpenCL, for one, hides its
                                                       GPUs from the children of a process that has listed them */
            st = ts_error(TS_ERR_DEVICE, "a child process of this one does not see %s (%s), so its start-up "
                          "cannot be timed from here", info->id, info->name);
            break;
        }
        if (rc != 0 || !line || sscanf(line, "built=%d loaded=%d rejected=%d seconds=%lf", &bu, &lo, &rej, &sec) != 4) {
            st = ts_error(TS_ERR_BACKEND, "bench startup on %s: the child process failed (exit %d): %s", info->id, rc,
                          out);
            break;
        }
        if (i == 0) cold = sec, built = bu;
        else warm[nwarm++] = sec, loaded = lo;
    }
    rm_tree(tmp);
    if (st) return st;
    ts_bench_result r;
    memset(&r, 0, sizeof r);
    snprintf(r.device, sizeof r.device, "%s", info->id);
    snprintf(r.suite, sizeof r.suite, "startup");
    snprintf(r.impl, sizeof r.impl, "tessera");
    snprintf(r.name, sizeof r.name, "cold build");
    snprintf(r.shape, sizeof r.shape, "%d programs, empty caches", built);
    r.min_s = r.median_s = r.max_s = cold;
    r.reps = 1;
    collect(&r, b);
    if (nwarm > 0) {
        snprintf(r.name, sizeof r.name, "warm start");
        snprintf(r.shape, sizeof r.shape, "%d programs, disk cache", loaded);
        ts_bench_summarize(warm, nwarm, &r.min_s, &r.median_s, &r.max_s);
        r.reps = nwarm;
        collect(&r, b);
    }
    return TS_OK;
}

/* ---- markdown: one row per kernel, one column per (device, implementation) ---- */

static void cell(char *buf, size_t n, const ts_bench_result *r)
{
    if (!strcmp(r->name, "launch overhead")) snprintf(buf, n, "%.1f us", 1e6 * r->median_s);
    else if (!strcmp(r->suite, "startup")) snprintf(buf, n, "%.2f s", r->median_s);
    else if (r->gbs > 0 && (!strcmp(r->suite, "memory") || !strcmp(r->suite, "transfer") ||
                            !strcmp(r->name, "triad") || !strcmp(r->suite, "collectives")))
        snprintf(buf, n, "%.1f GB/s", r->gbs);
    else snprintf(buf, n, "%.1f GFLOP/s", r->gflops);
    if (r->fraction > 0 && strcmp(r->suite, "limits") != 0)
        snprintf(buf + strlen(buf), n - strlen(buf), " (%.0f%%%s%s)", 100 * r->fraction,
                 r->bound[0] && strcmp(r->bound, "bandwidth") ? " of " : "", strcmp(r->bound, "bandwidth") ? r->bound : "");
}

static ts_status write_markdown(const char *path, const bench_run *b, ts_device *const *devs, const double *peaks,
                                const double *triads, int nd)
{
    enum { MAXC = 16 };
    char cols[MAXC][96];
    int ncols = 0;
    int *col_of = calloc((size_t)(b->n ? b->n : 1), sizeof *col_of), *row_of = calloc((size_t)(b->n ? b->n : 1), sizeof *row_of);
    int *row_first = calloc((size_t)(b->n ? b->n : 1), sizeof *row_first);
    if (!col_of || !row_of || !row_first) {
        free(col_of), free(row_of), free(row_first);
        return ts_error(TS_ERR_OOM, "markdown: no memory");
    }
    int nrows = 0;
    for (int i = 0; i < b->n; i++) {
        const ts_bench_result *r = &b->r[i];
        char key[96];
        snprintf(key, sizeof key, "%s %s", r->device, r->impl);
        int c = 0;
        while (c < ncols && strcmp(cols[c], key)) c++;
        if (c == ncols && ncols < MAXC) snprintf(cols[ncols++], sizeof cols[0], "%s", key);
        col_of[i] = c < MAXC ? c : -1;
        int k = 0;
        while (k < nrows && !(!strcmp(b->r[row_first[k]].suite, r->suite) && !strcmp(b->r[row_first[k]].name, r->name) &&
                              !strcmp(b->r[row_first[k]].shape, r->shape)))
            k++;
        if (k == nrows) row_first[nrows++] = i;
        row_of[i] = k;
    }
    FILE *f = strcmp(path, "-") ? fopen(path, "w") : stdout;
    if (!f) {
        free(col_of), free(row_of), free(row_first);
        return ts_error(TS_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    }
    time_t t = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%d", gmtime(&t));
    fprintf(f, "Measured %s with `%s`", date, b->command);
    for (int d = 0; d < nd; d++) {
        const ts_device_info *i = ts_device_get_info(devs[d]);
        fprintf(f, "%s`%s` = %s (%s)", d ? "; " : ": ", i->id, i->name, i->driver_version);
        if (peaks[d] > 0) fprintf(f, ", measured peak %.1f GFLOP/s and triad %.1f GB/s", peaks[d], triads[d]);
    }
    fprintf(f, ". Medians; in parentheses the fraction of the device's measured peak (compute) or triad "
               "(memory-bound ops), or \"of tanh\" / \"of exp\": of the op's own rate on data in cache, where that is "
               "lower than the triad and the op does not beat it by more than 10%% (the limits rows \"... in cache\").\n\n| suite | kernel | shape |");
    for (int c = 0; c < ncols; c++) fprintf(f, " %s |", cols[c]);
    fprintf(f, "\n|---|---|---|");
    for (int c = 0; c < ncols; c++) fprintf(f, "---:|");
    fprintf(f, "\n");
    for (int k = 0; k < nrows; k++) {
        const ts_bench_result *r0 = &b->r[row_first[k]];
        fprintf(f, "| %s | %s | %s |", r0->suite, r0->name, r0->shape);
        for (int c = 0; c < ncols; c++) {
            char buf[64] = "";
            for (int i = 0; i < b->n; i++)
                if (row_of[i] == k && col_of[i] == c) cell(buf, sizeof buf, &b->r[i]);
            fprintf(f, " %s |", buf);
        }
        fprintf(f, "\n");
    }
    free(col_of), free(row_of), free(row_first);
    if (f != stdout && fclose(f) != 0) return ts_error(TS_ERR_IO, "writing %s failed", path);
    return TS_OK;
}

static int finish_outputs(bench_run *b, ts_device *const *devs, const double *peaks, const double *triads, int nd,
                          const char *json, const char *csv, const char *markdown, const char *report,
                          const char *extra)
{
    char json_path[4200];
    snprintf(json_path, sizeof json_path, "%s", json);
    if (report[0] && !json_path[0]) { /* the report reads the JSON: keep it beside the page */
        if (ts_mkdir_p(report) != TS_OK) return cli_fail("making the report directory");
        snprintf(json_path, sizeof json_path, "%s/bench.json", report);
    }
    if (json_path[0] &&
        ts_bench_write_json(json_path, b->command, devs, peaks, triads, nd, b->r, b->n, extra) != TS_OK)
        return cli_fail("writing the JSON");
    if (csv[0] && ts_bench_write_csv(csv, b->r, b->n) != TS_OK) return cli_fail("writing the CSV");
    if (markdown[0] && write_markdown(markdown, b, devs, peaks, triads, nd) != TS_OK)
        return cli_fail("writing the markdown table");
    if (report[0]) {
        const char *files[1] = {json_path};
        if (ts_bench_report(report, files, 1) != TS_OK) return cli_fail("writing the report");
        fprintf(stderr, "report: %s/index.html (data: %s)\n", report, json_path);
    }
    return 0;
}

/* ---- tessera bench (kernels) ---- */

static int bench_kernels(int argc, char **argv)
{
    char device[512] = "", suites[128] = "", json[4096] = "", csv[4096] = "", markdown[4096] = "", report[4096] = "";
    int quick = 0, no_reference = 0;
    int64_t min_reps = 0, warm_starts = 3;
    double min_time = 0.25;
    cli_option opts[] = {
        {"--device", OPT_STRING, device, sizeof device, "devices, comma-separated (default: every device)", NULL, 0, 0, 0},
        {"--suite", OPT_STRING, suites, sizeof suites,
         "suites: limits,gemm,memory,attention,transfer,startup (default: all)", NULL, 0, 0, 0},
        {"--quick", OPT_FLAG, &quick, 0, "small shapes: a first look in seconds", NULL, 0, 0, 0},
        {"--min-time", OPT_DOUBLE, &min_time, 0, "seconds of timed calls per measurement (0.25)", NULL, 0, 0, 0},
        {"--min-reps", OPT_INT, &min_reps, 0, "at least this many timed samples (5)", NULL, 0, 0, 0},
        {"--warm-starts", OPT_INT, &warm_starts, 0, "warm start-up runs to time (3)", NULL, 0, 0, 0},
        {"--no-reference", OPT_FLAG, &no_reference, 0, "skip the reference library's GEMMs", NULL, 0, 0, 0},
        {"--json", OPT_STRING, json, sizeof json, "write every result as JSON", NULL, 0, 0, 0},
        {"--csv", OPT_STRING, csv, sizeof csv, "write every result as CSV", NULL, 0, 0, 0},
        {"--markdown", OPT_STRING, markdown, sizeof markdown, "write a markdown table (- for stdout)", NULL, 0, 0, 0},
        {"--report", OPT_STRING, report, sizeof report, "write an HTML report (and its JSON) into this directory", NULL, 0, 0, 0},
    };
    int rc = cli_parse("bench",
                       "[options]              kernels on every device\n"
                       "       tessera bench train [options]        training throughput (--vs-pytorch)\n"
                       "       tessera bench collectives [options]  allreduce bandwidth (under mpirun)\n"
                       "       tessera bench report DIR RUN.json...  one HTML page of several runs",
                       opts, (int)(sizeof opts / sizeof *opts), argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    int want_startup = 1, bits = TS_BENCH_ALL;
    if (suites[0]) {
        char list[128], kept[128] = "";
        snprintf(list, sizeof list, "%s", suites);
        want_startup = 0;
        for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (!strcmp(t, "startup")) want_startup = 1;
            else snprintf(kept + strlen(kept), sizeof kept - strlen(kept), "%s%s", kept[0] ? "," : "", t);
        }
        bits = kept[0] ? ts_bench_parse_suites(kept) : 0;
        if (bits < 0) {
            fprintf(stderr, "tessera bench: unknown suite in '%s' (limits, gemm, memory, attention, transfer, startup)\n",
                    suites);
            return 2;
        }
    }
    ts_device *devs[32];
    int nd = open_devices(device, devs, 32);
    if (nd < 0) return cli_fail("choosing the device");
    /* the table goes to stderr when the markdown goes to stdout */
    bench_run b = {.tty = strcmp(markdown, "-") ? stdout : stderr};
    join_command(b.command, sizeof b.command, argc, argv);
    double peaks[32] = {0}, triads[32] = {0};
    ts_bench_options o = {.suites = bits, .min_time = min_time, .min_reps = (int)min_reps, .quick = quick,
                          .no_reference = no_reference};
    for (int d = 0; d < nd; d++) {
        if (bits && ts_bench_device(devs[d], &o, collect, &b, &peaks[d], &triads[d]) != TS_OK) {
            free(b.r);
            return cli_fail("benchmark");
        }
        if (want_startup) {
            ts_status st = bench_startup(devs[d], (int)warm_starts, &b);
            if (st == TS_ERR_DEVICE) { /* the other suites' results stand */
                fprintf(stderr, "tessera bench: kernel start-up not measured: %s\n", ts_last_error());
            } else if (st != TS_OK) {
                free(b.r);
                return cli_fail("kernel start-up");
            }
        }
    }
    if (!b.n) fprintf(b.tty, "nothing measured\n");
    for (int d = 0; d < nd; d++) {
        const ts_device_info *di = ts_device_get_info(devs[d]);
        if (peaks[d] > 0)
            fprintf(b.tty, "%s%s: peak %.1f GFLOP/s, triad %.2f GB/s (%s)\n", d ? "" : "\n", di->id, peaks[d],
                    triads[d], di->name);
        else
            fprintf(b.tty, "%s%s (%s): limits not measured (add the limits suite for the peak and triad)\n",
                    d ? "" : "\n", di->id, di->name);
    }
    rc = finish_outputs(&b, devs, peaks, triads, nd, json, csv, markdown, report, NULL);
    free(b.r);
    return rc;
}

/* ---- tessera bench train ---- */

/* Seconds per training step (forward, backward, clip, AdamW) of cfg on dev. */
static ts_status time_train_steps(ts_device *dev, const ts_gpt_config *cfg, int64_t B, int64_t T, int steps,
                                  int warmup, double *med, double *mn, double *mx, double *peak_bytes)
{
    ts_gpt m;
    ts_optimizer o;
    ts_memory_stats before, after;
    ts_device_memory_reset_peak(dev);
    ts_device_memory_stats(dev, &before);
    ts_status st = ts_gpt_create(&m, dev, cfg);
    if (st) return st;
    st = ts_gpt_init_weights(&m, 1);
    if (!st) st = ts_optimizer_create(&o, dev, TS_OPTIM_ADAMW, m.num_params, 0.9f, 0.95f, 1e-8f, 0.1f);
    if (st) {
        ts_gpt_free(&m);
        return st;
    }
    int32_t *tok = malloc((size_t)(B * T) * sizeof *tok), *tgt = malloc((size_t)(B * T) * sizeof *tgt);
    double *t = malloc((size_t)(steps > 0 ? steps : 1) * sizeof *t);
    if (!tok || !tgt || !t) st = ts_error(TS_ERR_OOM, "bench train: no host memory");
    for (int64_t i = 0; !st && i < B * T; i++)
        tok[i] = (int32_t)((i * 7919) % cfg->vocab_size), tgt[i] = (int32_t)((i * 104729 + 1) % cfg->vocab_size);
    for (int s = 0; !st && s < warmup + steps; s++) {
        float loss;
        double sq, t0 = ts_now();
        st = ts_gpt_zero_grad(&m);
        if (!st) st = ts_gpt_forward_backward(&m, tok, tgt, B, T, 1.0f, &loss);
        if (!st) st = ts_grad_sqnorm(&m.grads, &sq);
        if (!st) st = ts_gpt_optimizer_step(&m, &o, 1e-4f, ts_clip_scale(sqrt(sq), 1.0f));
        if (!st) st = ts_device_synchronize(dev);
        if (!st && s >= warmup) t[s - warmup] = ts_now() - t0;
    }
    if (!st) ts_bench_summarize(t, steps, mn, med, mx);
    ts_device_memory_stats(dev, &after);
    *peak_bytes = (double)(after.peak_in_use - before.in_use); /* the model's, its optimizer's and its steps' */
    free(tok), free(tgt), free(t);
    ts_optimizer_free(&o);
    ts_gpt_free(&m);
    return st;
}

/* A python3 that imports torch: $TESSERA_PYTHON, then the system's, then PATH's. */
static int find_torch_python(char *out, size_t n)
{
    const char *env = getenv("TESSERA_PYTHON");
    const char *cands[] = {env && *env ? env : NULL, "/usr/bin/python3", "python3"};
    for (size_t i = 0; i < 3; i++) {
        if (!cands[i]) continue;
        char cmd[600];
        snprintf(cmd, sizeof cmd, "'%s' -c 'import torch' >/dev/null 2>&1", cands[i]);
        if (system(cmd) == 0) {
            snprintf(out, n, "%s", cands[i]);
            return 1;
        }
    }
    return 0;
}

/* torch_device: "cpu" or "cuda"; *ran_on says where PyTorch ran ("cpu"
 * when it has no CUDA). */
static ts_status torch_step(const char *py, const ts_gpt_config *c, int64_t B, int64_t T, int steps, int warmup,
                            int threads, const char *torch_device, const char *dtype, int compile, double *med, double *mn, double *mx,
                            char *version, size_t vn, char *ran_on, size_t rn)
{
    char script[] = "/tmp/tessera-torch-XXXXXX";
    int fd = mkstemp(script);
    if (fd < 0) return ts_error(TS_ERR_IO, "bench train: cannot write the PyTorch script: %s", strerror(errno));
    size_t len = strlen(ts_torch_step_py);
    ssize_t w = write(fd, ts_torch_step_py, len);
    close(fd);
    if (w != (ssize_t)len) {
        unlink(script);
        return ts_error(TS_ERR_IO, "bench train: cannot write the PyTorch script");
    }
    char cmd[1200];
    snprintf(cmd, sizeof cmd,
             "OMP_NUM_THREADS=%d '%s' '%s' --layers %lld --heads %lld --width %lld --vocab %lld --batch %lld "
             "--seq-len %lld --steps %d --warmup %d --threads %d --device %s --dtype %s%s",
             threads, py, script, (long long)c->n_layer, (long long)c->n_head, (long long)c->n_embd,
             (long long)c->vocab_size, (long long)B, (long long)T, steps, warmup, threads, torch_device, dtype,
             compile ? " --compile" : "");
    FILE *p = popen(cmd, "r");
    char line[2048] = "";
    ts_status st = TS_OK;
    if (!p) st = ts_error(TS_ERR_IO, "bench train: cannot run %s", py);
    else {
        char buf[2048];
        while (fgets(buf, sizeof buf, p)) snprintf(line, sizeof line, "%s", buf);
        int rc = pclose(p);
        const char *m = strstr(line, "\"median_s\": "), *a = strstr(line, "\"min_s\": "), *b = strstr(line, "\"max_s\": ");
        const char *v = strstr(line, "\"torch\": \"");
        const char *where = strstr(line, "\"device\": \"pytorch-");
        snprintf(ran_on, rn, "%s", where && !strncmp(where + 19, "cuda", 4) ? "cuda" : "cpu");
        if (rc != 0 || !m || !a || !b) st = ts_error(TS_ERR_BACKEND, "bench train: PyTorch run failed: %s", line);
        else {
            *med = atof(m + 12), *mn = atof(a + 9), *mx = atof(b + 9);
            if (v) {
                v += 10;
                size_t k = strcspn(v, "\"");
                /* what this torch ran: fused attention and AdamW where it has them */
                const char *att = strstr(line, "\"attention\": \"sdpa\""), *fused = strstr(line, "\"adamw\": \"fused\"");
                snprintf(version, vn, "PyTorch %.*s%s%s%s", (int)k, v, att ? " sdpa" : "", fused ? " fused-adamw" : "",
                         compile ? " compiled" : "");
            }
        }
    }
    unlink(script);
    return st;
}

/* mem_bytes: the device memory the run took at its peak (0: not known) */
static void train_result(bench_run *b, const char *device, const char *impl, const char *model, const ts_gpt_config *c,
                         int64_t B, int64_t T, double med, double mn, double mx, int steps, double peak, double mem_bytes)
{
    ts_bench_result r;
    memset(&r, 0, sizeof r);
    snprintf(r.device, sizeof r.device, "%s", device);
    snprintf(r.suite, sizeof r.suite, "train");
    snprintf(r.name, sizeof r.name, "step %s", model);
    snprintf(r.impl, sizeof r.impl, "%s", impl);
    snprintf(r.shape, sizeof r.shape, "L=%lld H=%lld C=%lld V=%lld B=%lld T=%lld", (long long)c->n_layer,
             (long long)c->n_head, (long long)c->n_embd, (long long)c->vocab_size, (long long)B, (long long)T);
    r.flops = ts_gpt_flops_per_token(c, T) * (double)(B * T);
    r.median_s = med, r.min_s = mn, r.max_s = mx, r.reps = steps;
    r.gflops = r.flops / med / 1e9;
    r.fraction = peak > 0 ? r.gflops / peak : 0;
    collect(&r, b);
    printf("  %-10s %-44s %8.3f s/step  %9.1f tokens/s  MFU %5.1f%% of %.1f GFLOP/s measured peak", device, impl,
           med, (double)(B * T) / med, 100 * r.fraction, peak);
    if (mem_bytes > 0) printf("; memory %.0f MiB", mem_bytes / 1048576.0);
    printf("\n");
}

static int bench_train(int argc, char **argv)
{
    char device[512] = "", model[32] = "d12", json[4096] = "", csv[4096] = "", report[4096] = "";
    int64_t vocab = 50257, B = 4, T = 64, layers = 0, heads = 0, width = 0;
    int64_t steps64 = 5, warmup64 = 2;
    int vs_pytorch = 0, torch_compile = 0;
    char dtypes[64] = "fp32";
    cli_option opts[] = {
        {"--dtype", OPT_STRING, dtypes, sizeof dtypes,
         "matrix products in fp32, bf16 or fp16, or a comma list (fp32,bf16): each is timed, PyTorch too (autocast)",
         "fp32", 0, 0, 0},
        {"--device", OPT_STRING, device, sizeof device, "devices, comma-separated (default: every device)", NULL, 0, 0, 0},
        {"--model", OPT_STRING, model, sizeof model, "preset: d6, d12 (GPT-2 124M), ... (d12)", NULL, 0, 0, 0},
        {"--layers", OPT_INT, &layers, 0, "override the preset's layers", NULL, 0, 0, 0},
        {"--heads", OPT_INT, &heads, 0, "override the preset's heads", NULL, 0, 0, 0},
        {"--width", OPT_INT, &width, 0, "override the preset's width", NULL, 0, 0, 0},
        {"--vocab", OPT_INT, &vocab, 0, "vocabulary size (50257)", NULL, 0, 0, 0},
        {"--batch", OPT_INT, &B, 0, "sequences per step (4)", NULL, 0, 0, 0},
        {"--seq-len", OPT_INT, &T, 0, "context length (64)", NULL, 0, 0, 0},
        {"--steps", OPT_INT, &steps64, 0, "timed steps (5)", NULL, 0, 0, 0},
        {"--warmup", OPT_INT, &warmup64, 0, "untimed steps first (2)", NULL, 0, 0, 0},
        {"--vs-pytorch", OPT_FLAG, &vs_pytorch, 0,
         "also run the same step in PyTorch (python3-torch, or $TESSERA_PYTHON) and compare", NULL, 0, 0, 0},
        {"--torch-compile", OPT_FLAG, &torch_compile, 0,
         "with --vs-pytorch: also time PyTorch with torch.compile (torch >= 2)", NULL, 0, 0, 0},
        {"--json", OPT_STRING, json, sizeof json, "write the results as JSON", NULL, 0, 0, 0},
        {"--csv", OPT_STRING, csv, sizeof csv, "write the results as CSV", NULL, 0, 0, 0},
        {"--report", OPT_STRING, report, sizeof report, "write an HTML report into this directory", NULL, 0, 0, 0},
    };
    int rc = cli_parse("bench train", "[options]", opts, (int)(sizeof opts / sizeof *opts), argc,
                       argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (steps64 < 1 || steps64 > 100000 || warmup64 < 0 || warmup64 > 100000 || B < 1 || T < 1) {
        fprintf(stderr, "tessera bench train: --steps (1-100000), --batch and --seq-len must be >= 1, "
                        "--warmup >= 0\n");
        return 2;
    }
    int steps = (int)steps64, warmup = (int)warmup64;
    ts_gpt_config c = {.vocab_size = vocab, .max_seq_len = T};
    if (ts_gpt_config_preset(model, &c) != TS_OK) return cli_fail("model");
    if (layers > 0) c.n_layer = layers;
    if (heads > 0) c.n_head = heads;
    if (width > 0) c.n_embd = width;
    c.vocab_size = vocab;
    if (c.max_seq_len < T) c.max_seq_len = T;
    ts_device *devs[32];
    int nd = open_devices(device, devs, 32);
    if (nd < 0) return cli_fail("choosing the device");
    bench_run b = {.tty = NULL};
    join_command(b.command, sizeof b.command, argc + 1, argv - 1);
    double peaks[32] = {0}, triads[32] = {0};
    /* the dtypes to time, in the order given */
    ts_dtype dts[3];
    int ndt = 0;
    for (char *save = NULL, *tok = strtok_r(dtypes, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int k = ts_dtype_parse(tok);
        if ((k != TS_F32 && k != TS_BF16 && k != TS_F16) || ndt == 3) {
            fprintf(stderr, "tessera bench train: --dtype takes fp32, bf16 and fp16 (a comma list), not '%s'\n", tok);
            return 2;
        }
        dts[ndt++] = (ts_dtype)k;
    }
    printf("training step of %s (%lld parameters), B=%lld T=%lld, AdamW; median of %d steps after %d\n", model,
           (long long)ts_gpt_num_params(&c), (long long)B, (long long)T, steps, warmup);
    double tessera_cpu = 0, gpu_times[32] = {0};
    for (int d = 0; d < nd; d++) {
        /* the device's peak, for MFU: the FMA kernel, quickly */
        ts_bench_options lo = {.suites = TS_BENCH_LIMITS, .min_time = 0.1, .min_reps = 3};
        if (ts_bench_device(devs[d], &lo, NULL, NULL, &peaks[d], &triads[d]) != TS_OK)
            return cli_fail("measuring the device's peak");
        const ts_device_info *info = ts_device_get_info(devs[d]);
        if (info->type == TS_DEVICE_CPU && strcmp(info->backend, "cpu") && !getenv("OMP_WAIT_POLICY") &&
            !ts_device_process_quiet())
            printf("  note: %s runs its products on the host's OpenMP team, whose idle workers spin on the cores its own "
                   "threads need; alone (--device %s: OMP_WAIT_POLICY=passive) it is faster (README: How devices run ops)\n",
                   info->id, info->id);
        for (int k = 0; k < ndt; k++) {
            if (ts_device_set_matmul_dtype(devs[d], dts[k]) != TS_OK) {
                printf("  %-10s %s: %s\n", info->id, ts_dtype_name(dts[k]), ts_last_error());
                continue;
            }
            double med, mn, mx, mem = 0;
            ts_status st = time_train_steps(devs[d], &c, B, T, steps, warmup, &med, &mn, &mx, &mem);
            ts_device_set_matmul_dtype(devs[d], TS_F32);
            if (st != TS_OK) {
                free(b.r);
                return cli_fail("training step");
            }
            char impl[64];
            /* fp32 keeps the plain name that reports and --balance files know */
            snprintf(impl, sizeof impl, "tessera%s", dts[k] == TS_F32 ? "" : dts[k] == TS_BF16 ? " bf16" : " fp16");
            train_result(&b, info->id, impl, model, &c, B, T, med, mn, mx, steps, peaks[d], mem);
            /* the best of the dtypes is what PyTorch is compared with */
            if (info->type == TS_DEVICE_CPU && !strcmp(info->backend, "cpu") && (!tessera_cpu || med < tessera_cpu))
                tessera_cpu = med;
            if (info->type == TS_DEVICE_GPU && (!gpu_times[d] || med < gpu_times[d])) gpu_times[d] = med;
        }
    }
    char extra[1024] = "";
    if (vs_pytorch) {
        char py[512], version[96] = "PyTorch";
        if (!find_torch_python(py, sizeof py)) {
            fprintf(stderr, "tessera bench train: --vs-pytorch needs a python3 with torch (python3-torch, or set "
                            "TESSERA_PYTHON)\n");
            free(b.r);
            return 1;
        }
        double med = 0, mn = 0, mx = 0, tessera_gpu = 0, gpu_peak = 0;
        int threads = ts_get_threads();
        /* PyTorch on CUDA when a GPU is measured (and PyTorch has CUDA) */
        for (int d = 0; d < nd; d++)
            if (ts_device_get_info(devs[d])->type == TS_DEVICE_GPU) {
                tessera_gpu = gpu_times[d];
                gpu_peak = peaks[d];
            }
        char ran_on[8] = "cpu", best_cfg[128] = "";
        double best = 0;
        for (int k = 0; k < ndt; k++) {
            const char *dn = dts[k] == TS_F32 ? "fp32" : dts[k] == TS_BF16 ? "bf16" : "fp16";
            if (dts[k] == TS_F16 && tessera_gpu <= 0) { /* PyTorch's CPU autocast has no fp16 */
                printf("  PyTorch fp16: autocast on the CPU takes bf16 only; not timed\n");
                continue;
            }
            for (int comp = 0; comp <= torch_compile; comp++) {
                if (torch_step(py, &c, B, T, steps, warmup, threads, tessera_gpu > 0 ? "cuda" : "cpu", dn, comp,
                               &med, &mn, &mx, version, sizeof version, ran_on, sizeof ran_on) != TS_OK) {
                    free(b.r);
                    return cli_fail("PyTorch");
                }
                /* on the host CPU PyTorch's yardstick is the CPU backend's peak */
                double peak = gpu_peak;
                if (!strcmp(ran_on, "cpu"))
                    for (int d = 0; d < nd; d++)
                        if (!strcmp(ts_device_get_info(devs[d])->id, "cpu")) peak = peaks[d];
                char impl[128];
                snprintf(impl, sizeof impl, "%s %s%s", version, dn, dts[k] == TS_F32 ? "" : " autocast");
                train_result(&b, ran_on, impl, model, &c, B, T, med, mn, mx, steps, peak, 0);
                if (!best || med < best) best = med, snprintf(best_cfg, sizeof best_cfg, "%s", impl);
            }
        }
        double mine = !strcmp(ran_on, "cuda") ? tessera_gpu : tessera_cpu;
        if (mine > 0 && best > 0)
            printf("  tessera's best (%s) takes %.2fx the time of PyTorch's best (%s) on %s (%.2fx less)\n",
                   !strcmp(ran_on, "cuda") ? "GPU" : "CPU backend", mine / best, best_cfg, ran_on, best / mine);
        snprintf(extra, sizeof extra, "\"pytorch\": {\"python\": \"%.400s\", \"version\": \"%.60s\"}", py, version);
    }
    rc = finish_outputs(&b, devs, peaks, triads, nd, json, csv, "", report, extra[0] ? extra : NULL);
    free(b.r);
    return rc;
}

/* ---- tessera bench collectives ---- */

static int bench_collectives(int argc, char **argv)
{
    double min_time = 0.3;
    int64_t max_bytes = 64ll << 20;
    char json[4096] = "", csv[4096] = "", report[4096] = "";
    cli_option opts[] = {
        {"--min-time", OPT_DOUBLE, &min_time, 0, "seconds per size and strategy (0.3)", NULL, 0, 0, 0},
        {"--max-bytes", OPT_INT, &max_bytes, 0, "largest message (64 MiB)", NULL, 0, 0, 0},
        {"--json", OPT_STRING, json, sizeof json, "write the results as JSON", NULL, 0, 0, 0},
        {"--csv", OPT_STRING, csv, sizeof csv, "write the results as CSV", NULL, 0, 0, 0},
        {"--report", OPT_STRING, report, sizeof report, "write an HTML report into this directory", NULL, 0, 0, 0},
    };
    int rc = cli_parse("bench collectives", "[options]   (under mpirun -np N)", opts,
                       (int)(sizeof opts / sizeof *opts), argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    ts_comm *w = ts_comm_world();
    int p = ts_comm_size(w), rank = ts_comm_rank(w);
    if (p < 2) {
        fprintf(stderr, "tessera bench collectives: run it under mpirun with 2 or more processes "
                        "(mpirun -np 2 tessera bench collectives)\n");
        return 2;
    }
    int64_t sizes[16];
    int n = 0;
    for (int64_t s = 4096; s <= max_bytes && n < 16; s *= 4) sizes[n++] = s;
    ts_comm_bench_row rows[16];
    if (ts_comm_bench_allreduce(w, sizes, n, min_time, rows) != TS_OK) return cli_fail("allreduce benchmark");
    if (rank != 0) return 0;
    bench_run b = {.tty = NULL};
    join_command(b.command, sizeof b.command, argc + 1, argv - 1);
    printf("allreduce bus bandwidth, %d processes, GB/s (nccl-tests: algbw x 2(n-1)/n); memcpy of one process beside\n",
           p);
    printf("%12s %10s", "bytes", "memcpy");
    for (int s = 0; s < TS_NUM_STRATEGIES; s++) printf(" %10s", ts_strategy_name((ts_reduce_strategy)s));
    printf("  best/memcpy\n");
    for (int i = 0; i < n; i++) {
        double best = 0;
        printf("%12lld %10.2f", (long long)rows[i].bytes, rows[i].memcpy_gbs);
        ts_bench_result r;
        memset(&r, 0, sizeof r);
        snprintf(r.device, sizeof r.device, "cpu");
        snprintf(r.suite, sizeof r.suite, "collectives");
        snprintf(r.shape, sizeof r.shape, "%lld bytes, %d processes", (long long)rows[i].bytes, p);
        snprintf(r.name, sizeof r.name, "memcpy");
        snprintf(r.impl, sizeof r.impl, "memcpy");
        r.bytes = (double)rows[i].bytes;
        r.gbs = rows[i].memcpy_gbs;
        r.median_s = r.min_s = r.max_s = r.gbs > 0 ? r.bytes / r.gbs / 1e9 : 0;
        collect(&r, &b);
        for (int s = 0; s < TS_NUM_STRATEGIES; s++) {
            printf(" %10.2f", rows[i].busbw_gbs[s]);
            if (rows[i].busbw_gbs[s] > best) best = rows[i].busbw_gbs[s];
            snprintf(r.name, sizeof r.name, "allreduce %s", ts_strategy_name((ts_reduce_strategy)s));
            snprintf(r.impl, sizeof r.impl, "tessera");
            r.median_s = r.min_s = r.max_s = rows[i].seconds[s];
            r.bytes = (double)rows[i].bytes * 2.0 * (p - 1) / p; /* bus bytes: gbs is bus bandwidth */
            r.gbs = rows[i].busbw_gbs[s];
            r.fraction = rows[i].memcpy_gbs > 0 ? r.gbs / rows[i].memcpy_gbs : 0;
            collect(&r, &b);
        }
        printf("  %.2f\n", rows[i].memcpy_gbs > 0 ? best / rows[i].memcpy_gbs : 0);
    }
    ts_device *cpu = ts_device_at(0);
    double zero = 0;
    char extra[64];
    snprintf(extra, sizeof extra, "\"processes\": %d", p);
    rc = finish_outputs(&b, &cpu, &zero, &zero, 1, json, csv, "", report, extra);
    free(b.r);
    return rc;
}

int ts_bench_command(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "--startup-child")) return startup_child(argv[2]);
    if (argc >= 2 && !strcmp(argv[1], "train")) return bench_train(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "collectives")) return bench_collectives(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "report")) {
        static const char usage[] = "usage: tessera bench report DIR RUN.json [RUN.json...]\n\n"
                                    "Renders the JSON files of `tessera bench --json` (and bench train/collectives)\n"
                                    "from one machine or several into DIR/index.html, a self-contained page.\n";
        if (argc == 3 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) {
            fputs(usage, stdout);
            return 0;
        }
        if (argc < 4) {
            fputs(usage, stderr);
            return 2;
        }
        if (ts_bench_report(argv[2], (const char *const *)(argv + 3), argc - 3) != TS_OK)
            return cli_fail("writing the report");
        printf("report: %s/index.html (%d runs)\n", argv[2], argc - 3);
        return 0;
    }
    return bench_kernels(argc, argv);
}
