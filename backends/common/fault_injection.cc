// Fault injection: the spec parser of uhmm/testing.h and the Device decorator of fault_injection.h.
#include "backends/common/fault_injection.h"

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "uhmm/testing.h"

namespace uhmm {
namespace testing {
namespace {

struct SiteName {
  const char* name;
  InjectSite site;
};
constexpr SiteName kSiteNames[] = {{"copy_h2d", InjectSite::kCopyHostToDevice},
                                   {"copy_d2h", InjectSite::kCopyDeviceToHost},
                                   {"chunk_alloc", InjectSite::kChunkAlloc}};

}  // namespace

absl::StatusOr<InjectSpec> ParseInjectSpec(std::string_view text) {
  const std::string original(text);
  const std::string spec = absl::AsciiStrToLower(absl::StripAsciiWhitespace(original));
  InjectSpec out;
  if (spec.empty() || spec == "off") return out;
  out.enabled = true;
  if (spec == "on") return out;
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm: fault_injection (UHMM_INJECT) is '%s': %s. Use off, on, or rules "
        "SITE:COUNT[:after=N][:device=N] separated by commas, SITE one of copy_h2d, copy_d2h, "
        "chunk_alloc and COUNT a positive number or all (docs/TESTING.md)",
        original, why));
  };
  for (absl::string_view piece : absl::StrSplit(spec, ',')) {
    const std::string rule(absl::StripAsciiWhitespace(piece));
    if (rule.empty()) return bad("it has an empty rule (two commas in a row, or one at an end)");
    if (rule == "on" || rule == "off")
      return bad(absl::StrFormat("'%s' stands alone, not among rules", rule));
    std::vector<std::string> fields = absl::StrSplit(rule, ':');
    for (std::string& f : fields) f = std::string(absl::StripAsciiWhitespace(f));
    InjectRule r;
    bool known = false;
    for (const SiteName& s : kSiteNames) {
      if (fields[0] == s.name) {
        r.site = s.site;
        known = true;
      }
    }
    if (!known) return bad(absl::StrFormat("rule '%s' names no site ('%s' is not one)", rule, fields[0]));
    if (fields.size() < 2 || fields[1].empty()) {
      return bad(absl::StrFormat("rule '%s' has no count (SITE:COUNT)", rule));
    }
    if (fields[1] == "all") {
      r.count = kInjectAll;
    } else if (!absl::SimpleAtoi(fields[1], &r.count) || r.count <= 0) {
      return bad(
          absl::StrFormat("the count of rule '%s', '%s', is not a positive number or all", rule, fields[1]));
    }
    for (size_t i = 2; i < fields.size(); ++i) {
      const size_t eq = fields[i].find('=');
      const std::string key = fields[i].substr(0, eq);
      const std::string value = eq == std::string::npos ? "" : fields[i].substr(eq + 1);
      int64_t v = -1;
      if ((key != "after" && key != "device") || eq == std::string::npos) {
        return bad(absl::StrFormat("rule '%s' has '%s' where after=N or device=N can go", rule, fields[i]));
      }
      if (!absl::SimpleAtoi(value, &v) || v < 0 || (key == "device" && v > 1024)) {
        return bad(absl::StrFormat("in rule '%s', %s='%s' is not a %s", rule, key, value,
                                   key == "device" ? "device number" : "number >= 0"));
      }
      if (key == "after") {
        r.after = v;
      } else {
        r.device = static_cast<int>(v);
      }
    }
    out.rules.push_back(r);
  }
  return out;
}

}  // namespace testing

namespace fault_injection {
namespace {

using testing::InjectSite;

const char* SiteName(InjectSite site) {
  for (const auto& s : testing::kSiteNames) {
    if (s.site == site) return s.name;
  }
  return "?";
}

// A copy from a peer lands on this device: its failures are scheduled with host -> device copies.
InjectSite CopySite(CopyDirection dir) {
  return dir == CopyDirection::kDeviceToHost ? InjectSite::kCopyDeviceToHost : InjectSite::kCopyHostToDevice;
}
const char* CopyName(CopyDirection dir) {
  switch (dir) {
    case CopyDirection::kHostToDevice:
      return "host -> device";
    case CopyDirection::kDeviceToHost:
      return "device -> host";
    case CopyDirection::kPeerToDevice:
      return "peer -> device";
  }
  return "?";
}

// What is scheduled at one site of one device: `after_` more operations succeed, then `count_`
// fail (negative: all of them).
class Schedule {
 public:
  void Set(int64_t count, int64_t after) {
    std::lock_guard<std::mutex> lock(mu_);
    count_ = count;
    after_ = after;
    armed_.store(count != 0, std::memory_order_release);
  }
  // Counts one operation; true when it is to fail.
  bool Take() {
    attempts_.fetch_add(1, std::memory_order_relaxed);
    if (!armed_.load(std::memory_order_acquire)) return false;
    std::lock_guard<std::mutex> lock(mu_);
    if (count_ == 0) return false;
    if (after_ > 0) {
      --after_;
      return false;
    }
    if (count_ > 0 && --count_ == 0) armed_.store(false, std::memory_order_release);
    injected_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  uint64_t attempts() const { return attempts_.load(std::memory_order_relaxed); }
  uint64_t injected() const { return injected_.load(std::memory_order_relaxed); }

 private:
  std::mutex mu_;
  int64_t count_ = 0;  // guarded by mu_
  int64_t after_ = 0;  // guarded by mu_
  std::atomic<bool> armed_{false};
  std::atomic<uint64_t> attempts_{0}, injected_{0};
};

// Wraps a device's copy engine: a batch scheduled to fail is replaced by an empty one, so that its
// fence completes in order with the others, and its Wait returns the injected error.
class InjectingCopyEngine final : public CopyEngine {
 public:
  InjectingCopyEngine(int ordinal, CopyEngine* inner, Schedule* schedules)
      : ordinal_(ordinal), inner_(inner), schedules_(schedules) {}

  absl::StatusOr<uint64_t> Submit(CopyDirection dir, std::span<const CopyOp> ops) override {
    if (!schedules_[static_cast<int>(CopySite(dir))].Take()) return inner_->Submit(dir, ops);
    absl::StatusOr<uint64_t> fence = inner_->Submit(dir, {});  // a lost device copies nothing
    if (!fence.ok()) return fence;
    std::lock_guard<std::mutex> lock(mu_);
    failed_.emplace(*fence, dir);
    failed_count_.fetch_add(1, std::memory_order_release);
    return fence;
  }

  absl::Status Wait(uint64_t fence) override {
    absl::Status s = inner_->Wait(fence);
    if (failed_count_.load(std::memory_order_acquire) == 0) return s;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = failed_.find(fence);
    if (it == failed_.end()) return s;
    const CopyDirection dir = it->second;
    failed_.erase(it);
    failed_count_.fetch_sub(1, std::memory_order_release);
    if (!s.ok()) return s;
    return absl::AbortedError(
        absl::StrFormat("device %d: %s copy batch failed (injected fault: UHMM_INJECT / uhmm::testing)",
                        ordinal_, CopyName(dir)));
  }

 private:
  const int ordinal_;
  CopyEngine* const inner_;
  Schedule* const schedules_;
  std::mutex mu_;
  absl::flat_hash_map<uint64_t, CopyDirection> failed_;  // guarded by mu_
  std::atomic<int> failed_count_{0};
};

class FaultInjectingDevice final : public Device, public testing::FaultInjector {
 public:
  FaultInjectingDevice(std::unique_ptr<Device> inner, int ordinal)
      : inner_(std::move(inner)),
        ordinal_(ordinal),
        saved_engine_(inner_->pagemap().copy_engine),
        engine_(ordinal, saved_engine_ != nullptr ? saved_engine_ : &inner_->copy_engine(), schedules_) {
    Pagemap& pm = inner_->pagemap();
    ops_.ops = PagemapOps{&PageFree, &PageFault};
    ops_.self = this;
    ops_.inner = pm.ops;
    pm.ops = &ops_.ops;
    pm.copy_engine = &engine_;
  }
  ~FaultInjectingDevice() override {
    Pagemap& pm = inner_->pagemap();
    pm.ops = ops_.inner;
    pm.copy_engine = saved_engine_;
  }
  FaultInjectingDevice(const FaultInjectingDevice&) = delete;
  FaultInjectingDevice& operator=(const FaultInjectingDevice&) = delete;

  Device& inner() { return *inner_; }

  // Device: everything forwarded; copy_engine() and AllocChunk inject.
  std::string name() const override { return inner_->name(); }
  Pagemap& pagemap() override { return inner_->pagemap(); }
  CopyEngine& copy_engine() override { return engine_; }
  absl::StatusOr<uint64_t> AllocChunk() override {
    if (schedules_[static_cast<int>(InjectSite::kChunkAlloc)].Take()) {
      return absl::AbortedError(absl::StrFormat(
          "device %d: device memory allocation failed (injected fault: UHMM_INJECT / uhmm::testing)",
          ordinal_));
    }
    return inner_->AllocChunk();
  }
  void FreeChunk(uint64_t device_addr) override { inner_->FreeChunk(device_addr); }
  size_t default_pool_bytes() const override { return inner_->default_pool_bytes(); }
  absl::StatusOr<size_t> free_memory() const override { return inner_->free_memory(); }
  // The backend copies through pagemap().copy_engine, which is engine_ now.
  absl::Status MigrateToDevice(MigrateVma* migrate) override { return inner_->MigrateToDevice(migrate); }
  absl::Status MigrateToRam(MigrateVma* migrate) override { return inner_->MigrateToRam(migrate); }
  Placement placement() const override { return inner_->placement(); }
  absl::Status MapChunk(uint64_t chunk, uintptr_t block) override { return inner_->MapChunk(chunk, block); }
  bool CopiesFromPeers() const override { return inner_->CopiesFromPeers(); }
  void UnmapChunk(uint64_t chunk, uintptr_t block) override { inner_->UnmapChunk(chunk, block); }
  absl::Status UnmapWindow(uint64_t chunk, uintptr_t window) override {
    return inner_->UnmapWindow(chunk, window);
  }
  absl::Status SynchronizeQueue(void* queue) override { return inner_->SynchronizeQueue(queue); }
  uhmm_native_handles_t native_handles() const override { return inner_->native_handles(); }
  std::string pci_bus_id() const override { return inner_->pci_bus_id(); }

  // testing::FaultInjector.
  void FailNext(InjectSite site, int64_t count, int64_t after) override {
    schedules_[static_cast<int>(site)].Set(count, after);
  }
  uint64_t attempts(InjectSite site) const override { return schedules_[static_cast<int>(site)].attempts(); }
  uint64_t injected(InjectSite site) const override { return schedules_[static_cast<int>(site)].injected(); }
  uint64_t page_free_count(uint64_t pfn) const override {
    std::lock_guard<std::mutex> lock(free_mu_);
    auto it = free_counts_.find(pfn);
    return it == free_counts_.end() ? 0 : it->second;
  }
  uint64_t page_free_total() const override { return free_total_.load(std::memory_order_relaxed); }

 private:
  // The pagemap's ops while the decorator is installed: `ops` first, so that the pagemap's ops
  // pointer leads back to the decorator.
  struct InterposedOps {
    PagemapOps ops;
    FaultInjectingDevice* self;
    const PagemapOps* inner;
  };
  static_assert(std::is_standard_layout_v<InterposedOps>);
  static const InterposedOps& Interposed(const Pagemap* pgmap) {
    return *reinterpret_cast<const InterposedOps*>(pgmap->ops);
  }
  static void PageFree(Page* page) {
    const InterposedOps& io = Interposed(page->pgmap);
    io.self->CountPageFree(page->pfn);
    io.inner->page_free(page);
  }
  static absl::Status PageFault(VmFault* vmf) { return Interposed(vmf->page->pgmap).inner->page_fault(vmf); }

  void CountPageFree(uint64_t pfn) {
    {
      std::lock_guard<std::mutex> lock(free_mu_);
      ++free_counts_[pfn];
    }
    free_total_.fetch_add(1, std::memory_order_relaxed);
  }

  const std::unique_ptr<Device> inner_;
  const int ordinal_;
  CopyEngine* const saved_engine_;  // the pagemap's engine before the decorator
  Schedule schedules_[testing::kInjectSites];
  InjectingCopyEngine engine_;
  InterposedOps ops_{};
  // page_free accounting, for tests; this lock is taken only with fault injection on.
  mutable std::mutex free_mu_;
  absl::flat_hash_map<uint64_t, uint64_t> free_counts_;  // guarded by free_mu_
  std::atomic<uint64_t> free_total_{0};
};

class FaultInjectingBackend final : public Backend {
 public:
  FaultInjectingBackend(std::unique_ptr<Backend> inner, testing::InjectSpec spec)
      : inner_(std::move(inner)), spec_(std::move(spec)) {}

  std::string_view name() const override { return inner_->name(); }
  int device_count() const override { return inner_->device_count(); }
  absl::StatusOr<std::unique_ptr<Device>> OpenDevice(int ordinal) override {
    for (const testing::InjectRule& r : spec_.rules) {
      if (r.device >= inner_->device_count()) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "uhmm: fault_injection (UHMM_INJECT): a %s rule names device %d, but the %s backend has "
            "%d device(s)",
            SiteName(r.site), r.device, std::string(inner_->name()), inner_->device_count()));
      }
    }
    absl::StatusOr<std::unique_ptr<Device>> dev = inner_->OpenDevice(ordinal);
    if (!dev.ok()) return dev.status();
    auto wrapped = std::make_unique<FaultInjectingDevice>(std::move(*dev), ordinal);
    for (const testing::InjectRule& r : spec_.rules) {
      if (r.device < 0 || r.device == ordinal) wrapped->FailNext(r.site, r.count, r.after);
    }
    return std::unique_ptr<Device>(std::move(wrapped));
  }
  absl::StatusOr<uintptr_t> ReserveAddressRange(size_t bytes) override {
    return inner_->ReserveAddressRange(bytes);
  }
  void ReleaseAddressRange(uintptr_t start, size_t bytes) override {
    inner_->ReleaseAddressRange(start, bytes);
  }
  bool AbandonAddressRange(uintptr_t start, size_t bytes) override {
    return inner_->AbandonAddressRange(start, bytes);
  }
  bool pins_host_views() const override { return inner_->pins_host_views(); }
  absl::Status RegisterHostView(void* view, size_t bytes) override {
    return inner_->RegisterHostView(view, bytes);
  }
  void UnregisterHostView(void* view, size_t bytes) override { inner_->UnregisterHostView(view, bytes); }
  bool PeerAccess(int device, int owner) const override { return inner_->PeerAccess(device, owner); }
  absl::Status SetLaunchListener(LaunchListener* listener) override {
    return inner_->SetLaunchListener(listener);
  }

 private:
  const std::unique_ptr<Backend> inner_;
  const testing::InjectSpec spec_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> Wrap(std::unique_ptr<Backend> backend, std::string_view spec) {
  absl::StatusOr<testing::InjectSpec> parsed = testing::ParseInjectSpec(spec);
  if (!parsed.ok()) return parsed.status();
  if (!parsed->enabled) return backend;
  return std::unique_ptr<Backend>(new FaultInjectingBackend(std::move(backend), std::move(*parsed)));
}

Device* Unwrap(Device* device) {
  auto* d = dynamic_cast<FaultInjectingDevice*>(device);
  return d != nullptr ? &d->inner() : device;
}

}  // namespace fault_injection
}  // namespace uhmm
