// Migrator: the migration drivers. Each runs the migrate_vma phases (migrate_vma.cc) one 2 MiB
// block at a time with a device's phase 2 (Device::MigrateToDevice / MigrateToRam): to the host
// (faults' read-ahead, uhmm_migrate to the host, mremap, fork), to a device (uhmm_migrate, launch
// coherence), and in bulk over the migration workers.
#ifndef UHMM_RUNTIME_MM_MIGRATOR_H_
#define UHMM_RUNTIME_MM_MIGRATOR_H_

#include <cstdint>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "runtime/mm/managed_range.h"
#include "runtime/mm/mm.h"
#include "uhmm/pagemap.h"

namespace uhmm {

struct DeviceState;

// Runs the three phases over [start, end) of `range` one 2 MiB block at a time (whole blocks for
// hugetlb ranges), selecting `select` pages of `owner`'s device, with `copy` as phase 2. Requests
// the application made (prefetch, fork, launch) retry pages another migration held until it ends.
// Returns how many pages moved.
absl::StatusOr<size_t> RunMigration(ManagedRange& range, uintptr_t start, uintptr_t end, uint32_t select,
                                    const void* owner, MigrateCause cause,
                                    absl::FunctionRef<absl::Status(MigrateVma*)> copy,
                                    uint64_t skip_if_moved_after_ns = 0);

class Migrator {
 public:
  // How often a migration to a device retries taking a block another device keeps pulling back.
  static constexpr int kPullAttempts = 5;

  explicit Migrator(Mm& mm) : mm_(mm) {}

  // Moves every device page in [start, end) of `range` back to RAM (but, with
  // `skip_if_moved_after_ns`, not blocks that a migration to a device started on after that time:
  // read-ahead).
  absl::Status ToHost(ManagedRange& range, uintptr_t start, uintptr_t end, MigrateCause cause,
                      uint64_t skip_if_moved_after_ns = 0);
  // Moves [start, end) of `range` to device `ds`. Pages on other devices in its blocks come first:
  // in one hop from a device `ds` reaches, when `ds` copies from peers (PeerMove), else through
  // RAM. Passes the fork gate and the device's gate (held off while a fork is prepared or the
  // device emptied), and protects the request from its own eviction.
  absl::Status ToDevice(ManagedRange& range, uintptr_t start, uintptr_t end, DeviceState& ds,
                        MigrateCause cause);
  // uhmm_migrate / uhmm_prefetch_on_queue: [start, end) to `device` (or kHost), block by block,
  // in parallel on the migration workers when the range spans several blocks.
  absl::Status Bulk(ManagedRange& range, uintptr_t start, uintptr_t end, int device);
  // Calls fn(s, e) for each of `pieces` (address runs of one range, none crossing a 2 MiB block),
  // on the caller and idle migration workers when there are several, they average 256 KiB or more,
  // and `device`'s pool (or RAM, kHost) leaves room for every worker to hold a block while it
  // copies; else one after another.
  // Returns the first error (serially the pieces after it are not tried; in parallel they are).
  absl::Status ForEachPiece(const PageRuns& pieces, int device,
                            absl::FunctionRef<absl::Status(uintptr_t, uintptr_t)> fn);

  // Called by migrate_vma_finalize: counts the `pages` that `m` moved (to the host, to a device
  // from the host, or from another device in one hop).
  void Count(const MigrateVma& m, size_t pages);

 private:
  // Moves `from`'s pages in the whole blocks [start, end) of `range` to `to` in one hop, block by
  // block: takes them all, detaches `from`'s chunk to a window (PagePool::Detach), and copies on
  // `to`'s engine. A block whose pages cannot all be taken (another migration holds some) is left
  // for the move through RAM. Returns a copy or device error; what did not move stays on `from`.
  absl::Status PeerMove(ManagedRange& range, uintptr_t start, uintptr_t end, DeviceState& from,
                        DeviceState& to, MigrateCause cause);
  // After a failed PeerMove whose pages could not go home either: the blocks of [start, end) where
  // `from` still has pages, mapped at a window, are mapped for `from` again (`to` giving them up),
  // so that its kernels find the pages where they are. Says on stderr where that is impossible.
  void Reattach(ManagedRange& range, uintptr_t start, uintptr_t end, DeviceState& from, DeviceState& to);

  Mm& mm_;
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_MM_MIGRATOR_H_
