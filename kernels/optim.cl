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

__kernel void optim_adam(__global float *param, ulong po, __global float *m, ulong mo,
                         __global float *v, ulong vo, __global const float *grad, ulong go, long n,
                         float lr, float beta1, float beta2, float eps, float l2, float decay,
                         float grad_scale, float bc1, float bc2)
{
    size_t i = get_global_id(0);
    if (i < (size_t)n) {
        float p = param[po + i];
        float g = grad[go + i] * grad_scale + l2 * p;
        float mi = beta1 * m[mo + i] + (1.0f - beta1) * g;
        float vi = beta2 * v[vo + i] + (1.0f - beta2) * g * g;
        m[mo + i] = mi;
        v[vo + i] = vi;
        param[po + i] = p * (1.0f - lr * decay) - (lr / bc1) * OPT_DIV(mi, OPT_SQRT(vi) / sqrt(bc2) + eps);
    }
}
