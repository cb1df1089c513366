// PeerWindows: 2 MiB windows of device address space for moves to a peer (Migrator::ToDevice).
// While device k's copy engine reads a block's pages off device j in one hop, the block's own
// address already maps k's memory (one pointer allows one mapping per address), so j's chunk is
// mapped at a window instead (PagePool::Detach) until its pages are gone. Reserved from the backend
// on demand (Backend::ReserveAddressRange), kept for reuse, released with the device table.
//
// LOCKING: mu_ (rank kPeerWindows) is taken under a pool's lock and takes nothing itself.
#ifndef UHMM_RUNTIME_MM_PEER_WINDOWS_H_
#define UHMM_RUNTIME_MM_PEER_WINDOWS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/base/sync.h"
#include "uhmm/backend.h"

namespace uhmm {

class PeerWindows {
 public:
  explicit PeerWindows(Backend& backend) : backend_(backend) {}
  // Releases the windows; every window taken must be back (the pools put theirs back as they go).
  ~PeerWindows() {
    if (abandoned_) return;
    for (uintptr_t w : free_) backend_.ReleaseAddressRange(w, kBlockSize);
  }
  PeerWindows(const PeerWindows&) = delete;
  PeerWindows& operator=(const PeerWindows&) = delete;

  // A window nobody uses, reserved now if none is free.
  absl::StatusOr<uintptr_t> Take() {
    {
      MutexLock lock(&mu_);
      if (!free_.empty()) {
        const uintptr_t w = free_.back();
        free_.pop_back();
        return w;
      }
    }
    absl::StatusOr<uintptr_t> w = backend_.ReserveAddressRange(kBlockSize);
    if (w.ok() && *w == 0) return absl::UnimplementedError("the backend reserves no device address space");
    return w;
  }
  void Put(uintptr_t window) {
    MutexLock lock(&mu_);
    free_.push_back(window);
  }
  // In a forked child: the windows belong to the parent's devices.
  void Abandon() { abandoned_ = true; }

 private:
  Backend& backend_;
  Mutex mu_{LockRank::kPeerWindows};
  std::vector<uintptr_t> free_ ABSL_GUARDED_BY(mu_);
  bool abandoned_ = false;
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_MM_PEER_WINDOWS_H_
