// Fault-service threads; see fault_service.h.
#include "runtime/fault/fault_service.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>

#include "absl/strings/str_format.h"
#include "runtime/fault/cpu_fault.h"
#include "runtime/fault/uffd_events.h"
#include "runtime/fault/zap_tracker.h"
#include "runtime/process/abandoned_threads.h"
#include "runtime/trace/tracer.h"

namespace uhmm {
namespace {
thread_local bool t_service_thread = false;
thread_local FaultService::MapRecord* t_map_record = nullptr;
constexpr size_t kBatch = 32;
// Pending discards hold back faults on whole 2 MiB blocks: in a hugetlb range a fault anywhere in
// the block moves (and maps) all of it.
constexpr uintptr_t kDiscardUnit = uintptr_t{2} << 20;
}  // namespace

FaultService::FaultService(Mm& mm, Uffd* uffd, int threads, int spin_us)
    : mm_(mm), uffd_(uffd), nthreads_(threads), spin_ns_(spin_us > 0 ? uint64_t{1000} * spin_us : 0) {}

std::vector<pthread_t> FaultService::native_handles() {
  std::vector<pthread_t> out;
  for (auto& t : threads_) out.push_back(t.native_handle());
  return out;
}

FaultService::~FaultService() { Stop(); }

bool FaultService::OnServiceThread() { return t_service_thread; }

absl::Status FaultService::Start() {
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) return absl::InternalError(absl::StrFormat("uhmm: eventfd: %s", strerror(errno)));
  for (int i = 0; i < nthreads_; ++i) {
    threads_.emplace_back(&FaultService::ThreadMain, this, i);
    // Named by the creator, so the name is there when Start returns (ps, top, perf, gdb).
    const std::string name = "uhmm-fault-" + std::to_string(i);  // <= 15 chars: at most 64 threads
    pthread_setname_np(threads_.back().native_handle(), name.c_str());
  }
  return absl::OkStatus();
}

void FaultService::Stop() {
  if (wake_fd_ < 0) return;
  stop_.store(true, std::memory_order_release);
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
  for (auto& t : threads_) t.join();
  threads_.clear();
  close(wake_fd_);
  wake_fd_ = -1;
}

void FaultService::AbandonAfterFork() {
  AbandonThreads(threads_);  // they exist only in the parent
  wake_fd_ = -1;
}

void FaultService::Requeue(std::vector<uffd_msg> msgs) {
  if (msgs.empty()) return;
  {
    MutexLock lock(&q_mu_);
    for (auto& m : msgs) queue_.push_back(m);
  }
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
}

bool FaultService::PopQueued(uffd_msg* msg) {
  MutexLock lock(&q_mu_);
  if (queue_.empty()) return false;
  *msg = queue_.front();
  queue_.pop_front();
  return true;
}

absl::StatusOr<size_t> FaultService::ReadMessages(uffd_msg* msgs, size_t max) {
  MutexLock lock(&read_mu_);
  absl::StatusOr<size_t> n = uffd_->Read(msgs, max);
  if (!n.ok()) return n;
  size_t kept = 0;
  for (size_t i = 0; i < *n; ++i) {
    uffd_msg& m = msgs[i];
    SetReadSeq(&m, read_seq_.fetch_add(1, std::memory_order_acq_rel) + 1);
    if (m.event == UFFD_EVENT_REMAP) {
      MutexLock rl(&remap_mu_);
      ++remaps_pending_;
    }
    if (m.event == UFFD_EVENT_REMOVE) {
      // Classified now, while its madvise is still known to be in flight: the runtime's own zap
      // needs nothing more; anything else is the application's discard.
      if (mm_.zaps->Claim(m.arg.remove.start, m.arg.remove.end)) continue;
      MutexLock dl(&discard_mu_);
      discards_.push_back({m.arg.remove.start & ~(kDiscardUnit - 1),
                           (m.arg.remove.end + kDiscardUnit - 1) & ~(kDiscardUnit - 1), ReadSeq(m)});
      discards_pending_.fetch_add(1, std::memory_order_acq_rel);
    }
    msgs[kept++] = m;
  }
  return kept;
}

void FaultService::WaitForReadsInFlight() { MutexLock lock(&read_mu_); }

void FaultService::HoldReadsForTesting(bool hold) {
  if (hold) {
    read_mu_.Lock();
  } else {
    read_mu_.Unlock();
  }
}

FaultService::MapRecord::MapRecord(uintptr_t block)
    : block_(block & ~(kDiscardUnit - 1)), outer_(t_map_record) {
  t_map_record = this;
}

FaultService::MapRecord::~MapRecord() { t_map_record = outer_; }

bool FaultService::MapRecord::mapped(uintptr_t addr) const {
  return addr >= block_ && addr - block_ < kDiscardUnit && pages_[(addr - block_) >> 12];
}

void FaultService::MapRecord::Note(uintptr_t start, uintptr_t end) {
  const uintptr_t from = std::max(start, block_), to = std::min(end, block_ + kDiscardUnit);
  for (uintptr_t a = from & ~uintptr_t{4095}; a < to; a += 4096) pages_.set((a - block_) >> 12);
}

bool FaultService::MapUnlessDiscarded(uintptr_t start, uintptr_t end, absl::FunctionRef<absl::Status()> map) {
  for (;;) {
    absl::Status s;
    {
      ReaderMutexLock lock(&read_mu_);
      if (DiscardPending(start, end)) return false;
      s = map();
    }
    if (!Uffd::EventPending(s)) {
      if (!s.ok()) std::fprintf(stderr, "%s\n", s.ToString().c_str());
      if (s.ok() && t_map_record != nullptr) t_map_record->Note(start, end);
      return true;
    }
    // The event must be read before anything maps. Read it here, whatever the thread: the caller
    // may hold a block lock that every service thread is waiting for.
    DrainToQueue();
  }
}

bool FaultService::ParkIfDiscardPending(const uffd_msg& msg) {
  if (discards_pending_.load(std::memory_order_acquire) == 0) return false;
  const uintptr_t addr = msg.arg.pagefault.address;
  MutexLock lock(&discard_mu_);
  for (const PendingDiscard& d : discards_) {
    if (addr >= d.start && addr < d.end) {
      discard_parked_.push_back(msg);
      return true;
    }
  }
  return false;
}

void FaultService::AwaitDiscards(uintptr_t start, uintptr_t end) {
  if (OnServiceThread()) return;  // they apply discards: never wait here
  // A madvise that returned had its event read, but the reader may still be registering it.
  WaitForReadsInFlight();
  if (discards_pending_.load(std::memory_order_acquire) == 0) return;
  MutexLock lock(&discard_mu_);
  auto overlaps = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(discard_mu_) {
    for (const PendingDiscard& d : discards_) {
      if (start < d.end && d.start < end) return true;
    }
    return false;
  };
  while (overlaps()) discard_cv_.Wait(&discard_mu_);
}

bool FaultService::DiscardPending(uintptr_t start, uintptr_t end) {
  if (discards_pending_.load(std::memory_order_acquire) == 0) return false;
  MutexLock lock(&discard_mu_);
  for (const PendingDiscard& d : discards_) {
    if (start < d.end && d.start < end) return true;
  }
  return false;
}

void FaultService::DiscardHandled(uint32_t seq) {
  std::vector<uffd_msg> wake;
  {
    MutexLock lock(&discard_mu_);
    std::erase_if(discards_, [seq](const PendingDiscard& d) { return d.seq == seq; });
    discards_pending_.store(static_cast<int>(discards_.size()), std::memory_order_release);
    discard_cv_.SignalAll();
    // Every parked fault goes back through Dispatch, which parks it again if another discard
    // still covers it.
    wake.swap(discard_parked_);
  }
  Requeue(std::move(wake));
}

bool FaultService::ParkIfRemapPending(const uffd_msg& msg) {
  MutexLock lock(&remap_mu_);
  if (remaps_pending_ == 0) return false;
  parked_.push_back(msg);
  return true;
}

void FaultService::RemapHandled() {
  std::vector<uffd_msg> wake;
  {
    MutexLock lock(&remap_mu_);
    if (--remaps_pending_ == 0) wake.swap(parked_);
  }
  Requeue(std::move(wake));
}

void FaultService::DrainToQueue() {
  uffd_msg msgs[kBatch];
  absl::StatusOr<size_t> n = ReadMessages(msgs, kBatch);
  if (!n.ok() || *n == 0) {
    sched_yield();  // the event is being read by another thread; let its sender finish
    return;
  }
  Requeue(std::vector<uffd_msg>(msgs, msgs + *n));
}

namespace {
// A fault message just read (not re-queued) for a page the shadow has: one CpuFault::HandleBlock
// may take it together with others of its block.
bool Coalescable(const uffd_msg& m) {
  return m.event == UFFD_EVENT_PAGEFAULT && (m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR) != 0 &&
         (m.arg.pagefault.flags & FaultService::kDeferredFault) == 0;
}
}  // namespace

void FaultService::DispatchBatch(uffd_msg* msgs, size_t n) {
  if (n == 1 || n > kBatch || mm_.config->fault_recheck) {
    for (size_t i = 0; i < n; ++i) Dispatch(msgs[i], trace::Tracer::NowIfEnabled());
    return;
  }
  bool taken[kBatch] = {};
  uffd_msg group[kBatch];
  for (size_t i = 0; i < n; ++i) {
    if (taken[i]) continue;
    if (!Coalescable(msgs[i])) {
      Dispatch(msgs[i], trace::Tracer::NowIfEnabled());
      continue;
    }
    // This fault and the later ones of its block, up to the next event of the batch. A fault that
    // an application discard holds back parks, as in Dispatch.
    const uintptr_t block = msgs[i].arg.pagefault.address & ~(kDiscardUnit - 1);
    size_t k = 0;
    for (size_t j = i; j < n && msgs[j].event == UFFD_EVENT_PAGEFAULT; ++j) {
      if (taken[j] || !Coalescable(msgs[j]) ||
          (msgs[j].arg.pagefault.address & ~(kDiscardUnit - 1)) != block) {
        continue;
      }
      taken[j] = true;
      if (!ParkIfDiscardPending(msgs[j])) group[k++] = msgs[j];
    }
    if (k == 1) {
      mm_.cpu_fault->Handle(group[0].arg.pagefault.address, group[0].arg.pagefault.feat.ptid,
                            ReadSeq(group[0]), trace::Tracer::NowIfEnabled(), /*deferred=*/false,
                            /*minor=*/true, IsWrite(group[0]));
    } else if (k > 1) {
      mm_.cpu_fault->HandleBlock(std::span<const uffd_msg>(group, k), trace::Tracer::NowIfEnabled());
    }
  }
}

void FaultService::Dispatch(const uffd_msg& msg, uint64_t received_ns) {
  switch (msg.event) {
    case UFFD_EVENT_PAGEFAULT:
      if (ParkIfDiscardPending(msg)) break;
      mm_.cpu_fault->Handle(msg.arg.pagefault.address, msg.arg.pagefault.feat.ptid, ReadSeq(msg), received_ns,
                            (msg.arg.pagefault.flags & kDeferredFault) != 0,
                            (msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR) != 0, IsWrite(msg));
      break;
    case UFFD_EVENT_REMOVE:
      mm_.events->OnRemove(msg.arg.remove.start, msg.arg.remove.end);
      DiscardHandled(ReadSeq(msg));
      break;
    case UFFD_EVENT_UNMAP:
      // mremap raises REMAP and then UNMAP for the old address; the UNMAP must not discard the
      // device data before the REMAP handler brought it home.
      if (ParkIfRemapPending(msg)) break;
      mm_.events->OnUnmap(msg.arg.remove.start, msg.arg.remove.end);
      break;
    case UFFD_EVENT_REMAP:
      mm_.events->OnRemap(msg.arg.remap.from, msg.arg.remap.to, msg.arg.remap.len);
      RemapHandled();
      break;
    default:
      std::fprintf(stderr, "uhmm: ignoring unknown userfaultfd event %u\n", msg.event);
  }
}

bool FaultService::Spin(uffd_msg* msgs) {
  bool handled = false;
  uint64_t deadline = trace::Tracer::Now() + spin_ns_;
  while (!stop_.load(std::memory_order_acquire)) {
    absl::StatusOr<size_t> n = ReadMessages(msgs, kBatch);
    uffd_msg queued;
    const bool got = (n.ok() && *n > 0) || PopQueued(&queued);
    if (got) {
      if (n.ok()) DispatchBatch(msgs, *n);
      if (!n.ok() || *n == 0) Dispatch(queued, trace::Tracer::NowIfEnabled());
      handled = true;
      deadline = trace::Tracer::Now() + spin_ns_;
      continue;
    }
    if (trace::Tracer::Now() >= deadline) break;
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
  return handled;
}

void FaultService::ThreadMain(int index) {
  t_service_thread = true;

  pollfd fds[2] = {{uffd_->fd(), POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  uffd_msg msgs[kBatch];
  const bool spinner = index == 0 && spin_ns_ > 0;
  while (!stop_.load(std::memory_order_acquire)) {
    uffd_msg queued;
    while (PopQueued(&queued)) Dispatch(queued, trace::Tracer::NowIfEnabled());
    if (spinner && Spin(msgs)) continue;
    int r = poll(fds, 2, -1);
    if (r < 0 && errno != EINTR) {
      std::fprintf(stderr, "uhmm: fault service poll failed: %s\n", strerror(errno));
      return;
    }
    if (stop_.load(std::memory_order_acquire)) break;  // leave the eventfd set for the others
    if (fds[1].revents & POLLIN) {
      uint64_t v;
      (void)!read(wake_fd_, &v, sizeof(v));
    }
    if (fds[0].revents & POLLIN) {
      // O_NONBLOCK: another thread may have taken the message, or the fault was resolved by a
      // wake before we read it; an empty read is normal.
      absl::StatusOr<size_t> n = ReadMessages(msgs, kBatch);
      if (!n.ok()) {
        std::fprintf(stderr, "%s\n", n.status().ToString().c_str());
        continue;
      }
      DispatchBatch(msgs, *n);
      // Busy-poll right after a fault: the next one of a burst is likely microseconds away.
      if (spinner && *n > 0) Spin(msgs);
    }
  }
}

}  // namespace uhmm
