// UffdEvents: what the application does to managed memory besides loads and stores, as userfaultfd
// reports it: discards (REMOVE: madvise MADV_DONTNEED / MADV_REMOVE), munmap (UNMAP) and mremap
// (REMAP). An application discard is applied with the rules of docs/SEMANTICS.md ("munmap, madvise
// and mremap"); the runtime's own zaps are filtered out before (zap_tracker.h).
#ifndef UHMM_RUNTIME_FAULT_UFFD_EVENTS_H_
#define UHMM_RUNTIME_FAULT_UFFD_EVENTS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "runtime/mm/managed_range.h"
#include "runtime/mm/mm.h"

namespace uhmm {

class UffdEvents {
 public:
  explicit UffdEvents(Mm& mm) : mm_(mm) {}

  // Service threads, for each event read.
  void OnRemove(uintptr_t start, uintptr_t end);
  void OnUnmap(uintptr_t start, uintptr_t end);
  void OnRemap(uintptr_t from, uintptr_t to, size_t len);

  // Applies an application discard to the page at `addr`, which no migration holds (or whose
  // migration is finishing: migrate_vma_finalize): it ends zero, on the host (a hugetlb block stays
  // where it is whole). Device pages to put go to `release`.
  void ApplyDiscard(ManagedRange& range, VaBlock& blk, uintptr_t addr, std::vector<Page*>* release)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu);

 private:
  // Applies an application discard of [start, end), inside one block.
  void DiscardInBlock(ManagedRange& range, uintptr_t start, uintptr_t end);
  // Makes [start, end) of the range's shadow read as zero. Caller holds the block lock (or the
  // pages are otherwise out of reach of migrations) and no CPU mapping of them exists.
  void ZeroShadow(ManagedRange& range, uintptr_t start, uintptr_t end);
  // Zeroes [start, end) of a device-resident block on its device (a partial discard of a hugetlb
  // block, which stays on the device whole).
  absl::Status ZeroOnDevice(ManagedRange& range, VaBlock& blk, uintptr_t start, uintptr_t end)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu);

  Mm& mm_;
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_FAULT_UFFD_EVENTS_H_
