// Copies and sets on managed memory by programs that link libuhmm (the CUDA backend's CUPTI
// subscription): which bytes each driver entry point touches (copy_spans.h), and the runtime making
// the managed ones device-resident before the driver runs (LaunchListener::BeforeCopy), in every
// backend configuration. CUPTI itself needs a GPU; its callback calls exactly these two.
#include "backends/cuda/copy_spans.h"

#include <cupti.h>

#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "uhmm/backend.h"

namespace uhmm {
namespace {

using cuda::CopySpan;
using cuda::CopySpans;

TEST(CopySpansTest, LinearCopiesNameTheirDestinationAndSource) {
  cuMemcpyHtoD_v2_params p{0x10000, reinterpret_cast<const void*>(0x20000), 300};
  CopySpan s[2];
  ASSERT_EQ(CopySpans(CUPTI_DRIVER_TRACE_CBID_cuMemcpyHtoD_v2, &p, s), 2);
  EXPECT_EQ(s[0].start, 0x10000u);
  EXPECT_EQ(s[0].bytes, 300u);
  EXPECT_EQ(s[1].start, 0x20000u);
  EXPECT_EQ(s[1].bytes, 300u);
  cuMemcpyDtoHAsync_v2_ptsz_params q{reinterpret_cast<void*>(0x30000), 0x40000, 7, nullptr};
  ASSERT_EQ(CopySpans(CUPTI_DRIVER_TRACE_CBID_cuMemcpyDtoHAsync_v2_ptsz, &q, s), 2);
  EXPECT_EQ(s[0].start, 0x30000u);
  EXPECT_EQ(s[1].start, 0x40000u);
  cuMemcpyPeerAsync_params peer{0x50000, nullptr, 0x60000, nullptr, 9, nullptr};
  ASSERT_EQ(CopySpans(CUPTI_DRIVER_TRACE_CBID_cuMemcpyPeerAsync, &peer, s), 2);
  EXPECT_EQ(s[0].start, 0x50000u);
  EXPECT_EQ(s[1].bytes, 9u);
}

TEST(CopySpansTest, SetsCountElementsAndRows) {
  cuMemsetD32Async_params p{0x1000, 5, 100, nullptr};
  CopySpan s[2];
  ASSERT_EQ(CopySpans(CUPTI_DRIVER_TRACE_CBID_cuMemsetD32Async, &p, s), 1);
  EXPECT_EQ(s[0].bytes, 400u);
  cuMemsetD2D16_v2_params q{0x2000, 1024, 3, 10, 4};
  ASSERT_EQ(CopySpans(CUPTI_DRIVER_TRACE_CBID_cuMemsetD2D16_v2, &q, s), 1);
  EXPECT_EQ(s[0].start, 0x2000u);
  EXPECT_EQ(s[0].bytes, 3u * 1024 + 20) << "three pitches, then the last row's 10 elements";
  cuMemsetD2D8_v2_params empty{0x2000, 1024, 3, 0, 4};
  ASSERT_EQ(CopySpans(CUPTI_DRIVER_TRACE_CBID_cuMemsetD2D8_v2, &empty, s), 1);
  EXPECT_EQ(s[0].bytes, 0u);
}

TEST(CopySpansTest, TwoDimensionalCopiesSpanTheirRowsAndSkipArrays) {
  CUDA_MEMCPY2D c{};
  c.srcMemoryType = CU_MEMORYTYPE_HOST;
  c.srcHost = reinterpret_cast<const void*>(0x100000);
  c.srcXInBytes = 8;
  c.srcY = 2;
  c.srcPitch = 4096;
  c.dstMemoryType = CU_MEMORYTYPE_ARRAY;
  c.WidthInBytes = 100;
  c.Height = 3;
  cuMemcpy2DAsync_v2_params p{&c, nullptr};
  CopySpan s[2];
  ASSERT_EQ(CopySpans(CUPTI_DRIVER_TRACE_CBID_cuMemcpy2DAsync_v2, &p, s), 2);
  EXPECT_EQ(s[0].bytes, 0u) << "an array has no span";
  EXPECT_EQ(s[1].start, 0x100000u + 2 * 4096 + 8);
  EXPECT_EQ(s[1].bytes, 2u * 4096 + 100);
  const CopySpan d3 = cuda::PitchedSpan(CU_MEMORYTYPE_DEVICE, nullptr, 0x1000000, 4, 1, 2, 512, 16, 64, 3, 2);
  EXPECT_EQ(d3.start, 0x1000000u + (2 * 16 + 1) * 512 + 4);
  EXPECT_EQ(d3.bytes, (1u * 16 + 2) * 512 + 64);
}

TEST(CopySpansTest, EveryEnabledCallbackIsACopyAndLaunchesAreNot) {
  std::vector<unsigned char> zeros(4096, 0);
  CopySpan s[2];
  EXPECT_EQ(cuda::kCopyCallbackCount, 50u);  // 20 linear copies, 24 sets, 6 2D copies
  for (size_t i = 0; i < cuda::kCopyCallbackCount; ++i) {
    const bool pitched_copy =
        cuda::kCopyCallbacks[i] == CUPTI_DRIVER_TRACE_CBID_cuMemcpy2D_v2 ||
        cuda::kCopyCallbacks[i] == CUPTI_DRIVER_TRACE_CBID_cuMemcpy2D_v2_ptds ||
        cuda::kCopyCallbacks[i] == CUPTI_DRIVER_TRACE_CBID_cuMemcpy2DUnaligned_v2 ||
        cuda::kCopyCallbacks[i] == CUPTI_DRIVER_TRACE_CBID_cuMemcpy2DUnaligned_v2_ptds ||
        cuda::kCopyCallbacks[i] == CUPTI_DRIVER_TRACE_CBID_cuMemcpy2DAsync_v2 ||
        cuda::kCopyCallbacks[i] == CUPTI_DRIVER_TRACE_CBID_cuMemcpy2DAsync_v2_ptsz;
    // A zeroed 2D copy has no struct: nothing to read.
    EXPECT_EQ(CopySpans(cuda::kCopyCallbacks[i], zeros.data(), s) > 0, !pitched_copy)
        << "cbid " << cuda::kCopyCallbacks[i];
  }
  EXPECT_EQ(CopySpans(CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel, zeros.data(), s), 0);
  EXPECT_EQ(CopySpans(CUPTI_DRIVER_TRACE_CBID_cuMemcpyHtoD_v2, nullptr, s), 0);
}

using BeforeCopyTest = testing::RuntimeTest;

TEST_F(BeforeCopyTest, ManagedBytesACopyTouchesBecomeDeviceResident) {
  const size_t pages = 16;
  absl::StatusOr<void*> alloc = rt_->Allocate(pages * kPageSize);
  ASSERT_TRUE(alloc.ok()) << alloc.status();
  void* p = *alloc;
  std::memset(p, 0x42, pages * kPageSize);
  auto* listener = dynamic_cast<LaunchListener*>(rt_.get());
  ASSERT_NE(listener, nullptr);
  const uint64_t a = reinterpret_cast<uint64_t>(p);
  listener->BeforeCopy(0, a + 100, 3 * kPageSize);  // pages 0..3
  absl::StatusOr<std::vector<int32_t>> res = rt_->Residency(p, pages * kPageSize);
  ASSERT_TRUE(res.ok()) << res.status();
  for (size_t i = 0; i < pages; ++i) EXPECT_EQ((*res)[i], i <= 3 ? 0 : kHost) << "page " << i;
  // Unmanaged bytes, a device that does not exist, nothing at all: left alone.
  int on_stack = 0;
  listener->BeforeCopy(0, reinterpret_cast<uint64_t>(&on_stack), sizeof(on_stack));
  listener->BeforeCopy(7, a, pages * kPageSize);
  listener->BeforeCopy(0, a, 0);
  res = rt_->Residency(p, pages * kPageSize);
  ASSERT_TRUE(res.ok());
  EXPECT_EQ((*res)[pages - 1], kHost);
  // The CPU reads what it wrote, faulting the moved pages back.
  for (size_t i = 0; i < pages * kPageSize; i += 999) ASSERT_EQ(static_cast<unsigned char*>(p)[i], 0x42) << i;
  ASSERT_TRUE(rt_->Free(p).ok());
}

}  // namespace
}  // namespace uhmm
