/* The OpenCL binary cache across process starts: the first start builds
 * and writes every program, the second loads them all; corrupt, truncated
 * and stale entries are rebuilt and rewritten, never fatal; edited sources
 * get entries of their own; "off" writes nothing. Each case runs the probe
 * (bench/kernel_startup) as a fresh process against a private cache dir. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

static char g_probe[1024];
static char g_dir[256];

typedef struct probe_result {
    int built, loaded, rejected, ok, no_opencl;
    double seconds;
} probe_result;

static int run_probe(const char *env, probe_result *r)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "env TESSERA_CACHE_DIR='%s' %s '%s'", g_dir, env ? env : "", g_probe);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[512] = "";
    if (!fgets(line, sizeof line, p)) line[0] = '\0';
    int rc = pclose(p);
    memset(r, 0, sizeof *r);
    if (!strncmp(line, "no-opencl", 9)) {
        r->no_opencl = 1;
        return 0;
    }
    if (sscanf(line, "built=%d loaded=%d rejected=%d seconds=%lf ok=%d", &r->built, &r->loaded,
               &r->rejected, &r->seconds, &r->ok) != 5) {
        th_note("probe printed: %s (exit %d)", line, rc);
        return -1;
    }
    return rc == 0 ? 0 : -1;
}

/* Entries (*.bin) and leftover temporary files (.tmp-*) in the cache dir. */
static void count_files(int *bins, int *tmps, char *first_bin, size_t n)
{
    *bins = *tmps = 0;
    if (first_bin) first_bin[0] = '\0';
    DIR *d = opendir(g_dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len > 4 && !strcmp(e->d_name + len - 4, ".bin")) {
            (*bins)++;
            if (first_bin && !first_bin[0] && strncmp(e->d_name, "elementwise", 11) == 0)
                snprintf(first_bin, n, "%s/%s", g_dir, e->d_name);
        }
        if (!strncmp(e->d_name, ".tmp-", 5)) (*tmps)++;
    }
    closedir(d);
}

static int g_programs; /* programs per device, from the first start */

TEST(first_start_builds_and_writes_every_program)
{
    probe_result r;
    REQUIRE(run_probe(NULL, &r) == 0);
    if (r.no_opencl) SKIP("no OpenCL device");
    EXPECT(r.ok);
    EXPECTF(r.built > 0 && r.loaded == 0, "built %d loaded %d", r.built, r.loaded);
    int bins, tmps;
    count_files(&bins, &tmps, NULL, 0);
    EXPECTF(bins == r.built, "%d cache files for %d programs", bins, r.built);
    EXPECT(tmps == 0);
    g_programs = r.built;
    th_note("cold start: %d programs in %.3f s", r.built, r.seconds);
}

TEST(second_start_loads_every_program_from_disk)
{
    if (!g_programs) SKIP("no OpenCL device");
    probe_result r;
    REQUIRE(run_probe(NULL, &r) == 0);
    EXPECT(r.ok);
    EXPECTF(r.built == 0 && r.loaded == g_programs && r.rejected == 0,
            "built %d loaded %d rejected %d", r.built, r.loaded, r.rejected);
    th_note("warm start: %d programs in %.3f s", r.loaded, r.seconds);
}

static void damage_and_check(int truncate)
{
    if (!g_programs) SKIP("no OpenCL device");
    int bins, tmps;
    char path[1024];
    count_files(&bins, &tmps, path, sizeof path);
    REQUIRE(path[0]);
    FILE *f = fopen(path, "r+b");
    REQUIRE(f);
    struct stat sb;
    REQUIRE(stat(path, &sb) == 0);
    if (truncate) {
        REQUIRE(ftruncate(fileno(f), sb.st_size / 2) == 0);
    } else { /* flip bytes in the middle of the binary */
        fseek(f, sb.st_size / 2, SEEK_SET);
        unsigned char junk[16];
        for (int i = 0; i < 16; i++) junk[i] = (unsigned char)(0xA5 ^ i);
        fwrite(junk, 1, sizeof junk, f);
    }
    fclose(f);
    probe_result r;
    REQUIRE(run_probe(NULL, &r) == 0);
    EXPECT(r.ok);
    EXPECTF(r.rejected == 1 && r.built == 1 && r.loaded == g_programs - 1,
            "rejected %d built %d loaded %d", r.rejected, r.built, r.loaded);
    /* rewritten: the next start loads everything again */
    REQUIRE(run_probe(NULL, &r) == 0);
    EXPECTF(r.loaded == g_programs && r.built == 0, "built %d loaded %d", r.built, r.loaded);
}

TEST(corrupt_entry_is_rebuilt_and_rewritten) { damage_and_check(0); }
TEST(truncated_entry_is_rebuilt_and_rewritten) { damage_and_check(1); }

TEST(edited_source_gets_its_own_entry)
{
    if (!g_programs) SKIP("no OpenCL device");
    const char *root = getenv("TESSERA_SOURCE_ROOT");
    if (!root) SKIP("TESSERA_SOURCE_ROOT is not set");
    char kdir[] = "/tmp/tessera-kdir-XXXXXX";
    REQUIRE(mkdtemp(kdir));
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp '%s/kernels/'*.cl '%s/' && echo '/* edited */' >> '%s/optim.cl'",
             root, kdir, kdir);
    REQUIRE(system(cmd) == 0);
    char env[512];
    snprintf(env, sizeof env, "TESSERA_KERNEL_DIR='%s'", kdir);
    probe_result r;
    REQUIRE(run_probe(env, &r) == 0);
    EXPECT(r.ok);
    EXPECTF(r.built == 1 && r.loaded == g_programs - 1, "built %d loaded %d", r.built, r.loaded);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", kdir);
    if (system(cmd) != 0) th_note("could not remove %s", kdir);
}

TEST(cache_off_writes_nothing)
{
    if (!g_programs) SKIP("no OpenCL device");
    char saved[256];
    snprintf(saved, sizeof saved, "%s", g_dir);
    snprintf(g_dir, sizeof g_dir, "off");
    probe_result r;
    int rc = run_probe(NULL, &r);
    snprintf(g_dir, sizeof g_dir, "%s", saved);
    REQUIRE(rc == 0);
    EXPECT(r.ok && r.built == g_programs && r.loaded == 0);
    EXPECT(access("off", F_OK) != 0);
}

int main(int argc, char **argv)
{
    /* argv[1]: the probe, bench/kernel_startup in the build tree */
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH-TO-kernel_startup [test filters]\n", argv[0]);
        return 2;
    }
    snprintf(g_probe, sizeof g_probe, "%s", argv[1]);
    argv[1] = argv[0];
    argc--, argv++;
    snprintf(g_dir, sizeof g_dir, "/tmp/tessera-cache-test-XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    TH_ADD(first_start_builds_and_writes_every_program);
    TH_ADD(second_start_loads_every_program_from_disk);
    TH_ADD(corrupt_entry_is_rebuilt_and_rewritten);
    TH_ADD(truncated_entry_is_rebuilt_and_rewritten);
    TH_ADD(edited_source_gets_its_own_entry);
    TH_ADD(cache_off_writes_nothing);
    int rc = th_run(argc, argv);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    return rc;
}
