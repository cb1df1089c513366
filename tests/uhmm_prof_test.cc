// uhmm-prof: the trace file round trip and its errors, the analysis (exact nearest-rank
// percentiles per phase, range attribution, migration throughput), the report text, the Chrome
// JSON and the SVG plot, on synthetic traces (tests/uhmm_prof_synthetic.h).
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "runtime/trace/trace_file.h"
#include "tests/uhmm_prof_synthetic.h"
#include "tools/uhmm_prof/analysis.h"
#include "tools/uhmm_prof/chrome.h"
#include "tools/uhmm_prof/plot.h"
#include "tools/uhmm_prof/report.h"

namespace uhmm::prof {
namespace {

namespace syn = synthetic;
using syn::kMs;
using syn::kStartNs;
using syn::kUs;
using trace::RecordType;
using trace::TraceRecord;

// A scratch file for this test (tests run as separate processes, maybe in parallel).
std::string TempPath(std::string_view suffix) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return absl::StrCat(::testing::TempDir(), "/uhmm_prof_", info->test_suite_name(), "_", info->name(), "_",
                      getpid(), std::string(suffix));
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void WriteAll(const std::string& path, std::string_view data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  ASSERT_TRUE(out.good()) << path;
}

trace::Trace SyntheticTrace(bool with_faults = true) {
  trace::Trace t = {};
  std::memcpy(t.header.magic, trace::kMagic, sizeof(trace::kMagic));
  t.header.version = trace::kVersion;
  t.header.record_size = sizeof(TraceRecord);
  t.header.start_ns = kStartNs;
  t.header.pid = 4242;
  std::strcpy(t.header.backend, "host");
  t.records = syn::AllRecords(with_faults);
  t.complete = true;
  t.end_ns = syn::kEndNs;
  return t;
}

// ---------------------------------------------------------------------------------------------
// (a) The trace file round trip.

TEST(TraceFile, RoundTripsEveryRecordTypeByteExact) {
  const std::string path = TempPath(".trace");
  std::vector<TraceRecord> records;
  TraceRecord f = syn::Fault(0x7f00deadb000, kStartNs + 10, 11, 12, 13, 14, 15,
                             trace::kFaultCovered | trace::kFaultSigbus, 0x12345678);
  f.bytes = 0x1122334455667788ull;
  f.reserved = 0xabcdef01;  // even the reserved words come back
  records.push_back(f);
  records.push_back(syn::Migration(6, true, 0x7f0000200000, 2 << 20, kStartNs + 100, 900, 20, 700, 77));
  records.push_back(syn::Eviction(0x7f0000400000, 4 << 20, kStartNs + 2000, kStartNs + 3000));
  records.push_back(syn::Error(absl::StatusCode::kDataLoss, 0xfffffffffffff000ull, kStartNs + 4000));
  records.push_back(syn::Range(true, 0x7f0000000000, 1ull << 40, kStartNs + 5000));
  records.push_back(syn::Range(false, 0x7f0000000000, 1ull << 40, kStartNs + 6000));
  records.back().device = -7;
  {
    absl::StatusOr<trace::TraceWriter> w =
        trace::TraceWriter::Open(path, "level-zero-emulated", kStartNs, 1234567890123456789ull);
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE(w->Write(records.data(), 2).ok());
    ASSERT_TRUE(w->Write(records.data() + 2, records.size() - 2).ok());
    EXPECT_EQ(w->records_written(), records.size());
    ASSERT_TRUE(w->Finish(9, kStartNs + 7000).ok());
  }
  EXPECT_EQ(ReadAll(path).size(), sizeof(trace::TraceHeader) + (records.size() + 1) * sizeof(TraceRecord));

  absl::StatusOr<trace::Trace> t = trace::ReadTrace(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(std::memcmp(t->header.magic, trace::kMagic, sizeof(trace::kMagic)), 0);
  EXPECT_EQ(t->header.version, trace::kVersion);
  EXPECT_EQ(t->header.record_size, sizeof(TraceRecord));
  EXPECT_EQ(t->header.start_ns, kStartNs);
  EXPECT_EQ(t->header.start_unix_ns, 1234567890123456789ull);
  EXPECT_EQ(t->header.pid, static_cast<uint32_t>(getpid()));
  EXPECT_EQ(BackendName(t->header), "level-zero-emulated");
  EXPECT_TRUE(t->complete);
  EXPECT_EQ(t->dropped, 9u);
  EXPECT_EQ(t->end_ns, kStartNs + 7000);
  ASSERT_EQ(t->records.size(), records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    EXPECT_EQ(std::memcmp(&t->records[i], &records[i], sizeof(TraceRecord)), 0) << "record " << i;
  }
  EXPECT_EQ(t->records[0].type, RecordType::kFault);
  EXPECT_EQ(t->records[0].tid, 0x12345678u);
  EXPECT_EQ(t->records[0].t[trace::kWoken], kStartNs + 10 + 11 + 12 + 13 + 14 + 15);
  EXPECT_EQ(t->records[1].type, RecordType::kMigration);
  EXPECT_EQ(t->records[1].t[trace::kMigCopied], kStartNs + 100 + 20 + 700);
  EXPECT_EQ(t->records[2].type, RecordType::kEviction);
  EXPECT_EQ(t->records[3].type, RecordType::kError);
  EXPECT_EQ(t->records[3].cause, static_cast<uint8_t>(absl::StatusCode::kDataLoss));
  EXPECT_EQ(t->records[5].type, RecordType::kRange);
  EXPECT_EQ(t->records[5].device, -7);
  std::remove(path.c_str());
}

TEST(TraceFile, CauseNames) {
  EXPECT_EQ(trace::CauseName(0), "prefetch");
  EXPECT_EQ(trace::CauseName(1), "fault");
  EXPECT_EQ(trace::CauseName(2), "eviction");
  EXPECT_EQ(trace::CauseName(3), "address-change");
  EXPECT_EQ(trace::CauseName(4), "fork");
  EXPECT_EQ(trace::CauseName(5), "launch");
  EXPECT_EQ(trace::CauseName(6), "readahead");
  EXPECT_EQ(trace::CauseName(200), "unknown");
}

// ---------------------------------------------------------------------------------------------
// (d) ReadTrace's errors.

TEST(TraceFile, MissingFileIsNotFound) {
  const std::string path = TempPath(".missing");
  absl::StatusOr<trace::Trace> t = trace::ReadTrace(path);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(t.status().message(), path)) << t.status();
}

TEST(TraceFile, EmptyFileSaysSo) {
  const std::string path = TempPath(".trace");
  WriteAll(path, "");
  absl::StatusOr<trace::Trace> t = trace::ReadTrace(path);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(t.status().message(), "is empty")) << t.status();
  std::remove(path.c_str());
}

TEST(TraceFile, ForeignFilesAreNotTraces) {
  const std::string path = TempPath(".txt");
  for (const std::string& text : {std::string("hello\n"), std::string(200, 'x'),
                                  std::string("uhmmTRC2 and a lot more text than a header")}) {
    WriteAll(path, text);
    absl::StatusOr<trace::Trace> t = trace::ReadTrace(path);
    ASSERT_FALSE(t.ok()) << text;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(t.status().message(), "is not a uhmm trace file")) << t.status();
  }
  std::remove(path.c_str());
}

TEST(TraceFile, TruncatedHeaderAndRecordAreDataLoss) {
  const std::string path = TempPath(".trace");
  ASSERT_TRUE(syn::Write(path, syn::AllRecords()).ok());
  const std::string whole = ReadAll(path);

  WriteAll(path, whole.substr(0, 30));
  absl::StatusOr<trace::Trace> t = trace::ReadTrace(path);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(absl::StrContains(t.status().message(), "truncated")) << t.status();
  EXPECT_TRUE(absl::StrContains(t.status().message(), "header")) << t.status();

  WriteAll(path, whole.substr(0, sizeof(trace::TraceHeader) + 3 * sizeof(TraceRecord) + 17));
  t = trace::ReadTrace(path);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(absl::StrContains(t.status().message(), "3 complete records, then 17 bytes")) << t.status();
  std::remove(path.c_str());
}

TEST(TraceFile, OtherVersionAndUnknownRecordTypeAreRejected) {
  const std::string path = TempPath(".trace");
  ASSERT_TRUE(syn::Write(path, syn::AllRecords()).ok());
  std::string data = ReadAll(path);
  std::string other = data;
  const uint32_t v2 = 2;
  std::memcpy(other.data() + offsetof(trace::TraceHeader, version), &v2, sizeof(v2));
  WriteAll(path, other);
  absl::StatusOr<trace::Trace> t = trace::ReadTrace(path);
  ASSERT_FALSE(t.ok());
  EXPECT_TRUE(absl::StrContains(t.status().message(), "version 2")) << t.status();

  other = data;
  other[sizeof(trace::TraceHeader) + sizeof(TraceRecord)] = 42;  // the second record's type
  WriteAll(path, other);
  t = trace::ReadTrace(path);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(absl::StrContains(t.status().message(), "unknown type 42")) << t.status();
  std::remove(path.c_str());
}

TEST(TraceFile, WithoutEndRecordReadsAsIncomplete) {
  const std::string path = TempPath(".trace");
  ASSERT_TRUE(syn::Write(path, syn::AllRecords(), /*finish=*/false).ok());
  absl::StatusOr<trace::Trace> t = trace::ReadTrace(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_FALSE(t->complete);
  EXPECT_EQ(t->records.size(), syn::AllRecords().size());
  EXPECT_EQ(t->dropped, 0u);
  EXPECT_EQ(t->end_ns, kStartNs + 300 * kMs);  // the last timestamp: range B's free
  const Analysis a = Analyze(*t);
  EXPECT_FALSE(a.complete);
  EXPECT_TRUE(
      absl::StrContains(FormatReport(a, path, 10), "warning: the trace is incomplete (no end record)"));

  // The header alone: no records, incomplete.
  ASSERT_TRUE(syn::Write(path, {}, /*finish=*/false).ok());
  t = trace::ReadTrace(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_FALSE(t->complete);
  EXPECT_TRUE(t->records.empty());
  std::remove(path.c_str());
}

// ---------------------------------------------------------------------------------------------
// (b) Per-phase latency, exact.

TEST(Analysis, NearestRankPercentiles) {
  const std::vector<uint64_t> ten = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_EQ(NearestRank(ten, 50), 5u);
  EXPECT_EQ(NearestRank(ten, 90), 9u);
  EXPECT_EQ(NearestRank(ten, 99), 10u);
  EXPECT_EQ(NearestRank(ten, 100), 10u);
  EXPECT_EQ(NearestRank(ten, 0), 1u);
  EXPECT_EQ(NearestRank({7}, 50), 7u);
  EXPECT_EQ(NearestRank({7}, 99), 7u);
  EXPECT_EQ(NearestRank({}, 50), 0u);
  std::vector<uint64_t> thousand(1000);
  for (uint64_t i = 0; i < 1000; ++i) thousand[i] = i + 1;
  EXPECT_EQ(NearestRank(thousand, 99), 990u);
  EXPECT_EQ(NearestRank(thousand, 90), 900u);
}

TEST(Analysis, PhaseLatenciesAreExact) {
  const Analysis a = Analyze(SyntheticTrace());
  EXPECT_EQ(a.faults.faults, 110u);
  EXPECT_EQ(a.faults.duplicates, 10u);
  EXPECT_EQ(a.faults.covered, 0u);

  // copy: the 100 faults that copied, i us each; duplicates have no copy.
  const Latency& copy = a.phases[kCopy];
  EXPECT_EQ(copy.count, 100u);
  EXPECT_EQ(copy.min, 1 * kUs);
  EXPECT_EQ(copy.p50, 50 * kUs);
  EXPECT_EQ(copy.p90, 90 * kUs);
  EXPECT_EQ(copy.p99, 99 * kUs);
  EXPECT_EQ(copy.max, 100 * kUs);
  EXPECT_DOUBLE_EQ(copy.mean, 50.5 * kUs);

  // The fixed phases. The duplicates have a lookup and a wake, no submit; their map starts at a
  // copy they did not have, so it does not count either.
  const struct {
    int phase;
    size_t count;
    uint64_t ns;
  } fixed[] = {{kLookup, 110, 1 * kUs}, {kSubmit, 100, 2 * kUs}, {kMap, 100, 3 * kUs}, {kWake, 110, 4 * kUs}};
  for (const auto& f : fixed) {
    const Latency& l = a.phases[f.phase];
    SCOPED_TRACE(PhaseName(f.phase));
    EXPECT_EQ(l.count, f.count);
    EXPECT_EQ(l.p50, f.ns);
    EXPECT_EQ(l.p90, f.ns);
    EXPECT_EQ(l.p99, f.ns);
    EXPECT_EQ(l.max, f.ns);
    EXPECT_DOUBLE_EQ(l.mean, static_cast<double>(f.ns));
  }

  // End to end: the 100 at 10 + i us (11..110) and the 10 duplicates at 10 us: the k-th smallest
  // of the 110 is k us for k > 10.
  const Latency& e2e = a.phases[kEndToEnd];
  EXPECT_EQ(e2e.count, 110u);
  EXPECT_EQ(e2e.p50, 55 * kUs);   // rank 55
  EXPECT_EQ(e2e.p90, 99 * kUs);   // rank 99
  EXPECT_EQ(e2e.p99, 109 * kUs);  // rank ceil(108.9) = 109
  EXPECT_EQ(e2e.max, 110 * kUs);
  EXPECT_DOUBLE_EQ(e2e.mean, (100.0 * 10 + 5050 + 100.0) * kUs / 110);

  const std::string table = FormatPhaseTable(a);
  EXPECT_TRUE(absl::StrContains(
      table, "  copy              100      50.00      90.00      99.00     100.00      50.50\n"))
      << table;
  EXPECT_TRUE(absl::StrContains(table, "  end to end        110      55.00      99.00     109.00     110.00"))
      << table;
}

TEST(Analysis, PhasesNeedBothTimestamps) {
  TraceRecord r =
      syn::Fault(0x1000, kStartNs, 1000, syn::kSkip, syn::kSkip, 2000, 3000, trace::kFaultDuplicate);
  EXPECT_EQ(PhaseDuration(r, kLookup), 1000u);
  EXPECT_FALSE(PhaseDuration(r, kSubmit).has_value());
  EXPECT_FALSE(PhaseDuration(r, kCopy).has_value());
  EXPECT_FALSE(PhaseDuration(r, kMap).has_value());
  EXPECT_EQ(PhaseDuration(r, kWake), 3000u);
  EXPECT_EQ(PhaseDuration(r, kEndToEnd), 6000u);
  r.t[trace::kWoken] = 0;  // a fault that never finished
  EXPECT_FALSE(PhaseDuration(r, kEndToEnd).has_value());
}

TEST(Analysis, Log2HistogramOfEndToEnd) {
  const Analysis a = Analyze(SyntheticTrace());
  // 10..110 us: 8-16 holds the 10 duplicates and 11..15, then 16-31, 32-63, 64-110.
  ASSERT_EQ(a.histogram.size(), 4u);
  EXPECT_EQ(a.histogram[0].lo_us, 8u);
  EXPECT_EQ(a.histogram[0].hi_us, 16u);
  EXPECT_EQ(a.histogram[0].count, 15u);
  EXPECT_EQ(a.histogram[1].count, 16u);
  EXPECT_EQ(a.histogram[2].count, 32u);
  EXPECT_EQ(a.histogram[3].lo_us, 64u);
  EXPECT_EQ(a.histogram[3].count, 47u);
  const std::string text = FormatHistogram(a.histogram);
  EXPECT_TRUE(absl::StrContains(text, "64-128 |" + std::string(50, '#') + " 47\n")) << text;

  // Sub-microsecond samples and an empty bucket in the middle, kept; empty ends dropped.
  const std::vector<Bucket> h = Log2Histogram({500, 999, 5000});
  ASSERT_EQ(h.size(), 4u);  // <1, 1-2, 2-4, 4-8
  EXPECT_EQ(h[0].lo_us, 0u);
  EXPECT_EQ(h[0].count, 2u);
  EXPECT_EQ(h[1].count, 0u);
  EXPECT_EQ(h[3].lo_us, 4u);
  EXPECT_EQ(h[3].count, 1u);
  EXPECT_TRUE(Log2Histogram({}).empty());
  EXPECT_TRUE(absl::StrContains(FormatHistogram(h), "     <1 |"));
}

// ---------------------------------------------------------------------------------------------
// (c) Range attribution and migration throughput.

TEST(Analysis, FaultsBelongToTheRangeLiveAtTheirTime) {
  const Analysis a = Analyze(SyntheticTrace());
  ASSERT_EQ(a.ranges.size(), 2u);
  EXPECT_TRUE(a.ranges[0].known);
  EXPECT_EQ(a.ranges[0].start, syn::kRangeA);
  EXPECT_EQ(a.ranges[0].bytes, syn::kRangeASize);
  EXPECT_EQ(a.ranges[0].faults, 90u);  // 80 copies and the 10 duplicates
  EXPECT_EQ(a.ranges[0].end_to_end.p50, 53 * kUs);
  EXPECT_EQ(a.ranges[0].end_to_end.p99, 109 * kUs);
  EXPECT_EQ(a.ranges[1].start, syn::kRangeB);
  EXPECT_EQ(a.ranges[1].faults, 20u);  // every fifth: 15, 20, ..., 110 us
  EXPECT_EQ(a.ranges[1].end_to_end.p50, 60 * kUs);
  EXPECT_EQ(a.ranges[1].end_to_end.p99, 110 * kUs);
  EXPECT_EQ(a.ranges[1].free_ns, kStartNs + 300 * kMs);
  EXPECT_EQ(a.ranges_allocated, 2u);
  EXPECT_EQ(a.ranges_freed, 1u);

  const std::string top = FormatTopRanges(a, 1);
  EXPECT_TRUE(absl::StrContains(top, "0x7f0000000000         64.0 MiB       90      53.00     109.00"))
      << top;
  EXPECT_TRUE(absl::StrContains(top, "(1 more ranges with faults)")) << top;
}

TEST(Analysis, RangeReuseFreedRangesAndUnknownAddresses) {
  trace::Trace t = SyntheticTrace(false);
  const uint64_t c_start = syn::kRangeB;    // B's address, reused after B's free at 300 ms
  const uint64_t d_start = 0x600000000000;  // allocated before the trace: only its free is there
  t.records.clear();
  // Out of time order on purpose: per-thread buffers reach the file in any order.
  t.records.push_back(syn::Range(true, c_start, 4 << 20, kStartNs + 400 * kMs));
  t.records.push_back(syn::Range(true, syn::kRangeB, syn::kRangeBSize, kStartNs + 1 * kMs));
  t.records.push_back(syn::Range(false, syn::kRangeB, syn::kRangeBSize, kStartNs + 300 * kMs));
  t.records.push_back(syn::Range(false, d_start, 1 << 20, kStartNs + 100 * kMs));
  const auto fault = [&](uint64_t addr, uint64_t when, uint64_t e2e_us) {
    t.records.push_back(syn::Fault(addr, when, e2e_us * kUs, syn::kSkip, syn::kSkip, syn::kSkip, 0));
  };
  fault(syn::kRangeB + 4096, kStartNs + 10 * kMs, 5);   // B
  fault(syn::kRangeB + 4096, kStartNs + 350 * kMs, 6);  // B freed, C not yet: unknown
  fault(c_start + (3 << 20), kStartNs + 450 * kMs, 7);  // C (beyond B's size)
  fault(c_start + (3 << 20), kStartNs + 20 * kMs, 8);   // before C, beyond B: unknown
  fault(c_start + 8192, kStartNs + 460 * kMs, 9);       // C
  fault(d_start + 100, kStartNs + 50 * kMs, 10);        // D, before its free
  fault(d_start + 100, kStartNs + 150 * kMs, 11);       // D freed: unknown
  fault(0x1000, kStartNs + 5 * kMs, 12);                // nowhere
  const Analysis a = Analyze(t);
  ASSERT_EQ(a.ranges.size(), 4u);
  EXPECT_FALSE(a.ranges[0].known);  // 4 faults
  EXPECT_EQ(a.ranges[0].faults, 4u);
  EXPECT_EQ(a.ranges[0].end_to_end.p50, 8 * kUs);  // of 6, 8, 11, 12
  EXPECT_EQ(a.ranges[0].end_to_end.p99, 12 * kUs);
  EXPECT_EQ(a.ranges[1].start, c_start);
  EXPECT_EQ(a.ranges[1].bytes, 4u << 20);
  EXPECT_EQ(a.ranges[1].faults, 2u);
  EXPECT_EQ(a.ranges[1].end_to_end.p50, 7 * kUs);
  EXPECT_EQ(a.ranges[1].alloc_ns, kStartNs + 400 * kMs);
  // One fault each, by start address.
  EXPECT_EQ(a.ranges[2].start, d_start);
  EXPECT_EQ(a.ranges[2].alloc_ns, 0u);
  EXPECT_EQ(a.ranges[2].free_ns, kStartNs + 100 * kMs);
  EXPECT_EQ(a.ranges[2].faults, 1u);
  EXPECT_EQ(a.ranges[3].start, syn::kRangeB);
  EXPECT_EQ(a.ranges[3].bytes, syn::kRangeBSize);
  EXPECT_EQ(a.ranges[3].faults, 1u);
  const std::string top = FormatTopRanges(a, 10);
  EXPECT_TRUE(absl::StrContains(top, "(unknown range)")) << top;
}

TEST(Analysis, MigrationThroughputPerDirectionAndCause) {
  const Analysis a = Analyze(SyntheticTrace());
  EXPECT_EQ(a.migrations, 8u);
  // Host to device: 4 prefetches of 2 MiB, 1 ms busy and 900 us copying each.
  EXPECT_EQ(a.to_device.migrations, 4u);
  EXPECT_EQ(a.to_device.bytes, 8u << 20);
  EXPECT_EQ(a.to_device.busy_ns, 4 * kMs);
  ASSERT_TRUE(a.to_device.gbps().has_value());
  EXPECT_DOUBLE_EQ(*a.to_device.gbps(), 8388608.0 / 4e6);
  EXPECT_DOUBLE_EQ(*a.to_device.copy_gbps(), 8388608.0 / 3.6e6);
  // Device to host: 3 fault migrations of 64 KiB (40 us busy, 20 us copying) and an eviction of
  // 2 MiB (800 us busy, no copy timestamps: not in the copy-only figure).
  EXPECT_EQ(a.to_host.migrations, 4u);
  EXPECT_EQ(a.to_host.bytes, 3u * 65536 + (2u << 20));
  EXPECT_EQ(a.to_host.busy_ns, 3 * 40 * kUs + 800 * kUs);
  EXPECT_DOUBLE_EQ(*a.to_host.gbps(), (3.0 * 65536 + 2097152) / 920000.0);
  EXPECT_EQ(a.to_host.copy_bytes, 3u * 65536);
  EXPECT_DOUBLE_EQ(*a.to_host.copy_gbps(), 3.0 * 65536 / 60000.0);

  ASSERT_EQ(a.causes.size(), 3u);
  EXPECT_EQ(a.causes[0].cause, 0);  // prefetch
  EXPECT_EQ(a.causes[0].migrations[1], 4u);
  EXPECT_EQ(a.causes[0].bytes[1], 8u << 20);
  EXPECT_EQ(a.causes[1].cause, 1);  // fault
  EXPECT_EQ(a.causes[1].migrations[0], 3u);
  EXPECT_EQ(a.causes[2].cause, 2);  // eviction
  EXPECT_EQ(a.causes[2].bytes[0], 2u << 20);

  EXPECT_EQ(a.evictions, 1u);
  EXPECT_EQ(a.evicted_bytes, 2u << 20);
  EXPECT_EQ(a.errors, 1u);
  ASSERT_EQ(a.errors_by_code.size(), 1u);
  EXPECT_EQ(a.errors_by_code[0].first, static_cast<uint8_t>(absl::StatusCode::kUnavailable));

  const std::string text = FormatMigrations(a);
  EXPECT_TRUE(
      absl::StrContains(text, "host->device            4      8.0 MiB        4.000      2.10       2.33"))
      << text;
  EXPECT_TRUE(absl::StrContains(text, "prefetch")) << text;
  // No timestamps: no rate.
  Throughput none;
  none.migrations = 1;
  none.bytes = 4096;
  EXPECT_FALSE(none.gbps().has_value());
  EXPECT_FALSE(none.copy_gbps().has_value());
}

TEST(Report, HeaderCountsAndWarnings) {
  trace::Trace t = SyntheticTrace();
  t.dropped = 7;
  const std::string r = FormatReport(Analyze(t), "x.trace", 10);
  EXPECT_TRUE(absl::StrContains(r, "  backend      host\n")) << r;
  EXPECT_TRUE(absl::StrContains(r, "  pid          4242\n")) << r;
  EXPECT_TRUE(absl::StrContains(r, "  duration     500.000 ms\n")) << r;
  EXPECT_TRUE(absl::StrContains(r, "faults       110 (duplicates 10, covered 0, stale 0, SIGBUS 0)")) << r;
  EXPECT_TRUE(absl::StrContains(
      r, "migrations   8: host->device 4 (prefetch 4); device->host 4 (fault 3, eviction 1)"))
      << r;
  EXPECT_TRUE(absl::StrContains(r, "errors       1 (UNAVAILABLE 1)")) << r;
  EXPECT_TRUE(absl::StrContains(r, "warning: 7 records were dropped")) << r;
  EXPECT_FALSE(absl::StrContains(r, "incomplete")) << r;
  EXPECT_TRUE(absl::StrContains(r, "top 10 managed ranges by CPU faults")) << r;
  EXPECT_FALSE(absl::StrContains(FormatReport(Analyze(t), "x.trace", 0), "managed ranges"));
}

TEST(Report, NoFaultsSaysSo) {
  const std::string r = FormatReport(Analyze(SyntheticTrace(false)), "x.trace", 10);
  EXPECT_TRUE(absl::StrContains(r, "no CPU faults in this trace")) << r;
  EXPECT_FALSE(absl::StrContains(r, "p50")) << r;
  EXPECT_FALSE(absl::StrContains(r, "histogram")) << r;
  EXPECT_TRUE(absl::StrContains(r, "migration throughput")) << r;
}

// ---------------------------------------------------------------------------------------------
// (e) Chrome trace JSON, checked by a strict JSON parser (RFC 8259) written here.

struct Json {
  enum Kind { kNull, kBool, kNumber, kString, kArray, kObject } kind = kNull;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Json> items;        // array elements, object values
  std::vector<std::string> keys;  // object keys

  const Json* Get(std::string_view key) const {
    for (size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] == key) return &items[i];
    }
    return nullptr;
  }
};

class JsonParser {
 public:
  explicit JsonParser(std::string_view s) : s_(s) {}
  // The document, or the error with its offset.
  bool Parse(Json* out, std::string* error) {
    SkipSpace();
    if (!Value(out, 0)) {
      *error = absl::StrCat(error_, " at offset ", pos_);
      return false;
    }
    SkipSpace();
    if (pos_ != s_.size()) {
      *error = absl::StrCat("trailing characters at offset ", pos_);
      return false;
    }
    return true;
  }

 private:
  bool Fail(std::string_view what) {
    error_ = std::string(what);
    return false;
  }
  void SkipSpace() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }
  bool Literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return Fail("bad literal");
    pos_ += word.size();
    return true;
  }
  bool Value(Json* v, int depth) {
    if (depth > 100) return Fail("too deep");
    if (pos_ >= s_.size()) return Fail("unexpected end");
    const char c = s_[pos_];
    if (c == '{') return Object(v, depth);
    if (c == '[') return Array(v, depth);
    if (c == '"') {
      v->kind = Json::kString;
      return String(&v->string);
    }
    if (c == 't' || c == 'f') {
      v->kind = Json::kBool;
      v->boolean = c == 't';
      return Literal(c == 't' ? "true" : "false");
    }
    if (c == 'n') return Literal("null");
    return Number(v);
  }
  bool Digits() {
    const size_t start = pos_;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    return pos_ > start;
  }
  bool Number(Json* v) {
    const size_t start = pos_;
    if (s_[pos_] == '-') ++pos_;
    if (pos_ < s_.size() && s_[pos_] == '0') {
      ++pos_;
    } else if (!Digits()) {
      return Fail("bad number");
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      ++pos_;
      if (!Digits()) return Fail("bad fraction");
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (!Digits()) return Fail("bad exponent");
    }
    v->kind = Json::kNumber;
    v->number = std::strtod(std::string(s_.substr(start, pos_ - start)).c_str(), nullptr);
    return true;
  }
  bool String(std::string* out) {
    ++pos_;  // "
    while (pos_ < s_.size()) {
      const auto c = static_cast<unsigned char>(s_[pos_++]);
      if (c == '"') return true;
      if (c < 0x20) return Fail("raw control character in a string");
      if (c >= 0x80) {  // must be valid UTF-8
        const int more = (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : -1;
        if (more < 0) return Fail("invalid UTF-8");
        out->push_back(static_cast<char>(c));
        for (int i = 0; i < more; ++i) {
          if (pos_ >= s_.size() || (static_cast<unsigned char>(s_[pos_]) & 0xc0) != 0x80)
            return Fail("invalid UTF-8");
          out->push_back(s_[pos_++]);
        }
        continue;
      }
      if (c != '\\') {
        out->push_back(static_cast<char>(c));
        continue;
      }
      if (pos_ >= s_.size()) return Fail("unterminated escape");
      const char e = s_[pos_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out->push_back(e);
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          if (pos_ + 4 > s_.size()) return Fail("short \\u escape");
          unsigned code = 0;
          for (int i = 0; i < 4; ++i) {
            const char h = s_[pos_++];
            code <<= 4;
            if (h >= '0' && h <= '9')
              code |= h - '0';
            else if (h >= 'a' && h <= 'f')
              code |= h - 'a' + 10;
            else if (h >= 'A' && h <= 'F')
              code |= h - 'A' + 10;
            else
              return Fail("bad \\u escape");
          }
          out->push_back(static_cast<char>(code & 0xff));  // enough for these tests: the byte
          break;
        }
        default:
          return Fail("bad escape");
      }
    }
    return Fail("unterminated string");
  }
  bool Array(Json* v, int depth) {
    v->kind = Json::kArray;
    ++pos_;
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return true;
    }
    while (true) {
      v->items.emplace_back();
      SkipSpace();
      if (!Value(&v->items.back(), depth + 1)) return false;
      SkipSpace();
      if (pos_ >= s_.size()) return Fail("unterminated array");
      if (s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (s_[pos_] == ']') {
        ++pos_;
        return true;
      }
      return Fail("expected , or ]");
    }
  }
  bool Object(Json* v, int depth) {
    v->kind = Json::kObject;
    ++pos_;
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return true;
    }
    while (true) {
      SkipSpace();
      if (pos_ >= s_.size() || s_[pos_] != '"') return Fail("expected a key");
      v->keys.emplace_back();
      if (!String(&v->keys.back())) return false;
      SkipSpace();
      if (pos_ >= s_.size() || s_[pos_] != ':') return Fail("expected :");
      ++pos_;
      SkipSpace();
      v->items.emplace_back();
      if (!Value(&v->items.back(), depth + 1)) return false;
      SkipSpace();
      if (pos_ >= s_.size()) return Fail("unterminated object");
      if (s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (s_[pos_] == '}') {
        ++pos_;
        return true;
      }
      return Fail("expected , or }");
    }
  }

  std::string_view s_;
  size_t pos_ = 0;
  std::string error_;
};

TEST(Chrome, JsonParserRejectsInvalidJson) {
  for (std::string_view bad : {"{", "{\"a\":1,}", "[1,]", "{\"a\" 1}", "\"\x01\"", "01", "1.", "[\"\\x\"]",
                               "{\"a\":1}}", "nul", "\"\xff\""}) {
    Json j;
    std::string error;
    EXPECT_FALSE(JsonParser(bad).Parse(&j, &error)) << bad;
  }
  Json j;
  std::string error;
  EXPECT_TRUE(JsonParser(" {\"a\": [1, -2.5e3, true, null, \"x\\u0041\"]} ").Parse(&j, &error)) << error;
}

TEST(Chrome, HelpersEscapeAndFormat) {
  EXPECT_EQ(JsonString("a\"b\\c\n\x01\xff"), "\"a\\\"b\\\\c\\n\\u0001\\u00ff\"");
  EXPECT_EQ(JsonMicros(0), "0.000");
  EXPECT_EQ(JsonMicros(1234567), "1234.567");
  EXPECT_EQ(JsonMicros(5), "0.005");
  EXPECT_EQ(JsonMicros(-1500), "-1.500");
}

TEST(Chrome, TraceIsValidJsonWithTheExpectedEvents) {
  trace::Trace t = SyntheticTrace();
  // A backend name that needs escaping: quotes, a backslash, a control character, a non-ASCII byte.
  std::memset(t.header.backend, 0, sizeof(t.header.backend));
  std::memcpy(t.header.backend, "ho\"st\\\x01\xe9", 8);
  size_t events = 0;
  const std::string json = ChromeTraceJson(t, &events);
  Json doc;
  std::string error;
  ASSERT_TRUE(JsonParser(json).Parse(&doc, &error)) << error << "\n" << json.substr(0, 2000);
  ASSERT_EQ(doc.kind, Json::kObject);
  const Json* unit = doc.Get("displayTimeUnit");
  ASSERT_NE(unit, nullptr);
  EXPECT_EQ(unit->string, "ns");
  const Json* list = doc.Get("traceEvents");
  ASSERT_NE(list, nullptr);
  ASSERT_EQ(list->kind, Json::kArray);
  EXPECT_EQ(list->items.size(), events);

  size_t faults = 0, phases = 0, migrations = 0, evictions = 0, errors = 0, ranges = 0, metadata = 0;
  bool first_fault_seen = false, process_named = false;
  for (const Json& e : list->items) {
    ASSERT_EQ(e.kind, Json::kObject);
    const std::string ph = e.Get("ph")->string;
    const std::string name = e.Get("name")->string;
    ASSERT_NE(e.Get("pid"), nullptr);
    EXPECT_EQ(e.Get("pid")->number, 4242);
    ASSERT_NE(e.Get("tid"), nullptr);
    if (ph == "M") {
      ++metadata;
      if (name == "process_name") {
        process_named = true;
        EXPECT_EQ(e.Get("args")->Get("name")->string, "uhmm ho\"st\\\x01\xe9");
      }
      continue;
    }
    ASSERT_NE(e.Get("ts"), nullptr) << name;
    const std::string cat = e.Get("cat")->string;
    if (ph == "X") {
      ASSERT_NE(e.Get("dur"), nullptr);
      EXPECT_GE(e.Get("dur")->number, 0);
    }
    if (cat == "fault" && ph == "X") {
      if (absl::StartsWith(name, "fault")) {
        ++faults;
        const Json* args = e.Get("args");
        ASSERT_NE(args, nullptr);
        ASSERT_NE(args->Get("address"), nullptr);
        EXPECT_TRUE(absl::StartsWith(args->Get("address")->string, "0x"));
        EXPECT_EQ(args->Get("thread")->number, syn::kFaultingThread);
        ASSERT_NE(args->Get("bytes"), nullptr);
        ASSERT_NE(args->Get("flags"), nullptr);
        if (!first_fault_seen) {  // fault 1: received at 1 ms, 11 us end to end
          first_fault_seen = true;
          EXPECT_DOUBLE_EQ(e.Get("ts")->number, 1000.0);
          EXPECT_DOUBLE_EQ(e.Get("dur")->number, 11.0);
          EXPECT_EQ(e.Get("tid")->number, 102);
        }
      } else {
        ++phases;
      }
    } else if (cat == "migration") {
      ++migrations;
      EXPECT_TRUE(absl::StartsWith(name, "migrate ")) << name;
      EXPECT_NE(e.Get("args")->Get("bytes"), nullptr);
      EXPECT_NE(e.Get("args")->Get("device"), nullptr);
    } else if (cat == "eviction") {
      ++evictions;
    } else if (cat == "error") {
      ++errors;
      EXPECT_EQ(ph, "i");
      EXPECT_EQ(name, "error UNAVAILABLE");
    } else if (cat == "range") {
      ++ranges;
      EXPECT_EQ(ph, "i");
    }
  }
  EXPECT_TRUE(process_named);
  EXPECT_EQ(faults, 110u);
  EXPECT_EQ(phases, 100u * 5 + 10 * 2);  // duplicates: lookup and wake
  EXPECT_EQ(migrations, 8u);
  EXPECT_EQ(evictions, 1u);
  EXPECT_EQ(errors, 1u);
  EXPECT_EQ(ranges, 3u);
  EXPECT_GE(metadata, 1u + 5);  // the process; service threads 101, 102, migration 201, 202, ranges 300
  EXPECT_TRUE(absl::StrContains(json, "\"name\":\"migrate prefetch host->device\""));
}

TEST(Chrome, PythonAgreesTheJsonIsValid) {
  if (std::system("python3 -c 'import json' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "python3 is not available; the JSON parser in this test checked the syntax";
  }
  trace::Trace t = SyntheticTrace();
  std::memcpy(t.header.backend, "we\"ird\\\x02\xfe", 9);
  const std::string path = TempPath(".json");
  ASSERT_TRUE(WriteChromeTrace(t, path).ok());
  const std::string cmd = absl::StrCat(
      "python3 -c 'import json,sys; d=json.load(open(sys.argv[1], encoding=\"utf-8\")); "
      "sys.exit(0 if len(d[\"traceEvents\"]) > 600 and d[\"displayTimeUnit\"] == \"ns\" else 1)' ",
      path);
  EXPECT_EQ(std::system(cmd.c_str()), 0) << "python3 rejects " << path;
  std::remove(path.c_str());
}

TEST(Chrome, UnwritableOutputIsAnError) {
  const absl::Status s = WriteChromeTrace(SyntheticTrace(), "/nonexistent-uhmm-dir/out.json");
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "cannot write /nonexistent-uhmm-dir/out.json")) << s;
}

// ---------------------------------------------------------------------------------------------
// (f) The SVG plot.

// Tags balance (no comments, CDATA or processing instructions in what plot.cc writes), attribute
// values are quoted, '&' only starts an entity.
bool WellFormed(std::string_view svg, std::string* error) {
  std::vector<std::string> open;
  for (size_t i = 0; i < svg.size();) {
    if (svg[i] == '&') {
      const size_t semi = svg.find(';', i);
      const std::string_view ent = svg.substr(i, semi == std::string_view::npos ? 0 : semi - i + 1);
      if (ent != "&amp;" && ent != "&lt;" && ent != "&gt;" && ent != "&quot;") {
        *error = absl::StrCat("bad entity at ", i);
        return false;
      }
      i = semi + 1;
      continue;
    }
    if (svg[i] != '<') {
      if (svg[i] == '>') {
        *error = absl::StrCat("stray > at ", i);
        return false;
      }
      ++i;
      continue;
    }
    size_t end = i + 1;
    bool in_quotes = false;
    while (end < svg.size() && (in_quotes || svg[end] != '>')) {
      if (svg[end] == '"') in_quotes = !in_quotes;
      if (svg[end] == '<') {
        *error = absl::StrCat("< inside a tag at ", end);
        return false;
      }
      ++end;
    }
    if (end >= svg.size()) {
      *error = "unterminated tag";
      return false;
    }
    const std::string_view tag = svg.substr(i + 1, end - i - 1);
    if (tag.empty()) {
      *error = "empty tag";
      return false;
    }
    if (tag[0] == '/') {
      const std::string name(tag.substr(1));
      if (open.empty() || open.back() != name) {
        *error = absl::StrCat("</", name, "> closes ", open.empty() ? "nothing" : open.back());
        return false;
      }
      open.pop_back();
    } else if (tag.back() != '/') {
      open.emplace_back(tag.substr(0, tag.find_first_of(" \n\t")));
    }
    i = end + 1;
  }
  if (!open.empty()) {
    *error = absl::StrCat("<", open.back(), "> not closed");
    return false;
  }
  return true;
}

TEST(Plot, OneRowPerPhaseWithPercentiles) {
  const Analysis a = Analyze(SyntheticTrace());
  const std::string svg = LatencySvg(a);
  EXPECT_TRUE(absl::StartsWith(svg, "<svg ")) << svg.substr(0, 100);
  EXPECT_TRUE(absl::EndsWith(svg, "</svg>\n"));
  std::string error;
  EXPECT_TRUE(WellFormed(svg, &error)) << error;
  std::vector<std::string_view> titles;
  for (size_t pos = 0; (pos = svg.find("class=\"phase-title\"", pos)) != std::string::npos; ++pos) {
    const size_t text = svg.find('>', pos) + 1;
    titles.push_back(std::string_view(svg).substr(text, svg.find('<', text) - text));
  }
  ASSERT_EQ(titles.size(), static_cast<size_t>(kNumPhases));
  for (int p = 0; p < kNumPhases; ++p) EXPECT_EQ(titles[p], PhaseName(p));
  EXPECT_TRUE(absl::StrContains(svg, ">110 faults<")) << "end to end's count";
  EXPECT_TRUE(absl::StrContains(svg, ">100 faults<")) << "copy's count";
  EXPECT_TRUE(absl::StrContains(svg, "p50 50.0 µs")) << "copy's p50";
  EXPECT_TRUE(absl::StrContains(svg, "p99 99.0 µs")) << "copy's p99";
  EXPECT_TRUE(absl::StrContains(svg, "p99 109.0 µs")) << "end to end's p99";
  EXPECT_TRUE(absl::StrContains(svg, "backend host, 110 CPU faults"));
  // The shared axis: 1 us (every phase >= 1 us) to 1000 us (max 110 us), labelled at 1, 10, 100, 1000.
  for (const char* label : {">1<", ">10<", ">100<", ">1000<"})
    EXPECT_TRUE(absl::StrContains(svg, label)) << label;
  EXPECT_TRUE(absl::StrContains(svg, "latency (µs, log scale)"));
  EXPECT_FALSE(absl::StrContains(svg, "<script"));
}

TEST(Plot, NoFaultsStillDrawsEveryRow) {
  trace::Trace t = SyntheticTrace(false);
  std::strcpy(t.header.backend, "a<b&c");
  const std::string svg = LatencySvg(Analyze(t));
  std::string error;
  EXPECT_TRUE(WellFormed(svg, &error)) << error;
  size_t rows = 0;
  for (size_t pos = 0; (pos = svg.find(">no samples<", pos)) != std::string::npos; ++pos) ++rows;
  EXPECT_EQ(rows, static_cast<size_t>(kNumPhases));
  EXPECT_TRUE(absl::StrContains(svg, "backend a&lt;b&amp;c, 0 CPU faults"));
}

TEST(Plot, OnlySvg) {
  EXPECT_TRUE(IsSvgPath("out.svg"));
  EXPECT_TRUE(IsSvgPath("dir/OUT.SVG"));
  EXPECT_FALSE(IsSvgPath("out.png"));
  EXPECT_FALSE(IsSvgPath(".svg"));
  EXPECT_FALSE(IsSvgPath("svg"));
  const std::string path = TempPath(".svg");
  ASSERT_TRUE(WriteLatencySvg(Analyze(SyntheticTrace()), path).ok());
  EXPECT_TRUE(absl::StartsWith(ReadAll(path), "<svg"));
  std::remove(path.c_str());
}

}  // namespace
}  // namespace uhmm::prof
