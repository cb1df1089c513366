// uhmm-prof --plot: the fault latency distribution of each phase as a standalone SVG picture.
#ifndef UHMM_TOOLS_UHMM_PROF_PLOT_H_
#define UHMM_TOOLS_UHMM_PROF_PLOT_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "tools/uhmm_prof/analysis.h"

namespace uhmm::prof {

// One row per phase (lookup, submit, copy, map, wake, end to end), each a histogram on one shared
// logarithmic time axis (microseconds, ticks at powers of 10) with p50 and p99 marked, titled with
// the phase and its count; the picture's title names the backend and the fault count. No scripts,
// no external fonts (generic sans-serif).
std::string LatencySvg(const Analysis& a);

// Whether `path` ends in .svg (any case): the only format --plot writes.
bool IsSvgPath(std::string_view path);

// Writes LatencySvg to `path`; the error names the file.
absl::Status WriteLatencySvg(const Analysis& a, const std::string& path);

}  // namespace uhmm::prof

#endif  // UHMM_TOOLS_UHMM_PROF_PLOT_H_
