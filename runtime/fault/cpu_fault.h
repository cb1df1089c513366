// CpuFault: the whole CPU fault path, from a userfaultfd fault message to the thread's wake-up:
// look the page up, defer while a migration holds it, drop stale messages, pick the granule
// (policy/), call the device's page_fault (which migrates back through migrate_vma), post read-ahead,
// zero-fill first touches, and end the access in SIGBUS when the device cannot give the data back.
//
// Cost: a fault served by a migration makes one UFFDIO_CONTINUE, in migrate_vma_finalize, which
// maps the granule and wakes the threads waiting in it (traced: CONTINUE without waking, then one
// WAKE); a duplicate (the page was host resident when looked at) makes one CONTINUE, or none when
// write tracking finds the page mapped (MapTracked). Faults read together in one block (HandleBlock)
// share migrations. Config::fault_recheck restores the old path (another look after each migration:
// a second CONTINUE meeting EEXIST, or that page-table look, and a WAKE), for comparisons.
//
// LOCKING: takes one block lock at a time and never waits under it (a migration holding the page
// re-queues the message instead); the device's page_fault runs with no lock held.
#ifndef UHMM_RUNTIME_FAULT_CPU_FAULT_H_
#define UHMM_RUNTIME_FAULT_CPU_FAULT_H_

#include <linux/userfaultfd.h>

#include <cstdint>
#include <span>
#include <utility>

#include "absl/status/statusor.h"
#include "runtime/mm/managed_range.h"
#include "runtime/mm/mm.h"
#include "uhmm/uhmm.hpp"

namespace uhmm {

class Uffd;

// Config::sigbus_mode resolved against what the kernel offers (auto: poison where UFFDIO_POISON
// exists); UNAVAILABLE when poison is asked for and missing.
absl::StatusOr<SigbusMode> ResolveSigbusMode(SigbusMode wanted, const Uffd& uffd);

class CpuFault {
 public:
  CpuFault(Mm& mm, SigbusMode sigbus_mode) : mm_(mm), sigbus_mode_(sigbus_mode) {}

  // A fault message (service threads). `seq` is the message's read sequence number
  // (FaultService::ReadSeq). `received_ns`: when a service thread got the message (0: not traced).
  // `deferred`: it waited for a migration that held the page. `minor`: the kernel found the page in
  // the shadow (UFFD_PAGEFAULT_FLAG_MINOR); otherwise the shadow has no page there yet (first
  // touch, or after a discard) and it is filled with zeros. `write`: the access was a write
  // (UFFD_PAGEFAULT_FLAG_WRITE); a read on a range that duplicates reads keeps the device copy.
  void Handle(uintptr_t address, uint32_t tid, uint32_t seq, uint64_t received_ns = 0, bool deferred = false,
              bool minor = true, bool write = false);
  // Fault messages read together (service threads): fresh MINOR faults whose addresses fall in one
  // 2 MiB block, from distinct threads. The ones whose pages are on one device move back together:
  // their granules are merged while the merged run stays at least half asked for, one migration per
  // run, whose CONTINUE wakes every thread waiting in it. The others (host resident, another range
  // or device) take Handle's path one by one.
  void HandleBlock(std::span<const uffd_msg> msgs, uint64_t received_ns);

 private:
  // A missing fault at host-resident `page`: zero-fills and maps its block. False, having mapped
  // nothing of what remains, when an application discard there is pending.
  bool ZeroFill(ManagedRange& range, VaBlock& blk, uintptr_t page, uint32_t tid)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu);
  // Maps the host-resident pages of [start, end) in `blk` for the CPU: `map` of
  // FaultService::MapUnlessDiscarded. Where reads are duplicated and a page there is flagged zero
  // or duplicated, the page tables are read first (WriteTracker::Marks): pages that read as written
  // lose their zero flag and their device copy (their mapping went without a write-protect marker:
  // the kernel's reclaim or a migration's zap took a written page), and pages the CPU maps are
  // left alone (mapping one again would hide a write that reclaim unmapped meanwhile). The rest are
  // mapped write-protected: all of them (kAll), or those still flagged (kFlagged).
  enum class Protect { kAll, kFlagged };
  absl::Status MapTracked(ManagedRange& range, VaBlock& blk, uintptr_t start, uintptr_t end, Protect protect)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu);
  // Policy for a fault at `page` whose block holds it on a device: the run to migrate back, and
  // whether read-ahead may follow (not for thrashing blocks).
  std::pair<uintptr_t, uintptr_t> Granule(ManagedRange& range, VaBlock& blk, uintptr_t page,
                                          bool* readahead_ok) ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu);
  // The granule alone, for more faults of the same block in one group (no thrashing note).
  std::pair<uintptr_t, uintptr_t> GranuleAround(ManagedRange& range, VaBlock& blk, uintptr_t page)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu);
  // Queues [from, to) of `range` for the migration workers, one block per job. Blocks a migration
  // to a device starts on after `decided_ns` are left alone, and so are pages whose advised
  // preferred location is a device.
  void PostReadAhead(const RangeRef& range, uintptr_t from, uintptr_t to, uint64_t decided_ns);
  void PostReadAheadRun(const RangeRef& range, uintptr_t from, uintptr_t to, uint64_t decided_ns);
  // Ends the access at `page` by thread `tid` in SIGBUS (poisoning the CPU's unit where it can).
  void DeliverSigbus(ManagedRange& range, uintptr_t page, uint32_t tid);

  Mm& mm_;
  const SigbusMode sigbus_mode_;
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_FAULT_CPU_FAULT_H_
