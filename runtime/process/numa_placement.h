// NumaPlacement (UHMM_PLACEMENT): binds the fault and migration threads to the CPUs near device 0
// and places each range's host memory on the NUMA node(s) near it, through hwloc (topology.h).
// Failures only leave things unbound, and say so in describe().
#ifndef UHMM_RUNTIME_PROCESS_NUMA_PLACEMENT_H_
#define UHMM_RUNTIME_PROCESS_NUMA_PLACEMENT_H_

#include <pthread.h>

#include <string>
#include <vector>

#include "runtime/process/topology.h"

namespace uhmm {

class NumaPlacement {
 public:
  // `enabled`: Config::placement. `pci_bus_id`: device 0's ("" when it has none).
  // `threads`: the threads to bind.
  void PlaceNear(bool enabled, std::string_view backend, const std::string& pci_bus_id,
                 const std::vector<pthread_t>& threads);
  // Binds a new runtime view to the NUMA node(s) near device 0, before its pages exist. No-op
  // without placement.
  void PlaceHostMemory(void* view, size_t bytes) const;
  // What placement did, for UHMM_STATS and tests: "fault and migration threads on CPUs ..." or why
  // nothing was bound.
  const std::string& describe() const { return placement_; }

 private:
  const Topology* topology_ = nullptr;  // set when placement binds something
  std::string place_nodes_;             // NUMA nodes for runtime views ("" = leave to the kernel)
  std::string placement_;
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_PROCESS_NUMA_PLACEMENT_H_
