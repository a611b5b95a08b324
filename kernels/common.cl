/* Shared by every tessera kernel file; prepended to each at build time.
 *
 * Buffers arrive as (pointer, element offset) pairs: views are offsets into
 * one allocation, never sub-buffers. Build options define:
 *   ROW_WG         work-items per row in row kernels (a power of two)
 *   TILE_WG        side of the 2-D work-group of the tiled GEMM
 *   TS_CPU_DEVICE  1 on CPU-type devices */
#ifndef ROW_WG
#define ROW_WG 64
#endif
#ifndef TILE_WG
#define TILE_WG 16
#endif

#define GELU_SCALE 0.7978845608028654f

/* Sum of v over the work-group's ROW_WG items, returned to all of them. */
inline float wg_sum(float v, __local float *scratch)
{
    int lid = (int)get_local_id(0);
    scratch[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = ROW_WG / 2; s > 0; s >>= 1) {
        if (lid < s) scratch[lid] += scratch[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float r = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

inline float wg_max(float v, __local float *scratch)
{
    int lid = (int)get_local_id(0);
    scratch[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = ROW_WG / 2; s > 0; s >>= 1) {
        if (lid < s) scratch[lid] = fmax(scratch[lid], scratch[lid + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float r = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}
