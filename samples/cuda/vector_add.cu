// vector_add: transparent offload. Allocate with uhmm, fill on the CPU, launch with <<<>>>, read the
// result on the CPU. No other calls: before the launch the runtime (through a CUPTI callback)
// pushes what the CPU wrote to VRAM and takes the CPU mappings away; the CPU's reads of c then
// fault the GPU's result back.
#include "sample_util.h"

__global__ void VectorAdd(const float* a, const float* b, float* c, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    c[i] = a[i] + b[i];
  }
}

int main(int argc, char** argv) {
  const size_t n = (argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 64) << 20;  // Mi elements
  uhmm_runtime_t* rt = CreateCudaRuntimeOrSkip("vector_add");
  float *a, *b, *c;
  UHMM_CHECK(uhmm_alloc(rt, n * sizeof(float), reinterpret_cast<void**>(&a)));
  UHMM_CHECK(uhmm_alloc(rt, n * sizeof(float), reinterpret_cast<void**>(&b)));
  UHMM_CHECK(uhmm_alloc(rt, n * sizeof(float), reinterpret_cast<void**>(&c)));
  for (size_t i = 0; i < n; ++i) {
    a[i] = static_cast<float>(i % 1000);
    b[i] = static_cast<float>(2 * (i % 777));
  }

  SyncIfNotTransparent(rt, nullptr);
  auto t0 = Clock::now();
  VectorAdd<<<1024, 256>>>(a, b, c, n);
  CUDA_CHECK(cudaGetLastError());
  CUDA_CHECK(cudaDeviceSynchronize());
  const double launch_us = Us(Clock::now() - t0);

  t0 = Clock::now();
  size_t wrong = 0;
  for (size_t i = 0; i < n; ++i) wrong += c[i] != static_cast<float>(i % 1000 + 2 * (i % 777));
  const double read_us = Us(Clock::now() - t0);

  // Second launch with nothing dirtied by the CPU except c (read only): a and b stay in VRAM.
  t0 = Clock::now();
  VectorAdd<<<1024, 256>>>(a, b, c, n);
  CUDA_CHECK(cudaDeviceSynchronize());
  const double relaunch_us = Us(Clock::now() - t0);

  uhmm_stats_t st;
  UHMM_CHECK(uhmm_get_stats(rt, &st));
  const double mib = 3.0 * n * sizeof(float) / (1 << 20);
  std::printf("| step | time | rate |\n|---|---|---|\n");
  std::printf("| launch + kernel, %.0f MiB pushed to VRAM first | %.1f ms | %.2f GB/s |\n", mib,
              launch_us / 1e3, 3.0 * n * sizeof(float) / launch_us / 1e3);
  std::printf("| CPU check of c (faults the result back) | %.1f ms | %.2f GB/s |\n", read_us / 1e3,
              n * sizeof(float) / read_us / 1e3);
  std::printf("| relaunch (c comes back to VRAM) | %.1f ms | |\n", relaunch_us / 1e3);
  std::printf("stats: launch syncs %llu, pages to device %llu, to host %llu, cpu faults %llu\n",
              (unsigned long long)st.launch_syncs, (unsigned long long)st.pages_to_device,
              (unsigned long long)st.pages_to_host, (unsigned long long)st.cpu_faults);
  UHMM_CHECK(uhmm_free(rt, a));
  UHMM_CHECK(uhmm_free(rt, b));
  UHMM_CHECK(uhmm_free(rt, c));
  uhmm_destroy(rt);
  return Verdict("vector_add", wrong);
}
