// Device-page allocation and eviction; see evictor.h.
#include "runtime/mm/evictor.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "runtime/api/counters.h"
#include "runtime/mm/device_table.h"
#include "runtime/mm/migrator.h"
#include "runtime/mm/va_space.h"
#include "runtime/trace/tracer.h"

namespace uhmm {
namespace {

// The managed addresses the calling thread is migrating to a device for one request. Eviction on
// its behalf never takes pages from there: a request must not evict what it just placed (with a
// small pool, a migration of several blocks would otherwise send its own first blocks home).
thread_local std::pair<uintptr_t, uintptr_t> t_protected = {0, 0};

}  // namespace

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

std::pair<uintptr_t, uintptr_t> ProtectFromEviction::Current() { return t_protected; }

bool Evictor::PrefersDevice(DeviceState& ds, size_t chunk) {
  // One range lookup per range the chunk's pages belong to (they come in address order), not one
  // per page.
  std::optional<RangeRef> range;
  for (uintptr_t a : ds.pool->CommittedAddresses(chunk)) {
    if (!range || !*range || !(*range)->contains(a)) range.emplace(mm_.va_space->Lookup(a));
    const RangeRef& r = *range;
    if (r && r->advice().Any() && r->advice().At(a).preferred == ds.ordinal) return true;
  }
  return false;
}

namespace {

// A bounded wait for what another thread is about to release: false once `limit` has passed since
// the first call with `deadline`; otherwise sleeps `pause` and returns true (look again).
bool WaitMore(std::optional<std::chrono::steady_clock::time_point>* deadline, std::chrono::microseconds pause,
              std::chrono::microseconds limit = std::chrono::seconds(2)) {
  const auto now = std::chrono::steady_clock::now();
  if (!*deadline) *deadline = now + limit;
  if (now >= **deadline) return false;
  std::this_thread::sleep_for(pause);
  return true;
}

}  // namespace

absl::StatusOr<Page*> Evictor::AllocDevicePage(DeviceState& ds, uintptr_t addr) {
  absl::flat_hash_set<size_t> exclude;
  // PREFERRED_LOCATION this device: such chunks are evicted last, once no other victim is left.
  std::vector<size_t> preferred;
  bool preferred_allowed = false;
  bool held_elsewhere = false;  // a victim's pages were all held by another migration
  std::optional<std::chrono::steady_clock::time_point> give_up;
  std::optional<std::chrono::steady_clock::time_point> slot_give_up;
  std::optional<std::chrono::steady_clock::time_point> holder_give_up;
  for (;;) {
    bool slot_busy = false;
    int holder = -1;
    absl::StatusOr<Page*> page = ds.pool->TryAlloc(addr, &slot_busy, &holder);
    if (!page.ok() && slot_busy) {
      // With one pointer addr has one device page, and the thread that just dropped it from its
      // block (a discard, poison or unmap, or a finalize) frees it once it lets go of the block
      // lock: wait for that, a bounded time (a page that stays in use is a bug, reported).
      if (WaitMore(&slot_give_up, std::chrono::microseconds(20))) continue;
    }
    if (!page.ok() && holder >= 0 && mm_.devices->valid(holder)) {
      // Another device maps addr's block (BlockOwners). Its pages there went home before this
      // migration began (Migrator::ToDevice), so its chunk is idle: it gives the block up. Pages a
      // migration to that device placed there since stay until someone moves them, which the
      // caller's retry does (Migrator::ToDevice): only a short wait here, for one in flight.
      const uintptr_t block = addr & ~(kBlockSize - 1);
      if ((*mm_.devices)[holder].pool->UnbindIdle(block)) continue;
      if (WaitMore(&holder_give_up, std::chrono::microseconds(50), std::chrono::milliseconds(5))) continue;
      return absl::UnavailableError(
          absl::StrFormat("device %d cannot map block %#x: device %d still has pages there (two devices keep "
                          "pulling the same 2 MiB block)",
                          ds.ordinal, block, holder));
    }
    if (!page.ok()) return page.status();
    if (*page != nullptr) return *page;
    std::optional<size_t> victim = ds.pool->PickVictim(exclude);
    if (victim && !preferred_allowed && PrefersDevice(ds, *victim)) {
      preferred.push_back(*victim);
      exclude.insert(*victim);
      continue;
    }
    if (!victim && !preferred.empty()) {
      for (size_t c : preferred) exclude.erase(c);
      preferred.clear();
      preferred_allowed = true;
      continue;
    }
    if (!victim && held_elsewhere) {
      // Another migration holds those pages: a fault or a read-ahead bringing them home, which
      // frees them when it ends. Wait for it, a bounded time (two requests can each hold what the
      // other needs), then look at every chunk again.
      if (WaitMore(&give_up, std::chrono::microseconds(100))) {
        exclude.clear();
        held_elsewhere = false;
        preferred_allowed = false;
        continue;
      }
    }
    if (!victim) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "device %d pool is full (%u pages) and nothing can be evicted: every page is held by an "
          "in-flight migration or belongs to this request [%#x, %#x). Raise "
          "UHMM_DEVICE_POOL_BYTES or migrate less at once",
          ds.ordinal, ds.pool->total_pages(), ProtectFromEviction::Current().first,
          ProtectFromEviction::Current().second));
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

size_t Evictor::DropDuplicates(ManagedRange& range, uintptr_t start, uintptr_t end, const void* owner) {
  // Read duplication: the host copy is the data, so a duplicate's device copy goes without a copy.
  // Freed under the block lock: with one pointer the page's slot belongs to its address, and a
  // migration of that address that starts once the lock goes must find the slot free.
  size_t dropped = 0;
  for (uintptr_t a = start; a < end;) {
    VaBlock& blk = range.block_of(a);
    const uintptr_t stop = std::min(end, NextBlockBoundary(a));
    MutexLock lock(&blk.mu);
    for (; a < stop; a += kPageSize) {
      const size_t i = ManagedRange::page_in_block(a);
      if (blk.Duplicate(i) && !blk.Busy(i) && blk.pages[i]->pgmap->owner == owner) {
        put_page(blk.DropDuplicate(i));
        ++dropped;
      }
    }
  }
  mm_.counters->duplicates_dropped.fetch_add(dropped, std::memory_order_relaxed);
  return dropped;
}

absl::Status Evictor::EvictChunk(DeviceState& ds, size_t chunk, size_t* freed, bool* held) {
  *freed = 0;
  std::vector<uintptr_t> addrs = ds.pool->CommittedAddresses(chunk);
  // Not a structured binding: clang before 16 cannot capture one in a lambda.
  const std::pair<uintptr_t, uintptr_t> keep = ProtectFromEviction::Current();
  std::erase_if(addrs, [&](uintptr_t a) { return a >= keep.first && a < keep.second; });
  if (addrs.empty()) return absl::OkStatus();
  mm_.counters->evicted_chunks.fetch_add(1, std::memory_order_relaxed);
  const uint64_t t0 = trace::Tracer::NowIfEnabled();
  Device* dev = ds.device.get();
  for (size_t i = 0; i < addrs.size();) {
    size_t j = i + 1;
    while (j < addrs.size() && addrs[j] == addrs[j - 1] + kPageSize && addrs[j] % kBlockSize != 0) {
      ++j;
    }
    const uintptr_t s = addrs[i];
    const uintptr_t e = addrs[j - 1] + kPageSize;
    i = j;
    RangeRef range = mm_.va_space->Lookup(s);
    if (!range) continue;  // being freed: its pages come back without us
    *freed += DropDuplicates(*range, s, std::min(e, range->end()), dev->pagemap().owner);
    absl::StatusOr<size_t> moved =
        RunMigration(*range, s, std::min(e, range->end()), kMigrateSelectDevicePrivate, dev->pagemap().owner,
                     MigrateCause::kEviction, [dev](MigrateVma* m) { return dev->MigrateToRam(m); });
    if (!moved.ok()) {
      return absl::Status(
          moved.status().code(),
          absl::StrFormat("evicting device %d chunk %u: %s", ds.ordinal, chunk, moved.status().message()));
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

absl::Status Evictor::EvictDevice(DeviceState& ds) {
  // No migration to this device starts while we empty it, and those under way finish first; pages
  // that migrations to the host hold are waited for. So the call ends with the device empty, and
  // migrations to it that were held back go on afterwards.
  ds.gate.Close();
  absl::Status status;
  for (int round = 0;; ++round) {
    absl::flat_hash_set<size_t> exclude;
    while (std::optional<size_t> victim = ds.pool->PickVictim(exclude)) {
      size_t freed = 0;
      status = EvictChunk(ds, *victim, &freed);
      if (!status.ok()) break;
      exclude.insert(*victim);
    }
    if (!status.ok() || ds.pool->used_pages() == 0) break;
    if (round == 10000) {  // about 10 s: a page that no migration holds and none can evict
      status = absl::InternalError(
          absl::StrFormat("uhmm_evict_device: %u pages of device %d stayed in use for 10 s with no migration "
                          "holding them",
                          ds.pool->used_pages(), ds.ordinal));
      break;
    }
    // Pages still held by migrations to the host (faults, read-ahead) in flight: they finish on
    // their own; back off gently.
    std::this_thread::sleep_for(std::chrono::microseconds(round < 100 ? 10 : 1000));
  }
  ds.gate.Open();
  if (!status.ok()) return status;
  ds.pool->ReleaseEmptyChunks();
  return absl::OkStatus();
}

}  // namespace uhmm
