/* Text classification: labeled files, label sets and metrics; then the
 * fine-tuning run in named steps, evaluation and prediction. */
#include "tessera/classify.h"
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"
#include "json.h"
#include "tessera/checkpoint.h"
#include "tessera/data.h"
#include "tessera/device.h"
#include "tessera/parallel.h"
#include "tessera/train.h"

/* ---- formats ---- */

static const char *const format_names[] = {"auto", "jsonl", "csv", "tsv", "lines"};

const char *ts_text_format_name(ts_text_format f)
{
    return (int)f >= 0 && (int)f < 5 ? format_names[f] : "?";
}

int ts_text_format_parse(const char *name)
{
    for (int i = 0; i < 5; i++)
        if (!strcmp(name, format_names[i])) return i;
    return -1;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcasecmp(s + a - b, suffix);
}

ts_text_format ts_text_format_of(const char *path)
{
    if (ends_with(path, ".jsonl") || ends_with(path, ".json") || ends_with(path, ".ndjson")) return TS_FORMAT_JSONL;
    if (ends_with(path, ".csv")) return TS_FORMAT_CSV;
    if (ends_with(path, ".tsv") || ends_with(path, ".tab")) return TS_FORMAT_TSV;
    return TS_FORMAT_LINES;
}

/* ---- reading labeled files ---- */

/* Examples as they are read: growing arrays. */
static ts_status add_example(ts_labeled_data *d, int64_t *cap, const char *text, size_t text_len,
                             const char *label, int64_t line)
{
    if (d->n == *cap) {
        int64_t nc = *cap ? 2 * *cap : 1024;
        char **t = realloc(d->texts, (size_t)nc * sizeof *t);
        if (t) d->texts = t;
        char **l = realloc(d->labels, (size_t)nc * sizeof *l);
        if (l) d->labels = l;
        int64_t *ln = realloc(d->lines, (size_t)nc * sizeof *ln);
        if (ln) d->lines = ln;
        if (!t || !l || !ln) return ts_error(TS_ERR_OOM, "no memory for %lld examples", (long long)nc);
        *cap = nc;
    }
    char *tc = malloc(text_len + 1), *lc = label ? strdup(label) : NULL;
    if (!tc || (label && !lc)) {
        free(tc), free(lc);
        return ts_error(TS_ERR_OOM, "no memory");
    }
    memcpy(tc, text, text_len);
    tc[text_len] = '\0';
    d->texts[d->n] = tc, d->labels[d->n] = lc, d->lines[d->n] = line;
    d->n++;
    return TS_OK;
}

static int blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i])) return 0;
    return 1;
}

/* A text must hold more than white space and be UTF-8. */
static ts_status check_example(const ts_labeled_data *d, int64_t line, const char *text, size_t n)
{
    if (blank(text, n)) return ts_error(TS_ERR_FORMAT, "%s:%lld: the text is empty", d->path, (long long)line);
    char where[1100];
    snprintf(where, sizeof where, "%s:%lld: the text", d->path, (long long)line);
    return ts_check_text((const uint8_t *)text, n, where);
}

static ts_status missing_label(const ts_labeled_data *d, int64_t line, const char *field)
{
    return ts_error(TS_ERR_FORMAT, "%s:%lld: no label (column or member \"%s\")", d->path, (long long)line, field);
}

/* One JSON object per line. */
static ts_status read_jsonl(ts_labeled_data *d, char *text, size_t n, const ts_labeled_options *o, int64_t *cap)
{
    int64_t line = 0;
    for (size_t pos = 0; pos < n;) {
        char *s = text + pos, *nl = memchr(s, '\n', n - pos);
        size_t len = nl ? (size_t)(nl - s) : n - pos;
        pos += len + 1;
        line++;
        if (len && s[len - 1] == '\r') len--;
        if (blank(s, len)) continue;
        char where[1100];
        snprintf(where, sizeof where, "%s:%lld", d->path, (long long)line);
        TRY(ts_check_text((const uint8_t *)s, len, where));
        ts_json *j = NULL;
        if (ts_json_parse(s, len, &j) != TS_OK)
            return ts_error_context(TS_ERR_FORMAT, "%s: not a JSON object", where);
        ts_status st = TS_OK;
        const ts_json *t = ts_json_get(j, o->text_field), *l = ts_json_get(j, o->label_field);
        char num[64];
        const char *label = NULL;
        if (j->type != TS_JSON_OBJECT) st = ts_error(TS_ERR_FORMAT, "%s: not a JSON object", where);
        else if (!t || t->type != TS_JSON_STRING)
            st = ts_error(TS_ERR_FORMAT, "%s: no \"%s\" string member", where, o->text_field);
        else if (l && l->type == TS_JSON_STRING) label = l->string;
        else if (l && l->type == TS_JSON_NUMBER) {
            if (l->is_integer) snprintf(num, sizeof num, "%lld", (long long)l->integer);
            else snprintf(num, sizeof num, "%.17g", l->number);
            label = num;
        } else if (l && l->type != TS_JSON_NULL)
            st = ts_error(TS_ERR_FORMAT, "%s: the label \"%s\" must be a string or a number", where, o->label_field);
        if (!st && !label && o->need_labels) st = missing_label(d, line, o->label_field);
        if (!st && label && !*label) st = ts_error(TS_ERR_FORMAT, "%s: the label is empty", where);
        if (!st) st = check_example(d, line, t->string, strlen(t->string));
        if (!st) st = add_example(d, cap, t->string, strlen(t->string), label, line);
        ts_json_free(j);
        TRY(st);
    }
    return TS_OK;
}

/* One record of CSV (RFC 4180: quoted fields, "" for a quote, newlines
 * inside quotes) or TSV (tab-separated, no quoting) at text[*pos]: its
 * fields NUL-separated in *buf, their count in *nf; *lines counts the line
 * breaks it spans. Returns 0 at the end of the text. */
typedef struct record {
    char *buf;
    size_t cap;
    int nf, maxf;
    size_t *start;
} record;

static ts_status put_char(record *r, size_t *k, char ch)
{
    if (*k + 1 >= r->cap) {
        size_t nc = r->cap ? 2 * r->cap : 4096;
        char *b = realloc(r->buf, nc);
        if (!b) return ts_error(TS_ERR_OOM, "no memory");
        r->buf = b, r->cap = nc;
    }
    r->buf[(*k)++] = ch;
    return TS_OK;
}

static ts_status end_field(record *r, size_t *k, size_t begin)
{
    if (r->nf == r->maxf) {
        int nm = r->maxf ? 2 * r->maxf : 16;
        size_t *s = realloc(r->start, (size_t)nm * sizeof *s);
        if (!s) return ts_error(TS_ERR_OOM, "no memory");
        r->start = s, r->maxf = nm;
    }
    r->start[r->nf++] = begin;
    return put_char(r, k, '\0');
}

static ts_status read_record(record *r, const char *text, size_t n, size_t *pos, char sep, const char *path,
                             int64_t *line, int *got)
{
    size_t k = 0, begin = 0, p = *pos;
    int64_t first = *line;
    r->nf = 0;
    *got = 0;
    if (p >= n) return TS_OK;
    *got = 1;
    for (;;) {
        if (sep == ',' && p < n && text[p] == '"') {
            p++;
            for (;;) {
                if (p >= n)
                    return ts_error(TS_ERR_FORMAT, "%s:%lld: a quoted field is never closed", path, (long long)first);
                if (text[p] == '"') {
                    if (p + 1 < n && text[p + 1] == '"') {
                        TRY(put_char(r, &k, '"'));
                        p += 2;
                        continue;
                    }
                    p++;
                    break;
                }
                if (text[p] == '\n') (*line)++;
                TRY(put_char(r, &k, text[p++]));
            }
            if (p < n && text[p] != sep && text[p] != '\n' && !(text[p] == '\r' && (p + 1 >= n || text[p + 1] == '\n')))
                return ts_error(TS_ERR_FORMAT, "%s:%lld: text after a closing quote (a quote inside a field is "
                                "written \"\")", path, (long long)*line);
        } else {
            while (p < n && text[p] != sep && text[p] != '\n') {
                if (text[p] == '\r' && (p + 1 >= n || text[p + 1] == '\n')) {
                    p++;
                    continue;
                }
                TRY(put_char(r, &k, text[p++]));
            }
        }
        TRY(end_field(r, &k, begin));
        begin = k;
        if (p < n && text[p] == '\r') p++;
        if (p >= n || text[p] == '\n') {
            p++;
            (*line)++;
            break;
        }
        p++; /* the separator */
    }
    *pos = p;
    return TS_OK;
}

static int find_column(const record *r, const char *name)
{
    for (int i = 0; i < r->nf; i++)
        if (!strcmp(r->buf + r->start[i], name)) return i;
    return -1;
}

static ts_status read_table(ts_labeled_data *d, const char *text, size_t n, char sep, const ts_labeled_options *o,
                            int64_t *cap)
{
    record r = {0};
    size_t pos = 0;
    int64_t line = 1, at = 1;
    int got = 0, tcol = -1, lcol = -1, ncols = 0;
    ts_status st = TS_OK;
    /* the header: the first record that is not blank */
    while (!st) {
        at = line;
        st = read_record(&r, text, n, &pos, sep, d->path, &line, &got);
        if (st || !got || !(r.nf == 1 && !r.buf[0])) break;
    }
    if (!st && !got) st = ts_error(TS_ERR_FORMAT, "%s: no header row (the file is empty)", d->path);
    if (!st) {
        ncols = r.nf;
        tcol = find_column(&r, o->text_field);
        lcol = find_column(&r, o->label_field);
        if (tcol < 0 || (lcol < 0 && o->need_labels)) {
            char cols[512] = "";
            size_t k = 0;
            for (int i = 0; i < r.nf && k < sizeof cols; i++)
                k += (size_t)snprintf(cols + k, sizeof cols - k, "%s\"%s\"", i ? ", " : "", r.buf + r.start[i]);
            st = ts_error(TS_ERR_FORMAT, "%s:%lld: the header names no \"%s\" column (it has %s; see --text-field "
                          "and --label-field)", d->path, (long long)at, tcol < 0 ? o->text_field : o->label_field,
                          cols);
        }
    }
    while (!st) {
        at = line;
        st = read_record(&r, text, n, &pos, sep, d->path, &line, &got);
        if (st || !got) break;
        if (r.nf == 1 && !r.buf[0]) continue; /* a blank line */
        if (r.nf != ncols) {
            st = ts_error(TS_ERR_FORMAT, "%s:%lld: %d fields, but the header has %d", d->path, (long long)at, r.nf,
                          ncols);
            break;
        }
        const char *t = r.buf + r.start[tcol], *l = lcol >= 0 ? r.buf + r.start[lcol] : NULL;
        if (l && !*l) {
            if (o->need_labels) st = missing_label(d, at, o->label_field);
            l = NULL;
        }
        if (!st) st = check_example(d, at, t, strlen(t));
        if (!st) st = add_example(d, cap, t, strlen(t), l, at);
    }
    free(r.buf), free(r.start);
    return st;
}

static ts_status read_lines(ts_labeled_data *d, const char *text, size_t n, const ts_labeled_options *o, int64_t *cap)
{
    if (o->need_labels)
        return ts_error(TS_ERR_FORMAT, "%s: plain lines of text have no labels (use JSON lines, CSV or TSV)", d->path);
    int64_t line = 0;
    for (size_t pos = 0; pos < n;) {
        const char *s = text + pos, *nl = memchr(s, '\n', n - pos);
        size_t len = nl ? (size_t)(nl - s) : n - pos;
        pos += len + 1;
        line++;
        if (len && s[len - 1] == '\r') len--;
        if (blank(s, len)) continue;
        TRY(check_example(d, line, s, len));
        TRY(add_example(d, cap, s, len, NULL, line));
    }
    return TS_OK;
}

ts_status ts_labeled_load(ts_labeled_data *d, const char *path, const ts_labeled_options *o)
{
    memset(d, 0, sizeof *d);
    snprintf(d->path, sizeof d->path, "%s", path);
    char *text;
    size_t n;
    TRY(ts_read_file(path, &text, &n));
    char *body = text;
    if (n >= 3 && !memcmp(body, "\xEF\xBB\xBF", 3)) body += 3, n -= 3; /* a UTF-8 byte order mark */
    ts_text_format f = o->format == TS_FORMAT_AUTO ? ts_text_format_of(path) : o->format;
    int64_t cap = 0;
    ts_status st;
    switch (f) {
    case TS_FORMAT_JSONL: st = read_jsonl(d, body, n, o, &cap); break;
    case TS_FORMAT_CSV: st = read_table(d, body, n, ',', o, &cap); break;
    case TS_FORMAT_TSV: st = read_table(d, body, n, '\t', o, &cap); break;
    default: st = read_lines(d, body, n, o, &cap); break;
    }
    free(text);
    if (!st && d->n == 0) st = ts_error(TS_ERR_FORMAT, "%s holds no examples", path);
    if (!st && !(d->ids = malloc((size_t)d->n * sizeof *d->ids))) st = ts_error(TS_ERR_OOM, "no memory");
    for (int64_t i = 0; !st && i < d->n; i++) d->ids[i] = -1;
    if (st) ts_labeled_free(d);
    return st;
}

void ts_labeled_free(ts_labeled_data *d)
{
    for (int64_t i = 0; i < d->n; i++) {
        free(d->texts[i]);
        if (d->labels) free(d->labels[i]);
    }
    free(d->texts), free(d->labels), free(d->lines), free(d->ids);
    memset(d, 0, sizeof *d);
}

ts_status ts_labeled_corpus(const char *path, char **text, size_t *n)
{
    if (ts_text_format_of(path) == TS_FORMAT_LINES) return ts_read_file(path, text, n);
    ts_labeled_options o = {.format = TS_FORMAT_AUTO, .text_field = "text", .label_field = "label"};
    ts_labeled_data d;
    TRY(ts_labeled_load(&d, path, &o));
    size_t total = 0;
    for (int64_t i = 0; i < d.n; i++) total += strlen(d.texts[i]) + 1;
    char *out = malloc(total + 1);
    if (!out) {
        ts_labeled_free(&d);
        return ts_error(TS_ERR_OOM, "no memory for the texts of %s", path);
    }
    size_t k = 0;
    for (int64_t i = 0; i < d.n; i++) {
        size_t len = strlen(d.texts[i]);
        memcpy(out + k, d.texts[i], len);
        k += len;
        out[k++] = '\n';
    }
    out[k] = '\0';
    ts_labeled_free(&d);
    *text = out, *n = k;
    return TS_OK;
}

/* ---- label sets ---- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

ts_status ts_label_set_from(ts_label_set *s, const ts_labeled_data *d)
{
    memset(s, 0, sizeof *s);
    char **all = malloc((size_t)(d->n ? d->n : 1) * sizeof *all);
    if (!all) return ts_error(TS_ERR_OOM, "no memory");
    int64_t k = 0;
    for (int64_t i = 0; i < d->n; i++)
        if (d->labels && d->labels[i]) all[k++] = d->labels[i];
    qsort(all, (size_t)k, sizeof *all, cmp_str);
    int64_t u = 0;
    for (int64_t i = 0; i < k; i++)
        if (u == 0 || strcmp(all[u - 1], all[i]) != 0) all[u++] = all[i];
    ts_status st = TS_OK;
    if (u < 2)
        st = ts_error(TS_ERR_FORMAT, "%s holds %lld distinct label%s: a classifier needs at least 2", d->path,
                      (long long)u, u == 1 ? "" : "s");
    else if (u > 65536) st = ts_error(TS_ERR_FORMAT, "%s holds %lld distinct labels (at most 65536)", d->path, (long long)u);
    if (!st && !(s->names = calloc((size_t)u, sizeof *s->names))) st = ts_error(TS_ERR_OOM, "no memory");
    for (int64_t i = 0; !st && i < u; i++) {
        if (!(s->names[i] = strdup(all[i]))) st = ts_error(TS_ERR_OOM, "no memory");
        s->n = (int)i + 1;
    }
    free(all);
    if (st) ts_label_set_free(s);
    return st;
}

void ts_label_set_free(ts_label_set *s)
{
    for (int i = 0; i < s->n; i++) free(s->names[i]);
    free(s->names);
    memset(s, 0, sizeof *s);
}

int ts_label_set_find(const ts_label_set *s, const char *name)
{
    int lo = 0, hi = s->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(s->names[mid], name);
        if (!c) return mid;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

ts_status ts_label_set_json(const ts_label_set *s, char **json, size_t *n)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return ts_error(TS_ERR_OOM, "no memory");
    fputc('[', f);
    for (int i = 0; i < s->n; i++) {
        if (i) fputs(", ", f);
        ts_json_write_string(f, s->names[i]);
    }
    fputs("]\n", f);
    fclose(f);
    if (!buf) return ts_error(TS_ERR_OOM, "no memory");
    *json = buf, *n = len;
    return TS_OK;
}

ts_status ts_label_set_parse(ts_label_set *s, const char *json, size_t n, const char *name)
{
    memset(s, 0, sizeof *s);
    ts_json *j = NULL;
    if (ts_json_parse(json, n, &j) != TS_OK) return ts_error_context(TS_ERR_FORMAT, "%s", name);
    ts_status st = TS_OK;
    if (j->type != TS_JSON_ARRAY || j->count < 2 || j->count > 65536)
        st = ts_error(TS_ERR_FORMAT, "%s: not a JSON array of 2 to 65536 labels", name);
    if (!st && !(s->names = calloc(j->count, sizeof *s->names))) st = ts_error(TS_ERR_OOM, "no memory");
    for (size_t i = 0; !st && i < j->count; i++) {
        const ts_json *e = &j->items[i];
        if (e->type != TS_JSON_STRING || !e->string[0] || (i > 0 && strcmp(s->names[i - 1], e->string) >= 0))
            st = ts_error(TS_ERR_FORMAT, "%s: labels must be non-empty strings in increasing order", name);
        else if (!(s->names[i] = strdup(e->string))) st = ts_error(TS_ERR_OOM, "no memory");
        else s->n = (int)i + 1;
    }
    ts_json_free(j);
    if (st) ts_label_set_free(s);
    return st;
}

ts_status ts_labeled_assign(ts_labeled_data *d, const ts_label_set *s, int allow_unseen, int64_t *unseen)
{
    int64_t u = 0;
    for (int64_t i = 0; i < d->n; i++) {
        const char *l = d->labels ? d->labels[i] : NULL;
        d->ids[i] = l ? ts_label_set_find(s, l) : -1;
        if (!l || d->ids[i] >= 0) continue;
        if (!allow_unseen)
            return ts_error(TS_ERR_FORMAT, "%s:%lld: the label \"%.200s\" is not one the model was trained on (%d "
                            "labels; count such examples as errors with --count-unseen)", d->path,
                            (long long)d->lines[i], l, s->n);
        u++;
    }
    if (unseen) *unseen = u;
    return TS_OK;
}

/* ---- metrics ---- */

void ts_metrics_free(ts_class_metrics *m)
{
    free(m->confusion), free(m->precision), free(m->recall), free(m->f1), free(m->support);
    memset(m, 0, sizeof *m);
}

ts_status ts_metrics_compute(ts_class_metrics *m, int K, const int64_t *confusion, double loss)
{
    memset(m, 0, sizeof *m);
    m->K = K;
    m->confusion = malloc((size_t)(K + 1) * (size_t)K * sizeof *m->confusion);
    m->precision = calloc((size_t)K, sizeof *m->precision);
    m->recall = calloc((size_t)K, sizeof *m->recall);
    m->f1 = calloc((size_t)K, sizeof *m->f1);
    m->support = calloc((size_t)K, sizeof *m->support);
    if (!m->confusion || !m->precision || !m->recall || !m->f1 || !m->support) {
        ts_metrics_free(m);
        return ts_error(TS_ERR_OOM, "no memory");
    }
    memcpy(m->confusion, confusion, (size_t)(K + 1) * (size_t)K * sizeof *confusion);
    m->loss = loss;
    for (int t = 0; t <= K; t++)
        for (int p = 0; p < K; p++) {
            int64_t v = confusion[t * K + p];
            m->total += v;
            if (t == K) m->unseen += v;
            else m->support[t] += v;
            if (t == p) m->correct += v;
        }
    for (int k = 0; k < K; k++) {
        int64_t predicted = 0, tp = confusion[k * K + k];
        for (int t = 0; t <= K; t++) predicted += confusion[t * K + k];
        m->precision[k] = predicted ? (double)tp / (double)predicted : 0.0;
        m->recall[k] = m->support[k] ? (double)tp / (double)m->support[k] : 0.0;
        double s = m->precision[k] + m->recall[k];
        m->f1[k] = s > 0 ? 2.0 * m->precision[k] * m->recall[k] / s : 0.0;
        m->macro_precision += m->precision[k] / K;
        m->macro_recall += m->recall[k] / K;
        m->macro_f1 += m->f1[k] / K;
    }
    m->accuracy = m->total ? (double)m->correct / (double)m->total : 0.0;
    return TS_OK;
}

void ts_metrics_print(FILE *f, const ts_class_metrics *m, const ts_label_set *labels)
{
    int w = 9;
    for (int k = 0; k < m->K; k++)
        if ((int)strlen(labels->names[k]) > w) w = (int)strlen(labels->names[k]);
    if (w > 32) w = 32;
    fprintf(f, "%-*s %9s %9s %9s %9s\n", w, "class", "precision", "recall", "f1", "support");
    for (int k = 0; k < m->K; k++)
        fprintf(f, "%-*.*s %9.3f %9.3f %9.3f %9lld\n", w, w, labels->names[k], m->precision[k], m->recall[k],
                m->f1[k], (long long)m->support[k]);
    fprintf(f, "%-*s %9.3f %9.3f %9.3f %9lld\n", w, "macro avg", m->macro_precision, m->macro_recall, m->macro_f1,
            (long long)m->total);
    fprintf(f, "%-*s %9s %9s %9.3f %9lld   (%lld of %lld right)\n", w, "accuracy", "", "", m->accuracy,
            (long long)m->total, (long long)m->correct, (long long)m->total);
    if (m->unseen)
        fprintf(f, "%lld examples have a label the model does not know: counted as wrong\n", (long long)m->unseen);
    fprintf(f, "\nconfusion matrix (rows: true label, columns: predicted)\n%-*s", w, "");
    int cw = 7;
    for (int k = 0; k < m->K; k++)
        if ((int)strlen(labels->names[k]) > cw) cw = strlen(labels->names[k]) > 12 ? 12 : (int)strlen(labels->names[k]);
    for (int k = 0; k < m->K; k++) fprintf(f, " %*.*s", cw, cw, labels->names[k]);
    fputc('\n', f);
    for (int t = 0; t <= m->K; t++) {
        if (t == m->K && !m->unseen) break;
        fprintf(f, "%-*.*s", w, w, t < m->K ? labels->names[t] : "(unseen)");
        for (int p = 0; p < m->K; p++) fprintf(f, " %*lld", cw, (long long)m->confusion[t * m->K + p]);
        fputc('\n', f);
    }
}

void ts_metrics_write_json(FILE *f, const ts_class_metrics *m, const ts_label_set *labels)
{
    char a[32], p[32], r[32], f1[32], l[32];
    fprintf(f, "{\"accuracy\": %s, \"macro_precision\": %s, \"macro_recall\": %s, \"macro_f1\": %s, \"loss\": %s, "
            "\"examples\": %lld, \"correct\": %lld, \"unseen\": %lld, \"labels\": [",
            ts_json_float(a, sizeof a, m->accuracy), ts_json_float(p, sizeof p, m->macro_precision),
            ts_json_float(r, sizeof r, m->macro_recall), ts_json_float(f1, sizeof f1, m->macro_f1),
            ts_json_float(l, sizeof l, m->loss), (long long)m->total, (long long)m->correct, (long long)m->unseen);
    for (int k = 0; k < m->K; k++) {
        if (k) fputs(", ", f);
        ts_json_write_string(f, labels->names[k]);
    }
    fputs("], \"per_class\": {", f);
    for (int k = 0; k < m->K; k++) {
        fputs(k ? ", " : "", f);
        ts_json_write_string(f, labels->names[k]);
        fprintf(f, ": {\"precision\": %s, \"recall\": %s, \"f1\": %s, \"support\": %lld}",
                ts_json_float(p, sizeof p, m->precision[k]), ts_json_float(r, sizeof r, m->recall[k]),
                ts_json_float(f1, sizeof f1, m->f1[k]), (long long)m->support[k]);
    }
    fputs("}, \"confusion\": [", f);
    for (int t = 0; t <= m->K; t++) {
        if (t == m->K && !m->unseen) break;
        fputs(t ? ", [" : "[", f);
        for (int q = 0; q < m->K; q++) fprintf(f, "%s%lld", q ? ", " : "", (long long)m->confusion[t * m->K + q]);
        fputc(']', f);
    }
    fputs("]}", f);
}

/* ---- settings ----
 * One table drives the settings' JSON (state.json, the MPI agreement) and
 * its parse. Keys are the options of `tessera classify train` without the
 * dashes. */

typedef struct setting {
    const char *key;
    char kind; /* s string, i int64, n int, f float, d double, u uint64 */
    size_t off, size;
    double lo, hi;
} setting;

#define CF(f) offsetof(ts_classify_config, f), sizeof(((ts_classify_config *)0)->f)
static const setting settings_table[] = {
    {"train", 's', CF(train), 0, 0},
    {"val", 's', CF(val), 0, 0},
    {"val_fraction", 'd', CF(val_fraction), 0, 0.9},
    {"format", 's', CF(format), 0, 0},
    {"text_field", 's', CF(text_field), 0, 0},
    {"label_field", 's', CF(label_field), 0, 0},
    {"init", 's', CF(init), 0, 0},
    {"tokenizer", 's', CF(tokenizer), 0, 0},
    {"layers", 'i', CF(layers), 1, 1024},
    {"heads", 'i', CF(heads), 1, 65536},
    {"width", 'i', CF(width), 1, 65536},
    {"max_len", 'i', CF(max_len), 1, 1 << 20},
    {"pool", 's', CF(pool), 0, 0},
    {"attention", 's', CF(attention), 0, 0},
    {"class_weights", 's', CF(class_weights), 0, 0},
    {"epochs", 'i', CF(epochs), 0, 1e6},
    {"batch", 'i', CF(batch), 1, 1 << 20},
    {"warmup", 'i', CF(warmup), -1, 1e15},
    {"optim", 's', CF(optim), 0, 0},
    {"lr", 'f', CF(lr), 1e-12, 100},
    {"trunk_lr", 'f', CF(trunk_lr), -1, 100},
    {"min_lr", 'f', CF(min_lr), 0, 100},
    {"beta1", 'f', CF(beta1), 0, 0.999999},
    {"beta2", 'f', CF(beta2), 0, 0.999999},
    {"eps", 'f', CF(eps), 1e-30, 1},
    {"weight_decay", 'f', CF(weight_decay), 0, 100},
    {"grad_clip", 'f', CF(grad_clip), 0, 1e30},
    {"token_dropout", 'd', CF(token_dropout), 0, 0.9},
    {"lm_weight", 'd', CF(lm_weight), 0, 100},
    {"schedule", 's', CF(schedule), 0, 0},
    {"best_by", 's', CF(best_by), 0, 0},
    {"seed", 'u', CF(seed), 0, 9223372036854775807.0},
    {"ensemble", 'i', CF(ensemble), 1, 1024},
    {"out", 's', CF(out), 0, 0},
    {"keep", 'n', CF(keep), 0, 1 << 30},
    {"log", 's', CF(log), 0, 0},
    {"eval_batch", 'i', CF(eval_batch), 1, 1 << 20},
    {"char_ngrams", 'i', CF(char_ngrams), 0, 1 << 24},
};
enum { NSETTINGS = sizeof settings_table / sizeof *settings_table };
static const char *const resumable[] = {"epochs", "out", "keep", "log", "eval_batch", NULL};

const char *const *ts_classify_resumable_settings(void) { return resumable; }

void ts_classify_defaults(ts_classify_config *c)
{
    memset(c, 0, sizeof *c);
    c->val_fraction = 0.1;
    snprintf(c->format, sizeof c->format, "auto");
    snprintf(c->text_field, sizeof c->text_field, "text");
    snprintf(c->label_field, sizeof c->label_field, "label");
    snprintf(c->tokenizer, sizeof c->tokenizer, "byte");
    c->layers = 4, c->heads = 4, c->width = 256, c->max_len = 128;
    snprintf(c->pool, sizeof c->pool, "last");
    snprintf(c->attention, sizeof c->attention, "causal");
    c->epochs = 5, c->batch = 32, c->warmup = -1;
    snprintf(c->optim, sizeof c->optim, "adamw");
    c->lr = 1e-3f, c->trunk_lr = -1.0f, c->min_lr = 1e-4f;
    c->beta1 = 0.9f, c->beta2 = 0.999f, c->eps = 1e-8f, c->weight_decay = 0.01f, c->grad_clip = 1.0f;
    snprintf(c->schedule, sizeof c->schedule, "cosine");
    snprintf(c->best_by, sizeof c->best_by, "accuracy");
    c->seed = 1337;
    c->ensemble = 1;
    snprintf(c->device, sizeof c->device, "auto");
    c->keep = 3;
    c->eval_batch = 64;
    c->progress = 1;
}

size_t ts_classify_settings_json(const ts_classify_config *c, char *buf, size_t n)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return 0;
    fputc('{', f);
    for (int i = 0; i < NSETTINGS; i++) {
        const setting *s = &settings_table[i];
        const char *p = (const char *)c + s->off;
        fprintf(f, "%s\"%s\": ", i ? ", " : "", s->key);
        char v[64];
        switch (s->kind) {
        case 's': ts_json_write_string(f, p); break;
        case 'i': fprintf(f, "%lld", (long long)*(const int64_t *)p); break;
        case 'n': fprintf(f, "%d", *(const int *)p); break;
        case 'u': fprintf(f, "%llu", (unsigned long long)*(const uint64_t *)p); break;
        case 'f': fputs(ts_json_float(v, sizeof v, *(const float *)p), f); break;
        default: fprintf(f, "%.15g", *(const double *)p); break;
        }
    }
    fputc('}', f);
    fclose(f);
    if (!text) return 0;
    if (n) snprintf(buf, n, "%s", text);
    free(text);
    return len;
}

ts_status ts_classify_settings_parse(const char *json, ts_classify_config *c)
{
    ts_json *j = NULL;
    TRY(ts_json_parse(json, strlen(json), &j));
    ts_status st = j->type == TS_JSON_OBJECT ? TS_OK : ts_error(TS_ERR_FORMAT, "settings are not a JSON object");
    for (int i = 0; i < NSETTINGS && !st; i++) {
        const setting *s = &settings_table[i];
        const ts_json *m = ts_json_get(j, s->key);
        char *p = (char *)c + s->off;
        if (!m) continue;
        if (s->kind == 's') {
            if (m->type != TS_JSON_STRING || strlen(m->string) >= s->size)
                st = ts_error(TS_ERR_FORMAT, "setting \"%s\" must be a string of at most %zu bytes", s->key, s->size - 1);
            else memcpy(p, m->string, strlen(m->string) + 1);
            continue;
        }
        int integral = s->kind != 'f' && s->kind != 'd';
        if (m->type != TS_JSON_NUMBER || (integral && !m->is_integer) || !(m->number >= s->lo && m->number <= s->hi)) {
            st = ts_error(TS_ERR_FORMAT, "setting \"%s\" must be %s from %g to %g", s->key,
                          integral ? "an integer" : "a number", s->lo, s->hi);
            continue;
        }
        switch (s->kind) {
        case 'i': *(int64_t *)p = m->integer; break;
        case 'n': *(int *)p = (int)m->integer; break;
        case 'u': *(uint64_t *)p = (uint64_t)m->integer; break;
        case 'f': *(float *)p = (float)m->number; break;
        default: *(double *)p = m->number; break;
        }
    }
    ts_json_free(j);
    return st;
}

/* ---- examples as tokens ---- */

typedef struct exset {
    int64_t n;
    int32_t *tok;         /* every example's tokens, one after another */
    int64_t *off;
    int32_t *len;
    int32_t *label;       /* class, or -1 (unseen or none) */
    int64_t *src;         /* index in its file */
    int64_t *ng_off;      /* with character n-grams: token i's are ng[ng_off[i] .. ng_off[i+1]) */
    int32_t *ng;
} exset;

static void exset_free(exset *e)
{
    free(e->tok), free(e->off), free(e->len), free(e->label), free(e->src), free(e->ng_off), free(e->ng);
    memset(e, 0, sizeof *e);
}

/* Token i's character n-grams (those of the unit of text it came from:
 * every byte of a word spelled in bytes reads the whole word's) appended to
 * e->ng; e->ng_off[i + 1] is set. */
static ts_status add_ngrams(exset *e, size_t *cap, size_t i, const uint8_t *unit, size_t len, int64_t buckets,
                            int same_unit)
{
    size_t at = (size_t)e->ng_off[i];
    if (at + TS_CLASSIFIER_MAX_NGRAMS > *cap) {
        size_t nc = 2 * (at + TS_CLASSIFIER_MAX_NGRAMS);
        int32_t *g = realloc(e->ng, nc * sizeof *g);
        if (!g) return ts_error(TS_ERR_OOM, "no memory for n-grams");
        e->ng = g, *cap = nc;
    }
    if (same_unit) { /* a byte of the previous token's word: its n-grams again, not hashed again */
        int64_t a = e->ng_off[i - 1], m = e->ng_off[i] - a;
        memcpy(e->ng + at, e->ng + a, (size_t)m * sizeof *e->ng);
        e->ng_off[i + 1] = (int64_t)at + m;
    } else
        e->ng_off[i + 1] = (int64_t)at + ts_char_ngrams(unit, len, buckets, e->ng + at, TS_CLASSIFIER_MAX_NGRAMS);
    return TS_OK;
}

/* The n-grams of count tokens ids (the start of text, n bytes) from index used on. */
static ts_status encode_ngrams(exset *e, size_t *cap, size_t *ocap, size_t used, const ts_tokenizer *tok,
                               const uint8_t *text, size_t n, const int32_t *ids, size_t all, size_t count,
                               int64_t buckets)
{
    if (used + count + 1 > *ocap) {
        size_t nc = 2 * (used + count + 1);
        int64_t *o = realloc(e->ng_off, nc * sizeof *o);
        if (!o) return ts_error(TS_ERR_OOM, "no memory for n-grams");
        e->ng_off = o, *ocap = nc;
    }
    uint32_t *start = malloc((all ? all : 1) * sizeof *start), *len = malloc((all ? all : 1) * sizeof *len);
    ts_status st = start && len ? ts_tokenizer_units(tok, text, n, ids, all, start, len)
                                : ts_error(TS_ERR_OOM, "no memory");
    for (size_t k = 0; k < count && !st; k++)
        st = add_ngrams(e, cap, used + k, text + start[k], len[k], buckets, k > 0 && start[k] == start[k - 1]);
    free(start), free(len);
    return st;
}

/* Tokenize examples which[0..n) of d, each cut to max_len tokens, with
 * each token's character n-grams when buckets > 0. */
static ts_status exset_encode(exset *e, const ts_labeled_data *d, const int64_t *which, int64_t n,
                              const ts_tokenizer *tok, int64_t max_len, int64_t buckets, int64_t *cut)
{
    memset(e, 0, sizeof *e);
    e->off = malloc((size_t)(n + 1) * sizeof *e->off);
    e->len = malloc((size_t)(n + 1) * sizeof *e->len);
    e->label = malloc((size_t)(n + 1) * sizeof *e->label);
    e->src = malloc((size_t)(n + 1) * sizeof *e->src);
    size_t cap = (size_t)(n + 1) * 16, used = 0, ng_cap = 0, ng_ocap = 0;
    e->tok = malloc(cap * sizeof *e->tok);
    if (buckets > 0 && (e->ng_off = malloc(sizeof *e->ng_off))) e->ng_off[0] = 0, ng_ocap = 1;
    if (!e->off || !e->len || !e->label || !e->src || !e->tok || (buckets > 0 && !e->ng_off)) {
        exset_free(e);
        return ts_error(TS_ERR_OOM, "no memory for %lld examples", (long long)n);
    }
    *cut = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t k = which ? which[i] : i;
        int32_t *ids = NULL;
        size_t count = 0;
        ts_status st = ts_tokenizer_encode(tok, (const uint8_t *)d->texts[k], strlen(d->texts[k]), &ids, &count);
        if (st) {
            exset_free(e);
            return ts_error_context(st, "%s:%lld", d->path, (long long)d->lines[k]);
        }
        size_t all = count;
        if ((int64_t)count > max_len) count = (size_t)max_len, (*cut)++;
        if (buckets > 0) {
            st = encode_ngrams(e, &ng_cap, &ng_ocap, used, tok, (const uint8_t *)d->texts[k], strlen(d->texts[k]), ids,
                               all, count, buckets);
            if (st) {
                free(ids);
                exset_free(e);
                return ts_error_context(st, "%s:%lld", d->path, (long long)d->lines[k]);
            }
        }
        if (used + count > cap) {
            size_t nc = 2 * (used + count);
            int32_t *t = realloc(e->tok, nc * sizeof *t);
            if (!t) {
                free(ids);
                exset_free(e);
                return ts_error(TS_ERR_OOM, "no memory for tokens");
            }
            e->tok = t, cap = nc;
        }
        memcpy(e->tok + used, ids, count * sizeof *ids);
        free(ids);
        e->off[i] = (int64_t)used, e->len[i] = (int32_t)count, e->label[i] = d->ids[k], e->src[i] = k;
        used += count;
    }
    e->n = n;
    return TS_OK;
}

/* Batch buffers for up to B rows of up to T tokens and K classes. */
typedef struct batchbuf {
    int32_t *tokens, *lengths, *labels;
    float *weights, *logits, *grad, *probs;
    int32_t *from;         /* [B, T]: the place in its text of each token (token dropout moves them) */
    int64_t *ng_off;       /* [B*T + 1]: each position's n-grams (when the examples have them) */
    int32_t *ng;           /* [B*T*TS_CLASSIFIER_MAX_NGRAMS] */
} batchbuf;

static void batchbuf_free(batchbuf *b)
{
    free(b->tokens), free(b->lengths), free(b->labels), free(b->weights), free(b->logits), free(b->grad), free(b->probs);
    free(b->from), free(b->ng_off), free(b->ng);
    memset(b, 0, sizeof *b);
}

/* ngrams: room for each position's character n-grams (only with them) */
static ts_status batchbuf_alloc(batchbuf *b, int64_t B, int64_t T, int64_t K, bool ngrams)
{
    memset(b, 0, sizeof *b);
    b->tokens = malloc((size_t)(B * T) * sizeof *b->tokens);
    b->lengths = malloc((size_t)B * sizeof *b->lengths);
    b->labels = malloc((size_t)B * sizeof *b->labels);
    b->weights = malloc((size_t)B * sizeof *b->weights);
    b->logits = malloc((size_t)(B * K) * sizeof *b->logits);
    b->grad = malloc((size_t)(B * K) * sizeof *b->grad);
    b->probs = malloc((size_t)(B * K) * sizeof *b->probs);
    b->from = malloc((size_t)(B * T) * sizeof *b->from);
    if (ngrams) {
        b->ng_off = malloc((size_t)(B * T + 1) * sizeof *b->ng_off);
        b->ng = malloc((size_t)(B * T) * TS_CLASSIFIER_MAX_NGRAMS * sizeof *b->ng);
    }
    if (!b->tokens || !b->lengths || !b->labels || !b->weights || !b->logits || !b->grad || !b->probs || !b->from ||
        (ngrams && (!b->ng_off || !b->ng))) {
        batchbuf_free(b);
        return ts_error(TS_ERR_OOM, "no memory for batches");
    }
    return TS_OK;
}

/* The padded length of a batch: its longest text, rounded up to a multiple
 * of 8 (fewer shapes to allocate for), at most max_len. */
static int64_t batch_len(const exset *e, const int64_t *rows, int64_t n, int64_t max_len)
{
    int64_t T = 1;
    for (int64_t i = 0; i < n; i++)
        if (e->len[rows[i]] > T) T = e->len[rows[i]];
    T = (T + 7) / 8 * 8;
    return T < max_len ? T : max_len;
}

/* Rows rows[0..n) as a padded [n, T] batch (pad token 0) with lengths and labels. */
static void fill_batch(const exset *e, const int64_t *rows, int64_t n, int64_t T, batchbuf *b)
{
    for (int64_t i = 0; i < n; i++) {
        int64_t r = rows[i];
        int32_t len = e->len[r];
        memcpy(b->tokens + i * T, e->tok + e->off[r], (size_t)len * sizeof *b->tokens);
        for (int64_t t = len; t < T; t++) b->tokens[i * T + t] = 0;
        for (int64_t t = 0; t < T; t++) b->from[i * T + t] = (int32_t)t;
        b->lengths[i] = len;
        b->labels[i] = e->label[r];
    }
}

/* Word dropout as regularisation: each token of a training text is left out
 * with probability p, the rest closed up (at least one kept). The draw
 * hashes (seed, step, the row's place in the global batch, position), so
 * any layout and a resumed run leave out the same tokens. */
static void drop_tokens(batchbuf *b, int64_t n, int64_t T, double p, uint64_t seed, int64_t step, int64_t row0)
{
    if (!(p > 0)) return;
    uint64_t cut = (uint64_t)(p * 18446744073709551615.0);
    for (int64_t i = 0; i < n; i++) {
        int32_t *t = b->tokens + i * T, *from = b->from + i * T, len = b->lengths[i], kept = 0;
        for (int32_t k = 0; k < len; k++) {
            uint64_t h = seed * 0x9E3779B97F4A7C15ull ^ (uint64_t)step * 0xD1B54A32D192ED03ull ^
                         (uint64_t)(row0 + i) * 0x94D049BB133111EBull ^ (uint64_t)k * 0xBF58476D1CE4E5B9ull;
            h ^= h >> 31, h *= 0xBF58476D1CE4E5B9ull, h ^= h >> 29, h *= 0x94D049BB133111EBull, h ^= h >> 32;
            if (h >= cut || (kept == 0 && k == len - 1)) from[kept] = from[k], t[kept++] = t[k];
        }
        for (int32_t k = kept; k < len; k++) t[k] = 0;
        b->lengths[i] = kept;
    }
}

/* Each position's n-grams for rows rows[0..n) of a batch (after any
 * dropout): ng_off/ng as ts_classifier_forward_ngrams reads them, for
 * positions b*T + t; padding has none. NULL when e has no n-grams. */
static const int64_t *batch_ngrams(const exset *e, const int64_t *rows, int64_t n, int64_t T, batchbuf *b)
{
    if (!e->ng_off) return NULL;
    int64_t k = 0;
    b->ng_off[0] = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t t = 0; t < T; t++) {
            if (t < b->lengths[i]) {
                int64_t tok = e->off[rows[i]] + b->from[i * T + t];
                for (int64_t j = e->ng_off[tok]; j < e->ng_off[tok + 1]; j++) b->ng[k++] = e->ng[j];
            }
            b->ng_off[i * T + t + 1] = k;
        }
    return b->ng_off;
}

/* Indices 0..n-1 ordered by length (then index): batches of similar
 * lengths need little padding. Sorted as (length, index) pairs, so that
 * the comparison needs no state outside them. */
typedef struct {
    int32_t len;
    int64_t i;
} length_index;

static int cmp_by_len(const void *a, const void *b)
{
    const length_index *x = a, *y = b;
    return x->len != y->len ? (x->len > y->len) - (x->len < y->len) : (x->i > y->i) - (x->i < y->i);
}

static int64_t *order_by_length(const exset *e)
{
    size_t n = (size_t)(e->n ? e->n : 1);
    int64_t *o = malloc(n * sizeof *o);
    length_index *k = malloc(n * sizeof *k);
    if (!o || !k) {
        free(o), free(k);
        return NULL;
    }
    for (int64_t i = 0; i < e->n; i++) k[i].len = e->len[i], k[i].i = i;
    qsort(k, (size_t)e->n, sizeof *k, cmp_by_len);
    for (int64_t i = 0; i < e->n; i++) o[i] = k[i].i;
    free(k);
    return o;
}

/* Score this process's share of the examples of e (in length order): the
 * confusion counts ((K+1) x K, row K for unseen labels; NULL to skip),
 * the summed loss over labeled examples and their count (accumulated),
 * and every probability into probs[src * K + k] (NULL to skip). The
 * caller sums the counts over processes. */
static ts_status score_share(ts_classifier *m, const exset *e, int64_t max_len, int64_t batch, int rank, int size,
                             double *confusion, double *loss_count, float *probs)
{
    int64_t K = m->cfg.n_classes, lo = e->n * rank / size, hi = e->n * (rank + 1) / size;
    int64_t *order = order_by_length(e);
    batchbuf b;
    ts_status st = order ? batchbuf_alloc(&b, batch, max_len, K, e->ng_off != NULL) : ts_error(TS_ERR_OOM, "no memory");
    if (!order || st) {
        free(order);
        return st;
    }
    for (int64_t first = lo; first < hi && !st; first += batch) {
        int64_t n = hi - first < batch ? hi - first : batch, *rows = order + first;
        int64_t T = batch_len(e, rows, n, max_len);
        fill_batch(e, rows, n, T, &b);
        const int64_t *ng_off = batch_ngrams(e, rows, n, T, &b);
        st = ts_classifier_forward_ngrams(m, b.tokens, b.lengths, ng_off, b.ng, n, T, b.logits);
        if (st) break;
        double lsum = 0;
        ts_classifier_cross_entropy(b.logits, n, K, b.labels, NULL, 0.0, &lsum, NULL, b.probs);
        loss_count[0] += lsum;
        for (int64_t i = 0; i < n; i++) {
            int64_t best = 0;
            for (int64_t k = 1; k < K; k++)
                if (b.logits[i * K + k] > b.logits[i * K + best]) best = k;
            if (b.labels[i] >= 0) loss_count[1] += 1;
            if (confusion) confusion[(b.labels[i] >= 0 ? b.labels[i] : K) * K + best] += 1;
            if (probs) memcpy(probs + e->src[rows[i]] * K, b.probs + i * K, (size_t)K * sizeof *probs);
        }
    }
    batchbuf_free(&b);
    free(order);
    return st;
}

/* Metrics of e over every process: each scores its share, the counts are summed. */
static ts_status evaluate_set(ts_classifier *m, const exset *e, int64_t max_len, int64_t batch, ts_comm *comm,
                              ts_class_metrics *out)
{
    int64_t K = m->cfg.n_classes, cells = (K + 1) * K;
    double *acc = calloc((size_t)(cells + 2), sizeof *acc);
    int64_t *counts = malloc((size_t)cells * sizeof *counts);
    ts_status st = acc && counts ? TS_OK : ts_error(TS_ERR_OOM, "no memory");
    if (!st) st = score_share(m, e, max_len, batch, ts_comm_rank(comm), ts_comm_size(comm), acc, acc + cells, NULL);
    st = ts_comm_agree(comm, st, "evaluating");
    if (!st) st = ts_comm_allreduce_f64(comm, acc, cells + 2, TS_REDUCE_SUM, "evaluation counts");
    for (int64_t i = 0; !st && i < cells; i++) counts[i] = (int64_t)llround(acc[i]);
    if (!st) st = ts_metrics_compute(out, (int)K, counts, acc[cells + 1] > 0 ? acc[cells] / acc[cells + 1] : NAN);
    free(acc), free(counts);
    return st;
}

/* ---- classifier checkpoints ---- */

/* A checkpoint directory: path itself when it holds model.safetensors,
 * else the one its `best` names (prefer_best) or its `latest`. */
static ts_status resolve_checkpoint(const char *path, int prefer_best, char *out, size_t n)
{
    char f[4400], *text = NULL;
    size_t len;
    struct stat sb;
    snprintf(f, sizeof f, "%s/model.safetensors", path);
    if (stat(f, &sb) == 0) {
        snprintf(out, n, "%s", path);
        return TS_OK;
    }
    snprintf(f, sizeof f, "%s/best", path);
    if (prefer_best && stat(f, &sb) == 0 && ts_read_file(f, &text, &len) == TS_OK) {
        text[strcspn(text, "\r\n")] = '\0';
        int named = !strncmp(text, "step_", 5) && !strchr(text, '/');
        snprintf(out, n, "%s/%s", path, text);
        snprintf(f, sizeof f, "%s/model.safetensors", out);
        free(text);
        if (named && stat(f, &sb) == 0) return TS_OK;
    }
    ts_clear_error();
    return ts_checkpoint_latest(path, out, n);
}

static ts_status save_optimizer(const ts_classifier *m, const ts_optimizer *o, const char *path)
{
    char step[32], hyper[256];
    const char *meta[8];
    ts_checkpoint_optim_meta(o, step, hyper, meta);
    const ts_tensor *blobs[2] = {&o->m, &o->v};
    const char *prefixes[2] = {"m.", "v."};
    return ts_classifier_save_blobs(m, blobs, prefixes, o->v.block ? 2 : o->m.block ? 1 : 0, path, meta);
}

static ts_status load_optimizer(const ts_classifier *m, ts_optimizer *o, const char *path)
{
    ts_safetensors f;
    TRY(ts_safetensors_open(path, &f));
    const char *hyper = ts_safetensors_meta(&f, "optimizer"), *step = ts_safetensors_meta(&f, "step");
    char kind[64];
    snprintf(kind, sizeof kind, "\"kind\": \"%s\"", ts_optim_kind_name(o->kind));
    ts_status st = TS_OK;
    if (!hyper || !step || !strstr(hyper, kind))
        st = ts_error(TS_ERR_FORMAT, "%s holds no %s optimizer state", path, ts_optim_kind_name(o->kind));
    else o->step = strtoll(step, NULL, 10);
    ts_safetensors_close(&f);
    if (!st && o->m.block) st = ts_classifier_load_blob(m, &o->m, path, "m.");
    if (!st && o->v.block) st = ts_classifier_load_blob(m, &o->v, path, "v.");
    return st;
}

/* ---- a fine-tuning run, step by step ---- */

typedef struct crun {
    ts_classify_config c;     /* the settings in force */
    ts_classify_result *res;
    ts_grid g;
    int have_grid, root, verbose, tty;
    double lm_loss;           /* the last step's language-model loss (--lm-weight) */
    FILE *out, *log;
    ts_device *dev;
    ts_tokenizer tok;
    int have_tok;
    ts_labeled_data file, vfile;  /* the training file, and the held-out file if there is one */
    ts_label_set labels;
    exset train, val;
    int64_t cut;               /* texts longer than max_len */
    float *class_w;            /* [K] */
    uint64_t fingerprint;      /* of the examples and the tokenizer */
    ts_classifier m;
    int have_model;
    ts_optimizer opt;
    int have_opt;
    int64_t spe, total;        /* steps per epoch, in all */
    int64_t *perm, perm_epoch; /* the order of the current epoch */
    batchbuf bb;
    char ckpt[4300];           /* the checkpoint resumed from, or "" */
    ts_train_state state;
    char settings[TS_SETTINGS_MAX];
    int64_t saved_step;
    double best_score;         /* higher is better; -inf before any evaluation */
    ts_class_metrics last;     /* the last evaluation (K = 0: none) */
    int64_t last_step;
} crun;

static void crun_free(crun *r)
{
    if (r->log) fclose(r->log);
    batchbuf_free(&r->bb);
    free(r->perm), free(r->class_w);
    ts_metrics_free(&r->last);
    if (r->have_opt) ts_optimizer_free(&r->opt);
    if (r->have_model) ts_classifier_free(&r->m);
    exset_free(&r->train), exset_free(&r->val);
    ts_label_set_free(&r->labels);
    ts_labeled_free(&r->file), ts_labeled_free(&r->vfile);
    if (r->have_tok) ts_tokenizer_free(&r->tok);
    if (r->have_grid) ts_grid_free(&r->g);
}

static ts_status one_of3(const char *what, const char *v, const char *a, const char *b, const char *c3)
{
    if (!strcmp(v, a) || !strcmp(v, b) || (c3 && !strcmp(v, c3))) return TS_OK;
    return ts_error(TS_ERR_INVALID_ARG, "%s must be %s, %s%s%s, not '%s'", what, a, b, c3 ? " or " : "", c3 ? c3 : "",
                    v);
}

/* 1. Values and names in range, before anything is read or written. */
static ts_status check_config(const ts_classify_config *c)
{
    if (!c->train[0]) return ts_error(TS_ERR_INVALID_ARG, "no training file (--train)");
    if (ts_text_format_parse(c->format) < 0 || ts_text_format_parse(c->format) == TS_FORMAT_LINES)
        return ts_error(TS_ERR_INVALID_ARG, "--format must be auto, jsonl, csv or tsv, not '%s'", c->format);
    if (c->ensemble < 1 || c->ensemble > 1024) return ts_error(TS_ERR_INVALID_ARG, "--ensemble must be 1 to 1024");
    if (!strcmp(c->pool, "mixed") && c->ensemble == 1)
        return ts_error(TS_ERR_INVALID_ARG, "--pool mixed alternates an ensemble's members between last and mean: "
                        "it needs --ensemble 2 or more");
    if (ts_pool_parse(c->pool) < 0 && strcmp(c->pool, "mixed") != 0)
        return ts_error(TS_ERR_INVALID_ARG, "--pool must be last, mean, max%s, not '%s'",
                        c->ensemble > 1 ? " or mixed" : "", c->pool);
    if (c->ensemble > 1 && !c->out[0])
        return ts_error(TS_ERR_INVALID_ARG, "an ensemble needs a directory for its members (--out)");
    if (c->ensemble > 1 && c->log[0] && strcmp(c->log, "-") != 0)
        return ts_error(TS_ERR_INVALID_ARG, "an ensemble's members log into their own directories: --log must be "
                        "left out or -");
    TRY(one_of3("--attention", c->attention, "causal", "bidirectional", NULL));
    if (c->lm_weight > 0 && !strcmp(c->attention, "bidirectional"))
        return ts_error(TS_ERR_INVALID_ARG, "--lm-weight needs causal attention: a bidirectional trunk sees the "
                        "tokens its language-model loss would predict");
    TRY(one_of3("--schedule", c->schedule, "cosine", "constant", NULL));
    TRY(one_of3("--best-by", c->best_by, "accuracy", "macro_f1", "loss"));
    if (ts_optim_kind_parse(c->optim) < 0)
        return ts_error(TS_ERR_INVALID_ARG, "--optim must be sgd, momentum, adam or adamw, not '%s'", c->optim);
    if (c->epochs < 0 || c->batch < 1 || c->max_len < 1 || c->eval_batch < 1 || !(c->lr > 0) || c->keep < 0 ||
        !(c->val_fraction >= 0 && c->val_fraction < 1) || !(c->min_lr >= 0) || c->min_lr > c->lr)
        return ts_error(TS_ERR_INVALID_ARG, "epochs >= 0, batch, max_len and eval_batch >= 1, lr > 0 (and >= min_lr), "
                        "keep >= 0 and val_fraction in [0, 1) are required");
    if (c->resume && !c->out[0]) return ts_error(TS_ERR_INVALID_ARG, "resuming needs the run's directory (--out)");
    if (c->resume && c->force) return ts_error(TS_ERR_INVALID_ARG, "--resume continues a run, --force starts one over");
    return TS_OK;
}

/* 2. Threads and the process grid (every process a data-parallel replica). */
static ts_status setup_processes(crun *r)
{
    ts_classify_config *c = &r->c;
    TRY(ts_grid_create(&r->g, 1, 1));
    r->have_grid = 1;
    r->root = r->g.rank == 0;
    r->out = stdout;
    r->verbose = c->progress && r->root;
    r->tty = isatty(fileno(stdout));
    int threads = c->threads;
    if (threads <= 0 && !getenv("TESSERA_THREADS") && r->g.local_size > 1) {
        threads = (int)(sysconf(_SC_NPROCESSORS_ONLN) / r->g.local_size);
        if (threads < 1) threads = 1;
    }
    return threads > 0 ? ts_set_threads(threads) : TS_OK;
}

/* 3. The run directory: continue the run in it, start over (force), or
 * refuse to write over a run. */
static ts_status prepare_run_dir(crun *r)
{
    ts_classify_config *c = &r->c;
    ts_status st = TS_OK;
    ts_run_dir_info info;
    if (r->root && c->out[0] && !(st = ts_run_dir_inspect(c->out, &info))) {
        int has_run = info.checkpoints || info.has_log || info.latest[0];
        if (c->resume) ts_run_dir_clean(c->out);
        else if (has_run && c->force) st = ts_run_dir_reset(c->out);
        else if (has_run)
            st = ts_error(TS_ERR_INVALID_ARG, "%s already holds a run: --resume continues it, --force starts a new one "
                          "there (deleting its checkpoints and log)", c->out);
    }
    return ts_comm_agree(r->g.world, st, "preparing the run directory");
}

/* 4. A resumed run: its checkpoint and state; its settings (which the
 * command line merged) must be the run's. */
static ts_status read_resume_point(crun *r)
{
    memset(&r->state, 0, sizeof r->state);
    r->state.best_val_loss = INFINITY;
    r->state.loss = r->state.val_loss = NAN;
    if (!r->c.resume) return TS_OK;
    ts_status st = ts_checkpoint_latest(r->c.out, r->ckpt, sizeof r->ckpt);
    if (!st) st = ts_checkpoint_read_state(r->ckpt, &r->state);
    if (!st) {
        const char *fixed[NSETTINGS + 1];
        int k = 0;
        for (int i = 0; i < NSETTINGS; i++) {
            int may = 0;
            for (const char *const *p = resumable; *p; p++) may |= !strcmp(*p, settings_table[i].key);
            if (!may) fixed[k++] = settings_table[i].key;
        }
        fixed[k] = NULL;
        /* the saved settings as this version reads them: a member the run
         * predates (such as ensemble) takes its default */
        char *mine = malloc(TS_SETTINGS_MAX), *saved = malloc(TS_SETTINGS_MAX), diff[2048];
        ts_classify_config sc;
        ts_classify_defaults(&sc);
        if (!mine || !saved) {
            free(mine), free(saved);
            return ts_error(TS_ERR_OOM, "no memory");
        }
        snprintf(saved, TS_SETTINGS_MAX, "%s", r->state.settings);
        if (ts_classify_settings_parse(r->state.settings, &sc) == TS_OK) ts_classify_settings_json(&sc, saved, TS_SETTINGS_MAX);
        ts_clear_error();
        ts_classify_settings_json(&r->c, mine, TS_SETTINGS_MAX);
        int n = ts_json_object_diff(saved, mine, fixed, diff, sizeof diff);
        free(mine), free(saved);
        if (n < 0) st = ts_error(TS_ERR_FORMAT, "%s/state.json: its settings are not a JSON object", r->ckpt);
        else if (n > 0)
            st = ts_error(TS_ERR_INVALID_ARG, "resuming %s: these settings differ from the run's (saved vs now): %s",
                          r->ckpt, diff);
    }
    if (st) r->ckpt[0] = '\0';
    return ts_comm_agree(r->g.world, st, "reading the checkpoint to resume");
}

/* 5. The device (dealt out by node-local rank). */
static ts_status open_device(crun *r)
{
    return ts_comm_agree(r->g.world, ts_device_open_local(r->c.device, r->g.local_rank, &r->dev), "opening the device");
}

/* Class weights: none, "balanced" (n / (K * count), as scikit-learn), or K
 * positive numbers in label order. */
static ts_status class_weights(crun *r)
{
    int K = r->labels.n;
    const char *spec = r->c.class_weights;
    if (!(r->class_w = malloc((size_t)K * sizeof *r->class_w))) return ts_error(TS_ERR_OOM, "no memory");
    for (int k = 0; k < K; k++) r->class_w[k] = 1.0f;
    if (!spec[0] || !strcmp(spec, "none")) return TS_OK;
    if (!strcmp(spec, "balanced")) {
        int64_t *count = calloc((size_t)K, sizeof *count);
        if (!count) return ts_error(TS_ERR_OOM, "no memory");
        for (int64_t i = 0; i < r->train.n; i++) count[r->train.label[i]]++;
        for (int k = 0; k < K; k++)
            r->class_w[k] = count[k] ? (float)((double)r->train.n / ((double)K * (double)count[k])) : 1.0f;
        free(count);
        return TS_OK;
    }
    const char *p = spec;
    for (int k = 0; k < K; k++) {
        char *end;
        errno = 0;
        double w = strtod(p, &end);
        if (end == p || errno || !(w > 0 && w < 1e6) || (k + 1 < K ? *end != ',' : *end != '\0'))
            return ts_error(TS_ERR_INVALID_ARG, "--class-weights must be 'balanced' or %d positive numbers separated by "
                            "commas, in label order (%s, ...), not '%s'", K, r->labels.names[0], spec);
        r->class_w[k] = (float)w;
        p = end + 1;
    }
    return TS_OK;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static uint64_t exset_hash(uint64_t h, const exset *e)
{
    for (int64_t i = 0; i < e->n; i++) {
        h = fnv(h, e->tok + e->off[i], (size_t)e->len[i] * sizeof *e->tok);
        h = fnv(h, &e->label[i], sizeof e->label[i]);
    }
    return fnv(h, &e->n, sizeof e->n);
}

/* The tokenizer: a resumed run's or --init's checkpoint's, a file, bytes,
 * or BPE or words trained on the training texts. */
static ts_status open_tokenizer(crun *r, const char *init_ckpt)
{
    const char *from = r->ckpt[0] ? r->ckpt : init_ckpt;
    if (from) {
        char f[4400];
        snprintf(f, sizeof f, "%s/tokenizer.txt", from);
        return ts_tokenizer_load(&r->tok, f);
    }
    const char *spec = r->c.tokenizer;
    if (!strcmp(spec, "byte")) return ts_tokenizer_init_byte(&r->tok);
    if (ts_tokenizer_spec_is_file(spec)) return ts_tokenizer_load(&r->tok, spec);
    size_t total = 0;
    for (int64_t i = 0; i < r->file.n; i++) total += strlen(r->file.texts[i]) + 1;
    char *text = malloc(total + 1), *p = text;
    if (!text) return ts_error(TS_ERR_OOM, "no memory");
    for (int64_t i = 0; i < r->file.n; i++) p += sprintf(p, "%s\n", r->file.texts[i]);
    ts_status st = ts_tokenizer_from_spec(&r->tok, spec, (const uint8_t *)text, total);
    free(text);
    return st ? ts_error_context(st, "training a %s tokenizer on the texts of %s", spec[0] == 'w' ? "word" : "BPE",
                                 r->c.train)
              : TS_OK;
}

/* 6. Examples: the training file, its label set, the held-out split (or
 * file), tokens, class weights. */
static ts_status open_data(crun *r, const char *init_ckpt)
{
    ts_classify_config *c = &r->c;
    ts_labeled_options o = {.format = (ts_text_format)ts_text_format_parse(c->format), .text_field = c->text_field,
                            .label_field = c->label_field, .need_labels = 1};
    ts_status st = ts_labeled_load(&r->file, c->train, &o);
    if (!st) st = ts_label_set_from(&r->labels, &r->file);
    if (!st) st = ts_labeled_assign(&r->file, &r->labels, 0, NULL);
    if (!st && c->val[0]) st = ts_labeled_load(&r->vfile, c->val, &o);
    if (!st && c->val[0]) st = ts_labeled_assign(&r->vfile, &r->labels, 0, NULL);
    if (!st) {
        st = open_tokenizer(r, init_ckpt);
        r->have_tok = !st;
    }
    /* the held-out split: a seeded shuffle's tail */
    int64_t n = r->file.n, nval = c->val[0] ? 0 : (int64_t)llround((double)n * c->val_fraction);
    if (!st && nval >= n) st = ts_error(TS_ERR_INVALID_ARG, "%s: %lld examples leave none to train on", c->train, (long long)n);
    int64_t *idx = st ? NULL : malloc((size_t)n * sizeof *idx);
    if (!st && !idx) st = ts_error(TS_ERR_OOM, "no memory");
    if (!st) {
        uint64_t s = c->seed ^ 0x5eedull;
        for (int64_t i = 0; i < n; i++) idx[i] = i;
        for (int64_t i = n - 1; i > 0 && nval > 0; i--) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            int64_t j = (int64_t)((s >> 33) % (uint64_t)(i + 1)), t = idx[i];
            idx[i] = idx[j], idx[j] = t;
        }
        int64_t cut2 = 0;
        st = exset_encode(&r->train, &r->file, idx, n - nval, &r->tok, c->max_len, c->char_ngrams, &r->cut);
        if (!st && nval) st = exset_encode(&r->val, &r->file, idx + n - nval, nval, &r->tok, c->max_len, c->char_ngrams, &cut2);
        if (!st && c->val[0]) st = exset_encode(&r->val, &r->vfile, NULL, r->vfile.n, &r->tok, c->max_len, c->char_ngrams, &cut2);
        r->cut += cut2;
    }
    free(idx);
    if (!st) st = class_weights(r);
    if (!st) {
        uint64_t h = fnv(14695981039346656037ull, &r->tok.fingerprint, sizeof r->tok.fingerprint);
        r->fingerprint = exset_hash(exset_hash(h, &r->train), &r->val);
        if (r->ckpt[0] && r->fingerprint != r->state.data_fingerprint)
            st = ts_error(TS_ERR_INVALID_ARG, "the examples differ from those of checkpoint %s (fingerprint %016llx, now "
                          "%016llx)", r->ckpt, (unsigned long long)r->state.data_fingerprint,
                          (unsigned long long)r->fingerprint);
    }
    return ts_comm_agree(r->g.world, st, "reading the labeled data");
}

/* 7. The classifier (the trunk of --init's language model, or a new one of
 * the given sizes), its optimizer, and the resumed run's state; every
 * process checks that the others train the same thing. */
static ts_status build_model(crun *r, const char *init_ckpt)
{
    ts_classify_config *c = &r->c;
    ts_classifier_config mc;
    memset(&mc, 0, sizeof mc);
    mc.n_classes = r->labels.n;
    mc.pool = (ts_pool)ts_pool_parse(c->pool);
    mc.bidirectional = !strcmp(c->attention, "bidirectional");
    mc.char_ngrams = c->char_ngrams;
    char f[4400];
    ts_status st = TS_OK;
    if (r->ckpt[0]) { /* resumed: the trunk's shape is the checkpoint's (a run from --init has the LM's) */
        ts_classifier_config saved;
        snprintf(f, sizeof f, "%s/model.safetensors", r->ckpt);
        st = ts_classifier_read_config(f, &saved);
        mc.gpt = saved.gpt;
    } else if (init_ckpt) {
        snprintf(f, sizeof f, "%s/model.safetensors", init_ckpt);
        st = ts_gpt_read_config(f, &mc.gpt);
    } else
        mc.gpt = (ts_gpt_config){.vocab_size = r->tok.vocab_size, .max_seq_len = c->max_len, .n_layer = c->layers,
                                 .n_head = c->heads, .n_embd = c->width};
    if (!st && mc.gpt.vocab_size < r->tok.vocab_size)
        st = ts_error(TS_ERR_FORMAT, "the tokenizer has %d tokens, the model %lld", r->tok.vocab_size,
                      (long long)mc.gpt.vocab_size);
    if (!st && c->max_len > mc.gpt.max_seq_len)
        st = ts_error(TS_ERR_INVALID_ARG, "--max-len %lld exceeds the context of the model (%lld tokens)",
                      (long long)c->max_len, (long long)mc.gpt.max_seq_len);
    TRY(ts_comm_agree(r->g.world, st, "configuring the model"));
    size_t k = ts_classify_settings_json(c, r->settings, sizeof r->settings);
    if (k == 0 || k >= sizeof r->settings) return ts_error(TS_ERR_INVALID_ARG, "the run's settings exceed %zu bytes", k);
    char *check = malloc(TS_SETTINGS_MAX + 256);
    if (!check) return ts_error(TS_ERR_OOM, "no memory");
    snprintf(check, TS_SETTINGS_MAX + 256, "%.*s, \"examples_fingerprint\": \"%016llx\", \"from_step\": %lld, "
             "\"processes\": %d}", (int)k - 1, r->settings, (unsigned long long)r->fingerprint,
             (long long)r->state.step, r->g.size);
    st = ts_grid_check_settings(&r->g, check);
    free(check);
    TRY(st);
    st = ts_classifier_create(&r->m, r->dev, &mc);
    r->have_model = !st;
    if (!st) st = ts_classifier_init_weights(&r->m, c->seed);
    if (!st) {
        st = ts_optimizer_create(&r->opt, r->dev, (ts_optim_kind)ts_optim_kind_parse(c->optim), r->m.num_params,
                                 c->beta1, c->beta2, c->eps, c->weight_decay);
        r->have_opt = !st;
    }
    if (!st && r->ckpt[0]) {
        snprintf(f, sizeof f, "%s/model.safetensors", r->ckpt);
        st = ts_classifier_load(&r->m, f);
        snprintf(f, sizeof f, "%s/optim.safetensors", r->ckpt);
        if (!st) st = load_optimizer(&r->m, &r->opt, f);
    } else if (!st && init_ckpt)
        st = ts_classifier_load_trunk(&r->m, f);
    if (!st) st = batchbuf_alloc(&r->bb, c->batch, c->max_len, mc.n_classes, c->char_ngrams > 0);
    r->res->num_params = r->m.num_params;
    return ts_comm_agree(r->g.world, st, "creating the classifier");
}

/* The best held-out score so far of a resumed run: from the metrics of the
 * checkpoint `best` names. */
static double score_of(const char *best_by, double accuracy, double macro_f1, double loss)
{
    if (!strcmp(best_by, "macro_f1")) return macro_f1;
    if (!strcmp(best_by, "loss")) return isfinite(loss) ? -loss : -INFINITY;
    return accuracy;
}

static void read_best(crun *r)
{
    char f[4400], *text = NULL, dir[4300];
    size_t n;
    snprintf(f, sizeof f, "%s/best", r->c.out);
    if (ts_read_file(f, &text, &n) != TS_OK) {
        ts_clear_error();
        return;
    }
    text[strcspn(text, "\r\n")] = '\0';
    snprintf(dir, sizeof dir, "%s/%s", r->c.out, text);
    free(text);
    snprintf(f, sizeof f, "%s/metrics.json", dir);
    ts_json *j = NULL;
    if (ts_read_file(f, &text, &n) == TS_OK && ts_json_parse(text, n, &j) == TS_OK) {
        r->res->best_step = ts_json_get_int(j, "step", -1);
        r->res->best_accuracy = ts_json_get_num(j, "accuracy", NAN);
        r->res->best_macro_f1 = ts_json_get_num(j, "macro_f1", NAN);
        r->res->best_loss = ts_json_get_num(j, "loss", NAN);
        r->best_score = score_of(r->c.best_by, r->res->best_accuracy, r->res->best_macro_f1, r->res->best_loss);
    }
    ts_json_free(j);
    free(text);
    ts_clear_error();
}

/* 8. The run's files (world rank 0): labels and tokenizer beside the
 * checkpoints, the log (a resumed run's without the steps it will redo). */
static ts_status open_outputs(crun *r)
{
    ts_classify_config *c = &r->c;
    ts_status st = TS_OK;
    char path[4400];
    if (r->root && c->out[0]) {
        char *text = NULL;
        size_t n = 0;
        st = ts_mkdir_p(c->out);
        if (!st) st = ts_label_set_json(&r->labels, &text, &n);
        snprintf(path, sizeof path, "%s/labels.json", c->out);
        if (!st) st = ts_write_file_atomic(path, text, n);
        free(text);
        snprintf(path, sizeof path, "%s/tokenizer.txt", c->out);
        if (!st) st = ts_tokenizer_save(&r->tok, path);
        if (r->ckpt[0]) read_best(r);
    }
    if (!st && r->root && strcmp(c->log, "-") != 0 && (c->log[0] || c->out[0])) {
        if (c->log[0]) snprintf(path, sizeof path, "%s", c->log);
        else snprintf(path, sizeof path, "%s/log.jsonl", c->out);
        if (r->ckpt[0]) st = ts_run_log_truncate(path, r->state.step);
        if (!st && !(r->log = fopen(path, r->ckpt[0] ? "a" : "w")))
            st = ts_error(TS_ERR_IO, "cannot write the log %s: %s", path, strerror(errno));
    }
    TRY(ts_comm_agree(r->g.world, st, "opening the run's files"));
    return ts_comm_bcast(r->g.world, &r->best_score, sizeof r->best_score, 0, "the best score");
}

/* 9. What the run trains, on what. */
static void report_start(crun *r, const char *init_ckpt)
{
    ts_classify_config *c = &r->c;
    const ts_classifier_config *mc = &r->m.cfg;
    if (r->verbose) {
        FILE *o = r->out;
        int64_t tokens = 0, longest = 0;
        for (int64_t i = 0; i < r->train.n; i++) tokens += r->train.len[i], longest = r->train.len[i] > longest ? r->train.len[i] : longest;
        if (r->ckpt[0]) fprintf(o, "resuming %s (step %lld of %lld)\n", r->ckpt, (long long)r->state.step, (long long)r->total);
        fprintf(o, "device   %s (%s)\n", ts_device_get_info(r->dev)->id, ts_device_get_info(r->dev)->name);
        fprintf(o, "data     %s: %lld training and %lld held-out examples%s%s, %d classes (", c->train,
                (long long)r->train.n, (long long)r->val.n, c->val[0] ? " from " : "", c->val[0] ? c->val : "",
                r->labels.n);
        for (int k = 0; k < r->labels.n && k < 8; k++) fprintf(o, "%s%s", k ? ", " : "", r->labels.names[k]);
        fprintf(o, "%s)\n         %.1f tokens a text (the longest %lld; %lld cut at %lld)\n", r->labels.n > 8 ? ", ..." : "",
                r->train.n ? (double)tokens / (double)r->train.n : 0.0, (long long)longest, (long long)r->cut,
                (long long)c->max_len);
        char ngrams[64] = "";
        if (mc->char_ngrams) snprintf(ngrams, sizeof ngrams, "; character n-grams in %lld buckets", (long long)mc->char_ngrams);
        fprintf(o, "model    %s%s L=%lld H=%lld C=%lld, vocabulary %lld: %.2fM parameters; %s pooling, %s attention%s\n",
                init_ckpt ? "trunk of " : "new, ", init_ckpt ? init_ckpt : "", (long long)mc->gpt.n_layer,
                (long long)mc->gpt.n_head, (long long)mc->gpt.n_embd, (long long)mc->gpt.vocab_size,
                (double)r->m.num_params / 1e6, ts_pool_name(mc->pool), mc->bidirectional ? "bidirectional" : "causal",
                ngrams);
        char drop[96] = "";
        if (c->token_dropout > 0) snprintf(drop, sizeof drop, ", %.0f%% of tokens dropped", 100 * c->token_dropout);
        if (c->lm_weight > 0)
            snprintf(drop + strlen(drop), sizeof drop - strlen(drop), ", LM loss x %.3g", c->lm_weight);
        fprintf(o, "training %lld epochs of %lld steps of %lld examples, %s lr %.3g%s%s, %s\n", (long long)c->epochs,
                (long long)r->spe, (long long)c->batch, c->optim, c->lr, c->trunk_lr >= 0 ? " (trunk lr set apart)" : "",
                drop, r->g.size > 1 ? "data parallel over the processes" : "one process");
        if (r->g.size > 1) fprintf(o, "layout   %d processes, each a share of every batch\n", r->g.size);
        fflush(o);
    }
    if (r->log) {
        fprintf(r->log, "{\"event\": \"start\", \"step\": %lld, \"device\": ", (long long)r->state.step);
        ts_json_write_string(r->log, ts_device_get_info(r->dev)->id);
        fprintf(r->log, ", \"params\": %lld, \"processes\": %d, \"classes\": %d, \"settings\": %s}\n",
                (long long)r->m.num_params, r->g.size, r->labels.n, r->settings);
        fflush(r->log);
    }
}

/* The order of an epoch's examples: a shuffle seeded by (seed, epoch). */
static ts_status epoch_order(crun *r, int64_t epoch)
{
    int64_t n = r->train.n;
    if (r->perm && r->perm_epoch == epoch) return TS_OK;
    if (!r->perm && !(r->perm = malloc((size_t)n * sizeof *r->perm))) return ts_error(TS_ERR_OOM, "no memory");
    uint64_t s = r->c.seed * 0x9E3779B97F4A7C15ull + (uint64_t)epoch * 0xD1B54A32D192ED03ull + 1;
    for (int64_t i = 0; i < n; i++) r->perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        s ^= s >> 31, s *= 0xBF58476D1CE4E5B9ull, s ^= s >> 29, s += 0x632BE59BD9B4E019ull;
        int64_t j = (int64_t)(s % (uint64_t)(i + 1)), t = r->perm[i];
        r->perm[i] = r->perm[j], r->perm[j] = t;
    }
    r->perm_epoch = epoch;
    return TS_OK;
}

/* One step: this process's rows of the batch forward and backward with
 * the loss normalised by the whole batch's weight, the gradients summed
 * over the processes, clipped, and the update. */
static ts_status train_step(crun *r, int64_t step, float lr, float *loss, double *norm)
{
    ts_classify_config *c = &r->c;
    int64_t K = r->labels.n, B = c->batch, n = r->train.n;
    TRY(epoch_order(r, step / r->spe));
    int64_t first = step % r->spe * B, rows_n = n - first < B ? n - first : B, *rows = r->perm + first;
    int64_t T = batch_len(&r->train, rows, rows_n, c->max_len);
    double W = 0, lsum = 0;
    for (int64_t i = 0; i < rows_n; i++) W += r->class_w[r->train.label[rows[i]]];
    int dp = r->g.dp, me = r->g.dp_rank;
    int64_t lo = rows_n * me / dp, hi = rows_n * (me + 1) / dp;
    ts_status st = ts_classifier_zero_grad(&r->m);
    /* every process fills the whole batch: the language-model loss is a
     * mean over all its predicted tokens, so each needs their count */
    fill_batch(&r->train, rows, rows_n, T, &r->bb);
    drop_tokens(&r->bb, rows_n, T, c->token_dropout, c->seed, step, 0);
    const int64_t *ng_off = batch_ngrams(&r->train, rows, rows_n, T, &r->bb);
    int64_t lm_n = 0, lm_mine = 0;
    for (int64_t i = 0; i < rows_n; i++) lm_n += r->bb.lengths[i] - 1;
    double lm_sum = 0;
    if (!st && hi > lo) {
        const int32_t *tok = r->bb.tokens + lo * T, *len = r->bb.lengths + lo, *lab = r->bb.labels + lo;
        for (int64_t i = 0; i < hi - lo; i++) r->bb.weights[i] = r->class_w[lab[i]];
        /* this process's rows: positions from lo*T on (ng_off holds absolute indices into ng) */
        st = ts_classifier_forward_ngrams(&r->m, tok, len, ng_off ? ng_off + lo * T : NULL, r->bb.ng, hi - lo, T,
                                          r->bb.logits);
        if (!st) ts_classifier_cross_entropy(r->bb.logits, hi - lo, K, lab, r->bb.weights, 1.0 / W, &lsum,
                                             r->bb.grad, NULL);
        if (!st && c->lm_weight > 0 && lm_n > 0)
            st = ts_classifier_lm_loss(&r->m, tok, len, (float)(c->lm_weight / (double)lm_n), &lm_sum, &lm_mine);
        if (!st) st = ts_classifier_backward(&r->m, r->bb.grad);
    }
    TRY(ts_comm_agree(r->g.world, st, "a training step"));
    if (dp > 1) {
        TRY(ts_comm_allreduce_tensor(r->g.dp_comm, &r->m.grads, TS_REDUCE_SUM, "gradients"));
        TRY(ts_comm_allreduce_f64(r->g.dp_comm, &lsum, 1, TS_REDUCE_SUM, "loss"));
        if (c->lm_weight > 0) TRY(ts_comm_allreduce_f64(r->g.dp_comm, &lm_sum, 1, TS_REDUCE_SUM, "LM loss"));
    }
    r->lm_loss = lm_n > 0 ? lm_sum / (double)lm_n : NAN; /* no token to predict: not logged */
    double sq;
    TRY(ts_grad_sqnorm(&r->m.grads, &sq));
    *norm = sqrt(sq);
    *loss = (float)(lsum / W);
    float trunk_lr = c->trunk_lr < 0 ? lr : lr * c->trunk_lr / c->lr;
    return ts_classifier_optimizer_step(&r->m, &r->opt, trunk_lr, lr, ts_clip_scale(*norm, c->grad_clip));
}

/* The held-out examples scored; returns whether the score is the best yet. */
static ts_status evaluate(crun *r, int64_t step, int *improved)
{
    ts_classify_result *res = r->res;
    *improved = 0;
    ts_metrics_free(&r->last);
    TRY(evaluate_set(&r->m, &r->val, r->c.max_len, r->c.eval_batch, r->g.world, &r->last));
    r->last_step = step;
    res->val_accuracy = r->last.accuracy, res->val_macro_f1 = r->last.macro_f1, res->val_loss = r->last.loss;
    double score = score_of(r->c.best_by, r->last.accuracy, r->last.macro_f1, r->last.loss);
    if (score > r->best_score) {
        *improved = 1;
        r->best_score = score;
        res->best_step = step;
        res->best_accuracy = r->last.accuracy, res->best_macro_f1 = r->last.macro_f1, res->best_loss = r->last.loss;
    }
    if (r->log) {
        char a[32], f1[32], l[32];
        fprintf(r->log, "{\"step\": %lld, \"epoch\": %lld, \"val_accuracy\": %s, \"val_macro_f1\": %s, \"val_loss\": %s}\n",
                (long long)step, (long long)((step + r->spe - 1) / r->spe), ts_json_float(a, sizeof a, r->last.accuracy),
                ts_json_float(f1, sizeof f1, r->last.macro_f1), ts_json_float(l, sizeof l, r->last.loss));
        fflush(r->log);
    }
    if (r->verbose) {
        fprintf(r->out, "%sepoch %lld (step %lld): held-out accuracy %.2f%%, macro-F1 %.4f, loss %.4f%s\n",
                r->tty ? "\n" : "", (long long)((step + r->spe - 1) / r->spe), (long long)step,
                100.0 * r->last.accuracy, r->last.macro_f1, r->last.loss, *improved ? " (best so far)" : "");
        fflush(r->out);
    }
    return TS_OK;
}

/* A checkpoint of the step: world rank 0 writes it (every process holds the
 * same weights); `best` names it when its held-out score is the best. */
static ts_status save_checkpoint(crun *r, int evaluated, int improved)
{
    ts_classify_config *c = &r->c;
    if (!c->out[0] || r->saved_step == r->state.step) return TS_OK;
    ts_status st = TS_OK;
    if (r->root) {
        char tmp[4300], f[4400], fp[32];
        const char *meta[4];
        r->state.val_loss = NAN; /* `best` is ours to name, by the chosen score */
        r->state.best_val_loss = isfinite(r->res->best_loss) ? r->res->best_loss : INFINITY;
        snprintf(r->state.settings, sizeof r->state.settings, "%s", r->settings);
        st = ts_checkpoint_begin(c->out, r->state.step, tmp, sizeof tmp);
        ts_checkpoint_model_meta(r->tok.fingerprint, fp, meta);
        snprintf(f, sizeof f, "%s/model.safetensors", tmp);
        if (!st) st = ts_classifier_save(&r->m, f, meta);
        snprintf(f, sizeof f, "%s/optim.safetensors", tmp);
        if (!st) st = save_optimizer(&r->m, &r->opt, f);
        char *tok = NULL, *labels = NULL, *metrics = NULL;
        size_t ntok = 0, nlabels = 0, nmetrics = 0;
        if (!st) st = ts_tokenizer_serialize(&r->tok, &tok, &ntok);
        if (!st) st = ts_label_set_json(&r->labels, &labels, &nlabels);
        if (!st && evaluated) {
            FILE *m = open_memstream(&metrics, &nmetrics);
            if (!m) st = ts_error(TS_ERR_OOM, "no memory");
            else {
                char a[32], f1[32], l[32];
                fprintf(m, "{\"step\": %lld, \"accuracy\": %s, \"macro_f1\": %s, \"loss\": %s, \"metrics\": ",
                        (long long)r->state.step, ts_json_float(a, sizeof a, r->last.accuracy),
                        ts_json_float(f1, sizeof f1, r->last.macro_f1), ts_json_float(l, sizeof l, r->last.loss));
                ts_metrics_write_json(m, &r->last, &r->labels);
                fputs("}\n", m);
                fclose(m);
            }
        }
        ts_checkpoint_file files[] = {
            {"tokenizer.txt", tok, ntok}, {"labels.json", labels, nlabels}, {"metrics.json", metrics, nmetrics}};
        if (st) ts_checkpoint_abandon(tmp);
        else st = ts_checkpoint_finish(c->out, tmp, &r->state, files, evaluated ? 3 : 2, c->keep);
        if (!st && improved) {
            char line[64];
            int k = snprintf(line, sizeof line, "step_%08lld\n", (long long)r->state.step);
            snprintf(f, sizeof f, "%s/best", c->out);
            st = ts_write_file_atomic(f, line, (size_t)k);
        }
        free(tok), free(labels), free(metrics);
    }
    TRY(ts_comm_agree(r->g.world, st, "saving a checkpoint"));
    r->saved_step = r->state.step;
    return TS_OK;
}

static void progress(crun *r, int64_t step, float loss, float lr, double norm, double elapsed, int64_t done)
{
    ts_classify_config *c = &r->c;
    double rate = elapsed > 0 ? (double)(done * c->batch) / elapsed : 0;
    if (r->log) {
        char l[32], a[32], g[32], lm[64] = "";
        if (c->lm_weight > 0 && isfinite(r->lm_loss)) {
            char v[32];
            snprintf(lm, sizeof lm, ", \"lm_loss\": %s", ts_json_float(v, sizeof v, r->lm_loss));
        }
        fprintf(r->log, "{\"step\": %lld, \"loss\": %s, \"lr\": %s, \"grad_norm\": %s%s, \"epoch\": %lld, "
                "\"examples_per_s\": %.1f, \"elapsed_s\": %.3f}\n", (long long)(step + 1),
                ts_json_float(l, sizeof l, loss), ts_json_float(a, sizeof a, lr), ts_json_float(g, sizeof g, norm), lm,
                (long long)(step / r->spe + 1), rate, elapsed);
        fflush(r->log);
    }
    int64_t every = r->total >= 20 ? r->total / 20 : 1;
    if (!r->verbose || !(r->tty || (step + 1) % every == 0 || step + 1 == r->total)) return;
    double eta = done > 0 ? elapsed / (double)done * (double)(r->total - step - 1) : 0;
    char bar[21];
    for (int i = 0; i < 20; i++) bar[i] = (double)i < 20.0 * (double)(step + 1) / (double)r->total ? '#' : '.';
    bar[20] = '\0';
    fprintf(r->out, "%s[%s] epoch %lld/%lld step %lld/%lld | loss %.4f | %.0f examples/s | ETA %dm%02ds%s",
            r->tty ? "\r" : "", bar, (long long)(step / r->spe + 1), (long long)c->epochs, (long long)(step + 1),
            (long long)r->total, loss, rate, (int)eta / 60, (int)eta % 60, r->tty ? "   " : "\n");
    fflush(r->out);
}

/* 10. The loop: steps, an evaluation and a checkpoint at the end of every
 * epoch; a signal stops every process after the same step. */
static ts_status train_loop(crun *r)
{
    ts_classify_config *c = &r->c;
    int64_t warmup = c->warmup >= 0 ? c->warmup : r->total / 20;
    ts_lr_schedule sched = {.lr = c->lr, .min_lr = c->min_lr, .warmup_steps = warmup, .total_steps = r->total,
                            .cosine = !strcmp(c->schedule, "cosine")};
    double t0 = ts_now();
    r->state.seed = c->seed;
    r->state.data_fingerprint = r->fingerprint;
    for (int64_t step = r->state.step; step < r->total; step++) {
        float lr = ts_lr_at(&sched, step), loss;
        double norm;
        ts_status st = train_step(r, step, lr, &loss, &norm);
        if (st) return ts_error_context(st, "step %lld", (long long)step);
        r->state.step = step + 1;
        r->state.next_sample = r->state.step * c->batch;
        r->state.tokens_seen += (double)c->batch;
        r->state.loss = loss;
        r->res->last_loss = loss;
        if (c->on_step) c->on_step(c->on_step_ctx, step, loss);
        progress(r, step, loss, lr, norm, ts_now() - t0, step + 1 - r->res->first_step);
        int last = step + 1 == r->total, evaluated = 0, improved = 0;
        if (((step + 1) % r->spe == 0 || last) && r->val.n > 0) {
            TRY(evaluate(r, step + 1, &improved));
            evaluated = 1;
        }
        if ((step + 1) % r->spe == 0 || last) TRY(save_checkpoint(r, evaluated, improved));
        double stop = (double)ts_train_stop_requested();
        if (r->g.size > 1) TRY(ts_comm_allreduce_f64(r->g.world, &stop, 1, TS_REDUCE_MAX, "stop request"));
        if (stop > 0 && !last) {
            r->res->interrupted = (int)stop;
            TRY(save_checkpoint(r, 0, 0));
            break;
        }
    }
    if (r->total == 0 && !r->ckpt[0]) TRY(save_checkpoint(r, 0, 0));
    if (r->verbose && r->tty) fputc('\n', r->out);
    r->res->seconds = ts_now() - t0;
    return TS_OK;
}

/* 11. The summary. */
static void finish_run(crun *r)
{
    ts_classify_result *res = r->res;
    res->steps_done = r->state.step;
    int64_t done = r->state.step - res->first_step;
    if (r->verbose) {
        FILE *o = r->out;
        double rate = res->seconds > 0 ? (double)(done * r->c.batch) / res->seconds : 0;
        fprintf(o, "trained %lld steps in %dm%02ds (%.0f examples/s), last loss %.4f\n", (long long)done,
                (int)res->seconds / 60, (int)res->seconds % 60, rate, res->last_loss);
        if (res->best_step >= 0)
            fprintf(o, "best held-out %s at step %lld (epoch %lld): accuracy %.2f%%, macro-F1 %.4f%s%s\n", r->c.best_by,
                    (long long)res->best_step, (long long)((res->best_step + r->spe - 1) / r->spe),
                    100.0 * res->best_accuracy, res->best_macro_f1, r->c.out[0] ? ", checkpoint named by " : "",
                    r->c.out[0] ? "best" : "");
        if (res->interrupted)
            fprintf(o, "stopped by %s after step %lld%s%s\n",
                    res->interrupted == SIGINT ? "SIGINT" : res->interrupted == SIGTERM ? "SIGTERM" : "a stop request",
                    (long long)r->state.step, r->c.out[0] ? ": checkpoint written; continue with --resume --out " : "",
                    r->c.out);
        fflush(o);
    }
    if (r->log) {
        fprintf(r->log, "{\"event\": \"%s\", \"step\": %lld, \"seconds\": %.3f, \"best_step\": %lld}\n",
                res->interrupted ? "stopped" : "end", (long long)r->state.step, res->seconds, (long long)res->best_step);
        fflush(r->log);
    }
}

static ts_status classify_run(crun *r)
{
    TRY(check_config(&r->c));
    TRY(setup_processes(r));
    TRY(prepare_run_dir(r));
    TRY(read_resume_point(r));
    TRY(open_device(r));
    /* --init: a checkpoint of `tessera train`, or its run directory (the latest) */
    char init[4300];
    const char *init_ckpt = NULL;
    if (r->c.init[0] && !r->ckpt[0]) {
        TRY(ts_comm_agree(r->g.world, resolve_checkpoint(r->c.init, 0, init, sizeof init), "--init"));
        init_ckpt = init;
    }
    TRY(open_data(r, init_ckpt));
    r->spe = (r->train.n + r->c.batch - 1) / r->c.batch;
    r->total = r->spe * r->c.epochs;
    r->res->steps_per_epoch = r->spe;
    r->res->first_step = r->state.step;
    TRY(build_model(r, init_ckpt));
    TRY(open_outputs(r));
    report_start(r, init_ckpt);
    TRY(train_loop(r));
    finish_run(r);
    return TS_OK;
}

static ts_status train_one(const ts_classify_config *cfg, ts_classify_result *res)
{
    memset(res, 0, sizeof *res);
    res->best_step = -1;
    res->best_accuracy = res->best_macro_f1 = res->best_loss = NAN;
    res->val_accuracy = res->val_macro_f1 = res->val_loss = NAN;
    res->last_loss = NAN;
    crun *r = calloc(1, sizeof *r);
    if (!r) return ts_error(TS_ERR_OOM, "no memory");
    r->c = *cfg;
    r->res = res;
    r->saved_step = -1;
    r->best_score = -INFINITY;
    r->perm_epoch = -1;
    ts_status st = classify_run(r);
    char msg[2048];
    snprintf(msg, sizeof msg, "%s", st ? ts_last_error() : "");
    crun_free(r);
    free(r);
    if (st) ts_error(st, "%s", msg);
    return st;
}

/* ---- ensembles ----
 * out/ensemble.json names the members (out/member-i, each a whole
 * classifier run) and keeps the settings they were made from. */

#define ENSEMBLE_FILE "ensemble.json"

static int path_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Member i's settings: seed + i, and under pool "mixed" last, mean, last, ... */
static void member_config(const ts_classify_config *c, int64_t i, ts_classify_config *m)
{
    *m = *c;
    m->ensemble = 1;
    m->seed = c->seed + (uint64_t)i;
    if (!strcmp(c->pool, "mixed")) snprintf(m->pool, sizeof m->pool, "%s", i % 2 ? "mean" : "last");
    snprintf(m->out, sizeof m->out, "%.990s/member-%lld", c->out, (long long)(i % 10000));
    m->resume = 0;
    m->force = 1; /* a member not yet started begins in a clean directory */
}

/* The ensemble's directory: continue it (resume), start it over (force), or
 * refuse to write over a run; then ensemble.json, written atomically. */
static ts_status prepare_ensemble_dir(const ts_classify_config *c)
{
    char f[1100];
    snprintf(f, sizeof f, "%.1000s/" ENSEMBLE_FILE, c->out);
    int is_ensemble = path_exists(f);
    ts_run_dir_info info;
    TRY(ts_run_dir_inspect(c->out, &info));
    int has_single = info.checkpoints || info.has_log || info.latest[0];
    if (c->resume && !is_ensemble)
        return ts_error(TS_ERR_INVALID_ARG, "%s holds no ensemble (%s) to resume", c->out, ENSEMBLE_FILE);
    if (!c->resume && (is_ensemble || has_single)) {
        if (!c->force)
            return ts_error(TS_ERR_INVALID_ARG, "%s already holds a run: --resume continues it, --force starts a new "
                            "one there (deleting its checkpoints and log)", c->out);
        if (is_ensemble && unlink(f) != 0) return ts_error(TS_ERR_IO, "cannot remove %s: %s", f, strerror(errno));
        if (has_single) TRY(ts_run_dir_reset(c->out));
        for (int64_t i = 0; i < c->ensemble; i++) { /* members a run of other settings left */
            ts_classify_config m;
            member_config(c, i, &m);
            if (path_exists(m.out)) TRY(ts_run_dir_reset(m.out));
        }
    }
    TRY(ts_mkdir_p(c->out));
    char *settings = malloc(TS_SETTINGS_MAX), *text = NULL;
    size_t n = 0;
    FILE *o = settings ? open_memstream(&text, &n) : NULL;
    if (!o) {
        free(settings);
        return ts_error(TS_ERR_OOM, "no memory");
    }
    ts_classify_settings_json(c, settings, TS_SETTINGS_MAX);
    fputs("{\"members\": [", o);
    for (int64_t i = 0; i < c->ensemble; i++) fprintf(o, "%s\"member-%lld\"", i ? ", " : "", (long long)i);
    fprintf(o, "], \"settings\": %s}\n", settings);
    fclose(o);
    free(settings);
    ts_status st = text ? ts_write_file_atomic(f, text, n) : ts_error(TS_ERR_OOM, "no memory");
    free(text);
    return st;
}

/* An ensemble directory's ensemble.json, parsed (*j = NULL: path is not one). */
static ts_status read_ensemble(const char *path, ts_json **j)
{
    char f[1100], *text = NULL;
    size_t n = 0;
    *j = NULL;
    snprintf(f, sizeof f, "%.1000s/" ENSEMBLE_FILE, path);
    if (!path_exists(f)) return TS_OK;
    TRY(ts_read_file(f, &text, &n));
    ts_status st = ts_json_parse(text, n, j);
    free(text);
    if (st) return ts_error_context(st, "%s", f);
    const ts_json *m = ts_json_get(*j, "members");
    int ok = m && m->type == TS_JSON_ARRAY && m->count > 0 && ts_json_get(*j, "settings") &&
             ts_json_get(*j, "settings")->type == TS_JSON_OBJECT;
    for (size_t i = 0; ok && i < m->count; i++)
        ok = m->items[i].type == TS_JSON_STRING && m->items[i].string[0] && !strchr(m->items[i].string, '/') &&
             strcmp(m->items[i].string, "..") != 0 && strlen(m->items[i].string) < 64;
    if (!ok) {
        ts_json_free(*j);
        *j = NULL;
        return ts_error(TS_ERR_FORMAT, "%s: expected {\"members\": [directory names], \"settings\": {...}}", f);
    }
    return TS_OK;
}

ts_status ts_classify_run_settings(const char *out, char **json)
{
    *json = NULL;
    ts_json *e = NULL;
    TRY(read_ensemble(out, &e));
    if (e) {
        size_t n = ts_json_serialize(ts_json_get(e, "settings"), NULL, 0);
        *json = malloc(n + 1);
        if (*json) ts_json_serialize(ts_json_get(e, "settings"), *json, n + 1);
        ts_json_free(e);
        return *json ? TS_OK : ts_error(TS_ERR_OOM, "no memory");
    }
    char ckpt[4300];
    ts_train_state *state = calloc(1, sizeof *state);
    if (!state) return ts_error(TS_ERR_OOM, "no memory");
    ts_status st = ts_checkpoint_latest(out, ckpt, sizeof ckpt);
    if (!st) st = ts_checkpoint_read_state(ckpt, state);
    if (!st && !(*json = strdup(state->settings))) st = ts_error(TS_ERR_OOM, "no memory");
    free(state);
    return st;
}

/* The members one after another, every process together (each member is
 * data-parallel over them as one classifier is). */
static ts_status train_ensemble(const ts_classify_config *c, ts_classify_result *res)
{
    memset(res, 0, sizeof *res);
    res->best_step = -1;
    TRY(check_config(c));
    ts_grid g;
    TRY(ts_grid_create(&g, 1, 1));
    ts_status st = g.rank == 0 ? prepare_ensemble_dir(c) : TS_OK;
    st = ts_comm_agree(g.world, st, "preparing the ensemble's directory");
    int verbose = c->progress && g.rank == 0;
    double seconds = 0;
    int64_t steps = 0;
    for (int64_t i = 0; i < c->ensemble && !st; i++) {
        ts_classify_config m;
        member_config(c, i, &m);
        /* resumed where it has a checkpoint, as rank 0 sees its directory */
        int resume = 0;
        if (g.rank == 0 && c->resume) {
            char latest[4300];
            resume = ts_checkpoint_latest(m.out, latest, sizeof latest) == TS_OK;
            ts_clear_error();
        }
        st = ts_comm_bcast(g.world, &resume, sizeof resume, 0, "resuming a member");
        m.resume = resume, m.force = !resume;
        if (st) break;
        if (verbose) {
            printf("ensemble member %lld of %lld (seed %llu, pool %s): %s\n", (long long)i + 1, (long long)c->ensemble,
                   (unsigned long long)m.seed, m.pool, m.out);
            fflush(stdout);
        }
        st = train_one(&m, res);
        if (st) {
            st = ts_error_context(st, "ensemble member %lld (%s)", (long long)i, m.out);
            break;
        }
        seconds += res->seconds, steps += res->steps_done - res->first_step;
        if (res->interrupted) break;
    }
    if (!st) {
        res->seconds = seconds;
        res->steps_done = steps;
        res->first_step = 0;
        if (verbose && !res->interrupted)
            printf("ensemble of %lld trained in %dm%02ds: tessera classify eval --checkpoint %s averages its members\n",
                   (long long)c->ensemble, (int)seconds / 60, (int)seconds % 60, c->out);
    }
    ts_grid_free(&g);
    return st;
}

ts_status ts_classify_train(const ts_classify_config *cfg, ts_classify_result *res)
{
    return cfg->ensemble > 1 ? train_ensemble(cfg, res) : train_one(cfg, res);
}

/* ---- using a trained classifier ---- */

void ts_classify_use_defaults(ts_classify_use *u)
{
    memset(u, 0, sizeof *u);
    snprintf(u->format, sizeof u->format, "auto");
    snprintf(u->text_field, sizeof u->text_field, "text");
    snprintf(u->label_field, sizeof u->label_field, "label");
    snprintf(u->device, sizeof u->device, "auto");
    u->batch = 64;
}

typedef struct trained {
    ts_grid g;
    int have_grid, have_model, have_tok;
    ts_device *dev;
    ts_classifier m;
    ts_tokenizer tok;
    ts_label_set labels;
    int64_t max_len, unseen;
    char ckpt[4300];
    ts_labeled_data d;
    exset e;
} trained;

static void trained_free(trained *t)
{
    exset_free(&t->e);
    ts_labeled_free(&t->d);
    ts_label_set_free(&t->labels);
    if (t->have_tok) ts_tokenizer_free(&t->tok);
    if (t->have_model) ts_classifier_free(&t->m);
    if (t->have_grid) ts_grid_free(&t->g);
}

/* A checkpoint's classifier, tokenizer and labels on a device, and the
 * examples of a file as its tokens. */
static ts_status open_trained(trained *t, const ts_classify_use *u, int need_labels)
{
    memset(t, 0, sizeof *t);
    int format = ts_text_format_parse(u->format);
    if (format < 0) return ts_error(TS_ERR_INVALID_ARG, "--format must be auto, jsonl, csv, tsv or lines, not '%s'", u->format);
    if (!u->checkpoint[0] || !u->data[0]) return ts_error(TS_ERR_INVALID_ARG, "--checkpoint and --data are required");
    if (u->batch < 1) return ts_error(TS_ERR_INVALID_ARG, "--batch must be at least 1");
    if (u->threads > 0) TRY(ts_set_threads(u->threads));
    TRY(ts_grid_create(&t->g, 1, 1));
    t->have_grid = 1;
    char f[4400];
    ts_status st = resolve_checkpoint(u->checkpoint, 1, t->ckpt, sizeof t->ckpt);
    if (!st) st = ts_device_open_local(u->device, t->g.local_rank, &t->dev);
    ts_classifier_config mc;
    snprintf(f, sizeof f, "%s/model.safetensors", t->ckpt);
    if (!st) st = ts_classifier_read_config(f, &mc);
    if (!st) {
        st = ts_classifier_create(&t->m, t->dev, &mc);
        t->have_model = !st;
    }
    if (!st) st = ts_classifier_load(&t->m, f);
    snprintf(f, sizeof f, "%s/tokenizer.txt", t->ckpt);
    if (!st) {
        st = ts_tokenizer_load(&t->tok, f);
        t->have_tok = !st;
    }
    char *text = NULL;
    size_t n = 0;
    snprintf(f, sizeof f, "%s/labels.json", t->ckpt);
    if (!st) st = ts_read_file(f, &text, &n);
    if (!st) st = ts_label_set_parse(&t->labels, text, n, f);
    free(text);
    if (!st && t->labels.n != mc.n_classes)
        st = ts_error(TS_ERR_FORMAT, "%s names %d labels, the model has %lld classes", f, t->labels.n,
                      (long long)mc.n_classes);
    /* texts are cut where training cut them */
    t->max_len = mc.gpt.max_seq_len;
    ts_train_state *state = st ? NULL : malloc(sizeof *state);
    if (state && ts_checkpoint_read_state(t->ckpt, state) == TS_OK) {
        ts_classify_config saved;
        ts_classify_defaults(&saved);
        saved.max_len = t->max_len;
        if (ts_classify_settings_parse(state->settings, &saved) == TS_OK && saved.max_len <= t->max_len)
            t->max_len = saved.max_len;
    }
    free(state);
    ts_clear_error();
    if (st) return st;
    ts_labeled_options o = {.format = (ts_text_format)format, .text_field = u->text_field,
                            .label_field = u->label_field, .need_labels = need_labels};
    TRY(ts_labeled_load(&t->d, u->data, &o));
    if (need_labels) TRY(ts_labeled_assign(&t->d, &t->labels, u->count_unseen, &t->unseen));
    else
        for (int64_t i = 0; i < t->d.n; i++) t->d.ids[i] = t->d.labels[i] ? ts_label_set_find(&t->labels, t->d.labels[i]) : -1;
    int64_t cut;
    return exset_encode(&t->e, &t->d, NULL, t->d.n, &t->tok, t->max_len, t->m.cfg.char_ngrams, &cut);
}

/* Text to a file atomically, or to standard output ("" or "-"). */
static ts_status emit(const char *path, const char *text, size_t n)
{
    if (!path[0] || !strcmp(path, "-")) {
        fwrite(text, 1, n, stdout);
        fflush(stdout);
        return TS_OK;
    }
    return ts_write_file_atomic(path, text, n);
}

/* Every example's class probabilities (in the file's order) into acc
 * (t->e.n x K), on every process: t's classifier's alone (members NULL),
 * or the mean of an ensemble's (t is its first member, opened). */
static ts_status scored_probs(trained *t, const ts_classify_use *u, const ts_json *members, int need_labels,
                              float *acc)
{
    int64_t K = t->labels.n, n = t->e.n, count = members ? (int64_t)members->count : 1;
    float *p = calloc((size_t)(n * K), sizeof *p);
    ts_status st = p ? TS_OK : ts_error(TS_ERR_OOM, "no memory for %lld probabilities", (long long)(n * K));
    for (int64_t j = 0; j < count && !st; j++) {
        trained *o = t;
        ts_classify_use mu = *u;
        if (j > 0) {
            snprintf(mu.checkpoint, sizeof mu.checkpoint, "%.900s/%s", u->checkpoint, members->items[j].string);
            if (!(o = calloc(1, sizeof *o))) st = ts_error(TS_ERR_OOM, "no memory");
            if (!st) st = open_trained(o, &mu, need_labels);
            if (o && o->have_grid) st = ts_comm_agree(o->g.world, st, "opening an ensemble member");
            int same = !st && o->labels.n == K && o->e.n == n;
            for (int64_t k = 0; same && k < K; k++) same = !strcmp(o->labels.names[k], t->labels.names[k]);
            if (!st && !same)
                st = ts_error(TS_ERR_FORMAT, "ensemble member %s has other labels than %s", o->ckpt, t->ckpt);
        }
        double lc[2] = {0, 0};
        if (!st) memset(p, 0, (size_t)(n * K) * sizeof *p);
        if (!st) st = score_share(&o->m, &o->e, o->max_len, u->batch, t->g.rank, t->g.size, NULL, lc, p);
        st = ts_comm_agree(t->g.world, st, "scoring");
        if (!st && t->g.size > 1) st = ts_comm_allreduce_f32(t->g.world, p, n * K, TS_REDUCE_SUM, "probabilities");
        for (int64_t i = 0; !st && i < n * K; i++) acc[i] += p[i] / (float)count;
        if (o && o != t) {
            trained_free(o);
            free(o);
        }
    }
    free(p);
    return st;
}

/* Metrics of averaged probabilities: the argmax against each example's label. */
static ts_status metrics_of_probs(const trained *t, const float *probs, ts_class_metrics *m)
{
    int64_t K = t->labels.n, n = t->e.n, labeled = 0;
    int64_t *confusion = calloc((size_t)((K + 1) * K), sizeof *confusion);
    if (!confusion) return ts_error(TS_ERR_OOM, "no memory");
    double loss = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *p = probs + i * K;
        int64_t best = 0, id = t->d.ids[i];
        for (int64_t k = 1; k < K; k++)
            if (p[k] > p[best]) best = k;
        confusion[(id >= 0 ? id : K) * K + best] += 1;
        if (id >= 0) loss -= log(fmax((double)p[id], 1e-30)), labeled++;
    }
    ts_status st = ts_metrics_compute(m, (int)K, confusion, labeled ? loss / (double)labeled : NAN);
    free(confusion);
    return st;
}

/* The checkpoint's (or ensemble's first member's) classifier and the file;
 * *members: an ensemble's names, or NULL. */
static ts_status open_use(trained *t, const ts_classify_use *u, int need_labels, ts_json **ensemble)
{
    ts_status st = read_ensemble(u->checkpoint, ensemble);
    ts_classify_use mu = *u;
    if (!st && *ensemble)
        snprintf(mu.checkpoint, sizeof mu.checkpoint, "%.900s/%s", u->checkpoint,
                 ts_json_get(*ensemble, "members")->items[0].string);
    if (!st) st = open_trained(t, &mu, need_labels);
    if (t->have_grid) st = ts_comm_agree(t->g.world, st, "opening the classifier and the data");
    return st;
}

ts_status ts_classify_evaluate(const ts_classify_use *u, ts_class_metrics *m, ts_label_set *labels)
{
    memset(m, 0, sizeof *m);
    memset(labels, 0, sizeof *labels);
    trained *t = calloc(1, sizeof *t);
    if (!t) return ts_error(TS_ERR_OOM, "no memory");
    ts_json *ens = NULL;
    const ts_json *members = NULL;
    ts_status st = open_use(t, u, 1, &ens);
    if (!st && ens) { /* an ensemble: metrics of its members' mean probabilities */
        members = ts_json_get(ens, "members");
        float *probs = calloc((size_t)(t->e.n * t->labels.n), sizeof *probs);
        st = probs ? scored_probs(t, u, members, 1, probs) : ts_error(TS_ERR_OOM, "no memory");
        if (!st) st = metrics_of_probs(t, probs, m);
        free(probs);
    } else if (!st)
        st = evaluate_set(&t->m, &t->e, t->max_len, u->batch, t->g.world, m);
    int root = !t->have_grid || t->g.rank == 0;
    if (!st && root && !u->quiet && strcmp(u->out, "-") != 0) {
        if (members) printf("ensemble %s (%zu members) on %s (%lld examples):\n\n", u->checkpoint, members->count,
                            u->data, (long long)m->total);
        else printf("%s on %s (%lld examples):\n\n", t->ckpt, u->data, (long long)m->total);
        ts_metrics_print(stdout, m, &t->labels);
        fflush(stdout);
    }
    if (!st && root && u->out[0]) {
        char *text = NULL;
        size_t n = 0;
        FILE *f = open_memstream(&text, &n);
        if (!f) st = ts_error(TS_ERR_OOM, "no memory");
        else {
            fputs("{\"checkpoint\": ", f);
            ts_json_write_string(f, members ? u->checkpoint : t->ckpt);
            if (members) fprintf(f, ", \"ensemble\": %zu", members->count);
            fputs(", \"data\": ", f);
            ts_json_write_string(f, u->data);
            fputs(", \"metrics\": ", f);
            ts_metrics_write_json(f, m, &t->labels);
            fputs("}\n", f);
            fclose(f);
            st = emit(u->out, text, n);
        }
        free(text);
    }
    if (t->have_grid) st = ts_comm_agree(t->g.world, st, "writing the evaluation");
    if (!st) {
        *labels = t->labels;
        memset(&t->labels, 0, sizeof t->labels);
    } else
        ts_metrics_free(m);
    ts_json_free(ens);
    trained_free(t);
    free(t);
    return st;
}

ts_status ts_classify_predict(const ts_classify_use *u)
{
    trained *t = calloc(1, sizeof *t);
    if (!t) return ts_error(TS_ERR_OOM, "no memory");
    ts_json *ens = NULL;
    ts_status st = open_use(t, u, 0, &ens);
    int64_t K = t->labels.n, n = t->e.n;
    float *probs = st ? NULL : calloc((size_t)(n * K), sizeof *probs);
    if (!st && !probs) st = ts_error(TS_ERR_OOM, "no memory for %lld probabilities", (long long)(n * K));
    if (!st) st = scored_probs(t, u, ens ? ts_json_get(ens, "members") : NULL, 0, probs);
    if (!st && t->g.rank == 0) {
        char *text = NULL, v[32];
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        if (!f) st = ts_error(TS_ERR_OOM, "no memory");
        for (int64_t i = 0; f && i < n; i++) {
            const float *p = probs + i * K;
            int64_t best = 0;
            for (int64_t k = 1; k < K; k++)
                if (p[k] > p[best]) best = k;
            fputs("{\"text\": ", f);
            ts_json_write_string(f, t->d.texts[i]);
            fputs(", \"label\": ", f);
            ts_json_write_string(f, t->labels.names[best]);
            if (t->d.labels[i]) {
                fputs(", \"true_label\": ", f);
                ts_json_write_string(f, t->d.labels[i]);
            }
            fputs(", \"probabilities\": {", f);
            for (int64_t k = 0; k < K; k++) {
                fputs(k ? ", " : "", f);
                ts_json_write_string(f, t->labels.names[k]);
                fprintf(f, ": %s", ts_json_float(v, sizeof v, p[k]));
            }
            fputs("}}\n", f);
        }
        if (f) {
            fclose(f);
            st = emit(u->out, text, len);
        }
        free(text);
    }
    if (t->have_grid) st = ts_comm_agree(t->g.world, st, "writing the predictions");
    free(probs);
    ts_json_free(ens);
    trained_free(t);
    free(t);
    return st;
}
