// Run-time loading of the CUDA driver; see cuda_driver.h.
#include "backends/cuda/cuda_driver.h"

#include <dlfcn.h>

#include <map>
#include <memory>
#include <mutex>

#include "absl/strings/str_format.h"

namespace uhmm::cuda {
namespace {

absl::StatusOr<const Driver*> Load(const std::string& path) {
  auto d = std::make_unique<Driver>();
  d->path = path;
  d->handle = dlopen(d->path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (d->handle == nullptr) {
    const char* err = dlerror();
    return absl::UnavailableError(absl::StrFormat(
        "the NVIDIA driver library %s could not be loaded (%s): no NVIDIA driver on this machine", d->path,
        err ? err : "unknown error"));
  }
  // Under uhmm-run, "libcuda.so.1" is uhmm's interposer (backends/cuda/interpose): the backend's own
  // calls must reach the real driver it forwards to, not come back through the interposer.
  using InterposedDriver = const char* (*)();
  if (auto real = reinterpret_cast<InterposedDriver>(dlsym(d->handle, "uhmm_interpose_driver"))) {
    const char* real_path = real();
    if (real_path == nullptr) {
      using InterposeStatus = const char* (*)();
      auto status = reinterpret_cast<InterposeStatus>(dlsym(d->handle, "uhmm_interpose_status"));
      return absl::UnavailableError(absl::StrFormat("%s is uhmm's interposer, which found no driver: %s",
                                                    d->path, status ? status() : "no reason given"));
    }
    d->path = real_path;
    d->handle = dlopen(real_path, RTLD_NOW | RTLD_LOCAL);
    if (d->handle == nullptr) {
      const char* err = dlerror();
      return absl::UnavailableError(absl::StrFormat("the NVIDIA driver library %s could not be loaded (%s)",
                                                    real_path, err ? err : "unknown error"));
    }
  }
  using GetProc = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
  auto get_proc = reinterpret_cast<GetProc>(dlsym(d->handle, "cuGetProcAddress_v2"));
  if (get_proc == nullptr) {
    return absl::UnavailableError(absl::StrFormat(
        "%s has no cuGetProcAddress_v2: the driver is older than CUDA 12; uhmm needs a CUDA 12+ "
        "driver",
        d->path));
  }
  std::string missing;
  // cuGetProcAddress answers a version with the newest form introduced at or before it, and the
  // newest is not always the one cuda.h declares under the plain name: at 13000,
  // "cuCtxSynchronize" is CUDA 13's cuCtxSynchronize_v2(CUcontext), not the argument-less call
  // this code makes. Every function in UHMM_CUDA_DRIVER_FUNCTIONS has the form cuda.h declares as
  // its newest at 12000 (cudaTypedefs.h), so that is the version asked for.
  constexpr int kDeclaredForms = 12000;
#define UHMM_RESOLVE(name)                                                                           \
  {                                                                                                  \
    void* fn = nullptr;                                                                              \
    CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;                     \
    if (get_proc(#name, &fn, kDeclaredForms, CU_GET_PROC_ADDRESS_DEFAULT, &found) != CUDA_SUCCESS || \
        fn == nullptr) {                                                                             \
      missing += missing.empty() ? #name : ", " #name;                                               \
    }                                                                                                \
    d->name = reinterpret_cast<decltype(d->name)>(fn);                                               \
  }
  UHMM_CUDA_DRIVER_FUNCTIONS(UHMM_RESOLVE)
#undef UHMM_RESOLVE
  if (!missing.empty()) {
    return absl::UnavailableError(absl::StrFormat(
        "the driver in %s lacks %s (built against CUDA %d.%d headers; update the NVIDIA driver)", d->path,
        missing, CUDA_VERSION / 1000, CUDA_VERSION % 1000 / 10));
  }
  if (CUresult r = d->cuInit(0); r != CUDA_SUCCESS) {
    return absl::UnavailableError(
        absl::StrFormat("cuInit failed: %s", CudaStatus(*d, r, "cuInit").message()));
  }
  d->cuDriverGetVersion(&d->version);
  return d.release();  // process lifetime: CUDA objects may be released at exit
}

}  // namespace

absl::StatusOr<const Driver*> LoadDriver(const std::string& path) {
  static std::mutex mu;
  static auto* loaded = new std::map<std::string, absl::StatusOr<const Driver*>>();  // process lifetime
  const std::string lib = path.empty() ? "libcuda.so.1" : path;
  std::lock_guard<std::mutex> lock(mu);
  auto it = loaded->find(lib);
  if (it == loaded->end()) it = loaded->emplace(lib, Load(lib)).first;
  return it->second;
}

absl::Status CudaStatus(const Driver& d, CUresult r, const char* call) {
  if (r == CUDA_SUCCESS) return absl::OkStatus();
  const char* name = nullptr;
  const char* text = nullptr;
  if (d.cuGetErrorName == nullptr || d.cuGetErrorName(r, &name) != CUDA_SUCCESS) name = nullptr;
  if (d.cuGetErrorString == nullptr || d.cuGetErrorString(r, &text) != CUDA_SUCCESS) text = nullptr;
  std::string msg = absl::StrFormat("%s: %s (%s)", call, name ? name : absl::StrFormat("CUresult %d", r),
                                    text ? text : "no description");
  switch (r) {
    case CUDA_ERROR_OUT_OF_MEMORY:
      return absl::ResourceExhaustedError(msg);
    case CUDA_ERROR_INVALID_VALUE:
    case CUDA_ERROR_INVALID_HANDLE:
      return absl::InvalidArgumentError(msg);
    case CUDA_ERROR_NO_DEVICE:
    case CUDA_ERROR_NOT_SUPPORTED:
    case CUDA_ERROR_NOT_INITIALIZED:
      return absl::UnavailableError(msg);
    default:
      return absl::AbortedError(msg);  // a device error: the fault path turns it into SIGBUS
  }
}

}  // namespace uhmm::cuda
