// Launch coherence; see launch_coherence.h.
#include "runtime/launch/launch_coherence.h"

#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"
#include "runtime/api/counters.h"
#include "runtime/fault/fault_service.h"
#include "runtime/mm/device_table.h"
#include "runtime/mm/migrator.h"
#include "runtime/mm/va_space.h"
#include "runtime/policy/readahead_fence.h"
#include "runtime/trace/tracer.h"

namespace uhmm {

absl::Status LaunchCoherence::Sync(DeviceState& ds, void* queue) {
  // First: read-ahead decided before this launch is dropped, and what is copying finishes (and
  // bumps the host epoch if it moved pages home), so the check below sees where pages are.
  mm_.readahead_fence->DeviceUseBegins(trace::Tracer::Now());
  mm_.faults->AwaitDiscards(0, UINTPTR_MAX);
  const uint64_t epoch = mm_.va_space->host_epoch();
  if (ds.synced_epoch.load(std::memory_order_acquire) == epoch) return absl::OkStatus();
  mm_.va_space->ReapZombies();
  std::vector<std::shared_ptr<ManagedRange>> ranges = mm_.va_space->All();
  size_t managed = 0;
  // With one pointer a partly used block still takes a whole chunk.
  const bool whole_blocks = ds.device->placement() == Placement::kSameAddress;
  for (auto& r : ranges) managed += whole_blocks ? r->num_blocks() * kBlockSize : r->size();
  // Every managed byte must fit at once: evicting one range for another would leave a kernel
  // that uses both reading unmapped device memory.
  const size_t pool_bytes = ds.pool->total_pages() * kPageSize;
  if (managed > pool_bytes) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "uhmm_sync_for_device: %u bytes are managed but device %d's pool holds %u; make only what "
        "each kernel uses resident with uhmm_prefetch_on_queue (and UHMM_TRANSPARENT_LAUNCH=0), or "
        "raise UHMM_DEVICE_POOL_BYTES",
        managed, ds.ordinal, pool_bytes));
  }
  mm_.counters->launch_syncs.fetch_add(1, std::memory_order_relaxed);
  (void)queue;  // the migration is complete when it returns: ordered before anything queued next
  for (auto& r : ranges) {
    RangeRef ref(r);
    if (!ref) continue;  // being freed
    for (auto [s, e] : BlocksWithHostPages(*ref)) {
      if (absl::Status st = mm_.migrator->ToDevice(*ref, s, e, ds, MigrateCause::kLaunch); !st.ok()) {
        return st;
      }
    }
  }
  ds.synced_epoch.store(epoch, std::memory_order_release);
  return absl::OkStatus();
}

PageRuns LaunchCoherence::BlocksWithHostPages(ManagedRange& range) {
  PageRuns runs;
  for (size_t b = 0; b < range.num_blocks(); ++b) {
    const uintptr_t start = range.block_start(b);
    const uintptr_t end = std::min(range.end(), start + kBlockSize);
    const size_t n = (end - start) / kPageSize;
    VaBlock& blk = range.block(b);
    bool work;
    {
      MutexLock lock(&blk.mu);
      // Pages that stay where they are: on a device, unmapped by the application, or poisoned.
      const PageMask settled = blk.device | blk.unmapped | blk.poisoned;
      work = blk.busy.any() || settled.count() < n;
    }
    if (!work) continue;
    if (!runs.empty() && runs.back().second == start) {
      runs.back().second = end;
    } else {
      runs.emplace_back(start, end);
    }
  }
  return runs;
}

void LaunchCoherence::BeforeLaunch(DeviceState& ds, void* queue) {
  absl::Status s = Sync(ds, queue);
  if (s.ok()) return;
  // Once per epoch: a launch cannot be failed from here, so say why its data may be missing.
  const uint64_t epoch = mm_.va_space->host_epoch();
  if (error_epoch_.exchange(epoch) != epoch) {
    std::fprintf(stderr, "uhmm: transparent launch on device %d: managed data is not all resident: %s\n",
                 ds.ordinal, std::string(s.message()).c_str());
  }
}

}  // namespace uhmm
