// Backend selection and device opening; see device_table.h.
#include "runtime/mm/device_table.h"

#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace uhmm {

absl::StatusOr<std::unique_ptr<Backend>> SelectBackend(const Config& config) {
  std::vector<std::string> tried;
  for (const BackendEntry& entry : RegisteredBackends()) {
    if (!config.backend.empty() && entry.name != config.backend) continue;
    absl::StatusOr<std::unique_ptr<Backend>> b = entry.create(config);
    if (b.ok() && (*b)->device_count() > 0) return std::move(*b);
    // A backend the configuration names that rejects the configuration (a device ordinal it does
    // not have, say) is a mistake to fix, not a missing driver to fall back from.
    if (!config.backend.empty() && absl::IsInvalidArgument(b.status())) {
      absl::string_view why = b.status().message();
      if (why.substr(0, 6) == "uhmm: ") why.remove_prefix(6);
      return absl::InvalidArgumentError(absl::StrFormat("uhmm: backend %s: %s", entry.name, why));
    }
    tried.push_back(
        absl::StrFormat("%s: %s", entry.name, b.ok() ? "no device" : std::string(b.status().message())));
  }
  if (!config.backend.empty() && tried.empty()) {
    std::vector<std::string> names;
    for (const BackendEntry& e : RegisteredBackends()) names.emplace_back(e.name);
    return absl::InvalidArgumentError(
        absl::StrFormat("uhmm: unknown backend '%s' (UHMM_BACKEND or Config::backend); built-in backends: %s",
                        config.backend, absl::StrJoin(names, ", ")));
  }
  return absl::UnavailableError(absl::StrFormat("uhmm: no usable backend (%s)", absl::StrJoin(tried, "; ")));
}

absl::StatusOr<std::unique_ptr<DeviceTable>> DeviceTable::Open(Backend& backend, const Config& config,
                                                               Evictor* evictor) {
  // Runtime ordinals fit a 64-bit device mask (advice, launch work).
  if (backend.device_count() > 64) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm: backend %s has %d devices; uhmm serves at most 64", backend.name(), backend.device_count()));
  }
  auto table = std::make_unique<DeviceTable>();
  if (backend.device_count() > 1) {
    table->owners_ = std::make_unique<BlockOwners>();
    table->windows_ = std::make_unique<PeerWindows>(backend);
  }
  for (int i = 0; i < backend.device_count(); ++i) {
    auto ds = std::make_unique<DeviceState>();
    ds->ordinal = i;
    ds->evictor = evictor;
    absl::StatusOr<std::unique_ptr<Device>> dev = backend.OpenDevice(i);
    if (!dev.ok()) return dev.status();
    ds->device = std::move(*dev);
    Pagemap& pgmap = ds->device->pagemap();
    if (pgmap.ops == nullptr || pgmap.ops->page_free == nullptr || pgmap.ops->page_fault == nullptr) {
      return absl::InternalError(absl::StrFormat(
          "uhmm: backend %s device %d registered a pagemap without page_free/page_fault", backend.name(), i));
    }
    pgmap.device = i;
    pgmap.internal = ds.get();
    size_t pool_bytes =
        config.device_pool_bytes ? config.device_pool_bytes : ds->device->default_pool_bytes();
    if (config.device_pool_fraction > 0) {
      absl::StatusOr<size_t> free_bytes = ds->device->free_memory();
      if (!free_bytes.ok()) return free_bytes.status();
      pool_bytes = static_cast<size_t>(static_cast<double>(*free_bytes) * config.device_pool_fraction) &
                   ~(kBlockSize - 1);
      if (pool_bytes == 0) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "uhmm: device_pool_fraction %g of device %d's %u free bytes is less than one 2 MiB chunk",
            config.device_pool_fraction, i, *free_bytes));
      }
    }
    ds->pool = std::make_unique<PagePool>(ds->device.get(), &pgmap, pool_bytes / kBlockSize,
                                          table->owners_.get(), table->windows_.get());
    table->devices_.push_back(std::move(ds));
  }
  for (int k = 0; k < table->count(); ++k) {
    for (int j = 0; j < table->count(); ++j) {
      if (j == k || backend.PeerAccess(k, j)) {
        (*table)[k].reaches |= uint64_t{1} << j;
      } else {
        (*table)[j].unreached_by |= uint64_t{1} << k;
      }
    }
  }
  return table;
}

void DeviceTable::AbandonAfterFork() {
  if (windows_) windows_->Abandon();
  for (auto& ds : devices_) {
    (void)ds->pool.release();
    (void)ds->device.release();
  }
}

}  // namespace uhmm
