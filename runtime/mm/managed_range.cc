// ManagedRange: memfd, two views, blocks, lifetime; see managed_range.h.
#include "runtime/mm/managed_range.h"

#include <linux/memfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_format.h"
#include "runtime/mm/device_table.h"
#include "runtime/mm/mm.h"
#include "runtime/mm/va_space.h"
#include "runtime/process/numa_placement.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

namespace uhmm {

absl::StatusOr<uintptr_t> reserve_block_aligned_address_space(size_t bytes) {
  // Reserve 2 MiB more, then trim both ends to the aligned span.
  const size_t span = bytes + kBlockSize;
  void* hole = mmap(nullptr, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (hole == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("uhmm: reserving %u bytes of address space: %s", bytes, strerror(errno)));
  }
  const uintptr_t base = reinterpret_cast<uintptr_t>(hole);
  const uintptr_t aligned = (base + kBlockSize - 1) & ~(kBlockSize - 1);
  if (aligned > base) munmap(hole, aligned - base);
  const uintptr_t tail = aligned + bytes;
  if (base + span > tail) munmap(reinterpret_cast<void*>(tail), base + span - tail);
  return aligned;
}

ManagedRange::ManagedRange(Mm& mm, Backend* backend, size_t size, size_t requested, bool hugetlb)
    : mm_(mm),
      backend_(backend),
      size_(size),
      requested_(requested),
      num_blocks_((size + kBlockSize - 1) / kBlockSize),
      hugetlb_(hugetlb),
      blocks_(std::make_unique<VaBlock[]>(num_blocks_)) {}

size_t FreeHugepages() {
  FILE* f = std::fopen("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "re");
  if (f == nullptr) return 0;
  unsigned long n = 0;
  if (std::fscanf(f, "%lu", &n) != 1) n = 0;
  std::fclose(f);
  return n;
}

size_t HostBackingBytes() {
  struct sysinfo si = {};
  if (sysinfo(&si) != 0) return SIZE_MAX;  // cannot tell: do not refuse for that
  const unsigned __int128 bytes =
      (static_cast<unsigned __int128>(si.totalram) + si.totalswap) * std::max<unsigned>(si.mem_unit, 1);
  return bytes > SIZE_MAX ? SIZE_MAX : static_cast<size_t>(bytes);
}

absl::StatusOr<std::unique_ptr<ManagedRange>> ManagedRange::Create(Mm& mm, size_t size, bool hugetlb) {
  Backend* backend = mm.backend;
  const size_t unit = hugetlb ? kBlockSize : kPageSize;
  const size_t rounded = (size + unit - 1) & ~(unit - 1);
  // The data lives in the memfd whenever it is not on a device, so a range the host cannot back
  // could never be brought home (and its block descriptors alone would exhaust the heap first).
  if (const size_t limit = HostBackingBytes(); rounded > limit) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "uhmm_alloc: %u bytes (%.1f GiB) is more than this machine's host memory can back, %u bytes "
        "(%.1f GiB: RAM + swap, MemTotal + SwapTotal): a managed range's data lives in host memory "
        "whenever it is not on a device",
        size, static_cast<double>(size) / (1 << 30), limit, static_cast<double>(limit) / (1 << 30)));
  }
  std::unique_ptr<ManagedRange> r(new ManagedRange(mm, backend, rounded, size, hugetlb));
  r->memfd_ = memfd_create("uhmm-range", MFD_CLOEXEC | (hugetlb ? MFD_HUGETLB | MFD_HUGE_2MB : 0));
  if (r->memfd_ < 0) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("uhmm: memfd_create%s: %s", hugetlb ? "(MFD_HUGETLB)" : "", strerror(errno)));
  }
  // memfds are created 0777; only this process (and its fork children, through the fd) uses it.
  if (fchmod(r->memfd_, 0600) != 0) {
    return absl::InternalError(absl::StrFormat("uhmm: fchmod(memfd, 0600): %s", strerror(errno)));
  }
  if (ftruncate(r->memfd_, static_cast<off_t>(rounded)) != 0) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("uhmm: ftruncate(memfd, %u): %s", rounded, strerror(errno)));
  }
  // The runtime view first: for hugetlb this mapping reserves the hugepages, and fails cleanly
  // when they are not there.
  void* view = mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_SHARED, r->memfd_, 0);
  if (view == MAP_FAILED) {
    const int err = errno;
    if (hugetlb) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "uhmm: a %u-byte hugetlb range needs %u free 2 MiB hugepages; %u are free (%s). Reserve "
          "them with 'sysctl vm.nr_hugepages=N' as root, or allocate with 4 KiB pages",
          rounded, rounded / kBlockSize, FreeHugepages(), strerror(err)));
    }
    return absl::ResourceExhaustedError(absl::StrFormat("uhmm: mapping the runtime view: %s", strerror(err)));
  }
  r->runtime_view_ = static_cast<uint8_t*>(view);
  mm.placement->PlaceHostMemory(view, rounded);  // before any page exists
  if (absl::Status s = r->MapUserView(); !s.ok()) return s;
  // Failures from here on give the user view back too.
  auto fail = [&r](absl::Status s) {
    r->DiscardUserView();
    return s;
  };
  if (backend->pins_host_views()) {
    // Pinning allocates every page anyway; doing it here, in one call, is faster than faulting.
    if (madvise(view, rounded, MADV_POPULATE_WRITE) != 0) {
      return fail(absl::ResourceExhaustedError(absl::StrFormat(
          "uhmm: populating %u bytes of host memory for a managed range: %s", rounded, strerror(errno))));
    }
    r->populated_ = true;
  }
  if (absl::Status s = backend->RegisterHostView(view, rounded); !s.ok()) {
    return fail(absl::Status(s.code(), absl::StrFormat("uhmm: registering the host view of a %u-byte range "
                                                       "with the %s backend: %s",
                                                       rounded, backend->name(), s.message())));
  }
  r->view_registered_ = true;
  return r;
}

absl::Status ManagedRange::MapUserView() {
  const size_t rounded = size_;
  const size_t reserve_bytes = (rounded + kBlockSize - 1) & ~(kBlockSize - 1);
  absl::StatusOr<uintptr_t> reserved = backend_->ReserveAddressRange(reserve_bytes);
  if (!reserved.ok()) return reserved.status();
  uintptr_t aligned = *reserved;
  if (aligned != 0) {
    reserved_ = reserve_bytes;
    if (aligned % kBlockSize != 0) {
      backend_->ReleaseAddressRange(aligned, reserve_bytes);
      reserved_ = 0;
      return absl::InternalError(
          absl::StrFormat("uhmm: the %s backend reserved address range %#x, which is not 2 MiB aligned",
                          backend_->name(), aligned));
    }
  } else {
    absl::StatusOr<uintptr_t> hole = reserve_block_aligned_address_space(rounded);
    if (!hole.ok()) return hole.status();
    aligned = *hole;
  }
  // One pointer: the backend's reservation is a PROT_NONE host mapping; the user view replaces it.
  void* user = mmap(reinterpret_cast<void*>(aligned), rounded, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                    memfd_, 0);
  if (user == MAP_FAILED || reinterpret_cast<uintptr_t>(user) != aligned) {
    const int err = errno;
    const bool from_backend = reserved_ != 0;
    start_ = aligned;
    DiscardUserView();
    start_ = 0;
    return absl::ResourceExhaustedError(
        absl::StrFormat("uhmm: mapping the user view at %#x (%s): %s", aligned,
                        from_backend ? "the device's reserved address" : "chosen address",
                        user == MAP_FAILED ? strerror(err) : "the kernel placed it elsewhere"));
  }
  start_ = aligned;
  return absl::OkStatus();
}

void ManagedRange::ReleaseReservation() {
  if (reserved_ == 0 || start_ == 0) return;
  // Restore the PROT_NONE reservation the backend made, so that releasing it unmaps nothing else.
  void* p = mmap(reinterpret_cast<void*>(start_), reserved_, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  if (p == MAP_FAILED) {
    std::fprintf(stderr, "uhmm: restoring the reservation at %#lx: %s; leaking it\n",
                 static_cast<unsigned long>(start_), strerror(errno));
  } else if (backend_ != nullptr) {
    backend_->ReleaseAddressRange(start_, reserved_);
  }
  reserved_ = 0;
}

bool ManagedRange::AbandonReservation() {
  if (reserved_ == 0 || start_ == 0) return true;
  const bool released = backend_ != nullptr && backend_->AbandonAddressRange(start_, reserved_);
  reserved_ = 0;
  return released;
}

void ManagedRange::DiscardUserView() {
  if (reserved_ != 0) {
    ReleaseReservation();
  } else if (start_ != 0) {
    munmap(reinterpret_cast<void*>(start_), size_);
  }
}

ManagedRange::~ManagedRange() {
  if (runtime_view_ != nullptr) {
    if (view_registered_ && backend_ != nullptr) backend_->UnregisterHostView(runtime_view_, size_);
    munmap(runtime_view_, size_);
  }
  if (memfd_ >= 0) close(memfd_);
}

PageRuns ManagedRange::MappedRuns(uintptr_t start, uintptr_t end) {
  PageRuns runs;
  for (uintptr_t a = start; a < end;) {
    VaBlock& blk = block_of(a);
    const uintptr_t stop = std::min(end, (a & ~(kBlockSize - 1)) + kBlockSize);
    MutexLock lock(&blk.mu);
    for (; a < stop; a += kPageSize) {
      if (!blk.unmapped[page_in_block(a)]) AppendPageRun(&runs, a);
    }
  }
  return runs;
}

bool ManagedRange::Enter() {
  MutexLock lock(&life_mu_);
  if (dying_) return false;
  ++inflight_;
  return true;
}

void ManagedRange::Exit() {
  MutexLock lock(&life_mu_);
  if (--inflight_ == 0 && dying_) life_cv_.SignalAll();
}

void ManagedRange::BeginTeardown() {
  MutexLock lock(&life_mu_);
  dying_ = true;
  while (inflight_ > 0) life_cv_.Wait(&life_mu_);
}

bool ManagedRange::duplicates_reads() const { return mm_.write_tracker != nullptr && !hugetlb_; }

void ManagedRange::MarkLaunchWork(VaBlock& blk, uint64_t devices) {
  const int count = mm_.devices->count();
  if (count < 64) devices &= (uint64_t{1} << count) - 1;
  const uint64_t added = devices & ~blk.launch_work;
  if (added == 0) return;
  blk.launch_work |= added;
  uint64_t first = 0;  // devices for which this range's list was empty
  {
    MutexLock lock(&dirty_mu_);
    if (dirty_.empty()) dirty_.resize(count);
    for (int d = 0; d < count; ++d) {
      if (!((added >> d) & 1)) continue;
      if (dirty_[d].empty()) first |= uint64_t{1} << d;
      dirty_[d].push_back(static_cast<uint32_t>(&blk - blocks_.get()));
    }
  }
  for (int d = 0; d < count; ++d) {
    if ((first >> d) & 1) mm_.va_space->NoteHostDirty(start_, d);
  }
}

std::vector<uint32_t> ManagedRange::TakeHostDirty(int device) {
  MutexLock lock(&dirty_mu_);
  if (device < 0 || static_cast<size_t>(device) >= dirty_.size()) return {};
  return std::exchange(dirty_[device], {});
}

}  // namespace uhmm
