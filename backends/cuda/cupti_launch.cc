// CUPTI launch interception; see cupti_launch.h.
#include "backends/cuda/cupti_launch.h"

#include <cupti.h>
#include <dlfcn.h>
#include <sched.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "backends/cuda/copy_spans.h"

#ifndef UHMM_CUPTI_DIRS
#define UHMM_CUPTI_DIRS ""
#endif

namespace uhmm::cuda {

struct Cupti {
  void* handle = nullptr;
  std::string path;
  decltype(&::cuptiSubscribe) subscribe = nullptr;
  decltype(&::cuptiUnsubscribe) unsubscribe = nullptr;
  decltype(&::cuptiEnableCallback) enable_callback = nullptr;
  decltype(&::cuptiGetResultString) result_string = nullptr;
};

namespace {

// Loads libcupti once per process and `configured` path (Config::cupti_library; empty: search).
absl::StatusOr<const Cupti*> LoadCupti(const std::string& configured) {
  static std::mutex mu;
  static auto* loaded = new std::map<std::string, absl::StatusOr<const Cupti*>>();  // process lifetime
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = loaded->find(configured); it != loaded->end()) return it->second;
  absl::StatusOr<const Cupti*> result = [&]() -> absl::StatusOr<const Cupti*> {
    std::vector<std::string> candidates;
    if (!configured.empty()) candidates.push_back(configured);
    const std::string soname = absl::StrFormat("libcupti.so.%d", CUDA_VERSION / 1000);
    candidates.push_back(soname);
    // The toolkit this was built with, then the usual install folders.
    for (absl::string_view dir : absl::StrSplit(UHMM_CUPTI_DIRS, ':', absl::SkipEmpty())) {
      candidates.push_back(absl::StrFormat("%s/%s", std::string(dir), soname));
    }
    const std::string versioned =
        absl::StrFormat("/usr/local/cuda-%d.%d", CUDA_VERSION / 1000, CUDA_VERSION % 1000 / 10);
    for (const std::string& root : {std::string("/usr/local/cuda"), versioned}) {
      for (const char* sub : {"lib64", "extras/CUPTI/lib64", "lib", "targets/x86_64-linux/lib"}) {
        candidates.push_back(absl::StrFormat("%s/%s/%s", root, sub, soname));
      }
    }
    std::string tried;
    auto c = std::make_unique<Cupti>();
    for (const std::string& path : candidates) {
      c->handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (c->handle != nullptr) {
        c->path = path;
        break;
      }
      const char* err = dlerror();
      tried += absl::StrFormat("%s%s", tried.empty() ? "" : "; ", err ? err : path);
    }
    if (c->handle == nullptr) {
      return absl::UnavailableError(absl::StrFormat(
          "CUPTI (%s) not found, set UHMM_CUPTI_LIBRARY (Config::cupti_library): %s", soname, tried));
    }
    c->subscribe = reinterpret_cast<decltype(c->subscribe)>(dlsym(c->handle, "cuptiSubscribe"));
    c->unsubscribe = reinterpret_cast<decltype(c->unsubscribe)>(dlsym(c->handle, "cuptiUnsubscribe"));
    c->enable_callback =
        reinterpret_cast<decltype(c->enable_callback)>(dlsym(c->handle, "cuptiEnableCallback"));
    c->result_string = reinterpret_cast<decltype(c->result_string)>(dlsym(c->handle, "cuptiGetResultString"));
    if (!c->subscribe || !c->unsubscribe || !c->enable_callback || !c->result_string) {
      return absl::UnavailableError(absl::StrFormat("%s lacks the callback API", c->path));
    }
    return c.release();  // process lifetime
  }();
  loaded->emplace(configured, result);
  return result;
}

std::string CuptiError(const Cupti& c, CUptiResult r) {
  const char* s = nullptr;
  if (c.result_string(r, &s) != CUPTI_SUCCESS || s == nullptr) return absl::StrFormat("CUptiResult %d", r);
  return s;
}

// Every driver entry point that queues device work running user kernels.
constexpr CUpti_CallbackId kLaunchCallbacks[] = {
    CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel_ptsz,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchKernelEx,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchKernelEx_ptsz,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchCooperativeKernel,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchCooperativeKernel_ptsz,
    CUPTI_DRIVER_TRACE_CBID_cuGraphLaunch,
    CUPTI_DRIVER_TRACE_CBID_cuGraphLaunch_ptsz,
};

// The stream a launch goes to, from the entry point's parameters.
CUstream LaunchStream(CUpti_CallbackId cbid, const void* params) {
  switch (cbid) {
    case CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel:
      return static_cast<const cuLaunchKernel_params*>(params)->hStream;
    case CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel_ptsz:
      return static_cast<const cuLaunchKernel_ptsz_params*>(params)->hStream;
    case CUPTI_DRIVER_TRACE_CBID_cuLaunchKernelEx: {
      const CUlaunchConfig* config = static_cast<const cuLaunchKernelEx_params*>(params)->config;
      return config ? config->hStream : nullptr;
    }
    case CUPTI_DRIVER_TRACE_CBID_cuLaunchKernelEx_ptsz: {
      const CUlaunchConfig* config = static_cast<const cuLaunchKernelEx_ptsz_params*>(params)->config;
      return config ? config->hStream : nullptr;
    }
    case CUPTI_DRIVER_TRACE_CBID_cuLaunchCooperativeKernel:
      return static_cast<const cuLaunchCooperativeKernel_params*>(params)->hStream;
    case CUPTI_DRIVER_TRACE_CBID_cuLaunchCooperativeKernel_ptsz:
      return static_cast<const cuLaunchCooperativeKernel_ptsz_params*>(params)->hStream;
    case CUPTI_DRIVER_TRACE_CBID_cuGraphLaunch:
      return static_cast<const cuGraphLaunch_params*>(params)->hStream;
    case CUPTI_DRIVER_TRACE_CBID_cuGraphLaunch_ptsz:
      return static_cast<const cuGraphLaunch_ptsz_params*>(params)->hStream;
    default:
      return nullptr;
  }
}

thread_local bool t_in_listener = false;
thread_local int t_backend_calls = 0;

void CUPTIAPI OnCallback(void* userdata, CUpti_CallbackDomain domain, CUpti_CallbackId cbid,
                         const void* data) {
  const auto* info = static_cast<const CUpti_CallbackData*>(data);
  if (domain != CUPTI_CB_DOMAIN_DRIVER_API || info->callbackSite != CUPTI_API_ENTER) return;
  auto* li = static_cast<LaunchInterceptor*>(userdata);
  const bool launch =
      std::find(std::begin(kLaunchCallbacks), std::end(kLaunchCallbacks), cbid) != std::end(kLaunchCallbacks);
  if (launch) {
    li->OnLaunch(info->context, LaunchStream(cbid, info->functionParams));
    return;
  }
  CopySpan spans[2];
  if (const int n = CopySpans(cbid, info->functionParams, spans); n > 0) li->OnCopy(info->context, spans, n);
}

}  // namespace

absl::StatusOr<std::unique_ptr<LaunchInterceptor>> LaunchInterceptor::Create(
    std::vector<CUcontext> contexts, LaunchListener* listener, const std::string& cupti_library) {
  absl::StatusOr<const Cupti*> cupti = LoadCupti(cupti_library);
  if (!cupti.ok()) return cupti.status();
  const Cupti& c = **cupti;
  std::unique_ptr<LaunchInterceptor> li(new LaunchInterceptor(std::move(contexts), listener));
  li->cupti_ = &c;
  CUpti_SubscriberHandle sub = nullptr;
  CUptiResult r = c.subscribe(&sub, &OnCallback, li.get());
  if (r != CUPTI_SUCCESS) {
    return absl::UnavailableError(
        absl::StrFormat("cuptiSubscribe: %s%s", CuptiError(c, r),
                        r == CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED
                            ? " (another CUPTI client, such as a profiler, is attached)"
                            : ""));
  }
  li->subscriber_ = sub;
  std::vector<CUpti_CallbackId> cbids(std::begin(kLaunchCallbacks), std::end(kLaunchCallbacks));
  cbids.insert(cbids.end(), kCopyCallbacks, kCopyCallbacks + kCopyCallbackCount);
  for (CUpti_CallbackId cbid : cbids) {
    r = c.enable_callback(1, sub, CUPTI_CB_DOMAIN_DRIVER_API, cbid);
    if (r != CUPTI_SUCCESS) {
      Retire(std::move(li));  // subscribed: must not be freed
      return absl::UnavailableError(
          absl::StrFormat("cuptiEnableCallback(driver cbid %u): %s", cbid, CuptiError(c, r)));
    }
  }
  return li;
}

void LaunchInterceptor::Shutdown() {
  listener_.store(nullptr, std::memory_order_release);
  if (subscriber_ != nullptr) {
    cupti_->unsubscribe(static_cast<CUpti_SubscriberHandle>(subscriber_));
    subscriber_ = nullptr;
  }
  while (in_flight_.load(std::memory_order_acquire) != 0) sched_yield();
}

void LaunchInterceptor::Retire(std::unique_ptr<LaunchInterceptor> li) {
  if (li == nullptr) return;
  li->Shutdown();
  (void)li.release();  // see the header
}

bool InsideBackendCall() { return t_backend_calls > 0; }
BackendCall::BackendCall() { ++t_backend_calls; }
BackendCall::~BackendCall() { --t_backend_calls; }

int LaunchInterceptor::OrdinalOf(CUcontext context) const {
  for (size_t i = 0; i < contexts_.size(); ++i) {
    if (contexts_[i] == context) return static_cast<int>(i);
  }
  return -1;
}

void LaunchInterceptor::OnCopy(CUcontext context, const CopySpan* spans, int n) {
  // uhmm's own copies (fault-backs, pushes) run inside the backend, never through the listener.
  if (t_in_listener || InsideBackendCall()) return;
  const int ordinal = OrdinalOf(context);
  if (ordinal < 0) return;
  in_flight_.fetch_add(1, std::memory_order_acq_rel);
  if (LaunchListener* l = listener_.load(std::memory_order_acquire)) {
    t_in_listener = true;
    for (int i = 0; i < n; ++i) {
      if (spans[i].bytes != 0) l->BeforeCopy(ordinal, spans[i].start, spans[i].bytes);
    }
    t_in_listener = false;
  }
  in_flight_.fetch_sub(1, std::memory_order_acq_rel);
}

void LaunchInterceptor::OnLaunch(CUcontext context, CUstream stream) {
  // Our own driver calls from inside the listener never launch kernels, but stay safe.
  const int ordinal = t_in_listener ? -1 : OrdinalOf(context);
  if (ordinal < 0) return;
  in_flight_.fetch_add(1, std::memory_order_acq_rel);
  if (LaunchListener* l = listener_.load(std::memory_order_acquire)) {
    t_in_listener = true;
    l->BeforeLaunch(ordinal, stream);
    t_in_listener = false;
  }
  in_flight_.fetch_sub(1, std::memory_order_acq_rel);
}

}  // namespace uhmm::cuda
