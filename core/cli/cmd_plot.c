/* `tessera plot OUT.html RUN...`: the training curves of one or more runs
 * on one self-contained page: loss (train solid, validation dashed), the
 * learning rate, throughput and the gradient norm against the step, one
 * colour per run, and a table of what each run was. A RUN is a run
 * directory (its log.jsonl) or a log file itself. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "fileio.h"
#include "internal.h"
#include "json.h"
#include "options.h"
#include "svg.h"

enum { MAX_RUNS = 10 }; /* one palette colour each */

typedef struct series {
    double *x, *y;
    int n, cap;
} series;

typedef enum { S_LOSS, S_VAL, S_LR, S_RATE, S_NORM, S_COUNT } series_kind;
static const char *const field[S_COUNT] = {"loss", "val_loss", "lr", "tokens_per_s", "grad_norm"};

typedef struct run_log {
    char path[4096];
    char label[256];
    series s[S_COUNT];
    ts_json *start; /* the last "start" event (settings, device, layout) */
    ts_json *end;   /* the last "end" or "stopped" event */
    int lines, bad;
} run_log;

static int push(series *s, double x, double y)
{
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 256;
        double *nx = realloc(s->x, (size_t)cap * sizeof *nx);
        if (!nx) return -1;
        s->x = nx;
        double *ny = realloc(s->y, (size_t)cap * sizeof *ny);
        if (!ny) return -1;
        s->y = ny, s->cap = cap;
    }
    s->x[s->n] = x, s->y[s->n] = y, s->n++;
    return 0;
}

/* A resumed run's log holds each step once (train truncates it to the
 * checkpoint); a log written by hand may not: a later entry for a step
 * replaces the line from there on, as the run that wrote it did. */
static int add_point(series *s, double x, double y)
{
    while (s->n > 0 && s->x[s->n - 1] >= x) s->n--;
    return push(s, x, y);
}

static ts_status read_log(run_log *r, const char *arg)
{
    struct stat sb;
    if (stat(arg, &sb) != 0) return ts_error(TS_ERR_IO, "'%s' does not exist", arg);
    if (S_ISDIR(sb.st_mode)) snprintf(r->path, sizeof r->path, "%s/log.jsonl", arg);
    else snprintf(r->path, sizeof r->path, "%s", arg);
    snprintf(r->label, sizeof r->label, "%s", arg);
    size_t len = strlen(r->label);
    while (len > 1 && r->label[len - 1] == '/') r->label[--len] = '\0';
    char *text = NULL;
    size_t n = 0;
    TRY(ts_read_file(r->path, &text, &n));
    ts_status st = TS_OK;
    for (char *line = text, *next; !st && line < text + n; line = next) {
        char *nl = memchr(line, '\n', (size_t)(text + n - line));
        next = nl ? nl + 1 : text + n;
        size_t ll = (size_t)((nl ? nl : text + n) - line);
        if (ll == 0) continue;
        r->lines++;
        ts_json *j = NULL;
        if (ts_json_parse(line, ll, &j) != TS_OK || j->type != TS_JSON_OBJECT) {
            /* a run killed mid-write leaves a torn last line: skip it, say so */
            r->bad++;
            ts_json_free(j);
            continue;
        }
        const char *ev = ts_json_get_str(j, "event", NULL);
        const ts_json *step = ts_json_get(j, "step");
        if (ev && !strcmp(ev, "start")) {
            ts_json_free(r->start);
            r->start = j;
            continue;
        }
        if (ev && (!strcmp(ev, "end") || !strcmp(ev, "stopped"))) {
            ts_json_free(r->end);
            r->end = j;
            continue;
        }
        if (!ev && step && step->type == TS_JSON_NUMBER) {
            for (int k = 0; k < S_COUNT; k++) {
                const ts_json *v = ts_json_get(j, field[k]);
                if (v && v->type == TS_JSON_NUMBER && isfinite(v->number) && add_point(&r->s[k], step->number, v->number))
                    st = ts_error(TS_ERR_OOM, "no memory for %s", r->path);
            }
        }
        ts_json_free(j);
    }
    free(text);
    if (!st && r->s[S_LOSS].n == 0 && r->s[S_VAL].n == 0)
        st = ts_error(TS_ERR_FORMAT, "%s has no training steps (%d lines; is it a tessera train log?)", r->path,
                      r->lines);
    return st;
}

/* One chart of one kind of series across every run. */
static void chart(html_page *pg, run_log *runs, int nruns, const series_kind *kinds, int nkinds, const char *title,
                  const char *ylabel, int logy)
{
    plot p = {.logy = logy, .W = 560, .H = 320, .L = 64, .R = 20, .T = 20, .B = 40};
    int any = 0;
    p.x0 = INFINITY, p.x1 = -INFINITY, p.y0 = INFINITY, p.y1 = -INFINITY;
    for (int r = 0; r < nruns; r++)
        for (int k = 0; k < nkinds; k++) {
            const series *s = &runs[r].s[kinds[k]];
            for (int i = 0; i < s->n; i++) {
                if (logy && !(s->y[i] > 0)) continue;
                any = 1;
                p.x0 = fmin(p.x0, s->x[i]), p.x1 = fmax(p.x1, s->x[i]);
                p.y0 = fmin(p.y0, s->y[i]), p.y1 = fmax(p.y1, s->y[i]);
            }
        }
    if (!any) return;
    if (p.x1 <= p.x0) p.x0 -= 1, p.x1 += 1;
    if (logy) {
        p.y0 = pow(10, floor(log10(p.y0))), p.y1 = pow(10, ceil(log10(p.y1)));
        if (p.y1 <= p.y0) p.y1 = p.y0 * 10;
    } else {
        double pad = p.y1 > p.y0 ? 0.05 * (p.y1 - p.y0) : fabs(p.y0) * 0.1 + 1e-6;
        p.y0 = p.y0 >= 0 && p.y0 - pad < 0 ? 0 : p.y0 - pad;
        p.y1 += pad;
    }
    for (int r = 0; r < nruns; r++)
        for (int k = 0; k < nkinds; k++)
            if (runs[r].s[kinds[k]].n) p.legend++;
    html_out(pg, "<div><h3>%s</h3>\n", title);
    svg_axes(pg, &p, "step", ylabel);
    int row = 0;
    for (int r = 0; r < nruns; r++)
        for (int k = 0; k < nkinds; k++) {
            const series *s = &runs[r].s[kinds[k]];
            if (!s->n) continue;
            int dashed = kinds[k] == S_VAL;
            /* a lone point (one eval) gets a marker: a line of one point is invisible */
            html_out(pg, "<polyline fill='none' stroke='%s' stroke-width='%s'%s points='", SVG_COLOR(r),
                     dashed ? "2" : "1.5", dashed ? " stroke-dasharray='5 3'" : "");
            for (int i = 0; i < s->n; i++)
                if (!logy || s->y[i] > 0) html_out(pg, "%.1f,%.1f ", px(&p, s->x[i]), py(&p, s->y[i]));
            html_out(pg, "'/>\n");
            if (dashed || s->n == 1)
                for (int i = 0; i < s->n; i++) {
                    html_out(pg, "<circle cx='%.1f' cy='%.1f' r='3' fill='%s'><title>", px(&p, s->x[i]), py(&p, s->y[i]),
                             SVG_COLOR(r));
                    html_esc(pg, runs[r].label);
                    html_out(pg, " step %.0f: %s %.5g</title></circle>\n", s->x[i], field[kinds[k]], s->y[i]);
                }
            char label[400];
            snprintf(label, sizeof label, "%s%s", runs[r].label,
                     nkinds == 1 ? "" : kinds[k] == S_VAL ? " (validation)" : " (train)");
            svg_legend(pg, &p, row++, SVG_COLOR(r), label, dashed);
        }
    html_out(pg, "</svg></div>\n");
}

static void cell_num(html_page *pg, double v, const char *fmt)
{
    html_out(pg, "<td class=n>");
    if (isfinite(v)) html_out(pg, fmt, v);
    html_out(pg, "</td>");
}

static void runs_table(html_page *pg, run_log *runs, int nruns)
{
    html_out(pg, "<table><tr><th>run</th><th>device</th><th>layout</th><th>parameters</th><th>steps</th>"
                 "<th>last loss</th><th>best validation loss</th><th>tokens/s</th><th>MFU</th></tr>\n");
    for (int r = 0; r < nruns; r++) {
        run_log *L = &runs[r];
        html_out(pg, "<tr><td><span style='color:%s'>&#9632;</span> ", SVG_COLOR(r));
        html_esc(pg, L->label);
        html_out(pg, "</td><td>");
        html_esc(pg, ts_json_get_str(L->start, "device", ""));
        html_out(pg, "</td><td>");
        html_esc(pg, ts_json_get_str(L->start, "layout", ""));
        html_out(pg, "</td>");
        cell_num(pg, ts_json_get_num(L->start, "params", NAN), "%.0f");
        const series *loss = &L->s[S_LOSS], *val = &L->s[S_VAL];
        double best = INFINITY;
        for (int i = 0; i < val->n; i++) best = fmin(best, val->y[i]);
        cell_num(pg, loss->n ? loss->x[loss->n - 1] : NAN, "%.0f");
        cell_num(pg, loss->n ? loss->y[loss->n - 1] : NAN, "%.4f");
        cell_num(pg, best, "%.4f");
        /* the whole run's rate when it ended, else the last step's */
        const series *rate = &L->s[S_RATE];
        double tps = L->end ? ts_json_get_num(L->end, "tokens_per_s", NAN) : rate->n ? rate->y[rate->n - 1] : NAN;
        cell_num(pg, tps, "%.0f");
        double mfu = L->end ? ts_json_get_num(L->end, "mfu", NAN) : NAN;
        cell_num(pg, 100 * mfu, "%.1f%%");
        html_out(pg, "</tr>\n");
    }
    html_out(pg, "</table>\n");
    for (int r = 0; r < nruns; r++) {
        if (!runs[r].bad) continue;
        html_out(pg, "<p>");
        html_esc(pg, runs[r].path);
        html_out(pg, ": %d of %d lines were not JSON objects and were skipped (a run killed mid-write leaves "
                     "a torn last line).</p>\n", runs[r].bad, runs[r].lines);
    }
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

int cmd_plot(int argc, char **argv)
{
    static const char usage[] =
        "usage: tessera plot OUT.html RUN [RUN...]\n\n"
        "Training curves of up to 10 runs on one self-contained HTML page: loss (train solid,\n"
        "validation dashed), learning rate, tokens/s and gradient norm against the step, and a\n"
        "table of each run's device, layout, size and result. A RUN is a run directory\n"
        "(train --out; its log.jsonl is read) or a log file (train --log).\n";
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(usage, stdout);
        return 0;
    }
    if (argc < 3) {
        fprintf(stderr, "tessera plot: give the page to write and at least one run\n\n%s", usage);
        return 2;
    }
    const char *out = argv[1];
    int nruns = argc - 2;
    /* the page is replaced atomically; refusing other names keeps a swapped
     * argument order from writing over a log */
    if (!ends_with(out, ".html") && !ends_with(out, ".htm")) {
        fprintf(stderr, "tessera plot: the page to write must end in .html ('%s' does not): "
                        "tessera plot OUT.html RUN...\n", out);
        return 2;
    }
    if (nruns > MAX_RUNS) {
        fprintf(stderr, "tessera plot: at most %d runs on one page (%d given)\n", MAX_RUNS, nruns);
        return 2;
    }
    run_log *runs = calloc((size_t)nruns, sizeof *runs);
    if (!runs) return cli_fail("plot");
    ts_status st = TS_OK;
    for (int r = 0; r < nruns && !st; r++) st = read_log(&runs[r], argv[2 + r]);
    html_page pg = {0};
    if (!st) {
        html_out(&pg, "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>tessera runs</title>\n<style>"
                      "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
                      "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}td.n{text-align:right}"
                      ".charts{display:flex;flex-wrap:wrap;gap:1em}h3{font-size:14px;margin:0.5em 0}"
                      "</style></head><body>\n<h1>tessera runs</h1>\n");
        runs_table(&pg, runs, nruns);
        html_out(&pg, "<div class=charts>\n");
        static const series_kind loss[] = {S_LOSS, S_VAL}, lr[] = {S_LR}, rate[] = {S_RATE}, norm[] = {S_NORM};
        chart(&pg, runs, nruns, loss, 2, "Loss", "loss (nats/token)", 0);
        chart(&pg, runs, nruns, lr, 1, "Learning rate", "learning rate", 0);
        chart(&pg, runs, nruns, rate, 1, "Throughput", "tokens/s", 0);
        chart(&pg, runs, nruns, norm, 1, "Gradient norm (before clipping)", "gradient norm", 1);
        html_out(&pg, "</div>\n</body></html>\n");
        if (pg.oom) st = ts_error(TS_ERR_OOM, "no memory for the page");
    }
    if (!st) st = ts_write_file_atomic(out, pg.s, pg.len);
    free(pg.s);
    for (int r = 0; r < nruns; r++) {
        for (int k = 0; k < S_COUNT; k++) free(runs[r].s[k].x), free(runs[r].s[k].y);
        ts_json_free(runs[r].start);
        ts_json_free(runs[r].end);
    }
    free(runs);
    if (st) return cli_fail("plot");
    printf("%s (%d run%s)\n", out, nruns, nruns == 1 ? "" : "s");
    return 0;
}
