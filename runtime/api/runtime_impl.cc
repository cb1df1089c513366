// The facade: argument checks and delegation; see runtime_impl.h.
#include "runtime/api/runtime_impl.h"

#include <sys/mman.h>

#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/api/stats.h"
#include "runtime/fault/cpu_fault.h"
#include "runtime/fault/fault_service.h"
#include "runtime/fault/uffd.h"
#include "runtime/fault/uffd_events.h"
#include "runtime/fault/write_tracker.h"
#include "runtime/fault/zap_tracker.h"
#include "runtime/launch/launch_coherence.h"
#include "runtime/mm/device_table.h"
#include "runtime/mm/evictor.h"
#include "runtime/mm/migrator.h"
#include "runtime/mm/va_space.h"
#include "runtime/process/fork.h"
#include "runtime/process/numa_placement.h"
#include "runtime/process/workers.h"
#include "runtime/trace/tracer.h"

namespace uhmm {
namespace {

constexpr size_t kMaxAllocation = size_t{1} << 46;  // 64 TiB: beyond any user address space

}  // namespace

absl::StatusOr<std::unique_ptr<Runtime>> Runtime::Create(const Config& config) {
  absl::StatusOr<std::unique_ptr<RuntimeImpl>> rt = RuntimeImpl::Create(config);
  if (!rt.ok()) return rt.status();
  return std::unique_ptr<Runtime>(std::move(*rt));
}

absl::StatusOr<std::unique_ptr<RuntimeImpl>> RuntimeImpl::Create(const Config& config) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  std::unique_ptr<RuntimeImpl> rt(new RuntimeImpl(config));
  if (absl::Status s = rt->Init(); !s.ok()) return s;
  return rt;
}

RuntimeImpl::RuntimeImpl(const Config& config) : config_(config) {}

absl::Status RuntimeImpl::StartWriteTracking() {
  // Read duplication needs the kernel to record CPU writes to write-protected pages by itself.
  if (!config_.read_duplication) {
    write_tracking_ = "off (UHMM_READ_DUPLICATION=0)";
    return absl::OkStatus();
  }
  if (!uffd_->has_async_wp()) {
    write_tracking_ =
        "unavailable: the kernel's userfaultfd lacks asynchronous write-protect on shmem "
        "(UFFD_FEATURE_WP_ASYNC, Linux 6.7+); launches push every page that came home";
    return absl::OkStatus();
  }
  absl::StatusOr<std::unique_ptr<WriteTracker>> tracker = WriteTracker::Open();
  if (!tracker.ok()) {
    write_tracking_ = std::string("unavailable: ") + std::string(tracker.status().message()) +
                      "; launches push every page that came home";
    return absl::OkStatus();
  }
  write_tracker_ = std::move(*tracker);
  mm_.write_tracker = write_tracker_.get();
  uffd_->set_write_protect(true);
  write_tracking_ = "on (userfaultfd async write-protect + PAGEMAP_SCAN)";
  return absl::OkStatus();
}

absl::Status RuntimeImpl::Init() {
  mm_.config = &config_;
  mm_.counters = &counters_;
  mm_.readahead_fence = &readahead_fence_;
  absl::StatusOr<std::unique_ptr<Backend>> backend = SelectBackend(config_);
  if (!backend.ok()) return backend.status();
  backend_ = std::move(*backend);
  mm_.backend = backend_.get();
  placement_ = std::make_unique<NumaPlacement>();
  mm_.placement = placement_.get();
  evictor_ = std::make_unique<Evictor>(mm_);
  mm_.evictor = evictor_.get();
  absl::StatusOr<std::unique_ptr<DeviceTable>> devices =
      DeviceTable::Open(*backend_, config_, evictor_.get());
  if (!devices.ok()) return devices.status();
  devices_ = std::move(*devices);
  mm_.devices = devices_.get();
  absl::StatusOr<std::unique_ptr<Uffd>> uffd = Uffd::Open();
  if (!uffd.ok()) return uffd.status();
  uffd_ = std::move(*uffd);
  mm_.uffd = uffd_.get();
  if (absl::Status s = StartWriteTracking(); !s.ok()) return s;
  absl::StatusOr<SigbusMode> sigbus_mode = ResolveSigbusMode(config_.sigbus_mode, *uffd_);
  if (!sigbus_mode.ok()) return sigbus_mode.status();
  va_space_ = std::make_unique<VaSpace>(mm_);
  mm_.va_space = va_space_.get();
  zaps_ = std::make_unique<ZapTracker>(mm_);
  mm_.zaps = zaps_.get();
  events_ = std::make_unique<UffdEvents>(mm_);
  mm_.events = events_.get();
  migrator_ = std::make_unique<Migrator>(mm_);
  mm_.migrator = migrator_.get();
  fork_ = std::make_unique<ForkHandler>(mm_);
  mm_.fork = fork_.get();
  cpu_fault_ = std::make_unique<CpuFault>(mm_, *sigbus_mode);
  mm_.cpu_fault = cpu_fault_.get();
  launch_ = std::make_unique<LaunchCoherence>(mm_);
  workers_ = std::make_unique<WorkerPool>(config_.migration_threads, "uhmm-mig-");
  mm_.workers = workers_.get();
  // Busy-polling costs a core while faults come; by default only where cores are plenty.
  const int spin_us = config_.fault_spin_us >= 0                 ? config_.fault_spin_us
                      : std::thread::hardware_concurrency() >= 8 ? 50
                                                                 : 0;
  fault_service_ = std::make_unique<FaultService>(mm_, uffd_.get(), config_.fault_threads, spin_us);
  mm_.faults = fault_service_.get();
  FaultService* fs = fault_service_.get();
  // Any thread that meets a pending event reads it (the service threads dispatch it): it may hold
  // a block lock that the service threads are waiting for.
  uffd_->set_eagain_hook([fs] { fs->DrainToQueue(); });
  uffd_->set_counters(&counters_);
  uffd_->set_wake_after_eexist(config_.fault_recheck);
  if (absl::Status s = fault_service_->Start(); !s.ok()) return s;
  workers_->Start();
  std::vector<pthread_t> threads = fault_service_->native_handles();
  for (pthread_t t : workers_->native_handles()) threads.push_back(t);
  placement_->PlaceNear(config_.placement, backend_->name(), (*devices_)[0].device->pci_bus_id(), threads);
  if (!config_.trace_path.empty()) {
    absl::Status s = StartTrace(config_.trace_path);
    if (absl::IsFailedPrecondition(s)) {
      std::fprintf(stderr, "uhmm: warning: UHMM_TRACE ignored for this runtime: %s\n",
                   std::string(s.message()).c_str());
    } else if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrFormat("uhmm: UHMM_TRACE: %s", s.message()));
    }
  }
  if (config_.print_stats) StatsAtExit(this, true);
  fork_->Register();
  if (config_.transparent_launch) {
    absl::Status s = backend_->SetLaunchListener(this);
    transparent_ = s.ok();
    if (!s.ok() && !absl::IsUnimplemented(s)) {
      std::fprintf(stderr,
                   "uhmm: warning: transparent launches are off (%s); use uhmm_sync_for_device or "
                   "uhmm_prefetch_on_queue before kernels\n",
                   std::string(s.message()).c_str());
    }
  }
  return absl::OkStatus();
}

RuntimeImpl::~RuntimeImpl() {
  if (fork_ == nullptr) return;  // Init failed before anything that needs tearing down
  fork_->Unregister();
  const bool child = fork_->forked_child();
  if (config_.print_stats && !child) {
    StatsAtExit(this, false);
    PrintStats(*this);
  }
  if (transparent_ && !child) (void)backend_->SetLaunchListener(nullptr);
  if (child) {
    // The service and copy-engine threads only exist in the parent: never join them. The managed
    // ranges are private copies here; unmap them and leak the rest.
    va_space_->ForgetInForkChild();
    (void)fault_service_.release();
    (void)workers_.release();
    devices_->AbandonAfterFork();
    return;
  }
  va_space_->DestroyAll();
  if (workers_) workers_->Stop();
  if (fault_service_) fault_service_->Stop();
  devices_.reset();
  if (owns_trace_) (void)StopTrace();
}

int RuntimeImpl::device_count() const { return devices_->count(); }

const std::string& RuntimeImpl::placement() const { return placement_->describe(); }

absl::Status RuntimeImpl::StartTrace(const std::string& path) {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  absl::Status s = trace::Tracer::Start(path, backend_->name());
  if (!s.ok()) return s;
  owns_trace_ = true;
  // Ranges allocated before the session, so that uhmm-prof can attribute their faults.
  va_space_->TraceAll();
  return absl::OkStatus();
}

absl::Status RuntimeImpl::StopTrace() {
  if (fork_->forked_child()) return absl::OkStatus();  // the parent's trace: not ours to end
  owns_trace_ = false;
  return trace::Tracer::Stop();
}

absl::Status RuntimeImpl::CheckUsable() const {
  if (fork_->forked_child()) {
    return absl::FailedPreconditionError(
        "uhmm: this runtime was inherited across fork(); in this process managed memory is a "
        "private host copy. Create a new runtime in the child to migrate memory.");
  }
  return absl::OkStatus();
}

absl::Status RuntimeImpl::CheckDevice(const char* what, int device) const {
  if (devices_->valid(device)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrFormat("%s: device %d does not exist (devices 0..%d)", what, device, device_count() - 1));
}

absl::StatusOr<void*> RuntimeImpl::Allocate(size_t size, Backing backing) {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  if (size == 0) return absl::InvalidArgumentError("uhmm_alloc: size is 0");
  if (size > kMaxAllocation) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm_alloc: size %u is larger than the 64 TiB limit (overflowed size computation?)", size));
  }
  va_space_->ReapZombies();
  return va_space_->Create(size, backing);
}

absl::Status RuntimeImpl::Free(void* ptr) {
  if (ptr == nullptr) return absl::InvalidArgumentError("uhmm_free: pointer is NULL");
  absl::StatusOr<std::shared_ptr<ManagedRange>> range = va_space_->TakeForFree(ptr);
  if (!range.ok()) return range.status();
  if (fork_->forked_child()) {
    munmap(ptr, (*range)->size());
    return absl::OkStatus();
  }
  // The application's discards of this range that a service thread has read but not applied yet
  // must be done before its addresses can be reused: applied later they would find, and zero, a
  // new range allocated at the same address (madvise returns once its event is read, not applied).
  mm_.faults->AwaitDiscards((*range)->start(), (*range)->end());
  (*range)->BeginTeardown();
  trace::TraceRange(/*alloc=*/false, (*range)->start(), (*range)->size());
  va_space_->Destroy(**range, /*unmap_user_view=*/true);
  va_space_->ReapZombies();
  return absl::OkStatus();
}

absl::Status RuntimeImpl::NoSuchDevice(const std::string& what, int64_t device, bool host_allowed) const {
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s: device %d does not exist; this runtime (%s backend) has devices 0..%d%s", what, device,
      backend_name(), device_count() - 1, host_allowed ? " and UHMM_LOCATION_HOST (-1)" : ""));
}

absl::StatusOr<uintptr_t> RuntimeImpl::CheckSpan(const char* what, const void* ptr, size_t size,
                                                 bool round_size) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(ptr);
  if (ptr == nullptr) return absl::InvalidArgumentError(absl::StrFormat("%s: pointer is NULL", what));
  if (size == 0) return absl::InvalidArgumentError(absl::StrFormat("%s: size is 0", what));
  if (round_size && addr % kPageSize != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: pointer %p is not 4 KiB aligned (the size may end anywhere in a page)", what, ptr));
  }
  if (!round_size && (addr % kPageSize != 0 || size % kPageSize != 0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: [%p, +%#x) is not 4 KiB aligned (pointer and size must both be)", what, ptr, size));
  }
  const size_t rounded = (size + kPageSize - 1) & ~(kPageSize - 1);
  if (rounded < size || addr + rounded < addr) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %p + %#x overflows the address space", what, ptr, size));
  }
  return addr + rounded;
}

absl::StatusOr<RangeRef> RuntimeImpl::LookupSpan(const char* what, const void* ptr, size_t size,
                                                 uintptr_t end) const {
  RangeRef range = va_space_->Lookup(reinterpret_cast<uintptr_t>(ptr));
  if (!range) {
    return absl::NotFoundError(
        absl::StrFormat("%s: %p is not managed by this runtime (not from uhmm_alloc, or freed)", what, ptr));
  }
  if (end > range->end()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: [%p, +%#x) runs past the end of its allocation [%#x, %#x)", what, ptr, size,
                        range->start(), range->end()));
  }
  return range;
}

absl::StatusOr<RangeRef> RuntimeImpl::CheckMigrateRequest(const char* what, void* ptr, size_t size,
                                                          int device) {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  absl::StatusOr<uintptr_t> end = CheckSpan(what, ptr, size, /*round_size=*/false);
  if (!end.ok()) return end.status();
  if (device != kHost && !devices_->valid(device)) return NoSuchDevice(what, device, /*host_allowed=*/true);
  absl::StatusOr<RangeRef> looked_up = LookupSpan(what, ptr, size, *end);
  if (!looked_up.ok()) return looked_up.status();
  RangeRef range = std::move(*looked_up);
  const uintptr_t addr = reinterpret_cast<uintptr_t>(ptr);
  mm_.faults->AwaitDiscards(addr, addr + size);
  if (device != kHost) {
    // The request must fit the pool at once: its own pages are never evicted to make room for it.
    const DeviceState& ds = (*devices_)[device];
    const bool whole_blocks = range->hugetlb() || ds.device->placement() == Placement::kSameAddress;
    const uintptr_t first_block = addr & ~(kBlockSize - 1);
    const size_t need = whole_blocks ? ((addr + size - 1 - first_block) / kBlockSize + 1) * kBlockSize : size;
    const size_t pool = ds.pool->total_pages() * kPageSize;
    if (need > pool) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "%s: [%p, +%#x) needs %u bytes of device %d's pool at once, which holds %u; migrate it in "
          "parts no larger than the pool, or raise UHMM_DEVICE_POOL_BYTES",
          what, ptr, size, need, device, pool));
    }
  }
  return range;
}

absl::Status RuntimeImpl::Migrate(void* ptr, size_t size, int device) {
  absl::StatusOr<RangeRef> range = CheckMigrateRequest("uhmm_migrate", ptr, size, device);
  if (!range.ok()) return range.status();
  const uintptr_t addr = reinterpret_cast<uintptr_t>(ptr);
  if (device != kHost) readahead_fence_.DeviceUseBegins(trace::Tracer::Now());  // a kernel comes next
  return migrator_->Bulk(**range, addr, addr + size, device);
}

absl::Status RuntimeImpl::PrefetchOnQueue(void* ptr, size_t size, int device, void* queue) {
  absl::StatusOr<RangeRef> range = CheckMigrateRequest("uhmm_prefetch_on_queue", ptr, size, device);
  if (!range.ok()) return range.status();
  const uintptr_t addr = reinterpret_cast<uintptr_t>(ptr);
  if (device != kHost) {
    readahead_fence_.DeviceUseBegins(trace::Tracer::Now());  // the queue's next kernel uses it
    return migrator_->Bulk(**range, addr, addr + size, device);
  }
  // What kernels already queued write must land before the copies read device memory.
  for (auto& ds : *devices_) {
    if (absl::Status s = ds->device->SynchronizeQueue(queue); !s.ok()) {
      return absl::Status(s.code(), absl::StrFormat("uhmm_prefetch_on_queue: waiting for the queue "
                                                    "of device %d: %s",
                                                    ds->ordinal, s.message()));
    }
  }
  return migrator_->Bulk(**range, addr, addr + size, kHost);
}

absl::Status RuntimeImpl::SyncForDevice(int device, void* queue) {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  if (absl::Status s = CheckDevice("uhmm_sync_for_device", device); !s.ok()) return s;
  return launch_->Sync((*devices_)[device], queue);
}

void RuntimeImpl::BeforeLaunch(int device, void* queue) {
  if (fork_->forked_child() || !devices_->valid(device)) return;
  launch_->BeforeLaunch((*devices_)[device], queue);
}

absl::Status RuntimeImpl::MigrateManagedPart(const void* ptr, size_t bytes, int device) {
  if (bytes == 0) return absl::OkStatus();
  const auto addr = reinterpret_cast<uintptr_t>(ptr);
  // The allocations of the span's first and last bytes (one, almost always): the part in each.
  RangeRef first = va_space_->Lookup(addr);
  RangeRef last = va_space_->Lookup(addr + bytes - 1);
  const bool one = first && last && first.get() == last.get();
  for (const RangeRef* r : {&first, one ? nullptr : &last}) {
    if (r == nullptr || !*r) continue;
    const uintptr_t lo = std::max<uintptr_t>(addr & ~(kPageSize - 1), (*r)->start());
    const uintptr_t hi = std::min<uintptr_t>((addr + bytes + kPageSize - 1) & ~(kPageSize - 1), (*r)->end());
    if (absl::Status s = Migrate(reinterpret_cast<void*>(lo), hi - lo, device); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void RuntimeImpl::BeforeCopy(int device, uint64_t addr, size_t bytes) {
  if (fork_->forked_child() || !devices_->valid(device)) return;
  if (absl::Status s = MigrateManagedPart(reinterpret_cast<const void*>(addr), bytes, device); !s.ok()) {
    // The copy goes ahead regardless (a CUPTI callback cannot refuse it): say why it may be wrong.
    absl::FPrintF(stderr, "uhmm: a CUDA copy on managed memory [%#x, +%#x) may see stale data: %s\n", addr,
                  bytes, s.message());
  }
}

testing::DeviceAccess* RuntimeImpl::FencedAccess(int device, testing::DeviceAccess* inner) {
  // A device-side access is a kernel without a launch: read-ahead decided before it must not pull
  // its pages away meanwhile.
  class Fenced final : public testing::DeviceAccess {
   public:
    Fenced(testing::DeviceAccess* inner, ReadAheadFence* fence) : inner_(inner), fence_(fence) {}
    absl::Status DeviceWrite(uint64_t device_addr, const void* src, size_t bytes) override {
      fence_->DeviceUseBegins(trace::Tracer::Now());
      return inner_->DeviceWrite(device_addr, src, bytes);
    }
    absl::Status DeviceRead(uint64_t device_addr, void* dst, size_t bytes) override {
      fence_->DeviceUseBegins(trace::Tracer::Now());
      return inner_->DeviceRead(device_addr, dst, bytes);
    }

   private:
    testing::DeviceAccess* const inner_;
    ReadAheadFence* const fence_;
  };
  if (inner == nullptr || !devices_->valid(device)) return nullptr;
  std::lock_guard<std::mutex> lock(access_mu_);
  if (access_.empty()) access_.resize(static_cast<size_t>(device_count()));
  std::unique_ptr<testing::DeviceAccess>& a = access_[static_cast<size_t>(device)];
  if (a == nullptr) a = std::make_unique<Fenced>(inner, &readahead_fence_);
  return a.get();
}

absl::StatusOr<uhmm_native_handles_t> RuntimeImpl::NativeHandles(int device) const {
  if (absl::Status s = CheckDevice("uhmm_get_native_handles", device); !s.ok()) return s;
  return (*devices_)[device].device->native_handles();
}

absl::Status RuntimeImpl::EvictDevice(int device) {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  if (absl::Status s = CheckDevice("uhmm_evict_device", device); !s.ok()) return s;
  va_space_->ReapZombies();
  mm_.faults->AwaitDiscards(0, UINTPTR_MAX);
  return evictor_->EvictDevice((*devices_)[device]);
}

absl::StatusOr<std::vector<int32_t>> RuntimeImpl::PerPage(const char* what, const void* ptr, size_t size,
                                                          int32_t (*value)(const VaBlock&, size_t)) {
  absl::StatusOr<uintptr_t> end = CheckSpan(what, ptr, size, /*round_size=*/false);
  if (!end.ok()) return end.status();
  absl::StatusOr<RangeRef> looked_up = LookupSpan(what, ptr, size, *end);
  if (!looked_up.ok()) return looked_up.status();
  RangeRef range = std::move(*looked_up);
  const uintptr_t addr = reinterpret_cast<uintptr_t>(ptr);
  mm_.faults->AwaitDiscards(addr, addr + size);
  std::vector<int32_t> out;
  out.reserve(size / kPageSize);
  for (uintptr_t a = addr; a < addr + size;) {
    VaBlock& blk = range->block_of(a);
    const uintptr_t block_end = std::min(addr + size, (a & ~(kBlockSize - 1)) + kBlockSize);
    MutexLock lock(&blk.mu);
    for (; a < block_end; a += kPageSize) out.push_back(value(blk, ManagedRange::page_in_block(a)));
  }
  return out;
}

namespace {

// PerPage's values; called with the block's lock held (PerPage takes it).
int32_t PageLocation(const VaBlock& blk, size_t i) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  if (blk.unmapped[i]) return kUnmapped;
  if (blk.poisoned[i]) return kPoisoned;
  if (blk.device[i]) return static_cast<int32_t>(blk.pages[i]->pgmap->device);
  return kHost;
}
int32_t PageCopy(const VaBlock& blk, size_t i) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  return blk.Duplicate(i) ? static_cast<int32_t>(blk.pages[i]->pgmap->device) : kNoLocation;
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> RuntimeImpl::Residency(const void* ptr, size_t size) {
  return PerPage("uhmm_query_residency", ptr, size, &PageLocation);
}

absl::StatusOr<std::vector<int32_t>> RuntimeImpl::DeviceCopies(const void* ptr, size_t size) {
  return PerPage("uhmm_query_copies", ptr, size, &PageCopy);
}

absl::Status RuntimeImpl::CheckAdvice(Advice advice, int64_t arg) const {
  constexpr const char* kWhat = "uhmm_advise";
  const int raw = static_cast<int>(advice);
  // A device that exists, or for SET_PREFERRED_LOCATION also the host.
  auto check_device = [&](const char* name, bool host_allowed) -> absl::Status {
    const bool exists = arg >= 0 && arg < kMaxAdviceDevices && devices_->valid(static_cast<int>(arg));
    if (exists || (host_allowed && arg == kHost)) return absl::OkStatus();
    return NoSuchDevice(absl::StrCat(kWhat, ": ", name), arg, host_allowed);
  };
  auto check_zero = [&](const char* name) -> absl::Status {
    if (arg == 0) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %s takes no argument, but arg is %d (pass 0)", kWhat, name, arg));
  };
  switch (advice) {
    case Advice::kSetReadMostly:
      return check_zero("UHMM_ADVISE_SET_READ_MOSTLY");
    case Advice::kUnsetReadMostly:
      return check_zero("UHMM_ADVISE_UNSET_READ_MOSTLY");
    case Advice::kSetPreferredLocation:
      return check_device("UHMM_ADVISE_SET_PREFERRED_LOCATION", /*host_allowed=*/true);
    case Advice::kUnsetPreferredLocation:
      return check_zero("UHMM_ADVISE_UNSET_PREFERRED_LOCATION");
    case Advice::kSetAccessedBy:
      return check_device("UHMM_ADVISE_SET_ACCESSED_BY", /*host_allowed=*/false);
    case Advice::kUnsetAccessedBy:
      return check_device("UHMM_ADVISE_UNSET_ACCESSED_BY", /*host_allowed=*/false);
    case Advice::kSetFaultGranule:
      if (arg < static_cast<int64_t>(kPageSize) || arg > static_cast<int64_t>(kBlockSize) ||
          (arg & (arg - 1)) != 0) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s: UHMM_ADVISE_SET_FAULT_GRANULE: granule %d is not a power of two from 4096 (4 KiB) to "
            "2097152 (2 MiB)",
            kWhat, arg));
      }
      return absl::OkStatus();
    case Advice::kUnsetFaultGranule:
      return check_zero("UHMM_ADVISE_UNSET_FAULT_GRANULE");
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("%s: advice %d is not a uhmm_advice_t value; use UHMM_ADVISE_SET_READ_MOSTLY (1) to "
                      "UHMM_ADVISE_UNSET_FAULT_GRANULE (8)",
                      kWhat, raw));
}

absl::Status RuntimeImpl::Advise(void* ptr, size_t size, Advice advice, int64_t arg) {
  constexpr const char* kWhat = "uhmm_advise";
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  absl::StatusOr<uintptr_t> end = CheckSpan(kWhat, ptr, size, /*round_size=*/true);
  if (!end.ok()) return end.status();
  if (absl::Status s = CheckAdvice(advice, arg); !s.ok()) return s;
  absl::StatusOr<RangeRef> range = LookupSpan(kWhat, ptr, size, *end);
  if (!range.ok()) return range.status();
  ManagedRange& r = **range;
  const uintptr_t start = reinterpret_cast<uintptr_t>(ptr);
  r.advice().Apply(start, *end, advice, arg);
  if (advice != Advice::kSetFaultGranule && advice != Advice::kUnsetFaultGranule) {
    // What a launch pushes may have changed (a host-preferred span, read-mostly copies): the next
    // launch sync looks at these blocks again.
    for (uintptr_t a = start & ~(kBlockSize - 1); a < *end; a += kBlockSize) {
      VaBlock& blk = r.block_of(a);
      MutexLock lock(&blk.mu);
      r.MarkHostDirty(blk);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> RuntimeImpl::GetRangeAttribute(const void* ptr, size_t size,
                                                       RangeAttribute attribute) const {
  constexpr const char* kWhat = "uhmm_range_get_attribute";
  absl::StatusOr<uintptr_t> end = CheckSpan(kWhat, ptr, size, /*round_size=*/true);
  if (!end.ok()) return end.status();
  switch (attribute) {
    case RangeAttribute::kReadMostly:
    case RangeAttribute::kPreferredLocation:
    case RangeAttribute::kAccessedBy:
    case RangeAttribute::kFaultGranule:
      break;
    default:
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: attribute %d is not a uhmm_range_attribute_t value; use UHMM_RANGE_ATTRIBUTE_READ_MOSTLY "
          "(1) to UHMM_RANGE_ATTRIBUTE_FAULT_GRANULE (4)",
          kWhat, static_cast<int>(attribute)));
  }
  absl::StatusOr<RangeRef> range = LookupSpan(kWhat, ptr, size, *end);
  if (!range.ok()) return range.status();
  return (*range)->advice().Attribute(reinterpret_cast<uintptr_t>(ptr), *end, attribute);
}

absl::StatusOr<uint64_t> RuntimeImpl::DeviceAddress(const void* ptr) const {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(ptr);
  RangeRef range = va_space_->Lookup(addr);
  if (!range) return absl::NotFoundError(absl::StrFormat("uhmm: %p is not managed", ptr));
  VaBlock& blk = range->block_of(addr);
  MutexLock lock(&blk.mu);
  const size_t i = ManagedRange::page_in_block(addr);
  // A READ_MOSTLY duplicate: kernels read its device copy while the CPU keeps the host one.
  const bool read_mostly_copy =
      blk.Duplicate(i) && range->advice().Any() && range->advice().At(addr).read_mostly;
  if (!blk.device[i] && !read_mostly_copy) {
    return absl::NotFoundError(absl::StrFormat("uhmm: the page of %p is not on a device", ptr));
  }
  return blk.pages[i]->dma_addr + addr % kPageSize;
}

absl::StatusOr<Runtime::Allocation> RuntimeImpl::FindAllocation(const void* ptr) const {
  RangeRef range = va_space_->Lookup(reinterpret_cast<uintptr_t>(ptr));
  if (!range) {
    return absl::NotFoundError(absl::StrFormat(
        "uhmm_find_allocation: %p is not managed by this runtime (not from uhmm_alloc, or freed)", ptr));
  }
  return Allocation{reinterpret_cast<void*>(range->start()), range->requested_size()};
}

absl::StatusOr<Runtime::DeviceStats> RuntimeImpl::device_stats(int device) const {
  if (absl::Status s = CheckDevice("uhmm_get_device_stats", device); !s.ok()) return s;
  const DeviceState& ds = (*devices_)[device];
  DeviceStats out;
  if (ds.pool) {
    out.pool_pages_total = ds.pool->total_pages();
    out.pool_pages_used = ds.pool->used_pages();
  }
  out.name = ds.device->name();
  out.peer_access = ds.reaches & ~(uint64_t{1} << device);
  return out;
}

Stats RuntimeImpl::stats() const {
  Stats s{};
  s.cpu_faults = counters_.cpu_faults.load();
  s.duplicate_faults = counters_.duplicate_faults.load();
  s.unmanaged_faults = counters_.unmanaged_faults.load();
  s.pages_to_device = counters_.pages_to_device.load();
  s.pages_to_host = counters_.pages_to_host.load();
  s.pages_device_to_device = counters_.pages_peer.load();
  s.evicted_pages = counters_.evicted_pages.load();
  s.evicted_chunks = counters_.evicted_chunks.load();
  s.sigbus_delivered = counters_.sigbus.load();
  s.events_remove = counters_.ev_remove.load() + counters_.own_zap_events.load();
  s.zero_fill_faults = counters_.zero_fill_faults.load();
  s.events_unmap = counters_.ev_unmap.load();
  s.events_remap = counters_.ev_remap.load();
  s.events_fork = counters_.forks.load();
  s.stale_faults = counters_.stale_faults.load();
  s.launch_syncs = counters_.launch_syncs.load();
  s.launch_pages_to_device = counters_.launch_pages.load();
  s.readahead_pages = counters_.readahead_pages.load();
  s.duplicate_pages_kept = counters_.duplicates_kept.load();
  s.duplicate_pages_reused = counters_.duplicates_reused.load();
  s.duplicate_pages_dropped = counters_.duplicates_dropped.load();
  s.zero_pages_filled = counters_.zero_pages_filled.load();
  s.grown_faults = counters_.grown_faults.load();
  s.thrashing_blocks = counters_.thrashing_blocks.load();
  s.hugetlb_ranges = va_space_->hugetlb_count();
  for (const auto& ds : *devices_) {
    if (!ds->pool) continue;
    s.device_pages_total += ds->pool->total_pages();
    s.device_pages_used += ds->pool->used_pages();
  }
  return s;
}

}  // namespace uhmm
