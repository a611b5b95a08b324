/* Heterogeneous balancing: how many rows of the global batch each
 * data-parallel replica takes, from measured speeds or given shares. The
 * engine weights every gradient by the step's total scored targets, so any
 * split of the rows gives the update of one process on the whole batch;
 * only the pace changes. */
#include "tessera/parallel.h"
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "json.h"

ts_status ts_balance_split(int64_t total, int n, const double *weights, int64_t *rows)
{
    if (n < 1 || !weights || !rows) return ts_error(TS_ERR_INVALID_ARG, "ts_balance_split: no replicas");
    if (total < n)
        return ts_error(TS_ERR_INVALID_ARG, "a batch of %lld rows cannot give each of %d replicas a row",
                        (long long)total, n);
    double sum = 0;
    for (int i = 0; i < n; i++) {
        if (!(weights[i] > 0) || !isfinite(weights[i]))
            return ts_error(TS_ERR_INVALID_ARG, "share %d of %d is %g: shares must be positive numbers", i + 1, n,
                            weights[i]);
        sum += weights[i];
    }
    /* one row each first, then the rest in proportion by largest remainder
     * (ties to the lower rank), so the result is the same on every rank */
    int64_t left = total - n, given = 0;
    double *rem = malloc((size_t)n * sizeof *rem);
    if (!rem) return ts_error(TS_ERR_OOM, "ts_balance_split: no memory");
    for (int i = 0; i < n; i++) {
        double want = (double)total * weights[i] / sum - 1.0;
        if (want < 0) want = 0;
        if (want > (double)left) want = (double)left;
        rows[i] = 1 + (int64_t)floor(want);
        rem[i] = want - floor(want);
        given += rows[i] - 1;
    }
    while (given > left) { /* clamping at one row can overshoot: take from the largest */
        int big = 0;
        for (int i = 1; i < n; i++) if (rows[i] > rows[big]) big = i;
        rows[big]--, given--;
    }
    while (given < left) {
        int best = 0;
        for (int i = 1; i < n; i++) if (rem[i] > rem[best]) best = i;
        rows[best]++, rem[best] = -1, given++;
        int any = 0;
        for (int i = 0; i < n; i++) any |= rem[i] >= 0;
        if (!any) for (int i = 0; i < n; i++) rem[i] = weights[i];
    }
    free(rem);
    return TS_OK;
}

double ts_balance_predict(int n, const double *sec_per_row, const int64_t *rows)
{
    double worst = 0;
    for (int i = 0; i < n; i++) {
        double t = sec_per_row[i] * (double)rows[i];
        if (t > worst) worst = t;
    }
    return worst;
}

/* Numbers separated by commas, spaces or newlines ('#' starts a comment);
 * exactly n of them. */
static ts_status parse_numbers(const char *text, const char *what, int n, double *out)
{
    int k = 0;
    const char *p = text;
    while (*p) {
        if (*p == '#') {
            while (*p && *p != '\n') p++;
            continue;
        }
        if (isspace((unsigned char)*p) || *p == ',') {
            p++;
            continue;
        }
        char *end;
        errno = 0;
        double v = strtod(p, &end);
        if (end == p || errno)
            return ts_error(TS_ERR_INVALID_ARG, "%s: '%.20s' is not a number", what, p);
        if (!(v > 0) || !isfinite(v))
            return ts_error(TS_ERR_INVALID_ARG, "%s: share %d is %g, shares must be positive", what, k + 1, v);
        if (k < n) out[k] = v;
        k++;
        p = end;
    }
    if (k != n)
        return ts_error(TS_ERR_INVALID_ARG, "%s has %d share%s for %d data-parallel replicas", what, k,
                        k == 1 ? "" : "s", n);
    return TS_OK;
}

/* A `tessera bench train --json` file: each replica's share is its
 * device's measured training rate (1 / median step time of its "train"
 * result). */
static ts_status parse_bench(const char *path, const char *text, size_t len, int n,
                             const char *const *device_ids, double *out)
{
    ts_json *j;
    ts_status st = ts_json_parse(text, len, &j);
    if (st) return ts_error_context(st, "--balance %s", path);
    const ts_json *res = ts_json_get(j, "results");
    if (!res || res->type != TS_JSON_ARRAY) {
        ts_json_free(j);
        return ts_error(TS_ERR_INVALID_ARG, "--balance %s: a JSON file without \"results\" (not tessera bench output)",
                        path);
    }
    for (int i = 0; i < n && !st; i++) {
        double best = 0;
        for (size_t k = 0; k < res->count; k++) {
            const ts_json *r = &res->items[k];
            if (strcmp(ts_json_get_str(r, "suite", ""), "train") != 0) continue;
            if (strcmp(ts_json_get_str(r, "device", ""), device_ids ? device_ids[i] : "") != 0) continue;
            if (strncmp(ts_json_get_str(r, "impl", "tessera"), "tessera", 7) != 0) continue;
            double s = ts_json_get_num(r, "median_s", 0);
            if (s > 0 && 1.0 / s > best) best = 1.0 / s;
        }
        if (best <= 0)
            st = ts_error(TS_ERR_INVALID_ARG, "--balance %s has no tessera train result for device %s (replica %d)",
                          path, device_ids ? device_ids[i] : "?", i);
        out[i] = best;
    }
    ts_json_free(j);
    return st;
}

ts_status ts_balance_parse(const char *spec, int n, const char *const *device_ids, ts_balance_mode *mode,
                           double *shares)
{
    *mode = TS_BALANCE_EVEN;
    for (int i = 0; i < n; i++) shares[i] = 1.0;
    if (!spec || !*spec || !strcmp(spec, "even")) return TS_OK;
    if (!strcmp(spec, "auto")) {
        *mode = TS_BALANCE_AUTO;
        return TS_OK;
    }
    *mode = TS_BALANCE_SHARES;
    int list = 1;
    for (const char *p = spec; *p; p++)
        if (!(isdigit((unsigned char)*p) || *p == '.' || *p == ',' || *p == ' ' || *p == 'e' || *p == 'E' ||
              *p == '+' || *p == '-'))
            list = 0;
    if (list) {
        char what[160];
        snprintf(what, sizeof what, "--balance %s", spec);
        return parse_numbers(spec, what, n, shares);
    }
    char *text;
    size_t len;
    ts_status st = ts_read_file(spec, &text, &len);
    if (st)
        return ts_error_context(st, "--balance '%s' is not even, auto, a list of shares or a readable file", spec);
    const char *p = text;
    while (p < text + len && isspace((unsigned char)*p)) p++;
    if (p < text + len && *p == '{') {
        st = parse_bench(spec, text, len, n, device_ids, shares);
    } else {
        char what[1100];
        snprintf(what, sizeof what, "--balance file %s", spec);
        st = parse_numbers(text, what, n, shares);
    }
    free(text);
    return st;
}

ts_status ts_balance_stages(int64_t n_layer, int P, const double *layer_s, double embed_s, double head_s,
                            int64_t *bounds)
{
    if (P < 1 || n_layer < 0) return ts_error(TS_ERR_INVALID_ARG, "ts_balance_stages: %d stages", P);
    for (int s = 0; s < P; s++)
        if (!(layer_s[s] > 0) || !isfinite(layer_s[s]))
            return ts_error(TS_ERR_INVALID_ARG, "stage %d's measured layer cost is %g", s, layer_s[s]);
    int64_t L = n_layer, minl = n_layer >= P ? 1 : 0;
    /* best[s][l]: the least slowest-stage cost of stages 0..s-1 over the
     * first l layers; small sizes, so plain dynamic programming */
    size_t cells = (size_t)(P + 1) * (size_t)(L + 1);
    double *best = malloc(cells * sizeof *best);
    int64_t *from = malloc(cells * sizeof *from);
    if (!best || !from) {
        free(best), free(from);
        return ts_error(TS_ERR_OOM, "ts_balance_stages: no memory");
    }
#define AT(s, l) ((size_t)(s) * (size_t)(L + 1) + (size_t)(l))
    for (size_t i = 0; i < cells; i++) best[i] = INFINITY, from[i] = -1;
    best[AT(0, 0)] = 0;
    for (int s = 0; s < P; s++)
        for (int64_t a = 0; a <= L; a++) {
            if (!isfinite(best[AT(s, a)])) continue;
            for (int64_t b = a + minl; b <= L; b++) {
                if (s == P - 1 && b != L) continue;
                double c = (double)(b - a) * layer_s[s] + (s == 0 ? embed_s : 0) + (s == P - 1 ? head_s : 0);
                double m = c > best[AT(s, a)] ? c : best[AT(s, a)];
                if (m < best[AT(s + 1, b)]) best[AT(s + 1, b)] = m, from[AT(s + 1, b)] = a;
            }
        }
    ts_status st = TS_OK;
    if (!isfinite(best[AT(P, L)])) {
        st = ts_error(TS_ERR_INVALID_ARG, "%lld layers do not fit %d stages", (long long)L, P);
    } else {
        bounds[P] = L;
        for (int s = P; s > 0; s--) bounds[s - 1] = from[AT(s, bounds[s])];
    }
#undef AT
    free(best), free(from);
    return st;
}
