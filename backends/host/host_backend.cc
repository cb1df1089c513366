// Host-emulated device; see host_backend.h.
#include "backends/host/host_backend.h"

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/strings/str_format.h"
#include "backends/common/copy_back_pagemap.h"

namespace uhmm::host {
namespace {

constexpr size_t kDefaultPoolBytes = size_t{256} << 20;

class HostCopyEngine final : public CopyEngine {
 public:
  // `translate` turns a device address into the memory behind it.
  HostCopyEngine(int ordinal, std::function<void*(uint64_t)> translate)
      : ordinal_(ordinal), translate_(std::move(translate)), thread_([this] { Run(); }) {
    char name[16];
    std::snprintf(name, sizeof(name), "uhmm-copy-%d", ordinal_);
    pthread_setname_np(thread_.native_handle(), name);
  }
  ~HostCopyEngine() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  absl::StatusOr<uint64_t> Submit(CopyDirection dir, std::span<const CopyOp> ops) override {
    if (dir == CopyDirection::kPeerToDevice) {  // (emulated devices have no peer access)
      return absl::UnimplementedError(absl::StrFormat("host device %d: no copies from peers", ordinal_));
    }
    return Enqueue(dir, std::vector<CopyOp>(ops.begin(), ops.end()), nullptr);
  }

  uint64_t SubmitKernel(std::function<void()> kernel) {
    return Enqueue(CopyDirection::kHostToDevice, {}, std::move(kernel));
  }

  absl::Status Wait(uint64_t fence) override {
    // Like polling a GPU event: a short copy completes in microseconds, well before a sleeping
    // thread would be woken, so poll briefly before sleeping.
    SpinUntil([&] { return completed_pub_.load(std::memory_order_acquire) >= fence; });
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return completed_ >= fence; });
    auto it = results_.find(fence);
    if (it == results_.end()) return absl::OkStatus();
    absl::Status s = it->second;
    results_.erase(it);
    return s;
  }

 private:
  struct Batch {
    uint64_t fence;
    CopyDirection dir;
    std::vector<CopyOp> ops;
    std::function<void()> kernel;  // set for a kernel launch instead of copies
  };

  uint64_t Enqueue(CopyDirection dir, std::vector<CopyOp> ops, std::function<void()> kernel) {
    std::lock_guard<std::mutex> lock(mu_);
    const uint64_t fence = ++submitted_;
    queue_.push_back(Batch{fence, dir, std::move(ops), std::move(kernel)});
    submitted_pub_.store(fence, std::memory_order_release);
    cv_.notify_all();
    return fence;
  }

  template <typename Cond>
  static void SpinUntil(Cond cond) {
    const auto deadline = std::chrono::steady_clock::now() + kSpin;
    while (!cond() && std::chrono::steady_clock::now() < deadline) {
      __builtin_ia32_pause();
    }
  }

  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    uint64_t taken = 0;
    for (;;) {
      if (queue_.empty() && !stop_) {
        // Poll for the next batch briefly: faults come in bursts.
        lock.unlock();
        SpinUntil([&] { return submitted_pub_.load(std::memory_order_acquire) > taken; });
        lock.lock();
      }
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ with nothing left
      Batch batch = std::move(queue_.front());
      queue_.pop_front();
      taken = batch.fence;
      lock.unlock();
      const bool to_device = batch.dir == CopyDirection::kHostToDevice;
      absl::Status status;
      if (batch.kernel) {
        batch.kernel();
      } else {
        for (const CopyOp& op : batch.ops) {
          // Page by page: with one pointer, consecutive device addresses may sit in different chunks.
          for (size_t off = 0; off < op.bytes; off += kPageSize) {
            auto* dev = static_cast<uint8_t*>(translate_(op.device + off));
            auto* host = op.host != nullptr ? static_cast<uint8_t*>(op.host) + off : nullptr;
            const size_t n = std::min(kPageSize, op.bytes - off);
            if (dev == nullptr) {
              status = absl::InternalError(absl::StrFormat(
                  "host device %d: copy to unmapped device address %#x", ordinal_, op.device + off));
            } else if (host == nullptr) {
              std::memset(dev, 0, n);  // a fill (uhmm/backend.h)
            } else if (to_device) {
              std::memcpy(dev, host, n);
            } else {
              std::memcpy(host, dev, n);
            }
          }
        }
      }
      lock.lock();
      if (!status.ok()) results_[batch.fence] = status;
      completed_ = batch.fence;
      completed_pub_.store(batch.fence, std::memory_order_release);
      done_cv_.notify_all();
    }
  }

  const int ordinal_;
  const std::function<void*(uint64_t)> translate_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::deque<Batch> queue_;
  std::unordered_map<uint64_t, absl::Status> results_;
  static constexpr std::chrono::microseconds kSpin{50};
  uint64_t submitted_ = 0;
  uint64_t completed_ = 0;
  std::atomic<uint64_t> submitted_pub_{0}, completed_pub_{0};  // for polling without the lock
  bool stop_ = false;
  std::thread thread_;  // last: starts after everything above is constructed
};

// One pointer, emulated: which device's chunk each 2 MiB block is mapped to. Process-wide per
// backend, as a GPU driver's virtual address mappings are (cuMemMap): two devices cannot both map
// a block, so the runtime has to unmap one device's chunk before another maps the block.
struct BlockMappings {
  struct Mapping {
    int device;
    uint8_t* chunk;
  };
  std::shared_mutex mu;
  std::unordered_map<uintptr_t, Mapping> by_block;
};

class HostDevice;
std::mutex g_live_mu;
std::map<int, HostDevice*>& Live() {
  static auto* m = new std::map<int, HostDevice*>();
  return *m;
}

class HostDevice final : public Device, public HostDeviceControls {
 public:
  HostDevice(int ordinal, bool same_address, std::atomic<LaunchListener*>* listener,
             std::shared_ptr<BlockMappings> mappings)
      : ordinal_(ordinal),
        same_address_(same_address),
        listener_(listener),
        mappings_(std::move(mappings)),
        engine_(ordinal, [this](uint64_t addr) { return DevicePointer(addr); }) {
    pagemap_.type = MemoryType::kDevicePrivate;
    pagemap_.ops = &CopyBackPagemap::kOps;
    pagemap_.owner = this;
    pagemap_.device = ordinal;
    pagemap_.copy_engine = &engine_;
    std::lock_guard<std::mutex> lock(g_live_mu);
    Live()[ordinal] = this;
  }
  ~HostDevice() override {
    std::lock_guard<std::mutex> lock(g_live_mu);
    auto it = Live().find(ordinal_);
    if (it != Live().end() && it->second == this) Live().erase(it);
  }

  // Device.
  std::string name() const override { return absl::StrFormat("host-emulated device %d", ordinal_); }
  Pagemap& pagemap() override { return pagemap_; }
  CopyEngine& copy_engine() override { return engine_; }
  size_t default_pool_bytes() const override { return kDefaultPoolBytes; }
  Placement placement() const override {
    return same_address_ ? Placement::kSameAddress : Placement::kAnywhere;
  }

  // One pointer, emulated: the device's page tables map a chunk at each block it backs.
  absl::Status MapChunk(uint64_t chunk, uintptr_t block) override {
    std::unique_lock lock(mappings_->mu);
    auto [it, added] = mappings_->by_block.try_emplace(
        block, BlockMappings::Mapping{ordinal_, reinterpret_cast<uint8_t*>(chunk)});
    if (!added) {
      return absl::InternalError(absl::StrFormat("host device %d: block %#x is already mapped by device %d",
                                                 ordinal_, block, it->second.device));
    }
    return absl::OkStatus();
  }
  void UnmapChunk(uint64_t /*chunk*/, uintptr_t block) override {
    (void)SynchronizeQueue(nullptr);  // queued device work may still use the block
    std::unique_lock lock(mappings_->mu);
    auto it = mappings_->by_block.find(block);
    if (it != mappings_->by_block.end() && it->second.device == ordinal_) mappings_->by_block.erase(it);
  }
  absl::Status SynchronizeQueue(void*) override {
    return engine_.Wait(engine_.SubmitKernel([] {}));
  }

  absl::StatusOr<uint64_t> AllocChunk() override {
    // Separate host memory the managed pointer never maps: the CPU cannot reach it through the
    // managed address, as with real device-private memory.
    void* p = mmap(nullptr, kBlockSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("host device %d: no memory for a 2 MiB chunk: %s", ordinal_, strerror(errno)));
    }
    return reinterpret_cast<uint64_t>(p);
  }
  void FreeChunk(uint64_t chunk) override { munmap(reinterpret_cast<void*>(chunk), kBlockSize); }

  // HostDeviceControls.
  absl::Status RunKernel(std::function<void()> kernel) override {
    if (LaunchListener* l = listener_->load(std::memory_order_acquire)) l->BeforeLaunch(ordinal_, nullptr);
    return engine_.Wait(engine_.SubmitKernel(std::move(kernel)));
  }
  void* DevicePointer(uint64_t addr) override {
    if (!same_address_) return reinterpret_cast<void*>(addr);
    std::shared_lock lock(mappings_->mu);
    auto it = mappings_->by_block.find(addr & ~(kBlockSize - 1));
    // Only this device's own mappings: the emulation has no peer access.
    if (it == mappings_->by_block.end() || it->second.device != ordinal_) return nullptr;
    return it->second.chunk + addr % kBlockSize;
  }
  // testing::DeviceAccess.
  absl::Status DeviceWrite(uint64_t device_addr, const void* src, size_t bytes) override {
    return DeviceCopy(device_addr, const_cast<void*>(src), bytes, /*write=*/true);
  }
  absl::Status DeviceRead(uint64_t device_addr, void* dst, size_t bytes) override {
    return DeviceCopy(device_addr, dst, bytes, /*write=*/false);
  }

 private:
  // A device-side access on the device's queue (not a launch: no listener call).
  absl::Status DeviceCopy(uint64_t device_addr, void* host, size_t bytes, bool write) {
    absl::Status result;
    absl::Status s = engine_.Wait(engine_.SubmitKernel([&] {
      // Page by page of the device address (a span need not start on a page): each page is in
      // whatever chunk backs it, and chunks are not contiguous.
      for (size_t off = 0, n = 0; off < bytes; off += n) {
        auto* dev = static_cast<uint8_t*>(DevicePointer(device_addr + off));
        n = std::min(kPageSize - (device_addr + off) % kPageSize, bytes - off);
        if (dev == nullptr) {
          result = absl::InvalidArgumentError(absl::StrFormat(
              "host device %d: device address %#x is not mapped", ordinal_, device_addr + off));
          return;
        }
        if (write) {
          std::memcpy(dev, static_cast<const uint8_t*>(host) + off, n);
        } else {
          std::memcpy(static_cast<uint8_t*>(host) + off, dev, n);
        }
      }
    }));
    return s.ok() ? result : s;
  }

  const int ordinal_;
  const bool same_address_;
  std::atomic<LaunchListener*>* const listener_;
  const std::shared_ptr<BlockMappings> mappings_;  // the backend's (same-address mode)
  Pagemap pagemap_;
  HostCopyEngine engine_;
};

class HostBackend final : public Backend {
 public:
  HostBackend(int devices, bool same_address) : devices_(devices), same_address_(same_address) {}
  std::string_view name() const override { return "host"; }
  int device_count() const override { return devices_; }
  absl::StatusOr<std::unique_ptr<Device>> OpenDevice(int ordinal) override {
    if (ordinal < 0 || ordinal >= devices_) {
      return absl::InvalidArgumentError(absl::StrFormat("host backend: no device %d", ordinal));
    }
    return std::unique_ptr<Device>(new HostDevice(ordinal, same_address_, &listener_, mappings_));
  }

  // Like cuMemAddressReserve: a 2 MiB aligned PROT_NONE reservation the runtime maps over.
  absl::StatusOr<uintptr_t> ReserveAddressRange(size_t bytes) override {
    if (!same_address_) return uintptr_t{0};
    return reserve_block_aligned_address_space(bytes);
  }
  void ReleaseAddressRange(uintptr_t start, size_t bytes) override {
    munmap(reinterpret_cast<void*>(start), bytes);
  }
  // The reservation is CPU address space only; what the application left mapped is its own.
  bool AbandonAddressRange(uintptr_t, size_t) override { return true; }
  absl::Status SetLaunchListener(LaunchListener* listener) override {
    listener_.store(listener, std::memory_order_release);
    return absl::OkStatus();
  }

 private:
  const int devices_;
  const bool same_address_;
  std::atomic<LaunchListener*> listener_{nullptr};
  const std::shared_ptr<BlockMappings> mappings_ = std::make_shared<BlockMappings>();
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateHostBackend(const Config& config) {
  return std::unique_ptr<Backend>(new HostBackend(config.host_devices, config.host_same_address));
}

HostDeviceControls* LiveDevice(int ordinal) {
  std::lock_guard<std::mutex> lock(g_live_mu);
  auto it = Live().find(ordinal);
  return it == Live().end() ? nullptr : it->second;
}

}  // namespace uhmm::host
