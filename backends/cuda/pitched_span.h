// The bytes one side of a pitched (2D/3D) CUDA copy touches, from the fields CUDA_MEMCPY2D, _3D and
// _3D_PEER share. Header only (cuda.h's types), for the CUPTI copy callbacks (copy_spans.cc) and the
// interposer's copies (interpose/copy_entry_points.cc) alike.
#ifndef UHMM_BACKENDS_CUDA_PITCHED_SPAN_H_
#define UHMM_BACKENDS_CUDA_PITCHED_SPAN_H_

#include <cuda.h>

#include <cstddef>

namespace uhmm::cuda {

struct CopySpan {
  CUdeviceptr start = 0;
  size_t bytes = 0;  // 0: nothing (an array side, an empty copy)
};

// The address a side's offsets count from: its host pointer or its device pointer, as its memory
// type says; 0 for an array.
inline CUdeviceptr PitchedBase(CUmemorytype type, const void* host, CUdeviceptr device) {
  if (type == CU_MEMORYTYPE_HOST) return reinterpret_cast<CUdeviceptr>(host);
  if (type == CU_MEMORYTYPE_DEVICE || type == CU_MEMORYTYPE_UNIFIED) return device;
  return 0;
}

// The side's span, from its first byte to its last. Arrays and empty copies have none.
inline CopySpan PitchedSpan(CUmemorytype type, const void* host, CUdeviceptr device, size_t x, size_t y,
                            size_t z, size_t pitch, size_t height, size_t width, size_t rows, size_t depth) {
  const CUdeviceptr base = PitchedBase(type, host, device);
  if (width == 0 || rows == 0 || depth == 0 || base == 0) return {};
  return {base + (z * height + y) * pitch + x, ((depth - 1) * height + (rows - 1)) * pitch + width};
}

}  // namespace uhmm::cuda

#endif  // UHMM_BACKENDS_CUDA_PITCHED_SPAN_H_
