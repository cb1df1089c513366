// Shared fixture for the behaviour tests: a runtime on the host backend plus helpers that act as
// a device "kernel" on device-resident pages and check data and residency.
#ifndef UHMM_TESTS_TEST_UTIL_H_
#define UHMM_TESTS_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "backends/host/host_backend.h"
#include "uhmm/uhmm.hpp"

namespace uhmm::testing {

inline constexpr size_t kMiB = size_t{1} << 20;

inline Config HostConfig() {
  Config c;
  c.backend = "host";
  c.fault_threads = 2;
  c.device_pool_bytes = 64 * kMiB;
  return c;
}

// Helpers over one runtime; usable in a fixture and in a forked child alike.
class Harness {
 public:
  void Start(Config config = HostConfig()) {
    absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Create(config);
    ASSERT_TRUE(rt.ok()) << rt.status();
    rt_ = std::move(*rt);
    dev0_ = host::LiveDevice(0);
    ASSERT_NE(dev0_, nullptr);
  }
  // Allocates and fills with `seed`-derived words, on the CPU.
  uint64_t* AllocFilled(size_t bytes, uint64_t seed) {
    absl::StatusOr<void*> p = rt_->Allocate(bytes);
    EXPECT_TRUE(p.ok()) << p.status();
    auto* w = static_cast<uint64_t*>(*p);
    for (size_t i = 0; i < bytes / 8; ++i) w[i] = Pattern(seed, i);
    return w;
  }
  static uint64_t Pattern(uint64_t seed, size_t i) { return seed * 0x9E3779B97F4A7C15ull ^ i; }

  // Index of the first word that differs from the pattern, or -1.
  static int64_t FirstMismatch(const uint64_t* w, size_t bytes, uint64_t seed) {
    for (size_t i = 0; i < bytes / 8; ++i) {
      if (w[i] != Pattern(seed, i)) return static_cast<int64_t>(i);
    }
    return -1;
  }

  // A device "kernel": rewrites every device-resident page of [p, p+bytes) with `seed`'s pattern
  // through the device address, without touching the managed pointer. It runs on the emulated
  // device's queue, as a launch would. Returns pages written.
  size_t DeviceWrite(uint64_t* p, size_t bytes, uint64_t seed) {
    std::vector<std::pair<size_t, uint64_t>> pages;  // (byte offset, device address)
    for (size_t off = 0; off < bytes; off += kPageSize) {
      absl::StatusOr<uint64_t> dev = rt_->DeviceAddress(reinterpret_cast<uint8_t*>(p) + off);
      if (dev.ok()) pages.emplace_back(off, *dev);
    }
    absl::Status s = host::LiveDevice(0)->RunKernel([&] {
      for (auto [off, addr] : pages) {
        auto* d = static_cast<uint64_t*>(host::DevicePointer(addr));
        for (size_t i = 0; i < kPageSize / 8; ++i) d[i] = Pattern(seed, off / 8 + i);
      }
    });
    EXPECT_TRUE(s.ok()) << s;
    return pages.size();
  }

  std::vector<int32_t> Residency(const void* p, size_t bytes) {
    absl::StatusOr<std::vector<int32_t>> r = rt_->Residency(p, bytes);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : std::vector<int32_t>();
  }
  size_t CountAt(const std::vector<int32_t>& res, int32_t where) {
    size_t n = 0;
    for (int32_t r : res) n += r == where;
    return n;
  }

  // Waits up to 5 s for `cond` (event handling is asynchronous to munmap/madvise returning).
  static bool Eventually(const std::function<bool()>& cond) {
    for (int i = 0; i < 500; ++i) {
      if (cond()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return cond();
  }

  std::unique_ptr<Runtime> rt_;
  host::HostDeviceControls* dev0_ = nullptr;
};

class RuntimeTest : public ::testing::Test, public Harness {
 public:
  void SetUp() override { Start(); }
  void TearDown() override { rt_.reset(); }
};

}  // namespace uhmm::testing

#endif  // UHMM_TESTS_TEST_UTIL_H_
