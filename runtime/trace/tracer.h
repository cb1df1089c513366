// The process-wide trace session behind UHMM_TRACE=path and uhmm_trace_start: threads that do
// runtime work append fixed-size records (trace_file.h) to their own lock-free ring; a writer
// thread drains the rings into the file every few milliseconds.
//
// Cost: when no session is active, each instrumented point is one relaxed atomic load
// (Tracer::enabled()). When one is, a fault takes six clock reads and one 80-byte copy into the
// thread's ring (bench/trace_overhead.cc measures it). A full ring drops records and counts them;
// the end record says how many.
#ifndef UHMM_RUNTIME_TRACE_TRACER_H_
#define UHMM_RUNTIME_TRACE_TRACER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "runtime/trace/trace_file.h"

namespace uhmm::trace {

class Tracer {
 public:
  static bool enabled() { return enabled_.load(std::memory_order_relaxed); }
  static uint64_t Now() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
  }
  // Now() while a session is active, else 0 (no clock read): the start stamp of traced work.
  static uint64_t NowIfEnabled() { return enabled() ? Now() : 0; }

  // Starts writing to `path` ("%p" becomes the process id). FAILED_PRECONDITION when a session is
  // already active. The session ends with Stop, or at process exit.
  static absl::Status Start(const std::string& path, std::string_view backend);
  // Drains the rings, writes the end record and closes the file. OK when no session is active.
  static absl::Status Stop();
  static std::string path();  // of the active session ("" if none)

  // Appends `r` to the calling thread's ring (stamping r.tid). Dropped when no session is active.
  static void Emit(TraceRecord r);
  static void DisableInForkedChild() {
    enabled_.store(false);
    writers_.store(0);  // the parent's threads in flight do not exist here
  }

  // Holds the session open while the work it traces is in flight: Stop waits for every writer, so
  // a fault that woke its thread before its record was written still lands in the file.
  class ScopedWriter {
   public:
    // Nested in an active writer on the same thread, it is active too: the session cannot end
    // before the outer one is done.
    ScopedWriter() : active_(depth_ > 0 || BeginWrite()), counted_(depth_ == 0 && active_) {
      if (active_) ++depth_;
    }
    ~ScopedWriter() {
      if (active_) --depth_;
      if (counted_) writers_.fetch_sub(1);
    }
    ScopedWriter(const ScopedWriter&) = delete;
    ScopedWriter& operator=(const ScopedWriter&) = delete;
    bool active() const { return active_; }

   private:
    const bool active_;
    const bool counted_;
  };

 private:
  static bool BeginWrite() {
    writers_.fetch_add(1);  // seq_cst, against Stop's store of enabled_ and load of writers_
    if (enabled_.load()) return true;
    writers_.fetch_sub(1);
    return false;
  }
  static std::atomic<bool> enabled_;
  static std::atomic<int> writers_;
  static thread_local int depth_;  // active ScopedWriters on this thread
};

// A CPU fault being served on this thread: CpuFault::Handle owns it; the migration code stamps the copy
// phases into it. Null when tracing is off.
struct FaultTrace {
  TraceRecord rec = {};
  bool deferred = false;  // the message was handed to a migration in flight: no record yet
};
FaultTrace*& CurrentFaultTrace();

// One-line trace points for the rarer events. Each checks enabled() itself.
inline void TraceRange(bool alloc, uintptr_t start, size_t size) {
  if (!Tracer::enabled()) return;
  TraceRecord r = {};
  r.type = RecordType::kRange;
  r.cause = alloc ? 1 : 0;
  r.device = -1;
  r.addr = start;
  r.bytes = size;
  r.t[0] = Tracer::Now();
  Tracer::Emit(r);
}
inline void TraceError(absl::StatusCode code, uintptr_t addr, int device) {
  if (!Tracer::enabled()) return;
  TraceRecord r = {};
  r.type = RecordType::kError;
  r.cause = static_cast<uint8_t>(code);
  r.device = static_cast<int8_t>(device);
  r.addr = addr;
  r.t[0] = Tracer::Now();
  Tracer::Emit(r);
}

}  // namespace uhmm::trace

#endif  // UHMM_RUNTIME_TRACE_TRACER_H_
