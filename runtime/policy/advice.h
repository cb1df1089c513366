// RangeAdvice: the memory advice (uhmm_advise, after cudaMemAdvise) of one managed range, per 4 KiB
// page. Kept as an interval map of maximal runs of pages with the same, non-default advice: pages
// outside every run have no advice (PageAdvice{}). Storage and read-back only; the fault path,
// eviction and launch sync read it (At, ForEachRun) and decide what it means (docs/SEMANTICS.md,
// "Memory advice").
//
// LOCKING: `mu_` (rank kAdvice, the last: it may be taken under a block lock, and nothing is taken
// under it); readers share it. Any() is a lock-free load, so a range that has no advice costs its
// hot paths one atomic load.
#ifndef UHMM_RUNTIME_POLICY_ADVICE_H_
#define UHMM_RUNTIME_POLICY_ADVICE_H_

#include <atomic>
#include <cstdint>
#include <memory>

#include "absl/functional/function_ref.h"
#include "runtime/base/sync.h"
#include "uhmm/uhmm.hpp"

namespace uhmm {

// Highest device number + 1 that ACCESSED_BY can name (one bit each).
inline constexpr int kMaxAdviceDevices = 64;

// The advice of one page.
struct PageAdvice {
  bool read_mostly = false;
  int preferred = kNoLocation;  // kNoLocation, kHost or a device
  uint64_t accessed_by = 0;     // bit d: device d
  uint32_t granule = 0;         // CPU fault granule in bytes; 0: the runtime's (UHMM_FAULT_GRANULARITY)

  bool none() const { return *this == PageAdvice{}; }
  friend bool operator==(const PageAdvice&, const PageAdvice&) = default;
};

class RangeAdvice {
 public:
  RangeAdvice();
  ~RangeAdvice();
  RangeAdvice(const RangeAdvice&) = delete;
  RangeAdvice& operator=(const RangeAdvice&) = delete;

  // Sets or unsets `advice` on the pages of [start, end) (4 KiB aligned). `arg` as for uhmm_advise,
  // already checked by the caller (the facade): a device < kMaxAdviceDevices for ACCESSED_BY, a
  // device or kHost for SET_PREFERRED_LOCATION, a granule for SET_FAULT_GRANULE; ignored otherwise.
  // Unknown advice values change nothing.
  void Apply(uintptr_t start, uintptr_t end, Advice advice, int64_t arg);

  // The advice of the page holding `addr`. Without advice on the range: one atomic load, no lock.
  PageAdvice At(uintptr_t addr) const;

  // False when no page of the range has advice (none was ever set, or all of it was unset). Lock
  // free: the hot paths skip everything on false.
  bool Any() const { return any_.load(std::memory_order_acquire); }

  // One attribute of [start, end), as uhmm_range_get_attribute reports it: kReadMostly 1 or 0;
  // kPreferredLocation the common location, kNoLocation or kMixedLocation; kAccessedBy the devices
  // every page names; kFaultGranule the common granule (0: none advised) or kMixedLocation. Unknown
  // attribute values give 0.
  int64_t Attribute(uintptr_t start, uintptr_t end, RangeAttribute attribute) const;

  // Calls fn(run_start, run_end, advice) for the maximal runs of [start, end) with uniform advice,
  // in address order, covering it all (pages with no advice as PageAdvice{}). The runs are a
  // snapshot: fn runs without the lock, so it may take any lock and call back in.
  void ForEachRun(uintptr_t start, uintptr_t end,
                  absl::FunctionRef<void(uintptr_t, uintptr_t, const PageAdvice&)> fn) const;

  // Number of stored runs (pages with advice): for tests of run merging.
  size_t run_count() const;

 private:
  struct Runs;  // absl::btree_map<start, {end, PageAdvice}>, kept out of this header

  mutable Mutex mu_{LockRank::kAdvice};
  std::unique_ptr<Runs> runs_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> any_{false};  // runs_ is not empty; written under mu_
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_POLICY_ADVICE_H_
