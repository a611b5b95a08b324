#include "reference.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const double GELU_S = 0.7978845608028654;

void ref_gelu_forward(double *out, const double *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = 0.5 * x[i] * (1.0 + tanh(GELU_S * (x[i] + 0.044715 * x[i] * x[i] * x[i])));
}

void ref_gelu_backward(double *dx, const double *x, const double *dout, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        double u = GELU_S * (x[i] + 0.044715 * x[i] * x[i] * x[i]);
        double t = tanh(u);
        double du = GELU_S * (1.0 + 3.0 * 0.044715 * x[i] * x[i]);
        dx[i] = (0.5 * (1.0 + t) + 0.5 * x[i] * (1.0 - t * t) * du) * dout[i];
    }
}

void ref_embedding_forward(double *out, const int32_t *tok, const double *wte, const double *wpe,
                           int64_t N, int64_t T, int64_t C, int64_t V, int64_t vocab_start)
{
    for (int64_t n = 0; n < N; n++) {
        int64_t row = (int64_t)tok[n] - vocab_start;
        for (int64_t c = 0; c < C; c++) {
            double v = (row >= 0 && row < V) ? wte[row * C + c] : 0.0;
            if (wpe) v += wpe[(n % T) * C + c];
            out[n * C + c] = v;
        }
    }
}

void ref_embedding_backward(double *dwte, double *dwpe, const double *dout, const int32_t *tok,
                            int64_t N, int64_t T, int64_t C, int64_t V, int64_t vocab_start)
{
    for (int64_t n = 0; n < N; n++) {
        int64_t row = (int64_t)tok[n] - vocab_start;
        for (int64_t c = 0; c < C; c++) {
            if (dwte && row >= 0 && row < V) dwte[row * C + c] += dout[n * C + c];
            if (dwpe) dwpe[(n % T) * C + c] += dout[n * C + c];
        }
    }
}

/* entries of weight 0 or with an id outside [0, G) add nothing */
void ref_embedding_bag_forward(double *out, const int32_t *ids, const double *w, const double *table, int64_t N,
                               int64_t K, int64_t C, int64_t G)
{
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            double v = 0.0;
            for (int64_t e = n * K; e < (n + 1) * K; e++)
                if (w[e] != 0.0 && ids[e] >= 0 && ids[e] < G) v += w[e] * table[(int64_t)ids[e] * C + c];
            out[n * C + c] = v;
        }
}

void ref_embedding_bag_backward(double *dtable, const double *dout, const int32_t *ids, const double *w, int64_t N,
                                int64_t K, int64_t C, int64_t G)
{
    for (int64_t e = 0; e < N * K; e++)
        if (w[e] != 0.0 && ids[e] >= 0 && ids[e] < G)
            for (int64_t c = 0; c < C; c++) dtable[(int64_t)ids[e] * C + c] += w[e] * dout[(e / K) * C + c];
}

static void moments(const double *x, int64_t C, double eps, double *mean, double *rstd)
{
    double m = 0.0, v = 0.0;
    for (int64_t c = 0; c < C; c++) m += x[c];
    m /= (double)C;
    for (int64_t c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
    v /= (double)C;
    *mean = m;
    *rstd = 1.0 / sqrt(v + eps);
}

void ref_layernorm_forward(double *out, double *mean, double *rstd, const double *x,
                           const double *w, const double *b, int64_t N, int64_t C, double eps)
{
    for (int64_t n = 0; n < N; n++) {
        double m, r;
        moments(x + n * C, C, eps, &m, &r);
        for (int64_t c = 0; c < C; c++) out[n * C + c] = (x[n * C + c] - m) * r * w[c] + b[c];
        if (mean) mean[n] = m;
        if (rstd) rstd[n] = r;
    }
}

void ref_layernorm_backward(double *dx, double *dw, double *db, const double *dout,
                            const double *x, const double *w, int64_t N, int64_t C, double eps)
{
    for (int64_t n = 0; n < N; n++) {
        double m, r;
        moments(x + n * C, C, eps, &m, &r);
        const double *xr = x + n * C, *d = dout + n * C;
        double a = 0.0, b = 0.0;
        for (int64_t c = 0; c < C; c++) {
            double norm = (xr[c] - m) * r;
            a += w[c] * d[c];
            b += w[c] * d[c] * norm;
            dw[c] += norm * d[c];
            db[c] += d[c];
        }
        a /= (double)C;
        b /= (double)C;
        for (int64_t c = 0; c < C; c++) {
            double norm = (xr[c] - m) * r;
            dx[n * C + c] += (w[c] * d[c] - a - norm * b) * r;
        }
    }
}

void ref_gemm(double *c, const double *a, const double *b, const double *bias, int64_t batch,
              int64_t M, int64_t N, int64_t K, bool ta, bool tb, double alpha, double beta,
              int64_t stride_b)
{
    for (int64_t bt = 0; bt < batch; bt++) {
        const double *A = a + bt * M * K, *B = b + bt * stride_b;
        double *Cm = c + bt * M * N;
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double acc = 0.0;
                for (int64_t k = 0; k < K; k++) {
                    double av = ta ? A[k * M + i] : A[i * K + k];
                    double bv = tb ? B[j * K + k] : B[k * N + j];
                    acc += av * bv;
                }
                double prev = beta == 0.0 ? 0.0 : beta * Cm[i * N + j];
                Cm[i * N + j] = alpha * acc + prev + (bias ? bias[j] : 0.0);
            }
    }
}

void ref_pool_max_forward(double *out, int32_t *argmax, const double *x, const int32_t *lengths, int64_t B,
                          int64_t T, int64_t C)
{
    for (int64_t b = 0; b < B; b++) {
        int64_t L = lengths[b] < 0 ? 0 : lengths[b] > T ? T : lengths[b];
        for (int64_t c = 0; c < C; c++) {
            double best = 0.0;
            int32_t at = -1;
            for (int64_t t = 0; t < L; t++) {
                double v = x[(b * T + t) * C + c];
                if (at < 0 || v > best || (isnan(v) && !isnan(best))) best = v, at = (int32_t)t;
            }
            out[b * C + c] = best;
            argmax[b * C + c] = at;
        }
    }
}

void ref_pool_max_backward(double *dx, const double *dout, const int32_t *argmax, int64_t B, int64_t T, int64_t C)
{
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t c = 0; c < C; c++)
                dx[(b * T + t) * C + c] = argmax[b * C + c] == t ? dout[b * C + c] : 0.0;
}

void ref_sum_rows(double *out, const double *x, int64_t N, int64_t C, bool accumulate)
{
    for (int64_t c = 0; c < C; c++) {
        double s = 0.0;
        for (int64_t n = 0; n < N; n++) s += x[n * C + c];
        out[c] = accumulate ? out[c] + s : s;
    }
}

static void heads(double *out, const double *inp, int64_t B, int64_t T, int64_t K, int64_t NH,
                  int64_t HS, int split)
{
    for (int64_t k = 0; k < K; k++)
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < NH; h++)
                for (int64_t t = 0; t < T; t++)
                    for (int64_t d = 0; d < HS; d++) {
                        int64_t packed = (((b * T + t) * K + k) * NH + h) * HS + d;
                        int64_t hd = (((k * B + b) * NH + h) * T + t) * HS + d;
                        if (split) out[hd] = inp[packed];
                        else out[packed] = inp[hd];
                    }
}

void ref_split_heads(double *out, const double *inp, int64_t B, int64_t T, int64_t K, int64_t NH,
                     int64_t HS)
{
    heads(out, inp, B, T, K, NH, HS, 1);
}

void ref_merge_heads(double *out, const double *inp, int64_t B, int64_t T, int64_t K, int64_t NH,
                     int64_t HS)
{
    heads(out, inp, B, T, K, NH, HS, 0);
}

void ref_softmax_causal_forward(double *att, const double *pre, int64_t BH, int64_t T, double scale)
{
    for (int64_t r = 0; r < BH * T; r++) {
        int64_t t = r % T;
        double m = -INFINITY, s = 0.0;
        for (int64_t j = 0; j <= t; j++) m = fmax(m, scale * pre[r * T + j]);
        for (int64_t j = 0; j <= t; j++) s += exp(scale * pre[r * T + j] - m);
        for (int64_t j = 0; j < T; j++)
            att[r * T + j] = j <= t ? exp(scale * pre[r * T + j] - m) / s : 0.0;
    }
}

void ref_softmax_causal_backward(double *dpre, const double *att, const double *datt, int64_t BH,
                                 int64_t T, double scale)
{
    for (int64_t r = 0; r < BH * T; r++) {
        int64_t t = r % T;
        double dot = 0.0;
        for (int64_t j = 0; j <= t; j++) dot += att[r * T + j] * datt[r * T + j];
        for (int64_t j = 0; j < T; j++)
            dpre[r * T + j] = j <= t ? scale * att[r * T + j] * (datt[r * T + j] - dot) : 0.0;
    }
}

void ref_attention_forward(double *out, const double *qkv, int64_t B, int64_t T, int64_t C,
                           int64_t NH)
{
    ref_attention_masked_forward(out, qkv, B, T, C, NH, NULL, true);
}

void ref_attention_masked_forward(double *out, const double *qkv, int64_t B, int64_t T, int64_t C,
                                  int64_t NH, const int32_t *lengths, bool causal)
{
    int64_t HS = C / NH;
    double scale = 1.0 / sqrt((double)HS);
    double *w = malloc((size_t)T * sizeof *w);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < NH; h++) {
                const double *q = qkv + (b * T + t) * 3 * C + h * HS;
                int64_t end = lengths ? (lengths[b] < 0 ? 0 : lengths[b] > T ? T : lengths[b]) : T;
                if (causal && end > t + 1) end = t + 1;
                double m = -INFINITY, s = 0.0;
                for (int64_t u = 0; u < end; u++) {
                    const double *k = qkv + (b * T + u) * 3 * C + C + h * HS;
                    double dot = 0.0;
                    for (int64_t d = 0; d < HS; d++) dot += q[d] * k[d];
                    w[u] = dot * scale;
                    m = fmax(m, w[u]);
                }
                for (int64_t u = 0; u < end; u++) s += (w[u] = exp(w[u] - m));
                double *o = out + (b * T + t) * C + h * HS;
                for (int64_t d = 0; d < HS; d++) o[d] = 0.0;
                for (int64_t u = 0; u < end; u++) {
                    const double *v = qkv + (b * T + u) * 3 * C + 2 * C + h * HS;
                    for (int64_t d = 0; d < HS; d++) o[d] += w[u] / s * v[d];
                }
            }
    free(w);
}

void ref_attention_masked_backward(double *dqkv, const double *dout, const double *qkv, const double *out, int64_t B,
                                   int64_t T, int64_t C, int64_t NH, const int32_t *lengths, bool causal)
{
    int64_t HS = C / NH;
    double scale = 1.0 / sqrt((double)HS);
    double *p = malloc((size_t)T * sizeof *p), *dp = malloc((size_t)T * sizeof *dp);
    for (int64_t i = 0; i < B * T * 3 * C; i++) dqkv[i] = 0.0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < NH; h++) {
                const double *q = qkv + (b * T + t) * 3 * C + h * HS, *dy = dout + (b * T + t) * C + h * HS;
                double *dq = dqkv + (b * T + t) * 3 * C + h * HS;
                int64_t end = lengths ? (lengths[b] < 0 ? 0 : lengths[b] > T ? T : lengths[b]) : T;
                if (causal && end > t + 1) end = t + 1;
                double m = -INFINITY, s = 0.0, D = 0.0;
                for (int64_t u = 0; u < end; u++) {
                    const double *k = qkv + (b * T + u) * 3 * C + C + h * HS;
                    const double *v = k + C;
                    double dot = 0.0, dv = 0.0;
                    for (int64_t d = 0; d < HS; d++) dot += q[d] * k[d], dv += dy[d] * v[d];
                    p[u] = dot * scale, dp[u] = dv;
                    m = fmax(m, p[u]);
                }
                for (int64_t u = 0; u < end; u++) s += (p[u] = exp(p[u] - m));
                for (int64_t u = 0; u < end; u++) p[u] /= s, D += p[u] * dp[u];
                if (out) {
                    const double *y = out + (b * T + t) * C + h * HS;
                    D = 0.0;
                    for (int64_t d = 0; d < HS; d++) D += dy[d] * y[d];
                }
                for (int64_t u = 0; u < end; u++) {
                    double *dk = dqkv + (b * T + u) * 3 * C + C + h * HS, *dv = dk + C;
                    const double *k = qkv + (b * T + u) * 3 * C + C + h * HS;
                    double ds = p[u] * (dp[u] - D) * scale;
                    for (int64_t d = 0; d < HS; d++) {
                        dq[d] += ds * k[d];
                        dk[d] += ds * q[d];
                        dv[d] += p[u] * dy[d];
                    }
                }
            }
    free(p), free(dp);
}

void ref_softmax_masked_forward(double *att, const double *pre, const int32_t *lengths, int64_t BH, int64_t NH,
                                int64_t T, double scale, bool causal)
{
    for (int64_t r = 0; r < BH * T; r++) {
        int64_t t = r % T, len = lengths[r / T / NH];
        int64_t end = len < 0 ? 0 : len > T ? T : len;
        if (causal && end > t + 1) end = t + 1;
        double m = -INFINITY, s = 0.0;
        for (int64_t j = 0; j < end; j++) m = fmax(m, scale * pre[r * T + j]);
        for (int64_t j = 0; j < end; j++) s += exp(scale * pre[r * T + j] - m);
        for (int64_t j = 0; j < T; j++) att[r * T + j] = j < end ? exp(scale * pre[r * T + j] - m) / s : 0.0;
    }
}

void ref_softmax_masked_backward(double *dpre, const double *att, const double *datt, int64_t BH, int64_t T,
                                 double scale)
{
    for (int64_t r = 0; r < BH * T; r++) {
        double dot = 0.0;
        for (int64_t j = 0; j < T; j++) dot += att[r * T + j] * datt[r * T + j];
        for (int64_t j = 0; j < T; j++) dpre[r * T + j] = scale * att[r * T + j] * (datt[r * T + j] - dot);
    }
}

void ref_cross_entropy(double *losses, double *probs, double *dlogits, const double *logits,
                       const int32_t *targets, int64_t N, int64_t V, double scale)
{
    for (int64_t n = 0; n < N; n++) {
        const double *x = logits + n * V;
        double m = -INFINITY, s = 0.0;
        for (int64_t j = 0; j < V; j++) m = fmax(m, x[j]);
        for (int64_t j = 0; j < V; j++) s += exp(x[j] - m);
        int64_t t = targets ? targets[n] : -1;
        int valid = t >= 0 && t < V;
        if (losses) losses[n] = valid ? m + log(s) - x[t] : 0.0;
        for (int64_t j = 0; j < V; j++) {
            double p = exp(x[j] - m) / s;
            if (probs) probs[n * V + j] = p;
            if (dlogits) dlogits[n * V + j] = valid ? scale * (p - (j == t ? 1.0 : 0.0)) : 0.0;
        }
    }
}

double ref_sum(const double *x, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += x[i];
    return s;
}

double ref_sqnorm(const double *x, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += x[i] * x[i];
    return s;
}

void ref_optim_update(double *p, double *m, double *v, const double *grad, int64_t n,
                      const ts_optim_params *o)
{
    double lr = o->lr, b1 = o->beta1, b2 = o->beta2, wd = o->weight_decay;
    double bc1 = 1.0 - pow(b1, (double)o->step), bc2 = 1.0 - pow(b2, (double)o->step);
    for (int64_t i = 0; i < n; i++) {
        double g = grad[i] * (double)o->grad_scale;
        switch (o->kind) {
        case TS_OPTIM_SGD: p[i] -= lr * (g + wd * p[i]); break;
        case TS_OPTIM_SGD_MOMENTUM:
            m[i] = b1 * m[i] + g + wd * p[i];
            p[i] -= lr * m[i];
            break;
        case TS_OPTIM_ADAM:
        case TS_OPTIM_ADAMW:
            if (o->kind == TS_OPTIM_ADAM) g += wd * p[i];
            else p[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            p[i] -= lr * (m[i] / bc1) / (sqrt(v[i] / bc2) + (double)o->eps);
            break;
        }
    }
}
