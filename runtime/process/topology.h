// Topology through hwloc: which CPUs and which NUMA node are close to a PCI device, and binding
// threads and host memory there. The fault path crosses the PCIe link twice per fault; fault
// threads and the pinned runtime views on the GPU's socket keep that off the inter-socket link.
#ifndef UHMM_RUNTIME_PROCESS_TOPOLOGY_H_
#define UHMM_RUNTIME_PROCESS_TOPOLOGY_H_

#include <pthread.h>

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace uhmm {

class Topology {
 public:
  // The machine's topology, PCI devices included: loaded once per process (tens of ms) and kept
  // for its lifetime, with hwloc's plugins (unloading them strands what libpciaccess allocated).
  static absl::StatusOr<const Topology*> Get();
  ~Topology();
  Topology(const Topology&) = delete;
  Topology& operator=(const Topology&) = delete;

  // The CPUs and NUMA nodes local to PCI device `bus_id` ("dddd:bb:dd.f"). NOT_FOUND when hwloc
  // does not know the device; the whole machine when it has no locality (one socket).
  struct Locality {
    std::string cpus;   // hwloc list syntax, e.g. "0-15"
    std::string nodes;  // NUMA node list, e.g. "0"
    bool whole_machine = false;
  };
  absl::StatusOr<Locality> NearPci(std::string_view bus_id) const;
  // Binds a thread to CPU list `cpus`; host memory [addr, addr+len) to NUMA node list `nodes`
  // (pages allocated later come from there).
  absl::Status BindThread(pthread_t thread, const std::string& cpus) const;
  absl::Status BindMemory(void* addr, size_t len, const std::string& nodes) const;

 private:
  Topology() = default;
  static absl::StatusOr<std::unique_ptr<Topology>> Load();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_PROCESS_TOPOLOGY_H_
