// VaSpace: the process's managed ranges (nvidia-uvm's uvm_va_space): the range map, creating and
// destroying ranges, forgetting addresses the application unmapped, and the list of ranges whose
// blocks gained host-resident pages, which launch coherence pushes.
//
// LOCKING: mu_ (rank kVaSpace, the outermost; docs/ARCHITECTURE.md "Lock order") guards the map and
// the zombie list; it is held briefly and never while waiting for anything. Block locks are taken
// after it, never before.
#ifndef UHMM_RUNTIME_MM_VA_SPACE_H_
#define UHMM_RUNTIME_MM_VA_SPACE_H_

#include <atomic>
#include <map>
#include <memory>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "runtime/base/sync.h"
#include "runtime/mm/managed_range.h"
#include "runtime/mm/mm.h"
#include "uhmm/uhmm.hpp"

namespace uhmm {

class VaSpace {
 public:
  explicit VaSpace(Mm& mm);

  // A new range of `size` bytes, registered with userfaultfd and published (uhmm_alloc). Picks
  // hugetlb backing by `backing` and Config::hugetlb.
  absl::StatusOr<void*> Create(size_t size, Backing backing);
  // Takes the range that starts at `ptr` out of the map (uhmm_free): NOT_FOUND or INVALID_ARGUMENT
  // (inside a range but not its start) with the message the API returns.
  absl::StatusOr<std::shared_ptr<ManagedRange>> TakeForFree(void* ptr);
  // Unregisters and unmaps the user view (skipping pages the application already unmapped) and
  // returns every device page. The range must be out of the map and torn down.
  void Destroy(ManagedRange& range, bool unmap_user_view);
  // Tears down the ranges the application munmapped entirely (never on a service thread).
  void ReapZombies();
  // Destroys every range (runtime teardown).
  void DestroyAll();

  RangeRef Lookup(uintptr_t addr);
  std::vector<std::shared_ptr<ManagedRange>> Overlapping(uintptr_t start, uintptr_t end);
  std::vector<std::shared_ptr<ManagedRange>> All();
  // Bytes the live ranges manage (`whole_blocks`: counted in whole 2 MiB blocks), without taking
  // a reference to any of them.
  size_t ManagedBytes(bool whole_blocks) const;
  size_t hugetlb_count() const;
  // Traces every live range's allocation (a trace session that starts late).
  void TraceAll();

  // Marks the pages in [start, end) of `range` unmapped (VaBlock::Unmap) and drops their device
  // copies; in-flight migrations drop those of the pages they hold when they let them go.
  void UnmapPages(ManagedRange& range, uintptr_t start, uintptr_t end);
  // Marks [start, end) of every range it overlaps as gone and releases the device pages there; a
  // range left with no page becomes a zombie (ReapZombies).
  void ForgetAddresses(uintptr_t start, uintptr_t end);

  // Launch coherence's work list for each device: the starts of ranges with blocks queued for it
  // (ManagedRange::MarkLaunchWork). A launch with nothing on its device's list has nothing to push.
  void NoteHostDirty(uintptr_t range_start, int device);
  std::vector<uintptr_t> TakeHostDirty(int device);
  bool has_host_dirty(int device) const { return dirty_count_[device].load() != 0; }
  // Counts NoteHostDirty calls: launch coherence reports a failure once per value.
  uint64_t host_dirty_generation() const { return dirty_generation_.load(std::memory_order_acquire); }

  // fork: Prepare holds the map exclusively across the clone (the child walks it); the parent
  // releases it, the child re-creates the lock and walks the map alone. Outside the analysis (and
  // the lock-order bookkeeping, Mutex::LockAcrossFork): the lock is taken in one atfork handler and
  // released in another, or re-created in the child.
  void LockForFork() ABSL_NO_THREAD_SAFETY_ANALYSIS { mu_.LockAcrossFork(); }
  void UnlockForFork() ABSL_NO_THREAD_SAFETY_ANALYSIS { mu_.UnlockAcrossFork(); }
  void ForEachInForkChild(absl::FunctionRef<void(ManagedRange&)> fn) ABSL_NO_THREAD_SAFETY_ANALYSIS;
  // In a forked child at teardown: unmaps the private copies and leaks the rest.
  void ForgetInForkChild();

 private:
  Mm& mm_;
  mutable Mutex mu_{LockRank::kVaSpace};
  std::map<uintptr_t, std::shared_ptr<ManagedRange>> ranges_ ABSL_GUARDED_BY(mu_);
  // Ranges the application munmapped entirely; torn down on the next API call.
  std::vector<std::shared_ptr<ManagedRange>> zombies_ ABSL_GUARDED_BY(mu_);
  mutable Mutex dirty_mu_{LockRank::kSpaceDirty};
  std::vector<std::vector<uintptr_t>> dirty_ ABSL_GUARDED_BY(dirty_mu_);  // per device
  // dirty_[d].size(), read without the lock (every launch does).
  std::unique_ptr<std::atomic<size_t>[]> dirty_count_;
  std::atomic<uint64_t> dirty_generation_{0};
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_MM_VA_SPACE_H_
