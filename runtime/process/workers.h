// WorkerPool: the runtime's migration threads ("uhmm-mig-N"). They run read-ahead that fault
// service threads post (fire and forget), and split bulk migrations (uhmm_migrate, prefetch) so
// that one block's CPU work (zap, PTE installation) overlaps another block's copy.
#ifndef UHMM_RUNTIME_PROCESS_WORKERS_H_
#define UHMM_RUNTIME_PROCESS_WORKERS_H_

#include <cstddef>
#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "runtime/base/sync.h"

namespace uhmm {

class WorkerPool {
 public:
  // `threads` may be 0: Post runs nothing in the background (jobs are dropped) and ParallelFor runs
  // everything on the caller.
  WorkerPool(int threads, std::string name_prefix);
  ~WorkerPool();  // Stop()s
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  void Start();
  // Jobs still queued are destroyed without running; running ones finish first.
  void Stop();
  // After fork() the threads do not exist in the child: never join them.
  void AbandonAfterFork();
  int threads() const { return nthreads_; }
  std::vector<pthread_t> native_handles();

  // Queues a job for a worker; false (job destroyed unrun) when there are no workers or the pool
  // is stopping.
  bool Post(std::function<void()> job);
  // Calls fn(i) for every i in [0, n) on the calling thread and idle workers; returns when all are
  // done. Workers busy with other jobs are not waited for: the caller does the rest itself.
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn);
  // True on one of this process's worker threads.
  static bool OnWorkerThread();

 private:
  void ThreadMain();

  const int nthreads_;
  const std::string prefix_;
  std::vector<std::thread> threads_;
  Mutex mu_{LockRank::kWorkerQueue};
  CondVar cv_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_PROCESS_WORKERS_H_
