// BlockOwners: which device maps each 2 MiB block, for devices that share managed addresses
// (Placement::kSameAddress). A GPU driver's virtual address mappings are process-wide (cuMemMap,
// zeVirtualMemMap): one block maps one device's chunk, whichever device then reads it. A pool claims
// a block before it maps a chunk there and lets go when it unmaps it; a pool whose claim is refused
// learns the holder, which gives the block up once none of its pages is in use there
// (PagePool::UnbindIdle). Linux HMM needs no such table: each device has its own page tables.
//
// LOCKING: mu_ (rank kBlockOwners) is taken under a pool's lock and takes nothing itself.
#ifndef UHMM_RUNTIME_MM_BLOCK_OWNERS_H_
#define UHMM_RUNTIME_MM_BLOCK_OWNERS_H_

#include <cstdint>

#include "absl/container/flat_hash_map.h"
#include "runtime/base/sync.h"

namespace uhmm {

class BlockOwners {
 public:
  // Makes `device` the owner of `block` when nobody owns it (or `device` does): true. Otherwise
  // false with *holder set to the owner.
  bool TryClaim(uintptr_t block, int device, int* holder) {
    MutexLock lock(&mu_);
    auto [it, added] = owner_.try_emplace(block, device);
    if (added || it->second == device) return true;
    *holder = it->second;
    return false;
  }
  // `device` no longer maps `block` (a no-op when it does not own it).
  void Release(uintptr_t block, int device) {
    MutexLock lock(&mu_);
    auto it = owner_.find(block);
    if (it != owner_.end() && it->second == device) owner_.erase(it);
  }
  // A move to a peer: `from` hands `block` to `to` before it unmaps it, so that no third device
  // claims the block between the two. False (nothing changes) when `from` does not own it.
  bool Transfer(uintptr_t block, int from, int to) {
    MutexLock lock(&mu_);
    auto it = owner_.find(block);
    if (it == owner_.end() || it->second != from) return false;
    it->second = to;
    return true;
  }
  // The device that maps `block`, or -1.
  int OwnerOf(uintptr_t block) {
    MutexLock lock(&mu_);
    auto it = owner_.find(block);
    return it == owner_.end() ? -1 : it->second;
  }

 private:
  Mutex mu_{LockRank::kBlockOwners};
  absl::flat_hash_map<uintptr_t, int> owner_ ABSL_GUARDED_BY(mu_);
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_MM_BLOCK_OWNERS_H_
