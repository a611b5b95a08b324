/* Self-contained HTML pages with inline SVG charts, for `bench report` and
 * `tessera plot`: a growing text buffer, escaping, and one chart frame
 * (axes, ticks, labels, a legend below the plot so it never hides data). */
#ifndef TS_BENCH_SVG_H
#define TS_BENCH_SVG_H

#include <stddef.h>

typedef struct html_page {
    char *s; /* the text so far, NUL-terminated once anything is written */
    size_t len, cap;
    int oom; /* an allocation failed: the page is incomplete */
} html_page;

void html_out(html_page *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void html_esc(html_page *p, const char *s); /* text with < > & " escaped */

extern const char *const svg_palette[10];
#define SVG_COLOR(i) svg_palette[(i) % 10]
enum { SVG_LEGEND_ROW = 16 };

typedef struct plot {
    double x0, x1, y0, y1; /* data range */
    int logx, logy;        /* 1: log10 axis; 2 (x only): log axis with ticks at powers of two */
    int W, H, L, R, T, B;  /* size and margins of the chart */
    int legend;            /* legend entries, drawn below the chart (never over data) */
} plot;

double px(const plot *p, double x); /* data to pixel coordinates */
double py(const plot *p, double y);
/* Opens <svg> and draws the frame, grid, ticks and axis labels; the caller
 * draws the data, the legend entries, and closes with </svg>. */
void svg_axes(html_page *out, const plot *p, const char *xlabel, const char *ylabel);
void svg_legend(html_page *out, const plot *p, int i, const char *color, const char *label, int dashed);

#endif
