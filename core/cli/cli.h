/* The `tessera` command: one function per subcommand. */
#ifndef TESSERA_CLI_H
#define TESSERA_CLI_H

int cmd_devices(int argc, char **argv);

/* Print "tessera: <what>: <last error>" to stderr and return 1. */
int cli_fail(const char *what);

#endif
