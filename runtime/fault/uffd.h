// userfaultfd wrapper for the fault service: opening (with a clear error when not permitted),
// feature negotiation, MINOR-mode registration and the resolving ioctls (CONTINUE, WAKE, POISON).
// Debian's 6.1 headers lack UFFDIO_POISON; it is defined here and detected at run time.
#ifndef UHMM_RUNTIME_FAULT_UFFD_H_
#define UHMM_RUNTIME_FAULT_UFFD_H_

#include <linux/userfaultfd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef _UFFDIO_POISON
#define _UFFDIO_POISON (0x08)
struct uffdio_poison {
  struct uffdio_range range;
#define UFFDIO_POISON_MODE_DONTWAKE ((__u64)1 << 0)
  __u64 mode;
  __s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif
// Write tracking (Linux 6.7+): asynchronous write-protect faults, and CONTINUE that maps a page
// write-protected.
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFDIO_CONTINUE_MODE_WP
#define UFFDIO_CONTINUE_MODE_WP ((__u64)1 << 1)
#endif

namespace uhmm {

struct Counters;

class Uffd {
 public:
  // How the fd was obtained, for diagnostics.
  enum class Source { kSyscall, kDevUserfaultfd, kSyscallUserModeOnly };

  // Opens a non-blocking userfaultfd and negotiates MINOR_SHMEM, THREAD_ID, the REMOVE/UNMAP/REMAP
  // events and POISON when present. PERMISSION_DENIED names the sysctl and device file to fix.
  static absl::StatusOr<std::unique_ptr<Uffd>> Open();
  ~Uffd();

  int fd() const { return fd_; }
  uint64_t features() const { return features_; }
  bool has_poison() const { return (features_ & UFFD_FEATURE_POISON) != 0; }
  // Asynchronous write-protect on shmem (the kernel resolves a write to a write-protected page by
  // itself and records it for PAGEMAP_SCAN): CPU write tracking (fault/write_tracker.h).
  bool has_async_wp() const {
    constexpr uint64_t kNeeded = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
    return (features_ & kNeeded) == kNeeded;
  }
  // Registers later ranges for write-protect too (only with has_async_wp()); set before Register.
  void set_write_protect(bool on) { write_protect_ = on && has_async_wp(); }
  Source source() const { return source_; }

  // MINOR and MISSING: every CPU mapping of a managed page is installed by uhmm (MISSING: the page
  // has no host copy yet, or an application discard freed it), so nothing reaches a page behind
  // the runtime's back while it applies a discard. `track_writes` (after set_write_protect(true)): WP as
  // well, in the asynchronous mode, so that pages mapped write-protected record CPU writes.
  absl::Status Register(uintptr_t addr, size_t len, bool track_writes = false);
  absl::Status Unregister(uintptr_t addr, size_t len);

  // Installs PTEs for [addr, addr+len) from the page cache. Pages that are already mapped (EEXIST)
  // count as done, and are not woken: whatever mapped them woke their waiters (see uffd.cc). Wakes
  // the threads waiting in the range. On EAGAIN (a non-fault event is pending) runs the EAGAIN
  // hook, which drains events, and retries.
  // wake = false: UFFDIO_CONTINUE_MODE_DONTWAKE; the caller wakes the threads with Wake.
  // `page`: the mapping's page size (2 MiB for hugetlb), the step past an already mapped page.
  // drain_events = false: on EAGAIN return an EventPending() status instead of running the hook
  // (for callers that hold off reads, see FaultService::MapUnlessDiscarded).
  // write_protect: UFFDIO_CONTINUE_MODE_WP (a range registered with track_writes): the pages are
  // mapped write-protected, and a CPU write to one is recorded (fault/write_tracker.h).
  absl::Status Continue(uintptr_t addr, size_t len, bool wake = true, size_t page = 4096,
                        bool drain_events = true, bool write_protect = false);
  // The status Continue(drain_events = false) returns while a non-fault event waits to be read.
  static bool EventPending(const absl::Status& s);
  absl::Status Wake(uintptr_t addr, size_t len);
  // Resolves a missing fault at an address no range covers with a new zero page (`len`: 4 KiB, or
  // 2 MiB in a hugetlb mapping), and wakes the waiters.
  absl::Status ZeroFill(uintptr_t addr, size_t len);
  // Write-protects [addr, addr+len) of a range registered with track_writes: mapped pages become
  // write-protected and unmapped ones get a write-protect marker, so that every page reads as not
  // written until the CPU writes it (fault/write_tracker.h). Nothing is woken.
  absl::Status WriteProtect(uintptr_t addr, size_t len);
  // Installs a poison marker: this and later accesses of the page raise SIGBUS.
  absl::Status Poison(uintptr_t addr, size_t len);

  // Reads up to `max` messages without blocking; returns 0 when none is pending.
  absl::StatusOr<size_t> Read(uffd_msg* msgs, size_t max);

  // Called on EAGAIN from a resolving ioctl; the fault service installs its event drain here.
  void set_eagain_hook(std::function<void()> hook) { eagain_hook_ = std::move(hook); }
  // Where the resolving ioctls are counted (Counters::uffd_*); set before any service thread runs.
  void set_counters(Counters* counters) { counters_ = counters; }
  // Config::fault_recheck (the old fault path, for before/after measurements): a CONTINUE that met
  // an already mapped page is followed by a WAKE of the whole range, as it used to be.
  void set_wake_after_eexist(bool on) { wake_after_eexist_ = on; }

 private:
  Uffd(int fd, uint64_t features, Source source) : fd_(fd), features_(features), source_(source) {}
  void OnEagain();
  // Drops write-protect markers in the range (UFFDIO_WRITEPROTECT, mode 0); false without WP.
  bool DropWriteProtectMarkers(uintptr_t addr, size_t len);
  void Count(std::atomic<uint64_t> Counters::*counter) const;

  int fd_;
  uint64_t features_;
  Source source_;
  std::function<void()> eagain_hook_;
  Counters* counters_ = nullptr;
  bool wake_after_eexist_ = false;
  bool write_protect_ = false;
};

// The message Open() returns when no way to get a userfaultfd is permitted; exposed for tests.
std::string UffdPermissionHelp(int syscall_errno, int devfile_errno);

}  // namespace uhmm

#endif  // UHMM_RUNTIME_FAULT_UFFD_H_
