// userfaultfd wrapper; see uffd.h.
#include "runtime/fault/uffd.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/api/counters.h"

namespace uhmm {
namespace {

constexpr uint64_t kPage = 4096;

int OpenViaSyscall(int flags) {
  return static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | flags));
}

int OpenViaDevice() {
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev < 0) return -1;
  int fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
  int saved = errno;
  close(dev);
  errno = saved;
  return fd;
}

absl::Status Errno(const std::string& what, int err) {
  std::string msg = absl::StrCat(what, ": ", strerror(err));
  switch (err) {
    case EPERM:
    case EACCES:
      return absl::PermissionDeniedError(msg);
    case ENOMEM:
      return absl::ResourceExhaustedError(msg);
    case EINVAL:
      return absl::InvalidArgumentError(msg);
    default:
      return absl::InternalError(msg);
  }
}

}  // namespace

std::string UffdPermissionHelp(int syscall_errno, int devfile_errno) {
  return absl::StrCat(
      "uhmm: userfaultfd is not permitted for this process (userfaultfd(2): ", strerror(syscall_errno),
      "; /dev/userfaultfd: ", strerror(devfile_errno),
      "). Fix one of: run as root or with CAP_SYS_PTRACE; `sysctl -w vm.unprivileged_userfaultfd=1`; "
      "or give this user read/write access to /dev/userfaultfd (Linux 6.1+, e.g. "
      "`chmod 0666 /dev/userfaultfd` or a udev rule).");
}

absl::StatusOr<std::unique_ptr<Uffd>> Uffd::Open() {
  Source source = Source::kSyscall;
  int fd = OpenViaSyscall(0);
  int syscall_errno = fd < 0 ? errno : 0;
  int dev_errno = 0;
  if (fd < 0 && syscall_errno == ENOSYS) {
    return absl::UnavailableError("uhmm: this kernel has no userfaultfd (CONFIG_USERFAULTFD=n)");
  }
  if (fd < 0) {
    fd = OpenViaDevice();
    dev_errno = fd < 0 ? errno : 0;
    source = Source::kDevUserfaultfd;
  }
  if (fd < 0) {
    // Last resort: user-mode-only faults are allowed without privilege, but a system call that
    // touches a migrated page (read(2) into managed memory, say) then fails with EFAULT.
    fd = OpenViaSyscall(UFFD_USER_MODE_ONLY);
    source = Source::kSyscallUserModeOnly;
    if (fd >= 0) {
      std::fprintf(stderr,
                   "uhmm: warning: userfaultfd opened with UFFD_USER_MODE_ONLY; system calls that "
                   "read or write device-resident managed memory will fail with EFAULT. %s\n",
                   UffdPermissionHelp(syscall_errno, dev_errno).c_str());
    }
  }
  if (fd < 0) return absl::PermissionDeniedError(UffdPermissionHelp(syscall_errno, dev_errno));

  // Ask for features in two steps: a probe fd reports what the kernel has (UFFDIO_API can only be
  // called once per fd), then the real fd requests the intersection.
  uint64_t available = 0;
  {
    int probe = OpenViaSyscall(source == Source::kSyscallUserModeOnly ? UFFD_USER_MODE_ONLY : 0);
    if (probe < 0 && source == Source::kDevUserfaultfd) probe = OpenViaDevice();
    if (probe >= 0) {
      uffdio_api api{.api = UFFD_API, .features = 0, .ioctls = 0};
      if (ioctl(probe, UFFDIO_API, &api) == 0) available = api.features;
      close(probe);
    }
  }
  const uint64_t required = UFFD_FEATURE_MINOR_SHMEM;
  // Not UFFD_FEATURE_EVENT_FORK: with it, fork() waits in the kernel until this process reads the
  // event, while glibc holds every malloc arena lock across the clone; a fault service thread that
  // allocates before reading would deadlock the fork. The atfork handlers (fork.cc) give the child
  // private copies of the ranges anyway, so the child's views need no registration.
  const uint64_t wanted = required | UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_EVENT_REMOVE |
                          UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_POISON |
                          UFFD_FEATURE_MINOR_HUGETLBFS | UFFD_FEATURE_MISSING_SHMEM |
                          UFFD_FEATURE_MISSING_HUGETLBFS | UFFD_FEATURE_WP_ASYNC |
                          UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
  if ((available & required) != required) {
    close(fd);
    return absl::UnavailableError(
        absl::StrFormat("uhmm: the kernel's userfaultfd lacks UFFD_FEATURE_MINOR_SHMEM (Linux 5.14+ needed); "
                        "features reported: %#x",
                        available));
  }
  uffdio_api api{.api = UFFD_API, .features = wanted & available, .ioctls = 0};
  const int rc = ioctl(fd, UFFDIO_API, &api);
  if (rc != 0) {
    int err = errno;
    close(fd);
    return Errno("uhmm: UFFDIO_API handshake failed", err);
  }
  return std::unique_ptr<Uffd>(new Uffd(fd, api.features, source));
}

Uffd::~Uffd() {
  if (fd_ >= 0) close(fd_);
}

absl::Status Uffd::Register(uintptr_t addr, size_t len, bool track_writes) {
  const bool wp = track_writes && write_protect_;
  uffdio_register reg{
      .range = {.start = addr, .len = len},
      .mode = UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_MISSING | (wp ? UFFDIO_REGISTER_MODE_WP : 0),
      .ioctls = 0};
  if (ioctl(fd_, UFFDIO_REGISTER, &reg) != 0) {
    return Errno(
        absl::StrFormat("uhmm: UFFDIO_REGISTER(MINOR|MISSING%s) of [%#x, +%#x)", wp ? "|WP" : "", addr, len),
        errno);
  }
  return absl::OkStatus();
}

absl::Status Uffd::ZeroFill(uintptr_t addr, size_t len) {
  bool unprotected = false;
  for (;;) {
    int rc;
    if (len == kPage) {
      uffdio_zeropage z{.range = {.start = addr, .len = len}, .mode = 0, .zeropage = 0};
      Count(&Counters::uffd_zeropage);
      rc = ioctl(fd_, UFFDIO_ZEROPAGE, &z);
    } else {
      // hugetlbfs has no ZEROPAGE: copy from a zero page of the same size. Read-only anonymous
      // memory reads as zeros without ever being populated.
      static void* const zeros = mmap(nullptr, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (zeros == MAP_FAILED) return Errno("uhmm: mapping a zero page", errno);
      uffdio_copy c{.dst = addr, .src = reinterpret_cast<uintptr_t>(zeros), .len = len, .mode = 0, .copy = 0};
      Count(&Counters::uffd_zeropage);
      rc = ioctl(fd_, UFFDIO_COPY, &c);
    }
    if (rc == 0) return absl::OkStatus();
    const int err = errno;
    if (err == EAGAIN) {
      OnEagain();
      continue;
    }
    if (err == EEXIST && !unprotected) {
      unprotected = true;
      if (DropWriteProtectMarkers(addr, len)) continue;  // a marker, not a mapping
    }
    if (err == EEXIST) return Wake(addr, len);  // mapped meanwhile
    // The process is exiting, or the range was freed meanwhile (unregistering woke the waiters).
    if (err == ESRCH || err == ENOENT) return absl::OkStatus();
    return Errno(absl::StrFormat("uhmm: zero-filling [%#x, +%#x)", addr, len), err);
  }
}

absl::Status Uffd::Unregister(uintptr_t addr, size_t len) {
  uffdio_range range{.start = addr, .len = len};
  if (ioctl(fd_, UFFDIO_UNREGISTER, &range) != 0) {
    return Errno(absl::StrFormat("uhmm: UFFDIO_UNREGISTER of [%#x, +%#x)", addr, len), errno);
  }
  return absl::OkStatus();
}

void Uffd::Count(std::atomic<uint64_t> Counters::*counter) const {
  if (counters_ != nullptr) (counters_->*counter).fetch_add(1, std::memory_order_relaxed);
}

void Uffd::OnEagain() {
  if (eagain_hook_) {
    eagain_hook_();
  } else {
    sched_yield();
  }
}

namespace {
constexpr char kEventPending[] = "uhmm: a userfaultfd event is waiting to be read";
}  // namespace

bool Uffd::EventPending(const absl::Status& s) {
  return absl::IsUnavailable(s) && std::string_view(s.message().data(), s.message().size()) == kEventPending;
}

// EEXIST needs no wake. A page is mapped in the user view only by a resolving ioctl of ours, and
// each of them wakes the threads waiting in what it mapped: CONTINUE and ZEROPAGE themselves, or,
// with UFFDIO_CONTINUE_MODE_DONTWAKE, the caller right after (a traced migrate_vma_finalize). A
// thread that faults after the mapping does not sleep at all: the kernel queues it, then looks at
// the page table again (userfaultfd_must_wait) and returns when the page is there. So whoever
// finds a page mapped has no thread to wake there that its mapper will not wake. Pages skipped for
// having no page-cache page (EFAULT, ENOENT) are woken: their threads retry and fault afresh.
absl::Status Uffd::Continue(uintptr_t addr, size_t len, bool wake, size_t page, bool drain_events,
                            bool write_protect) {
  uintptr_t cur = addr;
  const uintptr_t end = addr + len;
  bool skipped = false;  // pages whose waiters this call must wake itself
  while (cur < end) {
    uffdio_continue c{.range = {.start = cur, .len = end - cur},
                      .mode = (wake ? 0 : UFFDIO_CONTINUE_MODE_DONTWAKE) |
                              (write_protect && write_protect_ ? UFFDIO_CONTINUE_MODE_WP : 0),
                      .mapped = 0};
    Count(&Counters::uffd_continue);
    if (ioctl(fd_, UFFDIO_CONTINUE, &c) == 0) break;
    const int err = errno;
    if (c.mapped > 0) cur += static_cast<uint64_t>(c.mapped);  // partial progress
    if (err == EEXIST) {
      // Someone else already mapped the page at `cur` (and woke its waiters): skip it.
      Count(&Counters::uffd_eexist);
      cur += page;
      skipped |= wake_after_eexist_;
    } else if (err == EAGAIN) {
      if (c.mapped <= 0 && !drain_events) return absl::UnavailableError(kEventPending);
      if (c.mapped <= 0) OnEagain();
    } else if (err == EFAULT || err == ENOENT) {
      // No page-cache page behind `cur` (hole punched meanwhile): let the thread retry the access,
      // which then takes an ordinary missing fault.
      cur += page;
      skipped = true;
    } else if (err == ESRCH) {
      return absl::OkStatus();  // the process is exiting
    } else {
      return Errno(absl::StrFormat("uhmm: UFFDIO_CONTINUE at %#x", cur), err);
    }
  }
  return skipped && wake ? Wake(addr, len) : absl::OkStatus();
}

absl::Status Uffd::Wake(uintptr_t addr, size_t len) {
  uffdio_range range{.start = addr, .len = len};
  Count(&Counters::uffd_wake);
  if (ioctl(fd_, UFFDIO_WAKE, &range) != 0 && errno != ESRCH) {
    return Errno(absl::StrFormat("uhmm: UFFDIO_WAKE of [%#x, +%#x)", addr, len), errno);
  }
  return absl::OkStatus();
}

bool Uffd::DropWriteProtectMarkers(uintptr_t addr, size_t len) {
  // A write-protect marker is left where a write-protected page was zapped; ZEROPAGE and POISON
  // take only an empty slot (EEXIST otherwise). Resolving write-protection drops the marker.
  if (!write_protect_) return false;
  uffdio_writeprotect wp{.range = {.start = addr, .len = len}, .mode = 0};
  return ioctl(fd_, UFFDIO_WRITEPROTECT, &wp) == 0;
}

absl::Status Uffd::WriteProtect(uintptr_t addr, size_t len) {
  if (!write_protect_) return absl::FailedPreconditionError("uhmm: write-protect without write tracking");
  for (;;) {
    // (MODE_WP wakes nobody; the kernel refuses it combined with DONTWAKE.)
    uffdio_writeprotect wp{.range = {.start = addr, .len = len}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(fd_, UFFDIO_WRITEPROTECT, &wp) == 0) return absl::OkStatus();
    if (errno == EAGAIN) {  // the address space is changing (a non-fault event is pending)
      OnEagain();
      continue;
    }
    return Errno(absl::StrFormat("uhmm: UFFDIO_WRITEPROTECT of [%#x, +%#x)", addr, len), errno);
  }
}

absl::Status Uffd::Poison(uintptr_t addr, size_t len) {
  bool unprotected = false;
  for (;;) {
    uffdio_poison p{.range = {.start = addr, .len = len}, .mode = 0, .updated = 0};
    Count(&Counters::uffd_poison);
    if (ioctl(fd_, UFFDIO_POISON, &p) == 0) return absl::OkStatus();
    if (errno == EAGAIN && p.updated <= 0) {
      OnEagain();
      continue;
    }
    if (errno == EEXIST && !unprotected) {
      unprotected = true;
      if (DropWriteProtectMarkers(addr, len)) continue;
    }
    return Errno(absl::StrFormat("uhmm: UFFDIO_POISON at %#x", addr), errno);
  }
}

absl::StatusOr<size_t> Uffd::Read(uffd_msg* msgs, size_t max) {
  for (;;) {
    ssize_t n = read(fd_, msgs, max * sizeof(uffd_msg));
    if (n >= 0) return static_cast<size_t>(n) / sizeof(uffd_msg);
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return 0;
    return Errno("uhmm: read(userfaultfd)", errno);
  }
}

}  // namespace uhmm
