/* Optimizer updates, PyTorch's order of operations (see tessera/optim.h).
 * kind: 0 SGD, 1 SGD with momentum, 2 Adam, 3 AdamW. */
__kernel void optim_update(__global float *param, ulong po, __global float *m, ulong mo,
                           __global float *v, ulong vo, __global const float *grad, ulong go,
                           long n, int kind, float lr, float beta1, float beta2, float eps,
                           float weight_decay, float grad_scale, float bc1, float bc2)
{
    long i = get_global_id(0);
    if (i >= n) return;
    float p = param[po + i];
    float g = grad[go + i] * grad_scale;
    if (kind == 0) {
        param[po + i] = p - lr * (g + weight_decay * p);
    } else if (kind == 1) {
        float mi = beta1 * m[mo + i] + (g + weight_decay * p);
        m[mo + i] = mi;
        param[po + i] = p - lr * mi;
    } else {
        if (kind == 2) g += weight_decay * p;
        float pd = kind == 3 ? p * (1.0f - lr * weight_decay) : p;
        float mi = beta1 * m[mo + i] + (1.0f - beta1) * g;
        float vi = beta2 * v[vo + i] + (1.0f - beta2) * g * g;
        m[mo + i] = mi;
        v[vo + i] = vi;
        param[po + i] = pd - (lr / bc1) * (mi / (sqrt(vi) / sqrt(bc2) + eps));
    }
}
