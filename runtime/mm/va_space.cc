// The range map and range lifetime; see va_space.h.
#include "runtime/mm/va_space.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_format.h"
#include "runtime/fault/fault_service.h"
#include "runtime/fault/uffd.h"
#include "runtime/mm/device_table.h"
#include "runtime/trace/tracer.h"

namespace uhmm {

absl::StatusOr<void*> VaSpace::Create(size_t size, Backing backing) {
  const Config& config = *mm_.config;
  // Page backing: what the range asked for, else the hugetlb policy. AUTO takes hugetlb only for
  // large ranges while enough hugepages are free, and falls back to 4 KiB pages.
  const size_t huge_pages = (size + kBlockSize - 1) / kBlockSize;
  const bool auto_huge = backing == Backing::kDefault && config.hugetlb == HugetlbMode::kAuto &&
                         size >= config.hugetlb_min_bytes && FreeHugepages() >= huge_pages;
  const bool huge = backing == Backing::kHugetlb ||
                    (backing == Backing::kDefault && config.hugetlb == HugetlbMode::kAlways) || auto_huge;
  absl::StatusOr<std::unique_ptr<ManagedRange>> created = ManagedRange::Create(mm_, size, huge);
  if (!created.ok() && auto_huge) created = ManagedRange::Create(mm_, size, false);
  if (!created.ok()) return created.status();
  std::shared_ptr<ManagedRange> range = std::move(*created);
  if (absl::Status s = mm_.uffd->Register(range->start(), range->size(), range->duplicates_reads());
      !s.ok()) {
    range->DiscardUserView();
    return s;
  }
  // A range that tracks CPU writes starts write-protected, so that a page the CPU never writes
  // reads as unwritten and its first push gives the device zeros instead of a copy (VaBlock zero).
  // (Were this to fail, the pages would read as written: copied, as without tracking.)
  const bool track = range->duplicates_reads();
  absl::Status mapped;
  if (range->populated()) {
    // The pages exist (pinned): map them all now instead of one minor fault per first touch. The
    // range is not published yet, so nothing races with this.
    mapped = mm_.uffd->Continue(range->start(), range->size(), /*wake=*/true, range->cpu_page(),
                                /*drain_events=*/true, /*write_protect=*/track);
  } else if (track) {
    mapped = mm_.uffd->WriteProtect(range->start(), range->size());  // markers: nothing is mapped yet
  }
  if (!mapped.ok()) std::fprintf(stderr, "%s\n", mapped.ToString().c_str());
  // Every page starts host-resident (zero): the first launch pushes the range.
  for (size_t b = 0; b < range->num_blocks(); ++b) {
    VaBlock& blk = range->block(b);
    MutexLock block_lock(&blk.mu);
    range->MarkHostDirty(blk);
    if (!track || !mapped.ok()) continue;
    const uintptr_t start = range->block_start(b), end = std::min(range->end(), start + kBlockSize);
    for (uintptr_t a = start; a < end; a += kPageSize) blk.MarkZero(ManagedRange::page_in_block(a));
  }
  MutexLock lock(&mu_);
  ranges_[range->start()] = range;
  trace::TraceRange(/*alloc=*/true, range->start(), range->size());
  return reinterpret_cast<void*>(range->start());
}

absl::StatusOr<std::shared_ptr<ManagedRange>> VaSpace::TakeForFree(void* ptr) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(ptr);
  MutexLock lock(&mu_);
  auto it = ranges_.find(addr);
  if (it == ranges_.end()) {
    auto after = ranges_.upper_bound(addr);
    if (after != ranges_.begin() && std::prev(after)->second->contains(addr)) {
      const ManagedRange& r = *std::prev(after)->second;
      return absl::InvalidArgumentError(absl::StrFormat(
          "uhmm_free: %p is inside the allocation [%#x, %#x) but not its start", ptr, r.start(), r.end()));
    }
    return absl::NotFoundError(
        absl::StrFormat("uhmm_free: %p was not allocated by this uhmm runtime, or was already freed", ptr));
  }
  std::shared_ptr<ManagedRange> range = std::move(it->second);
  ranges_.erase(it);
  return range;
}

void VaSpace::Destroy(ManagedRange& range, bool unmap_user_view) {
  std::vector<Page*> release;
  std::vector<uffd_msg> deferred;
  for (size_t b = 0; b < range.num_blocks(); ++b) {
    VaBlock& blk = range.block(b);
    MutexLock lock(&blk.mu);
    blk.TakeAllDevicePages(&release);
    deferred.insert(deferred.end(), blk.deferred.begin(), blk.deferred.end());
    blk.deferred.clear();
  }
  const PageRuns mapped = range.MappedRuns(range.start(), range.end());
  // One pointer: the backend's reservation can go back only if the application unmapped none of
  // it; otherwise those addresses may belong to a new mapping, which releasing would unmap.
  const bool release_reservation = range.reserved() != 0 && unmap_user_view && mapped.size() == 1 &&
                                   mapped[0] == std::make_pair(range.start(), range.end());
  for (auto [s, e] : mapped) {
    // Unregistering wakes any thread still waiting in the range.
    (void)mm_.uffd->Unregister(s, e - s);
    if (unmap_user_view && !release_reservation) munmap(reinterpret_cast<void*>(s), e - s);
  }
  for (Page* p : release) put_page(p);
  if (range.reserved() != 0) {
    // The device mappings go first, then the address space goes back to the backend.
    for (auto& ds : *mm_.devices) ds->pool->UnbindRange(range.start(), range.start() + range.reserved());
    const size_t reserved = range.reserved();
    if (release_reservation) {
      range.ReleaseReservation();
    } else if (!range.AbandonReservation()) {
      std::fprintf(stderr,
                   "uhmm: warning: the application munmapped (part of) the managed range at %#lx; "
                   "its %zu-byte device address reservation is leaked\n",
                   static_cast<unsigned long>(range.start()), reserved);
    }
  }
  mm_.faults->Requeue(std::move(deferred));
}

void VaSpace::ReapZombies() {
  std::vector<std::shared_ptr<ManagedRange>> zombies;
  {
    MutexLock lock(&mu_);
    zombies.swap(zombies_);
  }
  for (auto& z : zombies) {
    z->BeginTeardown();
    Destroy(*z, /*unmap_user_view=*/false);
  }
}

void VaSpace::DestroyAll() {
  std::vector<std::shared_ptr<ManagedRange>> all;
  {
    MutexLock lock(&mu_);
    for (auto& [start, range] : ranges_) all.push_back(range);
    ranges_.clear();
  }
  for (auto& range : all) {
    range->BeginTeardown();
    Destroy(*range, /*unmap_user_view=*/true);
  }
  ReapZombies();
}

RangeRef VaSpace::Lookup(uintptr_t addr) {
  ReaderMutexLock lock(&mu_);
  auto it = ranges_.upper_bound(addr);
  if (it == ranges_.begin()) return RangeRef();
  --it;
  if (!it->second->contains(addr)) return RangeRef();
  return RangeRef(it->second);
}

std::vector<std::shared_ptr<ManagedRange>> VaSpace::Overlapping(uintptr_t start, uintptr_t end) {
  std::vector<std::shared_ptr<ManagedRange>> hit;
  ReaderMutexLock lock(&mu_);
  for (auto& [rs, r] : ranges_) {
    if (r->start() < end && start < r->end()) hit.push_back(r);
  }
  return hit;
}

std::vector<std::shared_ptr<ManagedRange>> VaSpace::All() {
  std::vector<std::shared_ptr<ManagedRange>> all;
  ReaderMutexLock lock(&mu_);
  for (auto& [start, r] : ranges_) all.push_back(r);
  return all;
}

size_t VaSpace::ManagedBytes(bool whole_blocks) const {
  size_t bytes = 0;
  ReaderMutexLock lock(&mu_);
  for (const auto& [start, r] : ranges_) bytes += whole_blocks ? r->num_blocks() * kBlockSize : r->size();
  return bytes;
}

size_t VaSpace::hugetlb_count() const {
  size_t n = 0;
  ReaderMutexLock lock(&mu_);
  for (const auto& [start, r] : ranges_) n += r->hugetlb() ? 1 : 0;
  return n;
}

void VaSpace::TraceAll() {
  ReaderMutexLock lock(&mu_);
  for (const auto& [start, range] : ranges_) trace::TraceRange(/*alloc=*/true, start, range->size());
}

void VaSpace::UnmapPages(ManagedRange& r, uintptr_t start, uintptr_t end) {
  std::vector<Page*> release;
  for (uintptr_t a = start; a < end; a += kPageSize) {
    VaBlock& blk = r.block_of(a);
    MutexLock lock(&blk.mu);
    // Busy pages keep their device page until their migration lets them go (EndMigration).
    if (Page* p = blk.Unmap(ManagedRange::page_in_block(a))) release.push_back(p);
  }
  for (Page* p : release) put_page(p);
}

void VaSpace::ForgetAddresses(uintptr_t start, uintptr_t end) {
  for (auto& r : Overlapping(start, end)) {
    UnmapPages(*r, std::max(start, r->start()), std::min(end, r->end()));
    size_t gone = 0;
    for (size_t b = 0; b < r->num_blocks(); ++b) {
      VaBlock& blk = r->block(b);
      MutexLock lock(&blk.mu);
      gone += blk.unmapped.count();
    }
    if (gone == r->size() / kPageSize) {
      // Every page is gone: the application will not free it through uhmm; reap it later from an
      // application thread (teardown may wait, service threads must not).
      MutexLock lock(&mu_);
      auto it = ranges_.find(r->start());
      if (it != ranges_.end() && it->second == r) {
        ranges_.erase(it);
        zombies_.push_back(r);
      }
    }
  }
}

void VaSpace::ForEachInForkChild(absl::FunctionRef<void(ManagedRange&)> fn) {
  mu_.ResetInForkChild();  // locked by LockForFork, maybe with parent threads queued on it
  for (auto& [start, r] : ranges_) fn(*r);
}

void VaSpace::ForgetInForkChild() {
  MutexLock lock(&mu_);
  for (auto& [start, range] : ranges_) {
    munmap(reinterpret_cast<void*>(start), range->size());
    range->DetachBackend();
  }
  ranges_.clear();
}

VaSpace::VaSpace(Mm& mm)
    : mm_(mm), dirty_(mm.devices->count()), dirty_count_(new std::atomic<size_t>[mm.devices->count()]) {
  for (int d = 0; d < mm.devices->count(); ++d) dirty_count_[d].store(0);
}

void VaSpace::NoteHostDirty(uintptr_t range_start, int device) {
  MutexLock lock(&dirty_mu_);
  dirty_[device].push_back(range_start);
  dirty_count_[device].store(dirty_[device].size());
  dirty_generation_.fetch_add(1, std::memory_order_acq_rel);
}

std::vector<uintptr_t> VaSpace::TakeHostDirty(int device) {
  MutexLock lock(&dirty_mu_);
  dirty_count_[device].store(0);
  return std::exchange(dirty_[device], {});
}

}  // namespace uhmm
