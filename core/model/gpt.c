#include "tessera/gpt.h"
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allocator.h"
#include "json.h"
#include "tessera/device.h"
#include "tessera/safetensors.h"


/* ---- configuration ---- */

ts_status ts_gpt_config_check(const ts_gpt_config *c)
{
    if (c->vocab_size < 1 || c->vocab_size > (1 << 30))
        return ts_error(TS_ERR_INVALID_ARG, "vocab_size %lld is out of range", (long long)c->vocab_size);
    if (c->max_seq_len < 1 || c->max_seq_len > (1 << 20))
        return ts_error(TS_ERR_INVALID_ARG, "max_seq_len %lld is out of range", (long long)c->max_seq_len);
    if (c->n_layer < 1 || c->n_layer > 1024)
        return ts_error(TS_ERR_INVALID_ARG, "n_layer %lld is out of range", (long long)c->n_layer);
    if (c->n_embd < 1 || c->n_embd > (1 << 16))
        return ts_error(TS_ERR_INVALID_ARG, "n_embd %lld is out of range (1 to 65536)", (long long)c->n_embd);
    if (c->n_head < 1 || c->n_embd % c->n_head != 0)
        return ts_error(TS_ERR_INVALID_ARG, "n_embd %lld must be a positive multiple of n_head %lld",
                        (long long)c->n_embd, (long long)c->n_head);
    /* with the bounds above every count below fits in 64 bits; the whole
     * model must also fit one allocation of any device (2^40 floats) */
    double params = (double)c->vocab_size * (double)c->n_embd + (double)c->max_seq_len * (double)c->n_embd +
                    (double)c->n_layer * (12.0 * (double)c->n_embd * (double)c->n_embd + 13.0 * (double)c->n_embd);
    if (params > 1099511627776.0)
        return ts_error(TS_ERR_INVALID_ARG, "a model of %.3g parameters is beyond any device (at most 2^40)", params);
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

int64_t ts_gpt_num_params(const ts_gpt_config *c)
{
    int64_t C = c->n_embd;
    return c->vocab_size * C + c->max_seq_len * C + c->n_layer * (12 * C * C + 13 * C) + 2 * C;
}

double ts_gpt_train_bytes(const ts_gpt_config *c, int64_t B, int64_t T, int moments, bool fused_attention,
                          ts_dtype matmul_dtype)
{
    double N = (double)B * (double)T, C = (double)c->n_embd, L = (double)c->n_layer;
    double att = (double)B * (double)c->n_head * (double)T * (fused_attention ? 1.0 : (double)T);
    double params = (double)c->vocab_size * C + (double)c->max_seq_len * C + L * (12.0 * C * C + 13.0 * C);
    /* per layer (ts_gpt_acts_alloc): 19 N*C (under bf16 or fp16 products 14
     * of them in 16 bits: 12 in floats' room) and the attention's T x T
     * probabilities (fused: a log-sum-exp a row); then the head's logits, a
     * few N*C buffers and the backward scratch (fused: none for attention) */
    double acts = L * ((matmul_dtype == TS_BF16 || matmul_dtype == TS_F16 ? 12.0 : 19.0) * N * C + att) + N * (double)c->vocab_size + 4.0 * N * C + 14.0 * N * C +
                  (fused_attention ? 0.0 : att);
    return 4.0 * ((2.0 + moments) * params + acts);
}

double ts_gpt_flops_per_token(const ts_gpt_config *c, int64_t T)
{
    /* 6 FLOPs per parameter per token (2 forward, 4 backward) for the
     * matrices, the output head included (it reuses wte), plus attention's
     * scores and weighted sum: 12 * L * C * T. */
    double n = (double)ts_gpt_num_params(c) - (double)c->max_seq_len * (double)c->n_embd;
    return 6.0 * n + 12.0 * (double)c->n_layer * (double)c->n_embd * (double)T;
}

void ts_gpt_layout_single(const ts_gpt_config *cfg, ts_gpt_layout *lay)
{
    memset(lay, 0, sizeof *lay);
    lay->tp_size = 1;
    lay->layer_begin = 0;
    lay->layer_end = cfg->n_layer;
    lay->embedding = lay->head = 1;
}

ts_status ts_gpt_layout_check(const ts_gpt_config *c, const ts_gpt_layout *l)
{
    TRY(ts_gpt_config_check(c));
    if (l->tp_size < 1 || l->tp_rank < 0 || l->tp_rank >= l->tp_size)
        return ts_error(TS_ERR_INVALID_ARG, "tensor-parallel rank %d of %d", l->tp_rank, l->tp_size);
    if (c->n_head % l->tp_size != 0)
        return ts_error(TS_ERR_INVALID_ARG, "%lld attention heads cannot be divided among %d tensor-parallel ranks",
                        (long long)c->n_head, l->tp_size);
    if (c->vocab_size < l->tp_size)
        return ts_error(TS_ERR_INVALID_ARG, "a vocabulary of %lld cannot be divided among %d ranks",
                        (long long)c->vocab_size, l->tp_size);
    if (l->layer_begin < 0 || l->layer_end > c->n_layer || l->layer_begin >= l->layer_end)
        return ts_error(TS_ERR_INVALID_ARG, "layers [%lld, %lld) of a %lld-layer model", (long long)l->layer_begin,
                        (long long)l->layer_end, (long long)c->n_layer);
    return TS_OK;
}

/* ---- the tensor table ---- */

const char *ts_gpt_tensor_name(int kind, int64_t layer, char *buf, size_t n)
{
    static const char *names[TS_GPT_NPARAMS] = {
        [TS_GPT_WTE] = "wte.weight",
        [TS_GPT_WPE] = "wpe.weight",
        [TS_GPT_QKVW] = "attn.c_attn.weight",
        [TS_GPT_ATTPROJW] = "attn.c_proj.weight",
        [TS_GPT_FCW] = "mlp.c_fc.weight",
        [TS_GPT_FCPROJW] = "mlp.c_proj.weight",
        [TS_GPT_LN1W] = "ln_1.weight",
        [TS_GPT_LN1B] = "ln_1.bias",
        [TS_GPT_QKVB] = "attn.c_attn.bias",
        [TS_GPT_ATTPROJB] = "attn.c_proj.bias",
        [TS_GPT_LN2W] = "ln_2.weight",
        [TS_GPT_LN2B] = "ln_2.bias",
        [TS_GPT_FCB] = "mlp.c_fc.bias",
        [TS_GPT_FCPROJB] = "mlp.c_proj.bias",
        [TS_GPT_LNFW] = "ln_f.weight",
        [TS_GPT_LNFB] = "ln_f.bias",
    };
    if (layer >= 0) snprintf(buf, n, "h.%lld.%s", (long long)layer, names[kind]);
    else snprintf(buf, n, "%s", names[kind]);
    return buf;
}

static void add_tensor(ts_gpt *m, int kind, int64_t layer, int64_t grows, int64_t gcols, ts_gpt_split split,
                       int64_t *off)
{
    ts_gpt_tensor *t = &m->tensors[m->ntensors++];
    int tp = m->lay.tp_size, r = m->lay.tp_rank;
    memset(t, 0, sizeof *t);
    t->kind = kind;
    t->layer = layer;
    t->grows = grows, t->gcols = gcols;
    t->split = tp > 1 ? split : TS_SPLIT_NONE;
    t->rows = grows, t->cols = gcols;
    switch (t->split) {
    case TS_SPLIT_ROWS:
        if (kind == TS_GPT_WTE) t->rows = m->V_local, t->first = m->vocab_start;
        else t->rows = grows / tp, t->first = r * t->rows;
        break;
    case TS_SPLIT_COLS: t->cols = gcols / tp, t->first = r * t->cols; break;
    case TS_SPLIT_QKV: t->rows = grows / tp, t->first = r * (grows / 3 / tp); break;
    case TS_SPLIT_NONE: break;
    }
    t->decay = gcols > 1;
    t->replicated = split == TS_SPLIT_NONE;
    t->offset = *off;
    *off += t->rows * t->cols;
}

static ts_status build_tensors(ts_gpt *m)
{
    const ts_gpt_config *c = &m->cfg;
    const ts_gpt_layout *l = &m->lay;
    int64_t C = c->n_embd, V = c->vocab_size;
    m->C_att = C / l->tp_size;
    m->NH_local = c->n_head / l->tp_size;
    m->F_local = 4 * C / l->tp_size;
    /* uneven vocabulary shards: the first V % tp ranks take one row more */
    int64_t base = V / l->tp_size, extra = V % l->tp_size;
    m->V_local = base + (l->tp_rank < extra);
    m->vocab_start = l->tp_rank * base + (l->tp_rank < extra ? l->tp_rank : extra);
    int64_t layers = l->layer_end - l->layer_begin;
    m->tensors = calloc((size_t)(12 * layers + 4), sizeof *m->tensors);
    if (!m->tensors) return ts_error(TS_ERR_OOM, "no memory for the tensor table");
    int64_t off = 0;
    if (l->embedding || l->head) add_tensor(m, TS_GPT_WTE, -1, V, C, TS_SPLIT_ROWS, &off);
    if (l->embedding) add_tensor(m, TS_GPT_WPE, -1, c->max_seq_len, C, TS_SPLIT_NONE, &off);
    for (int64_t g = l->layer_begin; g < l->layer_end; g++) {
        add_tensor(m, TS_GPT_QKVW, g, 3 * C, C, TS_SPLIT_QKV, &off);
        add_tensor(m, TS_GPT_ATTPROJW, g, C, C, TS_SPLIT_COLS, &off);
        add_tensor(m, TS_GPT_FCW, g, 4 * C, C, TS_SPLIT_ROWS, &off);
        add_tensor(m, TS_GPT_FCPROJW, g, C, 4 * C, TS_SPLIT_COLS, &off);
        add_tensor(m, TS_GPT_LN1W, g, C, 1, TS_SPLIT_NONE, &off);
        add_tensor(m, TS_GPT_LN1B, g, C, 1, TS_SPLIT_NONE, &off);
        add_tensor(m, TS_GPT_QKVB, g, 3 * C, 1, TS_SPLIT_QKV, &off);
        add_tensor(m, TS_GPT_ATTPROJB, g, C, 1, TS_SPLIT_NONE, &off);
        add_tensor(m, TS_GPT_LN2W, g, C, 1, TS_SPLIT_NONE, &off);
        add_tensor(m, TS_GPT_LN2B, g, C, 1, TS_SPLIT_NONE, &off);
        add_tensor(m, TS_GPT_FCB, g, 4 * C, 1, TS_SPLIT_ROWS, &off);
        add_tensor(m, TS_GPT_FCPROJB, g, C, 1, TS_SPLIT_NONE, &off);
    }
    if (l->head) {
        add_tensor(m, TS_GPT_LNFW, -1, C, 1, TS_SPLIT_NONE, &off);
        add_tensor(m, TS_GPT_LNFB, -1, C, 1, TS_SPLIT_NONE, &off);
    }
    m->num_params = off;
    return TS_OK;
}

const ts_gpt_tensor *ts_gpt_find(const ts_gpt *m, int kind, int64_t layer)
{
    /* layer tensors sit at a fixed stride after the non-layer prefix */
    int prefix = (m->lay.embedding || m->lay.head) + m->lay.embedding;
    if (layer >= 0) {
        if (layer < m->lay.layer_begin || layer >= m->lay.layer_end || kind < TS_GPT_QKVW || kind > TS_GPT_FCPROJB)
            return NULL;
        static const int order[TS_GPT_NPARAMS] = {
            [TS_GPT_QKVW] = 0, [TS_GPT_ATTPROJW] = 1, [TS_GPT_FCW] = 2, [TS_GPT_FCPROJW] = 3,
            [TS_GPT_LN1W] = 4, [TS_GPT_LN1B] = 5, [TS_GPT_QKVB] = 6, [TS_GPT_ATTPROJB] = 7,
            [TS_GPT_LN2W] = 8, [TS_GPT_LN2B] = 9, [TS_GPT_FCB] = 10, [TS_GPT_FCPROJB] = 11,
        };
        return &m->tensors[prefix + 12 * (layer - m->lay.layer_begin) + order[kind]];
    }
    for (int i = 0; i < m->ntensors; i++)
        if (m->tensors[i].kind == kind && m->tensors[i].layer < 0) return &m->tensors[i];
    return NULL;
}

ts_status ts_gpt_param_view(const ts_gpt *m, const ts_gpt_tensor *t, int grads, ts_tensor *view)
{
    const ts_tensor *blob = grads ? &m->grads : &m->params;
    if (t->cols > 1) return ts_tensor_view(view, blob, t->offset, TS_SHAPE(t->rows, t->cols));
    return ts_tensor_view(view, blob, t->offset, TS_SHAPE(t->rows));
}

/* A view by kind and layer that model code trusts to exist. */
static ts_tensor P(const ts_gpt *m, int kind, int64_t layer, int grads)
{
    ts_tensor v;
    memset(&v, 0, sizeof v);
    const ts_gpt_tensor *t = ts_gpt_find(m, kind, layer);
    if (t) ts_gpt_param_view(m, t, grads, &v);
    return v;
}

int ts_gpt_decay_ranges(const ts_gpt *m, int64_t (*ranges)[2], int max)
{
    int n = 0;
    for (int i = 0; i < m->ntensors; i++) {
        const ts_gpt_tensor *t = &m->tensors[i];
        if (!t->decay) continue;
        int64_t a = t->offset, b = t->offset + t->rows * t->cols;
        if (n > 0 && ranges[n - 1][1] == a) ranges[n - 1][1] = b;
        else if (n < max) ranges[n][0] = a, ranges[n][1] = b, n++;
    }
    return n;
}

ts_status ts_gpt_optimizer_step(ts_gpt *m, ts_optimizer *o, float lr, float grad_scale)
{
    int64_t(*ranges)[2] = malloc((size_t)(m->ntensors + 1) * sizeof *ranges);
    if (!ranges) return ts_error(TS_ERR_OOM, "no memory");
    int n = ts_gpt_decay_ranges(m, ranges, m->ntensors + 1);
    ts_status st = ts_optimizer_step(o, &m->params, &m->grads, 0, (const int64_t(*)[2])ranges, n, lr, grad_scale);
    free(ranges);
    return st;
}

void ts_gpt_slice_from_global(const ts_gpt_tensor *t, const float *g, float *l)
{
    switch (t->split) {
    case TS_SPLIT_NONE: memcpy(l, g, (size_t)(t->rows * t->cols) * sizeof *l); break;
    case TS_SPLIT_ROWS: memcpy(l, g + t->first * t->cols, (size_t)(t->rows * t->cols) * sizeof *l); break;
    case TS_SPLIT_COLS:
        for (int64_t r = 0; r < t->rows; r++)
            memcpy(l + r * t->cols, g + r * t->gcols + t->first, (size_t)t->cols * sizeof *l);
        break;
    case TS_SPLIT_QKV: {
        int64_t blk = t->rows / 3, gblk = t->grows / 3;
        for (int k = 0; k < 3; k++)
            memcpy(l + k * blk * t->cols, g + (k * gblk + t->first) * t->cols, (size_t)(blk * t->cols) * sizeof *l);
        break;
    }
    }
}

void ts_gpt_slice_to_global(const ts_gpt_tensor *t, const float *l, float *g)
{
    switch (t->split) {
    case TS_SPLIT_NONE: memcpy(g, l, (size_t)(t->rows * t->cols) * sizeof *l); break;
    case TS_SPLIT_ROWS: memcpy(g + t->first * t->cols, l, (size_t)(t->rows * t->cols) * sizeof *l); break;
    case TS_SPLIT_COLS:
        for (int64_t r = 0; r < t->rows; r++)
            memcpy(g + r * t->gcols + t->first, l + r * t->cols, (size_t)t->cols * sizeof *l);
        break;
    case TS_SPLIT_QKV: {
        int64_t blk = t->rows / 3, gblk = t->grows / 3;
        for (int k = 0; k < 3; k++)
            memcpy(g + (k * gblk + t->first) * t->cols, l + k * blk * t->cols, (size_t)(blk * t->cols) * sizeof *l);
        break;
    }
    }
}

/* ---- lifecycle ---- */

ts_status ts_gpt_create_layout(ts_gpt *m, ts_device *dev, const ts_gpt_config *cfg,
                               const ts_gpt_layout *lay, ts_comm *tp_comm)
{
    memset(m, 0, sizeof *m);
    TRY(ts_gpt_layout_check(cfg, lay));
    if (lay->tp_size > 1 && ts_comm_size(tp_comm) != lay->tp_size)
        return ts_error(TS_ERR_INVALID_ARG, "tensor parallelism over %d ranks needs a communicator of that size",
                        lay->tp_size);
    m->cfg = *cfg;
    m->lay = *lay;
    m->device = dev;
    m->tp_comm = lay->tp_size > 1 ? tp_comm : NULL;
    ts_status st = build_tensors(m);
    if (!st) st = ts_tensor_alloc(&m->params, dev, TS_F32, TS_SHAPE(m->num_params));
    if (!st) st = ts_tensor_zeros(&m->grads, dev, TS_F32, TS_SHAPE(m->num_params));
    if (st) {
        ts_gpt_free(m);
        return ts_error_context(st, "creating a model part of %lld parameters", (long long)m->num_params);
    }
    return TS_OK;
}

ts_status ts_gpt_plan(ts_gpt *m, const ts_gpt_config *cfg, const ts_gpt_layout *lay)
{
    memset(m, 0, sizeof *m);
    TRY(ts_gpt_layout_check(cfg, lay));
    m->cfg = *cfg;
    m->lay = *lay;
    ts_status st = build_tensors(m);
    if (st) ts_gpt_free(m);
    return st;
}

ts_status ts_gpt_create(ts_gpt *m, ts_device *dev, const ts_gpt_config *cfg)
{
    ts_gpt_layout lay;
    TRY(ts_gpt_config_check(cfg));
    ts_gpt_layout_single(cfg, &lay);
    return ts_gpt_create_layout(m, dev, cfg, &lay, NULL);
}

static void free_blocks(ts_tensor *blocks)
{
    for (int b = 0; b < TS_GPT_BLOCKS; b++) ts_tensor_free(&blocks[b]);
}

void ts_gpt_acts_free(ts_gpt_acts *a)
{
    free_blocks(a->block);
    ts_tensor_free(&a->tokens);
    ts_tensor_free(&a->targets);
    ts_tensor_free(&a->key_len);
    free(a->ws);
    memset(a, 0, sizeof *a);
}

static void free_scratch(ts_gpt *m)
{
    free_blocks(m->scratch);
    m->scratch_B = m->scratch_T = 0;
}

void ts_gpt_free(ts_gpt *m)
{
    ts_gpt_acts_free(&m->acts);
    free_scratch(m);
    ts_tensor_free(&m->params);
    ts_tensor_free(&m->grads);
    free(m->tensors);
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

void ts_gpt_fill_normal(float *x, int64_t n, double std, uint64_t seed)
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
    int64_t maxg = 0;
    for (int i = 0; i < m->ntensors; i++)
        if (m->tensors[i].grows * m->tensors[i].gcols > maxg) maxg = m->tensors[i].grows * m->tensors[i].gcols;
    float *global = malloc((size_t)maxg * sizeof *global), *local = malloc((size_t)maxg * sizeof *local);
    ts_status st = global && local ? TS_OK : ts_error(TS_ERR_OOM, "no host memory to initialise weights");
    double resid_std = 0.02 / sqrt(2.0 * (double)m->cfg.n_layer);
    for (int i = 0; i < m->ntensors && !st; i++) {
        const ts_gpt_tensor *t = &m->tensors[i];
        int64_t gn = t->grows * t->gcols;
        if (t->decay) {
            /* the stream depends on (seed, kind, global layer) only */
            double std = (t->kind == TS_GPT_ATTPROJW || t->kind == TS_GPT_FCPROJW) ? resid_std : 0.02;
            uint64_t stream = seed * 1000003ull + (uint64_t)t->kind * 7919ull + (uint64_t)(t->layer + 1) * 104729ull;
            ts_gpt_fill_normal(global, gn, std, stream);
        } else {
            float v = (t->kind == TS_GPT_LN1W || t->kind == TS_GPT_LN2W || t->kind == TS_GPT_LNFW) ? 1.0f : 0.0f;
            for (int64_t k = 0; k < gn; k++) global[k] = v;
        }
        ts_gpt_slice_from_global(t, global, local);
        ts_tensor v;
        st = ts_gpt_param_view(m, t, 0, &v);
        if (!st) st = ts_tensor_write(&v, local, (size_t)(t->rows * t->cols) * sizeof *local);
    }
    free(global), free(local);
    if (!st) st = ts_gpt_zero_grad(m);
    return st;
}

ts_status ts_gpt_zero_grad(ts_gpt *m) { return ts_fill(&m->grads, 0.0f); }

/* ---- activations ---- */

typedef struct plan_item {
    ts_tensor *t;
    int ndim;
    int64_t shape[4];
} plan_item;

/* Lay the plan's tensors out in as few allocations as the device and
 * CLBlast's 32-bit element offsets allow: a new block begins where the
 * next tensor would take one past min(the largest allocation the
 * allocator grants, 2^31 - 1 floats); a tensor larger than that alone
 * gets a block of its own (which the device may refuse, with an error). */
static ts_status alloc_plan(ts_device *dev, ts_tensor *blocks, plan_item *plan, size_t n, const ts_dtype *types)
{
    int64_t cap = INT32_MAX / 16 * 16;
    uint64_t most = ts_allocator_largest_fit((size_t)ts_device_get_info(dev)->max_alloc_bytes) / 4;
    const char *limit = getenv("TESSERA_BLOCK_LIMIT"); /* bytes; tests force splits with it */
    uint64_t lim = limit ? strtoull(limit, NULL, 10) / 4 : 0;
    if (lim >= 16 && (!most || lim < most)) most = lim;
    if (most && (int64_t)most < cap) cap = (int64_t)most / 16 * 16;
    if (n > TS_GPT_BLOCKS) return ts_error(TS_ERR_INVALID_ARG, "a plan of %zu tensors (at most %d)", n, TS_GPT_BLOCKS);
    int64_t size[TS_GPT_BLOCKS] = {0}, start[TS_GPT_BLOCKS];
    int owner[TS_GPT_BLOCKS], nb = 0;
    for (size_t i = 0; i < n; i++) { /* 64-byte aligned starts */
        int64_t k = 1;
        for (int d = 0; d < plan[i].ndim; d++) k *= plan[i].shape[d];
        k = ((k * (int64_t)ts_dtype_size(types ? types[i] : TS_F32) + 3) / 4 + 15) / 16 * 16; /* in floats */
        if (nb == 0 || (size[nb - 1] + k > cap && size[nb - 1] > 0)) nb++;
        owner[i] = nb - 1;
        start[i] = size[nb - 1];
        size[nb - 1] += k;
    }
    for (int b = 0; b < nb; b++) {
        ts_status st = ts_tensor_alloc(&blocks[b], dev, TS_F32, TS_SHAPE(size[b] > 0 ? size[b] : 1));
        if (st) {
            free_blocks(blocks);
            return st;
        }
    }
    for (size_t i = 0; i < n; i++) {
        ts_status st = ts_tensor_view_typed(plan[i].t, &blocks[owner[i]], start[i], types ? types[i] : TS_F32, plan[i].ndim,
                                            plan[i].shape);
        if (st) {
            free_blocks(blocks);
            return st;
        }
    }
    return TS_OK;
}

/* Scratch for one (B, T) and attention route, shared by all micro-batches
 * of that shape (the composite route's buffers; the fused one needs none). */
static ts_status ensure_scratch(ts_gpt *m, int64_t B, int64_t T, bool fused)
{
    if (m->scratch_B == B && m->scratch_T == T && m->scratch_fused == fused) return TS_OK;
    free_scratch(m);
    int64_t N = B * T, C = m->cfg.n_embd, BH = B * m->NH_local, HS = C / m->cfg.n_head;
    int64_t k = fused ? 0 : 1; /* the composite route's buffers; the fused one needs none */
    plan_item plan[] = {
        {&m->y, 3, {k * BH, T, HS}},      {&m->att_scratch, 3, {k * BH, T, T}},
        {&m->dqkvh, 4, {3, k * BH, T, HS}}, {&m->proj, 2, {N, C}},
        {&m->dC, 2, {N, C}},              {&m->dCatt, 2, {N, m->C_att}},
        {&m->d3C, 2, {N, 3 * m->C_att}},  {&m->d4C, 2, {N, m->F_local}},
    };
    TRY(alloc_plan(m->device, m->scratch, plan, sizeof plan / sizeof *plan, NULL));
    m->scratch_B = B, m->scratch_T = T, m->scratch_fused = fused;
    return TS_OK;
}

/* The scratch for a's shape, and a's attention workspaces pointed at it:
 * another shape's activations (sampling at B=1, say) may have reallocated
 * it since a was made. */
static ts_status scratch_for(ts_gpt *m, ts_gpt_acts *a)
{
    int64_t L = m->lay.layer_end - m->lay.layer_begin;
    TRY(ensure_scratch(m, a->B, a->T, L == 0 || a->ws[0].fused)); /* a's route, whatever the hint is now */
    for (int64_t l = 0; l < L; l++)
        if (!a->ws[l].fused) a->ws[l].y = m->y, a->ws[l].scratch = m->att_scratch, a->ws[l].dqkvh = m->dqkvh;
    return TS_OK;
}

/* The type of the activations that products read (acts_alloc): the
 * products' 16-bit type, else fp32. */
static ts_dtype act_dtype(const ts_gpt *m)
{
    ts_dtype t = m->device->matmul_dtype;
    return t == TS_BF16 || t == TS_F16 ? t : TS_F32;
}

static ts_status acts_alloc(ts_gpt *m, ts_gpt_acts *a, int64_t B, int64_t T, int logits)
{
    memset(a, 0, sizeof *a);
    if (B < 1 || T < 1 || T > m->cfg.max_seq_len)
        return ts_error(TS_ERR_SHAPE, "activations for B=%lld T=%lld (T must be 1..%lld)", (long long)B,
                        (long long)T, (long long)m->cfg.max_seq_len);
    int64_t L = m->lay.layer_end - m->lay.layer_begin, C = m->cfg.n_embd, N = B * T;
    int64_t BH = B * m->NH_local, HS = C / m->cfg.n_head, Ca = m->C_att;
    int head = m->lay.head;
    bool fused;
    TRY(ts_attention_route_fused_mask(m->device, TS_ATTENTION_AUTO, B, T, Ca, m->NH_local, m->bidirectional, &fused));
    /* fused: att holds each row's log-sum-exp, not its probabilities, and
     * the heads are read in place from qkv */
    int64_t keys = fused ? 1 : T, k = fused ? 0 : 1;
    /* under bf16 or fp16 products the inputs of the linear layers that
     * need no fp32 elsewhere are stored in that type: the layernorms'
     * outputs (the products round them anyway), the MLP's hidden
     * activations and the attention's qkv and output, as autocast leaves a
     * linear layer's output, GELU's and attention's (14 of a layer's 19
     * N*C; attention, and every op on f16, computes in fp32 from copies
     * made one layer at a time). Under bf16 also the head's logits and
     * their gradient, in place, as autocast leaves them (vocabulary-parallel
     * too), where the products take bf16 tensors (else the fp32 copy
     * around the head's product is the larger); fp16 keeps them fp32,
     * where the loss scale would overflow them. */
    ts_dtype lowp = act_dtype(m);
    ts_dtype logits_type = lowp == TS_BF16 && ts_linear_takes_bf16(m->device) ? lowp : TS_F32;
    plan_item plan[] = {
        {&a->input, 2, {N, C}},
        {&a->ln1, 3, {L, N, C}},
        {&a->ln1_mean, 2, {L, N}},
        {&a->ln1_rstd, 2, {L, N}},
        {&a->qkv, 3, {L, N, 3 * Ca}},
        {&a->qkvh, 4, {L, 3, k * BH * T, HS}},
        {&a->att, 4, {L, BH, T, keys}},
        {&a->atty, 3, {L, N, Ca}},
        {&a->residual2, 3, {L, N, C}},
        {&a->ln2, 3, {L, N, C}},
        {&a->ln2_mean, 2, {L, N}},
        {&a->ln2_rstd, 2, {L, N}},
        {&a->fch, 3, {L, N, m->F_local}},
        {&a->fch_gelu, 3, {L, N, m->F_local}},
        {&a->residual3, 3, {L, N, C}},
        {&a->dres, 2, {N, C}},
        {&a->lnf, 2, {head ? N : 1, C}},
        {&a->lnf_mean, 1, {head ? N : 1}},
        {&a->lnf_rstd, 1, {head ? N : 1}},
        {&a->logits, 2, {head && logits ? N : 1, head && logits ? m->V_local : 1}},
        {&a->losses, 1, {N}},
        {&a->loss_sum, 1, {1}},
        {&a->ce_max, 1, {N}},
        {&a->ce_sum, 1, {N}},
        {&a->ce_tgt, 1, {N}},
    };
    enum { NPLAN = sizeof plan / sizeof *plan };
    ts_dtype types[NPLAN];
    for (int i = 0; i < NPLAN; i++)
        types[i] = plan[i].t == &a->logits                                                             ? logits_type
                   : plan[i].t == &a->fch || plan[i].t == &a->fch_gelu || plan[i].t == &a->ln1 || plan[i].t == &a->ln2 ||
                           plan[i].t == &a->qkv || plan[i].t == &a->atty
                       ? lowp
                       : TS_F32;
    ts_status st = alloc_plan(m->device, a->block, plan, NPLAN, types);
    if (st) return ts_error_context(st, "activations for B=%lld T=%lld", (long long)B, (long long)T);
    if (!st) st = ts_tensor_alloc(&a->tokens, m->device, TS_I32, TS_SHAPE(B, T));
    if (!st) st = ts_tensor_alloc(&a->targets, m->device, TS_I32, TS_SHAPE(B, T));
    if (!st) st = ts_tensor_alloc(&a->key_len, m->device, TS_I32, TS_SHAPE(B));
    if (!st) st = ensure_scratch(m, B, T, fused);
    a->ws = calloc((size_t)L, sizeof *a->ws);
    if (!a->ws && !st) st = ts_error(TS_ERR_OOM, "no memory for attention workspaces");
    for (int64_t l = 0; l < L && !st; l++) {
        ts_attention_ws *w = &a->ws[l];
        w->B = B, w->T = T, w->C = Ca, w->NH = m->NH_local;
        if (fused) {
            w->fused = true;
            st = ts_tensor_view(&w->lse, &a->att, l * BH * T, TS_SHAPE(BH, T));
            if (!st) st = ts_tensor_view(&w->o, &a->atty, l * N * Ca, TS_SHAPE(B, T, Ca));
            continue;
        }
        st = ts_tensor_view(&w->qkvh, &a->qkvh, l * 3 * N * Ca, TS_SHAPE(3, BH, T, HS));
        if (!st) st = ts_tensor_view(&w->att, &a->att, l * BH * T * T, TS_SHAPE(BH, T, T));
        w->y = m->y;
        w->scratch = m->att_scratch;
        w->dqkvh = m->dqkvh;
    }
    if (st) {
        ts_gpt_acts_free(a);
        return st;
    }
    a->B = B, a->T = T;
    return TS_OK;
}

ts_status ts_gpt_acts_alloc(ts_gpt *m, ts_gpt_acts *a, int64_t B, int64_t T)
{
    return acts_alloc(m, a, B, T, 1);
}

ts_status ts_gpt_acts_alloc_features(ts_gpt *m, ts_gpt_acts *a, int64_t B, int64_t T)
{
    return acts_alloc(m, a, B, T, 0);
}

/* The slice of a stacked [L, ...] activation for local layer l. */
static ts_tensor layer_of(const ts_tensor *stacked, int64_t l)
{
    ts_tensor v;
    int64_t per = ts_tensor_numel(stacked) / stacked->shape[0];
    int64_t shape[3] = {stacked->shape[1], stacked->ndim > 2 ? stacked->shape[2] : 1,
                        stacked->ndim > 3 ? stacked->shape[3] : 1};
    if (ts_tensor_view(&v, stacked, l * per, stacked->ndim - 1, shape) != TS_OK) memset(&v, 0, sizeof v);
    return v;
}

/* ---- tensor-parallel helpers (Megatron's f and g) ---- */

static ts_status tp_allreduce(ts_gpt *m, ts_tensor *t, const char *what)
{
    if (!m->tp_comm) return TS_OK;
    return ts_comm_allreduce_tensor(m->tp_comm, t, TS_REDUCE_SUM, what);
}

static ts_status tp_allreduce_max(ts_gpt *m, ts_tensor *t)
{
    if (!m->tp_comm) return TS_OK;
    return ts_comm_allreduce_tensor(m->tp_comm, t, TS_REDUCE_MAX, "cross-entropy maxima");
}

/* ---- forward ---- */

ts_status ts_gpt_stage_output(ts_gpt *m, ts_gpt_acts *a, ts_tensor *out)
{
    int64_t L = m->lay.layer_end - m->lay.layer_begin;
    *out = layer_of(&a->residual3, L - 1);
    return TS_OK;
}

/* Vocabulary-parallel cross-entropy over the tensor-parallel group: global
 * row maxima and sums of exponentials by allreduce, the target's logit from
 * the rank holding it. Losses land in a->losses; with grad_weight the
 * logits become their gradient. */
static ts_status vocab_parallel_ce(ts_gpt *m, ts_gpt_acts *a, float grad_weight)
{
    int64_t N = a->B * a->T;
    TRY(ts_ce_shard_stats(&a->ce_max, &a->ce_tgt, &a->logits, &a->targets, m->vocab_start));
    TRY(tp_allreduce_max(m, &a->ce_max));
    TRY(ts_ce_shard_sumexp(&a->ce_sum, &a->logits, &a->ce_max));
    TRY(tp_allreduce(m, &a->ce_sum, "cross-entropy sums"));
    TRY(tp_allreduce(m, &a->ce_tgt, "cross-entropy targets"));
    TRY(ts_ce_shard_loss(&a->losses, &a->ce_max, &a->ce_sum, &a->ce_tgt, &a->targets, m->cfg.vocab_size));
    if (grad_weight != 0.0f)
        TRY(ts_ce_shard_grad(&a->logits, &a->logits, &a->ce_max, &a->ce_sum, &a->targets, m->vocab_start,
                             m->cfg.vocab_size, grad_weight));
    (void)N;
    return TS_OK;
}

/* Embedding, this process's layers and (head stage) the final layernorm
 * into a->lnf, with the attention masks set in a->ws. */
static ts_status forward_blocks(ts_gpt *m, ts_gpt_acts *a, const int32_t *tokens)
{
    const ts_gpt_config *c = &m->cfg;
    int64_t B = a->B, T = a->T, N = B * T;
    const float eps = 1e-5f;
    a->dlogits_ready = 0;
    a->valid_targets = 0;
    TRY(scratch_for(m, a));
    if (m->lay.embedding) {
        if (!tokens) return ts_error(TS_ERR_INVALID_ARG, "the embedding stage needs tokens");
        for (int64_t i = 0; i < N; i++)
            if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
                return ts_error(TS_ERR_INVALID_ARG,
                                "forward: token %d at position %lld is outside the vocabulary [0, %lld)",
                                tokens[i], (long long)i, (long long)c->vocab_size);
        TRY(ts_tensor_write(&a->tokens, tokens, (size_t)N * sizeof *tokens));
        ts_tensor wte = P(m, TS_GPT_WTE, -1, 0), wpe = P(m, TS_GPT_WPE, -1, 0);
        /* the position embedding is added once across the group */
        TRY(ts_embedding_forward_shard(&a->input, &a->tokens, &wte, m->lay.tp_rank == 0 ? &wpe : NULL,
                                       m->vocab_start));
        TRY(tp_allreduce(m, &a->input, "embedding"));
        if (a->input_add) TRY(ts_add(&a->input, &a->input, a->input_add));
    }
    int64_t L = m->lay.layer_end - m->lay.layer_begin;
    int first_tp = m->lay.tp_rank == 0;
    for (int64_t l = 0; l < L; l++) {
        int64_t g = m->lay.layer_begin + l;
        ts_tensor res = l == 0 ? a->input : layer_of(&a->residual3, l - 1);
        ts_tensor ln1 = layer_of(&a->ln1, l), m1 = layer_of(&a->ln1_mean, l), r1 = layer_of(&a->ln1_rstd, l);
        ts_tensor qkv = layer_of(&a->qkv, l), atty = layer_of(&a->atty, l);
        ts_tensor res2 = layer_of(&a->residual2, l), ln2 = layer_of(&a->ln2, l);
        ts_tensor m2 = layer_of(&a->ln2_mean, l), r2 = layer_of(&a->ln2_rstd, l);
        ts_tensor fch = layer_of(&a->fch, l), fchg = layer_of(&a->fch_gelu, l);
        ts_tensor res3 = layer_of(&a->residual3, l);
        ts_tensor w_ln1 = P(m, TS_GPT_LN1W, g, 0), b_ln1 = P(m, TS_GPT_LN1B, g, 0);
        ts_tensor w_qkv = P(m, TS_GPT_QKVW, g, 0), b_qkv = P(m, TS_GPT_QKVB, g, 0);
        ts_tensor w_ap = P(m, TS_GPT_ATTPROJW, g, 0), b_ap = P(m, TS_GPT_ATTPROJB, g, 0);
        ts_tensor w_ln2 = P(m, TS_GPT_LN2W, g, 0), b_ln2 = P(m, TS_GPT_LN2B, g, 0);
        ts_tensor w_fc = P(m, TS_GPT_FCW, g, 0), b_fc = P(m, TS_GPT_FCB, g, 0);
        ts_tensor w_fp = P(m, TS_GPT_FCPROJW, g, 0), b_fp = P(m, TS_GPT_FCPROJB, g, 0);
        TRY(ts_layernorm_forward(&ln1, &m1, &r1, &res, &w_ln1, &b_ln1, eps));
        TRY(ts_linear_forward(&qkv, &ln1, &w_qkv, &b_qkv));               /* column-parallel */
        TRY(ts_attention_forward(&atty, &qkv, &a->ws[l]));
        TRY(ts_linear_forward(&m->proj, &atty, &w_ap, first_tp ? &b_ap : NULL)); /* row-parallel */
        TRY(tp_allreduce(m, &m->proj, "attention output"));
        TRY(ts_add(&res2, &res, &m->proj));
        TRY(ts_layernorm_forward(&ln2, &m2, &r2, &res2, &w_ln2, &b_ln2, eps));
        TRY(ts_linear_forward(&fch, &ln2, &w_fc, &b_fc));
        TRY(ts_gelu_forward(&fchg, &fch));
        TRY(ts_linear_forward(&m->proj, &fchg, &w_fp, first_tp ? &b_fp : NULL));
        TRY(tp_allreduce(m, &m->proj, "MLP output"));
        TRY(ts_add(&res3, &res2, &m->proj));
    }
    if (!m->lay.head) return TS_OK;
    ts_tensor last = layer_of(&a->residual3, L - 1), lnfw = P(m, TS_GPT_LNFW, -1, 0), lnfb = P(m, TS_GPT_LNFB, -1, 0);
    return ts_layernorm_forward(&a->lnf, &a->lnf_mean, &a->lnf_rstd, &last, &lnfw, &lnfb, eps);
}

static void set_attention_mask(ts_gpt *m, ts_gpt_acts *a, const ts_tensor *key_len, bool bidirectional)
{
    for (int64_t l = 0; l < m->lay.layer_end - m->lay.layer_begin; l++) {
        a->ws[l].key_len = key_len;
        a->ws[l].bidirectional = bidirectional;
    }
}

ts_status ts_gpt_stage_forward(ts_gpt *m, ts_gpt_acts *a, const int32_t *tokens,
                               const int32_t *targets, float grad_weight, double *loss_sum,
                               int64_t *valid)
{
    const ts_gpt_config *c = &m->cfg;
    int64_t N = a->B * a->T;
    set_attention_mask(m, a, NULL, false);
    TRY(forward_blocks(m, a, tokens));
    if (!m->lay.head) return TS_OK;
    ts_tensor wte = P(m, TS_GPT_WTE, -1, 0);
    TRY(ts_linear_forward(&a->logits, &a->lnf, &wte, NULL));
    if (!targets) return TS_OK;
    for (int64_t i = 0; i < N; i++) a->valid_targets += targets[i] >= 0 && targets[i] < c->vocab_size;
    TRY(ts_tensor_write(&a->targets, targets, (size_t)N * sizeof *targets));
    if (m->tp_comm) TRY(vocab_parallel_ce(m, a, grad_weight));
    else TRY(ts_cross_entropy(&a->losses, NULL, grad_weight != 0.0f ? &a->logits : NULL, &a->logits,
                              &a->targets, grad_weight));
    a->dlogits_ready = grad_weight != 0.0f;
    if (valid) *valid = a->valid_targets;
    if (loss_sum) {
        float sum = 0.0f;
        TRY(ts_sum(&a->loss_sum, &a->losses));
        TRY(ts_tensor_read(&a->loss_sum, &sum, sizeof sum));
        *loss_sum = sum;
    }
    return TS_OK;
}

/* ---- backward ---- */

static void signal_ready(ts_gpt *m, int64_t offset)
{
    if (m->grads_ready) m->grads_ready(m->grads_ready_ctx, offset);
}

/* Backward from d(a->lnf) (head stage) or from a->dres (other stages)
 * through the final layernorm, the layers and the embedding. */
static ts_status backward_blocks(ts_gpt *m, ts_gpt_acts *a, const ts_tensor *dlnf)
{
    int64_t L = m->lay.layer_end - m->lay.layer_begin;
    if (m->lay.head) {
        ts_tensor lnfw = P(m, TS_GPT_LNFW, -1, 0), dlnfw = P(m, TS_GPT_LNFW, -1, 1), dlnfb = P(m, TS_GPT_LNFB, -1, 1);
        ts_tensor last = layer_of(&a->residual3, L - 1);
        TRY(ts_fill(&a->dres, 0.0f));
        TRY(ts_layernorm_backward(&a->dres, &dlnfw, &dlnfb, dlnf, &last, &lnfw, &a->lnf_mean, &a->lnf_rstd));
        signal_ready(m, ts_gpt_find(m, TS_GPT_LNFW, -1)->offset);
    }
    for (int64_t l = L - 1; l >= 0; l--) {
        /* here a->dres holds d(residual3[l]) */
        int64_t g = m->lay.layer_begin + l;
        ts_tensor res = l == 0 ? a->input : layer_of(&a->residual3, l - 1);
        ts_tensor ln1 = layer_of(&a->ln1, l), m1 = layer_of(&a->ln1_mean, l), r1 = layer_of(&a->ln1_rstd, l);
        ts_tensor atty = layer_of(&a->atty, l), res2 = layer_of(&a->residual2, l);
        ts_tensor ln2 = layer_of(&a->ln2, l), m2 = layer_of(&a->ln2_mean, l), r2 = layer_of(&a->ln2_rstd, l);
        ts_tensor fch = layer_of(&a->fch, l), fchg = layer_of(&a->fch_gelu, l);
        ts_tensor w_ln1 = P(m, TS_GPT_LN1W, g, 0), w_ln2 = P(m, TS_GPT_LN2W, g, 0);
        ts_tensor w_qkv = P(m, TS_GPT_QKVW, g, 0), w_ap = P(m, TS_GPT_ATTPROJW, g, 0);
        ts_tensor w_fc = P(m, TS_GPT_FCW, g, 0), w_fp = P(m, TS_GPT_FCPROJW, g, 0);
        ts_tensor g_ln1w = P(m, TS_GPT_LN1W, g, 1), g_ln1b = P(m, TS_GPT_LN1B, g, 1);
        ts_tensor g_qkvw = P(m, TS_GPT_QKVW, g, 1), g_qkvb = P(m, TS_GPT_QKVB, g, 1);
        ts_tensor g_apw = P(m, TS_GPT_ATTPROJW, g, 1), g_apb = P(m, TS_GPT_ATTPROJB, g, 1);
        ts_tensor g_ln2w = P(m, TS_GPT_LN2W, g, 1), g_ln2b = P(m, TS_GPT_LN2B, g, 1);
        ts_tensor g_fcw = P(m, TS_GPT_FCW, g, 1), g_fcb = P(m, TS_GPT_FCB, g, 1);
        ts_tensor g_fpw = P(m, TS_GPT_FCPROJW, g, 1), g_fpb = P(m, TS_GPT_FCPROJB, g, 1);
        /* MLP (the output projection's bias gradient is replicated) */
        TRY(ts_linear_backward(&m->d4C, &g_fpw, &g_fpb, &a->dres, &fchg, &w_fp));
        TRY(ts_gelu_backward(&m->d4C, &fch, &m->d4C));
        TRY(ts_linear_backward(&m->dC, &g_fcw, &g_fcb, &m->d4C, &ln2, &w_fc));
        TRY(tp_allreduce(m, &m->dC, "MLP input gradient"));
        TRY(ts_layernorm_backward(&a->dres, &g_ln2w, &g_ln2b, &m->dC, &res2, &w_ln2, &m2, &r2));
        /* a->dres now holds d(residual2[l]); attention */
        TRY(ts_linear_backward(&m->dCatt, &g_apw, &g_apb, &a->dres, &atty, &w_ap));
        TRY(ts_attention_backward(&m->d3C, &m->dCatt, &a->ws[l]));
        TRY(ts_linear_backward(&m->dC, &g_qkvw, &g_qkvb, &m->d3C, &ln1, &w_qkv));
        TRY(tp_allreduce(m, &m->dC, "attention input gradient"));
        TRY(ts_layernorm_backward(&a->dres, &g_ln1w, &g_ln1b, &m->dC, &res, &w_ln1, &m1, &r1));
        signal_ready(m, ts_gpt_find(m, TS_GPT_QKVW, g)->offset);
    }
    if (m->lay.embedding) {
        ts_tensor dwte = P(m, TS_GPT_WTE, -1, 1), dwpe = P(m, TS_GPT_WPE, -1, 1);
        TRY(ts_embedding_backward_shard(&dwte, &dwpe, &a->dres, &a->tokens, m->vocab_start));
        signal_ready(m, 0);
    }
    return TS_OK;
}

ts_status ts_gpt_stage_backward(ts_gpt *m, ts_gpt_acts *a)
{
    if (!a->B) return ts_error(TS_ERR_INVALID_ARG, "backward: no forward pass to differentiate");
    TRY(scratch_for(m, a));
    if (!m->lay.head) return backward_blocks(m, a, NULL);
    if (!a->dlogits_ready)
        return ts_error(TS_ERR_INVALID_ARG, "backward: the forward pass computed no loss gradient");
    a->dlogits_ready = 0;
    ts_tensor wte = P(m, TS_GPT_WTE, -1, 0), dwte = P(m, TS_GPT_WTE, -1, 1);
    /* output head, tied to wte: dlnf = dlogits @ wte; dwte += dlogits^T @ lnf */
    TRY(ts_linear_backward(&m->dC, &dwte, NULL, &a->logits, &a->lnf, &wte));
    TRY(tp_allreduce(m, &m->dC, "head input gradient"));
    return backward_blocks(m, a, &m->dC);
}

/* ---- one process, one micro-batch ---- */

static ts_status ensure_acts(ts_gpt *m, int64_t B, int64_t T)
{
    /* the same shape, and the storage the device's matmul dtype asks for
     * (it may have changed since: bf16 activations, or fp32 again) */
    ts_dtype lowp = act_dtype(m);
    if (m->acts.B == B && m->acts.T == T && m->acts.fch.dtype == lowp) return TS_OK;
    ts_gpt_acts_free(&m->acts);
    return ts_gpt_acts_alloc(m, &m->acts, B, T);
}

static ts_status whole_model(const ts_gpt *m, const char *what)
{
    if (!m->lay.embedding || !m->lay.head || m->lay.layer_begin != 0 || m->lay.layer_end != m->cfg.n_layer)
        return ts_error(TS_ERR_INVALID_ARG, "%s needs the whole model on this process", what);
    return TS_OK;
}

ts_status ts_gpt_forward(ts_gpt *m, const int32_t *tokens, const int32_t *targets, int64_t B,
                         int64_t T, float *loss)
{
    TRY(whole_model(m, "ts_gpt_forward"));
    TRY(ensure_acts(m, B, T));
    double sum = 0;
    int64_t valid = 0;
    TRY(ts_gpt_stage_forward(m, &m->acts, tokens, targets, 0.0f, loss ? &sum : NULL, &valid));
    if (loss && targets) *loss = valid ? (float)(sum / (double)valid) : 0.0f;
    return TS_OK;
}

ts_status ts_gpt_forward_backward(ts_gpt *m, const int32_t *tokens, const int32_t *targets,
                                  int64_t B, int64_t T, float loss_scale, float *loss)
{
    TRY(whole_model(m, "ts_gpt_forward_backward"));
    if (!targets) return ts_error(TS_ERR_INVALID_ARG, "forward_backward: targets are required");
    TRY(ensure_acts(m, B, T));
    int64_t valid = 0;
    for (int64_t i = 0; i < B * T; i++) valid += targets[i] >= 0 && targets[i] < m->cfg.vocab_size;
    if (!valid) return ts_error(TS_ERR_INVALID_ARG, "forward_backward: no target is in the vocabulary");
    double sum = 0;
    TRY(ts_gpt_stage_forward(m, &m->acts, tokens, targets, loss_scale / (float)valid, &sum, NULL));
    if (loss) *loss = (float)(sum / (double)valid);
    return ts_gpt_stage_backward(m, &m->acts);
}

ts_status ts_gpt_backward(ts_gpt *m, float loss_scale)
{
    ts_gpt_acts *a = &m->acts;
    if (!a->B) return ts_error(TS_ERR_INVALID_ARG, "backward: no forward pass to differentiate");
    if (!a->valid_targets) return ts_error(TS_ERR_INVALID_ARG, "backward: the last forward had no targets");
    if (!a->dlogits_ready) {
        float scale = loss_scale / (float)a->valid_targets;
        TRY(ts_cross_entropy(NULL, NULL, &a->logits, &a->logits, &a->targets, scale));
        a->dlogits_ready = 1;
    }
    return ts_gpt_stage_backward(m, a);
}

ts_status ts_gpt_read_logits(ts_gpt *m, int64_t b, int64_t t, float *out)
{
    ts_gpt_acts *a = &m->acts;
    TRY(whole_model(m, "ts_gpt_read_logits"));
    if (!a->B || b < 0 || b >= a->B || t < 0 || t >= a->T)
        return ts_error(TS_ERR_INVALID_ARG, "read_logits: position (%lld, %lld) outside the last forward",
                        (long long)b, (long long)t);
    int64_t V = m->cfg.vocab_size;
    ts_tensor row;
    TRY(ts_tensor_view(&row, &a->logits, (b * a->T + t) * V, TS_SHAPE(V)));
    TRY(ts_tensor_read(&row, out, ts_tensor_nbytes(&row)));
    if (row.dtype == TS_BF16) { /* widened in place, from the end: element j's bytes hold bf16 values >= j, read */
        for (int64_t j = V - 1; j >= 0; j--) {
            uint16_t h;
            memcpy(&h, (const char *)out + 2 * j, sizeof h);
            uint32_t u = (uint32_t)h << 16;
            memcpy(&out[j], &u, sizeof u);
        }
    }
    return TS_OK;
}

/* ---- features: the trunk without the output head ---- */

ts_status ts_gpt_features_forward(ts_gpt *m, ts_gpt_acts *a, const int32_t *tokens, const int32_t *lengths,
                                  int bidirectional)
{
    TRY(whole_model(m, "ts_gpt_features_forward"));
    if (m->lay.tp_size != 1) return ts_error(TS_ERR_INVALID_ARG, "ts_gpt_features_forward needs an unsharded model");
    if (!a->B) return ts_error(TS_ERR_INVALID_ARG, "ts_gpt_features_forward: no activations allocated");
    if (bidirectional && !lengths)
        return ts_error(TS_ERR_INVALID_ARG, "bidirectional attention needs the sequence lengths");
    for (int64_t b = 0; lengths && b < a->B; b++)
        if (lengths[b] < 1 || lengths[b] > a->T)
            return ts_error(TS_ERR_INVALID_ARG, "features: sequence %lld has length %d, outside 1..%lld", (long long)b,
                            lengths[b], (long long)a->T);
    /* causal attention needs no mask: no real position sees a later one */
    if (bidirectional) TRY(ts_tensor_write(&a->key_len, lengths, (size_t)a->B * sizeof *lengths));
    set_attention_mask(m, a, bidirectional ? &a->key_len : NULL, bidirectional);
    return forward_blocks(m, a, tokens);
}

ts_status ts_gpt_features_backward(ts_gpt *m, ts_gpt_acts *a, const ts_tensor *dfeatures)
{
    TRY(whole_model(m, "ts_gpt_features_backward"));
    if (!a->B) return ts_error(TS_ERR_INVALID_ARG, "backward: no forward pass to differentiate");
    if (ts_tensor_numel(dfeatures) != a->B * a->T * m->cfg.n_embd)
        return ts_error(TS_ERR_SHAPE, "features backward: the gradient has %lld elements, the features %lld",
                        (long long)ts_tensor_numel(dfeatures), (long long)(a->B * a->T * m->cfg.n_embd));
    TRY(scratch_for(m, a));
    return backward_blocks(m, a, dfeatures);
}

/* ---- files ---- */

void ts_gpt_config_json(const ts_gpt_config *c, char *buf, size_t n)
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
    const char *prefix = "";
    return ts_gpt_save_blobs(m, &blob, &prefix, 1, path, extra_meta);
}

ts_status ts_gpt_save_blobs(const ts_gpt *m, const ts_tensor *const *blobs,
                            const char *const *prefixes, int n, const char *path,
                            const char *const *extra_meta)
{
    TRY(whole_model(m, "ts_gpt_save"));
    if (m->lay.tp_size != 1) return ts_error(TS_ERR_INVALID_ARG, "ts_gpt_save needs an unsharded model");
    for (int b = 0; b < n; b++)
        if (ts_tensor_numel(blobs[b]) != m->num_params)
            return ts_error(TS_ERR_SHAPE, "saving a blob of %lld elements for a model of %lld parameters",
                            (long long)ts_tensor_numel(blobs[b]), (long long)m->num_params);
    ts_st_writer *w;
    TRY(ts_st_writer_new(&w));
    char cfg[512];
    ts_gpt_config_json(&m->cfg, cfg, sizeof cfg);
    ts_status st = ts_st_writer_meta(w, "format", "tessera-gpt");
    if (!st) st = ts_st_writer_meta(w, "config", cfg);
    if (!st) st = ts_st_writer_meta(w, "linear_layout", "out,in");
    for (int i = 0; !st && extra_meta && extra_meta[i]; i += 2) st = ts_st_writer_meta(w, extra_meta[i], extra_meta[i + 1]);
    ts_tensor *views = calloc((size_t)(m->ntensors * n), sizeof *views);
    if (!views && !st) st = ts_error(TS_ERR_OOM, "no memory");
    for (int b = 0; b < n && !st; b++) st = ts_gpt_writer_add(m, w, blobs[b], prefixes[b], views + b * m->ntensors);
    if (!st) st = ts_st_writer_write(w, path);
    free(views);
    ts_st_writer_free(w);
    return st;
}

ts_status ts_gpt_writer_add(const ts_gpt *m, ts_st_writer *w, const ts_tensor *blob, const char *prefix,
                           ts_tensor *views)
{
    ts_status st = TS_OK;
    for (int i = 0; i < m->ntensors && !st; i++) {
        const ts_gpt_tensor *t = &m->tensors[i];
        char base[96], name[128];
        ts_gpt_tensor_name(t->kind, t->layer, base, sizeof base);
        snprintf(name, sizeof name, "%s%s", prefix, base);
        st = ts_tensor_view(&views[i], blob, t->offset, TS_SHAPE(t->rows * t->cols));
        if (!st) {
            if (t->cols > 1) st = ts_st_writer_add(w, name, &views[i], TS_SHAPE(t->rows, t->cols));
            else st = ts_st_writer_add(w, name, &views[i], TS_SHAPE(t->rows));
        }
    }
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

ts_status ts_gpt_load_blob(const ts_gpt *m, ts_tensor *blob, const char *path, const char *prefix)
{
    ts_safetensors f;
    TRY(ts_safetensors_open(path, &f));
    int64_t maxl = 0;
    for (int i = 0; i < m->ntensors; i++)
        if (m->tensors[i].rows * m->tensors[i].cols > maxl) maxl = m->tensors[i].rows * m->tensors[i].cols;
    float *local = malloc((size_t)(maxl ? maxl : 1) * sizeof *local);
    ts_status st = local ? TS_OK : ts_error(TS_ERR_OOM, "no memory");
    for (int i = 0; i < m->ntensors && !st; i++) {
        const ts_gpt_tensor *t = &m->tensors[i];
        char base[96], name[128];
        ts_gpt_tensor_name(t->kind, t->layer, base, sizeof base);
        snprintf(name, sizeof name, "%s%s", prefix, base);
        const ts_st_entry *e = ts_safetensors_find(&f, name);
        int64_t want1 = t->gcols > 1 ? t->gcols : 0;
        if (!e) st = ts_error(TS_ERR_FORMAT, "%s: no tensor named '%s'", path, name);
        else if (e->dtype != TS_F32 || e->ndim != (want1 ? 2 : 1) || e->shape[0] != t->grows ||
                 (want1 && e->shape[1] != t->gcols))
            st = ts_error(TS_ERR_SHAPE, "%s: tensor '%s' is [%lld%s%lld], expected [%lld%s%lld] f32", path, name,
                          (long long)e->shape[0], e->ndim > 1 ? ", " : "", e->ndim > 1 ? (long long)e->shape[1] : 0LL,
                          (long long)t->grows, want1 ? ", " : "", (long long)want1);
        if (st) break;
        ts_gpt_slice_from_global(t, (const float *)ts_safetensors_data(&f, e), local);
        ts_tensor v;
        st = ts_tensor_view(&v, blob, t->offset, TS_SHAPE(t->rows * t->cols));
        if (!st) st = ts_tensor_write(&v, local, (size_t)(t->rows * t->cols) * sizeof *local);
    }
    free(local);
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
    return ts_gpt_load_blob(m, &m->params, path, "");
}
