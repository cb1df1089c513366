// RuntimeImpl: the facade behind the public Runtime. It checks each call's arguments and delegates
// to the part that owns the work; it owns the parts and wires them together (mm/mm.h) at Create:
//   mm/device_table   devices and their page pools     mm/va_space        range map and lifetime
//   mm/migrator       migration drivers                mm/evictor         device pages, eviction
//   mm/migrate_vma    the three migrate_vma phases     fault/cpu_fault    the CPU fault path, SIGBUS
//   fault/fault_service  uffd reading and dispatch     fault/uffd_events  REMOVE, UNMAP, REMAP
//   fault/zap_tracker the runtime's own zaps           launch/launch_coherence  data for kernels
//   process/fork      fork() semantics                 process/numa_placement   thread/NUMA binding
// No part holds a pointer to the facade.
#ifndef UHMM_RUNTIME_API_RUNTIME_IMPL_H_
#define UHMM_RUNTIME_API_RUNTIME_IMPL_H_

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/api/counters.h"
#include "runtime/mm/managed_range.h"
#include "runtime/mm/mm.h"
#include "runtime/policy/readahead_fence.h"
#include "uhmm/backend.h"
#include "uhmm/testing.h"
#include "uhmm/uhmm.hpp"

namespace uhmm {

class LaunchCoherence;
class WriteTracker;

class RuntimeImpl final : public Runtime, public LaunchListener {
 public:
  static absl::StatusOr<std::unique_ptr<RuntimeImpl>> Create(const Config& config);
  ~RuntimeImpl() override;

  // Runtime.
  absl::StatusOr<void*> Allocate(size_t size, Backing backing = Backing::kDefault) override;
  absl::Status Free(void* ptr) override;
  absl::Status Migrate(void* ptr, size_t size, int device) override;
  absl::Status EvictDevice(int device) override;
  absl::Status MigrateManagedPart(const void* addr, size_t bytes, int device) override;
  absl::Status PrefetchOnQueue(void* ptr, size_t size, int device, void* queue) override;
  absl::Status SyncForDevice(int device, void* queue) override;
  bool transparent_launch_enabled() const override { return transparent_; }
  absl::StatusOr<uhmm_native_handles_t> NativeHandles(int device) const override;
  absl::Status StartTrace(const std::string& path) override;
  absl::Status StopTrace() override;
  absl::StatusOr<std::vector<int32_t>> Residency(const void* ptr, size_t size) override;
  absl::StatusOr<std::vector<int32_t>> DeviceCopies(const void* ptr, size_t size) override;
  absl::Status Advise(void* ptr, size_t size, Advice advice, int64_t arg = 0) override;
  absl::StatusOr<int64_t> GetRangeAttribute(const void* ptr, size_t size,
                                            RangeAttribute attribute) const override;
  Stats stats() const override;
  int device_count() const override;
  std::string_view backend_name() const override { return backend_->name(); }
  absl::StatusOr<uint64_t> DeviceAddress(const void* ptr) const override;
  absl::StatusOr<Allocation> FindAllocation(const void* ptr) const override;
  absl::StatusOr<DeviceStats> device_stats(int device) const override;

  // LaunchListener: transparent mode, called by the backend before each intercepted launch.
  void BeforeLaunch(int device, void* queue) override;
  void BeforeCopy(int device, uint64_t addr, size_t bytes) override;

  // What placement did (UHMM_STATS, tests).
  const std::string& placement() const;
  // Whether CPU writes are tracked (read duplication), or why not (UHMM_STATS, tests).
  const std::string& write_tracking() const { return write_tracking_; }
  // For the testing API (api/testing.cc).
  const Mm& mm() const { return mm_; }
  // uhmm/testing.h's device-side access to `device`: `inner` (the backend's), behind the read-ahead
  // fence as a kernel launch is. Made once per device; lives as long as the runtime.
  testing::DeviceAccess* FencedAccess(int device, testing::DeviceAccess* inner);

 private:
  explicit RuntimeImpl(const Config& config);
  absl::Status Init();
  // Residency and DeviceCopies: checks the span, then `value` of each page under its block's lock.
  absl::StatusOr<std::vector<int32_t>> PerPage(const char* what, const void* ptr, size_t size,
                                               int32_t (*value)(const VaBlock&, size_t));
  // Opens the write tracker when read duplication is wanted and the kernel can do it; otherwise
  // notes why not (never an error: uhmm then works as without it).
  absl::Status StartWriteTracking();
  absl::Status CheckUsable() const;
  absl::Status CheckDevice(const char* what, int device) const;
  // Checks ptr/size/device of a migration request; `what` names the API call in errors.
  absl::StatusOr<RangeRef> CheckMigrateRequest(const char* what, void* ptr, size_t size, int device);
  // The first checks of a call on [ptr, ptr+size): ptr not NULL, size not 0, ptr 4 KiB aligned (and
  // size too, unless `round_size`: then it is rounded up to 4 KiB), no overflow. Returns the end.
  static absl::StatusOr<uintptr_t> CheckSpan(const char* what, const void* ptr, size_t size, bool round_size);
  // The live allocation that holds [ptr, end): NOT_FOUND when there is none, INVALID_ARGUMENT when
  // the span runs past its end.
  absl::StatusOr<RangeRef> LookupSpan(const char* what, const void* ptr, size_t size, uintptr_t end) const;
  // INVALID_ARGUMENT: `device` does not exist, naming the ones that do (and the host if allowed).
  absl::Status NoSuchDevice(const std::string& what, int64_t device, bool host_allowed) const;
  // Checks an advice value and its argument (uhmm_advise).
  absl::Status CheckAdvice(Advice advice, int64_t arg) const;

  const Config config_;
  bool owns_trace_ = false;  // this runtime started the process's trace session (UHMM_TRACE)
  bool transparent_ = false;
  mutable Counters counters_;
  Mm mm_;
  ReadAheadFence readahead_fence_;  // before the parts: the migration workers use it to the end
  std::mutex access_mu_;
  std::vector<std::unique_ptr<testing::DeviceAccess>> access_;  // guarded by access_mu_
  // The parts, in construction order (destroyed in reverse).
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<NumaPlacement> placement_;
  std::unique_ptr<Evictor> evictor_;
  std::unique_ptr<DeviceTable> devices_;
  std::unique_ptr<Uffd> uffd_;
  std::unique_ptr<WriteTracker> write_tracker_;
  std::string write_tracking_;
  std::unique_ptr<VaSpace> va_space_;
  std::unique_ptr<ZapTracker> zaps_;
  std::unique_ptr<UffdEvents> events_;
  std::unique_ptr<Migrator> migrator_;
  std::unique_ptr<ForkHandler> fork_;
  std::unique_ptr<CpuFault> cpu_fault_;
  std::unique_ptr<LaunchCoherence> launch_;
  std::unique_ptr<WorkerPool> workers_;
  std::unique_ptr<FaultService> fault_service_;
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_API_RUNTIME_IMPL_H_
