// The harness of uhmm_bench: timing (medians of repeated runs), the CPU-side access patterns both
// systems are measured with, data checks, and the table every row ends up in. Shared by the host
// table (host_rows.cc) and the GPU table (gpu_rows.cu, uhmm against cudaMallocManaged).
#ifndef UHMM_BENCH_BENCH_HARNESS_H_
#define UHMM_BENCH_BENCH_HARNESS_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace uhmm::bench {

using Clock = std::chrono::steady_clock;
inline double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
inline double Us(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

struct Options {
  size_t bytes = size_t{1} << 30;  // data size of the throughput rows (--size, MiB)
  int reps = 5;                    // repetitions per row; rows report the median (--reps)
  std::string only;                // run only rows whose name contains one of these '|'-separated
                                   // texts (--only "read-back seq, 4K|prefetch to GPU")
  bool host = true;                // the host-backend table (--no-host skips it)
  bool gpu = true;                 // the GPU table (--no-gpu skips it)
};

// Median of the samples (0 when empty).
double Median(std::vector<double> v);
// Nearest-rank percentile, p in [0, 1].
double Percentile(std::vector<double> v, double p);

#ifdef __CUDACC__
#define UHMM_BENCH_HD __host__ __device__
#else
#define UHMM_BENCH_HD
#endif

// The word every bench writes at index i of a buffer for `seed`: a check that catches stale,
// shifted and zeroed pages. GPU kernels write the same words.
UHMM_BENCH_HD inline uint64_t Pattern(uint64_t seed, size_t i) { return (seed * 0x9E3779B97F4A7C15ull) ^ i; }
// Writes Pattern(seed, i) into every word (CPU side).
void FillCpu(uint64_t* p, size_t bytes, uint64_t seed);
// Counts the words that are not Pattern(seed, i). Untimed: runs after the timed pass.
size_t CountWrong(const uint64_t* p, size_t bytes, uint64_t seed);

// A page order: 0, 1, 2, ... (sequential) or a fixed pseudo-random permutation of every page
// (random; every page touched exactly once).
std::vector<uint32_t> PageOrder(size_t bytes, bool random);
// The CPU touch both systems are timed with: reads one word of each 4 KiB page in `order` (the
// word at a page-dependent offset), and counts those that are not Pattern(seed, i). What it
// measures is the migration back, not the CPU's memory bandwidth. Returns the wrong words.
size_t TouchPages(const uint64_t* p, const std::vector<uint32_t>& order, uint64_t seed);
// One touch per 2 MiB block (a different page each block), each timed: isolated faults.
size_t TouchBlocksTimed(const uint64_t* p, size_t bytes, uint64_t seed, std::vector<double>* us);

// One row of a table. `baseline` is the anchor measured in the same run (cudaMallocManaged for the
// GPU table; for the host table, uhmm with the optimisation that row is about turned off).
struct Row {
  std::string name;     // what is measured
  std::string unit;     // "GB/s", "us p50", ...
  double baseline = 0;  // anchor value (NaN: not measured)
  double uhmm = 0;      // uhmm value (NaN: not measured)
  bool higher_is_better = true;
  std::string goal;  // "≥ 48 GB/s", "p50 ≤ 15 us", ... ("" when the row has none)
  int met = -1;      // 1 met, 0 missed, -1 no goal or not measured
  size_t wrong = 0;  // words that failed the data check in this row's runs
  std::string note;  // why a value is missing, or what the row's setting was
};

class Table {
 public:
  Table(std::string title, std::string baseline_name)
      : title_(std::move(title)), baseline_(std::move(baseline_name)) {}
  // Also prints the row to stderr at once, so a run cut short still shows the rows it measured.
  void Add(Row row);
  // Markdown table: metric | baseline | uhmm | uhmm/baseline | goal | met | data.
  void Print(FILE* out) const;
  // Rows whose data check failed.
  size_t data_failures() const;
  const std::vector<Row>& rows() const { return rows_; }

 private:
  std::string title_;
  std::string baseline_;
  std::vector<Row> rows_;
};

// Whether --only selects a row (or the rows measured together under one key): true when --only is
// empty or `row_name` contains one of its '|'-separated alternatives.
bool Selected(const Options& o, const std::string& row_name);

// The GPU table (gpu_rows.cu; without nvcc a stand-in that says why it is missing). Prints the GPU
// name and driver version; returns false with `why` set when no GPU table could be measured.
bool RunGpuTable(const Options& o, Table* table, std::string* why);
// The two-GPU rows (gpu_peer_rows.cu), added to the GPU table: printed as not measured with one GPU.
void RunPeerRows(const Options& o, Table* table);
// The host-backend table (host_rows.cc): CPU-side rows only, for regressions.
void RunHostTable(const Options& o, Table* table);

}  // namespace uhmm::bench

#endif  // UHMM_BENCH_BENCH_HARNESS_H_
