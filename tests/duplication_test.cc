// Read duplication and CPU write tracking (fault/write_tracker.h, VaBlock "duplicate"): a CPU read
// brings a page home and keeps its device copy; the next push to that device copies only the pages
// the CPU wrote; eviction, discards and other devices drop the copy; no write made before a push is
// ever lost. Skipped, with the reason, where the kernel cannot track writes (before Linux 6.7).
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/api/counters.h"
#include "runtime/api/runtime_impl.h"
#include "tests/test_util.h"

namespace uhmm::testing {
namespace {

class DuplicationTest : public RuntimeTest {
 public:
  void SetUp() override {
    RuntimeTest::SetUp();
    UHMM_RETURN_IF_SKIPPED();
    std::string why;
    if (!TracksWrites(*rt_, &why)) GTEST_SKIP() << "read duplication is " << why;
  }
  RuntimeImpl& impl() { return static_cast<RuntimeImpl&>(*rt_); }
  const Counters& counters() { return *impl().mm().counters; }
  // Reads one word of every page (CPU read faults bring the pages home).
  static uint64_t ReadEveryPage(const uint64_t* p, size_t bytes) {
    uint64_t sum = 0;
    for (size_t w = 0; w < bytes / 8; w += kPageSize / 8)
      sum += reinterpret_cast<const volatile uint64_t*>(p)[w];
    return sum;
  }
};

constexpr size_t kBytes = 4 * kMiB;
constexpr size_t kPages = kBytes / kPageSize;

TEST_F(DuplicationTest, CpuReadsKeepTheDeviceCopyAndTheNextPushCopiesNothing) {
  uint64_t* p = AllocFilled(kBytes, 1);
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  ASSERT_EQ(DeviceWrite(p, kBytes, 2), kPages);  // the device's result
  const Stats before = rt_->stats();
  const uint64_t kept = counters().duplicates_kept.load(), reused = counters().duplicates_reused.load();
  ReadEveryPage(p, kBytes);
  EXPECT_EQ(FirstMismatch(p, kBytes, 2), -1) << "the CPU does not see the device's result";
  EXPECT_EQ(CountAt(Residency(p, kBytes), kHost), kPages);
  EXPECT_EQ(counters().duplicates_kept.load() - kept, kPages) << "every page came home by a read";
  absl::StatusOr<std::vector<int32_t>> copies = rt_->DeviceCopies(p, kBytes);
  ASSERT_TRUE(copies.ok()) << copies.status();
  EXPECT_EQ(CountAt(*copies, 0), kPages) << "duplicates are not reported as copies on device 0";
  EXPECT_EQ(rt_->stats().device_pages_used, before.device_pages_used) << "device copies were freed";
  // Back to the device: nothing was written, so nothing is copied.
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  EXPECT_EQ(counters().duplicates_reused.load() - reused, kPages) << "pages the CPU only read were copied";
  copies = rt_->DeviceCopies(p, kBytes);
  ASSERT_TRUE(copies.ok()) << copies.status();
  EXPECT_EQ(CountAt(*copies, kNoLocation), kPages) << "pages on the device are not duplicates";
  EXPECT_EQ(CountAt(Residency(p, kBytes), 0), kPages);
  EXPECT_EQ(DeviceMismatches(p, kBytes, 2), 0u);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(DuplicationTest, PagesTheCpuWroteArePushedAndTheOthersAreNot) {
  uint64_t* p = AllocFilled(kBytes, 3);
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  ReadEveryPage(p, kBytes);  // all duplicates now
  // Rewrite every third page on the CPU (writes to write-protected duplicates, tracked).
  size_t written = 0;
  for (size_t pg = 0; pg < kPages; pg += 3, ++written) {
    for (size_t i = 0; i < kPageSize / 8; ++i) p[pg * kPageSize / 8 + i] = Pattern(4, pg * kPageSize / 8 + i);
  }
  const uint64_t reused = counters().duplicates_reused.load();
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  EXPECT_EQ(counters().duplicates_reused.load() - reused, kPages - written);
  // The device holds the CPU's writes where it wrote, the old data elsewhere.
  std::vector<uint64_t> buf(kPageSize / 8);
  for (size_t pg = 0; pg < kPages; ++pg) {
    absl::StatusOr<uint64_t> dev = rt_->DeviceAddress(p + pg * kPageSize / 8);
    ASSERT_TRUE(dev.ok()) << dev.status();
    ASSERT_TRUE(access0_->DeviceRead(*dev, buf.data(), kPageSize).ok());
    const uint64_t seed = pg % 3 == 0 ? 4 : 3;
    ASSERT_EQ(buf[7], Pattern(seed, pg * kPageSize / 8 + 7)) << "page " << pg;
  }
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(DuplicationTest, AWriteMadeBeforeAPushIsNeverLost) {
  // Rounds of: the device writes, the CPU reads (duplicates) and rewrites one word of some pages,
  // a push, the device checks. A write missed by tracking would leave the old word on the device.
  uint64_t* p = AllocFilled(kBytes, 5);
  for (int round = 0; round < 20; ++round) {
    ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
    ASSERT_EQ(DeviceWrite(p, kBytes, 100 + round), kPages);
    ReadEveryPage(p, kBytes);
    const size_t stride = 1 + round % 5;
    for (size_t pg = round % 7; pg < kPages; pg += stride)
      p[pg * kPageSize / 8 + round] = 0xabcdef00u + round;
    ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
    std::vector<uint64_t> buf(kPageSize / 8);
    for (size_t pg = 0; pg < kPages; ++pg) {
      absl::StatusOr<uint64_t> dev = rt_->DeviceAddress(p + pg * kPageSize / 8);
      ASSERT_TRUE(dev.ok()) << dev.status();
      ASSERT_TRUE(access0_->DeviceRead(*dev, buf.data(), kPageSize).ok());
      const bool wrote = pg >= static_cast<size_t>(round % 7) && (pg - round % 7) % stride == 0;
      const uint64_t want = wrote ? 0xabcdef00u + round : Pattern(100 + round, pg * kPageSize / 8 + round);
      ASSERT_EQ(buf[round], want) << "round " << round << " page " << pg;
    }
  }
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(DuplicationTest, AWriteFaultKeepsCopiesAndTheNextPushCopiesOnlyTheWrittenPage) {
  uint64_t* p = AllocFilled(kBytes, 6);
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  const uint64_t kept = counters().duplicates_kept.load(), reused = counters().duplicates_reused.load();
  const size_t used = rt_->stats().device_pages_used;
  p[0] = 1;  // a write: its granule comes home, the device copies stay
  const size_t home = CountAt(Residency(p, kBytes), kHost);
  ASSERT_GE(home, 1u);
  EXPECT_EQ(counters().duplicates_kept.load() - kept, home) << "the write fault's granule left no copies";
  EXPECT_EQ(rt_->stats().device_pages_used, used) << "device pages were freed";
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  EXPECT_EQ(counters().duplicates_reused.load() - reused, home - 1) << "only the written page needs a copy";
  absl::StatusOr<uint64_t> dev = rt_->DeviceAddress(p);
  ASSERT_TRUE(dev.ok()) << dev.status();
  uint64_t first = 0;
  ASSERT_TRUE(access0_->DeviceRead(*dev, &first, sizeof(first)).ok());
  EXPECT_EQ(first, 1u) << "the CPU's write did not reach the device";
  p[0] = Pattern(6, 0);
  EXPECT_EQ(FirstMismatch(p, kBytes, 6), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(DuplicationTest, APushOfWrittenPagesThatFailsLeavesNoStaleCopy) {
  // The push zaps the CPU mapping (which takes the pages' written marks) and then its copy fails:
  // a later CPU read maps the pages write-protected again, and they must not pass for clean copies.
  uint64_t* p = AllocFilled(kBytes, 7);
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  ReadEveryPage(p, kBytes);  // duplicates
  for (size_t w = 0; w < kBytes / 8; ++w) p[w] = Pattern(8, w);
  faults0_->FailNext(InjectSite::kCopyHostToDevice, 1);
  EXPECT_FALSE(rt_->Migrate(p, kBytes, 0).ok()) << "the injected copy failure was not reported";
  EXPECT_EQ(FirstMismatch(p, kBytes, 8), -1) << "the CPU's writes were lost on the host";
  ReadEveryPage(p, kBytes);  // maps whatever is still a duplicate write-protected
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  EXPECT_EQ(DeviceMismatches(p, kBytes, 8), 0u) << "the device kept a stale copy of pages the CPU wrote";
  EXPECT_EQ(FirstMismatch(p, kBytes, 8), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(DuplicationTest, EvictionDropsCopiesWithoutCopying) {
  uint64_t* p = AllocFilled(kBytes, 7);
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  ReadEveryPage(p, kBytes);
  p[0] = 8;  // one written duplicate: its host copy is the data, its device copy stale
  const Stats before = rt_->stats();
  const uint64_t dropped = counters().duplicates_dropped.load();
  ASSERT_TRUE(rt_->EvictDevice(0).ok());
  const Stats after = rt_->stats();
  EXPECT_EQ(counters().duplicates_dropped.load() - dropped, kPages);
  EXPECT_EQ(after.pages_to_host, before.pages_to_host) << "eviction copied duplicates home";
  EXPECT_EQ(after.device_pages_used, 0u);
  EXPECT_EQ(p[0], 8u);
  p[0] = Pattern(7, 0);
  EXPECT_EQ(FirstMismatch(p, kBytes, 7), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(DuplicationTest, ADiscardDropsTheCopy) {
  uint64_t* p = AllocFilled(kBytes, 9);
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  ReadEveryPage(p, kBytes);
  const size_t used = rt_->stats().device_pages_used;
  ASSERT_EQ(madvise(p, kMiB, MADV_DONTNEED), 0);
  EXPECT_TRUE(Eventually([&] { return rt_->stats().device_pages_used == used - kMiB / kPageSize; }))
      << "the discarded duplicates kept their device pages";
  EXPECT_EQ(p[0], 0u);
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  // The discarded MiB reads as zeros there now; the rest holds the data.
  EXPECT_EQ(DeviceMismatches(p, kBytes, 9), kMiB / kPageSize);
  for (size_t w = kMiB / 8; w < kBytes / 8; w += 509) ASSERT_EQ(p[w], Pattern(9, w)) << w;
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(DuplicationTest, ADuplicateMovingToAnotherDeviceDropsItsCopy) {
  Config c = TestConfig();
  if (c.backend == "host") {  // the emulated backend can have two devices
    c.host_devices = 2;
    rt_.reset();
    Start(c);
    UHMM_RETURN_IF_SKIPPED();
  }
  if (rt_->device_count() < 2) GTEST_SKIP() << "this configuration has one device";
  uint64_t* p = AllocFilled(kBytes, 10);
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  ReadEveryPage(p, kBytes);
  const uint64_t reused = counters().duplicates_reused.load();
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 1).ok());
  EXPECT_EQ(counters().duplicates_reused.load(), reused);
  EXPECT_EQ(CountAt(Residency(p, kBytes), 1), kPages);
  ASSERT_TRUE(rt_->Free(p).ok());
  EXPECT_EQ(rt_->stats().device_pages_used, 0u);
}

TEST_F(DuplicationTest, ConcurrentCpuWritersAndPushesLoseNothing) {
  // Threads each own a range: write a round's word on every page, read it all back (duplicates
  // made by read-ahead and faults), push, and check the device copy; another thread keeps pushing
  // every range to the device meanwhile.
  constexpr int kThreads = 3;
  constexpr size_t kRange = 1 * kMiB;
  std::vector<uint64_t*> bufs;
  for (int t = 0; t < kThreads; ++t) bufs.push_back(AllocFilled(kRange, 20 + t));
  std::atomic<bool> stop{false};
  std::atomic<size_t> bad{0};
  std::thread pusher([&] {
    while (!stop.load()) ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      uint64_t* p = bufs[t];
      std::vector<uint64_t> buf(kPageSize / 8);
      for (uint64_t round = 1; round <= 30; ++round) {
        for (size_t pg = 0; pg < kRange / kPageSize; ++pg) p[pg * kPageSize / 8] = round * 1000 + pg;
        ReadEveryPage(p, kRange);
        if (!rt_->Migrate(p, kRange, 0).ok()) {
          ++bad;
          return;
        }
        for (size_t pg = 0; pg < kRange / kPageSize; ++pg) {
          absl::StatusOr<uint64_t> dev = rt_->DeviceAddress(p + pg * kPageSize / 8);
          if (!dev.ok()) continue;  // the pusher or a fault moved it meanwhile: checked next round
          if (!access0_->DeviceRead(*dev, buf.data(), 8).ok()) ++bad;
          absl::StatusOr<uint64_t> again = rt_->DeviceAddress(p + pg * kPageSize / 8);
          if (again.ok() && *again == *dev && buf[0] != round * 1000 + pg) ++bad;
        }
        ReadEveryPage(p, kRange);  // duplicates again
      }
    });
  }
  for (auto& th : threads) th.join();
  stop = true;
  pusher.join();
  EXPECT_EQ(bad.load(), 0u) << "a device copy missed a CPU write made before its push";
  for (uint64_t* p : bufs) ASSERT_TRUE(rt_->Free(p).ok());
}

// A new range's pages are zero: the first push gives the device zeros (a fill, not a copy) where
// the CPU did not write, whether it read them or never touched them.
TEST_F(DuplicationTest, PagesNeverWrittenGetDeviceZerosInsteadOfACopy) {
  // Leave data in the pool's pages first, so that zeros on the device come from the fill.
  uint64_t* old = AllocFilled(kBytes, 13);
  ASSERT_TRUE(rt_->Migrate(old, kBytes, 0).ok());
  ASSERT_TRUE(rt_->Free(old).ok());
  absl::StatusOr<void*> mem = rt_->Allocate(kBytes);
  ASSERT_TRUE(mem.ok()) << mem.status();
  auto* p = static_cast<uint64_t*>(*mem);
  ReadEveryPage(p, kBytes / 2);  // the first half read, the second never touched
  size_t written = 0;
  for (size_t pg = 0; pg < kPages; pg += 8, ++written) p[pg * kPageSize / 8 + 3] = 1000 + pg;
  const uint64_t filled = rt_->stats().zero_pages_filled;
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  EXPECT_EQ(rt_->stats().zero_pages_filled - filled, kPages - written)
      << "pages the CPU never wrote were copied (or written ones were not)";
  EXPECT_EQ(CountAt(Residency(p, kBytes), 0), kPages);
  std::vector<uint64_t> buf(kPageSize / 8);
  for (size_t pg = 0; pg < kPages; ++pg) {
    absl::StatusOr<uint64_t> dev = rt_->DeviceAddress(p + pg * kPageSize / 8);
    ASSERT_TRUE(dev.ok()) << dev.status();
    ASSERT_TRUE(access0_->DeviceRead(*dev, buf.data(), kPageSize).ok());
    for (size_t i = 0; i < buf.size(); ++i) {
      const uint64_t want = pg % 8 == 0 && i == 3 ? 1000 + pg : 0;
      ASSERT_EQ(buf[i], want) << "page " << pg << " word " << i;
    }
  }
  for (size_t pg = 0; pg < kPages; ++pg) {
    ASSERT_EQ(p[pg * kPageSize / 8 + 3], pg % 8 == 0 ? 1000 + pg : 0u) << "page " << pg;
  }
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(DuplicationTest, ANewPageWrittenBeforeAFailedPushIsPushedLater) {
  // The failed push took the pages' written marks; they must not pass for zero pages afterwards.
  absl::StatusOr<void*> mem = rt_->Allocate(kBytes);
  ASSERT_TRUE(mem.ok()) << mem.status();
  auto* p = static_cast<uint64_t*>(*mem);
  for (size_t w = 0; w < kBytes / 8; ++w) p[w] = Pattern(14, w);
  faults0_->FailNext(InjectSite::kCopyHostToDevice, 1);
  EXPECT_FALSE(rt_->Migrate(p, kBytes, 0).ok()) << "the injected copy failure was not reported";
  ReadEveryPage(p, kBytes);  // maps the pages again
  const uint64_t filled = rt_->stats().zero_pages_filled;
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  EXPECT_EQ(rt_->stats().zero_pages_filled, filled) << "written pages were pushed as zeros";
  EXPECT_EQ(DeviceMismatches(p, kBytes, 14), 0u);
  EXPECT_EQ(FirstMismatch(p, kBytes, 14), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

// Pages of [p, p + bytes) that have a present CPU mapping (/proc/self/pagemap bit 63).
size_t PresentPages(const void* p, size_t bytes) {
  const int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  std::vector<uint64_t> entries(bytes / kPageSize);
  const off_t at = static_cast<off_t>(reinterpret_cast<uintptr_t>(p) / kPageSize * 8);
  const ssize_t n = pread(fd, entries.data(), entries.size() * 8, at);
  close(fd);
  size_t present = 0;
  for (size_t k = 0; n > 0 && k < static_cast<size_t>(n) / 8; ++k) present += entries[k] >> 63;
  return present;
}

// The kernel's reclaim unmaps a written page without leaving a write-protect marker: the page must
// not pass for an unwritten zero page when the CPU maps it again (nor, the same way, for a clean
// duplicate).
TEST_F(DuplicationTest, AWrittenPageReclaimedAndMappedAgainIsStillPushedAsWritten) {
  absl::StatusOr<void*> mem = rt_->Allocate(kBytes);
  ASSERT_TRUE(mem.ok()) << mem.status();
  auto* p = static_cast<uint64_t*>(*mem);
  for (size_t w = 0; w < kBytes / 8; ++w) p[w] = Pattern(15, w);
  // MADV_PAGEOUT unmaps pages only this mapping maps (with no swap they stay in the page cache).
  if (madvise(p, kBytes, MADV_PAGEOUT) != 0) GTEST_SKIP() << "MADV_PAGEOUT: " << strerror(errno);
  if (PresentPages(p, kBytes) == kPages) GTEST_SKIP() << "MADV_PAGEOUT left every page mapped";
  ReadEveryPage(p, kBytes);  // MINOR faults map them again
  const uint64_t filled = rt_->stats().zero_pages_filled;
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  EXPECT_EQ(rt_->stats().zero_pages_filled, filled) << "written pages were pushed as zeros";
  EXPECT_EQ(DeviceMismatches(p, kBytes, 15), 0u);
  EXPECT_EQ(FirstMismatch(p, kBytes, 15), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

// The same reclaim, racing with a zero-fill that is still mapping the rest of the faulting
// page's block (found by the fuzzer, config same_address, seed 60405387): the CPU writes the page
// the zero-fill mapped first, reclaim unmaps it, and an event makes the zero-fill start its mapping
// over. Mapping the written page write-protected again made it pass for an unwritten zero page, and
// the push gave the device zeros; pages the CPU maps must be left alone. A race: many rounds.
TEST_F(DuplicationTest, AWriteReclaimedWhileItsBlockIsStillBeingMappedIsPushed) {
  constexpr size_t kBlock = 2 * kMiB, kHole = 32, kHoleEnd = 96, kPage = 64, kWord = kPageSize / 8;
  absl::StatusOr<void*> other = rt_->Allocate(kPageSize);  // its discards raise events mid-mapping
  ASSERT_TRUE(other.ok()) << other.status();
  size_t reclaimed = 0;
  for (int round = 0; round < 60; ++round) {
    absl::StatusOr<void*> mem = rt_->Allocate(kBlock);
    ASSERT_TRUE(mem.ok()) << mem.status();
    auto* p = static_cast<uint64_t*>(*mem);
    ReadEveryPage(p, kBlock);  // one zero-fill maps the block write-protected
    // A hole in the middle: the next zero-fill meets mapped pages (one CONTINUE each) after it.
    ASSERT_EQ(madvise(p + kHole * kWord, (kHoleEnd - kHole) * kPageSize, MADV_DONTNEED), 0);
    const uint64_t want = Pattern(16, round);
    p[kPage * kWord + 1] = want;  // a missing fault: the zero-fill maps the hole, then the rest
    if (madvise(p + kHole * kWord, (kHoleEnd - kHole) * kPageSize, MADV_PAGEOUT) != 0)
      GTEST_SKIP() << "MADV_PAGEOUT: " << strerror(errno);
    reclaimed += PresentPages(p + kPage * kWord, kPageSize) == 0;
    ASSERT_EQ(madvise(*other, kPageSize, MADV_REMOVE), 0);
    ASSERT_TRUE(rt_->Migrate(p, kBlock, 0).ok());
    absl::StatusOr<uint64_t> dev = rt_->DeviceAddress(p + kPage * kWord);
    ASSERT_TRUE(dev.ok()) << dev.status();
    uint64_t got = 0;
    ASSERT_TRUE(access0_->DeviceRead(*dev + 8, &got, sizeof(got)).ok());
    ASSERT_EQ(got, want) << "round " << round << ": the device got zeros for a page the CPU wrote";
    ASSERT_EQ(p[kPage * kWord + 1], want) << "round " << round;
    ASSERT_TRUE(rt_->Free(p).ok());
  }
  ASSERT_TRUE(rt_->Free(*other).ok());
  if (reclaimed == 0) GTEST_SKIP() << "MADV_PAGEOUT never unmapped the written page";
}

TEST_F(DuplicationTest, CopiesQueryRefusesBadInputLikeResidency) {
  uint64_t* p = AllocFilled(kBytes, 12);
  EXPECT_EQ(rt_->DeviceCopies(nullptr, kPageSize).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rt_->DeviceCopies(p, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rt_->DeviceCopies(p, kBytes + kPageSize).status().code(), absl::StatusCode::kInvalidArgument);
  alignas(4096) static char unmanaged[kPageSize];
  EXPECT_EQ(rt_->DeviceCopies(unmanaged, kPageSize).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(rt_->DeviceCopies(reinterpret_cast<uint8_t*>(p) + 1, kPageSize).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(rt_->Free(p).ok());
  EXPECT_EQ(rt_->DeviceCopies(p, kPageSize).status().code(), absl::StatusCode::kNotFound);
}

TEST(DuplicationOffTest, WithoutItCpuReadsFreeTheDeviceCopies) {
  Harness h;
  Config c = TestConfig();
  c.read_duplication = false;
  h.Start(c);
  UHMM_RETURN_IF_SKIPPED();
  EXPECT_EQ(static_cast<RuntimeImpl&>(*h.rt_).write_tracking(), "off (UHMM_READ_DUPLICATION=0)");
  uint64_t* p = h.AllocFilled(kBytes, 11);
  ASSERT_TRUE(h.rt_->Migrate(p, kBytes, 0).ok());
  EXPECT_EQ(Harness::FirstMismatch(p, kBytes, 11), -1);
  EXPECT_EQ(h.rt_->stats().device_pages_used, 0u) << "copies were kept with duplication off";
  ASSERT_TRUE(h.rt_->Free(p).ok());
}

}  // namespace
}  // namespace uhmm::testing
