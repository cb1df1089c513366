// The vendor-neutral runtime: ranges, fault handling, events, eviction; see runtime_impl.h.
#include "runtime/api/runtime_impl.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <chrono>
#include <thread>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "runtime/process/fork.h"
#include "runtime/api/testing.h"
#include "runtime/trace/tracer.h"

namespace uhmm {
namespace {

constexpr size_t kMaxAllocation = size_t{1} << 46;  // 64 TiB: beyond any user address space

void LogIfError(const absl::Status& s) {
  if (!s.ok()) std::fprintf(stderr, "%s\n", s.ToString().c_str());
}

uffd_msg FaultMsg(uintptr_t address, uint32_t tid, uint32_t seq, bool deferred, bool minor) {
  uffd_msg m;
  std::memset(&m, 0, sizeof(m));
  m.event = UFFD_EVENT_PAGEFAULT;
  m.arg.pagefault.flags =
      (deferred ? FaultService::kDeferredFault : 0) | (minor ? UFFD_PAGEFAULT_FLAG_MINOR : 0);
  m.arg.pagefault.address = address;
  m.arg.pagefault.feat.ptid = tid;
  FaultService::SetReadSeq(&m, seq);
  return m;
}

// The trace of one fault message on this thread: HandleFault stamps the lookup, the migration code
// the copy and mapping phases (through trace::CurrentFaultTrace()), and the destructor the wake-up,
// then emits the record. Inactive (no clock reads) when the message was read with tracing off.
class FaultTraceScope {
 public:
  FaultTraceScope(uint64_t received_ns, uintptr_t address, uint32_t tid, bool deferred)
      : writer_(received_ns != 0 ? std::make_optional<trace::Tracer::ScopedWriter>() : std::nullopt),
        active_(writer_ && writer_->active()),
        deferred_(deferred) {
    if (!active_) return;
    ft_.rec.type = trace::RecordType::kFault;
    ft_.rec.device = -1;
    ft_.rec.addr = address;
    ft_.rec.aux = tid;
    ft_.rec.t[trace::kReceived] = received_ns;
    trace::CurrentFaultTrace() = &ft_;
  }
  ~FaultTraceScope() {
    if (!active_) return;
    trace::CurrentFaultTrace() = nullptr;
    if (ft_.deferred) return;
    // A migration that served this fault stamped its own wake-up; otherwise the wake was the
    // CONTINUE or WAKE just before returning.
    if (ft_.rec.t[trace::kWoken] == 0) ft_.rec.t[trace::kWoken] = trace::Tracer::Now();
    trace::Tracer::Emit(ft_.rec);
  }
  FaultTraceScope(const FaultTraceScope&) = delete;
  FaultTraceScope& operator=(const FaultTraceScope&) = delete;

  void Stamp(int phase) {
    if (active_) ft_.rec.t[phase] = trace::Tracer::Now();
  }
  void Flag(uint8_t flag) { ft_.rec.flags |= flag; }
  // Host resident when we looked: a duplicate, "covered" when it waited for the migration that
  // brought the page back.
  void Duplicate() { Flag(deferred_ ? trace::kFaultCovered : trace::kFaultDuplicate); }
  // Handed to a migration in flight: that message's next dispatch is the one traced.
  void Defer() { ft_.deferred = true; }

 private:
  std::optional<trace::Tracer::ScopedWriter> writer_;  // the session stays open until we emit
  const bool active_;
  const bool deferred_;
  trace::FaultTrace ft_;
};

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

absl::Status RuntimeImpl::Init() {
  // Backend: the one named, else the first registered one that opens with at least one device.
  std::vector<std::string> tried;
  for (const BackendEntry& entry : RegisteredBackends()) {
    if (!config_.backend.empty() && entry.name != config_.backend) continue;
    absl::StatusOr<std::unique_ptr<Backend>> b = entry.create(config_);
    if (b.ok() && (*b)->device_count() > 0) {
      backend_ = std::move(*b);
      break;
    }
    tried.push_back(absl::StrFormat("%s: %s", entry.name,
                                    b.ok() ? "no device" : std::string(b.status().message())));
  }
  if (!backend_) {
    if (!config_.backend.empty() && tried.empty()) {
      std::vector<std::string> names;
      for (const BackendEntry& e : RegisteredBackends()) names.emplace_back(e.name);
      return absl::InvalidArgumentError(absl::StrFormat(
          "uhmm: unknown backend '%s' (UHMM_BACKEND or Config::backend); built-in backends: %s",
          config_.backend, absl::StrJoin(names, ", ")));
    }
    return absl::UnavailableError(
        absl::StrFormat("uhmm: no usable backend (%s)", absl::StrJoin(tried, "; ")));
  }

  for (int i = 0; i < backend_->device_count(); ++i) {
    auto ds = std::make_unique<DeviceState>();
    ds->rt = this;
    ds->ordinal = i;
    absl::StatusOr<std::unique_ptr<Device>> dev = backend_->OpenDevice(i);
    if (!dev.ok()) return dev.status();
    ds->device = std::move(*dev);
    Pagemap& pgmap = ds->device->pagemap();
    if (pgmap.ops == nullptr || pgmap.ops->page_free == nullptr || pgmap.ops->page_fault == nullptr) {
      return absl::InternalError(absl::StrFormat(
          "uhmm: backend %s device %d registered a pagemap without page_free/page_fault",
          backend_->name(), i));
    }
    pgmap.device = i;
    pgmap.internal = ds.get();
    size_t pool_bytes =
        config_.device_pool_bytes ? config_.device_pool_bytes : ds->device->default_pool_bytes();
    if (config_.device_pool_fraction > 0) {
      absl::StatusOr<size_t> free_bytes = ds->device->free_memory();
      if (!free_bytes.ok()) return free_bytes.status();
      pool_bytes = static_cast<size_t>(static_cast<double>(*free_bytes) * config_.device_pool_fraction) &
                   ~(kBlockSize - 1);
      if (pool_bytes == 0) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "uhmm: device_pool_fraction %g of device %d's %u free bytes is less than one 2 MiB chunk",
            config_.device_pool_fraction, i, *free_bytes));
      }
    }
    ds->pool = std::make_unique<PagePool>(ds->device.get(), &pgmap, pool_bytes / kBlockSize);
    devices_.push_back(std::move(ds));
  }

  absl::StatusOr<std::unique_ptr<Uffd>> uffd = Uffd::Open();
  if (!uffd.ok()) return uffd.status();
  uffd_ = std::move(*uffd);
  switch (config_.sigbus_mode) {
    case SigbusMode::kAuto:
      sigbus_mode_ = uffd_->has_poison() ? SigbusMode::kPoison : SigbusMode::kTkill;
      break;
    case SigbusMode::kPoison:
      if (!uffd_->has_poison()) {
        return absl::UnavailableError(
            "uhmm: UHMM_SIGBUS_MODE=poison needs UFFDIO_POISON (Linux 6.6+); use auto or tkill");
      }
      sigbus_mode_ = SigbusMode::kPoison;
      break;
    case SigbusMode::kTkill:
      sigbus_mode_ = SigbusMode::kTkill;
      break;
  }
  // Busy-polling costs a core while faults come; by default only where cores are plenty.
  const int spin_us = config_.fault_spin_us >= 0 ? config_.fault_spin_us
                      : std::thread::hardware_concurrency() >= 8 ? 50 : 0;
  fault_service_ = std::make_unique<FaultService>(this, uffd_.get(), config_.fault_threads, spin_us);
  FaultService* fs = fault_service_.get();
  // Any thread that meets a pending event reads it (the service threads dispatch it): it may hold
  // a block lock that the service threads are waiting for.
  uffd_->set_eagain_hook([fs] { fs->DrainToQueue(); });
  if (absl::Status s = fault_service_->Start(); !s.ok()) return s;
  workers_ = std::make_unique<WorkerPool>(config_.prefetch_threads, "uhmm-mig-");
  workers_->Start();
  PlaceNearDevice();
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
  RegisterForFork(this);
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
  UnregisterForFork(this);
  if (config_.print_stats && !forked_child_) {
    StatsAtExit(this, false);
    PrintStats(*this);
  }
  if (transparent_ && !forked_child_) (void)backend_->SetLaunchListener(nullptr);
  if (forked_child_) {
    // The service and copy-engine threads only exist in the parent: never join them. The managed
    // ranges are private copies here; unmap them and leak the rest.
    MutexLock lock(&ranges_mu_);
    for (auto& [start, range] : ranges_) {
      munmap(reinterpret_cast<void*>(start), range->size());
      range->DetachBackend();
    }
    ranges_.clear();
    (void)fault_service_.release();
    (void)workers_.release();
    for (auto& ds : devices_) {
      (void)ds->pool.release();
      (void)ds->device.release();
    }
    return;
  }
  std::vector<std::shared_ptr<ManagedRange>> all;
  {
    MutexLock lock(&ranges_mu_);
    for (auto& [start, range] : ranges_) all.push_back(range);
    ranges_.clear();
  }
  for (auto& range : all) {
    range->BeginTeardown();
    DestroyRange(*range, /*unmap_user_view=*/true);
  }
  ReapZombies();
  if (workers_) workers_->Stop();
  if (fault_service_) fault_service_->Stop();
  devices_.clear();
  if (owns_trace_) (void)StopTrace();
}

absl::Status RuntimeImpl::StartTrace(const std::string& path) {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  absl::Status s = trace::Tracer::Start(path, backend_->name());
  if (!s.ok()) return s;
  owns_trace_ = true;
  // Ranges allocated before the session, so that uhmm-prof can attribute their faults.
  ReaderMutexLock lock(&ranges_mu_);
  for (const auto& [start, range] : ranges_) trace::TraceRange(/*alloc=*/true, start, range->size());
  return absl::OkStatus();
}

absl::Status RuntimeImpl::StopTrace() {
  if (forked_child_) return absl::OkStatus();  // the parent's trace: not ours to end
  owns_trace_ = false;
  return trace::Tracer::Stop();
}

void RuntimeImpl::PlaceNearDevice() {
  if (!config_.placement) {
    placement_ = "off (UHMM_PLACEMENT=none)";
    return;
  }
  const std::string bus = devices_[0]->device->pci_bus_id();
  if (bus.empty()) {
    placement_ = absl::StrFormat("nothing bound: the %s backend's device has no PCI address", backend_->name());
    return;
  }
  absl::StatusOr<const Topology*> topo = Topology::Get();
  absl::StatusOr<Topology::Locality> near =
      topo.ok() ? (*topo)->NearPci(bus) : absl::StatusOr<Topology::Locality>(topo.status());
  if (!near.ok()) {
    placement_ = absl::StrFormat("nothing bound: %s", near.status().message());
    return;
  }
  if (near->whole_machine) {
    placement_ = absl::StrFormat("nothing bound: every CPU is as close to %s as any other", bus);
    return;
  }
  std::vector<pthread_t> threads = fault_service_->native_handles();
  for (pthread_t t : workers_->native_handles()) threads.push_back(t);
  for (pthread_t t : threads) {
    if (absl::Status s = (*topo)->BindThread(t, near->cpus); !s.ok()) {
      placement_ = absl::StrFormat("nothing bound: %s", s.message());
      return;
    }
  }
  topology_ = *topo;
  place_nodes_ = near->nodes;
  placement_ = absl::StrFormat("fault and migration threads on CPUs %s, runtime views on NUMA node(s) %s, near %s",
                               near->cpus, near->nodes, bus);
}

void RuntimeImpl::PlaceHostMemory(void* view, size_t bytes) {
  if (place_nodes_.empty()) return;
  if (absl::Status s = topology_->BindMemory(view, bytes, place_nodes_); !s.ok()) {
    std::fprintf(stderr, "uhmm: warning: %s; this range's host memory is placed by the kernel\n",
                 std::string(s.message()).c_str());
  }
}

void PrintStats(const Runtime& rt) {
  const Stats s = rt.stats();
  const double mib = 1.0 / (1 << 20);
  std::fprintf(stderr,
               "uhmm stats (backend %s, %d device(s)):\n"
               "  cpu faults        %llu (duplicates %llu, stale %llu, unmanaged %llu)\n"
               "  to device         %.1f MiB (%llu pages; %llu by launch syncs in %llu passes)\n"
               "  to host           %.1f MiB (%llu pages)\n"
               "  evictions         %llu chunks, %llu pages\n"
               "  SIGBUS delivered  %llu\n"
               "  device pool       %llu of %llu pages in use (%.1f%%)\n",
               std::string(rt.backend_name()).c_str(), rt.device_count(),
               static_cast<unsigned long long>(s.cpu_faults), static_cast<unsigned long long>(s.duplicate_faults),
               static_cast<unsigned long long>(s.stale_faults), static_cast<unsigned long long>(s.unmanaged_faults),
               s.pages_to_device * kPageSize * mib, static_cast<unsigned long long>(s.pages_to_device),
               static_cast<unsigned long long>(s.launch_pages_to_device),
               static_cast<unsigned long long>(s.launch_syncs), s.pages_to_host * kPageSize * mib,
               static_cast<unsigned long long>(s.pages_to_host),
               static_cast<unsigned long long>(s.evicted_chunks), static_cast<unsigned long long>(s.evicted_pages),
               static_cast<unsigned long long>(s.sigbus_delivered),
               static_cast<unsigned long long>(s.device_pages_used),
               static_cast<unsigned long long>(s.device_pages_total),
               s.device_pages_total ? 100.0 * s.device_pages_used / s.device_pages_total : 0.0);
  std::fprintf(stderr,
               "  policy            %llu pages read ahead, %llu faults grown, %llu blocks thrashing, "
               "%llu hugetlb ranges\n",
               static_cast<unsigned long long>(s.readahead_pages), static_cast<unsigned long long>(s.grown_faults),
               static_cast<unsigned long long>(s.thrashing_blocks), static_cast<unsigned long long>(s.hugetlb_ranges));
  if (auto* impl = dynamic_cast<const RuntimeImpl*>(&rt)) {
    std::fprintf(stderr, "  placement         %s\n", impl->placement().c_str());
  }
}

// Runtimes with UHMM_STATS=1 that are still alive at exit print then.
void StatsAtExit(RuntimeImpl* rt, bool add) {
  static std::mutex mu;
  static auto* live = new std::vector<RuntimeImpl*>();
  static std::once_flag registered;
  std::lock_guard<std::mutex> lock(mu);
  if (add) {
    std::call_once(registered, [] {
      std::atexit([] {
        std::lock_guard<std::mutex> l(mu);
        for (RuntimeImpl* r : *live) PrintStats(*r);
        live->clear();
      });
    });
    live->push_back(rt);
  } else {
    std::erase(*live, rt);
  }
}

DeviceTestHooks* DeviceHooks(Runtime& rt, int device) {
  auto& impl = static_cast<RuntimeImpl&>(rt);
  if (device < 0 || device >= impl.device_count()) return nullptr;
  return impl.device(device).test_hooks();
}

void InjectFaultMessage(Runtime& rt, const void* addr, bool stale) {
  auto& impl = static_cast<RuntimeImpl&>(rt);
  const uint32_t now = impl.fault_service().read_seq();
  impl.HandleFault(reinterpret_cast<uintptr_t>(addr), static_cast<uint32_t>(syscall(SYS_gettid)),
                   stale ? now : now + 1);
}

absl::Status RuntimeImpl::CheckUsable() const {
  if (forked_child_) {
    return absl::FailedPreconditionError(
        "uhmm: this runtime was inherited across fork(); in this process managed memory is a "
        "private host copy. Create a new runtime in the child to migrate memory.");
  }
  return absl::OkStatus();
}

RangeRef RuntimeImpl::Lookup(uintptr_t addr) {
  ReaderMutexLock lock(&ranges_mu_);
  auto it = ranges_.upper_bound(addr);
  if (it == ranges_.begin()) return RangeRef();
  --it;
  if (!it->second->contains(addr)) return RangeRef();
  return RangeRef(it->second);
}

absl::StatusOr<void*> RuntimeImpl::Allocate(size_t size, Backing backing) {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  if (size == 0) return absl::InvalidArgumentError("uhmm_alloc: size is 0");
  if (size > kMaxAllocation) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm_alloc: size %u is larger than the 64 TiB limit (overflowed size computation?)", size));
  }
  ReapZombies();
  // Page backing: what the range asked for, else the hugetlb policy. AUTO takes hugetlb only for
  // large ranges while enough hugepages are free, and falls back to 4 KiB pages.
  const size_t huge_pages = (size + kBlockSize - 1) / kBlockSize;
  const bool auto_huge = backing == Backing::kDefault && config_.hugetlb == HugetlbMode::kAuto &&
                         size >= config_.hugetlb_min_bytes && FreeHugepages() >= huge_pages;
  const bool huge = backing == Backing::kHugetlb ||
                    (backing == Backing::kDefault && config_.hugetlb == HugetlbMode::kAlways) || auto_huge;
  absl::StatusOr<std::unique_ptr<ManagedRange>> created =
      ManagedRange::Create(this, backend_.get(), size, huge);
  if (!created.ok() && auto_huge) created = ManagedRange::Create(this, backend_.get(), size, false);
  if (!created.ok()) return created.status();
  std::shared_ptr<ManagedRange> range = std::move(*created);
  if (absl::Status s = uffd_->Register(range->start(), range->size()); !s.ok()) {
    range->DiscardUserView();
    return s;
  }
  if (range->populated()) {
    // The pages exist (pinned): map them all now instead of one minor fault per first touch. The
    // range is not published yet, so nothing races with this.
    LogIfError(uffd_->Continue(range->start(), range->size(), /*wake=*/true, range->cpu_page()));
  }
  MutexLock lock(&ranges_mu_);
  ranges_[range->start()] = range;
  host_epoch_.fetch_add(1, std::memory_order_acq_rel);  // new host-resident pages
  trace::TraceRange(/*alloc=*/true, range->start(), range->size());
  return reinterpret_cast<void*>(range->start());
}

absl::Status RuntimeImpl::Free(void* ptr) {
  if (ptr == nullptr) return absl::InvalidArgumentError("uhmm_free: pointer is NULL");
  const uintptr_t addr = reinterpret_cast<uintptr_t>(ptr);
  std::shared_ptr<ManagedRange> range;
  {
    MutexLock lock(&ranges_mu_);
    auto it = ranges_.find(addr);
    if (it == ranges_.end()) {
      auto after = ranges_.upper_bound(addr);
      if (after != ranges_.begin() && std::prev(after)->second->contains(addr)) {
        const ManagedRange& r = *std::prev(after)->second;
        return absl::InvalidArgumentError(absl::StrFormat(
            "uhmm_free: %p is inside the allocation [%#x, %#x) but not its start", ptr, r.start(),
            r.end()));
      }
      return absl::NotFoundError(absl::StrFormat(
          "uhmm_free: %p was not allocated by this uhmm runtime, or was already freed", ptr));
    }
    range = it->second;
    ranges_.erase(it);
  }
  if (forked_child_) {
    munmap(ptr, range->size());
    return absl::OkStatus();
  }
  range->BeginTeardown();
  trace::TraceRange(/*alloc=*/false, range->start(), range->size());
  DestroyRange(*range, /*unmap_user_view=*/true);
  ReapZombies();
  return absl::OkStatus();
}

void RuntimeImpl::DestroyRange(ManagedRange& range, bool unmap_user_view) {
  std::vector<Page*> release;
  std::vector<uffd_msg> deferred;
  for (size_t b = 0; b < range.num_blocks(); ++b) {
    VaBlock& blk = range.block(b);
    MutexLock lock(&blk.mu);
    for (size_t i = 0; i < kPagesPerBlock; ++i) {
      if (blk.device[i]) {
        release.push_back(blk.pages[i]);
        blk.pages[i] = nullptr;
      }
    }
    blk.device.reset();
    deferred.insert(deferred.end(), blk.deferred.begin(), blk.deferred.end());
    blk.deferred.clear();
  }
  const PageRuns mapped = range.MappedRuns(range.start(), range.end());
  // One pointer: the backend's reservation can go back only if the application unmapped none of
  // it; otherwise those addresses may belong to a new mapping, which releasing would unmap.
  const bool release_reservation = range.reserved() != 0 && unmap_user_view && mapped.size() == 1 &&
                                   mapped[0] == std::make_pair(range.start(), range.end());
  for (auto [s, e] : mapped) {
    // Unregistering wakes any thread still waiting in the range.
    (void)uffd_->Unregister(s, e - s);
    if (unmap_user_view && !release_reservation) munmap(reinterpret_cast<void*>(s), e - s);
  }
  for (Page* p : release) put_page(p);
  if (range.reserved() != 0) {
    // The device mappings go first, then the address space goes back to the backend.
    for (auto& ds : devices_) ds->pool->UnbindRange(range.start(), range.start() + range.reserved());
    const size_t reserved = range.reserved();
    if (release_reservation) {
      range.ReleaseReservation();
    } else if (!range.AbandonReservation()) {
      std::fprintf(stderr,
                   "uhmm: warning: the application munmapped (part of) the managed range at %#lx; "
                   "its %zu-byte device address reservation is leaked\n",
                   static_cast<unsigned long>(range.start()), reserved);
    }
  }
  fault_service_->Requeue(std::move(deferred));
}

void RuntimeImpl::ReapZombies() {
  std::vector<std::shared_ptr<ManagedRange>> zombies;
  {
    MutexLock lock(&ranges_mu_);
    zombies.swap(zombies_);
  }
  for (auto& z : zombies) {
    z->BeginTeardown();
    DestroyRange(*z, /*unmap_user_view=*/false);
  }
}

absl::StatusOr<RangeRef> RuntimeImpl::CheckMigrateRequest(const char* what, void* ptr, size_t size,
                                                          int device) {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(ptr);
  if (ptr == nullptr) return absl::InvalidArgumentError(absl::StrFormat("%s: pointer is NULL", what));
  if (size == 0) return absl::InvalidArgumentError(absl::StrFormat("%s: size is 0", what));
  if (addr % kPageSize != 0 || size % kPageSize != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: [%p, +%#x) is not 4 KiB aligned (pointer and size must both be)", what, ptr, size));
  }
  if (addr + size < addr) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %p + %#x overflows the address space", what, ptr, size));
  }
  if (device != kHost && (device < 0 || device >= device_count())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: device %d does not exist; this runtime (%s backend) has devices 0..%d and "
        "UHMM_LOCATION_HOST (-1)",
        what, device, backend_name(), device_count() - 1));
  }
  RangeRef range = Lookup(addr);
  if (!range) {
    return absl::NotFoundError(absl::StrFormat(
        "%s: %p is not managed by this runtime (not from uhmm_alloc, or freed)", what, ptr));
  }
  if (addr + size > range->end()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: [%p, +%#x) runs past the end of its allocation [%#x, %#x)", what, ptr, size,
        range->start(), range->end()));
  }
  fault_service_->AwaitDiscards(addr, addr + size);
  if (device != kHost) {
    // The request must fit the pool at once: its own pages are never evicted to make room for it.
    const DeviceState& ds = *devices_[device];
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

absl::Status RuntimeImpl::BulkMigrate(ManagedRange& range, uintptr_t start, uintptr_t end, int device) {
  // One job per 2 MiB block on the caller and the migration workers: one block's zap or PTE
  // installation overlaps another's copy. To a device, every worker holds a block of the pool
  // while it copies; small pools stay serial so that eviction always finds a victim.
  const size_t blocks = (((end - 1) & ~(kBlockSize - 1)) - (start & ~(kBlockSize - 1))) / kBlockSize + 1;
  const bool parallel =
      blocks > 1 && workers_->threads() > 0 &&
      (device == kHost ||
       devices_[device]->pool->total_pages() / kPagesPerBlock >= 8 * (size_t{1} + workers_->threads()));
  auto run = [&](uintptr_t s, uintptr_t e) {
    // The whole request, on whichever thread runs a part.
    ProtectFromEviction protect(range, *devices_[device == kHost ? 0 : device]->device, start, end);
    return device == kHost ? MigrateToHost(range, s, e, MigrateCause::kPrefetch)
                           : MigrateToDevice(range, s, e, *devices_[device], MigrateCause::kPrefetch);
  };
  if (!parallel) return run(start, end);
  Mutex mu;
  absl::Status first;
  workers_->ParallelFor(blocks, [&](size_t i) {
    const uintptr_t s = std::max(start, (start & ~(kBlockSize - 1)) + i * kBlockSize);
    const uintptr_t e = std::min(end, (start & ~(kBlockSize - 1)) + (i + 1) * kBlockSize);
    absl::Status st = run(s, e);
    MutexLock lock(&mu);
    if (first.ok()) first = st;
  });
  return first;
}

absl::Status RuntimeImpl::Migrate(void* ptr, size_t size, int device) {
  absl::StatusOr<RangeRef> range = CheckMigrateRequest("uhmm_migrate", ptr, size, device);
  if (!range.ok()) return range.status();
  const uintptr_t addr = reinterpret_cast<uintptr_t>(ptr);
  return BulkMigrate(**range, addr, addr + size, device);
}

absl::Status RuntimeImpl::PrefetchOnQueue(void* ptr, size_t size, int device, void* queue) {
  absl::StatusOr<RangeRef> range = CheckMigrateRequest("uhmm_prefetch_on_queue", ptr, size, device);
  if (!range.ok()) return range.status();
  const uintptr_t addr = reinterpret_cast<uintptr_t>(ptr);
  if (device != kHost) return BulkMigrate(**range, addr, addr + size, device);
  // What kernels already queued write must land before the copies read device memory.
  for (auto& ds : devices_) {
    if (absl::Status s = ds->device->SynchronizeQueue(queue); !s.ok()) {
      return absl::Status(s.code(), absl::StrFormat("uhmm_prefetch_on_queue: waiting for the queue "
                                                    "of device %d: %s",
                                                    ds->ordinal, s.message()));
    }
  }
  return BulkMigrate(**range, addr, addr + size, kHost);
}

absl::Status RuntimeImpl::SyncForDevice(int device, void* queue) {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  if (device < 0 || device >= device_count()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm_sync_for_device: device %d does not exist (devices 0..%d)", device, device_count() - 1));
  }
  DeviceState& ds = *devices_[device];
  fault_service_->AwaitDiscards(0, UINTPTR_MAX);
  const uint64_t epoch = host_epoch_.load(std::memory_order_acquire);
  if (ds.synced_epoch.load(std::memory_order_acquire) == epoch) return absl::OkStatus();
  ReapZombies();
  std::vector<std::shared_ptr<ManagedRange>> ranges;
  size_t managed = 0;
  {
    ReaderMutexLock lock(&ranges_mu_);
    // With one pointer a partly used block still takes a whole chunk.
    const bool whole_blocks = ds.device->placement() == Placement::kSameAddress;
    for (auto& [start, r] : ranges_) {
      ranges.push_back(r);
      managed += whole_blocks ? r->num_blocks() * kBlockSize : r->size();
    }
  }
  // Every managed byte must fit at once: evicting one range for another would leave a kernel
  // that uses both reading unmapped device memory.
  const size_t pool_bytes = ds.pool->total_pages() * kPageSize;
  if (managed > pool_bytes) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "uhmm_sync_for_device: %u bytes are managed but device %d's pool holds %u; make only what "
        "each kernel uses resident with uhmm_prefetch_on_queue (and UHMM_TRANSPARENT_LAUNCH=0), or "
        "raise UHMM_DEVICE_POOL_BYTES",
        managed, device, pool_bytes));
  }
  counters_.launch_syncs.fetch_add(1, std::memory_order_relaxed);
  (void)queue;  // the migration is complete when it returns: ordered before anything queued next
  for (auto& r : ranges) {
    RangeRef ref(r);
    if (!ref) continue;  // being freed
    for (auto [s, e] : BlocksWithHostPages(*ref)) {
      if (absl::Status st = MigrateToDevice(*ref, s, e, ds, MigrateCause::kLaunch); !st.ok()) {
        return st;
      }
    }
  }
  ds.synced_epoch.store(epoch, std::memory_order_release);
  return absl::OkStatus();
}

PageRuns RuntimeImpl::BlocksWithHostPages(ManagedRange& range) {
  PageRuns runs;
  for (size_t b = 0; b < range.num_blocks(); ++b) {
    const uintptr_t start = range.block_start(b);
    const uintptr_t end = std::min(range.end(), start + kBlockSize);
    const size_t n = (end - start) / kPageSize;
    VaBlock& blk = range.block(b);
    bool work;
    {
      MutexLock lock(&blk.mu);
      // Pages that stay where they are: on a device, unmapped by the application, or poisoned.
      const PageMask settled = blk.device | blk.unmapped | blk.poisoned;
      work = blk.busy.any() || settled.count() < n;
    }
    if (!work) continue;
    if (!runs.empty() && runs.back().second == start) {
      runs.back().second = end;
    } else {
      runs.emplace_back(start, end);
    }
  }
  return runs;
}

void RuntimeImpl::BeforeLaunch(int device, void* queue) {
  absl::Status s = SyncForDevice(device, queue);
  if (s.ok()) return;
  // Once per epoch: a launch cannot be failed from here, so say why its data may be missing.
  const uint64_t epoch = host_epoch_.load(std::memory_order_acquire);
  if (launch_error_epoch_.exchange(epoch) != epoch) {
    std::fprintf(stderr, "uhmm: transparent launch on device %d: managed data is not all resident: %s\n",
                 device, std::string(s.message()).c_str());
  }
}

absl::StatusOr<uhmm_native_handles_t> RuntimeImpl::NativeHandles(int device) const {
  if (device < 0 || device >= device_count()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm_get_native_handles: device %d does not exist (devices 0..%d)", device, device_count() - 1));
  }
  return devices_[device]->device->native_handles();
}

absl::Status RuntimeImpl::EvictDevice(int device) {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  if (device < 0 || device >= device_count()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm_evict_device: device %d does not exist (devices 0..%d)", device, device_count() - 1));
  }
  ReapZombies();
  fault_service_->AwaitDiscards(0, UINTPTR_MAX);
  DeviceState& ds = *devices_[device];
  // No migration to this device starts while we empty it, and those under way finish first; pages
  // that migrations to the host hold are waited for. So the call ends with the device empty, and
  // migrations to it that were held back go on afterwards.
  ds.gate.Close();
  absl::Status status;
  for (int round = 0;; ++round) {
    absl::flat_hash_set<size_t> exclude;
    while (std::optional<size_t> victim = ds.pool->PickVictim(exclude)) {
      size_t freed = 0;
      status = EvictChunk(ds, *victim, &freed);
      if (!status.ok()) break;
      exclude.insert(*victim);
    }
    if (!status.ok() || ds.pool->used_pages() == 0) break;
    if (round == 10000) {  // about 10 s: a page that no migration holds and none can evict
      status = absl::InternalError(absl::StrFormat(
          "uhmm_evict_device: %u pages of device %d stayed in use for 10 s with no migration "
          "holding them",
          ds.pool->used_pages(), device));
      break;
    }
    // Pages still held by migrations to the host (faults, read-ahead) in flight: they finish on
    // their own; back off gently.
    std::this_thread::sleep_for(std::chrono::microseconds(round < 100 ? 10 : 1000));
  }
  ds.gate.Open();
  if (!status.ok()) return status;
  ds.pool->ReleaseEmptyChunks();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> RuntimeImpl::Residency(const void* ptr, size_t size) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(ptr);
  if (ptr == nullptr) return absl::InvalidArgumentError("uhmm_query_residency: pointer is NULL");
  if (size == 0) return absl::InvalidArgumentError("uhmm_query_residency: size is 0");
  if (addr % kPageSize != 0 || size % kPageSize != 0 || addr + size < addr) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm_query_residency: [%p, +%#x) must be 4 KiB aligned and not overflow", ptr, size));
  }
  RangeRef range = Lookup(addr);
  if (!range) {
    return absl::NotFoundError(
        absl::StrFormat("uhmm_query_residency: %p is not managed by this runtime", ptr));
  }
  if (addr + size > range->end()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm_query_residency: [%p, +%#x) runs past the end of its allocation [%#x, %#x)", ptr,
        size, range->start(), range->end()));
  }
  fault_service_->AwaitDiscards(addr, addr + size);
  std::vector<int32_t> out;
  out.reserve(size / kPageSize);
  for (uintptr_t a = addr; a < addr + size;) {
    VaBlock& blk = range->block_of(a);
    const uintptr_t block_end = std::min(addr + size, (a & ~(kBlockSize - 1)) + kBlockSize);
    MutexLock lock(&blk.mu);
    for (; a < block_end; a += kPageSize) {
      const size_t i = ManagedRange::page_in_block(a);
      if (blk.unmapped[i]) {
        out.push_back(kUnmapped);
      } else if (blk.poisoned[i]) {
        out.push_back(kPoisoned);
      } else if (blk.device[i]) {
        out.push_back(blk.pages[i]->pgmap->device);
      } else {
        out.push_back(kHost);
      }
    }
  }
  return out;
}

absl::StatusOr<uint64_t> RuntimeImpl::DeviceAddress(const void* ptr) const {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(ptr);
  RangeRef range = const_cast<RuntimeImpl*>(this)->Lookup(addr);
  if (!range) return absl::NotFoundError(absl::StrFormat("uhmm: %p is not managed", ptr));
  VaBlock& blk = range->block_of(addr);
  MutexLock lock(&blk.mu);
  const size_t i = ManagedRange::page_in_block(addr);
  if (!blk.device[i]) {
    return absl::NotFoundError(absl::StrFormat("uhmm: the page of %p is not on a device", ptr));
  }
  return blk.pages[i]->dma_addr + addr % kPageSize;
}

Stats RuntimeImpl::stats() const {
  Stats s{};
  s.cpu_faults = counters_.cpu_faults.load();
  s.duplicate_faults = counters_.duplicate_faults.load();
  s.unmanaged_faults = counters_.unmanaged_faults.load();
  s.pages_to_device = counters_.pages_to_device.load();
  s.pages_to_host = counters_.pages_to_host.load();
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
  s.grown_faults = counters_.grown_faults.load();
  s.thrashing_blocks = counters_.thrashing_blocks.load();
  {
    ReaderMutexLock lock(&ranges_mu_);
    for (const auto& [start, r] : ranges_) s.hugetlb_ranges += r->hugetlb() ? 1 : 0;
  }
  for (const auto& ds : devices_) {
    if (!ds->pool) continue;
    s.device_pages_total += ds->pool->total_pages();
    s.device_pages_used += ds->pool->used_pages();
  }
  return s;
}

void RuntimeImpl::CountMigrated(bool to_device, MigrateCause cause, size_t pages) {
  (to_device ? counters_.pages_to_device : counters_.pages_to_host).fetch_add(pages);
  if (cause == MigrateCause::kEviction) counters_.evicted_pages.fetch_add(pages);
  if (cause == MigrateCause::kLaunch && to_device) counters_.launch_pages.fetch_add(pages);
  if (cause == MigrateCause::kPrefetcher) counters_.readahead_pages.fetch_add(pages);
  if (!to_device && pages > 0) host_epoch_.fetch_add(1, std::memory_order_acq_rel);
}

// ---- The CPU fault path -------------------------------------------------------------------------

void RuntimeImpl::HandleFault(uintptr_t address, uint32_t tid, uint32_t seq, uint64_t received_ns,
                              bool deferred, bool minor) {
  // A deferred message comes back once the migration that held its page is done: same fault.
  if (!deferred) counters_.cpu_faults.fetch_add(1, std::memory_order_relaxed);
  FaultTraceScope trace(received_ns, address, tid, deferred);
  const uintptr_t page = address & ~(kPageSize - 1);
  RangeRef range = Lookup(page);
  if (!range) {
    // Registered memory that no live range covers (mremapped away, or racing with free): the
    // shadow page is the data, so map it; but first let pending mremaps bring their data home.
    if (fault_service_->ParkIfRemapPending(FaultMsg(address, tid, seq, false, minor))) {
      trace.Defer();
      return;
    }
    trace.Stamp(trace::kLookedUp);
    trace.Duplicate();
    counters_.unmanaged_faults.fetch_add(1, std::memory_order_relaxed);
    // A hugetlb mapping takes only whole 2 MiB pages (EINVAL otherwise). A page the shadow does not
    // have reads as zero.
    absl::Status st = minor ? uffd_->Continue(page, kPageSize) : uffd_->ZeroFill(page, kPageSize);
    if (absl::IsInvalidArgument(st)) {
      const uintptr_t huge = page & ~(kBlockSize - 1);
      st = minor ? uffd_->Continue(huge, kBlockSize, /*wake=*/true, kBlockSize)
                 : uffd_->ZeroFill(huge, kBlockSize);
    }
    LogIfError(st);
    return;
  }
  VaBlock& blk = range->block_of(page);
  const size_t i = ManagedRange::page_in_block(page);
  std::pair<uintptr_t, uintptr_t> granule;
  bool readahead_ok = false;
  for (int attempt = 0;; ++attempt) {
    Page* dpage = nullptr;
    bool poisoned = false;
    {
      MutexLock lock(&blk.mu);
      if (blk.busy[i]) {
        // A migration holds the page; finalize re-queues us. Never wait here: the migration may
        // itself be waiting for a service thread to read its REMOVE event.
        blk.deferred.push_back(FaultMsg(address, tid, seq, /*deferred=*/true, minor));
        trace.Defer();
        return;
      }
      poisoned = blk.poisoned[i];
      if (!poisoned && blk.device[i]) {
        // A message read before this block last gained device pages is stale when its thread has
        // moved on (a signal makes the kernel raise the fault again; our own fault-back already
        // woke it): migrating back would pull data from under a kernel that was just given it.
        // Wake instead: a thread that is still waiting retries and faults afresh.
        if (static_cast<int32_t>(seq - blk.device_seq) <= 0) {
          counters_.stale_faults.fetch_add(1, std::memory_order_relaxed);
          trace.Stamp(trace::kLookedUp);
          trace.Flag(trace::kFaultStale);
          LogIfError(uffd_->Wake(page & ~(range->cpu_page() - 1), range->cpu_page()));
          return;
        }
        dpage = blk.pages[i];
        if (attempt == 0) {
          granule = FaultGranule(*range, blk, page, &readahead_ok);
        } else {
          // The page went back to a device between our migration and this look (or the policy's
          // granule missed it): move just the CPU's unit of it, so every round makes progress.
          const uintptr_t unit = page & ~(range->cpu_page() - 1);
          granule = {unit, std::min(unit + range->cpu_page(), range->end())};
        }
      }
      if (!poisoned && dpage == nullptr) {
        // Host resident: someone else brought it back (a duplicate) or it was never mapped here.
        // Map it under the block lock: a migration to a device that starts after we looked must
        // not zap first and see its zap undone by this CONTINUE (a lost CPU write).
        if (attempt == 0) {
          (minor ? counters_.duplicate_faults : counters_.zero_fill_faults)
              .fetch_add(1, std::memory_order_relaxed);
          trace.Stamp(trace::kLookedUp);
          trace.Duplicate();
        }
        const uintptr_t unit = page & ~(range->cpu_page() - 1);
        const bool mapped =
            minor ? fault_service_->MapUnlessDiscarded(unit, unit + range->cpu_page(), [&] {
                      return uffd_->Continue(unit, range->cpu_page(), /*wake=*/true, range->cpu_page(),
                                             /*drain_events=*/false);
                    })
                  : ZeroFillLocked(*range, blk, page, tid);
        // An application discard of this page was read meanwhile: wait for it, then map.
        if (mapped || fault_service_->ParkIfDiscardPending(FaultMsg(address, tid, seq, true, minor))) {
          if (!mapped) trace.Defer();
          return;
        }
        continue;
      }
    }
    trace.Stamp(trace::kLookedUp);
    if (poisoned) {
      trace.Flag(trace::kFaultSigbus);
      DeliverSigbus(*range, page, tid);
      return;
    }
    VmFault vmf;
    vmf.vma = range.get();
    vmf.address = page;
    vmf.start = granule.first;
    vmf.end = granule.second;
    vmf.page = dpage;
    // Read-ahead is decided as of now, before the fault-back wakes the thread: whatever that thread
    // does next (a prefetch to the device, say) is later and must win over it.
    const uint64_t decided_ns = readahead_ok ? trace::Tracer::Now() : 0;
    absl::Status s = dpage->pgmap->ops->page_fault(&vmf);
    if (!s.ok()) {
      std::fprintf(stderr, "uhmm: device could not migrate page %#lx back (%s); SIGBUS to thread %u\n",
                   static_cast<unsigned long>(page), s.ToString().c_str(), tid);
      trace.Flag(trace::kFaultSigbus);
      trace::TraceError(s.code(), page, dpage->pgmap->device);
      DeliverSigbus(*range, page, tid);
      return;
    }
    if (readahead_ok) {
      readahead_ok = false;
      auto [from, to] = range->readahead().OnFault(vmf.start, vmf.end, range->end(), config_.readahead_bytes);
      if (from < to) PostReadAhead(range, from, to, decided_ns);
    }
    // Loop: the page is normally host resident and mapped now; if another migration took it in
    // between, the next round defers or retries.
  }
}

bool RuntimeImpl::ZeroFillLocked(ManagedRange& range, VaBlock& blk, uintptr_t page, uint32_t tid) {
  // The shadow has no page here: this is its first touch, or a discard freed it. Give the whole
  // block (its host-resident pages that no migration holds) zero pages and map them, so that a
  // first pass over a new range takes one fault per 2 MiB, as transparent hugepages would.
  const uintptr_t start = page & ~(kBlockSize - 1);
  const uintptr_t end = std::min(start + kBlockSize, range.end());
  PageRuns runs;
  for (uintptr_t a = start; a < end; a += kPageSize) {
    const size_t i = ManagedRange::page_in_block(a);
    if (!blk.device[i] && !blk.busy[i] && !blk.poisoned[i] && !blk.unmapped[i]) AppendPageRun(&runs, a);
  }
  for (const auto& run : runs) {
    const uintptr_t s = run.first, e = run.second;
    if (fallocate(range.memfd(), 0, static_cast<off_t>(s - range.start()), static_cast<off_t>(e - s)) != 0) {
      const int err = errno;
      if (page < s || page >= e) continue;  // only the faulting page must exist
      // No memory for it (hugetlb: no free hugepage). Like the kernel for such memory: SIGBUS.
      std::fprintf(stderr, "uhmm: no host memory for managed page %#lx (%s); SIGBUS to thread %u\n",
                   static_cast<unsigned long>(page), strerror(err), tid);
      counters_.sigbus.fetch_add(1, std::memory_order_relaxed);
      syscall(SYS_tgkill, getpid(), static_cast<pid_t>(tid), SIGBUS);
      LogIfError(uffd_->Wake(page & ~(range.cpu_page() - 1), range.cpu_page()));
      continue;
    }
    if (!fault_service_->MapUnlessDiscarded(s, e, [&] {
          return uffd_->Continue(s, e - s, /*wake=*/true, range.cpu_page(), /*drain_events=*/false);
        })) {
      return false;
    }
  }
  return true;
}

std::pair<uintptr_t, uintptr_t> RuntimeImpl::FaultGranule(ManagedRange& range, VaBlock& blk,
                                                          uintptr_t page, bool* readahead_ok) {
  const uintptr_t block_start = page & ~(kBlockSize - 1);
  const uintptr_t lo = std::max(block_start, range.start());
  const uintptr_t hi = std::min(block_start + kBlockSize, range.end());
  // Thrashing: pages of this block keep coming back right after moving to a device.
  if (config_.thrashing_threshold > 0 &&
      NoteReturn(blk, trace::Tracer::Now(), uint64_t{1000} * config_.thrashing_lapse_us,
                 config_.thrashing_threshold)) {
    counters_.thrashing_blocks.fetch_add(1, std::memory_order_relaxed);
  }
  *readahead_ok = !blk.thrashing;
  if (range.hugetlb()) return {lo, hi};  // the CPU maps the block whole
  // The configured granule around the fault, clipped to the block and the range; grown by density
  // unless the block thrashes.
  const uintptr_t gran = config_.fault_granularity;
  uintptr_t start = std::max(page & ~(gran - 1), lo);
  uintptr_t end = std::min((page & ~(gran - 1)) + gran, hi);
  if (!blk.thrashing &&
      GrowGranule(~blk.device, block_start, lo, hi, config_.prefetch_threshold, &start, &end)) {
    counters_.grown_faults.fetch_add(1, std::memory_order_relaxed);
  }
  return {start, end};
}

void RuntimeImpl::PostReadAhead(const RangeRef& range, uintptr_t from, uintptr_t to, uint64_t decided_ns) {
  for (uintptr_t a = from; a < to;) {
    const uintptr_t b = std::min(to, (a & ~(kBlockSize - 1)) + kBlockSize);
    RangeRef ref = range.Clone();
    if (!ref) return;
    auto job = [this, r = std::make_shared<RangeRef>(std::move(ref)), a, b, decided_ns] {
      absl::Status s = MigrateToHost(**r, a, b, MigrateCause::kPrefetcher, decided_ns);
      if (!s.ok()) trace::TraceError(s.code(), a, -1);  // the CPU's own fault reports it
    };
    if (!workers_->Post(std::move(job))) return;
    a = b;
  }
}

void RuntimeImpl::DeliverSigbus(ManagedRange& range, uintptr_t page, uint32_t tid) {
  counters_.sigbus.fetch_add(1, std::memory_order_relaxed);
  // The CPU's unit: a hugetlb block is poisoned (and its data lost) whole.
  const size_t unit = range.cpu_page();
  const uintptr_t first = page & ~(unit - 1);
  if (sigbus_mode_ == SigbusMode::kPoison) {
    std::vector<Page*> release;
    {
      VaBlock& blk = range.block_of(page);
      MutexLock lock(&blk.mu);
      for (uintptr_t a = first; a < first + unit; a += kPageSize) {
        const size_t i = ManagedRange::page_in_block(a);
        if (blk.device[i] && !blk.busy[i]) {
          release.push_back(blk.pages[i]);
          blk.pages[i] = nullptr;
          blk.device.reset(i);
        }
        blk.poisoned.set(i);
      }
    }
    for (Page* p : release) put_page(p);
    if (!uffd_->Poison(first, unit).ok()) LogIfError(uffd_->Wake(first, unit));
    return;
  }
  // Fallback without UFFDIO_POISON: signal the faulting thread, then wake it so it leaves the
  // fault and takes the signal. si_code is SI_TKILL and si_addr is not set. The page stays on the
  // device, so a later access asks the device again.
  syscall(SYS_tgkill, getpid(), static_cast<pid_t>(tid), SIGBUS);
  LogIfError(uffd_->Wake(first, unit));
}

// ---- Events ----------------------------------------------------------------------------------

std::vector<std::shared_ptr<ManagedRange>> RuntimeImpl::Overlapping(uintptr_t start, uintptr_t end) {
  std::vector<std::shared_ptr<ManagedRange>> hit;
  ReaderMutexLock lock(&ranges_mu_);
  for (auto& [rs, r] : ranges_) {
    if (r->start() < end && start < r->end()) hit.push_back(r);
  }
  return hit;
}

void RuntimeImpl::DropDevicePages(ManagedRange& r, uintptr_t start, uintptr_t end, bool forget) {
  std::vector<Page*> release;
  for (uintptr_t a = start; a < end; a += kPageSize) {
    VaBlock& blk = r.block_of(a);
    MutexLock lock(&blk.mu);
    const size_t i = ManagedRange::page_in_block(a);
    if (forget) blk.unmapped.set(i);
    // Busy pages are released by their migration's finalize, which sees `unmapped`.
    if (blk.device[i] && !blk.busy[i]) {
      release.push_back(blk.pages[i]);
      blk.pages[i] = nullptr;
      blk.device.reset(i);
    }
  }
  for (Page* p : release) put_page(p);
}

void RuntimeImpl::ForgetAddresses(uintptr_t start, uintptr_t end) {
  for (auto& r : Overlapping(start, end)) {
    DropDevicePages(*r, std::max(start, r->start()), std::min(end, r->end()), /*forget=*/true);
    size_t gone = 0;
    for (size_t b = 0; b < r->num_blocks(); ++b) {
      VaBlock& blk = r->block(b);
      MutexLock lock(&blk.mu);
      gone += blk.unmapped.count();
    }
    if (gone == r->size() / kPageSize) {
      // Every page is gone: the application will not free it through uhmm; reap it later from an
      // application thread (teardown may wait, service threads must not).
      MutexLock lock(&ranges_mu_);
      auto it = ranges_.find(r->start());
      if (it != ranges_.end() && it->second == r) {
        ranges_.erase(it);
        zombies_.push_back(r);
      }
    }
  }
}

void RuntimeImpl::OnUnmap(uintptr_t start, uintptr_t end) {
  counters_.ev_unmap.fetch_add(1, std::memory_order_relaxed);
  ForgetAddresses(start, end);
}

void RuntimeImpl::OnRemap(uintptr_t from, uintptr_t to, size_t len) {
  counters_.ev_remap.fetch_add(1, std::memory_order_relaxed);
  // mremap moved [from, from+len) to `to`. Bring its device pages home so the shared shadow is the
  // data; the new address is then plain host memory (its faults map the shadow), and the old
  // addresses are forgotten like an munmap.
  for (auto& r : Overlapping(from, from + len)) {
    RangeRef ref(r);
    if (!ref) continue;
    LogIfError(MigrateToHost(*r, std::max(from, r->start()), std::min(from + len, r->end()),
                             MigrateCause::kAddressChange));
  }
  (void)to;
  ForgetAddresses(from, from + len);
}

}  // namespace uhmm
