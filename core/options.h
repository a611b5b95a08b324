/* Table-driven command-line options for the tessera subcommands and the
 * modules they call (bench). Part of the runtime so every layer above can
 * parse its own options. */
#ifndef TESSERA_CLI_OPTIONS_H
#define TESSERA_CLI_OPTIONS_H

#include <stddef.h>
#include <stdint.h>

typedef enum { OPT_FLAG, OPT_INT, OPT_UINT, OPT_FLOAT, OPT_DOUBLE, OPT_STRING } opt_kind;

typedef struct cli_option {
    const char *name;     /* "--lr" */
    opt_kind kind;
    void *target;         /* int*, int64_t*, uint64_t*, float*, double*, char[size] */
    size_t size;          /* for strings */
    const char *help;
    const char *def;      /* the default, shown by --help (NULL: none) */
    double min, max;      /* numbers: the accepted range [min, max], when min < max */
    int given;            /* set by cli_parse when the option is on the command line */
} cli_option;

/* Parse argv[1..]; on error print it (naming the command) and return 2.
 * Returns 1 if --help was given (after printing usage), else 0. Numbers
 * outside an option's range are errors that name the range. */
int cli_parse(const char *command, const char *usage, cli_option *opts, int n, int argc, char **argv);
/* Was the option called `name` given? */
int cli_given(const cli_option *opts, int n, const char *name);
/* Print "tessera: <what>: <last error>" (with the rank under MPI) to stderr
 * and return 1, a command's exit code for a failure. */
int cli_fail(const char *what);

#endif
