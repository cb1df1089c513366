// Shared fixture for the behaviour tests: a runtime on the backend under test plus helpers that
// write device-resident pages from the device side and check data and residency. The backend is
// $UHMM_BACKEND (default "host"); ctest runs the suites on the host backend, on the host backend
// emulating one pointer (UHMM_HOST_SAME_ADDRESS=1), and on CUDA, where they skip without a GPU.
#ifndef UHMM_TESTS_TEST_UTIL_H_
#define UHMM_TESTS_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "backends/host/host_backend.h"
#include "runtime/api/runtime_impl.h"
#include "runtime/api/testing.h"
#include "uhmm/testing.h"
#include "uhmm/uhmm.hpp"

// fork() of a process with runtime threads hangs in ThreadSanitizer's fork interceptor; the
// release and asan runs cover the fork tests (as they cover ForkTest).
#if defined(__SANITIZE_THREAD__)
#define UHMM_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UHMM_UNDER_TSAN 1
#endif
#endif

namespace uhmm::testing {

inline constexpr size_t kMiB = size_t{1} << 20;

// Whether `rt` tracks CPU writes (read duplication on: Linux 6.7+, UHMM_READ_DUPLICATION not 0);
// `why` gets the runtime's word for it ("on ..." or "off (reason)").
inline bool TracksWrites(Runtime& rt, std::string* why = nullptr) {
  const std::string& tracking = static_cast<RuntimeImpl&>(rt).write_tracking();
  if (why != nullptr) *why = tracking;
  return tracking.rfind("on", 0) == 0;
}

// The configuration under test: $UHMM_TEST_BACKEND (set by ctest) is host, host-same-address,
// cuda-emulated, cuda-emulated-nopeer (multi-device suites), cuda, level-zero-emulated,
// level-zero-emulated-nopeer (multi-device suites) or level-zero, any of them with "-2dev"; without it,
// $UHMM_BACKEND (default host) and $UHMM_HOST_SAME_ADDRESS.
inline Config TestConfig() {
  Config c;
  const char* test_backend = std::getenv("UHMM_TEST_BACKEND");
  std::string_view which = test_backend ? test_backend : "";
  // "<configuration>-2dev": that configuration with two devices in the runtime (the suites use
  // device 0; the second one must change nothing for them).
  if (which.ends_with("-2dev")) {
    which.remove_suffix(5);
    c.host_devices = 2;
    c.cuda_devices = "all";
    c.ze_devices = "all";
    // Read by the emulated drivers at their first call.
    setenv("UHMM_FAKE_CUDA_DEVICES", "2", 0);
    setenv("UHMM_FAKE_ZE_DEVICES", "2", 0);
  }
  if (which == "host-same-address") {
    c.backend = "host";
    c.host_same_address = true;
  } else if (which == "cuda-emulated" || which == "cuda-emulated-nopeer") {
    c.backend = "cuda";
    // The emulated driver reads this at its first call: its devices cannot reach each other's memory.
    if (which == "cuda-emulated-nopeer") setenv("UHMM_FAKE_CUDA_PEER", "none", 1);
    c.transparent_launch = false;  // CUPTI needs NVIDIA's driver, not the emulated one
#ifdef UHMM_FAKE_CUDA_DRIVER
    c.cuda_driver = UHMM_FAKE_CUDA_DRIVER;
#endif
  } else if (which == "level-zero-emulated" || which == "level-zero-emulated-nopeer" ||
             which == "level-zero") {
    c.backend = "level_zero";
    if (which == "level-zero-emulated-nopeer") setenv("UHMM_FAKE_ZE_PEER", "none", 1);
#ifdef UHMM_FAKE_ZE_DRIVER
    // The real loader with tests/fake_level_zero as its only driver. The loader reads this at its
    // first zeInit, which the backend makes.
    if (which != "level-zero") setenv("ZE_ENABLE_ALT_DRIVERS", UHMM_FAKE_ZE_DRIVER, 1);
#endif
  } else if (!which.empty()) {
    c.backend = std::string(which);
  } else {
    const char* backend = std::getenv("UHMM_BACKEND");
    c.backend = backend && *backend ? backend : "host";
    const char* same = std::getenv("UHMM_HOST_SAME_ADDRESS");
    c.host_same_address = same && std::string_view(same) == "1";
  }
  c.fault_threads = 2;
  c.device_pool_bytes = 64 * kMiB;
  // Tests that want 2 MiB pages ask per range (Backing::kHugetlb); the page granularity of every
  // other test must not depend on whether hugepages happen to be reserved.
  c.hugetlb = HugetlbMode::kNever;
  // The fault-injection decorator (uhmm/testing.h) on every device, nothing scheduled: tests inject
  // through Faults() and count page_free calls there.
  c.fault_injection = "on";
  return c;
}

// TestConfig with the fault policy off: every CPU fault migrates exactly its configured granule
// (no density growth, no read-ahead), for tests that count faults and granules.
inline Config PerFaultConfig() {
  Config c = TestConfig();
  c.readahead_bytes = 0;
  c.growth_threshold = 0;
  return c;
}

inline bool TestingHostBackend() { return TestConfig().backend == "host"; }

// A C API runtime on the host backend with `devices` emulated devices (nullptr and a test failure,
// with uhmm_last_error(), if it cannot be created).
inline uhmm_runtime_t* CreateHostC(int devices = 1) {
  uhmm_config_t cfg;
  uhmm_config_init(&cfg);
  cfg.backend = "host";
  cfg.host_devices = devices;
  uhmm_runtime_t* rt = nullptr;
  EXPECT_EQ(uhmm_create(&cfg, &rt), UHMM_OK) << uhmm_last_error();
  return rt;
}

// The emulated configurations exist to run everywhere: an unavailable backend there is a failure,
// never a skip.
inline bool TestingEmulatedBackend() {
  const char* b = std::getenv("UHMM_TEST_BACKEND");
  const std::string_view which = b ? b : "";
  return which.find("-emulated") != std::string_view::npos;
}

// Skips the calling test when the backend under test has no usable device here. Tests that need
// the host backend's emulated launches skip on other backends.
#define UHMM_SKIP_UNLESS_HOST_BACKEND()                                                   \
  do {                                                                                    \
    if (!::uhmm::testing::TestingHostBackend()) GTEST_SKIP() << "needs the host backend"; \
  } while (0)

// Creates a runtime, skipping the test (with the reason) when the backend is unavailable here.
inline absl::StatusOr<std::unique_ptr<Runtime>> CreateOrSkip(const Config& config, bool* skip) {
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Create(config);
  // The one exception: the system's Level Zero loader (libze1) is missing, so the emulated driver
  // has nothing to plug into.
  const bool no_loader = !rt.ok() && rt.status().message().find("Level Zero loader") != std::string::npos &&
                         rt.status().message().find("could not be loaded") != std::string::npos;
  *skip = !rt.ok() && absl::IsUnavailable(rt.status()) && config.backend != "host" &&
          (!TestingEmulatedBackend() || no_loader);
  return rt;
}

// Exit code of a forked child for "the backend under test is unavailable here": the test skips.
inline constexpr int kChildSkip = 77;

// In a forked child: the runtime, or _exit(kChildSkip) when the backend is unavailable here and
// _exit(10) when it fails otherwise.
inline std::unique_ptr<Runtime> CreateInChild(const Config& config) {
  bool skip = false;
  absl::StatusOr<std::unique_ptr<Runtime>> rt = CreateOrSkip(config, &skip);
  if (skip) _exit(kChildSkip);
  if (!rt.ok()) _exit(10);
  return std::move(*rt);
}

// Runs `body` in a forked child and returns its wait status. The child must _exit.
template <typename Fn>
int InChild(Fn body) {
  const pid_t pid = fork();
  if (pid == 0) {
    body();
    _exit(100);  // body forgot to exit
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

// After InChild: skips the test when the child found the backend unavailable (kChildSkip).
#define UHMM_SKIP_IF_CHILD_SKIPPED(status)                                                  \
  do {                                                                                      \
    if (WIFEXITED(status) && WEXITSTATUS(status) == kChildSkip) {                           \
      GTEST_SKIP() << "backend " << TestConfig().backend << " unavailable on this machine"; \
    }                                                                                       \
  } while (0)

// Everything readable from `fd` until EOF; closes it.
inline std::string ReadAllAndClose(int fd) {
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

// Runs `fn` in a forked child and returns "CODE: message" for the status it returned. For checks of
// state a process sets up once (a driver library loaded, a variable read at first use).
inline std::string StatusInFreshChild(const std::function<absl::Status()>& fn) {
  int fds[2];
  if (pipe(fds) != 0) return "pipe failed";
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    absl::Status s = fn();
    std::string msg = std::string(absl::StatusCodeToString(s.code())) + ": " + std::string(s.message());
    (void)!write(fds[1], msg.data(), msg.size());
    _exit(0);
  }
  close(fds[1]);
  std::string msg = ReadAllAndClose(fds[0]);
  waitpid(pid, nullptr, 0);
  return msg;
}

// Helpers over one runtime; usable in a fixture and in a forked child alike.
class Harness {
 public:
  // Callers outside SetUp follow it with UHMM_RETURN_IF_SKIPPED().
  void Start(Config config = TestConfig()) {
    bool skip = false;
    absl::StatusOr<std::unique_ptr<Runtime>> rt = CreateOrSkip(config, &skip);
    if (skip) GTEST_SKIP() << "backend " << config.backend << " unavailable: " << rt.status();
    ASSERT_TRUE(rt.ok()) << rt.status();
    rt_ = std::move(*rt);
    Bind();
    ASSERT_NE(access0_, nullptr) << "the " << config.backend << " backend has no device-side access";
    if (config.fault_injection != "" && config.fault_injection != "off") {
      ASSERT_NE(faults0_, nullptr) << "fault injection is on, but device 0 has no fault injector";
    }
  }
  // Points faults0_ and access0_ at device 0 of rt_ (Start does it).
  void Bind() {
    faults0_ = Faults(*rt_, 0);
    access0_ = Access(*rt_, 0);
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

  // A device-side write: rewrites every device-resident page of [p, p+bytes) with `seed`'s
  // pattern through its device address, on the device's queue, without touching the managed
  // pointer. Returns pages written.
  size_t DeviceWrite(uint64_t* p, size_t bytes, uint64_t seed) {
    size_t pages = 0;
    std::vector<uint64_t> buf(kPageSize / 8);
    for (size_t off = 0; off < bytes; off += kPageSize) {
      absl::StatusOr<uint64_t> dev = rt_->DeviceAddress(reinterpret_cast<uint8_t*>(p) + off);
      if (!dev.ok()) continue;
      for (size_t i = 0; i < buf.size(); ++i) buf[i] = Pattern(seed, off / 8 + i);
      absl::Status s = access0_->DeviceWrite(*dev, buf.data(), kPageSize);
      EXPECT_TRUE(s.ok()) << s;
      ++pages;
    }
    return pages;
  }

  // A device-side read of every page of [p, p+bytes) that has a device address, compared with
  // `seed`'s pattern. Returns pages whose device copy differs; *read (optional) counts pages read.
  size_t DeviceMismatches(const uint64_t* p, size_t bytes, uint64_t seed, size_t* read = nullptr) {
    size_t bad = 0, n = 0;
    std::vector<uint64_t> buf(kPageSize / 8);
    for (size_t off = 0; off < bytes; off += kPageSize) {
      absl::StatusOr<uint64_t> dev = rt_->DeviceAddress(reinterpret_cast<const uint8_t*>(p) + off);
      if (!dev.ok()) continue;
      absl::Status s = access0_->DeviceRead(*dev, buf.data(), kPageSize);
      EXPECT_TRUE(s.ok()) << s;
      ++n;
      for (size_t i = 0; i < buf.size(); ++i) {
        if (buf[i] != Pattern(seed, off / 8 + i)) {
          ++bad;
          break;
        }
      }
    }
    if (read != nullptr) *read = n;
    return bad;
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
  FaultInjector* faults0_ = nullptr;  // device 0's, with fault injection on (TestConfig)
  DeviceAccess* access0_ = nullptr;   // device 0's device-side access
};

// A status with code `want_code` whose message contains `fragment`.
#define EXPECT_ERROR(expr, want_code, fragment)                                   \
  do {                                                                            \
    absl::Status _s = (expr);                                                     \
    EXPECT_EQ(_s.code(), (want_code)) << _s;                                      \
    EXPECT_NE(std::string(_s.message()).find(fragment), std::string::npos) << _s; \
  } while (0)

#define UHMM_RETURN_IF_SKIPPED()                                                    \
  do {                                                                              \
    if (::testing::Test::IsSkipped() || ::testing::Test::HasFatalFailure()) return; \
  } while (0)

class RuntimeTest : public ::testing::Test, public Harness {
 public:
  void SetUp() override { Start(); }
  void TearDown() override { rt_.reset(); }
};

}  // namespace uhmm::testing

#endif  // UHMM_TESTS_TEST_UTIL_H_
