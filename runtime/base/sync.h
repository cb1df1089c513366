// Locks for the runtime: absl::Mutex with thread-safety annotations. Under the tsan preset
// (UHMM_STD_LOCKS) they map to std::shared_mutex/condition_variable_any, because Debian's libabsl
// is not TSan-instrumented and TSan would not see absl::Mutex's happens-before edges.
#ifndef UHMM_RUNTIME_SYNC_H_
#define UHMM_RUNTIME_SYNC_H_

#include <new>

#include "absl/base/thread_annotations.h"

#if defined(UHMM_STD_LOCKS)
#include <condition_variable>
#include <shared_mutex>
#else
#include "absl/synchronization/mutex.h"
#endif

namespace uhmm {

#if defined(UHMM_STD_LOCKS)
class ABSL_LOCKABLE Mutex {
 public:
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  void ReaderLock() ABSL_SHARED_LOCK_FUNCTION() { mu_.lock_shared(); }
  void ReaderUnlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock_shared(); }
  // In a fork child, the only thread: a fresh, unlocked mutex, whoever held this one in the parent.
  void ResetInForkChild() ABSL_NO_THREAD_SAFETY_ANALYSIS { new (&mu_) std::shared_mutex(); }
  std::shared_mutex& native() { return mu_; }

 private:
  std::shared_mutex mu_;
};

class CondVar {
 public:
  // Caller holds `mu` exclusively.
  void Wait(Mutex* mu) {
    std::unique_lock<std::shared_mutex> lk(mu->native(), std::adopt_lock);
    cv_.wait(lk);
    lk.release();
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable_any cv_;
};
#else
class ABSL_LOCKABLE Mutex {
 public:
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.Lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.Unlock(); }
  void ReaderLock() ABSL_SHARED_LOCK_FUNCTION() { mu_.ReaderLock(); }
  void ReaderUnlock() ABSL_UNLOCK_FUNCTION() { mu_.ReaderUnlock(); }
  // In a fork child, the only thread: a fresh, unlocked mutex, whoever held this one in the parent
  // (a waiter queued there would otherwise be handed a lock it can never release).
  void ResetInForkChild() ABSL_NO_THREAD_SAFETY_ANALYSIS { new (&mu_) absl::Mutex(); }
  absl::Mutex* native() { return &mu_; }

 private:
  absl::Mutex mu_;
};

class CondVar {
 public:
  void Wait(Mutex* mu) { cv_.Wait(mu->native()); }
  void Signal() { cv_.Signal(); }
  void SignalAll() { cv_.SignalAll(); }

 private:
  absl::CondVar cv_;
};
#endif

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

#endif  // UHMM_RUNTIME_SYNC_H_
