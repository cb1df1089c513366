// Launch coherence: transparent mode (the backend calls the runtime before each kernel launch) and
// the explicit calls (uhmm_sync_for_device, uhmm_prefetch_on_queue). Emulated launches are the host
// backend's RunKernel, which calls the launch listener as the CUDA backend's CUPTI callback does.
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <string>
#include <thread>

#include "runtime/api/counters.h"
#include "runtime/api/runtime_impl.h"
#include "runtime/process/workers.h"
#include "tests/test_util.h"

namespace uhmm::testing {
namespace {

class LaunchTest : public RuntimeTest {
 public:
  void SetUp() override {
    UHMM_SKIP_UNLESS_HOST_BACKEND();  // emulated launches; the CUDA samples launch real kernels
    RuntimeTest::SetUp();
  }
  host::HostDeviceControls* host_dev() { return host::LiveDevice(0); }
  std::mutex note_mu_;
  std::string note_;  // the first page a kernel found missing

  // An emulated kernel that checks every page of [p, p+bytes) holds `seed`'s pattern in device
  // memory and rewrites it with `next`'s. Returns pages whose device copy was wrong or missing.
  size_t Kernel(uint64_t* p, size_t bytes, uint64_t seed, uint64_t next) {
    size_t bad = 0;
    absl::Status s = host_dev()->RunKernel([&] {
      // Device addresses are looked up inside the launch, after the launch listener ran (with one
      // pointer they are the managed addresses anyway).
      for (size_t off = 0; off < bytes; off += kPageSize) {
        absl::StatusOr<uint64_t> addr = rt_->DeviceAddress(reinterpret_cast<uint8_t*>(p) + off);
        auto* d = addr.ok() ? static_cast<uint64_t*>(host_dev()->DevicePointer(*addr)) : nullptr;
        if (d == nullptr) {
          ++bad;
          std::lock_guard<std::mutex> lock(note_mu_);
          if (note_.empty()) {
            note_ = "page at offset " + std::to_string(off) + " not on the device at launch: " +
                    (addr.ok() ? "device address not mapped" : addr.status().ToString());
          }
          continue;
        }
        const size_t base = off / 8;
        bool ok = true;
        for (size_t i = 0; i < kPageSize / 8; ++i) {
          ok &= d[i] == Pattern(seed, base + i);
          d[i] = Pattern(next, base + i);
        }
        bad += !ok;
      }
    });
    EXPECT_TRUE(s.ok()) << s;
    return bad;
  }
};

TEST_F(LaunchTest, TransparentLaunchShowsCpuWritesToTheKernelAndFaultsResultsBack) {
  ASSERT_TRUE(rt_->transparent_launch_enabled());
  const size_t bytes = 4 * kMiB + 12 * kPageSize;
  uint64_t* p = AllocFilled(bytes, 1);
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  const uint64_t syncs = rt_->stats().launch_syncs;
  // CPU writes after the sync fault the pages back; the next launch must push them again.
  for (size_t i = 0; i < bytes / 8; ++i) p[i] = Pattern(2, i);
  EXPECT_EQ(CountAt(Residency(p, bytes), kHost), bytes / kPageSize);
  EXPECT_EQ(Kernel(p, bytes, 2, 3), 0u) << "the kernel saw stale device memory";
  EXPECT_EQ(rt_->stats().launch_syncs, syncs + 1);
  EXPECT_EQ(CountAt(Residency(p, bytes), 0), bytes / kPageSize) << "CPU mappings were not taken away";
  EXPECT_EQ(FirstMismatch(p, bytes, 3), -1) << "the CPU did not see the kernel's result";
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(LaunchTest, LaunchAfterNoCpuActivityDoesNothing) {
  const size_t bytes = 2 * kMiB;
  uint64_t* p = AllocFilled(bytes, 4);
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  const Stats before = rt_->stats();
  EXPECT_EQ(Kernel(p, bytes, 4, 5), 0u);
  EXPECT_EQ(Kernel(p, bytes, 5, 6), 0u);
  const Stats after = rt_->stats();
  EXPECT_EQ(after.launch_syncs, before.launch_syncs);
  EXPECT_EQ(after.pages_to_device, before.pages_to_device);
  // One CPU touch faults one granule back; only that comes back at the next launch.
  EXPECT_EQ(p[0], Pattern(6, 0));
  EXPECT_EQ(Kernel(p, bytes, 6, 7), 0u);
  EXPECT_EQ(rt_->stats().launch_pages_to_device,
            before.launch_pages_to_device + TestConfig().fault_granularity / kPageSize);
  EXPECT_EQ(FirstMismatch(p, bytes, 7), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(LaunchTest, TransparentModeOffLeavesDataWhereItIs) {
  Config c = TestConfig();
  c.transparent_launch = false;
  rt_.reset();
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  EXPECT_FALSE(rt_->transparent_launch_enabled());
  const size_t bytes = 1 * kMiB;
  uint64_t* p = AllocFilled(bytes, 8);
  EXPECT_EQ(Kernel(p, bytes, 8, 9), bytes / kPageSize) << "nothing is on the device";
  EXPECT_EQ(CountAt(Residency(p, bytes), kHost), bytes / kPageSize);
  EXPECT_EQ(rt_->stats().launch_syncs, 0u);
  // The explicit call does what the launch hook would have done.
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  EXPECT_EQ(CountAt(Residency(p, bytes), 0), bytes / kPageSize);
  EXPECT_EQ(Kernel(p, bytes, 8, 9), 0u);
  EXPECT_EQ(FirstMismatch(p, bytes, 9), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(LaunchTest, SyncRefusesMoreManagedMemoryThanThePoolAndMovesNothing) {
  Config c = TestConfig();
  c.device_pool_bytes = 4 * kMiB;
  rt_.reset();
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  const size_t bytes = 6 * kMiB;
  uint64_t* p = AllocFilled(bytes, 10);
  absl::Status s = rt_->SyncForDevice(0, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("uhmm_prefetch_on_queue"), std::string::npos) << s;
  EXPECT_EQ(CountAt(Residency(p, bytes), kHost), bytes / kPageSize);
  // Explicit, queue-ordered prefetch of what fits still works.
  ASSERT_TRUE(rt_->PrefetchOnQueue(p, 4 * kMiB, 0, nullptr).ok());
  EXPECT_EQ(CountAt(Residency(p, bytes), 0), 4 * kMiB / kPageSize);
  ASSERT_TRUE(rt_->PrefetchOnQueue(p, 4 * kMiB, kHost, nullptr).ok());
  EXPECT_EQ(CountAt(Residency(p, bytes), kHost), bytes / kPageSize);
  EXPECT_EQ(FirstMismatch(p, bytes, 10), -1);
  EXPECT_EQ(rt_->PrefetchOnQueue(p, 3, 0, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rt_->SyncForDevice(5, nullptr).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(LaunchTest, WithOnePointerPartlyUsedBlocksCountAsWholeChunks) {
  Config c = TestConfig();
  c.host_same_address = true;
  c.device_pool_bytes = 4 * kMiB;
  rt_.reset();
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  // 3 MiB in bytes, but three 2 MiB blocks (one per range): more than the two chunks the pool has.
  std::vector<uint64_t*> bufs;
  for (int i = 0; i < 3; ++i) bufs.push_back(AllocFilled(1 * kMiB, 20 + i));
  absl::Status s = rt_->SyncForDevice(0, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  ASSERT_TRUE(rt_->Free(bufs[2]).ok());
  EXPECT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(CountAt(Residency(bufs[i], 1 * kMiB), 0), 1 * kMiB / kPageSize);
    EXPECT_EQ(FirstMismatch(bufs[i], 1 * kMiB, 20 + i), -1);
    ASSERT_TRUE(rt_->Free(bufs[i]).ok());
  }
}

TEST_F(LaunchTest, SameAddressModeGivesTheKernelTheManagedPointer) {
  Config c = TestConfig();
  c.host_same_address = true;
  rt_.reset();
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  const size_t bytes = 3 * kMiB;
  uint64_t* p = AllocFilled(bytes, 11);
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  for (size_t off = 0; off < bytes; off += 256 * 1024) {
    absl::StatusOr<uint64_t> dev = rt_->DeviceAddress(reinterpret_cast<uint8_t*>(p) + off);
    ASSERT_TRUE(dev.ok()) << dev.status();
    EXPECT_EQ(*dev, reinterpret_cast<uint64_t>(p) + off) << "one pointer for CPU and device";
  }
  EXPECT_EQ(Kernel(p, bytes, 11, 12), 0u);
  EXPECT_EQ(FirstMismatch(p, bytes, 12), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
  // The range's blocks are unmapped from the device when it is freed.
  EXPECT_EQ(host_dev()->DevicePointer(reinterpret_cast<uint64_t>(p)), nullptr);
}

// Launch coherence keeps its work per block: after the CPU brings one page home, a sync looks at
// that block only, however much is managed, and a sync with nothing new looks at none.
TEST_F(LaunchTest, SyncLooksOnlyAtBlocksWhosePagesCameHome) {
  constexpr size_t kBytes = 32 * kMiB;
  uint64_t* p = AllocFilled(kBytes, 30);
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  ASSERT_EQ(CountAt(Residency(p, kBytes), 0), kBytes / kPageSize);
  const Counters& c = *static_cast<RuntimeImpl&>(*rt_).mm().counters;
  const uint64_t checked = c.launch_blocks_checked.load(), syncs = c.launch_syncs.load();
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  EXPECT_EQ(c.launch_blocks_checked.load(), checked) << "nothing came home, yet blocks were checked";
  EXPECT_EQ(c.launch_syncs.load(), syncs);
  const size_t w = 5 * kBlockSize / 8 + 1000;  // block 5
  p[w] = Pattern(30, w);                       // a CPU write (same value) faults its granule home
  const Stats before = rt_->stats();
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  const Stats after = rt_->stats();
  EXPECT_EQ(c.launch_blocks_checked.load() - checked, 1u) << "one block came home; the others were looked at";
  EXPECT_GT(after.launch_pages_to_device - before.launch_pages_to_device, 0u);
  EXPECT_EQ(CountAt(Residency(p, kBytes), 0), kBytes / kPageSize) << "the written page was not pushed";
  EXPECT_EQ(Kernel(p, kBytes, 30, 31), 0u) << note_;
  EXPECT_EQ(FirstMismatch(p, kBytes, 31), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

// Launch pushes of whole blocks run on the caller and idle migration workers; with every worker
// busy the caller pushes everything itself (no wait for a worker), and either way every CPU write
// arrives.
TEST_F(LaunchTest, SyncPushesEveryBlockWhetherWorkersHelpOrAreBusy) {
  rt_.reset();
  Config c = TestConfig();
  c.migration_threads = 2;
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  constexpr size_t kBytes = 16 * kMiB;  // 8 blocks
  constexpr size_t kPageWords = kPageSize / 8;
  uint64_t* p = AllocFilled(kBytes, 40);
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  const Mm& mm = static_cast<RuntimeImpl&>(*rt_).mm();
  for (bool busy : {true, false}) {
    SCOPED_TRACE(busy ? "workers busy" : "workers idle");
    const uint64_t seed = busy ? 41 : 43;
    for (size_t w = 0; w < kBytes / 8; w += kPageWords)
      p[w] = Pattern(seed, w);  // the first word of every page
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    if (busy) {
      for (int i = 0; i < c.migration_threads; ++i)
        ASSERT_TRUE(mm.workers->Post([released] { released.wait(); }));
    }
    const Stats before = rt_->stats();
    ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
    release.set_value();
    EXPECT_GE(rt_->stats().launch_pages_to_device - before.launch_pages_to_device, kBytes / kPageSize);
    EXPECT_EQ(CountAt(Residency(p, kBytes), 0), kBytes / kPageSize) << "a block was left on the host";
    // The kernel sees every CPU write, and the old data beside it.
    size_t bad = 0;
    absl::Status s = host_dev()->RunKernel([&] {
      for (size_t w = 0; w < kBytes / 8; w += kPageWords) {
        absl::StatusOr<uint64_t> addr = rt_->DeviceAddress(p + w);
        auto* d = addr.ok() ? static_cast<uint64_t*>(host_dev()->DevicePointer(*addr)) : nullptr;
        if (d == nullptr || d[0] != Pattern(seed, w) || d[1] != Pattern(40, w + 1)) ++bad;
      }
    });
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(bad, 0u) << "the device copy misses CPU writes";
    for (size_t w = 0; w < kBytes / 8; w += kPageWords) p[w] = Pattern(40, w);  // back to one pattern
    ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  }
  EXPECT_EQ(FirstMismatch(p, kBytes, 40), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

// Threads that each own a range loop: CPU writes round r, launch a kernel that checks round r in
// device memory and writes r + 1, CPU checks r + 1. With `signals`, another thread keeps
// interrupting them with SIGUSR1, which makes the kernel repeat pending faults (stale messages).
void RunCpuGpuRounds(LaunchTest& t, int threads, int rounds, bool signals) {
  const size_t bytes = 1 * kMiB + 3 * kPageSize;
  std::vector<uint64_t*> bufs;
  for (int i = 0; i < threads; ++i) bufs.push_back(t.AllocFilled(bytes, 0));
  std::atomic<size_t> bad_kernel{0}, bad_cpu{0};
  std::vector<std::atomic<pid_t>> tids(threads);
  std::atomic<int> running{threads};
  std::vector<std::thread> workers;
  for (int i = 0; i < threads; ++i) {
    workers.emplace_back([&, i] {
      tids[i] = static_cast<pid_t>(syscall(SYS_gettid));
      uint64_t* p = bufs[i];
      for (int r = 1; r <= rounds; ++r) {
        const uint64_t seed = uint64_t(i) * 1000 + 2 * r;
        for (size_t w = 0; w < bytes / 8; ++w) p[w] = Harness::Pattern(seed, w);
        bad_kernel += t.Kernel(p, bytes, seed, seed + 1);
        if (Harness::FirstMismatch(p, bytes, seed + 1) != -1) ++bad_cpu;
      }
      --running;
    });
  }
  std::thread storm;
  if (signals) {
    storm = std::thread([&] {
      while (running.load() > 0) {
        for (auto& tid : tids) {
          if (pid_t id = tid.load()) syscall(SYS_tgkill, getpid(), id, SIGUSR1);
        }
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    });
  }
  for (auto& th : workers) th.join();
  if (storm.joinable()) storm.join();
  EXPECT_EQ(bad_kernel.load(), 0u) << "a kernel saw stale device memory; " << t.note_;
  EXPECT_EQ(bad_cpu.load(), 0u) << "the CPU missed a kernel's result";
  for (uint64_t* p : bufs) ASSERT_TRUE(t.rt_->Free(p).ok());
  EXPECT_EQ(t.rt_->stats().device_pages_used, 0u);
}

TEST_F(LaunchTest, ConcurrentLaunchesAndCpuPhasesLoseNothing) {
  // Launch passes from one thread migrate the others' ranges while they are in their CPU phase.
  RunCpuGpuRounds(*this, 4, 12, /*signals=*/false);
}

TEST_F(LaunchTest, SignalsDuringFaultsDoNotPullDataFromUnderAKernel) {
  struct sigaction sa = {}, old = {};
  sa.sa_handler = [](int) {};
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, &old);
  RunCpuGpuRounds(*this, 3, 12, /*signals=*/true);
  sigaction(SIGUSR1, &old, nullptr);
  std::printf("stale fault messages answered with a wake: %llu\n",
              static_cast<unsigned long long>(rt_->stats().stale_faults));
}

}  // namespace
}  // namespace uhmm::testing
