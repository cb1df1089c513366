// cg_multi_gpu: conjugateGradientMultiDeviceCG's pattern on every GPU, with uhmm memory.
// A tridiagonal system (4 on the diagonal, -1 beside it) is split in one slice of rows per GPU.
// Like NVIDIA's sample: the matrix is read-mostly, each slice of every vector prefers its GPU and is
// accessed by the others, each slice is prefetched to its GPU, and each iteration runs one kernel
// per GPU on the shared vectors (a kernel reads its neighbours' boundary rows where they lie: over
// peer access, or after uhmm moved them). Dot products are reduced on the host from per-GPU partial
// sums (NVIDIA's sample uses a multi-device grid sync, which this sample does not need).
// The CPU checks the answer at the end: ||b - A x|| / ||b|| from the managed x, in double.
//
//   cg_multi_gpu [Mi rows per GPU, default 4]     (opens every GPU: UHMM_CUDA_DEVICES=all unless set)
// Exit status: 0 PASS, 1 FAIL, 77 no GPU. samples/multi_device_cg.cc is the same pattern for
// emulated devices (what CI runs).
#include <cmath>
#include <string>

#include "sample_util.h"

namespace {

constexpr size_t kBlock = size_t{2} << 20;
constexpr int kMaxIterations = 60;
constexpr double kTolerance = 1e-5;  // on ||r||

__global__ void ApKernel(const float* lower, const float* diag, const float* upper, const float* p, float* ap,
                         size_t lo, size_t hi, size_t n, double* partial) {
  double mine = 0;
  for (size_t i = lo + blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < hi;
       i += size_t{gridDim.x} * blockDim.x) {
    float v = diag[i] * p[i];
    if (i > 0) v += lower[i] * p[i - 1];  // row lo - 1 may lie on another GPU
    if (i + 1 < n) v += upper[i] * p[i + 1];
    ap[i] = v;
    mine += static_cast<double>(p[i]) * v;
  }
  atomicAdd(partial, mine);
}

__global__ void UpdateXrKernel(const float* p, const float* ap, float* x, float* r, size_t lo, size_t hi,
                               float alpha, double* partial) {
  double mine = 0;
  for (size_t i = lo + blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < hi;
       i += size_t{gridDim.x} * blockDim.x) {
    x[i] += alpha * p[i];
    r[i] -= alpha * ap[i];
    mine += static_cast<double>(r[i]) * r[i];
  }
  atomicAdd(partial, mine);
}

__global__ void UpdatePKernel(const float* r, float* p, size_t lo, size_t hi, float beta) {
  for (size_t i = lo + blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < hi;
       i += size_t{gridDim.x} * blockDim.x) {
    p[i] = r[i] + beta * p[i];
  }
}

}  // namespace

int main(int argc, char** argv) {
  const size_t rows_per_gpu = (argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 4) << 20;
  if (rows_per_gpu == 0 || rows_per_gpu * sizeof(float) % kBlock != 0) {
    std::printf("usage: cg_multi_gpu [Mi rows per GPU, a multiple of 1]\n");
    return 2;
  }
  setenv("UHMM_CUDA_DEVICES", "all", /*overwrite=*/0);
  uhmm_runtime_t* rt = CreateCudaRuntimeOrSkip("cg_multi_gpu");
  const int gpus = uhmm_device_count(rt);
  const size_t n = rows_per_gpu * gpus, bytes = n * sizeof(float), slice_bytes = rows_per_gpu * sizeof(float);
  bool all_peers = true;
  for (int d = 0; d < gpus; ++d) {
    uhmm_device_stats_t st;
    UHMM_CHECK(uhmm_get_device_stats(rt, d, &st));
    const uint64_t others = ((gpus < 64 ? uint64_t{1} << gpus : 0) - 1) & ~(uint64_t{1} << d);
    all_peers &= (st.peer_access & others) == others;
    std::printf("  GPU %d: %s, pool %llu MiB, peer access mask %#llx\n", d, st.name,
                static_cast<unsigned long long>(st.pool_pages_total >> 8),
                static_cast<unsigned long long>(st.peer_access));
  }

  float *lower, *diag, *upper, *x, *r, *p, *ap;
  for (float** v : {&lower, &diag, &upper, &x, &r, &p, &ap}) {
    UHMM_CHECK(uhmm_alloc(rt, bytes, reinterpret_cast<void**>(v)));
  }
  for (size_t i = 0; i < n; ++i) {
    lower[i] = i > 0 ? -1.0f : 0.0f;
    diag[i] = 4.0f;
    upper[i] = i + 1 < n ? -1.0f : 0.0f;
    x[i] = 0.0f;
    r[i] = p[i] = 1.0f;  // b = 1, x0 = 0
    ap[i] = 0.0f;
  }

  std::vector<cudaStream_t> streams(gpus);
  std::vector<double*> partial(gpus);
  std::vector<int> sms(gpus);
  for (int d = 0; d < gpus; ++d) {
    CUDA_CHECK(cudaSetDevice(d));
    CUDA_CHECK(cudaStreamCreateWithFlags(&streams[d], cudaStreamNonBlocking));
    CUDA_CHECK(cudaMalloc(&partial[d], sizeof(double)));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms[d], cudaDevAttrMultiProcessorCount, d));
  }
  // The advice and prefetches of NVIDIA's sample.
  auto t0 = Clock::now();
  for (float* v : {lower, diag, upper}) UHMM_CHECK(uhmm_advise(rt, v, bytes, UHMM_ADVISE_SET_READ_MOSTLY, 0));
  for (int d = 0; d < gpus; ++d) {
    for (float* v : {lower, diag, upper, x, r, p, ap}) {
      float* slice = v + d * rows_per_gpu;
      UHMM_CHECK(uhmm_advise(rt, slice, slice_bytes, UHMM_ADVISE_SET_PREFERRED_LOCATION, d));
      for (int other = 0; other < gpus; ++other) {
        if (other != d) UHMM_CHECK(uhmm_advise(rt, slice, slice_bytes, UHMM_ADVISE_SET_ACCESSED_BY, other));
      }
      UHMM_CHECK(uhmm_prefetch_on_queue(rt, slice, slice_bytes, d, streams[d]));
    }
  }
  const double prefetch_ms = Us(Clock::now() - t0) / 1e3;
  uhmm_stats_t before;
  UHMM_CHECK(uhmm_get_stats(rt, &before));

  // One kernel per GPU, each on its own stream, then the host reduces their partial sums.
  auto each_gpu = [&](auto&& launch) {
    double sum = 0;
    for (int d = 0; d < gpus; ++d) {
      CUDA_CHECK(cudaSetDevice(d));
      CUDA_CHECK(cudaMemsetAsync(partial[d], 0, sizeof(double), streams[d]));
      if (!uhmm_transparent_launch_enabled(rt)) UHMM_CHECK(uhmm_sync_for_device(rt, d, streams[d]));
      launch(d, static_cast<unsigned>(sms[d] * 8), d * rows_per_gpu, (d + 1) * rows_per_gpu);
      CUDA_CHECK(cudaGetLastError());
    }
    for (int d = 0; d < gpus; ++d) {
      double v = 0;
      CUDA_CHECK(cudaSetDevice(d));
      CUDA_CHECK(cudaMemcpyAsync(&v, partial[d], sizeof(double), cudaMemcpyDeviceToHost, streams[d]));
      CUDA_CHECK(cudaStreamSynchronize(streams[d]));
      sum += v;
    }
    return sum;
  };
  t0 = Clock::now();
  double rs_old = static_cast<double>(n);
  int it = 0;
  for (; it < kMaxIterations && std::sqrt(rs_old) > kTolerance; ++it) {
    const double p_ap = each_gpu([&](int d, unsigned grid, size_t lo, size_t hi) {
      ApKernel<<<grid, 256, 0, streams[d]>>>(lower, diag, upper, p, ap, lo, hi, n, partial[d]);
    });
    const float alpha = static_cast<float>(rs_old / p_ap);
    const double rs_new = each_gpu([&](int d, unsigned grid, size_t lo, size_t hi) {
      UpdateXrKernel<<<grid, 256, 0, streams[d]>>>(p, ap, x, r, lo, hi, alpha, partial[d]);
    });
    const float beta = static_cast<float>(rs_new / rs_old);
    each_gpu([&](int d, unsigned grid, size_t lo, size_t hi) {
      UpdatePKernel<<<grid, 256, 0, streams[d]>>>(r, p, lo, hi, beta);
    });
    rs_old = rs_new;
  }
  const double solve_ms = Us(Clock::now() - t0) / 1e3;
  uhmm_stats_t after;
  UHMM_CHECK(uhmm_get_stats(rt, &after));

  // The CPU check: every page of x faults home from its GPU.
  double res2 = 0;
  for (size_t i = 0; i < n; ++i) {
    double ax = 4.0 * x[i];
    if (i > 0) ax -= x[i - 1];
    if (i + 1 < n) ax -= x[i + 1];
    res2 += (1.0 - ax) * (1.0 - ax);
  }
  const double rel = std::sqrt(res2 / static_cast<double>(n));
  std::printf("| what | value |\n|---|---|\n");
  std::printf("| GPUs, rows | %d, %zu (%zu MiB per vector) |\n", gpus, n, bytes >> 20);
  std::printf("| peer access between all GPUs | %s |\n", all_peers ? "yes" : "no: launches move data");
  std::printf("| advice + prefetches | %.1f ms |\n", prefetch_ms);
  std::printf("| %d iterations (3 kernels per GPU each) | %.1f ms |\n", it, solve_ms);
  std::printf("| pages moved to GPUs during the iterations | %llu |\n",
              static_cast<unsigned long long>(after.pages_to_device - before.pages_to_device));
  std::printf("| ||b - A x|| / ||b||, on the CPU | %.3e |\n", rel);
  for (int d = 0; d < gpus; ++d) {
    CUDA_CHECK(cudaSetDevice(d));
    CUDA_CHECK(cudaFree(partial[d]));
    CUDA_CHECK(cudaStreamDestroy(streams[d]));
  }
  for (float* v : {lower, diag, upper, x, r, p, ap}) UHMM_CHECK(uhmm_free(rt, v));
  uhmm_destroy(rt);
  return Verdict("cg_multi_gpu", rel < 1e-4 ? 0 : 1);
}
