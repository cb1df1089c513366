// The interposing libcuda.so.1 (backends/cuda/interpose) against tests/fake_cuda as "the real
// driver": this program links the interposer the way a CUDA program links the driver, and ctest runs
// it with UHMM_REAL_LIBCUDA naming the fake driver (InterposeTest) or the interposer itself
// (InterposeRefusalTest); each suite skips in the other run.
#include "backends/cuda/interpose/interpose.h"

#include <cuda.h>
#include <dlfcn.h>

#include <cstdlib>
#include <string>
#include <string_view>

#include "backends/cuda/interpose/forwarders.h"
#include "gtest/gtest.h"

#undef cuGetProcAddress  // the test calls both forms by their own names
extern "C" CUresult cuGetProcAddress(const char* symbol, void** pfn, int version, cuuint64_t flags);

namespace {

using uhmm::interpose::Forwarder;
using uhmm::interpose::kForwarderCount;
using uhmm::interpose::kForwarders;

std::string_view RealEnv() {
  const char* e = std::getenv("UHMM_REAL_LIBCUDA");
  return e ? e : "";
}

using GetProcV2 = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);

class InterposeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (RealEnv() != UHMM_FAKE_CUDA_DRIVER)
      GTEST_SKIP() << "run with UHMM_REAL_LIBCUDA=" << UHMM_FAKE_CUDA_DRIVER;
    fake_ = dlopen(UHMM_FAKE_CUDA_DRIVER, RTLD_NOW | RTLD_NOLOAD);
    ASSERT_NE(fake_, nullptr) << "the interposer did not load the fake driver: " << uhmm_interpose_status();
    fake_get_ = reinterpret_cast<GetProcV2>(dlsym(fake_, "cuGetProcAddress_v2"));
    ASSERT_NE(fake_get_, nullptr);
  }
  void TearDown() override {
    if (fake_ != nullptr) dlclose(fake_);
  }
  // What the fake driver itself answers for `symbol`.
  void* FakeEntry(const char* symbol, cuuint64_t flags = CU_GET_PROC_ADDRESS_DEFAULT) {
    void* fn = nullptr;
    CUdriverProcAddressQueryResult found;
    return fake_get_(symbol, &fn, CUDA_VERSION, flags, &found) == CUDA_SUCCESS ? fn : nullptr;
  }
  void* fake_ = nullptr;
  GetProcV2 fake_get_ = nullptr;
};

TEST_F(InterposeTest, SaysWhichDriverItForwardsTo) {
  ASSERT_NE(uhmm_interpose_driver(), nullptr) << uhmm_interpose_status();
  EXPECT_STREQ(uhmm_interpose_driver(), UHMM_FAKE_CUDA_DRIVER);
  EXPECT_NE(std::string(uhmm_interpose_status()).find(UHMM_FAKE_CUDA_DRIVER), std::string::npos)
      << uhmm_interpose_status();
}

TEST_F(InterposeTest, CallsByNameReachTheDriver) {
  ASSERT_EQ(cuInit(0), CUDA_SUCCESS);
  int count = 0;
  ASSERT_EQ(cuDeviceGetCount(&count), CUDA_SUCCESS);
  EXPECT_GE(count, 1);
  int version = 0;
  ASSERT_EQ(cuDriverGetVersion(&version), CUDA_SUCCESS);
  EXPECT_GT(version, 0);
  CUdevice dev;
  ASSERT_EQ(cuDeviceGet(&dev, 0), CUDA_SUCCESS);
  char name[128] = {};
  ASSERT_EQ(cuDeviceGetName(name, sizeof(name), dev), CUDA_SUCCESS);
  EXPECT_NE(name[0], '\0');
}

TEST_F(InterposeTest, EveryNameOfTheHeaderIsExported) {
  void* self = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(self, nullptr);
  size_t missing = 0;
  for (const Forwarder& f : kForwarders) {
    if (dlsym(self, f.name) == nullptr) {
      ADD_FAILURE() << f.name << " is not exported";
      if (++missing > 10) break;
    }
  }
  for (const char* name :
       {"cuGetProcAddress", "cuGetProcAddress_v2", "cuMemAllocManaged", "cuMemFree_v2",
        "cuMemPrefetchAsync_v2", "cuMemAdvise_v2", "cuStreamAttachMemAsync", "cuStreamAttachMemAsync_ptsz",
        "cuLaunchKernel", "cuLaunchKernelEx", "cuGraphLaunch", "cuGetExportTable", "cuMemcpyHtoD_v2_ptds"}) {
    EXPECT_NE(dlsym(self, name), nullptr) << name;
  }
  EXPECT_GT(kForwarderCount, 600u) << "fewer names than cuda.h declares";
  dlclose(self);
}

TEST_F(InterposeTest, GetProcAddressAnswersWithTheDriversEntryPoints) {
  // Entry points the interposer forwards (its replacements: interpose_uvm_test.cc).
  for (const char* symbol : {"cuInit", "cuDeviceGetCount", "cuStreamCreate", "cuEventRecord"}) {
    void* fn = nullptr;
    CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    ASSERT_EQ(cuGetProcAddress_v2(symbol, &fn, CUDA_VERSION, CU_GET_PROC_ADDRESS_DEFAULT, &found),
              CUDA_SUCCESS)
        << symbol;
    EXPECT_EQ(found, CU_GET_PROC_ADDRESS_SUCCESS);
    EXPECT_EQ(fn, FakeEntry(symbol)) << symbol;
    void* v1 = nullptr;
    ASSERT_EQ(cuGetProcAddress(symbol, &v1, CUDA_VERSION, CU_GET_PROC_ADDRESS_DEFAULT), CUDA_SUCCESS)
        << symbol;
    EXPECT_EQ(v1, fn) << symbol;
  }
  // A name the driver does not know: its answer, passed on.
  void* fn = reinterpret_cast<void*>(1);
  CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SUCCESS;
  EXPECT_EQ(cuGetProcAddress_v2("cuNoSuchEntryPoint", &fn, CUDA_VERSION, 0, &found), CUDA_ERROR_NOT_FOUND);
  EXPECT_EQ(fn, nullptr);
  EXPECT_EQ(found, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
  EXPECT_EQ(cuGetProcAddress_v2(nullptr, &fn, CUDA_VERSION, 0, &found), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(cuGetProcAddress_v2("cuInit", nullptr, CUDA_VERSION, 0, &found), CUDA_ERROR_INVALID_VALUE);
}

TEST_F(InterposeTest, GetProcAddressOfItselfStaysInTheInterposer) {
  // The CUDA runtime looks cuGetProcAddress up through cuGetProcAddress: every later lookup must
  // still come here. CUDA 12 and later get the _v2 form under the plain name.
  void* fn = nullptr;
  CUdriverProcAddressQueryResult found;
  ASSERT_EQ(cuGetProcAddress_v2("cuGetProcAddress", &fn, 12000, 0, &found), CUDA_SUCCESS);
  EXPECT_EQ(fn, reinterpret_cast<void*>(&cuGetProcAddress_v2));
  ASSERT_EQ(cuGetProcAddress_v2("cuGetProcAddress", &fn, 11080, 0, &found), CUDA_SUCCESS);
  EXPECT_EQ(fn, reinterpret_cast<void*>(&cuGetProcAddress));
}

TEST_F(InterposeTest, PerThreadStreamFormsReachTheDriversPerThreadEntryPoints) {
  // The fake driver serves the same function either way; the forwarder must have asked for it
  // with the per-thread flag and got an answer, not the not-found stub.
  void* self = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(self, nullptr);
  using MemsetD8Async = CUresult (*)(CUdeviceptr, unsigned char, size_t, CUstream);
  auto ptsz = reinterpret_cast<MemsetD8Async>(dlsym(self, "cuMemsetD8Async_ptsz"));
  ASSERT_NE(ptsz, nullptr);
  ASSERT_EQ(cuInit(0), CUDA_SUCCESS);
  // An invalid pointer: the fake driver's own error, not CUDA_ERROR_NOT_FOUND from the stub.
  EXPECT_NE(ptsz(0, 0, 16, nullptr), CUDA_ERROR_NOT_FOUND);
  dlclose(self);
}

TEST_F(InterposeTest, AnEntryPointTheDriverLacksReturnsNotFound) {
  // tests/fake_cuda has no modules: the forwarder's stub answers, whatever the arguments.
  EXPECT_EQ(cuModuleUnload(nullptr), CUDA_ERROR_NOT_FOUND);
  EXPECT_EQ(cuCtxPushCurrent(nullptr), CUDA_ERROR_NOT_FOUND);
}

TEST(InterposeRefusalTest, RefusesToForwardToItself) {
  const char* self_path = UHMM_CUDA_INTERPOSER;
  if (RealEnv() != self_path) GTEST_SKIP() << "run with UHMM_REAL_LIBCUDA=" << self_path;
  EXPECT_EQ(uhmm_interpose_driver(), nullptr);
  EXPECT_NE(std::string(uhmm_interpose_status()).find("is this interposer"), std::string::npos)
      << uhmm_interpose_status();
  EXPECT_EQ(cuInit(0), CUDA_ERROR_NO_DEVICE) << "without a driver, calls fail as on a machine without a GPU";
  void* fn = reinterpret_cast<void*>(1);
  CUdriverProcAddressQueryResult found;
  EXPECT_EQ(cuGetProcAddress_v2("cuInit", &fn, CUDA_VERSION, 0, &found), CUDA_ERROR_NO_DEVICE);
  EXPECT_EQ(fn, nullptr);
}

}  // namespace
