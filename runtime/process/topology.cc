// Topology through hwloc; see topology.h.
#include "runtime/process/topology.h"

#include <hwloc.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"

namespace uhmm {
namespace {

// An hwloc bitmap parsed from list syntax, freed on scope exit.
struct Bitmap {
  hwloc_bitmap_t b = hwloc_bitmap_alloc();
  ~Bitmap() { hwloc_bitmap_free(b); }
  std::string List() const {
    char* s = nullptr;
    hwloc_bitmap_list_asprintf(&s, b);
    std::string out = s ? s : "";
    free(s);
    return out;
  }
};

}  // namespace

struct Topology::Impl {
  hwloc_topology_t topo = nullptr;
  ~Impl() {
    if (topo) hwloc_topology_destroy(topo);
  }
};

Topology::~Topology() = default;

absl::StatusOr<const Topology*> Topology::Get() {
  static const absl::StatusOr<const Topology*>* loaded = [] {
    absl::StatusOr<std::unique_ptr<Topology>> t = Load();
    return t.ok() ? new absl::StatusOr<const Topology*>(t->release())
                  : new absl::StatusOr<const Topology*>(t.status());
  }();
  return *loaded;
}

absl::StatusOr<std::unique_ptr<Topology>> Topology::Load() {
  std::unique_ptr<Topology> t(new Topology());
  t->impl_ = std::make_unique<Impl>();
  if (hwloc_topology_init(&t->impl_->topo) != 0) {
    return absl::InternalError(absl::StrFormat("uhmm: hwloc_topology_init: %s", strerror(errno)));
  }
  hwloc_topology_set_io_types_filter(t->impl_->topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
  if (hwloc_topology_load(t->impl_->topo) != 0) {
    return absl::InternalError(absl::StrFormat("uhmm: hwloc_topology_load: %s", strerror(errno)));
  }
  return t;
}

absl::StatusOr<Topology::Locality> Topology::NearPci(std::string_view bus_id) const {
  unsigned domain = 0, bus = 0, dev = 0, func = 0;
  const std::string id(bus_id);
  if (std::sscanf(id.c_str(), "%x:%x:%x.%x", &domain, &bus, &dev, &func) != 4) {
    return absl::InvalidArgumentError(absl::StrFormat("uhmm: '%s' is not a PCI address dddd:bb:dd.f", id));
  }
  hwloc_obj_t pci = hwloc_get_pcidev_by_busid(impl_->topo, domain, bus, dev, func);
  if (pci == nullptr) {
    return absl::NotFoundError(absl::StrFormat("uhmm: hwloc does not know PCI device %s", id));
  }
  hwloc_obj_t near = hwloc_get_non_io_ancestor_obj(impl_->topo, pci);
  if (near == nullptr || near->cpuset == nullptr) {
    return absl::NotFoundError(absl::StrFormat("uhmm: hwloc has no CPUs near PCI device %s", id));
  }
  Locality l;
  Bitmap cpus, nodes;
  hwloc_bitmap_copy(cpus.b, near->cpuset);
  hwloc_bitmap_copy(nodes.b, near->nodeset);
  l.cpus = cpus.List();
  l.nodes = nodes.List();
  l.whole_machine = hwloc_bitmap_isequal(near->cpuset, hwloc_topology_get_topology_cpuset(impl_->topo));
  return l;
}

absl::Status Topology::BindThread(pthread_t thread, const std::string& cpus) const {
  Bitmap set;
  if (hwloc_bitmap_list_sscanf(set.b, cpus.c_str()) != 0 || hwloc_bitmap_iszero(set.b)) {
    return absl::InvalidArgumentError(absl::StrFormat("uhmm: '%s' is not a CPU list", cpus));
  }
  if (hwloc_set_thread_cpubind(impl_->topo, thread, set.b, 0) != 0) {
    return absl::InternalError(
        absl::StrFormat("uhmm: binding a thread to CPUs %s: %s", cpus, strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status Topology::BindMemory(void* addr, size_t len, const std::string& nodes) const {
  Bitmap set;
  if (hwloc_bitmap_list_sscanf(set.b, nodes.c_str()) != 0 || hwloc_bitmap_iszero(set.b)) {
    return absl::InvalidArgumentError(absl::StrFormat("uhmm: '%s' is not a NUMA node list", nodes));
  }
  if (hwloc_set_area_membind(impl_->topo, addr, len, set.b, HWLOC_MEMBIND_BIND, HWLOC_MEMBIND_BYNODESET) !=
      0) {
    return absl::InternalError(
        absl::StrFormat("uhmm: binding %u bytes to NUMA node(s) %s: %s", len, nodes, strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace uhmm
