// Counters: what the parts of a runtime count for uhmm_get_stats and UHMM_STATS. Relaxed atomics;
// each part increments its own.
#ifndef UHMM_RUNTIME_API_COUNTERS_H_
#define UHMM_RUNTIME_API_COUNTERS_H_

#include <atomic>
#include <cstdint>

namespace uhmm {

struct Counters {
  std::atomic<uint64_t> cpu_faults{0}, duplicate_faults{0}, unmanaged_faults{0};
  std::atomic<uint64_t> pages_to_device{0}, pages_to_host{0}, evicted_pages{0}, evicted_chunks{0};
  std::atomic<uint64_t> pages_peer{0};  // moved device to device in one hop (peer copies)
  std::atomic<uint64_t> sigbus{0}, ev_remove{0}, ev_unmap{0}, ev_remap{0}, forks{0};
  std::atomic<uint64_t> own_zap_events{0}, zero_fill_faults{0};
  std::atomic<uint64_t> launch_syncs{0}, launch_pages{0}, stale_faults{0};
  std::atomic<uint64_t> launch_blocks_checked{0};  // queued blocks launch syncs looked at
  // Read duplication: pages that came home keeping their device copy, and duplicates moved back to
  // their device without a copy (the CPU had not written them).
  std::atomic<uint64_t> duplicates_kept{0}, duplicates_reused{0}, duplicates_dropped{0};
  std::atomic<uint64_t> zero_pages_filled{0};  // pushed as a device fill: never written (VaBlock zero)
  std::atomic<uint64_t> readahead_pages{0}, readahead_dropped{0}, grown_faults{0}, thrashing_blocks{0};
  // Resolving userfaultfd ioctls (fault/uffd.cc), one per call including retries; uffd_eexist: the
  // CONTINUEs that found their first page already mapped. fault_migrations: page_fault calls made
  // by the CPU fault path (one per migration back, however many faults it served).
  std::atomic<uint64_t> uffd_continue{0}, uffd_wake{0}, uffd_zeropage{0}, uffd_poison{0}, uffd_eexist{0};
  std::atomic<uint64_t> fault_migrations{0};
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_API_COUNTERS_H_
