// Bookkeeping behind DeviceTestHooks that every backend shares: fault-injection budgets and
// page_free accounting, and the DeviceTestHooks methods that only read or set them. Header-only;
// holds no backend types.
#ifndef UHMM_BACKENDS_COMMON_HOOK_STATE_H_
#define UHMM_BACKENDS_COMMON_HOOK_STATE_H_

#include <atomic>
#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "uhmm/backend.h"

namespace uhmm {

// A number of failures still to inject.
class FailureBudget {
 public:
  void Set(int n) { left_.store(n); }
  // Consumes one failure if any is left.
  bool TakeOne() {
    int v = left_.load();
    while (v > 0 && !left_.compare_exchange_weak(v, v - 1)) {
    }
    return v > 0;
  }

 private:
  std::atomic<int> left_{0};
};

class HookState {
 public:
  FailureBudget& copy_failures(CopyDirection dir) {
    return dir == CopyDirection::kHostToDevice ? fail_h2d_ : fail_d2h_;
  }
  FailureBudget& alloc_failures() { return fail_alloc_; }

  void CountPageFree(uint64_t pfn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++free_counts_[pfn];
    }
    free_total_.fetch_add(1);
  }
  uint64_t page_free_count(uint64_t pfn) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_counts_.find(pfn);
    return it == free_counts_.end() ? 0 : it->second;
  }
  uint64_t page_free_total() const { return free_total_.load(); }

  void CountCopy(CopyDirection dir) {
    (dir == CopyDirection::kHostToDevice ? done_h2d_ : done_d2h_).fetch_add(1);
  }
  uint64_t copies(CopyDirection dir) const {
    return (dir == CopyDirection::kHostToDevice ? done_h2d_ : done_d2h_).load();
  }

 private:
  FailureBudget fail_h2d_, fail_d2h_, fail_alloc_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, uint64_t> free_counts_;
  std::atomic<uint64_t> free_total_{0};
  std::atomic<uint64_t> done_h2d_{0}, done_d2h_{0};
};

// The DeviceTestHooks methods every backend implements the same way, over a HookState. `Hooks` is
// DeviceTestHooks or an interface derived from it; the device supplies DeviceWrite/DeviceRead (and
// whatever else `Hooks` adds). Backends inject the failures at their copy-engine and chunk-
// allocation entry points through hooks_.
template <class Hooks = DeviceTestHooks>
class HookStateTestHooks : public Hooks {
 public:
  void FailNextCopies(CopyDirection dir, int n) override { hooks_.copy_failures(dir).Set(n); }
  void FailNextChunkAllocs(int n) override { hooks_.alloc_failures().Set(n); }
  uint64_t page_free_count(uint64_t pfn) const override { return hooks_.page_free_count(pfn); }
  uint64_t page_free_total() const override { return hooks_.page_free_total(); }
  uint64_t copies(CopyDirection dir) const override { return hooks_.copies(dir); }
  HookState& hook_state() { return hooks_; }

 protected:
  HookState hooks_;
};

// The pagemap ops the backends share: page_free counts the page for the test hooks and returns it
// to the pool; page_fault migrates the fault's granule back to RAM through the device's copy engine
// (the runtime then maps it and wakes the thread; a copy error ends the access in SIGBUS). `Dev`
// derives from Device and HookStateTestHooks and is the pagemap's owner.
template <class Dev>
struct CopyBackPagemap {
  static void PageFree(Page* page) {
    static_cast<Dev*>(page->pgmap->owner)->hook_state().CountPageFree(page->pfn);
    page_pool_release(page);
  }
  static absl::Status PageFault(VmFault* vmf) {
    auto* dev = static_cast<Dev*>(vmf->page->pgmap->owner);
    return migrate_fault_to_ram(vmf, dev, dev->copy_engine());
  }
  static constexpr PagemapOps kOps = {&PageFree, &PageFault};
};

}  // namespace uhmm

#endif  // UHMM_BACKENDS_COMMON_HOOK_STATE_H_
