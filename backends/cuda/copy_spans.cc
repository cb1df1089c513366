// Spans of CUDA copies and sets; see copy_spans.h.
#include "backends/cuda/copy_spans.h"

namespace uhmm::cuda {
namespace {

CUdeviceptr Addr(CUdeviceptr p) { return p; }
CUdeviceptr Addr(const void* p) { return reinterpret_cast<CUdeviceptr>(p); }

template <typename Copy2D>
int Spans2D(const Copy2D* c, CopySpan out[2]) {
  if (c == nullptr) return 0;
  out[0] = PitchedSpan(c->dstMemoryType, c->dstHost, c->dstDevice, c->dstXInBytes, c->dstY, 0, c->dstPitch, 0,
                       c->WidthInBytes, c->Height, 1);
  out[1] = PitchedSpan(c->srcMemoryType, c->srcHost, c->srcDevice, c->srcXInBytes, c->srcY, 0, c->srcPitch, 0,
                       c->WidthInBytes, c->Height, 1);
  return 2;
}

}  // namespace

// Each entry point: its callback id, parameter struct and how to read the spans from it.
#define UHMM_LINEAR(name, dst, src, n)                         \
  case CUPTI_DRIVER_TRACE_CBID_##name: {                       \
    const auto* p = static_cast<const name##_params*>(params); \
    out[0] = {Addr(p->dst), p->n};                             \
    out[1] = {Addr(p->src), p->n};                             \
    return 2;                                                  \
  }
#define UHMM_SET(name, elem)                                   \
  case CUPTI_DRIVER_TRACE_CBID_##name: {                       \
    const auto* p = static_cast<const name##_params*>(params); \
    out[0] = {p->dstDevice, p->N * (elem)};                    \
    return 1;                                                  \
  }
#define UHMM_SET2D(name, elem)                                                    \
  case CUPTI_DRIVER_TRACE_CBID_##name: {                                          \
    const auto* p = static_cast<const name##_params*>(params);                    \
    if (p->Width != 0 && p->Height != 0)                                          \
      out[0] = {p->dstDevice, (p->Height - 1) * p->dstPitch + p->Width * (elem)}; \
    return 1;                                                                     \
  }
#define UHMM_COPY2D(name)              \
  case CUPTI_DRIVER_TRACE_CBID_##name: \
    return Spans2D(static_cast<const name##_params*>(params)->pCopy, out);

// clang-format off: one entry point per line
#define UHMM_LINEAR_FORMS(X)                                    \
  X(cuMemcpy, dst, src, ByteCount)                              \
  X(cuMemcpyAsync, dst, src, ByteCount)                         \
  X(cuMemcpy_ptds, dst, src, ByteCount)                         \
  X(cuMemcpyAsync_ptsz, dst, src, ByteCount)                    \
  X(cuMemcpyHtoD_v2, dstDevice, srcHost, ByteCount)             \
  X(cuMemcpyHtoD_v2_ptds, dstDevice, srcHost, ByteCount)        \
  X(cuMemcpyHtoDAsync_v2, dstDevice, srcHost, ByteCount)        \
  X(cuMemcpyHtoDAsync_v2_ptsz, dstDevice, srcHost, ByteCount)   \
  X(cuMemcpyDtoH_v2, dstHost, srcDevice, ByteCount)             \
  X(cuMemcpyDtoH_v2_ptds, dstHost, srcDevice, ByteCount)        \
  X(cuMemcpyDtoHAsync_v2, dstHost, srcDevice, ByteCount)        \
  X(cuMemcpyDtoHAsync_v2_ptsz, dstHost, srcDevice, ByteCount)   \
  X(cuMemcpyDtoD_v2, dstDevice, srcDevice, ByteCount)           \
  X(cuMemcpyDtoD_v2_ptds, dstDevice, srcDevice, ByteCount)      \
  X(cuMemcpyDtoDAsync_v2, dstDevice, srcDevice, ByteCount)      \
  X(cuMemcpyDtoDAsync_v2_ptsz, dstDevice, srcDevice, ByteCount) \
  X(cuMemcpyPeer, dstDevice, srcDevice, ByteCount)              \
  X(cuMemcpyPeer_ptds, dstDevice, srcDevice, ByteCount)         \
  X(cuMemcpyPeerAsync, dstDevice, srcDevice, ByteCount)         \
  X(cuMemcpyPeerAsync_ptsz, dstDevice, srcDevice, ByteCount)
#define UHMM_SET_FORMS(X)     \
  X(cuMemsetD8_v2, 1)         \
  X(cuMemsetD8_v2_ptds, 1)    \
  X(cuMemsetD8Async, 1)       \
  X(cuMemsetD8Async_ptsz, 1)  \
  X(cuMemsetD16_v2, 2)        \
  X(cuMemsetD16_v2_ptds, 2)   \
  X(cuMemsetD16Async, 2)      \
  X(cuMemsetD16Async_ptsz, 2) \
  X(cuMemsetD32_v2, 4)        \
  X(cuMemsetD32_v2_ptds, 4)   \
  X(cuMemsetD32Async, 4)      \
  X(cuMemsetD32Async_ptsz, 4)
#define UHMM_SET2D_FORMS(X)     \
  X(cuMemsetD2D8_v2, 1)         \
  X(cuMemsetD2D8_v2_ptds, 1)    \
  X(cuMemsetD2D8Async, 1)       \
  X(cuMemsetD2D8Async_ptsz, 1)  \
  X(cuMemsetD2D16_v2, 2)        \
  X(cuMemsetD2D16_v2_ptds, 2)   \
  X(cuMemsetD2D16Async, 2)      \
  X(cuMemsetD2D16Async_ptsz, 2) \
  X(cuMemsetD2D32_v2, 4)        \
  X(cuMemsetD2D32_v2_ptds, 4)   \
  X(cuMemsetD2D32Async, 4)      \
  X(cuMemsetD2D32Async_ptsz, 4)
#define UHMM_COPY2D_FORMS(X)     \
  X(cuMemcpy2D_v2)               \
  X(cuMemcpy2D_v2_ptds)          \
  X(cuMemcpy2DUnaligned_v2)      \
  X(cuMemcpy2DUnaligned_v2_ptds) \
  X(cuMemcpy2DAsync_v2)          \
  X(cuMemcpy2DAsync_v2_ptsz)
// clang-format on

int CopySpans(CUpti_CallbackId cbid, const void* params, CopySpan out[2]) {
  out[0] = out[1] = {};
  if (params == nullptr) return 0;
  switch (cbid) {
    UHMM_LINEAR_FORMS(UHMM_LINEAR)
    UHMM_SET_FORMS(UHMM_SET)
    UHMM_SET2D_FORMS(UHMM_SET2D)
    UHMM_COPY2D_FORMS(UHMM_COPY2D)
    default:
      return 0;
  }
}

#define UHMM_CBID_4(name, a, b, c) CUPTI_DRIVER_TRACE_CBID_##name,
#define UHMM_CBID_2(name, a) CUPTI_DRIVER_TRACE_CBID_##name,
#define UHMM_CBID_1(name) CUPTI_DRIVER_TRACE_CBID_##name,
const CUpti_CallbackId kCopyCallbacks[] = {UHMM_LINEAR_FORMS(UHMM_CBID_4) UHMM_SET_FORMS(UHMM_CBID_2)
                                               UHMM_SET2D_FORMS(UHMM_CBID_2) UHMM_COPY2D_FORMS(UHMM_CBID_1)};
const size_t kCopyCallbackCount = sizeof(kCopyCallbacks) / sizeof(kCopyCallbacks[0]);

}  // namespace uhmm::cuda
