// The interface a backend implements: a Backend enumerates devices; a Device provides device memory
// in 2 MiB root chunks, a Pagemap (page_free/page_fault) and an asynchronous CopyEngine.
#ifndef UHMM_BACKEND_H_
#define UHMM_BACKEND_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "uhmm/pagemap.h"
#include "uhmm/uhmm.hpp"

namespace uhmm {

enum class CopyDirection { kHostToDevice, kDeviceToHost };

struct CopyOp {
  void* host;       // runtime view of the managed page (pinned/DMA-able where the backend needs it)
  uint64_t device;  // Page::dma_addr
  size_t bytes;
};

// The copy engine is asynchronous: Submit queues a batch and returns a fence; Wait blocks until that
// batch is done and returns its result. Fences complete in submission order.
class CopyEngine {
 public:
  virtual ~CopyEngine() = default;
  virtual absl::StatusOr<uint64_t> Submit(CopyDirection dir, std::span<const CopyOp> ops) = 0;
  virtual absl::Status Wait(uint64_t fence) = 0;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual std::string name() const = 0;
  virtual Pagemap& pagemap() = 0;
  virtual CopyEngine& copy_engine() = 0;
  // One 2 MiB root chunk of device memory for the page pool; returns its device address.
  virtual absl::StatusOr<uint64_t> AllocChunk() = 0;
  virtual void FreeChunk(uint64_t device_addr) = 0;
  // Pool cap when the configuration does not give one.
  virtual size_t default_pool_bytes() const = 0;
  // Phase 2 of a migration to this device: allocate destination pages and copy (RAM -> device).
  virtual absl::Status MigrateToDevice(MigrateVma* migrate) = 0;
  // Phase 2 of a migration from this device back to RAM (faults, prefetch to host, eviction).
  virtual absl::Status MigrateToRam(MigrateVma* migrate) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  virtual int device_count() const = 0;
  // `ordinal` is the runtime's device number; the backend stores it in pagemap().device.
  virtual absl::StatusOr<std::unique_ptr<Device>> OpenDevice(int ordinal) = 0;
};

// One entry per compiled-in backend, best first (see backends/registry.cc).
struct BackendEntry {
  std::string_view name;
  // Returns the backend, or UNAVAILABLE with the reason (no driver, no device, ...).
  absl::StatusOr<std::unique_ptr<Backend>> (*create)(const Config& config);
};
std::span<const BackendEntry> RegisteredBackends();

}  // namespace uhmm

#endif  // UHMM_BACKEND_H_
