// Migration worker threads; see workers.h.
#include "runtime/process/workers.h"

#include <pthread.h>

#include <atomic>
#include <memory>

#include "runtime/process/abandoned_threads.h"

namespace uhmm {
namespace {
thread_local bool t_worker = false;
}  // namespace

WorkerPool::WorkerPool(int threads, std::string name_prefix)
    : nthreads_(threads), prefix_(std::move(name_prefix)) {}

WorkerPool::~WorkerPool() { Stop(); }

bool WorkerPool::OnWorkerThread() { return t_worker; }

std::vector<pthread_t> WorkerPool::native_handles() {
  std::vector<pthread_t> out;
  for (auto& t : threads_) out.push_back(t.native_handle());
  return out;
}

void WorkerPool::Start() {
  for (int i = 0; i < nthreads_; ++i) {
    threads_.emplace_back(&WorkerPool::ThreadMain, this);
    const std::string name = prefix_ + std::to_string(i);  // <= 15 chars for pthread names
    pthread_setname_np(threads_.back().native_handle(), name.c_str());
  }
}

void WorkerPool::Stop() {
  std::deque<std::function<void()>> dropped;
  {
    MutexLock lock(&mu_);
    stop_ = true;
    dropped.swap(jobs_);
    cv_.SignalAll();
  }
  for (auto& t : threads_) t.join();
  threads_.clear();
  // Destroyed here, unlocked: a job may own references whose release takes other locks.
  dropped.clear();
}

void WorkerPool::AbandonAfterFork() {
  AbandonThreads(threads_);  // they exist only in the parent
}

bool WorkerPool::Post(std::function<void()> job) {
  {
    MutexLock lock(&mu_);
    if (stop_ || threads_.empty()) return false;
    jobs_.push_back(std::move(job));
    cv_.Signal();
  }
  return true;
}

void WorkerPool::ParallelFor(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  // Shared with the helper jobs, which may start after this call returned (then they find no
  // index left and touch only this state).
  struct State {
    std::atomic<size_t> next{0};
    Mutex mu{LockRank::kParallelFor};
    CondVar cv;
    size_t done ABSL_GUARDED_BY(mu) = 0;
  };
  auto st = std::make_shared<State>();
  const std::function<void(size_t)>* f = &fn;
  auto drain = [st, f, n] {
    size_t finished = 0;
    for (size_t i; (i = st->next.fetch_add(1, std::memory_order_relaxed)) < n; ++finished) (*f)(i);
    if (finished == 0) return;
    MutexLock lock(&st->mu);
    st->done += finished;
    if (st->done == n) st->cv.SignalAll();
  };
  const size_t helpers = std::min(n - 1, static_cast<size_t>(nthreads_));
  for (size_t h = 0; h < helpers; ++h) {
    if (!Post(drain)) break;
  }
  drain();
  MutexLock lock(&st->mu);
  while (st->done < n) st->cv.Wait(&st->mu);
}

void WorkerPool::ThreadMain() {
  t_worker = true;
  for (;;) {
    std::function<void()> job;
    {
      MutexLock lock(&mu_);
      while (!stop_ && jobs_.empty()) cv_.Wait(&mu_);
      if (stop_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

}  // namespace uhmm
