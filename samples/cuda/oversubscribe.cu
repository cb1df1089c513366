// oversubscribe: data 1.5x a capped uhmm VRAM pool. A GPU cannot fault into uhmm, so kernels work
// slice by slice: each slice is prefetched on the kernel's stream (uhmm_prefetch_on_queue), which
// evicts the least recently used slices back to host memory when the pool is full. The same
// passes over data half the pool's size give the baseline; the table shows the ratio.
// Never do this with cudaMallocManaged on a shared GPU: oversubscribing it can hang the card.
#include <cstdint>

#include "sample_util.h"

__global__ void Bump(uint32_t* p, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    p[i] += 1;
  }
}

struct Result {
  double gbps;
  size_t wrong;
  unsigned long long evicted;
};

Result Run(size_t pool_bytes, size_t data_bytes, size_t slice_bytes, int passes) {
  uhmm_runtime_t* rt = CreateCudaRuntimeOrSkip("oversubscribe", [&](uhmm_config_t* c) {
    c->device_pool_bytes = pool_bytes;
    c->transparent_launch = 0;  // explicit, slice-sized prefetches instead
  });
  uint32_t* data;
  UHMM_CHECK(uhmm_alloc(rt, data_bytes, reinterpret_cast<void**>(&data)));
  const size_t n = data_bytes / sizeof(uint32_t);
  for (size_t i = 0; i < n; ++i) data[i] = static_cast<uint32_t>(i);
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  auto t0 = Clock::now();
  for (int pass = 0; pass < passes; ++pass) {
    for (size_t off = 0; off < data_bytes; off += slice_bytes) {
      const size_t len = std::min(slice_bytes, data_bytes - off);
      char* slice = reinterpret_cast<char*>(data) + off;
      UHMM_CHECK(uhmm_prefetch_on_queue(rt, slice, len, 0, stream));
      Bump<<<512, 256, 0, stream>>>(reinterpret_cast<uint32_t*>(slice), len / sizeof(uint32_t));
      CUDA_CHECK(cudaGetLastError());
    }
  }
  CUDA_CHECK(cudaStreamSynchronize(stream));
  const double us = Us(Clock::now() - t0);
  // Everything home before the CPU check (ordered after the stream's kernels).
  UHMM_CHECK(uhmm_prefetch_on_queue(rt, data, data_bytes, UHMM_LOCATION_HOST, stream));
  size_t wrong = 0;
  for (size_t i = 0; i < n; ++i) wrong += data[i] != static_cast<uint32_t>(i + passes);
  uhmm_stats_t st;
  UHMM_CHECK(uhmm_get_stats(rt, &st));
  CUDA_CHECK(cudaStreamDestroy(stream));
  UHMM_CHECK(uhmm_free(rt, data));
  uhmm_destroy(rt);
  return Result{double(data_bytes) * passes / us / 1e3, wrong, (unsigned long long)st.evicted_pages};
}

int main(int argc, char** argv) {
  const size_t pool = (argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1024) << 20;  // MiB
  const size_t slice = std::max<size_t>(pool / 8, 2 << 20) & ~((size_t{2} << 20) - 1);
  const int passes = 4;
  const Result fit = Run(pool, pool / 2, slice, passes);
  const Result over = Run(pool, pool / 2 * 3, slice, passes);
  std::printf("| data | pool | passes | throughput | evicted pages |\n|---|---|---|---|---|\n");
  std::printf("| %zu MiB (0.5x) | %zu MiB | %d | %.2f GB/s | %llu |\n", (pool / 2) >> 20, pool >> 20, passes,
              fit.gbps, fit.evicted);
  std::printf("| %zu MiB (1.5x) | %zu MiB | %d | %.2f GB/s | %llu |\n", (pool / 2 * 3) >> 20, pool >> 20,
              passes, over.gbps, over.evicted);
  std::printf("oversubscribed / fitting throughput: %.0f %%\n", 100.0 * over.gbps / fit.gbps);
  if (over.evicted == 0) {
    std::printf("FAIL: oversubscribe: nothing was evicted\n");
    return 1;
  }
  return Verdict("oversubscribe", fit.wrong + over.wrong);
}
