/* tessera devices: every device, its capabilities, and where it sits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "options.h"
#include "json.h"
#include "tessera/tessera.h"

static double gib(uint64_t b) { return (double)b / (1024.0 * 1024.0 * 1024.0); }

static const char *route_or_none(ts_device *dev, ts_dtype dt)
{
    const char *r = ts_device_matmul_route(dev, dt);
    return r[0] ? r : "not available";
}

static void print_text(int i, ts_device *dev, const ts_device_info *d, const ts_locality *loc)
{
    printf("%s%-10s %s\n", i ? "\n" : "", d->id, d->name);
    printf("  type      %s, %d compute units", ts_device_type_name(d->type), d->compute_units);
    if (d->clock_mhz > 0) printf(", %d MHz", d->clock_mhz);
    printf("\n");
    if (d->vendor[0]) printf("  vendor    %s\n", d->vendor);
    printf("  platform  %s\n", d->platform);
    printf("  driver    %s\n", d->driver_version);
    printf("  version   %s\n", d->version);
    printf("  memory    %.1f GiB global, %.1f GiB max allocation", gib(d->global_mem_bytes),
           gib(d->max_alloc_bytes));
    if (d->local_mem_bytes) printf(", %llu KiB local", (unsigned long long)d->local_mem_bytes / 1024);
    if (d->max_work_group_size)
        printf(", work-groups up to %llu", (unsigned long long)d->max_work_group_size);
    printf("\n");
    printf("  features  fp64 %s, fp16 %s, subgroups %s%s\n", d->fp64 ? "yes" : "no",
           d->fp16 ? "yes" : "no", d->subgroups ? "yes" : "no",
           d->host_memory ? ", host memory" : "");
    printf("  details   %s\n", d->details);
    printf("  matmul    bf16: %s; fp16: %s (--dtype)\n", route_or_none(dev, TS_BF16), route_or_none(dev, TS_F16));
    if (loc->known)
        printf("  near      cores %s (%d cores, %d threads), NUMA node %s [%s]\n", loc->cpus,
               loc->cores, loc->pus, loc->numa_nodes[0] ? loc->numa_nodes : "-", loc->how);
    else
        printf("  near      unknown (%s)\n", loc->how[0] ? loc->how : "hwloc found nothing");
}

/* TESSERA_ATTENTION when set to something other than auto (it overrides
 * the default routes the details name); *valid: fused or composite. */
static const char *attention_env(int *valid)
{
    const char *att = getenv("TESSERA_ATTENTION");
    if (!att || !*att || !strcmp(att, "auto")) return NULL;
    *valid = !strcmp(att, "fused") || !strcmp(att, "composite");
    return att;
}

static void print_json(int i, int n, ts_device *dev, const ts_device_info *d, const ts_locality *loc)
{
    printf("  {");
    ts_device_info_write_json(stdout, d);
    int valid = 0;
    const char *att = attention_env(&valid);
    if (att) { /* {"value": ..., "valid": ...}, or null where the defaults stand */
        printf("\"attention_env\": {");
        ts_json_write_member(stdout, "value", att, ", ");
        printf("\"valid\": %s}, ", valid ? "true" : "false");
    } else {
        printf("\"attention_env\": null, ");
    }
    ts_json_write_member(stdout, "matmul_bf16", ts_device_matmul_route(dev, TS_BF16), ", ");
    ts_json_write_member(stdout, "matmul_fp16", ts_device_matmul_route(dev, TS_F16), ", ");
    printf("\"locality\": {\"known\": %s, ", loc->known ? "true" : "false");
    ts_json_write_member(stdout, "cpus", loc->cpus, ", ");
    ts_json_write_member(stdout, "numa_nodes", loc->numa_nodes, ", ");
    printf("\"cores\": %d, \"pus\": %d, ", loc->cores, loc->pus);
    ts_json_write_member(stdout, "how", loc->how, "");
    printf("}}%s\n", i + 1 < n ? "," : "");
}

int cmd_devices(int argc, char **argv)
{
    int json = 0;
    cli_option opts[] = {
        {"--json", OPT_FLAG, &json, 0, "one JSON array of every device instead of text", NULL, 0, 0, 0},
    };
    int rc = cli_parse("devices", "[--json]   every device tessera can compute on", opts,
                       (int)(sizeof opts / sizeof *opts), argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    int n = ts_device_count();
    /* where this process may run (under mpirun: each rank's binding) */
    char where[256];
    ts_placement_current(where, sizeof where);
    ts_comm *w = ts_comm_world();
    if (!json) {
        if (ts_comm_size(w) > 1) printf("rank %d of %d: ", ts_comm_rank(w), ts_comm_size(w));
        printf("this process runs on %s\n", where);
        /* the details below name each device's default attention route */
        int valid = 0;
        const char *att = attention_env(&valid);
        if (att && valid)
            printf("attention: TESSERA_ATTENTION=%s sets every device's route in this environment%s\n", att,
                   strcmp(att, "fused") ? "" : " (fused where the device has it)");
        else if (att)
            printf("attention: TESSERA_ATTENTION=%s is not fused, composite or auto: runs will refuse it\n", att);
        printf("\n");
    }
    if (json) printf("[\n");
    for (int i = 0; i < n; i++) {
        ts_device *dev = ts_device_at(i);
        ts_locality loc;
        if (ts_device_locality(dev, &loc) != TS_OK) return cli_fail("locating device");
        if (json) print_json(i, n, dev, ts_device_get_info(dev), &loc);
        else print_text(i, dev, ts_device_get_info(dev), &loc);
    }
    if (json) printf("]\n");
    return 0;
}
