// The device-visible bytes a CUDA copy or set touches, from its arguments: what must be resident
// before the driver runs it when those bytes are uhmm memory. Used by the CUPTI subscription
// (programs that link libuhmm); the interposer (backends/cuda/interpose) rewrites the calls it
// replaces instead, with the same pitched spans (pitched_span.h).
#ifndef UHMM_BACKENDS_CUDA_COPY_SPANS_H_
#define UHMM_BACKENDS_CUDA_COPY_SPANS_H_

#include <cuda.h>
#include <cupti.h>

#include <cstddef>

#include "backends/cuda/pitched_span.h"

namespace uhmm::cuda {

// The spans of a driver copy or set entry point (a CUPTI driver-API callback id and its parameter
// struct): the destination and the source (out[0], out[1]). Returns how many it filled: 0 for entry
// points that are not copies or sets, or whose spans it does not know (3D, batches).
int CopySpans(CUpti_CallbackId cbid, const void* params, CopySpan out[2]);

// The callback ids CopySpans knows: what a CUPTI subscriber enables.
extern const CUpti_CallbackId kCopyCallbacks[];
extern const size_t kCopyCallbackCount;

}  // namespace uhmm::cuda

#endif  // UHMM_BACKENDS_CUDA_COPY_SPANS_H_
