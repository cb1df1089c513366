// See trace_file.h.
#include "runtime/trace/trace_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"

namespace uhmm::trace {

std::string_view CauseName(uint8_t cause) {
  switch (cause) {
    case 0:
      return "prefetch";
    case 1:
      return "fault";
    case 2:
      return "eviction";
    case 3:
      return "address-change";
    case 4:
      return "fork";
    case 5:
      return "launch";
    case 6:
      return "readahead";
    default:
      return "unknown";
  }
}

absl::StatusOr<TraceWriter> TraceWriter::Open(const std::string& path, std::string_view backend,
                                              uint64_t start_ns, uint64_t start_unix_ns) {
  // Created 0600 (a trace shows the process's addresses and timing) and close-on-exec.
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  std::FILE* f = fd < 0 ? nullptr : fdopen(fd, "wb");
  if (f == nullptr) {
    const int err = errno;
    if (fd >= 0) close(fd);
    return absl::InvalidArgumentError(
        absl::StrFormat("trace file %s cannot be created: %s", path, strerror(err)));
  }
  TraceHeader h = {};
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  h.version = kVersion;
  h.record_size = sizeof(TraceRecord);
  h.start_ns = start_ns;
  h.start_unix_ns = start_unix_ns;
  h.pid = static_cast<uint32_t>(getpid());
  std::memcpy(h.backend, backend.data(), std::min(backend.size(), sizeof(h.backend) - 1));
  TraceWriter w(f, path);
  if (std::fwrite(&h, sizeof(h), 1, f) != 1) {
    return absl::InternalError(absl::StrFormat("writing trace file %s: %s", path, strerror(errno)));
  }
  return w;
}

TraceWriter::~TraceWriter() {
  if (f_ != nullptr) std::fclose(f_);
}

absl::Status TraceWriter::Write(const TraceRecord* records, size_t n) {
  if (f_ == nullptr) return absl::FailedPreconditionError("trace writer is closed");
  if (n > 0 && std::fwrite(records, sizeof(TraceRecord), n, f_) != n) {
    return absl::InternalError(absl::StrFormat("writing trace file %s: %s", path_, strerror(errno)));
  }
  written_ += n;
  return absl::OkStatus();
}

absl::Status TraceWriter::Finish(uint32_t dropped, uint64_t end_ns) {
  TraceRecord end = {};
  end.type = RecordType::kEnd;
  end.device = -1;
  end.aux = dropped;
  end.t[0] = end_ns;
  absl::Status s = Write(&end, 1);
  if (f_ != nullptr && std::fclose(f_) != 0 && s.ok()) {
    s = absl::InternalError(absl::StrFormat("closing trace file %s: %s", path_, strerror(errno)));
  }
  f_ = nullptr;
  return s;
}

absl::StatusOr<Trace> ReadTrace(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rbe");
  if (f == nullptr) {
    const int err = errno;
    std::string msg = absl::StrFormat("cannot open trace file %s: %s", path, strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::InvalidArgumentError(msg);
  }
  std::vector<char> data;
  char buf[1 << 16];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), f)) > 0;) data.insert(data.end(), buf, buf + n);
  const bool read_error = std::ferror(f) != 0;
  std::fclose(f);
  if (read_error) return absl::InvalidArgumentError(absl::StrFormat("cannot read trace file %s", path));
  if (data.empty()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "trace file %s is empty: the traced program wrote nothing (did it create a uhmm runtime?)", path));
  }
  Trace t;
  if (data.size() < sizeof(TraceHeader)) {
    if (std::memcmp(data.data(), kMagic, std::min(data.size(), sizeof(kMagic))) != 0) {
      return absl::InvalidArgumentError(absl::StrFormat("%s is not a uhmm trace file", path));
    }
    return absl::DataLossError(
        absl::StrFormat("trace file %s is truncated: %u bytes, shorter than its %u-byte header", path,
                        data.size(), sizeof(TraceHeader)));
  }
  std::memcpy(&t.header, data.data(), sizeof(TraceHeader));
  if (std::memcmp(t.header.magic, kMagic, sizeof(kMagic)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s is not a uhmm trace file (it does not start with the uhmm trace magic)", path));
  }
  if (t.header.version != kVersion || t.header.record_size != sizeof(TraceRecord)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "trace file %s has format version %u with %u-byte records; this uhmm-prof reads version %u "
        "with %u-byte records",
        path, t.header.version, t.header.record_size, kVersion, sizeof(TraceRecord)));
  }
  const size_t body = data.size() - sizeof(TraceHeader);
  const size_t n = body / sizeof(TraceRecord);
  if (body % sizeof(TraceRecord) != 0) {
    return absl::DataLossError(
        absl::StrFormat("trace file %s is truncated: %u complete records, then %u bytes of a cut-off record",
                        path, n, body % sizeof(TraceRecord)));
  }
  t.records.resize(n);
  if (n > 0) std::memcpy(t.records.data(), data.data() + sizeof(TraceHeader), n * sizeof(TraceRecord));
  if (!t.records.empty() && t.records.back().type == RecordType::kEnd) {
    t.complete = true;
    t.dropped = t.records.back().aux;
    t.end_ns = t.records.back().t[0];
    t.records.pop_back();
  } else {
    for (const TraceRecord& r : t.records) {
      for (uint64_t ts : r.t) t.end_ns = std::max(t.end_ns, ts);
    }
  }
  for (size_t i = 0; i < t.records.size(); ++i) {
    const auto type = static_cast<uint8_t>(t.records[i].type);
    if (type < static_cast<uint8_t>(RecordType::kFault) || type >= static_cast<uint8_t>(RecordType::kEnd)) {
      return absl::DataLossError(
          absl::StrFormat("trace file %s is corrupt: record %u has unknown type %u", path, i, type));
    }
  }
  return t;
}

}  // namespace uhmm::trace
