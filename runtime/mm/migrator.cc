// The migration drivers; see migrator.h.
#include "runtime/mm/migrator.h"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include "absl/strings/str_format.h"
#include "runtime/api/counters.h"
#include "runtime/base/sync.h"
#include "runtime/fault/fault_service.h"
#include "runtime/mm/device_table.h"
#include "runtime/mm/evictor.h"
#include "runtime/mm/va_space.h"
#include "runtime/process/fork.h"
#include "runtime/process/workers.h"
#include "runtime/trace/tracer.h"

namespace uhmm {

namespace {
// The average piece size below which ForEachPiece keeps the pieces on the calling thread.
constexpr size_t kMinParallelPieceBytes = 64 * kPageSize;

// Whether `owner`'s device holds pages of [start, end) of `range` (placed there, or read-duplicated).
bool HoldsPages(ManagedRange& range, uintptr_t start, uintptr_t end, const void* owner) {
  for (uintptr_t a = start; a < end; a = NextBlockBoundary(a)) {
    VaBlock& blk = range.block_of(a);
    const size_t first = ManagedRange::page_in_block(a);
    const size_t last = ManagedRange::page_in_block(std::min(end, NextBlockBoundary(a)) - 1);
    MutexLock lock(&blk.mu);
    for (size_t i = first; i <= last; ++i) {
      if (blk.pages[i] != nullptr && blk.pages[i]->pgmap->owner == owner) return true;
    }
  }
  return false;
}

// A migration of [start, end) of `range` (within one block), selecting `select` pages of `owner`'s
// device; `to_peer`: device pages for another device's pages (MigrateVma::to_peer).
MigrateVma BlockMigration(ManagedRange& range, uintptr_t start, uintptr_t end, uint32_t select,
                          const void* owner, MigrateCause cause, bool to_peer = false) {
  MigrateVma m;
  m.vma = &range;
  m.start = start;
  m.end = end;
  m.flags = select;
  m.pgmap_owner = owner;
  m.cause = cause;
  m.to_peer = to_peer;
  return m;
}
}  // namespace

absl::StatusOr<size_t> RunMigration(ManagedRange& range, uintptr_t start, uintptr_t end, uint32_t select,
                                    const void* owner, MigrateCause cause,
                                    absl::FunctionRef<absl::Status(MigrateVma*)> copy,
                                    uint64_t skip_if_moved_after_ns) {
  size_t moved = 0;
  if (range.hugetlb()) {  // whole blocks only (see migrate_vma_pages)
    start &= ~(kBlockSize - 1);
    end = std::min(range.end(), NextBlockBoundary(end - 1));
  }
  for (uintptr_t a = start; a < end;) {
    const uintptr_t stop = std::min(end, NextBlockBoundary(a));
    MigrateVma m = BlockMigration(range, a, stop, select, owner, cause);
    m.skip_if_moved_after_ns = skip_if_moved_after_ns;
    // Read-ahead brings pages home for CPU reads that have not happened yet: keep their copies.
    m.keep_device_copy = cause == MigrateCause::kReadAhead && range.duplicates_reads();
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

absl::Status Migrator::ToHost(ManagedRange& range, uintptr_t start, uintptr_t end, MigrateCause cause,
                              uint64_t skip_if_moved_after_ns) {
  for (auto& ds : *mm_.devices) {
    Device* dev = ds->device.get();
    absl::StatusOr<size_t> moved = RunMigration(
        range, start, end, kMigrateSelectDevicePrivate, dev->pagemap().owner, cause,
        [dev](MigrateVma* m) { return dev->MigrateToRam(m); }, skip_if_moved_after_ns);
    if (!moved.ok()) {
      return absl::Status(moved.status().code(),
                          absl::StrFormat("uhmm: migrating [%#x, %#x) from device %d to the host: %s", start,
                                          end, ds->ordinal, moved.status().message()));
    }
  }
  return absl::OkStatus();
}

absl::Status Migrator::ToDevice(ManagedRange& range, uintptr_t start, uintptr_t end, DeviceState& ds,
                                MigrateCause cause) {
  GatePass fork_pass(&mm_.fork->gate());
  GatePass device_pass(&ds.gate);
  ProtectFromEviction protect(range, *ds.device, start, end);
  Device* dev = ds.device.get();
  // Pages on other devices leave first: to this device in one hop where it reaches them and its
  // engine copies from peers, else home through RAM. A device that shares managed addresses maps
  // whole blocks, so the other devices give up whole blocks: their pages and read-duplicated
  // copies there leave, and the block they map becomes this device's (BlockOwners: handed over by
  // a move to a peer, else claimed when this device allocates there, Evictor::AllocDevicePage).
  const bool whole_blocks = dev->placement() == Placement::kSameAddress;
  uintptr_t home_start = start, home_end = end;
  if (whole_blocks) {
    home_start = start & ~(kBlockSize - 1);
    home_end = std::min(range.end(), NextBlockBoundary(end - 1));
  }
  absl::StatusOr<size_t> moved = 0;
  DeviceTable& devices = *mm_.devices;
  // Another device pulling the same block between this request's steps takes it back: a few tries,
  // each after a pause that grows.
  for (int attempt = 0; attempt < kPullAttempts; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::microseconds(200 << attempt));
    for (auto& other : devices) {
      if (other.get() == &ds) continue;
      Device* odev = other->device.get();
      if (!HoldsPages(range, home_start, home_end, odev->pagemap().owner)) continue;
      auto send_home = [&] {
        return RunMigration(range, home_start, home_end, kMigrateSelectDevicePrivate, odev->pagemap().owner,
                            cause, [odev](MigrateVma* m) { return odev->MigrateToRam(m); });
      };
      // Kernels queued on that device, or on a device that reaches its memory (this one included),
      // may still write these pages: they finish before the pages are copied away. (A request the
      // application makes is ordered by the application; this pull may be the runtime's own, for a
      // launch elsewhere.)
      for (auto& user : devices) {
        if (user.get() != other.get() && !devices.Reaches(user->ordinal, other->ordinal)) continue;
        if (absl::Status s = user->device->SynchronizeQueue(nullptr); !s.ok()) {
          return absl::Status(s.code(),
                              absl::StrFormat("uhmm: waiting for device %d before moving device %d's "
                                              "pages: %s",
                                              user->ordinal, other->ordinal, s.message()));
        }
      }
      if (whole_blocks && dev->CopiesFromPeers() && devices.Reaches(ds.ordinal, other->ordinal) &&
          devices.peer_windows() != nullptr) {
        // Read-duplicated copies there go (the host holds their data), so the move holds every
        // page the other device has in the block.
        mm_.evictor->DropDuplicates(range, home_start, home_end, odev->pagemap().owner);
        if (absl::Status s = PeerMove(range, home_start, home_end, *other, ds, cause); !s.ok()) {
          // What did not move goes home (an error on this device leaves the data in RAM, as a move
          // through RAM would). A copy or device error fails the request; a block another device
          // pulled meanwhile (UNAVAILABLE) goes on through RAM below, and the tries go on.
          if (!send_home().ok()) Reattach(range, home_start, home_end, *other, ds);
          if (!absl::IsUnavailable(s)) {
            return absl::Status(
                s.code(), absl::StrFormat("uhmm: moving [%#x, %#x) from device %d to device %d: %s",
                                          home_start, home_end, other->ordinal, ds.ordinal, s.message()));
          }
        }
      }
      // Through RAM: what is left (all of it without peer copies).
      moved = send_home();
      if (!moved.ok()) return moved.status();
      if (whole_blocks) mm_.evictor->DropDuplicates(range, home_start, home_end, odev->pagemap().owner);
    }
    moved = RunMigration(range, start, end, kMigrateSelectSystem, dev->pagemap().owner, cause,
                         [dev](MigrateVma* m) { return dev->MigrateToDevice(m); });
    if (moved.ok() || !absl::IsUnavailable(moved.status()) || devices.count() < 2) break;
  }
  if (!moved.ok()) {
    return absl::Status(moved.status().code(),
                        absl::StrFormat("uhmm: migrating [%#x, %#x) to device %d: %s", start, end, ds.ordinal,
                                        moved.status().message()));
  }
  return absl::OkStatus();
}

absl::Status Migrator::PeerMove(ManagedRange& range, uintptr_t start, uintptr_t end, DeviceState& from,
                                DeviceState& to, MigrateCause cause) {
  DeviceTable& devices = *mm_.devices;
  Pagemap& dst = to.device->pagemap();
  for (uintptr_t a = start; a < end; a = NextBlockBoundary(a)) {
    MigrateVma m = BlockMigration(range, a, std::min(end, NextBlockBoundary(a)), kMigrateSelectDevicePrivate,
                                  from.device->pagemap().owner, cause, /*to_peer=*/true);
    if (absl::Status s = migrate_vma_setup(&m); !s.ok()) return s;
    absl::Status s;
    if (m.cpages > 0) {
      absl::StatusOr<uintptr_t> window = devices.peer_windows()->Take();
      bool detached = false;
      if (window.ok()) {
        detached = from.pool->Detach(a & ~(kBlockSize - 1), *window, m.cpages, to.ordinal).ok();
        if (!detached) devices.peer_windows()->Put(*window);
      }
      // Not detached (pages held elsewhere, no window): nothing is copied, all rolls back, and the
      // block goes through RAM.
      if (detached) s = migrate_alloc_and_copy_from_peer(&m, dst, *dst.copy_engine);
    }
    migrate_vma_pages(&m);
    migrate_vma_finalize(&m);
    if (!s.ok()) {
      trace::TraceError(s.code(), a, to.ordinal);
      return s;
    }
  }
  return absl::OkStatus();
}

void Migrator::Reattach(ManagedRange& range, uintptr_t start, uintptr_t end, DeviceState& from,
                        DeviceState& to) {
  for (uintptr_t a = start; a < end; a = NextBlockBoundary(a)) {
    const uintptr_t stop = std::min(end, NextBlockBoundary(a));
    if (!HoldsPages(range, a, stop, from.device->pagemap().owner)) continue;
    // Held, so that no copy uses a page's window address while it changes. Nothing is copied:
    // every page rolls back where it is.
    MigrateVma m = BlockMigration(range, a, stop, kMigrateSelectDevicePrivate, from.device->pagemap().owner,
                                  MigrateCause::kPrefetch, /*to_peer=*/true);
    bool back = false;
    if (migrate_vma_setup(&m).ok()) {
      const uintptr_t block = a & ~(kBlockSize - 1);
      back = m.cpages > 0 && to.pool->UnbindIdle(block) && from.pool->Reattach(block, m.cpages);
      migrate_vma_pages(&m);
      migrate_vma_finalize(&m);
    }
    if (!back) {
      std::fprintf(stderr,
                   "uhmm: device %d keeps pages of block %#lx that it no longer maps, after errors on both "
                   "devices: the CPU reads them, its kernels do not until they move\n",
                   from.ordinal, static_cast<unsigned long>(a & ~(kBlockSize - 1)));
    }
  }
}

absl::Status Migrator::Bulk(ManagedRange& range, uintptr_t start, uintptr_t end, int device) {
  DeviceTable& devices = *mm_.devices;
  // One piece per 2 MiB block: one block's zap or PTE installation overlaps another's copy.
  PageRuns pieces;
  AppendBlockPieces(&pieces, start, end);
  return ForEachPiece(pieces, device, [&](uintptr_t s, uintptr_t e) {
    // The whole request, on whichever thread runs a part.
    ProtectFromEviction protect(range, *devices[device == kHost ? 0 : device].device, start, end);
    return device == kHost ? ToHost(range, s, e, MigrateCause::kPrefetch)
                           : ToDevice(range, s, e, devices[device], MigrateCause::kPrefetch);
  });
}

absl::Status Migrator::ForEachPiece(const PageRuns& pieces, int device,
                                    absl::FunctionRef<absl::Status(uintptr_t, uintptr_t)> fn) {
  WorkerPool& workers = *mm_.workers;
  // To a device, every worker holds a block of the pool while it copies; small pools stay serial
  // so that eviction always finds a victim. Small pieces stay on the caller too: handing a piece of
  // a few pages to a worker costs more than moving it (measured with bench/coherence.cc: 32 pieces
  // of one page took 2.7 ms in parallel, 2.0 ms on the caller; whole blocks 10.8 ms vs 13.5 ms).
  size_t bytes = 0;
  for (auto [s, e] : pieces) bytes += e - s;
  const bool parallel = pieces.size() > 1 && bytes >= pieces.size() * kMinParallelPieceBytes &&
                        workers.threads() > 0 &&
                        (device == kHost || (*mm_.devices)[device].pool->total_pages() / kPagesPerBlock >=
                                                8 * (size_t{1} + workers.threads()));
  if (!parallel) {
    for (auto [s, e] : pieces) {
      if (absl::Status st = fn(s, e); !st.ok()) return st;
    }
    return absl::OkStatus();
  }
  Mutex mu{LockRank::kBulkStatus};
  absl::Status first;
  workers.ParallelFor(pieces.size(), [&](size_t i) {
    absl::Status st = fn(pieces[i].first, pieces[i].second);
    MutexLock lock(&mu);
    first.Update(st);
  });
  return first;
}

void Migrator::Count(const MigrateVma& m, size_t pages) {
  Counters& c = *mm_.counters;
  const bool to_device = (m.flags & kMigrateSelectSystem) != 0;
  (m.to_peer ? c.pages_peer : to_device ? c.pages_to_device : c.pages_to_host).fetch_add(pages);
  // Eviction and read-ahead move pages home only.
  if (m.cause == MigrateCause::kEviction) c.evicted_pages.fetch_add(pages);
  if (m.cause == MigrateCause::kLaunch && (to_device || m.to_peer)) c.launch_pages.fetch_add(pages);
  if (m.cause == MigrateCause::kReadAhead) c.readahead_pages.fetch_add(pages);
}

}  // namespace uhmm
