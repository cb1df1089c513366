// Shared by the CUDA samples: skip cleanly without a GPU, check CUDA and uhmm calls, time things.
// The samples use uhmm's C API, so they build with nvcc and no extra flags.
#ifndef UHMM_SAMPLES_CUDA_SAMPLE_UTIL_H_
#define UHMM_SAMPLES_CUDA_SAMPLE_UTIL_H_

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../uhmm_check.h"
#include "uhmm/uhmm.h"

// Exit codes: 0 PASS, 1 FAIL, 77 SKIP (no GPU here; ctest reports it as skipped).
inline constexpr int kSkip = UHMM_SAMPLE_SKIP;

#define CUDA_CHECK(call)                                                                       \
  do {                                                                                         \
    cudaError_t e_ = (call);                                                                   \
    if (e_ != cudaSuccess) {                                                                   \
      std::printf("FAIL: %s: %s (%s)\n", #call, cudaGetErrorName(e_), cudaGetErrorString(e_)); \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

// A uhmm runtime on the CUDA backend, or exit(kSkip) with the reason when this machine has no
// usable GPU. `tweak` adjusts the configuration (from the UHMM_* environment) before creation.
template <typename Tweak>
uhmm_runtime_t* CreateCudaRuntimeOrSkip(const char* sample, Tweak tweak) {
  int devices = 0;
  cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    std::printf("SKIP: %s needs an NVIDIA GPU (cudaGetDeviceCount: %s)\n", sample,
                e != cudaSuccess ? cudaGetErrorString(e) : "no device");
    std::exit(kSkip);
  }
  uhmm_config_t cfg;
  uhmm_config_init(&cfg);
  cfg.backend = "cuda";
  tweak(&cfg);
  uhmm_runtime_t* rt = nullptr;
  uhmm_status_t s = uhmm_create(&cfg, &rt);
  if (s == UHMM_ERROR_UNAVAILABLE) {
    std::printf("SKIP: %s: the uhmm CUDA backend is unavailable: %s\n", sample, uhmm_last_error());
    std::exit(kSkip);
  }
  UHMM_CHECK(s);
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  int driver = 0;
  cudaDriverGetVersion(&driver);
  std::printf("%s: %s, driver %d.%d, uhmm backend %s, transparent launches %s\n", sample, prop.name,
              driver / 1000, driver % 1000 / 10, uhmm_backend_name(rt),
              uhmm_transparent_launch_enabled(rt) ? "on" : "off");
  return rt;
}
inline uhmm_runtime_t* CreateCudaRuntimeOrSkip(const char* sample) {
  return CreateCudaRuntimeOrSkip(sample, [](uhmm_config_t*) {});
}

// Without transparent launches (CUPTI missing or taken by a profiler) a kernel must be told.
inline void SyncIfNotTransparent(uhmm_runtime_t* rt, cudaStream_t stream) {
  if (!uhmm_transparent_launch_enabled(rt)) UHMM_CHECK(uhmm_sync_for_device(rt, 0, stream));
}

using Clock = std::chrono::steady_clock;
inline double Us(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }
inline double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

inline int Verdict(const char* sample, size_t wrong) {
  if (wrong == 0) {
    std::printf("PASS: %s\n", sample);
    return 0;
  }
  std::printf("FAIL: %s: %zu wrong values\n", sample, wrong);
  return 1;
}

#endif  // UHMM_SAMPLES_CUDA_SAMPLE_UTIL_H_
