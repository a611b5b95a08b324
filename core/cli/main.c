/* tessera: train transformer language models on any OpenCL device or the
 * CPU, alone or across MPI ranks. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "tessera/tessera.h"

int cli_fail(const char *what)
{
    fprintf(stderr, "tessera: %s: %s\n", what, ts_last_error());
    return 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tessera <command> [options]\n"
            "\n"
            "commands:\n"
            "  train [options]      train a GPT model (no --data: the built-in sorting task)\n"
            "  sample [options]     generate text from a checkpoint\n"
            "  eval [options]       loss of a checkpoint on a data file\n"
            "  tokenize [options]   turn text into a token file (byte or BPE)\n"
            "  devices [--json]     list every device with its capabilities and locality\n"
            "  help                 this text\n"
            "\n"
            "environment:\n"
            "  TESSERA_DEVICE       cpu | opencl | opencl:N | opencl:<name> | auto\n"
            "  TESSERA_THREADS      CPU threads (OpenMP and host BLAS)\n"
            "  TESSERA_CACHE_DIR    OpenCL binary cache directory, or 'off'\n"
            "  TESSERA_GEMM         OpenCL GEMM route: auto | blas | clblast | kernel\n"
            "  TESSERA_LOG          error | warn | info | debug\n"
            "  TESSERA_PROFILE      1: time every op and print a table at exit\n"
            "\n"
            "tessera <command> --help lists a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    int rc;
    if (!strcmp(cmd, "devices")) rc = cmd_devices(argc - 1, argv + 1);
    else if (!strcmp(cmd, "train")) rc = cmd_train(argc - 1, argv + 1);
    else if (!strcmp(cmd, "sample")) rc = cmd_sample(argc - 1, argv + 1);
    else if (!strcmp(cmd, "eval")) rc = cmd_eval(argc - 1, argv + 1);
    else if (!strcmp(cmd, "tokenize")) rc = cmd_tokenize(argc - 1, argv + 1);
    else if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        rc = 0;
    } else if (!strcmp(cmd, "--version")) {
        printf("tessera %s (%s)\n", TESSERA_VERSION, ts_build_features());
        rc = 0;
    } else {
        fprintf(stderr, "tessera: unknown command '%s'\n\n", cmd);
        usage(stderr);
        rc = 2;
    }
    if (ts_profile_enabled()) ts_profile_report(stderr);
    ts_shutdown();
    return rc;
}
