// uhmm-prof's analysis of a trace (runtime/trace/trace_file.h): fault latency per phase, the ranges that
// fault most, migration throughput. Everything the report, the plot and the tests read.
#ifndef UHMM_TOOLS_UHMM_PROF_ANALYSIS_H_
#define UHMM_TOOLS_UHMM_PROF_ANALYSIS_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/trace/trace_file.h"

namespace uhmm::prof {

// The phases of a CPU fault that the report measures, each between two of the fault's timestamps
// (trace::FaultPhase): lookup = kLookedUp - kReceived, submit = kSubmitted - kLookedUp,
// copy = kCopied - kSubmitted, map = kMapped - kCopied, wake = kWoken - kMapped and
// end to end = kWoken - kReceived.
enum Phase : int { kLookup = 0, kSubmit, kCopy, kMap, kWake, kEndToEnd };
inline constexpr int kNumPhases = 6;

std::string_view PhaseName(int phase);  // "lookup", ..., "end to end"
// The trace::FaultPhase indexes a phase starts and ends at.
int PhaseBegin(int phase);
int PhaseEnd(int phase);
// How long the phase took in fault `r` (ns), or nullopt when either of its timestamps is 0 (the
// phase did not happen: a duplicate has no copy) or the end is before the start.
std::optional<uint64_t> PhaseDuration(const trace::TraceRecord& r, int phase);

// The nearest-rank percentile of sorted samples: the ceil(percent / 100 * n)-th smallest (the
// smallest for percent 0). 0 when there are no samples.
uint64_t NearestRank(const std::vector<uint64_t>& sorted, int percent);

struct Latency {  // all in ns
  size_t count = 0;
  uint64_t min = 0;
  uint64_t p50 = 0;
  uint64_t p90 = 0;
  uint64_t p99 = 0;
  uint64_t max = 0;
  double mean = 0;
};
Latency Summarize(const std::vector<uint64_t>& sorted);

// A log2 histogram bucket in microseconds: [lo_us, hi_us); the first bucket is [0, 1).
struct Bucket {
  uint64_t lo_us = 0;
  uint64_t hi_us = 1;
  size_t count = 0;
};
// Buckets <1 us, 1-2 us, 2-4 us, ... of the samples (ns), without the empty buckets before the
// first and after the last sample. Empty for no samples.
std::vector<Bucket> Log2Histogram(const std::vector<uint64_t>& ns);

struct FaultCounts {
  size_t faults = 0;      // kFault records
  size_t duplicates = 0;  // kFaultDuplicate
  size_t covered = 0;     // kFaultCovered
  size_t stale = 0;       // kFaultStale
  size_t sigbus = 0;      // kFaultSigbus
};

// A managed range (one kRange alloc record, live until its free record) and the faults in it.
struct RangeFaults {
  bool known = true;  // false: the "(unknown range)" row, faults in no range live at their time
  uint64_t start = 0;
  uint64_t bytes = 0;
  uint64_t alloc_ns = 0;  // 0: allocated before the trace started (only its free record is there)
  uint64_t free_ns = 0;   // 0: not freed in the trace
  size_t faults = 0;
  Latency end_to_end;
};

// Migrations in one direction. The busy time sums t[kMigEnd] - t[kMigStart] of each migration
// that has both (migrations that run in parallel count each); the copy time sums
// t[kMigCopied] - t[kMigSubmitted] of those that have both.
struct Throughput {
  size_t migrations = 0;
  uint64_t bytes = 0;        // all of them
  uint64_t timed_bytes = 0;  // of those with a busy time
  uint64_t busy_ns = 0;
  uint64_t copy_bytes = 0;  // of those with a copy time
  uint64_t copy_ns = 0;
  // Bytes per ns = GB/s (10^9 bytes per second); nullopt without a timed migration.
  std::optional<double> gbps() const;
  std::optional<double> copy_gbps() const;
};

struct CauseMigrations {
  uint8_t cause = 0;                   // trace::CauseName
  std::array<size_t, 2> migrations{};  // [0] device->host, [1] host->device
  std::array<uint64_t, 2> bytes{};
};

struct Analysis {
  std::string backend;
  uint32_t pid = 0;
  uint64_t start_ns = 0;
  uint64_t end_ns = 0;  // the end record's time, else the last timestamp in the trace
  bool complete = false;
  uint32_t dropped = 0;
  size_t records = 0;  // without the end record

  FaultCounts faults;
  // Per phase: the durations (ns, sorted) of the faults that have the phase, and their summary.
  std::array<std::vector<uint64_t>, kNumPhases> samples;
  std::array<Latency, kNumPhases> phases;
  std::vector<Bucket> histogram;  // of end-to-end latency

  std::vector<RangeFaults> ranges;  // ranges with faults (and the unknown row), most faults first
  size_t ranges_allocated = 0;
  size_t ranges_freed = 0;

  Throughput to_device;
  Throughput to_host;
  std::vector<CauseMigrations> causes;  // the causes seen, in cause order
  size_t migrations = 0;

  size_t evictions = 0;
  uint64_t evicted_bytes = 0;
  uint64_t eviction_ns = 0;  // sum of t[1] - t[0]

  size_t errors = 0;
  std::vector<std::pair<uint8_t, size_t>> errors_by_code;  // absl::StatusCode, count

  uint64_t duration_ns() const { return end_ns > start_ns ? end_ns - start_ns : 0; }
};

// The time a fault counts at for range attribution: t[kReceived], else its first timestamp.
uint64_t FaultTime(const trace::TraceRecord& r);

Analysis Analyze(const trace::Trace& t);

// The backend name from a header (NUL-padded, maybe not terminated).
std::string BackendName(const trace::TraceHeader& h);

}  // namespace uhmm::prof

#endif  // UHMM_TOOLS_UHMM_PROF_ANALYSIS_H_
