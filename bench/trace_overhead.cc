// What fault tracing costs, in one run on the host backend:
//   - a trace record's cost on the emitting thread (clock read + copy into the per-thread ring);
//   - the application-visible latency of an isolated CPU fault (4 KiB granule, back to back) with
//     tracing off and on, in interleaved rounds so that drift on a noisy machine hits both alike.
// Off, every trace point is one relaxed atomic load. Prints a table; not a timed unit test.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "runtime/trace/tracer.h"
#include "uhmm/uhmm.hpp"

namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kPage = 4096;
constexpr size_t kBytes = 16 << 20;
constexpr int kRounds = 10;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
double Pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(p * (v.size() - 1))];
}

// Per-touch latencies (us) of one pass over `bytes` that faults every page back.
std::vector<double> FaultPass(uhmm::Runtime& rt, char* p) {
  if (absl::Status s = rt.Migrate(p, kBytes, 0); !s.ok()) {
    std::fprintf(stderr, "migrate: %s\n", s.ToString().c_str());
    std::exit(1);
  }
  std::vector<double> lat;
  lat.reserve(kBytes / kPage);
  volatile char* v = p;
  for (size_t off = 0; off < kBytes; off += kPage) {
    const auto t = Clock::now();
    (void)v[off];
    lat.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t).count());
  }
  return lat;
}

}  // namespace

int main() {
  uhmm::Config config = uhmm::Config::FromEnv();
  config.backend = "host";
  config.fault_granularity = kPage;
  auto rt = uhmm::Runtime::Create(config);
  if (!rt.ok()) {
    std::fprintf(stderr, "uhmm_trace_overhead: %s\n", rt.status().ToString().c_str());
    return 1;
  }
  const std::string path = "/tmp/uhmm_trace_overhead_" + std::to_string(getpid()) + ".trace";

  // 1. The cost of one record on the emitting thread.
  if (!(*rt)->StartTrace(path).ok()) return 1;
  constexpr int kEmits = 4000;  // below the ring size: nothing dropped
  uhmm::trace::TraceRecord r = {};
  r.type = uhmm::trace::RecordType::kError;
  uhmm::trace::Tracer::Emit(r);  // the thread's first record allocates its ring
  const auto e0 = Clock::now();
  for (int i = 0; i < kEmits; ++i) {
    r.t[0] = uhmm::trace::Tracer::Now();
    uhmm::trace::Tracer::Emit(r);
  }
  const double emit_ns = std::chrono::duration<double, std::nano>(Clock::now() - e0).count() / kEmits;
  (void)(*rt)->StopTrace();

  // 2. Fault latency, tracing off and on, interleaved.
  auto p = (*rt)->Allocate(kBytes);
  if (!p.ok()) return 1;
  std::vector<double> off_med, on_med, off_all, on_all;
  (void)FaultPass(**rt, static_cast<char*>(*p));  // warm-up
  for (int round = 0; round < kRounds; ++round) {
    std::vector<double> off = FaultPass(**rt, static_cast<char*>(*p));
    if (!(*rt)->StartTrace(path).ok()) return 1;
    std::vector<double> on = FaultPass(**rt, static_cast<char*>(*p));
    (void)(*rt)->StopTrace();
    off_med.push_back(Median(off));
    on_med.push_back(Median(on));
    off_all.insert(off_all.end(), off.begin(), off.end());
    on_all.insert(on_all.end(), on.begin(), on.end());
  }
  std::remove(path.c_str());
  const double off_us = Median(off_med), on_us = Median(on_med);
  std::printf("uhmm trace overhead (host backend, %s, %d rounds x %zu isolated 4 KiB faults each way)\n",
              std::string((*rt)->backend_name()).c_str(), kRounds, kBytes / kPage);
  std::printf("  %-44s %10s %10s\n", "", "p50 us", "p99 us");
  std::printf("  %-44s %10.2f %10.2f\n", "CPU fault, tracing off", off_us, Pct(off_all, 0.99));
  std::printf("  %-44s %10.2f %10.2f\n", "CPU fault, tracing on", on_us, Pct(on_all, 0.99));
  std::printf("  %-44s %10.2f\n", "difference of the per-round medians (us)", on_us - off_us);
  std::printf("  %-44s %10.0f ns\n", "one trace record on the emitting thread", emit_ns);
  std::printf(
      "  a traced fault writes 1 fault + 1 migration record, reads the clock 8 times and maps and\n"
      "  wakes in two system calls (UFFDIO_CONTINUE without wake, then UFFDIO_WAKE) to time each\n");
  return 0;
}
