// Races on the fault path: concurrent faults on the same pages, frees and munmaps racing with
// migrations and faults, and migrations racing with CPU writers. Also run under the tsan preset.
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>

#include <atomic>
#include <barrier>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>
#include <vector>

#include "tests/test_util.h"

namespace uhmm::testing {
namespace {

using ConcurrencyTest = RuntimeTest;

size_t OpenFds() {
  size_t n = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

void EightThreadsFaultSamePages(Harness& t, std::unique_ptr<Runtime>& rt, FaultInjector* dev,
                                size_t granularity) {
  const size_t bytes = 2 * kMiB;
  const size_t npages = bytes / kPageSize;
  uint64_t* p = t.AllocFilled(bytes, 100);
  ASSERT_TRUE(rt->Migrate(p, bytes, 0).ok());
  ASSERT_EQ(t.DeviceWrite(p, bytes, 101), npages);  // the shadow (seed 100) is now stale
  const Stats before = rt->stats();
  constexpr int kThreads = 8;
  std::barrier start(kThreads);
  std::atomic<int64_t> stale{0};
  std::vector<std::thread> threads;
  for (int t_i = 0; t_i < kThreads; ++t_i) {
    threads.emplace_back([&] {
      start.arrive_and_wait();
      for (size_t w = 0; w < bytes / 8; w += 64) {  // every cache line of every page
        if (p[w] != Harness::Pattern(101, w)) stale.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  const Stats after = rt->stats();
  EXPECT_EQ(stale.load(), 0) << "threads read stale data";
  EXPECT_EQ(after.pages_to_host - before.pages_to_host, npages) << "a page migrated twice";
  EXPECT_GE(after.cpu_faults - before.cpu_faults, npages * kPageSize / granularity);
  // Every device page freed exactly once: by the faults, or (read duplication keeps the copies of
  // pages the CPU only read) by the free.
  ASSERT_TRUE(rt->Free(p).ok());
  for (uint64_t pfn = 0; pfn < npages; ++pfn) ASSERT_EQ(dev->page_free_count(pfn), 1u) << pfn;
}

TEST_F(ConcurrencyTest, EightThreadsFaultSamePagesEachMigratesOnce) {
  rt_.reset();
  Start(PerFaultConfig());
  UHMM_RETURN_IF_SKIPPED();
  EightThreadsFaultSamePages(*this, rt_, faults0_, TestConfig().fault_granularity);
}

TEST_F(ConcurrencyTest, EightThreadsFaultSamePagesWithReadAheadAndGrowth) {
  // The default policy: fewer faults, same data, still every page exactly once.
  EightThreadsFaultSamePages(*this, rt_, faults0_, kBlockSize);
}

TEST_F(ConcurrencyTest, EightThreadsFaultSamePagesEachMigratesOnceAt4KGranularity) {
  Config c = PerFaultConfig();
  c.fault_granularity = kPageSize;
  c.fault_threads = 4;
  rt_.reset();
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  EightThreadsFaultSamePages(*this, rt_, faults0_, kPageSize);
}

TEST_F(ConcurrencyTest, FreeWhileAnotherThreadMigratesLosesNothing) {
  const size_t fds = OpenFds();
  for (int round = 0; round < 20; ++round) {
    const size_t bytes = 4 * kMiB;
    uint64_t* p = AllocFilled(bytes, 110);
    std::atomic<bool> go{false};
    std::atomic<int> bad{0};
    std::thread migrator([&] {
      go.store(true);
      for (int i = 0;; ++i) {
        absl::Status s = rt_->Migrate(p, bytes, i % 2 == 0 ? 0 : kHost);
        if (s.code() == absl::StatusCode::kNotFound) return;  // freed under us: the clear answer
        if (!s.ok()) {
          bad.fetch_add(1);
          return;
        }
      }
    });
    while (!go.load()) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::microseconds(200 * (round % 5)));
    ASSERT_TRUE(rt_->Free(p).ok());
    migrator.join();
    EXPECT_EQ(bad.load(), 0);
    EXPECT_EQ(rt_->stats().device_pages_used, 0u) << "round " << round;
  }
  EXPECT_EQ(OpenFds(), fds) << "file descriptors leaked";
}

thread_local sigjmp_buf* t_segv_jump = nullptr;
void OnSegv(int) {
  if (t_segv_jump) siglongjmp(*t_segv_jump, 1);
  signal(SIGSEGV, SIG_DFL);
  raise(SIGSEGV);
}

TEST_F(ConcurrencyTest, FreeWhileAnotherThreadFaultsReturnsPagesToPool) {
  struct sigaction sa = {}, old = {};
  sa.sa_handler = OnSegv;
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGSEGV, &sa, &old), 0);
  for (int round = 0; round < 20; ++round) {
    const size_t bytes = 4 * kMiB;
    uint64_t* p = AllocFilled(bytes, 120);
    ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
    std::atomic<bool> go{false};
    std::atomic<int> wrong{0};
    std::thread reader([&] {
      sigjmp_buf jb;
      t_segv_jump = &jb;
      if (sigsetjmp(jb, 1) == 0) {
        go.store(true);
        // Fault every page back; once the range is freed, the next access hits unmapped memory.
        for (size_t w = 0; w < bytes / 8; w += kPageSize / 8) {
          if (p[w] != Pattern(120, w)) wrong.fetch_add(1);
        }
      }
      t_segv_jump = nullptr;
    });
    while (!go.load()) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::microseconds(100 * (round % 7)));
    ASSERT_TRUE(rt_->Free(p).ok());
    reader.join();
    EXPECT_EQ(wrong.load(), 0) << "read wrong data before the free";
    EXPECT_EQ(rt_->stats().device_pages_used, 0u) << "round " << round;
  }
  sigaction(SIGSEGV, &old, nullptr);
}

TEST_F(ConcurrencyTest, MunmapWhileMigratingAndFaultingReturnsPagesToPool) {
  for (int round = 0; round < 10; ++round) {
    const size_t bytes = 4 * kMiB;
    uint64_t* p = AllocFilled(bytes, 130);
    uint64_t* second_half = p + bytes / 16;
    ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
    std::atomic<bool> stop{false};
    std::atomic<int> wrong{0};
    std::thread faulter([&] {  // first half only: it stays mapped
      while (!stop.load()) {
        for (size_t w = 0; w < bytes / 16; w += kPageSize / 8) {
          if (p[w] != Pattern(130, w)) wrong.fetch_add(1);
        }
        (void)rt_->Migrate(p, bytes / 2, 0);
      }
    });
    std::thread migrator([&] {  // the whole range, racing with the munmap of the second half
      while (!stop.load()) (void)rt_->Migrate(p, bytes, 0);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    ASSERT_EQ(munmap(second_half, bytes / 2), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    stop.store(true);
    faulter.join();
    migrator.join();
    EXPECT_EQ(wrong.load(), 0);
    EXPECT_TRUE(Eventually([&] {
      std::vector<int32_t> res = Residency(p, bytes);
      return CountAt(res, kUnmapped) == bytes / kPageSize / 2;
    }));
    ASSERT_TRUE(rt_->Free(p).ok());
    EXPECT_EQ(rt_->stats().device_pages_used, 0u) << "round " << round;
  }
  EXPECT_GE(rt_->stats().events_unmap, 10u);
}

TEST_F(ConcurrencyTest, MunmapWholeRangeWithoutFreeReclaimsIt) {
  const size_t bytes = 2 * kMiB;
  uint64_t* p = AllocFilled(bytes, 140);
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  ASSERT_EQ(munmap(p, bytes), 0);
  EXPECT_TRUE(Eventually([&] { return rt_->stats().device_pages_used == 0; }));
  // The next call reaps it; the address is no longer managed.
  EXPECT_EQ(rt_->Migrate(p, bytes, 0).code(), absl::StatusCode::kNotFound);
}

TEST_F(ConcurrencyTest, CpuWritersAndMigrationsRaceWithoutLostUpdates) {
  const size_t bytes = 2 * kMiB;
  const size_t npages = bytes / kPageSize;
  absl::StatusOr<void*> mem = rt_->Allocate(bytes);
  ASSERT_TRUE(mem.ok());
  auto* p = static_cast<uint64_t*>(*mem);
  std::memset(p, 0, bytes);
  constexpr int kWriters = 3;
  std::atomic<bool> stop{false};
  std::atomic<int> lost{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      std::vector<uint64_t> mine(npages, 0);
      for (int iter = 0; !stop.load(); ++iter) {
        for (size_t pg = w; pg < npages; pg += kWriters) {
          uint64_t& word = p[pg * kPageSize / 8 + (iter % 512)];
          uint64_t& first = p[pg * kPageSize / 8];
          if (first != mine[pg]) {
            if (lost.fetch_add(1) < 5) {
              std::fprintf(stderr, "page %zu: read %llu, wrote %llu last\n", pg, (unsigned long long)first,
                           (unsigned long long)mine[pg]);
            }
          }
          first = ++mine[pg];
          word = first;
        }
      }
    });
  }
  threads.emplace_back([&] {
    std::mt19937 rng(7);
    while (!stop.load()) {
      const size_t first = rng() % npages;
      const size_t count = 1 + rng() % (npages - first);
      (void)rt_->Migrate(reinterpret_cast<uint8_t*>(p) + first * kPageSize, count * kPageSize,
                         rng() % 3 == 0 ? kHost : 0);
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  stop.store(true);
  for (auto& t : threads) t.join();
  EXPECT_EQ(lost.load(), 0) << "a CPU write was lost across a migration";
  EXPECT_GT(rt_->stats().pages_to_device, 0u);
  EXPECT_GT(rt_->stats().cpu_faults, 0u);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(ConcurrencyTest, ThreadsOversubscribingASmallPoolLoseNoData) {
  Config c = TestConfig();
  c.device_pool_bytes = 4 * kMiB;
  rt_.reset();
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  constexpr int kThreads = 4;
  const size_t bytes = 3 * kMiB;
  std::vector<uint64_t*> bufs;
  for (int i = 0; i < kThreads; ++i) bufs.push_back(AllocFilled(bytes, 150 + i));
  std::atomic<int> errors{0}, wrong{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      for (int round = 0; round < 10; ++round) {
        absl::Status s = rt_->Migrate(bufs[i], bytes, 0);
        // Under contention the pool can be momentarily all in flight; that is the one
        // acceptable refusal, and it must say so.
        if (!s.ok() && s.code() != absl::StatusCode::kResourceExhausted) errors.fetch_add(1);
        if (FirstMismatch(bufs[i], bytes, 150 + i) != -1) wrong.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(rt_->stats().evicted_pages, 0u);
  for (auto* b : bufs) ASSERT_TRUE(rt_->Free(b).ok());
  EXPECT_EQ(rt_->stats().device_pages_used, 0u);
}

TEST(FaultServiceTest, ThreadsAreNamedAndTheirCountIsConfigurable) {
  UHMM_SKIP_UNLESS_HOST_BACKEND();  // counts the host copy engine's thread too
  Config c = TestConfig();
  c.fault_threads = 3;
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Create(c);
  ASSERT_TRUE(rt.ok()) << rt.status();
  size_t fault_threads = 0, copy_threads = 0;
  for (auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    std::getline(comm, name);
    fault_threads += name.rfind("uhmm-fault-", 0) == 0;
    copy_threads += name == "uhmm-copy-0";
  }
  EXPECT_EQ(fault_threads, 3u);
  EXPECT_EQ(copy_threads, 1u);
}

}  // namespace
}  // namespace uhmm::testing
