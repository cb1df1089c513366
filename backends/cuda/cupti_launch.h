// Transparent launches: a CUPTI subscriber on the driver's kernel-launch entry points calls the
// runtime's LaunchListener on API_ENTER, on the launching thread, before the launch is queued; on
// its copy and set entry points (copy_spans.h), LaunchListener::BeforeCopy with what they touch.
// libcupti is loaded at run time (Config::cupti_library / UHMM_CUPTI_LIBRARY, else
// libcupti.so.<major> from the loader path and the toolkit folders).
#ifndef UHMM_BACKENDS_CUDA_CUPTI_LAUNCH_H_
#define UHMM_BACKENDS_CUDA_CUPTI_LAUNCH_H_

#include <cuda.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "backends/cuda/copy_spans.h"
#include "uhmm/backend.h"

namespace uhmm::cuda {

struct Cupti;  // the loaded libcupti (cupti_launch.cc)

// True on a thread inside the CUDA backend's own driver calls (BackendCall): their copies are
// uhmm's, not the program's.
bool InsideBackendCall();
class BackendCall {
 public:
  BackendCall();
  ~BackendCall();
  BackendCall(const BackendCall&) = delete;
  BackendCall& operator=(const BackendCall&) = delete;
};

class LaunchInterceptor {
 public:
  // Calls listener->BeforeLaunch(ordinal, stream) for launches in contexts[ordinal] (one CUPTI
  // subscriber serves every device: CUPTI allows one per process). `cupti_library` is
  // Config::cupti_library: a path to try first, or empty.
  static absl::StatusOr<std::unique_ptr<LaunchInterceptor>> Create(std::vector<CUcontext> contexts,
                                                                   LaunchListener* listener,
                                                                   const std::string& cupti_library);
  // Unsubscribes and waits for callbacks in flight. CUPTI may still be entering a callback as this
  // returns, so owners keep the object alive afterwards (Retire()).
  void Shutdown();
  // Shuts down and leaks the object: a callback racing with the unsubscription then never touches
  // freed memory. A few bytes per runtime with transparent launches.
  static void Retire(std::unique_ptr<LaunchInterceptor> li);

  // From the CUPTI callback, at API_ENTER of a launch in `context` to `stream`.
  void OnLaunch(CUcontext context, CUstream stream);
  // At API_ENTER of a copy or set in `context` that touches `spans` (copy_spans.h).
  void OnCopy(CUcontext context, const CopySpan* spans, int n);

 private:
  LaunchInterceptor(std::vector<CUcontext> contexts, LaunchListener* listener)
      : contexts_(std::move(contexts)), listener_(listener) {}
  // The runtime ordinal of `context`, or -1 for a context uhmm does not serve.
  int OrdinalOf(CUcontext context) const;

  const std::vector<CUcontext> contexts_;
  std::atomic<LaunchListener*> listener_;
  std::atomic<int> in_flight_{0};
  const Cupti* cupti_ = nullptr;  // the library subscribed through
  void* subscriber_ = nullptr;
};

}  // namespace uhmm::cuda

#endif  // UHMM_BACKENDS_CUDA_CUPTI_LAUNCH_H_
