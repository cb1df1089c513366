// ManagedRange: memfd, two views, blocks, lifetime; see managed_range.h.
#include "runtime/managed_range.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"

namespace uhmm {

ManagedRange::ManagedRange(RuntimeImpl* rt, size_t size, size_t requested)
    : rt_(rt),
      size_(size),
      requested_(requested),
      num_blocks_((size + kBlockSize - 1) / kBlockSize),
      blocks_(std::make_unique<VaBlock[]>(num_blocks_)) {}

absl::StatusOr<std::unique_ptr<ManagedRange>> ManagedRange::Create(RuntimeImpl* rt, size_t size) {
  const size_t rounded = (size + kPageSize - 1) & ~(kPageSize - 1);
  std::unique_ptr<ManagedRange> r(new ManagedRange(rt, rounded, size));
  r->memfd_ = memfd_create("uhmm-range", MFD_CLOEXEC);
  if (r->memfd_ < 0) {
    return absl::ResourceExhaustedError(absl::StrFormat("uhmm: memfd_create: %s", strerror(errno)));
  }
  if (ftruncate(r->memfd_, static_cast<off_t>(rounded)) != 0) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("uhmm: ftruncate(memfd, %u): %s", rounded, strerror(errno)));
  }
  // Reserve size + 2 MiB so the user view can start on a 2 MiB boundary (blocks align with VA).
  const size_t reserve = rounded + kBlockSize;
  void* hole = mmap(nullptr, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (hole == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("uhmm: reserving %u bytes of address space: %s", reserve, strerror(errno)));
  }
  const uintptr_t base = reinterpret_cast<uintptr_t>(hole);
  const uintptr_t aligned = (base + kBlockSize - 1) & ~(kBlockSize - 1);
  if (aligned > base) munmap(hole, aligned - base);
  const uintptr_t tail = aligned + rounded;
  if (base + reserve > tail) munmap(reinterpret_cast<void*>(tail), base + reserve - tail);
  void* user = mmap(reinterpret_cast<void*>(aligned), rounded, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_FIXED, r->memfd_, 0);
  if (user == MAP_FAILED) {
    int err = errno;
    munmap(reinterpret_cast<void*>(aligned), rounded);
    return absl::ResourceExhaustedError(absl::StrFormat("uhmm: mapping the user view: %s", strerror(err)));
  }
  r->start_ = aligned;
  void* view = mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_SHARED, r->memfd_, 0);
  if (view == MAP_FAILED) {
    int err = errno;
    munmap(user, rounded);
    r->start_ = 0;
    return absl::ResourceExhaustedError(
        absl::StrFormat("uhmm: mapping the runtime view: %s", strerror(err)));
  }
  r->runtime_view_ = static_cast<uint8_t*>(view);
  return r;
}

ManagedRange::~ManagedRange() {
  if (runtime_view_ != nullptr) munmap(runtime_view_, size_);
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

}  // namespace uhmm
