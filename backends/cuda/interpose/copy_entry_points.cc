// The interposer's copies and sets: every cuMemcpy*/cuMemset* form with a uhmm address as source or
// destination first makes the span it touches resident on the GPU (ManagedMemory::ToDevice), so the
// driver, which sees uhmm memory as device memory, reads what the CPU wrote and the CPU's next touch
// faults in what the GPU wrote. The copy itself is then the real driver's, in its stream's order.
// A uhmm address passed where the driver takes a host pointer becomes a device pointer: such a copy
// goes through the form that takes one (cuMemcpy, cuMemcpyAsync, cuMemcpy2D).
#define __CUDA_API_VERSION_INTERNAL 1  // every exported form declared (real_driver.h)
#include <cuda.h>

#include <algorithm>
#include <optional>

#include "backends/cuda/interpose/managed_memory.h"
#include "backends/cuda/interpose/real_driver.h"
#include "backends/cuda/pitched_span.h"

#define UHMM_EXPORT extern "C" __attribute__((visibility("default")))

using uhmm::interpose::ManagedMemory;

namespace {

CUdeviceptr Addr(const void* p) { return reinterpret_cast<CUdeviceptr>(p); }

bool IsManaged(const ManagedMemory::Use& mm, CUdeviceptr p) { return mm && mm->Find(p).has_value(); }

// Makes the managed parts of two spans device-resident (either may be empty).
CUresult Prepare(const char* call, CUdeviceptr a, size_t a_bytes, CUdeviceptr b = 0, size_t b_bytes = 0) {
  ManagedMemory::Use mm = ManagedMemory::Get();
  if (!mm) return CUDA_SUCCESS;
  if (CUresult r = mm->ToDevice(call, a, a_bytes); r != CUDA_SUCCESS) return r;
  return mm->ToDevice(call, b, b_bytes);
}

// One side of a 2D/3D copy: its first byte and span, from the fields the structs share. A host side
// that is uhmm memory becomes a device side.
template <typename Side>
CUresult PrepareSide(const char* call, const ManagedMemory::Use& mm, CUmemorytype* type, Side host,
                     CUdeviceptr* device, size_t x, size_t y, size_t z, size_t pitch, size_t height,
                     size_t width, size_t rows, size_t depth) {
  const uhmm::cuda::CopySpan span =
      uhmm::cuda::PitchedSpan(*type, host, *device, x, y, z, pitch, height, width, rows, depth);
  const CUdeviceptr base = uhmm::cuda::PitchedBase(*type, host, *device);
  if (span.bytes == 0 || !IsManaged(mm, base)) return CUDA_SUCCESS;  // an array, empty, or not uhmm's
  if (CUresult r = mm->ToDevice(call, span.start, span.bytes); r != CUDA_SUCCESS) return r;
  if (*type == CU_MEMORYTYPE_HOST) {
    *type = CU_MEMORYTYPE_DEVICE;
    *device = base;
  }
  return CUDA_SUCCESS;
}

// CUDA_MEMCPY2D, CUDA_MEMCPY3D and CUDA_MEMCPY3D_PEER, rewritten for uhmm sides.
CUresult Prepare2D(const char* call, CUDA_MEMCPY2D* c) {
  ManagedMemory::Use mm = ManagedMemory::Get();
  if (!mm) return CUDA_SUCCESS;
  if (CUresult r = PrepareSide(call, mm, &c->srcMemoryType, c->srcHost, &c->srcDevice, c->srcXInBytes,
                               c->srcY, 0, c->srcPitch, 0, c->WidthInBytes, c->Height, 1);
      r != CUDA_SUCCESS)
    return r;
  return PrepareSide(call, mm, &c->dstMemoryType, c->dstHost, &c->dstDevice, c->dstXInBytes, c->dstY, 0,
                     c->dstPitch, 0, c->WidthInBytes, c->Height, 1);
}
template <typename Copy3D>
CUresult Prepare3D(const char* call, Copy3D* c) {
  ManagedMemory::Use mm = ManagedMemory::Get();
  if (!mm) return CUDA_SUCCESS;
  if (CUresult r =
          PrepareSide(call, mm, &c->srcMemoryType, c->srcHost, &c->srcDevice, c->srcXInBytes, c->srcY,
                      c->srcZ, c->srcPitch, c->srcHeight, c->WidthInBytes, c->Height, c->Depth);
      r != CUDA_SUCCESS)
    return r;
  return PrepareSide(call, mm, &c->dstMemoryType, c->dstHost, &c->dstDevice, c->dstXInBytes, c->dstY, c->dstZ,
                     c->dstPitch, c->dstHeight, c->WidthInBytes, c->Height, c->Depth);
}

// A copy between an array and a uhmm "host" buffer, as the 2D copy of one row it is.
CUDA_MEMCPY2D ArrayRow(CUarray array, size_t offset, CUdeviceptr linear, size_t bytes, bool to_array) {
  CUDA_MEMCPY2D c{};
  if (to_array) {
    c.srcMemoryType = CU_MEMORYTYPE_DEVICE;
    c.srcDevice = linear;
    c.srcPitch = bytes;  // one row: the driver checks pitch >= width
    c.dstMemoryType = CU_MEMORYTYPE_ARRAY;
    c.dstArray = array;
    c.dstXInBytes = offset;
  } else {
    c.srcMemoryType = CU_MEMORYTYPE_ARRAY;
    c.srcArray = array;
    c.srcXInBytes = offset;
    c.dstMemoryType = CU_MEMORYTYPE_DEVICE;
    c.dstDevice = linear;
    c.dstPitch = bytes;
  }
  c.WidthInBytes = bytes;
  c.Height = 1;
  return c;
}

// Batches: every pointer operand's span (1D), or its whole allocation (3D).
CUresult PrepareBatch(const char* call, CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes, size_t count) {
  if (dsts == nullptr || srcs == nullptr || sizes == nullptr) return CUDA_SUCCESS;  // the driver says
  for (size_t i = 0; i < count; ++i) {
    if (CUresult r = Prepare(call, dsts[i], sizes[i], srcs[i], sizes[i]); r != CUDA_SUCCESS) return r;
  }
  return CUDA_SUCCESS;
}
CUresult Prepare3DBatch(const char* call, size_t n, const CUDA_MEMCPY3D_BATCH_OP* ops) {
  ManagedMemory::Use mm = ManagedMemory::Get();
  if (!mm || ops == nullptr) return CUDA_SUCCESS;
  for (size_t i = 0; i < n; ++i) {
    for (const CUmemcpy3DOperand* o : {&ops[i].src, &ops[i].dst}) {
      if (o->type != CU_MEMCPY_OPERAND_TYPE_POINTER) continue;
      if (CUresult r = mm->AllocationToDevice(call, o->op.ptr.ptr); r != CUDA_SUCCESS) return r;
    }
  }
  return CUDA_SUCCESS;
}

}  // namespace

#define UHMM_NONE
#define UHMM_STREAM_PARAM , CUstream st
#define UHMM_STREAM_ARG , st

// Copies between addresses the driver resolves itself (device, unified, peer): both spans.
#define UHMM_COPY(name, params, args, dst, src, bytes)                                    \
  UHMM_EXPORT CUresult name params {                                                      \
    if (CUresult r = Prepare(#name, dst, bytes, src, bytes); r != CUDA_SUCCESS) return r; \
    return UHMM_REAL(name) args;                                                          \
  }
UHMM_COPY(cuMemcpy, (CUdeviceptr d, CUdeviceptr s, size_t n), (d, s, n), d, s, n)
UHMM_COPY(cuMemcpy_ptds, (CUdeviceptr d, CUdeviceptr s, size_t n), (d, s, n), d, s, n)
UHMM_COPY(cuMemcpyAsync, (CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st), (d, s, n, st), d, s, n)
UHMM_COPY(cuMemcpyAsync_ptsz, (CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st), (d, s, n, st), d, s, n)
UHMM_COPY(cuMemcpyDtoD_v2, (CUdeviceptr d, CUdeviceptr s, size_t n), (d, s, n), d, s, n)
UHMM_COPY(cuMemcpyDtoD_v2_ptds, (CUdeviceptr d, CUdeviceptr s, size_t n), (d, s, n), d, s, n)
UHMM_COPY(cuMemcpyDtoDAsync_v2, (CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st), (d, s, n, st), d, s, n)
UHMM_COPY(cuMemcpyDtoDAsync_v2_ptsz, (CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st), (d, s, n, st), d,
          s, n)
UHMM_COPY(cuMemcpyPeer, (CUdeviceptr d, CUcontext dc, CUdeviceptr s, CUcontext sc, size_t n),
          (d, dc, s, sc, n), d, s, n)
UHMM_COPY(cuMemcpyPeer_ptds, (CUdeviceptr d, CUcontext dc, CUdeviceptr s, CUcontext sc, size_t n),
          (d, dc, s, sc, n), d, s, n)
UHMM_COPY(cuMemcpyPeerAsync,
          (CUdeviceptr d, CUcontext dc, CUdeviceptr s, CUcontext sc, size_t n, CUstream st),
          (d, dc, s, sc, n, st), d, s, n)
UHMM_COPY(cuMemcpyPeerAsync_ptsz,
          (CUdeviceptr d, CUcontext dc, CUdeviceptr s, CUcontext sc, size_t n, CUstream st),
          (d, dc, s, sc, n, st), d, s, n)
UHMM_COPY(cuMemcpyDtoA_v2, (CUarray a, size_t off, CUdeviceptr s, size_t n), (a, off, s, n), 0, s, n)
UHMM_COPY(cuMemcpyDtoA_v2_ptds, (CUarray a, size_t off, CUdeviceptr s, size_t n), (a, off, s, n), 0, s, n)
UHMM_COPY(cuMemcpyAtoD_v2, (CUdeviceptr d, CUarray a, size_t off, size_t n), (d, a, off, n), d, 0, n)
UHMM_COPY(cuMemcpyAtoD_v2_ptds, (CUdeviceptr d, CUarray a, size_t off, size_t n), (d, a, off, n), d, 0, n)
#undef UHMM_COPY

// Copies with a host-pointer side: a uhmm host side makes it a copy between device addresses.
#define UHMM_HOST_COPY(name, params, args, dst, src, bytes, host, generic, generic_args)  \
  UHMM_EXPORT CUresult name params {                                                      \
    if (CUresult r = Prepare(#name, dst, bytes, src, bytes); r != CUDA_SUCCESS) return r; \
    if (IsManaged(ManagedMemory::Get(), host)) return UHMM_REAL(generic) generic_args;    \
    return UHMM_REAL(name) args;                                                          \
  }
UHMM_HOST_COPY(cuMemcpyHtoD_v2, (CUdeviceptr d, const void* s, size_t n), (d, s, n), d, Addr(s), n, Addr(s),
               cuMemcpy, (d, Addr(s), n))
UHMM_HOST_COPY(cuMemcpyHtoD_v2_ptds, (CUdeviceptr d, const void* s, size_t n), (d, s, n), d, Addr(s), n,
               Addr(s), cuMemcpy_ptds, (d, Addr(s), n))
UHMM_HOST_COPY(cuMemcpyHtoDAsync_v2, (CUdeviceptr d, const void* s, size_t n, CUstream st), (d, s, n, st), d,
               Addr(s), n, Addr(s), cuMemcpyAsync, (d, Addr(s), n, st))
UHMM_HOST_COPY(cuMemcpyHtoDAsync_v2_ptsz, (CUdeviceptr d, const void* s, size_t n, CUstream st),
               (d, s, n, st), d, Addr(s), n, Addr(s), cuMemcpyAsync_ptsz, (d, Addr(s), n, st))
UHMM_HOST_COPY(cuMemcpyDtoH_v2, (void* d, CUdeviceptr s, size_t n), (d, s, n), Addr(d), s, n, Addr(d),
               cuMemcpy, (Addr(d), s, n))
UHMM_HOST_COPY(cuMemcpyDtoH_v2_ptds, (void* d, CUdeviceptr s, size_t n), (d, s, n), Addr(d), s, n, Addr(d),
               cuMemcpy_ptds, (Addr(d), s, n))
UHMM_HOST_COPY(cuMemcpyDtoHAsync_v2, (void* d, CUdeviceptr s, size_t n, CUstream st), (d, s, n, st), Addr(d),
               s, n, Addr(d), cuMemcpyAsync, (Addr(d), s, n, st))
UHMM_HOST_COPY(cuMemcpyDtoHAsync_v2_ptsz, (void* d, CUdeviceptr s, size_t n, CUstream st), (d, s, n, st),
               Addr(d), s, n, Addr(d), cuMemcpyAsync_ptsz, (Addr(d), s, n, st))
#undef UHMM_HOST_COPY

// Arrays with a host-pointer side: a uhmm host side becomes the device side of a one-row 2D copy.
#define UHMM_ARRAY_COPY(name, params, args, host, to_array, a, off, n, copy2d, stream_arg) \
  UHMM_EXPORT CUresult name params {                                                       \
    if (IsManaged(ManagedMemory::Get(), Addr(host))) {                                     \
      CUDA_MEMCPY2D c = ArrayRow(a, off, Addr(host), n, to_array);                         \
      if (CUresult r = Prepare(#name, Addr(host), n); r != CUDA_SUCCESS) return r;         \
      return UHMM_REAL(copy2d)(&c stream_arg);                                             \
    }                                                                                      \
    return UHMM_REAL(name) args;                                                           \
  }
UHMM_ARRAY_COPY(cuMemcpyHtoA_v2, (CUarray a, size_t off, const void* s, size_t n), (a, off, s, n), s, true, a,
                off, n, cuMemcpy2D_v2, UHMM_NONE)
UHMM_ARRAY_COPY(cuMemcpyHtoA_v2_ptds, (CUarray a, size_t off, const void* s, size_t n), (a, off, s, n), s,
                true, a, off, n, cuMemcpy2D_v2_ptds, UHMM_NONE)
UHMM_ARRAY_COPY(cuMemcpyHtoAAsync_v2, (CUarray a, size_t off, const void* s, size_t n, CUstream st),
                (a, off, s, n, st), s, true, a, off, n, cuMemcpy2DAsync_v2, UHMM_STREAM_ARG)
UHMM_ARRAY_COPY(cuMemcpyHtoAAsync_v2_ptsz, (CUarray a, size_t off, const void* s, size_t n, CUstream st),
                (a, off, s, n, st), s, true, a, off, n, cuMemcpy2DAsync_v2_ptsz, UHMM_STREAM_ARG)
UHMM_ARRAY_COPY(cuMemcpyAtoH_v2, (void* d, CUarray a, size_t off, size_t n), (d, a, off, n), d, false, a, off,
                n, cuMemcpy2D_v2, UHMM_NONE)
UHMM_ARRAY_COPY(cuMemcpyAtoH_v2_ptds, (void* d, CUarray a, size_t off, size_t n), (d, a, off, n), d, false, a,
                off, n, cuMemcpy2D_v2_ptds, UHMM_NONE)
UHMM_ARRAY_COPY(cuMemcpyAtoHAsync_v2, (void* d, CUarray a, size_t off, size_t n, CUstream st),
                (d, a, off, n, st), d, false, a, off, n, cuMemcpy2DAsync_v2, UHMM_STREAM_ARG)
UHMM_ARRAY_COPY(cuMemcpyAtoHAsync_v2_ptsz, (void* d, CUarray a, size_t off, size_t n, CUstream st),
                (d, a, off, n, st), d, false, a, off, n, cuMemcpy2DAsync_v2_ptsz, UHMM_STREAM_ARG)
#undef UHMM_ARRAY_COPY

// 2D and 3D copies: the struct, rewritten where a side is uhmm's.
#define UHMM_STRUCT_COPY(name, type, prepare, extra_params, extra_args) \
  UHMM_EXPORT CUresult name(const type* p extra_params) {               \
    if (p == nullptr) return UHMM_REAL(name)(p extra_args);             \
    type c = *p;                                                        \
    if (CUresult r = prepare(#name, &c); r != CUDA_SUCCESS) return r;   \
    return UHMM_REAL(name)(&c extra_args);                              \
  }
UHMM_STRUCT_COPY(cuMemcpy2D_v2, CUDA_MEMCPY2D, Prepare2D, UHMM_NONE, UHMM_NONE)
UHMM_STRUCT_COPY(cuMemcpy2D_v2_ptds, CUDA_MEMCPY2D, Prepare2D, UHMM_NONE, UHMM_NONE)
UHMM_STRUCT_COPY(cuMemcpy2DUnaligned_v2, CUDA_MEMCPY2D, Prepare2D, UHMM_NONE, UHMM_NONE)
UHMM_STRUCT_COPY(cuMemcpy2DUnaligned_v2_ptds, CUDA_MEMCPY2D, Prepare2D, UHMM_NONE, UHMM_NONE)
UHMM_STRUCT_COPY(cuMemcpy2DAsync_v2, CUDA_MEMCPY2D, Prepare2D, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
UHMM_STRUCT_COPY(cuMemcpy2DAsync_v2_ptsz, CUDA_MEMCPY2D, Prepare2D, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
UHMM_STRUCT_COPY(cuMemcpy3D_v2, CUDA_MEMCPY3D, Prepare3D, UHMM_NONE, UHMM_NONE)
UHMM_STRUCT_COPY(cuMemcpy3D_v2_ptds, CUDA_MEMCPY3D, Prepare3D, UHMM_NONE, UHMM_NONE)
UHMM_STRUCT_COPY(cuMemcpy3DAsync_v2, CUDA_MEMCPY3D, Prepare3D, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
UHMM_STRUCT_COPY(cuMemcpy3DAsync_v2_ptsz, CUDA_MEMCPY3D, Prepare3D, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
UHMM_STRUCT_COPY(cuMemcpy3DPeer, CUDA_MEMCPY3D_PEER, Prepare3D, UHMM_NONE, UHMM_NONE)
UHMM_STRUCT_COPY(cuMemcpy3DPeer_ptds, CUDA_MEMCPY3D_PEER, Prepare3D, UHMM_NONE, UHMM_NONE)
UHMM_STRUCT_COPY(cuMemcpy3DPeerAsync, CUDA_MEMCPY3D_PEER, Prepare3D, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
UHMM_STRUCT_COPY(cuMemcpy3DPeerAsync_ptsz, CUDA_MEMCPY3D_PEER, Prepare3D, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
#undef UHMM_STRUCT_COPY

// Batched copies.
UHMM_EXPORT CUresult cuMemcpyBatchAsync_v2(CUdeviceptr* d, CUdeviceptr* s, size_t* n, size_t count,
                                           CUmemcpyAttributes* attrs, size_t* idx, size_t nattrs,
                                           CUstream st) {
  if (CUresult r = PrepareBatch("cuMemcpyBatchAsync", d, s, n, count); r != CUDA_SUCCESS) return r;
  return UHMM_REAL(cuMemcpyBatchAsync_v2)(d, s, n, count, attrs, idx, nattrs, st);
}
UHMM_EXPORT CUresult cuMemcpyBatchAsync_v2_ptsz(CUdeviceptr* d, CUdeviceptr* s, size_t* n, size_t count,
                                                CUmemcpyAttributes* attrs, size_t* idx, size_t nattrs,
                                                CUstream st) {
  if (CUresult r = PrepareBatch("cuMemcpyBatchAsync", d, s, n, count); r != CUDA_SUCCESS) return r;
  return UHMM_REAL(cuMemcpyBatchAsync_v2_ptsz)(d, s, n, count, attrs, idx, nattrs, st);
}
UHMM_EXPORT CUresult cuMemcpyBatchAsync(CUdeviceptr* d, CUdeviceptr* s, size_t* n, size_t count,
                                        CUmemcpyAttributes* attrs, size_t* idx, size_t nattrs, size_t* fail,
                                        CUstream st) {
  if (CUresult r = PrepareBatch("cuMemcpyBatchAsync", d, s, n, count); r != CUDA_SUCCESS) return r;
  return UHMM_REAL(cuMemcpyBatchAsync)(d, s, n, count, attrs, idx, nattrs, fail, st);
}
UHMM_EXPORT CUresult cuMemcpyBatchAsync_ptsz(CUdeviceptr* d, CUdeviceptr* s, size_t* n, size_t count,
                                             CUmemcpyAttributes* attrs, size_t* idx, size_t nattrs,
                                             size_t* fail, CUstream st) {
  if (CUresult r = PrepareBatch("cuMemcpyBatchAsync", d, s, n, count); r != CUDA_SUCCESS) return r;
  return UHMM_REAL(cuMemcpyBatchAsync_ptsz)(d, s, n, count, attrs, idx, nattrs, fail, st);
}
UHMM_EXPORT CUresult cuMemcpy3DBatchAsync_v2(size_t n, CUDA_MEMCPY3D_BATCH_OP* ops, unsigned long long flags,
                                             CUstream st) {
  if (CUresult r = Prepare3DBatch("cuMemcpy3DBatchAsync", n, ops); r != CUDA_SUCCESS) return r;
  return UHMM_REAL(cuMemcpy3DBatchAsync_v2)(n, ops, flags, st);
}
UHMM_EXPORT CUresult cuMemcpy3DBatchAsync_v2_ptsz(size_t n, CUDA_MEMCPY3D_BATCH_OP* ops,
                                                  unsigned long long flags, CUstream st) {
  if (CUresult r = Prepare3DBatch("cuMemcpy3DBatchAsync", n, ops); r != CUDA_SUCCESS) return r;
  return UHMM_REAL(cuMemcpy3DBatchAsync_v2_ptsz)(n, ops, flags, st);
}
UHMM_EXPORT CUresult cuMemcpy3DBatchAsync(size_t n, CUDA_MEMCPY3D_BATCH_OP* ops, size_t* fail,
                                          unsigned long long flags, CUstream st) {
  if (CUresult r = Prepare3DBatch("cuMemcpy3DBatchAsync", n, ops); r != CUDA_SUCCESS) return r;
  return UHMM_REAL(cuMemcpy3DBatchAsync)(n, ops, fail, flags, st);
}
UHMM_EXPORT CUresult cuMemcpy3DBatchAsync_ptsz(size_t n, CUDA_MEMCPY3D_BATCH_OP* ops, size_t* fail,
                                               unsigned long long flags, CUstream st) {
  if (CUresult r = Prepare3DBatch("cuMemcpy3DBatchAsync", n, ops); r != CUDA_SUCCESS) return r;
  return UHMM_REAL(cuMemcpy3DBatchAsync_ptsz)(n, ops, fail, flags, st);
}

// Sets: the destination span (elements of 1, 2 or 4 bytes; 2D: rows of a pitch).
#define UHMM_SET(name, elem, value_type, extra_params, extra_args)                \
  UHMM_EXPORT CUresult name(CUdeviceptr d, value_type v, size_t n extra_params) { \
    if (CUresult r = Prepare(#name, d, n * (elem)); r != CUDA_SUCCESS) return r;  \
    return UHMM_REAL(name)(d, v, n extra_args);                                   \
  }
UHMM_SET(cuMemsetD8_v2, 1, unsigned char, UHMM_NONE, UHMM_NONE)
UHMM_SET(cuMemsetD8_v2_ptds, 1, unsigned char, UHMM_NONE, UHMM_NONE)
UHMM_SET(cuMemsetD16_v2, 2, unsigned short, UHMM_NONE, UHMM_NONE)
UHMM_SET(cuMemsetD16_v2_ptds, 2, unsigned short, UHMM_NONE, UHMM_NONE)
UHMM_SET(cuMemsetD32_v2, 4, unsigned int, UHMM_NONE, UHMM_NONE)
UHMM_SET(cuMemsetD32_v2_ptds, 4, unsigned int, UHMM_NONE, UHMM_NONE)
UHMM_SET(cuMemsetD8Async, 1, unsigned char, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
UHMM_SET(cuMemsetD8Async_ptsz, 1, unsigned char, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
UHMM_SET(cuMemsetD16Async, 2, unsigned short, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
UHMM_SET(cuMemsetD16Async_ptsz, 2, unsigned short, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
UHMM_SET(cuMemsetD32Async, 4, unsigned int, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
UHMM_SET(cuMemsetD32Async_ptsz, 4, unsigned int, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
#undef UHMM_SET

#define UHMM_SET2D(name, elem, value_type, extra_params, extra_args)                                      \
  UHMM_EXPORT CUresult name(CUdeviceptr d, size_t pitch, value_type v, size_t w, size_t h extra_params) { \
    if (w != 0 && h != 0) {                                                                               \
      if (CUresult r = Prepare(#name, d, (h - 1) * pitch + w * (elem)); r != CUDA_SUCCESS) return r;      \
    }                                                                                                     \
    return UHMM_REAL(name)(d, pitch, v, w, h extra_args);                                                 \
  }
UHMM_SET2D(cuMemsetD2D8_v2, 1, unsigned char, UHMM_NONE, UHMM_NONE)
UHMM_SET2D(cuMemsetD2D8_v2_ptds, 1, unsigned char, UHMM_NONE, UHMM_NONE)
UHMM_SET2D(cuMemsetD2D16_v2, 2, unsigned short, UHMM_NONE, UHMM_NONE)
UHMM_SET2D(cuMemsetD2D16_v2_ptds, 2, unsigned short, UHMM_NONE, UHMM_NONE)
UHMM_SET2D(cuMemsetD2D32_v2, 4, unsigned int, UHMM_NONE, UHMM_NONE)
UHMM_SET2D(cuMemsetD2D32_v2_ptds, 4, unsigned int, UHMM_NONE, UHMM_NONE)
UHMM_SET2D(cuMemsetD2D8Async, 1, unsigned char, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
UHMM_SET2D(cuMemsetD2D8Async_ptsz, 1, unsigned char, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
UHMM_SET2D(cuMemsetD2D16Async, 2, unsigned short, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
UHMM_SET2D(cuMemsetD2D16Async_ptsz, 2, unsigned short, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
UHMM_SET2D(cuMemsetD2D32Async, 4, unsigned int, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
UHMM_SET2D(cuMemsetD2D32Async_ptsz, 4, unsigned int, UHMM_STREAM_PARAM, UHMM_STREAM_ARG)
#undef UHMM_SET2D
