// libuhmm_framework_alloc (backends/cuda/frameworks): PyTorch's and CuPy's allocator entry points,
// against tests/fake_cuda. ctest runs it twice: with the fake driver named by UHMM_CUDA_DRIVER (the
// library makes its own runtime), and under uhmm-run (FW_TEST_UHMM_RUN=1: the program loads
// libcuda.so.1, which is then the interposer, and allocations are its cuMemAllocManaged's).
#include "backends/cuda/frameworks/framework_allocator.h"

#include <cuda.h>
#include <dlfcn.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace {

using GetProc = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);

bool UnderUhmmRun() {
  const char* e = std::getenv("FW_TEST_UHMM_RUN");
  return e != nullptr && std::string(e) == "1";
}

std::atomic<int> g_done{0};
void SlowKernel(void**) {
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  g_done = 1;
}

class FrameworkAllocatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The driver a framework would have loaded before its first allocation.
    driver_ = dlopen(UnderUhmmRun() ? "libcuda.so.1" : UHMM_FAKE_CUDA_DRIVER, RTLD_NOW);
    ASSERT_NE(driver_, nullptr) << dlerror();
    if (UnderUhmmRun()) ASSERT_NE(dlsym(driver_, "uhmm_interpose_driver"), nullptr) << "not under uhmm-run";
    auto get = reinterpret_cast<GetProc>(dlsym(driver_, "cuGetProcAddress_v2"));
    ASSERT_NE(get, nullptr);
    auto entry = [&](const char* name) {
      void* fn = nullptr;
      CUdriverProcAddressQueryResult found;
      get(name, &fn, CUDA_VERSION, 0, &found);
      return fn;
    };
    reinterpret_cast<decltype(&cuInit)>(entry("cuInit"))(0);
    CUcontext ctx;
    ASSERT_EQ(
        reinterpret_cast<decltype(&cuDevicePrimaryCtxRetain)>(entry("cuDevicePrimaryCtxRetain"))(&ctx, 0),
        CUDA_SUCCESS);
    ASSERT_EQ(reinterpret_cast<decltype(&cuCtxSetCurrent)>(entry("cuCtxSetCurrent"))(ctx), CUDA_SUCCESS);
    ASSERT_EQ(reinterpret_cast<decltype(&cuStreamCreate)>(entry("cuStreamCreate"))(&stream_, 0),
              CUDA_SUCCESS);
    ASSERT_EQ(reinterpret_cast<decltype(&cuStreamCreate)>(entry("cuStreamCreate"))(&side_, 0), CUDA_SUCCESS);
    launch_ = reinterpret_cast<decltype(&cuLaunchKernel)>(entry("cuLaunchKernel"));
    void* fake = dlopen(UHMM_FAKE_CUDA_DRIVER, RTLD_NOW | RTLD_NOLOAD);
    ASSERT_NE(fake, nullptr);
    kernel_ = reinterpret_cast<CUfunction (*)(void (*)(void**))>(dlsym(fake, "uhmm_fake_cuda_kernel"));
  }

  void* driver_ = nullptr;
  CUstream stream_ = nullptr;
  CUstream side_ = nullptr;
  decltype(&cuLaunchKernel) launch_ = nullptr;
  CUfunction (*kernel_)(void (*)(void**)) = nullptr;
};

TEST_F(FrameworkAllocatorTest, AllocationsAreUhmmMemoryTheCpuCanUse) {
  void* p = uhmm_fw_malloc(3 << 20, 0, stream_);
  ASSERT_NE(p, nullptr) << uhmm_fw_status();
  EXPECT_NE(std::string(uhmm_fw_status()).find(UnderUhmmRun() ? "uhmm-run" : "own runtime on GPU 0"),
            std::string::npos)
      << uhmm_fw_status();
  std::memset(p, 0x3c, 3 << 20);
  EXPECT_EQ(static_cast<unsigned char*>(p)[(3 << 20) - 1], 0x3c);
  uhmm_fw_free(p, 3 << 20, 0, stream_);
}

TEST_F(FrameworkAllocatorTest, FreeWaitsForTheWorkQueuedOnEveryStream) {
  // PyTorch passes the stream the tensor was allocated on; the tensor may be in use on another.
  for (CUstream busy : {stream_, side_}) {
    void* p = uhmm_fw_malloc(1 << 20, 0, stream_);
    ASSERT_NE(p, nullptr) << uhmm_fw_status();
    g_done = 0;
    ASSERT_EQ(launch_(kernel_(&SlowKernel), 1, 1, 1, 1, 1, 1, 0, busy, nullptr, nullptr), CUDA_SUCCESS);
    uhmm_fw_free(p, 1 << 20, 0, stream_);
    EXPECT_EQ(g_done.load(), 1) << "freed while a kernel queued before the free could still use it"
                                << (busy == side_ ? " (on another stream)" : "");
  }
}

TEST_F(FrameworkAllocatorTest, BadRequestsFailWithAReason) {
  EXPECT_EQ(uhmm_fw_malloc(0, 0, stream_), nullptr) << "an empty tensor needs no memory";
  EXPECT_EQ(uhmm_torch_malloc(0, 0, stream_), nullptr) << "and is no failure";
  EXPECT_EQ(uhmm_fw_malloc(-5, 0, stream_), nullptr);
  EXPECT_NE(std::string(uhmm_fw_status()).find("refused"), std::string::npos) << uhmm_fw_status();
  void* p = uhmm_fw_malloc(4096, 0, stream_);  // the runtime exists now, on GPU 0
  ASSERT_NE(p, nullptr) << uhmm_fw_status();
  EXPECT_EQ(uhmm_fw_malloc(4096, 1, stream_), nullptr);
  EXPECT_NE(std::string(uhmm_fw_status()).find("one GPU per process"), std::string::npos) << uhmm_fw_status();
  uhmm_fw_free(p, 4096, 0, stream_);
  int on_stack = 0;
  uhmm_fw_free(&on_stack, sizeof(on_stack), 0, stream_);  // reported, nothing else happens
  uhmm_fw_free(nullptr, 0, 0, stream_);
  EXPECT_EQ(on_stack, 0);
}

TEST_F(FrameworkAllocatorTest, PyTorchsEntryPointStopsOnAFailureItCouldNotReport) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        void* p = uhmm_torch_malloc(4096, 0, stream_);
        if (p != nullptr) uhmm_torch_malloc(4096, 1, stream_);  // another GPU: a failure
      },
      "cannot report a failed allocation");
}

}  // namespace
