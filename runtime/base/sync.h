// Locks for the runtime: absl::Mutex with thread-safety annotations. Under the tsan preset
// (UHMM_STD_LOCKS) they map to std::shared_mutex/condition_variable_any, because Debian's libabsl
// is not TSan-instrumented and TSan would not see absl::Mutex's happens-before edges.
//
// Lock order (nvidia-uvm's uvm_lock.h): every runtime Mutex has a LockRank, and a thread takes
// locks in strictly increasing rank. The table with what each lock guards is in
// docs/ARCHITECTURE.md ("Lock order"). Debug builds (!NDEBUG) check it at run time: each thread
// keeps the locks it holds, and taking a lock whose rank is not above every ranked lock it holds
// (the same rank included: no two locks of one kind are ever held together) aborts with both
// names. Release builds keep the rank byte and do nothing with it.
#ifndef UHMM_RUNTIME_BASE_SYNC_H_
#define UHMM_RUNTIME_BASE_SYNC_H_

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>

#include "absl/base/thread_annotations.h"

#if defined(UHMM_STD_LOCKS)
#include <condition_variable>
#include <shared_mutex>
#else
#include "absl/synchronization/mutex.h"
#endif

namespace uhmm {

// Ranks, outermost first. Keep in step with the table in docs/ARCHITECTURE.md.
enum class LockRank : uint8_t {
  kUnranked = 0,    // not checked (tests, locks outside the runtime)
  kLaunchSync,      // LaunchCoherence::sync_mu_: one launch sync pushes at a time
  kVaSpace,         // VaSpace::mu_: the range map
  kVaBlock,         // VaBlock::mu: one 2 MiB block's page states
  kFaultRead,       // FaultService::read_mu_: reads of the userfaultfd
  kZapTracker,      // ZapTracker::mu_: the runtime's own zaps
  kFaultRemap,      // FaultService::remap_mu_: counted REMAP events, parked faults
  kFaultDiscard,    // FaultService::discard_mu_: pending application discards, parked faults
  kFaultQueue,      // FaultService::q_mu_: deferred/requeued fault messages
  kPagePool,        // PagePool::mu_: one device's chunks
  kBlockOwners,     // BlockOwners::mu_: which device maps each block (under a pool's lock)
  kPeerWindows,     // PeerWindows::mu_: free windows for moves to a peer (under a pool's lock)
  kMigrationGate,   // MigrationGate::mu_: fork's and each device's gate
  kRangeLife,       // ManagedRange::life_mu_: operations in flight on a range
  kReadAhead,       // ReadAhead::mu_: one range's read-ahead window
  kWorkerQueue,     // WorkerPool::mu_: the migration workers' job queue
  kParallelFor,     // WorkerPool::ParallelFor's completion count
  kBulkStatus,      // Migrator::Bulk's first error
  kReadAheadFence,  // ReadAheadFence::mu_: read-ahead in flight vs device use
  kRangeDirty,      // ManagedRange::dirty_mu_: the range's host-dirty blocks
  kSpaceDirty,      // VaSpace::dirty_mu_: the ranges with host-dirty blocks
  kAdvice,          // RangeAdvice::mu_: one range's memory advice (under a block lock)
  kCount,
};

inline const char* LockRankName(LockRank rank) {
  switch (rank) {
    case LockRank::kUnranked:
      return "unranked";
    case LockRank::kLaunchSync:
      return "LaunchCoherence::sync_mu_";
    case LockRank::kVaSpace:
      return "VaSpace::mu_";
    case LockRank::kVaBlock:
      return "VaBlock::mu";
    case LockRank::kFaultRead:
      return "FaultService::read_mu_";
    case LockRank::kZapTracker:
      return "ZapTracker::mu_";
    case LockRank::kFaultRemap:
      return "FaultService::remap_mu_";
    case LockRank::kFaultDiscard:
      return "FaultService::discard_mu_";
    case LockRank::kFaultQueue:
      return "FaultService::q_mu_";
    case LockRank::kPagePool:
      return "PagePool::mu_";
    case LockRank::kBlockOwners:
      return "BlockOwners::mu_";
    case LockRank::kPeerWindows:
      return "PeerWindows::mu_";
    case LockRank::kMigrationGate:
      return "MigrationGate::mu_";
    case LockRank::kRangeLife:
      return "ManagedRange::life_mu_";
    case LockRank::kReadAhead:
      return "ReadAhead::mu_";
    case LockRank::kWorkerQueue:
      return "WorkerPool::mu_";
    case LockRank::kParallelFor:
      return "WorkerPool::ParallelFor::mu";
    case LockRank::kBulkStatus:
      return "Migrator::Bulk::mu";
    case LockRank::kReadAheadFence:
      return "ReadAheadFence::mu_";
    case LockRank::kRangeDirty:
      return "ManagedRange::dirty_mu_";
    case LockRank::kSpaceDirty:
      return "VaSpace::dirty_mu_";
    case LockRank::kAdvice:
      return "RangeAdvice::mu_";
    case LockRank::kCount:
      break;
  }
  return "?";
}

// The run-time lock-order check (debug builds). Each thread records the locks it holds, ranked or
// not (AssertHeld uses the record); order is checked between ranked ones.
namespace lock_order {
#if !defined(NDEBUG)
inline constexpr int kMaxHeld = 32;
struct HeldLock {
  const void* mu;
  LockRank rank;
};
struct HeldLocks {
  HeldLock locks[kMaxHeld];
  int n = 0;
};
inline thread_local HeldLocks t_held;

[[noreturn]] inline void Fail(const char* what, const void* mu, LockRank rank, const HeldLock* held) {
  if (held != nullptr) {
    std::fprintf(stderr,
                 "uhmm: fatal: lock order violation: %s %s (rank %d, %p) while holding %s (rank %d, %p); "
                 "locks are taken in increasing rank (docs/ARCHITECTURE.md, \"Lock order\")\n",
                 what, LockRankName(rank), static_cast<int>(rank), mu, LockRankName(held->rank),
                 static_cast<int>(held->rank), held->mu);
  } else {
    std::fprintf(stderr, "uhmm: fatal: lock bookkeeping: %s %s (rank %d, %p)\n", what, LockRankName(rank),
                 static_cast<int>(rank), mu);
  }
  std::abort();
}

// Before blocking on `mu`.
inline void Acquire(const void* mu, LockRank rank) {
  HeldLocks& h = t_held;
  const HeldLock* highest = nullptr;
  for (int k = 0; k < h.n; ++k) {
    const HeldLock& l = h.locks[k];
    if (l.mu == mu) Fail("acquiring", mu, rank, &l);  // self-deadlock
    if (rank != LockRank::kUnranked && l.rank != LockRank::kUnranked && l.rank >= rank &&
        (highest == nullptr || l.rank > highest->rank)) {
      highest = &l;
    }
  }
  if (highest != nullptr) Fail("acquiring", mu, rank, highest);
  if (h.n == kMaxHeld) Fail("more than 32 locks held, acquiring", mu, rank, nullptr);
  h.locks[h.n++] = HeldLock{mu, rank};
}

// After unlocking `mu` (in any order). A lock taken without bookkeeping is not found: ignored.
inline void Release(const void* mu) {
  HeldLocks& h = t_held;
  for (int k = h.n - 1; k >= 0; --k) {
    if (h.locks[k].mu == mu) {
      for (int j = k + 1; j < h.n; ++j) h.locks[j - 1] = h.locks[j];
      --h.n;
      return;
    }
  }
}

inline bool Held(const void* mu) {
  const HeldLocks& h = t_held;
  for (int k = 0; k < h.n; ++k) {
    if (h.locks[k].mu == mu) return true;
  }
  return false;
}
#else
inline void Acquire(const void*, LockRank) {}
inline void Release(const void*) {}
#endif
}  // namespace lock_order

#if defined(UHMM_STD_LOCKS)
using NativeMutex = std::shared_mutex;
#else
using NativeMutex = absl::Mutex;
#endif

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  explicit Mutex(LockRank rank) : rank_(rank) {}
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    lock_order::Acquire(this, rank_);
#if defined(UHMM_STD_LOCKS)
    mu_.lock();
#else
    mu_.Lock();
#endif
  }
  void Unlock() ABSL_UNLOCK_FUNCTION() {
#if defined(UHMM_STD_LOCKS)
    mu_.unlock();
#else
    mu_.Unlock();
#endif
    lock_order::Release(this);
  }
  void ReaderLock() ABSL_SHARED_LOCK_FUNCTION() {
    lock_order::Acquire(this, rank_);
#if defined(UHMM_STD_LOCKS)
    mu_.lock_shared();
#else
    mu_.ReaderLock();
#endif
  }
  void ReaderUnlock() ABSL_UNLOCK_FUNCTION() {
#if defined(UHMM_STD_LOCKS)
    mu_.unlock_shared();
#else
    mu_.ReaderUnlock();
#endif
    lock_order::Release(this);
  }

  // Tells the thread-safety analysis that the caller holds this lock exclusively (where it cannot
  // see it: a lambda run under a lock its caller took). Debug builds check that this thread took
  // it; release builds do nothing.
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {
#if !defined(NDEBUG)
    if (!lock_order::Held(this))
      lock_order::Fail("AssertHeld: this thread does not hold", this, rank_, nullptr);
#endif
  }

  // Held across fork() by a pthread_atfork prepare handler and released by UnlockAcrossFork in the
  // parent or ResetInForkChild in the child. Outside the lock-order bookkeeping: the handlers of
  // several runtimes each hold one, and the atfork machinery, not a call path, orders them.
  void LockAcrossFork() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
#if defined(UHMM_STD_LOCKS)
    mu_.lock();
#else
    mu_.Lock();
#endif
  }
  void UnlockAcrossFork() ABSL_UNLOCK_FUNCTION() {
#if defined(UHMM_STD_LOCKS)
    mu_.unlock();
#else
    mu_.Unlock();
#endif
  }
  // In a fork child, the only thread: a fresh, unlocked mutex, whoever held this one in the parent
  // (a waiter queued there would otherwise be handed a lock it can never release). Inherently
  // outside the analysis: the lock state it discards belongs to threads that do not exist here.
  void ResetInForkChild() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    lock_order::Release(this);
    new (&mu_) NativeMutex();
  }

  LockRank rank() const { return rank_; }
  NativeMutex* native() { return &mu_; }

 private:
  NativeMutex mu_;
  // Stored in every build (the layout does not depend on NDEBUG); read only by debug checks.
  LockRank rank_ = LockRank::kUnranked;
};

// Waits keep the lock-order record as it is: the waiter holds `mu` again when Wait returns, and
// what it held before the wait it still holds.
class CondVar {
 public:
#if defined(UHMM_STD_LOCKS)
  // Caller holds `mu` exclusively.
  void Wait(Mutex* mu) {
    mu->AssertHeld();
    std::unique_lock<std::shared_mutex> lk(*mu->native(), std::adopt_lock);
    cv_.wait(lk);
    lk.release();
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable_any cv_;
#else
  void Wait(Mutex* mu) {
    mu->AssertHeld();
    cv_.Wait(mu->native());
  }
  void Signal() { cv_.Signal(); }
  void SignalAll() { cv_.SignalAll(); }

 private:
  absl::CondVar cv_;
#endif
};

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

class ABSL_SCOPED_LOCKABLE ReaderMutexLock {
 public:
  explicit ReaderMutexLock(Mutex* mu) ABSL_SHARED_LOCK_FUNCTION(mu) : mu_(mu) { mu_->ReaderLock(); }
  ~ReaderMutexLock() ABSL_UNLOCK_FUNCTION() { mu_->ReaderUnlock(); }
  ReaderMutexLock(const ReaderMutexLock&) = delete;
  ReaderMutexLock& operator=(const ReaderMutexLock&) = delete;

 private:
  Mutex* const mu_;
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_BASE_SYNC_H_
