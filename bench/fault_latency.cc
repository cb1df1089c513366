// uhmm fault latency against the machine's floor, in one run.
//   floor: a bare userfaultfd MINOR fault resolved by UFFDIO_CONTINUE from one handler thread
//          (no runtime, no copy) - what this kernel and CPU charge for the round trip;
//   uhmm:  an isolated CPU touch of a device-resident page (4 KiB granularity), and a sequential
//          read-back, through the full runtime path; the fault path as it is and the old one
//          (Config::fault_recheck, UHMM_FAULT_RECHECK=1: a re-check round after each migration,
//          which cost a second CONTINUE and a WAKE), alternated in one run.
// Each is measured back to back (the next touch right after the previous fault) and with 1 ms of
// idle time before each touch, where waking sleeping threads and CPUs dominates.
// Prints p50/p99 per row, then the resolving uffd ioctls per fault of each path.
//
//   uhmm_fault_latency [--backend NAME]
//
// The backend is "host" unless --backend names another (bench/gpu.sh runs it with --backend cuda:
// on a GPU the uhmm rows are faults served from VRAM; with UHMM_CUDA_DRIVER pointing at
// tests/fake_cuda, the CUDA backend's code against the emulated driver). Other knobs come from the
// UHMM_* environment. The host backend is for regressions; GPU tables come from bench/gpu.sh.
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
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "runtime/api/testing.h"
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
  uffdio_register reg{
      .range = {reinterpret_cast<uint64_t>(user), bytes}, .mode = UFFDIO_REGISTER_MODE_MINOR, .ioctls = 0};
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
    std::printf("%-76s %21s\n", name, "unavailable");
  } else {
    std::printf("%-76s %10.1f %10.1f\n", name, Pct(v, .5), Pct(v, .99));
  }
}

// One fault path: a runtime whose Config::fault_recheck is `recheck`, with a device-resident
// range to touch, its samples and the resolving uffd ioctls they cost.
struct PathResult {
  std::unique_ptr<uhmm::Runtime> rt;
  char* p = nullptr;
  std::vector<double> back_to_back, gapped;
  uhmm::UffdCalls before, calls;
  size_t faults = 0;
  double seq_gbps = 0;
  size_t bad = 0;
  std::string error;
};

constexpr size_t kBytes = kSamples * uhmm::kBlockSize / 64;  // 2000 touches, 32 KiB apart
constexpr size_t kStride = kBytes / kSamples;

bool OpenPath(const std::string& backend, bool recheck, PathResult* out) {
  uhmm::Config config = uhmm::Config::FromEnv();
  config.backend = backend;
  config.fault_granularity = kPage;
  config.fault_recheck = recheck;
  absl::StatusOr<std::unique_ptr<uhmm::Runtime>> rt = uhmm::Runtime::Create(config);
  if (!rt.ok()) {
    out->error = "uhmm runtime on the " + backend + " backend: " + rt.status().ToString();
    return false;
  }
  out->rt = std::move(*rt);
  absl::StatusOr<void*> mem = out->rt->Allocate(kBytes);
  if (!mem.ok()) {
    out->error = "allocate: " + mem.status().ToString();
    return false;
  }
  out->p = static_cast<char*>(*mem);
  std::memset(out->p, 7, kBytes);
  if (absl::Status s = out->rt->Migrate(out->p, kBytes, 0); !s.ok()) {
    out->error = "migrate to device 0: " + s.ToString();
    return false;
  }
  out->before = uhmm::UffdCallCounts(*out->rt);
  return true;
}

// After the touches: the ioctls they cost, then a sequential read-back of the range migrated again.
void ClosePath(PathResult* out) {
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the last fault's trailing ioctls
  const uhmm::UffdCalls after = uhmm::UffdCallCounts(*out->rt);
  out->calls.continues = after.continues - out->before.continues;
  out->calls.wakes = after.wakes - out->before.wakes;
  out->calls.eexist = after.eexist - out->before.eexist;
  out->calls.fault_migrations = after.fault_migrations - out->before.fault_migrations;
  out->faults = kSamples;
  if (absl::Status s = out->rt->Migrate(out->p, kBytes, 0); !s.ok()) {
    out->error = "migrate to device 0: " + s.ToString();
    return;
  }
  auto t0 = Clock::now();
  for (size_t i = 0; i < kBytes; i += 64) out->bad += out->p[i] != 7;
  out->seq_gbps = kBytes / Us(Clock::now() - t0) / 1e3;
  (void)out->rt->Free(out->p);
  out->rt.reset();
}

std::string PerFault(const PathResult& r) {
  const double n = r.faults ? static_cast<double>(r.faults) : 1.0;
  char buf[160];
  std::snprintf(buf, sizeof(buf), "%.2f CONTINUE (%.2f EEXIST) + %.2f WAKE, %.2f migrations",
                r.calls.continues / n, r.calls.eexist / n, r.calls.wakes / n, r.calls.fault_migrations / n);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  std::string backend = "host";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--backend") == 0 && i + 1 < argc) {
      backend = argv[++i];
    } else {
      std::fprintf(stderr, "usage: uhmm_fault_latency [--backend NAME]\n");
      return 2;
    }
  }
  FloorResult floor = BareUffdFloor();

  // The old fault path (UHMM_FAULT_RECHECK=1: a re-check round after each migration) and the new
  // one, each in its own runtime, measured in alternation so that whatever else loads the machine
  // meanwhile hits both alike: back to back in chunks of 100 touches (within a chunk each touch
  // follows the previous fault of the same runtime), the idle-gap touches one by one.
  PathResult old_path, new_path;
  PathResult* const paths[2] = {&old_path, &new_path};
  if (!OpenPath(backend, /*recheck=*/true, &old_path) || !OpenPath(backend, /*recheck=*/false, &new_path)) {
    std::fprintf(stderr, "FAIL: %s%s\n", old_path.error.c_str(), new_path.error.c_str());
    return 1;
  }
  constexpr size_t kChunk = 100;
  for (size_t i = 0; i < kSamples - kGapped; i += kChunk) {
    const size_t n = std::min(kChunk, kSamples - kGapped - i);
    for (PathResult* r : paths) {
      std::vector<double> v = TimeTouches(r->p + i * kStride, n, kStride);
      r->back_to_back.insert(r->back_to_back.end(), v.begin(), v.end());
    }
  }
  for (size_t i = kSamples - kGapped; i < kSamples; ++i) {
    for (PathResult* r : paths) r->gapped.push_back(TimeTouches(r->p + i * kStride, 1, kStride, kGap)[0]);
  }
  for (PathResult* r : paths) {
    ClosePath(r);
    if (!r->error.empty()) {
      std::fprintf(stderr, "FAIL: %s\n", r->error.c_str());
      return 1;
    }
  }

  const std::string title = "row (" + backend + " backend, this machine)";
  std::printf("%-76s %10s %10s\n", title.c_str(), "p50 us", "p99 us");
  Row("bare uffd MINOR fault + CONTINUE, back to back", floor.back_to_back);
  Row("old fault path (UHMM_FAULT_RECHECK=1), 4 KiB granule, back to back", old_path.back_to_back);
  Row("uhmm CPU fault, 4 KiB granule, back to back", new_path.back_to_back);
  Row("bare uffd MINOR fault + CONTINUE, 1 ms idle before each", floor.gapped);
  Row("old fault path (UHMM_FAULT_RECHECK=1), 4 KiB granule, 1 ms idle before each", old_path.gapped);
  Row("uhmm CPU fault, 4 KiB granule, 1 ms idle before each", new_path.gapped);
  std::printf("uffd ioctls per fault: old path %s\n", PerFault(old_path).c_str());
  std::printf("uffd ioctls per fault: new path %s\n", PerFault(new_path).c_str());
  std::printf("sequential read-back after migration, %zu MiB at 4 KiB granule: %.2f GB/s\n", kBytes >> 20,
              new_path.seq_gbps);
  const size_t bad = old_path.bad + new_path.bad;
  std::printf("%s: %zu wrong bytes\n", bad == 0 ? "PASS" : "FAIL", bad);
  return bad == 0 ? 0 : 1;
}
