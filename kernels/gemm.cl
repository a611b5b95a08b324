/* tessera's own GEMM: the fallback where CLBlast is absent or fails, the
 * route for tiny shapes, and the one for bf16/fp16 products on GPUs.
 * Row-major, C = alpha*op(A)*op(B) + beta*C + bias, batched over the third
 * NDRange dimension.
 *
 * A TILE_WG x TILE_WG work-group computes a TS x TS tile of C, each item a
 * WPT x WPT block held in registers; A and B pass through local memory in
 * TK-deep slices. Edges are padded with zeros on load and masked on store,
 * so any M, N, K works. */
#define WPT 4
#define TS (TILE_WG * WPT)
#define TK 16

/* Operand storage: fp32, or 16 bits (a bf16 tensor, or what to_lowp below
 * writes) read back into fp32, so that products are summed in fp32 either
 * way. p points at the buffer; i counts elements of its storage. */
#define STORE_F32 0
#define STORE_BF16 1
#define STORE_F16 2

inline float load_operand(__global const float *p, long i, int store)
{
    if (store == STORE_BF16) return as_float((uint)((__global const ushort *)p)[i] << 16);
    if (store == STORE_F16) return vload_half((size_t)i, (__global const half *)p);
    return p[i];
}

/* v rounded to bf16 or fp16 (to nearest, ties to even; fp16 past 65504
 * becomes inf), as its 16 bits. */
inline ushort round_to_16(float v, int store)
{
    if (store == STORE_F16) { /* half only as a pointer: no cl_khr_fp16 needed */
        ushort h;
        vstore_half_rte(v, 0, (__private half *)&h);
        return h;
    }
    uint u = as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (ushort)((u >> 16) | 0x40u); /* NaN stays NaN */
    return (ushort)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* p[i] = v in p's storage (a 16-bit result rounded once, from fp32) */
inline void store_result(__global float *p, long i, float v, int store)
{
    if (store == STORE_F32)
        p[i] = v;
    else
        ((__global ushort *)p)[i] = round_to_16(v, store);
}

/* y[i] = x[i] (stored as xstore says) rounded to bf16 or fp16, stored in
 * 16 bits: an fp32 operand's 16-bit copy, or a bf16 one's in fp16. */
__kernel void to_lowp(__global const float *x, ulong xo, int xstore, long n, __global ushort *y, int store)
{
    UNIFORM_FOR(i, n, get_global_id(0), get_global_size(0)) {
        y[i] = round_to_16(load_operand(x, (long)xo + i, xstore), store);
    }
}

/* y[i] = x[i] (stored as xstore says) rounded to bf16 or fp16 (store; 0:
 * not rounded) and widened back to fp32: operands for an fp32 GEMM library
 * whose sums are then those of the 16-bit product (a product of two 16-bit
 * values is exact in fp32), and a bf16 result's fp32 working copy. */
__kernel void to_lowp_f32(__global const float *x, ulong xo, int xstore, long n, __global float *y, int store)
{
    UNIFORM_FOR(i, n, get_global_id(0), get_global_size(0)) {
        float v = load_operand(x, (long)xo + i, xstore);
        if (store == STORE_F32) {
            y[i] = v;
        } else {
            ushort r = round_to_16(v, store);
            y[i] = store == STORE_F16 ? vload_half(0, (__private const half *)&r) : as_float((uint)r << 16);
        }
    }
}

/* y[i] = x[i] (fp32) in y's storage: a product's fp32 working copy into
 * its bf16 result. */
__kernel void from_f32(__global const float *x, long n, __global float *y, ulong yo, int ystore)
{
    UNIFORM_FOR(i, n, get_global_id(0), get_global_size(0)) { store_result(y, (long)yo + i, x[i], ystore); }
}

/* Tiny products (M*N*K under 32^3, as a model's smallest layers): an item
 * per element of C summing its K products in order, the same sums as
 * gemm_tiled's, without a 64x64 tile of mostly padding (which costs
 * oclgrind a hundred times the instructions). Arguments as gemm_tiled's. */
__kernel void gemm_small(__global const float *A, ulong ao, long lda, long sa,
                         __global const float *B, ulong bo, long ldb, long sb,
                         __global float *C, ulong co, long ldc, long sc,
                         long M, long N, long K, int ta, int tb, float alpha, float beta,
                         __global const float *bias, ulong biaso, int has_bias, int sta, int stb, int stc)
{
    long j = get_global_id(0), i = get_global_id(1), batch = get_global_id(2);
    if (i >= M || j >= N) return;
    long ab = (long)ao + batch * sa, bb = (long)bo + batch * sb, ci = (long)co + batch * sc + i * ldc + j;
    float acc = 0.0f;
    for (long k = 0; k < K; k++)
        acc += load_operand(A, ab + (ta ? k * lda + i : i * lda + k), sta) *
               load_operand(B, bb + (tb ? j * ldb + k : k * ldb + j), stb);
    float r = alpha * acc;
    if (beta != 0.0f) r += beta * load_operand(C, ci, stc);
    if (has_bias) r += bias[biaso + j];
    store_result(C, ci, r, stc);
}

/* A, B and C are stored as sta, stb and stc say (STORE_*); their offsets
 * and strides count elements of that storage. The bias is fp32. */
__kernel __attribute__((reqd_work_group_size(TILE_WG, TILE_WG, 1)))
void gemm_tiled(__global const float *A, ulong ao, long lda, long sa,
                __global const float *B, ulong bo, long ldb, long sb,
                __global float *C, ulong co, long ldc, long sc,
                long M, long N, long K, int ta, int tb, float alpha, float beta,
                __global const float *bias, ulong biaso, int has_bias, int sta, int stb, int stc)
{
    __local float As[TK][TS + 1];
    __local float Bs[TK][TS + 1];
    int tx = (int)get_local_id(0), ty = (int)get_local_id(1);
    int lid = ty * TILE_WG + tx;
    long j0 = (long)get_group_id(0) * TS, i0 = (long)get_group_id(1) * TS;
    long batch = get_global_id(2);
    long ab = (long)ao + batch * sa, bb = (long)bo + batch * sb, cb = (long)co + batch * sc;

    float acc[WPT][WPT];
    for (int a = 0; a < WPT; a++)
        for (int b = 0; b < WPT; b++) acc[a][b] = 0.0f;

    for (long k0 = 0; k0 < K; k0 += TK) {
        UNIFORM_FOR(l, TK * TS, lid, TILE_WG * TILE_WG) {
            /* Consecutive items walk the contiguous direction of memory.
             * TS and TK are powers of two: shifts and masks, not / and %. */
            uint u = (uint)l;
            int kk, ii;
            if (ta) { kk = u / TS; ii = u & (TS - 1); } else { ii = u / TK; kk = u & (TK - 1); }
            long gi = i0 + ii, gk = k0 + kk;
            As[kk][ii] = (gi < M && gk < K) ? load_operand(A, ab + (ta ? gk * lda + gi : gi * lda + gk), sta) : 0.0f;
            int jj, kb;
            if (tb) { jj = u / TK; kb = u & (TK - 1); } else { kb = u / TS; jj = u & (TS - 1); }
            long gj = j0 + jj, gkb = k0 + kb;
            Bs[kb][jj] = (gj < N && gkb < K) ? load_operand(B, bb + (tb ? gj * ldb + gkb : gkb * ldb + gj), stb) : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TK; kk++) {
            float a[WPT], b[WPT];
            for (int w = 0; w < WPT; w++) {
                a[w] = As[kk][ty + w * TILE_WG];
                b[w] = Bs[kk][tx + w * TILE_WG];
            }
            for (int wi = 0; wi < WPT; wi++)
                for (int wj = 0; wj < WPT; wj++) acc[wi][wj] += a[wi] * b[wj];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int wi = 0; wi < WPT; wi++) {
        long i = i0 + ty + wi * TILE_WG;
        if (i >= M) continue;
        for (int wj = 0; wj < WPT; wj++) {
            long j = j0 + tx + wj * TILE_WG;
            if (j >= N) continue;
            float r = alpha * acc[wi][wj];
            if (beta != 0.0f) r += beta * load_operand(C, cb + i * ldc + j, stc);
            if (has_bias) r += bias[biaso + j];
            store_result(C, cb + i * ldc + j, r, stc);
        }
    }
}
