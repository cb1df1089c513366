// uhmm_bench built without nvcc: the GPU table needs the CUDA runtime and kernels.
#include "bench/bench_harness.h"

namespace uhmm::bench {
bool RunGpuTable(const Options&, Table*, std::string* why) {
  *why = "uhmm_bench was built without nvcc (CUDA toolkit not found at configure time)";
  return false;
}
}  // namespace uhmm::bench
