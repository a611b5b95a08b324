/* Device locality through hwloc. The topology is loaded once, with PCI
 * devices kept, so a GPU's PCI bus id leads to the cores and NUMA nodes of
 * its package. */
#include "tessera/placement.h"
#include "internal.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>


#ifdef TS_HAVE_HWLOC
#include <hwloc.h>

static hwloc_topology_t g_topo;
static int g_topo_ok;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void load_topology(void)
{
    if (hwloc_topology_init(&g_topo) != 0) return;
    hwloc_topology_set_io_types_filter(g_topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    /* tessera reads its OpenCL devices' PCI location itself; hwloc's own
     * OpenCL component would load every ICD a second time and probe each
     * device with queries OpenCL 1.2 devices reject (oclgrind reports them). */
    hwloc_topology_set_components(g_topo, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, "opencl");
    if (hwloc_topology_load(g_topo) != 0) {
        hwloc_topology_destroy(g_topo);
        return;
    }
    g_topo_ok = 1;
}

ts_status ts_device_locality(const ts_device *device, ts_locality *out)
{
    memset(out, 0, sizeof *out);
    const ts_device_info *info = ts_device_get_info(device);
    if (!info) return ts_error(TS_ERR_DEVICE, "ts_device_locality: device is NULL");
    pthread_once(&g_once, load_topology);
    if (!g_topo_ok) return TS_OK;
    hwloc_const_cpuset_t cpuset = hwloc_topology_get_topology_cpuset(g_topo);
    hwloc_const_nodeset_t nodeset = hwloc_topology_get_topology_nodeset(g_topo);
    snprintf(out->how, sizeof out->how, "whole machine");
    if (info->pci_bus >= 0) {
        hwloc_obj_t pci = hwloc_get_pcidev_by_busid(g_topo, (unsigned)info->pci_domain,
                                                    (unsigned)info->pci_bus,
                                                    (unsigned)info->pci_device,
                                                    (unsigned)info->pci_function);
        hwloc_obj_t anc = pci ? hwloc_get_non_io_ancestor_obj(g_topo, pci) : NULL;
        if (anc && anc->cpuset) {
            cpuset = anc->cpuset;
            if (anc->nodeset) nodeset = anc->nodeset;
            snprintf(out->how, sizeof out->how, "PCI %04x:%02x:%02x.%x", info->pci_domain,
                     info->pci_bus, info->pci_device, info->pci_function);
        } else {
            snprintf(out->how, sizeof out->how, "PCI %04x:%02x:%02x.%x not in topology",
                     info->pci_domain, info->pci_bus, info->pci_device, info->pci_function);
        }
    }
    hwloc_bitmap_list_snprintf(out->cpus, sizeof out->cpus, cpuset);
    hwloc_bitmap_list_snprintf(out->numa_nodes, sizeof out->numa_nodes, nodeset);
    out->cores = hwloc_get_nbobjs_inside_cpuset_by_type(g_topo, cpuset, HWLOC_OBJ_CORE);
    out->pus = hwloc_get_nbobjs_inside_cpuset_by_type(g_topo, cpuset, HWLOC_OBJ_PU);
    out->known = 1;
    return TS_OK;
}

/* Cores [first, first + count) inside set, as a cpuset. */
static hwloc_bitmap_t cores_in(hwloc_const_cpuset_t set, int first, int count)
{
    hwloc_bitmap_t out = hwloc_bitmap_alloc();
    for (int i = 0; i < count && out; i++) {
        hwloc_obj_t core = hwloc_get_obj_inside_cpuset_by_type(g_topo, set, HWLOC_OBJ_CORE, (unsigned)(first + i));
        if (core && core->cpuset) hwloc_bitmap_or(out, out, core->cpuset);
    }
    return out;
}

ts_status ts_placement_bind(const ts_device *device, int share_rank, int share_count, ts_binding *out)
{
    memset(out, 0, sizeof *out);
    ts_locality loc;
    TRY(ts_device_locality(device, &loc));
    if (!loc.known) {
        snprintf(out->report, sizeof out->report, "not bound: hwloc could not read the topology");
        return TS_OK;
    }
    hwloc_bitmap_t near = hwloc_bitmap_alloc();
    hwloc_bitmap_list_sscanf(near, loc.cpus);
    int cores = hwloc_get_nbobjs_inside_cpuset_by_type(g_topo, near, HWLOC_OBJ_CORE);
    if (share_count < 1) share_count = 1;
    if (share_count > cores) {
        snprintf(out->report, sizeof out->report,
                 "not bound: %d processes share the %d cores near %s (more processes than cores)",
                 share_count, cores, loc.how);
        hwloc_bitmap_free(near);
        return TS_OK;
    }
    int first = share_rank * cores / share_count, count = (share_rank + 1) * cores / share_count - first;
    hwloc_bitmap_t set = cores_in(near, first, count);
    hwloc_bitmap_t nodes = hwloc_bitmap_alloc();
    hwloc_cpuset_to_nodeset(g_topo, set, nodes);
    char pus[128], numa[64];
    hwloc_bitmap_list_snprintf(pus, sizeof pus, set);
    hwloc_bitmap_list_snprintf(numa, sizeof numa, nodes);
    ts_status st = TS_OK;
    if (hwloc_set_cpubind(g_topo, set, HWLOC_CPUBIND_PROCESS) != 0) {
        snprintf(out->report, sizeof out->report, "not bound: binding to PUs %s failed", pus);
    } else {
        /* Linux memory policies are per thread and inherited: bind this
         * thread before the compute threads start (or first touch) */
        int mem = hwloc_set_membind(g_topo, nodes, HWLOC_MEMBIND_BIND, HWLOC_MEMBIND_BYNODESET) == 0;
        out->bound = 1;
        out->cores = count;
        snprintf(out->report, sizeof out->report, "bound to %d core%s (PUs %s), memory %s NUMA node %s, near %s",
                 count, count == 1 ? "" : "s", pus, mem ? "on" : "unbound (refused), near", numa, loc.how);
    }
    hwloc_bitmap_free(set), hwloc_bitmap_free(nodes), hwloc_bitmap_free(near);
    return st;
}

void ts_placement_current(char *buf, size_t n)
{
    pthread_once(&g_once, load_topology);
    if (!g_topo_ok) {
        snprintf(buf, n, "unknown (hwloc could not read the topology)");
        return;
    }
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    char pus[128];
    if (hwloc_get_cpubind(g_topo, set, HWLOC_CPUBIND_PROCESS) != 0) {
        snprintf(buf, n, "unknown");
    } else {
        hwloc_bitmap_list_snprintf(pus, sizeof pus, set);
        int all = hwloc_bitmap_isincluded(hwloc_topology_get_topology_cpuset(g_topo), set);
        snprintf(buf, n, "PUs %s%s", pus, all ? " (not bound: the whole machine)" : "");
    }
    hwloc_bitmap_free(set);
}

#else

ts_status ts_placement_bind(const ts_device *device, int share_rank, int share_count, ts_binding *out)
{
    (void)device, (void)share_rank, (void)share_count;
    memset(out, 0, sizeof *out);
    snprintf(out->report, sizeof out->report, "not bound: built without hwloc");
    return TS_OK;
}

void ts_placement_current(char *buf, size_t n) { snprintf(buf, n, "unknown (built without hwloc)"); }

ts_status ts_device_locality(const ts_device *device, ts_locality *out)
{
    memset(out, 0, sizeof *out);
    if (!device) return ts_error(TS_ERR_DEVICE, "ts_device_locality: device is NULL");
    snprintf(out->how, sizeof out->how, "built without hwloc");
    return TS_OK;
}

#endif
