// uhmm-prof --chrome: a trace as Chrome trace-event JSON (the object form, loadable in
// ui.perfetto.dev and chrome://tracing).
#ifndef UHMM_TOOLS_UHMM_PROF_CHROME_H_
#define UHMM_TOOLS_UHMM_PROF_CHROME_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "runtime/trace/trace_file.h"

namespace uhmm::prof {

// The JSON document. Per fault one "X" event for the whole fault and one per phase that happened
// (cat "fault"), on pid = the header's pid and tid = the service thread; migrations, evictions as
// "X" events; errors and range allocs/frees as "i" events; "M" events naming the process and
// threads. ts/dur are microseconds since header.start_ns with 3 decimals. `events` (optional)
// receives the number of events.
std::string ChromeTraceJson(const trace::Trace& t, size_t* events = nullptr);

// Writes ChromeTraceJson to `path`; the error names the file.
absl::Status WriteChromeTrace(const trace::Trace& t, const std::string& path, size_t* events = nullptr);

// JSON helpers (also for the tests): a quoted, escaped string literal (bytes outside ASCII are
// escaped as \u00XX so that the output is valid UTF-8 whatever the input), and ns as "12.345" us.
std::string JsonString(std::string_view s);
std::string JsonMicros(int64_t ns);

}  // namespace uhmm::prof

#endif  // UHMM_TOOLS_UHMM_PROF_CHROME_H_
