// uhmm_fuzz: a seeded, multi-threaded, model-based fuzzer of the uhmm runtime. Every thread owns
// managed ranges and a plain host copy of each (the model); it runs random API calls, CPU and
// device-side accesses, syscalls, madvise and fork on them and checks every byte it reads against
// the model. A failure is replayed single-threaded and shrunk to a short op list (--replay FILE).
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "uhmm/testing.h"
#include "uhmm/uhmm.hpp"

extern char** environ;

namespace uhmm::fuzz {
namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kPipeBytes = 64 * 1024;  // a pipe's default capacity: one write never blocks

// Exit codes, also how a replay reports what it saw.
constexpr int kExitPass = 0;
constexpr int kExitMismatch = 1;  // a byte differed from the model
constexpr int kExitContract = 2;  // a call broke its contract (status, residency, madvise result)
constexpr int kExitHang = 3;      // the watchdog saw no progress
constexpr int kExitUsage = 64;

constexpr int kHangReplayAttempts = 2;  // single-threaded replays of a hang before giving up

// ---- Operations ---------------------------------------------------------------------------------

enum class OpKind {
  kAlloc,
  kFree,
  kCpuWrite,
  kCpuCheck,
  kPipeIn,       // read(2) from a pipe into managed memory
  kPipeOut,      // write(2) from managed memory into a pipe
  kMigrate,      // uhmm_migrate of a page-aligned sub-range to a device or the host
  kPrefetch,     // uhmm_prefetch_on_queue (queue NULL) to a device or the host
  kEvict,        // uhmm_evict_device (shared state)
  kSync,         // uhmm_sync_for_device (shared state)
  kResidency,    // uhmm_query_residency of an own range or any live range
  kDeviceWrite,  // device-side write of device-resident pages (uhmm/testing.h DeviceAccess)
  kDeviceCheck,  // device-side read of device-resident pages, checked against the model
  kDontneed,     // madvise(MADV_DONTNEED)
  kRemove,       // madvise(MADV_REMOVE)
  kFork,         // the child checks a sample of the thread's ranges
  kFailCopy,     // the next copy batch of a device fails (injected)
  kAdvise,       // uhmm_advise on a sub-range: advice changes where data is, never what it is
  kPageout,      // madvise(MADV_PAGEOUT): the kernel's reclaim unmaps pages; their data stays
  kCount,
};
constexpr size_t kOpKinds = static_cast<size_t>(OpKind::kCount);
constexpr std::array<const char*, kOpKinds> kOpNames = {
    "alloc",       "free",  "cpu_write", "cpu_check", "pipe_in",      "pipe_out",     "migrate",
    "prefetch",    "evict", "sync",      "residency", "device_write", "device_check", "madv_dontneed",
    "madv_remove", "fork",  "fail_copy", "advise",    "madv_pageout"};
// Relative frequencies.
constexpr std::array<int, kOpKinds> kDefaultWeights = {60, 25, 140, 140, 35, 35, 100, 60, 15, 8,
                                                       40, 50, 35,  25,  25, 4,  3,   20, 20};

// An operation is its kind and four random words; what they select (range, offsets, device) is
// resolved against the thread's state when it runs, so that any sub-list is still a valid program.
struct Op {
  OpKind kind;
  uint64_t a, b, c, d;
};

std::string OpText(const Op& op) {
  return absl::StrFormat("%s %u %u %u %u", kOpNames[static_cast<size_t>(op.kind)], op.a, op.b, op.c, op.d);
}

std::optional<Op> ParseOp(const std::string& line) {
  std::istringstream in(line);
  std::string name;
  Op op{};
  if (!(in >> name >> op.a >> op.b >> op.c >> op.d)) return std::nullopt;
  for (size_t k = 0; k < kOpKinds; ++k) {
    if (name == kOpNames[k]) {
      op.kind = static_cast<OpKind>(k);
      return op;
    }
  }
  return std::nullopt;
}

uint64_t SplitMix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void FillBytes(uint8_t* p, size_t n, uint64_t seed) {
  uint64_t s = seed;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t v = SplitMix(s);
    memcpy(p + i, &v, 8);
  }
  if (i < n) {
    const uint64_t v = SplitMix(s);
    memcpy(p + i, &v, n - i);
  }
}

// The op list of one thread: a pure function of (seed, thread, index).
class OpStream {
 public:
  OpStream(uint64_t seed, int thread, const std::array<int, kOpKinds>& weights)
      : state_(seed * 0xD1B54A32D192ED03ull + static_cast<uint64_t>(thread + 1) * 0x9E3779B97F4A7C15ull),
        weights_(weights) {
    for (int w : weights_) total_ += w;
  }
  Op Next() {
    uint64_t r = SplitMix(state_) % static_cast<uint64_t>(total_);
    size_t k = 0;
    while (r >= static_cast<uint64_t>(weights_[k])) r -= weights_[k++];
    return Op{static_cast<OpKind>(k), SplitMix(state_), SplitMix(state_), SplitMix(state_), SplitMix(state_)};
  }

 private:
  uint64_t state_;
  std::array<int, kOpKinds> weights_;
  int total_ = 0;
};

// ---- Options and configurations -----------------------------------------------------------------

struct Options {
  std::string config = "host";
  uint64_t seed = 1;
  bool random_seed = false;
  int threads = 3;
  uint64_t ops = 0;  // total over all threads; 0 with seconds == 0: 3000
  double seconds = 0;
  size_t pool_mib = 4;    // 2 chunks per device: eviction all the time
  size_t max_ranges = 4;  // per thread
  bool madvise = true;
  bool fork = true;
  // Injected copy failures; off by default in the hugetlb config, where a poisoned 2 MiB page
  // currently kills the process from a runtime thread (see --fail-copy).
  int fail_copy = -1;  // -1: default for the config, 0 off, 1 on
  std::string replay_path;
  bool verbose = false;  // print every op as it runs (replays)
  bool quiet = false;    // replays run by the shrinker
  int watchdog_s = 20;
  double shrink_seconds = 90;
  std::string out_dir = ".";
};

constexpr std::array<const char*, 5> kConfigs = {"host", "same_address", "cuda_emulated",
                                                 "level_zero_emulated", "hugetlb"};

// Sets up `name` as tests/test_util.h TestConfig() does. Returns a reason to skip when the
// configuration's backend is not built here.
std::optional<std::string> MakeConfig(const Options& opt, Config* c) {
  c->fault_threads = 2;
  c->device_pool_bytes = opt.pool_mib * kMiB;
  c->hugetlb = HugetlbMode::kNever;  // hugetlb ranges are asked for per range
  c->host_devices = 2;
  c->fault_injection = "on";  // FailCopy injects through uhmm/testing.h
  if (opt.config == "host" || opt.config == "hugetlb") {
    c->backend = "host";
  } else if (opt.config == "same_address") {
    c->backend = "host";
    c->host_same_address = true;
  } else if (opt.config == "cuda_emulated") {
#ifdef UHMM_FAKE_CUDA_DRIVER
    c->backend = "cuda";
    c->transparent_launch = false;  // CUPTI needs NVIDIA's driver, not the emulated one
    c->cuda_driver = UHMM_FAKE_CUDA_DRIVER;
#else
    return "the CUDA backend and its emulated driver (uhmm_fake_cuda_driver) are not built here "
           "(no CUDA toolkit at configure time)";
#endif
  } else if (opt.config == "level_zero_emulated") {
#ifdef UHMM_FAKE_ZE_DRIVER
    c->backend = "level_zero";
    setenv("ZE_ENABLE_ALT_DRIVERS", UHMM_FAKE_ZE_DRIVER, 1);
#else
    return "the emulated Level Zero driver (uhmm_fake_ze_driver) is not built here (no Level Zero "
           "headers, loader or python3 at configure time)";
#endif
  }
  return std::nullopt;
}

bool KnownConfig(const std::string& name) {
  return std::find(kConfigs.begin(), kConfigs.end(), name) != kConfigs.end();
}

size_t FreeHugepages() {
  std::ifstream in("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages");
  size_t n = 0;
  in >> n;
  return n;
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string Hex(const uint8_t* p, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += absl::StrFormat("%02x", p[i]);
  return s;
}

// ---- SIGBUS: pages that lost their data to an injected copy failure ----------------------------

// volatile: the stores around a guarded memcpy must not be optimised away.
thread_local sigjmp_buf* volatile t_guard = nullptr;

void OnSigbus(int sig, siginfo_t* info, void*) {
  if (t_guard == nullptr) {  // not inside a guarded access: say where, then die with the signal
    char name[32] = "?";
    const int fd = open("/proc/thread-self/comm", O_RDONLY);
    if (fd >= 0) {
      const ssize_t len = read(fd, name, sizeof(name) - 1);
      name[len > 0 ? len - 1 : 0] = '\0';  // drop the newline
      close(fd);
    }
    char msg[200];
    const int n = snprintf(msg, sizeof(msg),
                           "uhmm_fuzz: SIGBUS outside a guarded access: thread %d (%s), si_code %d, "
                           "address %p\n",
                           static_cast<int>(gettid()), name, info->si_code, info->si_addr);
    if (n > 0) (void)!write(2, msg, static_cast<size_t>(n));
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  siglongjmp(*t_guard, 1);
}

// Runs body(lo, hi) over [off, off + len) in pieces split at 4 KiB page boundaries. A piece that
// raises SIGBUS calls on_bus(lo) instead and the walk resumes at the next `unit` boundary (the
// CPU's page: 2 MiB in hugetlb ranges). Stops with false as soon as body or on_bus returns false.
template <typename Body, typename OnBus>
bool GuardedPieces(size_t off, size_t len, size_t unit, Body&& body, OnBus&& on_bus) {
  const size_t end = off + len;
  volatile size_t pos = off;
  sigjmp_buf jump;
  while (pos < end) {
    if (sigsetjmp(jump, 1) != 0) {
      t_guard = nullptr;
      const size_t at = pos;
      pos = std::min(end, (at / unit + 1) * unit);
      if (!on_bus(at)) return false;
      continue;
    }
    t_guard = &jump;
    while (pos < end) {
      const size_t lo = pos;
      const size_t hi = std::min(end, (lo / kPageSize + 1) * kPageSize);
      if (!body(lo, hi)) {
        t_guard = nullptr;
        return false;
      }
      pos = hi;
    }
    t_guard = nullptr;
  }
  return true;
}

// ---- State shared by the threads ----------------------------------------------------------------

enum Counter {
  kEvictUnavailable,  // uhmm_evict_device: UNAVAILABLE (migrations in flight); counted, not a failure
  kMigrateExhausted,  // migrations/prefetches refused with RESOURCE_EXHAUSTED (tiny pool)
  kSyncRefused,       // uhmm_sync_for_device: more managed than the pool holds
  kHugetlbRanges,     // ranges that got 2 MiB pages
  kHugetlbFallbacks,  // hugetlb ranges that fell back to 4 KiB pages (no free hugepages)
  kUnknownPages,      // pages the model stopped checking (poisoned, or a device access raced)
  kDeviceRaces,       // device-side accesses whose page moved meanwhile (result discarded)
  kInjectedErrors,    // calls that failed after a copy failure had been injected
  kSkippedOps,        // ops with nothing to act on (no device page, unknown pages)
  kStrictChecks,      // migrations whose residency was checked afterwards
  kCounters,
};
constexpr std::array<const char*, kCounters> kCounterNames = {
    "evict_unavailable", "migrate_exhausted", "sync_refused",    "hugetlb_ranges", "hugetlb_fallbacks",
    "unknown_pages",     "device_races",      "injected_errors", "skipped",        "strict_checks"};

// What the watchdog sees of one thread.
struct ThreadStatus {
  std::atomic<bool> in_op{false};
  std::atomic<int64_t> started_ms{0};
  std::mutex mu;  // guards desc and history
  uint64_t index = 0;
  std::string desc;
  std::vector<Op> history;  // every op this thread started, in order
};

struct Shared {
  const Options& opt;
  Runtime* rt = nullptr;
  int devices = 1;
  bool hugetlb_ranges = false;
  bool replay = false;
  // Device-side accesses hold this exclusively; anything that can move another thread's pages
  // (migrations to a device, prefetch, eviction, sync, fork) holds it shared. So a device access
  // sees no page of its thread move underneath except by the runtime's own read-ahead, which it
  // detects.
  std::shared_mutex device_access;
  std::atomic<bool> injected{false};  // a copy failure was injected: -2, SIGBUS and errors allowed
  std::atomic<bool> stop{false};
  std::mutex registry_mu;
  std::map<uintptr_t, size_t> registry;  // every live range, for residency queries of any range
  std::array<std::atomic<uint64_t>, kOpKinds> op_counts{};
  std::array<std::atomic<uint64_t>, kCounters> counters{};
  std::atomic<uint64_t> mismatches{0};
  std::atomic<uint64_t> contract_failures{0};
  std::mutex fail_mu;
  int fail_code = kExitPass;  // first failure
  int fail_thread = -1;
  uint64_t fail_index = 0;

  explicit Shared(const Options& o) : opt(o) {}
  void Count(Counter c, uint64_t n = 1) { counters[c].fetch_add(n, std::memory_order_relaxed); }
};

std::string SelfPath() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "uhmm_fuzz";
}

// ---- One thread's ranges, model and operations --------------------------------------------------

struct Range {
  uint8_t* ptr = nullptr;
  size_t size = 0;    // requested bytes: CPU accesses stay in [0, size)
  size_t mapped = 0;  // the range's pages (4 KiB or 2 MiB multiple): page operations use these
  bool huge = false;
  std::vector<uint8_t> model;    // mapped bytes
  std::vector<uint8_t> unknown;  // per 4 KiB page: contents no longer checked
  // Per 4 KiB page: advised READ_MOSTLY. Kernels promise not to write such pages (the device may
  // keep a copy the CPU never sees again), so device-side accesses leave them alone.
  std::vector<uint8_t> read_mostly;
  size_t unit() const { return huge ? kBlockSize : kPageSize; }
  size_t pages() const { return mapped / kPageSize; }
  size_t data_pages() const { return (size + kPageSize - 1) / kPageSize; }
};

class Worker {
 public:
  Worker(Shared& sh, int id, ThreadStatus& status) : sh_(sh), rt_(*sh.rt), id_(id), status_(status) {
    if (pipe(pipe_) != 0) pipe_[0] = pipe_[1] = -1;
  }
  ~Worker() {
    if (pipe_[0] >= 0) close(pipe_[0]);
    if (pipe_[1] >= 0) close(pipe_[1]);
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Runs one op; false when it found a failure (already reported).
  bool Run(const Op& op, uint64_t index) {
    op_ = op;
    index_ = index;
    {
      std::lock_guard<std::mutex> lock(status_.mu);
      status_.index = index;
      status_.desc = OpText(op);
      status_.history.push_back(op);
    }
    status_.started_ms.store(NowMs());
    status_.in_op.store(true);
    const bool ok = Dispatch(op);
    status_.in_op.store(false);
    sh_.op_counts[static_cast<size_t>(op.kind)].fetch_add(1, std::memory_order_relaxed);
    return ok;
  }

  // Frees every range; false on a failure.
  bool FreeAll() {
    while (!ranges_.empty()) {
      if (!FreeRange(ranges_.size() - 1)) return false;
    }
    return true;
  }

 private:
  // ---- reporting ----
  void Describe(const std::string& d) {
    {
      std::lock_guard<std::mutex> lock(status_.mu);
      status_.desc = d;
    }
    // The thread's recent ops as they ran, printed with a failure: with several threads the op
    // lists replay, but not the interleaving that failed.
    recent_[recent_next_++ % kRecent] = absl::StrFormat("op#%u %s", index_, d);
    if (sh_.opt.verbose) absl::PrintF("  op#%llu %s\n", static_cast<unsigned long long>(index_), d.c_str());
  }
  std::string RangeName(const Range& r) const {
    return absl::StrFormat("r%d@%p(%u B%s)", static_cast<int>(&r - ranges_.data()), r.ptr, r.size,
                           r.huge ? ", hugetlb" : "");
  }
  bool Fail(int code, const std::string& what) {
    (code == kExitMismatch ? sh_.mismatches : sh_.contract_failures).fetch_add(1);
    std::string desc;
    {
      std::lock_guard<std::mutex> lock(status_.mu);
      desc = status_.desc;
    }
    {
      std::lock_guard<std::mutex> lock(sh_.fail_mu);
      if (sh_.fail_code == kExitPass) {
        sh_.fail_code = code;
        sh_.fail_thread = id_;
        sh_.fail_index = index_;
      }
      absl::PrintF(
          "uhmm_fuzz FAILURE (%s): config=%s seed=%llu thread=%d op#%llu: %s\n  op: %s\n  %s\n"
          "  copy failures injected so far (any thread): %s\n",
          code == kExitMismatch ? "data mismatch" : "contract", sh_.opt.config.c_str(),
          static_cast<unsigned long long>(sh_.opt.seed), id_, static_cast<unsigned long long>(index_),
          OpText(op_).c_str(), desc.c_str(), what.c_str(), sh_.injected.load() ? "yes" : "no");
      absl::PrintF("  this thread's last %u ops, oldest first:\n", std::min<size_t>(recent_next_, kRecent));
      for (size_t k = recent_next_ > kRecent ? recent_next_ - kRecent : 0; k < recent_next_; ++k) {
        absl::PrintF("    %s\n", recent_[k % kRecent]);
      }
      if (!sh_.replay) {
        // A time-bounded run replays with an op bound: the op lists depend on the seed only.
        absl::PrintF(
            "  replay the whole run: %s --config %s --seed %llu --threads %d --ops %llu%s%s%s\n",
            SelfPath().c_str(), sh_.opt.config.c_str(), static_cast<unsigned long long>(sh_.opt.seed),
            sh_.opt.threads,
            static_cast<unsigned long long>(sh_.opt.ops > 0 ? sh_.opt.ops : (index_ + 1) * sh_.opt.threads),
            sh_.opt.madvise ? "" : " --no-madvise", sh_.opt.fork ? "" : " --no-fork",
            sh_.opt.fail_copy == 0   ? " --no-fail-copy"
            : sh_.opt.fail_copy == 1 ? " --fail-copy"
                                     : "");
      }
      fflush(stdout);
    }
    sh_.stop.store(true);
    return false;
  }
  int ResidencyOf(const Range& r, size_t off) {
    absl::StatusOr<std::vector<int32_t>> res = rt_.Residency(r.ptr + off / kPageSize * kPageSize, kPageSize);
    return res.ok() ? (*res)[0] : -100;
  }
  // A byte at `off` differs: expected vs actual around it. `actual` holds the bytes at [win, win+n).
  bool Mismatch(const Range& r, size_t off, size_t win, const uint8_t* actual, size_t n, const char* how) {
    return Fail(kExitMismatch,
                absl::StrFormat("%s: %s offset %#x (page %u of %u, residency now %d): expected %s, "
                                "actual %s (bytes %#x..%#x)",
                                how, RangeName(r), off, off / kPageSize, r.pages(), ResidencyOf(r, off),
                                Hex(r.model.data() + win, n), Hex(actual, n), win, win + n));
  }

  // ---- model bookkeeping ----
  void MarkUnknown(Range& r, size_t lo, size_t hi) {
    for (size_t p = lo / kPageSize; p < (hi + kPageSize - 1) / kPageSize && p < r.pages(); ++p) {
      if (!r.unknown[p]) {
        r.unknown[p] = 1;
        sh_.Count(kUnknownPages);
      }
    }
  }
  bool AnyUnknown(const Range& r, size_t lo, size_t hi) const {
    for (size_t p = lo / kPageSize; p < (hi + kPageSize - 1) / kPageSize; ++p) {
      if (r.unknown[p]) return true;
    }
    return false;
  }
  // SIGBUS at range offset `at`: legitimate only after an injected copy failure; then the CPU
  // page's data is gone.
  bool OnBus(Range& r, size_t at) {
    if (!sh_.injected.load()) {
      return Fail(kExitContract, absl::StrFormat("SIGBUS at %s offset %#x (residency %d) with no copy "
                                                 "failure injected",
                                                 RangeName(r), at, ResidencyOf(r, at)));
    }
    const size_t lo = at / r.unit() * r.unit();
    MarkUnknown(r, lo, std::min(r.mapped, lo + r.unit()));
    return true;
  }
  // A call failed: legitimate after an injected copy failure (counted), else a contract failure.
  bool CallFailed(const std::string& call, const absl::Status& s) {
    if (sh_.injected.load() && !absl::IsInvalidArgument(s) && !absl::IsNotFound(s)) {
      sh_.Count(kInjectedErrors);
      return true;
    }
    return Fail(kExitContract, absl::StrFormat("%s failed: %s", call, s.ToString()));
  }
  // Residency values of own pages: a device, the host, or poisoned after an injected failure.
  bool CheckResidency(Range& r, size_t first_page, const std::vector<int32_t>& res, const char* after) {
    for (size_t i = 0; i < res.size(); ++i) {
      const int32_t v = res[i];
      if (v >= kHost && v < sh_.devices) continue;
      if (v == kPoisoned && sh_.injected.load()) {
        const size_t at = (first_page + i) * kPageSize;
        const size_t lo = at / r.unit() * r.unit();
        MarkUnknown(r, lo, std::min(r.mapped, lo + r.unit()));
        continue;
      }
      return Fail(kExitContract, absl::StrFormat("%s: residency of %s page %u is %d (devices 0..%d%s)", after,
                                                 RangeName(r), first_page + i, v, sh_.devices - 1,
                                                 sh_.injected.load() ? ", -2 after injection" : ""));
    }
    return true;
  }

  // ---- choosing what an op acts on ----
  static size_t AllocSize(uint64_t a) {
    const uint64_t r = a >> 8;
    switch (a % 12) {
      case 0:
        return 1 + r % 4096;
      case 1:
        return kPageSize * (1 + r % 16);
      case 2:
      case 3:
        return 1 + r % (256 * 1024);
      case 4:
      case 5:
        return 1 + r % kMiB;
      case 6:
        return kBlockSize - kPageSize + r % (2 * kPageSize);  // around one block
      case 7:
        return kPageSize * (300 + r % 100) - r % kPageSize;  // ~1.2-1.6 MiB
      case 8:
        return kBlockSize + 1 + r % kMiB;  // two blocks
      default:
        return 1 + r % (3 * kMiB);
    }
  }
  Range* PickRange(uint64_t x) { return ranges_.empty() ? nullptr : &ranges_[x % ranges_.size()]; }
  // A byte span of [0, size): tiny, across a page or block boundary, medium, large or whole.
  // The bytes an op acts on: range op.a, bytes picked from op.b and op.c, described as
  // "<what> <range> [off, +len)".
  struct Span {
    Range& r;
    size_t off, len;
  };
  Span PickSpan(const Op& op, size_t max_len, const char* what) {
    Range& r = *PickRange(op.a);
    const std::pair<size_t, size_t> picked = PickBytes(r, op.b, op.c, max_len);
    Describe(absl::StrFormat("%s %s [%#x, +%#x)", what, RangeName(r), picked.first, picked.second));
    return {r, picked.first, picked.second};
  }
  static std::pair<size_t, size_t> PickBytes(const Range& r, uint64_t x, uint64_t y, size_t max_len) {
    const size_t n = r.size;
    size_t off = 0;
    size_t len = 0;
    switch (y % 8) {
      case 0:
        off = x % n;
        len = 1 + (x >> 32) % 16;
        break;
      case 1:
      case 2: {  // across a page (case 1) or 2 MiB block (case 2) boundary
        const size_t step = (y % 8 == 2 && n > kBlockSize) ? kBlockSize : kPageSize;
        const size_t boundaries = (n - 1) / step;
        if (boundaries == 0) {
          off = x % n;
        } else {
          const size_t b = (1 + x % boundaries) * step;
          off = b - std::min(b, 1 + (x >> 20) % 64);
        }
        len = 1 + (x >> 40) % 256;
        break;
      }
      case 3:
      case 4:
        off = x % n;
        len = 1 + (x >> 32) % (16 * 1024);
        break;
      case 5:
        off = x % n;
        len = 1 + (x >> 32) % (256 * 1024);
        break;
      case 6:
        off = 0;
        len = n;
        break;
      default:
        off = x % n;
        len = n;
        break;
    }
    len = std::min({len, n - off, max_len});
    return {off, std::max<size_t>(len, 1)};
  }
  // A page-aligned span of the range's pages (or of its data pages): whole, one page, or a run.
  static std::pair<size_t, size_t> PickPages(const Range& r, uint64_t x, uint64_t y, bool data_only) {
    const size_t pages = data_only ? r.data_pages() : r.pages();
    size_t first = 0;
    size_t count = pages;
    switch (y % 6) {
      case 0:
        break;
      case 1:
        first = x % pages;
        count = 1;
        break;
      case 2:
        first = x % pages;
        count = pages - first;
        break;
      default:
        first = x % pages;
        count = 1 + (x >> 32) % (pages - first);
        break;
    }
    return {first * kPageSize, count * kPageSize};
  }
  int PickTarget(uint64_t x) { return static_cast<int>(x % static_cast<uint64_t>(sh_.devices + 1)) - 1; }

  // ---- operations ----
  bool Dispatch(const Op& op) {
    if (ranges_.empty() && op.kind != OpKind::kEvict && op.kind != OpKind::kSync &&
        op.kind != OpKind::kFailCopy && op.kind != OpKind::kResidency) {
      return Alloc(op);  // nothing to act on yet
    }
    switch (op.kind) {
      case OpKind::kAlloc:
        return Alloc(op);
      case OpKind::kFree:
        return FreeRange(op.a % ranges_.size());
      case OpKind::kCpuWrite:
        return CpuWrite(op);
      case OpKind::kCpuCheck:
        return CpuCheck(op);
      case OpKind::kPipeIn:
        return PipeIn(op);
      case OpKind::kPipeOut:
        return PipeOut(op);
      case OpKind::kMigrate:
        return Move(op, /*prefetch=*/false);
      case OpKind::kPrefetch:
        return Move(op, /*prefetch=*/true);
      case OpKind::kEvict:
        return Evict(op);
      case OpKind::kSync:
        return Sync(op);
      case OpKind::kResidency:
        return QueryResidency(op);
      case OpKind::kDeviceWrite:
        return DeviceAccess(op, /*write=*/true);
      case OpKind::kDeviceCheck:
        return DeviceAccess(op, /*write=*/false);
      case OpKind::kDontneed:
        return Madvise(op, MADV_DONTNEED);
      case OpKind::kRemove:
        return Madvise(op, MADV_REMOVE);
      case OpKind::kFork:
        return Fork(op);
      case OpKind::kFailCopy:
        return FailCopy(op);
      case OpKind::kAdvise:
        return Advise(op);
      case OpKind::kPageout:
        return Pageout(op);
      case OpKind::kCount:
        break;
    }
    return true;
  }

  bool Alloc(const Op& op) {
    if (ranges_.size() >= sh_.opt.max_ranges && !FreeRange(op.b % ranges_.size())) return false;
    const size_t size = AllocSize(op.a);
    bool huge = sh_.hugetlb_ranges;
    Describe(absl::StrFormat("alloc %u B%s", size, huge ? " hugetlb" : ""));
    absl::StatusOr<void*> p = rt_.Allocate(size, huge ? Backing::kHugetlb : Backing::k4K);
    if (!p.ok() && huge) {
      sh_.Count(kHugetlbFallbacks);
      huge = false;
      p = rt_.Allocate(size, Backing::k4K);
    }
    if (!p.ok())
      return Fail(kExitContract, absl::StrFormat("Allocate(%u) failed: %s", size, p.status().ToString()));
    if (huge) sh_.Count(kHugetlbRanges);
    Range r;
    r.ptr = static_cast<uint8_t*>(*p);
    r.size = size;
    r.huge = huge;
    r.mapped = (size + r.unit() - 1) / r.unit() * r.unit();
    r.model.assign(r.mapped, 0);
    r.unknown.assign(r.pages(), 0);
    r.read_mostly.assign(r.pages(), 0);
    {
      std::lock_guard<std::mutex> lock(sh_.registry_mu);
      sh_.registry[reinterpret_cast<uintptr_t>(r.ptr)] = r.mapped;
    }
    ranges_.push_back(std::move(r));
    Describe(absl::StrFormat("alloc %u B%s -> %s", size, huge ? " hugetlb" : "", RangeName(ranges_.back())));
    return true;
  }

  bool FreeRange(size_t i) {
    Range& r = ranges_[i];
    Describe(absl::StrFormat("free %s", RangeName(r)));
    {
      std::lock_guard<std::mutex> lock(sh_.registry_mu);
      sh_.registry.erase(reinterpret_cast<uintptr_t>(r.ptr));
    }
    absl::Status s = rt_.Free(r.ptr);
    ranges_.erase(ranges_.begin() + static_cast<std::ptrdiff_t>(i));
    if (!s.ok()) return Fail(kExitContract, absl::StrFormat("Free failed: %s", s.ToString()));
    return true;
  }

  bool CpuWrite(const Op& op) {
    const Span span = PickSpan(op, SIZE_MAX, "cpu_write");
    Range& r = span.r;
    const size_t off = span.off, len = span.len;
    std::vector<uint8_t> data(len);
    FillBytes(data.data(), len, op.d);
    return GuardedPieces(
        off, len, r.unit(),
        [&](size_t lo, size_t hi) {
          memcpy(r.ptr + lo, data.data() + (lo - off), hi - lo);
          memcpy(r.model.data() + lo, data.data() + (lo - off), hi - lo);
          return true;
        },
        [&](size_t at) { return OnBus(r, at); });
  }

  // Compares [off, off+len) of the range with the model, skipping unknown pages.
  bool CheckBytes(Range& r, size_t off, size_t len, const char* how) {
    size_t bad = SIZE_MAX;
    size_t win = 0;
    uint8_t actual[32];
    size_t n = 0;
    const bool ok = GuardedPieces(
        off, len, r.unit(),
        [&](size_t lo, size_t hi) {
          if (r.unknown[lo / kPageSize]) return true;
          if (memcmp(r.ptr + lo, r.model.data() + lo, hi - lo) == 0) return true;
          for (size_t i = lo; i < hi; ++i) {
            if (r.ptr[i] != r.model[i]) {
              bad = i;
              break;
            }
          }
          win = bad / 16 * 16;
          n = std::min<size_t>(32, r.size - win);
          memcpy(actual, r.ptr + win, n);
          return false;
        },
        [&](size_t at) { return OnBus(r, at); });
    if (ok || bad == SIZE_MAX) return ok;
    return Mismatch(r, bad, win, actual, n, how);
  }

  bool CpuCheck(const Op& op) {
    const Span span = PickSpan(op, SIZE_MAX, "cpu_check");
    Range& r = span.r;
    const size_t off = span.off, len = span.len;
    return CheckBytes(r, off, len, "CPU read");
  }

  // After a failed or short transfer: fine only if an injected copy failure poisoned a page.
  bool TransferFailed(Range& r, size_t off, size_t len, const std::string& what) {
    if (!sh_.injected.load()) return Fail(kExitContract, what + " (no copy failure injected)");
    sh_.Count(kInjectedErrors);
    MarkUnknown(r, off / r.unit() * r.unit(),
                std::min(r.mapped, (off + len + r.unit() - 1) / r.unit() * r.unit()));
    return true;
  }
  void DrainPipe() {
    uint8_t sink[4096];
    pollfd pfd{pipe_[0], POLLIN, 0};
    while (poll(&pfd, 1, 0) == 1 && read(pipe_[0], sink, sizeof(sink)) > 0) {
    }
  }

  bool PipeIn(const Op& op) {
    const Span span = PickSpan(op, kPipeBytes, "pipe_in");
    Range& r = span.r;
    const size_t off = span.off, len = span.len;
    if (AnyUnknown(r, off, off + len)) {
      sh_.Count(kSkippedOps);
      return true;
    }
    std::vector<uint8_t> data(len);
    FillBytes(data.data(), len, op.d);
    if (write(pipe_[1], data.data(), len) != static_cast<ssize_t>(len)) {
      return Fail(kExitContract, absl::StrFormat("write to the pipe: %s", strerror(errno)));
    }
    size_t got = 0;
    while (got < len) {
      const ssize_t n = read(pipe_[0], r.ptr + off + got, len - got);
      if (n <= 0) {
        const int err = errno;
        DrainPipe();
        memcpy(r.model.data() + off, data.data(), got);
        return TransferFailed(r, off, len,
                              absl::StrFormat("read(2) into %s [%#x, +%#x) stopped at %u bytes: %s",
                                              RangeName(r), off, len, got, n == 0 ? "EOF" : strerror(err)));
      }
      got += static_cast<size_t>(n);
    }
    memcpy(r.model.data() + off, data.data(), len);
    return true;
  }

  bool PipeOut(const Op& op) {
    const Span span = PickSpan(op, kPipeBytes, "pipe_out");
    Range& r = span.r;
    const size_t off = span.off, len = span.len;
    if (AnyUnknown(r, off, off + len)) {
      sh_.Count(kSkippedOps);
      return true;
    }
    const ssize_t n = write(pipe_[1], r.ptr + off, len);
    if (n != static_cast<ssize_t>(len)) {
      const int err = errno;
      DrainPipe();
      return TransferFailed(r, off, len,
                            absl::StrFormat("write(2) from %s [%#x, +%#x) returned %d: %s", RangeName(r), off,
                                            len, n, n < 0 ? strerror(err) : "short"));
    }
    std::vector<uint8_t> out(len);
    size_t got = 0;
    while (got < len) {
      const ssize_t m = read(pipe_[0], out.data() + got, len - got);
      if (m <= 0) return Fail(kExitContract, absl::StrFormat("read from the pipe: %s", strerror(errno)));
      got += static_cast<size_t>(m);
    }
    for (size_t i = 0; i < len; ++i) {
      if (out[i] != r.model[off + i]) {
        const size_t win = i / 16 * 16;
        const size_t n32 = std::min<size_t>(32, len - win);
        return Fail(kExitMismatch,
                    absl::StrFormat("write(2) from managed memory: %s offset %#x (page %u, residency now "
                                    "%d): expected %s, actual %s",
                                    RangeName(r), off + i, (off + i) / kPageSize, ResidencyOf(r, off + i),
                                    Hex(r.model.data() + off + win, n32), Hex(out.data() + win, n32)));
      }
    }
    return true;
  }

  // uhmm_migrate / uhmm_prefetch_on_queue. One in four holds device_access exclusively and then
  // checks that every page of the span is where the call said it put it.
  bool Move(const Op& op, bool prefetch) {
    Range& r = *PickRange(op.a);
    const auto picked = PickPages(r, op.b, op.c, false);
    size_t off = picked.first, len = picked.second;
    const int target = PickTarget(op.d);
    const bool strict = (op.d >> 16) % 4 == 0;
    const char* call = prefetch ? "PrefetchOnQueue" : "Migrate";
    Describe(absl::StrFormat("%s %s [%#x, +%#x) -> %d%s", prefetch ? "prefetch" : "migrate", RangeName(r),
                             off, len, target, strict ? " (checked)" : ""));
    std::shared_lock<std::shared_mutex> shared(sh_.device_access, std::defer_lock);
    std::unique_lock<std::shared_mutex> exclusive(sh_.device_access, std::defer_lock);
    if (strict) {
      exclusive.lock();
    } else {
      shared.lock();
    }
    const uint64_t readahead_before = rt_.stats().readahead_pages;
    const absl::Status s = prefetch ? rt_.PrefetchOnQueue(r.ptr + off, len, target, nullptr)
                                    : rt_.Migrate(r.ptr + off, len, target);
    const std::string what = absl::StrFormat("%s(%s [%#x, +%#x), %d)", call, RangeName(r), off, len, target);
    if (!s.ok()) {
      if (target >= 0 && absl::IsResourceExhausted(s)) {
        sh_.Count(kMigrateExhausted);
        return true;
      }
      return CallFailed(what, s);
    }
    if (!strict) return true;
    sh_.Count(kStrictChecks);
    absl::StatusOr<std::vector<int32_t>> res = rt_.Residency(r.ptr + off, len);
    if (!res.ok()) return Fail(kExitContract, "Residency failed: " + res.status().ToString());
    if (!CheckResidency(r, off / kPageSize, *res, what.c_str())) return false;
    size_t wrong = 0;
    size_t first_wrong = 0;
    int32_t where = 0;
    for (size_t i = 0; i < res->size(); ++i) {
      if ((*res)[i] == target || r.unknown[off / kPageSize + i]) continue;
      if (wrong++ == 0) {
        first_wrong = i;
        where = (*res)[i];
      }
    }
    if (wrong == 0) return true;
    const uint64_t readahead_after = rt_.stats().readahead_pages;
    return Fail(
        kExitContract,
        absl::StrFormat("%s returned OK but %u of its %u pages are not on %d (first: page %u of the "
                        "range, at %d); read-ahead pages before/after: %u/%u, device pages in use: %u",
                        what, wrong, res->size(), target, off / kPageSize + first_wrong, where,
                        readahead_before, readahead_after, rt_.stats().device_pages_used));
  }

  bool Evict(const Op& op) {
    const int dev = static_cast<int>(op.a % static_cast<uint64_t>(sh_.devices));
    Describe(absl::StrFormat("evict device %d", dev));
    std::shared_lock<std::shared_mutex> lock(sh_.device_access);
    const absl::Status s = rt_.EvictDevice(dev);
    if (absl::IsUnavailable(s)) {  // pages held by migrations in flight: counted, not a failure
      sh_.Count(kEvictUnavailable);
      return true;
    }
    return s.ok() || CallFailed(absl::StrFormat("EvictDevice(%d)", dev), s);
  }

  bool Sync(const Op& op) {
    const int dev = static_cast<int>(op.a % static_cast<uint64_t>(sh_.devices));
    Describe(absl::StrFormat("sync_for_device %d", dev));
    std::shared_lock<std::shared_mutex> lock(sh_.device_access);
    const absl::Status s = rt_.SyncForDevice(dev, nullptr);
    if (absl::IsResourceExhausted(s)) {  // more managed bytes than the pool holds
      sh_.Count(kSyncRefused);
      return true;
    }
    return s.ok() || CallFailed(absl::StrFormat("SyncForDevice(%d)", dev), s);
  }

  bool QueryResidency(const Op& op) {
    if (ranges_.empty() || op.a % 3 == 0) {  // any live range, possibly another thread's
      uintptr_t start = 0;
      size_t bytes = 0;
      {
        std::lock_guard<std::mutex> lock(sh_.registry_mu);
        if (sh_.registry.empty()) return true;
        auto it = sh_.registry.begin();
        std::advance(it, static_cast<std::ptrdiff_t>(op.b % sh_.registry.size()));
        start = it->first;
        bytes = it->second;
      }
      Describe(absl::StrFormat("residency of any range %#x +%#x", start, bytes));
      absl::StatusOr<std::vector<int32_t>> res = rt_.Residency(reinterpret_cast<void*>(start), bytes);
      if (!res.ok()) {
        // Freed (and perhaps reallocated smaller) by its owner meanwhile.
        if (absl::IsNotFound(res.status()) || absl::IsInvalidArgument(res.status())) return true;
        return Fail(kExitContract, "Residency of another thread's range: " + res.status().ToString());
      }
      for (int32_t v : *res) {
        if ((v >= kHost && v < sh_.devices) || (v == kPoisoned && sh_.injected.load())) continue;
        return Fail(kExitContract, absl::StrFormat("residency of the range at %#x has %d", start, v));
      }
      return true;
    }
    Range& r = *PickRange(op.b);
    const auto picked = PickPages(r, op.c, op.d, false);
    size_t off = picked.first, len = picked.second;
    Describe(absl::StrFormat("residency %s [%#x, +%#x)", RangeName(r), off, len));
    absl::StatusOr<std::vector<int32_t>> res = rt_.Residency(r.ptr + off, len);
    if (!res.ok()) return Fail(kExitContract, "Residency failed: " + res.status().ToString());
    if (res->size() != len / kPageSize) {
      return Fail(kExitContract,
                  absl::StrFormat("Residency returned %u values for %u pages", res->size(), len / kPageSize));
    }
    return CheckResidency(r, off / kPageSize, *res, "query_residency");
  }

  // A device-side write or read of the device-resident pages of a span (optionally migrated there
  // first), as a kernel does. The model changes only for pages that stayed put meanwhile.
  bool DeviceAccess(const Op& op, bool write) {
    Range& r = *PickRange(op.a);
    const auto picked = PickPages(r, op.b, op.c, /*data_only=*/true);
    size_t off = picked.first, len = picked.second;
    len = std::min(len, 16 * kPageSize);
    const bool migrate_first = op.d % 2 == 0;
    const int dev = static_cast<int>((op.d >> 1) % static_cast<uint64_t>(sh_.devices));
    Describe(absl::StrFormat("%s %s [%#x, +%#x)%s", write ? "device_write" : "device_check", RangeName(r),
                             off, len, migrate_first ? absl::StrFormat(" after migrate to %d", dev) : ""));
    std::unique_lock<std::shared_mutex> lock(sh_.device_access);
    if (migrate_first) {
      const absl::Status s = rt_.Migrate(r.ptr + off, len, dev);
      if (absl::IsResourceExhausted(s)) {
        sh_.Count(kMigrateExhausted);
      } else if (!s.ok() &&
                 !CallFailed(absl::StrFormat("Migrate(%s [%#x, +%#x), %d)", RangeName(r), off, len, dev),
                             s)) {
        return false;
      }
    }
    absl::StatusOr<std::vector<int32_t>> before = rt_.Residency(r.ptr + off, len);
    if (!before.ok()) return Fail(kExitContract, "Residency failed: " + before.status().ToString());
    if (!CheckResidency(r, off / kPageSize, *before, "before a device access")) return false;
    struct Access {
      size_t page_off;  // range offset of the page
      int device;
      uint64_t addr;  // device address of the page
      size_t lo, hi;  // range offsets accessed
      std::vector<uint8_t> bytes;
    };
    std::vector<Access> done;
    uint64_t s = op.c ^ op.d;
    for (size_t i = 0; i < before->size(); ++i) {
      const size_t page_off = off + i * kPageSize;
      const int d = (*before)[i];
      if (d < 0 || r.unknown[page_off / kPageSize] || r.read_mostly[page_off / kPageSize]) continue;
      absl::StatusOr<uint64_t> addr = rt_.DeviceAddress(r.ptr + page_off);
      if (!addr.ok()) continue;  // left the device meanwhile (read-ahead)
      testing::DeviceAccess* access = testing::Access(rt_, d);
      if (access == nullptr)
        return Fail(kExitContract, absl::StrFormat("device %d has no device-side access", d));
      // The whole page, or a piece of it; never past the requested size.
      const size_t page_end = std::min(r.size, page_off + kPageSize);
      size_t lo = page_off;
      size_t hi = page_end;
      const uint64_t pick = SplitMix(s);
      if (pick % 3 == 0) {
        lo = page_off + (pick >> 8) % (page_end - page_off);
        hi = lo + 1 + (pick >> 24) % (page_end - lo);
      }
      Access a{page_off, d, *addr, lo, hi, std::vector<uint8_t>(hi - lo)};
      absl::Status st;
      if (write) {
        FillBytes(a.bytes.data(), a.bytes.size(), SplitMix(s));
        st = access->DeviceWrite(*addr + (lo - page_off), a.bytes.data(), a.bytes.size());
      } else {
        st = access->DeviceRead(*addr + (lo - page_off), a.bytes.data(), a.bytes.size());
      }
      if (!st.ok())
        return Fail(kExitContract, absl::StrFormat("Device%s at device %d address %#x: %s",
                                                   write ? "Write" : "Read", d, *addr, st.ToString()));
      done.push_back(std::move(a));
    }
    if (done.empty()) {
      sh_.Count(kSkippedOps);
      return true;
    }
    absl::StatusOr<std::vector<int32_t>> after = rt_.Residency(r.ptr + off, len);
    if (!after.ok()) return Fail(kExitContract, "Residency failed: " + after.status().ToString());
    for (const Access& a : done) {
      absl::StatusOr<uint64_t> addr = rt_.DeviceAddress(r.ptr + a.page_off);
      if ((*after)[(a.page_off - off) / kPageSize] != a.device || !addr.ok() || *addr != a.addr) {
        // The runtime's read-ahead moved the page home while the device accessed it: what the
        // page holds now is unknown to the model.
        sh_.Count(kDeviceRaces);
        MarkUnknown(r, a.page_off, a.page_off + kPageSize);
        continue;
      }
      if (write) {
        memcpy(r.model.data() + a.lo, a.bytes.data(), a.bytes.size());
        continue;
      }
      if (memcmp(a.bytes.data(), r.model.data() + a.lo, a.bytes.size()) != 0) {
        size_t i = 0;
        while (a.bytes[i] == r.model[a.lo + i]) ++i;
        const size_t win = i / 16 * 16;
        const size_t n = std::min<size_t>(32, a.bytes.size() - win);
        return Fail(kExitMismatch,
                    absl::StrFormat("device-side read (device %d, address %#x): %s offset %#x (page %u): "
                                    "expected %s, actual %s",
                                    a.device, a.addr, RangeName(r), a.lo + i, (a.lo + i) / kPageSize,
                                    Hex(r.model.data() + a.lo + win, n), Hex(a.bytes.data() + win, n)));
      }
    }
    return true;
  }

  // madvise rules (docs/SEMANTICS.md): 4 KiB ranges: DONTNEED and REMOVE zero the whole pages they
  // cover. Hugetlb ranges follow the kernel: DONTNEED needs a 2 MiB-aligned start (else EINVAL,
  // nothing changes) and rounds the end down to 2 MiB; REMOVE zeroes the 4 KiB pages it covers.
  bool Madvise(const Op& op, int advice) {
    Range& r = *PickRange(op.a);
    const auto picked = PickPages(r, op.b, op.c, false);
    size_t off = picked.first, len = picked.second;
    if (r.huge && op.d % 2 == 0) {  // whole huge pages, most of the time
      const size_t blocks = r.mapped / kBlockSize;
      off = (op.d >> 8) % blocks * kBlockSize;
      len = (1 + (op.d >> 24) % (blocks - off / kBlockSize)) * kBlockSize;
    }
    const char* name = advice == MADV_DONTNEED ? "MADV_DONTNEED" : "MADV_REMOVE";
    size_t zero_lo = off;
    size_t zero_hi = off + len;
    int expect_errno = 0;
    if (r.huge && advice == MADV_DONTNEED) {
      if (off % kBlockSize != 0) {
        expect_errno = EINVAL;
        zero_hi = zero_lo;
      } else {
        zero_hi = std::max(zero_lo, zero_hi / kBlockSize * kBlockSize);
      }
    }
    Describe(absl::StrFormat("madvise %s [%#x, +%#x) %s (expect %s; zeroes [%#x, %#x))", RangeName(r), off,
                             len, name, expect_errno ? "EINVAL" : "0", zero_lo, zero_hi));
    const int ret = madvise(r.ptr + off, len, advice);
    const int err = ret == 0 ? 0 : errno;
    if ((ret == 0) != (expect_errno == 0) || err != expect_errno) {
      return Fail(kExitContract, absl::StrFormat("madvise(%s [%#x, +%#x), %s) returned %d (%s); expected %s",
                                                 RangeName(r), off, len, name, ret,
                                                 err ? strerror(err) : "ok", expect_errno ? "EINVAL" : "0"));
    }
    std::fill(r.model.begin() + static_cast<std::ptrdiff_t>(zero_lo),
              r.model.begin() + static_cast<std::ptrdiff_t>(zero_hi), 0);
    return true;
  }

  // MADV_PAGEOUT: reclaim unmaps the pages (with no swap, shmem pages stay in the page cache) and
  // may leave no write-protect marker behind, so write tracking must not take them for unwritten
  // afterwards. Nothing changes in the data. EINVAL: hugetlb ranges, or a kernel without it.
  bool Pageout(const Op& op) {
    Range& r = *PickRange(op.a);
    const auto [off, len] = PickPages(r, op.b, op.c, false);
    Describe(absl::StrFormat("madvise %s [%#x, +%#x) MADV_PAGEOUT (data unchanged)", RangeName(r), off, len));
    if (madvise(r.ptr + off, len, MADV_PAGEOUT) != 0 && errno != EINVAL) {
      return Fail(kExitContract, absl::StrFormat("madvise(%s [%#x, +%#x), MADV_PAGEOUT): %s", RangeName(r),
                                                 off, len, strerror(errno)));
    }
    return true;
  }

  // fork(): the child reads samples of this thread's ranges and reports every difference from the
  // model through a pipe, then _exit()s. It allocates nothing: other threads may hold malloc's locks.
  struct ForkSample {
    uint32_t range;
    size_t off, len;
  };
  struct ForkReport {
    uint32_t range;
    size_t off;  // first differing byte, or the piece that raised SIGBUS
    int sigbus;
    uint8_t expected[16];
    uint8_t actual[16];
  };
  bool Fork(const Op& op) {
    std::vector<ForkSample> samples;
    uint64_t s = op.a;
    for (int i = 0; i < 48; ++i) {
      const uint32_t ri = static_cast<uint32_t>(SplitMix(s) % ranges_.size());
      const Range& r = ranges_[ri];
      const size_t o = SplitMix(s) % r.size;
      const size_t l = std::min<size_t>(r.size - o, 1 + SplitMix(s) % 1024);
      if (!AnyUnknown(r, o, o + l)) samples.push_back({ri, o, l});
    }
    Describe(
        absl::StrFormat("fork, the child checks %u samples of %u ranges", samples.size(), ranges_.size()));
    int fds[2];
    if (pipe(fds) != 0) return Fail(kExitContract, absl::StrFormat("pipe: %s", strerror(errno)));
    std::shared_lock<std::shared_mutex> lock(sh_.device_access);
    const pid_t pid = fork();
    if (pid < 0) {
      close(fds[0]);
      close(fds[1]);
      return Fail(kExitContract, absl::StrFormat("fork: %s", strerror(errno)));
    }
    if (pid == 0) {
      close(fds[0]);
      _exit(ForkChild(samples, fds[1]));
    }
    close(fds[1]);
    std::vector<ForkReport> reports;
    const int64_t deadline = NowMs() + sh_.opt.watchdog_s * 1000 / 2;
    for (;;) {
      pollfd pfd{fds[0], POLLIN, 0};
      const int64_t left = deadline - NowMs();
      if (left <= 0 || poll(&pfd, 1, static_cast<int>(left)) <= 0) break;
      ForkReport rep;
      const ssize_t n = read(fds[0], &rep, sizeof(rep));
      if (n != static_cast<ssize_t>(sizeof(rep))) break;
      reports.push_back(rep);
    }
    close(fds[0]);
    int status = 0;
    pid_t w = 0;
    while ((w = waitpid(pid, &status, WNOHANG)) == 0 && NowMs() < deadline) usleep(1000);
    if (w == 0) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return Fail(kExitContract, "the fork child hung (killed)");
    }
    lock.unlock();
    if (WIFSIGNALED(status)) {
      return Fail(kExitContract, absl::StrFormat("the fork child died with signal %d", WTERMSIG(status)));
    }
    for (const ForkReport& rep : reports) {
      Range& r = ranges_[rep.range];
      if (sh_.injected.load()) {
        const int where = ResidencyOf(r, rep.off);
        if (where == kPoisoned || rep.sigbus) {  // lost to an injected copy failure during the fork
          OnBus(r, rep.off);
          continue;
        }
      }
      if (rep.sigbus) {
        return Fail(kExitContract,
                    absl::StrFormat("SIGBUS in the fork child at %s offset %#x", RangeName(r), rep.off));
      }
      return Fail(
          kExitMismatch,
          absl::StrFormat("fork child read %s offset %#x (page %u, parent residency now %d): expected "
                          "%s, actual %s",
                          RangeName(r), rep.off, rep.off / kPageSize, ResidencyOf(r, rep.off),
                          Hex(rep.expected, 16), Hex(rep.actual, 16)));
    }
    if (WEXITSTATUS(status) != 0 && reports.empty()) {
      return Fail(kExitContract, absl::StrFormat("the fork child exited with %d", WEXITSTATUS(status)));
    }
    return true;
  }
  int ForkChild(const std::vector<ForkSample>& samples, int out) {
    volatile int bad = 0;
    for (const ForkSample& smp : samples) {
      const Range& r = ranges_[smp.range];
      ForkReport rep{};
      rep.range = smp.range;
      bool report = false;
      sigjmp_buf jump;
      if (sigsetjmp(jump, 1) == 0) {
        t_guard = &jump;
        for (size_t i = smp.off; i < smp.off + smp.len; ++i) {
          if (r.ptr[i] != r.model[i]) {
            rep.off = i;
            const size_t n = std::min<size_t>(16, r.size - i);
            memcpy(rep.expected, r.model.data() + i, n);
            memcpy(rep.actual, r.ptr + i, n);
            report = true;
            break;
          }
        }
      } else {
        rep.off = smp.off;
        rep.sigbus = 1;
        report = true;
      }
      t_guard = nullptr;
      if (report) {
        bad = bad + 1;
        if (write(out, &rep, sizeof(rep)) != static_cast<ssize_t>(sizeof(rep))) return 2;
      }
    }
    return bad == 0 ? 0 : 1;
  }

  // Advice on a page-aligned span of an own range: the model does not change (advice moves data at
  // most), except that device-side accesses stay off READ_MOSTLY pages.
  bool Advise(const Op& op) {
    Range& r = *PickRange(op.a);
    const auto [off, len] = PickPages(r, op.b, op.c, /*data_only=*/false);
    const int dev = static_cast<int>((op.d >> 8) % static_cast<uint64_t>(sh_.devices));
    Advice advice = Advice::kSetReadMostly;
    int64_t arg = 0;
    switch (op.d % 8) {
      case 0:
        advice = Advice::kSetReadMostly;
        break;
      case 1:
        advice = Advice::kUnsetReadMostly;
        break;
      case 2:
        advice = Advice::kSetPreferredLocation;
        arg = (op.d >> 16) % 2 ? kHost : dev;
        break;
      case 3:
        advice = Advice::kUnsetPreferredLocation;
        break;
      case 4:
        advice = Advice::kSetAccessedBy;
        arg = dev;
        break;
      case 5:
        advice = Advice::kUnsetAccessedBy;
        arg = dev;
        break;
      case 6:
        advice = Advice::kSetFaultGranule;
        arg = int64_t{kPageSize} << ((op.d >> 16) % 10);  // 4 KiB .. 2 MiB
        break;
      default:
        advice = Advice::kUnsetFaultGranule;
        break;
    }
    Describe(absl::StrFormat("advise %s [%#x, +%#x) %d arg %d", RangeName(r), off, len,
                             static_cast<int>(advice), arg));
    const absl::Status s = rt_.Advise(r.ptr + off, len, advice, arg);
    if (!s.ok()) return Fail(kExitContract, "Advise failed: " + s.ToString());
    if (advice == Advice::kSetReadMostly || advice == Advice::kUnsetReadMostly) {
      for (size_t p = off / kPageSize; p < (off + len) / kPageSize; ++p) {
        r.read_mostly[p] = advice == Advice::kSetReadMostly;
      }
    }
    return true;
  }

  bool FailCopy(const Op& op) {
    const int dev = static_cast<int>(op.a % static_cast<uint64_t>(sh_.devices));
    const bool to_device = op.b % 2 == 0;
    Describe(absl::StrFormat("fail the next %s copy of device %d",
                             to_device ? "host->device" : "device->host", dev));
    testing::FaultInjector* faults = testing::Faults(rt_, dev);
    if (faults == nullptr)
      return Fail(kExitContract, absl::StrFormat("device %d has no fault injector", dev));
    sh_.injected.store(true);
    faults->FailNext(
        to_device ? testing::InjectSite::kCopyHostToDevice : testing::InjectSite::kCopyDeviceToHost, 1);
    return true;
  }

  Shared& sh_;
  Runtime& rt_;
  int id_;
  ThreadStatus& status_;
  std::vector<Range> ranges_;
  int pipe_[2] = {-1, -1};
  Op op_{};
  uint64_t index_ = 0;
  static constexpr size_t kRecent = 40;
  std::array<std::string, kRecent> recent_;
  size_t recent_next_ = 0;
};

// ---- Replay files and shrinking -----------------------------------------------------------------

struct ReplayFile {
  std::string config;
  size_t pool_mib = 8;
  size_t max_ranges = 4;
  std::vector<Op> ops;
};

bool WriteReplay(const std::string& path, const Options& opt, const std::vector<Op>& ops,
                 const std::string& note) {
  std::ofstream out(path);
  out << "# uhmm_fuzz replay: " << note << "\n";
  out << "config " << opt.config << "\npool_mib " << opt.pool_mib << "\nmax_ranges " << opt.max_ranges
      << "\n";
  for (const Op& op : ops) out << OpText(op) << "\n";
  return static_cast<bool>(out);
}

std::optional<ReplayFile> ReadReplay(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  ReplayFile f;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream words(line);
    std::string key;
    words >> key;
    if (key == "config") {
      words >> f.config;
    } else if (key == "pool_mib") {
      words >> f.pool_mib;
    } else if (key == "max_ranges") {
      words >> f.max_ranges;
    } else if (std::optional<Op> op = ParseOp(line)) {
      f.ops.push_back(*op);
    } else {
      fprintf(stderr, "uhmm_fuzz: %s: cannot parse '%s'\n", path.c_str(), line.c_str());
      return std::nullopt;
    }
  }
  return f;
}

// Runs `self --replay path` with a time limit; returns its exit code (kExitHang for a timeout,
// 128 + signal when it died).
int RunReplayChild(const std::string& path, int timeout_s, bool show_output, bool verbose) {
  const std::string self = SelfPath();
  std::vector<std::string> args = {self, "--replay", path, "--watchdog", std::to_string(timeout_s / 2)};
  if (!show_output) args.push_back("--quiet");
  if (verbose) args.push_back("--verbose");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (!show_output) {
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  }
  fflush(stdout);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, self.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return 127;
  int status = 0;
  const int64_t deadline = NowMs() + timeout_s * 1000;
  pid_t w = 0;
  while ((w = waitpid(pid, &status, WNOHANG)) == 0 && NowMs() < deadline) usleep(2000);
  if (w == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return kExitHang;
  }
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

// Delta debugging (ddmin) over the op list, keeping any sub-list whose replay ends with `want`.
std::vector<Op> Shrink(const Options& opt, std::vector<Op> ops, int want, const std::string& scratch,
                       int64_t deadline_ms, int* trials) {
  auto fails = [&](const std::vector<Op>& candidate) {
    ++*trials;
    WriteReplay(scratch, opt, candidate, "shrink trial");
    // Two tries: a failure that needs some timing luck shrinks less well but still shrinks.
    for (int i = 0; i < 2; ++i) {
      if (RunReplayChild(scratch, opt.watchdog_s * 3, false, false) == want) return true;
    }
    return false;
  };
  size_t chunks = 2;
  while (ops.size() >= 2 && NowMs() < deadline_ms) {
    const size_t chunk = (ops.size() + chunks - 1) / chunks;
    bool reduced = false;
    for (size_t start = 0; start < ops.size() && NowMs() < deadline_ms; start += chunk) {
      std::vector<Op> complement(ops.begin(), ops.begin() + static_cast<std::ptrdiff_t>(start));
      complement.insert(complement.end(),
                        ops.begin() + static_cast<std::ptrdiff_t>(std::min(ops.size(), start + chunk)),
                        ops.end());
      if (!complement.empty() && fails(complement)) {
        ops = std::move(complement);
        chunks = std::max<size_t>(chunks - 1, 2);
        reduced = true;
        break;
      }
    }
    if (reduced) continue;
    if (chunks >= ops.size()) break;
    chunks = std::min(ops.size(), chunks * 2);
  }
  return ops;
}

const char* ExitName(int code) {
  switch (code) {
    case kExitPass:
      return "passed";
    case kExitMismatch:
      return "data mismatch";
    case kExitContract:
      return "contract failure";
    case kExitHang:
      return "hang";
    default:
      return code > 128 ? "crash" : "error";
  }
}

// Replays `thread`'s ops [0, count) single-threaded and shrinks them; prints the result.
void ReplayAndShrink(const Options& opt, int thread, std::vector<Op> ops, int want) {
  const std::string base =
      absl::StrFormat("%s/uhmm_fuzz-%s-seed%u-t%d", opt.out_dir, opt.config, opt.seed, thread);
  const std::string full = base + ".replay";
  WriteReplay(full, opt, ops,
              absl::StrFormat("config=%s seed=%u thread=%d, its first %u ops", opt.config, opt.seed, thread,
                              ops.size()));
  // Timing matters (asynchronous event handling, read-ahead): a few attempts before giving up.
  // A hang costs up to 3 watchdog periods per replay: fewer attempts.
  const int kAttempts = want == kExitHang ? kHangReplayAttempts : 5;
  absl::PrintF("uhmm_fuzz: replaying thread %d's %u ops single-threaded, up to %d times (%s)\n", thread,
               ops.size(), kAttempts, full.c_str());
  int got = kExitPass;
  int attempt = 0;
  while (attempt < kAttempts && (got = RunReplayChild(full, opt.watchdog_s * 3, false, false)) != want)
    ++attempt;
  if (got != want) {
    absl::PrintF(
        "uhmm_fuzz: the failure does NOT reproduce single-threaded: %d replays %s (last exit %d), the "
        "run had a %s. It needs the other threads; rerun the whole run (line above) to retry.\n",
        kAttempts, ExitName(got), got, ExitName(want));
    return;
  }
  absl::PrintF("uhmm_fuzz: reproduced single-threaded at attempt %d\n", attempt + 1);
  const int64_t t0 = NowMs();
  int trials = 0;
  std::vector<Op> shrunk =
      Shrink(opt, ops, want, base + ".trial", t0 + static_cast<int64_t>(opt.shrink_seconds * 1000), &trials);
  const std::string out = base + ".shrunk.replay";
  WriteReplay(out, opt, shrunk,
              absl::StrFormat("config=%s seed=%u thread=%d, shrunk from %u ops", opt.config, opt.seed, thread,
                              ops.size()));
  unlink((base + ".trial").c_str());
  absl::PrintF("uhmm_fuzz: reproduced single-threaded (%s); shrunk %u -> %u ops in %u trials, %.1f s%s\n",
               ExitName(want), ops.size(), shrunk.size(), trials, (NowMs() - t0) / 1000.0,
               NowMs() - t0 >= opt.shrink_seconds * 1000 ? " (time budget reached)" : "");
  absl::PrintF("uhmm_fuzz: shrunk op list (%s):\n", out.c_str());
  for (const Op& op : shrunk) absl::PrintF("    %s\n", OpText(op).c_str());
  absl::PrintF("uhmm_fuzz: replay with: %s --replay %s --verbose\n", SelfPath().c_str(), out.c_str());
  absl::PrintF("uhmm_fuzz: verbose replay of the shrunk list:\n");
  RunReplayChild(out, opt.watchdog_s * 3, true, true);
}

// ---- Watchdog -----------------------------------------------------------------------------------

class Watchdog {
 public:
  Watchdog(const Options& opt, Shared& sh, std::vector<std::unique_ptr<ThreadStatus>>& threads)
      : opt_(opt), sh_(sh), threads_(threads), thread_([this] { Loop(); }) {
    void* warm[1];
    backtrace(warm, 1);  // loads the unwinder now: a hang report must not need malloc
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!cv_.wait_for(lock, std::chrono::milliseconds(250), [this] { return done_; })) {
      const int64_t now = NowMs();
      for (auto& t : threads_) {
        if (t->in_op.load() && now - t->started_ms.load() > opt_.watchdog_s * 1000) Fire();
      }
    }
  }
  [[noreturn]] void Fire() {
    // Whatever hangs may hold locks the report needs (a worker's status, the runtime's): the
    // report has a hard deadline, and the process exits with kExitHang however far it got.
    ArmHardExit(kReportSeconds);
    absl::PrintF("uhmm_fuzz HANG: an op has not completed for %d s: config=%s seed=%llu threads=%d\n",
                 opt_.watchdog_s, opt_.config.c_str(), static_cast<unsigned long long>(opt_.seed),
                 opt_.threads);
    DumpThreads();
    const int64_t now = NowMs();
    std::vector<std::pair<int, std::vector<Op>>> hung;
    for (size_t i = 0; i < threads_.size(); ++i) {
      ThreadStatus& t = *threads_[i];
      std::unique_lock<std::mutex> lock(t.mu, std::defer_lock);
      for (int tries = 0; tries < 100 && !lock.try_lock(); ++tries) usleep(10000);
      if (!lock.owns_lock()) {
        absl::PrintF("  thread %zu: its status lock is held (%s)\n", i, t.in_op.load() ? "in an op" : "idle");
        continue;
      }
      if (t.in_op.load()) {
        absl::PrintF("  thread %zu: op#%llu running for %.1f s: %s\n    op: %s\n", i,
                     static_cast<unsigned long long>(t.index), (now - t.started_ms.load()) / 1000.0,
                     t.desc.c_str(), t.history.empty() ? "" : OpText(t.history.back()).c_str());
        hung.emplace_back(static_cast<int>(i), t.history);
      } else {
        absl::PrintF("  thread %zu: idle after op#%llu (%s)\n", i, static_cast<unsigned long long>(t.index),
                     t.desc.c_str());
      }
    }
    fflush(stdout);
    const Stats st = sh_.rt->stats();
    absl::PrintF("  stats: cpu_faults %llu, to device %llu, to host %llu, device pages used %llu of %llu\n",
                 static_cast<unsigned long long>(st.cpu_faults),
                 static_cast<unsigned long long>(st.pages_to_device),
                 static_cast<unsigned long long>(st.pages_to_host),
                 static_cast<unsigned long long>(st.device_pages_used),
                 static_cast<unsigned long long>(st.device_pages_total));
    fflush(stdout);
    if (sh_.replay) _exit(kExitHang);
    if (opt_.shrink_seconds > 0) {
      // Replays of a hang take up to 3 watchdog periods each; the shrink its budget.
      ArmHardExit(static_cast<int>(opt_.shrink_seconds) +
                  static_cast<int>(hung.size()) * (kHangReplayAttempts + 1) * 3 * opt_.watchdog_s +
                  kReportSeconds);
      for (auto& [thread, ops] : hung) ReplayAndShrink(opt_, thread, ops, kExitHang);
    }
    fflush(stdout);
    _exit(kExitHang);
  }

  static constexpr int kReportSeconds = 15;

  // After `seconds`, SIGALRM ends the process with kExitHang, whatever holds which lock.
  static void ArmHardExit(int seconds) {
    struct sigaction sa = {};
    sa.sa_handler = [](int) {
      static const char kMsg[] = "uhmm_fuzz: the hang report ran out of time; exiting\n";
      (void)!write(1, kMsg, sizeof(kMsg) - 1);
      _exit(kExitHang);
    };
    sigaction(SIGALRM, &sa, nullptr);
    alarm(static_cast<unsigned>(seconds));
  }

  // Every thread of the process: name, state, kernel wait channel and kernel stack (root only),
  // then its user-space stack, taken by a signal handler in that thread. Nothing here allocates:
  // a hang may be a thread stuck in fork(), which holds glibc's malloc locks.
  static void DumpThreads() {
    fflush(stdout);
    Say("  threads (kernel view; user stacks follow):\n");
    pid_t tids[256];
    size_t count = 0;
    // getdents64, not opendir: opendir allocates its buffer.
    const int dir = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    alignas(8) char ents[8192];
    long got = 0;
    while (dir >= 0 && (got = syscall(SYS_getdents64, dir, ents, sizeof(ents))) > 0) {
      for (long at = 0; at < got;) {
        struct Dirent64 {
          uint64_t ino;
          int64_t off;
          unsigned short reclen;
          unsigned char type;
          char name[1];
        };
        const auto* e = reinterpret_cast<const Dirent64*>(ents + at);
        if (e->name[0] != '.' && count < std::size(tids))
          tids[count++] = static_cast<pid_t>(std::atoi(e->name));
        at += e->reclen;
      }
    }
    if (dir >= 0) close(dir);
    std::sort(tids, tids + count);
    for (size_t k = 0; k < count; ++k) {
      char comm[64], stat[512], wchan[128], kstack[4096];
      ReadProc(tids[k], "comm", comm, sizeof(comm));
      ReadProc(tids[k], "stat", stat, sizeof(stat));
      ReadProc(tids[k], "wchan", wchan, sizeof(wchan));
      ReadProc(tids[k], "stack", kstack, sizeof(kstack));
      // "tid (comm) S ...": the state letter follows the last ')'.
      const char* paren = strrchr(stat, ')');
      const char state = paren != nullptr && paren[1] == ' ' ? paren[2] : '?';
      char line[256];
      snprintf(line, sizeof(line), "  [%d] %s state %c wchan %s\n", static_cast<int>(tids[k]), comm, state,
               wchan);
      Say(line);
      Say(kstack);
    }
    void* warm[1];
    backtrace(warm, 1);  // normally loaded already (the constructor)
    struct sigaction sa = {};
    sa.sa_sigaction = [](int, siginfo_t*, void*) {
      void* frames[48];
      const int n = backtrace(frames, 48);
      char head[64];
      snprintf(head, sizeof(head), "  user stack of [%d]:\n", static_cast<int>(gettid()));
      Say(head);
      backtrace_symbols_fd(frames, n, 1);
      t_stack_done.store(true);
    };
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGUSR2, &sa, nullptr);
    for (size_t k = 0; k < count; ++k) {
      if (tids[k] == gettid()) continue;
      t_stack_done.store(false);
      if (syscall(SYS_tgkill, getpid(), tids[k], SIGUSR2) != 0) continue;
      // A thread in an uninterruptible wait takes the signal only when it leaves it.
      for (int i = 0; i < 50 && !t_stack_done.load(); ++i) usleep(10000);
      if (!t_stack_done.load()) {
        char line[96];
        snprintf(line, sizeof(line), "  user stack of [%d]: not taken within 0.5 s\n",
                 static_cast<int>(tids[k]));
        Say(line);
      }
    }
  }

  static void Say(const char* text) { (void)!write(1, text, strlen(text)); }

  // /proc/self/task/<tid>/<name> into buf, NUL-terminated; a one-line file loses its newline.
  static void ReadProc(pid_t tid, const char* name, char* buf, size_t size) {
    char path[96];
    snprintf(path, sizeof(path), "/proc/self/task/%d/%s", static_cast<int>(tid), name);
    buf[0] = '\0';
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t len = read(fd, buf, size - 1);
    close(fd);
    if (len < 0) len = 0;
    buf[len] = '\0';
    if (len > 0 && buf[len - 1] == '\n' && memchr(buf, '\n', static_cast<size_t>(len) - 1) == nullptr)
      buf[len - 1] = '\0';
  }

  static inline std::atomic<bool> t_stack_done{false};

  const Options& opt_;
  Shared& sh_;
  std::vector<std::unique_ptr<ThreadStatus>>& threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// ---- Runs ---------------------------------------------------------------------------------------

bool FailCopyOn(const Options& opt) {
  return opt.fail_copy < 0 ? opt.config != "hugetlb" : opt.fail_copy == 1;
}

std::array<int, kOpKinds> Weights(const Options& opt) {
  std::array<int, kOpKinds> w = kDefaultWeights;
  if (!opt.madvise) w[static_cast<size_t>(OpKind::kDontneed)] = w[static_cast<size_t>(OpKind::kRemove)] = 0;
  if (!opt.fork) w[static_cast<size_t>(OpKind::kFork)] = 0;
  if (!FailCopyOn(opt)) w[static_cast<size_t>(OpKind::kFailCopy)] = 0;
  return w;
}

// Creates the runtime, or returns the exit code (a SKIPPED line for a backend not built here).
std::unique_ptr<Runtime> CreateRuntime(const Options& opt, int* exit_code) {
  Config c;
  if (std::optional<std::string> skip = MakeConfig(opt, &c)) {
    absl::PrintF("SKIPPED: uhmm_fuzz config %s: %s\n", opt.config.c_str(), skip->c_str());
    *exit_code = kExitPass;
    return nullptr;
  }
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Create(c);
  if (!rt.ok()) {
    // As in tests/test_util.h: an emulated backend must work, except when the system's Level Zero
    // loader is missing (the emulated driver has nothing to plug into).
    const std::string msg(rt.status().message());
    if (absl::IsUnavailable(rt.status()) && msg.find("Level Zero loader") != std::string::npos &&
        msg.find("could not be loaded") != std::string::npos) {
      absl::PrintF("SKIPPED: uhmm_fuzz config %s: %s\n", opt.config.c_str(), msg.c_str());
      *exit_code = kExitPass;
      return nullptr;
    }
    absl::PrintF("uhmm_fuzz: config %s: Runtime::Create failed: %s\n", opt.config.c_str(),
                 rt.status().ToString().c_str());
    *exit_code = kExitContract;
    return nullptr;
  }
  return std::move(*rt);
}

void InstallSigbusHandler() {
  struct sigaction sa = {};
  sa.sa_sigaction = OnSigbus;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigaction(SIGBUS, &sa, nullptr);
}

int RunReplay(Options opt) {
  std::optional<ReplayFile> file = ReadReplay(opt.replay_path);
  if (!file) {
    fprintf(stderr, "uhmm_fuzz: cannot read replay file %s\n", opt.replay_path.c_str());
    return kExitUsage;
  }
  opt.config = file->config;
  opt.pool_mib = file->pool_mib;
  opt.max_ranges = file->max_ranges;
  if (opt.quiet) {
    if (!freopen("/dev/null", "w", stdout)) return kExitUsage;
  }
  int code = kExitPass;
  std::unique_ptr<Runtime> rt = CreateRuntime(opt, &code);
  if (!rt) return code;
  InstallSigbusHandler();
  Shared sh(opt);
  sh.rt = rt.get();
  sh.devices = rt->device_count();
  sh.hugetlb_ranges = opt.config == "hugetlb";
  sh.replay = true;
  absl::PrintF("uhmm_fuzz replay: config=%s backend=%s devices=%d pool=%zu MiB/device, %zu ops from %s\n",
               opt.config.c_str(), std::string(rt->backend_name()).c_str(), sh.devices, opt.pool_mib,
               file->ops.size(), opt.replay_path.c_str());
  std::vector<std::unique_ptr<ThreadStatus>> statuses;
  statuses.push_back(std::make_unique<ThreadStatus>());
  {
    Watchdog watchdog(opt, sh, statuses);
    Worker worker(sh, 0, *statuses[0]);
    bool ok = true;
    for (size_t i = 0; i < file->ops.size() && ok; ++i) ok = worker.Run(file->ops[i], i);
    if (ok) worker.FreeAll();
  }
  rt.reset();
  const int result = sh.fail_code;
  absl::PrintF("uhmm_fuzz replay: %s\n", ExitName(result));
  fflush(stdout);
  return result;
}

int RunFuzz(Options opt) {
  if (opt.ops == 0 && opt.seconds <= 0) opt.ops = 3000;
  int code = kExitPass;
  const size_t hugepages_at_start = FreeHugepages();
  std::unique_ptr<Runtime> rt = CreateRuntime(opt, &code);
  if (!rt) return code;
  InstallSigbusHandler();
  Shared sh(opt);
  sh.rt = rt.get();
  sh.devices = rt->device_count();
  sh.hugetlb_ranges = opt.config == "hugetlb";
  const std::array<int, kOpKinds> weights = Weights(opt);
  absl::PrintF(
      "uhmm_fuzz: config=%s backend=%s devices=%d pool=%zu MiB/device seed=%llu%s threads=%d ops=%llu "
      "seconds=%g madvise=%s fork=%s fail_copy=%s\n",
      opt.config.c_str(), std::string(rt->backend_name()).c_str(), sh.devices, opt.pool_mib,
      static_cast<unsigned long long>(opt.seed), opt.random_seed ? " (random)" : "", opt.threads,
      static_cast<unsigned long long>(opt.ops), opt.seconds, opt.madvise ? "on" : "off",
      opt.fork ? "on" : "off", FailCopyOn(opt) ? "on" : "off");
  if (sh.hugetlb_ranges) {
    absl::PrintF(
        "uhmm_fuzz: hugetlb: %zu free 2 MiB hugepages at start%s\n", hugepages_at_start,
        hugepages_at_start == 0 ? " (vm.nr_hugepages is 0: every range falls back to 4 KiB pages)" : "");
  }
  fflush(stdout);

  std::vector<std::unique_ptr<ThreadStatus>> statuses;
  for (int t = 0; t < opt.threads; ++t) statuses.push_back(std::make_unique<ThreadStatus>());
  const int64_t start = NowMs();
  const int64_t deadline = opt.seconds > 0 ? start + static_cast<int64_t>(opt.seconds * 1000) : INT64_MAX;
  std::atomic<uint64_t> ops_run{0};
  {
    Watchdog watchdog(opt, sh, statuses);
    std::vector<std::thread> threads;
    for (int t = 0; t < opt.threads; ++t) {
      threads.emplace_back([&, t] {
        Worker worker(sh, t, *statuses[t]);
        OpStream stream(opt.seed, t, weights);
        const uint64_t limit = opt.ops > 0
                                   ? (opt.ops + static_cast<uint64_t>(t)) / static_cast<uint64_t>(opt.threads)
                                   : UINT64_MAX;
        for (uint64_t i = 0; i < limit && !sh.stop.load() && NowMs() < deadline; ++i) {
          if (!worker.Run(stream.Next(), i)) break;
          ops_run.fetch_add(1, std::memory_order_relaxed);
        }
        if (!sh.stop.load()) worker.FreeAll();
      });
    }
    for (std::thread& t : threads) t.join();
  }
  const double secs = std::max<int64_t>(1, NowMs() - start) / 1000.0;
  rt.reset();

  std::string kinds;
  for (size_t k = 0; k < kOpKinds; ++k) {
    kinds += absl::StrFormat(" %s=%u", kOpNames[k], sh.op_counts[k].load());
  }
  std::string extra;
  for (size_t c = 0; c < kCounters; ++c)
    extra += absl::StrFormat(" %s=%u", kCounterNames[c], sh.counters[c].load());
  absl::PrintF(
      "uhmm_fuzz summary: config=%s seed=%llu threads=%d ops=%llu seconds=%.2f ops/s=%.0f mismatches=%llu "
      "contract_failures=%llu injected=%s |%s |%s\n",
      opt.config.c_str(), static_cast<unsigned long long>(opt.seed), opt.threads,
      static_cast<unsigned long long>(ops_run.load()), secs, ops_run.load() / secs,
      static_cast<unsigned long long>(sh.mismatches.load()),
      static_cast<unsigned long long>(sh.contract_failures.load()), sh.injected.load() ? "yes" : "no",
      kinds.c_str(), extra.c_str());
  if (sh.hugetlb_ranges) {
    absl::PrintF(
        "uhmm_fuzz: hugetlb: %llu ranges got 2 MiB pages, %llu fell back to 4 KiB pages (no free hugepage)\n",
        static_cast<unsigned long long>(sh.counters[kHugetlbRanges].load()),
        static_cast<unsigned long long>(sh.counters[kHugetlbFallbacks].load()));
  }
  fflush(stdout);
  if (sh.fail_code == kExitPass) return kExitPass;
  if (opt.shrink_seconds > 0) {
    std::vector<Op> ops;
    {
      ThreadStatus& t = *statuses[sh.fail_thread];
      std::lock_guard<std::mutex> lock(t.mu);
      ops.assign(t.history.begin(), t.history.begin() + static_cast<std::ptrdiff_t>(sh.fail_index + 1));
    }
    ReplayAndShrink(opt, sh.fail_thread, ops, sh.fail_code);
  }
  return sh.fail_code;
}

void Usage() {
  fprintf(stderr,
          "usage: uhmm_fuzz [--config host|same_address|cuda_emulated|level_zero_emulated|hugetlb]\n"
          "                 [--seed N|random] [--threads T] [--ops N] [--seconds S] [--pool-mib M]\n"
          "                 [--max-ranges N] [--no-madvise] [--fork|--no-fork] [--no-fail-copy|--fail-copy]\n"
          "                 [--watchdog S] [--shrink-seconds S (0: no shrinking)] [--out-dir DIR]\n"
          "       uhmm_fuzz --replay FILE [--verbose] [--quiet]\n"
          "exit: 0 pass (or SKIPPED), 1 data mismatch, 2 contract failure, 3 hang (replays)\n");
}

}  // namespace
}  // namespace uhmm::fuzz

int main(int argc, char** argv) {
  using namespace uhmm::fuzz;
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        Usage();
        exit(kExitUsage);
      }
      return argv[++i];
    };
    if (arg == "--config") {
      opt.config = value();
    } else if (arg == "--seed") {
      const std::string v = value();
      if (v == "random") {
        timespec ts{};
        clock_gettime(CLOCK_REALTIME, &ts);
        opt.seed = static_cast<uint64_t>(ts.tv_sec) * 1000003u + static_cast<uint64_t>(ts.tv_nsec / 1000) +
                   static_cast<uint64_t>(getpid());
        opt.seed %= 1000000007u;
        opt.random_seed = true;
      } else {
        opt.seed = std::strtoull(v.c_str(), nullptr, 0);
      }
    } else if (arg == "--threads") {
      opt.threads = std::max(1, std::atoi(value().c_str()));
    } else if (arg == "--ops") {
      opt.ops = std::strtoull(value().c_str(), nullptr, 0);
    } else if (arg == "--seconds") {
      opt.seconds = std::atof(value().c_str());
    } else if (arg == "--pool-mib") {
      opt.pool_mib = std::max<size_t>(2, std::strtoull(value().c_str(), nullptr, 0) / 2 * 2);
    } else if (arg == "--max-ranges") {
      opt.max_ranges = std::max<size_t>(1, std::strtoull(value().c_str(), nullptr, 0));
    } else if (arg == "--no-madvise") {
      opt.madvise = false;
    } else if (arg == "--no-fork") {
      opt.fork = false;
    } else if (arg == "--fork") {
      opt.fork = true;
    } else if (arg == "--no-fail-copy") {
      opt.fail_copy = 0;
    } else if (arg == "--fail-copy") {
      opt.fail_copy = 1;
    } else if (arg == "--watchdog") {
      opt.watchdog_s = std::max(1, std::atoi(value().c_str()));
    } else if (arg == "--shrink-seconds") {
      opt.shrink_seconds = std::atof(value().c_str());
    } else if (arg == "--out-dir") {
      opt.out_dir = value();
    } else if (arg == "--replay") {
      opt.replay_path = value();
    } else if (arg == "--verbose") {
      opt.verbose = true;
    } else if (arg == "--quiet") {
      opt.quiet = true;
    } else {
      Usage();
      return kExitUsage;
    }
  }
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (!opt.replay_path.empty()) return RunReplay(opt);
  if (!KnownConfig(opt.config)) {
    Usage();
    return kExitUsage;
  }
  return RunFuzz(opt);
}
