// A stand-in for an unmodified CUDA program built with nvcc's static runtime: it reaches the driver
// only through dlopen("libcuda.so.1") and cuGetProcAddress, as that runtime does. Under uhmm-run
// (tests/uhmm_run_test.sh) its managed allocation must be uhmm's: the CPU writes it, a cuMemsetD8
// changes part of it, and the CPU must read the set bytes and its own around them.
// Prints "ok: ..." and exits 0, or says what went wrong and exits 1.
#include <cuda.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstring>

namespace {

using GetProc = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
GetProc g_get_proc = nullptr;

template <typename Fn>
Fn Entry(const char* name) {
  void* fn = nullptr;
  CUdriverProcAddressQueryResult found;
  if (g_get_proc(name, &fn, CUDA_VERSION, CU_GET_PROC_ADDRESS_DEFAULT, &found) != CUDA_SUCCESS)
    return nullptr;
  return reinterpret_cast<Fn>(fn);
}

int Fail(const char* what, int r) {
  std::fprintf(stderr, "uvm_dlopen_program: %s failed (%d)\n", what, r);
  return 1;
}

}  // namespace

int main() {
  void* driver = dlopen("libcuda.so.1", RTLD_NOW);
  if (driver == nullptr) return Fail("dlopen(libcuda.so.1)", 0);
  g_get_proc = reinterpret_cast<GetProc>(dlsym(driver, "cuGetProcAddress_v2"));
  if (g_get_proc == nullptr) return Fail("cuGetProcAddress_v2", 0);
  auto init = Entry<decltype(&cuInit)>("cuInit");
  auto retain = Entry<decltype(&cuDevicePrimaryCtxRetain)>("cuDevicePrimaryCtxRetain");
  auto set_current = Entry<decltype(&cuCtxSetCurrent)>("cuCtxSetCurrent");
  auto alloc_managed = Entry<decltype(&cuMemAllocManaged)>("cuMemAllocManaged");
  auto memset8 = Entry<decltype(&cuMemsetD8)>("cuMemsetD8");
  auto attribute = Entry<decltype(&cuPointerGetAttribute)>("cuPointerGetAttribute");
  auto mem_free = Entry<decltype(&cuMemFree)>("cuMemFree");
  if (!init || !retain || !set_current || !alloc_managed || !memset8 || !attribute || !mem_free)
    return Fail("cuGetProcAddress of an entry point", 0);
  CUcontext ctx;
  if (int r = init(0)) return Fail("cuInit", r);
  if (int r = retain(&ctx, 0)) return Fail("cuDevicePrimaryCtxRetain", r);
  if (int r = set_current(ctx)) return Fail("cuCtxSetCurrent", r);
  const size_t bytes = 3 << 20;
  CUdeviceptr p = 0;
  if (int r = alloc_managed(&p, bytes, CU_MEM_ATTACH_GLOBAL)) return Fail("cuMemAllocManaged", r);
  auto* b = reinterpret_cast<unsigned char*>(p);
  std::memset(b, 1, bytes);
  if (int r = memset8(p + 4096, 2, 1 << 20)) return Fail("cuMemsetD8", r);
  for (size_t i = 0; i < bytes; ++i) {
    const unsigned char want = i >= 4096 && i < 4096 + (1 << 20) ? 2 : 1;
    if (b[i] != want) {
      std::fprintf(stderr, "uvm_dlopen_program: byte %zu is %d, not %d\n", i, b[i], want);
      return 1;
    }
  }
  CUdeviceptr start = 0;
  if (int r = attribute(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, p + 100))
    return Fail("cuPointerGetAttribute", r);
  if (start != p) return Fail("RANGE_START_ADDR", 0);
  if (int r = mem_free(p)) return Fail("cuMemFree", r);
  std::printf("ok: a managed allocation made through dlopen(libcuda.so.1) is coherent\n");
  return 0;
}
