// NVIDIA backend; see cuda_backend.h.
#include "backends/cuda/cuda_backend.h"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "backends/common/copy_back_pagemap.h"
#include "backends/common/fence_table.h"
#include "backends/common/one_pointer.h"
#include "backends/common/peer_matrix.h"
#include "backends/common/spin_wait.h"
#include "backends/cuda/cuda_driver.h"
#include "backends/cuda/cupti_launch.h"
#include "backends/cuda/nvtx_ranges.h"
#include "uhmm/testing.h"

namespace uhmm::cuda {
namespace {

// Makes `ctx` current on this thread for the scope and puts back whatever was current before (the
// application's thread may have its own context current).
class ScopedContext {
 public:
  ScopedContext(const Driver& d, CUcontext ctx) : d_(d) {
    if (d_.cuCtxGetCurrent(&prev_) != CUDA_SUCCESS) prev_ = nullptr;
    if (prev_ != ctx) {
      status_ = CudaStatus(d_, d_.cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
      switched_ = status_.ok();
    }
  }
  ~ScopedContext() {
    if (switched_) d_.cuCtxSetCurrent(prev_);
  }
  const absl::Status& status() const { return status_; }

 private:
  const Driver& d_;
  BackendCall backend_call_;  // the driver calls in this scope are uhmm's (cupti_launch.h)
  CUcontext prev_ = nullptr;
  bool switched_ = false;
  absl::Status status_;
};

#define UHMM_CU(call, name)                                                   \
  do {                                                                        \
    if (absl::Status s_ = CudaStatus(*d_, (call), name); !s_.ok()) return s_; \
  } while (0)

// Two non-blocking streams, one per direction, with an event per batch as its fence. Copies go
// between VRAM (at the managed address) and the pinned runtime view. Fences of one direction
// complete in submission order.
class CudaCopyEngine final : public CopyEngine {
 public:
  CudaCopyEngine(const Driver* d, CUcontext ctx) : d_(d), ctx_(ctx) {}
  ~CudaCopyEngine() override {
    ScopedContext scope(*d_, ctx_);
    fences_.ForEachPending([&](CUevent e) { d_->cuEventDestroy(e); });
    for (CUevent e : free_events_) d_->cuEventDestroy(e);
    if (h2d_) d_->cuStreamDestroy(h2d_);
    if (d2h_) d_->cuStreamDestroy(d2h_);
  }

  absl::Status Init() {
    ScopedContext scope(*d_, ctx_);
    if (!scope.status().ok()) return scope.status();
    UHMM_CU(d_->cuStreamCreate(&h2d_, CU_STREAM_NON_BLOCKING), "cuStreamCreate(host->device)");
    UHMM_CU(d_->cuStreamCreate(&d2h_, CU_STREAM_NON_BLOCKING), "cuStreamCreate(device->host)");
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Submit(CopyDirection dir, std::span<const CopyOp> ops) override {
    ScopedContext scope(*d_, ctx_);
    if (!scope.status().ok()) return scope.status();
    const bool peer = dir == CopyDirection::kPeerToDevice;
    const bool to_device = dir != CopyDirection::kDeviceToHost;
    CUstream stream = this->stream(dir);
    for (const CopyOp& op : ops) {
      const bool fill = !peer && op.host == nullptr;  // zeros (uhmm/backend.h)
      // From a peer: this GPU's engine reads the other GPU's memory (mapped with access for this
      // GPU) over NVLink or PCIe peer-to-peer.
      CUresult r = peer        ? d_->cuMemcpyDtoDAsync(op.device, op.peer, op.bytes, stream)
                   : fill      ? d_->cuMemsetD8Async(op.device, 0, op.bytes, stream)
                   : to_device ? d_->cuMemcpyHtoDAsync(op.device, op.host, op.bytes, stream)
                               : d_->cuMemcpyDtoHAsync(op.host, op.device, op.bytes, stream);
      if (r != CUDA_SUCCESS) {
        d_->cuStreamSynchronize(stream);  // what was queued before the failure is done with
        return CudaStatus(*d_, r,
                          peer        ? "cuMemcpyDtoDAsync (from a peer)"
                          : fill      ? "cuMemsetD8Async"
                          : to_device ? "cuMemcpyHtoDAsync"
                                      : "cuMemcpyDtoHAsync");
      }
    }
    CUevent event = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_events_.empty()) {
        event = free_events_.back();
        free_events_.pop_back();
      }
    }
    if (event == nullptr) {
      UHMM_CU(d_->cuEventCreate(&event, CU_EVENT_DISABLE_TIMING), "cuEventCreate");
    }
    if (CUresult r = d_->cuEventRecord(event, stream); r != CUDA_SUCCESS) {
      d_->cuEventDestroy(event);
      d_->cuStreamSynchronize(stream);
      return CudaStatus(*d_, r, "cuEventRecord");
    }
    return fences_.Add(event, dir);
  }

  absl::Status Wait(uint64_t fence) override {
    absl::StatusOr<FenceTable<CUevent>::Batch> b = fences_.Take(fence, "CUDA copy engine");
    if (!b.ok()) return b.status();
    const FenceTable<CUevent>::Batch& p = *b;
    ScopedContext scope(*d_, ctx_);
    const CUresult r = SpinThenBlock([&] { return d_->cuEventQuery(p.event); },
                                     [](CUresult q) { return q != CUDA_ERROR_NOT_READY; },
                                     [&] { return d_->cuEventSynchronize(p.event); });
    if (r != CUDA_SUCCESS) {
      d_->cuEventDestroy(p.event);
      return CudaStatus(*d_, r, "waiting for a copy (cuEventSynchronize)");
    }
    std::lock_guard<std::mutex> lock(mu_);
    free_events_.push_back(p.event);
    return absl::OkStatus();
  }

  // Copies into this GPU (from the host or a peer) share a stream; copies out have their own.
  CUstream stream(CopyDirection dir) const { return dir == CopyDirection::kDeviceToHost ? d2h_ : h2d_; }

 private:
  const Driver* const d_;
  const CUcontext ctx_;
  CUstream h2d_ = nullptr, d2h_ = nullptr;
  FenceTable<CUevent> fences_;
  std::mutex mu_;  // guards free_events_
  std::vector<CUevent> free_events_;
};

// One GPU the backend serves: its CUDA device, CUDA ordinal, primary context and name.
struct Gpu {
  CUdevice dev = 0;
  int cuda_ordinal = 0;
  CUcontext ctx = nullptr;
  std::string name;
};

class CudaDevice final : public Device, public testing::DeviceAccess {
 public:
  // `peers`: the other GPUs whose kernels may reach this one's memory (cuDeviceCanAccessPeer); each
  // block this device maps is mapped for them too.
  CudaDevice(const Driver* d, const Gpu& gpu, int ordinal, std::vector<Gpu> peers)
      : d_(d),
        dev_(gpu.dev),
        ctx_(gpu.ctx),
        name_(absl::StrFormat("CUDA device %d: %s", gpu.cuda_ordinal, gpu.name)),
        peers_(std::move(peers)),
        engine_(d, gpu.ctx) {
    pagemap_.type = MemoryType::kDevicePrivate;
    pagemap_.ops = &kOps;
    pagemap_.owner = this;
    pagemap_.device = ordinal;
    pagemap_.copy_engine = &engine_;
  }

  absl::Status Init() {
    if (absl::Status s = engine_.Init(); !s.ok()) return s;
    ScopedContext scope(*d_, ctx_);
    if (!scope.status().ok()) return scope.status();
    UHMM_CU(d_->cuStreamCreate(&test_stream_, CU_STREAM_NON_BLOCKING), "cuStreamCreate(test)");
    size_t free_bytes = 0, total = 0;
    UHMM_CU(d_->cuMemGetInfo(&free_bytes, &total), "cuMemGetInfo");
    // Default pool: a share of the VRAM free at start, leaving room for cudaMalloc users.
    default_pool_ = DefaultPoolShare(free_bytes);
    return absl::OkStatus();
  }

  ~CudaDevice() override {
    ScopedContext scope(*d_, ctx_);
    if (test_stream_) d_->cuStreamDestroy(test_stream_);
    if (test_staging_) d_->cuMemFreeHost(test_staging_);
  }

  // Device.
  std::string name() const override { return name_; }
  Pagemap& pagemap() override { return pagemap_; }
  CopyEngine& copy_engine() override { return engine_; }
  size_t default_pool_bytes() const override { return default_pool_; }
  absl::StatusOr<size_t> free_memory() const override {
    ScopedContext scope(*d_, ctx_);
    size_t free_bytes = 0, total = 0;
    UHMM_CU(d_->cuMemGetInfo(&free_bytes, &total), "cuMemGetInfo");
    return free_bytes;
  }
  Placement placement() const override { return Placement::kSameAddress; }
  bool CopiesFromPeers() const override { return copies_from_peers_; }
  void set_copies_from_peers(bool on) { copies_from_peers_ = on; }
  std::string pci_bus_id() const override {
    int domain = 0, bus = 0, device = 0;
    if (d_->cuDeviceGetAttribute(&domain, CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, dev_) != CUDA_SUCCESS ||
        d_->cuDeviceGetAttribute(&bus, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, dev_) != CUDA_SUCCESS ||
        d_->cuDeviceGetAttribute(&device, CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, dev_) != CUDA_SUCCESS) {
      return "";
    }
    return absl::StrFormat("%04x:%02x:%02x.0", domain, bus, device);
  }
  uhmm_native_handles_t native_handles() const override {
    return {nullptr, reinterpret_cast<void*>(static_cast<intptr_t>(dev_)), ctx_};
  }

  absl::StatusOr<uint64_t> AllocChunk() override {
    ScopedContext scope(*d_, ctx_);
    CUmemAllocationProp prop = {};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = dev_;
    CUmemGenericAllocationHandle handle = 0;
    UHMM_CU(d_->cuMemCreate(&handle, kBlockSize, &prop, 0), "cuMemCreate(2 MiB of VRAM)");
    return static_cast<uint64_t>(handle);
  }
  void FreeChunk(uint64_t chunk) override {
    ScopedContext scope(*d_, ctx_);
    LogError(CudaStatus(*d_, d_->cuMemRelease(chunk), "cuMemRelease"));
  }

  absl::Status MapChunk(uint64_t chunk, uintptr_t block) override {
    ScopedContext scope(*d_, ctx_);
    UHMM_CU(d_->cuMemMap(block, kBlockSize, 0, chunk, 0), "cuMemMap");
    // This GPU, and the peers that may read the block where it lies: one pointer on every GPU.
    std::vector<CUmemAccessDesc> access(1 + peers_.size());
    for (size_t i = 0; i < access.size(); ++i) {
      access[i].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
      access[i].location.id = i == 0 ? dev_ : peers_[i - 1].dev;
      access[i].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    }
    if (CUresult r = d_->cuMemSetAccess(block, kBlockSize, access.data(), access.size()); r != CUDA_SUCCESS) {
      d_->cuMemUnmap(block, kBlockSize);
      return CudaStatus(*d_, r, "cuMemSetAccess");
    }
    // One pointer relies on the driver leaving the CPU side of a mapped range alone: on an H100 with
    // driver 580 and CUDA 13.0, cuMemAddressReserve left a PROT_NONE host mapping, host memory
    // mmap(MAP_FIXED) over it stayed the CPU's view after cuMemMap, and kernels reached VRAM through
    // the same pointer. Check that once, so a driver that behaves otherwise gives a clear error
    // instead of silently detaching the application's view.
    static std::once_flag checked;
    static absl::Status host_view_intact;
    std::call_once(checked, [&] { host_view_intact = CheckManagedViewIntact(block, "cuMemMap"); });
    return host_view_intact;
  }
  void UnmapChunk(uint64_t chunk, uintptr_t block) override {
    // A kernel still running may use the block, here or on a peer: unmapping under it would fault
    // its context.
    LogError(SynchronizeWithPeers("cuCtxSynchronize before cuMemUnmap"));
    LogError(UnmapWindow(chunk, block));
  }
  absl::Status UnmapWindow(uint64_t /*chunk*/, uintptr_t window) override {
    ScopedContext scope(*d_, ctx_);
    return CudaStatus(*d_, d_->cuMemUnmap(window, kBlockSize), "cuMemUnmap");
  }
  absl::Status SynchronizeQueue(void* queue) override {
    ScopedContext scope(*d_, ctx_);
    if (queue != nullptr) {
      return CudaStatus(*d_, d_->cuStreamSynchronize(static_cast<CUstream>(queue)), "cuStreamSynchronize");
    }
    return CudaStatus(*d_, d_->cuCtxSynchronize(), "cuCtxSynchronize");
  }

  absl::Status MigrateToDevice(MigrateVma* m) override {
    NvtxRange range(NvtxRange::MigrationName(true, m->cause));
    return Device::MigrateToDevice(m);
  }
  absl::Status MigrateToRam(MigrateVma* m) override {
    NvtxRange range(NvtxRange::MigrationName(false, m->cause));
    if (m->cause == MigrateCause::kEviction) {
      // Kernels queued earlier, here or on a peer, may still read or write the evicted pages.
      if (absl::Status s = SynchronizeWithPeers("cuCtxSynchronize before eviction"); !s.ok()) return s;
    }
    return Device::MigrateToRam(m);
  }

  // A CPU fault served from VRAM, as an NVTX range on the fault-service thread.
  static absl::Status PageFault(VmFault* vmf) {
    NvtxRange range("uhmm fault service");
    return CopyBackPagemap::PageFault(vmf);
  }
  static constexpr PagemapOps kOps = {&CopyBackPagemap::PageFree, &CudaDevice::PageFault};

  // testing::DeviceAccess.
  absl::Status DeviceWrite(uint64_t device_addr, const void* src, size_t bytes) override {
    return DeviceCopy(device_addr, const_cast<void*>(src), bytes, /*write=*/true);
  }
  absl::Status DeviceRead(uint64_t device_addr, void* dst, size_t bytes) override {
    return DeviceCopy(device_addr, dst, bytes, /*write=*/false);
  }

 private:
  // Waits for the work queued on this GPU and on its peers (which may use its blocks).
  absl::Status SynchronizeWithPeers(const char* what) {
    for (size_t i = 0; i <= peers_.size(); ++i) {
      ScopedContext scope(*d_, i == 0 ? ctx_ : peers_[i - 1].ctx);
      if (!scope.status().ok()) return scope.status();
      UHMM_CU(d_->cuCtxSynchronize(), what);
    }
    return absl::OkStatus();
  }

  // Device-side accesses, through a pinned staging buffer on their own stream.
  absl::Status DeviceCopy(uint64_t device_addr, void* host, size_t bytes, bool write) {
    std::lock_guard<std::mutex> lock(test_mu_);
    ScopedContext scope(*d_, ctx_);
    if (test_staging_ == nullptr) {
      UHMM_CU(d_->cuMemAllocHost(&test_staging_, kBlockSize), "cuMemAllocHost(test staging)");
    }
    auto* staging = static_cast<uint8_t*>(test_staging_);
    for (size_t off = 0; off < bytes; off += kBlockSize) {
      const size_t n = std::min(kBlockSize, bytes - off);
      if (write) {
        std::memcpy(staging, static_cast<const uint8_t*>(host) + off, n);
        UHMM_CU(d_->cuMemcpyHtoDAsync(device_addr + off, staging, n, test_stream_),
                "cuMemcpyHtoDAsync(test)");
      } else {
        UHMM_CU(d_->cuMemcpyDtoHAsync(staging, device_addr + off, n, test_stream_),
                "cuMemcpyDtoHAsync(test)");
      }
      UHMM_CU(d_->cuStreamSynchronize(test_stream_), "cuStreamSynchronize(test)");
      if (!write) std::memcpy(static_cast<uint8_t*>(host) + off, staging, n);
    }
    return absl::OkStatus();
  }

  static void LogError(const absl::Status& s) {
    if (!s.ok()) std::fprintf(stderr, "uhmm: CUDA backend: %s\n", std::string(s.message()).c_str());
  }

  const Driver* const d_;
  const CUdevice dev_;
  const CUcontext ctx_;
  const std::string name_;
  const std::vector<Gpu> peers_;
  CudaCopyEngine engine_;
  Pagemap pagemap_;
  CUstream test_stream_ = nullptr;
  std::mutex test_mu_;
  void* test_staging_ = nullptr;
  size_t default_pool_ = 0;
  bool copies_from_peers_ = false;  // this GPU reaches another's memory (Backend::PeerAccess)
};

class CudaBackend final : public Backend {
 public:
  // `gpus` are retained primary contexts, released here; `peer`: which of them reach which.
  CudaBackend(const Driver* d, std::vector<Gpu> gpus, PeerMatrix peer, std::string cupti_library)
      : d_(d), gpus_(std::move(gpus)), peer_(std::move(peer)), cupti_library_(std::move(cupti_library)) {}
  ~CudaBackend() override {
    LaunchInterceptor::Retire(std::move(interceptor_));
    for (const Gpu& g : gpus_) d_->cuDevicePrimaryCtxRelease(g.dev);
  }

  std::string_view name() const override { return "cuda"; }
  int device_count() const override { return static_cast<int>(gpus_.size()); }
  absl::StatusOr<std::unique_ptr<Device>> OpenDevice(int ordinal) override {
    if (ordinal < 0 || ordinal >= device_count()) {
      return absl::InvalidArgumentError(absl::StrFormat("CUDA backend: no device %d", ordinal));
    }
    std::vector<Gpu> peers;
    for (int j = 0; j < device_count(); ++j) {
      if (PeerAccess(j, ordinal)) peers.push_back(gpus_[j]);
    }
    auto dev = std::make_unique<CudaDevice>(d_, gpus_[ordinal], ordinal, std::move(peers));
    if (absl::Status s = dev->Init(); !s.ok()) return s;
    dev->set_copies_from_peers(peer_.ReachesAny(ordinal));
    return std::unique_ptr<Device>(std::move(dev));
  }
  bool PeerAccess(int device, int owner) const override { return peer_.Reaches(device, owner); }

  // Virtual addresses are process-wide: any GPU's context reserves them for all.
  absl::StatusOr<uintptr_t> ReserveAddressRange(size_t bytes) override {
    ScopedContext scope(*d_, ctx());
    CUdeviceptr ptr = 0;
    UHMM_CU(d_->cuMemAddressReserve(&ptr, bytes, kBlockSize, 0, 0), "cuMemAddressReserve");
    return static_cast<uintptr_t>(ptr);
  }
  void ReleaseAddressRange(uintptr_t start, size_t bytes) override {
    ScopedContext scope(*d_, ctx());
    if (absl::Status s = CudaStatus(*d_, d_->cuMemAddressFree(start, bytes), "cuMemAddressFree"); !s.ok()) {
      std::fprintf(stderr, "uhmm: CUDA backend: %s\n", std::string(s.message()).c_str());
    }
  }
  bool pins_host_views() const override { return true; }
  // PORTABLE: pinned for every context, so each GPU's copy engines reach it.
  absl::Status RegisterHostView(void* view, size_t bytes) override {
    ScopedContext scope(*d_, ctx());
    UHMM_CU(d_->cuMemHostRegister(view, bytes, CU_MEMHOSTREGISTER_PORTABLE),
            "cuMemHostRegister(runtime view)");
    return absl::OkStatus();
  }
  void UnregisterHostView(void* view, size_t /*bytes*/) override {
    ScopedContext scope(*d_, ctx());
    d_->cuMemHostUnregister(view);
  }
  absl::Status SetLaunchListener(LaunchListener* listener) override {
    LaunchInterceptor::Retire(std::move(interceptor_));
    if (listener == nullptr) return absl::OkStatus();
    std::vector<CUcontext> contexts;
    for (const Gpu& g : gpus_) contexts.push_back(g.ctx);
    absl::StatusOr<std::unique_ptr<LaunchInterceptor>> li =
        LaunchInterceptor::Create(std::move(contexts), listener, cupti_library_);
    if (!li.ok()) return li.status();
    interceptor_ = std::move(*li);
    return absl::OkStatus();
  }

 private:
  CUcontext ctx() const { return gpus_[0].ctx; }

  const Driver* const d_;
  const std::vector<Gpu> gpus_;
  const PeerMatrix peer_;
  const std::string cupti_library_;  // Config::cupti_library
  std::unique_ptr<LaunchInterceptor> interceptor_;
};

// Checks CUDA device `ordinal` for what one pointer needs and retains its primary context.
absl::StatusOr<Gpu> OpenGpu(const Driver& d, int ordinal) {
  Gpu g;
  g.cuda_ordinal = ordinal;
  if (absl::Status s = CudaStatus(d, d.cuDeviceGet(&g.dev, ordinal), "cuDeviceGet"); !s.ok()) return s;
  int vmm = 0;
  d.cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, g.dev);
  if (!vmm) {
    return absl::UnavailableError(absl::StrFormat(
        "CUDA device %d does not support virtual memory management (cuMemMap), which one pointer needs",
        ordinal));
  }
  char name[256] = {};
  d.cuDeviceGetName(name, sizeof(name), g.dev);
  g.name = name;
  CUmemAllocationProp prop = {};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = g.dev;
  size_t granularity = 0;
  if (absl::Status s = CudaStatus(
          d, d.cuMemGetAllocationGranularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
          "cuMemGetAllocationGranularity");
      !s.ok()) {
    return s;
  }
  if (granularity == 0 || kBlockSize % granularity != 0) {
    return absl::UnavailableError(absl::StrFormat(
        "CUDA device %d maps VRAM in %u-byte units; uhmm needs a divisor of 2 MiB", ordinal, granularity));
  }
  if (absl::Status s = CudaStatus(d, d.cuDevicePrimaryCtxRetain(&g.ctx, g.dev), "cuDevicePrimaryCtxRetain");
      !s.ok()) {
    return s;
  }
  return g;
}

#undef UHMM_CU

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const Config& config) {
  absl::StatusOr<const Driver*> driver = LoadDriver(config.cuda_driver);
  if (!driver.ok()) return driver.status();
  const Driver& d = **driver;
  int count = 0;
  if (absl::Status s = CudaStatus(d, d.cuDeviceGetCount(&count), "cuDeviceGetCount"); !s.ok()) {
    return absl::UnavailableError(s.message());
  }
  if (count == 0) return absl::UnavailableError("the NVIDIA driver reports no CUDA device");
  // Config::cuda_devices (UHMM_CUDA_DEVICES) lists the GPUs, else Config::cuda_device
  // (UHMM_CUDA_DEVICE) names one.
  std::vector<int> every(count);
  for (int i = 0; i < count; ++i) every[i] = i;
  absl::StatusOr<std::vector<int>> ordinals =
      ChooseDevices(config.cuda_devices, "cuda_devices (UHMM_CUDA_DEVICES)", config.cuda_device,
                    "cuda_device (UHMM_CUDA_DEVICE)", every, count, "CUDA device");
  if (!ordinals.ok()) return ordinals.status();
  std::vector<Gpu> gpus;
  for (int ordinal : *ordinals) {
    absl::StatusOr<Gpu> g = OpenGpu(d, ordinal);
    if (!g.ok()) {
      for (const Gpu& opened : gpus) d.cuDevicePrimaryCtxRelease(opened.dev);
      return g.status();
    }
    gpus.push_back(std::move(*g));
  }
  PeerMatrix peer(static_cast<int>(gpus.size()), [&](int i, int j) {
    int can = 0;
    return d.cuDeviceCanAccessPeer(&can, gpus[i].dev, gpus[j].dev) == CUDA_SUCCESS && can != 0;
  });
  return std::unique_ptr<Backend>(
      new CudaBackend(&d, std::move(gpus), std::move(peer), config.cupti_library));
}

}  // namespace uhmm::cuda
