/* A small JSON reader (DOM) and string escaping for writers. Enough for
 * safetensors headers, tokenizer files and configuration: objects, arrays,
 * strings (with \uXXXX escapes), numbers, true/false/null. Nesting depth
 * and sizes are bounded, and errors name the byte offset. */
#ifndef TESSERA_JSON_H
#define TESSERA_JSON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "tessera/status.h"

typedef enum { TS_JSON_NULL, TS_JSON_BOOL, TS_JSON_NUMBER, TS_JSON_STRING, TS_JSON_ARRAY, TS_JSON_OBJECT } ts_json_type;

typedef struct ts_json {
    ts_json_type type;
    int boolean;
    double number;
    int is_integer;          /* the number was written without fraction or exponent */
    int64_t integer;         /* its value, when is_integer */
    char *string;            /* NUL-terminated (may contain no NULs) */
    size_t count;            /* elements of an array or members of an object */
    struct ts_json *items;   /* array elements or object values */
    char **keys;             /* object member names */
} ts_json;

/* Parse text[0..n); *out is owned by the caller (ts_json_free). */
ts_status ts_json_parse(const char *text, size_t n, ts_json **out);
void ts_json_free(ts_json *j);

/* Member of an object by name (NULL if absent or not an object). */
const ts_json *ts_json_get(const ts_json *obj, const char *key);
/* Helpers that return a default when the member is absent or of another type. */
int64_t ts_json_get_int(const ts_json *obj, const char *key, int64_t dflt);
double ts_json_get_num(const ts_json *obj, const char *key, double dflt);
const char *ts_json_get_str(const ts_json *obj, const char *key, const char *dflt);

/* Members of two JSON objects (given as text) whose values differ, or that
 * one of them lacks, as "key (a vs b), ..." in out; only the keys listed in
 * `only` (NULL-terminated) or, if NULL, all. Returns how many differ, or -1
 * when either text is not a JSON object. */
int ts_json_object_diff(const char *a, const char *b, const char *const *only, char *out, size_t n);

/* The shortest text that reads back as the same float (JSON null for
 * NaN and infinities): "0.001", not "0.00100000005". Returns buf. */
const char *ts_json_float(char *buf, size_t n, double v);

/* A value as JSON text into buf (NUL-terminated when n > 0); returns the
 * length it needs, so a result >= n means it did not fit. */
size_t ts_json_serialize(const ts_json *j, char *buf, size_t n);

/* Write s as a JSON string literal (with quotes) to f. */
void ts_json_write_string(FILE *f, const char *s);
/* `"key": "value"` (value escaped), then `after` (such as ", "). */
void ts_json_write_member(FILE *f, const char *key, const char *value, const char *after);
/* The same into buf; returns the length it needs (snprintf-like). */
size_t ts_json_escape(char *buf, size_t size, const char *s);

#endif
