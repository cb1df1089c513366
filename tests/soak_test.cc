// Soak and exit: 10^5 cycles of alloc / migrate to the device / CPU fault back / evict / free over
// 3 threads and a small device pool leave fds, threads, memfds, device pages and RSS where they
// were; and a process exits promptly whatever its runtime is doing (pages on the device, faults in
// flight, threads stuck in faults).
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "tests/proc_util.h"
#include "tests/test_util.h"

#if defined(__SANITIZE_ADDRESS__)
#define UHMM_SOAK_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UHMM_SOAK_UNDER_ASAN 1
#endif
#endif
#if defined(UHMM_SOAK_UNDER_ASAN) || defined(UHMM_UNDER_TSAN)
#define UHMM_SOAK_UNDER_SANITIZER 1
#endif
#ifdef UHMM_SOAK_UNDER_ASAN
#include <sanitizer/lsan_interface.h>
#endif

namespace uhmm::testing {
namespace {

using Clock = std::chrono::steady_clock;

// 10^5 cycles (about 30 s in release on 2 cores) on the host configuration; a tenth on the other
// configurations, which run the same runtime code, and under sanitizers, which make each cycle
// several times slower. *scale says which.
int SoakCycles(std::string* scale) {
#ifdef UHMM_SOAK_UNDER_SANITIZER
  *scale = "scaled down 10x under a sanitizer";
  return 10000;
#endif
  const char* config = std::getenv("UHMM_TEST_BACKEND");
  if (config != nullptr && *config != 0 && std::string_view(config) != "host") {
    *scale = std::string("scaled down 10x on configuration ") + config;
    return 10000;
  }
  *scale = "full size";
  return 100000;
}

constexpr int kThreads = 3;
// RSS may grow this much over the run without counting as a leak: the device pool's chunks the
// host backend allocates as it fills (4 MiB here), heap arenas the 3 threads grow, and pages of
// the runtime's maps that stay allocated. A leak of one 4 KiB page per cycle would be 390 MiB.
constexpr size_t kRssSlack = size_t{32} << 20;

struct Footprint {
  size_t fds, threads, memfds, rss;
  uint64_t device_pages;
};

class SoakTest : public ::testing::Test, public Harness {
 public:
  void SetUp() override {
    Config c = TestConfig();
    c.device_pool_bytes = 4 * kMiB;  // 2 chunks, which 3 threads share and evict
    Start(c);
  }
  void TearDown() override { rt_.reset(); }

  Footprint Measure() {
    return {OpenFds().size(), CountThreads(), CountMemfds(), RssBytes(), rt_->stats().device_pages_used};
  }

  // Counts a refusal that contention allows.
  bool Refused(const absl::Status& s) {
    if (!absl::IsResourceExhausted(s) && !absl::IsUnavailable(s)) return false;
    refusals_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  std::atomic<uint64_t> refusals_{0};

  // One cycle on a fresh range of 1..16 pages: write one word per page, migrate it to the
  // device, fault it back on the CPU and check every page, migrate it to the device again, and
  // either evict the whole device or free the range from there. Returns what went wrong ("" when
  // nothing).
  std::string Cycle(uint64_t seed, bool evict) {
    const size_t pages = 1 + seed % 16;
    const size_t bytes = pages * kPageSize;
    absl::StatusOr<void*> p = rt_->Allocate(bytes);
    if (!p.ok()) return "allocate: " + p.status().ToString();
    auto* w = static_cast<uint64_t*>(*p);
    constexpr size_t kWordsPerPage = kPageSize / 8;
    for (size_t i = 0; i < pages; ++i) w[i * kWordsPerPage] = Pattern(seed, i);
    std::string error;
    // With 3 threads on a 2-chunk pool every page can be in flight at once: then a migration is
    // refused with RESOURCE_EXHAUSTED (see ThreadsOversubscribingASmallPoolLoseNoData).
    absl::Status s = rt_->Migrate(w, bytes, 0);
    if (!s.ok() && !Refused(s)) error = "migrate: " + s.ToString();
    for (size_t i = 0; i < pages && error.empty(); ++i) {
      if (const uint64_t got = w[i * kWordsPerPage]; got != Pattern(seed, i)) {
        error = absl::StrFormat("page %u of %u at %p lost its data: %#x, want %#x (migration: %s)", i, pages,
                                w, got, Pattern(seed, i), s.ToString());
      }
    }
    if (error.empty()) {
      s = rt_->Migrate(w, bytes, 0);
      if (!s.ok() && !Refused(s)) error = "migrate again: " + s.ToString();
    }
    if (evict && error.empty()) {
      // Refused with UNAVAILABLE ("retry") while other threads' migrations hold device pages.
      s = rt_->EvictDevice(0);
      if (!s.ok() && !(absl::IsUnavailable(s) && Refused(s))) error = "evict: " + s.ToString();
    }
    if (s = rt_->Free(w); !s.ok() && error.empty()) error = "free: " + s.ToString();
    return error;
  }

  // `cycles` cycles over kThreads threads, or as many as fit before `deadline`; returns the first
  // error ("" when none) and counts the cycles run in *done.
  std::string RunCycles(int cycles, uint64_t first_seed, Clock::time_point deadline, int* done = nullptr) {
    std::vector<std::thread> threads;
    std::vector<std::string> errors(kThreads);
    std::atomic<int> run{0};
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        uint64_t x = first_seed * 7919 + t + 1;
        for (int i = t; i < cycles && errors[t].empty() && Clock::now() < deadline; i += kThreads) {
          x ^= x << 13, x ^= x >> 7, x ^= x << 17;  // xorshift: sizes and seeds
          errors[t] = Cycle(x % 1000000, i % 4 == 0);
          run.fetch_add(1, std::memory_order_relaxed);
        }
      });
    }
    for (std::thread& t : threads) t.join();
    if (done != nullptr) *done = run.load();
    for (const std::string& e : errors) {
      if (!e.empty()) return e;
    }
    return "";
  }
};

TEST_F(SoakTest, ManyCyclesLeakNoFdThreadMemfdDevicePageOrMemory) {
  // Warm-up: pool chunks, heap arenas, runtime threads.
  ASSERT_EQ(RunCycles(300, 1, Clock::now() + std::chrono::seconds(20)), "");
  std::string scale;
  int cycles = SoakCycles(&scale);
  const Footprint before = Measure();
  const auto start = Clock::now();
  // A loaded machine gets as many cycles as fit in 75 s (ctest gives each test 120 s).
  int done = 0;
  ASSERT_EQ(RunCycles(cycles, 2, start + std::chrono::seconds(75), &done), "");
  if (done < cycles) scale += ", stopped after 75 s of " + std::to_string(cycles);
  cycles = done;
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const Footprint after = Measure();
  const Stats st = rt_->stats();
  std::printf(
      "soak: %d cycles (%s) over %d threads in %.1f s; fds %zu -> %zu, threads %zu -> %zu, memfds "
      "%zu -> %zu, device pages in use %llu -> %llu, RSS %.1f -> %.1f MiB (slack %zu MiB)\n"
      "      pages to device %llu, to host %llu, evicted %llu, cpu faults %llu; %llu migrations or "
      "evictions refused under contention\n",
      cycles, scale.c_str(), kThreads, seconds, before.fds, after.fds, before.threads, after.threads,
      before.memfds, after.memfds, static_cast<unsigned long long>(before.device_pages),
      static_cast<unsigned long long>(after.device_pages), before.rss / 1048576.0, after.rss / 1048576.0,
      kRssSlack >> 20, static_cast<unsigned long long>(st.pages_to_device),
      static_cast<unsigned long long>(st.pages_to_host), static_cast<unsigned long long>(st.evicted_pages),
      static_cast<unsigned long long>(st.cpu_faults), static_cast<unsigned long long>(refusals_.load()));
  // At most the baseline: the baseline can catch the warm-up's last range still being torn down
  // (one memfd more), never fewer at the end than a leak would leave.
  EXPECT_LE(after.fds, before.fds - before.memfds);
  EXPECT_EQ(after.threads, before.threads);
  EXPECT_EQ(after.memfds, 0u);
  EXPECT_EQ(after.device_pages, 0u);
#ifdef UHMM_SOAK_UNDER_ASAN
  std::printf(
      "      RSS not checked under ASan: its quarantine holds freed memory (LeakSanitizer checks "
      "the heap at exit instead)\n");
#else
  EXPECT_LE(after.rss, before.rss + kRssSlack);
#endif
}

// --- prompt exit ---------------------------------------------------------------------------------

// Runs `setup` in a forked child, which then calls exit(0) (atexit handlers, static destructors,
// as returning from main does). Returns the seconds from the child's "ready" to its end, or a
// negative number with *why set. The child's status is in *status.
double SecondsToExit(const std::function<void()>& setup, int* status, std::string* why) {
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) != 0) return *why = "pipe2", -1;
  const pid_t pid = fork();
  if (pid == 0) {
    close(ready[0]);
    signal(SIGBUS, SIG_DFL);  // a SIGBUS must end the child as such (sanitizers install handlers)
#ifdef UHMM_SOAK_UNDER_ASAN
    // Check for leaks now, which also skips the check at exit: that one stops every thread and
    // reads all memory, device-resident managed pages included, whose faults cannot then be served.
    __lsan_do_leak_check();
#endif
    setup();
    (void)!write(ready[1], "r", 1);
    std::exit(0);
  }
  close(ready[1]);
  pollfd pfd = {.fd = ready[0], .events = POLLIN, .revents = 0};
  char c;
  const bool got_ready = poll(&pfd, 1, 30000) == 1 && read(ready[0], &c, 1) == 1;
  const auto start = Clock::now();
  close(ready[0]);
  pid_t waited = 0;
  while ((waited = waitpid(pid, status, WNOHANG)) == 0 && Clock::now() < start + std::chrono::seconds(20)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (waited == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, status, 0);
    return *why = "the child had not exited 20 s after it was ready", -1;
  }
  if (!got_ready) return *why = "the child ended before it was ready", -1;
  return seconds;
}

// `n` detached threads that read one word per page of [p, p+bytes) for ever.
std::atomic<uint64_t> g_pages_read{0};
void StartReaders(int n, const uint64_t* p, size_t bytes) {
  for (int i = 0; i < n; ++i) {
    std::thread([p, bytes, i] {
      for (;;) {
        for (size_t off = (i * 16 * kPageSize) % bytes; off < bytes; off += kPageSize) {
          (void)*reinterpret_cast<const volatile uint64_t*>(reinterpret_cast<const char*>(p) + off);
          g_pages_read.fetch_add(1, std::memory_order_relaxed);
        }
      }
    }).detach();
  }
}

std::string TracePath(const char* what) {
  return ::testing::TempDir() + "uhmm_soak_" + what + "_" + std::to_string(getpid()) + ".trace";
}

// Expects the child that `setup` prepares to exit within 5 s of being ready, with status 0.
void ExpectPromptExit(const std::function<void()>& setup, const char* what) {
  int status = 0;
  std::string why;
  const double seconds = SecondsToExit(setup, &status, &why);
  if (WIFEXITED(status) && WEXITSTATUS(status) == kChildSkip) GTEST_SKIP() << "backend unavailable";
  ASSERT_GE(seconds, 0) << why;
  std::printf("exit with %s took %.1f ms\n", what, seconds * 1000);
  EXPECT_LT(seconds, 5.0) << "exit with " << what;
  // Known bug, left visible as a skip: the Level Zero driver's objects go away in exit()'s static
  // destructors while the fault service still uses them; a fault then fails its copy and the
  // faulting thread gets SIGBUS, so the process ends with SIGBUS instead of its exit status.
  const char* config = std::getenv("UHMM_TEST_BACKEND");
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS && config != nullptr &&
      std::string_view(config).starts_with("level-zero")) {
    GTEST_SKIP() << "known bug: on Level Zero a fault during exit() gets SIGBUS once the driver's "
                    "static destructors ran (exit itself took "
                 << seconds * 1000 << " ms)";
  }
  ASSERT_TRUE(WIFEXITED(status)) << "child died with signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "see the test's setup for the failed step";
}

using ExitTest = ::testing::Test;

// The runtime is a static, destroyed by exit() with 64 MiB on the device and a trace running.
std::unique_ptr<Runtime> g_static_runtime;

TEST_F(ExitTest, ExitIsPromptWithPagesOnTheDevice) {
  const std::string trace = TracePath("device");
  ExpectPromptExit(
      [&] {
        g_static_runtime = CreateInChild(TestConfig());
        for (int i = 0; i < 16; ++i) {
          absl::StatusOr<void*> p = g_static_runtime->Allocate(4 * kMiB);
          if (!p.ok()) _exit(11);
          std::memset(*p, i, 4 * kMiB);
          if (!g_static_runtime->Migrate(*p, 4 * kMiB, 0).ok()) _exit(12);
        }
        if (!g_static_runtime->StartTrace(trace).ok()) _exit(13);
      },
      "64 MiB on the device (runtime destroyed by exit)");
  std::remove(trace.c_str());
}

// The runtime outlives main (never destroyed); 4 threads fault pages back while the main thread
// sends them to the device again, and a trace is being written, when exit() is called.
TEST_F(ExitTest, ExitIsPromptWithFaultsInFlight) {
  const std::string trace = TracePath("inflight");
  ExpectPromptExit(
      [&] {
        Runtime* rt = CreateInChild(TestConfig()).release();
        const size_t bytes = 16 * kMiB;
        absl::StatusOr<void*> p = rt->Allocate(bytes);
        if (!p.ok() || !rt->StartTrace(trace).ok() || !rt->Migrate(*p, bytes, 0).ok()) _exit(11);
        StartReaders(4, static_cast<uint64_t*>(*p), bytes);
        for (int round = 0; round < 20 || g_pages_read.load() < bytes / kPageSize; ++round) {
          if (!rt->Migrate(*p, bytes, 0).ok()) _exit(12);
        }
      },
      "faults in flight");
  std::remove(trace.c_str());
}

void ReturnFromSigbus(int) {}

// Every copy back fails and, in tkill mode with a handler that returns, each access retries for
// ever: 4 threads that can never get their pages, one fault thread, when exit() is called.
TEST_F(ExitTest, ExitIsPromptWithThreadsStuckInFaults) {
  ExpectPromptExit(
      [&] {
        Config c = TestConfig();
        c.sigbus_mode = SigbusMode::kTkill;
        c.fault_threads = 1;
        Runtime* rt = CreateInChild(c).release();
        const size_t bytes = 4 * kMiB;
        absl::StatusOr<void*> p = rt->Allocate(bytes);
        if (!p.ok() || !rt->Migrate(*p, bytes, 0).ok()) _exit(11);
        FaultInjector* faults = Faults(*rt, 0);
        if (faults == nullptr) _exit(12);
        faults->FailNext(InjectSite::kCopyDeviceToHost, kInjectAll);
        const int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
        dup2(devnull, STDERR_FILENO);  // a line per failed copy
        signal(SIGBUS, ReturnFromSigbus);
        StartReaders(4, static_cast<uint64_t*>(*p), bytes);
        while (rt->stats().sigbus_delivered < 100) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        if (g_pages_read.load() != 0) _exit(13);  // no access may have succeeded
      },
      "threads stuck in faults");
}

}  // namespace
}  // namespace uhmm::testing
