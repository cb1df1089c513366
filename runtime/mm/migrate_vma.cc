// The three-phase migration (migrate_vma_setup / _pages / _finalize), the phase-2 copy helpers and
// page references (include/uhmm/pagemap.h), in the spirit of Linux mm/migrate_device.c. The phases
// change page state only through VaBlock's named transitions; the drivers that run them are in
// migrator.cc.
#include <sched.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "runtime/api/counters.h"
#include "runtime/fault/fault_service.h"
#include "runtime/fault/uffd.h"
#include "runtime/fault/uffd_events.h"
#include "runtime/fault/write_tracker.h"
#include "runtime/fault/zap_tracker.h"
#include "runtime/mm/device_table.h"
#include "runtime/mm/evictor.h"
#include "runtime/mm/migrator.h"
#include "runtime/trace/tracer.h"
#include "uhmm/pagemap.h"

namespace uhmm {
namespace {

ManagedRange& RangeOf(const MigrateVma* m) { return *static_cast<ManagedRange*>(m->vma); }

// Calls fn(block, page_index_in_block, entry_index, address) for every page of [m->start, m->end),
// holding each block's lock while its pages are visited. The thread-safety analysis cannot carry
// the lock into `fn` (a lambda's parameter), so each fn starts with blk.mu.AssertHeld(), which
// debug builds check against the locks this thread holds.
template <typename Fn>
void ForEachPageLocked(MigrateVma* m, Fn fn) {
  ManagedRange& r = RangeOf(m);
  for (uintptr_t a = m->start; a < m->end;) {
    VaBlock& blk = r.block_of(a);
    const uintptr_t stop = std::min(m->end, NextBlockBoundary(a));
    MutexLock lock(&blk.mu);
    for (; a < stop; a += kPageSize) {
      fn(blk, ManagedRange::page_in_block(a), (a - m->start) / kPageSize, a);
    }
  }
}

// Appends a page copy (host nullptr: a fill with zeros), merging it into the previous op when both
// sides are contiguous (fills: when the previous op is a fill ending at `device`).
void AppendCopy(std::vector<CopyOp>* ops, void* host, uint64_t device) {
  if (!ops->empty()) {
    CopyOp& last = ops->back();
    const bool host_follows =
        host == nullptr ? last.host == nullptr
                        : last.host != nullptr && static_cast<uint8_t*>(last.host) + last.bytes == host;
    if (host_follows && last.device + last.bytes == device) {
      last.bytes += kPageSize;
      return;
    }
  }
  ops->push_back({host, device, kPageSize});
}

// The migration's trace record, and the bytes and device of the fault it serves, if any.
void TraceMigration(const MigrateVma& m, bool to_device, int device, size_t moved) {
  if (trace::FaultTrace* ft = trace::CurrentFaultTrace(); ft && m.cause == MigrateCause::kFault) {
    ft->rec.bytes += moved * kPageSize;
    ft->rec.device = static_cast<int8_t>(device);
  }
  if (!trace::Tracer::enabled() || m.cpages == 0) return;
  const uint64_t now = trace::Tracer::Now();
  trace::TraceRecord r = {};
  r.type = trace::RecordType::kMigration;
  r.cause = static_cast<uint8_t>(m.cause);
  r.flags = to_device ? trace::kMigToDevice : 0;
  r.device = static_cast<int8_t>(device);
  r.addr = m.start;
  r.bytes = moved * kPageSize;
  r.t[trace::kMigStart] = m.trace_start_ns;
  r.t[trace::kMigSubmitted] = m.trace_submitted_ns;
  r.t[trace::kMigCopied] = m.trace_copied_ns;
  r.t[trace::kMigEnd] = now;
  trace::Tracer::Emit(r);
}

// Per page of [start, end): advised READ_MOSTLY and not written by the CPU (write tracking).
std::vector<bool> ReadMostlyClean(ManagedRange& r, uintptr_t start, uintptr_t end) {
  std::vector<bool> clean((end - start) / kPageSize, false);
  PageRuns read_mostly;
  r.advice().ForEachRun(start, end, [&](uintptr_t s, uintptr_t e, const PageAdvice& a) {
    if (a.read_mostly) read_mostly.emplace_back(s, e);
  });
  for (auto [s, e] : read_mostly) {
    const std::vector<bool> written = r.mm().write_tracker->WrittenPages(s, e);
    for (uintptr_t a = s; a < e; a += kPageSize)
      clean[(a - start) / kPageSize] = !written[(a - s) / kPageSize];
  }
  return clean;
}

absl::Status CopyAndWait(CopyEngine& engine, CopyDirection dir, const std::vector<CopyOp>& ops,
                         MigrateVma* m) {
  if (ops.empty()) return absl::OkStatus();
  absl::StatusOr<uint64_t> fence = engine.Submit(dir, ops);
  if (!fence.ok()) return fence.status();
  trace::FaultTrace* ft = m->cause == MigrateCause::kFault ? trace::CurrentFaultTrace() : nullptr;
  if (m->trace_start_ns != 0) {
    m->trace_submitted_ns = trace::Tracer::Now();
    if (ft) ft->rec.t[trace::kSubmitted] = m->trace_submitted_ns;
  }
  absl::Status s = engine.Wait(*fence);
  if (m->trace_start_ns != 0) {
    m->trace_copied_ns = trace::Tracer::Now();
    if (ft) ft->rec.t[trace::kCopied] = m->trace_copied_ns;
  }
  return s;
}

// Phase 2's end for moves to a device: copies `ops` into the pages allocated in m->dst and marks
// them copied, or leaves them unmarked (finalize rolls back) on a copy error. Else returns
// `alloc_status`: the pages that could not be allocated stay where they are.
absl::Status CopyToAllocated(CopyEngine& engine, CopyDirection dir, const std::vector<CopyOp>& ops,
                             MigrateVma* m, absl::Status alloc_status) {
  absl::Status s = CopyAndWait(engine, dir, ops, m);
  if (!s.ok()) return s;
  for (MigratePfn& dst : m->dst) {
    if (dst.page != nullptr) dst.flags |= kMigratePfnMigrate;
  }
  return alloc_status;
}

}  // namespace

absl::Status migrate_vma_setup(MigrateVma* m) {
  if (m == nullptr || m->vma == nullptr) {
    return absl::InvalidArgumentError("migrate_vma_setup: no vma");
  }
  m->trace_start_ns = trace::Tracer::NowIfEnabled();
  ManagedRange& r = RangeOf(m);
  const bool to_device = (m->flags & kMigrateSelectSystem) != 0;
  if (m->start >= m->end || m->start % kPageSize || m->end % kPageSize || m->start < r.start() ||
      m->end > r.end() || to_device == ((m->flags & kMigrateSelectDevicePrivate) != 0) ||
      (m->to_peer && (to_device || m->pgmap_owner == nullptr))) {
    return absl::InvalidArgumentError(
        absl::StrFormat("migrate_vma_setup: bad request [%#x, %#x) flags %#x for range [%#x, %#x)", m->start,
                        m->end, m->flags, r.start(), r.end()));
  }
  const size_t npages = (m->end - m->start) / kPageSize;
  m->src.assign(npages, MigratePfn{});
  m->dst.assign(npages, MigratePfn{});
  m->cpages = 0;
  m->skipped_busy = 0;
  // READ_MOSTLY at a launch: duplicates the CPU has not written stay as they are, mapped on the CPU
  // and current on the device (asked before anything is taken: a CPU write after this question is a
  // race with the launch, and the next launch sees it). Others go through the usual zap and copy.
  std::vector<bool> keep_duplicate;
  if (to_device && m->cause == MigrateCause::kLaunch && r.advice().Any() && r.mm().write_tracker != nullptr) {
    keep_duplicate = ReadMostlyClean(r, m->start, m->end);
  }
  PageRuns zap;
  bool duplicates = false;  // held duplicates whose device copy this migration may reuse
  bool zeros = false;       // held pages that are zero unless the CPU wrote them
  size_t dropped = 0;       // duplicates on another device than the target
  const uint64_t wanted_ns = to_device || m->to_peer ? trace::Tracer::Now() : 0;
  ForEachPageLocked(m, [&](VaBlock& blk, size_t i, size_t idx, uintptr_t addr) {
    blk.mu.AssertHeld();
    MigratePfn& src = m->src[idx];
    src.host = r.host_view(addr);
    if (wanted_ns != 0) blk.device_wanted_ns = wanted_ns;
    if (blk.Busy(i)) {
      ++m->skipped_busy;
      return;
    }
    const PageState state = blk.State(i);
    if (state == PageState::kPoisoned || state == PageState::kUnmapped) return;
    if (m->skip_if_moved_after_ns != 0 && blk.device_wanted_ns > m->skip_if_moved_after_ns) return;
    if (to_device) {
      if (state != PageState::kHost) return;
      if (!keep_duplicate.empty() && keep_duplicate[idx] && blk.Duplicate(i) &&
          blk.pages[i]->pgmap->owner == m->pgmap_owner) {
        return;  // a clean read-mostly duplicate: both copies stay valid
      }
      src.flags = kMigratePfnValid | kMigratePfnMigrate;
      if (blk.Duplicate(i)) {
        if (m->pgmap_owner == nullptr || blk.pages[i]->pgmap->owner == m->pgmap_owner) {
          src.page = blk.pages[i];
          src.flags |= kMigratePfnDuplicate;
          duplicates = true;
        } else {
          // A copy on another device: it goes, under the block lock (see Evictor::DropDuplicates).
          put_page(blk.DropDuplicate(i));
          ++dropped;
        }
      }
      if (blk.Zero(i)) {
        src.flags |= kMigratePfnZero;  // until the written answer below says otherwise
        zeros = true;
      }
      AppendPageRun(&zap, addr);
    } else {
      if (state != PageState::kDevice) return;
      Page* page = blk.pages[i];
      if (m->pgmap_owner != nullptr && page->pgmap->owner != m->pgmap_owner) return;
      src.page = page;
      src.flags = kMigratePfnValid | kMigratePfnMigrate | kMigratePfnDevice;
      if (!m->to_peer) {
        m->dst[idx].host = src.host;  // RAM destination: the shadow page itself
        m->dst[idx].flags = kMigratePfnValid;
      }
    }
    blk.BeginMigration(i);
    ++m->cpages;
  });
  if (dropped > 0) r.mm().counters->duplicates_dropped.fetch_add(dropped, std::memory_order_relaxed);
  // Take the CPU mappings away, so that CPU accesses fault and wait (deferred) until finalize.
  // MADV_DONTNEED keeps the shmem page; it raises a REMOVE event that a service thread must read
  // before madvise returns, so no lock is held here.
  Mm& mm = r.mm();
  for (auto [s, e] : zap) {
    mm.zaps->Begin(s, e);
    int rc = madvise(reinterpret_cast<void*>(s), e - s, MADV_DONTNEED);
    int err = errno;
    mm.zaps->End(s, e);
    // ENOMEM: part of the run was unmapped by the application (pages() drops those pages).
    if (rc != 0 && err != ENOMEM) {
      // Nothing commits. Runs zapped so far lost their written marks unasked: count every page as
      // written, so that finalize drops duplicates and zero flags it can no longer vouch for.
      for (MigratePfn& src : m->src) {
        src.flags &= ~(kMigratePfnMigrate | kMigratePfnZero);
        if (src.flags & kMigratePfnDuplicate) src.flags |= kMigratePfnDirty;
      }
      migrate_vma_finalize(m);
      return absl::InternalError(
          absl::StrFormat("migrate_vma_setup: madvise(DONTNEED) of [%#x, %#x): %s", s, e, strerror(err)));
    }
  }
  // Duplicates and zero pages the CPU wrote need a copy. Asked after the zap: a write before it
  // reads as written (zapping a written page leaves nothing, which reads as written), one after it
  // waits for finalize (fault/write_tracker.h). Without an answer, every page counts as written.
  if (duplicates || zeros) {
    const std::vector<bool> written = WrittenPages(mm.write_tracker, m->start, m->end);
    for (size_t idx = 0; idx < m->src.size(); ++idx) {
      if (!written[idx]) continue;
      if (m->src[idx].flags & kMigratePfnDuplicate) m->src[idx].flags |= kMigratePfnDirty;
      m->src[idx].flags &= ~kMigratePfnZero;
    }
  }
  return absl::OkStatus();
}

void migrate_vma_pages(MigrateVma* m) {
  bool lost = false;
  ForEachPageLocked(m, [&](VaBlock& blk, size_t i, size_t idx, uintptr_t) {
    blk.mu.AssertHeld();
    MigratePfn& src = m->src[idx];
    if (!(src.flags & kMigratePfnMigrate)) return;
    // Lost races: the backend did not copy it, or the application unmapped it or a device error
    // poisoned it meanwhile (it left the state it was taken in), or (to a device) the application
    // discarded it, so what was copied is not the data any more (finalize applies it).
    const bool to_device = (m->flags & kMigrateSelectSystem) != 0;
    const PageState taken = to_device ? PageState::kHost : PageState::kDevice;
    if (!(m->dst[idx].flags & kMigratePfnMigrate) || blk.State(i) != taken ||
        (to_device && blk.DiscardPending(i))) {
      src.flags &= ~kMigratePfnMigrate;
      lost = true;
    }
  });
  // A hugetlb block is mapped for the CPU whole or not at all, so it moves whole or not at all
  // (the drivers migrate such ranges one whole block at a time).
  if (lost && RangeOf(m).hugetlb()) {
    for (MigratePfn& src : m->src) src.flags &= ~kMigratePfnMigrate;
  }
}

void migrate_vma_finalize(MigrateVma* m) {
  ManagedRange& r = RangeOf(m);
  Mm& mm = r.mm();
  const bool to_device = (m->flags & kMigrateSelectSystem) != 0;
  std::vector<Page*> release;
  std::vector<bool> map(m->src.size(), false);  // committed to RAM: the CPU maps it
  size_t moved = 0, reused = 0;                 // reused: duplicates committed without a copy
  size_t filled = 0;                            // zero pages committed with a fill
  int device = -1;
  const uint64_t now = to_device || m->to_peer ? trace::Tracer::Now() : 0;
  ForEachPageLocked(m, [&](VaBlock& blk, size_t i, size_t idx, uintptr_t addr) {
    blk.mu.AssertHeld();
    const MigratePfn& src = m->src[idx];
    const MigratePfn& dst = m->dst[idx];
    if (!(src.flags & kMigratePfnValid)) return;
    // Copied, and the page is still in the state it was taken in: not unmapped or poisoned while
    // held (those pages stay where they are, and EndMigration drops their device page).
    const bool copied = (src.flags & kMigratePfnMigrate) && (dst.flags & kMigratePfnMigrate);
    if (to_device || m->to_peer) {
      // To a device page: from the host, or from another device's page in one hop.
      if (copied && blk.State(i) == (to_device ? PageState::kHost : PageState::kDevice)) {
        // Under the block lock: a fault message read after this is newer than the move.
        blk.device_seq = mm.faults->read_seq();
        blk.to_device_ns = now;  // thrashing detection (policy.h)
        blk.returned = false;
        if (to_device) {
          blk.CommitToDevice(i, dst.page);
        } else {
          release.push_back(blk.CommitToPeer(i, dst.page));  // src.page
        }
        dst.page->managed_addr.store(addr, std::memory_order_release);
        device = dst.page->pgmap->device;
        // Devices whose kernels cannot reach this one's memory must move the page before they use it.
        if (const uint64_t unreached = (*mm.devices)[device].unreached_by; unreached != 0) {
          r.MarkLaunchWork(blk, unreached);
        }
        ++moved;
        if ((src.flags & kMigratePfnDuplicate) && !(src.flags & kMigratePfnDirty)) ++reused;
        if (src.flags & kMigratePfnZero) ++filled;
      } else if (dst.page != nullptr && !(dst.flags & kMigratePfnDuplicate)) {
        release.push_back(dst.page);  // (a duplicate's own page stays with it)
      }
    } else if (copied && blk.State(i) == PageState::kDevice) {
      if (Page* old = blk.CommitToHost(i, m->keep_device_copy)) release.push_back(old);  // src.page
      r.MarkHostDirty(blk);
      device = src.page->pgmap->device;
      ++moved;
      map[idx] = true;
    }
  });
  // The old pages are unreferenced now (their data was copied, or they were never committed).
  for (Page* p : release) put_page(p);
  release.clear();
  mm.migrator->Count(*m, moved);
  if (reused > 0) mm.counters->duplicates_reused.fetch_add(reused, std::memory_order_relaxed);
  if (filled > 0) mm.counters->zero_pages_filled.fetch_add(filled, std::memory_order_relaxed);
  if (!to_device && m->keep_device_copy && moved > 0) {
    mm.counters->duplicates_kept.fetch_add(moved, std::memory_order_relaxed);
  }
  if (m->trace_start_ns != 0) TraceMigration(*m, to_device || m->to_peer, device, moved);

  // Block by block, under its lock and while the pages are still busy (so no migration can zap
  // them first): apply the application discards that arrived while we held the pages (they end on
  // the host and zero; to a device the caller's retry moves the zeros), map the RAM pages for the
  // CPU (CONTINUE also wakes the threads waiting on them), then let the pages go.
  // A traced fault maps first and wakes after, so that its trace tells the two apart.
  trace::FaultTrace* ft =
      m->trace_start_ns != 0 && m->cause == MigrateCause::kFault ? trace::CurrentFaultTrace() : nullptr;
  PageRuns woken;
  std::vector<uffd_msg> deferred;
  size_t stale_dropped = 0;
  for (uintptr_t a = m->start; a < m->end;) {
    VaBlock& blk = r.block_of(a);
    const uintptr_t stop = std::min(m->end, NextBlockBoundary(a));
    MutexLock lock(&blk.mu);
    PageRuns runs;
    for (uintptr_t p = a; p < stop; p += kPageSize) {
      const size_t i = ManagedRange::page_in_block(p), idx = (p - m->start) / kPageSize;
      if (!(m->src[idx].flags & kMigratePfnValid)) continue;
      if (blk.DiscardPending(i)) {
        mm.events->ApplyDiscard(r, blk, p, &release);
        if (to_device) ++m->skipped_busy;
      }
      // Zeroed if it was discarded: still ours to map. Not if it was poisoned or unmapped since.
      if (map[idx] && blk.State(i) == PageState::kHost) AppendPageRun(&runs, p);
    }
    // Not while an application discard is pending there: its faults wait for it, and a CPU write
    // made after that madvise returned must not land in the old data.
    for (const auto& run : runs) {
      const uintptr_t s = run.first, e = run.second;
      mm.faults->MapUnlessDiscarded(s, e, [&] {
        return mm.uffd->Continue(s, e - s, /*wake=*/ft == nullptr, r.cpu_page(), /*drain_events=*/false,
                                 /*write_protect=*/m->keep_device_copy);
      });
    }
    woken.insert(woken.end(), runs.begin(), runs.end());
    for (; a < stop; a += kPageSize) {
      const MigratePfn& src = m->src[(a - m->start) / kPageSize];
      if (!(src.flags & kMigratePfnValid)) continue;
      const size_t i = ManagedRange::page_in_block(a);
      if (Page* p = blk.EndMigration(i)) release.push_back(p);
      // A push of a duplicate the CPU wrote that did not commit (a copy error, a lost race): its
      // copy is stale (perhaps half written), and the zap took the page's written mark, so a later
      // write-protected mapping would read as clean. The copy goes.
      if (to_device && (src.flags & kMigratePfnDirty) && blk.State(i) == PageState::kHost &&
          blk.Duplicate(i)) {
        release.push_back(blk.DropDuplicate(i));
        ++stale_dropped;
      }
      // The same for a zero page: only one that read as unwritten after the zap is still zero.
      if (to_device && !(src.flags & kMigratePfnZero)) blk.ForgetZero(i);
    }
    deferred.insert(deferred.end(), blk.deferred.begin(), blk.deferred.end());
    blk.deferred.clear();
  }
  for (Page* p : release) put_page(p);
  if (stale_dropped > 0) mm.counters->duplicates_dropped.fetch_add(stale_dropped, std::memory_order_relaxed);
  if (ft != nullptr && !woken.empty()) {
    ft->rec.t[trace::kMapped] = trace::Tracer::Now();
    for (auto [s, e] : woken) {
      absl::Status st = mm.uffd->Wake(s, e - s);
      if (!st.ok()) std::fprintf(stderr, "%s\n", st.ToString().c_str());
    }
    ft->rec.t[trace::kWoken] = trace::Tracer::Now();
  }
  mm.faults->Requeue(std::move(deferred));
}

absl::Status migrate_copy_to_ram(MigrateVma* m, CopyEngine& engine) {
  std::vector<CopyOp> ops;
  for (size_t idx = 0; idx < m->src.size(); ++idx) {
    const MigratePfn& src = m->src[idx];
    if (src.flags & kMigratePfnMigrate) AppendCopy(&ops, m->dst[idx].host, src.page->dma_addr);
  }
  absl::Status s = CopyAndWait(engine, CopyDirection::kDeviceToHost, ops, m);
  if (!s.ok()) return s;  // dst entries stay without kMigratePfnMigrate: finalize rolls back
  for (size_t idx = 0; idx < m->src.size(); ++idx) {
    if (m->src[idx].flags & kMigratePfnMigrate) m->dst[idx].flags |= kMigratePfnMigrate;
  }
  return absl::OkStatus();
}

absl::Status migrate_alloc_and_copy_to_device(MigrateVma* m, Pagemap& pgmap, CopyEngine& engine) {
  std::vector<CopyOp> ops;
  absl::Status alloc_status;
  for (size_t idx = 0; idx < m->src.size(); ++idx) {
    const MigratePfn& src = m->src[idx];
    if (!(src.flags & kMigratePfnMigrate)) continue;
    if (src.flags & kMigratePfnDuplicate) {
      // The page's own copy on this device: current unless the CPU wrote the page.
      m->dst[idx] =
          MigratePfn{src.page, nullptr, kMigratePfnValid | kMigratePfnDevice | kMigratePfnDuplicate};
      if (src.flags & kMigratePfnDirty) AppendCopy(&ops, src.host, src.page->dma_addr);
      continue;
    }
    absl::StatusOr<Page*> page = alloc_device_page(pgmap, m->start + idx * kPageSize);
    if (!page.ok()) {
      alloc_status = page.status();
      break;  // copy what was allocated; the rest stays on the host
    }
    m->dst[idx] = MigratePfn{*page, nullptr, kMigratePfnValid | kMigratePfnDevice};
    // A zero page gets zeros on the device without crossing the bus.
    AppendCopy(&ops, (src.flags & kMigratePfnZero) ? nullptr : src.host, (*page)->dma_addr);
  }
  return CopyToAllocated(engine, CopyDirection::kHostToDevice, ops, m, alloc_status);
}

absl::Status migrate_alloc_and_copy_from_peer(MigrateVma* m, Pagemap& pgmap, CopyEngine& engine) {
  std::vector<CopyOp> ops;
  absl::Status alloc_status;
  for (size_t idx = 0; idx < m->src.size(); ++idx) {
    const MigratePfn& src = m->src[idx];
    if (!(src.flags & kMigratePfnMigrate)) continue;
    absl::StatusOr<Page*> page = alloc_device_page(pgmap, m->start + idx * kPageSize);
    if (!page.ok()) {
      alloc_status = page.status();
      break;  // copy what was allocated; the rest stays where it is
    }
    m->dst[idx] = MigratePfn{*page, nullptr, kMigratePfnValid | kMigratePfnDevice};
    const uint64_t from = src.page->dma_addr, to = (*page)->dma_addr;
    if (!ops.empty() && ops.back().peer + ops.back().bytes == from &&
        ops.back().device + ops.back().bytes == to) {
      ops.back().bytes += kPageSize;
    } else {
      ops.push_back({nullptr, to, kPageSize, from});
    }
  }
  return CopyToAllocated(engine, CopyDirection::kPeerToDevice, ops, m, alloc_status);
}

absl::Status migrate_fault_to_ram(VmFault* vmf, const void* owner, CopyEngine& engine) {
  MigrateVma m;
  m.vma = vmf->vma;
  m.start = vmf->start;
  m.end = vmf->end;
  m.flags = kMigrateSelectDevicePrivate;
  m.pgmap_owner = owner;
  m.cause = MigrateCause::kFault;
  m.keep_device_copy = vmf->keep_device_copy;
  if (absl::Status s = migrate_vma_setup(&m); !s.ok()) return s;
  absl::Status s = m.cpages ? migrate_copy_to_ram(&m, engine) : absl::OkStatus();
  migrate_vma_pages(&m);
  migrate_vma_finalize(&m);
  return s;
}

absl::StatusOr<Page*> alloc_device_page(Pagemap& pgmap, uintptr_t addr) {
  auto* ds = static_cast<DeviceState*>(pgmap.internal);
  return ds->evictor->AllocDevicePage(*ds, addr);
}

void page_pool_release(Page* page) { static_cast<DeviceState*>(page->pgmap->internal)->pool->Release(page); }

void put_page(Page* page) {
  const int32_t old = page->refcount.fetch_sub(1, std::memory_order_acq_rel);
  if (old == 2) {
    page->pgmap->ops->page_free(page);
  } else if (old <= 1) {
    std::fprintf(stderr, "uhmm: fatal: put_page on free device page pfn %llu (refcount was %d)\n",
                 static_cast<unsigned long long>(page->pfn), old);
    std::abort();
  }
}

}  // namespace uhmm
