// Intel GPU backend; see level_zero_backend.h.
#include "backends/level_zero/level_zero_backend.h"

#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "backends/common/copy_back_pagemap.h"
#include "backends/common/fence_table.h"
#include "backends/common/one_pointer.h"
#include "backends/common/peer_matrix.h"
#include "backends/common/spin_wait.h"
#include "backends/level_zero/ze_events.h"
#include "backends/level_zero/ze_loader.h"
#include "backends/level_zero/ze_tracer.h"
#include "uhmm/testing.h"

namespace uhmm::level_zero {
namespace {

#define UHMM_ZE(call, name)                                            \
  do {                                                                 \
    if (absl::Status s_ = ZeStatus((call), name); !s_.ok()) return s_; \
  } while (0)

// Busy-polls `event` for a while, then blocks (spin_wait.h).
absl::Status WaitForEvent(const Loader& l, ze_event_handle_t event, const char* what) {
  return ZeStatus(SpinThenBlock([&] { return l.zeEventQueryStatus(event); },
                                [](ze_result_t q) { return q != ZE_RESULT_NOT_READY; },
                                [&] { return l.zeEventHostSynchronize(event, UINT64_MAX); }),
                  what);
}

absl::StatusOr<ze_command_list_handle_t> CreateImmediateList(const Loader& l, ze_context_handle_t ctx,
                                                             ze_device_handle_t dev, uint32_t ordinal,
                                                             uint32_t index) {
  ScopedUntraced untraced;
  ze_command_queue_desc_t desc = {
      ZE_STRUCTURE_TYPE_COMMAND_QUEUE_DESC, nullptr, ordinal, index, 0, ZE_COMMAND_QUEUE_MODE_ASYNCHRONOUS,
      ZE_COMMAND_QUEUE_PRIORITY_NORMAL};
  ze_command_list_handle_t list = nullptr;
  UHMM_ZE(l.zeCommandListCreateImmediate(ctx, dev, &desc, &list), "zeCommandListCreateImmediate");
  return list;
}

// One immediate command list and the lock that serializes appends to it (Level Zero command lists
// are not thread-safe).
struct Lane {
  ze_command_list_handle_t list = nullptr;
  std::mutex mu;
};

// Appends a barrier that signals an event from `events` on `lane` and waits for it: everything
// appended before is done. The lane's lock must be held for the append only.
absl::Status DrainLane(const Loader& l, EventCache& events, Lane& lane, const char* what) {
  absl::StatusOr<ze_event_handle_t> e = events.Acquire();
  if (!e.ok()) return e.status();
  absl::Status s;
  {
    std::lock_guard<std::mutex> lock(lane.mu);
    s = ZeStatus(l.zeCommandListAppendBarrier(lane.list, *e, 0, nullptr), "zeCommandListAppendBarrier");
  }
  if (s.ok()) s = WaitForEvent(l, *e, what);
  events.Release(*e);
  return s;
}

// Copies between device memory (at the managed address) and the runtime view, on two immediate
// command lists of the copy-only queue group, one per direction. A batch is its copies followed by
// a barrier that signals the batch's event, its fence.
class ZeCopyEngine final : public CopyEngine {
 public:
  ZeCopyEngine(const Loader* l, ze_context_handle_t ctx) : l_(l), ctx_(ctx), events_(l, ctx) {}
  ~ZeCopyEngine() override {
    ScopedUntraced untraced;
    fences_.ForEachPending([&](ze_event_handle_t e) { l_->zeEventHostSynchronize(e, UINT64_MAX); });
    for (Lane* lane : {&h2d_, &d2h_}) {
      if (lane->list) l_->zeCommandListDestroy(lane->list);
    }
  }

  absl::Status Init(ze_device_handle_t dev, uint32_t ordinal, uint32_t queues) {
    absl::StatusOr<ze_command_list_handle_t> a = CreateImmediateList(*l_, ctx_, dev, ordinal, 0);
    if (!a.ok()) return a.status();
    h2d_.list = *a;
    absl::StatusOr<ze_command_list_handle_t> b =
        CreateImmediateList(*l_, ctx_, dev, ordinal, queues > 1 ? 1 : 0);
    if (!b.ok()) return b.status();
    d2h_.list = *b;
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Submit(CopyDirection dir, std::span<const CopyOp> ops) override {
    if (ProcessExiting()) return ExitingError();
    const bool peer = dir == CopyDirection::kPeerToDevice;
    const bool to_device = dir != CopyDirection::kDeviceToHost;  // copies in share a lane
    absl::StatusOr<ze_event_handle_t> event = events_.Acquire();
    if (!event.ok()) return event.status();
    Lane& lane = to_device ? h2d_ : d2h_;
    ScopedUntraced untraced;
    absl::Status s;
    {
      std::lock_guard<std::mutex> lock(lane.mu);
      for (const CopyOp& op : ops) {
        void* dev = reinterpret_cast<void*>(op.device);
        if (peer) {  // another GPU's memory in the shared context, read by this GPU's engine
          s = ZeStatus(
              l_->zeCommandListAppendMemoryCopy(lane.list, dev, reinterpret_cast<const void*>(op.peer),
                                                op.bytes, nullptr, 0, nullptr),
              "zeCommandListAppendMemoryCopy (from a peer)");
        } else if (op.host == nullptr) {  // zeros (uhmm/backend.h); a one-byte pattern every engine takes
          static constexpr uint8_t kZero = 0;
          s = ZeStatus(
              l_->zeCommandListAppendMemoryFill(lane.list, dev, &kZero, 1, op.bytes, nullptr, 0, nullptr),
              "zeCommandListAppendMemoryFill");
        } else {
          s = ZeStatus(
              to_device
                  ? l_->zeCommandListAppendMemoryCopy(lane.list, dev, op.host, op.bytes, nullptr, 0, nullptr)
                  : l_->zeCommandListAppendMemoryCopy(lane.list, op.host, dev, op.bytes, nullptr, 0, nullptr),
              "zeCommandListAppendMemoryCopy");
        }
        if (!s.ok()) break;
      }
      // Also after a failed append: the copies queued before it must be done before we return.
      absl::Status b = ZeStatus(l_->zeCommandListAppendBarrier(lane.list, *event, 0, nullptr),
                                "zeCommandListAppendBarrier");
      if (s.ok()) s = b;
      if (!b.ok()) {
        events_.Release(*event);
        return s;
      }
    }
    if (!s.ok()) {
      (void)WaitForEvent(*l_, *event, "zeEventHostSynchronize");
      events_.Release(*event);
      return s;
    }
    return fences_.Add(*event, dir);
  }

  absl::Status Wait(uint64_t fence) override {
    absl::StatusOr<FenceTable<ze_event_handle_t>::Batch> b = fences_.Take(fence, "Level Zero copy engine");
    if (!b.ok()) return b.status();
    if (ProcessExiting()) return ExitingError();  // the event may be gone with the loader
    const FenceTable<ze_event_handle_t>::Batch& p = *b;
    absl::Status s = WaitForEvent(*l_, p.event, "waiting for a copy (zeEventHostSynchronize)");
    events_.Release(p.event);
    return s;
  }

  // Waits for every copy queued so far in both directions.
  absl::Status Drain() {
    absl::Status s = DrainLane(*l_, events_, h2d_, "draining host -> device copies");
    absl::Status t = DrainLane(*l_, events_, d2h_, "draining device -> host copies");
    return s.ok() ? t : s;
  }

 private:
  static absl::Status ExitingError() {
    return absl::UnavailableError(
        "Level Zero copy engine: the process is exiting (the driver's objects are "
        "being destroyed)");
  }

  const Loader* const l_;
  const ze_context_handle_t ctx_;
  EventCache events_;
  Lane h2d_, d2h_;
  FenceTable<ze_event_handle_t> fences_;
};

class LevelZeroBackend;

class LevelZeroDevice final : public Device, public testing::DeviceAccess {
 public:
  LevelZeroDevice(const Loader* l, ze_driver_handle_t driver, ze_device_handle_t dev, ze_context_handle_t ctx,
                  int ordinal, std::string name, std::function<absl::Status()> wait_for_kernels)
      : l_(l),
        driver_(driver),
        dev_(dev),
        ctx_(ctx),
        name_(std::move(name)),
        wait_for_kernels_(std::move(wait_for_kernels)),
        engine_(l, ctx),
        test_events_(l, ctx) {
    pagemap_.type = MemoryType::kDevicePrivate;
    pagemap_.ops = &CopyBackPagemap::kOps;
    pagemap_.owner = this;
    pagemap_.device = ordinal;
    pagemap_.copy_engine = &engine_;
  }
  ~LevelZeroDevice() override {
    ScopedUntraced untraced;
    if (test_.list) l_->zeCommandListDestroy(test_.list);
  }

  absl::Status Init() {
    uint32_t count = 0;
    UHMM_ZE(l_->zeDeviceGetCommandQueueGroupProperties(dev_, &count, nullptr),
            "zeDeviceGetCommandQueueGroupProperties");
    std::vector<ze_command_queue_group_properties_t> groups(count);
    for (auto& g : groups) {
      g = {};
      g.stype = ZE_STRUCTURE_TYPE_COMMAND_QUEUE_GROUP_PROPERTIES;
    }
    UHMM_ZE(l_->zeDeviceGetCommandQueueGroupProperties(dev_, &count, groups.data()),
            "zeDeviceGetCommandQueueGroupProperties");
    // The copy engines: a group with COPY and without COMPUTE (a blitter). Fall back to any group
    // that copies, so a device without blitters still works.
    int copy = -1, any_copy = -1;
    for (uint32_t i = 0; i < count; ++i) {
      const bool copies = groups[i].flags & ZE_COMMAND_QUEUE_GROUP_PROPERTY_FLAG_COPY;
      const bool computes = groups[i].flags & ZE_COMMAND_QUEUE_GROUP_PROPERTY_FLAG_COMPUTE;
      if (copies && !computes && copy < 0) copy = static_cast<int>(i);
      if (copies && any_copy < 0) any_copy = static_cast<int>(i);
    }
    if (copy < 0) copy = any_copy;
    if (copy < 0) {
      return absl::UnavailableError(absl::StrFormat("%s has no command queue group that copies", name_));
    }
    const auto copy_group = static_cast<uint32_t>(copy);
    if (absl::Status s = engine_.Init(dev_, copy_group, groups[copy].numQueues); !s.ok()) return s;
    absl::StatusOr<ze_command_list_handle_t> t = CreateImmediateList(*l_, ctx_, dev_, copy_group, 0);
    if (!t.ok()) return t.status();
    test_.list = *t;

    uint32_t mems = 0;
    UHMM_ZE(l_->zeDeviceGetMemoryProperties(dev_, &mems, nullptr), "zeDeviceGetMemoryProperties");
    std::vector<ze_device_memory_properties_t> props(mems);
    for (auto& p : props) {
      p = {};
      p.stype = ZE_STRUCTURE_TYPE_DEVICE_MEMORY_PROPERTIES;
    }
    UHMM_ZE(l_->zeDeviceGetMemoryProperties(dev_, &mems, props.data()), "zeDeviceGetMemoryProperties");
    uint64_t total = 0;
    for (const auto& p : props) total += p.totalSize;
    // Level Zero's core API reports no free size: default to a share of the total.
    default_pool_ = DefaultPoolShare(total);
    return absl::OkStatus();
  }

  // Device.
  std::string name() const override { return name_; }
  Pagemap& pagemap() override { return pagemap_; }
  CopyEngine& copy_engine() override { return engine_; }
  size_t default_pool_bytes() const override { return default_pool_; }
  Placement placement() const override { return Placement::kSameAddress; }
  bool CopiesFromPeers() const override { return copies_from_peers_; }
  // Whether this GPU reaches another GPU's memory (then its engine copies from it in one hop).
  void set_copies_from_peers(bool on) { copies_from_peers_ = on; }
  uhmm_native_handles_t native_handles() const override { return {driver_, dev_, ctx_}; }

  absl::StatusOr<uint64_t> AllocChunk() override {
    ze_physical_mem_desc_t desc = {ZE_STRUCTURE_TYPE_PHYSICAL_MEM_DESC, nullptr, 0, kBlockSize};
    ze_physical_mem_handle_t mem = nullptr;
    UHMM_ZE(l_->zePhysicalMemCreate(ctx_, dev_, &desc, &mem), "zePhysicalMemCreate(2 MiB)");
    return reinterpret_cast<uint64_t>(mem);
  }
  void FreeChunk(uint64_t chunk) override {
    LogError(ZeStatus(l_->zePhysicalMemDestroy(ctx_, reinterpret_cast<ze_physical_mem_handle_t>(chunk)),
                      "zePhysicalMemDestroy"));
  }

  absl::Status MapChunk(uint64_t chunk, uintptr_t block) override {
    void* va = reinterpret_cast<void*>(block);
    UHMM_ZE(l_->zeVirtualMemMap(ctx_, va, kBlockSize, reinterpret_cast<ze_physical_mem_handle_t>(chunk), 0,
                                ZE_MEMORY_ACCESS_ATTRIBUTE_READWRITE),
            "zeVirtualMemMap");
    if (ze_result_t r =
            l_->zeVirtualMemSetAccessAttribute(ctx_, va, kBlockSize, ZE_MEMORY_ACCESS_ATTRIBUTE_READWRITE);
        r != ZE_RESULT_SUCCESS) {
      l_->zeVirtualMemUnmap(ctx_, va, kBlockSize);
      return ZeStatus(r, "zeVirtualMemSetAccessAttribute");
    }
    static std::once_flag checked;
    static absl::Status host_view_intact;
    std::call_once(checked, [&] { host_view_intact = CheckManagedViewIntact(block, "zeVirtualMemMap"); });
    return host_view_intact;
  }
  void UnmapChunk(uint64_t chunk, uintptr_t block) override {
    // A kernel still running may use the block.
    LogError(WaitForDeviceWork());
    LogError(UnmapWindow(chunk, block));
  }
  absl::Status UnmapWindow(uint64_t /*chunk*/, uintptr_t window) override {
    return ZeStatus(l_->zeVirtualMemUnmap(ctx_, reinterpret_cast<void*>(window), kBlockSize),
                    "zeVirtualMemUnmap");
  }
  // `queue` is an immediate command list of this device's context (what the tracer passes to the
  // runtime); nullptr waits for every kernel uhmm saw launched. A barrier is appended to the list,
  // so call it from the thread that owns the list.
  absl::Status SynchronizeQueue(void* queue) override {
    if (queue == nullptr) return WaitForDeviceWork();
    Lane lane;
    lane.list = static_cast<ze_command_list_handle_t>(queue);
    return DrainLane(*l_, test_events_, lane, "waiting for the command list");
  }

  absl::Status MigrateToRam(MigrateVma* m) override {
    if (m->cause == MigrateCause::kEviction) {
      // Kernels queued earlier may still read or write the evicted pages.
      if (absl::Status s = WaitForDeviceWork(); !s.ok()) return s;
    }
    return Device::MigrateToRam(m);
  }

  // testing::DeviceAccess: copies on a list of their own, ordered after the copy engine's earlier
  // batches.
  absl::Status DeviceWrite(uint64_t device_addr, const void* src, size_t bytes) override {
    return DeviceCopy(reinterpret_cast<void*>(device_addr), src, bytes);
  }
  absl::Status DeviceRead(uint64_t device_addr, void* dst, size_t bytes) override {
    return DeviceCopy(dst, reinterpret_cast<const void*>(device_addr), bytes);
  }

 private:
  absl::Status DeviceCopy(void* dst, const void* src, size_t bytes) {
    if (absl::Status s = engine_.Drain(); !s.ok()) return s;
    ScopedUntraced untraced;
    {
      std::lock_guard<std::mutex> lock(test_.mu);
      UHMM_ZE(l_->zeCommandListAppendMemoryCopy(test_.list, dst, src, bytes, nullptr, 0, nullptr),
              "zeCommandListAppendMemoryCopy(test)");
    }
    return DrainLane(*l_, test_events_, test_, "waiting for a test copy");
  }

  absl::Status WaitForDeviceWork() {
    absl::Status s = wait_for_kernels_();
    absl::Status t = engine_.Drain();
    return s.ok() ? t : s;
  }

  static void LogError(const absl::Status& s) {
    if (!s.ok()) std::fprintf(stderr, "uhmm: Level Zero backend: %s\n", std::string(s.message()).c_str());
  }

  const Loader* const l_;
  const ze_driver_handle_t driver_;
  const ze_device_handle_t dev_;
  const ze_context_handle_t ctx_;
  const std::string name_;
  const std::function<absl::Status()> wait_for_kernels_;
  ZeCopyEngine engine_;
  Pagemap pagemap_;
  EventCache test_events_;
  Lane test_;
  size_t default_pool_ = 0;
  bool copies_from_peers_ = false;
};

// A GPU of a Level Zero driver: its handles, its index over every driver's GPUs, and its name.
struct Gpu {
  ze_driver_handle_t driver;
  ze_device_handle_t device;
  std::string name;
  int index = 0;
};

class LevelZeroBackend final : public Backend {
 public:
  // `gpus` (of one driver) share the context `ctx`, and with it one device address space: a block
  // is mapped once for all of them. `peer`: which of them reach which (zeDeviceCanAccessPeer).
  LevelZeroBackend(const Loader* l, std::vector<Gpu> gpus, ze_context_handle_t ctx, PeerMatrix peer)
      : l_(l), gpus_(std::move(gpus)), ctx_(ctx), peer_(std::move(peer)) {
    // Kernels are tracked from the start, transparent mode or not: eviction waits for them.
    std::vector<ze_device_handle_t> handles;
    for (const Gpu& g : gpus_) handles.push_back(g.device);
    absl::StatusOr<std::unique_ptr<LaunchTracer>> t = LaunchTracer::Create(l_, ctx_, std::move(handles));
    if (t.ok()) {
      tracer_.store(t->release());
    } else {
      tracer_status_ = t.status();
      std::fprintf(stderr, "uhmm: Level Zero backend: warning: %s\n",
                   std::string(tracer_status_.message()).c_str());
    }
  }
  ~LevelZeroBackend() override {
    LaunchTracer::Retire(std::unique_ptr<LaunchTracer>(tracer_.exchange(nullptr)));
    ScopedUntraced untraced;
    l_->zeContextDestroy(ctx_);
  }

  std::string_view name() const override { return "level_zero"; }
  int device_count() const override { return static_cast<int>(gpus_.size()); }
  absl::StatusOr<std::unique_ptr<Device>> OpenDevice(int ordinal) override {
    if (ordinal < 0 || ordinal >= device_count()) {
      return absl::InvalidArgumentError(absl::StrFormat("Level Zero backend: no device %d", ordinal));
    }
    const Gpu& g = gpus_[ordinal];
    // Kernels are tracked per context, so a device's wait covers its peers' kernels too (they may
    // use its blocks).
    auto dev = std::make_unique<LevelZeroDevice>(l_, g.driver, g.device, ctx_, ordinal,
                                                 absl::StrFormat("Level Zero GPU %d: %s", g.index, g.name),
                                                 [this] { return WaitForKernels(); });
    if (absl::Status s = dev->Init(); !s.ok()) return s;
    dev->set_copies_from_peers(peer_.ReachesAny(ordinal));
    return std::unique_ptr<Device>(std::move(dev));
  }
  bool PeerAccess(int device, int owner) const override { return peer_.Reaches(device, owner); }

  // A CPU reservation, then the device reservation at the same address. Level Zero takes the
  // address only as a hint: a driver that puts it elsewhere cannot give one pointer.
  absl::StatusOr<uintptr_t> ReserveAddressRange(size_t bytes) override {
    absl::StatusOr<uintptr_t> cpu = reserve_block_aligned_address_space(bytes);
    if (!cpu.ok()) return cpu.status();
    absl::Status s = ReserveDeviceRange(*l_, ctx_, *cpu, bytes);
    if (!s.ok()) {
      munmap(reinterpret_cast<void*>(*cpu), bytes);
      return s;
    }
    return *cpu;
  }
  void ReleaseAddressRange(uintptr_t start, size_t bytes) override {
    ScopedUntraced untraced;
    if (absl::Status s =
            ZeStatus(l_->zeVirtualMemFree(ctx_, reinterpret_cast<void*>(start), bytes), "zeVirtualMemFree");
        !s.ok()) {
      std::fprintf(stderr, "uhmm: Level Zero backend: %s\n", std::string(s.message()).c_str());
    }
    munmap(reinterpret_cast<void*>(start), bytes);
  }
  // The device reservation is separate from the CPU's: it can go back on its own.
  bool AbandonAddressRange(uintptr_t start, size_t bytes) override {
    ScopedUntraced untraced;
    return l_->zeVirtualMemFree(ctx_, reinterpret_cast<void*>(start), bytes) == ZE_RESULT_SUCCESS;
  }

  absl::Status SetLaunchListener(LaunchListener* listener) override {
    LaunchTracer* t = tracer_.load(std::memory_order_acquire);
    if (t == nullptr) return listener ? tracer_status_ : absl::OkStatus();
    t->SetListener(listener);
    return absl::OkStatus();
  }

  // Reserves [start, start + bytes) of the device's address space, exactly there.
  static absl::Status ReserveDeviceRange(const Loader& l, ze_context_handle_t ctx, uintptr_t start,
                                         size_t bytes) {
    ScopedUntraced untraced;
    void* got = nullptr;
    UHMM_ZE(l.zeVirtualMemReserve(ctx, reinterpret_cast<void*>(start), bytes, &got), "zeVirtualMemReserve");
    if (reinterpret_cast<uintptr_t>(got) != start) {
      if (got != nullptr) l.zeVirtualMemFree(ctx, got, bytes);
      return absl::FailedPreconditionError(absl::StrFormat(
          "zeVirtualMemReserve put %u bytes of device address space at %p instead of the requested "
          "%#x (the start address is only a hint): this device cannot map its memory at the CPU's "
          "addresses, which uhmm's one pointer needs",
          bytes, got, start));
    }
    return absl::OkStatus();
  }

 private:
  // The tracer lives until the backend goes, after the devices that call this.
  absl::Status WaitForKernels() {
    LaunchTracer* t = tracer_.load(std::memory_order_acquire);
    return t ? t->WaitForKernels() : absl::OkStatus();
  }

  const Loader* const l_;
  const std::vector<Gpu> gpus_;
  const ze_context_handle_t ctx_;
  const PeerMatrix peer_;
  std::atomic<LaunchTracer*> tracer_{nullptr};
  absl::Status tracer_status_;  // why there is no tracer
};

#undef UHMM_ZE

// Every GPU of every driver, in order.
absl::StatusOr<std::vector<Gpu>> EnumerateGpus(const Loader& l) {
  uint32_t drivers = 0;
  if (absl::Status s = ZeStatus(l.zeDriverGet(&drivers, nullptr), "zeDriverGet"); !s.ok()) return s;
  std::vector<ze_driver_handle_t> dh(drivers);
  if (absl::Status s = ZeStatus(l.zeDriverGet(&drivers, dh.data()), "zeDriverGet"); !s.ok()) return s;
  std::vector<Gpu> gpus;
  for (ze_driver_handle_t d : dh) {
    uint32_t n = 0;
    if (l.zeDeviceGet(d, &n, nullptr) != ZE_RESULT_SUCCESS) continue;
    std::vector<ze_device_handle_t> devs(n);
    if (l.zeDeviceGet(d, &n, devs.data()) != ZE_RESULT_SUCCESS) continue;
    for (ze_device_handle_t dev : devs) {
      ze_device_properties_t props = {};
      props.stype = ZE_STRUCTURE_TYPE_DEVICE_PROPERTIES;
      if (l.zeDeviceGetProperties(dev, &props) != ZE_RESULT_SUCCESS || props.type != ZE_DEVICE_TYPE_GPU) {
        continue;
      }
      gpus.push_back({d, dev, props.name, static_cast<int>(gpus.size())});
    }
  }
  return gpus;
}

// Device memory is mapped in 2 MiB chunks at CPU addresses: the device's page size must divide
// 2 MiB and its reservations must land where asked. Found out at creation rather than at the first
// allocation.
absl::Status CheckOnePointer(const Loader& l, ze_context_handle_t ctx, const Gpu& gpu) {
  size_t page = 0;
  if (absl::Status s = ZeStatus(l.zeVirtualMemQueryPageSize(ctx, gpu.device, kBlockSize, &page),
                                "zeVirtualMemQueryPageSize");
      !s.ok()) {
    return absl::UnavailableError(s.message());
  }
  if (page == 0 || kBlockSize % page != 0) {
    return absl::UnavailableError(absl::StrFormat(
        "%s maps device memory in %u-byte pages; uhmm needs a divisor of 2 MiB", gpu.name, page));
  }
  absl::StatusOr<uintptr_t> probe = reserve_block_aligned_address_space(kBlockSize);
  if (!probe.ok()) return probe.status();
  absl::Status placed = LevelZeroBackend::ReserveDeviceRange(l, ctx, *probe, kBlockSize);
  if (placed.ok()) l.zeVirtualMemFree(ctx, reinterpret_cast<void*>(*probe), kBlockSize);
  munmap(reinterpret_cast<void*>(*probe), kBlockSize);
  return placed.ok() ? placed : absl::UnavailableError(placed.message());
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateLevelZeroBackend(const Config& config) {
  absl::StatusOr<const Loader*> loader = LoadLoader(config.ze_loader);
  if (!loader.ok()) return loader.status();
  const Loader& l = **loader;
  absl::StatusOr<std::vector<Gpu>> gpus = EnumerateGpus(l);
  if (!gpus.ok()) return absl::UnavailableError(gpus.status().message());
  if (gpus->empty()) return absl::UnavailableError("the Level Zero drivers report no GPU");
  // Config::ze_devices (UHMM_ZE_DEVICES) lists the GPUs (indices over every driver's GPUs), else
  // Config::ze_device (UHMM_ZE_DEVICE) names one. Root devices only: a GPU with tiles (sub-devices)
  // is used whole, through its root device.
  std::vector<int> first_driver;  // "all": the first driver's GPUs
  for (const Gpu& g : *gpus) {
    if (g.driver == gpus->front().driver) first_driver.push_back(g.index);
  }
  absl::StatusOr<std::vector<int>> indices = ChooseDevices(
      config.ze_devices, "ze_devices (UHMM_ZE_DEVICES)", config.ze_device, "ze_device (UHMM_ZE_DEVICE)",
      first_driver, static_cast<int>(gpus->size()), "Level Zero GPU");
  if (!indices.ok()) return indices.status();
  std::vector<Gpu> chosen;
  for (int index : *indices) {
    chosen.push_back((*gpus)[index]);
    // One context holds them all, and with it the one device address space one pointer needs.
    if (chosen.back().driver != chosen.front().driver) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "uhmm: ze_devices (UHMM_ZE_DEVICES): GPUs %d and %d belong to different Level Zero drivers, "
          "which cannot share one device address space",
          chosen.front().index, index));
    }
  }
  ze_context_desc_t ctx_desc = {ZE_STRUCTURE_TYPE_CONTEXT_DESC, nullptr, 0};
  ze_context_handle_t ctx = nullptr;
  if (absl::Status s = ZeStatus(l.zeContextCreate(chosen.front().driver, &ctx_desc, &ctx), "zeContextCreate");
      !s.ok()) {
    return s;
  }
  for (const Gpu& g : chosen) {
    if (absl::Status usable = CheckOnePointer(l, ctx, g); !usable.ok()) {
      l.zeContextDestroy(ctx);
      return usable;
    }
  }
  PeerMatrix peer(static_cast<int>(chosen.size()), [&](int i, int j) {
    ze_bool_t can = 0;
    return l.zeDeviceCanAccessPeer(chosen[i].device, chosen[j].device, &can) == ZE_RESULT_SUCCESS && can != 0;
  });
  return std::unique_ptr<Backend>(new LevelZeroBackend(&l, std::move(chosen), ctx, std::move(peer)));
}

}  // namespace uhmm::level_zero
