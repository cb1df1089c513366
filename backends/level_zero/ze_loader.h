// The Level Zero loader (libze_loader.so.1), loaded at run time: libuhmm never links it, so on a
// machine without the loader or without a GPU driver the Level Zero backend is "unavailable" with
// the reason instead of the library failing to load. The loader's tracing entry points (zelTracer*)
// are optional: without them transparent launches are off.
#ifndef UHMM_BACKENDS_LEVEL_ZERO_ZE_LOADER_H_
#define UHMM_BACKENDS_LEVEL_ZERO_ZE_LOADER_H_

#include <level_zero/layers/zel_tracing_api.h>
#include <level_zero/ze_api.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace uhmm::level_zero {

#define UHMM_ZE_FUNCTIONS(X)                \
  X(zeInit)                                 \
  X(zeDriverGet)                            \
  X(zeDriverGetApiVersion)                  \
  X(zeDeviceGet)                            \
  X(zeDeviceGetProperties)                  \
  X(zeDeviceGetMemoryProperties)            \
  X(zeDeviceGetCommandQueueGroupProperties) \
  X(zeDeviceCanAccessPeer)                  \
  X(zeContextCreate)                        \
  X(zeContextDestroy)                       \
  X(zeVirtualMemQueryPageSize)              \
  X(zeVirtualMemReserve)                    \
  X(zeVirtualMemFree)                       \
  X(zeVirtualMemMap)                        \
  X(zeVirtualMemUnmap)                      \
  X(zeVirtualMemSetAccessAttribute)         \
  X(zePhysicalMemCreate)                    \
  X(zePhysicalMemDestroy)                   \
  X(zeCommandListCreateImmediate)           \
  X(zeCommandListDestroy)                   \
  X(zeCommandListAppendMemoryCopy)          \
  X(zeCommandListAppendMemoryFill)          \
  X(zeCommandListAppendBarrier)             \
  X(zeCommandQueueSynchronize)              \
  X(zeEventPoolCreate)                      \
  X(zeEventPoolDestroy)                     \
  X(zeEventCreate)                          \
  X(zeEventDestroy)                         \
  X(zeEventHostSynchronize)                 \
  X(zeEventQueryStatus)                     \
  X(zeEventHostReset)

#define UHMM_ZEL_TRACER_FUNCTIONS(X) \
  X(zelTracerCreate)                 \
  X(zelTracerDestroy)                \
  X(zelTracerSetPrologues)           \
  X(zelTracerSetEpilogues)           \
  X(zelTracerSetEnabled)

struct Loader {
  void* handle = nullptr;
  std::string path;  // the library that was loaded
#define UHMM_DECLARE(name) decltype(&::name) name = nullptr;
  UHMM_ZE_FUNCTIONS(UHMM_DECLARE)
  UHMM_ZEL_TRACER_FUNCTIONS(UHMM_DECLARE)
#undef UHMM_DECLARE
  bool has_tracer() const { return zelTracerCreate != nullptr; }
};

// Loads the loader library `path` (Config::ze_loader, UHMM_ZE_LOADER; empty: libze_loader.so.1)
// once per process and path, then zeInit(ZE_INIT_FLAG_GPU_ONLY). When ZE_ENABLE_TRACING_LAYER is
// unset it sets it to 1 first (the loader reads it at its first zeInit): the backend tracks kernel
// launches through the tracing layer. UNAVAILABLE with the reason when there is no loader or no
// GPU driver.
absl::StatusOr<const Loader*> LoadLoader(const std::string& path);

// True once exit() has begun in a process that loaded the loader: the loader's and its layers'
// static destructors run next, so no Level Zero call may be made any more (a copy then fails, and
// the fault that needed it ends in SIGBUS, instead of calling into destroyed objects).
bool ProcessExiting();

// "zeVirtualMemMap: ZE_RESULT_ERROR_INVALID_ARGUMENT", or OK for ZE_RESULT_SUCCESS. Out-of-memory
// results map to RESOURCE_EXHAUSTED, argument errors to INVALID_ARGUMENT, missing features to
// UNAVAILABLE and device errors to ABORTED (which the fault path turns into SIGBUS).
absl::Status ZeStatus(ze_result_t r, const char* call);

}  // namespace uhmm::level_zero

#endif  // UHMM_BACKENDS_LEVEL_ZERO_ZE_LOADER_H_
