// uhmm-prof's text report of an Analysis.
#ifndef UHMM_TOOLS_UHMM_PROF_REPORT_H_
#define UHMM_TOOLS_UHMM_PROF_REPORT_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "tools/uhmm_prof/analysis.h"

namespace uhmm::prof {

inline constexpr size_t kHistogramWidth = 50;  // '#'s of the largest bucket

// The whole report: header and warnings, per-phase latency table, end-to-end histogram, the top
// `top_ranges` ranges by faults (0: that section is left out), migration throughput.
std::string FormatReport(const Analysis& a, const std::string& path, size_t top_ranges);

// Pieces of it (also for tests).
std::string FormatHeader(const Analysis& a, const std::string& path);
std::string FormatPhaseTable(const Analysis& a);
std::string FormatHistogram(const std::vector<Bucket>& buckets);
std::string FormatTopRanges(const Analysis& a, size_t top);
std::string FormatMigrations(const Analysis& a);

// "12.34": ns as microseconds with 2 decimals.
std::string Micros(uint64_t ns);
std::string Micros(double ns);
// "64.0 MiB", "512 B".
std::string HumanBytes(uint64_t bytes);
// "850.00 us", "12.345 ms", "3.210 s".
std::string HumanDuration(uint64_t ns);

}  // namespace uhmm::prof

#endif  // UHMM_TOOLS_UHMM_PROF_REPORT_H_
