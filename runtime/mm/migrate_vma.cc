// The three-phase migration (migrate_vma_setup / _pages / _finalize), the phase-2 copy helpers,
// page references, and the runtime's migration drivers and eviction built on them.
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
#include "runtime/api/runtime_impl.h"
#include "runtime/trace/tracer.h"
#include "uhmm/pagemap.h"

namespace uhmm {
namespace {

// The managed addresses the calling thread is migrating to a device for one request. Eviction on
// its behalf never takes pages from there: a request must not evict what it just placed (with a
// small pool, a migration of several blocks would otherwise send its own first blocks home).
thread_local std::pair<uintptr_t, uintptr_t> t_protected = {0, 0};

ManagedRange& RangeOf(const MigrateVma* m) { return *static_cast<ManagedRange*>(m->vma); }

uintptr_t NextBlockBoundary(uintptr_t addr) { return (addr & ~(kBlockSize - 1)) + kBlockSize; }

// Calls fn(block, page_index_in_block, entry_index, address) for every page of [m->start, m->end),
// holding each block's lock while its pages are visited.
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

// Appends a page copy, merging it into the previous op when both sides are contiguous.
void AppendCopy(std::vector<CopyOp>* ops, void* host, uint64_t device) {
  if (!ops->empty()) {
    CopyOp& last = ops->back();
    if (static_cast<uint8_t*>(last.host) + last.bytes == host && last.device + last.bytes == device) {
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

}  // namespace

absl::Status migrate_vma_setup(MigrateVma* m) {
  if (m == nullptr || m->vma == nullptr) {
    return absl::InvalidArgumentError("migrate_vma_setup: no vma");
  }
  m->trace_start_ns = trace::Tracer::NowIfEnabled();
  ManagedRange& r = RangeOf(m);
  const bool to_device = (m->flags & kMigrateSelectSystem) != 0;
  if (m->start >= m->end || m->start % kPageSize || m->end % kPageSize || m->start < r.start() ||
      m->end > r.end() || to_device == ((m->flags & kMigrateSelectDevicePrivate) != 0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "migrate_vma_setup: bad request [%#x, %#x) flags %#x for range [%#x, %#x)", m->start,
        m->end, m->flags, r.start(), r.end()));
  }
  const size_t npages = (m->end - m->start) / kPageSize;
  m->src.assign(npages, MigratePfn{});
  m->dst.assign(npages, MigratePfn{});
  m->cpages = 0;
  m->skipped_busy = 0;
  PageRuns zap;
  const uint64_t wanted_ns = to_device ? trace::Tracer::Now() : 0;
  ForEachPageLocked(m, [&](VaBlock& blk, size_t i, size_t idx, uintptr_t addr)
                           ABSL_NO_THREAD_SAFETY_ANALYSIS {
    MigratePfn& src = m->src[idx];
    src.host = r.host_view(addr);
    if (to_device) blk.device_wanted_ns = wanted_ns;
    if (blk.busy[i]) {
      ++m->skipped_busy;
      return;
    }
    if (blk.poisoned[i] || blk.unmapped[i]) return;
    if (m->skip_if_moved_after_ns != 0 && blk.device_wanted_ns > m->skip_if_moved_after_ns) return;
    if (to_device) {
      if (blk.device[i]) return;
      src.flags = kMigratePfnValid | kMigratePfnMigrate;
      AppendPageRun(&zap, addr);
    } else {
      if (!blk.device[i]) return;
      Page* page = blk.pages[i];
      if (m->pgmap_owner != nullptr && page->pgmap->owner != m->pgmap_owner) return;
      src.page = page;
      src.flags = kMigratePfnValid | kMigratePfnMigrate | kMigratePfnDevice;
      m->dst[idx].host = src.host;  // RAM destination: the shadow page itself
      m->dst[idx].flags = kMigratePfnValid;
    }
    blk.busy.set(i);
    ++m->cpages;
  });
  // Take the CPU mappings away, so that CPU accesses fault and wait (deferred) until finalize.
  // MADV_DONTNEED keeps the shmem page; it raises a REMOVE event that a service thread must read
  // before madvise returns, so no lock is held here.
  RuntimeImpl* rt = r.runtime();
  for (auto [s, e] : zap) {
    rt->BeginZap(s, e);
    int rc = madvise(reinterpret_cast<void*>(s), e - s, MADV_DONTNEED);
    int err = errno;
    rt->EndZap(s, e);
    // ENOMEM: part of the run was unmapped by the application (pages() drops those pages).
    if (rc != 0 && err != ENOMEM) {
      for (MigratePfn& src : m->src) src.flags &= ~kMigratePfnMigrate;
      migrate_vma_finalize(m);
      return absl::InternalError(
          absl::StrFormat("migrate_vma_setup: madvise(DONTNEED) of [%#x, %#x): %s", s, e, strerror(err)));
    }
  }
  return absl::OkStatus();
}

void migrate_vma_pages(MigrateVma* m) {
  bool lost = false;
  ForEachPageLocked(m, [&](VaBlock& blk, size_t i, size_t idx, uintptr_t)
                           ABSL_NO_THREAD_SAFETY_ANALYSIS {
    MigratePfn& src = m->src[idx];
    if (!(src.flags & kMigratePfnMigrate)) return;
    // Lost races: the backend did not copy it, or the application unmapped it meanwhile, or (to a
    // device) discarded it, so what was copied is not the data any more (finalize applies it).
    const bool to_device = (m->flags & kMigrateSelectSystem) != 0;
    if (!(m->dst[idx].flags & kMigratePfnMigrate) || blk.unmapped[i] || (to_device && blk.discard[i])) {
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
  RuntimeImpl* rt = r.runtime();
  const bool to_device = (m->flags & kMigrateSelectSystem) != 0;
  std::vector<Page*> release;
  std::vector<bool> map(m->src.size(), false);  // committed to RAM: the CPU maps it
  size_t moved = 0;
  int device = -1;
  const uint64_t now = to_device ? trace::Tracer::Now() : 0;
  ForEachPageLocked(m, [&](VaBlock& blk, size_t i, size_t idx, uintptr_t addr)
                           ABSL_NO_THREAD_SAFETY_ANALYSIS {
    const MigratePfn& src = m->src[idx];
    const MigratePfn& dst = m->dst[idx];
    if (!(src.flags & kMigratePfnValid)) return;
    const bool commit = (src.flags & kMigratePfnMigrate) && (dst.flags & kMigratePfnMigrate) &&
                        !blk.unmapped[i];
    if (to_device) {
      if (commit) {
        // Under the block lock: a fault message read after this is newer than the move.
        blk.device_seq = rt->fault_service().read_seq();
        blk.to_device_ns = now;  // thrashing detection (policy.h)
        blk.returned = false;
        blk.device.set(i);
        blk.pages[i] = dst.page;
        dst.page->managed_addr.store(addr, std::memory_order_release);
        device = dst.page->pgmap->device;
        ++moved;
      } else if (dst.page != nullptr) {
        release.push_back(dst.page);
      }
    } else if (commit || blk.unmapped[i]) {
      blk.device.reset(i);
      blk.pages[i] = nullptr;
      release.push_back(src.page);
      if (commit) {
        device = src.page->pgmap->device;
        ++moved;
        map[idx] = true;
      }
    }
  });
  // The old pages are unreferenced now (their data was copied, or they were never committed).
  for (Page* p : release) put_page(p);
  release.clear();
  rt->CountMigrated(to_device, m->cause, moved);
  if (m->trace_start_ns != 0) TraceMigration(*m, to_device, device, moved);

  // Block by block, under its lock and while the pages are still busy (so no migration can zap
  // them first): apply the application discards that arrived while we held the pages (they end on
  // the host and zero; to a device the caller's retry moves the zeros), map the RAM pages for the
  // CPU (CONTINUE also wakes the threads waiting on them), then let the pages go.
  // A traced fault maps first and wakes after, so that its trace tells the two apart.
  trace::FaultTrace* ft =
      m->trace_start_ns != 0 && m->cause == MigrateCause::kFault ? trace::CurrentFaultTrace() : nullptr;
  PageRuns woken;
  std::vector<uffd_msg> deferred;
  for (uintptr_t a = m->start; a < m->end;) {
    VaBlock& blk = r.block_of(a);
    const uintptr_t stop = std::min(m->end, NextBlockBoundary(a));
    MutexLock lock(&blk.mu);
    PageRuns runs;
    for (uintptr_t p = a; p < stop; p += kPageSize) {
      const size_t i = ManagedRange::page_in_block(p), idx = (p - m->start) / kPageSize;
      if (!(m->src[idx].flags & kMigratePfnValid)) continue;
      if (blk.discard[i]) {
        rt->ApplyDiscardLocked(r, blk, p, &release);
        if (to_device) ++m->skipped_busy;
      }
      if (map[idx]) AppendPageRun(&runs, p);  // zeroed if it was discarded: still ours to map
    }
    // Not while an application discard is pending there: its faults wait for it, and a CPU write
    // made after that madvise returned must not land in the old data.
    for (const auto& run : runs) {
      const uintptr_t s = run.first, e = run.second;
      rt->fault_service().MapUnlessDiscarded(s, e, [&] {
        return rt->uffd().Continue(s, e - s, /*wake=*/ft == nullptr, r.cpu_page(), /*drain_events=*/false);
      });
    }
    woken.insert(woken.end(), runs.begin(), runs.end());
    for (; a < stop; a += kPageSize) {
      if (m->src[(a - m->start) / kPageSize].flags & kMigratePfnValid) blk.busy.reset(ManagedRange::page_in_block(a));
    }
    deferred.insert(deferred.end(), blk.deferred.begin(), blk.deferred.end());
    blk.deferred.clear();
  }
  for (Page* p : release) put_page(p);
  if (ft != nullptr && !woken.empty()) {
    ft->rec.t[trace::kMapped] = trace::Tracer::Now();
    for (auto [s, e] : woken) {
      absl::Status st = rt->uffd().Wake(s, e - s);
      if (!st.ok()) std::fprintf(stderr, "%s\n", st.ToString().c_str());
    }
    ft->rec.t[trace::kWoken] = trace::Tracer::Now();
  }
  rt->fault_service().Requeue(std::move(deferred));
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
    absl::StatusOr<Page*> page = alloc_device_page(pgmap, m->start + idx * kPageSize);
    if (!page.ok()) {
      alloc_status = page.status();
      break;  // copy what was allocated; the rest stays on the host
    }
    m->dst[idx] = MigratePfn{*page, nullptr, kMigratePfnValid | kMigratePfnDevice};
    AppendCopy(&ops, src.host, (*page)->dma_addr);
  }
  absl::Status s = CopyAndWait(engine, CopyDirection::kHostToDevice, ops, m);
  if (!s.ok()) return s;
  for (MigratePfn& dst : m->dst) {
    if (dst.page != nullptr) dst.flags |= kMigratePfnMigrate;
  }
  return alloc_status;
}

absl::Status migrate_fault_to_ram(VmFault* vmf, const void* owner, CopyEngine& engine) {
  MigrateVma m;
  m.vma = vmf->vma;
  m.start = vmf->start;
  m.end = vmf->end;
  m.flags = kMigrateSelectDevicePrivate;
  m.pgmap_owner = owner;
  m.cause = MigrateCause::kFault;
  if (absl::Status s = migrate_vma_setup(&m); !s.ok()) return s;
  absl::Status s = m.cpages ? migrate_copy_to_ram(&m, engine) : absl::OkStatus();
  migrate_vma_pages(&m);
  migrate_vma_finalize(&m);
  return s;
}

absl::StatusOr<Page*> alloc_device_page(Pagemap& pgmap, uintptr_t addr) {
  auto* ds = static_cast<DeviceState*>(pgmap.internal);
  return ds->rt->AllocDevicePage(*ds, addr);
}

void page_pool_release(Page* page) {
  static_cast<DeviceState*>(page->pgmap->internal)->pool->Release(page);
}

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

// ---- Drivers ---------------------------------------------------------------------------------

namespace {
// Runs the three phases over [start, end) one 2 MiB block at a time; `copy` is phase 2.
template <typename Copy>
absl::StatusOr<size_t> RunMigration(ManagedRange& range, uintptr_t start, uintptr_t end,
                                    uint32_t select, const void* owner, MigrateCause cause,
                                    Copy copy, uint64_t skip_if_moved_after_ns = 0) {
  size_t moved = 0;
  if (range.hugetlb()) {  // whole blocks only (see migrate_vma_pages)
    start &= ~(kBlockSize - 1);
    end = std::min(range.end(), NextBlockBoundary(end - 1));
  }
  for (uintptr_t a = start; a < end;) {
    const uintptr_t stop = std::min(end, NextBlockBoundary(a));
    MigrateVma m;
    m.vma = &range;
    m.start = a;
    m.end = stop;
    m.flags = select;
    m.pgmap_owner = owner;
    m.cause = cause;
    m.skip_if_moved_after_ns = skip_if_moved_after_ns;
    if (absl::Status s = migrate_vma_setup(&m); !s.ok()) return s;
    absl::Status s = m.cpages ? copy(&m) : absl::OkStatus();
    migrate_vma_pages(&m);
    for (const MigratePfn& src : m.src) moved += (src.flags & kMigratePfnMigrate) ? 1 : 0;
    migrate_vma_finalize(&m);
    if (!s.ok()) {
      trace::TraceError(s.code(), a, -1);
      return s;
    }
    // A migration the caller asked for completes: pages another migration held (a fault bringing
    // them back, say) are retried once it finishes. Service threads never wait (see FaultService).
    if (m.skipped_busy > 0 &&
        (cause == MigrateCause::kPrefetch || cause == MigrateCause::kFork ||
         cause == MigrateCause::kLaunch) &&
        !FaultService::OnServiceThread()) {
      sched_yield();
      continue;
    }
    a = stop;
  }
  return moved;
}
}  // namespace

absl::Status RuntimeImpl::MigrateToHost(ManagedRange& range, uintptr_t start, uintptr_t end,
                                        MigrateCause cause, uint64_t skip_if_moved_after_ns) {
  for (auto& ds : devices_) {
    Device* dev = ds->device.get();
    absl::StatusOr<size_t> moved =
        RunMigration(range, start, end, kMigrateSelectDevicePrivate, dev->pagemap().owner, cause,
                     [dev](MigrateVma* m) { return dev->MigrateToRam(m); }, skip_if_moved_after_ns);
    if (!moved.ok()) {
      return absl::Status(moved.status().code(),
                          absl::StrFormat("uhmm: migrating [%#x, %#x) from device %d to the host: %s",
                                          start, end, ds->ordinal, moved.status().message()));
    }
  }
  return absl::OkStatus();
}

absl::Status RuntimeImpl::MigrateToDevice(ManagedRange& range, uintptr_t start, uintptr_t end,
                                          DeviceState& ds, MigrateCause cause) {
  GatePass fork_pass(&fork_gate_);
  GatePass device_pass(&ds.gate);
  ProtectFromEviction protect(range, *ds.device, start, end);
  return MigrateToDeviceLocked(range, start, end, ds, cause);
}

absl::Status RuntimeImpl::MigrateToDeviceLocked(ManagedRange& range, uintptr_t start, uintptr_t end,
                                                DeviceState& ds, MigrateCause cause) {
  Device* dev = ds.device.get();
  // Pages on other devices come home first; device-to-device goes through RAM. A device that
  // shares managed addresses maps whole blocks, so the other devices give up whole blocks.
  uintptr_t home_start = start, home_end = end;
  if (dev->placement() == Placement::kSameAddress) {
    home_start = start & ~(kBlockSize - 1);
    home_end = std::min(range.end(), NextBlockBoundary(end - 1));
  }
  for (auto& other : devices_) {
    if (other.get() == &ds) continue;
    Device* odev = other->device.get();
    absl::StatusOr<size_t> moved =
        RunMigration(range, home_start, home_end, kMigrateSelectDevicePrivate, odev->pagemap().owner,
                     cause, [odev](MigrateVma* m) { return odev->MigrateToRam(m); });
    if (!moved.ok()) return moved.status();
  }
  absl::StatusOr<size_t> moved =
      RunMigration(range, start, end, kMigrateSelectSystem, dev->pagemap().owner, cause,
                   [dev](MigrateVma* m) { return dev->MigrateToDevice(m); });
  if (!moved.ok()) {
    return absl::Status(moved.status().code(),
                        absl::StrFormat("uhmm: migrating [%#x, %#x) to device %d: %s", start, end,
                                        ds.ordinal, moved.status().message()));
  }
  return absl::OkStatus();
}

ProtectFromEviction::ProtectFromEviction(const ManagedRange& range, const Device& device, uintptr_t start,
                                         uintptr_t end)
    : saved_(t_protected), outer_(t_protected.first < t_protected.second) {
  if (outer_) return;  // an enclosing request already covers this one
  if (range.hugetlb() || device.placement() == Placement::kSameAddress) {
    start &= ~(kBlockSize - 1);
    end = std::min(range.end(), NextBlockBoundary(end - 1));
  }
  t_protected = {start, end};
}

ProtectFromEviction::~ProtectFromEviction() { t_protected = saved_; }

absl::StatusOr<Page*> RuntimeImpl::AllocDevicePage(DeviceState& ds, uintptr_t addr) {
  absl::flat_hash_set<size_t> exclude;
  bool held_elsewhere = false;  // a victim's pages were all held by another migration
  std::optional<std::chrono::steady_clock::time_point> give_up;
  for (;;) {
    absl::StatusOr<Page*> page = ds.pool->TryAlloc(addr);
    if (!page.ok()) return page.status();
    if (*page != nullptr) return *page;
    std::optional<size_t> victim = ds.pool->PickVictim(exclude);
    if (!victim && held_elsewhere) {
      // Another migration holds those pages: a fault or a read-ahead bringing them home, which
      // frees them when it ends. Wait for it, a bounded time (two requests can each hold what the
      // other needs), then look at every chunk again.
      const auto now = std::chrono::steady_clock::now();
      if (!give_up) give_up = now + std::chrono::seconds(2);
      if (now < *give_up) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        exclude.clear();
        held_elsewhere = false;
        continue;
      }
    }
    if (!victim) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "device %d pool is full (%u pages) and nothing can be evicted: every page is held by an "
          "in-flight migration or belongs to this request [%#x, %#x). Raise "
          "UHMM_DEVICE_POOL_BYTES or migrate less at once",
          ds.ordinal, ds.pool->total_pages(), t_protected.first, t_protected.second));
    }
    size_t freed = 0;
    bool held = false;
    if (absl::Status s = EvictChunk(ds, *victim, &freed, &held); !s.ok()) return s;
    if (freed == 0) {
      exclude.insert(*victim);
      held_elsewhere |= held;
    }
  }
}

absl::Status RuntimeImpl::EvictChunk(DeviceState& ds, size_t chunk, size_t* freed, bool* held) {
  *freed = 0;
  std::vector<uintptr_t> addrs = ds.pool->CommittedAddresses(chunk);
  const uintptr_t keep_start = t_protected.first, keep_end = t_protected.second;
  std::erase_if(addrs, [&](uintptr_t a) { return a >= keep_start && a < keep_end; });
  if (addrs.empty()) return absl::OkStatus();
  counters_.evicted_chunks.fetch_add(1, std::memory_order_relaxed);
  const uint64_t t0 = trace::Tracer::NowIfEnabled();
  Device* dev = ds.device.get();
  for (size_t i = 0; i < addrs.size();) {
    size_t j = i + 1;
    while (j < addrs.size() && addrs[j] == addrs[j - 1] + kPageSize &&
           addrs[j] % kBlockSize != 0) {
      ++j;
    }
    const uintptr_t s = addrs[i];
    const uintptr_t e = addrs[j - 1] + kPageSize;
    i = j;
    RangeRef range = Lookup(s);
    if (!range) continue;  // being freed: its pages come back without us
    absl::StatusOr<size_t> moved = RunMigration(
        *range, s, std::min(e, range->end()), kMigrateSelectDevicePrivate, dev->pagemap().owner,
        MigrateCause::kEviction, [dev](MigrateVma* m) { return dev->MigrateToRam(m); });
    if (!moved.ok()) {
      return absl::Status(moved.status().code(),
                          absl::StrFormat("evicting device %d chunk %u: %s", ds.ordinal, chunk,
                                          moved.status().message()));
    }
    *freed += *moved;
  }
  if (t0 != 0 && trace::Tracer::enabled()) {
    trace::TraceRecord r = {};
    r.type = trace::RecordType::kEviction;
    r.cause = static_cast<uint8_t>(MigrateCause::kEviction);
    r.device = static_cast<int8_t>(ds.ordinal);
    r.addr = addrs.front() & ~(kBlockSize - 1);
    r.bytes = *freed * kPageSize;
    r.t[0] = t0;
    r.t[1] = trace::Tracer::Now();
    trace::Tracer::Emit(r);
  }
  // Pages outside the request that moved nowhere: another migration held them.
  if (held != nullptr) *held = *freed == 0;
  return absl::OkStatus();
}

}  // namespace uhmm
