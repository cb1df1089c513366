// The runtime's own zaps and their REMOVE events; see zap_tracker.h.
#include "runtime/fault/zap_tracker.h"

#include <algorithm>
#include <cstdio>
#include <optional>
#include <utility>

#include "runtime/api/counters.h"
#include "runtime/fault/fault_service.h"

namespace uhmm {
namespace {

// The first part of [from, to) that some mapping covers, read from /proc/self/maps.
std::optional<std::pair<uintptr_t, uintptr_t>> FirstMappedPiece(uintptr_t from, uintptr_t to) {
  FILE* f = std::fopen("/proc/self/maps", "re");
  if (f == nullptr) return std::nullopt;
  std::optional<std::pair<uintptr_t, uintptr_t>> piece;
  char line[512];
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line, "%lx-%lx", &lo, &hi) != 2 || hi <= from) continue;
    if (lo < to) piece = std::make_pair(std::max<uintptr_t>(from, lo), std::min<uintptr_t>(to, hi));
    break;
  }
  std::fclose(f);
  return piece;
}

}  // namespace

void ZapTracker::Begin(uintptr_t start, uintptr_t end) {
  MutexLock lock(&mu_);
  zaps_.push_back(Zap{start, end, start});
}

void ZapTracker::End(uintptr_t start, uintptr_t end) {
  // madvise returned, so the kernel handed out every event of this zap; a service thread may still
  // be classifying the last one.
  mm_.faults->WaitForReadsInFlight();
  MutexLock lock(&mu_);
  auto it = std::find_if(zaps_.begin(), zaps_.end(),
                         [&](const Zap& z) { return z.start == start && z.end == end; });
  if (it != zaps_.end()) zaps_.erase(it);
}

bool ZapTracker::Claim(uintptr_t start, uintptr_t end) {
  MutexLock lock(&mu_);
  // A zap raises one event per mapping it spans, in address order, each one while its madvise
  // waits. Over one mapping (the common case) that is the whole zap.
  for (Zap& z : zaps_) {
    if (start == z.next && end == z.end) {
      z.next = end;
      mm_.counters->own_zap_events.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
  }
  // The application split the user view (mprotect, munmap of a part): the next event of a zap is
  // its first still-mapped piece. An application discard of exactly that piece in the same instant
  // is indistinguishable, and equivalent: either way one discard of it is applied.
  for (Zap& z : zaps_) {
    if (start < z.next || end > z.end) continue;
    std::optional<std::pair<uintptr_t, uintptr_t>> piece = FirstMappedPiece(z.next, z.end);
    if (piece && piece->first == start && piece->second == end) {
      z.next = end;
      mm_.counters->own_zap_events.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
  }
  return false;
}

}  // namespace uhmm
