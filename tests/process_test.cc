// Tests that need their own process: fork semantics, SIGBUS on device errors, and userfaultfd
// permission handling. Each scenario runs in a child so a signal cannot take down the test runner.
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "runtime/fault/uffd.h"
#include "tests/test_util.h"

namespace uhmm::testing {
namespace {

using ForkTest = RuntimeTest;

TEST_F(ForkTest, ForkAfterMigrateChildReadsDataAndParentIsUnaffected) {
  const size_t bytes = 2 * kMiB;
  uint64_t* p = AllocFilled(bytes, 200);
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  ASSERT_EQ(DeviceWrite(p, bytes, 201), bytes / kPageSize);
  const int status = InChild([&] {
    // The child sees the data as of the fork, in a private copy.
    if (FirstMismatch(p, bytes, 201) != -1) _exit(1);
    for (size_t i = 0; i < bytes / 8; ++i) p[i] = Pattern(202, i);  // must not reach the parent
    if (FirstMismatch(p, bytes, 202) != -1) _exit(2);
    // The inherited runtime refuses migrations clearly.
    if (rt_->Migrate(p, bytes, 0).code() != absl::StatusCode::kFailedPrecondition) _exit(3);
    _exit(0);
  });
  ASSERT_TRUE(WIFEXITED(status)) << "child died with signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: child read wrong data; 2: child write failed; "
                                       "3: child migration not refused";
  EXPECT_EQ(FirstMismatch(p, bytes, 201), -1) << "the child's writes reached the parent";
  EXPECT_GE(rt_->stats().events_fork, 1u);
  // The parent keeps working: migrate again and fault back.
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  EXPECT_EQ(FirstMismatch(p, bytes, 201), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

// fork() holds glibc's malloc locks across the clone. A kernel that must hand the runtime an
// event before the clone completes (UFFD_FEATURE_EVENT_FORK) then waits on the fault service, and a
// fault service thread that allocates meanwhile waits on the fork: a deadlock the fuzzer found.
// Forks race CPU faults and discards here, in a child with a deadline. Not a ForkTest: the test
// process must have no runtime threads when it forks that child (ThreadSanitizer refuses threads
// started after a multithreaded fork).
TEST(ForkRaceTest, ForksRacingFaultsAndDiscardsNeverDeadlock) {
  const int status = InChild([&] {
    alarm(60);  // a deadlock ends this child with SIGALRM
    Harness h;
    h.rt_ = CreateInChild(TestConfig());
    const size_t bytes = 4 * kMiB;
    uint64_t* p = h.AllocFilled(bytes, 210);
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> touched{0};
    std::thread toucher([&] {
      for (uint64_t round = 0; !stop.load(); ++round) {
        // Discards and device pages both make the next touches fault.
        if (round % 2 == 0) {
          if (madvise(p, bytes, MADV_DONTNEED) != 0) _exit(21);
        } else if (!h.rt_->Migrate(p, bytes, 0).ok()) {
          _exit(22);
        }
        for (size_t i = 0; i < bytes / 8; i += kPageSize / 8) p[i] = round;
        touched.fetch_add(1);
      }
    });
    for (int i = 0; i < 300; ++i) {
      const pid_t child = fork();
      if (child == 0) _exit(0);
      if (child < 0) _exit(23);
      int st = 0;
      if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) _exit(24);
    }
    stop.store(true);
    toucher.join();
    if (touched.load() == 0) _exit(25);
    if (!h.rt_->Free(p).ok()) _exit(26);
    _exit(0);
  });
  UHMM_SKIP_IF_CHILD_SKIPPED(status);
  ASSERT_FALSE(WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
      << "fork deadlocked with the fault service";
  ASSERT_TRUE(WIFEXITED(status)) << "child died with signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "21: madvise failed; 22: migration failed; 23: fork failed; "
                                       "24: a grandchild failed; 25: no touches; 26: free failed";
}

// fork() while other threads add and remove ranges: the child walks the range map in its atfork
// handler, so the map must not be caught half-updated (the fuzzer's fork children crashed there).
TEST(ForkRaceTest, ForksRacingAllocateAndFreeLeaveTheChildAWholeRangeMap) {
  const int status = InChild([&] {
    alarm(90);  // a deadlock ends this child with SIGALRM
    Harness h;
    h.rt_ = CreateInChild(TestConfig());
    std::atomic<bool> stop{false};
    std::vector<std::thread> churn;
    for (int t = 0; t < 2; ++t) {
      churn.emplace_back([&, t] {
        std::vector<void*> live;
        for (uint64_t i = 0; !stop.load(); ++i) {
          if (live.size() < 8) {
            absl::StatusOr<void*> p = h.rt_->Allocate(kPageSize * (1 + (i + t) % 3));
            if (!p.ok()) _exit(31);
            live.push_back(*p);
          } else {
            if (!h.rt_->Free(live[i % live.size()]).ok()) _exit(32);
            live.erase(live.begin() + static_cast<std::ptrdiff_t>(i % live.size()));
          }
        }
        for (void* p : live) (void)h.rt_->Free(p);
      });
    }
    // The window is a map update at the instant of the clone: before the fix, 4,000 forks crashed
    // a child in about half the runs. 2,000 take about 7 s in a release build; sanitizers make
    // each fork far slower, so the loop also stops after 15 s.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    for (int i = 0; i < 2000 && std::chrono::steady_clock::now() < until; ++i) {
      const pid_t child = fork();
      if (child == 0) _exit(0);
      if (child < 0) _exit(33);
      int st = 0;
      if (waitpid(child, &st, 0) != child) _exit(34);
      if (WIFSIGNALED(st)) _exit(40 + WTERMSIG(st));  // the atfork handler crashed in the child
    }
    stop.store(true);
    for (auto& t : churn) t.join();
    _exit(0);
  });
  UHMM_SKIP_IF_CHILD_SKIPPED(status);
  ASSERT_TRUE(WIFEXITED(status)) << "child died with signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "31/32: allocate/free failed; 33: fork failed; 34: waitpid failed; "
                                       "40 + n: a fork child died with signal n";
}

// --- SIGBUS on device error ------------------------------------------------------------------

sigjmp_buf g_jump;
volatile sig_atomic_t g_si_code = 0;
void* volatile g_si_addr = nullptr;
void OnSigbus(int, siginfo_t* info, void*) {
  g_si_code = info->si_code;
  g_si_addr = info->si_addr;
  siglongjmp(g_jump, 1);
}

// Child body: two ranges on the device, the next device->host copy fails, the CPU touches a page.
// Exit codes: 0 ok, 10+ which check failed.
void SigbusScenario(SigbusMode mode) {
  Config c = TestConfig();
  c.sigbus_mode = mode;
  c.fault_granularity = kPageSize;
  const size_t bytes = 64 * kPageSize;
  Harness helper;
  helper.rt_ = CreateInChild(c);
  uint64_t* a = helper.AllocFilled(bytes, 300);
  uint64_t* b = helper.AllocFilled(bytes, 301);
  if (!helper.rt_->Migrate(a, bytes, 0).ok() || !helper.rt_->Migrate(b, bytes, 0).ok()) _exit(11);
  struct sigaction sa = {};
  sa.sa_sigaction = OnSigbus;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGBUS, &sa, nullptr);
  Faults(*helper.rt_, 0)->FailNext(InjectSite::kCopyDeviceToHost, 1);
  volatile uint64_t* victim = a + 5 * kPageSize / 8;
  bool got_sigbus = false;
  if (sigsetjmp(g_jump, 1) == 0) {
    (void)*victim;
  } else {
    got_sigbus = true;
  }
  if (!got_sigbus) _exit(12);
  if (mode == SigbusMode::kPoison) {
    // A poison marker raises BUS_MCEERR_AR or BUS_ADRERR, depending on the kernel, at the
    // exact address.
    if (g_si_code != BUS_MCEERR_AR && g_si_code != BUS_ADRERR) _exit(30 + g_si_code);
    if (g_si_addr != (void*)victim) _exit(14);
    std::vector<int32_t> res = helper.Residency(a, bytes);
    if (res[5] != kPoisoned) _exit(15);
  } else if (g_si_code != SI_TKILL) {
    _exit(16);
  }
  // Only that access failed: other pages of the range and the other range still work.
  if (a[0] != Harness::Pattern(300, 0)) _exit(17);
  if (a[6 * kPageSize / 8] != Harness::Pattern(300, 6 * kPageSize / 8)) _exit(18);
  if (helper.FirstMismatch(b, bytes, 301) != -1) _exit(19);
  if (mode == SigbusMode::kTkill) {
    // Without poison the page stayed on the device; the device works again, so a retry succeeds.
    if (*victim != Harness::Pattern(300, 5 * kPageSize / 8)) _exit(20);
  }
  if (helper.rt_->stats().sigbus_delivered != 1) _exit(21);
  helper.rt_.reset();
  _exit(0);
}

TEST(SigbusTest, DeviceErrorDuringFaultBackPoisonsThatAccessOnly) {
  const int status = InChild([] { SigbusScenario(SigbusMode::kPoison); });
  UHMM_SKIP_IF_CHILD_SKIPPED(status);
  ASSERT_TRUE(WIFEXITED(status)) << "child died with signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "see SigbusScenario for the failed check";
}

TEST(SigbusTest, DeviceErrorDuringFaultBackTkillFallbackSignalsThatThreadOnly) {
  const int status = InChild([] { SigbusScenario(SigbusMode::kTkill); });
  UHMM_SKIP_IF_CHILD_SKIPPED(status);
  ASSERT_TRUE(WIFEXITED(status)) << "child died with signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "see SigbusScenario for the failed check";
}

TEST(SigbusTest, UnhandledDeviceErrorKillsWithSigbus) {
  const int status = InChild([] {
    std::unique_ptr<Runtime> rt = CreateInChild(TestConfig());
    absl::StatusOr<void*> p = rt->Allocate(kPageSize);
    if (!p.ok() || !rt->Migrate(*p, kPageSize, 0).ok()) _exit(11);
    Faults(*rt, 0)->FailNext(InjectSite::kCopyDeviceToHost, 1000);
    signal(SIGBUS, SIG_DFL);  // the default disposition (sanitizers install their own)
    (void)*static_cast<volatile char*>(*p);
    _exit(12);
  });
  UHMM_SKIP_IF_CHILD_SKIPPED(status);
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit status " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGBUS);
}

// --- userfaultfd permissions ---------------------------------------------------------------------

TEST(UffdPermissionTest, HelpNamesTheSysctlAndTheDeviceFile) {
  const std::string help = UffdPermissionHelp(EPERM, EACCES);
  EXPECT_NE(help.find("vm.unprivileged_userfaultfd"), std::string::npos) << help;
  EXPECT_NE(help.find("/dev/userfaultfd"), std::string::npos) << help;
}

TEST(UffdPermissionTest, UnprivilegedProcessFallsBackToUserModeOnly) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to drop to an unprivileged user";
  FILE* f = fopen("/proc/sys/vm/unprivileged_userfaultfd", "r");
  int unpriv = 1;
  if (f) {
    if (fscanf(f, "%d", &unpriv) != 1) unpriv = 1;
    fclose(f);
  }
  if (unpriv != 0) GTEST_SKIP() << "vm.unprivileged_userfaultfd=1: unprivileged users may open it";
  const int status = InChild([] {
    if (setgid(65534) != 0 || setuid(65534) != 0) _exit(10);
    absl::StatusOr<std::unique_ptr<Uffd>> u = Uffd::Open();
    if (!u.ok()) _exit(11);
    _exit((*u)->source() == Uffd::Source::kSyscallUserModeOnly ? 0 : 12);
  });
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace uhmm::testing
