// Several devices in one runtime: blocks move between devices in one hop where the destination
// reaches the source (peer copies), else through RAM; a block maps one device at a time where
// devices share managed addresses, and a device error or a free during such a move loses nothing. Run with
// two devices on every backend configuration that has them (the emulated CUDA driver is given two with
// UHMM_FAKE_CUDA_DEVICES, with and without peer access).
#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "tests/test_util.h"

namespace uhmm::testing {
namespace {

// The emulated drivers read these at their first call: two GPUs (a real machine keeps its own).
const bool kTwoEmulatedGpus = setenv("UHMM_FAKE_CUDA_DEVICES", "2", /*overwrite=*/0) == 0 &&
                              setenv("UHMM_FAKE_ZE_DEVICES", "2", /*overwrite=*/0) == 0;

class MultiDeviceTest : public ::testing::Test, public Harness {
 public:
  void SetUp() override {
    Start(TwoDeviceConfig());
    UHMM_RETURN_IF_SKIPPED();
    if (rt_->device_count() < 2)
      GTEST_SKIP() << "the " << TestConfig().backend << " backend has one device here";
    access1_ = Access(*rt_, 1);
    faults1_ = Faults(*rt_, 1);
    ASSERT_NE(access1_, nullptr);
  }
  void TearDown() override { rt_.reset(); }

  static Config TwoDeviceConfig(size_t pool_bytes = 64 * kMiB) {
    Config c = TestConfig();
    c.host_devices = 2;
    c.cuda_devices = "all";
    c.ze_devices = "all";
    c.device_pool_bytes = pool_bytes;
    return c;
  }

  // Device-side write of `seed`'s pattern to every page of [p, p+bytes) through `access`.
  void WriteOn(DeviceAccess* access, uint64_t* p, size_t bytes, uint64_t seed) {
    std::vector<uint64_t> buf(kPageSize / 8);
    for (size_t off = 0; off < bytes; off += kPageSize) {
      absl::StatusOr<uint64_t> dev = rt_->DeviceAddress(reinterpret_cast<uint8_t*>(p) + off);
      ASSERT_TRUE(dev.ok()) << dev.status();
      for (size_t i = 0; i < buf.size(); ++i) buf[i] = Pattern(seed, off / 8 + i);
      ASSERT_TRUE(access->DeviceWrite(*dev, buf.data(), kPageSize).ok());
    }
  }
  // Pages of [p, p+bytes) whose device copy, read through `access`, is not `seed`'s pattern.
  size_t MismatchesOn(DeviceAccess* access, const uint64_t* p, size_t bytes, uint64_t seed) {
    size_t bad = 0;
    std::vector<uint64_t> buf(kPageSize / 8);
    for (size_t off = 0; off < bytes; off += kPageSize) {
      absl::StatusOr<uint64_t> dev = rt_->DeviceAddress(reinterpret_cast<const uint8_t*>(p) + off);
      EXPECT_TRUE(dev.ok()) << dev.status();
      if (!dev.ok() || !access->DeviceRead(*dev, buf.data(), kPageSize).ok()) {
        ++bad;
        continue;
      }
      for (size_t i = 0; i < buf.size(); ++i) {
        if (buf[i] != Pattern(seed, off / 8 + i)) {
          ++bad;
          break;
        }
      }
    }
    return bad;
  }

  // Whether device `to` reaches device `from`'s memory, and so copies from it in one hop (every
  // backend that reports peer access copies from peers).
  bool PeerCopies(int to, int from) {
    absl::StatusOr<Runtime::DeviceStats> d = rt_->device_stats(to);
    return d.ok() && ((d->peer_access >> from) & 1) != 0;
  }

  DeviceAccess* access1_ = nullptr;
  FaultInjector* faults1_ = nullptr;
};

TEST_F(MultiDeviceTest, BlocksMoveBetweenDevicesAndBackWithTheirData) {
  const size_t bytes = 4 * kMiB;
  uint64_t* p = AllocFilled(bytes, 1);
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  WriteOn(access0_, p, bytes, 2);
  for (int round = 0; round < 3; ++round) {
    const int to = round % 2 == 0 ? 1 : 0;
    DeviceAccess* on = to == 1 ? access1_ : access0_;
    const Stats before = rt_->stats();
    absl::Status s = rt_->Migrate(p, bytes, to);
    ASSERT_TRUE(s.ok()) << "round " << round << ": " << s;
    EXPECT_EQ(CountAt(Residency(p, bytes), to), bytes / kPageSize) << "round " << round;
    // One hop between peers; through RAM otherwise.
    const Stats after = rt_->stats();
    const bool peer = PeerCopies(to, 1 - to);
    EXPECT_EQ(after.pages_device_to_device - before.pages_device_to_device, peer ? bytes / kPageSize : 0u)
        << "round " << round;
    EXPECT_EQ(after.pages_to_host - before.pages_to_host, peer ? 0u : bytes / kPageSize) << "round " << round;
    EXPECT_EQ(MismatchesOn(on, p, bytes, 2 + round), 0u) << "round " << round;
    WriteOn(on, p, bytes, 3 + round);
  }
  EXPECT_EQ(FirstMismatch(p, bytes, 5), -1);  // the CPU reads the last device's writes
  ASSERT_TRUE(rt_->Free(p).ok());
  EXPECT_EQ(rt_->stats().device_pages_used, 0u);
}

TEST_F(MultiDeviceTest, HalvesOfOneBlockOnTwoDevicesKeepEveryByte) {
  // With one pointer a block maps one device: the second half's move takes the block from device 0,
  // whose half comes along in one hop where device 1 reaches device 0, else home first. Without
  // one pointer, each device keeps its half.
  const size_t bytes = 2 * kMiB;
  uint64_t* p = AllocFilled(bytes, 10);
  uint64_t* half = p + bytes / 2 / 8;
  ASSERT_TRUE(rt_->Migrate(p, bytes / 2, 0).ok());
  WriteOn(access0_, p, bytes / 2, 11);  // device 0 rewrites its half
  ASSERT_TRUE(rt_->Migrate(half, bytes / 2, 1).ok());
  WriteOn(access1_, half, bytes / 2, 12);  // device 1 rewrites the other half
  const std::vector<int32_t> res = Residency(p, bytes);
  const bool along = PeerCopies(1, 0);  // (only backends that share managed addresses have peers)
  EXPECT_EQ(CountAt(res, 1), (along ? 2 : 1) * bytes / 2 / kPageSize);
  EXPECT_EQ(CountAt(res, 0) + CountAt(res, kHost), along ? 0 : bytes / 2 / kPageSize);
  EXPECT_EQ(FirstMismatch(p, bytes / 2, 11), -1);     // device 0's writes survived the pull
  EXPECT_EQ(FirstMismatch(half, bytes / 2, 12), -1);  // and device 1's are there
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(MultiDeviceTest, TwoDevicesPullingTheSameBlocksLoseNothing) {
  const size_t bytes = 4 * kMiB;
  uint64_t* p = AllocFilled(bytes, 20);
  std::atomic<int> other_errors{0}, moved{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> pullers;
  for (int d = 0; d < 2; ++d) {
    pullers.emplace_back([&, d] {
      for (int i = 0; i < 40 && !stop.load(); ++i) {
        const size_t off = (static_cast<size_t>(i) * 3 + d) % 8 * (bytes / 8);
        absl::Status s = rt_->Migrate(reinterpret_cast<uint8_t*>(p) + off, bytes / 8, d);
        // Two devices pulling one block at the same moment may give up after a bounded wait, with
        // UNAVAILABLE saying so; nothing else is allowed.
        if (s.ok()) {
          ++moved;
        } else if (!absl::IsUnavailable(s) || s.message().find("pulling the same") == std::string::npos) {
          ADD_FAILURE() << s;
          ++other_errors;
          stop.store(true);
        }
      }
    });
  }
  // The CPU reads meanwhile: each read brings its page home from whichever device has it.
  int64_t bad_word = -1;
  for (int i = 0; i < 200 && !stop.load() && bad_word < 0; ++i) {
    const size_t w = (static_cast<size_t>(i) * 4099) % (bytes / 8);
    if (p[w] != Pattern(20, w)) bad_word = static_cast<int64_t>(w);
  }
  for (auto& t : pullers) t.join();
  EXPECT_EQ(bad_word, -1);
  EXPECT_EQ(other_errors.load(), 0);
  EXPECT_GT(moved.load(), 40);  // most moves succeed: giving up is for a tight race only
  EXPECT_EQ(FirstMismatch(p, bytes, 20), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
  EXPECT_EQ(rt_->stats().device_pages_used, 0u);
}

TEST_F(MultiDeviceTest, EvictionOnOneDeviceWhileTheOtherMigrates) {
  // Device 0's pool holds 8 MiB: cycling 16 MiB through it evicts, while device 1 takes and gives
  // back blocks of the same ranges.
  Start(TwoDeviceConfig(8 * kMiB));
  UHMM_RETURN_IF_SKIPPED();
  access1_ = Access(*rt_, 1);
  const size_t bytes = 16 * kMiB;
  uint64_t* p = AllocFilled(bytes, 30);
  std::atomic<int> moved{0};
  auto move = [&](size_t off, int device) {
    absl::Status s = rt_->Migrate(reinterpret_cast<uint8_t*>(p) + off, 2 * kMiB, device);
    if (s.ok()) {
      ++moved;
    } else if (!absl::IsUnavailable(s)) {
      ADD_FAILURE() << s;
    }
  };
  std::thread mover1([&] {
    for (int i = 0; i < 24; ++i) move(static_cast<size_t>(i * 5 % 8) * 2 * kMiB, 1);
  });
  for (int i = 0; i < 24; ++i) move(static_cast<size_t>(i % 8) * 2 * kMiB, 0);
  mover1.join();
  EXPECT_GT(moved.load(), 24);
  EXPECT_GT(rt_->stats().evicted_pages, 0u);
  EXPECT_EQ(FirstMismatch(p, bytes, 30), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
  EXPECT_EQ(rt_->stats().device_pages_used, 0u);
}

TEST_F(MultiDeviceTest, DeviceErrorMidMoveLosesNothingOnTheSource) {
  const size_t bytes = 2 * kMiB;
  uint64_t* p = AllocFilled(bytes, 40);
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  WriteOn(access0_, p, bytes, 41);
  ASSERT_NE(faults1_, nullptr);
  if (PeerCopies(1, 0)) {
    // One hop: device 1's engine reads device 0's pages, and fails. The move reports it, and the
    // pages come home through RAM from the window device 0 mapped them at, whole.
    faults1_->FailNext(InjectSite::kCopyHostToDevice, 1);
    absl::Status s = rt_->Migrate(p, bytes, 1);
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(CountAt(Residency(p, bytes), kHost), bytes / kPageSize);
    EXPECT_EQ(FirstMismatch(p, bytes, 41), -1);
    // Both fail: device 1 copying in, then device 0 copying home. The data stays on device 0,
    // which maps the block again: its kernels find it at the managed address, and the CPU too.
    ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
    WriteOn(access0_, p, bytes, 42);
    faults1_->FailNext(InjectSite::kCopyHostToDevice, 1);
    faults0_->FailNext(InjectSite::kCopyDeviceToHost, 1);
    s = rt_->Migrate(p, bytes, 1);
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(CountAt(Residency(p, bytes), 0), bytes / kPageSize);
    absl::StatusOr<uint64_t> at = rt_->DeviceAddress(p);
    ASSERT_TRUE(at.ok()) << at.status();
    EXPECT_EQ(*at, reinterpret_cast<uint64_t>(p)) << "device 0's pages are not at the block any more";
    std::vector<uint64_t> word(1);
    ASSERT_TRUE(access0_->DeviceRead(reinterpret_cast<uint64_t>(p), word.data(), 8).ok());
    EXPECT_EQ(word[0], Pattern(42, 0));
    EXPECT_EQ(FirstMismatch(p, bytes, 42), -1);
    // And the next move goes in one hop.
    ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
    WriteOn(access0_, p, bytes, 43);
    const uint64_t hops = rt_->stats().pages_device_to_device;
    ASSERT_TRUE(rt_->Migrate(p, bytes, 1).ok());
    EXPECT_EQ(rt_->stats().pages_device_to_device - hops, bytes / kPageSize);
    EXPECT_EQ(MismatchesOn(access1_, p, bytes, 43), 0u);
    ASSERT_TRUE(rt_->Free(p).ok());
    EXPECT_EQ(rt_->stats().device_pages_used, 0u);
    return;
  }
  // Device 0 fails the copy out: the move to device 1 reports it and the data stays on device 0.
  faults0_->FailNext(InjectSite::kCopyDeviceToHost, 1);
  absl::Status s = rt_->Migrate(p, bytes, 1);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(CountAt(Residency(p, bytes), 0), bytes / kPageSize);
  EXPECT_EQ(MismatchesOn(access0_, p, bytes, 41), 0u);
  // Device 1 fails the copy in: the data is home, where the failed step left it, and whole.
  faults1_->FailNext(InjectSite::kCopyHostToDevice, 1);
  s = rt_->Migrate(p, bytes, 1);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(CountAt(Residency(p, bytes), 1), 0u);
  EXPECT_EQ(FirstMismatch(p, bytes, 41), -1);
  ASSERT_TRUE(rt_->Migrate(p, bytes, 1).ok());  // the next try succeeds
  EXPECT_EQ(MismatchesOn(access1_, p, bytes, 41), 0u);
  ASSERT_TRUE(rt_->Free(p).ok());
  EXPECT_EQ(rt_->stats().device_pages_used, 0u);
}

TEST_F(MultiDeviceTest, FreeWhileADeviceToDeviceMoveIsInFlight) {
  for (int round = 0; round < 10; ++round) {
    const size_t bytes = 4 * kMiB;
    uint64_t* p = AllocFilled(bytes, 50);
    ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
    std::thread mover([&] {
      absl::Status s = rt_->Migrate(p, bytes, 1);
      // The free may come first: the range is gone (NOT_FOUND) or going (FAILED_PRECONDITION).
      if (!s.ok() && !absl::IsNotFound(s) && !absl::IsFailedPrecondition(s) && !absl::IsAborted(s)) {
        ADD_FAILURE() << s;
      }
    });
    if (round % 2) std::this_thread::yield();
    ASSERT_TRUE(rt_->Free(p).ok());
    mover.join();
  }
  EXPECT_TRUE(Eventually([&] { return rt_->stats().device_pages_used == 0; }));
}

TEST_F(MultiDeviceTest, SyncForEachDeviceLeavesDataWhereThatDeviceReachesIt) {
  // Before a kernel on device d, every managed page is on d or on a device whose memory d reaches
  // (peer access): a sync for one device must not use up the other's work list.
  const size_t bytes = 4 * kMiB + 8 * kPageSize;
  uint64_t* p = AllocFilled(bytes, 60);
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  EXPECT_EQ(CountAt(Residency(p, bytes), 0), bytes / kPageSize);
  ASSERT_TRUE(rt_->SyncForDevice(1, nullptr).ok());
  const std::vector<int32_t> res = Residency(p, bytes);
  // Without peer access everything moved to device 1; with it, it may stay on device 0.
  EXPECT_EQ(CountAt(res, 0) + CountAt(res, 1), bytes / kPageSize);
  EXPECT_EQ(MismatchesOn(access1_, p, bytes, 60), 0u);
  WriteOn(access1_, p, bytes, 61);  // a kernel on device 1 writes
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  EXPECT_EQ(MismatchesOn(access0_, p, bytes, 61), 0u);
  // The CPU writes one page: both devices have it to push again.
  p[5] = Pattern(62, 5);
  ASSERT_TRUE(rt_->SyncForDevice(1, nullptr).ok());
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  std::vector<uint64_t> page(kPageSize / 8);
  absl::StatusOr<uint64_t> dev = rt_->DeviceAddress(p);
  ASSERT_TRUE(dev.ok()) << dev.status();
  ASSERT_TRUE(access0_->DeviceRead(*dev, page.data(), kPageSize).ok());
  EXPECT_EQ(page[5], Pattern(62, 5));
  EXPECT_EQ(page[6], Pattern(61, 6));
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(MultiDeviceTest, KernelsTakingTurnsOnTwoDevicesSeeEachOthersWrites) {
  UHMM_SKIP_UNLESS_HOST_BACKEND();  // emulated launches (host::HostDeviceControls::RunKernel)
  ASSERT_TRUE(rt_->transparent_launch_enabled());
  const size_t bytes = 2 * kMiB + 4 * kPageSize;
  uint64_t* p = AllocFilled(bytes, 70);
  for (int turn = 0; turn < 6; ++turn) {
    host::HostDeviceControls* dev = host::LiveDevice(turn % 2);
    ASSERT_NE(dev, nullptr);
    size_t bad = 0;
    // The launch listener runs first (transparent launch): each kernel checks the last one's words
    // and writes its own, through its own device's mappings.
    ASSERT_TRUE(dev->RunKernel([&] {
                     for (size_t off = 0; off < bytes; off += kPageSize) {
                       absl::StatusOr<uint64_t> a = rt_->DeviceAddress(reinterpret_cast<uint8_t*>(p) + off);
                       auto* w = a.ok() ? static_cast<uint64_t*>(dev->DevicePointer(*a)) : nullptr;
                       if (w == nullptr) {
                         ++bad;
                         continue;
                       }
                       bad += w[0] != Pattern(70 + turn, off / 8);
                       for (size_t i = 0; i < kPageSize / 8; ++i) w[i] = Pattern(71 + turn, off / 8 + i);
                     }
                   })
                    .ok());
    EXPECT_EQ(bad, 0u) << "turn " << turn << " on device " << turn % 2;
  }
  EXPECT_EQ(FirstMismatch(p, bytes, 76), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(MultiDeviceTest, PeerAccessIsReportedPerDevice) {
  absl::StatusOr<Runtime::DeviceStats> d0 = rt_->device_stats(0), d1 = rt_->device_stats(1);
  ASSERT_TRUE(d0.ok() && d1.ok());
  // Symmetric on every backend here; never a device's own bit.
  EXPECT_EQ(d0->peer_access & 1, 0u);
  EXPECT_EQ(d1->peer_access & 2, 0u);
  EXPECT_EQ(d0->peer_access == 2, d1->peer_access == 1);
  const char* which = std::getenv("UHMM_TEST_BACKEND");
  if (which != nullptr && std::string_view(which) == "cuda-emulated") EXPECT_EQ(d0->peer_access, 2u);
  if (which != nullptr && std::string_view(which) == "cuda-emulated-nopeer") EXPECT_EQ(d0->peer_access, 0u);
  if (which != nullptr && std::string_view(which) == "level-zero-emulated") EXPECT_EQ(d0->peer_access, 2u);
  if (which != nullptr && std::string_view(which) == "level-zero-emulated-nopeer")
    EXPECT_EQ(d0->peer_access, 0u);
}

TEST_F(MultiDeviceTest, PreferredLocationOnAReachableDeviceKeepsALaunchsPagesThere) {
  const size_t bytes = 4 * kMiB;
  uint64_t* p = AllocFilled(bytes, 80);
  ASSERT_TRUE(rt_->Advise(p, bytes, Advice::kSetPreferredLocation, 0).ok());
  ASSERT_TRUE(rt_->Advise(p, bytes, Advice::kSetAccessedBy, 1).ok());
  // A launch on device 1: with peer access the pages go where they prefer to be and device 1 reads
  // them there; without it they must come to device 1.
  ASSERT_TRUE(rt_->SyncForDevice(1, nullptr).ok());
  const bool peer = rt_->device_stats(1)->peer_access & 1;
  EXPECT_EQ(CountAt(Residency(p, bytes), peer ? 0 : 1), bytes / kPageSize) << (peer ? "peer" : "no peer");
  EXPECT_EQ(MismatchesOn(access1_, p, bytes, 80), 0u);
  ASSERT_TRUE(rt_->Free(p).ok());
}

}  // namespace
}  // namespace uhmm::testing
