// VaBlock: the 2 MiB unit of a managed range (nvidia-uvm's va_block). Per-page state bitmaps say
// where each 4 KiB page lives and whether a migration holds it; faults that hit a held page wait in
// `deferred` and are re-queued when the migration finalizes.
#ifndef UHMM_RUNTIME_VA_BLOCK_H_
#define UHMM_RUNTIME_VA_BLOCK_H_

#include <linux/userfaultfd.h>

#include <array>
#include <bitset>
#include <vector>

#include "runtime/base/sync.h"
#include "uhmm/pagemap.h"
#include "uhmm/uhmm.hpp"

namespace uhmm {

inline constexpr size_t kPagesPerBlock = kBlockSize / kPageSize;
using PageMask = std::bitset<kPagesPerBlock>;

// Where the 2 MiB block after the one holding `addr` starts.
inline uintptr_t NextBlockBoundary(uintptr_t addr) { return (addr & ~(kBlockSize - 1)) + kBlockSize; }

struct VaBlock {
  Mutex mu;
  // A page is host-resident when none of device/poisoned/unmapped is set. The shadow copy in the
  // range's memfd is then the data.
  PageMask device ABSL_GUARDED_BY(mu);    // data lives in pages[i]
  PageMask busy ABSL_GUARDED_BY(mu);      // collected by an in-flight migrate_vma
  PageMask poisoned ABSL_GUARDED_BY(mu);  // lost to a device error; accesses get SIGBUS
  PageMask unmapped ABSL_GUARDED_BY(mu);  // the application munmapped/mremapped it away
  // The application discarded it (MADV_DONTNEED/REMOVE) while a migration held it (busy): that
  // migration's finalize applies the discard (the page ends host-resident and zero).
  PageMask discard ABSL_GUARDED_BY(mu);
  std::array<Page*, kPagesPerBlock> pages ABSL_GUARDED_BY(mu) = {};
  std::vector<uffd_msg> deferred ABSL_GUARDED_BY(mu);  // faults that hit busy pages
  // FaultService::read_seq() when pages of this block last moved to a device: fault messages read
  // up to then predate that move (see HandleFault).
  uint32_t device_seq ABSL_GUARDED_BY(mu) = 0;
  // Thrashing detection (policy.h): when pages of this block last moved to a device, how many
  // faults brought them back soon after, and whether the block counts as thrashing.
  uint64_t to_device_ns ABSL_GUARDED_BY(mu) = 0;
  uint32_t quick_returns ABSL_GUARDED_BY(mu) = 0;
  bool returned ABSL_GUARDED_BY(mu) = false;  // a fault brought pages back since to_device_ns
  bool thrashing ABSL_GUARDED_BY(mu) = false;
  // When a migration to a device last started here (even if the pages were there already): read-
  // ahead decided before that leaves the block alone (MigrateVma::skip_if_moved_after_ns).
  uint64_t device_wanted_ns ABSL_GUARDED_BY(mu) = 0;

  // Page i's device copy goes away (the data is now the shadow's, or gone): returns the page for
  // the caller to put_page once the lock is released.
  Page* DropDevicePage(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Page* p = pages[i];
    pages[i] = nullptr;
    device.reset(i);
    return p;
  }
  // Every device copy goes away (range teardown); the caller collected the pages first.
  void DropAllDevicePages() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    pages.fill(nullptr);
    device.reset();
  }
  // The application unmapped page i: it stays out of every migration from now on.
  void MarkUnmapped(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { unmapped.set(i); }
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_VA_BLOCK_H_
