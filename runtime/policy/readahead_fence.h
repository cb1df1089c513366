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
// LOCKING: atomics, and `mu_` (rank kReadAheadFence, a leaf) only to wait for read-ahead to finish;
// neither side holds another runtime lock.
#ifndef UHMM_RUNTIME_POLICY_READAHEAD_FENCE_H_
#define UHMM_RUNTIME_POLICY_READAHEAD_FENCE_H_

#include <atomic>
#include <cstdint>

#include "runtime/base/sync.h"

namespace uhmm {

class ReadAheadFence {
 public:
  // A read-ahead decided at `decided_ns` is about to migrate: false (drop it) when a device use
  // began at or after that time. On true, call Leave when the migration is done.
  bool Enter(uint64_t decided_ns) {
    // Counted before the check: a device use that raises the fence after it sees the count.
    inflight_.fetch_add(1);
    if (device_use_ns_.load() < decided_ns) return true;
    Leave();
    return false;
  }
  void Leave() {
    if (inflight_.fetch_sub(1) != 1) return;
    MutexLock lock(&mu_);  // under the lock: a waiter between its check and its wait is not missed
    idle_.SignalAll();
  }
  // A device is about to use managed memory (a launch, a device-side access) at `now_ns`: drops the
  // read-ahead decided before then, and waits for the read-ahead under way to finish. Two atomic
  // operations when no read-ahead is copying (every launch comes here).
  void DeviceUseBegins(uint64_t now_ns) {
    uint64_t seen = device_use_ns_.load();
    while (seen < now_ns && !device_use_ns_.compare_exchange_weak(seen, now_ns)) {
    }
    if (inflight_.load() == 0) return;
    MutexLock lock(&mu_);
    while (inflight_.load() > 0) idle_.Wait(&mu_);
  }

 private:
  // Sequentially consistent: Enter writes inflight_ then reads device_use_ns_, DeviceUseBegins
  // writes device_use_ns_ then reads inflight_, so at least one of them sees the other.
  std::atomic<uint64_t> device_use_ns_{0};
  std::atomic<int> inflight_{0};
  Mutex mu_{LockRank::kReadAheadFence};  // for idle_ only
  CondVar idle_;
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_POLICY_READAHEAD_FENCE_H_
