// LaunchCoherence: before a kernel runs on a device, every managed page must be resident there
// (transparent launches, uhmm_sync_for_device). A pass migrates each block that holds host-resident
// pages; a device whose last complete pass saw the current host epoch (VaSpace::host_epoch) has
// nothing to do.
#ifndef UHMM_RUNTIME_LAUNCH_LAUNCH_COHERENCE_H_
#define UHMM_RUNTIME_LAUNCH_LAUNCH_COHERENCE_H_

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "runtime/mm/managed_range.h"
#include "runtime/mm/mm.h"

namespace uhmm {

struct DeviceState;

class LaunchCoherence {
 public:
  explicit LaunchCoherence(Mm& mm) : mm_(mm) {}
  // Makes every managed page resident on `ds` before work queued next on `queue` (the migration is
  // complete when it returns). RESOURCE_EXHAUSTED when the managed bytes exceed the device's pool.
  absl::Status Sync(DeviceState& ds, void* queue);
  // Transparent launches: Sync, and on failure say once per host epoch why the kernel's data may
  // be missing (a launch cannot be failed from the backend's callback).
  void BeforeLaunch(DeviceState& ds, void* queue);

 private:
  // Runs of whole blocks of `range` that hold host-resident (or in-flight) pages.
  PageRuns BlocksWithHostPages(ManagedRange& range);

  Mm& mm_;
  std::atomic<uint64_t> error_epoch_{0};  // last epoch whose launch-sync error was printed
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_LAUNCH_LAUNCH_COHERENCE_H_
