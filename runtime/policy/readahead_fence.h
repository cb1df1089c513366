// ReadAheadFence: read-ahead never moves a page out from under a device that started using managed
// memory after the read-ahead was decided.
//
// Read-ahead is speculation: a CPU fault decides it, and a migration worker runs it later. Between
// the two, the application may launch a kernel (or, in tests, access device memory directly) that
// uses pages the read-ahead is about to bring home; the kernel's writes would then land in device
// pages the runtime has just released, and be lost. So a device use first raises the fence: every
// read-ahead decided before it is dropped, and the ones already copying finish before the device
// use goes on (their pages are then home, which the device use's own launch sync sees).
//
// LOCKING: `mu_` (rank kReadAheadFence) is a leaf; neither side holds another runtime lock.
#ifndef UHMM_RUNTIME_POLICY_READAHEAD_FENCE_H_
#define UHMM_RUNTIME_POLICY_READAHEAD_FENCE_H_

#include <cstdint>

#include "runtime/base/sync.h"

namespace uhmm {

class ReadAheadFence {
 public:
  // A read-ahead decided at `decided_ns` is about to migrate: false (drop it) when a device use
  // began at or after that time. On true, call Leave when the migration is done.
  bool Enter(uint64_t decided_ns) {
    MutexLock lock(&mu_);
    if (device_use_ns_ >= decided_ns) return false;
    ++inflight_;
    return true;
  }
  void Leave() {
    MutexLock lock(&mu_);
    if (--inflight_ == 0) idle_.SignalAll();
  }
  // A device is about to use managed memory (a launch, a device-side access) at `now_ns`: drops the
  // read-ahead decided before then, and waits for the read-ahead under way to finish.
  void DeviceUseBegins(uint64_t now_ns) {
    MutexLock lock(&mu_);
    if (now_ns > device_use_ns_) device_use_ns_ = now_ns;
    while (inflight_ > 0) idle_.Wait(&mu_);
  }

 private:
  Mutex mu_{LockRank::kReadAheadFence};
  CondVar idle_;
  uint64_t device_use_ns_ ABSL_GUARDED_BY(mu_) = 0;
  int inflight_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_POLICY_READAHEAD_FENCE_H_
