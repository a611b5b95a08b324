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

/* dwte: one work-item per channel walks every position in order, so the
 * sums are deterministic without atomics. */
__kernel void embedding_backward_wte(__global float *dwte, ulong wo, __global const float *dout,
                                     ulong doo, __global const int *tokens, ulong to, long N,
                                     long C, long V, long vocab_start)
{
    long c = get_global_id(0);
    if (c >= C) return;
    for (long n = 0; n < N; n++) {
        long row = (long)tokens[to + n] - vocab_start;
        if (row >= 0 && row < V) dwte[wo + row * C + c] += dout[doo + n * C + c];
    }
}

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
