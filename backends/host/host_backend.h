// The host-emulated device (like the kernel's lib/test_hmm.c dmirror): "VRAM" is separate host
// memory that the managed pointer never maps, copied by a copy-engine thread with asynchronous
// completion. It honours the same page_free/page_fault contract as a GPU. Tests reach a device
// through LiveDevice() for fault injection and page_free accounting.
#ifndef UHMM_BACKENDS_HOST_HOST_BACKEND_H_
#define UHMM_BACKENDS_HOST_HOST_BACKEND_H_

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "uhmm/backend.h"

namespace uhmm::host {

absl::StatusOr<std::unique_ptr<Backend>> CreateHostBackend(const Config& config);

// Test and sample controls of one emulated device.
class HostDeviceControls {
 public:
  virtual ~HostDeviceControls() = default;
  // The next `n` copy batches in `dir` fail with ABORTED, as a lost device would.
  virtual void FailNextCopies(CopyDirection dir, int n) = 0;
  // The next `n` root-chunk allocations fail with ABORTED.
  virtual void FailNextChunkAllocs(int n) = 0;
  // How many times page_free ran for page `pfn`, and in total.
  virtual uint64_t page_free_count(uint64_t pfn) const = 0;
  virtual uint64_t page_free_total() const = 0;
  // Copy batches completed in each direction.
  virtual uint64_t copies(CopyDirection dir) const = 0;
  // Runs `kernel` on the device, ordered after the copies queued before it, and waits for it: the
  // emulated kernel launch. Kernels address device memory through DevicePointer(dma_addr).
  virtual absl::Status RunKernel(std::function<void()> kernel) = 0;
};

// The most recently opened, still open host device with this ordinal (nullptr if none).
HostDeviceControls* LiveDevice(int ordinal);

// Emulated device addresses are host addresses: what a "kernel" on the host device dereferences.
inline void* DevicePointer(uint64_t device_addr) { return reinterpret_cast<void*>(device_addr); }

}  // namespace uhmm::host

#endif  // UHMM_BACKENDS_HOST_HOST_BACKEND_H_
