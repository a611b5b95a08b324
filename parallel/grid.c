/* The process grid: tensor x data x pipeline parallel groups. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "comm_internal.h"

ts_status ts_grid_create(ts_grid *g, int tp, int pp)
{
    memset(g, 0, sizeof *g);
    g->world = ts_comm_world();
    g->size = ts_comm_size(g->world);
    g->rank = ts_comm_rank(g->world);
    /* every rank must ask for the same grid before any group is formed */
    int mine[2] = {tp, pp}, *all = calloc((size_t)g->size * 2, sizeof *all);
    if (!all) return ts_error(TS_ERR_OOM, "no memory");
    ts_status ast = ts_comm_allgather(g->world, mine, all, sizeof mine, "grid check");
    for (int r = 1; r < g->size && !ast; r++)
        if (all[2 * r] != all[0] || all[2 * r + 1] != all[1])
            ast = ts_error(TS_ERR_INVALID_ARG,
                           "settings differ between ranks: rank 0 asks for tensor-parallel %d x pipeline %d, "
                           "rank %d for %d x %d",
                           all[0], all[1], r, all[2 * r], all[2 * r + 1]);
    free(all);
    if (ast) return ast;
    if (tp < 1 || pp < 1 || g->size % (tp * pp) != 0)
        return ts_error(TS_ERR_INVALID_ARG,
                        "%d processes cannot form a grid of tensor-parallel %d x pipeline %d (the "
                        "number of processes must be a multiple of tp * pp)",
                        g->size, tp, pp);
    g->tp = tp, g->pp = pp, g->dp = g->size / (tp * pp);
    g->tp_rank = g->rank % tp;
    g->dp_rank = (g->rank / tp) % g->dp;
    g->pp_rank = g->rank / (tp * g->dp);
    ts_comm *node = ts_comm_node();
    g->local_rank = ts_comm_rank(node), g->local_size = ts_comm_size(node);
    /* nodes, named by the world rank of their first process; a
     * tensor-parallel group exchanges activations every layer, so it must
     * not cross a node (the same verdict on every rank) */
    int lead = ts_comm_world_rank(node, 0), *leads = calloc((size_t)g->size, sizeof *leads);
    if (!leads) return ts_error(TS_ERR_OOM, "no memory");
    ast = ts_comm_allgather(g->world, &lead, leads, sizeof lead, "grid nodes");
    for (int r = 0; r < g->size && !ast; r++) {
        if (leads[r] == r) {
            if (r < lead) g->node++;
            g->nodes++;
        }
        int first = r / tp * tp;
        if (!ast && leads[r] != leads[first]) {
            int per = 0;
            for (int q = 0; q < g->size; q++) per += leads[q] == leads[first];
            ast = ts_error(TS_ERR_INVALID_ARG,
                           "--tp %d: the tensor-parallel group of world ranks %d..%d would span nodes (rank %d is "
                           "on node %s, rank %d on node %s); tensor-parallel groups are kept inside one node: give "
                           "every node a multiple of %d consecutive ranks (node %s holds %d), e.g. mpirun --map-by "
                           "ppr:%d:node",
                           tp, first, first + tp - 1, first, ts_comm_host(first), r, ts_comm_host(r), tp,
                           ts_comm_host(first), per, tp);
        }
    }
    free(leads);
    if (ast) return ast;
    ts_status st = ts_comm_split(g->world, g->pp_rank * g->dp + g->dp_rank, g->tp_rank, "tp", &g->tp_comm);
    if (!st) st = ts_comm_split(g->world, g->pp_rank * tp + g->tp_rank, g->dp_rank, "dp", &g->dp_comm);
    if (!st) st = ts_comm_split(g->world, g->dp_rank * tp + g->tp_rank, g->pp_rank, "pp", &g->pp_comm);
    if (!st) st = ts_comm_split(g->world, g->dp_rank, g->pp_rank * tp + g->tp_rank, "mp", &g->mp_comm);
    if (!st && pp > 1) {
        /* first and last stage of each pipeline: everyone calls the split */
        ts_comm *e = NULL;
        int member = g->pp_rank == 0 || g->pp_rank == pp - 1;
        st = ts_comm_split(g->world, member ? g->dp_rank * tp + g->tp_rank : -1, g->pp_rank, "embed", &e);
        g->embed_comm = member ? e : NULL;
        if (!member && e) ts_comm_free(e);
    }
    if (st) ts_grid_free(g);
    return st;
}

void ts_grid_free(ts_grid *g)
{
    ts_comm_free(g->tp_comm);
    ts_comm_free(g->dp_comm);
    ts_comm_free(g->pp_comm);
    ts_comm_free(g->mp_comm);
    ts_comm_free(g->embed_comm);
    memset(g, 0, sizeof *g);
}

ts_status ts_grid_layout(const ts_grid *g, int64_t n_layer, int *tp_size, int *tp_rank,
                         int64_t *layer_begin, int64_t *layer_end, int *embedding, int *head)
{
    if (g->pp > n_layer)
        return ts_error(TS_ERR_INVALID_ARG, "%d pipeline stages need at least %d layers, the model has %lld",
                        g->pp, g->pp, (long long)n_layer);
    *tp_size = g->tp, *tp_rank = g->tp_rank;
    *layer_begin = n_layer * g->pp_rank / g->pp;
    *layer_end = n_layer * (g->pp_rank + 1) / g->pp;
    *embedding = g->pp_rank == 0;
    *head = g->pp_rank == g->pp - 1;
    return TS_OK;
}

ts_status ts_grid_check_settings(const ts_grid *g, const char *settings)
{
    enum { KEEP = 40960 };
    size_t len = strlen(settings);
    if (len >= KEEP) return ts_error(TS_ERR_INVALID_ARG, "settings of %zu bytes are too long to compare", len);
    char *all = calloc((size_t)g->size, KEEP);
    char *mine = calloc(1, KEEP);
    if (!all || !mine) {
        free(all), free(mine);
        return ts_error(TS_ERR_OOM, "no memory");
    }
    memcpy(mine, settings, len);
    ts_status st = ts_comm_allgather(g->world, mine, all, KEEP, "settings check");
    free(mine);
    if (st) {
        free(all);
        return st;
    }
    /* name every setting in which a rank departs from rank 0, with both
     * values (JSON settings), or show where its text departs */
    char ranks[512] = "", msg[4096] = "";
    size_t kr = 0, k = 0;
    for (int r = 1; r < g->size; r++) {
        const char *other = all + (size_t)r * KEEP;
        if (!strcmp(all, other)) continue;
        if (kr < sizeof ranks) kr += (size_t)snprintf(ranks + kr, sizeof ranks - kr, "%s%d", kr ? ", " : "", r);
        char diff[2048];
        if (ts_json_object_diff(all, other, NULL, diff, sizeof diff) <= 0) {
            size_t at = 0;
            while (all[at] && all[at] == other[at]) at++;
            size_t from = at > 40 ? at - 40 : 0;
            snprintf(diff, sizeof diff, "rank 0: ...%.80s... rank %d: ...%.80s...", all + from, r, other + from);
        }
        if (k < sizeof msg) k += (size_t)snprintf(msg + k, sizeof msg - k, "; rank %d: %s", r, diff);
    }
    if (kr)
        st = ts_error(TS_ERR_INVALID_ARG, "settings differ between ranks: ranks %s disagree with rank 0 (values as rank "
                      "0's vs theirs)%s", ranks, msg);
    free(all);
    return st;
}
