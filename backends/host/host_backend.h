// The host-emulated device (like the kernel's lib/test_hmm.c dmirror): "VRAM" is separate host
// memory that the managed pointer never maps, copied by a copy-engine thread with asynchronous
// completion. It honours the same page_free/page_fault contract as a GPU. With
// Config::host_same_address it also emulates one pointer the way the CUDA backend does it (device
// memory mapped at the managed addresses, Placement::kSameAddress). Tests reach a device through
// LiveDevice() for emulated kernel launches (fault injection is uhmm/testing.h's, for every backend).
#ifndef UHMM_BACKENDS_HOST_HOST_BACKEND_H_
#define UHMM_BACKENDS_HOST_HOST_BACKEND_H_

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "uhmm/backend.h"
#include "uhmm/testing.h"

namespace uhmm::host {

absl::StatusOr<std::unique_ptr<Backend>> CreateHostBackend(const Config& config);

// Test and sample controls of one emulated device: device-side access (uhmm/testing.h) plus emulated
// kernel launches.
class HostDeviceControls : public testing::DeviceAccess {
 public:
  // Runs `kernel` on the device, ordered after the copies queued before it, and waits for it: the
  // emulated kernel launch. Like a launch the CUDA backend intercepts, it first calls the runtime's
  // launch listener (transparent mode). Kernels address device memory through DevicePointer().
  virtual absl::Status RunKernel(std::function<void()> kernel) = 0;
  // What a kernel dereferences for device address `device_addr`. With UHMM_HOST_SAME_ADDRESS=1 the
  // device address is the managed address, translated through the chunks mapped at its block
  // (nullptr when none is); otherwise it is the chunk memory itself.
  virtual void* DevicePointer(uint64_t device_addr) = 0;
};

// The most recently opened, still open host device with this ordinal (nullptr if none).
HostDeviceControls* LiveDevice(int ordinal);

}  // namespace uhmm::host

#endif  // UHMM_BACKENDS_HOST_HOST_BACKEND_H_
