// The GPU table of uhmm_bench: every row measured for cudaMallocManaged ("UVM", the baseline) and
// for uhmm on the CUDA backend, in this process, with the same sizes. A row is the median of
// o.reps runs; each run gets a fresh seed and its data are checked afterwards, untimed.
//
// Order matters: the plain-launch anchor of the launch-overhead row is taken before any uhmm
// runtime (and so any CUPTI subscriber) exists; the oversubscription row gets its own runtime
// (capped pool, explicit slice prefetches) after the main one is gone.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_harness.h"
#include "uhmm/uhmm.h"

namespace uhmm::bench {
namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kBlock = 2 * kMiB;               // uhmm's block and chunk size
constexpr unsigned kThreads = 256;                // threads per block of every grid-stride kernel
constexpr uint64_t kAxpyA = 3;                    // the `a` of y = a*x + y
constexpr int kLaunches = 2000;                   // timed empty launches per side of the launch row
constexpr int kWarmLaunches = 100;                // untimed launches before those
constexpr size_t kLaunchBufferBytes = 64 * kMiB;  // managed data alive during the launch row
constexpr int kOversubPasses = 3;                 // GPU passes over the data in the oversubscription row

// Row names (--only matches substrings of these).
constexpr const char* kSeqHuge = "read-back seq, hugetlb";
constexpr const char* kSeq4K = "read-back seq, 4K";
constexpr const char* kRandom4K = "read-back random, 4K";
constexpr const char* kFaultP50 = "isolated fault, 4K";
constexpr const char* kFaultP99 = "isolated fault p99, 4K";
constexpr const char* kToGpu = "prefetch to GPU";
constexpr const char* kToCpu = "prefetch to CPU";
constexpr const char* kKernel = "kernel on resident data";
constexpr const char* kLaunch = "launch overhead, transparent";
constexpr const char* kOversub = "oversubscribed 1.5x pool";

// ---------------------------------------------------------------------------------------------
// Kernels: grid-stride loops over 64-bit words.

#define BENCH_GRID_STRIDE(i, n) \
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < (n); i += size_t{gridDim.x} * blockDim.x)

// p[i] = Pattern(seed, i) - a * Pattern(x_seed, i): plain Pattern for a = 0; with the `a` and the
// x seed of an axpy, y = a*x + y turns it into Pattern(seed, i) (mod 2^64).
__global__ void FillKernel(uint64_t* p, size_t n, uint64_t seed, uint64_t a, uint64_t x_seed) {
  BENCH_GRID_STRIDE(i, n) { p[i] = Pattern(seed, i) - a * Pattern(x_seed, i); }
}

__global__ void AxpyKernel(const uint64_t* x, uint64_t* y, size_t n, uint64_t a) {
  BENCH_GRID_STRIDE(i, n) { y[i] = a * x[i] + y[i]; }
}

__global__ void CountWrongKernel(const uint64_t* p, size_t n, uint64_t seed, unsigned long long* wrong) {
  unsigned long long mine = 0;
  BENCH_GRID_STRIDE(i, n) { mine += p[i] != Pattern(seed, i); }
  if (mine) atomicAdd(wrong, mine);
}

__global__ void BumpKernel(uint64_t* p, size_t n) {
  BENCH_GRID_STRIDE(i, n) { p[i] += 1; }
}

__global__ void EmptyKernel() {}

#undef BENCH_GRID_STRIDE

// ---------------------------------------------------------------------------------------------
// Errors. A Status is "" (ok) or what failed; a failing run leaves its side of the row unmeasured
// with that text in the note, instead of ending the program.

using Status = std::string;

Status Failed(const char* call, const char* why) {
  const std::string c(call);
  return c.substr(0, c.find('(')) + ": " + why;
}

#define BENCH_TRY(expr)           \
  do {                            \
    Status st_ = (expr);          \
    if (!st_.empty()) return st_; \
  } while (0)
#define BENCH_CUDA(call)                                                 \
  do {                                                                   \
    const cudaError_t e_ = (call);                                       \
    if (e_ != cudaSuccess) return Failed(#call, cudaGetErrorString(e_)); \
  } while (0)
#define BENCH_UHMM(call)                                            \
  do {                                                              \
    if ((call) != UHMM_OK) return Failed(#call, uhmm_last_error()); \
  } while (0)

// After a <<<>>> launch (which cannot go inside a macro argument: its commas split it).
Status Launched(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? Status() : std::string(kernel) + " launch: " + cudaGetErrorString(e);
}

// ---------------------------------------------------------------------------------------------
// The GPU objects every row shares.

struct Gpu {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  unsigned long long* counter = nullptr;  // device word for CountWrongKernel
  unsigned blocks = 0;                    // grid of the grid-stride kernels
  uint64_t last_seed = 0;
  uint64_t NextSeed() { return ++last_seed; }
};

Status OpenGpu(Gpu* g) {
  int sms = 0;
  BENCH_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  g->blocks = static_cast<unsigned>(std::max(sms, 1)) * 16;
  BENCH_CUDA(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
  BENCH_CUDA(cudaEventCreate(&g->start));
  BENCH_CUDA(cudaEventCreate(&g->stop));
  BENCH_CUDA(cudaMalloc(&g->counter, sizeof(unsigned long long)));
  // Load every kernel once (CUDA loads modules lazily, on the first launch of each kernel), so no
  // timed region pays for it.
  FillKernel<<<1, 1, 0, g->stream>>>(nullptr, 0, 0, 0, 0);
  AxpyKernel<<<1, 1, 0, g->stream>>>(nullptr, nullptr, 0, 0);
  CountWrongKernel<<<1, 1, 0, g->stream>>>(nullptr, 0, 0, g->counter);
  BumpKernel<<<1, 1, 0, g->stream>>>(nullptr, 0);
  EmptyKernel<<<1, 1, 0, g->stream>>>();
  BENCH_TRY(Launched("warm-up kernels"));
  BENCH_CUDA(cudaStreamSynchronize(g->stream));
  return {};
}

void CloseGpu(Gpu* g) {
  if (g->counter) cudaFree(g->counter);
  if (g->start) cudaEventDestroy(g->start);
  if (g->stop) cudaEventDestroy(g->stop);
  if (g->stream) cudaStreamDestroy(g->stream);
}

// Words of [p, p+bytes) that are not Pattern(seed, i), counted by a kernel (the data must be
// device-resident, or plain device memory).
Status GpuCountWrong(const Gpu& g, const uint64_t* p, size_t bytes, uint64_t seed, size_t* wrong) {
  unsigned long long n = 0;
  BENCH_CUDA(cudaMemsetAsync(g.counter, 0, sizeof(n), g.stream));
  CountWrongKernel<<<g.blocks, kThreads, 0, g.stream>>>(p, bytes / sizeof(uint64_t), seed, g.counter);
  BENCH_TRY(Launched("CountWrongKernel"));
  BENCH_CUDA(cudaMemcpyAsync(&n, g.counter, sizeof(n), cudaMemcpyDeviceToHost, g.stream));
  BENCH_CUDA(cudaStreamSynchronize(g.stream));
  *wrong += static_cast<size_t>(n);
  return {};
}

// Plain launch cost: an empty <<<1,1>>> kernel and a stream sync, each timed.
Status TimeLaunches(const Gpu& g, int count, std::vector<double>* us) {
  for (int i = 0; i < kWarmLaunches; ++i) EmptyKernel<<<1, 1, 0, g.stream>>>();
  BENCH_TRY(Launched("EmptyKernel"));
  BENCH_CUDA(cudaStreamSynchronize(g.stream));
  for (int i = 0; i < count; ++i) {
    const auto t0 = Clock::now();
    EmptyKernel<<<1, 1, 0, g.stream>>>();
    BENCH_CUDA(cudaStreamSynchronize(g.stream));
    us->push_back(Us(Clock::now() - t0));
  }
  return Launched("EmptyKernel");
}

// ---------------------------------------------------------------------------------------------
// A buffer under test, the same operations for each kind of memory.

enum class Kind { kDevice, kUvm, kUhmm };  // cudaMalloc, cudaMallocManaged, uhmm

struct Buffer {
  Kind kind = Kind::kUvm;
  uhmm_runtime_t* rt = nullptr;  // kUhmm
  uint64_t* p = nullptr;
  size_t bytes = 0;
  size_t words() const { return bytes / sizeof(uint64_t); }
};

Status Allocate(Kind kind, uhmm_runtime_t* rt, size_t bytes, uhmm_page_backing_t backing, Buffer* b) {
  b->kind = kind;
  b->rt = rt;
  b->bytes = bytes;
  if (kind == Kind::kDevice) {
    BENCH_CUDA(cudaMalloc(&b->p, bytes));
  } else if (kind == Kind::kUvm) {
    BENCH_CUDA(cudaMallocManaged(&b->p, bytes));
  } else {
    void* p = nullptr;
    const uhmm_status_t s = uhmm_alloc_backed(rt, bytes, backing, &p);
    if (s != UHMM_OK) {
      std::string why = std::string("uhmm_alloc_backed: ") + uhmm_last_error();
      if (backing == UHMM_BACKING_HUGETLB && (s == UHMM_ERROR_OUT_OF_MEMORY || s == UHMM_ERROR_UNAVAILABLE)) {
        why = std::string(uhmm_last_error()) +
              " (reserve hugepages: sysctl vm.nr_hugepages=" + std::to_string(bytes / kBlock) + ")";
      }
      return why;
    }
    b->p = static_cast<uint64_t*>(p);
  }
  return {};
}

Status Release(Buffer* b) {
  if (b->p == nullptr) return {};
  uint64_t* p = b->p;
  b->p = nullptr;
  if (b->kind == Kind::kUhmm) {
    BENCH_UHMM(uhmm_free(b->rt, p));
  } else {
    BENCH_CUDA(cudaFree(p));
  }
  return {};
}

// Moves [p, p+bytes) of b to device 0 or to UHMM_LOCATION_HOST with the prefetch each system offers,
// queued on the row's stream, and waits for it. Plain device memory stays where it is.
Status MoveRange(const Gpu& g, const Buffer& b, void* p, size_t bytes, int where) {
  if (b.kind == Kind::kDevice) return {};
  if (b.kind == Kind::kUhmm) {
    BENCH_UHMM(uhmm_prefetch_on_queue(b.rt, p, bytes, where, g.stream));
  } else {
    cudaMemLocation loc{};
    loc.type = where == UHMM_LOCATION_HOST ? cudaMemLocationTypeHost : cudaMemLocationTypeDevice;
    loc.id = where == UHMM_LOCATION_HOST ? 0 : where;
    BENCH_CUDA(cudaMemPrefetchAsync(p, bytes, loc, 0, g.stream));
  }
  BENCH_CUDA(cudaStreamSynchronize(g.stream));
  return {};
}

Status MoveTo(const Gpu& g, const Buffer& b, int where) { return MoveRange(g, b, b.p, b.bytes, where); }

// The GPU writes Pattern(seed, i) into every word (after the data are made device-resident, so the
// kernel finds them there with either system), then the device is idle again.
Status GpuWrite(const Gpu& g, const Buffer& b, uint64_t seed) {
  BENCH_TRY(MoveTo(g, b, 0));
  FillKernel<<<g.blocks, kThreads, 0, g.stream>>>(b.p, b.words(), seed, 0, 0);
  BENCH_TRY(Launched("FillKernel"));
  BENCH_CUDA(cudaStreamSynchronize(g.stream));
  return {};
}

// ---------------------------------------------------------------------------------------------
// Measuring one side of a row: allocate, run o.reps times with a fresh seed each, free.

struct Side {
  std::vector<double> samples;  // one per run (per touch for the fault rows)
  size_t wrong = 0;             // words that failed the data checks
  Status error;                 // non-empty: not measured
  bool hugetlb = false;         // uhmm: the range got 2 MiB hugetlb pages
  // The p-th percentile of the samples; NaN when not measured.
  double At(double p) const {
    return error.empty() && !samples.empty() ? Percentile(samples, p) : std::nan("");
  }
};

// One run on `b` with `seed`: appends samples, adds wrong words.
using Run = std::function<Status(const Buffer& b, uint64_t seed, Side* side)>;

Side Measure(const Options& o, Gpu& g, Kind kind, uhmm_runtime_t* rt, size_t bytes,
             uhmm_page_backing_t backing, const Run& run) {
  Side side;
  Buffer b;
  side.error = Allocate(kind, rt, bytes, backing, &b);
  if (!side.error.empty()) return side;
  if (kind == Kind::kUhmm) {
    uhmm_stats_t st{};
    side.hugetlb = uhmm_get_stats(rt, &st) == UHMM_OK && st.hugetlb_ranges > 0;
  }
  for (int r = 0; r < o.reps && side.error.empty(); ++r) side.error = run(b, g.NextSeed(), &side);
  const Status freed = Release(&b);
  if (side.error.empty()) side.error = freed;
  return side;
}

struct Both {
  Side uvm, uhmm;
};

// The same run body on a cudaMallocManaged buffer, then on a uhmm buffer (never both alive).
Both MeasureBoth(const Options& o, Gpu& g, uhmm_runtime_t* rt, uhmm_page_backing_t backing, const Run& run) {
  Both both;
  both.uvm = Measure(o, g, Kind::kUvm, nullptr, o.bytes, UHMM_BACKING_DEFAULT, run);
  both.uhmm = Measure(o, g, Kind::kUhmm, rt, o.bytes, backing, run);
  return both;
}

// Runs `step` and records bytes / its time as a GB/s sample.
template <typename Step>
Status TimeGbps(size_t bytes, Side* s, Step step) {
  const auto t0 = Clock::now();
  BENCH_TRY(step());
  s->samples.push_back(static_cast<double>(bytes) / Seconds(Clock::now() - t0) / 1e9);
  return {};
}

// A run body written as a function of the shared GPU objects.
using RunFn = Status (*)(const Gpu& g, const Buffer& b, uint64_t seed, Side* s);
Run Bind(const Gpu& g, RunFn fn) {
  return [&g, fn](const Buffer& b, uint64_t seed, Side* s) { return fn(g, b, seed, s); };
}

// ---------------------------------------------------------------------------------------------
// Rows.

struct Goal {
  const char* text;
  double value;  // NaN: met cannot be decided
  bool higher_is_better;
};

void AddNote(Row* row, const std::string& text) {
  if (text.empty()) return;
  row->note += (row->note.empty() ? "" : "; ") + text;
}

// A row comparing two sides at percentile p (0.5: the median of the runs).
Row Compare(const char* name, const char* unit, const Side& uvm, const Side& uhmm, double p) {
  Row row;
  row.name = name;
  row.unit = unit;
  row.baseline = uvm.At(p);
  row.uhmm = uhmm.At(p);
  row.wrong = uvm.wrong + uhmm.wrong;
  if (!uvm.error.empty()) AddNote(&row, "UVM: " + uvm.error);
  if (!uhmm.error.empty()) AddNote(&row, "uhmm: " + uhmm.error);
  return row;
}

void AddRow(Table* t, Row row, const Goal& goal) {
  row.goal = goal.text;
  row.higher_is_better = goal.higher_is_better;
  if (std::isnan(row.uhmm) || std::isnan(goal.value)) {
    row.met = -1;
  } else {
    row.met = (goal.higher_is_better ? row.uhmm >= goal.value : row.uhmm <= goal.value) ? 1 : 0;
  }
  t->Add(std::move(row));
}

std::string BackingNote(const Side& uhmm) {
  if (!uhmm.error.empty()) return "";
  return std::string("uhmm range: default backing policy gave ") +
         (uhmm.hugetlb ? "2 MiB hugetlb" : "4 KiB") + " pages";
}

// Rows 1-3: the GPU writes every word, then the CPU touches one word per 4 KiB page (timed).
Run ReadBack(const Gpu& g, const std::vector<uint32_t>& order) {
  return [&g, &order](const Buffer& b, uint64_t seed, Side* s) -> Status {
    BENCH_TRY(GpuWrite(g, b, seed));
    BENCH_TRY(TimeGbps(b.bytes, s, [&] {
      s->wrong += TouchPages(b.p, order, seed);
      return Status();
    }));
    s->wrong += CountWrong(b.p, b.bytes, seed);
    return {};
  };
}

void ReadBackRows(const Options& o, Gpu& g, uhmm_runtime_t* rt, Table* t) {
  const bool huge = Selected(o, kSeqHuge), seq = Selected(o, kSeq4K);
  if (huge || seq) {
    const std::vector<uint32_t> order = PageOrder(o.bytes, false);
    const Run run = ReadBack(g, order);
    // One UVM measurement anchors both sequential rows.
    const Side uvm = Measure(o, g, Kind::kUvm, nullptr, o.bytes, UHMM_BACKING_DEFAULT, run);
    if (huge) {
      const Side uhmm = Measure(o, g, Kind::kUhmm, rt, o.bytes, UHMM_BACKING_HUGETLB, run);
      AddRow(t, Compare(kSeqHuge, "GB/s", uvm, uhmm, 0.5), {"≥ 48 GB/s", 48, true});
    }
    if (seq) {
      const Side uhmm = Measure(o, g, Kind::kUhmm, rt, o.bytes, UHMM_BACKING_4K, run);
      AddRow(t, Compare(kSeq4K, "GB/s", uvm, uhmm, 0.5), {"≥ 25 GB/s", 25, true});
    }
  }
  if (Selected(o, kRandom4K)) {
    const std::vector<uint32_t> order = PageOrder(o.bytes, true);
    const Both both = MeasureBoth(o, g, rt, UHMM_BACKING_4K, ReadBack(g, order));
    AddRow(t, Compare(kRandom4K, "GB/s", both.uvm, both.uhmm, 0.5), {"≥ 12 GB/s", 12, true});
  }
}

// Row 4: the GPU writes every word, then one timed CPU touch per 2 MiB block (a sample each).
Status FaultRun(const Gpu& g, const Buffer& b, uint64_t seed, Side* s) {
  BENCH_TRY(GpuWrite(g, b, seed));
  s->wrong += TouchBlocksTimed(b.p, b.bytes, seed, &s->samples);
  s->wrong += CountWrong(b.p, b.bytes, seed);
  return {};
}

void FaultRows(const Options& o, Gpu& g, uhmm_runtime_t* rt, Table* t) {
  const bool p50 = Selected(o, kFaultP50), p99 = Selected(o, kFaultP99);
  if (!p50 && !p99) return;
  const Both both = MeasureBoth(o, g, rt, UHMM_BACKING_4K, Bind(g, FaultRun));
  uhmm_config_t cfg;
  uhmm_config_init(&cfg);  // what the runtime was created with: defaults and UHMM_* variables
  const std::string setting = "one touch per 2 MiB block, " + std::to_string(o.reps) +
                              " runs; uhmm fault granule " + std::to_string(cfg.fault_granularity >> 10) +
                              " KiB";
  if (p50) {
    Row row = Compare(kFaultP50, "us p50", both.uvm, both.uhmm, 0.5);
    AddNote(&row, setting);
    AddRow(t, std::move(row), {"p50 ≤ 15 us", 15, false});
  }
  if (p99) {
    Row row = Compare(kFaultP99, "us p99", both.uvm, both.uhmm, 0.99);
    AddNote(&row, "same runs as '" + std::string(kFaultP50) + "'");
    AddRow(t, std::move(row), {"p99 ≤ 35 us", 35, false});
  }
}

// Row 5: the CPU writes every word (host-resident pages), then a timed prefetch of all of it to
// the GPU; a kernel checks the words there.
Status ToGpuRun(const Gpu& g, const Buffer& b, uint64_t seed, Side* s) {
  BENCH_TRY(MoveTo(g, b, UHMM_LOCATION_HOST));
  FillCpu(b.p, b.bytes, seed);
  BENCH_TRY(TimeGbps(b.bytes, s, [&] { return MoveTo(g, b, 0); }));
  return GpuCountWrong(g, b.p, b.bytes, seed, &s->wrong);
}

// Row 6: the GPU writes every word, then a timed prefetch of all of it to the CPU.
Status ToCpuRun(const Gpu& g, const Buffer& b, uint64_t seed, Side* s) {
  BENCH_TRY(GpuWrite(g, b, seed));
  BENCH_TRY(TimeGbps(b.bytes, s, [&] { return MoveTo(g, b, UHMM_LOCATION_HOST); }));
  s->wrong += CountWrong(b.p, b.bytes, seed);
  return {};
}

void PrefetchRows(const Options& o, Gpu& g, uhmm_runtime_t* rt, Table* t) {
  if (Selected(o, kToGpu)) {
    const Both both = MeasureBoth(o, g, rt, UHMM_BACKING_DEFAULT, Bind(g, ToGpuRun));
    Row row = Compare(kToGpu, "GB/s", both.uvm, both.uhmm, 0.5);
    AddNote(&row, BackingNote(both.uhmm));
    AddRow(t, std::move(row), {"≥ 51 GB/s", 51, true});
  }
  if (Selected(o, kToCpu)) {
    const Both both = MeasureBoth(o, g, rt, UHMM_BACKING_DEFAULT, Bind(g, ToCpuRun));
    Row row = Compare(kToCpu, "GB/s", both.uvm, both.uhmm, 0.5);
    AddNote(&row, BackingNote(both.uhmm));
    AddRow(t, std::move(row), {"≥ 45 GB/s", 45, true});
  }
}

// Row 7: y = a*x + y over the buffer's two halves, device-resident, timed with events (ms).
Status AxpyRun(const Gpu& g, const Buffer& b, uint64_t seed, Side* s) {
  const size_t n = b.words() / 2, half = n * sizeof(uint64_t);
  uint64_t* x = b.p;
  uint64_t* y = b.p + n;
  const uint64_t x_seed = seed, y_seed = ~seed;
  BENCH_TRY(MoveTo(g, b, 0));
  FillKernel<<<g.blocks, kThreads, 0, g.stream>>>(x, n, x_seed, 0, 0);
  FillKernel<<<g.blocks, kThreads, 0, g.stream>>>(y, n, y_seed, kAxpyA, x_seed);
  BENCH_TRY(Launched("FillKernel"));
  BENCH_CUDA(cudaStreamSynchronize(g.stream));
  BENCH_CUDA(cudaEventRecord(g.start, g.stream));
  AxpyKernel<<<g.blocks, kThreads, 0, g.stream>>>(x, y, n, kAxpyA);
  BENCH_TRY(Launched("AxpyKernel"));
  BENCH_CUDA(cudaEventRecord(g.stop, g.stream));
  BENCH_CUDA(cudaEventSynchronize(g.stop));
  float ms = 0;
  BENCH_CUDA(cudaEventElapsedTime(&ms, g.start, g.stop));
  s->samples.push_back(ms);
  // x is unchanged; y is now Pattern(y_seed, i). Managed data are read back by the CPU.
  if (b.kind == Kind::kDevice) {
    BENCH_TRY(GpuCountWrong(g, x, half, x_seed, &s->wrong));
    return GpuCountWrong(g, y, half, y_seed, &s->wrong);
  }
  s->wrong += CountWrong(x, half, x_seed) + CountWrong(y, half, y_seed);
  return {};
}

void KernelRow(const Options& o, Gpu& g, uhmm_runtime_t* rt, Table* t) {
  if (!Selected(o, kKernel)) return;
  const Run run = Bind(g, AxpyRun);
  const Side ref = Measure(o, g, Kind::kDevice, nullptr, o.bytes, UHMM_BACKING_DEFAULT, run);
  const Both both = MeasureBoth(o, g, rt, UHMM_BACKING_DEFAULT, run);
  Row row = Compare(kKernel, "% of cudaMalloc", both.uvm, both.uhmm, 0.5);
  const double ref_ms = ref.At(0.5);
  row.baseline = 100 * ref_ms / row.baseline;  // NaN stays NaN
  row.uhmm = 100 * ref_ms / row.uhmm;
  row.wrong += ref.wrong;
  if (!ref.error.empty()) AddNote(&row, "cudaMalloc reference: " + ref.error);
  char text[160];
  std::snprintf(
      text, sizeof(text),
      "cudaMalloc %.3f ms per y = a*x + y over %zu MiB (x, y halves); all timed with the uhmm runtime alive",
      ref_ms, o.bytes >> 20);
  AddNote(&row, text);
  AddNote(&row, BackingNote(both.uhmm));
  AddRow(t, std::move(row), {"≥ 97 %", 97, true});
}

// Row 8's anchor: before any uhmm runtime exists.
Side PlainLaunches(const Gpu& g) {
  Side s;
  s.error = TimeLaunches(g, kLaunches, &s.samples);
  return s;
}

void LaunchRow(const Options& o, Gpu& g, uhmm_runtime_t* rt, const Side& plain, Table* t) {
  if (!Selected(o, kLaunch)) return;
  Side uhmm;
  if (!uhmm_transparent_launch_enabled(rt)) {
    uhmm.error = "CUPTI unavailable: transparent launches off";
  } else {
    const int per_run = std::max(kLaunches / o.reps, 200);
    uhmm = Measure(o, g, Kind::kUhmm, rt, kLaunchBufferBytes, UHMM_BACKING_DEFAULT,
                   [&g, per_run](const Buffer& b, uint64_t seed, Side* s) -> Status {
                     FillCpu(b.p, b.bytes, seed);
                     BENCH_TRY(MoveTo(g, b, 0));
                     BENCH_TRY(TimeLaunches(g, per_run, &s->samples));
                     s->wrong += CountWrong(b.p, b.bytes, seed);
                     return {};
                   });
  }
  Row row = Compare(kLaunch, "us", plain, uhmm, 0.5);
  AddNote(&row,
          "empty <<<1,1>>> + stream sync; UVM column: plain launch before any uhmm runtime existed; uhmm: " +
              std::to_string(kLaunchBufferBytes >> 20) + " MiB managed, device-resident");
  const Goal goal{"≤ plain + 1 us", row.baseline + 1, false};
  AddRow(t, std::move(row), goal);
}

uhmm_status_t CreateRuntime(size_t pool_bytes, bool explicit_only, uhmm_runtime_t** rt) {
  uhmm_config_t cfg;
  uhmm_config_init(&cfg);
  cfg.backend = "cuda";
  if (pool_bytes) {
    cfg.device_pool_bytes = pool_bytes;
    cfg.device_pool_fraction = 0;  // UHMM_DEVICE_POOL_BYTES=50% would conflict
  }
  if (explicit_only) cfg.transparent_launch = 0;
  return uhmm_create(&cfg, rt);
}

// Row 9: kOversubPasses GPU passes (read and increment every word), slice by slice; each slice is
// prefetched on the kernel's stream, which evicts the least recently used slices when the pool is
// full. Returns once the last kernel is done.
Status SlicedPasses(const Gpu& g, const Buffer& b, size_t slice) {
  for (int pass = 0; pass < kOversubPasses; ++pass) {
    for (size_t off = 0; off < b.bytes; off += slice) {
      const size_t len = std::min(slice, b.bytes - off);
      uint64_t* p = b.p + off / sizeof(uint64_t);
      BENCH_UHMM(uhmm_prefetch_on_queue(b.rt, p, len, 0, g.stream));
      BumpKernel<<<g.blocks, kThreads, 0, g.stream>>>(p, len / sizeof(uint64_t));
      BENCH_TRY(Launched("BumpKernel"));
    }
  }
  BENCH_CUDA(cudaStreamSynchronize(g.stream));
  return {};
}

Run Oversubscribed(const Gpu& g, size_t slice) {
  return [&g, slice](const Buffer& b, uint64_t seed, Side* s) -> Status {
    // Host-resident here (a new range, or moved home by the previous run's check). After the
    // passes every word must be Pattern(seed, i).
    for (size_t i = 0; i < b.words(); ++i) b.p[i] = Pattern(seed, i) - kOversubPasses;
    BENCH_TRY(TimeGbps(b.bytes * kOversubPasses, s, [&] { return SlicedPasses(g, b, slice); }));
    BENCH_TRY(MoveTo(g, b, UHMM_LOCATION_HOST));
    s->wrong += CountWrong(b.p, b.bytes, seed);
    return {};
  };
}

uint64_t EvictedPages(uhmm_runtime_t* rt) {
  uhmm_stats_t st{};
  return uhmm_get_stats(rt, &st) == UHMM_OK ? st.evicted_pages : 0;
}

void OversubscribedRow(const Options& o, Gpu& g, Table* t) {
  const size_t pool = 2 * o.bytes;
  const size_t slice = std::max(pool / 8, kBlock) & ~(kBlock - 1);
  Side fit, over;
  uint64_t evicted = 0;
  uhmm_runtime_t* rt = nullptr;
  if (CreateRuntime(pool, true, &rt) != UHMM_OK) {
    fit.error = over.error =
        std::string("uhmm_create (pool ") + std::to_string(pool >> 20) + " MiB): " + uhmm_last_error();
  } else {
    const Run run = Oversubscribed(g, slice);
    fit = Measure(o, g, Kind::kUhmm, rt, o.bytes, UHMM_BACKING_DEFAULT, run);
    const uint64_t evicted_fit = EvictedPages(rt);
    over = Measure(o, g, Kind::kUhmm, rt, 3 * o.bytes, UHMM_BACKING_DEFAULT, run);
    evicted = EvictedPages(rt) - evicted_fit;
    uhmm_destroy(rt);
  }
  Row row;
  row.name = kOversub;
  row.unit = "% of 0.5x";
  row.baseline = std::nan("");
  row.uhmm = 100 * over.At(0.5) / fit.At(0.5);
  row.wrong = fit.wrong + over.wrong;
  AddNote(&row, "UVM: cudaMallocManaged is never oversubscribed on a lent GPU: it can hang the card");
  if (!fit.error.empty()) AddNote(&row, "uhmm 0.5x: " + fit.error);
  if (!over.error.empty() && over.error != fit.error) AddNote(&row, "uhmm 1.5x: " + over.error);
  char text[256];
  std::snprintf(text, sizeof(text),
                "pool %zu MiB, data %zu vs %zu MiB in %zu MiB slices, %d passes, transparent launches off "
                "(slice prefetches, as samples/cuda/oversubscribe.cu): 0.5x %.2f GB/s, 1.5x %.2f GB/s, "
                "%llu pages evicted at 1.5x",
                pool >> 20, (3 * o.bytes) >> 20, o.bytes >> 20, slice >> 20, kOversubPasses, fit.At(0.5),
                over.At(0.5), static_cast<unsigned long long>(evicted));
  AddNote(&row, text);
  AddRow(t, std::move(row), {"≥ 60 %", 60, true});
}

void PrintDevice(uhmm_runtime_t* rt) {
  cudaDeviceProp prop{};
  const bool named = cudaGetDeviceProperties(&prop, 0) == cudaSuccess;
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  std::printf("GPU: %s, driver %d.%d, CUDA runtime %d.%d, uhmm transparent launches %s\n",
              named ? prop.name : "(name unavailable)", driver / 1000, driver % 1000 / 10, runtime / 1000,
              runtime % 1000 / 10, uhmm_transparent_launch_enabled(rt) ? "on" : "off");
}

#undef BENCH_TRY
#undef BENCH_CUDA
#undef BENCH_UHMM

}  // namespace

bool RunGpuTable(const Options& o, Table* table, std::string* why) {
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    *why =
        std::string("cudaGetDeviceCount: ") + (e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device");
    return false;
  }
  Gpu g;
  if (Status s = OpenGpu(&g); !s.empty()) {
    *why = s;
    CloseGpu(&g);
    return false;
  }
  // The launch row's anchor first: no uhmm runtime, so no CUPTI subscriber, exists yet.
  Side plain;
  if (Selected(o, kLaunch)) plain = PlainLaunches(g);

  uhmm_runtime_t* rt = nullptr;
  if (CreateRuntime(0, false, &rt) != UHMM_OK) {
    *why = std::string("uhmm_create (backend cuda): ") + uhmm_last_error();
    CloseGpu(&g);
    return false;
  }
  PrintDevice(rt);
  ReadBackRows(o, g, rt, table);
  FaultRows(o, g, rt, table);
  PrefetchRows(o, g, rt, table);
  KernelRow(o, g, rt, table);
  LaunchRow(o, g, rt, plain, table);
  uhmm_destroy(rt);

  if (Selected(o, kOversub)) OversubscribedRow(o, g, table);
  RunPeerRows(o, table);
  CloseGpu(&g);
  return true;
}

}  // namespace uhmm::bench
