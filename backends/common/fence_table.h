// Fence numbers for copy engines whose batches complete through a vendor event: Add records the
// batch's event under a new fence, Take hands it back once for the wait. Header-only.
#ifndef UHMM_BACKENDS_COMMON_FENCE_TABLE_H_
#define UHMM_BACKENDS_COMMON_FENCE_TABLE_H_

#include <cstdint>
#include <mutex>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "uhmm/backend.h"

namespace uhmm {

template <class Event>
class FenceTable {
 public:
  struct Batch {
    Event event{};
    CopyDirection dir = CopyDirection::kHostToDevice;
  };

  uint64_t Add(Event event, CopyDirection dir) {
    std::lock_guard<std::mutex> lock(mu_);
    const uint64_t fence = ++next_fence_;
    pending_[fence] = Batch{event, dir};
    return fence;
  }
  // INVALID_ARGUMENT naming `engine` for a fence never returned by Add or already taken.
  absl::StatusOr<Batch> Take(uint64_t fence, std::string_view engine) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pending_.find(fence);
    if (it == pending_.end()) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: unknown fence %u", engine, fence));
    }
    Batch b = it->second;
    pending_.erase(it);
    return b;
  }
  // Calls fn(event) for every batch not yet taken (for shutdown).
  template <class Fn>
  void ForEachPending(Fn fn) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [fence, b] : pending_) fn(b.event);
  }

 private:
  std::mutex mu_;
  uint64_t next_fence_ = 0;
  std::unordered_map<uint64_t, Batch> pending_;
};

}  // namespace uhmm

#endif  // UHMM_BACKENDS_COMMON_FENCE_TABLE_H_
