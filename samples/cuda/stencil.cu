// stencil: a 1D heat stencil that alternates GPU and CPU phases on the same uhmm array. Each round
// the GPU smooths the field (integer arithmetic, so the CPU reference matches bit for bit) and the
// CPU then injects heat at a few points and reads a checksum. Every CPU phase faults part of the
// array back; every launch pushes what the CPU wrote.
#include <cstdint>

#include "sample_util.h"

__global__ void Smooth(const int64_t* in, int64_t* out, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const int64_t l = i > 0 ? in[i - 1] : 0, r = i + 1 < n ? in[i + 1] : 0;
    out[i] = (l + 2 * in[i] + r) / 4;
  }
}

void SmoothCpu(const std::vector<int64_t>& in, std::vector<int64_t>& out) {
  const size_t n = in.size();
  for (size_t i = 0; i < n; ++i) {
    const int64_t l = i > 0 ? in[i - 1] : 0, r = i + 1 < n ? in[i + 1] : 0;
    out[i] = (l + 2 * in[i] + r) / 4;
  }
}

void Inject(int64_t* u, size_t n, int round) {
  for (int k = 0; k < 8; ++k) u[(static_cast<size_t>(k) * 7919 + size_t(round) * 104729) % n] += 1 << 20;
}

int main(int argc, char** argv) {
  const size_t n = (argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 8) << 20;  // Mi cells
  const int rounds = 20;
  uhmm_runtime_t* rt = CreateCudaRuntimeOrSkip("stencil");
  int64_t *u, *v;
  UHMM_CHECK(uhmm_alloc(rt, n * sizeof(int64_t), reinterpret_cast<void**>(&u)));
  UHMM_CHECK(uhmm_alloc(rt, n * sizeof(int64_t), reinterpret_cast<void**>(&v)));
  std::vector<int64_t> ru(n), rv(n);
  for (size_t i = 0; i < n; ++i) u[i] = ru[i] = static_cast<int64_t>((i * 2654435761u) % 100000);

  std::vector<double> gpu_us, cpu_us;
  size_t wrong = 0;
  for (int round = 0; round < rounds; ++round) {
    SyncIfNotTransparent(rt, nullptr);
    auto t0 = Clock::now();
    Smooth<<<1024, 256>>>(u, v, n);
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaDeviceSynchronize());
    gpu_us.push_back(Us(Clock::now() - t0));
    std::swap(u, v);
    SmoothCpu(ru, rv);
    std::swap(ru, rv);

    t0 = Clock::now();
    Inject(u, n, round);  // CPU writes a few cells: only their granules come back
    Inject(ru.data(), n, round);
    int64_t sum = 0;
    for (size_t i = 0; i < n; i += n / 64) sum += u[i];  // and reads a sample
    cpu_us.push_back(Us(Clock::now() - t0));
    (void)sum;
  }
  for (size_t i = 0; i < n; ++i) wrong += u[i] != ru[i];
  uhmm_stats_t st;
  UHMM_CHECK(uhmm_get_stats(rt, &st));
  std::printf("| phase | p50 | max |\n|---|---|---|\n");
  std::printf("| GPU round (launch sync + kernel) | %.1f us | %.1f us |\n", Percentile(gpu_us, 0.5),
              Percentile(gpu_us, 1.0));
  std::printf("| CPU round (inject + sample, faults) | %.1f us | %.1f us |\n", Percentile(cpu_us, 0.5),
              Percentile(cpu_us, 1.0));
  std::printf("stats: %d rounds, cpu faults %llu, pages to device %llu, to host %llu\n", rounds,
              (unsigned long long)st.cpu_faults, (unsigned long long)st.pages_to_device,
              (unsigned long long)st.pages_to_host);
  UHMM_CHECK(uhmm_free(rt, u));
  UHMM_CHECK(uhmm_free(rt, v));
  uhmm_destroy(rt);
  return Verdict("stencil", wrong);
}
