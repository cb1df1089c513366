// What the CPU fault path costs in userfaultfd calls (runtime/fault/cpu_fault.h): a fault served by
// a migration makes one UFFDIO_CONTINUE, which maps the page and wakes the thread, and no
// UFFDIO_WAKE; a duplicate makes at most one CONTINUE; faults of one block read together share a
// migration. Config::fault_recheck (the old path) is checked to cost its second look (a CONTINUE
// meeting EEXIST, or, where writes are tracked, a look at the page tables) and a WAKE, which is
// also what shows that the counts here tell the two paths apart.
#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "runtime/api/testing.h"
#include "tests/test_util.h"

namespace uhmm::testing {
namespace {

// One fault per 4 KiB page, nothing but the page: no read-ahead, no growth.
Config IsolatedFaultConfig() {
  Config c = PerFaultConfig();
  c.fault_granularity = kPageSize;
  return c;
}

UffdCalls Since(const UffdCalls& before, const UffdCalls& now) {
  UffdCalls d;
  d.continues = now.continues - before.continues;
  d.wakes = now.wakes - before.wakes;
  d.zeropages = now.zeropages - before.zeropages;
  d.poisons = now.poisons - before.poisons;
  d.eexist = now.eexist - before.eexist;
  d.fault_migrations = now.fault_migrations - before.fault_migrations;
  return d;
}

bool Same(const UffdCalls& a, const UffdCalls& b) {
  return a.continues == b.continues && a.wakes == b.wakes && a.zeropages == b.zeropages &&
         a.poisons == b.poisons && a.eexist == b.eexist && a.fault_migrations == b.fault_migrations;
}

// The counts once the fault service is done: a faulting thread runs on as soon as it is woken,
// which can be before the service thread's last ioctl (the old path's WAKE came after its thread
// had been woken). Unchanged for 50 ms counts as done.
UffdCalls SettledCounts(const Runtime& rt) {
  UffdCalls now = UffdCallCounts(rt);
  for (int i = 0; i < 100; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const UffdCalls later = UffdCallCounts(rt);
    if (Same(now, later)) break;
    now = later;
  }
  return now;
}

std::string Describe(const UffdCalls& d) {
  return "CONTINUE " + std::to_string(d.continues) + " (EEXIST " + std::to_string(d.eexist) + "), WAKE " +
         std::to_string(d.wakes) + ", ZEROPAGE " + std::to_string(d.zeropages) + ", POISON " +
         std::to_string(d.poisons) + ", fault migrations " + std::to_string(d.fault_migrations);
}

class UffdCallsTest : public ::testing::Test, public Harness {
 protected:
  void TearDown() override { rt_.reset(); }

  // A device-resident range of `bytes` whose device copy holds Pattern(kSeed): whatever the CPU
  // reads came back from the device.
  uint64_t* OnDevice(size_t bytes) {
    uint64_t* p = AllocFilled(bytes, 1);
    EXPECT_TRUE(rt_->Migrate(p, bytes, 0).ok());
    EXPECT_EQ(DeviceWrite(p, bytes, kSeed), bytes / kPageSize);
    return p;
  }

  // Touches one word in each of `faults` pages `stride` bytes apart, one at a time, on this thread.
  // Returns the words that differ from the device's data.
  static size_t TouchEach(const uint64_t* p, size_t faults, size_t stride) {
    size_t bad = 0;
    for (size_t k = 0; k < faults; ++k) {
      const size_t word = k * stride / 8 + 3;
      bad += reinterpret_cast<const volatile uint64_t*>(p)[word] != Pattern(kSeed, word);
    }
    return bad;
  }

  static constexpr uint64_t kSeed = 77;
};

TEST_F(UffdCallsTest, IsolatedFaultMakesOneContinueAndNoWake) {
  Start(IsolatedFaultConfig());
  UHMM_RETURN_IF_SKIPPED();
  constexpr size_t kBytes = 4 * kMiB, kStride = 64 * 1024, kFaults = kBytes / kStride;
  uint64_t* p = OnDevice(kBytes);
  const Stats stats0 = rt_->stats();
  const UffdCalls before = SettledCounts(*rt_);
  EXPECT_EQ(TouchEach(p, kFaults, kStride), 0u);
  const UffdCalls d = Since(before, SettledCounts(*rt_));
  const Stats stats1 = rt_->stats();
  EXPECT_EQ(stats1.cpu_faults - stats0.cpu_faults, kFaults);
  EXPECT_EQ(stats1.duplicate_faults - stats0.duplicate_faults, 0u);
  EXPECT_EQ(d.fault_migrations, kFaults) << Describe(d);
  // One CONTINUE per fault (it maps and wakes), none meeting a mapped page, and no WAKE.
  EXPECT_LE(d.continues, kFaults) << Describe(d);
  EXPECT_EQ(d.continues, kFaults) << Describe(d);
  EXPECT_EQ(d.eexist, 0u) << Describe(d);
  EXPECT_EQ(d.wakes, 0u) << Describe(d);
  EXPECT_EQ(d.zeropages + d.poisons, 0u) << Describe(d);
  ASSERT_TRUE(rt_->Free(p).ok());
}

// The old path, kept behind Config::fault_recheck for before/after measurements: after its
// migration a fault looked at the page again and mapped it again (EEXIST), then woke the thread.
// The counts above fail on it.
TEST_F(UffdCallsTest, RecheckKnobCostsASecondLookAndAWake) {
  Config c = IsolatedFaultConfig();
  c.fault_recheck = true;
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  constexpr size_t kBytes = 2 * kMiB, kStride = 64 * 1024, kFaults = kBytes / kStride;
  uint64_t* p = OnDevice(kBytes);
  const UffdCalls before = SettledCounts(*rt_);
  EXPECT_EQ(TouchEach(p, kFaults, kStride), 0u);
  const UffdCalls d = Since(before, SettledCounts(*rt_));
  // The second look: a CONTINUE meeting EEXIST, or, where writes are tracked, a look at the page
  // tables that finds the page (a duplicate) mapped and leaves it alone (CpuFault::MapTracked).
  const size_t again = TracksWrites(*rt_) ? 0 : kFaults;
  EXPECT_EQ(d.fault_migrations, kFaults) << Describe(d);
  EXPECT_EQ(d.continues, kFaults + again) << Describe(d);
  EXPECT_EQ(d.eexist, again) << Describe(d);
  EXPECT_EQ(d.wakes, kFaults) << Describe(d);
  ASSERT_TRUE(rt_->Free(p).ok());
}

// A fault message for a page that is host resident and mapped (a duplicate: another fault brought
// it back and woke its thread): one CONTINUE, which meets EEXIST, or, where writes are tracked, none
// (the page tables say it is mapped); whoever mapped the page woke its waiters, so no WAKE.
TEST_F(UffdCallsTest, DuplicateFaultOnAMappedPageMakesAtMostOneContinue) {
  Start(IsolatedFaultConfig());
  UHMM_RETURN_IF_SKIPPED();
  constexpr size_t kBytes = 2 * kMiB;
  uint64_t* p = OnDevice(kBytes);
  EXPECT_EQ(TouchEach(p, 1, 0), 0u);  // fault it back: host resident and mapped
  const Stats stats0 = rt_->stats();
  const UffdCalls before = SettledCounts(*rt_);
  InjectFaultMessage(*rt_, p, /*stale=*/false);
  const UffdCalls d = Since(before, SettledCounts(*rt_));
  EXPECT_EQ(rt_->stats().duplicate_faults - stats0.duplicate_faults, 1u);
  const uint64_t again = TracksWrites(*rt_) ? 0 : 1;
  EXPECT_EQ(d.fault_migrations, 0u) << Describe(d);
  EXPECT_EQ(d.continues, again) << Describe(d);
  EXPECT_EQ(d.eexist, again) << Describe(d);
  EXPECT_EQ(d.wakes, 0u) << Describe(d);
  EXPECT_EQ(TouchEach(p, 1, 0), 0u);
  ASSERT_TRUE(rt_->Free(p).ok());
}

// 'S' (or 'D') when thread `tid` of this process sleeps.
bool Sleeping(pid_t tid) {
  std::ifstream f("/proc/self/task/" + std::to_string(tid) + "/stat");
  std::string stat;
  std::getline(f, stat);
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat.size()) return false;
  return stat[paren + 2] == 'S' || stat[paren + 2] == 'D';
}

// Threads that fault on neighbouring pages of one block while the service threads are held off
// the userfaultfd: one read takes all their messages, and one migration (one CONTINUE, no WAKE)
// serves them all.
TEST_F(UffdCallsTest, FaultsReadTogetherInOneBlockShareOneMigration) {
  Start(IsolatedFaultConfig());
  UHMM_RETURN_IF_SKIPPED();
  constexpr size_t kBytes = 2 * kMiB, kThreads = 6;
  uint64_t* p = OnDevice(kBytes);
  const Stats stats0 = rt_->stats();
  const UffdCalls before = SettledCounts(*rt_);
  HoldFaultReads(*rt_, true);
  std::atomic<pid_t> tids[kThreads] = {};
  std::atomic<size_t> bad{0};
  std::vector<std::thread> threads;
  for (size_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const size_t word = t * kPageSize / 8 + 5;
      tids[t].store(static_cast<pid_t>(syscall(SYS_gettid)));
      if (reinterpret_cast<volatile uint64_t*>(p)[word] != Pattern(kSeed, word)) bad.fetch_add(1);
    });
  }
  // Every thread is asleep in its fault (it sleeps nowhere else after publishing its id).
  bool all_waiting = false;
  for (int i = 0; i < 1000 && !all_waiting; ++i) {
    all_waiting = true;
    for (auto& tid : tids) all_waiting = all_waiting && tid.load() != 0 && Sleeping(tid.load());
    if (!all_waiting) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  HoldFaultReads(*rt_, false);
  for (auto& t : threads) t.join();
  ASSERT_TRUE(all_waiting) << "the faulting threads did not all block within 10 s";
  EXPECT_EQ(bad.load(), 0u);
  const UffdCalls d = Since(before, SettledCounts(*rt_));
  EXPECT_EQ(rt_->stats().cpu_faults - stats0.cpu_faults, kThreads);
  EXPECT_EQ(d.fault_migrations, 1u) << Describe(d);
  EXPECT_EQ(d.continues, 1u) << Describe(d);
  EXPECT_EQ(d.wakes, 0u) << Describe(d);
  ASSERT_TRUE(rt_->Free(p).ok());
}

// Threads faulting on one block at once, however their messages are read: each reads the device's
// data, and no fault costs more than its own migration.
TEST_F(UffdCallsTest, ThreadsFaultingOnOneBlockAtOnce) {
  Start(IsolatedFaultConfig());
  UHMM_RETURN_IF_SKIPPED();
  constexpr size_t kBytes = 2 * kMiB, kThreads = 8, kRounds = 20;
  for (size_t round = 0; round < kRounds; ++round) {
    uint64_t* p = OnDevice(kBytes);
    const UffdCalls before = SettledCounts(*rt_);
    std::atomic<size_t> ready{0}, bad{0};
    std::vector<std::thread> threads;
    for (size_t t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        // Pages far apart and pages next to each other; two threads share a page.
        const size_t page = t < kThreads / 2 ? t * 61 : 300 + t / 2 * 2;
        const size_t word = page * kPageSize / 8 + t;
        ready.fetch_add(1);
        while (ready.load() < kThreads) std::this_thread::yield();
        if (reinterpret_cast<volatile uint64_t*>(p)[word] != Pattern(kSeed, word)) bad.fetch_add(1);
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(bad.load(), 0u) << "round " << round;
    const UffdCalls d = Since(before, SettledCounts(*rt_));
    EXPECT_GE(d.fault_migrations, 1u) << Describe(d);
    EXPECT_LE(d.fault_migrations, kThreads) << Describe(d);
    EXPECT_EQ(d.wakes, 0u) << Describe(d);
    ASSERT_TRUE(rt_->Free(p).ok());
  }
}

}  // namespace
}  // namespace uhmm::testing
