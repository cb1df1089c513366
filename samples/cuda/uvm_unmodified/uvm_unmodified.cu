// A program written only for CUDA Unified Memory: no uhmm include, built with plain nvcc and its
// default static CUDA runtime. Run it as it is (the driver's managed memory) and under
// `uhmm-run` (uhmm's): both must print PASS, and the times side by side compare the two.
// It checks what unmodified programs rely on: kernels on data the CPU wrote, the CPU reading what
// kernels wrote, cudaMemcpy from a managed buffer the CPU just wrote, cudaMemset of a buffer the
// CPU then reads, prefetches both ways and advice. Exits 77 without a GPU.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(call)                                                                               \
  do {                                                                                            \
    cudaError_t e_ = (call);                                                                      \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

__global__ void Axpy(const float* x, float* y, float a, size_t n) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    y[i] = a * x[i] + y[i];
}

__global__ void Sum(const float* x, size_t n, float* out) {
  float s = 0;
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    s += x[i];
  atomicAdd(out, s);
}

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("uvm_unmodified: no CUDA device: skipped\n");
    return 77;
  }
  const size_t n = size_t{64} << 20;  // 256 MiB per buffer
  const auto t0 = std::chrono::steady_clock::now();
  int bad = 0;
  float *x, *y, *sum;
  CHECK(cudaMallocManaged(&x, n * sizeof(float)));
  CHECK(cudaMallocManaged(&y, n * sizeof(float)));
  CHECK(cudaMallocManaged(&sum, sizeof(float)));
  for (size_t i = 0; i < n; ++i) {
    x[i] = 1.0f;
    y[i] = static_cast<float>(i % 1000);
  }
  // 1. A kernel on data the CPU wrote; the CPU reads what it wrote.
  Axpy<<<1024, 256>>>(x, y, 2.0f, n);
  CHECK(cudaDeviceSynchronize());
  for (size_t i = 0; i < n; i += 4099) bad += y[i] != 2.0f + static_cast<float>(i % 1000);
  // 2. cudaMemcpy from a managed buffer the CPU just wrote.
  for (size_t i = 0; i < n; i += 1024) x[i] = 3.0f;
  float* d = nullptr;
  CHECK(cudaMalloc(&d, n * sizeof(float)));
  CHECK(cudaMemcpy(d, x, n * sizeof(float), cudaMemcpyDefault));
  std::vector<float> back(n);
  CHECK(cudaMemcpy(back.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < n; i += 1024) bad += back[i] != 3.0f || back[i + 1] != 1.0f;
  // ... and into a managed buffer, which the CPU then reads.
  for (size_t i = 0; i < n; ++i) back[i] = static_cast<float>(i & 7);
  CHECK(cudaMemcpy(y, back.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  for (size_t i = 0; i < n; i += 4097) bad += y[i] != static_cast<float>(i & 7);
  // 3. cudaMemset of a buffer the CPU then reads (and the bytes past it keep the CPU's values).
  CHECK(cudaMemset(y, 0, (n / 2) * sizeof(float)));
  CHECK(cudaDeviceSynchronize());
  for (size_t i = 0; i < n; i += 4097) bad += y[i] != (i < n / 2 ? 0.0f : static_cast<float>(i & 7));
  // 4. Prefetches both ways and read-mostly advice, then a kernel that reads.
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  CHECK(cudaMemAdvise(x, n * sizeof(float), cudaMemAdviseSetReadMostly,
                      cudaMemLocation{cudaMemLocationTypeDevice, 0}));
  CHECK(cudaMemPrefetchAsync(x, n * sizeof(float), cudaMemLocation{cudaMemLocationTypeDevice, 0}, 0, s));
  *sum = 0;
  Sum<<<1024, 256, 0, s>>>(x, n, sum);
  CHECK(cudaMemPrefetchAsync(sum, sizeof(float), cudaMemLocation{cudaMemLocationTypeHost, 0}, 0, s));
  CHECK(cudaStreamSynchronize(s));
  const float want = static_cast<float>(n) + 2.0f * static_cast<float>(n / 1024);
  bad += *sum < want * 0.999f || *sum > want * 1.001f;  // float accumulation order
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  CHECK(cudaFree(d));
  CHECK(cudaFree(x));
  CHECK(cudaFree(y));
  CHECK(cudaFree(sum));
  CHECK(cudaStreamDestroy(s));
  std::printf("uvm_unmodified: 2 x %zu MiB managed, %.1f ms, %d wrong: %s\n", n * sizeof(float) >> 20, ms,
              bad, bad == 0 ? "PASS" : "FAIL");
  return bad == 0 ? 0 : 1;
}
