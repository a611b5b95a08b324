#include "svg.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void html_out(html_page *p, const char *fmt, ...)
{
    va_list ap;
    if (p->oom) return;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(p->s ? p->s + p->len : NULL, p->s ? p->cap - p->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) return;
        if (p->s && (size_t)n < p->cap - p->len) {
            p->len += (size_t)n;
            return;
        }
        size_t cap = p->cap * 2 + (size_t)n + 4096;
        char *s = realloc(p->s, cap);
        if (!s) {
            p->oom = 1;
            return;
        }
        p->s = s, p->cap = cap;
    }
}

void html_esc(html_page *p, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '<': html_out(p, "&lt;"); break;
        case '>': html_out(p, "&gt;"); break;
        case '&': html_out(p, "&amp;"); break;
        case '"': html_out(p, "&quot;"); break;
        case '\'': html_out(p, "&#39;"); break;
        default: html_out(p, "%c", *s);
        }
    }
}

const char *const svg_palette[10] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                     "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};

double px(const plot *p, double x)
{
    double a = p->logx ? log10(x / p->x0) / log10(p->x1 / p->x0) : (x - p->x0) / (p->x1 - p->x0);
    return p->L + a * (p->W - p->L - p->R);
}

double py(const plot *p, double y)
{
    double a = p->logy ? log10(y / p->y0) / log10(p->y1 / p->y0) : (y - p->y0) / (p->y1 - p->y0);
    return p->H - p->B - a * (p->H - p->T - p->B);
}

static void fmt_tick(char *buf, size_t n, double v, int binary)
{
    if (binary && v >= 1048576) snprintf(buf, n, "%gM", v / 1048576);
    else if (binary && v >= 1e4) snprintf(buf, n, "%gK", v / 1024);
    else if (binary) snprintf(buf, n, "%g", v);
    else if (fabs(v) >= 1e6) snprintf(buf, n, "%gM", v / 1e6);
    else if (fabs(v) >= 1e3) snprintf(buf, n, "%gk", v / 1e3);
    else snprintf(buf, n, "%.4g", fabs(v) < 1e-12 ? 0.0 : v);
}

void svg_axes(html_page *out, const plot *p, const char *xlabel, const char *ylabel)
{
    html_out(out, "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' font-family='sans-serif' font-size='11'>\n",
        p->W, p->H + (p->legend ? 8 + SVG_LEGEND_ROW * p->legend : 0));
    html_out(out, "<rect x='%d' y='%d' width='%d' height='%d' fill='#fff' stroke='#999'/>\n", p->L, p->T,
        p->W - p->L - p->R, p->H - p->T - p->B);
    char t[32];
    for (int axis = 0; axis < 2; axis++) {
        int lg = axis ? p->logy : p->logx;
        double a = axis ? p->y0 : p->x0, b = axis ? p->y1 : p->x1;
        if (!(b > a)) continue;
        double step = lg == 2 ? 2 : lg ? 10 : pow(10, floor(log10((b - a) / 2)));
        if (!lg && (b - a) / step > 8) step *= 2;
        if (!lg && (b - a) / step > 8) step *= 2.5;
        if (lg == 2 && log2(b / a) > 12) step = 4;
        double v = lg == 2 ? pow(2, ceil(log2(a) - 1e-9)) : lg ? pow(10, ceil(log10(a) - 1e-9)) : ceil(a / step) * step;
        for (int k = 0; v <= b * (1 + 1e-9) + (lg ? 0 : 1e-9 * (b - a)) && k < 40; k++, v = lg ? v * step : v + step) {
            fmt_tick(t, sizeof t, v, lg == 2);
            if (axis) {
                double y = py(p, v);
                html_out(out, "<line x1='%d' x2='%d' y1='%.1f' y2='%.1f' stroke='#eee'/>", p->L, p->W - p->R, y, y);
                html_out(out, "<text x='%d' y='%.1f' text-anchor='end'>%s</text>\n", p->L - 4, y + 4, t);
            } else {
                double x = px(p, v);
                html_out(out, "<line x1='%.1f' x2='%.1f' y1='%d' y2='%d' stroke='#eee'/>", x, x, p->T, p->H - p->B);
                html_out(out, "<text x='%.1f' y='%d' text-anchor='middle'>%s</text>\n", x, p->H - p->B + 14, t);
            }
        }
    }
    html_out(out, "<text x='%d' y='%d' text-anchor='middle'>", (p->L + p->W - p->R) / 2, p->H - 6);
    html_esc(out, xlabel);
    html_out(out, "</text><text transform='translate(14,%d) rotate(-90)' text-anchor='middle'>", (p->T + p->H - p->B) / 2);
    html_esc(out, ylabel);
    html_out(out, "</text>\n");
}

void svg_legend(html_page *out, const plot *p, int i, const char *color, const char *label, int dashed)
{
    int x = p->L, y = p->H + 12 + SVG_LEGEND_ROW * i;
    html_out(out, "<line x1='%d' x2='%d' y1='%d' y2='%d' stroke='%s' stroke-width='3'%s/>", x, x + 18, y - 4, y - 4, color,
        dashed ? " stroke-dasharray='4 3'" : "");
    html_out(out, "<text x='%d' y='%d'>", x + 24, y);
    html_esc(out, label);
    html_out(out, "</text>\n");
}
