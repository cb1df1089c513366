// uhmm demo: the whole HMM path on the best available backend.
//   1. allocate managed memory and fill it on the CPU;
//   2. migrate it to device 0 (the CPU mappings go away; the data lives in device memory);
//   3. let the device change it in its own memory (through the device addresses);
//   4. touch it on the CPU: each touch of a device page faults, userfaultfd hands the fault to
//      the runtime, the backend's page_fault copies the data back, the page is mapped, the thread
//      wakes. We time isolated faults and a sequential read-back;
//   5. check every word and print what migrated.
// Knobs come from the environment (UHMM_BACKEND, UHMM_FAULT_GRANULARITY, ...; see docs/CONFIG.md).
// Uses installed headers only: step 3's device-side write is uhmm/testing.h's DeviceAccess.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "uhmm/testing.h"
#include "uhmm/uhmm.hpp"

namespace {

using Clock = std::chrono::steady_clock;
double Us(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }
uint64_t Pattern(uint64_t seed, size_t i) { return seed * 0x9E3779B97F4A7C15ull ^ i; }

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

}  // namespace

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 64;
  const size_t bytes = mib << 20;
  uhmm::Config config = uhmm::Config::FromEnv();
  absl::StatusOr<std::unique_ptr<uhmm::Runtime>> rt = uhmm::Runtime::Create(config);
  if (!rt.ok()) {
    std::fprintf(stderr, "uhmm demo: %s\n", rt.status().ToString().c_str());
    return 1;
  }
  uhmm::Runtime& r = **rt;
  std::printf("uhmm demo: backend %s, %d device(s), fault granularity %zu KiB, %d fault threads\n",
              std::string(r.backend_name()).c_str(), r.device_count(), config.fault_granularity >> 10,
              config.fault_threads);

  absl::StatusOr<uhmm::ManagedArray<uint64_t>> arr = uhmm::ManagedArray<uint64_t>::Create(r, bytes / 8);
  if (!arr.ok()) {
    std::fprintf(stderr, "uhmm demo: %s\n", arr.status().ToString().c_str());
    return 1;
  }
  uint64_t* p = arr->data();
  for (size_t i = 0; i < arr->size(); ++i) p[i] = Pattern(1, i);

  // 2. Host -> device.
  auto t0 = Clock::now();
  if (absl::Status s = arr->MigrateTo(0); !s.ok()) {
    std::fprintf(stderr, "uhmm demo: %s\n", s.ToString().c_str());
    return 1;
  }
  const double migrate_us = Us(Clock::now() - t0);
  std::printf("migrated %zu MiB to device 0 in %.1f ms (%.2f GB/s)\n", mib, migrate_us / 1e3,
              bytes / migrate_us / 1e3);

  // 3. The device writes new values into its own memory, through each page's device address (a
  //    DMA write on the device's queue: what a kernel writing the data leaves behind). With CUDA the
  //    device address is the managed pointer itself.
  uint64_t expect_seed = 1;
  if (uhmm::testing::DeviceAccess* dev = uhmm::testing::Access(r, 0)) {
    std::vector<uint64_t> page(uhmm::kPageSize / 8);
    size_t written = 0;
    for (size_t off = 0; off < bytes; off += uhmm::kPageSize) {
      absl::StatusOr<uint64_t> addr = r.DeviceAddress(reinterpret_cast<uint8_t*>(p) + off);
      if (!addr.ok()) continue;
      for (size_t i = 0; i < page.size(); ++i) page[i] = Pattern(2, off / 8 + i);
      if (absl::Status s = dev->DeviceWrite(*addr, page.data(), uhmm::kPageSize); !s.ok()) {
        std::fprintf(stderr, "uhmm demo: %s\n", s.ToString().c_str());
        return 1;
      }
      ++written;
    }
    expect_seed = 2;
    std::printf("the device rewrote all %zu pages in its memory (through device addresses)\n", written);
  }

  // 4a. Isolated faults: one touch per 2 MiB block.
  std::vector<double> lat;
  for (size_t off = 0; off < bytes; off += uhmm::kBlockSize) {
    volatile uint64_t* w = p + off / 8 + 1;
    auto t = Clock::now();
    (void)*w;
    lat.push_back(Us(Clock::now() - t));
  }
  // 4b. Sequential read-back of the rest.
  t0 = Clock::now();
  size_t bad = 0;
  for (size_t i = 0; i < arr->size(); ++i) bad += p[i] != Pattern(expect_seed, i);
  const double read_us = Us(Clock::now() - t0);

  const uhmm::Stats st = r.stats();
  std::printf("isolated CPU faults (%zu, one per 2 MiB block): p50 %.1f us, p99 %.1f us, max %.1f us\n",
              lat.size(), Percentile(lat, 0.5), Percentile(lat, 0.99), Percentile(lat, 1.0));
  std::printf("sequential CPU read-back of the rest: %.1f ms (%.2f GB/s)\n", read_us / 1e3,
              bytes / read_us / 1e3);
  std::printf(
      "stats: cpu_faults %llu (duplicates %llu), pages to device %llu, to host %llu, "
      "device pages in use %llu of %llu\n",
      (unsigned long long)st.cpu_faults, (unsigned long long)st.duplicate_faults,
      (unsigned long long)st.pages_to_device, (unsigned long long)st.pages_to_host,
      (unsigned long long)st.device_pages_used, (unsigned long long)st.device_pages_total);
  std::printf("%s: %zu wrong words\n", bad == 0 ? "PASS" : "FAIL", bad);
  return bad == 0 ? 0 : 1;
}
