// FaultService: the threads that read the userfaultfd (non-blocking, poll-driven) and dispatch
// page faults and the REMOVE/UNMAP/REMAP events to the runtime. Faults deferred by a busy page
// come back through Requeue(). Service threads never wait for anything an application thread in a
// uffd event could hold, so the event always gets read.
//
// Coalescing: the fault messages of one read() that fall in the same 2 MiB block go to CpuFault
// together (HandleBlock: one migration for their granules). Only runs of consecutive fault messages
// are grouped, never across a REMOVE/UNMAP/REMAP of the same batch, so events keep their order
// relative to faults; within a run, messages are distinct faulting threads (a thread waits in one
// fault at a time), so their order does not matter. Re-queued (deferred, parked) messages are
// dispatched one at a time.
#ifndef UHMM_RUNTIME_FAULT_FAULT_SERVICE_H_
#define UHMM_RUNTIME_FAULT_FAULT_SERVICE_H_

#include <linux/userfaultfd.h>

#include <atomic>
#include <bitset>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "runtime/base/sync.h"
#include "runtime/fault/uffd.h"
#include "runtime/mm/mm.h"

namespace uhmm {

class FaultService {
 public:
  // `spin_us` > 0: thread 0 busy-polls the userfaultfd for that long after each message before
  // sleeping in poll(), so that a fault arriving meanwhile skips the wake-up (a user-space probe on
  // an H100 host, driver 580, kernel 6.18: an isolated 4 KiB fault took 21 us p50 busy-polling,
  // 32 us with poll()).
  // Dispatches through `mm`: faults to mm.cpu_fault, events to mm.events, zaps to mm.zaps.
  FaultService(Mm& mm, Uffd* uffd, int threads, int spin_us = 0);
  ~FaultService();  // Stop()s

  absl::Status Start();
  void Stop();
  // Leaks the threads: after fork() they do not exist in the child and must not be joined.
  void AbandonAfterFork();

  void Requeue(std::vector<uffd_msg> msgs);
  // Reads every pending message into the internal queue; the EAGAIN hook of resolving ioctls.
  void DrainToQueue();
  // True on a fault-service thread.
  static bool OnServiceThread();

  // Every message gets a sequence number when it is read from the userfaultfd, kept in the
  // header's reserved3 field (unused by the kernel on read). read_seq() is the last one handed out.
  uint32_t read_seq() const { return read_seq_.load(std::memory_order_acquire); }
  static uint32_t ReadSeq(const uffd_msg& msg) { return msg.reserved3; }
  // The faulting access was a write (a read on a range that duplicates reads keeps device copies).
  static bool IsWrite(const uffd_msg& msg) {
    return (msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE) != 0;
  }
  static void SetReadSeq(uffd_msg* msg, uint32_t seq) { msg->reserved3 = seq; }
  // Set in pagefault.flags (whose high bits the kernel leaves 0) on a message that waited for a
  // migration holding its page: the trace marks such faults.
  static constexpr uint64_t kDeferredFault = uint64_t{1} << 63;

  // mremap support: a REMAP event releases the mremap caller as soon as it is read, so a fault at
  // the new address can arrive before the event is handled. Reads are serialised and count REMAP
  // events, and faults at unknown addresses (and UNMAP events, which mremap raises for the old
  // address right after REMAP) park until every counted REMAP is handled.
  bool ParkIfRemapPending(const uffd_msg& msg);
  void RemapHandled();

  // Application discards: a REMOVE event that is not one of the runtime's own zaps releases the
  // madvise caller as soon as it is read, before the runtime has applied it. From the read until
  // DiscardHandled, faults on the addresses it covers (widened to 2 MiB blocks) park, and
  // migrations do not map those pages for the CPU, so a write made after madvise returned always
  // lands after the discard.
  bool ParkIfDiscardPending(const uffd_msg& msg);
  bool DiscardPending(uintptr_t start, uintptr_t end);
  // Every CPU mapping of managed pages goes through here. `map` installs mappings in [start, end)
  // with Uffd::Continue(drain_events = false); it runs with reads of the userfaultfd held off, so
  // that no discard can be read (which releases its madvise, and then the kernel's zap) between
  // the check and the mapping: a mapping either precedes the read, and the zap removes it, or
  // sees the discard pending. Returns false, without mapping, while a discard covering
  // [start, end) is pending. The caller may hold a block lock.
  bool MapUnlessDiscarded(uintptr_t start, uintptr_t end, absl::FunctionRef<absl::Status()> map);
  void DiscardHandled(uint32_t seq);
  // For API calls (never on a service thread): returns once every application discard overlapping
  // [start, end) whose madvise has returned is applied, so the call sees its effect, as it would on
  // anonymous memory, rather than having it land later (dropping a device copy it made, say).
  void AwaitDiscards(uintptr_t start, uintptr_t end);
  // Returns once no thread is between reading a message and classifying it: a zap whose madvise
  // returned has had all its REMOVE events claimed (ZapTracker::End).
  void WaitForReadsInFlight();

  // What the migrations run on this thread mapped for the CPU in one 2 MiB block, while in scope:
  // every MapUnlessDiscarded that maps (its CONTINUE succeeded) marks its pages of the block. A
  // marked page's waiting threads were woken, or are woken before the migration returns (a traced
  // finalize maps without waking and wakes right after). CpuFault uses it to end a fault after its
  // migration without another look at the page. Scopes nest (the innermost records).
  class MapRecord {
   public:
    explicit MapRecord(uintptr_t block);
    ~MapRecord();
    MapRecord(const MapRecord&) = delete;
    MapRecord& operator=(const MapRecord&) = delete;
    bool mapped(uintptr_t addr) const;

   private:
    friend class FaultService;
    void Note(uintptr_t start, uintptr_t end);
    const uintptr_t block_;
    std::bitset<512> pages_;  // 4 KiB pages of the block
    MapRecord* const outer_;
  };

  // Testing: while held, no thread reads the userfaultfd (faults queue up in the kernel), so the
  // next read takes them together. Only for tests that raise nothing but faults meanwhile.
  void HoldReadsForTesting(bool hold) ABSL_NO_THREAD_SAFETY_ANALYSIS;

  // The service threads, for CPU placement.
  std::vector<pthread_t> native_handles();

 private:
  void ThreadMain(int index);
  // Reads and dispatches messages until `spin_ns_` passes without one; true when it handled any.
  bool Spin(uffd_msg* msgs);
  // `received_ns`: when the message was read or taken from the queue (0: tracing is off).
  void Dispatch(const uffd_msg& msg, uint64_t received_ns);
  // Dispatches the messages of one read, fault messages of one block together (see above).
  void DispatchBatch(uffd_msg* msgs, size_t n);
  bool PopQueued(uffd_msg* msg);
  absl::StatusOr<size_t> ReadMessages(uffd_msg* msgs, size_t max);

  Mm& mm_;
  Uffd* const uffd_;
  const int nthreads_;
  const uint64_t spin_ns_;
  int wake_fd_ = -1;  // eventfd: stop and requeue notifications
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
  Mutex q_mu_{LockRank::kFaultQueue};
  std::deque<uffd_msg> queue_ ABSL_GUARDED_BY(q_mu_);
  Mutex read_mu_{LockRank::kFaultRead};
  std::atomic<uint32_t> read_seq_{0};
  struct PendingDiscard {
    uintptr_t start, end;
    uint32_t seq;
  };
  Mutex discard_mu_{LockRank::kFaultDiscard};
  std::atomic<int> discards_pending_{0};
  std::vector<PendingDiscard> discards_ ABSL_GUARDED_BY(discard_mu_);
  std::vector<uffd_msg> discard_parked_ ABSL_GUARDED_BY(discard_mu_);
  CondVar discard_cv_;  // signalled when a discard is applied
  Mutex remap_mu_{LockRank::kFaultRemap};
  int remaps_pending_ ABSL_GUARDED_BY(remap_mu_) = 0;
  std::vector<uffd_msg> parked_ ABSL_GUARDED_BY(remap_mu_);
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_FAULT_FAULT_SERVICE_H_
