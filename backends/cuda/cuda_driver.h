// The CUDA driver API, loaded at run time. libuhmm never links libcuda: on a machine without the
// NVIDIA driver Load() reports why, and the CUDA backend is "unavailable" instead of the library
// failing to load. Entry points come from cuGetProcAddress, so each has the ABI version that the
// cuda.h we compile against declares.
#ifndef UHMM_BACKENDS_CUDA_CUDA_DRIVER_H_
#define UHMM_BACKENDS_CUDA_CUDA_DRIVER_H_

#include <cuda.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace uhmm::cuda {

#define UHMM_CUDA_DRIVER_FUNCTIONS(X) \
  X(cuInit)                           \
  X(cuDriverGetVersion)               \
  X(cuGetErrorName)                   \
  X(cuGetErrorString)                 \
  X(cuDeviceGetCount)                 \
  X(cuDeviceGet)                      \
  X(cuDeviceGetName)                  \
  X(cuDeviceGetAttribute)             \
  X(cuDeviceCanAccessPeer)            \
  X(cuDevicePrimaryCtxRetain)         \
  X(cuDevicePrimaryCtxRelease)        \
  X(cuCtxSetCurrent)                  \
  X(cuCtxGetCurrent)                  \
  X(cuCtxGetDevice)                   \
  X(cuCtxSynchronize)                 \
  X(cuMemGetInfo)                     \
  X(cuMemGetAllocationGranularity)    \
  X(cuMemAddressReserve)              \
  X(cuMemAddressFree)                 \
  X(cuMemCreate)                      \
  X(cuMemRelease)                     \
  X(cuMemMap)                         \
  X(cuMemUnmap)                       \
  X(cuMemSetAccess)                   \
  X(cuMemHostRegister)                \
  X(cuMemHostUnregister)              \
  X(cuMemAllocHost)                   \
  X(cuMemFreeHost)                    \
  X(cuMemcpyHtoDAsync)                \
  X(cuMemcpyDtoHAsync)                \
  X(cuMemcpyDtoDAsync)                \
  X(cuMemsetD8Async)                  \
  X(cuStreamCreate)                   \
  X(cuStreamDestroy)                  \
  X(cuStreamSynchronize)              \
  X(cuEventCreate)                    \
  X(cuEventDestroy)                   \
  X(cuEventRecord)                    \
  X(cuEventQuery)                     \
  X(cuEventSynchronize)

struct Driver {
  void* handle = nullptr;
  std::string path;  // the library that was loaded
  int version = 0;   // cuDriverGetVersion
#define UHMM_DECLARE(name) decltype(&::name) name = nullptr;
  UHMM_CUDA_DRIVER_FUNCTIONS(UHMM_DECLARE)
#undef UHMM_DECLARE
};

// Loads the driver library `path` (Config::cuda_driver, UHMM_CUDA_DRIVER; empty: libcuda.so.1)
// once per process and path, then cuInit(0). UNAVAILABLE with the reason when there is no driver
// or no device.
absl::StatusOr<const Driver*> LoadDriver(const std::string& path);

// "cuMemMap: CUDA_ERROR_INVALID_VALUE (invalid argument)", or OK for CUDA_SUCCESS.
absl::Status CudaStatus(const Driver& d, CUresult r, const char* call);

}  // namespace uhmm::cuda

#endif  // UHMM_BACKENDS_CUDA_CUDA_DRIVER_H_
