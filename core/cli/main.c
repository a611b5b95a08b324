/* tessera: train transformer language models on any OpenCL device or the
 * CPU, alone or across MPI ranks. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "cli.h"
#include "options.h"
#include "tessera/tessera.h"

/* Started by an MPI launcher (or asked to be): then join the world. */
static int under_mpi(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MV2_COMM_WORLD_SIZE",
                                 "TESSERA_MPI"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v && strcmp(v, "0") != 0) return 1;
    }
    return 0;
}

/* The --device a command was given (NULL: none, so its default). */
static const char *device_arg(int argc, char **argv)
{
    const char *spec = NULL;
    for (int a = 2; a < argc; a++) {
        if (!strcmp(argv[a], "--device") && a + 1 < argc) spec = argv[++a];
        else if (!strncmp(argv[a], "--device=", 9)) spec = argv[a] + 9;
    }
    return spec;
}

/* Some settings of the process are read once, when it loads (the host's
 * thread runtime): where the devices ask for one, it is set and the program
 * runs again, in the same process and before MPI starts. */
static void prepare_process(int argc, char **argv)
{
    /* train and classify open their device as ts_device_open_local does
     * (TESSERA_DEVICE wins); sample and eval as ts_device_open (it stands
     * in for "auto"); bench without --device runs every device */
    const char *cmd = argv[1], *spec = device_arg(argc, argv);
    int local = !strcmp(cmd, "train") || !strcmp(cmd, "classify");
    int single = !strcmp(cmd, "sample") || !strcmp(cmd, "eval") || (!strcmp(cmd, "bench") && spec);
    if ((!local && !single) || !ts_device_prepare_process(spec, local)) return;
    fflush(NULL);
    execv("/proc/self/exe", argv);
    ts_log(TS_LOG_WARN, "could not re-run the program for its new environment (%s); going on without", strerror(errno));
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
            "  classify <train|eval|predict>  fine-tune a text classifier, measure it, use it\n"
            "  tokenize [options]   turn text into a token file (byte or BPE)\n"
            "  convert --to F IN OUT  a model to/from Hugging Face GPT-2 (hf) or llm.c (llmc)\n"
            "  plot OUT.html RUN... training curves of runs on one HTML page\n"
            "  devices [--json]     list every device with its capabilities and locality\n"
            "  bench [options]      benchmark kernels per device; bench train, bench collectives,\n"
            "                       bench report (see bench --help)\n"
            "  help                 this text\n"
            "\n"
            "environment:\n"
            "  TESSERA_DEVICE       cpu | opencl | opencl:N | opencl:<name> | auto\n"
            "  TESSERA_THREADS      CPU threads (OpenMP and host BLAS)\n"
            "  TESSERA_CACHE_DIR    OpenCL binary cache directory, or 'off'\n"
            "  TESSERA_GEMM         OpenCL GEMM route: auto | blas | clblast | kernel\n"
            "  TESSERA_LOG          error | warn | info | debug\n"
            "  TESSERA_PROFILE      1: time every op and print a table at exit\n"
            "  TESSERA_WATCHDOG     seconds a collective may wait before the ranks that have\n"
            "                       not joined are named (300; 0 = off)\n"
            "\n"
            "parallel training: mpirun -np N tessera train --tp T --pp P ... (see train --help)\n"
            "\n"
            "tessera <command> --help lists a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    prepare_process(argc, argv);
    const char *cmd = argv[1];
    int rc, mpi = ts_parallel_have_mpi() && under_mpi() && (!strcmp(cmd, "train") || !strcmp(cmd, "devices") || !strcmp(cmd, "bench") ||
                                                           !strcmp(cmd, "classify"));
    if (mpi && ts_parallel_init(&argc, &argv) != TS_OK) return cli_fail("starting MPI");
    if (!strcmp(cmd, "devices")) rc = cmd_devices(argc - 1, argv + 1);
    else if (!strcmp(cmd, "train")) rc = cmd_train(argc - 1, argv + 1);
    else if (!strcmp(cmd, "sample")) rc = cmd_sample(argc - 1, argv + 1);
    else if (!strcmp(cmd, "eval")) rc = cmd_eval(argc - 1, argv + 1);
    else if (!strcmp(cmd, "tokenize")) rc = cmd_tokenize(argc - 1, argv + 1);
    else if (!strcmp(cmd, "classify")) rc = cmd_classify(argc - 1, argv + 1);
    else if (!strcmp(cmd, "convert")) rc = cmd_convert(argc - 1, argv + 1);
    else if (!strcmp(cmd, "plot")) rc = cmd_plot(argc - 1, argv + 1);
    else if (!strcmp(cmd, "bench")) rc = ts_bench_command(argc - 1, argv + 1);
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
    if (mpi && rc == 0) ts_parallel_finalize();
    else if (mpi) ts_parallel_finalize_failed(20.0);
    ts_shutdown();
    return rc;
}
