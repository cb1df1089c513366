// Signals and managed memory: a thread blocked in a CPU fault on a device page still takes signals
// (its handler runs, even faulting itself; interrupted system calls restart) with its data exact; a
// process using a runtime survives SIGSTOP/SIGCONT; cancelling threads blocked in faults leaves the
// runtime working.
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "tests/test_util.h"

namespace uhmm::testing {
namespace {

using Clock = std::chrono::steady_clock;

// Every CPU fault migrates exactly one page back: the most faults, so the most chances for a
// signal to land while one is being served.
Config PageFaultConfig() {
  Config c = PerFaultConfig();
  c.fault_granularity = kPageSize;
  return c;
}

// --- SIGUSR1 while faults are served -------------------------------------------------------------

// What the SIGUSR1 handler reads: one word per call from a device-resident range, so the handler
// itself faults while the thread it interrupted was waiting for another fault.
constexpr size_t kHandlerPages = 256;
constexpr uint64_t kHandlerSeed = 903;
uint64_t* volatile g_handler_area = nullptr;
std::atomic<uint64_t> g_handled{0};
std::atomic<uint64_t> g_handler_wrong{0};

void OnSigusr1(int) {
  const int saved_errno = errno;
  const uint64_t n = g_handled.fetch_add(1, std::memory_order_relaxed);
  if (uint64_t* area = g_handler_area) {
    const size_t word = (n % kHandlerPages) * (kPageSize / 8) + n % 7;
    if (area[word] != Harness::Pattern(kHandlerSeed, word)) g_handler_wrong.fetch_add(1);
  }
  errno = saved_errno;
}

// Installs OnSigusr1 without SA_RESTART (so blocking system calls fail with EINTR) for the test's
// lifetime, and restores the old disposition.
class ScopedSigusr1 {
 public:
  explicit ScopedSigusr1(uint64_t* handler_area) {
    g_handled = 0;
    g_handler_wrong = 0;
    g_handler_area = handler_area;
    struct sigaction sa = {};
    sa.sa_handler = OnSigusr1;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    sigaction(SIGUSR1, &sa, &old_);
  }
  ~ScopedSigusr1() {
    sigaction(SIGUSR1, &old_, nullptr);
    g_handler_area = nullptr;
  }

 private:
  struct sigaction old_ = {};
};

// Sends SIGUSR1 to `thread` every `period` until `done`; returns how many were sent.
uint64_t Pester(pthread_t thread, const std::atomic<bool>& done, std::chrono::microseconds period) {
  uint64_t sent = 0;
  while (!done.load()) {
    if (pthread_kill(thread, SIGUSR1) == 0) ++sent;
    std::this_thread::sleep_for(period);
  }
  return sent;
}

class SignalTest : public ::testing::Test, public Harness {
 public:
  void SetUp() override { Start(PageFaultConfig()); }
  void TearDown() override { rt_.reset(); }

  // A range on the device whose device copy holds `seed`'s pattern (the host shadow is stale).
  uint64_t* OnDevice(size_t bytes, uint64_t seed) {
    uint64_t* p = AllocFilled(bytes, seed + 1000);
    EXPECT_TRUE(rt_->Migrate(p, bytes, 0).ok());
    EXPECT_EQ(DeviceWrite(p, bytes, seed), bytes / kPageSize);
    return p;
  }
};

TEST_F(SignalTest, HandlerRunsDuringFaultsAndFaultsItselfWithDataExact) {
  const size_t bytes = 16 * kMiB;
  uint64_t* data = OnDevice(bytes, 901);
  uint64_t* area = OnDevice(kHandlerPages * kPageSize, kHandlerSeed);
  ScopedSigusr1 handler(area);
  std::atomic<bool> done{false};
  std::atomic<int64_t> wrong{-1};
  std::thread reader([&] {
    wrong = FirstMismatch(data, bytes, 901);  // one CPU fault per page
    done = true;
  });
  const uint64_t sent = Pester(reader.native_handle(), done, std::chrono::microseconds(50));
  reader.join();
  const Stats st = rt_->stats();
  std::printf("signals sent %llu, handled %llu; cpu faults %llu (stale %llu, duplicate %llu)\n",
              static_cast<unsigned long long>(sent), static_cast<unsigned long long>(g_handled.load()),
              static_cast<unsigned long long>(st.cpu_faults),
              static_cast<unsigned long long>(st.stale_faults),
              static_cast<unsigned long long>(st.duplicate_faults));
  EXPECT_EQ(wrong.load(), -1) << "the reader saw a wrong word";
  EXPECT_GT(g_handled.load(), 0u);
  EXPECT_EQ(g_handler_wrong.load(), 0u) << "the handler read wrong words";
  EXPECT_GE(st.cpu_faults, bytes / kPageSize);
  EXPECT_EQ(FirstMismatch(area, kHandlerPages * kPageSize, kHandlerSeed), -1);
  EXPECT_TRUE(rt_->Free(data).ok());
  EXPECT_TRUE(rt_->Free(area).ok());
}

// read(2) into device-resident pages: the kernel's copy faults them back. From a pipe whose writer
// pauses after each chunk, signals interrupt the reads (EINTR, no SA_RESTART); the reader restarts
// them.
TEST_F(SignalTest, InterruptedReadIntoDevicePagesRestartsWithDataExact) {
  const size_t bytes = 8 * kMiB;
  uint64_t* dst = OnDevice(bytes, 911);
  ScopedSigusr1 handler(nullptr);
  std::atomic<bool> done{false};
  std::atomic<size_t> got{0};
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  std::thread writer([&] {
    std::vector<uint64_t> chunk(64 * 1024 / 8);
    for (size_t off = 0; off < bytes; off += chunk.size() * 8) {
      for (size_t i = 0; i < chunk.size(); ++i) chunk[i] = Pattern(912, off / 8 + i);
      for (size_t done = 0; done < chunk.size() * 8;) {
        const ssize_t n =
            write(fds[1], reinterpret_cast<char*>(chunk.data()) + done, chunk.size() * 8 - done);
        if (n > 0)
          done += static_cast<size_t>(n);
        else if (errno != EINTR)
          return;
      }
      // The reader drains the chunk, then blocks in read(2) for 2 ms: signals interrupt it there.
      while (got.load() < off + chunk.size() * 8 && !done.load()) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  size_t eintr = 0, reads = 0;
  int error = 0;
  std::thread reader([&] {
    auto* out = reinterpret_cast<char*>(dst);
    while (got.load() < bytes) {
      const ssize_t n = read(fds[0], out + got.load(), bytes - got.load());
      if (n < 0 && errno == EINTR) {
        ++eintr;
        continue;
      }
      if (n <= 0) {
        error = n < 0 ? errno : -1;
        break;
      }
      got.fetch_add(static_cast<size_t>(n));
      ++reads;
    }
    done = true;
  });
  const uint64_t sent = Pester(reader.native_handle(), done, std::chrono::microseconds(100));
  reader.join();
  writer.join();
  close(fds[0]);
  close(fds[1]);
  std::printf("signals sent %llu, handled %llu; %zu reads, %zu EINTR\n",
              static_cast<unsigned long long>(sent), static_cast<unsigned long long>(g_handled.load()), reads,
              eintr);
  EXPECT_EQ(error, 0) << strerror(error);
  ASSERT_EQ(got.load(), bytes);
  EXPECT_GT(eintr, 0u) << "no read was interrupted";
  EXPECT_EQ(FirstMismatch(dst, bytes, 912), -1);
  EXPECT_EQ(CountAt(Residency(dst, bytes), kHost), bytes / kPageSize);
  EXPECT_TRUE(rt_->Free(dst).ok());
}

// --- SIGSTOP / SIGCONT ---------------------------------------------------------------------------

TEST(StopContinueTest, StoppedAndContinuedChildKeepsWorkingWithDataExact) {
  // A child that skipped or failed has closed its pipe ends: writing there must not kill the test.
  signal(SIGPIPE, SIG_IGN);
  int progress[2], quit[2];
  ASSERT_EQ(pipe2(progress, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(quit, O_CLOEXEC | O_NONBLOCK), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    // Migrate to the device, rewrite there, fault back and check, until told to quit. Exit codes:
    // 0 ok, 10 runtime, 11 allocation or migration failed, 12 wrong data.
    close(progress[0]);
    close(quit[1]);
    Harness h;
    h.rt_ = CreateInChild(PageFaultConfig());
    h.Bind();
    const size_t bytes = 2 * kMiB;
    uint64_t* p = h.AllocFilled(bytes, 920);
    for (uint64_t round = 1;; ++round) {
      char c;
      if (read(quit[0], &c, 1) >= 0) break;  // told to, or the parent is gone (EOF)
      if (!h.rt_->Migrate(p, bytes, 0).ok()) _exit(11);
      h.DeviceWrite(p, bytes, 920 + round);
      if (Harness::FirstMismatch(p, bytes, 920 + round) != -1) _exit(12);
      (void)!write(progress[1], "r", 1);
    }
    h.rt_.reset();
    _exit(0);
  }
  close(progress[1]);
  close(quit[0]);
  // A failed assertion below must not leave the child stopped or running.
  struct Reaper {
    pid_t pid;
    ~Reaper() {
      if (pid > 0 && kill(pid, SIGKILL) == 0) waitpid(pid, nullptr, 0);
    }
  } reaper{pid};
  // Waits up to 10 s for the child's next round; false when none came.
  auto next_round = [&] {
    pollfd pfd = {.fd = progress[0], .events = POLLIN, .revents = 0};
    char buf[64];
    return poll(&pfd, 1, 10000) == 1 && read(progress[0], buf, sizeof(buf)) > 0;
  };
  bool started = next_round();
  int stops = 0;
  for (; started && stops < 10; ++stops) {
    std::this_thread::sleep_for(std::chrono::milliseconds(3 + 7 * stops % 20));  // mid-round
    ASSERT_EQ(kill(pid, SIGSTOP), 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, WUNTRACED), pid);
    ASSERT_TRUE(WIFSTOPPED(status)) << "child ended while it should be stopped: status " << status;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ASSERT_EQ(kill(pid, SIGCONT), 0);
    ASSERT_TRUE(next_round()) << "no progress after SIGCONT number " << stops + 1;
  }
  (void)!write(quit[1], "q", 1);
  close(quit[1]);
  int status = 0;
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  pid_t waited = 0;
  while ((waited = waitpid(pid, &status, WNOHANG)) == 0 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (waited == 0) FAIL() << "the child did not finish within 10 s of being told to";
  reaper.pid = 0;
  close(progress[0]);
  if (WIFEXITED(status) && WEXITSTATUS(status) == kChildSkip) GTEST_SKIP() << "backend unavailable";
  ASSERT_TRUE(started) << "the child made no progress at all";
  ASSERT_TRUE(WIFEXITED(status)) << "child died with signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "10: runtime, 11: migration, 12: wrong data";
  EXPECT_EQ(stops, 10);
}

// --- pthread_cancel ------------------------------------------------------------------------------

struct CancelTarget {
  const uint64_t* data;
  size_t words;
  uint64_t seed;
  bool asynchronous;  // cancelled anywhere, even inside a fault; else at pthread_testcancel
  std::atomic<uint64_t>* faults_seen;
  std::atomic<uint64_t>* wrong;
};

// Reads the range word by word for ever, one word per page first (each a fault while the range is
// on the device). Only memory accesses and atomics run with asynchronous cancellation enabled.
void* CancelTargetMain(void* arg) {
  const CancelTarget& t = *static_cast<CancelTarget*>(arg);
  pthread_setcanceltype(t.asynchronous ? PTHREAD_CANCEL_ASYNCHRONOUS : PTHREAD_CANCEL_DEFERRED, nullptr);
  for (;;) {
    for (size_t i = 0; i < t.words; i += kPageSize / 8) {
      if (t.data[i] != Harness::Pattern(t.seed, i)) t.wrong->fetch_add(1, std::memory_order_relaxed);
      t.faults_seen->fetch_add(1, std::memory_order_relaxed);
      if (!t.asynchronous) pthread_testcancel();
    }
  }
  return nullptr;
}

TEST_F(SignalTest, CancellingThreadsBlockedInFaultsLeavesTheRuntimeWorking) {
  const size_t bytes = 8 * kMiB;
  uint64_t* data = OnDevice(bytes, 930);
  std::atomic<uint64_t> touched{0}, wrong{0};
  std::vector<CancelTarget> targets;
  for (int i = 0; i < 6; ++i) targets.push_back({data, bytes / 8, 930, i % 3 != 2, &touched, &wrong});
  std::vector<pthread_t> threads(targets.size());
  for (size_t i = 0; i < targets.size(); ++i) {
    ASSERT_EQ(pthread_create(&threads[i], nullptr, CancelTargetMain, &targets[i]), 0);
  }
  // Keep faults coming: send the range back to the device while the threads fault it home, for
  // 300 ms and two passes over the range at least (10 s at most).
  const auto start = Clock::now();
  int rounds = 0;
  while ((Clock::now() < start + std::chrono::milliseconds(300) || touched.load() < 2 * bytes / kPageSize) &&
         Clock::now() < start + std::chrono::seconds(10)) {
    const absl::Status s = rt_->Migrate(data, bytes, 0);
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) break;
    ++rounds;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_TRUE(rt_->Migrate(data, bytes, 0).ok());  // the threads are faulting when cancelled
  for (pthread_t t : threads) EXPECT_EQ(pthread_cancel(t), 0);
  for (pthread_t t : threads) {
    timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    void* result = nullptr;
    ASSERT_EQ(pthread_timedjoin_np(t, &result, &deadline), 0) << "a cancelled thread did not end";
    EXPECT_EQ(result, PTHREAD_CANCELED);
  }
  const Stats mid = rt_->stats();
  std::printf("%d migrations to the device, %llu pages touched by 6 threads, %llu cpu faults\n", rounds,
              static_cast<unsigned long long>(touched.load()),
              static_cast<unsigned long long>(mid.cpu_faults));
  EXPECT_EQ(wrong.load(), 0u) << "a cancelled thread read wrong data before it went";
  // The runtime still works: what the device holds comes back exact, new device writes too.
  EXPECT_EQ(FirstMismatch(data, bytes, 930), -1);
  ASSERT_TRUE(rt_->Migrate(data, bytes, 0).ok());
  EXPECT_EQ(DeviceWrite(data, bytes, 931), bytes / kPageSize);
  EXPECT_EQ(FirstMismatch(data, bytes, 931), -1);
  EXPECT_EQ(CountAt(Residency(data, bytes), kHost), bytes / kPageSize);
  EXPECT_TRUE(rt_->Free(data).ok());
  EXPECT_EQ(rt_->stats().device_pages_used, 0u);
}

}  // namespace
}  // namespace uhmm::testing
