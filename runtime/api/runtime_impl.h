// RuntimeImpl: the vendor-neutral runtime behind the public Runtime. It owns the devices and their
// page pools, the managed ranges, the userfaultfd fault service and the counters; migrate.cc holds
// the migrate_vma_* phases and eviction.
#ifndef UHMM_RUNTIME_RUNTIME_IMPL_H_
#define UHMM_RUNTIME_RUNTIME_IMPL_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/fault/fault_service.h"
#include "runtime/mm/managed_range.h"
#include "runtime/mm/migration_gate.h"
#include "runtime/mm/page_pool.h"
#include "runtime/base/sync.h"
#include "runtime/process/topology.h"
#include "runtime/fault/uffd.h"
#include "runtime/process/workers.h"
#include "uhmm/backend.h"
#include "uhmm/uhmm.hpp"

namespace uhmm {

// One opened device: the backend's Device plus the pool the runtime keeps for its pagemap.
struct DeviceState {
  RuntimeImpl* rt = nullptr;
  int ordinal = -1;
  std::unique_ptr<Device> device;
  std::unique_ptr<PagePool> pool;
  // host_epoch_ value at this device's last complete launch-coherence pass.
  std::atomic<uint64_t> synced_epoch{0};
  // Migrations to this device; uhmm_evict_device closes it while it empties the device.
  MigrationGate gate;
};

// Marks [start, end) of `range` as the request the calling thread migrates to `device`, for its
// lifetime: eviction done on this thread leaves those pages alone (whole blocks, where the range or
// the device moves whole blocks). A scope inside another keeps the outer one.
class ProtectFromEviction {
 public:
  ProtectFromEviction(const ManagedRange& range, const Device& device, uintptr_t start, uintptr_t end);
  ~ProtectFromEviction();
  ProtectFromEviction(const ProtectFromEviction&) = delete;
  ProtectFromEviction& operator=(const ProtectFromEviction&) = delete;

 private:
  const std::pair<uintptr_t, uintptr_t> saved_;
  const bool outer_;
};

class RuntimeImpl final : public Runtime, public LaunchListener {
 public:
  static absl::StatusOr<std::unique_ptr<RuntimeImpl>> Create(const Config& config);
  ~RuntimeImpl() override;

  // Runtime.
  absl::StatusOr<void*> Allocate(size_t size, Backing backing = Backing::kDefault) override;
  absl::Status Free(void* ptr) override;
  absl::Status Migrate(void* ptr, size_t size, int device) override;
  absl::Status EvictDevice(int device) override;
  absl::Status PrefetchOnQueue(void* ptr, size_t size, int device, void* queue) override;
  absl::Status SyncForDevice(int device, void* queue) override;
  bool transparent_launch_enabled() const override { return transparent_; }
  absl::StatusOr<uhmm_native_handles_t> NativeHandles(int device) const override;
  absl::Status StartTrace(const std::string& path) override;
  absl::Status StopTrace() override;

  // LaunchListener: transparent mode, called by the backend before each intercepted launch.
  void BeforeLaunch(int device, void* queue) override;
  absl::StatusOr<std::vector<int32_t>> Residency(const void* ptr, size_t size) override;
  Stats stats() const override;
  int device_count() const override { return static_cast<int>(devices_.size()); }
  std::string_view backend_name() const override { return backend_->name(); }
  absl::StatusOr<uint64_t> DeviceAddress(const void* ptr) const override;

  // Fault service entry points (service threads).
  // `seq` is the message's read sequence number (FaultService::ReadSeq).
  // `received_ns`: when a service thread got the message (0: not traced). `deferred`: it waited
  // for a migration that held the page.
  // `minor`: the kernel found the page in the shadow (UFFD_PAGEFAULT_FLAG_MINOR); otherwise the
  // shadow has no page there yet (first touch, or after a discard) and it is filled with zeros.
  void HandleFault(uintptr_t address, uint32_t tid, uint32_t seq, uint64_t received_ns = 0,
                   bool deferred = false, bool minor = true);
  void OnRemove(uintptr_t start, uintptr_t end);
  void OnUnmap(uintptr_t start, uintptr_t end);
  void OnRemap(uintptr_t from, uintptr_t to, size_t len);

  // For migrate.cc.
  Uffd& uffd() { return *uffd_; }
  FaultService& fault_service() { return *fault_service_; }
  const Config& config() const { return config_; }
  Device& device(int ordinal) { return *devices_[ordinal]->device; }
  absl::StatusOr<Page*> AllocDevicePage(DeviceState& ds, uintptr_t addr);
  void CountMigrated(bool to_device, MigrateCause cause, size_t pages);
  // Binds a new runtime view to the NUMA node near device 0 (UHMM_PLACEMENT), before its pages
  // exist. No-op without placement.
  void PlaceHostMemory(void* view, size_t bytes);
  // What placement did, for UHMM_STATS and tests: "fault and migration threads on CPUs ..." or why
  // nothing was bound.
  const std::string& placement() const { return placement_; }
  // A zap of the user view (MADV_DONTNEED during a migration to a device), from just before its
  // madvise to just after: its REMOVE events are the runtime's own (discard.cc).
  void BeginZap(uintptr_t start, uintptr_t end);
  void EndZap(uintptr_t start, uintptr_t end);
  // For the fault service, as it reads a REMOVE event: true when it belongs to a zap in flight.
  bool ClaimZapEvent(uintptr_t start, uintptr_t end);
  // Applies an application discard to the page at `addr`, which no migration holds (or whose
  // migration is finishing): it ends zero, on the host (a hugetlb block stays where it is whole).
  // Device pages to put go to `release`.
  void ApplyDiscardLocked(ManagedRange& range, VaBlock& blk, uintptr_t addr, std::vector<Page*>* release)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu);
  // Makes [start, end) of the range's shadow read as zero. Caller holds the block lock (or the
  // pages are otherwise out of reach of migrations) and no CPU mapping of them exists.
  void ZeroShadow(ManagedRange& range, uintptr_t start, uintptr_t end);
  // Moves every device page in [start, end) of `range` back to RAM (but, with
  // `skip_if_moved_after_ns`, not blocks that moved to a device after that time: read-ahead).
  absl::Status MigrateToHost(ManagedRange& range, uintptr_t start, uintptr_t end, MigrateCause cause,
                             uint64_t skip_if_moved_after_ns = 0);

  // fork() support (pthread_atfork handlers, see fork.cc).
  // Prepare returns holding ranges_mu_ exclusively; Parent releases it, Child replaces it.
  void ForkPrepare() ABSL_NO_THREAD_SAFETY_ANALYSIS;
  void ForkParent() ABSL_NO_THREAD_SAFETY_ANALYSIS;
  void ForkChild() ABSL_NO_THREAD_SAFETY_ANALYSIS;  // single-threaded: the child
  // In the child: pages the parent could not bring home raise SIGBUS (through the empty file
  // *empty, made on first use).
  void LoseUnreachablePages(ManagedRange& r, int* empty) ABSL_NO_THREAD_SAFETY_ANALYSIS;

 private:
  explicit RuntimeImpl(const Config& config) : config_(config) {}
  absl::Status Init();
  // UHMM_PLACEMENT: binds the fault and migration threads near device 0 and remembers its NUMA
  // node for PlaceHostMemory. Failures only leave things unbound (and say so in placement()).
  void PlaceNearDevice();

  RangeRef Lookup(uintptr_t addr);
  absl::Status CheckUsable() const;
  // Checks ptr/size/device of a migration request; `what` names the API call in errors.
  absl::StatusOr<RangeRef> CheckMigrateRequest(const char* what, void* ptr, size_t size, int device);
  // Migration to a device, held off while a fork is being prepared.
  absl::Status MigrateToDevice(ManagedRange& range, uintptr_t start, uintptr_t end, DeviceState& ds,
                               MigrateCause cause);
  // uhmm_migrate / uhmm_prefetch_on_queue: [start, end) to `device` (or kHost), block by block,
  // in parallel on the migration workers when the range spans several blocks.
  absl::Status BulkMigrate(ManagedRange& range, uintptr_t start, uintptr_t end, int device);
  absl::Status MigrateToDeviceLocked(ManagedRange& range, uintptr_t start, uintptr_t end,
                                     DeviceState& ds, MigrateCause cause);
  // *held (optional): the chunk had pages outside the request and none moved (another migration
  // holds them).
  absl::Status EvictChunk(DeviceState& ds, size_t chunk, size_t* freed, bool* held = nullptr);
  // Runs of whole blocks of `range` that hold host-resident (or in-flight) pages.
  PageRuns BlocksWithHostPages(ManagedRange& range);
  void DeliverSigbus(ManagedRange& range, uintptr_t page, uint32_t tid);
  // Applies an application discard of [start, end), inside one block (discard.cc).
  void DiscardInBlock(ManagedRange& range, uintptr_t start, uintptr_t end);
  // Zeroes [start, end) of a device-resident block on its device (a partial discard of a hugetlb
  // block, which stays on the device whole).
  absl::Status ZeroOnDevice(ManagedRange& range, VaBlock& blk, uintptr_t start, uintptr_t end)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu);
  // Policy for a fault at `page` whose block holds it on a device (caller holds blk.mu): the run
  // to migrate back, and whether read-ahead may follow (not for thrashing blocks).
  // A missing fault at host-resident `page`: zero-fills and maps its block. False, having mapped
  // nothing of what remains, when an application discard there is pending.
  bool ZeroFillLocked(ManagedRange& range, VaBlock& blk, uintptr_t page, uint32_t tid)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu);
  std::pair<uintptr_t, uintptr_t> FaultGranule(ManagedRange& range, VaBlock& blk, uintptr_t page,
                                               bool* readahead_ok) ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu);
  // Queues [from, to) of `range` for the migration workers, one block per job. Blocks a migration
  // to a device starts on after `decided_ns` are left alone.
  void PostReadAhead(const RangeRef& range, uintptr_t from, uintptr_t to, uint64_t decided_ns);
  // Marks [start, end) of every range it overlaps as gone and releases the device pages there.
  void ForgetAddresses(uintptr_t start, uintptr_t end);
  std::vector<std::shared_ptr<ManagedRange>> Overlapping(uintptr_t start, uintptr_t end);
  // Drops the device copies in [start, end) of `range` that no migration holds; with `forget`,
  // also marks the pages unmapped so that in-flight migrations drop theirs at finalize.
  void DropDevicePages(ManagedRange& range, uintptr_t start, uintptr_t end, bool forget);
  // Unregisters and unmaps the user view (skipping pages the application already unmapped) and
  // returns every device page. The range must be out of the map and torn down.
  void DestroyRange(ManagedRange& range, bool unmap_user_view);
  void ReapZombies();

  const Config config_;
  bool owns_trace_ = false;  // this runtime started the process's trace session (UHMM_TRACE)
  SigbusMode sigbus_mode_ = SigbusMode::kTkill;
  std::unique_ptr<Backend> backend_;
  std::vector<std::unique_ptr<DeviceState>> devices_;
  std::unique_ptr<Uffd> uffd_;
  std::unique_ptr<FaultService> fault_service_;
  std::unique_ptr<WorkerPool> workers_;  // read-ahead and parallel bulk migration
  const Topology* topology_ = nullptr;   // set when placement binds something
  std::string place_nodes_;              // NUMA nodes for runtime views ("" = leave to the kernel)
  std::string placement_;
  bool transparent_ = false;
  // Bumped whenever pages may have become host-resident (allocation, migration to RAM): launch
  // coherence has work only when it moved since a device's last pass.
  std::atomic<uint64_t> host_epoch_{1};
  std::atomic<uint64_t> launch_error_epoch_{0};  // last epoch whose launch-sync error was printed

  mutable Mutex ranges_mu_;
  std::map<uintptr_t, std::shared_ptr<ManagedRange>> ranges_ ABSL_GUARDED_BY(ranges_mu_);
  // Ranges the application munmapped entirely; torn down on the next API call.
  std::vector<std::shared_ptr<ManagedRange>> zombies_ ABSL_GUARDED_BY(ranges_mu_);

  Mutex zap_mu_;
  struct Zap {
    uintptr_t start, end;
    uintptr_t next;  // where its next REMOVE event starts (it raises one per mapping, in order)
  };
  std::vector<Zap> zaps_ ABSL_GUARDED_BY(zap_mu_);

  // fork: migrations to a device wait while a fork is being prepared.
  MigrationGate fork_gate_;
  int fork_pipe_[2] = {-1, -1};
  bool forked_child_ = false;

  struct Counters {
    std::atomic<uint64_t> cpu_faults{0}, duplicate_faults{0}, unmanaged_faults{0};
    std::atomic<uint64_t> pages_to_device{0}, pages_to_host{0}, evicted_pages{0}, evicted_chunks{0};
    std::atomic<uint64_t> sigbus{0}, ev_remove{0}, ev_unmap{0}, ev_remap{0}, forks{0};
    std::atomic<uint64_t> own_zap_events{0}, zero_fill_faults{0};
    std::atomic<uint64_t> launch_syncs{0}, launch_pages{0}, stale_faults{0};
    std::atomic<uint64_t> readahead_pages{0}, grown_faults{0}, thrashing_blocks{0};
  };
  mutable Counters counters_;
};

// UHMM_STATS=1: the counters, to stderr.
void PrintStats(const Runtime& rt);
// Adds (or removes) a runtime to those that print their counters at process exit.
void StatsAtExit(RuntimeImpl* rt, bool add);

}  // namespace uhmm

#endif  // UHMM_RUNTIME_RUNTIME_IMPL_H_
