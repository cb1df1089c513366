// Host-backend fault latency against the machine's floor, in one run.
//   floor: a bare userfaultfd MINOR fault resolved by UFFDIO_CONTINUE from one handler thread
//          (no runtime, no copy) - what this kernel and CPU charge for the round trip;
//   uhmm:  an isolated CPU touch of a device-resident page (host backend, 4 KiB granularity),
//          and a sequential read-back, through the full runtime path.
// Each is measured back to back (the next touch right after the previous fault) and with 1 ms of
// idle time before each touch, where waking sleeping threads and CPUs dominates.
// Prints p50/p99 per row. The host backend is for regressions; GPU numbers come from bench/gpu.sh.
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "uhmm/uhmm.hpp"

namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kPage = 4096;
constexpr size_t kSamples = 2000;
constexpr size_t kGapped = 300;  // touches with an idle gap before each
constexpr std::chrono::microseconds kGap{1000};

double Us(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }
double Pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(p * (v.size() - 1))];
}

// Touches one page per `stride` bytes and records each touch's latency. With `gap`, the thread
// sleeps between touches, so every fault also pays for waking idle CPUs and threads.
std::vector<double> TimeTouches(volatile char* base, size_t count, size_t stride,
                                std::chrono::microseconds gap = {}) {
  std::vector<double> lat;
  lat.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    if (gap.count() > 0) std::this_thread::sleep_for(gap);
    auto t = Clock::now();
    (void)base[i * stride];
    lat.push_back(Us(Clock::now() - t));
  }
  return lat;
}

struct FloorResult {
  std::vector<double> back_to_back, gapped;
};

FloorResult BareUffdFloor() {
  const size_t bytes = kSamples * kPage;
  int memfd = memfd_create("floor", MFD_CLOEXEC);
  if (memfd < 0 || ftruncate(memfd, bytes) != 0) return {};
  FloorResult out;
  char* user = static_cast<char*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0));
  char* view = static_cast<char*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0));
  std::memset(view, 1, bytes);  // populate the page cache: user-view touches are MINOR faults
  int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  uffdio_api api{.api = UFFD_API, .features = UFFD_FEATURE_MINOR_SHMEM, .ioctls = 0};
  uffdio_register reg{.range = {reinterpret_cast<uint64_t>(user), bytes},
                      .mode = UFFDIO_REGISTER_MODE_MINOR, .ioctls = 0};
  if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg)) return {};
  std::atomic<bool> stop{false};
  std::thread handler([&] {
    pollfd p{uffd, POLLIN, 0};
    while (!stop.load()) {
      if (poll(&p, 1, 50) <= 0) continue;
      uffd_msg m;
      if (read(uffd, &m, sizeof(m)) != sizeof(m)) continue;
      uffdio_continue c{.range = {m.arg.pagefault.address & ~(kPage - 1), kPage}, .mode = 0, .mapped = 0};
      ioctl(uffd, UFFDIO_CONTINUE, &c);
    }
  });
  out.back_to_back = TimeTouches(user, kSamples - kGapped, kPage);
  out.gapped = TimeTouches(user + (kSamples - kGapped) * kPage, kGapped, kPage, kGap);
  stop.store(true);
  handler.join();
  close(uffd);
  munmap(user, bytes);
  munmap(view, bytes);
  close(memfd);
  return out;
}

void Row(const char* name, const std::vector<double>& v) {
  if (v.empty()) {
    std::printf("%-58s %21s\n", name, "unavailable");
  } else {
    std::printf("%-58s %10.1f %10.1f\n", name, Pct(v, .5), Pct(v, .99));
  }
}

}  // namespace

int main() {
  FloorResult floor = BareUffdFloor();

  uhmm::Config config = uhmm::Config::FromEnv();
  config.backend = "host";
  config.fault_granularity = kPage;
  absl::StatusOr<std::unique_ptr<uhmm::Runtime>> rt = uhmm::Runtime::Create(config);
  if (!rt.ok()) {
    std::fprintf(stderr, "%s\n", rt.status().ToString().c_str());
    return 1;
  }
  const size_t bytes = kSamples * uhmm::kBlockSize / 64;  // 2000 touches, 32 KiB apart
  absl::StatusOr<void*> mem = (*rt)->Allocate(bytes);
  if (!mem.ok()) return 1;
  auto* p = static_cast<char*>(*mem);
  std::memset(p, 7, bytes);
  if (!(*rt)->Migrate(p, bytes, 0).ok()) return 1;
  const size_t stride = bytes / kSamples;
  std::vector<double> isolated = TimeTouches(p, kSamples - kGapped, stride);
  std::vector<double> gapped = TimeTouches(p + (kSamples - kGapped) * stride, kGapped, stride, kGap);
  if (!(*rt)->Migrate(p, bytes, 0).ok()) return 1;
  auto t0 = Clock::now();
  size_t bad = 0;
  for (size_t i = 0; i < bytes; i += 64) bad += p[i] != 7;
  const double seq_us = Us(Clock::now() - t0);

  std::printf("%-58s %10s %10s\n", "row (host backend, this machine)", "p50 us", "p99 us");
  Row("bare uffd MINOR fault + CONTINUE, back to back", floor.back_to_back);
  Row("uhmm CPU fault, 4 KiB granule, back to back", isolated);
  Row("bare uffd MINOR fault + CONTINUE, 1 ms idle before each", floor.gapped);
  Row("uhmm CPU fault, 4 KiB granule, 1 ms idle before each", gapped);
  std::printf("sequential read-back after migration, %zu MiB at 4 KiB granule: %.2f GB/s\n",
              bytes >> 20, bytes / seq_us / 1e3);
  (void)(*rt)->Free(p);
  if (bad != 0) std::printf("FAIL: %zu wrong bytes\n", bad);
  return bad == 0 ? 0 : 1;
}
