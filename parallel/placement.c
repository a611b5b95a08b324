/* Device locality through hwloc. The topology is loaded once, with PCI
 * devices kept, so a GPU's PCI bus id leads to the cores and NUMA nodes of
 * its package. */
#include "tessera/placement.h"

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

#else

ts_status ts_device_locality(const ts_device *device, ts_locality *out)
{
    memset(out, 0, sizeof *out);
    if (!device) return ts_error(TS_ERR_DEVICE, "ts_device_locality: device is NULL");
    snprintf(out->how, sizeof out->how, "built without hwloc");
    return TS_OK;
}

#endif
