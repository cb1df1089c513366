// The runtime's own zaps and the application's discards of managed memory (madvise MADV_DONTNEED
// and MADV_REMOVE). Both raise the same userfaultfd REMOVE event; it is classified when it is read
// (FaultService::ReadMessages), while the madvise that raised it is known to be in flight, and an
// application discard is applied with the rules of docs/SEMANTICS.md ("munmap, madvise and mremap").
#include <fcntl.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>

#include "absl/strings/str_format.h"
#include "runtime/api/runtime_impl.h"

namespace uhmm {
namespace {

// The first part of [from, to) that some mapping covers, read from /proc/self/maps.
std::optional<std::pair<uintptr_t, uintptr_t>> FirstMappedPiece(uintptr_t from, uintptr_t to) {
  FILE* f = std::fopen("/proc/self/maps", "re");
  if (f == nullptr) return std::nullopt;
  std::optional<std::pair<uintptr_t, uintptr_t>> piece;
  char line[512];
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line, "%lx-%lx", &lo, &hi) != 2 || hi <= from) continue;
    if (lo < to) piece = std::make_pair(std::max<uintptr_t>(from, lo), std::min<uintptr_t>(to, hi));
    break;
  }
  std::fclose(f);
  return piece;
}

}  // namespace

void RuntimeImpl::BeginZap(uintptr_t start, uintptr_t end) {
  MutexLock lock(&zap_mu_);
  zaps_.push_back(Zap{start, end, start});
}

void RuntimeImpl::EndZap(uintptr_t start, uintptr_t end) {
  // madvise returned, so the kernel handed out every event of this zap; a service thread may still
  // be classifying the last one.
  fault_service_->WaitForReadsInFlight();
  MutexLock lock(&zap_mu_);
  auto it = std::find_if(zaps_.begin(), zaps_.end(),
                         [&](const Zap& z) { return z.start == start && z.end == end; });
  if (it != zaps_.end()) zaps_.erase(it);
}

bool RuntimeImpl::ClaimZapEvent(uintptr_t start, uintptr_t end) {
  MutexLock lock(&zap_mu_);
  // A zap raises one event per mapping it spans, in address order, each one while its madvise
  // waits. Over one mapping (the common case) that is the whole zap.
  for (Zap& z : zaps_) {
    if (start == z.next && end == z.end) {
      z.next = end;
      counters_.own_zap_events.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
  }
  // The application split the user view (mprotect, munmap of a part): the next event of a zap is
  // its first still-mapped piece. An application discard of exactly that piece in the same instant
  // is indistinguishable, and equivalent: either way one discard of it is applied.
  for (Zap& z : zaps_) {
    if (start < z.next || end > z.end) continue;
    std::optional<std::pair<uintptr_t, uintptr_t>> piece = FirstMappedPiece(z.next, z.end);
    if (piece && piece->first == start && piece->second == end) {
      z.next = end;
      counters_.own_zap_events.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
  }
  return false;
}

void RuntimeImpl::ZeroShadow(ManagedRange& range, uintptr_t start, uintptr_t end) {
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

void RuntimeImpl::OnRemove(uintptr_t start, uintptr_t end) {
  counters_.ev_remove.fetch_add(1, std::memory_order_relaxed);
  for (auto& r : Overlapping(start, end)) {
    RangeRef ref(r);
    if (!ref) continue;  // being freed
    for (uintptr_t a = std::max(start, r->start()); a < std::min(end, r->end());) {
      const uintptr_t stop = std::min({end, r->end(), (a & ~(kBlockSize - 1)) + kBlockSize});
      DiscardInBlock(*r, a, stop);
      a = stop;
    }
  }
}

void RuntimeImpl::DiscardInBlock(ManagedRange& range, uintptr_t start, uintptr_t end) {
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
      for (size_t i = 0; i < kPagesPerBlock; ++i) {
        if (blk.device[i]) release.push_back(blk.pages[i]);
        blk.pages[i] = nullptr;
      }
      if (blk.device.any()) host_epoch_.fetch_add(1, std::memory_order_acq_rel);
      blk.device.reset();
      blk.poisoned.reset();
      ZeroShadow(range, block_start, block_start + kBlockSize);
    } else if (!(range.hugetlb() && !blk.device.any() && !blk.busy.any())) {
      for (uintptr_t a = start; a < end; a += kPageSize) {
        const size_t i = ManagedRange::page_in_block(a);
        if (blk.unmapped[i]) continue;  // mremapped away: its shadow is the data at the new address
        if (blk.busy[i]) {
          blk.discard.set(i);  // the migration holding it applies it at finalize
        } else {
          ApplyDiscardLocked(range, blk, a, &release);
        }
      }
    }
  }
  for (Page* p : release) put_page(p);
}

void RuntimeImpl::ApplyDiscardLocked(ManagedRange& range, VaBlock& blk, uintptr_t addr,
                                     std::vector<Page*>* release) {
  const size_t i = ManagedRange::page_in_block(addr);
  blk.discard.reset(i);
  if (blk.device[i] && range.hugetlb()) {
    // A hugetlb block lives in one place whole: zero the page where it is.
    absl::Status s = ZeroOnDevice(range, blk, addr, addr + kPageSize);
    if (s.ok()) return;
    std::fprintf(stderr,
                 "uhmm: zeroing discarded page %#lx of a device-resident hugetlb block failed (%s); "
                 "the block's data is lost and accesses raise SIGBUS\n",
                 static_cast<unsigned long>(addr), s.ToString().c_str());
    for (size_t j = 0; j < kPagesPerBlock; ++j) {
      if (blk.device[j]) release->push_back(blk.pages[j]);
      blk.pages[j] = nullptr;
    }
    blk.device.reset();
    blk.poisoned.set();
    return;
  }
  if (blk.device[i]) {
    release->push_back(blk.pages[i]);
    blk.pages[i] = nullptr;
    blk.device.reset(i);
    // Before the block lock goes: whoever sees the page on the host also sees that launch
    // coherence has work again.
    host_epoch_.fetch_add(1, std::memory_order_acq_rel);
  }
  blk.poisoned.reset(i);
  // Under the block lock: a migration to a device must not copy the old shadow meanwhile.
  ZeroShadow(range, addr, addr + kPageSize);
}

absl::Status RuntimeImpl::ZeroOnDevice(ManagedRange& range, VaBlock& blk, uintptr_t start, uintptr_t end) {
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
  CopyEngine& engine = device(lead->pgmap->device).copy_engine();
  absl::StatusOr<uint64_t> fence = engine.Submit(CopyDirection::kHostToDevice, ops);
  if (!fence.ok()) return fence.status();
  return engine.Wait(*fence);
}

}  // namespace uhmm
