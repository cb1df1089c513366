// Synthetic uhmm traces with known latencies, for uhmm_prof_test and the uhmm-prof CLI tests
// (through uhmm_prof_trace_gen).
#ifndef UHMM_TESTS_UHMM_PROF_SYNTHETIC_H_
#define UHMM_TESTS_UHMM_PROF_SYNTHETIC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "runtime/trace/trace_file.h"

namespace uhmm::prof::synthetic {

using trace::RecordType;
using trace::TraceRecord;

inline constexpr uint64_t kUs = 1000;
inline constexpr uint64_t kMs = 1000 * kUs;
inline constexpr uint64_t kStartNs = 1'000'000'000;  // the session start
inline constexpr uint64_t kEndNs = kStartNs + 500 * kMs;
inline constexpr uint64_t kSkip = UINT64_MAX;  // a phase that did not happen
inline constexpr uint64_t kRangeA = 0x7f0000000000;
inline constexpr uint64_t kRangeASize = 64 << 20;
inline constexpr uint64_t kRangeB = 0x7f1000000000;
inline constexpr uint64_t kRangeBSize = 2 << 20;
inline constexpr uint32_t kFaultingThread = 500;

// A fault received at `received`, each phase (lookup, submit, copy, map, wake) taking the given ns
// after the previous timestamp; kSkip leaves the phase's end timestamp 0.
inline TraceRecord Fault(uint64_t addr, uint64_t received, uint64_t lookup, uint64_t submit, uint64_t copy,
                         uint64_t map, uint64_t wake, uint8_t flags = 0, uint32_t tid = 101) {
  TraceRecord r = {};
  r.type = RecordType::kFault;
  r.flags = flags;
  r.device = 0;
  r.tid = tid;
  r.addr = addr;
  r.bytes = 64 << 10;
  r.aux = kFaultingThread;
  r.t[trace::kReceived] = received;
  uint64_t now = received;
  const uint64_t phases[5] = {lookup, submit, copy, map, wake};
  for (int i = 0; i < 5; ++i) {
    if (phases[i] == kSkip) continue;
    now += phases[i];
    r.t[i + 1] = now;
  }
  return r;
}

// A migration starting at `start`: submitted `submit` ns later, copied `copy` ns after that,
// ended `busy` ns after the start (copy timestamps left 0 when copy is kSkip).
inline TraceRecord Migration(uint8_t cause, bool to_device, uint64_t addr, uint64_t bytes, uint64_t start,
                             uint64_t busy, uint64_t submit, uint64_t copy, uint32_t tid = 201) {
  TraceRecord r = {};
  r.type = RecordType::kMigration;
  r.cause = cause;
  r.flags = to_device ? trace::kMigToDevice : 0;
  r.device = 0;
  r.tid = tid;
  r.addr = addr;
  r.bytes = bytes;
  r.t[trace::kMigStart] = start;
  if (copy != kSkip) {
    r.t[trace::kMigSubmitted] = start + submit;
    r.t[trace::kMigCopied] = start + submit + copy;
  }
  r.t[trace::kMigEnd] = start + busy;
  return r;
}

inline TraceRecord Range(bool alloc, uint64_t start, uint64_t size, uint64_t when, uint32_t tid = 300) {
  TraceRecord r = {};
  r.type = RecordType::kRange;
  r.cause = alloc ? 1 : 0;
  r.device = -1;
  r.tid = tid;
  r.addr = start;
  r.bytes = size;
  r.t[0] = when;
  return r;
}

inline TraceRecord Eviction(uint64_t addr, uint64_t bytes, uint64_t start, uint64_t end) {
  TraceRecord r = {};
  r.type = RecordType::kEviction;
  r.cause = 2;
  r.device = 0;
  r.tid = 202;
  r.addr = addr;
  r.bytes = bytes;
  r.t[0] = start;
  r.t[1] = end;
  return r;
}

inline TraceRecord Error(absl::StatusCode code, uint64_t addr, uint64_t when) {
  TraceRecord r = {};
  r.type = RecordType::kError;
  r.cause = static_cast<uint8_t>(code);
  r.device = 0;
  r.tid = 101;
  r.addr = addr;
  r.t[0] = when;
  return r;
}

// The faults of the synthetic trace: 100 that copy, fault i (1..100) received at
// start + i ms, with lookup 1 us, submit 2 us, copy i us, map 3 us, wake 4 us (end to end 10 + i
// us; every fifth one in range B, the others in range A); and 10 duplicates (no submit, no copy)
// with lookup 1 us, map 5 us after the lookup, wake 4 us (end to end 10 us), in range A.
inline std::vector<TraceRecord> Faults() {
  std::vector<TraceRecord> v;
  for (uint64_t i = 1; i <= 100; ++i) {
    const uint64_t addr = i % 5 == 0 ? kRangeB + (i / 5) * 4096 : kRangeA + i * (64 << 10);
    v.push_back(Fault(addr, kStartNs + i * kMs, 1 * kUs, 2 * kUs, i * kUs, 3 * kUs, 4 * kUs, 0,
                      static_cast<uint32_t>(101 + i % 2)));
  }
  for (uint64_t j = 0; j < 10; ++j) {
    v.push_back(Fault(kRangeA + j * 4096, kStartNs + 200 * kMs + j * 100 * kUs, 1 * kUs, kSkip, kSkip,
                      5 * kUs, 4 * kUs, trace::kFaultDuplicate));
  }
  return v;
}

// Everything but the faults: ranges A and B allocated at the start (B freed at 300 ms), 4
// prefetches to the device (2 MiB, busy 1 ms, copy 900 us), 3 fault migrations to the host
// (64 KiB, busy 40 us, copy 20 us), an eviction migration to the host (2 MiB, busy 800 us, no copy
// timestamps) with its eviction record, an UNAVAILABLE error.
inline std::vector<TraceRecord> Others() {
  std::vector<TraceRecord> v;
  v.push_back(Range(true, kRangeA, kRangeASize, kStartNs + 1 * kUs));
  v.push_back(Range(true, kRangeB, kRangeBSize, kStartNs + 2 * kUs));
  for (uint64_t i = 0; i < 4; ++i) {
    v.push_back(Migration(0, true, kRangeA + i * (2 << 20), 2 << 20, kStartNs + 300 * kUs + i * kMs, 1 * kMs,
                          50 * kUs, 900 * kUs));
  }
  for (uint64_t i = 0; i < 3; ++i) {
    v.push_back(Migration(1, false, kRangeA + i * (64 << 10), 64 << 10, kStartNs + (i + 1) * kMs + 2 * kUs,
                          40 * kUs, 5 * kUs, 20 * kUs));
  }
  v.push_back(Migration(2, false, kRangeA, 2 << 20, kStartNs + 250 * kMs, 800 * kUs, 0, kSkip, 202));
  v.push_back(Eviction(kRangeA, 2 << 20, kStartNs + 250 * kMs, kStartNs + 250 * kMs + 800 * kUs));
  v.push_back(Error(absl::StatusCode::kUnavailable, kRangeA + 4096, kStartNs + 260 * kMs));
  v.push_back(Range(false, kRangeB, kRangeBSize, kStartNs + 300 * kMs));
  return v;
}

inline std::vector<TraceRecord> AllRecords(bool with_faults = true) {
  std::vector<TraceRecord> v = Others();
  if (with_faults) {
    const std::vector<TraceRecord> f = Faults();
    v.insert(v.begin() + 2, f.begin(), f.end());
  }
  return v;
}

// Writes a trace of `records` to `path`, with the end record unless `finish` is false.
inline absl::Status Write(const std::string& path, const std::vector<TraceRecord>& records,
                          bool finish = true, uint32_t dropped = 0, std::string_view backend = "host") {
  absl::StatusOr<trace::TraceWriter> w =
      trace::TraceWriter::Open(path, backend, kStartNs, 1700000000ull * 1000000000ull);
  if (!w.ok()) return w.status();
  if (absl::Status s = w->Write(records.data(), records.size()); !s.ok()) return s;
  if (!finish) return absl::OkStatus();
  return w->Finish(dropped, kEndNs);
}

}  // namespace uhmm::prof::synthetic

#endif  // UHMM_TESTS_UHMM_PROF_SYNTHETIC_H_
