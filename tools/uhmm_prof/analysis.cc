// See analysis.h.
#include "tools/uhmm_prof/analysis.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "absl/container/flat_hash_map.h"

namespace uhmm::prof {

using trace::RecordType;
using trace::TraceRecord;

namespace {

constexpr std::array<std::string_view, kNumPhases> kPhaseNames = {"lookup", "submit", "copy",
                                                                  "map",    "wake",   "end to end"};
constexpr std::array<int, kNumPhases> kBegin = {trace::kReceived, trace::kLookedUp, trace::kSubmitted,
                                                trace::kCopied,   trace::kMapped,   trace::kReceived};
constexpr std::array<int, kNumPhases> kEnd = {trace::kLookedUp, trace::kSubmitted, trace::kCopied,
                                              trace::kMapped,   trace::kWoken,     trace::kWoken};

struct RangeInstance {
  uint64_t start;
  uint64_t bytes;
  uint64_t alloc_ns;
  uint64_t free_ns;
  std::vector<uint64_t> e2e;
  size_t faults = 0;
};

}  // namespace

std::string_view PhaseName(int phase) { return phase >= 0 && phase < kNumPhases ? kPhaseNames[phase] : "?"; }
int PhaseBegin(int phase) { return kBegin.at(phase); }
int PhaseEnd(int phase) { return kEnd.at(phase); }

std::optional<uint64_t> PhaseDuration(const TraceRecord& r, int phase) {
  const uint64_t b = r.t[kBegin.at(phase)];
  const uint64_t e = r.t[kEnd.at(phase)];
  if (b == 0 || e == 0 || e < b) return std::nullopt;
  return e - b;
}

uint64_t NearestRank(const std::vector<uint64_t>& sorted, int percent) {
  if (sorted.empty()) return 0;
  const size_t n = sorted.size();
  // ceil(percent * n / 100) in integers, so that the rank is exact.
  size_t rank = (static_cast<size_t>(std::clamp(percent, 0, 100)) * n + 99) / 100;
  rank = std::clamp<size_t>(rank, 1, n);
  return sorted[rank - 1];
}

Latency Summarize(const std::vector<uint64_t>& sorted) {
  Latency l;
  l.count = sorted.size();
  if (sorted.empty()) return l;
  l.min = sorted.front();
  l.max = sorted.back();
  l.p50 = NearestRank(sorted, 50);
  l.p90 = NearestRank(sorted, 90);
  l.p99 = NearestRank(sorted, 99);
  long double sum = 0;
  for (uint64_t v : sorted) sum += v;
  l.mean = static_cast<double>(sum / sorted.size());
  return l;
}

std::vector<Bucket> Log2Histogram(const std::vector<uint64_t>& ns) {
  // Bucket 0: [0, 1) us; bucket k >= 1: [2^(k-1), 2^k) us.
  std::vector<size_t> counts(66, 0);
  for (uint64_t v : ns) {
    const uint64_t us = v / 1000;
    const size_t k = us == 0 ? 0 : static_cast<size_t>(64 - __builtin_clzll(us));
    ++counts[k];
  }
  std::vector<Bucket> out;
  size_t first = counts.size(), last = 0;
  for (size_t k = 0; k < counts.size(); ++k) {
    if (counts[k] == 0) continue;
    first = std::min(first, k);
    last = k;
  }
  if (first == counts.size()) return out;
  for (size_t k = first; k <= last; ++k) {
    Bucket b;
    b.lo_us = k == 0 ? 0 : uint64_t{1} << (k - 1);
    b.hi_us = k >= 64 ? UINT64_MAX : uint64_t{1} << k;
    b.count = counts[k];
    out.push_back(b);
  }
  return out;
}

std::optional<double> Throughput::gbps() const {
  if (busy_ns == 0) return std::nullopt;
  return static_cast<double>(timed_bytes) / static_cast<double>(busy_ns);
}

std::optional<double> Throughput::copy_gbps() const {
  if (copy_ns == 0) return std::nullopt;
  return static_cast<double>(copy_bytes) / static_cast<double>(copy_ns);
}

uint64_t FaultTime(const TraceRecord& r) {
  if (r.t[trace::kReceived] != 0) return r.t[trace::kReceived];
  for (uint64_t ts : r.t) {
    if (ts != 0) return ts;
  }
  return 0;
}

std::string BackendName(const trace::TraceHeader& h) {
  return std::string(h.backend, strnlen(h.backend, sizeof(h.backend)));
}

Analysis Analyze(const trace::Trace& t) {
  Analysis a;
  a.backend = BackendName(t.header);
  a.pid = t.header.pid;
  a.start_ns = t.header.start_ns;
  a.end_ns = t.end_ns;
  a.complete = t.complete;
  a.dropped = t.dropped;
  a.records = t.records.size();

  // The ranges: alloc and free records in time order (per-thread buffers are written out of order).
  std::vector<const TraceRecord*> range_events;
  for (const TraceRecord& r : t.records) {
    if (r.type == RecordType::kRange) range_events.push_back(&r);
  }
  std::stable_sort(range_events.begin(), range_events.end(),
                   [](const TraceRecord* x, const TraceRecord* y) { return x->t[0] < y->t[0]; });
  std::vector<RangeInstance> ranges;
  absl::flat_hash_map<uint64_t, size_t> live;  // start -> index in ranges
  for (const TraceRecord* r : range_events) {
    auto it = live.find(r->addr);
    if (r->cause != 0) {  // alloc
      ++a.ranges_allocated;
      if (it != live.end()) {  // its free record was dropped: it ended here at the latest
        ranges[it->second].free_ns = r->t[0];
        live.erase(it);
      }
      live[r->addr] = ranges.size();
      ranges.push_back({r->addr, r->bytes, r->t[0], 0, {}});
    } else {  // free
      ++a.ranges_freed;
      if (it != live.end()) {
        ranges[it->second].free_ns = r->t[0];
        live.erase(it);
      } else {  // allocated before the trace started
        ranges.push_back({r->addr, r->bytes, 0, r->t[0], {}});
      }
    }
  }
  std::vector<size_t> by_start(ranges.size());
  for (size_t i = 0; i < by_start.size(); ++i) by_start[i] = i;
  std::stable_sort(by_start.begin(), by_start.end(),
                   [&](size_t x, size_t y) { return ranges[x].start < ranges[y].start; });
  uint64_t max_bytes = 0;
  for (const RangeInstance& r : ranges) max_bytes = std::max(max_bytes, r.bytes);
  auto find_range = [&](uint64_t addr, uint64_t when) -> RangeInstance* {
    // The instances that start at or below addr, nearest first, as far back as the largest range.
    auto it = std::upper_bound(by_start.begin(), by_start.end(), addr,
                               [&](uint64_t v, size_t i) { return v < ranges[i].start; });
    while (it != by_start.begin()) {
      --it;
      RangeInstance& r = ranges[*it];
      if (addr - r.start >= max_bytes) break;
      if (addr - r.start < r.bytes && (r.alloc_ns == 0 || r.alloc_ns <= when) &&
          (r.free_ns == 0 || when <= r.free_ns)) {
        return &r;
      }
    }
    return nullptr;
  };
  RangeInstance unknown{0, 0, 0, 0, {}};

  std::map<uint8_t, CauseMigrations> causes;
  std::map<uint8_t, size_t> errors;
  for (const TraceRecord& r : t.records) {
    switch (r.type) {
      case RecordType::kFault: {
        ++a.faults.faults;
        if (r.flags & trace::kFaultDuplicate) ++a.faults.duplicates;
        if (r.flags & trace::kFaultCovered) ++a.faults.covered;
        if (r.flags & trace::kFaultStale) ++a.faults.stale;
        if (r.flags & trace::kFaultSigbus) ++a.faults.sigbus;
        for (int p = 0; p < kNumPhases; ++p) {
          if (auto d = PhaseDuration(r, p)) a.samples[p].push_back(*d);
        }
        RangeInstance* range = find_range(r.addr, FaultTime(r));
        if (range == nullptr) range = &unknown;
        ++range->faults;
        if (auto d = PhaseDuration(r, kEndToEnd)) range->e2e.push_back(*d);
        break;
      }
      case RecordType::kMigration: {
        ++a.migrations;
        const int dir = (r.flags & trace::kMigToDevice) ? 1 : 0;
        Throughput& tp = dir ? a.to_device : a.to_host;
        ++tp.migrations;
        tp.bytes += r.bytes;
        const uint64_t* ts = r.t;
        if (ts[trace::kMigStart] != 0 && ts[trace::kMigEnd] >= ts[trace::kMigStart]) {
          tp.timed_bytes += r.bytes;
          tp.busy_ns += ts[trace::kMigEnd] - ts[trace::kMigStart];
        }
        if (ts[trace::kMigSubmitted] != 0 && ts[trace::kMigCopied] >= ts[trace::kMigSubmitted]) {
          tp.copy_bytes += r.bytes;
          tp.copy_ns += ts[trace::kMigCopied] - ts[trace::kMigSubmitted];
        }
        CauseMigrations& c = causes[r.cause];
        c.cause = r.cause;
        ++c.migrations[dir];
        c.bytes[dir] += r.bytes;
        break;
      }
      case RecordType::kEviction:
        ++a.evictions;
        a.evicted_bytes += r.bytes;
        if (r.t[0] != 0 && r.t[1] >= r.t[0]) a.eviction_ns += r.t[1] - r.t[0];
        break;
      case RecordType::kError:
        ++a.errors;
        ++errors[r.cause];
        break;
      case RecordType::kRange:
      case RecordType::kEnd:
        break;
    }
  }
  for (int p = 0; p < kNumPhases; ++p) {
    std::sort(a.samples[p].begin(), a.samples[p].end());
    a.phases[p] = Summarize(a.samples[p]);
  }
  a.histogram = Log2Histogram(a.samples[kEndToEnd]);

  auto add_row = [&](RangeInstance& r, bool known) {
    if (r.faults == 0) return;
    std::sort(r.e2e.begin(), r.e2e.end());
    RangeFaults row;
    row.known = known;
    row.start = r.start;
    row.bytes = r.bytes;
    row.alloc_ns = r.alloc_ns;
    row.free_ns = r.free_ns;
    row.faults = r.faults;
    row.end_to_end = Summarize(r.e2e);
    a.ranges.push_back(row);
  };
  for (RangeInstance& r : ranges) add_row(r, true);
  add_row(unknown, false);
  std::stable_sort(a.ranges.begin(), a.ranges.end(), [](const RangeFaults& x, const RangeFaults& y) {
    if (x.faults != y.faults) return x.faults > y.faults;
    if (x.known != y.known) return x.known;
    return x.start < y.start;
  });
  for (const auto& [cause, c] : causes) a.causes.push_back(c);
  for (const auto& [code, n] : errors) a.errors_by_code.emplace_back(code, n);
  return a;
}

}  // namespace uhmm::prof
