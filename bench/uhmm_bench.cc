// uhmm_bench: the performance table. On a machine with an NVIDIA GPU it measures every row of the
// goal table for cudaMallocManaged and uhmm in the same process, same sizes, and prints both with
// the ratio; then (and on machines without a GPU) the host-backend table of the CPU-side rows, for
// regressions. Data is checked after every run; a wrong word makes the exit status 1.
//
//   uhmm_bench [--size MiB] [--reps N] [--only TEXT[|TEXT...]] [--no-host] [--no-gpu]
//
// --only runs the rows whose name contains one of the '|'-separated texts, e.g.
// --only "read-back seq, 4K|isolated fault, 4K|prefetch to GPU" (bench/gpu.sh quick). Each row is
// also printed to stderr as soon as it is measured.
#include <cstdlib>
#include <cstring>
#include <string>

#include "bench/bench_harness.h"

int main(int argc, char** argv) {
  using namespace uhmm::bench;
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "uhmm_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--size") {
      o.bytes = std::strtoull(value(), nullptr, 10) << 20;
    } else if (a == "--reps") {
      o.reps = std::atoi(value());
    } else if (a == "--only") {
      o.only = value();
    } else if (a == "--no-host") {
      o.host = false;
    } else if (a == "--no-gpu") {
      o.gpu = false;
    } else {
      std::fprintf(
          stderr,
          "usage: uhmm_bench [--size MiB] [--reps N] [--only TEXT[|TEXT...]] [--no-host] [--no-gpu]\n");
      return 2;
    }
  }
  if (o.bytes < (size_t{2} << 20) || o.bytes % (size_t{2} << 20) != 0 || o.reps < 1) {
    std::fprintf(stderr, "uhmm_bench: --size must be a positive even number of MiB, --reps >= 1\n");
    return 2;
  }
  size_t failures = 0;
  if (o.gpu) {
    Table gpu("GPU: cudaMallocManaged vs uhmm (CUDA backend), same process", "UVM");
    std::string why;
    if (RunGpuTable(o, &gpu, &why)) {
      gpu.Print(stdout);
      failures += gpu.data_failures();
    } else {
      std::printf("\nGPU table: NOT MEASURED: %s\n", why.c_str());
    }
  }
  if (o.host) {
    Table host(
        "Host backend (emulated device, memcpy copy engine): CPU-side rows, for regressions only. "
        "'off' = uhmm with that row's optimisation turned off",
        "off");
    RunHostTable(o, &host);
    host.Print(stdout);
    failures += host.data_failures();
  }
  if (failures) std::printf("\nFAIL: %zu row(s) read wrong data\n", failures);
  return failures ? 1 : 0;
}
