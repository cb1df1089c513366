// LaunchCoherence: before a kernel runs on a device, every managed page must be resident there
// (transparent launches, uhmm_sync_for_device). Work is kept per block: a block whose pages became
// host-resident is queued (ManagedRange::MarkHostDirty, under its lock, the moment it happens) and
// its range listed in VaSpace; a sync pushes the queued blocks only, so its cost follows what the
// CPU brought home, not how much is managed, and a sync with nothing queued returns at once.
#ifndef UHMM_RUNTIME_LAUNCH_LAUNCH_COHERENCE_H_
#define UHMM_RUNTIME_LAUNCH_LAUNCH_COHERENCE_H_

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "runtime/base/sync.h"
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
  // Transparent launches: Sync, and on failure say once per change of the work list why the
  // kernel's data may be missing (a launch cannot be failed from the backend's callback).
  void BeforeLaunch(DeviceState& ds, void* queue);

 private:
  // Takes the work list and pushes it (under sync_mu_).
  absl::Status PushAll(DeviceState& ds) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sync_mu_);
  // Pushes the queued blocks `blocks` of `range` to `ds`; requeues any it could not settle.
  absl::Status PushBlocks(ManagedRange& range, std::vector<uint32_t> blocks, DeviceState& ds);

  Mm& mm_;
  // A sync that finds the work list empty must still wait for one that took work off it and is
  // pushing: `pushing_` says one is, and sync_mu_ (held across the pushes) is what to wait on.
  Mutex sync_mu_{LockRank::kLaunchSync};
  std::atomic<bool> pushing_{false};
  std::atomic<uint64_t> error_generation_{UINT64_MAX};  // work list generation last reported
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_LAUNCH_LAUNCH_COHERENCE_H_
