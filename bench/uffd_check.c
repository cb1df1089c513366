// uhmm_uffd_check: what uhmm needs from this machine's kernel, checked before anything else runs
// (bench/gpu.sh's preflight). Prints the kernel release, how userfaultfd opens (syscall,
// /dev/userfaultfd, or user-mode-only), the UFFDIO_API feature bits by name, and whether a
// UFFDIO_REGISTER_MODE_MINOR fault on shmem is really delivered and resolved by UFFDIO_CONTINUE,
// the path every uhmm CPU fault takes.
//
// Exit status: 0 the machine can run uhmm; 3 it cannot (the last line says why: no userfaultfd,
// no UFFD_FEATURE_MINOR_SHMEM, a kernel older than 5.14, or the MINOR fault round trip failed).
// Self-contained C with no uhmm code, so it runs even where libuhmm would not load.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

enum { kExitOk = 0, kExitCannotRun = 3 };

// Every feature bit up to Linux 6.18, by value, so that the names do not depend on the headers of
// the machine this was built on.
static const struct {
  unsigned bit;
  const char* name;
  const char* uhmm_use;
} kFeatures[] = {
    {0, "PAGEFAULT_FLAG_WP", ""},
    {1, "EVENT_FORK", "not used"},
    {2, "EVENT_REMAP", "mremap of managed ranges"},
    {3, "EVENT_REMOVE", "madvise(DONTNEED) of managed ranges"},
    {4, "MISSING_HUGETLBFS", "hugetlb ranges"},
    {5, "MISSING_SHMEM", "first touch of new ranges"},
    {6, "EVENT_UNMAP", "munmap of managed ranges"},
    {7, "SIGBUS", ""},
    {8, "THREAD_ID", "fault reports name the thread"},
    {9, "MINOR_HUGETLBFS", "hugetlb ranges (2 MiB pages)"},
    {10, "MINOR_SHMEM", "REQUIRED: every CPU fault on a migrated page"},
    {11, "EXACT_ADDRESS", ""},
    {12, "WP_HUGETLBFS_SHMEM", ""},
    {13, "WP_UNPOPULATED", ""},
    {14, "POISON", "device errors end in SIGBUS on touch"},
    {15, "WP_ASYNC", ""},
    {16, "MOVE", ""},
};
#define FEATURE_MINOR_SHMEM (1ull << 10)

static int Fail(const char* why) {
  printf("verdict: CANNOT RUN UHMM: %s\n", why);
  return kExitCannotRun;
}

static int OpenSyscall(int flags) { return (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | flags); }

static int OpenDevice(void) {
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev < 0) return -1;
  int fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
  int saved = errno;
  close(dev);
  errno = saved;
  return fd;
}

// Opens a userfaultfd the way the runtime does (runtime/fault/uffd.cc): the syscall, then
// /dev/userfaultfd, then the syscall with UFFD_USER_MODE_ONLY. Sets *how.
static int OpenUffd(const char** how, int* syscall_errno) {
  int fd = OpenSyscall(0);
  *syscall_errno = fd < 0 ? errno : 0;
  *how = "userfaultfd(2)";
  if (fd >= 0 || *syscall_errno == ENOSYS) return fd;
  fd = OpenDevice();
  *how = "/dev/userfaultfd";
  if (fd >= 0) return fd;
  fd = OpenSyscall(UFFD_USER_MODE_ONLY);
  *how = "userfaultfd(2) with UFFD_USER_MODE_ONLY (unprivileged: syscalls on migrated pages fail)";
  return fd;
}

struct Handler {
  int uffd;
  int served;  // faults resolved
  int error;   // errno of a failed UFFDIO_CONTINUE
  int closed;  // no fault came: the handler closed the fd, which wakes the faulting thread
};

static void* Serve(void* arg) {
  struct Handler* h = arg;
  struct pollfd p = {h->uffd, POLLIN, 0};
  if (poll(&p, 1, 3000) <= 0) {  // no fault came; closing the fd lets a stuck touch proceed
    close(h->uffd);
    h->closed = 1;
    return NULL;
  }
  struct uffd_msg m;
  if (read(h->uffd, &m, sizeof(m)) != (ssize_t)sizeof(m) || m.event != UFFD_EVENT_PAGEFAULT) return NULL;
  const uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  struct uffdio_continue c;
  memset(&c, 0, sizeof(c));
  c.range.start = m.arg.pagefault.address & ~(page - 1);
  c.range.len = page;
  if (ioctl(h->uffd, UFFDIO_CONTINUE, &c) != 0) {
    h->error = errno;
  } else {
    h->served = 1;
  }
  return NULL;
}

// One MINOR fault on a shmem page, served by UFFDIO_CONTINUE from a second thread: the runtime's
// fault path with nothing of the runtime. Returns NULL on success, else what failed.
// Closes `uffd` unless the handler already did.
static const char* MinorRoundTrip(int uffd, char* detail, size_t detail_len) {
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  int memfd = (int)syscall(SYS_memfd_create, "uhmm_uffd_check", 1u /* MFD_CLOEXEC */);
  if (memfd < 0 || ftruncate(memfd, (off_t)page) != 0) return "memfd_create/ftruncate failed";
  char* user = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  char* view = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (user == MAP_FAILED || view == MAP_FAILED) return "mmap of the memfd failed";
  view[0] = 42;  // in the page cache: a touch through `user` is a MINOR fault
  struct uffdio_register reg;
  memset(&reg, 0, sizeof(reg));
  reg.range.start = (uint64_t)(uintptr_t)user;
  reg.range.len = page;
  reg.mode = UFFDIO_REGISTER_MODE_MINOR;
  if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) {
    snprintf(detail, detail_len, "UFFDIO_REGISTER(MINOR) on shmem: %s", strerror(errno));
    return detail;
  }
  struct Handler h = {uffd, 0, 0, 0};
  pthread_t t;
  if (pthread_create(&t, NULL, Serve, &h) != 0) return "pthread_create failed";
  const char got = *(volatile char*)user;  // blocks until the handler resolves the fault
  pthread_join(t, NULL);
  const char* why = NULL;
  if (h.error) {
    snprintf(detail, detail_len, "UFFDIO_CONTINUE: %s", strerror(h.error));
    why = detail;
  } else if (!h.served) {
    why = "the MINOR fault was not delivered to the handler";
  } else if (got != 42) {
    why = "the page read after UFFDIO_CONTINUE held the wrong byte";
  }
  if (!h.closed) close(uffd);
  munmap(user, page);
  munmap(view, page);
  close(memfd);
  return why;
}

int main(void) {
  struct utsname u;
  int major = 0, minor = 0;
  if (uname(&u) == 0) {
    sscanf(u.release, "%d.%d", &major, &minor);
    printf("kernel: %s %s (%s)\n", u.sysname, u.release, u.machine);
  }
  const char* how = "";
  int syscall_errno = 0;
  int fd = OpenUffd(&how, &syscall_errno);
  if (fd < 0) {
    const int err = errno;
    printf("userfaultfd: unavailable (userfaultfd(2): %s; last try: %s)\n", strerror(syscall_errno),
           strerror(err));
    if (syscall_errno == ENOSYS) return Fail("this kernel has no userfaultfd system call (ENOSYS)");
    return Fail("userfaultfd is not permitted: run as root, or sysctl -w vm.unprivileged_userfaultfd=1");
  }
  printf("userfaultfd: opened through %s\n", how);
  struct uffdio_api api;
  memset(&api, 0, sizeof(api));
  api.api = UFFD_API;
  if (ioctl(fd, UFFDIO_API, &api) != 0) {
    char why[160];
    snprintf(why, sizeof(why), "UFFDIO_API handshake failed: %s", strerror(errno));
    return Fail(why);
  }
  printf("userfaultfd features: %#llx\n", (unsigned long long)api.features);
  for (size_t i = 0; i < sizeof(kFeatures) / sizeof(kFeatures[0]); ++i) {
    const int on = (api.features >> kFeatures[i].bit) & 1;
    if (kFeatures[i].uhmm_use[0]) {
      printf("  %-3s UFFD_FEATURE_%-20s  uhmm: %s\n", on ? "yes" : "no", kFeatures[i].name,
             kFeatures[i].uhmm_use);
    } else {
      printf("  %-3s UFFD_FEATURE_%s\n", on ? "yes" : "no", kFeatures[i].name);
    }
  }
  const uint64_t known = (1ull << (sizeof(kFeatures) / sizeof(kFeatures[0]))) - 1;
  if (api.features & ~known) {
    printf("  (and bits %#llx this check has no name for)\n", (unsigned long long)(api.features & ~known));
  }
  close(fd);
  if (!(api.features & FEATURE_MINOR_SHMEM)) {
    return Fail("userfaultfd lacks UFFD_FEATURE_MINOR_SHMEM (Linux 5.14+), the fault mode uhmm is built on");
  }
  if (major < 5 || (major == 5 && minor < 14)) {
    return Fail("kernel older than 5.14 (uhmm needs userfaultfd MINOR faults on shmem)");
  }
  // The round trip, on a fresh fd that asks for MINOR_SHMEM.
  fd = OpenUffd(&how, &syscall_errno);
  memset(&api, 0, sizeof(api));
  api.api = UFFD_API;
  api.features = FEATURE_MINOR_SHMEM;
  if (fd < 0 || ioctl(fd, UFFDIO_API, &api) != 0)
    return Fail("UFFDIO_API with UFFD_FEATURE_MINOR_SHMEM failed");
  char detail[200];
  const char* why = MinorRoundTrip(fd, detail, sizeof(detail));
  if (why) {
    printf("minor fault round trip: FAILED: %s\n", why);
    return Fail(why);
  }
  printf("minor fault round trip: ok (shmem page, UFFDIO_REGISTER_MODE_MINOR, UFFDIO_CONTINUE)\n");
  printf("verdict: OK\n");
  return kExitOk;
}
