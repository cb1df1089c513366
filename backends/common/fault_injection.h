// Fault injection (uhmm/testing.h) as a decorator around a backend's devices, in the style of Intel
// UMF's trace provider: a Device that wraps the backend's Device, forwards every call, and fails
// copy batches (through a CopyEngine that wraps the device's engine) and chunk allocations as
// scheduled. Vendor-neutral: it sees only uhmm/backend.h. backends/registry.cc wraps a backend when
// Config::fault_injection (UHMM_INJECT) turns injection on; otherwise nothing of this runs.
//
// The pagemap stays the backend's (same owner, so its page_free/page_fault still find their
// device): the decorator interposes on it in place, pointing Pagemap::copy_engine at the wrapping
// engine (so page_fault and MigrateToDevice/MigrateToRam, which copy through it, see the failures)
// and its ops at trampolines that count page_free calls (FaultInjector::page_free_count) and call
// the backend's ops. It undoes both when it goes.
#ifndef UHMM_BACKENDS_COMMON_FAULT_INJECTION_H_
#define UHMM_BACKENDS_COMMON_FAULT_INJECTION_H_

#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "uhmm/backend.h"

namespace uhmm::fault_injection {

// `backend`, with every device it opens wrapped, when `spec` (Config::fault_injection) turns fault
// injection on; `backend` itself when it does not. INVALID_ARGUMENT for a bad spec.
absl::StatusOr<std::unique_ptr<Backend>> Wrap(std::unique_ptr<Backend> backend, std::string_view spec);

// The backend's own device behind `device` when `device` is a fault-injection decorator, else
// `device`.
Device* Unwrap(Device* device);

}  // namespace uhmm::fault_injection

#endif  // UHMM_BACKENDS_COMMON_FAULT_INJECTION_H_
