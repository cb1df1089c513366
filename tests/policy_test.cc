// The fault policy (density growth, read-ahead, thrashing guard), parallel bulk migration and
// hugetlb-backed ranges: the units alone, then through the runtime with data checked.
#include "runtime/policy/policy.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <future>
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "runtime/api/runtime_impl.h"
#include "runtime/mm/managed_range.h"
#include "runtime/policy/readahead_fence.h"
#include "runtime/process/topology.h"
#include "runtime/process/workers.h"
#include "tests/test_util.h"

namespace uhmm::testing {
namespace {

constexpr uintptr_t kBase = uintptr_t{1} << 40;  // a block-aligned address for the unit tests

// ---- Units ---------------------------------------------------------------------------------------

TEST(ReadAheadTest, SequentialFaultsOpenAndDoubleTheWindowRandomOnesCloseIt) {
  ReadAhead ra;
  const uintptr_t end = kBase + 64 * kMiB;
  const size_t max = 8 * kMiB;
  // The first fault of a range only records where it was.
  EXPECT_EQ(ra.OnFault(kBase, kBase + 64 * 1024, end, max), std::make_pair(uintptr_t{0}, uintptr_t{0}));
  // The next granule: the rest of the block plus one block.
  auto [f1, t1] = ra.OnFault(kBase + 64 * 1024, kBase + 128 * 1024, end, max);
  EXPECT_EQ(f1, kBase + 128 * 1024);
  EXPECT_EQ(t1, kBase + 2 * kMiB + 2 * kMiB);
  // The CPU catches up where the read-ahead ended: the window doubles, from there.
  auto [f2, t2] = ra.OnFault(t1, t1 + 64 * 1024, end, max);
  EXPECT_EQ(f2, t1 + 64 * 1024);
  EXPECT_EQ(t2, t1 + 2 * kMiB + 4 * kMiB);
  auto [f3, t3] = ra.OnFault(t2, t2 + 64 * 1024, end, max);
  EXPECT_EQ(t3 - (t2 + 2 * kMiB), 8 * kMiB);
  auto [f4, t4] = ra.OnFault(t3, t3 + 64 * 1024, end, max);
  EXPECT_EQ(t4 - (t3 + 2 * kMiB), max) << "the window stops at the configured maximum";
  EXPECT_LT(f4, t4);
  // A jump backwards resets it.
  EXPECT_EQ(ra.OnFault(kBase, kBase + 64 * 1024, end, max).second, 0u);
  // Clipped to the range.
  ra.OnFault(end - 4 * kMiB, end - 4 * kMiB + 4096, end, max);
  EXPECT_EQ(ra.OnFault(end - 4 * kMiB + 4096, end - 4 * kMiB + 8192, end, max).second, end);
  // Off: nothing, ever.
  ReadAhead off;
  off.OnFault(kBase, kBase + 4096, end, 0);
  EXPECT_EQ(off.OnFault(kBase + 4096, kBase + 8192, end, 0).second, 0u);
}

TEST(GrowGranuleTest, GrowsToTheLargestRegionAboveTheThreshold) {
  PageMask host;  // every page on the device
  uintptr_t s = kBase + 64 * 1024, e = s + 64 * 1024;
  EXPECT_FALSE(GrowGranule(host, kBase, kBase, kBase + kBlockSize, 51, &s, &e));
  EXPECT_EQ(e - s, 64 * 1024u);
  // The neighbour granule is back: 128 KiB would be 100% host, 256 KiB 50% (not above 51%).
  for (size_t i = 0; i < 16; ++i) host.set(i);
  s = kBase + 64 * 1024, e = s + 64 * 1024;
  EXPECT_TRUE(GrowGranule(host, kBase, kBase, kBase + kBlockSize, 51, &s, &e));
  EXPECT_EQ(s, kBase);
  EXPECT_EQ(e, kBase + 128 * 1024);
  // Most of the block is back: the whole block comes.
  for (size_t i = 0; i < 300; ++i) host.set(i);
  s = kBase + 1 * kMiB, e = s + 64 * 1024;
  EXPECT_TRUE(GrowGranule(host, kBase, kBase, kBase + kBlockSize, 51, &s, &e));
  EXPECT_EQ(s, kBase);
  EXPECT_EQ(e, kBase + kBlockSize);
  // Clipped to the range's end; threshold 0 is off.
  s = kBase + 1 * kMiB, e = s + 64 * 1024;
  EXPECT_TRUE(GrowGranule(host, kBase, kBase, kBase + 1536 * 1024, 51, &s, &e));
  EXPECT_EQ(e, kBase + 1536 * 1024);
  s = kBase + 1 * kMiB, e = s + 64 * 1024;
  EXPECT_FALSE(GrowGranule(host, kBase, kBase, kBase + kBlockSize, 0, &s, &e));
}

TEST(ThrashingTest, QuickReturnsInARowMarkABlockAndASlowOneClearsIt) {
  VaBlock blk;
  MutexLock lock(&blk.mu);
  const uint64_t lapse = 500'000;
  uint64_t now = 1'000'000'000;
  auto move_to_device = [&] {
    blk.to_device_ns = now;
    blk.returned = false;
  };
  for (int round = 1; round <= 3; ++round) {
    move_to_device();
    now += 100'000;
    EXPECT_EQ(NoteReturn(blk, now, lapse, 3), round == 3) << round;
    // More faults on the same move do not count again.
    EXPECT_FALSE(NoteReturn(blk, now + 1, lapse, 3));
  }
  EXPECT_TRUE(blk.thrashing);
  move_to_device();
  now += 2 * lapse;
  EXPECT_FALSE(NoteReturn(blk, now, lapse, 3));
  EXPECT_FALSE(blk.thrashing) << "a slow return ends thrashing";
  move_to_device();
  EXPECT_FALSE(NoteReturn(blk, now + 1, lapse, 0)) << "threshold 0 is off";
}

TEST(ReadAheadFenceTest, ADeviceUseDropsEarlierDecisionsAndWaitsForRunningOnes) {
  ReadAheadFence fence;
  ASSERT_TRUE(fence.Enter(100)) << "no device use yet";
  // A device use at 200 waits for the read-ahead decided at 100 that is already copying.
  std::atomic<bool> began{false};
  std::thread use([&] {
    fence.DeviceUseBegins(200);
    began = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(began) << "the device use went on while a read-ahead was moving pages";
  fence.Leave();
  use.join();
  EXPECT_TRUE(began);
  EXPECT_FALSE(fence.Enter(150)) << "decided before the device use: dropped";
  EXPECT_FALSE(fence.Enter(200)) << "decided at the same instant: dropped";
  ASSERT_TRUE(fence.Enter(201)) << "decided after it: runs";
  fence.Leave();
  fence.DeviceUseBegins(50);  // an older clock reading never moves the fence back
  EXPECT_FALSE(fence.Enter(199));
}

// ---- Through the runtime -------------------------------------------------------------------------

using PolicyTest = RuntimeTest;

// Moves [p, +bytes) to the device and has the device rewrite it with `seed`.
void ToDeviceAndRewrite(Harness& t, Runtime& rt, uint64_t* p, size_t bytes, uint64_t seed) {
  ASSERT_TRUE(rt.Migrate(p, bytes, 0).ok());
  ASSERT_EQ(t.DeviceWrite(p, bytes, seed), bytes / kPageSize);
}

TEST_F(PolicyTest, SequentialReadBackIsReadAheadWithFewFaults) {
  constexpr size_t kBytes = 32 * kMiB;
  uint64_t* p = AllocFilled(kBytes, 1);
  ToDeviceAndRewrite(*this, *rt_, p, kBytes, 2);
  const Stats before = rt_->stats();
  for (size_t w = 0; w < kBytes / 8; w += kPageSize / 8) ASSERT_EQ(p[w], Pattern(2, w)) << w;
  const Stats after = rt_->stats();
  EXPECT_EQ(FirstMismatch(p, kBytes, 2), -1);
  EXPECT_EQ(after.pages_to_host - before.pages_to_host, kBytes / kPageSize) << "each page once";
  EXPECT_GT(after.readahead_pages - before.readahead_pages, kBytes / kPageSize / 2)
      << "read-ahead brought back most of the data";
  EXPECT_LT(after.cpu_faults - before.cpu_faults, kBytes / TestConfig().fault_granularity / 4);
  ASSERT_TRUE(rt_->Free(p).ok());
}

// The fuzzer's lost device write (docs/RELIABILITY.md): a CPU fault decided a read-ahead, then a
// device used the pages before a worker ran it; the read-ahead must not bring them home from under
// that device (its later writes would land in released device pages).
TEST_F(PolicyTest, ReadAheadDecidedBeforeADeviceUseLeavesTheDevicesPagesThere) {
  rt_.reset();
  Config c = TestConfig();
  c.migration_threads = 1;  // one worker, which the test holds while the read-ahead is decided
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  constexpr size_t kBytes = 8 * kMiB;
  uint64_t* p = AllocFilled(kBytes, 1);
  ToDeviceAndRewrite(*this, *rt_, p, kBytes, 2);
  const Mm& mm = static_cast<RuntimeImpl&>(*rt_).mm();
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  ASSERT_TRUE(mm.workers->Post([released] { released.wait(); }));
  const uint64_t dropped = mm.counters->readahead_dropped.load();
  // Two sequential faults open a read-ahead window over the rest of block 0 and block 1.
  const size_t gran_words = c.fault_granularity / 8;
  ASSERT_EQ(p[0], Pattern(2, 0));
  ASSERT_EQ(p[gran_words], Pattern(2, gran_words));
  // A device uses block 1 before the worker gets to the read-ahead.
  uint64_t* block1 = p + kBlockSize / 8;
  ASSERT_EQ(DeviceWrite(block1, kBlockSize, 3), kBlockSize / kPageSize);
  release.set_value();
  std::promise<void> drained;
  ASSERT_TRUE(mm.workers->Post([&drained] { drained.set_value(); }));
  drained.get_future().wait();
  EXPECT_GT(mm.counters->readahead_dropped.load(), dropped) << "no read-ahead was decided, or none dropped";
  for (int32_t where : Residency(block1, kBlockSize)) ASSERT_EQ(where, 0) << "read-ahead took a page home";
  EXPECT_EQ(FirstMismatch(block1, kBlockSize, 3), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(PolicyTest, RandomOrderGrowsGranulesToWholeBlocks) {
  rt_.reset();
  Config c = TestConfig();
  c.readahead_bytes = 0;  // density alone
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  constexpr size_t kBytes = 16 * kMiB;
  uint64_t* p = AllocFilled(kBytes, 3);
  ToDeviceAndRewrite(*this, *rt_, p, kBytes, 4);
  std::vector<size_t> order(kBytes / kPageSize);
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937(7));
  const Stats before = rt_->stats();
  for (size_t pg : order) {
    const size_t w = pg * (kPageSize / 8) + pg % 512;
    ASSERT_EQ(p[w], Pattern(4, w)) << "page " << pg;
  }
  const Stats after = rt_->stats();
  EXPECT_EQ(FirstMismatch(p, kBytes, 4), -1);
  EXPECT_EQ(after.pages_to_host - before.pages_to_host, kBytes / kPageSize);
  EXPECT_GT(after.grown_faults - before.grown_faults, 0u);
  // Without growth every 64 KiB granule would fault once.
  EXPECT_LT(after.cpu_faults - before.cpu_faults, kBytes / TestConfig().fault_granularity * 3 / 4);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(PolicyTest, PingPongMarksTheBlockThrashingAndStopsReadAheadThere) {
  rt_.reset();
  Config c = TestConfig();
  c.thrashing_lapse_us = 10'000'000;  // every return is "quick" on a loaded CI machine
  c.thrashing_threshold = 2;
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  constexpr size_t kBytes = 8 * kMiB;
  uint64_t* p = AllocFilled(kBytes, 5);
  for (int round = 0; round < 3; ++round) {
    ToDeviceAndRewrite(*this, *rt_, p, kBytes, 6 + round);
    // Two sequential touches at the start: the second would open read-ahead on a calm block.
    ASSERT_EQ(p[0], Pattern(6 + round, 0));
    ASSERT_EQ(p[TestConfig().fault_granularity / 8], Pattern(6 + round, TestConfig().fault_granularity / 8));
  }
  EXPECT_GE(rt_->stats().thrashing_blocks, 1u);
  const Stats before = rt_->stats();
  ToDeviceAndRewrite(*this, *rt_, p, kBytes, 20);
  ASSERT_EQ(p[0], Pattern(20, 0));
  ASSERT_EQ(p[TestConfig().fault_granularity / 8], Pattern(20, TestConfig().fault_granularity / 8));
  EXPECT_EQ(rt_->stats().readahead_pages - before.readahead_pages, 0u)
      << "no read-ahead on a thrashing block";
  EXPECT_EQ(FirstMismatch(p, kBytes, 20), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(PolicyTest, ParallelBulkMigrationBothWaysKeepsData) {
  rt_.reset();
  Config c = TestConfig();
  c.migration_threads = 4;
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  constexpr size_t kBytes = 24 * kMiB;
  uint64_t* p = AllocFilled(kBytes, 30);
  // Unaligned start and end: the first and last blocks are partial jobs.
  uint8_t* mid = reinterpret_cast<uint8_t*>(p) + 3 * kPageSize;
  const size_t mid_bytes = kBytes - 8 * kPageSize;
  ASSERT_TRUE(rt_->Migrate(mid, mid_bytes, 0).ok());
  std::vector<int32_t> res = Residency(p, kBytes);
  EXPECT_EQ(CountAt(res, 0), mid_bytes / kPageSize);
  ASSERT_EQ(DeviceWrite(p, kBytes, 31), mid_bytes / kPageSize);
  ASSERT_TRUE(rt_->Migrate(mid, mid_bytes, kHost).ok());
  EXPECT_EQ(CountAt(Residency(p, kBytes), kHost), kBytes / kPageSize);
  for (size_t w = 0; w < kBytes / 8; ++w) {
    const bool moved = w >= 3 * kPageSize / 8 && w < (3 * kPageSize + mid_bytes) / 8;
    ASSERT_EQ(p[w], Pattern(moved ? 31 : 30, w)) << w;
  }
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(PolicyTest, BadPolicyKnobsAreRejectedWithTheirNames) {
  struct Case {
    const char* var;
    const char* value;
  } cases[] = {{"UHMM_READAHEAD", "3M"},           {"UHMM_PREFETCH_THREADS", "-1"},
               {"UHMM_PREFETCH_THRESHOLD", "101"}, {"UHMM_HUGETLB", "sometimes"},
               {"UHMM_FAULT_SPIN_US", "-5"},       {"UHMM_PLACEMENT", "near"},
               {"UHMM_THRASHING_LAPSE_US", "x"}};
  for (const Case& k : cases) {
    setenv(k.var, k.value, 1);
    Config c = Config::FromEnv();
    unsetenv(k.var);
    absl::Status s = c.Validate();
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << k.var << ": " << s;
    EXPECT_NE(s.message().find(k.var), std::string::npos) << s;
  }
}

TEST_F(PolicyTest, BusyPollingFaultThreadServesFaultsAndStops) {
  rt_.reset();
  Config c = PerFaultConfig();
  c.fault_spin_us = 200;
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  constexpr size_t kBytes = 8 * kMiB;
  uint64_t* p = AllocFilled(kBytes, 70);
  ToDeviceAndRewrite(*this, *rt_, p, kBytes, 71);
  for (size_t w = 0; w < kBytes / 8; w += kBlockSize / 8) {
    std::this_thread::sleep_for(std::chrono::microseconds(500));  // past the spin: poll() again
    ASSERT_EQ(p[w], Pattern(71, w));
  }
  EXPECT_EQ(FirstMismatch(p, kBytes, 71), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
  rt_.reset();  // the spinning thread must notice the stop
}

TEST(TopologyTest, FindsNothingForUnknownDevicesAndBindsThreadsAndMemory) {
  absl::StatusOr<const Topology*> topo = Topology::Get();
  ASSERT_TRUE(topo.ok()) << topo.status();
  EXPECT_TRUE(absl::IsInvalidArgument((*topo)->NearPci("not-a-bus-id").status()));
  absl::Status unknown = (*topo)->NearPci("ffff:ff:1f.7").status();
  EXPECT_TRUE(absl::IsNotFound(unknown)) << unknown;
  EXPECT_NE(unknown.message().find("ffff:ff:1f.7"), std::string::npos) << unknown;
  const std::string all = "0-" + std::to_string(std::thread::hardware_concurrency() - 1);
  EXPECT_TRUE((*topo)->BindThread(pthread_self(), all).ok());
  EXPECT_TRUE(absl::IsInvalidArgument((*topo)->BindThread(pthread_self(), "x")));
  const size_t len = 4 * kMiB;
  void* mem = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  absl::Status bound = (*topo)->BindMemory(mem, len, "0");
  EXPECT_TRUE(bound.ok()) << bound;
  static_cast<char*>(mem)[0] = 1;
  munmap(mem, len);
}

TEST_F(PolicyTest, PlacementSaysWhatItBoundOrWhyNot) {
  const std::string& placement = static_cast<RuntimeImpl&>(*rt_).placement();
  EXPECT_FALSE(placement.empty());
  if (std::string(rt_->backend_name()) == "host") {
    EXPECT_NE(placement.find("no PCI address"), std::string::npos) << placement;
  }
  rt_.reset();
  Config c = TestConfig();
  c.placement = false;
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  EXPECT_NE(static_cast<RuntimeImpl&>(*rt_).placement().find("UHMM_PLACEMENT=none"), std::string::npos);
}

// ---- Hugetlb ranges ------------------------------------------------------------------------------

// As root, adds kNeeded 2 MiB hugepages to the system pool for this suite and takes the same number
// away at its end (each test process its own, so that suites running in parallel do not take each
// other's); otherwise the tests need them free already, or skip with the reason.
class HugetlbTest : public RuntimeTest {
 protected:
  static constexpr size_t kNeeded = 24;
  static void SetUpTestSuite() {
    if (geteuid() != 0) return;
    const long before = ReadNr();
    if (before >= 0 && WriteNr(before + kNeeded)) added_ = ReadNr() - before;
  }
  static void TearDownTestSuite() {
    if (added_ > 0) WriteNr(std::max(0L, ReadNr() - added_));
    added_ = 0;
  }
  void SetUp() override {
    if (FreeHugepages() < kNeeded) {
      GTEST_SKIP() << "needs " << kNeeded << " free 2 MiB hugepages (" << FreeHugepages()
                   << " free); run as root, or reserve them: sysctl vm.nr_hugepages=" << kNeeded;
    }
    RuntimeTest::SetUp();
  }
  static long ReadNr() {
    std::ifstream f("/proc/sys/vm/nr_hugepages");
    long n = -1;
    f >> n;
    return n;
  }
  static bool WriteNr(long n) {
    std::ofstream f("/proc/sys/vm/nr_hugepages");
    f << n;
    f.flush();
    return f.good();
  }
  uint64_t* AllocHuge(size_t bytes, uint64_t seed) {
    absl::StatusOr<void*> p = rt_->Allocate(bytes, Backing::kHugetlb);
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return nullptr;
    auto* w = static_cast<uint64_t*>(*p);
    for (size_t i = 0; i < bytes / 8; ++i) w[i] = Pattern(seed, i);
    return w;
  }
  static inline long added_ = 0;
};

TEST_F(HugetlbTest, BlocksMoveWholeAndOneFaultBringsABlockBack) {
  constexpr size_t kBytes = 8 * kMiB;
  uint64_t* p = AllocHuge(kBytes, 40);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(rt_->stats().hugetlb_ranges, 1u);
  // One page asked for: its whole block moves.
  ASSERT_TRUE(rt_->Migrate(p + kBlockSize / 8 + 512, kPageSize, 0).ok());
  std::vector<int32_t> res = Residency(p, kBytes);
  EXPECT_EQ(CountAt(res, 0), kBlockSize / kPageSize);
  EXPECT_EQ(res[kBlockSize / kPageSize], 0);
  EXPECT_EQ(res[0], kHost);
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  ASSERT_EQ(DeviceWrite(p, kBytes, 41), kBytes / kPageSize);
  const Stats before = rt_->stats();
  // Touch one page in the middle of each block, out of order: one fault per block.
  for (size_t b : {3, 1, 0, 2}) {
    const size_t w = (b * kBlockSize + 777 * 8) / 8;
    ASSERT_EQ(p[w], Pattern(41, w));
  }
  const Stats after = rt_->stats();
  EXPECT_EQ(after.cpu_faults - before.cpu_faults, kBytes / kBlockSize);
  EXPECT_EQ(after.pages_to_host - before.pages_to_host, kBytes / kPageSize);
  EXPECT_EQ(FirstMismatch(p, kBytes, 41), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(HugetlbTest, SequentialReadBackWithReadAheadAndThreadsIsCorrect) {
  constexpr size_t kBytes = 32 * kMiB;
  uint64_t* p = AllocHuge(kBytes, 50);
  ASSERT_NE(p, nullptr);
  for (int round = 0; round < 3; ++round) {
    ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
    ASSERT_EQ(DeviceWrite(p, kBytes, 51 + round), kBytes / kPageSize);
    std::vector<std::thread> readers;
    for (int t = 0; t < 2; ++t) {
      readers.emplace_back([&, t] {
        const size_t half = kBytes / 2 / 8;
        for (size_t w = t * half; w < (t + 1) * half; w += kPageSize / 8) {
          if (p[w] != Pattern(51 + round, w)) ADD_FAILURE() << "word " << w;
        }
      });
    }
    for (auto& th : readers) th.join();
    EXPECT_EQ(FirstMismatch(p, kBytes, 51 + round), -1);
  }
  ASSERT_TRUE(rt_->Free(p).ok());
}

sigjmp_buf g_jump;
void OnSigbus(int) { siglongjmp(g_jump, 1); }

TEST_F(HugetlbTest, CopyFailureOnFaultBackPoisonsTheWholeBlockOnly) {
#if defined(UHMM_UNDER_TSAN)
  GTEST_SKIP()
      << "its child starts runtime threads after a multithreaded fork, which ThreadSanitizer refuses";
#else
  constexpr size_t kBytes = 4 * kMiB;
  uint64_t* p = AllocHuge(kBytes, 60);
  ASSERT_NE(p, nullptr);
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  rt_->Free(p).IgnoreError();
  // In a child with its own runtime: the SIGBUS handler and the poisoned page stay there.
  const pid_t pid = fork();
  if (pid == 0) {
    Config c = TestConfig();
    c.sigbus_mode = SigbusMode::kAuto;
    Harness h;
    absl::StatusOr<std::unique_ptr<Runtime> > rt = Runtime::Create(c);
    if (!rt.ok()) _exit(10);
    h.rt_ = std::move(*rt);
    absl::StatusOr<void*> q = h.rt_->Allocate(kBytes, Backing::kHugetlb);
    if (!q.ok()) _exit(11);
    auto* w = static_cast<uint64_t*>(*q);
    for (size_t i = 0; i < kBytes / 8; ++i) w[i] = Harness::Pattern(61, i);
    if (!h.rt_->Migrate(w, kBytes, 0).ok()) _exit(12);
    Faults(*h.rt_, 0)->FailNext(InjectSite::kCopyDeviceToHost, 1);
    signal(SIGBUS, OnSigbus);
    volatile uint64_t* victim = w + (kBlockSize + 5 * kPageSize) / 8;
    if (sigsetjmp(g_jump, 1) == 0) {
      (void)*victim;
      _exit(13);  // no SIGBUS
    }
    std::vector<int32_t> res = h.Residency(w, kBytes);
    const size_t per_block = kBlockSize / kPageSize;
    if (h.rt_->stats().sigbus_delivered != 1) _exit(14);
    // Poison (Linux 6.6+) loses the whole 2 MiB page; tkill leaves it on the device.
    for (size_t i = per_block; i < 2 * per_block; ++i) {
      if (res[i] != kPoisoned && res[i] != 0) _exit(15);
    }
    if (res[per_block] != res[2 * per_block - 1]) _exit(16);
    // The other block is intact.
    if (h.FirstMismatch(w, kBlockSize, 61) != -1) _exit(17);
    h.rt_.reset();
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child died with signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "see the _exit codes in the test";
#endif
}

TEST_F(HugetlbTest, TooFewHugepagesIsAClearErrorAndAutoFallsBack) {
  // Far more than any concurrent test could free meanwhile.
  const size_t too_many = (FreeHugepages() + 1000) * kBlockSize;
  absl::StatusOr<void*> p = rt_->Allocate(too_many, Backing::kHugetlb);
  ASSERT_FALSE(p.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(p.status())) << p.status();
  EXPECT_NE(p.status().message().find("vm.nr_hugepages"), std::string::npos) << p.status();
  // AUTO picks 4 KiB pages for it instead, and hugetlb for a large range that fits.
  rt_.reset();
  Config c = TestConfig();
  c.hugetlb = HugetlbMode::kAuto;
  c.hugetlb_min_bytes = 4 * kMiB;
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  absl::StatusOr<void*> big = rt_->Allocate(too_many);
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(rt_->stats().hugetlb_ranges, 0u);
  absl::StatusOr<void*> fits = rt_->Allocate(4 * kMiB);
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_EQ(rt_->stats().hugetlb_ranges, 1u);
  absl::StatusOr<void*> small = rt_->Allocate(2 * kMiB);
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(rt_->stats().hugetlb_ranges, 1u) << "below hugetlb_min_bytes: 4 KiB pages";
  for (void* q : {*big, *fits, *small}) ASSERT_TRUE(rt_->Free(q).ok());
}

}  // namespace
}  // namespace uhmm::testing
