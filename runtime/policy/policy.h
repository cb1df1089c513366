// Fault-time policy, vendor-neutral (nvidia-uvm's perf_prefetch / perf_thrashing in spirit):
//  - density growth: a CPU fault migrates back the largest aligned region of its block (up to
//    2 MiB) that would then be mostly host-resident, so random access converges to whole blocks;
//  - read-ahead: faults that walk a range forwards open a window (one block, doubling up to
//    Config::readahead_bytes) that migration workers bring back before the CPU gets there;
//  - thrashing: a block whose pages keep coming back soon after moving to a device gets neither.
#ifndef UHMM_RUNTIME_POLICY_POLICY_H_
#define UHMM_RUNTIME_POLICY_POLICY_H_

#include <cstddef>
#include <cstdint>
#include <utility>

#include "runtime/base/sync.h"
#include "runtime/mm/va_block.h"
#include "uhmm/uhmm.hpp"

namespace uhmm {

// Per-range read-ahead state.
class ReadAhead {
 public:
  // A fault migrates [start, end) of a range ending at `range_end`. Returns the run to read ahead
  // ([0, 0) for none): sequential faults (each starting where the previous one's granule, or the
  // read-ahead already issued, ended) grow the window; any other fault resets it.
  std::pair<uintptr_t, uintptr_t> OnFault(uintptr_t start, uintptr_t end, uintptr_t range_end,
                                          size_t max_window);

 private:
  Mutex mu_{LockRank::kReadAhead};
  uintptr_t last_start_ ABSL_GUARDED_BY(mu_) = 0;
  uintptr_t last_end_ ABSL_GUARDED_BY(mu_) = 0;
  uintptr_t issued_ ABSL_GUARDED_BY(mu_) = 0;  // read-ahead was issued up to here
  size_t window_ ABSL_GUARDED_BY(mu_) = 0;
};

// Density growth. [*start, *end) is the configured granule around a fault in the block that begins
// at `block_start`, possibly clipped by `hi` (its start stays aligned to the granule size); `host` marks the
// block's pages that are host-resident (or otherwise not on a device). Grows the granule to the largest
// power-of-two aligned region inside [lo, hi) (the block clipped to the range) in which more than
// `threshold_pct` percent of the pages would be host- resident after the granule came back. Returns true when
// it grew.
bool GrowGranule(const PageMask& host, uintptr_t block_start, uintptr_t lo, uintptr_t hi, int threshold_pct,
                 uintptr_t* start, uintptr_t* end);

// Thrashing: called under blk.mu for a fault that migrates pages of `blk` back from a device at
// `now_ns`. The first return after a move to a device counts when it comes within `lapse_ns` of
// that move; `threshold` such returns in a row mark the block thrashing until a return comes later than that.
// Returns true when this call marked it (newly thrashing).
bool NoteReturn(VaBlock& blk, uint64_t now_ns, uint64_t lapse_ns, int threshold)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu);

}  // namespace uhmm

#endif  // UHMM_RUNTIME_POLICY_POLICY_H_
