// uhmm memory for GPU frameworks; see framework_allocator.h.
#include "backends/cuda/frameworks/framework_allocator.h"

#include <cuda.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>

#include "absl/strings/str_format.h"
#include "backends/cuda/cuda_driver.h"
#include "uhmm/uhmm.hpp"

namespace {

using AllocManaged = CUresult (*)(CUdeviceptr*, size_t, unsigned int);
using Free = CUresult (*)(CUdeviceptr);
using PointerAttribute = CUresult (*)(void*, CUpointer_attribute, CUdeviceptr);

struct Allocator {
  std::mutex mu;  // guards everything below; never held across a wait for the GPU
  bool ready = false;
  std::string mode = "uhmm: no allocation yet";  // how allocations are served
  std::string last_error;                        // the last failure, if any
  int device = -1;
  // Under uhmm-run: the interposer's entry points.
  AllocManaged interposed_alloc = nullptr;
  Free interposed_free = nullptr;
  // Otherwise: this library's runtime, and what a free needs from the driver.
  std::unique_ptr<uhmm::Runtime> rt;
  CUcontext context = nullptr;
  const uhmm::cuda::Driver* driver = nullptr;  // the one the runtime loaded (cuda_driver.h)
};
Allocator& A() {
  static auto* a = new Allocator();  // process lifetime: frameworks free during exit
  return *a;
}

// Makes the allocator serve `device`; false with a.last_error set when it cannot.
bool Ready(Allocator& a, int device) {
  if (a.ready) {
    if (device == a.device) return true;
    a.last_error = absl::StrFormat(
        "uhmm: GPU %d asked for, but this process's uhmm runtime serves GPU %d (one GPU per process)", device,
        a.device);
    return false;
  }
  // Frameworks load the driver privately (RTLD_LOCAL): ask the loaded libcuda.so.1 itself.
  void* loaded = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (loaded != nullptr && dlsym(loaded, "uhmm_interpose_driver") != nullptr) {
    a.interposed_alloc = reinterpret_cast<AllocManaged>(dlsym(loaded, "cuMemAllocManaged"));
    a.interposed_free = reinterpret_cast<Free>(dlsym(loaded, "cuMemFree_v2"));
    auto attribute = reinterpret_cast<PointerAttribute>(dlsym(loaded, "cuPointerGetAttribute"));
    if (a.interposed_alloc == nullptr || a.interposed_free == nullptr || attribute == nullptr) {
      a.last_error = "uhmm: the interposer under uhmm-run lacks its managed-memory entry points";
      return false;
    }
    // Which GPU its runtime serves: ask it of a first allocation.
    CUdeviceptr probe = 0;
    int ordinal = -1;
    if (CUresult r = a.interposed_alloc(&probe, 4096, CU_MEM_ATTACH_GLOBAL); r != CUDA_SUCCESS) {
      a.last_error = absl::StrFormat("uhmm: cuMemAllocManaged under uhmm-run failed (CUresult %d)", r);
      return false;
    }
    attribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, probe);
    a.interposed_free(probe);
    a.device = ordinal;
    a.ready = true;
    a.mode = absl::StrFormat("uhmm-run (the interposer's runtime on GPU %d)", ordinal);
    return Ready(a, device);
  }
  uhmm::Config c = uhmm::Config::FromEnv();
  c.backend = "cuda";
  c.cuda_device = device;
  absl::StatusOr<std::unique_ptr<uhmm::Runtime>> rt = uhmm::Runtime::Create(c);
  if (!rt.ok()) {
    a.last_error = absl::StrFormat("uhmm: could not start: %s", rt.status().message());
    return false;
  }
  // The driver the backend loaded (loaded once per process, so this only looks it up): what a free
  // needs to wait for the GPU.
  absl::StatusOr<const uhmm::cuda::Driver*> driver = uhmm::cuda::LoadDriver(c.cuda_driver);
  if (!driver.ok()) {
    a.last_error = absl::StrFormat("uhmm: %s", driver.status().message());
    return false;
  }
  a.driver = *driver;
  absl::StatusOr<uhmm_native_handles_t> handles = (*rt)->NativeHandles(0);
  a.context = handles.ok() ? static_cast<CUcontext>(handles->context) : nullptr;
  a.rt = std::move(*rt);
  a.device = device;
  a.ready = true;
  a.mode = absl::StrFormat("uhmm (own runtime on GPU %d)", device);
  return true;
}

void* Allocate(ssize_t size, int device) {
  if (size == 0) return nullptr;  // an empty tensor: nothing to allocate, nothing wrong
  Allocator& a = A();
  std::lock_guard<std::mutex> lock(a.mu);
  if (size < 0) {
    a.last_error = absl::StrFormat("uhmm: allocation of %d bytes refused", size);
  } else if (Ready(a, device)) {
    if (a.interposed_alloc != nullptr) {
      CUdeviceptr p = 0;
      const CUresult r = a.interposed_alloc(&p, static_cast<size_t>(size), CU_MEM_ATTACH_GLOBAL);
      if (r == CUDA_SUCCESS) return reinterpret_cast<void*>(p);
      a.last_error =
          absl::StrFormat("uhmm: cuMemAllocManaged(%d bytes) under uhmm-run failed (CUresult %d)", size, r);
    } else {
      absl::StatusOr<void*> p = a.rt->Allocate(static_cast<size_t>(size));
      if (p.ok()) return *p;
      a.last_error = absl::StrFormat("uhmm: %s", p.status().message());
    }
  }
  std::fprintf(stderr, "%s\n", a.last_error.c_str());
  return nullptr;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) void* uhmm_fw_malloc(ssize_t size, int device, void* stream) {
  (void)stream;  // uhmm memory is usable from every stream at once
  return Allocate(size, device);
}

__attribute__((visibility("default"))) void* uhmm_torch_malloc(ssize_t size, int device, void* stream) {
  (void)stream;
  void* p = Allocate(size, device);
  if (p == nullptr && size != 0) {
    std::fprintf(stderr,
                 "uhmm: PyTorch's pluggable allocator cannot report a failed allocation (it would use a "
                 "NULL tensor): stopping\n");
    std::abort();
  }
  return p;
}

__attribute__((visibility("default"))) void uhmm_fw_free(void* ptr, ssize_t size, int device, void* stream) {
  (void)size;
  (void)device;
  (void)stream;  // the tensor may be in use on other streams too: the whole GPU is waited for
  if (ptr == nullptr) return;
  Allocator& a = A();
  Free interposed_free;
  uhmm::Runtime* rt;
  CUcontext context;
  const uhmm::cuda::Driver* driver;
  {
    std::lock_guard<std::mutex> lock(a.mu);
    interposed_free = a.interposed_free;
    rt = a.rt.get();
    context = a.context;
    driver = a.driver;
  }
  if (interposed_free != nullptr) {
    // The interposer's cuMemFree waits for the GPU's queued work itself.
    if (CUresult r = interposed_free(reinterpret_cast<CUdeviceptr>(ptr)); r != CUDA_SUCCESS)
      std::fprintf(stderr, "uhmm: cuMemFree(%p) under uhmm-run failed (CUresult %d)\n", ptr, r);
    return;
  }
  if (rt == nullptr) {
    std::fprintf(stderr, "uhmm: free of %p, which this allocator did not return (no allocation yet)\n", ptr);
    return;
  }
  CUcontext current = nullptr;
  driver->cuCtxGetCurrent(&current);
  if (current != context) driver->cuCtxSetCurrent(context);
  const CUresult synced = driver->cuCtxSynchronize();
  if (current != context) driver->cuCtxSetCurrent(current);
  if (synced != CUDA_SUCCESS) {
    std::fprintf(stderr,
                 "uhmm: waiting for the GPU before freeing %p failed (CUresult %d, a graph capture?): the "
                 "memory is kept, not freed under work that may still use it\n",
                 ptr, synced);
    return;
  }
  if (absl::Status s = rt->Free(ptr); !s.ok())
    std::fprintf(stderr, "uhmm: %s\n", std::string(s.message()).c_str());
}

__attribute__((visibility("default"))) const char* uhmm_fw_status(void) {
  Allocator& a = A();
  std::lock_guard<std::mutex> lock(a.mu);
  static thread_local std::string copy;
  copy = a.last_error.empty() ? a.mode : a.mode + "; last failure: " + a.last_error;
  return copy.c_str();
}

}  // extern "C"
