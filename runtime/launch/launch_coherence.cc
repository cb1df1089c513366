// Launch coherence; see launch_coherence.h.
#include "runtime/launch/launch_coherence.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"
#include "runtime/api/counters.h"
#include "runtime/fault/fault_service.h"
#include "runtime/mm/device_table.h"
#include "runtime/mm/evictor.h"
#include "runtime/mm/migrator.h"
#include "runtime/mm/va_space.h"
#include "runtime/policy/readahead_fence.h"
#include "runtime/process/workers.h"
#include "runtime/trace/tracer.h"

namespace uhmm {

namespace {

// Pages of block `b` that a push to device `device` leaves on the host: advised PREFERRED_LOCATION
// host, unless ACCESSED_BY names the device (which then gets them by migration: no backend maps
// host memory for kernels in place yet).
PageMask StayHome(ManagedRange& range, size_t b, int device) {
  PageMask mask;
  if (!range.advice().Any()) return mask;
  const uintptr_t start = range.block_start(b), end = std::min(range.end(), start + kBlockSize);
  range.advice().ForEachRun(start, end, [&](uintptr_t s, uintptr_t e, const PageAdvice& a) {
    if (a.preferred != kHost || (device < kMaxAdviceDevices && (a.accessed_by >> device) & 1)) return;
    for (uintptr_t p = s; p < e; p += kPageSize) mask.set(ManagedRange::page_in_block(p));
  });
  return mask;
}

// Where a push for a launch on `ds` puts block `b`'s pages: where the block is mapped already when
// `ds` reaches that device (its host pages join the chunk mapped there; the block does not move);
// else `ds`, unless every page with advice there names as PREFERRED_LOCATION one device that `ds`
// reaches (peer access): then that device, and kernels on `ds` read it remotely (UVM maps such
// pages from where they prefer to be). One device for the whole block: with one pointer a block
// maps one device.
int BlockTarget(ManagedRange& range, size_t b, DeviceTable& devices, const DeviceState& ds) {
  const int k = ds.ordinal;
  if (devices.count() == 1) return k;
  const uintptr_t start = range.block_start(b), end = std::min(range.end(), start + kBlockSize);
  if (BlockOwners* owners = devices.block_owners()) {
    const int owner = owners->OwnerOf(start);
    if (owner >= 0 && owner != k && devices.Reaches(k, owner)) return owner;
  }
  if (!range.advice().Any()) return k;
  int target = -1;
  bool mixed = false;
  range.advice().ForEachRun(start, end, [&](uintptr_t, uintptr_t, const PageAdvice& a) {
    const int t =
        a.preferred >= 0 && devices.valid(a.preferred) && devices.Reaches(k, a.preferred) ? a.preferred : k;
    mixed |= target >= 0 && t != target;
    target = t;
  });
  return mixed || target < 0 ? k : target;
}

// Pages of `blk` on devices whose memory kernels on `ds` reach (itself, its peers).
PageMask Reachable(const DeviceTable& devices, const DeviceState& ds, VaBlock& blk)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu) {
  if (devices.count() == 1) return blk.device.mask();
  PageMask mask;
  for (size_t i = 0; i < kPagesPerBlock; ++i) {
    if (blk.device[i] && devices.Reaches(ds.ordinal, blk.pages[i]->pgmap->device)) mask.set(i);
  }
  return mask;
}

// Whether `blk` holds pages a push to `ds` still has to settle: host-resident (not on a device,
// unmapped, poisoned or to stay home), on a device `ds` does not reach, or held by a migration in
// flight.
bool HasHostWork(ManagedRange& range, size_t b, VaBlock& blk, const PageMask& stay_home,
                 const DeviceTable& devices, const DeviceState& ds) ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu) {
  const uintptr_t start = range.block_start(b);
  const size_t n = (std::min(range.end(), start + kBlockSize) - start) / kPageSize;
  const PageMask settled = Reachable(devices, ds, blk) | blk.unmapped | blk.poisoned | stay_home;
  return blk.busy.any() || settled.count() < n;
}

}  // namespace

absl::Status LaunchCoherence::Sync(DeviceState& ds, void* queue) {
  (void)queue;  // the migration is complete when it returns: ordered before anything queued next
  // First: read-ahead decided before this launch is dropped, and what is copying finishes (and
  // queues its blocks), so the check below sees where pages are.
  mm_.readahead_fence->DeviceUseBegins(trace::Tracer::Now());
  mm_.faults->AwaitDiscards(0, UINTPTR_MAX);
  // Nothing came home and no other sync is pushing what did: nothing to do. (A sync sets pushing_
  // before it takes the list, so a list seen empty after the take is seen with pushing_ set.)
  if (!mm_.va_space->has_host_dirty(ds.ordinal) && !pushing_.load()) return absl::OkStatus();
  MutexLock lock(&sync_mu_);  // after any sync that is pushing
  if (!mm_.va_space->has_host_dirty(ds.ordinal)) return absl::OkStatus();
  pushing_.store(true);
  absl::Status status = PushAll(ds);
  pushing_.store(false);
  return status;
}

absl::Status LaunchCoherence::PushAll(DeviceState& ds) {
  // No range teardown here: this may be a launch callback on the application's thread. Ranges the
  // application munmapped are reaped by a worker; the size check holds no range, and RangeRefs
  // never hold the last reference to one.
  mm_.workers->Post([va_space = mm_.va_space] { va_space->ReapZombies(); });
  // With one pointer a partly used block still takes a whole chunk.
  const size_t managed = mm_.va_space->ManagedBytes(ds.device->placement() == Placement::kSameAddress);
  // Every managed byte must fit at once: evicting one range for another would leave a kernel
  // that uses both reading unmapped device memory. With several devices, what lies on devices this
  // one reaches (peer access) may stay there.
  const size_t pool_bytes = ds.pool->total_pages() * kPageSize;
  size_t elsewhere = 0;
  for (const auto& other : *mm_.devices) {
    if (other.get() != &ds && mm_.devices->Reaches(ds.ordinal, other->ordinal)) {
      elsewhere += other->pool->used_pages() * kPageSize;
    }
  }
  if (managed > pool_bytes + elsewhere) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "uhmm_sync_for_device: %u bytes are managed but device %d's pool holds %u%s; make only what "
        "each kernel uses resident with uhmm_prefetch_on_queue (and UHMM_TRANSPARENT_LAUNCH=0), or "
        "raise UHMM_DEVICE_POOL_BYTES",
        managed, ds.ordinal, pool_bytes,
        elsewhere ? absl::StrFormat(" and the devices it reaches hold %u in place", elsewhere) : ""));
  }
  mm_.counters->launch_syncs.fetch_add(1, std::memory_order_relaxed);
  const std::vector<uintptr_t> starts = mm_.va_space->TakeHostDirty(ds.ordinal);
  absl::Status status;
  for (size_t k = 0; k < starts.size(); ++k) {
    RangeRef ref = mm_.va_space->Lookup(starts[k]);
    // Freed since (a new range at that address lists itself).
    if (!ref || ref->start() != starts[k]) continue;
    if (!status.ok()) {
      mm_.va_space->NoteHostDirty(starts[k], ds.ordinal);  // its blocks are still queued: list it again
      continue;
    }
    status = PushBlocks(*ref, ref->TakeHostDirty(ds.ordinal), ds);
  }
  return status;
}

absl::Status LaunchCoherence::PushBlocks(ManagedRange& range, std::vector<uint32_t> blocks, DeviceState& ds) {
  std::sort(blocks.begin(), blocks.end());
  mm_.counters->launch_blocks_checked.fetch_add(blocks.size(), std::memory_order_relaxed);
  // Unflag first: pages that come home from now on queue their block again. Advice that changes
  // meanwhile queues its blocks again itself, so each block's stay-home mask is read once.
  std::vector<PageMask> stay_homes(blocks.size());
  const uint64_t bit = uint64_t{1} << ds.ordinal;
  DeviceTable& devices = *mm_.devices;
  std::vector<PageRuns> runs(devices.count());  // by the device they go to (BlockTarget)
  for (size_t k = 0; k < blocks.size(); ++k) {
    const uint32_t b = blocks[k];
    VaBlock& blk = range.block(b);
    const PageMask& stay_home = stay_homes[k] = StayHome(range, b, ds.ordinal);
    bool work;
    {
      MutexLock lock(&blk.mu);
      blk.launch_work &= ~bit;
      work = HasHostWork(range, b, blk, stay_home, devices, ds);
    }
    if (!work) continue;
    const uintptr_t start = range.block_start(b), end = std::min(range.end(), start + kBlockSize);
    PageRuns& to = runs[BlockTarget(range, b, devices, ds)];
    for (uintptr_t a = start; a < end; a += kPageSize) {
      if (stay_home.test(ManagedRange::page_in_block(a))) continue;
      AppendPageRun(&to, a);
    }
  }
  absl::Status status;
  for (int target = 0; target < devices.count() && status.ok(); ++target) {
    DeviceState& to = devices[target];
    // Blocks in parallel on the migration workers: one block's zap and commit overlap another's copy.
    PageRuns pieces;
    for (auto [s, e] : runs[target]) AppendBlockPieces(&pieces, s, e);
    status = mm_.migrator->ForEachPiece(pieces, target, [&](uintptr_t s, uintptr_t e) {
      // No piece's eviction may take this range's pages that another piece pushed. (Ranges pushed
      // earlier in this sync are not protected: the pool check above leaves eviction little to do.)
      ProtectFromEviction protect(range, *to.device, range.start(), range.end());
      return mm_.migrator->ToDevice(range, s, e, to, MigrateCause::kLaunch);
    });
  }
  // What is still not settled (a failed push, pages a migration held) stays queued.
  for (size_t k = 0; k < blocks.size(); ++k) {
    VaBlock& blk = range.block(blocks[k]);
    MutexLock lock(&blk.mu);
    if (HasHostWork(range, blocks[k], blk, stay_homes[k], devices, ds)) range.MarkLaunchWork(blk, bit);
  }
  return status;
}

void LaunchCoherence::BeforeLaunch(DeviceState& ds, void* queue) {
  absl::Status s = Sync(ds, queue);
  if (s.ok()) return;
  // Once per change of the work list: a launch cannot be failed from here, so say why its data may
  // be missing.
  const uint64_t generation = mm_.va_space->host_dirty_generation();
  if (error_generation_.exchange(generation) != generation) {
    std::fprintf(stderr, "uhmm: transparent launch on device %d: managed data is not all resident: %s\n",
                 ds.ordinal, std::string(s.message()).c_str());
  }
}

}  // namespace uhmm
