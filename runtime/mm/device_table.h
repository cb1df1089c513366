// DeviceTable: the backend's opened devices, each with the page pool the runtime keeps for its
// pagemap (nvidia-uvm's per-GPU state in uvm_va_space). Also picks the backend.
#ifndef UHMM_RUNTIME_MM_DEVICE_TABLE_H_
#define UHMM_RUNTIME_MM_DEVICE_TABLE_H_

#include <atomic>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/mm/block_owners.h"
#include "runtime/mm/migration_gate.h"
#include "runtime/mm/page_pool.h"
#include "runtime/mm/peer_windows.h"
#include "uhmm/backend.h"

namespace uhmm {

class Evictor;

// One opened device: the backend's Device plus its pool. Its pagemap's `internal` points here.
struct DeviceState {
  int ordinal = -1;
  std::unique_ptr<Device> device;
  std::unique_ptr<PagePool> pool;
  // Allocates this device's pages for migrations (alloc_device_page), evicting when the pool is full.
  Evictor* evictor = nullptr;
  // Migrations to this device; uhmm_evict_device closes it while it empties the device.
  MigrationGate gate;
  // Several devices (bit d: device d): those whose blocks this device's kernels reach (itself and
  // its peers, Backend::PeerAccess), and those whose kernels cannot reach this device's blocks.
  uint64_t reaches = 0;
  uint64_t unreached_by = 0;
};

// The backend Config::backend names, else the first registered one that opens with a device.
absl::StatusOr<std::unique_ptr<Backend>> SelectBackend(const Config& config);

class DeviceTable {
 public:
  // Opens every device of `backend`, checks its pagemap and sizes its pool (Config's pool bytes or
  // fraction, else the device's default).
  static absl::StatusOr<std::unique_ptr<DeviceTable>> Open(Backend& backend, const Config& config,
                                                           Evictor* evictor);

  int count() const { return static_cast<int>(devices_.size()); }
  bool valid(int ordinal) const { return ordinal >= 0 && ordinal < count(); }
  DeviceState& operator[](int ordinal) { return *devices_[ordinal]; }
  const DeviceState& operator[](int ordinal) const { return *devices_[ordinal]; }
  auto begin() { return devices_.begin(); }
  auto end() { return devices_.end(); }
  auto begin() const { return devices_.begin(); }
  auto end() const { return devices_.end(); }
  // In a forked child: the devices belong to the parent; leak them rather than touch them.
  void AbandonAfterFork();
  // Whether kernels on device `device` reach pages device `owner` holds.
  bool Reaches(int device, int owner) const { return (devices_[device]->reaches >> owner) & 1; }
  // Which device maps each block, when several devices share managed addresses (else nullptr).
  BlockOwners* block_owners() { return owners_.get(); }
  // Windows for moves to a peer (several devices; else nullptr).
  PeerWindows* peer_windows() { return windows_.get(); }

 private:
  std::unique_ptr<BlockOwners> owners_;   // before devices_: their pools use it until they go
  std::unique_ptr<PeerWindows> windows_;  // likewise
  std::vector<std::unique_ptr<DeviceState>> devices_;
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_MM_DEVICE_TABLE_H_
