// ManagedRange: one uhmm allocation. A memfd mapped twice: the user view (registered with
// userfaultfd in MINOR mode, the pointer the application gets) and the runtime view (never
// registered, the DMA source/destination). Split into 2 MiB VaBlocks.
#ifndef UHMM_RUNTIME_MM_MANAGED_RANGE_H_
#define UHMM_RUNTIME_MM_MANAGED_RANGE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/base/sync.h"
#include "runtime/mm/va_block.h"
#include "runtime/policy/advice.h"
#include "runtime/policy/policy.h"
#include "uhmm/backend.h"

namespace uhmm {

struct Mm;

using PageRuns = std::vector<std::pair<uintptr_t, uintptr_t>>;  // [start, end) address runs

// Appends the page at `addr` to `runs`, extending the last run when it ends at `addr`.
inline void AppendPageRun(PageRuns* runs, uintptr_t addr) {
  if (!runs->empty() && runs->back().second == addr) {
    runs->back().second += kPageSize;
  } else {
    runs->emplace_back(addr, addr + kPageSize);
  }
}

// Appends [start, end) to `pieces` cut at 2 MiB block boundaries, one piece per block it touches
// (the unit the migration drivers run in parallel).
inline void AppendBlockPieces(PageRuns* pieces, uintptr_t start, uintptr_t end) {
  for (uintptr_t a = start; a < end; a = std::min(end, NextBlockBoundary(a))) {
    pieces->emplace_back(a, std::min(end, NextBlockBoundary(a)));
  }
}

// 2 MiB hugepages free in the system's pool (0 when it cannot be read).
size_t FreeHugepages();

// Host memory that can back managed data: RAM + swap (SIZE_MAX when it cannot be read). No range
// may be larger (ManagedRange::Create refuses it with RESOURCE_EXHAUSTED).
size_t HostBackingBytes();

class ManagedRange {
 public:
  // Creates the memfd and both views; the user view is 2 MiB aligned, and placed over the address
  // space the backend reserved when it shares managed addresses with its devices. The runtime view
  // is registered with the backend (pinned). Does not register the user view with userfaultfd.
  // `hugetlb`: the memfd is hugetlbfs (2 MiB pages, size rounded up to 2 MiB); fails with
  // RESOURCE_EXHAUSTED naming vm.nr_hugepages when not enough hugepages are free, and for any range
  // larger than HostBackingBytes() before allocating anything.
  static absl::StatusOr<std::unique_ptr<ManagedRange>> Create(Mm& mm, size_t size, bool hugetlb = false);
  // Unregisters and unmaps the runtime view and closes the memfd (the user view is torn down first).
  ~ManagedRange();
  ManagedRange(const ManagedRange&) = delete;
  ManagedRange& operator=(const ManagedRange&) = delete;

  // The runtime parts this range belongs to (the migrate_vma phases reach them from here).
  Mm& mm() const { return mm_; }
  uintptr_t start() const { return start_; }
  uintptr_t end() const { return start_ + size_; }
  size_t size() const { return size_; }
  size_t requested_size() const { return requested_; }
  int memfd() const { return memfd_; }
  // 2 MiB hugetlb pages: the CPU maps a block whole or not at all, so every migration and every
  // CPU mapping of this range covers whole blocks (a block is entirely host or entirely device).
  bool hugetlb() const { return hugetlb_; }
  // The unit the CPU side maps: 4 KiB, or 2 MiB for hugetlb ranges.
  size_t cpu_page() const { return hugetlb_ ? kBlockSize : kPageSize; }
  // Read duplication: CPU writes are tracked here (the runtime has a write tracker, and the range is
  // not hugetlb), so pages that CPU reads bring home keep their device copy.
  bool duplicates_reads() const;
  ReadAhead& readahead() { return readahead_; }
  // Memory advice (uhmm_advise), per 4 KiB page.
  RangeAdvice& advice() { return advice_; }
  bool contains(uintptr_t addr) const { return addr >= start_ && addr < end(); }
  // Bytes of address space the backend reserved at start() (0: the runtime chose the address).
  size_t reserved() const { return reserved_; }
  // Puts the backend's PROT_NONE reservation back over the user view and releases it. For ranges
  // whose user view the runtime still owns (not after the application unmapped it).
  void ReleaseReservation();
  // The application unmapped some of the range: the CPU addresses may now belong to someone else.
  // Gives back only what the backend holds apart from them; false if it must be leaked.
  bool AbandonReservation();
  // Gives back a user view that was never published: the backend's reservation when it made one,
  // else plain munmap. For creation failures.
  void DiscardUserView();
  // Every page of the memfd exists (the backend pins host views): the user view can be mapped whole.
  bool populated() const { return populated_; }
  // In a forked child: the backend belongs to the parent, never call it.
  void DetachBackend() { backend_ = nullptr; }

  size_t num_blocks() const { return num_blocks_; }
  VaBlock& block_of(uintptr_t addr) { return blocks_[(addr - start_) / kBlockSize]; }
  VaBlock& block(size_t i) { return blocks_[i]; }
  uintptr_t block_start(size_t i) const { return start_ + i * kBlockSize; }
  static size_t page_in_block(uintptr_t addr) { return (addr % kBlockSize) / kPageSize; }
  // The runtime view of managed address `addr`.
  void* host_view(uintptr_t addr) const { return runtime_view_ + (addr - start_); }
  // Runs of [start, end) that the application has not unmapped (takes the block locks).
  PageRuns MappedRuns(uintptr_t start, uintptr_t end);

  // Launch coherence, one list per device: blocks whose pages became host-resident (allocation, a
  // migration to RAM, a discard), or moved to a device that device cannot reach (peer access), since
  // a launch sync for it last pushed them. Called under the block's lock at the moment pages move,
  // so no sync can miss them; the first block queued for a device puts the range on VaSpace's list
  // for it. TakeHostDirty empties a device's list (the blocks stay flagged until the sync looks).
  void MarkHostDirty(VaBlock& blk) ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu) {
    MarkLaunchWork(blk, ~uint64_t{0});
  }
  // Queues `blk` for the devices in `devices` (bit d: device d).
  void MarkLaunchWork(VaBlock& blk, uint64_t devices) ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu);
  std::vector<uint32_t> TakeHostDirty(int device);

  // Lifetime: operations Enter() before touching the range and Exit() after. BeginTeardown() makes
  // new Enter() calls fail and waits for the ones in flight.
  bool Enter();
  void Exit();
  void BeginTeardown();

 private:
  ManagedRange(Mm& mm, Backend* backend, size_t size, size_t requested, bool hugetlb);
  // Maps the user view; at the backend's reserved address when it has one.
  absl::Status MapUserView();

  Mm& mm_;
  Backend* backend_;
  const size_t size_;
  const size_t requested_;
  const size_t num_blocks_;
  uintptr_t start_ = 0;
  size_t reserved_ = 0;
  uint8_t* runtime_view_ = nullptr;
  bool view_registered_ = false;
  bool populated_ = false;
  const bool hugetlb_;
  int memfd_ = -1;
  ReadAhead readahead_;
  RangeAdvice advice_;
  std::unique_ptr<VaBlock[]> blocks_;

  Mutex dirty_mu_{LockRank::kRangeDirty};
  std::vector<std::vector<uint32_t>> dirty_ ABSL_GUARDED_BY(dirty_mu_);  // per device: block indices

  Mutex life_mu_{LockRank::kRangeLife};
  CondVar life_cv_;
  int inflight_ ABSL_GUARDED_BY(life_mu_) = 0;
  bool dying_ ABSL_GUARDED_BY(life_mu_) = false;
};

// Holds a range entered for the duration of an operation.
class RangeRef {
 public:
  RangeRef() = default;
  explicit RangeRef(std::shared_ptr<ManagedRange> r) : range_(std::move(r)) {
    if (range_ && !range_->Enter()) range_.reset();
  }
  RangeRef(RangeRef&& o) noexcept : range_(std::move(o.range_)) {}
  RangeRef& operator=(RangeRef&&) = delete;
  RangeRef(const RangeRef&) = delete;
  // Lets the reference go before leaving the range: whoever tears the range down holds another
  // reference while it waits for the ones in flight, so the last one, and with it the range's
  // destructor, is always the tearing-down thread's, never this one's (a launch callback, say).
  ~RangeRef() {
    if (!range_) return;
    ManagedRange* const r = range_.get();
    range_.reset();
    r->Exit();
  }
  // Another reference to the same range (empty when it is being torn down).
  RangeRef Clone() const { return RangeRef(range_); }
  ManagedRange* operator->() const { return range_.get(); }
  ManagedRange& operator*() const { return *range_; }
  ManagedRange* get() const { return range_.get(); }
  explicit operator bool() const { return range_ != nullptr; }

 private:
  std::shared_ptr<ManagedRange> range_;
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_MM_MANAGED_RANGE_H_
