// tests/fake_cuda with several devices (UHMM_FAKE_CUDA_DEVICES), the emulation multi-GPU work is to
// run on: a primary context per device, VRAM counted per device, one process-wide mapping table (a
// block one device maps cannot be mapped by another), and peer access all or none
// (UHMM_FAKE_CUDA_PEER). ctest runs it with 2 devices, with and without peer access.
#include <cuda.h>
#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "gtest/gtest.h"

namespace {

using GetProc = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);

class FakeCudaDevicesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    void* h = dlopen(UHMM_FAKE_CUDA_DRIVER, RTLD_NOW | RTLD_LOCAL);
    ASSERT_NE(h, nullptr) << dlerror();
    get_ = reinterpret_cast<GetProc>(dlsym(h, "cuGetProcAddress_v2"));
    ASSERT_NE(get_, nullptr);
    ASSERT_EQ(Fn<decltype(&cuInit)>("cuInit")(0), CUDA_SUCCESS);
    const char* peer = std::getenv("UHMM_FAKE_CUDA_PEER");
    peer_ = peer == nullptr || std::string(peer) != "none";
  }
  template <typename F>
  F Fn(const char* name) {
    void* fn = nullptr;
    CUdriverProcAddressQueryResult found;
    EXPECT_EQ(get_(name, &fn, 12000, 0, &found), CUDA_SUCCESS) << name;
    return reinterpret_cast<F>(fn);
  }
  // A 2 MiB chunk on `device`, mapped at a fresh reservation; returns the address.
  CUdeviceptr MappedChunk(int device, CUmemGenericAllocationHandle* h) {
    CUmemAllocationProp prop{};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = device;
    CUdeviceptr va = 0;
    EXPECT_EQ(Fn<decltype(&cuMemAddressReserve)>("cuMemAddressReserve")(&va, kChunk, 0, 0, 0), CUDA_SUCCESS);
    EXPECT_EQ(Fn<decltype(&cuMemCreate)>("cuMemCreate")(h, kChunk, &prop, 0), CUDA_SUCCESS);
    EXPECT_EQ(Fn<decltype(&cuMemMap)>("cuMemMap")(va, kChunk, 0, *h, 0), CUDA_SUCCESS);
    return va;
  }
  static constexpr size_t kChunk = size_t{2} << 20;
  GetProc get_ = nullptr;
  bool peer_ = true;
};

TEST_F(FakeCudaDevicesTest, EachDeviceHasItsOwnPrimaryContextAndVram) {
  int n = 0;
  ASSERT_EQ(Fn<decltype(&cuDeviceGetCount)>("cuDeviceGetCount")(&n), CUDA_SUCCESS);
  ASSERT_EQ(n, 2) << "run with UHMM_FAKE_CUDA_DEVICES=2";
  CUdevice d;
  EXPECT_EQ(Fn<decltype(&cuDeviceGet)>("cuDeviceGet")(&d, 2), CUDA_ERROR_INVALID_DEVICE);
  CUcontext ctx[2];
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(Fn<decltype(&cuDevicePrimaryCtxRetain)>("cuDevicePrimaryCtxRetain")(&ctx[i], i), CUDA_SUCCESS);
  }
  EXPECT_NE(ctx[0], ctx[1]);
  size_t before[2], total;
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(Fn<decltype(&cuCtxSetCurrent)>("cuCtxSetCurrent")(ctx[i]), CUDA_SUCCESS);
    CUdevice cur = -1;
    ASSERT_EQ(Fn<decltype(&cuCtxGetDevice)>("cuCtxGetDevice")(&cur), CUDA_SUCCESS);
    EXPECT_EQ(cur, i);
    ASSERT_EQ(Fn<decltype(&cuMemGetInfo)>("cuMemGetInfo")(&before[i], &total), CUDA_SUCCESS);
  }
  CUmemGenericAllocationHandle h;
  const CUdeviceptr va = MappedChunk(1, &h);
  size_t after;
  ASSERT_EQ(Fn<decltype(&cuMemGetInfo)>("cuMemGetInfo")(&after, &total), CUDA_SUCCESS);  // device 1
  EXPECT_EQ(after, before[1] - kChunk);
  ASSERT_EQ(Fn<decltype(&cuCtxSetCurrent)>("cuCtxSetCurrent")(ctx[0]), CUDA_SUCCESS);
  ASSERT_EQ(Fn<decltype(&cuMemGetInfo)>("cuMemGetInfo")(&after, &total), CUDA_SUCCESS);  // device 0
  EXPECT_EQ(after, before[0]) << "device 1's chunk counted against device 0";
  // One mapping table for the process: the block is taken.
  CUmemGenericAllocationHandle other;
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = 0;
  ASSERT_EQ(Fn<decltype(&cuMemCreate)>("cuMemCreate")(&other, kChunk, &prop, 0), CUDA_SUCCESS);
  EXPECT_EQ(Fn<decltype(&cuMemMap)>("cuMemMap")(va, kChunk, 0, other, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Fn<decltype(&cuMemRelease)>("cuMemRelease")(other), CUDA_SUCCESS);
  EXPECT_EQ(Fn<decltype(&cuMemUnmap)>("cuMemUnmap")(va, kChunk), CUDA_SUCCESS);
  EXPECT_EQ(Fn<decltype(&cuMemRelease)>("cuMemRelease")(h), CUDA_SUCCESS);
  EXPECT_EQ(Fn<decltype(&cuMemAddressFree)>("cuMemAddressFree")(va, kChunk), CUDA_SUCCESS);
}

TEST_F(FakeCudaDevicesTest, PeerAccessIsAllOrNone) {
  int can = -1;
  ASSERT_EQ(Fn<decltype(&cuDeviceCanAccessPeer)>("cuDeviceCanAccessPeer")(&can, 0, 1), CUDA_SUCCESS);
  EXPECT_EQ(can, peer_ ? 1 : 0);
  ASSERT_EQ(Fn<decltype(&cuDeviceCanAccessPeer)>("cuDeviceCanAccessPeer")(&can, 1, 1), CUDA_SUCCESS);
  EXPECT_EQ(can, 0) << "a device is not its own peer";
  EXPECT_EQ(Fn<decltype(&cuDeviceCanAccessPeer)>("cuDeviceCanAccessPeer")(&can, 0, 5),
            CUDA_ERROR_INVALID_DEVICE);
  CUcontext ctx;
  ASSERT_EQ(Fn<decltype(&cuDevicePrimaryCtxRetain)>("cuDevicePrimaryCtxRetain")(&ctx, 0), CUDA_SUCCESS);
  ASSERT_EQ(Fn<decltype(&cuCtxSetCurrent)>("cuCtxSetCurrent")(ctx), CUDA_SUCCESS);
  CUmemGenericAllocationHandle h;
  const CUdeviceptr va = MappedChunk(0, &h);
  CUmemAccessDesc both[2] = {};
  for (int i = 0; i < 2; ++i) {
    both[i].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    both[i].location.id = i;
    both[i].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  }
  EXPECT_EQ(Fn<decltype(&cuMemSetAccess)>("cuMemSetAccess")(va, kChunk, both, 2),
            peer_ ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE)
      << "device 1 reaches device 0's chunk only over peer access";
  EXPECT_EQ(Fn<decltype(&cuMemSetAccess)>("cuMemSetAccess")(va, kChunk, both, 1), CUDA_SUCCESS)
      << "the owner";
  EXPECT_EQ(Fn<decltype(&cuMemUnmap)>("cuMemUnmap")(va, kChunk), CUDA_SUCCESS);
  EXPECT_EQ(Fn<decltype(&cuMemRelease)>("cuMemRelease")(h), CUDA_SUCCESS);
  EXPECT_EQ(Fn<decltype(&cuMemAddressFree)>("cuMemAddressFree")(va, kChunk), CUDA_SUCCESS);
}

}  // namespace
