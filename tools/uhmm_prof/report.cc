// See report.h.
#include "tools/uhmm_prof/report.h"

#include <algorithm>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace uhmm::prof {

std::string Micros(uint64_t ns) {
  const uint64_t centi = ns / 10 + (ns % 10 >= 5 ? 1 : 0);  // hundredths of a microsecond
  return absl::StrFormat("%d.%02d", centi / 100, centi % 100);
}

std::string Micros(double ns) { return absl::StrFormat("%.2f", ns / 1000.0); }

std::string HumanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return absl::StrFormat("%d B", bytes);
  double v = static_cast<double>(bytes) / 1024.0;
  size_t u = 0;
  while (v >= 1024.0 && u + 1 < std::size(kUnits)) {
    v /= 1024.0;
    ++u;
  }
  return absl::StrFormat("%.1f %s", v, kUnits[u]);
}

std::string HumanDuration(uint64_t ns) {
  if (ns < 1000000) return absl::StrCat(Micros(ns), " us");
  if (ns < 1000000000) return absl::StrFormat("%.3f ms", static_cast<double>(ns) / 1e6);
  return absl::StrFormat("%.3f s", static_cast<double>(ns) / 1e9);
}

namespace {

std::string DirectionName(int dir) { return dir ? "host->device" : "device->host"; }

// "prefetch 4, launch 2" for one direction.
std::string CausesOf(const Analysis& a, int dir) {
  std::vector<std::string> parts;
  for (const CauseMigrations& c : a.causes) {
    if (c.migrations[dir] > 0) {
      parts.push_back(absl::StrCat(std::string(trace::CauseName(c.cause)), " ", c.migrations[dir]));
    }
  }
  return absl::StrJoin(parts, ", ");
}

}  // namespace

std::string FormatHeader(const Analysis& a, const std::string& path) {
  std::string s = absl::StrCat("uhmm-prof report: ", path, "\n");
  const auto line = [&](std::string_view key, std::string_view value) {
    absl::StrAppendFormat(&s, "  %-12s %s\n", key, value);
  };
  line("backend", a.backend.empty() ? "(unnamed)" : a.backend);
  line("pid", absl::StrCat(a.pid));
  line("duration", HumanDuration(a.duration_ns()));
  line("records",
       absl::StrFormat("%d (dropped %d)%s", a.records, a.dropped, a.complete ? "" : ", no end record"));
  line("faults", absl::StrFormat("%d (duplicates %d, covered %d, stale %d, SIGBUS %d)", a.faults.faults,
                                 a.faults.duplicates, a.faults.covered, a.faults.stale, a.faults.sigbus));
  std::string mig = absl::StrCat(a.migrations);
  for (int dir : {1, 0}) {
    const Throughput& tp = dir ? a.to_device : a.to_host;
    absl::StrAppend(&mig, dir ? ": " : "; ", DirectionName(dir), " ", tp.migrations);
    if (tp.migrations > 0) absl::StrAppend(&mig, " (", CausesOf(a, dir), ")");
  }
  line("migrations", mig);
  line("evictions", absl::StrFormat("%d (%s)", a.evictions, HumanBytes(a.evicted_bytes)));
  std::vector<std::string> codes;
  for (const auto& [code, n] : a.errors_by_code) {
    codes.push_back(absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(code)), " ", n));
  }
  line("errors", a.errors == 0 ? "0" : absl::StrFormat("%d (%s)", a.errors, absl::StrJoin(codes, ", ")));
  line("ranges", absl::StrFormat("%d allocated, %d freed", a.ranges_allocated, a.ranges_freed));
  if (!a.complete) {
    absl::StrAppend(&s,
                    "warning: the trace is incomplete (no end record): the program did not stop "
                    "tracing (did it crash or get killed?); this reports the records written before\n");
  }
  if (a.dropped > 0) {
    absl::StrAppendFormat(&s,
                          "warning: %d records were dropped (per-thread trace buffers were full); "
                          "counts and latencies miss them\n",
                          a.dropped);
  }
  return s;
}

std::string FormatPhaseTable(const Analysis& a) {
  if (a.faults.faults == 0) return "no CPU faults in this trace\n";
  std::string s = "CPU fault latency per phase (us; nearest-rank percentiles)\n";
  absl::StrAppendFormat(&s, "  %-12s %8s %10s %10s %10s %10s %10s\n", "phase", "count", "p50", "p90", "p99",
                        "max", "mean");
  for (int p = 0; p < kNumPhases; ++p) {
    const Latency& l = a.phases[p];
    if (l.count == 0) {
      absl::StrAppendFormat(&s, "  %-12s %8d %10s %10s %10s %10s %10s\n", PhaseName(p), 0, "-", "-", "-", "-",
                            "-");
      continue;
    }
    absl::StrAppendFormat(&s, "  %-12s %8d %10s %10s %10s %10s %10s\n", PhaseName(p), l.count, Micros(l.p50),
                          Micros(l.p90), Micros(l.p99), Micros(l.max), Micros(l.mean));
  }
  return s;
}

std::string FormatHistogram(const std::vector<Bucket>& buckets) {
  std::string s = "end-to-end fault latency histogram (us)\n";
  size_t top = 0;
  for (const Bucket& b : buckets) top = std::max(top, b.count);
  for (const Bucket& b : buckets) {
    const std::string label =
        b.lo_us == 0 ? "<1" : absl::StrCat(b.lo_us, "-", b.hi_us == UINT64_MAX ? "" : absl::StrCat(b.hi_us));
    size_t bar = top == 0 ? 0 : (b.count * kHistogramWidth + top / 2) / top;
    if (b.count > 0 && bar == 0) bar = 1;
    absl::StrAppendFormat(&s, "  %13s |%-*s %d\n", label, static_cast<int>(kHistogramWidth),
                          std::string(bar, '#'), b.count);
  }
  return s;
}

std::string FormatTopRanges(const Analysis& a, size_t top) {
  std::string s = absl::StrFormat("top %d managed ranges by CPU faults\n", top);
  if (a.ranges.empty()) return absl::StrCat(s, "  (no faults)\n");
  absl::StrAppendFormat(&s, "  %-18s %12s %8s %10s %10s\n", "range start", "size", "faults", "p50 (us)",
                        "p99 (us)");
  for (size_t i = 0; i < a.ranges.size() && i < top; ++i) {
    const RangeFaults& r = a.ranges[i];
    const std::string p50 = r.end_to_end.count ? Micros(r.end_to_end.p50) : "-";
    const std::string p99 = r.end_to_end.count ? Micros(r.end_to_end.p99) : "-";
    if (!r.known) {
      absl::StrAppendFormat(&s, "  %-18s %12s %8d %10s %10s\n", "(unknown range)", "-", r.faults, p50, p99);
    } else {
      absl::StrAppendFormat(&s, "  %-18s %12s %8d %10s %10s%s\n", absl::StrFormat("0x%x", r.start),
                            HumanBytes(r.bytes), r.faults, p50, p99, r.free_ns != 0 ? "  (freed)" : "");
    }
  }
  if (a.ranges.size() > top) {
    absl::StrAppendFormat(&s, "  (%d more ranges with faults)\n", a.ranges.size() - top);
  }
  return s;
}

std::string FormatMigrations(const Analysis& a) {
  std::string s = "migration throughput (GB/s = 10^9 bytes/s; busy = sum of per-migration times)\n";
  if (a.migrations == 0) return absl::StrCat(s, "  (no migrations)\n");
  absl::StrAppendFormat(&s, "  %-14s %10s %12s %12s %9s %10s\n", "direction", "migrations", "bytes",
                        "busy (ms)", "GB/s", "copy GB/s");
  for (int dir : {1, 0}) {
    const Throughput& tp = dir ? a.to_device : a.to_host;
    const auto gb = [](std::optional<double> v) { return v ? absl::StrFormat("%.2f", *v) : "-"; };
    absl::StrAppendFormat(&s, "  %-14s %10d %12s %12.3f %9s %10s\n", DirectionName(dir), tp.migrations,
                          HumanBytes(tp.bytes), static_cast<double>(tp.busy_ns) / 1e6, gb(tp.gbps()),
                          gb(tp.copy_gbps()));
  }
  absl::StrAppendFormat(&s, "  %-14s %10s %12s %14s %14s\n", "by cause", "migrations", "bytes",
                        "host->device", "device->host");
  for (const CauseMigrations& c : a.causes) {
    absl::StrAppendFormat(&s, "  %-14s %10d %12s %14s %14s\n",
                          absl::StrCat("  ", std::string(trace::CauseName(c.cause))),
                          c.migrations[0] + c.migrations[1], HumanBytes(c.bytes[0] + c.bytes[1]),
                          HumanBytes(c.bytes[1]), HumanBytes(c.bytes[0]));
  }
  return s;
}

std::string FormatReport(const Analysis& a, const std::string& path, size_t top_ranges) {
  std::string s = FormatHeader(a, path);
  s += "\n";
  s += FormatPhaseTable(a);
  if (a.faults.faults > 0) {
    if (!a.histogram.empty()) {
      s += "\n";
      s += FormatHistogram(a.histogram);
    }
    if (top_ranges > 0) {
      s += "\n";
      s += FormatTopRanges(a, top_ranges);
    }
  }
  s += "\n";
  s += FormatMigrations(a);
  return s;
}

}  // namespace uhmm::prof
