// The interface a backend implements: a Backend enumerates devices; a Device provides device memory
// in 2 MiB root chunks, a Pagemap (page_free/page_fault) and an asynchronous CopyEngine. Optional
// hooks serve GPUs that share the managed address ("one pointer") and intercept kernel launches.
#ifndef UHMM_BACKEND_H_
#define UHMM_BACKEND_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "uhmm/pagemap.h"
#include "uhmm/uhmm.hpp"

namespace uhmm {

// kPeerToDevice: from another device's memory to this one's, in one hop over the interconnect
// (Device::CopiesFromPeers); the source is CopyOp::peer.
enum class CopyDirection { kHostToDevice, kDeviceToHost, kPeerToDevice };

// host == nullptr (host -> device only): fill [device, device + bytes) with zeros instead (a
// managed page the CPU never wrote; CUDA cuMemsetD8Async, Level Zero a memory fill).
struct CopyOp {
  void* host;       // runtime view of the managed page (pinned/DMA-able where the backend needs it)
  uint64_t device;  // Page::dma_addr
  size_t bytes;
  uint64_t peer = 0;  // kPeerToDevice: the source, a device address this device's engine reaches
};

// The copy engine is asynchronous: Submit queues a batch and returns a fence; Wait blocks until that
// batch is done and returns its result. Fences complete in submission order.
class CopyEngine {
 public:
  virtual ~CopyEngine() = default;
  virtual absl::StatusOr<uint64_t> Submit(CopyDirection dir, std::span<const CopyOp> ops) = 0;
  virtual absl::Status Wait(uint64_t fence) = 0;
};

// Where the pool may put the device page that backs managed address A.
enum class Placement {
  // Any free page: device addresses are unrelated to managed ones (the GPU uses DeviceAddress()).
  kAnywhere,
  // One pointer: the device page backing A has device address A. The pool binds a whole 2 MiB chunk
  // to each 2 MiB block that has device pages (Device::MapChunk) and hands out the page at A's
  // offset. A block's pages then live on one device at a time.
  kSameAddress,
};

// Called by backends that intercept kernel launches (CUDA: CUPTI; Level Zero: the loader's tracer)
// before each launch, on the launching thread, so the runtime can make managed data device-resident
// and ordered before the kernel on `queue` (a cudaStream_t, ze_command_list_handle_t, ...).
class LaunchListener {
 public:
  virtual ~LaunchListener() = default;
  virtual void BeforeLaunch(int device, void* queue) = 0;
  // Before a driver copy or set touches [addr, addr+bytes) through `device` (any address: the
  // runtime ignores what it does not manage), so that managed bytes there are device-resident.
  virtual void BeforeCopy(int device, uint64_t addr, size_t bytes) {
    (void)device;
    (void)addr;
    (void)bytes;
  }
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
  // Pool cap when the configuration does not give one (GPUs: DefaultPoolShare of their memory).
  virtual size_t default_pool_bytes() const = 0;
  // Free device memory now, for pools sized as a fraction of it.
  virtual absl::StatusOr<size_t> free_memory() const { return default_pool_bytes(); }
  // Phase 2 of a migration to this device: allocate destination pages and copy (RAM -> device).
  // Both phase-2 calls and page_fault copy through *pagemap().copy_engine, never through the
  // engine directly: a wrapping Device (fault injection, uhmm/testing.h) interposes there. The
  // defaults are the usual bodies; a backend overrides them to add work around the copy (and then
  // calls them).
  virtual absl::Status MigrateToDevice(MigrateVma* migrate) {
    return migrate_alloc_and_copy_to_device(migrate, pagemap(), *pagemap().copy_engine);
  }
  // Phase 2 of a migration from this device back to RAM (faults, prefetch to host, eviction).
  virtual absl::Status MigrateToRam(MigrateVma* migrate) {
    return migrate_copy_to_ram(migrate, *pagemap().copy_engine);
  }

  // Whether this device's copy engine takes kPeerToDevice batches: pages of a device that this
  // one reaches (Backend::PeerAccess) then move here in one hop instead of through RAM.
  virtual bool CopiesFromPeers() const { return false; }

  virtual Placement placement() const { return Placement::kAnywhere; }
  // kSameAddress only: make chunk `chunk` (an AllocChunk value) the device memory at
  // [block, block + 2 MiB), and undo it. UnmapChunk is called only when no page of the chunk is in
  // use (or a move to a peer holds every page in use there), and must first wait for device work
  // that may still access the block. A move to a peer also maps a chunk whose pages are leaving at
  // a window the runtime reserved with Backend::ReserveAddressRange, where the peer reads them.
  virtual absl::Status MapChunk(uint64_t /*chunk*/, uintptr_t /*block*/) {
    return absl::UnimplementedError("MapChunk: this device does not share managed addresses");
  }
  virtual void UnmapChunk(uint64_t /*chunk*/, uintptr_t /*block*/) {}
  // Unmaps a chunk from a window (the runtime's own address, which only copies it waited for used):
  // no wait for device work.
  virtual absl::Status UnmapWindow(uint64_t chunk, uintptr_t window) {
    UnmapChunk(chunk, window);
    return absl::OkStatus();
  }
  // Returns once the device work queued on `queue` so far is done (nullptr: all of the device's
  // work). Host-bound prefetches on a queue use it so that they see what earlier kernels wrote.
  virtual absl::Status SynchronizeQueue(void* /*queue*/) { return absl::OkStatus(); }
  // The vendor handles applications queue kernels with (uhmm_get_native_handles).
  virtual uhmm_native_handles_t native_handles() const { return {}; }
  // PCI address ("0000:65:00.0") for placing fault threads and host memory near the device; ""
  // when it has none (the host backend) or it is unknown.
  virtual std::string pci_bus_id() const { return ""; }
};

// A device list knob (UHMM_CUDA_DEVICES): "" gives {}, "all" gives {kAllDevices}, "0,2" gives
// {0, 2}. INVALID_ARGUMENT, naming `what`, for anything else (negative or repeated ordinals too).
inline constexpr int kAllDevices = -1;
absl::StatusOr<std::vector<int>> ParseDeviceList(std::string_view list, std::string_view what);

// The devices a backend opens, out of `count` numbered 0..count-1: those the list knob names
// (`list`, called `list_knob` in errors), "all" meaning `all`; without a list, the one the single
// knob names (`single`, called `single_knob`). INVALID_ARGUMENT naming the knob for a malformed
// list or an ordinal outside 0..count-1 (`noun`: "CUDA device", ...).
absl::StatusOr<std::vector<int>> ChooseDevices(std::string_view list, std::string_view list_knob, int single,
                                               std::string_view single_knob, const std::vector<int>& all,
                                               int count, std::string_view noun);

// The default pool of a GPU with `bytes` of memory (free, or total where the API reports no free
// size): three quarters, in whole 2 MiB chunks, leaving room for the application's own allocations.
inline size_t DefaultPoolShare(size_t bytes) { return (bytes / 4 * 3) & ~(kBlockSize - 1); }

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  virtual int device_count() const = 0;
  // `ordinal` is the runtime's device number; the backend stores it in pagemap().device.
  virtual absl::StatusOr<std::unique_ptr<Device>> OpenDevice(int ordinal) = 0;

  // One pointer: reserves `bytes` (a multiple of 2 MiB) of address space, 2 MiB aligned, that the
  // devices can map at the same addresses and over which the runtime maps the user view
  // (mmap MAP_FIXED). 0 means the backend has no such need and the runtime picks the address.
  // Release is called after the runtime has put a PROT_NONE mapping back over the range.
  virtual absl::StatusOr<uintptr_t> ReserveAddressRange(size_t /*bytes*/) { return uintptr_t{0}; }
  virtual void ReleaseAddressRange(uintptr_t /*start*/, size_t /*bytes*/) {}
  // The application unmapped (part of) a reserved range itself, so its CPU addresses may already
  // belong to a new mapping: give back whatever the backend holds apart from them (device address
  // space) without touching them. False when that is impossible and the range is leaked.
  virtual bool AbandonAddressRange(uintptr_t /*start*/, size_t /*bytes*/) { return false; }
  // The runtime view of each range is the host side of every copy; backends whose copy engines need
  // pinned memory pin it here (before any copy) and unpin it before it is unmapped. When
  // pins_host_views() is true the runtime populates the view first and then maps every page in the
  // user view, so that first CPU touches of a new range do not fault.
  virtual bool pins_host_views() const { return false; }
  virtual absl::Status RegisterHostView(void* /*view*/, size_t /*bytes*/) { return absl::OkStatus(); }
  virtual void UnregisterHostView(void* /*view*/, size_t /*bytes*/) {}
  // Several devices sharing managed addresses: whether kernels on device `device` reach what device
  // `owner` maps at a block (peer access; the owner's MapChunk grants it). Without it, a block
  // `owner` holds must move before `device` may use it.
  virtual bool PeerAccess(int /*device*/, int /*owner*/) const { return false; }
  // Transparent mode: call `listener` before every kernel launch until it is replaced (nullptr
  // stops). UNIMPLEMENTED when the backend cannot intercept launches.
  virtual absl::Status SetLaunchListener(LaunchListener* /*listener*/) {
    return absl::UnimplementedError("this backend cannot intercept kernel launches");
  }
};

// A PROT_NONE reservation of `bytes` of address space starting on a 2 MiB boundary (what
// cuMemAddressReserve leaves behind); for backends that emulate or need one. Release with munmap.
absl::StatusOr<uintptr_t> reserve_block_aligned_address_space(size_t bytes);

// One entry per compiled-in backend, best first (see backends/registry.cc).
struct BackendEntry {
  std::string_view name;
  // Returns the backend, or UNAVAILABLE with the reason (no driver, no device, ...).
  absl::StatusOr<std::unique_ptr<Backend>> (*create)(const Config& config);
};
std::span<const BackendEntry> RegisteredBackends();

}  // namespace uhmm

#endif  // UHMM_BACKEND_H_
