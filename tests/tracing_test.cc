// Fault tracing in the runtime (UHMM_TRACE / uhmm_trace_start): what the trace file holds after
// real faults, migrations, evictions and errors on the backend under test, that the session is
// process-wide and survives fork, and UHMM_STATS. uhmm-prof's own tests cover reading the file.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "runtime/trace/trace_file.h"
#include "tests/test_util.h"

namespace uhmm::testing {
namespace {

using trace::RecordType;
using trace::TraceRecord;

std::string TempPath(const char* name) {
  return absl::StrCat(::testing::TempDir(), "/uhmm_", name, "_", getpid(), ".trace");
}

std::vector<TraceRecord> OfType(const trace::Trace& t, RecordType type) {
  std::vector<TraceRecord> out;
  for (const TraceRecord& r : t.records) {
    if (r.type == type) out.push_back(r);
  }
  return out;
}

class TracingTest : public RuntimeTest {
 protected:
  Runtime& rt() { return *rt_; }
  FaultInjector& faults0() { return *faults0_; }
};

TEST_F(TracingTest, EveryFaultHasItsPhasesInOrderAndEveryMigrationItsCause) {
  rt_.reset();
  Start(PerFaultConfig());  // one migration of exactly one granule per fault
  UHMM_RETURN_IF_SKIPPED();
  const std::string path = TempPath("faults");
  ASSERT_TRUE(rt().StartTrace(path).ok());
  constexpr size_t kBytes = 8 * kMiB;
  const Stats before = rt().stats();  // the fill's first touches are faults too (zero-fill)
  uint64_t* p = AllocFilled(kBytes, 3);
  ASSERT_TRUE(rt().Migrate(p, kBytes, 0).ok());
  const size_t gran = TestConfig().fault_granularity;
  for (size_t off = 0; off < kBytes; off += gran) ASSERT_EQ(p[off / 8], Pattern(3, off / 8));
  const Stats after = rt().stats();
  ASSERT_TRUE(rt().Free(p).ok());
  ASSERT_TRUE(rt().StopTrace().ok());

  absl::StatusOr<trace::Trace> t = trace::ReadTrace(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->complete);
  EXPECT_EQ(t->dropped, 0u);
  EXPECT_EQ(std::string(t->header.backend), std::string(rt().backend_name()));
  std::vector<TraceRecord> faults = OfType(*t, RecordType::kFault);
  EXPECT_EQ(faults.size(), after.cpu_faults - before.cpu_faults);
  size_t migrated = 0;
  for (const TraceRecord& f : faults) {
    EXPECT_GE(f.addr, reinterpret_cast<uintptr_t>(p));
    EXPECT_LT(f.addr, reinterpret_cast<uintptr_t>(p) + kBytes);
    EXPECT_NE(f.aux, 0u);  // the faulting thread
    if (f.flags & (trace::kFaultDuplicate | trace::kFaultCovered | trace::kFaultStale)) continue;
    ++migrated;
    for (int ph = 1; ph < trace::kFaultPhases; ++ph) {
      ASSERT_NE(f.t[ph], 0u) << "phase " << ph;
      EXPECT_LE(f.t[ph - 1], f.t[ph]) << "phase " << ph;
    }
    EXPECT_EQ(f.bytes, gran);
    EXPECT_EQ(f.device, 0);
  }
  EXPECT_EQ(migrated, kBytes / gran);  // one fault per granule, each brought its granule back
  EXPECT_EQ(after.zero_fill_faults - before.zero_fill_faults,
            kBytes / kBlockSize);  // the fill's, a block each

  uint64_t to_device = 0, fault_back = 0;
  for (const TraceRecord& m : OfType(*t, RecordType::kMigration)) {
    EXPECT_LE(m.t[trace::kMigStart], m.t[trace::kMigEnd]);
    if (m.flags & trace::kMigToDevice) {
      EXPECT_EQ(m.cause, static_cast<uint8_t>(MigrateCause::kPrefetch));
      to_device += m.bytes;
    } else if (m.cause == static_cast<uint8_t>(MigrateCause::kFault)) {
      fault_back += m.bytes;
    }
  }
  EXPECT_EQ(to_device, kBytes);
  EXPECT_EQ(fault_back, kBytes);
  std::vector<TraceRecord> ranges = OfType(*t, RecordType::kRange);
  ASSERT_EQ(ranges.size(), 2u);
  EXPECT_EQ(ranges[0].cause, 1);  // allocated
  EXPECT_EQ(ranges[0].addr, reinterpret_cast<uintptr_t>(p));
  EXPECT_EQ(ranges[0].bytes, kBytes);
  EXPECT_EQ(ranges[1].cause, 0);  // freed
  std::remove(path.c_str());
}

TEST_F(TracingTest, EvictionsAndDeviceErrorsAreRecorded) {
  const std::string path = TempPath("evict");
  ASSERT_TRUE(rt().StartTrace(path).ok());
  // Twice the 64 MiB pool, in two requests: the second half evicts the first.
  constexpr size_t kBytes = 128 * kMiB;
  uint64_t* p = AllocFilled(kBytes, 5);
  absl::Status first = rt().Migrate(p, kBytes / 2, 0);
  ASSERT_TRUE(first.ok()) << first;
  absl::Status second = rt().Migrate(p + kBytes / 16, kBytes / 2, 0);
  ASSERT_TRUE(second.ok()) << second;
  faults0().FailNext(InjectSite::kCopyHostToDevice, 1);
  uint64_t* q = AllocFilled(2 * kMiB, 6);
  EXPECT_FALSE(rt().Migrate(q, 2 * kMiB, 0).ok());
  ASSERT_TRUE(rt().Free(p).ok());
  ASSERT_TRUE(rt().Free(q).ok());
  ASSERT_TRUE(rt().StopTrace().ok());

  absl::StatusOr<trace::Trace> t = trace::ReadTrace(path);
  ASSERT_TRUE(t.ok()) << t.status();
  std::vector<TraceRecord> evictions = OfType(*t, RecordType::kEviction);
  ASSERT_FALSE(evictions.empty());
  uint64_t evicted = 0;
  for (const TraceRecord& e : evictions) {
    EXPECT_EQ(e.device, 0);
    EXPECT_LE(e.t[0], e.t[1]);
    evicted += e.bytes;
  }
  EXPECT_EQ(evicted, rt().stats().evicted_pages * kPageSize);
  std::vector<TraceRecord> errors = OfType(*t, RecordType::kError);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].addr, reinterpret_cast<uintptr_t>(q));
  EXPECT_EQ(errors[0].cause, static_cast<uint8_t>(absl::StatusCode::kAborted));
  std::remove(path.c_str());
}

TEST_F(TracingTest, OneSessionPerProcessAndClearErrors) {
  const std::string path = TempPath("session");
  ASSERT_TRUE(rt().StartTrace(path).ok());
  absl::Status again = rt().StartTrace(TempPath("other"));
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(again.message().find(path), std::string::npos) << again;
  ASSERT_TRUE(rt().StopTrace().ok());
  EXPECT_TRUE(rt().StopTrace().ok());  // nothing to stop
  absl::Status bad = rt().StartTrace("/nonexistent-dir/x.trace");
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("/nonexistent-dir/x.trace"), std::string::npos) << bad;
  std::remove(path.c_str());
}

TEST_F(TracingTest, ThreadsFaultingWhileTracingLoseNoRecords) {
  const std::string path = TempPath("threads");
  ASSERT_TRUE(rt().StartTrace(path).ok());
  constexpr int kThreads = 4;
  constexpr size_t kBytes = 8 * kMiB;
  std::vector<uint64_t*> bufs;
  const Stats before = rt().stats();  // the fills' first touches are faults too (zero-fill)
  for (int i = 0; i < kThreads; ++i) {
    bufs.push_back(AllocFilled(kBytes, 10 + i));
    ASSERT_TRUE(rt().Migrate(bufs.back(), kBytes, 0).ok());
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      for (size_t w = 0; w < kBytes / 8; w += kPageSize / 8) {
        if (bufs[i][w] != Pattern(10 + i, w)) ADD_FAILURE() << "thread " << i << " word " << w;
      }
    });
  }
  for (auto& th : threads) th.join();
  const uint64_t faults = rt().stats().cpu_faults - before.cpu_faults;
  for (uint64_t* b : bufs) ASSERT_TRUE(rt().Free(b).ok());
  ASSERT_TRUE(rt().StopTrace().ok());
  absl::StatusOr<trace::Trace> t = trace::ReadTrace(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->dropped, 0u);
  EXPECT_EQ(OfType(*t, RecordType::kFault).size(), faults);
  std::remove(path.c_str());
}

TEST(TracingEnvTest, UhmmTraceWritesACompleteFilePerProcessAndForkedChildrenLeaveItAlone) {
  const std::string pattern = absl::StrCat(::testing::TempDir(), "/uhmm_env_%p.trace");
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    Config c = TestConfig();
    c.trace_path = pattern;
    absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Create(c);
    if (!rt.ok()) _exit(absl::IsUnavailable(rt.status()) ? 77 : 1);
    absl::StatusOr<void*> p = (*rt)->Allocate(4 * kMiB);
    if (!p.ok() || !(*rt)->Migrate(*p, 4 * kMiB, 0).ok()) _exit(2);
    // A child of the traced process touches managed memory; its trace points must not write into
    // (or end) the parent's file.
    const pid_t grandchild = fork();
    if (grandchild == 0) {
      static_cast<volatile char*>(*p)[0] = 1;
      _exit(0);
    }
    waitpid(grandchild, nullptr, 0);
    // fork() brought the data home; move it again and fault on it.
    if (!(*rt)->Migrate(*p, 4 * kMiB, 0).ok()) _exit(3);
    (void)static_cast<volatile char*>(*p)[kMiB];
    rt->reset();  // stops the trace
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77) GTEST_SKIP() << "backend unavailable";
  ASSERT_EQ(WEXITSTATUS(status), 0);
  const std::string path = absl::StrReplaceAll(pattern, {{"%p", absl::StrCat(pid)}});
  absl::StatusOr<trace::Trace> t = trace::ReadTrace(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->complete);
  EXPECT_EQ(t->header.pid, static_cast<uint32_t>(pid));
  EXPECT_FALSE(OfType(*t, RecordType::kFault).empty());
  std::remove(path.c_str());
}

TEST_F(TracingTest, ForkWhileTracingStartedThroughTheApiKeepsTheParentsTraceWhole) {
  // Started after the runtime registered its fork handler: the runtime's prepare handler, which
  // brings device data home and emits migration records, runs after the tracer's registration.
  const std::string path = TempPath("fork");
  ASSERT_TRUE(rt().StartTrace(path).ok());
  uint64_t* p = AllocFilled(4 * kMiB, 21);
  ASSERT_TRUE(rt().Migrate(p, 4 * kMiB, 0).ok());
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    _exit(p[100] == Pattern(21, 100) ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  ASSERT_TRUE(rt().Migrate(p, 4 * kMiB, 0).ok());
  EXPECT_EQ(p[kMiB / 8], Pattern(21, kMiB / 8));
  ASSERT_TRUE(rt().Free(p).ok());
  ASSERT_TRUE(rt().StopTrace().ok());
  absl::StatusOr<trace::Trace> t = trace::ReadTrace(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->complete);
  EXPECT_FALSE(OfType(*t, RecordType::kFault).empty());
  bool fork_migration = false;
  for (const TraceRecord& m : OfType(*t, RecordType::kMigration)) {
    fork_migration |= m.cause == static_cast<uint8_t>(MigrateCause::kFork);
  }
  EXPECT_TRUE(fork_migration) << "fork() brings device data home; that migration is traced";
  std::remove(path.c_str());
}

TEST(StatsEnvTest, UhmmStatsPrintsTheCountersWhenTheRuntimeGoes) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    Config c = TestConfig();
    c.print_stats = true;
    absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Create(c);
    if (!rt.ok()) _exit(77);
    absl::StatusOr<void*> p = (*rt)->Allocate(2 * kMiB);
    if (!p.ok() || !(*rt)->Migrate(*p, 2 * kMiB, 0).ok()) _exit(2);
    (void)static_cast<volatile char*>(*p)[0];
    rt->reset();
    _exit(0);
  }
  close(fds[1]);
  const std::string err = ReadAllAndClose(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77) GTEST_SKIP() << "backend unavailable";
  EXPECT_NE(err.find("uhmm stats"), std::string::npos) << err;
  EXPECT_NE(err.find("to device         2.0 MiB (512 pages"), std::string::npos) << err;
  EXPECT_NE(err.find("SIGBUS delivered  0"), std::string::npos) << err;
  EXPECT_NE(err.find("device pool"), std::string::npos) << err;
}

}  // namespace
}  // namespace uhmm::testing
