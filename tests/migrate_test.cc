// Behaviour tests of migration and CPU fault-back on the host backend (hmm-tests.c style names).
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "runtime/api/runtime_impl.h"
#include "runtime/mm/device_table.h"
#include "runtime/mm/page_pool.h"
#include "tests/test_util.h"

namespace uhmm::testing {
namespace {

using MigrateTest = RuntimeTest;

TEST_F(MigrateTest, CpuReadsAndWritesAfterMigrateToDevice) {
  const size_t bytes = 1 * kMiB;
  uint64_t* p = AllocFilled(bytes, 1);
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  EXPECT_EQ(CountAt(Residency(p, bytes), 0), bytes / kPageSize);
  EXPECT_EQ(rt_->stats().pages_to_device, bytes / kPageSize);
  // Reading faults every page back.
  EXPECT_EQ(FirstMismatch(p, bytes, 1), -1);
  EXPECT_EQ(CountAt(Residency(p, bytes), kHost), bytes / kPageSize);
  // Writes after another migration land and survive a round trip.
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  for (size_t i = 0; i < bytes / 8; ++i) p[i] = Pattern(2, i);
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  ASSERT_TRUE(rt_->Migrate(p, bytes, kHost).ok());
  EXPECT_EQ(FirstMismatch(p, bytes, 2), -1);
  EXPECT_GT(rt_->stats().cpu_faults, 0u);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(MigrateTest, CpuSeesWhatTheDeviceWrote) {
  const size_t bytes = 2 * kMiB;
  uint64_t* p = AllocFilled(bytes, 3);
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  ASSERT_EQ(DeviceWrite(p, bytes, 4), bytes / kPageSize);
  EXPECT_EQ(FirstMismatch(p, bytes, 4), -1);  // not the stale shadow (seed 3)
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(MigrateTest, MigrateFaultHalfBackThenMigrateMixedRange) {
  const size_t bytes = 4 * kMiB;
  uint64_t* p = AllocFilled(bytes, 5);
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  // Touch (write) the second half on the CPU: it faults back; the first half stays on the device.
  const size_t half_words = bytes / 16;
  for (size_t i = half_words; i < bytes / 8; ++i) p[i] = Pattern(6, i);
  std::vector<int32_t> res = Residency(p, bytes);
  for (size_t pg = 0; pg < res.size(); ++pg) {
    ASSERT_EQ(res[pg], pg < res.size() / 2 ? 0 : kHost) << "page " << pg;
  }
  EXPECT_EQ(rt_->stats().pages_to_host, bytes / kPageSize / 2);
  // Migrate the mixed range again: only the host half moves.
  const uint64_t before = rt_->stats().pages_to_device;
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  EXPECT_EQ(rt_->stats().pages_to_device - before, bytes / kPageSize / 2);
  EXPECT_EQ(CountAt(Residency(p, bytes), 0), bytes / kPageSize);
  for (size_t i = 0; i < bytes / 8; ++i) {
    ASSERT_EQ(p[i], Pattern(i < half_words ? 5 : 6, i)) << "word " << i;
  }
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(MigrateTest, MigrateTenTimesThereAndBack) {
  const size_t bytes = 3 * kMiB + 5 * kPageSize;  // not a block multiple
  uint64_t* p = AllocFilled(bytes, 7);
  for (int round = 0; round < 10; ++round) {
    ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok()) << "round " << round;
    ASSERT_EQ(CountAt(Residency(p, bytes), 0), bytes / kPageSize);
    if (round % 2 == 0) {
      ASSERT_TRUE(rt_->Migrate(p, bytes, kHost).ok());  // explicit prefetch back
    }
    p[round] ^= 1;  // CPU write (faults back what is still on the device)
    p[round] ^= 1;
    ASSERT_EQ(FirstMismatch(p, bytes, 7), -1) << "round " << round;
  }
  EXPECT_EQ(rt_->stats().pages_to_device, 10 * bytes / kPageSize);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(MigrateTest, EvictEverythingThenReadOnCpu) {
  const size_t bytes = 8 * kMiB;
  uint64_t* p = AllocFilled(bytes, 8);
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  ASSERT_EQ(DeviceWrite(p, bytes, 9), bytes / kPageSize);
  EXPECT_EQ(rt_->stats().device_pages_used, bytes / kPageSize);
  ASSERT_TRUE(rt_->EvictDevice(0).ok());
  EXPECT_EQ(rt_->stats().device_pages_used, 0u);
  EXPECT_EQ(rt_->stats().evicted_pages, bytes / kPageSize);
  EXPECT_EQ(CountAt(Residency(p, bytes), kHost), bytes / kPageSize);
  const uint64_t faults = rt_->stats().cpu_faults;
  EXPECT_EQ(FirstMismatch(p, bytes, 9), -1);
  EXPECT_EQ(rt_->stats().cpu_faults, faults);  // eviction mapped the pages: no fault needed
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(MigrateTest, PoolExhaustionEvictsLeastRecentlyUsedWithoutLoss) {
  Config c = TestConfig();
  c.device_pool_bytes = 4 * kMiB;  // two root chunks
  rt_.reset();
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  const size_t bytes = 2 * kMiB;
  std::vector<uint64_t*> bufs;
  for (int i = 0; i < 4; ++i) bufs.push_back(AllocFilled(bytes, 20 + i));
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(rt_->Migrate(bufs[i], bytes, 0).ok()) << i;
    ASSERT_EQ(DeviceWrite(bufs[i], bytes, 30 + i), bytes / kPageSize);
  }
  // Only the two most recent buffers fit; the two oldest went back to the host.
  EXPECT_EQ(CountAt(Residency(bufs[0], bytes), kHost), bytes / kPageSize);
  EXPECT_EQ(CountAt(Residency(bufs[1], bytes), kHost), bytes / kPageSize);
  EXPECT_EQ(CountAt(Residency(bufs[2], bytes), 0), bytes / kPageSize);
  EXPECT_EQ(CountAt(Residency(bufs[3], bytes), 0), bytes / kPageSize);
  EXPECT_EQ(rt_->stats().evicted_chunks, 2u);
  EXPECT_EQ(rt_->stats().evicted_pages, 2 * bytes / kPageSize);
  EXPECT_LE(rt_->stats().device_pages_used, rt_->stats().device_pages_total);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(FirstMismatch(bufs[i], bytes, 30 + i), -1) << "buffer " << i;
    ASSERT_TRUE(rt_->Free(bufs[i]).ok());
  }
}

TEST_F(MigrateTest, OversubscribedRangeMigratesThroughEviction) {
  Config c = TestConfig();
  c.device_pool_bytes = 4 * kMiB;
  rt_.reset();
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  const size_t bytes = 16 * kMiB;  // 4x the pool
  uint64_t* p = AllocFilled(bytes, 40);
  // One request cannot be resident at once: an error, not OK with pages left behind.
  absl::Status whole = rt_->Migrate(p, bytes, 0);
  EXPECT_EQ(whole.code(), absl::StatusCode::kResourceExhausted) << whole;
  EXPECT_NE(whole.message().find("pool"), std::string::npos) << whole;
  // Pool-sized requests each end fully resident, evicting the one before.
  for (size_t off = 0; off < bytes; off += 4 * kMiB) {
    ASSERT_TRUE(rt_->Migrate(reinterpret_cast<uint8_t*>(p) + off, 4 * kMiB, 0).ok());
    EXPECT_EQ(CountAt(Residency(reinterpret_cast<uint8_t*>(p) + off, 4 * kMiB), 0), 4 * kMiB / kPageSize);
  }
  std::vector<int32_t> res = Residency(p, bytes);
  EXPECT_EQ(CountAt(res, 0), 4 * kMiB / kPageSize);  // the last 4 MiB stay
  EXPECT_EQ(FirstMismatch(p, bytes, 40), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
  EXPECT_EQ(rt_->stats().device_pages_used, 0u);
}

TEST_F(MigrateTest, PageFreeFiresOncePerFreedPageAndRefcountsStayPositive) {
  // Without read duplication, which would keep the device copies of what faults bring home.
  Config c = TestConfig();
  c.read_duplication = false;
  rt_.reset();
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  const size_t bytes = 2 * kMiB;
  uint64_t* p = AllocFilled(bytes, 50);
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  EXPECT_EQ(faults0_->page_free_total(), 0u);
  // Fault one page back: exactly the pages of its granule are freed, once each.
  p[0] = Pattern(50, 0);
  const uint64_t gran_pages = TestConfig().fault_granularity / kPageSize;
  EXPECT_EQ(faults0_->page_free_total(), gran_pages);
  ASSERT_TRUE(rt_->Free(p).ok());
  EXPECT_EQ(faults0_->page_free_total(), bytes / kPageSize);
  for (uint64_t pfn = 0; pfn < bytes / kPageSize; ++pfn) {
    ASSERT_EQ(faults0_->page_free_count(pfn), 1u) << "pfn " << pfn;
  }
  EXPECT_EQ(rt_->stats().device_pages_used, 0u);
  // Reuse: the same descriptors go round again (a refcount reaching 0 would abort the process).
  uint64_t* q = AllocFilled(bytes, 51);
  ASSERT_TRUE(rt_->Migrate(q, bytes, 0).ok());
  ASSERT_TRUE(rt_->Migrate(q, bytes, kHost).ok());
  for (uint64_t pfn = 0; pfn < bytes / kPageSize; ++pfn) ASSERT_EQ(faults0_->page_free_count(pfn), 2u);
  EXPECT_EQ(FirstMismatch(q, bytes, 51), -1);
  ASSERT_TRUE(rt_->Free(q).ok());
}

// With one pointer an address has exactly one device page. A thread that drops it from its block
// (a discard, a poison, a finalize) frees it just after its block lock, so a migration of that
// address may find it still in use for a moment: it must wait, not fail.
TEST_F(MigrateTest, WithOnePointerAMigrationWaitsForItsAddressesDevicePageToBeFreed) {
  if (!TestingHostBackend()) GTEST_SKIP() << "the host backend's one-pointer mode";
  Config c = TestConfig();
  c.host_same_address = true;
  rt_.reset();
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  const size_t bytes = 2 * kMiB;
  uint64_t* p = AllocFilled(bytes, 70);
  ASSERT_TRUE(rt_->Migrate(p, kPageSize, 0).ok());  // binds a chunk to the block
  uint64_t* page5 = p + 5 * kPageSize / 8;
  // A straggler still holds page 5's device page (what a discard does between its block lock and
  // its put_page), and lets go 100 ms later.
  PagePool& pool = *(*static_cast<RuntimeImpl&>(*rt_).mm().devices)[0].pool;
  absl::StatusOr<Page*> held = pool.TryAlloc(reinterpret_cast<uintptr_t>(page5));
  ASSERT_TRUE(held.ok() && *held != nullptr) << held.status();
  std::thread straggler([page = *held] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    put_page(page);
  });
  const absl::Status s = rt_->Migrate(page5, kPageSize, 0);
  straggler.join();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(CountAt(Residency(page5, kPageSize), 0), 1u);
  size_t read = 0;
  EXPECT_EQ(DeviceMismatches(p, 8 * kPageSize, 70, &read), 0u);  // pages 0 and 5 are on the device
  EXPECT_EQ(read, 2u);
  EXPECT_EQ(FirstMismatch(p, bytes, 70), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(MigrateTest, TwoDevicesMigrateThroughHost) {
  Config c = TestConfig();
  c.host_devices = 2;
  rt_.reset();
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  if (rt_->device_count() < 2) GTEST_SKIP() << "the " << c.backend << " backend has one device here";
  const size_t bytes = 1 * kMiB;
  uint64_t* p = AllocFilled(bytes, 60);
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  ASSERT_TRUE(rt_->Migrate(p, bytes, 1).ok());
  EXPECT_EQ(CountAt(Residency(p, bytes), 1), bytes / kPageSize);
  EXPECT_EQ(FirstMismatch(p, bytes, 60), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(MigrateTest, DeviceCopyFailureDuringMigrationLeavesDataOnHost) {
  const size_t bytes = 1 * kMiB;
  uint64_t* p = AllocFilled(bytes, 70);
  faults0_->FailNext(InjectSite::kCopyHostToDevice, 1);
  absl::Status s = rt_->Migrate(p, bytes, 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_NE(s.message().find("injected fault"), std::string::npos) << s;
  EXPECT_EQ(CountAt(Residency(p, bytes), kHost), bytes / kPageSize);
  EXPECT_EQ(rt_->stats().device_pages_used, 0u);
  EXPECT_EQ(FirstMismatch(p, bytes, 70), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(MigrateTest, DeviceAllocationFailureIsReportedAndLosesNothing) {
  const size_t bytes = 1 * kMiB;
  uint64_t* p = AllocFilled(bytes, 71);
  faults0_->FailNext(InjectSite::kChunkAlloc, 1);
  absl::Status s = rt_->Migrate(p, bytes, 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_EQ(CountAt(Residency(p, bytes), kHost), bytes / kPageSize);
  EXPECT_EQ(FirstMismatch(p, bytes, 71), -1);
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());  // the next allocation succeeds
  EXPECT_EQ(FirstMismatch(p, bytes, 71), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(MigrateTest, ApplicationMadviseDontneedDiscardsLikeAnonymousMemory) {
  const size_t bytes = 1 * kMiB;
  uint64_t* p = AllocFilled(bytes, 80);
  ASSERT_TRUE(rt_->Migrate(p, bytes / 2, 0).ok());
  ASSERT_EQ(madvise(p, bytes, MADV_DONTNEED), 0);
  ASSERT_TRUE(Eventually([&] { return rt_->stats().device_pages_used == 0; }));
  for (size_t i = 0; i < bytes / 8; ++i) ASSERT_EQ(p[i], 0u) << "word " << i;
  EXPECT_GE(rt_->stats().events_remove, 1u);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(MigrateTest, MremapOfManagedRangeKeepsData) {
  const size_t bytes = 1 * kMiB;
  uint64_t* p = AllocFilled(bytes, 81);
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  ASSERT_EQ(DeviceWrite(p, bytes, 82), bytes / kPageSize);
  void* dest = mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);  // a free spot
  ASSERT_NE(dest, MAP_FAILED);
  void* moved = mremap(p, bytes, bytes, MREMAP_MAYMOVE | MREMAP_FIXED, dest);
  ASSERT_NE(moved, MAP_FAILED) << strerror(errno);
  const int64_t mismatch = FirstMismatch(static_cast<uint64_t*>(moved), bytes, 82);
  const Stats st = rt_->stats();
  EXPECT_EQ(mismatch, -1) << "faults " << st.cpu_faults << " unmanaged " << st.unmanaged_faults << " remaps "
                          << st.events_remap << " to_host " << st.pages_to_host;
  EXPECT_GE(rt_->stats().events_remap, 1u);
  EXPECT_TRUE(Eventually([&] { return rt_->stats().device_pages_used == 0; }));
  munmap(moved, bytes);
  // The range is gone from uhmm's view: freeing it now reports it clearly.
  EXPECT_EQ(rt_->Free(p).code(), absl::StatusCode::kNotFound);
}

TEST_F(MigrateTest, FaultBringsBackItsGranuleOnly) {
  const size_t bytes = 2 * kMiB;
  const size_t gran_pages = TestConfig().fault_granularity / kPageSize;
  uint64_t* p = AllocFilled(bytes, 90);
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  // Touch one page in the middle of the third granule.
  const size_t touched = 2 * gran_pages + gran_pages / 2;
  EXPECT_EQ(p[touched * kPageSize / 8], Pattern(90, touched * kPageSize / 8));
  std::vector<int32_t> res = Residency(p, bytes);
  for (size_t pg = 0; pg < res.size(); ++pg) {
    const bool in_granule = pg / gran_pages == 2;
    ASSERT_EQ(res[pg], in_granule ? kHost : 0) << "page " << pg;
  }
  EXPECT_EQ(rt_->stats().pages_to_host, gran_pages);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(MigrateTest, SystemCallsReadAndWriteDeviceResidentBuffers) {
  // The kernel touching managed memory on the application's behalf (read(2)/write(2) into a
  // buffer on the device) faults like the CPU does: MPI and file I/O on managed buffers work.
  const size_t bytes = 256 * 1024;
  uint64_t* src = AllocFilled(bytes, 91);
  absl::StatusOr<void*> dst_mem = rt_->Allocate(bytes);
  ASSERT_TRUE(dst_mem.ok());
  auto* dst = static_cast<uint64_t*>(*dst_mem);
  std::memset(dst, 0, bytes);
  ASSERT_TRUE(rt_->Migrate(src, bytes, 0).ok());
  ASSERT_TRUE(rt_->Migrate(dst, bytes, 0).ok());
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  std::thread writer([&] {
    size_t done = 0;
    while (done < bytes) {
      ssize_t n = write(fds[1], reinterpret_cast<char*>(src) + done, bytes - done);  // kernel reads
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    close(fds[1]);
  });
  size_t got = 0;
  while (got < bytes) {
    ssize_t n = read(fds[0], reinterpret_cast<char*>(dst) + got, bytes - got);  // kernel writes
    ASSERT_GT(n, 0) << strerror(errno);
    got += static_cast<size_t>(n);
  }
  writer.join();
  close(fds[0]);
  EXPECT_EQ(FirstMismatch(dst, bytes, 91), -1);
  ASSERT_TRUE(rt_->Free(src).ok());
  ASSERT_TRUE(rt_->Free(dst).ok());
}

TEST_F(MigrateTest, StaleFaultMessageWakesInsteadOfPullingThePageBack) {
  const size_t bytes = 256 * 1024;
  uint64_t* p = AllocFilled(bytes, 80);
  ASSERT_TRUE(rt_->Migrate(p, bytes, 0).ok());
  // A message read before the pages moved to the device: its thread has long moved on.
  InjectFaultMessage(*rt_, p + 100, /*stale=*/true);
  EXPECT_EQ(CountAt(Residency(p, bytes), 0), bytes / kPageSize) << "a stale message migrated data";
  EXPECT_EQ(rt_->stats().stale_faults, 1u);
  // A message read after the move is a real access: its granule comes back.
  InjectFaultMessage(*rt_, p + 100, /*stale=*/false);
  EXPECT_EQ(CountAt(Residency(p, bytes), kHost), TestConfig().fault_granularity / kPageSize);
  EXPECT_EQ(FirstMismatch(p, bytes, 80), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

}  // namespace
}  // namespace uhmm::testing
