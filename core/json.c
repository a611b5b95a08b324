#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_DEPTH = 64 };

typedef struct parser {
    const char *s;
    size_t n, pos;
    int depth;
} parser;

static ts_status fail(parser *p, const char *what)
{
    return ts_error(TS_ERR_FORMAT, "invalid JSON at byte %zu: %s", p->pos, what);
}

static void skip_ws(parser *p)
{
    while (p->pos < p->n && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' ||
                             p->s[p->pos] == '\r'))
        p->pos++;
}

static ts_status parse_value(parser *p, ts_json *out);

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static size_t put_utf8(char *o, uint32_t cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static ts_status parse_string(parser *p, char **out)
{
    if (p->pos >= p->n || p->s[p->pos] != '"') return fail(p, "expected a string");
    p->pos++;
    size_t start = p->pos;
    /* the decoded string is never longer than the encoded one */
    size_t end = start;
    while (end < p->n && p->s[end] != '"') end += (p->s[end] == '\\') ? 2 : 1;
    if (end >= p->n) return fail(p, "unterminated string");
    char *o = malloc(end - start + 1);
    if (!o) return ts_error(TS_ERR_OOM, "JSON: out of memory");
    size_t k = 0;
    while (p->pos < end) {
        char c = p->s[p->pos++];
        if ((unsigned char)c < 0x20) {
            free(o);
            return fail(p, "control character in string");
        }
        if (c != '\\') {
            o[k++] = c;
            continue;
        }
        char e = p->s[p->pos++];
        switch (e) {
        case '"': o[k++] = '"'; break;
        case '\\': o[k++] = '\\'; break;
        case '/': o[k++] = '/'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'n': o[k++] = '\n'; break;
        case 'r': o[k++] = '\r'; break;
        case 't': o[k++] = '\t'; break;
        case 'u': {
            uint32_t cp = 0;
            for (int i = 0; i < 4; i++) {
                int h = p->pos < end ? hexval(p->s[p->pos++]) : -1;
                if (h < 0) {
                    free(o);
                    return fail(p, "bad \\u escape");
                }
                cp = cp * 16 + (uint32_t)h;
            }
            if (cp >= 0xD800 && cp < 0xDC00 && p->pos + 6 <= end && p->s[p->pos] == '\\' &&
                p->s[p->pos + 1] == 'u') {
                uint32_t lo = 0;
                int okh = 1;
                for (int i = 0; i < 4; i++) {
                    int h = hexval(p->s[p->pos + 2 + i]);
                    if (h < 0) okh = 0;
                    lo = lo * 16 + (uint32_t)(h < 0 ? 0 : h);
                }
                if (okh && lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p->pos += 6;
                }
            }
            if (cp == 0) {
                free(o);
                return fail(p, "\\u0000 is not supported");
            }
            k += put_utf8(o + k, cp);
            break;
        }
        default: free(o); return fail(p, "bad escape");
        }
    }
    p->pos = end + 1;
    o[k] = '\0';
    *out = o;
    return TS_OK;
}

static ts_status parse_number(parser *p, ts_json *out)
{
    size_t start = p->pos;
    int integral = 1;
    if (p->pos < p->n && p->s[p->pos] == '-') p->pos++;
    if (p->pos >= p->n || p->s[p->pos] < '0' || p->s[p->pos] > '9') return fail(p, "bad number");
    while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    if (p->pos < p->n && p->s[p->pos] == '.') {
        integral = 0;
        p->pos++;
        while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    }
    if (p->pos < p->n && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        integral = 0;
        p->pos++;
        if (p->pos < p->n && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    }
    char buf[64];
    size_t len = p->pos - start;
    if (len >= sizeof buf) return fail(p, "number too long");
    memcpy(buf, p->s + start, len);
    buf[len] = '\0';
    out->type = TS_JSON_NUMBER;
    out->number = strtod(buf, NULL);
    if (integral) {
        /* an integer beyond 64 bits is a number, not a clamped integer */
        char *endp;
        errno = 0;
        long long v = strtoll(buf, &endp, 10);
        out->is_integer = errno != ERANGE;
        out->integer = out->is_integer ? v : 0;
    }
    return TS_OK;
}

static ts_status parse_container(parser *p, ts_json *out, int object)
{
    if (++p->depth > MAX_DEPTH) return fail(p, "nesting too deep");
    p->pos++; /* [ or { */
    out->type = object ? TS_JSON_OBJECT : TS_JSON_ARRAY;
    size_t cap = 0;
    skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == (object ? '}' : ']')) {
        p->pos++;
        p->depth--;
        return TS_OK;
    }
    for (;;) {
        if (out->count == cap) {
            cap = cap ? cap * 2 : 8;
            ts_json *items = realloc(out->items, cap * sizeof *items);
            if (!items) return ts_error(TS_ERR_OOM, "JSON: out of memory");
            out->items = items;
            if (object) {
                char **keys = realloc(out->keys, cap * sizeof *keys);
                if (!keys) return ts_error(TS_ERR_OOM, "JSON: out of memory");
                out->keys = keys;
            }
        }
        ts_json *item = &out->items[out->count];
        memset(item, 0, sizeof *item);
        skip_ws(p);
        if (object) {
            out->keys[out->count] = NULL;
            ts_status st = parse_string(p, &out->keys[out->count]);
            if (st) {
                out->count++; /* so the partial key is freed */
                return st;
            }
            skip_ws(p);
            if (p->pos >= p->n || p->s[p->pos] != ':') {
                out->count++;
                return fail(p, "expected ':'");
            }
            p->pos++;
        }
        out->count++;
        ts_status st = parse_value(p, item);
        if (st) return st;
        skip_ws(p);
        if (p->pos >= p->n) return fail(p, "unexpected end");
        char c = p->s[p->pos++];
        if (c == ',') continue;
        if (c == (object ? '}' : ']')) break;
        return fail(p, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    p->depth--;
    return TS_OK;
}

static ts_status parse_value(parser *p, ts_json *out)
{
    skip_ws(p);
    if (p->pos >= p->n) return fail(p, "unexpected end");
    char c = p->s[p->pos];
    if (c == '{') return parse_container(p, out, 1);
    if (c == '[') return parse_container(p, out, 0);
    if (c == '"') {
        out->type = TS_JSON_STRING;
        return parse_string(p, &out->string);
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p, out);
    if (p->n - p->pos >= 4 && !strncmp(p->s + p->pos, "true", 4)) {
        out->type = TS_JSON_BOOL, out->boolean = 1, p->pos += 4;
        return TS_OK;
    }
    if (p->n - p->pos >= 5 && !strncmp(p->s + p->pos, "false", 5)) {
        out->type = TS_JSON_BOOL, p->pos += 5;
        return TS_OK;
    }
    if (p->n - p->pos >= 4 && !strncmp(p->s + p->pos, "null", 4)) {
        out->type = TS_JSON_NULL, p->pos += 4;
        return TS_OK;
    }
    return fail(p, "unexpected character");
}

static void free_inner(ts_json *j)
{
    if (!j) return;
    free(j->string);
    for (size_t i = 0; i < j->count; i++) {
        free_inner(&j->items[i]);
        if (j->keys) free(j->keys[i]);
    }
    free(j->items);
    free(j->keys);
}

void ts_json_free(ts_json *j)
{
    free_inner(j);
    free(j);
}

ts_status ts_json_parse(const char *text, size_t n, ts_json **out)
{
    *out = NULL;
    parser p = {text, n, 0, 0};
    ts_json *root = calloc(1, sizeof *root);
    if (!root) return ts_error(TS_ERR_OOM, "JSON: out of memory");
    ts_status st = parse_value(&p, root);
    if (!st) {
        skip_ws(&p);
        if (p.pos != p.n) st = fail(&p, "trailing characters");
    }
    if (st) {
        ts_json_free(root);
        return st;
    }
    *out = root;
    return TS_OK;
}

const ts_json *ts_json_get(const ts_json *obj, const char *key)
{
    if (!obj || obj->type != TS_JSON_OBJECT) return NULL;
    for (size_t i = 0; i < obj->count; i++)
        if (!strcmp(obj->keys[i], key)) return &obj->items[i];
    return NULL;
}

int64_t ts_json_get_int(const ts_json *obj, const char *key, int64_t dflt)
{
    const ts_json *v = ts_json_get(obj, key);
    return v && v->type == TS_JSON_NUMBER && v->is_integer ? v->integer : dflt;
}

double ts_json_get_num(const ts_json *obj, const char *key, double dflt)
{
    const ts_json *v = ts_json_get(obj, key);
    return v && v->type == TS_JSON_NUMBER ? v->number : dflt;
}

const char *ts_json_get_str(const ts_json *obj, const char *key, const char *dflt)
{
    const ts_json *v = ts_json_get(obj, key);
    return v && v->type == TS_JSON_STRING ? v->string : dflt;
}

size_t ts_json_escape(char *buf, size_t size, const char *s)
{
    size_t k = 0;
#define PUT(c)                                                                                     \
    do {                                                                                           \
        if (k + 1 < size) buf[k] = (c);                                                            \
        k++;                                                                                       \
    } while (0)
    PUT('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            PUT('\\');
            PUT((char)*p);
        } else if (*p == '\n') {
            PUT('\\');
            PUT('n');
        } else if (*p == '\t') {
            PUT('\\');
            PUT('t');
        } else if (*p == '\r') {
            PUT('\\');
            PUT('r');
        } else if (*p < 0x20) {
            char hex[8];
            snprintf(hex, sizeof hex, "\\u%04x", *p);
            for (char *h = hex; *h; h++) PUT(*h);
        } else {
            PUT((char)*p);
        }
    }
    PUT('"');
#undef PUT
    if (size) buf[k < size ? k : size - 1] = '\0';
    return k;
}

void ts_json_write_string(FILE *f, const char *s)
{
    size_t n = ts_json_escape(NULL, 0, s);
    char *buf = malloc(n + 1);
    if (!buf) return;
    ts_json_escape(buf, n + 1, s);
    fputs(buf, f);
    free(buf);
}

void ts_json_write_member(FILE *f, const char *key, const char *value, const char *after)
{
    ts_json_write_string(f, key);
    fputs(": ", f);
    ts_json_write_string(f, value ? value : "");
    fputs(after ? after : "", f);
}

/* The value of a member as comparable text: strings as is, numbers by
 * value, the rest by type. */
static void member_text(const ts_json *v, char *out, size_t n)
{
    if (!v) snprintf(out, n, "(absent)");
    else if (v->type == TS_JSON_STRING) snprintf(out, n, "\"%s\"", v->string);
    else if (v->type == TS_JSON_NUMBER && v->is_integer) snprintf(out, n, "%lld", (long long)v->integer);
    else if (v->type == TS_JSON_NUMBER) snprintf(out, n, "%.6g", v->number); /* floats saved as %.9g */
    else if (v->type == TS_JSON_BOOL) snprintf(out, n, "%s", v->boolean ? "true" : "false");
    else if (v->type == TS_JSON_NULL) snprintf(out, n, "null");
    else snprintf(out, n, "(%s of %zu)", v->type == TS_JSON_ARRAY ? "array" : "object", v->count);
}

static int listed(const char *key, const char *const *only)
{
    if (!only) return 1;
    for (; *only; only++)
        if (!strcmp(*only, key)) return 1;
    return 0;
}

int ts_json_object_diff(const char *a, const char *b, const char *const *only, char *out, size_t n)
{
    ts_json *ja = NULL, *jb = NULL;
    if (n) out[0] = '\0';
    if (ts_json_parse(a, strlen(a), &ja) || ts_json_parse(b, strlen(b), &jb) || ja->type != TS_JSON_OBJECT ||
        jb->type != TS_JSON_OBJECT) {
        ts_json_free(ja), ts_json_free(jb);
        ts_clear_error();
        return -1;
    }
    int diffs = 0;
    size_t k = 0;
    for (int pass = 0; pass < 2; pass++) {
        const ts_json *x = pass ? jb : ja, *y = pass ? ja : jb;
        for (size_t i = 0; i < x->count; i++) {
            const char *key = x->keys[i];
            if (!listed(key, only)) continue;
            if (pass && ts_json_get(y, key)) continue; /* compared in the first pass */
            char va[512], vb[512];
            member_text(ts_json_get(ja, key), va, sizeof va);
            member_text(ts_json_get(jb, key), vb, sizeof vb);
            if (!strcmp(va, vb)) continue;
            diffs++;
            if (k < n)
                k += (size_t)snprintf(out + k, n - k, "%s%s (%s vs %s)", diffs > 1 ? ", " : "", key, va, vb);
        }
    }
    ts_json_free(ja), ts_json_free(jb);
    return diffs;
}

const char *ts_json_float(char *buf, size_t n, double v)
{
    if (!isfinite(v)) {
        snprintf(buf, n, "null");
        return buf;
    }
    float f = (float)v;
    for (int digits = 6; digits <= 9; digits++) {
        snprintf(buf, n, "%.*g", digits, (double)f);
        if (strtof(buf, NULL) == f) break;
    }
    return buf;
}

/* Appends to buf[*k..n), counting past n, so the caller learns the length. */
static void put(char *buf, size_t n, size_t *k, const char *s, size_t len)
{
    if (*k < n) memcpy(buf + *k, s, *k + len < n ? len : n - *k);
    *k += len;
}

static void serialize(const ts_json *j, char *buf, size_t n, size_t *k, int depth)
{
    char tmp[64];
    if (depth > 64) { /* the parser bounds nesting; a hand-made tree is cut */
        put(buf, n, k, "null", 4);
        return;
    }
    switch (j->type) {
    case TS_JSON_NULL: put(buf, n, k, "null", 4); break;
    case TS_JSON_BOOL: put(buf, n, k, j->boolean ? "true" : "false", j->boolean ? 4 : 5); break;
    case TS_JSON_NUMBER: {
        int m = j->is_integer ? snprintf(tmp, sizeof tmp, "%lld", (long long)j->integer)
                              : isfinite(j->number) ? snprintf(tmp, sizeof tmp, "%.17g", j->number)
                                                    : snprintf(tmp, sizeof tmp, "null");
        put(buf, n, k, tmp, (size_t)m);
        break;
    }
    case TS_JSON_STRING: {
        size_t m = ts_json_escape(NULL, 0, j->string);
        char *e = malloc(m + 1);
        if (e) {
            ts_json_escape(e, m + 1, j->string);
            put(buf, n, k, e, m);
            free(e);
        }
        break;
    }
    case TS_JSON_ARRAY:
    case TS_JSON_OBJECT: {
        int obj = j->type == TS_JSON_OBJECT;
        put(buf, n, k, obj ? "{" : "[", 1);
        for (size_t i = 0; i < j->count; i++) {
            if (i) put(buf, n, k, ", ", 2);
            if (obj) {
                serialize(&(ts_json){.type = TS_JSON_STRING, .string = j->keys[i]}, buf, n, k, depth + 1);
                put(buf, n, k, ": ", 2);
            }
            serialize(&j->items[i], buf, n, k, depth + 1);
        }
        put(buf, n, k, obj ? "}" : "]", 1);
        break;
    }
    }
}

size_t ts_json_serialize(const ts_json *j, char *buf, size_t n)
{
    size_t k = 0;
    serialize(j, buf, n, &k, 0);
    if (n) buf[k < n ? k : n - 1] = '\0';
    return k;
}
