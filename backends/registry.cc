// The compiled-in backends, best first. Runtime::Create takes the first that opens with a device
// unless Config::backend / UHMM_BACKEND names one. GPU backends go ahead of "host" as they land.
// Each is created through WithFaultInjection, which wraps its devices when Config::fault_injection
// (UHMM_INJECT) turns fault injection on (backends/common/fault_injection.h).
#include "backends/common/fault_injection.h"
#include "backends/host/host_backend.h"
#include "uhmm/backend.h"
#if UHMM_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#endif
#if UHMM_HAVE_LEVEL_ZERO
#include "backends/level_zero/level_zero_backend.h"
#endif

namespace uhmm {
namespace {

template <absl::StatusOr<std::unique_ptr<Backend>> (*Create)(const Config&)>
absl::StatusOr<std::unique_ptr<Backend>> WithFaultInjection(const Config& config) {
  absl::StatusOr<std::unique_ptr<Backend>> backend = Create(config);
  if (!backend.ok() || config.fault_injection.empty()) return backend;
  return fault_injection::Wrap(std::move(*backend), config.fault_injection);
}

}  // namespace

std::span<const BackendEntry> RegisteredBackends() {
  static const BackendEntry kEntries[] = {
#if UHMM_HAVE_CUDA
    {"cuda", &WithFaultInjection<&cuda::CreateCudaBackend>},
#endif
#if UHMM_HAVE_LEVEL_ZERO
    {"level_zero", &WithFaultInjection<&level_zero::CreateLevelZeroBackend>},
#endif
    {"host", &WithFaultInjection<&host::CreateHostBackend>},
  };
  return kEntries;
}

}  // namespace uhmm
