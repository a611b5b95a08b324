/* Token + position embedding. Rows of wte outside [vocab_start,
 * vocab_start + V) read as zero (vocabulary-parallel shards). */

__kernel void embedding_forward(__global float *out, ulong oo, __global const int *tokens,
                                ulong to, __global const float *wte, ulong wo,
                                __global const float *wpe, ulong po, int has_wpe, long N, long T,
                                long C, long V, long vocab_start)
{
    long i = get_global_id(0);
    if (i >= N * C) return;
    long n = i / C, c = i - n * C;
    long row = (long)tokens[to + n] - vocab_start;
    float v = (row >= 0 && row < V) ? wte[wo + row * C + c] : 0.0f;
    if (has_wpe) v += wpe[po + (n % T) * C + c];
    out[oo + i] = v;
}

/* dwte: item (chunk, c) of chunks x C walks every position in order and
 * takes the tokens whose row r has r % chunks == chunk. Each (row, channel) is
 * summed by one item in position order, so the sums are deterministic
 * without atomics (and the same as one item per channel); the chunks
 * spread the read-modify-writes, which wait on each other within an item,
 * over more items (H200, N=8192 C=768: an item per channel, 8192 in a
 * chain, ran at 1% of the triad). Neighbouring items, neighbouring
 * channels of one chunk. */
__kernel void embedding_backward_wte(__global float *dwte, ulong wo, __global const float *dout,
                                     ulong doo, __global const int *tokens, ulong to, long N,
                                     long C, long V, long vocab_start, long chunks)
{
    long i = get_global_id(0);
    if (i >= chunks * C) return;
    long chunk = i / C, c = i - chunk * C;
    for (long n = 0; n < N; n++) {
        long row = (long)tokens[to + n] - vocab_start;
        if (row >= 0 && row < V && row % chunks == chunk) dwte[wo + row * C + c] += dout[doo + n * C + c];
    }
}

#if TS_CPU_DEVICE
/* CPU-type devices, C % 8 == 0: an item (a group of one) takes `per`
 * contiguous channels and walks every position in order, as the CPU
 * backend's threads do (an item per channel gave PoCL strided loads, 3
 * GB/s). The row is a plain loop, which LLVM vectorizes with full-width
 * unaligned loads; PoCL lowered vload8/vstore8 here to 8-byte pieces
 * (N=8192 C=768: 6 ms, against 2.6 ms this way). */
__kernel void embedding_backward_wte_run(__global float *restrict dwte, ulong wo,
                                         __global const float *restrict dout, ulong doo,
                                         __global const int *restrict tokens, ulong to, long N,
                                         long C, long V, long vocab_start, long per)
{
    long c0 = (long)get_global_id(0) * per;
    if (c0 >= C) return;
    long w = C - c0 < per ? C - c0 : per;
    for (long n = 0; n < N; n++) {
        long row = (long)tokens[to + n] - vocab_start;
        if (row < 0 || row >= V) continue;
        __global float *dst = dwte + wo + row * C + c0;
        __global const float *src = dout + doo + n * C + c0;
        for (long k = 0; k < w; k++) dst[k] += src[k];
    }
}

/* dwpe, C % 8 == 0: an item per position and 8 channels */
__kernel void embedding_backward_wpe8(__global float *dwpe, ulong po, __global const float *dout,
                                      ulong doo, long N, long T, long C)
{
    long i = get_global_id(0), C8 = C / 8;
    if (i >= T * C8) return;
    long t = i / C8, c = (i - t * C8) * 8;
    float8 acc = (float8)(0.0f);
    UNIFORM_FOR(n, N, t, T) acc += vload8(0, dout + doo + n * C + c);
    vstore8(vload8(0, dwpe + po + t * C + c) + acc, 0, dwpe + po + t * C + c);
}
#endif

/* dwpe[t,c] += sum over the batch of dout[b,t,c]. */
__kernel void embedding_backward_wpe(__global float *dwpe, ulong po, __global const float *dout,
                                     ulong doo, long N, long T, long C)
{
    long i = get_global_id(0);
    if (i >= T * C) return;
    long t = i / C, c = i - t * C;
    float acc = 0.0f;
    UNIFORM_FOR(n, N, t, T) acc += dout[doo + n * C + c];
    dwpe[po + i] += acc;
}

/* Embedding bag (ts_embedding_bag_forward): ids and w [N,K], table [G,C].
 * out[n,c] = sum_j w[n,j] * table[ids[n,j], c]; an entry of weight 0 or
 * with an id outside [0,G) adds nothing. An item per output element. */
__kernel void embedding_bag_forward(__global float *out, ulong oo, __global const int *ids, ulong io,
                                    __global const float *w, ulong wo, __global const float *table, ulong to,
                                    long N, long K, long C, long G)
{
    long i = get_global_id(0);
    if (i >= N * C) return;
    long n = i / C, c = i - n * C;
    float acc = 0.0f;
    for (long e = n * K; e < (n + 1) * K; e++) {
        long id = (long)ids[io + e];
        float we = w[wo + e];
        if (we != 0.0f && id >= 0 && id < G) acc += we * table[to + id * C + c];
    }
    out[oo + i] = acc;
}

/* dtable[ids[n,j]] += w[n,j] * dout[n]: an item takes `per` contiguous
 * channels of the rows r with r % chunks == chunk and walks every entry in
 * order, so the sums are deterministic without atomics. GPUs: one channel
 * and chunks x C items, as embedding_backward_wte; CPU-type devices: one
 * chunk and a run of channels an item, as embedding_backward_wte_run.
 * dout [N,C]. */
__kernel void embedding_bag_backward(__global float *restrict dtable, ulong to, __global const float *restrict dout,
                                     ulong doo, __global const int *restrict ids, ulong io,
                                     __global const float *restrict w, ulong wo, long N, long K, long C, long G,
                                     long chunks, long per)
{
    long runs = (C + per - 1) / per, i = get_global_id(0);
    if (i >= chunks * runs) return;
    long chunk = i / runs, c0 = (i - chunk * runs) * per;
    long width = C - c0 < per ? C - c0 : per;
    for (long n = 0; n < N; n++) {
        __global const float *src = dout + doo + n * C + c0;
        for (long e = n * K; e < (n + 1) * K; e++) {
            long id = (long)ids[io + e];
            float we = w[wo + e];
            if (we == 0.0f || id < 0 || id >= G || (chunks > 1 && id % chunks != chunk)) continue;
            __global float *dst = dtable + to + id * C + c0;
            for (long k = 0; k < width; k++) dst[k] += we * src[k];
        }
    }
}
