// WriteTracker: which pages of a managed range the CPU wrote, from the kernel's page tables.
//
// Ranges are registered with userfaultfd write-protect in the asynchronous mode (Linux 6.7+,
// Uffd::has_async_wp): a page that uhmm maps write-protected (UFFDIO_CONTINUE_MODE_WP) stays
// readable, and the first CPU write to it is resolved by the kernel on its own, clearing the PTE's
// uffd-wp bit. PAGEMAP_SCAN (/proc/self/pagemap) reports pages without that bit as PAGE_IS_WRITTEN.
// Read duplication relies on two facts measured on the kernel (see docs/SEMANTICS.md): zapping a
// write-protected page that was not written leaves a uffd-wp marker, which still reads as not
// written, while a written page (and a page never mapped) reads as written. So a migration can zap
// first and ask afterwards: a CPU write that lands before the zap is seen, and one after it faults
// and waits for the migration. Nothing is lost to the order.
#ifndef UHMM_RUNTIME_FAULT_WRITE_TRACKER_H_
#define UHMM_RUNTIME_FAULT_WRITE_TRACKER_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/mm/managed_range.h"

namespace uhmm {

class WriteTracker {
 public:
  // Opens /proc/self/pagemap; UNAVAILABLE when it cannot be opened or lacks PAGEMAP_SCAN.
  static absl::StatusOr<std::unique_ptr<WriteTracker>> Open();
  ~WriteTracker();
  WriteTracker(const WriteTracker&) = delete;
  WriteTracker& operator=(const WriteTracker&) = delete;

  // One entry per page of [start, end) (page aligned): whether it reads as written (written since
  // it was mapped write-protected, mapped writable, or never mapped). Every page counts as written
  // when the kernel cannot say (the safe answer: a page taken as written is copied). Changes nothing.
  std::vector<bool> WrittenPages(uintptr_t start, uintptr_t end) const;

  // One look at both marks, one entry per page of [start, end): kMapped where the CPU maps the page
  // now, kWritten where it reads as written. For a caller about to map pages write-protected: a
  // page mapped when looked at must be left alone, since it can be written and then unmapped by
  // the kernel's reclaim (MADV_PAGEOUT) before the mapping call reaches it, and mapping it
  // write-protected again would hide that write. Without an answer: written and not mapped.
  enum Mark : uint8_t { kMapped = 1, kWritten = 2 };
  std::vector<uint8_t> Marks(uintptr_t start, uintptr_t end) const;

 private:
  WriteTracker(int fd, pid_t pid) : fd_(fd), pid_(pid) {}
  // One PAGEMAP_SCAN walk of [start, end): per page, which of `categories` (PAGE_IS_*) it is in.
  absl::StatusOr<std::vector<uint8_t>> Scan(uintptr_t start, uintptr_t end, uint64_t categories) const;
  int fd_;
  pid_t pid_;  // the process whose page tables fd_ reads (a forked child must not use it)
};

// `tracker`'s WrittenPages, or, without a tracker (writes not tracked), every page written.
std::vector<bool> WrittenPages(const WriteTracker* tracker, uintptr_t start, uintptr_t end);

}  // namespace uhmm

#endif  // UHMM_RUNTIME_FAULT_WRITE_TRACKER_H_
