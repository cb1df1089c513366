// An unmodified CUDA Unified Memory program's driver calls, through the interposing libcuda.so.1
// (backends/cuda/interpose) with tests/fake_cuda as "the real driver": managed allocations become
// uhmm's, and copies, sets, launches, prefetches, advice and attributes on them give what
// cudaMallocManaged would. This program links libcuda.so.1 as a CUDA program does; ctest runs it with
// UHMM_REAL_LIBCUDA naming the fake driver. "Kernels" are host functions the fake driver runs on its
// streams, reaching device memory only where the driver maps it (uhmm_fake_cuda_device_view).
#include <cuda.h>
#include <dlfcn.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <thread>
#include <vector>

#include "backends/cuda/interpose/interpose.h"
#include "gtest/gtest.h"

namespace {

constexpr size_t kPage = 4096;

struct Fake {
  CUfunction (*kernel)(void (*)(void**)) = nullptr;
  void* (*view)(CUdeviceptr, size_t) = nullptr;
  void* (*view_on)(CUdeviceptr, size_t, int) = nullptr;  // as one device sees it
};
Fake& fake() {
  static Fake f;
  return f;
}

// A kernel: adds 1 to each uint32_t of (ptr, count), in device memory. Pages without device memory
// are counted in `unmapped` (a GPU would fault there).
std::atomic<int> g_unmapped{0};
void AddOne(void** params) {
  const CUdeviceptr p = *static_cast<CUdeviceptr*>(params[0]);
  const size_t count = *static_cast<size_t*>(params[1]);
  for (size_t i = 0; i < count; ++i) {
    auto* v = static_cast<uint32_t*>(fake().view(p + i * 4, 4));
    if (v == nullptr) {
      g_unmapped.fetch_add(1);
      continue;
    }
    *v += 1;
  }
}
// AddOne as a kernel on device params[2] sees memory: only its own and its peers' blocks.
void AddOneOnDevice(void** params) {
  const CUdeviceptr p = *static_cast<CUdeviceptr*>(params[0]);
  const size_t count = *static_cast<size_t*>(params[1]);
  const int device = *static_cast<int*>(params[2]);
  for (size_t i = 0; i < count; ++i) {
    auto* v = static_cast<uint32_t*>(fake().view_on(p + i * 4, 4, device));
    if (v == nullptr) {
      g_unmapped.fetch_add(1);
      continue;
    }
    *v += 1;
  }
}
// A kernel that spins until *flag is set (by the host, after it queued work behind the kernel).
void SpinUntil(void** params) {
  auto* flag = *static_cast<std::atomic<int>**>(params[0]);
  while (flag->load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

class InterposeUvmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* real = std::getenv("UHMM_REAL_LIBCUDA");
    if (real == nullptr || std::string_view(real) != UHMM_FAKE_CUDA_DRIVER)
      GTEST_SKIP() << "run with UHMM_REAL_LIBCUDA=" << UHMM_FAKE_CUDA_DRIVER;
    void* h = dlopen(UHMM_FAKE_CUDA_DRIVER, RTLD_NOW | RTLD_NOLOAD);
    ASSERT_NE(h, nullptr) << uhmm_interpose_status();
    fake().kernel = reinterpret_cast<CUfunction (*)(void (*)(void**))>(dlsym(h, "uhmm_fake_cuda_kernel"));
    fake().view = reinterpret_cast<void* (*)(CUdeviceptr, size_t)>(dlsym(h, "uhmm_fake_cuda_device_view"));
    fake().view_on =
        reinterpret_cast<void* (*)(CUdeviceptr, size_t, int)>(dlsym(h, "uhmm_fake_cuda_device_view_on"));
    ASSERT_NE(fake().kernel, nullptr);
    ASSERT_EQ(cuInit(0), CUDA_SUCCESS);
    CUdevice dev;
    ASSERT_EQ(cuDeviceGet(&dev, 0), CUDA_SUCCESS);
    ASSERT_EQ(cuDevicePrimaryCtxRetain(&ctx_, dev), CUDA_SUCCESS);
    ASSERT_EQ(cuCtxSetCurrent(ctx_), CUDA_SUCCESS);
    ASSERT_EQ(cuStreamCreate(&stream_, 0), CUDA_SUCCESS);
    self_ = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    ASSERT_NE(self_, nullptr);
  }
  void TearDown() override {
    if (stream_ != nullptr) cuStreamDestroy(stream_);
    if (self_ != nullptr) dlclose(self_);
  }

  CUdeviceptr Managed(size_t bytes) {
    CUdeviceptr p = 0;
    EXPECT_EQ(cuMemAllocManaged(&p, bytes, CU_MEM_ATTACH_GLOBAL), CUDA_SUCCESS);
    return p;
  }
  static uint32_t* U32(CUdeviceptr p) { return reinterpret_cast<uint32_t*>(p); }
  // Runs AddOne over `count` words at p on the stream and waits for it.
  void LaunchAddOne(CUdeviceptr p, size_t count) {
    void* params[] = {&p, &count};
    g_unmapped = 0;
    ASSERT_EQ(cuLaunchKernel(fake().kernel(&AddOne), 1, 1, 1, 1, 1, 1, 0, stream_, params, nullptr),
              CUDA_SUCCESS);
    ASSERT_EQ(cuStreamSynchronize(stream_), CUDA_SUCCESS);
    EXPECT_EQ(g_unmapped.load(), 0) << "the kernel found pages without device memory";
  }
  // True when every page of [p, p+bytes) is in device memory.
  static bool OnDevice(CUdeviceptr p, size_t bytes) {
    for (size_t off = 0; off < bytes; off += kPage) {
      if (fake().view(p + off, 1) == nullptr) return false;
    }
    return true;
  }
  template <typename Fn>
  Fn Self(const char* name) {
    return reinterpret_cast<Fn>(dlsym(self_, name));
  }

  CUcontext ctx_ = nullptr;
  CUstream stream_ = nullptr;
  void* self_ = nullptr;
};

TEST_F(InterposeUvmTest, AManagedAllocationIsUhmmMemoryWithManagedAttributes) {
  const size_t bytes = (1 << 20) + 123;
  const CUdeviceptr p = Managed(bytes);
  ASSERT_NE(p, 0u);
  std::memset(reinterpret_cast<void*>(p), 7, bytes);  // the CPU uses it at once
  int managed = 0, ordinal = -1, mapped = 0;
  unsigned int type = 0;
  CUdeviceptr start = 0, dptr = 0;
  size_t size = 0;
  void* host = nullptr;
  CUcontext ctx = nullptr;
  const CUdeviceptr inner = p + 5000;
  ASSERT_EQ(cuPointerGetAttribute(&managed, CU_POINTER_ATTRIBUTE_IS_MANAGED, inner), CUDA_SUCCESS);
  EXPECT_EQ(managed, 1);
  ASSERT_EQ(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, inner), CUDA_SUCCESS);
  EXPECT_EQ(type, CU_MEMORYTYPE_DEVICE);
  ASSERT_EQ(cuPointerGetAttribute(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, inner), CUDA_SUCCESS);
  EXPECT_EQ(start, p);
  ASSERT_EQ(cuPointerGetAttribute(&size, CU_POINTER_ATTRIBUTE_RANGE_SIZE, inner), CUDA_SUCCESS);
  EXPECT_EQ(size, bytes);
  ASSERT_EQ(cuPointerGetAttribute(&dptr, CU_POINTER_ATTRIBUTE_DEVICE_POINTER, inner), CUDA_SUCCESS);
  EXPECT_EQ(dptr, inner) << "one pointer";
  ASSERT_EQ(cuPointerGetAttribute(&host, CU_POINTER_ATTRIBUTE_HOST_POINTER, inner), CUDA_SUCCESS);
  EXPECT_EQ(host, reinterpret_cast<void*>(inner));
  ASSERT_EQ(cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, inner), CUDA_SUCCESS);
  EXPECT_EQ(ordinal, 0);
  ASSERT_EQ(cuPointerGetAttribute(&ctx, CU_POINTER_ATTRIBUTE_CONTEXT, inner), CUDA_SUCCESS);
  EXPECT_EQ(ctx, ctx_);
  // The runtime API asks for several at once.
  CUpointer_attribute attrs[] = {CU_POINTER_ATTRIBUTE_IS_MANAGED, CU_POINTER_ATTRIBUTE_MAPPED,
                                 CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL};
  managed = 0;
  ordinal = -1;
  void* data[] = {&managed, &mapped, &ordinal};
  ASSERT_EQ(cuPointerGetAttributes(3, attrs, data, inner), CUDA_SUCCESS);
  EXPECT_EQ(managed, 1);
  EXPECT_EQ(mapped, 1);
  EXPECT_EQ(ordinal, 0);
  CUdeviceptr base = 0;
  size = 0;
  ASSERT_EQ(cuMemGetAddressRange(&base, &size, inner), CUDA_SUCCESS);
  EXPECT_EQ(base, p);
  EXPECT_EQ(size, bytes);
  for (size_t i = 0; i < bytes; i += 999) ASSERT_EQ(reinterpret_cast<uint8_t*>(p)[i], 7);
  EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
}

TEST_F(InterposeUvmTest, BadManagedAllocationsAndFreesGetTheDriversErrorsAndLoseNothing) {
  CUdeviceptr p = 0;
  EXPECT_EQ(cuMemAllocManaged(&p, 0, CU_MEM_ATTACH_GLOBAL), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(cuMemAllocManaged(&p, 4096, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(cuMemAllocManaged(&p, 4096, CU_MEM_ATTACH_SINGLE), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(cuMemAllocManaged(nullptr, 4096, CU_MEM_ATTACH_GLOBAL), CUDA_ERROR_INVALID_VALUE);
  p = Managed(3 * kPage);
  std::memset(reinterpret_cast<void*>(p), 0x5a, 3 * kPage);
  EXPECT_EQ(cuMemFree(p + kPage), CUDA_ERROR_INVALID_VALUE) << "a pointer inside the allocation";
  for (size_t i = 0; i < 3 * kPage; ++i) ASSERT_EQ(reinterpret_cast<uint8_t*>(p)[i], 0x5a) << i;
  EXPECT_EQ(cuStreamAttachMemAsync(stream_, p, 0, CU_MEM_ATTACH_GLOBAL), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamAttachMemAsync(stream_, p + kPage, 0, CU_MEM_ATTACH_HOST), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(cuStreamAttachMemAsync(stream_, p, 0, 0x40), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(cuStreamAttachMemAsync(stream_, p, 4 * kPage, CU_MEM_ATTACH_SINGLE), CUDA_ERROR_INVALID_VALUE);
  ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
  EXPECT_EQ(cuMemFree(p), CUDA_ERROR_INVALID_VALUE) << "a double free: the driver's answer";
  CUmemLocation gpu{CU_MEM_LOCATION_TYPE_DEVICE, 0};
  EXPECT_EQ(cuMemPrefetchAsync(p, kPage, gpu, 0, stream_), CUDA_ERROR_INVALID_VALUE) << "a freed range";
  EXPECT_EQ(cuMemAdvise(p, kPage, CU_MEM_ADVISE_SET_READ_MOSTLY, gpu), CUDA_ERROR_INVALID_VALUE);
}

TEST_F(InterposeUvmTest, KernelsSeeWhatTheCpuWroteAndTheCpuSeesWhatKernelsWrote) {
  const size_t count = 300000;  // 1.2 MB: crosses a 2 MiB block? not necessarily; several pages
  const CUdeviceptr p = Managed(count * 4);
  for (size_t i = 0; i < count; ++i) U32(p)[i] = static_cast<uint32_t>(i);
  LaunchAddOne(p, count);
  for (size_t i = 0; i < count; ++i) ASSERT_EQ(U32(p)[i], i + 1) << i;
  // The CPU writes a few words, the next launch sees them and the untouched ones.
  U32(p)[0] = 100;
  U32(p)[count - 1] = 200;
  LaunchAddOne(p, count);
  EXPECT_EQ(U32(p)[0], 101u);
  EXPECT_EQ(U32(p)[1], 3u);
  EXPECT_EQ(U32(p)[count - 1], 201u);
  ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
}

// Copies in each direction, with the managed pages on the host (the CPU just wrote them) and on
// the device (a kernel just wrote them).
TEST_F(InterposeUvmTest, CopiesReadAndWriteManagedDataWhereverItIs) {
  const size_t n = 64 * 1024;
  CUdeviceptr foreign = 0;
  ASSERT_EQ(cuMemAlloc(&foreign, n * 4), CUDA_SUCCESS);
  std::vector<uint32_t> host(n);
  for (bool on_device : {false, true}) {
    SCOPED_TRACE(on_device ? "managed pages on the device" : "managed pages on the host");
    const CUdeviceptr src = Managed(n * 4), dst = Managed(n * 4);
    for (size_t i = 0; i < n; ++i) U32(src)[i] = static_cast<uint32_t>(3 * i + (on_device ? 0 : 1));
    std::memset(reinterpret_cast<void*>(dst), 0xff, n * 4);
    if (on_device) {
      LaunchAddOne(src, n);  // now 3i+1 on the device
      LaunchAddOne(dst, 0);  // dst's pages go to the device too (an empty kernel syncs all)
      ASSERT_TRUE(OnDevice(src, n * 4));
    }
    // managed -> foreign (a host-pointer form with a managed host side), then back to plain memory.
    ASSERT_EQ(cuMemcpyHtoD(foreign, reinterpret_cast<void*>(src), n * 4), CUDA_SUCCESS);
    ASSERT_EQ(cuMemcpyDtoH(host.data(), foreign, n * 4), CUDA_SUCCESS);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(host[i], 3 * i + 1) << i;
    // foreign -> managed: the CPU reads what the copy wrote, with the bytes around it intact.
    ASSERT_EQ(cuMemcpyDtoH(reinterpret_cast<void*>(dst + 4), foreign, (n - 2) * 4), CUDA_SUCCESS);
    EXPECT_EQ(U32(dst)[0], 0xffffffffu);
    for (size_t i = 1; i < n - 1; ++i) ASSERT_EQ(U32(dst)[i], 3 * (i - 1) + 1) << i;
    EXPECT_EQ(U32(dst)[n - 1], 0xffffffffu);
    // managed -> managed, generic and asynchronous on a stream.
    std::memset(reinterpret_cast<void*>(dst), 0, n * 4);
    ASSERT_EQ(cuMemcpyAsync(dst, src, n * 4, stream_), CUDA_SUCCESS);
    ASSERT_EQ(cuStreamSynchronize(stream_), CUDA_SUCCESS);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(U32(dst)[i], 3 * i + 1) << i;
    // plain host memory -> managed through the device-to-device form.
    for (size_t i = 0; i < n; ++i) host[i] = static_cast<uint32_t>(i ^ 0x5555);
    ASSERT_EQ(cuMemcpy(dst, reinterpret_cast<CUdeviceptr>(host.data()), n * 4), CUDA_SUCCESS);
    ASSERT_EQ(cuMemcpyDtoD(src, dst, n * 4), CUDA_SUCCESS);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(U32(src)[i], i ^ 0x5555) << i;
    ASSERT_EQ(cuMemFree(src), CUDA_SUCCESS);
    ASSERT_EQ(cuMemFree(dst), CUDA_SUCCESS);
  }
  ASSERT_EQ(cuMemFree(foreign), CUDA_SUCCESS);
}

TEST_F(InterposeUvmTest, A2DCopyWithAManagedHostSideMovesTheRowsItNames) {
  const size_t pitch = 8192, width = 100, height = 40;
  const CUdeviceptr src = Managed(pitch * height), dst = Managed(pitch * height);
  auto* s = reinterpret_cast<uint8_t*>(src);
  auto* d = reinterpret_cast<uint8_t*>(dst);
  for (size_t i = 0; i < pitch * height; ++i) s[i] = static_cast<uint8_t>(i % 251);
  std::memset(d, 0, pitch * height);
  CUDA_MEMCPY2D c{};
  c.srcMemoryType = CU_MEMORYTYPE_HOST;
  c.srcHost = s;
  c.srcPitch = pitch;
  c.srcXInBytes = 8;
  c.dstMemoryType = CU_MEMORYTYPE_HOST;
  c.dstHost = d;
  c.dstPitch = pitch;
  c.WidthInBytes = width;
  c.Height = height;
  ASSERT_EQ(cuMemcpy2D(&c), CUDA_SUCCESS);
  for (size_t r = 0; r < height; ++r) {
    for (size_t x = 0; x < width; ++x) ASSERT_EQ(d[r * pitch + x], s[r * pitch + 8 + x]) << r << "," << x;
    ASSERT_EQ(d[r * pitch + width], 0) << "past the row";
  }
  ASSERT_EQ(cuMemFree(src), CUDA_SUCCESS);
  ASSERT_EQ(cuMemFree(dst), CUDA_SUCCESS);
}

TEST_F(InterposeUvmTest, SetsReachTheCpuAndLeaveTheRestAlone) {
  const size_t n = 50000;
  const CUdeviceptr p = Managed(n * 4);
  for (size_t i = 0; i < n; ++i) U32(p)[i] = 9;
  ASSERT_EQ(cuMemsetD8(p + 4, 0x11, 8), CUDA_SUCCESS);
  EXPECT_EQ(U32(p)[0], 9u);
  EXPECT_EQ(U32(p)[1], 0x11111111u);
  EXPECT_EQ(U32(p)[2], 0x11111111u);
  EXPECT_EQ(U32(p)[3], 9u);
  ASSERT_EQ(cuMemsetD32Async(p + 16, 0xabcdef01, n - 8, stream_), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamSynchronize(stream_), CUDA_SUCCESS);
  EXPECT_EQ(U32(p)[3], 9u);
  for (size_t i = 4; i < n - 4; ++i) ASSERT_EQ(U32(p)[i], 0xabcdef01u) << i;
  EXPECT_EQ(U32(p)[n - 4], 9u);
  ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
}

TEST_F(InterposeUvmTest, PrefetchesMoveDataBothWaysInBothApiGenerations) {
  const size_t bytes = 4 << 20;
  const CUdeviceptr p = Managed(bytes);
  std::memset(reinterpret_cast<void*>(p), 1, bytes);
  const CUmemLocation gpu{CU_MEM_LOCATION_TYPE_DEVICE, 0}, cpu{CU_MEM_LOCATION_TYPE_HOST, 0};
  ASSERT_EQ(cuMemPrefetchAsync(p + 10, bytes - 20, gpu, 0, stream_), CUDA_SUCCESS);
  EXPECT_TRUE(OnDevice(p, bytes));
  int last = 0;
  ASSERT_EQ(
      cuMemRangeGetAttribute(&last, sizeof(last), CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION, p, bytes),
      CUDA_SUCCESS);
  EXPECT_EQ(last, 0);
  ASSERT_EQ(cuMemPrefetchAsync(p, bytes, cpu, 0, stream_), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamSynchronize(stream_), CUDA_SUCCESS);
  ASSERT_EQ(
      cuMemRangeGetAttribute(&last, sizeof(last), CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION, p, bytes),
      CUDA_SUCCESS);
  EXPECT_EQ(last, CU_DEVICE_CPU);
  for (size_t i = 0; i < bytes; i += 4096) ASSERT_EQ(reinterpret_cast<uint8_t*>(p)[i], 1);
  // The CUDA 12 forms: a device number, CU_DEVICE_CPU for the host.
  using V1 = CUresult (*)(CUdeviceptr, size_t, CUdevice, CUstream);
  auto v1 = Self<V1>("cuMemPrefetchAsync");
  auto v1_ptsz = Self<V1>("cuMemPrefetchAsync_ptsz");
  ASSERT_NE(v1, nullptr);
  ASSERT_EQ(v1(p, bytes, 0, stream_), CUDA_SUCCESS);
  EXPECT_TRUE(OnDevice(p, bytes));
  ASSERT_EQ(v1_ptsz(p, bytes, CU_DEVICE_CPU, stream_), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamSynchronize(stream_), CUDA_SUCCESS);
  EXPECT_EQ(v1(p, bytes, 7, stream_), CUDA_ERROR_INVALID_DEVICE);
  EXPECT_EQ(cuMemPrefetchAsync(p, bytes, gpu, 1, stream_), CUDA_ERROR_INVALID_VALUE) << "flags must be 0";
  EXPECT_EQ(cuMemPrefetchAsync(p, bytes + kPage, gpu, 0, stream_), CUDA_ERROR_INVALID_VALUE)
      << "past the end";
  for (size_t i = 0; i < bytes; i += 4096) ASSERT_EQ(reinterpret_cast<uint8_t*>(p)[i], 1);
  ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
}

// UHMM_CUDA_DEVICES=all over two emulated GPUs without peer access (ctest
// interpose.uvm_program_two_gpus): one runtime serves both GPUs, prefetches, advice and launches
// name either one, and data moves between them with every write kept.
TEST_F(InterposeUvmTest, TwoGpusShareOneRuntimeAndDataMovesBetweenThem) {
  int count = 0;
  ASSERT_EQ(cuDeviceGetCount(&count), CUDA_SUCCESS);
  const char* list = std::getenv("UHMM_CUDA_DEVICES");
  if (count < 2 || list == nullptr || std::string_view(list) != "all")
    GTEST_SKIP() << "run with UHMM_CUDA_DEVICES=all on two GPUs (UHMM_FAKE_CUDA_DEVICES=2)";
  ASSERT_NE(fake().view_on, nullptr);
  CUdevice dev1 = 0;
  CUcontext ctx1 = nullptr;
  CUstream stream1 = nullptr;
  ASSERT_EQ(cuDeviceGet(&dev1, 1), CUDA_SUCCESS);
  ASSERT_EQ(cuDevicePrimaryCtxRetain(&ctx1, dev1), CUDA_SUCCESS);
  ASSERT_EQ(cuCtxSetCurrent(ctx1), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamCreate(&stream1, 0), CUDA_SUCCESS);
  ASSERT_EQ(cuCtxSetCurrent(ctx_), CUDA_SUCCESS);
  auto on_device = [](CUdeviceptr p, size_t bytes, int device) {
    for (size_t off = 0; off < bytes; off += kPage) {
      if (fake().view_on(p + off, 1, device) == nullptr) return false;
    }
    return true;
  };
  auto launch_on = [&](CUcontext ctx, CUstream s, CUdeviceptr p, size_t n, int device) {
    ASSERT_EQ(cuCtxSetCurrent(ctx), CUDA_SUCCESS);
    void* params[] = {&p, &n, &device};
    g_unmapped = 0;
    ASSERT_EQ(cuLaunchKernel(fake().kernel(&AddOneOnDevice), 1, 1, 1, 1, 1, 1, 0, s, params, nullptr),
              CUDA_SUCCESS);
    ASSERT_EQ(cuStreamSynchronize(s), CUDA_SUCCESS);
    EXPECT_EQ(g_unmapped.load(), 0) << "the kernel on GPU " << device << " found pages it cannot reach";
  };

  const size_t bytes = 4 << 20, words = bytes / 4;
  const CUmemLocation gpu1{CU_MEM_LOCATION_TYPE_DEVICE, 1};
  const CUdeviceptr p = Managed(bytes);
  for (size_t i = 0; i < words; ++i) U32(p)[i] = static_cast<uint32_t>(i);
  // A prefetch to GPU 1 puts the data there, where GPU 0 (no peer access) cannot see it.
  ASSERT_EQ(cuMemPrefetchAsync(p, bytes, gpu1, 0, stream_), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamSynchronize(stream_), CUDA_SUCCESS);
  EXPECT_TRUE(on_device(p, bytes, 1));
  EXPECT_FALSE(on_device(p, kPage, 0));
  int last = -1;
  ASSERT_EQ(
      cuMemRangeGetAttribute(&last, sizeof(last), CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION, p, bytes),
      CUDA_SUCCESS);
  EXPECT_EQ(last, 1);
  // A kernel on GPU 1 works on it there; then one on GPU 0, before which the data moves to GPU 0.
  launch_on(ctx1, stream1, p, words, 1);
  launch_on(ctx_, stream_, p, words, 0);
  EXPECT_TRUE(on_device(p, bytes, 0));
  // The CPU sees both kernels' writes.
  size_t bad = 0;
  for (size_t i = 0; i < words; ++i) bad += U32(p)[i] != static_cast<uint32_t>(i) + 2;
  EXPECT_EQ(bad, 0u);
  // Advice naming GPU 1 reads back as GPU 1.
  ASSERT_EQ(cuMemAdvise(p, bytes, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, gpu1), CUDA_SUCCESS);
  int preferred = -1;
  ASSERT_EQ(cuMemRangeGetAttribute(&preferred, sizeof(preferred), CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION,
                                   p, bytes),
            CUDA_SUCCESS);
  EXPECT_EQ(preferred, 1);
  ASSERT_EQ(cuMemAdvise(p, bytes, CU_MEM_ADVISE_SET_ACCESSED_BY, gpu1), CUDA_SUCCESS);
  int accessed[2] = {-1, -1};
  ASSERT_EQ(cuMemRangeGetAttribute(accessed, sizeof(accessed), CU_MEM_RANGE_ATTRIBUTE_ACCESSED_BY, p, bytes),
            CUDA_SUCCESS);
  EXPECT_EQ(accessed[0], 1);
  EXPECT_EQ(accessed[1], CU_DEVICE_INVALID);
  ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
  ASSERT_EQ(cuCtxSetCurrent(ctx1), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(stream1), CUDA_SUCCESS);
  ASSERT_EQ(cuCtxSetCurrent(ctx_), CUDA_SUCCESS);
}

TEST_F(InterposeUvmTest, APrefetchHomeBehindASpinningKernelDoesNotBlockTheHost) {
  // NVIDIA's UnifiedMemoryPerf does this: queue a kernel that waits for the host, queue a prefetch
  // to the CPU behind it, then release the kernel. A prefetch that waited for the stream would hang.
  const size_t n = 4096;
  const CUdeviceptr p = Managed(n * 4);
  for (size_t i = 0; i < n; ++i) U32(p)[i] = 1;
  LaunchAddOne(p, n);
  std::atomic<int> flag{0};
  std::atomic<int>* fp = &flag;
  void* spin_params[] = {&fp};
  ASSERT_EQ(cuLaunchKernel(fake().kernel(&SpinUntil), 1, 1, 1, 1, 1, 1, 0, stream_, spin_params, nullptr),
            CUDA_SUCCESS);
  size_t count = n;
  CUdeviceptr pp = p;
  void* add_params[] = {&pp, &count};
  ASSERT_EQ(cuLaunchKernel(fake().kernel(&AddOne), 1, 1, 1, 1, 1, 1, 0, stream_, add_params, nullptr),
            CUDA_SUCCESS);
  const CUmemLocation cpu{CU_MEM_LOCATION_TYPE_HOST, 0};
  ASSERT_EQ(cuMemPrefetchAsync(p, n * 4, cpu, 0, stream_), CUDA_SUCCESS);  // returns at once
  flag = 1;
  ASSERT_EQ(cuStreamSynchronize(stream_), CUDA_SUCCESS);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(U32(p)[i], 3u) << "the kernel queued before the prefetch wrote it";
  ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
}

TEST_F(InterposeUvmTest, AdviceIsAppliedAndReadBackInBothApiGenerations) {
  const size_t bytes = 1 << 20;
  const CUdeviceptr p = Managed(bytes);
  const CUmemLocation gpu{CU_MEM_LOCATION_TYPE_DEVICE, 0}, cpu{CU_MEM_LOCATION_TYPE_HOST, 0};
  int v = -7;
  ASSERT_EQ(cuMemRangeGetAttribute(&v, sizeof(v), CU_MEM_RANGE_ATTRIBUTE_READ_MOSTLY, p, bytes),
            CUDA_SUCCESS);
  EXPECT_EQ(v, 0);
  ASSERT_EQ(cuMemAdvise(p, bytes, CU_MEM_ADVISE_SET_READ_MOSTLY, gpu), CUDA_SUCCESS);
  ASSERT_EQ(cuMemRangeGetAttribute(&v, sizeof(v), CU_MEM_RANGE_ATTRIBUTE_READ_MOSTLY, p, bytes),
            CUDA_SUCCESS);
  EXPECT_EQ(v, 1);
  ASSERT_EQ(cuMemRangeGetAttribute(&v, sizeof(v), CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION, p, bytes),
            CUDA_SUCCESS);
  EXPECT_EQ(v, CU_DEVICE_INVALID);
  ASSERT_EQ(cuMemAdvise(p, bytes, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, cpu), CUDA_SUCCESS);
  ASSERT_EQ(cuMemRangeGetAttribute(&v, sizeof(v), CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION, p, bytes),
            CUDA_SUCCESS);
  EXPECT_EQ(v, CU_DEVICE_CPU);
  using V1 = CUresult (*)(CUdeviceptr, size_t, CUmem_advise, CUdevice);
  auto v1 = Self<V1>("cuMemAdvise");
  ASSERT_NE(v1, nullptr);
  ASSERT_EQ(v1(p, bytes, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, 0), CUDA_SUCCESS);
  ASSERT_EQ(v1(p, bytes, CU_MEM_ADVISE_SET_ACCESSED_BY, 0), CUDA_SUCCESS);
  int accessed_by[3] = {};
  int type = 0, id = -1;
  CUmem_range_attribute attrs[] = {
      CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION, CU_MEM_RANGE_ATTRIBUTE_ACCESSED_BY,
      CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION_TYPE, CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION_ID};
  void* data[] = {&v, accessed_by, &type, &id};
  size_t sizes[] = {sizeof(v), sizeof(accessed_by), sizeof(type), sizeof(id)};
  ASSERT_EQ(cuMemRangeGetAttributes(data, sizes, attrs, 4, p, bytes), CUDA_SUCCESS);
  EXPECT_EQ(v, 0);
  EXPECT_EQ(accessed_by[0], 0);
  EXPECT_EQ(accessed_by[1], CU_DEVICE_INVALID);
  EXPECT_EQ(type, CU_MEM_LOCATION_TYPE_DEVICE);
  EXPECT_EQ(id, 0);
  ASSERT_EQ(cuMemAdvise(p, bytes, CU_MEM_ADVISE_UNSET_PREFERRED_LOCATION, gpu), CUDA_SUCCESS);
  ASSERT_EQ(cuMemRangeGetAttribute(&v, sizeof(v), CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION, p, bytes),
            CUDA_SUCCESS);
  EXPECT_EQ(v, CU_DEVICE_INVALID);
  EXPECT_EQ(v1(p, bytes, CU_MEM_ADVISE_SET_ACCESSED_BY, 9), CUDA_ERROR_INVALID_DEVICE);
  EXPECT_EQ(cuMemAdvise(p, bytes, static_cast<CUmem_advise>(99), gpu), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(cuMemRangeGetAttribute(&v, 2, CU_MEM_RANGE_ATTRIBUTE_READ_MOSTLY, p, bytes),
            CUDA_ERROR_INVALID_VALUE);
  ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
}

TEST_F(InterposeUvmTest, ForeignPointersGoToTheDriverUntouched) {
  CUdeviceptr d = 0;
  ASSERT_EQ(cuMemAlloc(&d, 1 << 20), CUDA_SUCCESS);
  int managed = -1;
  ASSERT_EQ(cuPointerGetAttribute(&managed, CU_POINTER_ATTRIBUTE_IS_MANAGED, d), CUDA_SUCCESS);
  EXPECT_EQ(managed, 0) << "the fake driver's answer";
  std::vector<uint8_t> a(1 << 20, 3), b(1 << 20, 0);
  ASSERT_EQ(cuMemcpyHtoD(d, a.data(), a.size()), CUDA_SUCCESS);
  ASSERT_EQ(cuMemsetD8(d + 10, 4, 10), CUDA_SUCCESS);
  ASSERT_EQ(cuMemcpyDtoH(b.data(), d, b.size()), CUDA_SUCCESS);
  EXPECT_EQ(b[9], 3);
  EXPECT_EQ(b[10], 4);
  EXPECT_EQ(b[20], 3);
  ASSERT_EQ(cuMemFree(d), CUDA_SUCCESS);
}

TEST_F(InterposeUvmTest, GetProcAddressHandsOutTheReplacements) {
  struct Case {
    const char* symbol;
    cuuint64_t flags;
    const char* expected;  // this library's export
  } cases[] = {
      {"cuMemAllocManaged", CU_GET_PROC_ADDRESS_DEFAULT, "cuMemAllocManaged"},
      {"cuMemFree", CU_GET_PROC_ADDRESS_DEFAULT, "cuMemFree_v2"},
      {"cuMemcpyHtoD", CU_GET_PROC_ADDRESS_DEFAULT, "cuMemcpyHtoD_v2"},
      {"cuMemcpyHtoD", CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, "cuMemcpyHtoD_v2_ptds"},
      {"cuMemsetD32Async", CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, "cuMemsetD32Async_ptsz"},
      {"cuMemPrefetchAsync", CU_GET_PROC_ADDRESS_DEFAULT, "cuMemPrefetchAsync_v2"},
      {"cuLaunchKernel", CU_GET_PROC_ADDRESS_DEFAULT, "cuLaunchKernel"},
      {"cuPointerGetAttribute", CU_GET_PROC_ADDRESS_DEFAULT, "cuPointerGetAttribute"},
  };
  for (const Case& c : cases) {
    void* fn = nullptr;
    CUdriverProcAddressQueryResult found;
    ASSERT_EQ(cuGetProcAddress_v2(c.symbol, &fn, CUDA_VERSION, c.flags, &found), CUDA_SUCCESS) << c.symbol;
    EXPECT_EQ(fn, dlsym(self_, c.expected)) << c.symbol << " -> " << c.expected;
  }
}

TEST_F(InterposeUvmTest, GetProcAddressHandsOutTheFormTheCallersVersionMeans) {
  // The fake driver serves CUDA 8's cuMemAdvise/cuMemPrefetchAsync to callers older than 12.2 from
  // functions it exports under no name: the interposer must still hand out its replacement of that
  // form (cuMemAdvise, with a device), not the new one and not the driver's.
  const size_t bytes = 1 << 20;
  const CUdeviceptr p = Managed(bytes);
  void* fn = nullptr;
  CUdriverProcAddressQueryResult found;
  ASSERT_EQ(cuGetProcAddress_v2("cuMemAdvise", &fn, 12000, 0, &found), CUDA_SUCCESS);
  EXPECT_EQ(fn, dlsym(self_, "cuMemAdvise"));
  using V1 = CUresult (*)(CUdeviceptr, size_t, CUmem_advise, CUdevice);
  ASSERT_EQ(reinterpret_cast<V1>(fn)(p, bytes, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, CU_DEVICE_CPU),
            CUDA_SUCCESS);
  int v = 0;
  ASSERT_EQ(cuMemRangeGetAttribute(&v, sizeof(v), CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION, p, bytes),
            CUDA_SUCCESS);
  EXPECT_EQ(v, CU_DEVICE_CPU);
  ASSERT_EQ(cuGetProcAddress_v2("cuMemAdvise", &fn, 12020, 0, &found), CUDA_SUCCESS);
  EXPECT_EQ(fn, dlsym(self_, "cuMemAdvise_v2"));
  ASSERT_EQ(cuGetProcAddress_v2("cuMemPrefetchAsync", &fn, 11080,
                                CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &found),
            CUDA_SUCCESS);
  EXPECT_EQ(fn, dlsym(self_, "cuMemPrefetchAsync_ptsz"));
  ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
}

TEST_F(InterposeUvmTest, ManyThreadsAllocateUseAndFreeAtOnce) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      cuCtxSetCurrent(ctx_);
      for (int i = 0; i < 20; ++i) {
        CUdeviceptr p = 0;
        const size_t bytes = kPage * (1 + (t + i) % 5);
        if (cuMemAllocManaged(&p, bytes, CU_MEM_ATTACH_GLOBAL) != CUDA_SUCCESS) {
          failures++;
          continue;
        }
        std::memset(reinterpret_cast<void*>(p), t + i, bytes);
        if (cuMemsetD8(p, static_cast<unsigned char>(t), 16) != CUDA_SUCCESS) failures++;
        if (reinterpret_cast<uint8_t*>(p)[0] != t ||
            reinterpret_cast<uint8_t*>(p)[bytes - 1] != ((t + i) & 0xff))
          failures++;
        if (cuMemFree(p) != CUDA_SUCCESS) failures++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST_F(InterposeUvmTest, AnAllocationLeftAtExitIsTornDownCleanly) {
  // Not freed: the process's exit tears the runtime down before the driver goes (ctest checks the
  // exit status of the whole program).
  const CUdeviceptr p = Managed(1 << 20);
  std::memset(reinterpret_cast<void*>(p), 1, 1 << 20);
  LaunchAddOne(p, 1000);
}

}  // namespace
