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

/* Work-group loops: item `first` of a group visits first, first + step, ...
 * below n. The trip count is the same for every item of the group (the
 * guard is inside), never `for (j = lid; j < n; j += step)`: PoCL's default
 * loopvec method (LLVM 15) turned loops whose trip count differs per item
 * into AVX-512 scatters with a runaway count that wrote past the row
 * (SIGSEGV on Zen 5). A uniform count is correct everywhere and costs
 * nothing. Write the body as a block: UNIFORM_FOR(j, n, lid, WG) { ... } */
#define UNIFORM_FOR(j, n, first, step)                                                   \
    for (long j##_base = 0, j = (long)(first); j##_base < (long)(n);                      \
         j##_base += (long)(step), j = j##_base + (long)(first))                          \
        if (j < (long)(n))
/* The common case: the ROW_WG items of a row kernel striding over a row. */
#define ROW_FOR(j, n) UNIFORM_FOR(j, n, get_local_id(0), ROW_WG)

/* CPU-type devices: item i of a row kernel takes one contiguous run of the
 * row, a multiple of 8 long, and walks it 8 at a time (float8), which PoCL
 * compiles to vector loads; with ROW_FOR's strided items it emits scalar
 * ones (the cross-entropy ran at 2.6 GB/s). The trip count is the same for
 * every item (see UNIFORM_FOR); the body handles the 8 elements at k, all
 * of them when k + 8 <= n, else the row's tail with a guarded loop of 8. */
#define RUN8_FOR(k, n)                                                                    \
    for (long k##_c = 0, k##_per = (((long)(n) + ROW_WG - 1) / ROW_WG + 7) / 8 * 8,      \
              k = (long)get_local_id(0) * k##_per;                                        \
         k##_c < k##_per; k##_c += 8, k += 8)                                             \
        if (k < (long)(n))

inline float hsum8(float8 v) { return ((v.s0 + v.s1) + (v.s2 + v.s3)) + ((v.s4 + v.s5) + (v.s6 + v.s7)); }
inline float hmax8(float8 v)
{
    return fmax(fmax(fmax(v.s0, v.s1), fmax(v.s2, v.s3)), fmax(fmax(v.s4, v.s5), fmax(v.s6, v.s7)));
}

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

/* Activations are fp32, or bf16 storage (the flag bf16 1): the upper
 * half of an fp32, read exactly and written rounded to nearest even (a NaN
 * stays NaN), or f16 storage (the flag 2: OpenCL's half loads and stores,
 * core functions without cl_khr_fp16). Offsets and indices count elements
 * of the tensor's own type. */
inline float load_act(__global const float *p, size_t i, int bf16)
{
    if (bf16 == 2) return vload_half(i, (__global const half *)p);
    return bf16 ? as_float((uint)((__global const ushort *)p)[i] << 16) : p[i];
}

inline void store_act(__global float *p, size_t i, float v, int bf16)
{
    if (bf16 == 2) {
        vstore_half_rte(v, i, (__global half *)p);
    } else if (bf16) {
        uint u = as_uint(v);
        ((__global ushort *)p)[i] = (u & 0x7fffffffu) > 0x7f800000u ? (ushort)((u >> 16) | 0x40u)
                                                                     : (ushort)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    } else {
        p[i] = v;
    }
}

#if TS_CPU_DEVICE
inline float8 load_act8(__global const float *p, size_t i, int bf16)
{
    if (bf16 == 2) { /* f16: half loads one by one (no half pointer arithmetic without cl_khr_fp16) */
        float v[8];
        for (int k = 0; k < 8; k++) v[k] = vload_half(i + (size_t)k, (__global const half *)p);
        return vload8(0, v);
    }
    if (bf16) return as_float8(convert_uint8(vload8(0, (__global const ushort *)p + i)) << 16);
    return vload8(0, p + i);
}

inline void store_act8(__global float *p, size_t i, float8 v, int bf16)
{
    if (bf16 == 2) {
        float w[8];
        vstore8(v, 0, w);
        for (int k = 0; k < 8; k++) vstore_half_rte(w[k], i + (size_t)k, (__global half *)p);
    } else if (bf16) {
        uint8 u = as_uint8(v);
        uint8 r = select((u + 0x7fffu + ((u >> 16) & 1u)) >> 16, (u >> 16) | 0x40u,
                         (u & 0x7fffffffu) > 0x7f800000u);
        vstore8(convert_ushort8(r), 0, (__global ushort *)p + i);
    } else {
        vstore8(v, 0, p + i);
    }
}
#endif
