/* One process start on an OpenCL device (TESSERA_DEVICE, default the first
 * OpenCL device): build every kernel program, run one op to prove they
 * work, and print the build statistics as one line:
 *   built=N loaded=N rejected=N seconds=S ok=1
 * bench/kernel_startup.sh times it cold and warm; test_kernel_cache uses
 * it to check the disk cache. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/tessera.h"

int main(void)
{
    ts_device *dev;
    const char *spec = getenv("TESSERA_DEVICE");
    if (ts_device_open(spec && *spec ? spec : "opencl", &dev) != TS_OK ||
        strcmp(ts_device_get_info(dev)->backend, "opencl") != 0) {
        printf("no-opencl\n");
        return 0;
    }
    if (ts_device_prepare(dev) != TS_OK) {
        fprintf(stderr, "prepare: %s\n", ts_last_error());
        return 1;
    }
    ts_tensor t, s;
    float v = 0;
    int ok = ts_tensor_alloc(&t, dev, TS_F32, TS_SHAPE(1000)) == TS_OK &&
             ts_tensor_alloc(&s, dev, TS_F32, TS_SHAPE(1)) == TS_OK && ts_fill(&t, 0.5f) == TS_OK &&
             ts_sum(&s, &t) == TS_OK && ts_tensor_read(&s, &v, sizeof v) == TS_OK && v == 500.0f;
    ts_build_stats st;
    ts_device_build_stats(dev, &st);
    printf("built=%d loaded=%d rejected=%d seconds=%.3f ok=%d\n", st.built_from_source,
           st.loaded_from_disk, st.cache_rejected, st.seconds, ok);
    ts_tensor_free(&t);
    ts_tensor_free(&s);
    ts_shutdown();
    return ok ? 0 : 1;
}
