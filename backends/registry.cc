// The compiled-in backends, best first. Runtime::Create takes the first that opens with a device
// unless Config::backend / UHMM_BACKEND names one. GPU backends go ahead of "host" as they land.
#include "backends/host/host_backend.h"
#include "uhmm/backend.h"
#if UHMM_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#endif
#if UHMM_HAVE_LEVEL_ZERO
#include "backends/level_zero/level_zero_backend.h"
#endif

namespace uhmm {

std::span<const BackendEntry> RegisteredBackends() {
  static const BackendEntry kEntries[] = {
#if UHMM_HAVE_CUDA
      {"cuda", &cuda::CreateCudaBackend},
#endif
#if UHMM_HAVE_LEVEL_ZERO
      {"level_zero", &level_zero::CreateLevelZeroBackend},
#endif
      {"host", &host::CreateHostBackend},
  };
  return kEntries;
}

}  // namespace uhmm
