// The interposer's process-wide uhmm runtime; see managed_memory.h.
#define __CUDA_API_VERSION_INTERNAL 1  // every exported form declared (real_driver.h)
#include "backends/cuda/interpose/managed_memory.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "backends/cuda/interpose/interpose.h"
#include "backends/cuda/interpose/real_driver.h"

namespace uhmm::interpose {
namespace {

std::shared_mutex g_mu;             // exclusive: making or tearing down the runtime
ManagedMemory* g_memory = nullptr;  // guarded by g_mu
bool g_unavailable = false;         // guarded by g_mu: uhmm could not start; use the driver's

}  // namespace

CUresult ToCuResult(const char* call, const absl::Status& status) {
  if (status.ok()) return CUDA_SUCCESS;
  std::fprintf(stderr, "uhmm-run: %s: %s\n", call, std::string(status.message()).c_str());
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted:
      return CUDA_ERROR_OUT_OF_MEMORY;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
      return CUDA_ERROR_INVALID_VALUE;
    case absl::StatusCode::kUnavailable:
      return CUDA_ERROR_NOT_SUPPORTED;
    default:
      return CUDA_ERROR_UNKNOWN;
  }
}

ManagedMemory::ManagedMemory(std::unique_ptr<Runtime> rt, CUdevice device, CUcontext context)
    : rt_(std::move(rt)), device_(device), context_(context) {
  for (int r = 0; r < rt_->device_count(); ++r) {
    absl::StatusOr<uhmm_native_handles_t> h = rt_->NativeHandles(r);
    gpus_.push_back(h.ok() ? static_cast<CUdevice>(reinterpret_cast<intptr_t>(h->device)) : device);
    contexts_.push_back(h.ok() ? static_cast<CUcontext>(h->context) : context);
  }
}

std::optional<int> ManagedMemory::OrdinalOf(CUdevice dev) const {
  for (size_t r = 0; r < gpus_.size(); ++r) {
    if (gpus_[r] == dev) return static_cast<int>(r);
  }
  return std::nullopt;
}

int ManagedMemory::CurrentOrdinal() const {
  if (gpus_.size() < 2) return 0;
  CUdevice dev = 0;
  if (UHMM_REAL(cuCtxGetDevice)(&dev) != CUDA_SUCCESS) return 0;
  std::optional<int> r = OrdinalOf(dev);
  if (!r) {
    static std::once_flag said;
    std::call_once(said, [&] {
      std::fprintf(stderr,
                   "uhmm-run: work queued on GPU %d, which uhmm does not serve (UHMM_CUDA_DEVICES): its "
                   "managed data is made resident on GPU %d instead\n",
                   static_cast<int>(dev), static_cast<int>(gpus_[0]));
    });
  }
  return r.value_or(0);
}

ManagedMemory::~ManagedMemory() {
  {
    std::lock_guard<std::mutex> lock(home_mu_);
    home_stop_ = true;
  }
  home_cv_.notify_all();
  if (home_worker_.joinable()) home_worker_.join();
}

ManagedMemory::Use ManagedMemory::Get() {
  std::shared_lock<std::shared_mutex> lock(g_mu);
  if (g_memory == nullptr) return Use();
  ManagedMemory* mm = g_memory;
  return Use(std::move(lock), mm);
}

ManagedMemory::Use ManagedMemory::GetOrCreate(CUresult* err) {
  *err = CUDA_SUCCESS;
  if (Use u = Get()) return u;
  {
    std::unique_lock<std::shared_mutex> lock(g_mu);
    if (g_memory == nullptr && !g_unavailable) {
      CUdevice dev = 0;
      CUcontext ctx = nullptr;
      if (CUresult r = UHMM_REAL(cuCtxGetCurrent)(&ctx); r != CUDA_SUCCESS || ctx == nullptr) {
        *err = r != CUDA_SUCCESS ? r : CUDA_ERROR_INVALID_CONTEXT;
        return Use();
      }
      if (CUresult r = UHMM_REAL(cuCtxGetDevice)(&dev); r != CUDA_SUCCESS) {
        *err = r;
        return Use();
      }
      Config c = Config::FromEnv();
      c.backend = "cuda";
      c.cuda_device = static_cast<int>(dev);
      if (const char* real = uhmm_interpose_driver()) c.cuda_driver = real;
      c.transparent_launch = false;  // the interposer's own launch entry points do it, without CUPTI
      absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Create(c);
      if (!rt.ok()) {
        g_unavailable = true;
        std::fprintf(stderr,
                     "uhmm-run: uhmm could not start (%s); this program's managed memory is CUDA's own\n",
                     std::string(rt.status().message()).c_str());
        return Use();
      }
      g_memory = new ManagedMemory(std::move(*rt), dev, ctx);
      // Registered after the CUDA runtime's handler (it registers at its initialisation, before any
      // allocation), so it runs first: the runtime goes while the driver still works.
      std::atexit(&ManagedMemory::TearDown);
    }
  }
  return Get();
}

void ManagedMemory::TearDown() {
  ManagedMemory* mm;
  {
    std::unique_lock<std::shared_mutex> lock(g_mu);
    mm = g_memory;
    g_memory = nullptr;
    g_unavailable = true;  // allocations during the rest of exit are the driver's
  }
  delete mm;
}

std::optional<Runtime::Allocation> ManagedMemory::Find(CUdeviceptr addr) const {
  absl::StatusOr<Runtime::Allocation> a = rt_->FindAllocation(reinterpret_cast<const void*>(addr));
  if (!a.ok()) return std::nullopt;
  return *a;
}

CUresult ManagedMemory::ToDevice(const char* call, CUdeviceptr addr, size_t bytes) {
  if (bytes == 0) return CUDA_SUCCESS;
  std::optional<Runtime::Allocation> first = Find(addr);
  std::optional<Runtime::Allocation> last = Find(addr + bytes - 1);
  if (!first && !last) return CUDA_SUCCESS;
  WaitForPrefetchesHome();  // only for managed spans: a copy of other memory never waits for them
  return ToCuResult(call,
                    rt_->MigrateManagedPart(reinterpret_cast<const void*>(addr), bytes, CurrentOrdinal()));
}

CUresult ManagedMemory::AllocationToDevice(const char* call, CUdeviceptr addr) {
  std::optional<Runtime::Allocation> a = Find(addr);
  if (!a) return CUDA_SUCCESS;
  return ToDevice(call, reinterpret_cast<CUdeviceptr>(a->start), a->size);
}

CUresult ManagedMemory::BeforeLaunch(const char* call, CUstream stream) {
  WaitForPrefetchesHome();
  return ToCuResult(call, rt_->SyncForDevice(CurrentOrdinal(), stream));
}

CUresult ManagedMemory::PrefetchHome(const char* call, uintptr_t start, size_t bytes, CUstream stream,
                                     bool per_thread) {
  // A stream being captured into a graph runs nothing now: a worker waiting for it would move the
  // data at the wrong time, and its wait could break the capture.
  CUstreamCaptureStatus capture = CU_STREAM_CAPTURE_STATUS_NONE;
  const CUresult q = per_thread ? UHMM_REAL(cuStreamIsCapturing_ptsz)(stream, &capture)
                                : UHMM_REAL(cuStreamIsCapturing)(stream, &capture);
  if (q == CUDA_SUCCESS && capture != CU_STREAM_CAPTURE_STATUS_NONE) {
    std::fprintf(stderr, "uhmm-run: %s: a prefetch to the CPU cannot be captured into a graph\n", call);
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  }
  // A stream that cannot even be asked (the legacy stream during a global capture, say) cannot take
  // an event either. NOT_FOUND: the driver lacks the query (tests/fake_cuda).
  if (q != CUDA_SUCCESS && q != CUDA_ERROR_NOT_FOUND) return q;
  CUevent ev = nullptr;
  if (CUresult r = UHMM_REAL(cuEventCreate)(&ev, CU_EVENT_DISABLE_TIMING); r != CUDA_SUCCESS) return r;
  const CUresult r =
      per_thread ? UHMM_REAL(cuEventRecord_ptsz)(ev, stream) : UHMM_REAL(cuEventRecord)(ev, stream);
  if (r != CUDA_SUCCESS) {
    UHMM_REAL(cuEventDestroy_v2)(ev);
    std::fprintf(stderr, "uhmm-run: %s: cuEventRecord on the prefetch's stream failed (%d)\n", call, r);
    return r;
  }
  std::lock_guard<std::mutex> lock(home_mu_);
  if (!home_worker_.joinable()) home_worker_ = std::thread([this] { HomeWorker(); });
  home_queue_.push_back({ev, start, bytes});
  ++home_in_flight_;
  home_cv_.notify_all();
  return CUDA_SUCCESS;
}

void ManagedMemory::HomeWorker() {
  UHMM_REAL(cuCtxSetCurrent)(context_);
  std::unique_lock<std::mutex> lock(home_mu_);
  for (;;) {
    home_cv_.wait(lock, [&] { return home_stop_ || !home_queue_.empty(); });
    if (home_queue_.empty()) return;
    const HomeMove m = home_queue_.front();
    home_queue_.pop_front();
    lock.unlock();
    // The stream's work up to the prefetch is done (what its kernels wrote is in device memory);
    // a failed wait is the stream's error, which its own calls report: the data still comes home.
    (void)UHMM_REAL(cuEventSynchronize)(m.after);
    UHMM_REAL(cuEventDestroy_v2)(m.after);
    if (absl::Status s = rt_->Migrate(reinterpret_cast<void*>(m.start), m.bytes, kHost);
        !s.ok() && s.code() != absl::StatusCode::kNotFound) {  // freed meanwhile: nothing to move
      ToCuResult("cuMemPrefetchAsync (to the CPU)", s);
    }
    lock.lock();
    --home_in_flight_;
    home_cv_.notify_all();
  }
}

void ManagedMemory::WaitForPrefetchesHome() {
  std::unique_lock<std::mutex> lock(home_mu_);
  home_cv_.wait(lock, [&] { return home_in_flight_ == 0; });
}

void ManagedMemory::NotePrefetch(uintptr_t allocation, int location) {
  std::lock_guard<std::mutex> lock(prefetch_mu_);
  last_prefetch_[allocation] = location;
}

int ManagedMemory::LastPrefetch(uintptr_t allocation) const {
  std::lock_guard<std::mutex> lock(prefetch_mu_);
  auto it = last_prefetch_.find(allocation);
  return it == last_prefetch_.end() ? CU_DEVICE_INVALID : it->second;
}

CUresult ManagedMemory::Free(uintptr_t start) {
  WaitForPrefetchesHome();
  // Like cuMemFree: work already queued on a GPU may still use the memory. The calling thread may
  // have no context current, or another GPU's (cuMemFree does not care): each of the runtime's, for
  // the wait.
  CUcontext current = nullptr;
  UHMM_REAL(cuCtxGetCurrent)(&current);
  CUresult synced = CUDA_SUCCESS;
  for (CUcontext ctx : contexts_) {
    if (UHMM_REAL(cuCtxSetCurrent)(ctx) == CUDA_SUCCESS && synced == CUDA_SUCCESS) {
      synced = UHMM_REAL(cuCtxSynchronize)();
    }
  }
  UHMM_REAL(cuCtxSetCurrent)(current);
  if (synced != CUDA_SUCCESS) return synced;
  {
    std::lock_guard<std::mutex> lock(prefetch_mu_);
    last_prefetch_.erase(start);
  }
  return ToCuResult("cuMemFree", rt_->Free(reinterpret_cast<void*>(start)));
}

}  // namespace uhmm::interpose
