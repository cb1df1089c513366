// uhmm memory for GPU frameworks; see framework_allocator.h.
#include "backends/cuda/frameworks/framework_allocator.h"

#include <cuda.h>
#include <dlfcn.h>

#include <cstdio>
#include <memory>
#include <mutex>
#include <string>

#include "absl/strings/str_format.h"
#include "uhmm/uhmm.hpp"

namespace {

using AllocManaged = CUresult (*)(CUdeviceptr*, size_t, unsigned int);
using Free = CUresult (*)(CUdeviceptr);
using StreamSynchronize = CUresult (*)(CUstream);

struct Allocator {
  std::mutex mu;
  bool ready = false;
  std::string status = "uhmm: no allocation yet";
  // Under uhmm-run: the interposer's entry points.
  AllocManaged interposed_alloc = nullptr;
  Free interposed_free = nullptr;
  // Otherwise: this library's runtime.
  std::unique_ptr<uhmm::Runtime> rt;
  int device = -1;
  StreamSynchronize stream_sync = nullptr;
};
Allocator& A() {
  static auto* a = new Allocator();  // process lifetime: frameworks free during exit
  return *a;
}

// The driver the program (or uhmm) has loaded: libcuda.so.1, or UHMM_CUDA_DRIVER's.
void* LoadedDriver() {
  if (void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD)) return h;
  const uhmm::Config c = uhmm::Config::FromEnv();
  return c.cuda_driver.empty() ? nullptr : dlopen(c.cuda_driver.c_str(), RTLD_NOW | RTLD_NOLOAD);
}

// Makes the allocator serve `device`; false with a.status set when it cannot.
bool Ready(Allocator& a, int device) {
  if (a.ready) {
    if (a.rt == nullptr || device == a.device) return true;
    a.status = absl::StrFormat(
        "uhmm: GPU %d asked for, but this process's uhmm runtime serves GPU %d (one per process)", device,
        a.device);
    return false;
  }
  // Frameworks load the driver privately (RTLD_LOCAL): ask the loaded libcuda.so.1 itself.
  void* loaded = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (loaded != nullptr && dlsym(loaded, "uhmm_interpose_driver") != nullptr) {
    a.interposed_alloc = reinterpret_cast<AllocManaged>(dlsym(loaded, "cuMemAllocManaged"));
    a.interposed_free = reinterpret_cast<Free>(dlsym(loaded, "cuMemFree_v2"));
    if (a.interposed_alloc != nullptr && a.interposed_free != nullptr) {
      a.ready = true;
      a.status = "uhmm-run (the interposer's runtime)";
      return true;
    }
  }
  uhmm::Config c = uhmm::Config::FromEnv();
  c.backend = "cuda";
  c.cuda_device = device;
  absl::StatusOr<std::unique_ptr<uhmm::Runtime>> rt = uhmm::Runtime::Create(c);
  if (!rt.ok()) {
    a.status = absl::StrFormat("uhmm: could not start: %s", rt.status().message());
    return false;
  }
  if (void* driver = LoadedDriver()) {
    using GetProc = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
    void* fn = nullptr;
    CUdriverProcAddressQueryResult found;
    if (auto get = reinterpret_cast<GetProc>(dlsym(driver, "cuGetProcAddress_v2"));
        get != nullptr &&
        get("cuStreamSynchronize", &fn, CUDA_VERSION, CU_GET_PROC_ADDRESS_DEFAULT, &found) == CUDA_SUCCESS) {
      a.stream_sync = reinterpret_cast<StreamSynchronize>(fn);
    }
  }
  if (a.stream_sync == nullptr) {
    a.status = "uhmm: no cuStreamSynchronize in the loaded driver: frees could not wait for their stream";
    return false;
  }
  a.rt = std::move(*rt);
  a.device = device;
  a.ready = true;
  a.status = absl::StrFormat("uhmm (own runtime on GPU %d)", device);
  return true;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) void* uhmm_fw_malloc(ssize_t size, int device, void* stream) {
  (void)stream;  // uhmm memory is usable from every stream at once
  Allocator& a = A();
  std::lock_guard<std::mutex> lock(a.mu);
  if (size <= 0) {
    a.status = absl::StrFormat("uhmm: allocation of %d bytes refused", size);
  } else if (Ready(a, device)) {
    if (a.interposed_alloc != nullptr) {
      CUdeviceptr p = 0;
      const CUresult r = a.interposed_alloc(&p, static_cast<size_t>(size), CU_MEM_ATTACH_GLOBAL);
      if (r == CUDA_SUCCESS) return reinterpret_cast<void*>(p);
      a.status =
          absl::StrFormat("uhmm: cuMemAllocManaged(%d bytes) under uhmm-run failed (CUresult %d)", size, r);
    } else {
      absl::StatusOr<void*> p = a.rt->Allocate(static_cast<size_t>(size));
      if (p.ok()) return *p;
      a.status = absl::StrFormat("uhmm: %s", p.status().message());
    }
  }
  std::fprintf(stderr, "%s\n", a.status.c_str());
  return nullptr;
}

__attribute__((visibility("default"))) void uhmm_fw_free(void* ptr, ssize_t size, int device, void* stream) {
  (void)size;
  (void)device;
  if (ptr == nullptr) return;
  Allocator& a = A();
  std::lock_guard<std::mutex> lock(a.mu);
  if (a.interposed_free != nullptr) {
    // The interposer's cuMemFree waits for the GPU's queued work itself.
    if (CUresult r = a.interposed_free(reinterpret_cast<CUdeviceptr>(ptr)); r != CUDA_SUCCESS)
      std::fprintf(stderr, "uhmm: cuMemFree(%p) under uhmm-run failed (CUresult %d)\n", ptr, r);
    return;
  }
  if (a.rt == nullptr) {
    std::fprintf(stderr, "uhmm: free of %p, which this allocator did not return (no allocation yet)\n", ptr);
    return;
  }
  // Kernels queued on the stream may still use the memory: the framework frees in stream order.
  if (a.stream_sync != nullptr) {
    if (CUresult r = a.stream_sync(static_cast<CUstream>(stream)); r != CUDA_SUCCESS)
      std::fprintf(stderr, "uhmm: cuStreamSynchronize before freeing %p failed (CUresult %d)\n", ptr, r);
  }
  if (absl::Status s = a.rt->Free(ptr); !s.ok())
    std::fprintf(stderr, "uhmm: %s\n", std::string(s.message()).c_str());
}

__attribute__((visibility("default"))) const char* uhmm_fw_status(void) {
  Allocator& a = A();
  std::lock_guard<std::mutex> lock(a.mu);
  static thread_local std::string copy;
  copy = a.status;
  return copy.c_str();
}

}  // extern "C"
