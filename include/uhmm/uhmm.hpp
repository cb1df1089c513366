// uhmm C++ API: RAII wrappers and absl::Status errors over the same runtime as the C API.
// Runtime::Create picks the backend; ManagedArray<T> owns one managed allocation.
#ifndef UHMM_UHMM_HPP_
#define UHMM_UHMM_HPP_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "uhmm/uhmm.h"

namespace uhmm {

inline constexpr size_t kPageSize = 4096;
inline constexpr size_t kBlockSize = size_t{2} << 20;  // VaBlock and device root chunk
inline constexpr int kHost = UHMM_LOCATION_HOST;
inline constexpr int kPoisoned = UHMM_LOCATION_POISONED;
inline constexpr int kUnmapped = UHMM_LOCATION_UNMAPPED;
inline constexpr int kNoLocation = UHMM_LOCATION_NONE;      // GetRangeAttribute: no preferred location
inline constexpr int kMixedLocation = UHMM_LOCATION_MIXED;  // GetRangeAttribute: the pages differ

enum class Backing {
  kDefault = UHMM_BACKING_DEFAULT,
  k4K = UHMM_BACKING_4K,
  kHugetlb = UHMM_BACKING_HUGETLB
};
enum class HugetlbMode {
  kAuto = UHMM_HUGETLB_AUTO,
  kNever = UHMM_HUGETLB_NEVER,
  kAlways = UHMM_HUGETLB_ALWAYS
};

// Memory advice (uhmm_advise in uhmm.h says what each takes as its argument).
enum class Advice {
  kSetReadMostly = UHMM_ADVISE_SET_READ_MOSTLY,
  kUnsetReadMostly = UHMM_ADVISE_UNSET_READ_MOSTLY,
  kSetPreferredLocation = UHMM_ADVISE_SET_PREFERRED_LOCATION,
  kUnsetPreferredLocation = UHMM_ADVISE_UNSET_PREFERRED_LOCATION,
  kSetAccessedBy = UHMM_ADVISE_SET_ACCESSED_BY,
  kUnsetAccessedBy = UHMM_ADVISE_UNSET_ACCESSED_BY,
  kSetFaultGranule = UHMM_ADVISE_SET_FAULT_GRANULE,
  kUnsetFaultGranule = UHMM_ADVISE_UNSET_FAULT_GRANULE
};
enum class RangeAttribute {
  kReadMostly = UHMM_RANGE_ATTRIBUTE_READ_MOSTLY,
  kPreferredLocation = UHMM_RANGE_ATTRIBUTE_PREFERRED_LOCATION,
  kAccessedBy = UHMM_RANGE_ATTRIBUTE_ACCESSED_BY,
  kFaultGranule = UHMM_RANGE_ATTRIBUTE_FAULT_GRANULE
};

enum class SigbusMode { kAuto = UHMM_SIGBUS_AUTO, kPoison = UHMM_SIGBUS_POISON, kTkill = UHMM_SIGBUS_TKILL };

// Every knob is also an environment variable, read by FromEnv() (see docs/CONFIG.md). A Config
// built any other way (Config{}, then fields set) ignores the environment altogether.
struct Config {
  std::string backend;                   // UHMM_BACKEND: "cuda", "level_zero", "host"; empty = best available
  int fault_threads = 2;                 // UHMM_FAULT_THREADS
  size_t device_pool_bytes = 0;          // UHMM_DEVICE_POOL_BYTES (0 = backend default)
  double device_pool_fraction = 0;       // UHMM_DEVICE_POOL_BYTES=NN% (of free device memory)
  size_t fault_granularity = 64 * 1024;  // UHMM_FAULT_GRANULARITY
  int host_devices = 1;                  // UHMM_HOST_DEVICES
  SigbusMode sigbus_mode = SigbusMode::kAuto;  // UHMM_SIGBUS_MODE=auto|poison|tkill
  bool transparent_launch = true;              // UHMM_TRANSPARENT_LAUNCH=1|0
  bool host_same_address = false;              // UHMM_HOST_SAME_ADDRESS=1|0 (host backend)
  std::string trace_path;                      // UHMM_TRACE=path: write a fault trace ("%p": the pid)
  bool print_stats = false;                    // UHMM_STATS=1: print the counters when the runtime goes
  // Policy knobs, in the spirit of nvidia-uvm's uvm_perf_* parameters (docs/PERFORMANCE.md).
  // "Prefetch" means only explicit migration (uhmm_prefetch_on_queue); read-ahead and density
  // growth are named as such.
  size_t readahead_bytes = size_t{32} << 20;  // UHMM_READAHEAD (0: off)
  // Migration workers "uhmm-mig-N": read-ahead and block-parallel uhmm_migrate /
  // uhmm_prefetch_on_queue (0: both on the calling thread, no read-ahead).
  int migration_threads = 2;  // UHMM_MIGRATION_THREADS (deprecated alias UHMM_PREFETCH_THREADS)
  // Density growth: a fault grows its granule to the largest power-of-two region of its 2 MiB block
  // that would then be more than this percent host-resident (0: off).
  int growth_threshold = 51;     // UHMM_GROWTH_THRESHOLD (deprecated alias UHMM_PREFETCH_THRESHOLD)
  int thrashing_threshold = 3;   // UHMM_THRASHING_THRESHOLD (0: off)
  int thrashing_lapse_us = 500;  // UHMM_THRASHING_LAPSE_US
  HugetlbMode hugetlb = HugetlbMode::kAuto;     // UHMM_HUGETLB=auto|never|always
  size_t hugetlb_min_bytes = size_t{64} << 20;  // UHMM_HUGETLB_MIN
  int fault_spin_us = -1;                       // UHMM_FAULT_SPIN_US (-1: 50 with 8+ CPUs, else 0)
  // The fault path before one-CONTINUE faults and per-block coalescing (a re-check round after each
  // migration back, WAKE after EEXIST, one message at a time), for before/after measurements.
  bool fault_recheck = false;  // UHMM_FAULT_RECHECK=1|0
  // Read duplication with CPU write tracking (userfaultfd async write-protect and PAGEMAP_SCAN,
  // Linux 6.7+; off by itself on older kernels): a CPU read brings a page home and keeps its device
  // copy, and a launch pushes only pages the CPU wrote. UHMM_READ_DUPLICATION=1|0.
  bool read_duplication = true;
  bool placement = true;  // UHMM_PLACEMENT=auto|none (hwloc)
  // Backend choices (no uhmm_config_t field: the C API takes them from the environment).
  int cuda_device = 0;  // UHMM_CUDA_DEVICE: which CUDA GPU, when cuda_devices is empty
  // UHMM_CUDA_DEVICES: several CUDA GPUs in one runtime, "all" or CUDA ordinals such as "0,2"; the
  // runtime numbers them 0, 1, ... in that order. Empty: the one GPU cuda_device names.
  std::string cuda_devices;
  std::string cuda_driver;    // UHMM_CUDA_DRIVER: driver library; empty = "libcuda.so.1"
  std::string cupti_library;  // UHMM_CUPTI_LIBRARY: libcupti path; empty = search (docs/CONFIG.md)
  int ze_device = 0;          // UHMM_ZE_DEVICE: which Level Zero GPU, over all drivers
  // UHMM_ZE_DEVICES: several Level Zero GPUs of one driver, "all" (the first driver's) or indices
  // such as "0,1"; the runtime numbers them 0, 1, ... in that order. Empty: ze_device alone.
  std::string ze_devices;
  std::string ze_loader;  // UHMM_ZE_LOADER: loader library; empty = "libze_loader.so.1"
  // Fault injection for testing device-error handling (uhmm/testing.h, docs/TESTING.md): "" or
  // "off" (none), "on" (installed, nothing scheduled) or rules such as "copy_d2h:1".
  std::string fault_injection;  // UHMM_INJECT
  std::string env_error;        // set by FromEnv for malformed variables

  // Defaults overridden by the environment. Malformed values are reported by Runtime::Create.
  static Config FromEnv();
  absl::Status Validate() const;
};

using Stats = uhmm_stats_t;

class Runtime {
 public:
  static absl::StatusOr<std::unique_ptr<Runtime>> Create(const Config& config = Config::FromEnv());
  virtual ~Runtime() = default;

  // Managed memory: page aligned, host resident until migrated.
  virtual absl::StatusOr<void*> Allocate(size_t size, Backing backing = Backing::kDefault) = 0;
  virtual absl::Status Free(void* ptr) = 0;

  // Moves [ptr, ptr+size) to `device` or to kHost. Cannot be refused for kHost.
  virtual absl::Status Migrate(void* ptr, size_t size, int device) = 0;
  // Returns every page of `device` to the host.
  virtual absl::Status EvictDevice(int device) = 0;
  // Migrate for a span that need not be managed or page aligned, such as a driver copy's: the part
  // of [addr, addr+bytes) that the allocations of its first and last bytes hold (whole pages) goes
  // to `device` or kHost; other bytes are left alone. Returns the first failure.
  virtual absl::Status MigrateManagedPart(const void* addr, size_t bytes, int device) = 0;
  // Queue-ordered prefetch and explicit launch coherence; see uhmm_prefetch_on_queue and
  // uhmm_sync_for_device in uhmm.h.
  virtual absl::Status PrefetchOnQueue(void* ptr, size_t size, int device, void* queue) = 0;
  virtual absl::Status SyncForDevice(int device, void* queue) = 0;
  virtual bool transparent_launch_enabled() const = 0;
  // The backend's driver/device/context handles for `device`; see uhmm_native_handles_t.
  virtual absl::StatusOr<uhmm_native_handles_t> NativeHandles(int device) const = 0;
  // Fault tracing (uhmm_trace_start / uhmm_trace_stop): one trace per process at a time.
  virtual absl::Status StartTrace(const std::string& path) = 0;
  virtual absl::Status StopTrace() = 0;

  // One location per 4 KiB page: device ordinal, kHost, kPoisoned or kUnmapped.
  virtual absl::StatusOr<std::vector<int32_t>> Residency(const void* ptr, size_t size) = 0;
  // Read duplication: per page, the device keeping a copy of a host-resident page, or kNoLocation
  // (uhmm_query_copies).
  virtual absl::StatusOr<std::vector<int32_t>> DeviceCopies(const void* ptr, size_t size) = 0;

  // Memory advice on [ptr, ptr+size) (uhmm_advise), and one attribute of the span read back
  // (uhmm_range_get_attribute): ptr 4 KiB aligned, size rounded up to 4 KiB, one allocation.
  virtual absl::Status Advise(void* ptr, size_t size, Advice advice, int64_t arg = 0) = 0;
  virtual absl::StatusOr<int64_t> GetRangeAttribute(const void* ptr, size_t size,
                                                    RangeAttribute attribute) const = 0;
  virtual Stats stats() const = 0;

  virtual int device_count() const = 0;
  virtual std::string_view backend_name() const = 0;

  // Device address of the device page that backs `ptr` (NOT_FOUND when the page is on the host).
  // Lets code that launches device work find the data; with the host backend it is a host pointer.
  virtual absl::StatusOr<uint64_t> DeviceAddress(const void* ptr) const = 0;

  // The allocation that holds `ptr` (any address inside it): its start and the size it was
  // allocated with (uhmm_find_allocation). NOT_FOUND when no live allocation holds it.
  struct Allocation {
    void* start;
    size_t size;
  };
  // One device's part of stats() (uhmm_get_device_stats): INVALID_ARGUMENT for a device that does
  // not exist.
  struct DeviceStats {
    uint64_t pool_pages_total = 0;
    uint64_t pool_pages_used = 0;
    // The other devices whose pages this device's kernels reach where they lie (peer access; bit d:
    // device d). A launch here leaves such pages in place and moves pages on other devices.
    uint64_t peer_access = 0;
    std::string name;
  };
  virtual absl::StatusOr<DeviceStats> device_stats(int device) const = 0;
  virtual absl::StatusOr<Allocation> FindAllocation(const void* ptr) const = 0;
};

// Owns a managed allocation of `count` T's. Move-only; frees on destruction.
template <typename T>
class ManagedArray {
 public:
  static absl::StatusOr<ManagedArray> Create(Runtime& rt, size_t count) {
    if (count == 0 || count > SIZE_MAX / sizeof(T)) {
      return absl::InvalidArgumentError("ManagedArray: count must be in [1, SIZE_MAX / sizeof(T)]");
    }
    absl::StatusOr<void*> p = rt.Allocate(count * sizeof(T));
    if (!p.ok()) return p.status();
    return ManagedArray(&rt, static_cast<T*>(*p), count);
  }
  ManagedArray(ManagedArray&& o) noexcept
      : rt_(std::exchange(o.rt_, nullptr)), data_(std::exchange(o.data_, nullptr)), count_(o.count_) {}
  ManagedArray& operator=(ManagedArray&& o) noexcept {
    if (this != &o) {
      Reset();
      rt_ = std::exchange(o.rt_, nullptr);
      data_ = std::exchange(o.data_, nullptr);
      count_ = o.count_;
    }
    return *this;
  }
  ManagedArray(const ManagedArray&) = delete;
  ManagedArray& operator=(const ManagedArray&) = delete;
  ~ManagedArray() { Reset(); }

  T* data() const { return data_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }
  T& operator[](size_t i) const { return data_[i]; }
  std::span<T> span() const { return {data_, count_}; }

  absl::Status MigrateTo(int device) { return rt_->Migrate(data_, RoundedBytes(), device); }

 private:
  ManagedArray(Runtime* rt, T* data, size_t count) : rt_(rt), data_(data), count_(count) {}
  size_t RoundedBytes() const { return (bytes() + kPageSize - 1) & ~(kPageSize - 1); }
  void Reset() {
    if (rt_ != nullptr && data_ != nullptr) (void)rt_->Free(data_);
    rt_ = nullptr;
    data_ = nullptr;
  }
  Runtime* rt_;
  T* data_;
  size_t count_;
};

}  // namespace uhmm

#endif  // UHMM_UHMM_HPP_
