/* Allreduce bus bandwidth of every gradient strategy, 4 KB to 64 MB, beside
 * memcpy bandwidth measured in the same run.
 *   mpirun -np N bench/allreduce_bw [--min-time S] [--max-bytes B] [--json FILE] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/tessera.h"

int main(int argc, char **argv)
{
    if (ts_parallel_init(&argc, &argv) != TS_OK) {
        fprintf(stderr, "allreduce_bw: %s\n", ts_last_error());
        return 1;
    }
    double min_time = 0.5;
    int64_t max_bytes = 64ll << 20;
    const char *json = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--min-time") && i + 1 < argc) min_time = atof(argv[++i]);
        else if (!strcmp(argv[i], "--max-bytes") && i + 1 < argc) max_bytes = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else {
            fprintf(stderr, "usage: mpirun -np N %s [--min-time S] [--max-bytes B] [--json FILE]\n", argv[0]);
            ts_parallel_finalize();
            return 2;
        }
    }
    int64_t sizes[16];
    int n = 0;
    for (int64_t b = 4096; b <= max_bytes && n < 16; b *= 4) sizes[n++] = b;
    ts_comm_bench_row rows[16];
    ts_comm *w = ts_comm_world();
    int rc = 0;
    if (ts_comm_bench_allreduce(w, sizes, n, min_time, rows) != TS_OK) {
        fprintf(stderr, "allreduce_bw [rank %d]: %s\n", ts_comm_rank(w), ts_last_error());
        rc = 1;
    } else if (ts_comm_rank(w) == 0) {
        int p = ts_comm_size(w);
        printf("allreduce bus bandwidth, %d processes, GB/s (algbw x 2(n-1)/n; memcpy: one process)\n", p);
        printf("%10s %10s", "bytes", "memcpy");
        for (int s = 0; s < TS_NUM_STRATEGIES; s++) printf(" %10s", ts_strategy_name((ts_reduce_strategy)s));
        printf("   best/memcpy\n");
        for (int i = 0; i < n; i++) {
            double best = 0;
            printf("%10lld %10.2f", (long long)rows[i].bytes, rows[i].memcpy_gbs);
            for (int s = 0; s < TS_NUM_STRATEGIES; s++) {
                printf(" %10.2f", rows[i].busbw_gbs[s]);
                if (rows[i].busbw_gbs[s] > best) best = rows[i].busbw_gbs[s];
            }
            printf("   %.2f\n", rows[i].memcpy_gbs > 0 ? best / rows[i].memcpy_gbs : 0);
        }
        if (json) {
            FILE *f = fopen(json, "w");
            if (!f) {
                fprintf(stderr, "allreduce_bw: cannot write %s\n", json);
                rc = 1;
            } else {
                fprintf(f, "{\"processes\": %d, \"rows\": [", p);
                for (int i = 0; i < n; i++) {
                    fprintf(f, "%s\n  {\"bytes\": %lld, \"memcpy_gbs\": %.4f", i ? "," : "", (long long)rows[i].bytes,
                            rows[i].memcpy_gbs);
                    for (int s = 0; s < TS_NUM_STRATEGIES; s++)
                        fprintf(f, ", \"%s_busbw_gbs\": %.4f, \"%s_seconds\": %.9f", ts_strategy_name((ts_reduce_strategy)s),
                                rows[i].busbw_gbs[s], ts_strategy_name((ts_reduce_strategy)s), rows[i].seconds[s]);
                    fprintf(f, "}");
                }
                fprintf(f, "\n]}\n");
                fclose(f);
            }
        }
    }
    ts_parallel_finalize();
    return rc;
}
