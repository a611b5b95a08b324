/* `tessera bench --report`: JSON runs -> one self-contained HTML page with
 * inline SVG charts (no scripts, no network): a roofline per device, GEMM
 * rate against size for tessera and the reference, collectives bandwidth
 * against message size, and a comparison of every kernel across every
 * device of every file. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "json.h"
#include "bench.h"
#include "svg.h"

typedef struct rdev {
    char key[200];            /* "host / id": unique across files */
    char label[300];          /* what a reader sees */
    double peak, triad;
    unsigned long long files; /* bit f: file f measured this device (same host, id and name) */
    const ts_json *info;
} rdev;

typedef struct report {
    html_page page;           /* the page being written */
    ts_json *files[64];
    const char *paths[64];
    int nfiles;
    rdev devs[256];
    int ndevs;
} report;

static const char *str(const ts_json *o, const char *k) { return ts_json_get_str(o, k, ""); }
static double num(const ts_json *o, const char *k) { return ts_json_get_num(o, k, 0); }

static int find_dev(report *r, int file, const char *id)
{
    for (int i = 0; i < r->ndevs; i++)
        if ((r->devs[i].files >> file & 1) && !strcmp(str(r->devs[i].info, "id"), id)) return i;
    return -1;
}

/* Every result of every file, with the device it belongs to. */
typedef void (*result_fn)(report *r, int dev, const ts_json *res, void *user);
static void each_result(report *r, result_fn fn, void *user)
{
    for (int f = 0; f < r->nfiles; f++) {
        const ts_json *rs = ts_json_get(r->files[f], "results");
        if (!rs || rs->type != TS_JSON_ARRAY) continue;
        for (size_t i = 0; i < rs->count; i++) {
            int d = find_dev(r, f, str(&rs->items[i], "device"));
            if (d >= 0) fn(r, d, &rs->items[i], user);
        }
    }
}

/* ---- roofline ---- */

typedef struct roof_ctx {
    int dev;
    const plot *p;
    int count;
    double lo_ai, hi_ai, lo_g, hi_g; /* ranges (first pass) */
    int seen[6];                     /* points of each category */
    int pass;
} roof_ctx;

/* Categories of roofline points: legend entry and colour. */
static const char *const roof_names[] = {"GEMM, tessera", "GEMM, reference", "memory-bound ops", "attention",
                                         "training step", "other"};
static const int roof_colors[] = {0, 3, 2, 4, 1, 8};

static int roof_category(const ts_json *res)
{
    const char *s = str(res, "suite");
    if (!strcmp(s, "gemm")) return strncmp(str(res, "impl"), "tessera", 7) ? 1 : 0; /* "tessera bf16" too */
    if (!strcmp(s, "memory")) return 2;
    if (!strcmp(s, "attention")) return 3;
    if (!strcmp(s, "train")) return 4;
    return 5;
}

static const char *suite_color(const ts_json *res) { return svg_palette[roof_colors[roof_category(res)]]; }

static void roof_point(report *r, int dev, const ts_json *res, void *user)
{
    roof_ctx *c = user;
    double f = num(res, "flops"), b = num(res, "bytes"), g = num(res, "gflops");
    if (dev != c->dev || f <= 0 || b <= 0 || g <= 0 || !strcmp(str(res, "suite"), "limits")) return;
    double ai = f / b;
    if (c->pass == 0) {
        c->seen[roof_category(res)]++;
        if (ai < c->lo_ai) c->lo_ai = ai;
        if (ai > c->hi_ai) c->hi_ai = ai;
        if (g < c->lo_g) c->lo_g = g;
        if (g > c->hi_g) c->hi_g = g;
        return;
    }
    html_out(&r->page, "<circle cx='%.1f' cy='%.1f' r='4' fill='%s' fill-opacity='0.75'><title>", px(c->p, ai), py(c->p, g),
        suite_color(res));
    html_esc(&r->page, str(res, "name"));
    html_out(&r->page, " (");
    html_esc(&r->page, str(res, "impl"));
    html_out(&r->page, ") ");
    html_esc(&r->page, str(res, "shape"));
    html_out(&r->page, ": %.3g GFLOP/s at %.3g flop/byte, %.0f%% of the device's limit</title></circle>\n", g, ai,
        100 * num(res, "fraction"));
    c->count++;
}

static void roofline(report *r, int d)
{
    rdev *dv = &r->devs[d];
    roof_ctx c = {.dev = d, .lo_ai = 1e30, .hi_ai = 0, .lo_g = 1e30, .hi_g = 0};
    each_result(r, roof_point, &c);
    if (c.hi_ai <= 0) {
        html_out(&r->page, "<p>No kernels with flop and byte counts were measured on this device.</p>\n");
        return;
    }
    double top = fmax(dv->peak, c.hi_g);
    plot p = {.logx = 1, .logy = 1, .W = 560, .H = 360, .L = 60, .R = 20, .T = 20, .B = 40};
    for (int i = 0; i < 6; i++) p.legend += c.seen[i] > 0;
    p.x0 = pow(10, floor(log10(fmin(c.lo_ai, dv->peak > 0 && dv->triad > 0 ? dv->peak / dv->triad : 1) / 2)));
    p.x1 = pow(10, ceil(log10(fmax(c.hi_ai * 2, 10))));
    p.y1 = pow(10, ceil(log10(top * 1.5)));
    p.y0 = pow(10, floor(log10(fmin(c.lo_g / 2, dv->triad > 0 ? dv->triad * p.x0 : c.lo_g / 2))));
    svg_axes(&r->page, &p, "arithmetic intensity (flop/byte)", "GFLOP/s");
    if (dv->peak > 0 && dv->triad > 0) { /* the roof: min(peak, triad x intensity) */
        double knee = dv->peak / dv->triad;
        double xa = p.x0 > knee ? knee : p.x0;
        html_out(&r->page, "<polyline fill='none' stroke='#000' stroke-width='2' points='%.1f,%.1f %.1f,%.1f %.1f,%.1f'/>\n",
            px(&p, xa), py(&p, dv->triad * xa), px(&p, knee), py(&p, dv->peak), px(&p, p.x1), py(&p, dv->peak));
        html_out(&r->page, "<text x='%.1f' y='%.1f' text-anchor='end'>peak %.1f GFLOP/s (FMA kernel)</text>\n", px(&p, p.x1) - 4,
            py(&p, dv->peak) - 5, dv->peak);
        html_out(&r->page, "<text x='%.1f' y='%.1f'>triad %.1f GB/s</text>\n", px(&p, knee) + 6, py(&p, dv->peak) + 28,
            dv->triad);
    }
    c.pass = 1;
    c.p = &p;
    each_result(r, roof_point, &c);
    /* the legend below the chart, only for what was measured */
    for (int i = 0, row = 0; i < 6; i++) {
        if (!c.seen[i]) continue;
        int x = p.L, y = p.H + 12 + SVG_LEGEND_ROW * row++;
        html_out(&r->page, "<circle cx='%d' cy='%d' r='4' fill='%s'/><text x='%d' y='%d'>%s (%d)</text>\n", x + 9, y - 4,
            svg_palette[roof_colors[i]], x + 24, y, roof_names[i], c.seen[i]);
    }
    html_out(&r->page, "</svg>\n");
}

/* ---- a line chart of one quantity against a size, one series per (device, impl) ---- */

typedef struct series_ctx {
    const char *suite, *name; /* which results */
    int use_gbs;              /* y = gbs instead of gflops */
    int pass;
    double x0, x1, y1;
    /* series keys */
    char keys[32][200];
    int nkeys;
    const plot *p;
    double lastx[32], lasty[32];
    int have_last[32];
} series_ctx;

static double size_of(const ts_json *res, const char *suite)
{
    const char *shape = str(res, "shape");
    long long v = 0;
    const char *t = strstr(shape, " T=");
    if (!strcmp(suite, "collectives")) sscanf(shape, "%lld", &v);
    else if (!strcmp(suite, "attention") && t) sscanf(t + 3, "%lld", &v);
    else sscanf(shape, "M=%lld", &v);
    return (double)v;
}

static void series_point(report *r, int dev, const ts_json *res, void *user)
{
    series_ctx *c = user;
    if (strcmp(str(res, "suite"), c->suite) || (c->name && strcmp(str(res, "name"), c->name))) return;
    double x = size_of(res, c->suite), y = c->use_gbs ? num(res, "gbs") : num(res, "gflops");
    if (x <= 0) return;
    char key[200];
    snprintf(key, sizeof key, "%s %s", r->devs[dev].key, c->name ? str(res, "impl") : str(res, "name"));
    int k = 0;
    while (k < c->nkeys && strcmp(c->keys[k], key)) k++;
    if (k == c->nkeys) {
        if (k == 32) return;
        snprintf(c->keys[c->nkeys++], sizeof c->keys[0], "%s", key);
    }
    if (c->pass == 0) {
        if (x < c->x0) c->x0 = x;
        if (x > c->x1) c->x1 = x;
        if (y > c->y1) c->y1 = y;
        return;
    }
    int dashed = c->name && strcmp(str(res, "impl"), "tessera") != 0;
    if (c->have_last[k])
        html_out(&r->page, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='%s' stroke-width='2'%s/>\n", px(c->p, c->lastx[k]),
            py(c->p, c->lasty[k]), px(c->p, x), py(c->p, y), SVG_COLOR(k), dashed ? " stroke-dasharray='5 3'" : "");
    html_out(&r->page, "<circle cx='%.1f' cy='%.1f' r='3' fill='%s'><title>", px(c->p, x), py(c->p, y), SVG_COLOR(k));
    html_esc(&r->page, key);
    html_out(&r->page, ": %.4g at %.0f</title></circle>\n", y, x);
    c->lastx[k] = x, c->lasty[k] = y, c->have_last[k] = 1;
}

static int line_chart(report *r, const char *title, const char *suite, const char *name, int use_gbs,
                      const char *xlabel, const char *ylabel)
{
    series_ctx c = {.suite = suite, .name = name, .use_gbs = use_gbs, .x0 = 1e30};
    size_t mark = r->page.len;
    each_result(r, series_point, &c); /* first pass writes nothing */
    r->page.len = mark;
    if (c.nkeys == 0 || c.x1 <= 0) return 0;
    html_out(&r->page, "<h2>%s</h2>\n", title);
    plot p = {.logx = 2, .W = 560, .H = 340, .L = 60, .R = 20, .T = 20, .B = 40, .legend = c.nkeys};
    p.x0 = pow(2, floor(log2(c.x0))), p.x1 = pow(2, ceil(log2(c.x1)));
    if (p.x1 <= p.x0) p.x1 = p.x0 * 2;
    p.y0 = 0, p.y1 = c.y1 > 0 ? c.y1 * 1.15 : 1;
    svg_axes(&r->page, &p, xlabel, ylabel);
    c.pass = 1, c.p = &p;
    memset(c.have_last, 0, sizeof c.have_last);
    each_result(r, series_point, &c);
    for (int k = 0; k < c.nkeys; k++) svg_legend(&r->page, &p, k, SVG_COLOR(k), c.keys[k], name && !strstr(c.keys[k], " tessera"));
    html_out(&r->page, "</svg>\n");
    return 1;
}

/* ---- tables ---- */

typedef struct table_ctx {
    int dev;
    const char *suite;
} table_ctx;

static void table_row(report *r, int dev, const ts_json *res, void *user)
{
    table_ctx *t = user;
    if (dev != t->dev || (t->suite && strcmp(str(res, "suite"), t->suite))) return;
    html_out(&r->page, "<tr><td>");
    html_esc(&r->page, str(res, "suite"));
    html_out(&r->page, "</td><td>");
    html_esc(&r->page, str(res, "name"));
    html_out(&r->page, "</td><td>");
    html_esc(&r->page, str(res, "impl"));
    html_out(&r->page, "</td><td>");
    html_esc(&r->page, str(res, "shape"));
    double g = num(res, "gflops"), b = num(res, "gbs"), fr = num(res, "fraction");
    char t0[32], t1[32], t2[32];
    html_out(&r->page, "</td><td class=n>%s</td><td class=n>%s</td><td class=n>%s</td><td class=n>",
        ts_bench_fmt_time(num(res, "min_s"), t0, sizeof t0), ts_bench_fmt_time(num(res, "median_s"), t1, sizeof t1),
        ts_bench_fmt_time(num(res, "max_s"), t2, sizeof t2));
    if (g > 0) html_out(&r->page, "%.1f", g);
    html_out(&r->page, "</td><td class=n>");
    if (b > 0) html_out(&r->page, "%.2f", b);
    html_out(&r->page, "</td><td class=n>");
    if (fr > 0) html_out(&r->page, "%.0f%%", 100 * fr);
    html_out(&r->page, "</td></tr>\n");
}

/* Kernels across devices: tessera's result per (suite, name, shape) and device. */
typedef struct cross_ctx {
    char rows[256][200];
    int nrows;
    double val[256][64];  /* rates, or negative times (lower is better) */
    const char *unit[256];
} cross_ctx;

static void cross_collect(report *r, int dev, const ts_json *res, void *user)
{
    (void)r;
    cross_ctx *c = user;
    const char *suite = str(res, "suite");
    if (strcmp(str(res, "impl"), "tessera") || dev >= 64 || !strcmp(suite, "collectives")) return;
    char key[200];
    snprintf(key, sizeof key, "%s: %s [%s]", suite, str(res, "name"), str(res, "shape"));
    int k = 0;
    while (k < c->nrows && strcmp(c->rows[k], key)) k++;
    if (k == c->nrows) {
        if (k == 256) return;
        snprintf(c->rows[c->nrows++], sizeof c->rows[0], "%s", key);
    }
    int gbs = !strcmp(suite, "memory") || !strcmp(suite, "transfer") || !strcmp(str(res, "name"), "triad");
    if (!strcmp(str(res, "name"), "launch overhead")) c->unit[k] = "us", c->val[k][dev] = -1e6 * num(res, "median_s");
    else if (!strcmp(suite, "startup")) c->unit[k] = "s", c->val[k][dev] = -num(res, "median_s");
    else if (gbs) c->unit[k] = "GB/s", c->val[k][dev] = num(res, "gbs");
    else c->unit[k] = "GFLOP/s", c->val[k][dev] = num(res, "gflops");
}

static void cross_device(report *r)
{
    cross_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        r->page.oom = 1;
        return;
    }
    each_result(r, cross_collect, c);
    html_out(&r->page, "<h2>Across devices</h2>\n<p>tessera's figure for every kernel on every device; the bar shows each device "
           "against the best device for that kernel (for times, lower is better).</p>\n<table><tr><th>kernel</th>"
           "<th>unit</th>");
    int nd = r->ndevs < 64 ? r->ndevs : 64;
    for (int d = 0; d < nd; d++) {
        html_out(&r->page, "<th>");
        html_esc(&r->page, r->devs[d].key);
        html_out(&r->page, "</th>");
    }
    html_out(&r->page, "</tr>\n");
    for (int k = 0; k < c->nrows; k++) {
        double best = 0;
        for (int d = 0; d < nd; d++) {
            double v = c->val[k][d];
            if (v < 0) v = v != 0 ? 1.0 / -v : 0; /* lower time is better */
            if (v > best) best = v;
        }
        html_out(&r->page, "<tr><td>");
        html_esc(&r->page, c->rows[k]);
        html_out(&r->page, "</td><td>%s</td>", c->unit[k]);
        for (int d = 0; d < nd; d++) {
            double v = c->val[k][d];
            if (v == 0) {
                html_out(&r->page, "<td></td>");
                continue;
            }
            double rel = (v < 0 ? 1.0 / -v : v) / (best > 0 ? best : 1);
            html_out(&r->page, "<td class=n><svg width='60' height='10'><rect width='%.0f' height='10' fill='%s'/></svg> %.4g</td>",
                60 * rel, SVG_COLOR(d), v < 0 ? -v : v);
        }
        html_out(&r->page, "</tr>\n");
    }
    html_out(&r->page, "</table>\n");
    free(c);
}

/* GEMM: tessera against the device's reference library, shape by shape. */
typedef struct vs_ctx {
    int dev, pass;
    const ts_json *ref[64];
    const ts_json *mine[64];
    int n;
} vs_ctx;

static void vs_collect(report *r, int dev, const ts_json *res, void *user)
{
    (void)r;
    vs_ctx *c = user;
    if (dev != c->dev || strcmp(str(res, "suite"), "gemm")) return;
    if (!strncmp(str(res, "impl"), "tessera ", 8)) return; /* another dtype ("tessera bf16"): not the pair */
    int is_ref = strcmp(str(res, "impl"), "tessera") != 0;
    int k = 0;
    while (k < c->n && !(strcmp(str(c->mine[k] ? c->mine[k] : c->ref[k], "shape"), str(res, "shape")) == 0 &&
                         strcmp(str(c->mine[k] ? c->mine[k] : c->ref[k], "name"), str(res, "name")) == 0))
        k++;
    if (k == c->n) {
        if (k == 64) return;
        c->mine[k] = c->ref[k] = NULL;
        c->n++;
    }
    if (is_ref) c->ref[k] = res;
    else c->mine[k] = res;
}

static void vs_reference(report *r)
{
    for (int d = 0; d < r->ndevs; d++) {
        vs_ctx c = {.dev = d};
        each_result(r, vs_collect, &c);
        int any = 0;
        for (int k = 0; k < c.n; k++) any |= c.ref[k] && c.mine[k];
        if (!any) continue;
        html_out(&r->page, "<h3>");
        html_esc(&r->page, r->devs[d].label);
        html_out(&r->page, ": tessera against ");
        html_esc(&r->page, str(r->devs[d].info, "reference_blas"));
        html_out(&r->page, "</h3>\n<table><tr><th>kernel</th><th>shape</th><th>tessera GFLOP/s</th><th>reference GFLOP/s</th>"
               "<th>tessera / reference</th></tr>\n");
        for (int k = 0; k < c.n; k++) {
            if (!c.ref[k] || !c.mine[k]) continue;
            double a = num(c.mine[k], "gflops"), b = num(c.ref[k], "gflops");
            html_out(&r->page, "<tr><td>");
            html_esc(&r->page, str(c.mine[k], "name"));
            html_out(&r->page, "</td><td>");
            html_esc(&r->page, str(c.mine[k], "shape"));
            html_out(&r->page, "</td><td class=n>%.1f</td><td class=n>%.1f</td><td class=n>%.2f</td></tr>\n", a, b, b > 0 ? a / b : 0);
        }
        html_out(&r->page, "</table>\n");
    }
}

static ts_status load(report *r, const char *path)
{
    char *text;
    size_t n;
    ts_status st = ts_read_file(path, &text, &n);
    if (st) return st;
    ts_json *j;
    st = ts_json_parse(text, n, &j);
    free(text);
    if (st) return ts_error(TS_ERR_FORMAT, "%s is not a tessera bench JSON file: %s", path, ts_last_error());
    if (strcmp(ts_json_get_str(j, "format", ""), "tessera-bench-1") != 0 || !ts_json_get(j, "results")) {
        ts_json_free(j);
        return ts_error(TS_ERR_FORMAT, "%s is not a tessera bench JSON file (no \"format\": \"tessera-bench-1\")",
                        path);
    }
    int f = r->nfiles++;
    r->files[f] = j;
    r->paths[f] = path;
    const ts_json *devs = ts_json_get(j, "devices");
    for (size_t i = 0; devs && devs->type == TS_JSON_ARRAY && i < devs->count && r->ndevs < 256; i++) {
        const ts_json *info = &devs->items[i];
        /* one device of one run: files of the same host and day (bench.sh
         * writes kernels, train and collectives files of one run) whose
         * device has the same id, name and details. Two machines that share
         * a host name differ in their details (CPU features, BLAS kernels)
         * or their day; points of different runs never join one line. */
        int same = -1;
        for (int k = 0; k < r->ndevs && same < 0; k++) {
            const ts_json *fk = r->files[__builtin_ctzll(r->devs[k].files)];
            if (!strcmp(str(fk, "host"), str(j, "host")) && !strncmp(str(fk, "date"), str(j, "date"), 10) &&
                !strcmp(str(r->devs[k].info, "id"), str(info, "id")) &&
                !strcmp(str(r->devs[k].info, "name"), str(info, "name")) &&
                !strcmp(str(r->devs[k].info, "details"), str(info, "details")))
                same = k;
        }
        if (same >= 0) {
            rdev *d = &r->devs[same];
            d->files |= 1ull << f;
            if (d->peak <= 0) d->peak = num(info, "peak_gflops");
            if (d->triad <= 0) d->triad = num(info, "triad_gbs");
            continue;
        }
        rdev *d = &r->devs[r->ndevs++];
        d->files = 1ull << f;
        d->info = info;
        d->peak = num(d->info, "peak_gflops");
        d->triad = num(d->info, "triad_gbs");
        /* the run in the key when the host has runs of other days or machines */
        int runs_of_host = 0;
        for (int k = 0; k < r->ndevs - 1; k++)
            if (!strcmp(str(r->files[__builtin_ctzll(r->devs[k].files)], "host"), str(j, "host")) &&
                !strcmp(str(r->devs[k].info, "id"), str(info, "id")))
                runs_of_host++;
        if (runs_of_host) {
            snprintf(d->key, sizeof d->key, "%s/%s #%d (%.10s)", str(j, "host"), str(d->info, "id"), runs_of_host + 1,
                     str(j, "date"));
            /* the first run of this host and id gets its date too */
            for (int k = 0; k < r->ndevs - 1; k++) {
                const ts_json *fk = r->files[__builtin_ctzll(r->devs[k].files)];
                if (!strcmp(str(fk, "host"), str(j, "host")) && !strcmp(str(r->devs[k].info, "id"), str(info, "id")) &&
                    !strchr(r->devs[k].key, '#')) {
                    char old[sizeof r->devs[k].key];
                    snprintf(old, sizeof old, "%s", r->devs[k].key);
                    snprintf(r->devs[k].key, sizeof r->devs[k].key, "%.160s #1 (%.10s)", old, str(fk, "date"));
                    memcpy(old, r->devs[k].key, sizeof old);
                    old[sizeof old - 1] = 0;
                    snprintf(r->devs[k].label, sizeof r->devs[k].label, "%s: %s", old, str(r->devs[k].info, "name"));
                }
            }
        } else {
            snprintf(d->key, sizeof d->key, "%s/%s", str(j, "host"), str(d->info, "id"));
        }
        /* through a copy: GCC cannot tell that the name is not inside *d */
        char key[sizeof d->key];
        memcpy(key, d->key, sizeof key);
        snprintf(d->label, sizeof d->label, "%s: %s", key, str(d->info, "name"));
    }
    return TS_OK;
}

ts_status ts_bench_report(const char *dir, const char *const *json_files, int nfiles)
{
    if (!dir || nfiles < 1) return ts_error(TS_ERR_INVALID_ARG, "bench report: a directory and JSON files are needed");
    if (nfiles > 64) return ts_error(TS_ERR_INVALID_ARG, "bench report: at most 64 JSON files, got %d", nfiles);
    report *r = calloc(1, sizeof *r);
    if (!r) return ts_error(TS_ERR_OOM, "bench report: no memory");
    ts_status st = TS_OK;
    for (int i = 0; i < nfiles && !st; i++) st = load(r, json_files[i]);
    if (!st) {
        html_out(&r->page, "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>tessera bench</title>\n<style>"
               "body{font-family:sans-serif;margin:24px;max-width:1200px;color:#222}"
               "table{border-collapse:collapse;font-size:12px;margin:8px 0}"
               "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}td.n{text-align:right;"
               "font-variant-numeric:tabular-nums}th{background:#f3f3f3}code{background:#f3f3f3;padding:1px 3px}"
               ".charts{display:flex;flex-wrap:wrap;gap:16px}h3{margin-bottom:4px}</style></head><body>\n");
        html_out(&r->page, "<h1>tessera bench</h1>\n<h2>Runs</h2>\n<table><tr><th>file</th><th>date</th><th>host</th><th>command"
               "</th><th>versions</th></tr>\n");
        for (int f = 0; f < r->nfiles; f++) {
            html_out(&r->page, "<tr><td>");
            html_esc(&r->page, r->paths[f]);
            html_out(&r->page, "</td><td>");
            html_esc(&r->page, str(r->files[f], "date"));
            html_out(&r->page, "</td><td>");
            html_esc(&r->page, str(r->files[f], "host"));
            html_out(&r->page, " (");
            html_esc(&r->page, str(r->files[f], "os"));
            html_out(&r->page, ", %lld CPUs)</td><td><code>", (long long)ts_json_get_int(r->files[f], "host_cpus", 0));
            html_esc(&r->page, str(r->files[f], "command"));
            html_out(&r->page, "</code></td><td>");
            const ts_json *v = ts_json_get(r->files[f], "versions");
            for (size_t i = 0; v && v->type == TS_JSON_OBJECT && i < v->count; i++) {
                html_esc(&r->page, v->keys[i]);
                html_out(&r->page, ": ");
                if (v->items[i].type == TS_JSON_STRING) html_esc(&r->page, v->items[i].string);
                html_out(&r->page, "<br>");
            }
            html_out(&r->page, "</td></tr>\n");
        }
        html_out(&r->page, "</table>\n<h2>Devices</h2>\n<table><tr><th>device</th><th>type</th><th>driver</th><th>peak GFLOP/s "
               "(FMA kernel)</th><th>triad GB/s</th><th>reference BLAS</th><th>details</th></tr>\n");
        for (int d = 0; d < r->ndevs; d++) {
            html_out(&r->page, "<tr><td><span style='color:%s'>&#9632;</span> ", SVG_COLOR(d));
            html_esc(&r->page, r->devs[d].label);
            html_out(&r->page, "</td><td>");
            html_esc(&r->page, str(r->devs[d].info, "type"));
            html_out(&r->page, "</td><td>");
            html_esc(&r->page, str(r->devs[d].info, "driver"));
            html_out(&r->page, "</td><td class=n>%.1f</td><td class=n>%.2f</td><td>", r->devs[d].peak, r->devs[d].triad);
            html_esc(&r->page, str(r->devs[d].info, "reference_blas"));
            html_out(&r->page, "</td><td>");
            html_esc(&r->page, str(r->devs[d].info, "details"));
            html_out(&r->page, "</td></tr>\n");
        }
        html_out(&r->page, "</table>\n<h2>Rooflines</h2>\n<p>Each kernel at its arithmetic intensity (model flop and byte counts) "
               "under the device's own measured limits: the FMA kernel's peak and the triad's bandwidth. Hover a "
               "point for its name.</p>\n<div class=charts>\n");
        for (int d = 0; d < r->ndevs; d++) {
            html_out(&r->page, "<div><h3>");
            html_esc(&r->page, r->devs[d].label);
            html_out(&r->page, "</h3>\n");
            roofline(r, d);
            html_out(&r->page, "</div>\n");
        }
        html_out(&r->page, "</div>\n");
        if (line_chart(r, "GEMM rate against size", "gemm", "square", 0, "M = N = K", "GFLOP/s"))
            html_out(&r->page, "<p>Square products (M=N=K), tessera solid, the device's reference library dashed.</p>\n");
        vs_reference(r);
        line_chart(r, "Attention against context length", "attention", NULL, 0, "context length T", "GFLOP/s");
        if (line_chart(r, "Allreduce bus bandwidth", "collectives", NULL, 1, "message bytes", "bus bandwidth GB/s"))
            html_out(&r->page, "<p>Allreduce bus bandwidth (algbw x 2(n-1)/n) per strategy, one process's memcpy for scale.</p>\n");
        cross_device(r);
        for (int d = 0; d < r->ndevs; d++) {
            html_out(&r->page, "<h2>All results: ");
            html_esc(&r->page, r->devs[d].label);
            html_out(&r->page, "</h2>\n<table><tr><th>suite</th><th>kernel</th><th>implementation</th><th>shape</th><th>min</th>"
                   "<th>median</th><th>max</th><th>GFLOP/s</th><th>GB/s</th><th>of limit</th></tr>\n");
            table_ctx t = {.dev = d};
            each_result(r, table_row, &t);
            html_out(&r->page, "</table>\n");
        }
        html_out(&r->page, "</body></html>\n");
        if (r->page.oom) st = ts_error(TS_ERR_OOM, "bench report: no memory for the page");
    }
    if (!st) st = ts_mkdir_p(dir);
    if (!st) {
        char path[4096];
        snprintf(path, sizeof path, "%s/index.html", dir);
        st = ts_write_file_atomic(path, r->page.s, r->page.len);
    }
    for (int f = 0; f < r->nfiles; f++) ts_json_free(r->files[f]);
    free(r->page.s);
    free(r);
    return st;
}
