// The Intel GPU backend, through the Level Zero loader (loaded at run time). Device memory is
// zePhysicalMemCreate 2 MiB chunks mapped with zeVirtualMemMap at the managed addresses themselves
// (Placement::kSameAddress) inside a zeVirtualMemReserve range placed at a CPU reservation, over
// which the runtime maps the user view: one pointer, valid in kernels queued in the backend's
// context (uhmm_get_native_handles) and on the CPU. The reserve address is only a hint to the
// driver; the backend checks it and fails clearly when it is not honoured. Copies run on immediate
// command lists of a copy-only queue group (one per direction), fenced by a barrier event per
// batch. Transparent launches come from the loader's tracing layer (ze_tracer.h).
#ifndef UHMM_BACKENDS_LEVEL_ZERO_LEVEL_ZERO_BACKEND_H_
#define UHMM_BACKENDS_LEVEL_ZERO_LEVEL_ZERO_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "uhmm/backend.h"

namespace uhmm::level_zero {

// UNAVAILABLE with the reason when there is no loader, no GPU driver, no GPU, or a device that does
// not place virtual memory at the requested address.
absl::StatusOr<std::unique_ptr<Backend>> CreateLevelZeroBackend(const Config& config);

}  // namespace uhmm::level_zero

#endif  // UHMM_BACKENDS_LEVEL_ZERO_LEVEL_ZERO_BACKEND_H_
