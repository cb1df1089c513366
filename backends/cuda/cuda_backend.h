// The NVIDIA backend. Device memory is VRAM from cuMemCreate in 2 MiB chunks, mapped with
// cuMemMap at the managed addresses themselves (Placement::kSameAddress) inside a range reserved
// with cuMemAddressReserve, over which the runtime maps the user view: one pointer, valid in
// kernels and on the CPU. Copies run on two non-blocking streams (host->device, device->host)
// between VRAM and the range's runtime view, which is pinned with cuMemHostRegister, so a fault-back
// DMA lands in the page-cache page that UFFDIO_CONTINUE then maps (no staging copy). Transparent
// launches come from CUPTI driver-API callbacks. The driver and CUPTI are loaded at run time.
#ifndef UHMM_BACKENDS_CUDA_CUDA_BACKEND_H_
#define UHMM_BACKENDS_CUDA_CUDA_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "uhmm/backend.h"

namespace uhmm::cuda {

// UNAVAILABLE with the reason when there is no driver, no device, or no VMM support.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const Config& config);

}  // namespace uhmm::cuda

#endif  // UHMM_BACKENDS_CUDA_CUDA_BACKEND_H_
