// Run-time loading of the Level Zero loader; see ze_loader.h.
#include "backends/level_zero/ze_loader.h"

#include <dlfcn.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/strings/str_format.h"

namespace uhmm::level_zero {
namespace {

// exit() has begun (the atexit hook below): the loader's objects are about to be destroyed.
std::atomic<bool> g_exiting{false};

const char* ResultName(ze_result_t r) {
  switch (r) {
#define UHMM_CASE(x) \
  case x:            \
    return #x;
    UHMM_CASE(ZE_RESULT_SUCCESS)
    UHMM_CASE(ZE_RESULT_NOT_READY)
    UHMM_CASE(ZE_RESULT_ERROR_DEVICE_LOST)
    UHMM_CASE(ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY)
    UHMM_CASE(ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY)
    UHMM_CASE(ZE_RESULT_ERROR_MODULE_BUILD_FAILURE)
    UHMM_CASE(ZE_RESULT_ERROR_MODULE_LINK_FAILURE)
    UHMM_CASE(ZE_RESULT_ERROR_DEVICE_REQUIRES_RESET)
    UHMM_CASE(ZE_RESULT_ERROR_DEVICE_IN_LOW_POWER_STATE)
    UHMM_CASE(ZE_RESULT_ERROR_INSUFFICIENT_PERMISSIONS)
    UHMM_CASE(ZE_RESULT_ERROR_NOT_AVAILABLE)
    UHMM_CASE(ZE_RESULT_ERROR_DEPENDENCY_UNAVAILABLE)
    UHMM_CASE(ZE_RESULT_ERROR_UNINITIALIZED)
    UHMM_CASE(ZE_RESULT_ERROR_UNSUPPORTED_VERSION)
    UHMM_CASE(ZE_RESULT_ERROR_UNSUPPORTED_FEATURE)
    UHMM_CASE(ZE_RESULT_ERROR_INVALID_ARGUMENT)
    UHMM_CASE(ZE_RESULT_ERROR_INVALID_NULL_HANDLE)
    UHMM_CASE(ZE_RESULT_ERROR_HANDLE_OBJECT_IN_USE)
    UHMM_CASE(ZE_RESULT_ERROR_INVALID_NULL_POINTER)
    UHMM_CASE(ZE_RESULT_ERROR_INVALID_SIZE)
    UHMM_CASE(ZE_RESULT_ERROR_UNSUPPORTED_SIZE)
    UHMM_CASE(ZE_RESULT_ERROR_UNSUPPORTED_ALIGNMENT)
    UHMM_CASE(ZE_RESULT_ERROR_INVALID_SYNCHRONIZATION_OBJECT)
    UHMM_CASE(ZE_RESULT_ERROR_INVALID_ENUMERATION)
    UHMM_CASE(ZE_RESULT_ERROR_UNSUPPORTED_ENUMERATION)
    UHMM_CASE(ZE_RESULT_ERROR_INVALID_KERNEL_NAME)
    UHMM_CASE(ZE_RESULT_ERROR_INVALID_COMMAND_LIST_TYPE)
    UHMM_CASE(ZE_RESULT_ERROR_OVERLAPPING_REGIONS)
    UHMM_CASE(ZE_RESULT_ERROR_UNKNOWN)
#undef UHMM_CASE
    default:
      return nullptr;
  }
}

absl::StatusOr<const Loader*> Load(const std::string& path) {
  auto l = std::make_unique<Loader>();
  l->path = path;
  // The tracing layer (launch tracking) is chosen by the loader at its first zeInit. An explicit
  // ZE_ENABLE_TRACING_LAYER=0 from the user wins.
  setenv("ZE_ENABLE_TRACING_LAYER", "1", /*overwrite=*/0);
  l->handle = dlopen(l->path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (l->handle == nullptr) {
    const char* err = dlerror();
    return absl::UnavailableError(absl::StrFormat(
        "the Level Zero loader %s could not be loaded (%s): install libze1 (Debian/Ubuntu) or "
        "level-zero (Intel's packages)",
        l->path, err ? err : "unknown error"));
  }
  std::string missing;
#define UHMM_RESOLVE(name)                                                \
  l->name = reinterpret_cast<decltype(l->name)>(dlsym(l->handle, #name)); \
  if (l->name == nullptr) missing += missing.empty() ? #name : ", " #name;
  UHMM_ZE_FUNCTIONS(UHMM_RESOLVE)
#undef UHMM_RESOLVE
  if (!missing.empty()) {
    return absl::UnavailableError(absl::StrFormat(
        "the Level Zero loader %s lacks %s; uhmm needs loader 1.8 or newer", l->path, missing));
  }
#define UHMM_RESOLVE_OPTIONAL(name) l->name = reinterpret_cast<decltype(l->name)>(dlsym(l->handle, #name));
  UHMM_ZEL_TRACER_FUNCTIONS(UHMM_RESOLVE_OPTIONAL)
#undef UHMM_RESOLVE_OPTIONAL
  if (l->zelTracerCreate == nullptr || l->zelTracerDestroy == nullptr ||
      l->zelTracerSetPrologues == nullptr || l->zelTracerSetEpilogues == nullptr ||
      l->zelTracerSetEnabled == nullptr) {
    l->zelTracerCreate = nullptr;  // all or nothing
  }
  if (ze_result_t r = l->zeInit(ZE_INIT_FLAG_GPU_ONLY); r != ZE_RESULT_SUCCESS) {
    return absl::UnavailableError(
        absl::StrFormat("zeInit found no Level Zero GPU driver (%s): install Intel's compute runtime "
                        "(intel-level-zero-gpu / libze-intel-gpu1) on a machine with an Intel GPU",
                        ZeStatus(r, "zeInit").message()));
  }
  // Registered after zeInit, so it runs before the loader's and its layers' static destructors.
  std::atexit([] { g_exiting.store(true, std::memory_order_release); });
  return l.release();  // process lifetime: Level Zero objects may be released at exit
}

}  // namespace

bool ProcessExiting() { return g_exiting.load(std::memory_order_acquire); }

absl::StatusOr<const Loader*> LoadLoader(const std::string& path) {
  static std::mutex mu;
  static auto* loaded = new std::map<std::string, absl::StatusOr<const Loader*>>();  // process lifetime
  const std::string lib = path.empty() ? "libze_loader.so.1" : path;
  std::lock_guard<std::mutex> lock(mu);
  auto it = loaded->find(lib);
  if (it == loaded->end()) it = loaded->emplace(lib, Load(lib)).first;
  return it->second;
}

absl::Status ZeStatus(ze_result_t r, const char* call) {
  if (r == ZE_RESULT_SUCCESS) return absl::OkStatus();
  const char* name = ResultName(r);
  std::string msg = name ? absl::StrFormat("%s: %s", call, name)
                         : absl::StrFormat("%s: ze_result_t %#x", call, static_cast<unsigned>(r));
  switch (r) {
    case ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY:
    case ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY:
      return absl::ResourceExhaustedError(msg);
    case ZE_RESULT_ERROR_INVALID_ARGUMENT:
    case ZE_RESULT_ERROR_INVALID_NULL_HANDLE:
    case ZE_RESULT_ERROR_INVALID_NULL_POINTER:
    case ZE_RESULT_ERROR_INVALID_SIZE:
    case ZE_RESULT_ERROR_UNSUPPORTED_SIZE:
    case ZE_RESULT_ERROR_UNSUPPORTED_ALIGNMENT:
    case ZE_RESULT_ERROR_INVALID_ENUMERATION:
      return absl::InvalidArgumentError(msg);
    case ZE_RESULT_ERROR_UNINITIALIZED:
    case ZE_RESULT_ERROR_UNSUPPORTED_VERSION:
    case ZE_RESULT_ERROR_UNSUPPORTED_FEATURE:
    case ZE_RESULT_ERROR_DEPENDENCY_UNAVAILABLE:
    case ZE_RESULT_ERROR_NOT_AVAILABLE:
      return absl::UnavailableError(msg);
    default:
      return absl::AbortedError(msg);  // a device error: the fault path turns it into SIGBUS
  }
}

}  // namespace uhmm::level_zero
