// Unit tests of the explicit state machines: a VaBlock page's states and transitions
// (runtime/mm/va_block.h), the page pool's chunk states (runtime/mm/page_pool.h) and the run-time
// lock-order check (runtime/base/sync.h). The death tests need the debug checks (!NDEBUG): the
// asan preset and the Debug build run them; release builds skip them.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "runtime/base/sync.h"
#include "runtime/mm/page_pool.h"
#include "runtime/mm/va_block.h"

namespace uhmm {
namespace {

// Puts page i of `blk` on a device page, the way a migration to the device does.
void ToDevice(VaBlock& blk, size_t i, Page* page) ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu) {
  blk.BeginMigration(i);
  blk.CommitToDevice(i, page);
  ASSERT_EQ(blk.EndMigration(i), nullptr);
}

TEST(PageStateTest, MigrationsMoveAPageBetweenHostAndDevice) {
  VaBlock blk;
  Page page;
  MutexLock lock(&blk.mu);
  EXPECT_EQ(blk.State(0), PageState::kHost);
  blk.BeginMigration(0);
  EXPECT_TRUE(blk.Busy(0));
  EXPECT_EQ(blk.State(0), PageState::kHost);
  blk.CommitToDevice(0, &page);
  EXPECT_EQ(blk.State(0), PageState::kDevice);
  EXPECT_EQ(blk.pages[0], &page);
  EXPECT_EQ(blk.EndMigration(0), nullptr);
  EXPECT_FALSE(blk.Busy(0));
  EXPECT_TRUE(blk.device[0]);

  blk.BeginMigration(0);
  EXPECT_EQ(blk.CommitToHost(0), &page);
  EXPECT_EQ(blk.State(0), PageState::kHost);
  EXPECT_EQ(blk.EndMigration(0), nullptr);
  EXPECT_EQ(blk.pages[0], nullptr);
  EXPECT_TRUE(blk.device.none());
  EXPECT_TRUE(blk.busy.none());
}

TEST(PageStateTest, AMigrationNotCommittedLeavesThePageWhereItWas) {
  VaBlock blk;
  Page page;
  MutexLock lock(&blk.mu);
  blk.BeginMigration(1);
  EXPECT_EQ(blk.EndMigration(1), nullptr);
  EXPECT_EQ(blk.State(1), PageState::kHost);
  ToDevice(blk, 2, &page);
  blk.BeginMigration(2);
  EXPECT_EQ(blk.EndMigration(2), nullptr);
  EXPECT_EQ(blk.State(2), PageState::kDevice);
  EXPECT_EQ(blk.pages[2], &page);
}

TEST(PageStateTest, EventsOnAHeldPageWaitForItsHolder) {
  VaBlock blk;
  Page p3, p4, p5;
  MutexLock lock(&blk.mu);
  // Poisoned while a migration home holds it: the device page goes when the holder lets go.
  ToDevice(blk, 3, &p3);
  blk.BeginMigration(3);
  EXPECT_EQ(blk.Poison(3), nullptr);
  EXPECT_EQ(blk.State(3), PageState::kPoisoned);
  EXPECT_EQ(blk.pages[3], &p3);
  EXPECT_EQ(blk.EndMigration(3), &p3);
  EXPECT_EQ(blk.State(3), PageState::kPoisoned);
  EXPECT_FALSE(blk.device[3]);
  // Unmapped while held: likewise.
  ToDevice(blk, 4, &p4);
  blk.BeginMigration(4);
  EXPECT_EQ(blk.Unmap(4), nullptr);
  EXPECT_EQ(blk.State(4), PageState::kUnmapped);
  EXPECT_EQ(blk.EndMigration(4), &p4);
  EXPECT_EQ(blk.Unmap(4), nullptr);  // unmapped twice (mremap, then munmap)
  // Discarded while held: the holder applies it before it lets go.
  ToDevice(blk, 5, &p5);
  blk.BeginMigration(5);
  blk.MarkDiscardPending(5);
  EXPECT_TRUE(blk.DiscardPending(5));
  EXPECT_EQ(blk.Discard(5), &p5);
  EXPECT_EQ(blk.State(5), PageState::kHost);
  EXPECT_EQ(blk.EndMigration(5), nullptr);
}

TEST(PageStateTest, EventsOnAnUnheldPageTakeEffectAtOnce) {
  VaBlock blk;
  Page p6, p7, p8;
  MutexLock lock(&blk.mu);
  ToDevice(blk, 6, &p6);
  EXPECT_EQ(blk.Poison(6), &p6);
  EXPECT_EQ(blk.State(6), PageState::kPoisoned);
  EXPECT_EQ(blk.Poison(6), nullptr);   // a second SIGBUS on the same page
  EXPECT_EQ(blk.Discard(6), nullptr);  // a discard makes it a zero host page again
  EXPECT_EQ(blk.State(6), PageState::kHost);
  ToDevice(blk, 7, &p7);
  EXPECT_EQ(blk.Unmap(7), &p7);
  EXPECT_EQ(blk.State(7), PageState::kUnmapped);
  ToDevice(blk, 8, &p8);
  blk.DiscardOnDevice(8);
  EXPECT_EQ(blk.State(8), PageState::kDevice);
  std::vector<Page*> all;
  blk.TakeAllDevicePages(&all);
  EXPECT_EQ(all, std::vector<Page*>{&p8});
  EXPECT_TRUE(blk.device.none());
}

TEST(PageStateDeathTest, AnIllegalPageTransitionAborts) {
#ifdef NDEBUG
  GTEST_SKIP() << "debug builds only";
#endif
  EXPECT_DEATH(
      {
        VaBlock blk;
        MutexLock lock(&blk.mu);
        (void)blk.CommitToHost(7);  // nobody holds it, and it is on the host
      },
      "illegal page transition CommitToHost: page 7 \\(offset 0x7000\\) of block .* is host");
  EXPECT_DEATH(
      {
        VaBlock blk;
        MutexLock lock(&blk.mu);
        blk.BeginMigration(9);
        blk.BeginMigration(9);  // two migrations cannot hold one page
      },
      "illegal page transition BeginMigration: page 9 .* is host, busy");
  EXPECT_DEATH(
      {
        VaBlock blk;
        Page page;
        MutexLock lock(&blk.mu);
        blk.BeginMigration(10);
        blk.CommitToDevice(10, &page);
        blk.MarkDiscardPending(10);
        (void)blk.EndMigration(10);  // finalize must apply the discard first
      },
      "illegal page transition EndMigration: page 10 .* is device, busy, discard pending");
  EXPECT_DEATH(
      {
        VaBlock blk;
        MutexLock lock(&blk.mu);
        (void)blk.Unmap(11);
        (void)blk.Poison(11);
      },
      "illegal page transition Poison: page 11 .* is unmapped");
}

TEST(ChunkStateTest, LegalEvents) {
  // kAnywhere: allocated, pages go out and come back, given back.
  ChunkState s = ChunkState::kFree;
  s = ChunkTransition(0, s, ChunkEvent::kAllocate, false);
  EXPECT_EQ(s, ChunkState::kEmpty);
  s = ChunkTransition(0, s, ChunkEvent::kFirstPageOut, false);
  EXPECT_EQ(s, ChunkState::kInUse);
  s = ChunkTransition(0, s, ChunkEvent::kLastPageBack, false);
  EXPECT_EQ(s, ChunkState::kEmpty);
  s = ChunkTransition(0, s, ChunkEvent::kGiveBack, false);
  EXPECT_EQ(s, ChunkState::kFree);
  // kSameAddress: bound to a block before pages go out; stays bound when they come back.
  s = ChunkTransition(1, ChunkState::kFree, ChunkEvent::kAllocate, false);
  s = ChunkTransition(1, s, ChunkEvent::kBind, true);
  EXPECT_EQ(s, ChunkState::kBound);
  s = ChunkTransition(1, s, ChunkEvent::kFirstPageOut, true);
  EXPECT_EQ(s, ChunkState::kInUse);
  s = ChunkTransition(1, s, ChunkEvent::kLastPageBack, true);
  EXPECT_EQ(s, ChunkState::kBound);
  s = ChunkTransition(1, s, ChunkEvent::kUnbind, false);
  EXPECT_EQ(s, ChunkState::kEmpty);
  EXPECT_EQ(ChunkTransition(2, ChunkState::kInUse, ChunkEvent::kTeardown, true), ChunkState::kFree);
}

TEST(ChunkStateDeathTest, AnIllegalChunkTransitionAborts) {
#ifdef NDEBUG
  GTEST_SKIP() << "debug builds only";
#endif
  EXPECT_DEATH(ChunkTransition(3, ChunkState::kFree, ChunkEvent::kBind, false),
               "illegal chunk transition Bind: chunk 3 is free");
  EXPECT_DEATH(ChunkTransition(4, ChunkState::kInUse, ChunkEvent::kGiveBack, true),
               "illegal chunk transition GiveBack: chunk 4 is in use \\(bound to a block\\)");
  EXPECT_DEATH(ChunkTransition(5, ChunkState::kEmpty, ChunkEvent::kFirstPageOut, true),
               "illegal chunk transition FirstPageOut: chunk 5 is empty");
}

TEST(LockOrderTest, IncreasingRanksAndUnrankedLocksPass) {
  Mutex space(LockRank::kVaSpace), block(LockRank::kVaBlock), pool(LockRank::kPagePool), plain;
  {
    ReaderMutexLock l1(&space);
    MutexLock l2(&block);
    plain.Lock();  // unranked: not ordered against anything
    MutexLock l3(&pool);
    block.AssertHeld();
    plain.Unlock();  // out of order
  }
  {
    MutexLock l(&pool);  // everything above was released
  }
  // The record is per thread: another thread may take the locks in its own order.
  MutexLock l(&pool);
  std::thread t([&] {
    MutexLock l1(&space);
    MutexLock l2(&block);
  });
  t.join();
}

TEST(LockOrderTest, ForkHeldLocksStayOutOfTheRecord) {
  Mutex a(LockRank::kVaSpace), b(LockRank::kVaSpace), c(LockRank::kVaSpace);
  a.LockAcrossFork();  // two runtimes' range maps, held across one fork
  b.LockAcrossFork();
  {
    ReaderMutexLock l(&c);  // a third runtime's prepare handler looks a range up meanwhile
  }
  b.UnlockAcrossFork();
  a.UnlockAcrossFork();
  // A fork child re-creates a lock its only thread held: the record forgets it. (On a thread of
  // its own: the lock is never unlocked, which absl's own bookkeeping keeps per thread.)
  Mutex pool(LockRank::kPagePool), block(LockRank::kVaBlock);
  std::thread t([&] {
    pool.Lock();
    pool.ResetInForkChild();
    MutexLock l(&block);  // would be an inversion if `pool` were still recorded
  });
  t.join();
}

TEST(LockOrderTest, ACondVarWaitKeepsTheRecord) {
  Mutex mu(LockRank::kMigrationGate);
  CondVar cv;
  bool ready = false;
  std::thread t([&] {
    MutexLock l(&mu);
    ready = true;
    cv.SignalAll();
  });
  {
    MutexLock l(&mu);
    while (!ready) cv.Wait(&mu);
    mu.AssertHeld();
  }
  t.join();
  Mutex later(LockRank::kRangeLife);
  MutexLock l1(&mu);
  MutexLock l2(&later);
}

TEST(LockOrderDeathTest, AnInversionAborts) {
#ifdef NDEBUG
  GTEST_SKIP() << "debug builds only";
#endif
  EXPECT_DEATH(
      {
        Mutex space(LockRank::kVaSpace);
        Mutex block(LockRank::kVaBlock);
        MutexLock l1(&block);
        MutexLock l2(&space);
      },
      "lock order violation: acquiring VaSpace::mu_ \\(rank 2, .*\\) while holding VaBlock::mu \\(rank 3");
  EXPECT_DEATH(
      {
        Mutex b1(LockRank::kVaBlock);
        Mutex b2(LockRank::kVaBlock);
        MutexLock l1(&b1);
        MutexLock l2(&b2);  // no thread holds two block locks
      },
      "acquiring VaBlock::mu .* while holding VaBlock::mu");
  EXPECT_DEATH(
      {
        Mutex read(LockRank::kFaultRead);
        Mutex discard(LockRank::kFaultDiscard);
        MutexLock l1(&discard);
        ReaderMutexLock l2(&read);
      },
      "acquiring FaultService::read_mu_ .* while holding FaultService::discard_mu_");
  EXPECT_DEATH(
      {
        Mutex block(LockRank::kVaBlock);
        block.AssertHeld();
      },
      "AssertHeld: this thread does not hold VaBlock::mu");
}

}  // namespace
}  // namespace uhmm
