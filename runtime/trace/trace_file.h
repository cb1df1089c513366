// The uhmm trace file: what UHMM_TRACE=path (or uhmm_trace_start) writes and `uhmm-prof` reads.
//
// Layout, little-endian, fixed-size so that writing a record is one copy:
//   TraceHeader (64 bytes), then TraceRecord (80 bytes) after TraceRecord, the last one of type
//   kEnd. A file without the kEnd record comes from a process that did not stop tracing (it
//   crashed or was killed): its complete records are still readable.
// Timestamps are CLOCK_MONOTONIC nanoseconds (TraceHeader::start_ns is the session start).
#ifndef UHMM_RUNTIME_TRACE_TRACE_FILE_H_
#define UHMM_RUNTIME_TRACE_TRACE_FILE_H_

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace uhmm::trace {

inline constexpr char kMagic[8] = {'u', 'h', 'm', 'm', 'T', 'R', 'C', '1'};
inline constexpr uint32_t kVersion = 1;

struct TraceHeader {
  char magic[8];
  uint32_t version;
  uint32_t record_size;    // sizeof(TraceRecord)
  uint64_t start_ns;       // CLOCK_MONOTONIC at the start of the session
  uint64_t start_unix_ns;  // CLOCK_REALTIME at the same moment
  uint32_t pid;
  uint32_t reserved;
  char backend[24];  // NUL-padded
};
static_assert(sizeof(TraceHeader) == 64);

enum class RecordType : uint8_t {
  kFault = 1,      // one CPU fault message served
  kMigration = 2,  // one migration of one 2 MiB block (or part of one), any cause
  kEviction = 3,   // one device chunk evicted to make room
  kError = 4,      // a failure the application saw (a SIGBUS, a failed migration)
  kRange = 5,      // a managed range allocated (cause 1) or freed (cause 0)
  kEnd = 6,        // the session ended cleanly; aux = records dropped (full per-thread buffers)
};

// Fault phases, the indexes of TraceRecord::t for kFault. A phase that did not happen is 0 (a
// duplicate fault maps a page another fault brought back: it has no copy).
enum FaultPhase : int {
  kReceived = 0,   // a service thread took the message up (read it, or re-dispatched a deferred
                   // one); messages read in one batch are each stamped when their turn comes
  kLookedUp = 1,   // range and block found, the page's state known
  kSubmitted = 2,  // the copy back is queued on the copy engine
  kCopied = 3,     // the copy engine finished
  kMapped = 4,     // UFFDIO_CONTINUE mapped the granule (traced faults map without waking)
  kWoken = 5,      // UFFDIO_WAKE returned: the faulting thread can run
  kFaultPhases = 6,
};
// Migration timestamps, indexes of TraceRecord::t for kMigration.
enum MigrationPhase : int { kMigStart = 0, kMigSubmitted = 1, kMigCopied = 2, kMigEnd = 3 };

// kFault flags.
inline constexpr uint8_t kFaultDuplicate = 1;  // the page was already host resident: no copy
inline constexpr uint8_t kFaultCovered = 2;    // it waited for a migration (a prefetch, an eviction)
                                               // that brought the page back
inline constexpr uint8_t kFaultStale = 4;      // an old message; the thread was only woken
inline constexpr uint8_t kFaultSigbus = 8;     // the device could not give the page back
// kMigration flags.
inline constexpr uint8_t kMigToDevice = 1;

// Migration causes (uhmm::MigrateCause values).
std::string_view CauseName(uint8_t cause);

struct TraceRecord {
  RecordType type;
  uint8_t cause;   // kMigration/kEviction: MigrateCause; kError: absl::StatusCode; kRange: 1 alloc, 0 free
  uint8_t flags;   // see above
  int8_t device;   // device ordinal; -1: none
  uint32_t tid;    // the thread that did the work (for faults: the fault-service thread)
  uint64_t addr;   // fault address, first migrated address, range start, evicted chunk's block
  uint64_t bytes;  // bytes migrated, range size, bytes evicted
  uint64_t t[6];   // CLOCK_MONOTONIC ns; see FaultPhase / MigrationPhase; others: t[0] start, t[1] end
  uint32_t aux;    // kFault: the faulting thread; kEnd: records dropped
  uint32_t reserved;
};
static_assert(sizeof(TraceRecord) == 80);

// Appends records to a trace file. Not thread-safe: one writer.
class TraceWriter {
 public:
  static absl::StatusOr<TraceWriter> Open(const std::string& path, std::string_view backend,
                                          uint64_t start_ns, uint64_t start_unix_ns);
  TraceWriter(TraceWriter&& o) noexcept : f_(o.f_), path_(std::move(o.path_)), written_(o.written_) {
    o.f_ = nullptr;
  }
  TraceWriter& operator=(TraceWriter&&) = delete;
  ~TraceWriter();

  absl::Status Write(const TraceRecord* records, size_t n);
  // Writes the kEnd record and closes the file.
  absl::Status Finish(uint32_t dropped, uint64_t end_ns);
  // Lets go of the file without writing or closing it (a forked child shares the parent's).
  void Abandon() { f_ = nullptr; }
  uint64_t records_written() const { return written_; }
  const std::string& path() const { return path_; }

 private:
  TraceWriter(std::FILE* f, std::string path) : f_(f), path_(std::move(path)) {}
  std::FILE* f_;
  std::string path_;
  uint64_t written_ = 0;
};

struct Trace {
  TraceHeader header;
  std::vector<TraceRecord> records;  // without the kEnd record
  bool complete = false;             // it had the kEnd record
  uint32_t dropped = 0;              // from the kEnd record
  uint64_t end_ns = 0;               // from the kEnd record, else the last timestamp seen
};

// Reads and checks a trace. Errors name the file and say what is wrong with it: missing (NOT_FOUND),
// empty, not a uhmm trace, another version, cut in the middle of the header or of a record
// (INVALID_ARGUMENT / DATA_LOSS). A file without the end record reads with complete = false.
absl::StatusOr<Trace> ReadTrace(const std::string& path);

}  // namespace uhmm::trace

#endif  // UHMM_RUNTIME_TRACE_TRACE_FILE_H_
