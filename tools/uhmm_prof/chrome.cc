// See chrome.h.
#include "tools/uhmm_prof/chrome.h"

#include <algorithm>
#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "tools/uhmm_prof/analysis.h"
#include "tools/uhmm_prof/io.h"

namespace uhmm::prof {

using trace::RecordType;
using trace::TraceRecord;

std::string JsonString(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20 || c >= 0x7f) {
          absl::StrAppendFormat(&out, "\\u%04x", c);
        } else {
          out += ch;
        }
    }
  }
  out += '"';
  return out;
}

std::string JsonMicros(int64_t ns) {
  const uint64_t mag = ns < 0 ? 0 - static_cast<uint64_t>(ns) : static_cast<uint64_t>(ns);
  return absl::StrFormat("%s%d.%03d", ns < 0 ? "-" : "", mag / 1000, mag % 1000);
}

namespace {

std::string Hex(uint64_t v) { return JsonString(absl::StrFormat("0x%x", v)); }

std::string FaultFlags(uint8_t flags) {
  std::vector<std::string> names;
  if (flags & trace::kFaultDuplicate) names.push_back("duplicate");
  if (flags & trace::kFaultCovered) names.push_back("covered");
  if (flags & trace::kFaultStale) names.push_back("stale");
  if (flags & trace::kFaultSigbus) names.push_back("sigbus");
  return names.empty() ? "none" : absl::StrJoin(names, ",");
}

class Events {
 public:
  explicit Events(const trace::Trace& t) : start_ns_(t.header.start_ns), pid_(t.header.pid) {}

  // ts relative to the session start; 0 for a timestamp that was not taken.
  std::string Ts(uint64_t ts) const { return JsonMicros(ts == 0 ? 0 : static_cast<int64_t>(ts - start_ns_)); }

  // `args` is the inside of the args object ("" for none).
  void Complete(std::string_view name, std::string_view cat, uint32_t tid, uint64_t begin, uint64_t end,
                const std::string& args) {
    Add(absl::StrCat("{\"name\":", JsonString(name), ",\"cat\":", JsonString(cat),
                     ",\"ph\":\"X\",\"pid\":", pid_, ",\"tid\":", tid, ",\"ts\":", Ts(begin),
                     ",\"dur\":", JsonMicros(static_cast<int64_t>(end - begin)), ",\"args\":{", args, "}}"));
  }
  void Instant(std::string_view name, std::string_view cat, uint32_t tid, uint64_t ts,
               const std::string& args) {
    Add(absl::StrCat("{\"name\":", JsonString(name), ",\"cat\":", JsonString(cat),
                     ",\"ph\":\"i\",\"s\":\"p\",\"pid\":", pid_, ",\"tid\":", tid, ",\"ts\":", Ts(ts),
                     ",\"args\":{", args, "}}"));
  }
  void Metadata(std::string_view what, uint32_t tid, std::string_view name) {
    Add(absl::StrCat("{\"name\":", JsonString(what), ",\"ph\":\"M\",\"pid\":", pid_, ",\"tid\":", tid,
                     ",\"args\":{\"name\":", JsonString(name), "}}"));
  }

  size_t count() const { return count_; }
  std::string Finish(const trace::Trace& t) {
    return absl::StrCat("{\"traceEvents\":[\n", body_, "\n],\n\"displayTimeUnit\":\"ns\",\n",
                        "\"otherData\":{\"backend\":", JsonString(BackendName(t.header)),
                        ",\"pid\":", t.header.pid, ",\"complete\":", t.complete ? "true" : "false",
                        ",\"dropped_records\":", t.dropped, "}}\n");
  }

 private:
  void Add(const std::string& event) {
    if (count_++ > 0) body_ += ",\n";
    body_ += event;
  }

  uint64_t start_ns_;
  uint32_t pid_;
  std::string body_;
  size_t count_ = 0;
};

}  // namespace

std::string ChromeTraceJson(const trace::Trace& t, size_t* events_out) {
  Events ev(t);
  ev.Metadata("process_name", 0, absl::StrCat("uhmm ", BackendName(t.header)));
  // Each thread is named after what it did, in record type order: "uhmm fault service",
  // "uhmm migration + eviction".
  static constexpr const char* kRoles[] = {"",         "fault service", "migration",
                                           "eviction", "error",         "alloc/free"};
  std::map<uint32_t, unsigned> roles;  // tid -> bit per record type
  for (const TraceRecord& r : t.records) {
    const auto type = static_cast<unsigned>(r.type);
    if (type >= 1 && type < std::size(kRoles)) roles[r.tid] |= 1u << type;
  }
  for (const auto& [tid, bits] : roles) {
    std::vector<std::string> what;
    for (unsigned type = 1; type < std::size(kRoles); ++type) {
      if (bits & (1u << type)) what.push_back(kRoles[type]);
    }
    ev.Metadata("thread_name", tid, absl::StrCat("uhmm ", absl::StrJoin(what, " + ")));
  }

  for (const TraceRecord& r : t.records) {
    switch (r.type) {
      case RecordType::kFault: {
        uint64_t begin = 0, end = 0;
        for (uint64_t ts : r.t) {
          if (ts == 0) continue;
          begin = begin == 0 ? ts : std::min(begin, ts);
          end = std::max(end, ts);
        }
        if (begin == 0) break;  // no timestamp at all
        const std::string args =
            absl::StrCat("\"address\":", Hex(r.addr), ",\"bytes\":", r.bytes, ",\"thread\":", r.aux,
                         ",\"flags\":", JsonString(FaultFlags(r.flags)));
        const std::string phase_args = absl::StrCat("\"address\":", Hex(r.addr));
        const std::string flags = FaultFlags(r.flags);
        ev.Complete(flags == "none" ? "fault" : absl::StrCat("fault (", flags, ")"), "fault", r.tid, begin,
                    end, args);
        for (int p = 0; p < kEndToEnd; ++p) {
          if (!PhaseDuration(r, p)) continue;
          ev.Complete(PhaseName(p), "fault", r.tid, r.t[PhaseBegin(p)], r.t[PhaseEnd(p)], phase_args);
        }
        break;
      }
      case RecordType::kMigration: {
        const bool to_device = r.flags & trace::kMigToDevice;
        const uint64_t begin = r.t[trace::kMigStart];
        const uint64_t end = std::max(r.t[trace::kMigEnd], begin);
        std::string args = absl::StrCat("\"address\":", Hex(r.addr), ",\"bytes\":", r.bytes,
                                        ",\"device\":", static_cast<int>(r.device));
        if (r.t[trace::kMigSubmitted] != 0 && r.t[trace::kMigCopied] >= r.t[trace::kMigSubmitted]) {
          absl::StrAppend(
              &args, ",\"copy_us\":",
              JsonMicros(static_cast<int64_t>(r.t[trace::kMigCopied] - r.t[trace::kMigSubmitted])));
        }
        ev.Complete(absl::StrCat("migrate ", std::string(trace::CauseName(r.cause)), " ",
                                 to_device ? "host->device" : "device->host"),
                    "migration", r.tid, begin, end, args);
        break;
      }
      case RecordType::kEviction:
        ev.Complete("evict", "eviction", r.tid, r.t[0], std::max(r.t[1], r.t[0]),
                    absl::StrCat("\"address\":", Hex(r.addr), ",\"bytes\":", r.bytes,
                                 ",\"device\":", static_cast<int>(r.device)));
        break;
      case RecordType::kError: {
        const std::string code = absl::StatusCodeToString(static_cast<absl::StatusCode>(r.cause));
        ev.Instant(absl::StrCat("error ", code), "error", r.tid, r.t[0],
                   absl::StrCat("\"address\":", Hex(r.addr), ",\"code\":", JsonString(code),
                                ",\"device\":", static_cast<int>(r.device)));
        break;
      }
      case RecordType::kRange:
        ev.Instant(r.cause != 0 ? "alloc range" : "free range", "range", r.tid, r.t[0],
                   absl::StrCat("\"address\":", Hex(r.addr), ",\"bytes\":", r.bytes));
        break;
      case RecordType::kEnd:
        break;
    }
  }
  if (events_out != nullptr) *events_out = ev.count();
  return ev.Finish(t);
}

absl::Status WriteChromeTrace(const trace::Trace& t, const std::string& path, size_t* events) {
  return WriteFile(path, ChromeTraceJson(t, events));
}

}  // namespace uhmm::prof
