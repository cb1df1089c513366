// VaBlock: the 2 MiB unit of a managed range (nvidia-uvm's va_block). Each 4 KiB page is in one
// named state and changes state only through the transitions below, each checked against the state
// it leaves; faults that hit a page a migration holds wait in `deferred` and are re-queued when the
// migration finalizes.
//
// LOCKING: `mu` (rank kVaBlock, docs/ARCHITECTURE.md "Lock order") guards everything here; every
// query and every transition requires it. No thread ever holds two block locks.
//
// PAGE STATES. A page is in exactly one of
//   kHost      the shadow (the range's memfd page) is the data; the CPU maps it or faults it in
//   kDevice    pages[i], a device page, holds the data; the CPU has no mapping of it
//   kPoisoned  the data was lost to a device error; CPU accesses raise SIGBUS
//   kUnmapped  the application munmapped/mremapped the address away (terminal: the address is
//              never managed again; a range whose pages are all unmapped becomes a zombie)
// and carries four orthogonal flags:
//   duplicate        (only in kHost) pages[i] still holds a copy of the data on a device: read
//                    duplication. The shadow is the data; the device copy is current unless the CPU
//                    wrote the page since (write tracking tells, fault/write_tracker.h), so a
//                    migration back to that device copies only written pages, and eviction drops
//                    the copy without copying.
//   busy             a migrate_vma holds the page, from setup to finalize (faults on it defer).
//                    Only the holder commits it, and the holder owns its device page meanwhile:
//                    what arrives while it is held (unmap, poison, discard) is recorded (the state
//                    changes, the device page stays) and the holder settles it when it lets go.
//   discard pending  (only while busy) the application discarded the page; the holder's finalize
//                    applies the discard before it lets go.
//   zero             (only in kHost, not a duplicate) the shadow has been zero since the range was
//                    made, unless write tracking says the CPU wrote the page: a push gives the
//                    device page zeros instead of a copy. Set for every page of a range that tracks
//                    writes when it is made; gone at the first commit either way, and when a push
//                    that took the page (and so its written mark) did not commit it.
//
//   To a device:  kHost  --BeginMigration--> kHost+busy  --CommitToDevice--> kDevice+busy
//                        --EndMigration--> kDevice
//   To the host:  kDevice --BeginMigration--> kDevice+busy --CommitToHost--> kHost+busy
//                        --EndMigration--> kHost   (CommitToHost(keep_copy): kHost+duplicate)
//   To a peer:    kDevice --BeginMigration--> kDevice+busy --CommitToPeer (another device page)-->
//                        kDevice+busy --EndMigration--> kDevice
//   Zero:         kHost --MarkZero--> kHost+zero (a new range); kHost+zero --CommitToDevice,
//                 ForgetZero--> kHost / kDevice without it
//   Duplicate:    kHost+duplicate --BeginMigration/CommitToDevice (same device page)--> kDevice;
//                 kHost+duplicate --DropDuplicate--> kHost (returns the device page)
//   Rolled back:  S+busy --EndMigration--> S   (not committed: the page stays where it was; so
//                 is a page poisoned or unmapped while held: commits need the state it was taken in)
//   Events, held or not (a held page keeps its device page for its holder):
//     Poison:          kHost | kDevice | kPoisoned -> kPoisoned    (drops the device page)
//     Discard:         kHost | kDevice | kPoisoned -> kHost, zero  (drops the device page; on a held
//                      page MarkDiscardPending instead, and the holder's finalize applies it)
//     DiscardOnDevice: kDevice -> kDevice, zeroed in place         (a hugetlb block stays whole)
//     Unmap:           any -> kUnmapped                            (drops the device page)
//     TakeAllDevicePages: range teardown (no page may be held): every device page goes
//   EndMigration drops the device page of a page poisoned or unmapped while held, and requires
//   any pending discard applied. So, outside a migration, a device page exists exactly in kDevice
//   and in kHost+duplicate; poison, discard and unmap drop a duplicate's copy as they drop a device
//   page.
//
// Debug builds (!NDEBUG) abort on an illegal transition, naming the block, the page, its state and
// the transition. The per-page bitmaps stay the storage (ranged queries such as `~blk.device` in
// the policy read them) and are read-only outside this header.
#ifndef UHMM_RUNTIME_MM_VA_BLOCK_H_
#define UHMM_RUNTIME_MM_VA_BLOCK_H_

#include <linux/userfaultfd.h>

#include <array>
#include <bitset>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "runtime/base/sync.h"
#include "uhmm/pagemap.h"
#include "uhmm/uhmm.hpp"

namespace uhmm {

inline constexpr size_t kPagesPerBlock = kBlockSize / kPageSize;
using PageMask = std::bitset<kPagesPerBlock>;

// Where the 2 MiB block after the one holding `addr` starts.
inline uintptr_t NextBlockBoundary(uintptr_t addr) { return (addr & ~(kBlockSize - 1)) + kBlockSize; }

enum class PageState : uint8_t { kHost, kDevice, kPoisoned, kUnmapped };

inline const char* PageStateName(PageState s) {
  switch (s) {
    case PageState::kHost:
      return "host";
    case PageState::kDevice:
      return "device";
    case PageState::kPoisoned:
      return "poisoned";
    case PageState::kUnmapped:
      return "unmapped";
  }
  return "?";
}

// One per-page bitmap of a VaBlock: readable by anyone holding the block lock, written only by the
// block's transitions.
class PageBits {
 public:
  bool operator[](size_t i) const { return bits_[i]; }
  bool test(size_t i) const { return bits_.test(i); }
  bool any() const { return bits_.any(); }
  bool none() const { return bits_.none(); }
  size_t count() const { return bits_.count(); }
  const PageMask& mask() const { return bits_; }
  PageMask operator~() const { return ~bits_; }
  friend PageMask operator|(const PageBits& a, const PageBits& b) { return a.bits_ | b.bits_; }
  friend PageMask operator|(const PageMask& a, const PageBits& b) { return a | b.bits_; }
  friend PageMask operator|(const PageBits& a, const PageMask& b) { return a.bits_ | b; }
  friend PageMask operator&(const PageBits& a, const PageBits& b) { return a.bits_ & b.bits_; }
  friend PageMask operator&(const PageMask& a, const PageBits& b) { return a & b.bits_; }
  friend PageMask operator&(const PageBits& a, const PageMask& b) { return a.bits_ & b; }

 private:
  friend struct VaBlock;
  PageMask bits_;
};

// The device page behind each page in kDevice (nullptr otherwise): read-only outside VaBlock.
class DevicePages {
 public:
  Page* operator[](size_t i) const { return pages_[i]; }

 private:
  friend struct VaBlock;
  std::array<Page*, kPagesPerBlock> pages_ = {};
};

struct VaBlock {
  Mutex mu{LockRank::kVaBlock};
  // The state storage (see the top of this file); read them through State() or directly for ranged
  // queries, change them only through the transitions.
  PageBits device ABSL_GUARDED_BY(mu);     // data lives in pages[i]
  PageBits busy ABSL_GUARDED_BY(mu);       // held by an in-flight migrate_vma
  PageBits poisoned ABSL_GUARDED_BY(mu);   // lost to a device error; accesses get SIGBUS
  PageBits unmapped ABSL_GUARDED_BY(mu);   // the application munmapped/mremapped it away
  PageBits discard ABSL_GUARDED_BY(mu);    // discard pending: applied by the holder's finalize
  PageBits duplicate ABSL_GUARDED_BY(mu);  // host page whose pages[i] keeps a device copy
  PageBits zero ABSL_GUARDED_BY(mu);       // host page zero unless the CPU wrote it
  DevicePages pages ABSL_GUARDED_BY(mu);
  std::vector<uffd_msg> deferred ABSL_GUARDED_BY(mu);  // faults that hit busy pages
  // FaultService::read_seq() when pages of this block last moved to a device: fault messages read
  // up to then predate that move (see CpuFault::Handle).
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
  // Launch coherence: the devices (bit d: device d) in whose host-dirty list of its range the block
  // is queued (ManagedRange::MarkLaunchWork), because pages here became host-resident, or moved to a
  // device that device cannot reach, since a launch sync for it last pushed the block.
  uint64_t launch_work ABSL_GUARDED_BY(mu) = 0;

  // --- Queries ---
  PageState State(size_t i) const ABSL_SHARED_LOCKS_REQUIRED(mu) {
    if (unmapped.bits_[i]) return PageState::kUnmapped;
    if (poisoned.bits_[i]) return PageState::kPoisoned;
    if (device.bits_[i]) return PageState::kDevice;
    return PageState::kHost;
  }
  bool Busy(size_t i) const ABSL_SHARED_LOCKS_REQUIRED(mu) { return busy.bits_[i]; }
  bool DiscardPending(size_t i) const ABSL_SHARED_LOCKS_REQUIRED(mu) { return discard.bits_[i]; }
  bool Duplicate(size_t i) const ABSL_SHARED_LOCKS_REQUIRED(mu) { return duplicate.bits_[i]; }
  bool Zero(size_t i) const ABSL_SHARED_LOCKS_REQUIRED(mu) { return zero.bits_[i]; }

  // --- Transitions of a migration (migrate_vma_setup / finalize) ---
  // A migration takes page i (kHost to a device, kDevice to the host); nobody holds it.
  void BeginMigration(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const PageState s = State(i);
    Check(i, "BeginMigration", !busy.bits_[i] && (s == PageState::kHost || s == PageState::kDevice),
          "needs an unheld host or device page");
    busy.bits_.set(i);
  }
  // The holder's copy to `page` succeeded: the device page is the data now.
  // A duplicate commits with its own device page (copied to it if the CPU wrote it).
  void CommitToDevice(size_t i, Page* page) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Check(i, "CommitToDevice",
          busy.bits_[i] && State(i) == PageState::kHost && page != nullptr &&
              (!duplicate.bits_[i] || pages.pages_[i] == page),
          "needs a held host page and a device page (a duplicate's own)");
    duplicate.bits_.reset(i);
    zero.bits_.reset(i);
    device.bits_.set(i);
    pages.pages_[i] = page;
  }
  // A new range's page, in a range whose CPU writes are tracked: its shadow is zero.
  void MarkZero(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Check(i, "MarkZero", State(i) == PageState::kHost && !busy.bits_[i] && !duplicate.bits_[i],
          "needs an unheld host page without a device copy");
    zero.bits_.set(i);
  }
  // The page may not be zero any more: a push took it (and its written mark) without committing.
  void ForgetZero(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { zero.bits_.reset(i); }
  // The holder's copy to the shadow succeeded: the shadow is the data again. Returns the device
  // page, for the caller to put_page once the lock is released; with `keep_copy` the page keeps it
  // as a duplicate instead (and nullptr is returned).
  Page* CommitToHost(size_t i, bool keep_copy = false) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Check(i, "CommitToHost", busy.bits_[i] && State(i) == PageState::kDevice, "needs a held device page");
    zero.bits_.reset(i);  // (already clear: CommitToDevice cleared it)
    if (!keep_copy) return TakeDevicePage(i);
    device.bits_.reset(i);
    duplicate.bits_.set(i);
    return nullptr;
  }
  // The holder's one-hop copy to `page`, on another device, succeeded: that page is the data now.
  // Returns the old device page, for the caller to put_page once the lock is released.
  [[nodiscard]] Page* CommitToPeer(size_t i, Page* page) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Check(i, "CommitToPeer",
          busy.bits_[i] && State(i) == PageState::kDevice && page != nullptr && pages.pages_[i] != page,
          "needs a held device page and another device page");
    Page* old = pages.pages_[i];
    pages.pages_[i] = page;
    return old;
  }
  // Drops a duplicate's device copy (eviction, a migration to another device): returned, to
  // put_page once the lock is released. Nobody may hold the page.
  [[nodiscard]] Page* DropDuplicate(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Check(i, "DropDuplicate", duplicate.bits_[i] && !busy.bits_[i], "needs an unheld duplicate");
    return TakeDevicePage(i);
  }
  // The holder lets page i go, committed or rolled back (a page not committed stays where it was).
  // A page poisoned or unmapped while held loses its device page now: returned, to put_page.
  [[nodiscard]] Page* EndMigration(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Check(i, "EndMigration", busy.bits_[i] && !discard.bits_[i],
          "needs a held page with no discard pending (finalize applies it first)");
    busy.bits_.reset(i);
    if (HasDevicePage(i) && (poisoned.bits_[i] || unmapped.bits_[i])) return TakeDevicePage(i);
    return nullptr;
  }

  // --- Transitions of events ---
  // A device error lost page i's data: accesses raise SIGBUS from now on. Returns the device page
  // to put_page, if it had one that no migration holds (a holder drops its own at EndMigration).
  [[nodiscard]] Page* Poison(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Check(i, "Poison", State(i) != PageState::kUnmapped, "an unmapped page has no access to poison");
    poisoned.bits_.set(i);
    if (HasDevicePage(i) && !busy.bits_[i]) return TakeDevicePage(i);
    return nullptr;
  }
  // An application discard of page i while a migration holds it: the holder applies it at finalize.
  void MarkDiscardPending(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Check(i, "MarkDiscardPending", busy.bits_[i] && State(i) != PageState::kUnmapped,
          "needs a held, mapped page");
    discard.bits_.set(i);
  }
  // Applies an application discard of page i (MADV_DONTNEED/REMOVE): it ends host-resident, and the
  // caller makes its shadow read as zero. Page i is not held, or held with the discard pending
  // (the holder's finalize applies it; the discard was recorded before any unmap). Returns the
  // device page to put_page, if any.
  [[nodiscard]] Page* Discard(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Check(i, "Discard", busy.bits_[i] ? discard.bits_[i] : State(i) != PageState::kUnmapped,
          "needs an unheld mapped page, or a held one with its discard pending");
    discard.bits_.reset(i);
    poisoned.bits_.reset(i);
    return HasDevicePage(i) ? TakeDevicePage(i) : nullptr;
  }
  // Applies a discard of page i by zeroing its device copy in place (a hugetlb block lives in one
  // place whole): it stays in kDevice.
  void DiscardOnDevice(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Check(i, "DiscardOnDevice", State(i) == PageState::kDevice && (busy.bits_[i] ? discard.bits_[i] : true),
          "needs a device page, unheld or held with its discard pending");
    discard.bits_.reset(i);
  }
  // The application unmapped page i: it stays out of every migration from now on. Returns the
  // device page to put_page, if it had one that no migration holds (a holder drops its own at
  // EndMigration).
  [[nodiscard]] Page* Unmap(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    unmapped.bits_.set(i);  // legal from every state (an address can be unmapped twice)
    if (HasDevicePage(i) && !busy.bits_[i]) return TakeDevicePage(i);
    return nullptr;
  }
  // Range teardown: every device page goes to `out` (the caller puts them once the lock is
  // released). No migration may hold a page: teardown waited for every operation on the range.
  void TakeAllDevicePages(std::vector<Page*>* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (size_t i = 0; i < kPagesPerBlock; ++i) {
      Check(i, "TakeAllDevicePages", !busy.bits_[i], "a migration still holds the page at teardown");
      if (HasDevicePage(i)) out->push_back(TakeDevicePage(i));
    }
  }

 private:
  bool HasDevicePage(size_t i) const ABSL_SHARED_LOCKS_REQUIRED(mu) {
    return device.bits_[i] || duplicate.bits_[i];
  }
  Page* TakeDevicePage(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Page* p = pages.pages_[i];
    Check(i, "(take device page)", p != nullptr, "a device page that is not there");
    pages.pages_[i] = nullptr;
    device.bits_.reset(i);
    duplicate.bits_.reset(i);
    return p;
  }

  // Debug builds: aborts, naming the page, its state and the transition, when `ok` is false.
  void Check(size_t i, const char* transition, bool ok, const char* rule) const
      ABSL_SHARED_LOCKS_REQUIRED(mu) {
#if !defined(NDEBUG)
    if (!ok) IllegalTransition(i, transition, rule);
#else
    (void)i, (void)transition, (void)ok, (void)rule;
#endif
  }
  [[noreturn]] void IllegalTransition(size_t i, const char* transition, const char* rule) const
      ABSL_SHARED_LOCKS_REQUIRED(mu) {
    std::fprintf(stderr,
                 "uhmm: fatal: illegal page transition %s: page %zu (offset %#zx) of block %p is %s%s%s "
                 "(device page %p): %s\n",
                 transition, i, i * kPageSize, static_cast<const void*>(this), PageStateName(State(i)),
                 busy.bits_[i] ? ", busy" : "",
                 discard.bits_[i]     ? ", discard pending"
                 : duplicate.bits_[i] ? ", duplicate"
                                      : "",
                 static_cast<const void*>(pages.pages_[i]), rule);
    std::abort();
  }
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_MM_VA_BLOCK_H_
