// Fault-time policy; see policy.h.
#include "runtime/policy/policy.h"

#include <algorithm>
#include <bit>

namespace uhmm {

std::pair<uintptr_t, uintptr_t> ReadAhead::OnFault(uintptr_t start, uintptr_t end, uintptr_t range_end,
                                                   size_t max_window) {
  if (max_window == 0) return {0, 0};
  MutexLock lock(&mu_);
  // Forwards, and no further than where the last granule or the read-ahead ended: the CPU caught
  // up with what was already brought back.
  const bool sequential = last_end_ != 0 && start >= last_start_ && start <= std::max(last_end_, issued_);
  last_start_ = start;
  last_end_ = end;
  if (!sequential) {
    window_ = 0;
    issued_ = 0;
    return {0, 0};
  }
  window_ = window_ == 0 ? kBlockSize : std::min(window_ * 2, max_window);
  // The rest of this block, then `window_` bytes of whole blocks beyond it.
  const uintptr_t block_end = (end + kBlockSize - 1) & ~(kBlockSize - 1);
  const uintptr_t to = std::min(range_end, block_end + window_);
  const uintptr_t from = std::max(end, issued_);
  if (from >= to) return {0, 0};
  issued_ = to;
  return {from, to};
}

bool GrowGranule(const PageMask& host, uintptr_t block_start, uintptr_t lo, uintptr_t hi, int threshold_pct,
                 uintptr_t* start, uintptr_t* end) {
  if (threshold_pct <= 0) return false;
  auto index = [block_start](uintptr_t a) { return (a - block_start) / kPageSize; };
  // The granule's pages come back: count them as host-resident.
  PageMask after = host;
  for (size_t i = index(*start); i < index(*end); ++i) after.set(i);
  bool grew = false;
  // The granule may have been clipped by the range's end, so its length need not be a power of two;
  // its start is aligned to the unclipped granule, which is at least bit_ceil(length). Growing from
  // a length that is not a power of two would align to a region that need not hold the fault.
  for (size_t size = std::bit_ceil(static_cast<size_t>(*end - *start)) * 2; size <= kBlockSize; size *= 2) {
    const uintptr_t s = std::max(lo, *start & ~(uintptr_t{size} - 1));
    const uintptr_t e = std::min(hi, (*start & ~(uintptr_t{size} - 1)) + size);
    if (e <= s) break;
    const size_t first = index(s), count = (e - s) / kPageSize;
    const size_t resident = ((after >> first) << (kPagesPerBlock - count)).count();
    if (resident * 100 <= static_cast<size_t>(threshold_pct) * count) continue;
    *start = s;
    *end = e;
    grew = true;
  }
  return grew;
}

bool NoteReturn(VaBlock& blk, uint64_t now_ns, uint64_t lapse_ns, int threshold) {
  // Only the first return after each move to a device counts.
  if (threshold <= 0 || blk.to_device_ns == 0 || blk.returned) return false;
  blk.returned = true;
  if (now_ns - blk.to_device_ns > lapse_ns) {
    blk.quick_returns = 0;
    blk.thrashing = false;
    return false;
  }
  if (++blk.quick_returns < static_cast<uint32_t>(threshold) || blk.thrashing) return false;
  blk.thrashing = true;
  return true;
}

}  // namespace uhmm
