// CPU write tracking; see write_tracker.h.
#include "runtime/fault/write_tracker.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"

// Debian's 6.1 headers predate PAGEMAP_SCAN (Linux 6.7); the uAPI, as linux/fs.h defines it.
#ifndef PAGEMAP_SCAN
struct page_region {
  __u64 start;
  __u64 end;
  __u64 categories;
};
struct pm_scan_arg {
  __u64 size;
  __u64 flags;
  __u64 start;
  __u64 end;
  __u64 walk_end;
  __u64 vec;
  __u64 vec_len;
  __u64 max_pages;
  __u64 category_inverted;
  __u64 category_mask;
  __u64 category_anyof_mask;
  __u64 return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_PRESENT (1 << 3)
#endif

namespace uhmm {

absl::StatusOr<std::unique_ptr<WriteTracker>> WriteTracker::Open() {
  const int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrFormat("uhmm: cannot open /proc/self/pagemap for write tracking: %s", strerror(errno)));
  }
  std::unique_ptr<WriteTracker> t(new WriteTracker(fd, getpid()));
  // Probe: an empty scan fails with ENOTTY (or EINVAL) where PAGEMAP_SCAN does not exist.
  pm_scan_arg arg = {};
  arg.size = sizeof(arg);
  if (ioctl(fd, PAGEMAP_SCAN, &arg) < 0) {
    return absl::UnavailableError(
        absl::StrFormat("uhmm: the kernel lacks PAGEMAP_SCAN (Linux 6.7+): %s", strerror(errno)));
  }
  return t;
}

WriteTracker::~WriteTracker() { close(fd_); }

absl::StatusOr<std::vector<uint8_t>> WriteTracker::Scan(uintptr_t start, uintptr_t end,
                                                        uint64_t categories) const {
  if (getpid() != pid_) return absl::FailedPreconditionError("uhmm: write tracking in a forked child");
  std::vector<uint8_t> pages((end - start) / kPageSize, 0);
  page_region regions[64];
  uintptr_t from = start;
  while (from < end) {
    pm_scan_arg arg = {};
    arg.size = sizeof(arg);
    arg.start = from;
    arg.end = end;
    arg.vec = reinterpret_cast<uintptr_t>(regions);
    arg.vec_len = sizeof(regions) / sizeof(regions[0]);
    arg.category_anyof_mask = categories;
    arg.return_mask = categories;
    const long n = ioctl(fd_, PAGEMAP_SCAN, &arg);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(
          absl::StrFormat("uhmm: PAGEMAP_SCAN of [%#x, %#x): %s", from, end, strerror(errno)));
    }
    for (long k = 0; k < n; ++k) {
      for (uintptr_t a = std::max<uintptr_t>(regions[k].start, start);
           a < std::min<uintptr_t>(regions[k].end, end); a += kPageSize)
        pages[(a - start) / kPageSize] = static_cast<uint8_t>(regions[k].categories);
    }
    if (arg.walk_end <= from) break;  // no progress: should not happen
    from = arg.walk_end;
  }
  return pages;
}

std::vector<bool> WriteTracker::WrittenPages(uintptr_t start, uintptr_t end) const {
  absl::StatusOr<std::vector<uint8_t>> pages = Scan(start, end, PAGE_IS_WRITTEN);
  if (!pages.ok()) return std::vector<bool>((end - start) / kPageSize, true);
  return std::vector<bool>(pages->begin(), pages->end());  // nonzero: written
}

std::vector<uint8_t> WriteTracker::Marks(uintptr_t start, uintptr_t end) const {
  absl::StatusOr<std::vector<uint8_t>> pages = Scan(start, end, PAGE_IS_WRITTEN | PAGE_IS_PRESENT);
  if (!pages.ok()) return std::vector<uint8_t>((end - start) / kPageSize, kWritten);
  for (uint8_t& p : *pages)
    p = ((p & PAGE_IS_PRESENT) ? kMapped : 0) | ((p & PAGE_IS_WRITTEN) ? kWritten : 0);
  return *std::move(pages);
}

std::vector<bool> WrittenPages(const WriteTracker* tracker, uintptr_t start, uintptr_t end) {
  return tracker != nullptr ? tracker->WrittenPages(start, end)
                            : std::vector<bool>((end - start) / kPageSize, true);
}

}  // namespace uhmm
