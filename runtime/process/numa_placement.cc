// Thread and host-memory placement near the device; see numa_placement.h.
#include "runtime/process/numa_placement.h"

#include <cstdio>

#include "absl/strings/str_format.h"

namespace uhmm {

void NumaPlacement::PlaceNear(bool enabled, std::string_view backend, const std::string& bus,
                              const std::vector<pthread_t>& threads) {
  if (!enabled) {
    placement_ = "off (UHMM_PLACEMENT=none)";
    return;
  }
  if (bus.empty()) {
    placement_ = absl::StrFormat("nothing bound: the %s backend's device has no PCI address", backend);
    return;
  }
  absl::StatusOr<const Topology*> topo = Topology::Get();
  absl::StatusOr<Topology::Locality> near =
      topo.ok() ? (*topo)->NearPci(bus) : absl::StatusOr<Topology::Locality>(topo.status());
  if (!near.ok()) {
    placement_ = absl::StrFormat("nothing bound: %s", near.status().message());
    return;
  }
  if (near->whole_machine) {
    placement_ = absl::StrFormat("nothing bound: every CPU is as close to %s as any other", bus);
    return;
  }
  for (pthread_t t : threads) {
    if (absl::Status s = (*topo)->BindThread(t, near->cpus); !s.ok()) {
      placement_ = absl::StrFormat("nothing bound: %s", s.message());
      return;
    }
  }
  topology_ = *topo;
  place_nodes_ = near->nodes;
  placement_ =
      absl::StrFormat("fault and migration threads on CPUs %s, runtime views on NUMA node(s) %s, near %s",
                      near->cpus, near->nodes, bus);
}

void NumaPlacement::PlaceHostMemory(void* view, size_t bytes) const {
  if (place_nodes_.empty()) return;
  if (absl::Status s = topology_->BindMemory(view, bytes, place_nodes_); !s.ok()) {
    std::fprintf(stderr, "uhmm: warning: %s; this range's host memory is placed by the kernel\n",
                 std::string(s.message()).c_str());
  }
}

}  // namespace uhmm
