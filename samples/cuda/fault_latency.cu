// fault_latency: isolated CPU faults after a GPU write, one touch per 2 MiB block, for uhmm and for
// cudaMallocManaged in the same run, on the same GPU, with the same sizes. uhmm brings back one
// 4 KiB page per fault here (UHMM_FAULT_GRANULARITY=4K); UVM picks its own granule.
#include <cstdint>

#include "sample_util.h"

__global__ void Fill(uint64_t* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    p[i] = seed ^ i;
  }
}

// Touches one word per 2 MiB block and times each touch. Returns wrong values.
size_t TouchEachBlock(const uint64_t* p, size_t bytes, uint64_t seed, std::vector<double>* us) {
  size_t wrong = 0;
  const size_t stride = (size_t{2} << 20) / sizeof(uint64_t);
  for (size_t i = 0; i < bytes / sizeof(uint64_t); i += stride) {
    const size_t at = i + 4096 / sizeof(uint64_t) * (i / stride % 7);  // vary the page in the block
    auto t0 = Clock::now();
    const uint64_t v = *static_cast<volatile const uint64_t*>(p + at);
    us->push_back(Us(Clock::now() - t0));
    wrong += v != (seed ^ at);
  }
  return wrong;
}

int main(int argc, char** argv) {
  const size_t bytes = (argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 512) << 20;  // MiB
  const int rounds = 5;
  uhmm_runtime_t* rt =
      CreateCudaRuntimeOrSkip("fault_latency", [](uhmm_config_t* c) { c->fault_granularity = 4096; });
  const size_t n = bytes / sizeof(uint64_t);
  size_t wrong = 0;
  std::vector<double> uhmm_us, uvm_us;

  uint64_t* p;
  UHMM_CHECK(uhmm_alloc(rt, bytes, reinterpret_cast<void**>(&p)));
  for (int r = 0; r < rounds; ++r) {
    SyncIfNotTransparent(rt, nullptr);
    Fill<<<1024, 256>>>(p, n, 100 + r);
    CUDA_CHECK(cudaDeviceSynchronize());
    wrong += TouchEachBlock(p, bytes, 100 + r, &uhmm_us);
  }
  UHMM_CHECK(uhmm_free(rt, p));

  uint64_t* m;
  CUDA_CHECK(cudaMallocManaged(&m, bytes));
  for (int r = 0; r < rounds; ++r) {
    Fill<<<1024, 256>>>(m, n, 200 + r);
    CUDA_CHECK(cudaDeviceSynchronize());
    wrong += TouchEachBlock(m, bytes, 200 + r, &uvm_us);
  }
  CUDA_CHECK(cudaFree(m));
  uhmm_destroy(rt);

  std::printf("| isolated CPU fault after a GPU write (%zu faults) | p50 us | p99 us | max us |\n",
              uhmm_us.size());
  std::printf("|---|---|---|---|\n");
  std::printf("| cudaMallocManaged | %.1f | %.1f | %.1f |\n", Percentile(uvm_us, 0.5),
              Percentile(uvm_us, 0.99), Percentile(uvm_us, 1.0));
  std::printf("| uhmm (4 KiB granule) | %.1f | %.1f | %.1f |\n", Percentile(uhmm_us, 0.5),
              Percentile(uhmm_us, 0.99), Percentile(uhmm_us, 1.0));
  std::printf("uhmm p50 / UVM p50: %.2f\n", Percentile(uhmm_us, 0.5) / Percentile(uvm_us, 0.5));
  return Verdict("fault_latency", wrong);
}
