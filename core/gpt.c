#include "tessera/gpt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "tessera/device.h"
#include "tessera/safetensors.h"

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        ts_status st_ = (expr);                                                                    \
        if (st_ != TS_OK) return st_;                                                              \
    } while (0)

/* ---- configuration ---- */

ts_status ts_gpt_config_check(const ts_gpt_config *c)
{
    if (c->vocab_size < 1 || c->vocab_size > (1 << 30))
        return ts_error(TS_ERR_INVALID_ARG, "vocab_size %lld is out of range", (long long)c->vocab_size);
    if (c->max_seq_len < 1 || c->max_seq_len > (1 << 20))
        return ts_error(TS_ERR_INVALID_ARG, "max_seq_len %lld is out of range", (long long)c->max_seq_len);
    if (c->n_layer < 1 || c->n_layer > 1024)
        return ts_error(TS_ERR_INVALID_ARG, "n_layer %lld is out of range", (long long)c->n_layer);
    if (c->n_head < 1 || c->n_embd < 1 || c->n_embd % c->n_head != 0)
        return ts_error(TS_ERR_INVALID_ARG, "n_embd %lld must be a positive multiple of n_head %lld",
                        (long long)c->n_embd, (long long)c->n_head);
    return TS_OK;
}

ts_status ts_gpt_config_preset(const char *name, ts_gpt_config *c)
{
    static const struct {
        const char *name;
        int64_t L, NH, C;
    } presets[] = {
        {"tiny", 2, 4, 64}, {"d6", 6, 6, 384}, {"d12", 12, 12, 768},
        {"d24", 24, 16, 1024}, {"d36", 36, 20, 1280}, {"d48", 48, 25, 1600},
    };
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++) {
        if (strcmp(name, presets[i].name) != 0) continue;
        c->n_layer = presets[i].L;
        c->n_head = presets[i].NH;
        c->n_embd = presets[i].C;
        return TS_OK;
    }
    return ts_error(TS_ERR_INVALID_ARG, "unknown model preset '%s' (tiny, d6, d12, d24, d36, d48)",
                    name);
}

/* Shapes of one layer's slice (or of the whole tensor). */
static void param_shapes(const ts_gpt_config *c, ts_gpt_param_info *info)
{
    int64_t V = c->vocab_size, T = c->max_seq_len, C = c->n_embd;
    static const struct {
        const char *name;
        int per_layer, decay, ndim;
        int r0, r1; /* rows and columns in units: 0 V, 1 T, 2 C, 3 3C, 4 4C, 5 none */
    } t[TS_GPT_NPARAMS] = {
        [TS_GPT_WTE] = {"wte.weight", 0, 1, 2, 0, 2},
        [TS_GPT_WPE] = {"wpe.weight", 0, 1, 2, 1, 2},
        [TS_GPT_QKVW] = {"h.%lld.attn.c_attn.weight", 1, 1, 2, 3, 2},
        [TS_GPT_ATTPROJW] = {"h.%lld.attn.c_proj.weight", 1, 1, 2, 2, 2},
        [TS_GPT_FCW] = {"h.%lld.mlp.c_fc.weight", 1, 1, 2, 4, 2},
        [TS_GPT_FCPROJW] = {"h.%lld.mlp.c_proj.weight", 1, 1, 2, 2, 4},
        [TS_GPT_LN1W] = {"h.%lld.ln_1.weight", 1, 0, 1, 2, 5},
        [TS_GPT_LN1B] = {"h.%lld.ln_1.bias", 1, 0, 1, 2, 5},
        [TS_GPT_QKVB] = {"h.%lld.attn.c_attn.bias", 1, 0, 1, 3, 5},
        [TS_GPT_ATTPROJB] = {"h.%lld.attn.c_proj.bias", 1, 0, 1, 2, 5},
        [TS_GPT_LN2W] = {"h.%lld.ln_2.weight", 1, 0, 1, 2, 5},
        [TS_GPT_LN2B] = {"h.%lld.ln_2.bias", 1, 0, 1, 2, 5},
        [TS_GPT_FCB] = {"h.%lld.mlp.c_fc.bias", 1, 0, 1, 4, 5},
        [TS_GPT_FCPROJB] = {"h.%lld.mlp.c_proj.bias", 1, 0, 1, 2, 5},
        [TS_GPT_LNFW] = {"ln_f.weight", 0, 0, 1, 2, 5},
        [TS_GPT_LNFB] = {"ln_f.bias", 0, 0, 1, 2, 5},
    };
    const int64_t unit[6] = {V, T, C, 3 * C, 4 * C, 1};
    int64_t off = 0;
    for (int i = 0; i < TS_GPT_NPARAMS; i++) {
        ts_gpt_param_info *p = &info[i];
        p->name = t[i].name;
        p->per_layer = t[i].per_layer;
        p->decay = t[i].decay;
        p->ndim = t[i].ndim;
        p->shape[0] = unit[t[i].r0];
        p->shape[1] = t[i].ndim == 2 ? unit[t[i].r1] : 1;
        p->numel = p->shape[0] * p->shape[1] * (p->per_layer ? c->n_layer : 1);
        p->offset = off;
        off += p->numel;
    }
}

int64_t ts_gpt_num_params(const ts_gpt_config *cfg)
{
    ts_gpt_param_info info[TS_GPT_NPARAMS];
    param_shapes(cfg, info);
    return info[TS_GPT_NPARAMS - 1].offset + info[TS_GPT_NPARAMS - 1].numel;
}

double ts_gpt_flops_per_token(const ts_gpt_config *c, int64_t T)
{
    /* 6 FLOPs per parameter per token (2 forward, 4 backward) for the
     * matrices, the output head included (it reuses wte), plus attention's
     * scores and weighted sum: 12 * L * C * T. */
    double n = (double)ts_gpt_num_params(c) - (double)c->max_seq_len * (double)c->n_embd;
    return 6.0 * n + 12.0 * (double)c->n_layer * (double)c->n_embd * (double)T;
}

const char *ts_gpt_tensor_name(const ts_gpt *m, int param, int64_t layer, char *buf, size_t n)
{
    if (m->info[param].per_layer) snprintf(buf, n, m->info[param].name, (long long)layer);
    else snprintf(buf, n, "%s", m->info[param].name);
    return buf;
}

/* ---- lifecycle ---- */

static ts_status make_views(ts_gpt *m, ts_tensor *blob, ts_tensor *views)
{
    for (int i = 0; i < TS_GPT_NPARAMS; i++) {
        const ts_gpt_param_info *p = &m->info[i];
        if (p->per_layer && p->ndim == 2)
            TRY(ts_tensor_view(&views[i], blob, p->offset, TS_SHAPE(m->cfg.n_layer, p->shape[0], p->shape[1])));
        else if (p->per_layer)
            TRY(ts_tensor_view(&views[i], blob, p->offset, TS_SHAPE(m->cfg.n_layer, p->shape[0])));
        else if (p->ndim == 2)
            TRY(ts_tensor_view(&views[i], blob, p->offset, TS_SHAPE(p->shape[0], p->shape[1])));
        else
            TRY(ts_tensor_view(&views[i], blob, p->offset, TS_SHAPE(p->shape[0])));
    }
    return TS_OK;
}

ts_status ts_gpt_create(ts_gpt *m, ts_device *dev, const ts_gpt_config *cfg)
{
    memset(m, 0, sizeof *m);
    TRY(ts_gpt_config_check(cfg));
    m->cfg = *cfg;
    m->device = dev;
    param_shapes(cfg, m->info);
    m->num_params = ts_gpt_num_params(cfg);
    m->num_decay = m->info[TS_GPT_LN1W].offset;
    ts_status st = ts_tensor_alloc(&m->params, dev, TS_F32, TS_SHAPE(m->num_params));
    if (!st) st = ts_tensor_zeros(&m->grads, dev, TS_F32, TS_SHAPE(m->num_params));
    if (!st) st = make_views(m, &m->params, m->p);
    if (!st) st = make_views(m, &m->grads, m->g);
    if (st) {
        ts_gpt_free(m);
        return ts_error_context(st, "creating a %lld-parameter model", (long long)m->num_params);
    }
    return TS_OK;
}

static void free_acts(ts_gpt_acts *a)
{
    ts_tensor_free(&a->block);
    ts_tensor_free(&a->tokens);
    ts_tensor_free(&a->targets);
    free(a->ws);
    memset(a, 0, sizeof *a);
}

void ts_gpt_free(ts_gpt *m)
{
    free_acts(&m->acts);
    ts_tensor_free(&m->params);
    ts_tensor_free(&m->grads);
    memset(m, 0, sizeof *m);
}

/* ---- initialisation ---- */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void fill_normal(float *x, int64_t n, double std, uint64_t seed)
{
    uint64_t s = seed;
    for (int64_t i = 0; i < n; i += 2) {
        double u1 = ((double)(splitmix(&s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
        double u2 = (double)(splitmix(&s) >> 11) * (1.0 / 9007199254740992.0);
        double r = sqrt(-2.0 * log(u1)) * std;
        x[i] = (float)(r * cos(6.283185307179586 * u2));
        if (i + 1 < n) x[i + 1] = (float)(r * sin(6.283185307179586 * u2));
    }
}

ts_status ts_gpt_init_weights(ts_gpt *m, uint64_t seed)
{
    int64_t maxn = 0;
    for (int i = 0; i < TS_GPT_NPARAMS; i++)
        if (m->info[i].numel > maxn) maxn = m->info[i].numel;
    float *host = malloc((size_t)maxn * sizeof *host);
    if (!host) return ts_error(TS_ERR_OOM, "no host memory to initialise weights");
    double resid_std = 0.02 / sqrt(2.0 * (double)m->cfg.n_layer);
    ts_status st = TS_OK;
    for (int i = 0; i < TS_GPT_NPARAMS && !st; i++) {
        const ts_gpt_param_info *p = &m->info[i];
        if (p->ndim == 2) {
            double std = (i == TS_GPT_ATTPROJW || i == TS_GPT_FCPROJW) ? resid_std : 0.02;
            fill_normal(host, p->numel, std, seed * 1000003ull + (uint64_t)i);
        } else {
            float v = (i == TS_GPT_LN1W || i == TS_GPT_LN2W || i == TS_GPT_LNFW) ? 1.0f : 0.0f;
            for (int64_t k = 0; k < p->numel; k++) host[k] = v;
        }
        st = ts_tensor_write(&m->p[i], host, (size_t)p->numel * sizeof *host);
    }
    free(host);
    if (!st) st = ts_gpt_zero_grad(m);
    return st;
}

ts_status ts_gpt_zero_grad(ts_gpt *m) { return ts_fill(&m->grads, 0.0f); }

/* ---- activations ---- */

static ts_status alloc_acts(ts_gpt *m, int64_t B, int64_t T)
{
    ts_gpt_acts *a = &m->acts;
    if (a->B == B && a->T == T) return TS_OK;
    free_acts(a);
    const ts_gpt_config *c = &m->cfg;
    int64_t L = c->n_layer, C = c->n_embd, NH = c->n_head, V = c->vocab_size, N = B * T;
    int64_t HS = C / NH, BH = B * NH;
    struct {
        ts_tensor *t;
        int ndim;
        int64_t shape[4];
    } plan[] = {
        {&a->encoded, 2, {N, C}},
        {&a->ln1, 3, {L, N, C}},
        {&a->ln1_mean, 2, {L, N}},
        {&a->ln1_rstd, 2, {L, N}},
        {&a->qkv, 3, {L, N, 3 * C}},
        {&a->qkvh, 4, {L, 3, BH * T, HS}},
        {&a->att, 4, {L, BH, T, T}},
        {&a->atty, 3, {L, N, C}},
        {&a->residual2, 3, {L, N, C}},
        {&a->ln2, 3, {L, N, C}},
        {&a->ln2_mean, 2, {L, N}},
        {&a->ln2_rstd, 2, {L, N}},
        {&a->fch, 3, {L, N, 4 * C}},
        {&a->fch_gelu, 3, {L, N, 4 * C}},
        {&a->residual3, 3, {L, N, C}},
        {&a->lnf, 2, {N, C}},
        {&a->lnf_mean, 1, {N}},
        {&a->lnf_rstd, 1, {N}},
        {&a->logits, 2, {N, V}},
        {&a->losses, 1, {N}},
        {&a->loss_sum, 1, {1}},
        {&a->y, 3, {BH, T, HS}},
        {&a->att_scratch, 3, {BH, T, T}},
        {&a->dqkvh, 4, {3, BH, T, HS}},
        {&a->proj, 2, {N, C}},
        {&a->dresidual, 2, {N, C}},
        {&a->dC, 2, {N, C}},
        {&a->d3C, 2, {N, 3 * C}},
        {&a->d4C, 2, {N, 4 * C}},
    };
    int64_t total = 0;
    size_t np = sizeof plan / sizeof *plan;
    for (size_t i = 0; i < np; i++) {
        int64_t n = 1;
        for (int d = 0; d < plan[i].ndim; d++) n *= plan[i].shape[d];
        total += (n + 15) / 16 * 16; /* 64-byte aligned starts */
    }
    ts_status st = ts_tensor_alloc(&a->block, m->device, TS_F32, TS_SHAPE(total));
    if (st) return ts_error_context(st, "activations for B=%lld T=%lld", (long long)B, (long long)T);
    int64_t off = 0;
    for (size_t i = 0; i < np && !st; i++) {
        int64_t n = 1;
        for (int d = 0; d < plan[i].ndim; d++) n *= plan[i].shape[d];
        st = ts_tensor_view(plan[i].t, &a->block, off, plan[i].ndim, plan[i].shape);
        off += (n + 15) / 16 * 16;
    }
    if (!st) st = ts_tensor_alloc(&a->tokens, m->device, TS_I32, TS_SHAPE(B, T));
    if (!st) st = ts_tensor_alloc(&a->targets, m->device, TS_I32, TS_SHAPE(B, T));
    a->ws = calloc((size_t)L, sizeof *a->ws);
    if (!a->ws && !st) st = ts_error(TS_ERR_OOM, "no memory for attention workspaces");
    for (int64_t l = 0; l < L && !st; l++) {
        ts_attention_ws *w = &a->ws[l];
        w->B = B, w->T = T, w->C = C, w->NH = NH;
        st = ts_tensor_view(&w->qkvh, &a->qkvh, l * 3 * N * C, TS_SHAPE(3, BH, T, HS));
        if (!st) st = ts_tensor_view(&w->att, &a->att, l * BH * T * T, TS_SHAPE(BH, T, T));
        w->y = a->y;
        w->scratch = a->att_scratch;
        w->dqkvh = a->dqkvh;
    }
    if (st) {
        free_acts(a);
        return st;
    }
    a->B = B, a->T = T;
    return TS_OK;
}

/* The slice of a stacked [L, ...] tensor for layer l. */
static ts_tensor layer_of(const ts_tensor *stacked, int64_t l)
{
    ts_tensor v;
    int64_t per = ts_tensor_numel(stacked) / stacked->shape[0];
    int64_t shape[3] = {stacked->shape[1], stacked->ndim > 2 ? stacked->shape[2] : 1,
                        stacked->ndim > 3 ? stacked->shape[3] : 1};
    int ndim = stacked->ndim - 1;
    if (ts_tensor_view(&v, stacked, l * per, ndim, shape) != TS_OK) memset(&v, 0, sizeof v);
    return v;
}

/* ---- forward and backward ---- */

/* Everything up to the logits. */
static ts_status forward_trunk(ts_gpt *m, const int32_t *tokens, int64_t B, int64_t T)
{
    const ts_gpt_config *c = &m->cfg;
    m->acts.dlogits_ready = 0;
    if (B < 1 || T < 1 || T > c->max_seq_len)
        return ts_error(TS_ERR_SHAPE, "forward: B=%lld T=%lld (T must be 1..%lld)", (long long)B,
                        (long long)T, (long long)c->max_seq_len);
    for (int64_t i = 0; i < B * T; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return ts_error(TS_ERR_INVALID_ARG, "forward: token %d at position %lld is outside the vocabulary [0, %lld)",
                            tokens[i], (long long)i, (long long)c->vocab_size);
    TRY(alloc_acts(m, B, T));
    ts_gpt_acts *a = &m->acts;
    TRY(ts_tensor_write(&a->tokens, tokens, (size_t)(B * T) * sizeof *tokens));
    TRY(ts_embedding_forward(&a->encoded, &a->tokens, &m->p[TS_GPT_WTE], &m->p[TS_GPT_WPE]));
    const float eps = 1e-5f;
    for (int64_t l = 0; l < c->n_layer; l++) {
        ts_tensor res = l == 0 ? a->encoded : layer_of(&a->residual3, l - 1);
        ts_tensor ln1 = layer_of(&a->ln1, l), m1 = layer_of(&a->ln1_mean, l), r1 = layer_of(&a->ln1_rstd, l);
        ts_tensor qkv = layer_of(&a->qkv, l), atty = layer_of(&a->atty, l);
        ts_tensor res2 = layer_of(&a->residual2, l), ln2 = layer_of(&a->ln2, l);
        ts_tensor m2 = layer_of(&a->ln2_mean, l), r2 = layer_of(&a->ln2_rstd, l);
        ts_tensor fch = layer_of(&a->fch, l), fchg = layer_of(&a->fch_gelu, l);
        ts_tensor res3 = layer_of(&a->residual3, l);
        ts_tensor w_ln1 = layer_of(&m->p[TS_GPT_LN1W], l), b_ln1 = layer_of(&m->p[TS_GPT_LN1B], l);
        ts_tensor w_qkv = layer_of(&m->p[TS_GPT_QKVW], l), b_qkv = layer_of(&m->p[TS_GPT_QKVB], l);
        ts_tensor w_ap = layer_of(&m->p[TS_GPT_ATTPROJW], l), b_ap = layer_of(&m->p[TS_GPT_ATTPROJB], l);
        ts_tensor w_ln2 = layer_of(&m->p[TS_GPT_LN2W], l), b_ln2 = layer_of(&m->p[TS_GPT_LN2B], l);
        ts_tensor w_fc = layer_of(&m->p[TS_GPT_FCW], l), b_fc = layer_of(&m->p[TS_GPT_FCB], l);
        ts_tensor w_fp = layer_of(&m->p[TS_GPT_FCPROJW], l), b_fp = layer_of(&m->p[TS_GPT_FCPROJB], l);
        TRY(ts_layernorm_forward(&ln1, &m1, &r1, &res, &w_ln1, &b_ln1, eps));
        TRY(ts_linear_forward(&qkv, &ln1, &w_qkv, &b_qkv));
        TRY(ts_attention_forward(&atty, &qkv, &a->ws[l]));
        TRY(ts_linear_forward(&a->proj, &atty, &w_ap, &b_ap));
        TRY(ts_add(&res2, &res, &a->proj));
        TRY(ts_layernorm_forward(&ln2, &m2, &r2, &res2, &w_ln2, &b_ln2, eps));
        TRY(ts_linear_forward(&fch, &ln2, &w_fc, &b_fc));
        TRY(ts_gelu_forward(&fchg, &fch));
        TRY(ts_linear_forward(&a->proj, &fchg, &w_fp, &b_fp));
        TRY(ts_add(&res3, &res2, &a->proj));
    }
    ts_tensor last = layer_of(&a->residual3, c->n_layer - 1);
    TRY(ts_layernorm_forward(&a->lnf, &a->lnf_mean, &a->lnf_rstd, &last, &m->p[TS_GPT_LNFW],
                             &m->p[TS_GPT_LNFB], eps));
    return ts_linear_forward(&a->logits, &a->lnf, &m->p[TS_GPT_WTE], NULL);
}

/* Losses (and, when grad_scale != 0, d(grad_scale * mean loss)/dlogits in
 * place of the logits) and the mean loss. */
static ts_status loss_head(ts_gpt *m, const int32_t *targets, float loss_scale, int with_grad, float *loss)
{
    ts_gpt_acts *a = &m->acts;
    int64_t n = a->B * a->T;
    a->valid_targets = 0;
    for (int64_t i = 0; i < n; i++) a->valid_targets += targets[i] >= 0 && targets[i] < m->cfg.vocab_size;
    TRY(ts_tensor_write(&a->targets, targets, (size_t)n * sizeof *targets));
    float scale = a->valid_targets ? loss_scale / (float)a->valid_targets : 0.0f;
    TRY(ts_cross_entropy(&a->losses, NULL, with_grad ? &a->logits : NULL, &a->logits, &a->targets, scale));
    a->dlogits_ready = with_grad;
    if (loss) {
        float sum = 0.0f;
        TRY(ts_sum(&a->loss_sum, &a->losses));
        TRY(ts_tensor_read(&a->loss_sum, &sum, sizeof sum));
        *loss = a->valid_targets ? sum / (float)a->valid_targets : 0.0f;
    }
    return TS_OK;
}

ts_status ts_gpt_forward(ts_gpt *m, const int32_t *tokens, const int32_t *targets, int64_t B,
                         int64_t T, float *loss)
{
    TRY(forward_trunk(m, tokens, B, T));
    m->acts.valid_targets = 0;
    m->acts.dlogits_ready = 0;
    if (targets) TRY(loss_head(m, targets, 1.0f, 0, loss));
    return TS_OK;
}

ts_status ts_gpt_forward_backward(ts_gpt *m, const int32_t *tokens, const int32_t *targets,
                                  int64_t B, int64_t T, float loss_scale, float *loss)
{
    if (!targets) return ts_error(TS_ERR_INVALID_ARG, "forward_backward: targets are required");
    TRY(forward_trunk(m, tokens, B, T));
    TRY(loss_head(m, targets, loss_scale, 1, loss));
    return ts_gpt_backward(m, loss_scale);
}

ts_status ts_gpt_backward(ts_gpt *m, float loss_scale)
{
    const ts_gpt_config *c = &m->cfg;
    ts_gpt_acts *a = &m->acts;
    if (!a->B) return ts_error(TS_ERR_INVALID_ARG, "backward: no forward pass to differentiate");
    if (!a->valid_targets) return ts_error(TS_ERR_INVALID_ARG, "backward: the last forward had no targets");
    /* dlogits in place of the logits: d(loss_scale * mean loss)/dlogits,
     * unless forward_backward already made them */
    if (!a->dlogits_ready) {
        float scale = loss_scale / (float)a->valid_targets;
        TRY(ts_cross_entropy(NULL, NULL, &a->logits, &a->logits, &a->targets, scale));
    }
    a->dlogits_ready = 0;
    /* output head (tied to wte): dlnf = dlogits @ wte; dwte += dlogits^T @ lnf */
    TRY(ts_linear_backward(&a->dC, &m->g[TS_GPT_WTE], NULL, &a->logits, &a->lnf, &m->p[TS_GPT_WTE]));
    TRY(ts_fill(&a->dresidual, 0.0f));
    ts_tensor last = layer_of(&a->residual3, c->n_layer - 1);
    TRY(ts_layernorm_backward(&a->dresidual, &m->g[TS_GPT_LNFW], &m->g[TS_GPT_LNFB], &a->dC, &last,
                              &m->p[TS_GPT_LNFW], &a->lnf_mean, &a->lnf_rstd));
    for (int64_t l = c->n_layer - 1; l >= 0; l--) {
        /* here dresidual holds d(residual3[l]) */
        ts_tensor res = l == 0 ? a->encoded : layer_of(&a->residual3, l - 1);
        ts_tensor ln1 = layer_of(&a->ln1, l), m1 = layer_of(&a->ln1_mean, l), r1 = layer_of(&a->ln1_rstd, l);
        ts_tensor atty = layer_of(&a->atty, l), res2 = layer_of(&a->residual2, l);
        ts_tensor ln2 = layer_of(&a->ln2, l), m2 = layer_of(&a->ln2_mean, l), r2 = layer_of(&a->ln2_rstd, l);
        ts_tensor fch = layer_of(&a->fch, l), fchg = layer_of(&a->fch_gelu, l);
        ts_tensor w_ln1 = layer_of(&m->p[TS_GPT_LN1W], l), w_ln2 = layer_of(&m->p[TS_GPT_LN2W], l);
        ts_tensor w_qkv = layer_of(&m->p[TS_GPT_QKVW], l), w_ap = layer_of(&m->p[TS_GPT_ATTPROJW], l);
        ts_tensor w_fc = layer_of(&m->p[TS_GPT_FCW], l), w_fp = layer_of(&m->p[TS_GPT_FCPROJW], l);
        ts_tensor g_ln1w = layer_of(&m->g[TS_GPT_LN1W], l), g_ln1b = layer_of(&m->g[TS_GPT_LN1B], l);
        ts_tensor g_qkvw = layer_of(&m->g[TS_GPT_QKVW], l), g_qkvb = layer_of(&m->g[TS_GPT_QKVB], l);
        ts_tensor g_apw = layer_of(&m->g[TS_GPT_ATTPROJW], l), g_apb = layer_of(&m->g[TS_GPT_ATTPROJB], l);
        ts_tensor g_ln2w = layer_of(&m->g[TS_GPT_LN2W], l), g_ln2b = layer_of(&m->g[TS_GPT_LN2B], l);
        ts_tensor g_fcw = layer_of(&m->g[TS_GPT_FCW], l), g_fcb = layer_of(&m->g[TS_GPT_FCB], l);
        ts_tensor g_fpw = layer_of(&m->g[TS_GPT_FCPROJW], l), g_fpb = layer_of(&m->g[TS_GPT_FCPROJB], l);
        /* MLP */
        TRY(ts_linear_backward(&a->d4C, &g_fpw, &g_fpb, &a->dresidual, &fchg, &w_fp));
        TRY(ts_gelu_backward(&a->d4C, &fch, &a->d4C));
        TRY(ts_linear_backward(&a->dC, &g_fcw, &g_fcb, &a->d4C, &ln2, &w_fc));
        TRY(ts_layernorm_backward(&a->dresidual, &g_ln2w, &g_ln2b, &a->dC, &res2, &w_ln2, &m2, &r2));
        /* dresidual now holds d(residual2[l]); attention */
        TRY(ts_linear_backward(&a->dC, &g_apw, &g_apb, &a->dresidual, &atty, &w_ap));
        TRY(ts_attention_backward(&a->d3C, &a->dC, &a->ws[l]));
        TRY(ts_linear_backward(&a->dC, &g_qkvw, &g_qkvb, &a->d3C, &ln1, &w_qkv));
        TRY(ts_layernorm_backward(&a->dresidual, &g_ln1w, &g_ln1b, &a->dC, &res, &w_ln1, &m1, &r1));
    }
    return ts_embedding_backward(&m->g[TS_GPT_WTE], &m->g[TS_GPT_WPE], &a->dresidual, &a->tokens);
}

ts_status ts_gpt_read_logits(ts_gpt *m, int64_t b, int64_t t, float *out)
{
    ts_gpt_acts *a = &m->acts;
    if (!a->B || b < 0 || b >= a->B || t < 0 || t >= a->T)
        return ts_error(TS_ERR_INVALID_ARG, "read_logits: position (%lld, %lld) outside the last forward",
                        (long long)b, (long long)t);
    ts_tensor row;
    TRY(ts_tensor_view(&row, &a->logits, (b * a->T + t) * m->cfg.vocab_size, TS_SHAPE(m->cfg.vocab_size)));
    return ts_tensor_read(&row, out, (size_t)m->cfg.vocab_size * sizeof *out);
}

/* ---- files ---- */

static void config_json(const ts_gpt_config *c, char *buf, size_t n)
{
    snprintf(buf, n,
             "{\"vocab_size\": %lld, \"max_seq_len\": %lld, \"n_layer\": %lld, \"n_head\": %lld, "
             "\"n_embd\": %lld}",
             (long long)c->vocab_size, (long long)c->max_seq_len, (long long)c->n_layer,
             (long long)c->n_head, (long long)c->n_embd);
}

ts_status ts_gpt_save(const ts_gpt *m, const char *path, const char *const *extra_meta)
{
    return ts_gpt_save_blob(m, &m->params, path, extra_meta);
}

ts_status ts_gpt_save_blob(const ts_gpt *m, const ts_tensor *blob, const char *path,
                           const char *const *extra_meta)
{
    if (ts_tensor_numel(blob) != m->num_params)
        return ts_error(TS_ERR_SHAPE, "saving a blob of %lld elements for a model of %lld parameters",
                        (long long)ts_tensor_numel(blob), (long long)m->num_params);
    ts_st_writer *w;
    TRY(ts_st_writer_new(&w));
    char cfg[512];
    config_json(&m->cfg, cfg, sizeof cfg);
    ts_status st = ts_st_writer_meta(w, "format", "tessera-gpt");
    if (!st) st = ts_st_writer_meta(w, "config", cfg);
    if (!st) st = ts_st_writer_meta(w, "linear_layout", "out,in");
    for (int i = 0; !st && extra_meta && extra_meta[i]; i += 2) st = ts_st_writer_meta(w, extra_meta[i], extra_meta[i + 1]);
    /* One tensor per layer and kind; views must outlive the write. */
    int64_t n_views = 0;
    for (int i = 0; i < TS_GPT_NPARAMS; i++) n_views += m->info[i].per_layer ? m->cfg.n_layer : 1;
    ts_tensor *views = calloc((size_t)n_views, sizeof *views);
    if (!views && !st) st = ts_error(TS_ERR_OOM, "no memory");
    int64_t k = 0;
    for (int i = 0; i < TS_GPT_NPARAMS && !st; i++) {
        const ts_gpt_param_info *p = &m->info[i];
        int64_t layers = p->per_layer ? m->cfg.n_layer : 1;
        for (int64_t l = 0; l < layers && !st; l++, k++) {
            char name[96];
            ts_gpt_tensor_name(m, i, l, name, sizeof name);
            int64_t slice = p->shape[0] * p->shape[1];
            st = ts_tensor_view(&views[k], blob, p->offset + l * slice, TS_SHAPE(slice));
            if (!st) st = ts_st_writer_add(w, name, &views[k], p->ndim, p->shape);
        }
    }
    if (!st) st = ts_st_writer_write(w, path);
    free(views);
    ts_st_writer_free(w);
    return st;
}

ts_status ts_gpt_read_config(const char *path, ts_gpt_config *cfg)
{
    ts_safetensors f;
    TRY(ts_safetensors_open(path, &f));
    const char *js = ts_safetensors_meta(&f, "config");
    ts_status st = TS_OK;
    if (!js) st = ts_error(TS_ERR_FORMAT, "%s: no model config in its metadata (not a tessera checkpoint?)", path);
    ts_json *j = NULL;
    if (!st && ts_json_parse(js, strlen(js), &j) != TS_OK)
        st = ts_error_context(TS_ERR_FORMAT, "%s: config", path);
    if (!st) {
        cfg->vocab_size = ts_json_get_int(j, "vocab_size", -1);
        cfg->max_seq_len = ts_json_get_int(j, "max_seq_len", -1);
        cfg->n_layer = ts_json_get_int(j, "n_layer", -1);
        cfg->n_head = ts_json_get_int(j, "n_head", -1);
        cfg->n_embd = ts_json_get_int(j, "n_embd", -1);
        st = ts_gpt_config_check(cfg);
        if (st) st = ts_error_context(st, "%s: config", path);
    }
    ts_json_free(j);
    ts_safetensors_close(&f);
    return st;
}

ts_status ts_gpt_load(ts_gpt *m, const char *path)
{
    ts_gpt_config cfg;
    TRY(ts_gpt_read_config(path, &cfg));
    if (memcmp(&cfg, &m->cfg, sizeof cfg) != 0)
        return ts_error(TS_ERR_SHAPE,
                        "%s holds a model of V=%lld maxT=%lld L=%lld NH=%lld C=%lld; this one is "
                        "V=%lld maxT=%lld L=%lld NH=%lld C=%lld",
                        path, (long long)cfg.vocab_size, (long long)cfg.max_seq_len,
                        (long long)cfg.n_layer, (long long)cfg.n_head, (long long)cfg.n_embd,
                        (long long)m->cfg.vocab_size, (long long)m->cfg.max_seq_len,
                        (long long)m->cfg.n_layer, (long long)m->cfg.n_head, (long long)m->cfg.n_embd);
    ts_safetensors f;
    TRY(ts_safetensors_open(path, &f));
    ts_status st = TS_OK;
    for (int i = 0; i < TS_GPT_NPARAMS && !st; i++) {
        const ts_gpt_param_info *p = &m->info[i];
        int64_t layers = p->per_layer ? m->cfg.n_layer : 1;
        for (int64_t l = 0; l < layers && !st; l++) {
            char name[96];
            ts_gpt_tensor_name(m, i, l, name, sizeof name);
            ts_tensor v;
            int64_t slice = p->shape[0] * p->shape[1];
            st = p->ndim == 2 ? ts_tensor_view(&v, &m->params, p->offset + l * slice, TS_SHAPE(p->shape[0], p->shape[1]))
                              : ts_tensor_view(&v, &m->params, p->offset + l * slice, TS_SHAPE(p->shape[0]));
            if (!st) st = ts_safetensors_load(&f, name, &v, 1);
        }
    }
    ts_safetensors_close(&f);
    return st;
}
