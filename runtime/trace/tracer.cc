// See tracer.h.
#include "runtime/trace/tracer.h"

#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"

namespace uhmm::trace {

std::atomic<bool> Tracer::enabled_{false};
std::atomic<int> Tracer::writers_{0};
thread_local int Tracer::depth_ = 0;

namespace {

// One thread's records: single producer (the thread), single consumer (the writer). Never freed;
// a ring whose thread exited is reused by a new thread once drained.
struct Ring {
  static constexpr uint64_t kSize = 8192;  // 640 KiB
  std::array<TraceRecord, kSize> slots;
  std::atomic<uint64_t> head{0};  // next slot to write (producer)
  std::atomic<uint64_t> tail{0};  // next slot to read (consumer)
  std::atomic<uint32_t> dropped{0};
  std::atomic<bool> owned{false};
};

struct Session {
  std::mutex mu;  // guards everything below except the rings' contents
  std::vector<Ring*> rings;
  std::optional<TraceWriter> writer;
  std::thread* drainer = nullptr;  // leaked in a forked child, where it does not exist
  std::condition_variable cv;
  bool stop = false;
  absl::Status write_error;
  std::mutex drain_mu;  // one drain at a time (writer thread, Stop)
};

// Process lifetime (threads may emit during exit); a forked child replaces it (ForgetInChild).
Session*& SessionPtr() {
  static Session* s = new Session();
  return s;
}
Session& S() { return *SessionPtr(); }

// Releases the calling thread's ring when it exits.
struct RingOwner {
  Ring* ring = nullptr;
  ~RingOwner() {
    if (ring != nullptr) ring->owned.store(false, std::memory_order_release);
  }
};
thread_local RingOwner t_ring;
thread_local uint32_t t_tid = 0;

Ring* AcquireRing() {
  Session& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  for (Ring* r : s.rings) {
    bool expected = false;
    if (r->head.load() == r->tail.load() && r->owned.compare_exchange_strong(expected, true)) return r;
  }
  auto* r = new Ring();
  r->owned.store(true);
  s.rings.push_back(r);
  return r;
}

// Writes what the rings hold. Caller holds drain_mu.
void DrainLocked(Session& s) {
  std::vector<Ring*> rings;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    rings = s.rings;
  }
  for (Ring* r : rings) {
    const uint64_t tail = r->tail.load(std::memory_order_relaxed);
    const uint64_t head = r->head.load(std::memory_order_acquire);
    for (uint64_t i = tail; i < head;) {
      const uint64_t slot = i % Ring::kSize;
      const uint64_t n = std::min(head - i, Ring::kSize - slot);
      if (s.writer && s.write_error.ok()) s.write_error = s.writer->Write(&r->slots[slot], n);
      i += n;
    }
    r->tail.store(head, std::memory_order_release);
  }
}

void DrainerMain() {
  Session& s = S();
  std::unique_lock<std::mutex> lock(s.mu);
  while (!s.stop) {
    s.cv.wait_for(lock, std::chrono::milliseconds(10));
    lock.unlock();
    {
      std::lock_guard<std::mutex> dl(s.drain_mu);
      DrainLocked(s);
    }
    lock.lock();
  }
}

void StopAtExit() {
  if (absl::Status st = Tracer::Stop(); !st.ok()) {
    std::fprintf(stderr, "uhmm: trace: %s\n", std::string(st.message()).c_str());
  }
}

// fork(): in the child the drainer thread does not exist, the file belongs to the parent, and the
// session's locks may have been held by threads that are gone. Tracing stops there and the child
// starts from a fresh session, leaking the parent's (nothing of it is touched). No lock is taken
// around fork itself: the runtime's own fork handler emits records while it brings data home.
// The child's session, made before the fork: a fork child must not allocate (another parent thread
// may have held the allocator's locks at the clone, which a sanitizer's allocator does not reset).
Session* g_spare_session = nullptr;
void MakeSpareSession() {
  if (g_spare_session == nullptr) g_spare_session = new Session();
}

void ForgetInChild() {
  Tracer::DisableInForkedChild();
  t_ring.ring = nullptr;  // the parent's ring; this is the child's only thread
  SessionPtr() = g_spare_session != nullptr ? g_spare_session : new Session();
  g_spare_session = nullptr;
}

}  // namespace

FaultTrace*& CurrentFaultTrace() {
  thread_local FaultTrace* t = nullptr;
  return t;
}

absl::Status Tracer::Start(const std::string& path, std::string_view backend) {
  Session& s = S();
  std::lock_guard<std::mutex> dl(s.drain_mu);
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.writer) {
    return absl::FailedPreconditionError(
        absl::StrFormat("uhmm: a trace is already being written to %s", s.writer->path()));
  }
  const std::string file = absl::StrReplaceAll(path, {{"%p", absl::StrCat(getpid())}});
  timespec real;
  clock_gettime(CLOCK_REALTIME, &real);
  const uint64_t start = Now();
  absl::StatusOr<TraceWriter> w = TraceWriter::Open(
      file, backend, start, static_cast<uint64_t>(real.tv_sec) * 1000000000ull + real.tv_nsec);
  if (!w.ok()) return w.status();
  // Records a thread left from an earlier session do not belong to this one.
  for (Ring* r : s.rings) {
    r->tail.store(r->head.load());
    r->dropped.store(0);
  }
  s.writer.emplace(std::move(*w));
  s.write_error = absl::OkStatus();
  s.stop = false;
  s.drainer = new std::thread(DrainerMain);
  static std::once_flag hooks;
  std::call_once(hooks, [] {
    std::atexit(StopAtExit);
    pthread_atfork(MakeSpareSession, nullptr, ForgetInChild);
  });
  enabled_.store(true, std::memory_order_release);
  return absl::OkStatus();
}

absl::Status Tracer::Stop() {
  Session& s = S();
  std::thread* drainer = nullptr;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (!s.writer) return absl::OkStatus();
    enabled_.store(false);  // seq_cst: see BeginWrite
    s.stop = true;
    drainer = s.drainer;
    s.drainer = nullptr;
  }
  // Work that started tracing before the flag fell finishes its records first.
  while (writers_.load() != 0) sched_yield();
  s.cv.notify_all();
  if (drainer != nullptr) {
    drainer->join();
    delete drainer;
  }
  std::lock_guard<std::mutex> dl(s.drain_mu);
  DrainLocked(s);
  std::lock_guard<std::mutex> lock(s.mu);
  uint32_t dropped = 0;
  for (Ring* r : s.rings) dropped += r->dropped.exchange(0);
  absl::Status st = s.writer->Finish(dropped, Now());
  if (st.ok()) st = s.write_error;
  s.writer.reset();
  return st;
}

std::string Tracer::path() {
  Session& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.writer ? s.writer->path() : std::string();
}

void Tracer::Emit(TraceRecord r) {
  ScopedWriter writer;
  if (!writer.active()) return;
  if (t_ring.ring == nullptr) t_ring.ring = AcquireRing();
  if (t_tid == 0) t_tid = static_cast<uint32_t>(syscall(SYS_gettid));
  Ring* ring = t_ring.ring;
  r.tid = t_tid;
  const uint64_t head = ring->head.load(std::memory_order_relaxed);
  if (head - ring->tail.load(std::memory_order_acquire) >= Ring::kSize) {
    ring->dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  ring->slots[head % Ring::kSize] = r;
  ring->head.store(head + 1, std::memory_order_release);
}

}  // namespace uhmm::trace
