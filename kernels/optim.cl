/* CPU devices' sqrt and division are IEEE instructions; PoCL's OpenCL sqrt
 * and / go through its own library routines and ran AdamW at 21 GB/s
 * against 30 GB/s with the native forms. GPUs keep the precise builtins. */
#if TS_CPU_DEVICE
#define OPT_SQRT(x) native_sqrt(x)
#define OPT_DIV(a, b) native_divide(a, b)
#else
#define OPT_SQRT(x) sqrt(x)
#define OPT_DIV(a, b) ((a) / (b))
#endif

/* Optimizer updates, PyTorch's order of operations (see tessera/optim.h).
 * One branch-free kernel per rule: a per-element switch on the kind stops
 * PoCL from vectorising (measured 2x slower). Adam and AdamW share a kernel:
 * l2 is Adam's coupled decay, decay AdamW's decoupled one (the other 0). */

__kernel void optim_sgd(__global float *param, ulong po, __global const float *grad, ulong go,
                        long n, float lr, float weight_decay, float grad_scale)
{
    size_t i = get_global_id(0);
    if (i < (size_t)n) {
        float p = param[po + i];
        param[po + i] = p - lr * (grad[go + i] * grad_scale + weight_decay * p);
    }
}

__kernel void optim_momentum(__global float *param, ulong po, __global float *m, ulong mo,
                             __global const float *grad, ulong go, long n, float lr, float beta1,
                             float weight_decay, float grad_scale)
{
    size_t i = get_global_id(0);
    if (i < (size_t)n) {
        float p = param[po + i];
        float mi = beta1 * m[mo + i] + (grad[go + i] * grad_scale + weight_decay * p);
        m[mo + i] = mi;
        param[po + i] = p - lr * mi;
    }
}

/* One Adam(W) step of P (parameter), M and V in place from gradient G, of
 * type T (float or float8). */
#define ADAM_STEP(T, P, G, M, V)                                                                     \
    do {                                                                                             \
        T p_ = (P);                                                                                  \
        T g_ = (G) * grad_scale + l2 * p_;                                                           \
        T m_ = beta1 * (M) + (1.0f - beta1) * g_;                                                    \
        T v_ = beta2 * (V) + (1.0f - beta2) * g_ * g_;                                               \
        (M) = m_;                                                                                    \
        (V) = v_;                                                                                    \
        (P) = p_ * (1.0f - lr * decay) - (lr / bc1) * OPT_DIV(m_, OPT_SQRT(v_) / sqrt(bc2) + eps);   \
    } while (0)

__kernel void optim_adam(__global float *param, ulong po, __global float *m, ulong mo,
                         __global float *v, ulong vo, __global const float *grad, ulong go, long n,
                         float lr, float beta1, float beta2, float eps, float l2, float decay,
                         float grad_scale, float bc1, float bc2)
{
    size_t i = get_global_id(0);
    if (i < (size_t)n) ADAM_STEP(float, param[po + i], grad[go + i], m[mo + i], v[vo + i]);
}

#if TS_CPU_DEVICE
/* CPU devices: 8 elements an item, as float8 (vector loads and stores: PoCL
 * ran the one-element kernel at 31 GB/s against the triad's 40); the same
 * operations, so the same bits. */
__kernel void optim_adam8(__global float *param, ulong po, __global float *m, ulong mo,
                          __global float *v, ulong vo, __global const float *grad, ulong go, long n,
                          float lr, float beta1, float beta2, float eps, float l2, float decay,
                          float grad_scale, float bc1, float bc2)
{
    size_t i = get_global_id(0) * 8;
    if (i + 8 <= (size_t)n) {
        float8 p8 = vload8(0, param + po + i), m8 = vload8(0, m + mo + i), v8 = vload8(0, v + vo + i);
        ADAM_STEP(float8, p8, vload8(0, grad + go + i), m8, v8);
        vstore8(p8, 0, param + po + i), vstore8(m8, 0, m + mo + i), vstore8(v8, 0, v + vo + i);
    } else
        for (int t = 0; t < 8; t++)
            if (i + t < (size_t)n) ADAM_STEP(float, param[po + i + t], grad[go + i + t], m[mo + i + t], v[vo + i + t]);
}
#endif
