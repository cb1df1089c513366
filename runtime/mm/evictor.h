// Evictor: device pages for migrations to a device, and eviction (nvidia-uvm's uvm_pmm_gpu eviction
// path). When a pool is full it migrates the least recently used chunk's pages back to RAM; pages
// the requesting migration itself placed are protected (ProtectFromEviction).
#ifndef UHMM_RUNTIME_MM_EVICTOR_H_
#define UHMM_RUNTIME_MM_EVICTOR_H_

#include <cstddef>
#include <cstdint>
#include <utility>

#include "absl/status/statusor.h"
#include "runtime/mm/managed_range.h"
#include "runtime/mm/mm.h"
#include "uhmm/pagemap.h"

namespace uhmm {

struct DeviceState;

// Marks [start, end) of `range` as the request the calling thread migrates to `device`, for its
// lifetime: eviction done on this thread leaves those pages alone (whole blocks, where the range or
// the device moves whole blocks). A scope inside another keeps the outer one.
class ProtectFromEviction {
 public:
  ProtectFromEviction(const ManagedRange& range, const Device& device, uintptr_t start, uintptr_t end);
  ~ProtectFromEviction();
  ProtectFromEviction(const ProtectFromEviction&) = delete;
  ProtectFromEviction& operator=(const ProtectFromEviction&) = delete;
  // The calling thread's protected request ({0, 0}: none).
  static std::pair<uintptr_t, uintptr_t> Current();

 private:
  const std::pair<uintptr_t, uintptr_t> saved_;
  const bool outer_;
};

class Evictor {
 public:
  explicit Evictor(Mm& mm) : mm_(mm) {}

  // A free page of `ds`'s pool for managed address `addr` (alloc_device_page), evicting least
  // recently used chunks when the pool is full; waits up to 2 s for pages that other migrations
  // hold. RESOURCE_EXHAUSTED when nothing can be evicted.
  absl::StatusOr<Page*> AllocDevicePage(DeviceState& ds, uintptr_t addr);
  // uhmm_evict_device: empties the device (its gate closed meanwhile) and releases its chunks.
  absl::Status EvictDevice(DeviceState& ds);
  // Drops the device copies of `owner`'s duplicates in [start, end) of `range` (read duplication):
  // the host holds the data. Returns how many pages that freed.
  size_t DropDuplicates(ManagedRange& range, uintptr_t start, uintptr_t end, const void* owner);

 private:
  // Migrates chunk `chunk`'s pages (outside the protected request) back to RAM; *freed counts them.
  // *held (optional): the chunk had pages outside the request and none moved (another migration
  // holds them).
  // Whether chunk `chunk` of `ds` backs a page whose advised PREFERRED_LOCATION is that device.
  bool PrefersDevice(DeviceState& ds, size_t chunk);
  absl::Status EvictChunk(DeviceState& ds, size_t chunk, size_t* freed, bool* held = nullptr);

  Mm& mm_;
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_MM_EVICTOR_H_
