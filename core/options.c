#include "options.h"

#include "tessera/comm.h"
#include "tessera/status.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_usage(FILE *f, const char *command, const char *usage, const cli_option *opts, int n)
{
    fprintf(f, "usage: tessera %s %s\n\noptions:\n", command, usage);
    for (int i = 0; i < n; i++) {
        const char *arg = opts[i].kind == OPT_FLAG ? "" : opts[i].kind == OPT_STRING ? " S" : " N";
        char left[64];
        snprintf(left, sizeof left, "%s%s", opts[i].name, arg);
        fprintf(f, "  %-22s %s", left, opts[i].help);
        if (opts[i].def && opts[i].def[0]) fprintf(f, " [default: %s]", opts[i].def);
        fputc('\n', f);
    }
    fprintf(f, "  %-22s %s\n", "--help", "this text");
}

int cli_given(const cli_option *opts, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(opts[i].name, name)) return opts[i].given;
    return 0;
}

static int out_of_range(const char *command, const cli_option *o, double v, const char *val)
{
    if (!(o->min < o->max) || (v >= o->min && v <= o->max)) return 0;
    fprintf(stderr, "tessera %s: %s must be between %.10g and %.10g, not %s\n", command, o->name, o->min,
            o->max, val);
    return 1;
}

int cli_parse(const char *command, const char *usage, cli_option *opts, int n, int argc, char **argv)
{
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            print_usage(stdout, command, usage, opts, n);
            return 1;
        }
        const char *eq = strchr(arg, '=');
        size_t namelen = eq ? (size_t)(eq - arg) : strlen(arg);
        cli_option *o = NULL;
        for (int i = 0; i < n; i++)
            if (strlen(opts[i].name) == namelen && !strncmp(opts[i].name, arg, namelen)) o = &opts[i];
        if (!o) {
            fprintf(stderr, "tessera %s: unknown option '%s' (see tessera %s --help)\n", command, arg, command);
            return 2;
        }
        o->given = 1;
        if (o->kind == OPT_FLAG) {
            if (eq) {
                fprintf(stderr, "tessera %s: %s takes no value\n", command, o->name);
                return 2;
            }
            *(int *)o->target = 1;
            continue;
        }
        const char *val = eq ? eq + 1 : (a + 1 < argc ? argv[++a] : NULL);
        if (!val) {
            fprintf(stderr, "tessera %s: %s needs a value\n", command, o->name);
            return 2;
        }
        char *end = NULL;
        errno = 0;
        switch (o->kind) {
        case OPT_INT: {
            long long v = strtoll(val, &end, 10);
            if (*val == '\0' || *end || errno) goto bad;
            if (out_of_range(command, o, (double)v, val)) return 2;
            *(int64_t *)o->target = v;
            break;
        }
        case OPT_UINT: {
            if (*val == '-') goto bad;
            unsigned long long v = strtoull(val, &end, 10);
            if (*val == '\0' || *end || errno) goto bad;
            if (out_of_range(command, o, (double)v, val)) return 2;
            *(uint64_t *)o->target = v;
            break;
        }
        case OPT_FLOAT: {
            float v = strtof(val, &end);
            if (*val == '\0' || *end || errno || !isfinite(v)) goto bad;
            if (out_of_range(command, o, v, val)) return 2;
            *(float *)o->target = v;
            break;
        }
        case OPT_DOUBLE: {
            double v = strtod(val, &end);
            if (*val == '\0' || *end || errno || !isfinite(v)) goto bad;
            if (out_of_range(command, o, v, val)) return 2;
            *(double *)o->target = v;
            break;
        }
        case OPT_STRING:
            if (strlen(val) >= o->size) {
                fprintf(stderr, "tessera %s: the value of %s is too long (at most %zu bytes)\n", command,
                        o->name, o->size - 1);
                return 2;
            }
            memcpy(o->target, val, strlen(val) + 1);
            break;
        case OPT_FLAG: break;
        }
        continue;
    bad:
        fprintf(stderr, "tessera %s: %s: '%s' is not a valid %s\n", command, o->name, val,
                o->kind == OPT_FLOAT || o->kind == OPT_DOUBLE ? "number" : "integer");
        return 2;
    }
    return 0;
}

int cli_fail(const char *what)
{
    ts_comm *w = ts_comm_world();
    if (ts_comm_size(w) > 1) fprintf(stderr, "tessera [rank %d]: %s: %s\n", ts_comm_rank(w), what, ts_last_error());
    else fprintf(stderr, "tessera: %s: %s\n", what, ts_last_error());
    return 1;
}
