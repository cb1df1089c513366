// Application discards, munmap and mremap of managed memory; see uffd_events.h.
#include "runtime/fault/uffd_events.h"

#include <fcntl.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_format.h"
#include "runtime/api/counters.h"
#include "runtime/mm/device_table.h"
#include "runtime/mm/migrator.h"
#include "runtime/mm/va_space.h"

namespace uhmm {

void UffdEvents::ZeroShadow(ManagedRange& range, uintptr_t start, uintptr_t end) {
  // Punching gives the memory back (a whole hugepage returns to the system's pool; part of one is
  // zeroed in place) and never faults here. A pinned shadow must keep its pages, which the device
  // DMAs into: zero those through the runtime view.
  if (!range.populated() &&
      fallocate(range.memfd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                static_cast<off_t>(start - range.start()), static_cast<off_t>(end - start)) == 0) {
    return;
  }
  std::memset(range.host_view(start), 0, end - start);
}

void UffdEvents::OnRemove(uintptr_t start, uintptr_t end) {
  mm_.counters->ev_remove.fetch_add(1, std::memory_order_relaxed);
  for (auto& r : mm_.va_space->Overlapping(start, end)) {
    RangeRef ref(r);
    if (!ref) continue;  // being freed
    for (uintptr_t a = std::max(start, r->start()); a < std::min(end, r->end());) {
      const uintptr_t stop = std::min({end, r->end(), (a & ~(kBlockSize - 1)) + kBlockSize});
      DiscardInBlock(*r, a, stop);
      a = stop;
    }
  }
}

void UffdEvents::DiscardInBlock(ManagedRange& range, uintptr_t start, uintptr_t end) {
  VaBlock& blk = range.block_of(start);
  const uintptr_t block_start = start & ~(kBlockSize - 1);
  std::vector<Page*> release;
  {
    MutexLock lock(&blk.mu);
    // The kernel's rules for hugetlb memory: MADV_DONTNEED acts on whole 2 MiB pages only (its
    // events are never partial); MADV_REMOVE frees whole pages and zeroes partial ones in place,
    // so a host-resident block has nothing left to do for a partial one.
    const bool whole = start == block_start && end == std::min(block_start + kBlockSize, range.end());
    if (range.hugetlb() && whole && !blk.busy.any()) {
      // The whole hugepage goes, wherever it was.
      range.MarkHostDirty(blk);  // it ends host-resident (zero)
      for (size_t i = 0; i < kPagesPerBlock; ++i) {
        if (blk.State(i) == PageState::kUnmapped) continue;
        if (Page* p = blk.Discard(i)) release.push_back(p);
      }
      ZeroShadow(range, block_start, block_start + kBlockSize);
    } else if (!(range.hugetlb() && !blk.device.any() && !blk.busy.any())) {
      for (uintptr_t a = start; a < end; a += kPageSize) {
        const size_t i = ManagedRange::page_in_block(a);
        // Mremapped away: its shadow is the data at the new address.
        if (blk.State(i) == PageState::kUnmapped) continue;
        if (blk.Busy(i)) {
          blk.MarkDiscardPending(i);  // the migration holding it applies it at finalize
        } else {
          ApplyDiscard(range, blk, a, &release);
        }
      }
    }
  }
  for (Page* p : release) put_page(p);
}

void UffdEvents::ApplyDiscard(ManagedRange& range, VaBlock& blk, uintptr_t addr,
                              std::vector<Page*>* release) {
  const size_t i = ManagedRange::page_in_block(addr);
  if (blk.State(i) == PageState::kDevice && range.hugetlb()) {
    // A hugetlb block lives in one place whole: zero the page where it is.
    absl::Status s = ZeroOnDevice(range, blk, addr, addr + kPageSize);
    if (s.ok()) {
      blk.DiscardOnDevice(i);
      return;
    }
    std::fprintf(stderr,
                 "uhmm: zeroing discarded page %#lx of a device-resident hugetlb block failed (%s); "
                 "the block's data is lost and accesses raise SIGBUS\n",
                 static_cast<unsigned long>(addr), s.ToString().c_str());
    // The discard is done (nothing is left to zero), then every page of the block is lost. Pages a
    // migration holds keep their device page until it lets them go (EndMigration drops it).
    if (Page* p = blk.Discard(i)) release->push_back(p);
    for (size_t j = 0; j < kPagesPerBlock; ++j) {
      if (blk.State(j) == PageState::kUnmapped) continue;
      if (Page* p = blk.Poison(j)) release->push_back(p);
    }
    return;
  }
  if (Page* p = blk.Discard(i)) release->push_back(p);
  // Host-resident now (it may have been on a device, or poisoned): queued for launch coherence
  // before the block lock goes.
  range.MarkHostDirty(blk);
  // Under the block lock: a migration to a device must not copy the old shadow meanwhile.
  ZeroShadow(range, addr, addr + kPageSize);
}

absl::Status UffdEvents::ZeroOnDevice(ManagedRange& range, VaBlock& blk, uintptr_t start, uintptr_t end) {
  // The shadow of a device-resident block is stale anyway: zero that part of it and copy it over.
  std::memset(range.host_view(start), 0, end - start);
  const size_t first = ManagedRange::page_in_block(start);
  Page* const lead = blk.pages[first];
  if (lead == nullptr) return absl::InternalError("no device page behind the discarded part");
  std::vector<CopyOp> ops;
  for (uintptr_t a = start; a < end; a += kPageSize) {
    Page* p = blk.pages[ManagedRange::page_in_block(a)];
    if (p == nullptr || p->pgmap != lead->pgmap) {
      return absl::InternalError("the block's pages are not all on one device");
    }
    if (!ops.empty() && static_cast<uint8_t*>(ops.back().host) + ops.back().bytes == range.host_view(a) &&
        ops.back().device + ops.back().bytes == p->dma_addr) {
      ops.back().bytes += kPageSize;
    } else {
      ops.push_back({range.host_view(a), p->dma_addr, kPageSize});
    }
  }
  CopyEngine& engine = (*mm_.devices)[lead->pgmap->device].device->copy_engine();
  absl::StatusOr<uint64_t> fence = engine.Submit(CopyDirection::kHostToDevice, ops);
  if (!fence.ok()) return fence.status();
  return engine.Wait(*fence);
}

void UffdEvents::OnUnmap(uintptr_t start, uintptr_t end) {
  mm_.counters->ev_unmap.fetch_add(1, std::memory_order_relaxed);
  mm_.va_space->ForgetAddresses(start, end);
}

void UffdEvents::OnRemap(uintptr_t from, uintptr_t to, size_t len) {
  mm_.counters->ev_remap.fetch_add(1, std::memory_order_relaxed);
  // mremap moved [from, from+len) to `to`. Bring its device pages home so the shared shadow is the
  // data; the new address is then plain host memory (its faults map the shadow), and the old
  // addresses are forgotten like an munmap.
  for (auto& r : mm_.va_space->Overlapping(from, from + len)) {
    RangeRef ref(r);
    if (!ref) continue;
    absl::Status s = mm_.migrator->ToHost(*r, std::max(from, r->start()), std::min(from + len, r->end()),
                                          MigrateCause::kAddressChange);
    if (!s.ok()) std::fprintf(stderr, "%s\n", s.ToString().c_str());
  }
  (void)to;
  mm_.va_space->ForgetAddresses(from, from + len);
}

}  // namespace uhmm
