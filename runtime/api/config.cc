// Config defaults, UHMM_* environment variables and validation.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "uhmm/backend.h"
#include "uhmm/testing.h"
#include "uhmm/uhmm.hpp"

namespace uhmm {

absl::StatusOr<std::vector<int>> ParseDeviceList(std::string_view list, std::string_view what) {
  std::vector<int> out;
  if (list.empty()) return out;
  if (absl::AsciiStrToLower(std::string(list)) == "all") return std::vector<int>{kAllDevices};
  for (absl::string_view item : absl::StrSplit(absl::string_view(list.data(), list.size()), ',')) {
    int v = -1;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(item), &v) || v < 0 ||
        std::find(out.begin(), out.end(), v) != out.end()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "uhmm: %s is \"%s\"; use all, or device ordinals separated by commas, each once (0,2)", what,
          list));
    }
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<std::vector<int>> ChooseDevices(std::string_view list, std::string_view list_knob, int single,
                                               std::string_view single_knob, const std::vector<int>& all,
                                               int count, std::string_view noun) {
  absl::StatusOr<std::vector<int>> chosen = ParseDeviceList(list, list_knob);
  if (!chosen.ok()) return chosen.status();
  const bool from_list = !chosen->empty();
  if (!from_list) *chosen = {single};
  if (*chosen == std::vector<int>{kAllDevices}) *chosen = all;
  for (int d : *chosen) {
    if (d < 0 || d >= count) {
      return absl::InvalidArgumentError(
          absl::StrFormat("uhmm: %s names %s %d, which this machine does not have (it has %d: 0..%d)",
                          from_list ? list_knob : single_knob, noun, d, count, count - 1));
    }
  }
  return chosen;
}

namespace {

// Parses "123", "64K", "16M", "2G" (binary units).
bool ParseBytes(std::string_view text, size_t* out) {
  std::string s = absl::AsciiStrToUpper(
      std::string(absl::StripAsciiWhitespace(absl::string_view(text.data(), text.size()))));
  if (!s.empty() && s.back() == 'B') s.pop_back();
  size_t shift = 0;
  if (!s.empty()) {
    switch (s.back()) {
      case 'K':
        shift = 10;
        break;
      case 'M':
        shift = 20;
        break;
      case 'G':
        shift = 30;
        break;
      default:
        break;
    }
    if (shift) s.pop_back();
  }
  uint64_t v = 0;
  if (!absl::SimpleAtoi(s, &v) || (shift && v > (UINT64_MAX >> shift))) return false;
  *out = static_cast<size_t>(v << shift);
  return true;
}

}  // namespace

Config Config::FromEnv() {
  Config c;
  std::string errors;
  auto note = [&](const char* var, const char* value, const char* want) {
    errors += absl::StrFormat("%s%s='%s' is not %s", errors.empty() ? "" : "; ", var, value, want);
  };
  if (const char* v = std::getenv("UHMM_BACKEND"); v && *v) c.backend = v;
  if (const char* v = std::getenv("UHMM_FAULT_THREADS"); v && *v) {
    if (!absl::SimpleAtoi(v, &c.fault_threads)) note("UHMM_FAULT_THREADS", v, "an integer");
  }
  if (const char* v = std::getenv("UHMM_DEVICE_POOL_BYTES"); v && *v) {
    std::string_view text(v);
    if (text.back() == '%') {
      double pct = 0;
      if (!absl::SimpleAtod(std::string(text.substr(0, text.size() - 1)), &pct)) {
        note("UHMM_DEVICE_POOL_BYTES", v, "a size like 64M or a percentage like 50%");
      }
      c.device_pool_fraction = pct / 100.0;
    } else if (!ParseBytes(v, &c.device_pool_bytes)) {
      note("UHMM_DEVICE_POOL_BYTES", v, "a size like 64M or a percentage like 50%");
    }
  }
  if (const char* v = std::getenv("UHMM_FAULT_GRANULARITY"); v && *v) {
    if (!ParseBytes(v, &c.fault_granularity)) note("UHMM_FAULT_GRANULARITY", v, "a size like 64K");
  }
  if (const char* v = std::getenv("UHMM_HOST_DEVICES"); v && *v) {
    if (!absl::SimpleAtoi(v, &c.host_devices)) note("UHMM_HOST_DEVICES", v, "an integer");
  }
  auto flag = [&](const char* var, bool* out) {
    const char* v = std::getenv(var);
    if (v == nullptr || *v == 0) return;
    std::string m = absl::AsciiStrToLower(v);
    if (m == "1" || m == "on" || m == "true") {
      *out = true;
    } else if (m == "0" || m == "off" || m == "false") {
      *out = false;
    } else {
      note(var, v, "1 or 0");
    }
  };
  flag("UHMM_TRANSPARENT_LAUNCH", &c.transparent_launch);
  flag("UHMM_HOST_SAME_ADDRESS", &c.host_same_address);
  flag("UHMM_STATS", &c.print_stats);
  flag("UHMM_FAULT_RECHECK", &c.fault_recheck);
  flag("UHMM_READ_DUPLICATION", &c.read_duplication);
  if (const char* v = std::getenv("UHMM_TRACE"); v && *v) c.trace_path = v;
  auto integer = [&](const char* var, int* out) {
    if (const char* v = std::getenv(var); v && *v && !absl::SimpleAtoi(v, out)) note(var, v, "an integer");
  };
  auto bytes = [&](const char* var, size_t* out) {
    if (const char* v = std::getenv(var); v && *v && !ParseBytes(v, out)) note(var, v, "a size like 32M");
  };
  // A renamed knob: its new name wins over the deprecated old one when both are set.
  auto renamed = [](const char* var, const char* old_name) {
    const char* v = std::getenv(var);
    return v && *v ? var : old_name;
  };
  bytes("UHMM_READAHEAD", &c.readahead_bytes);
  integer(renamed("UHMM_MIGRATION_THREADS", "UHMM_PREFETCH_THREADS"), &c.migration_threads);
  integer(renamed("UHMM_GROWTH_THRESHOLD", "UHMM_PREFETCH_THRESHOLD"), &c.growth_threshold);
  integer("UHMM_THRASHING_THRESHOLD", &c.thrashing_threshold);
  integer("UHMM_THRASHING_LAPSE_US", &c.thrashing_lapse_us);
  bytes("UHMM_HUGETLB_MIN", &c.hugetlb_min_bytes);
  integer("UHMM_FAULT_SPIN_US", &c.fault_spin_us);
  integer("UHMM_CUDA_DEVICE", &c.cuda_device);
  integer("UHMM_ZE_DEVICE", &c.ze_device);
  if (const char* v = std::getenv("UHMM_CUDA_DEVICES"); v && *v) c.cuda_devices = v;
  if (const char* v = std::getenv("UHMM_ZE_DEVICES"); v && *v) c.ze_devices = v;
  if (const char* v = std::getenv("UHMM_CUDA_DRIVER"); v && *v) c.cuda_driver = v;
  if (const char* v = std::getenv("UHMM_CUPTI_LIBRARY"); v && *v) c.cupti_library = v;
  if (const char* v = std::getenv("UHMM_ZE_LOADER"); v && *v) c.ze_loader = v;
  if (const char* v = std::getenv("UHMM_HUGETLB"); v && *v) {
    std::string m = absl::AsciiStrToLower(v);
    if (m == "auto") {
      c.hugetlb = HugetlbMode::kAuto;
    } else if (m == "never" || m == "0") {
      c.hugetlb = HugetlbMode::kNever;
    } else if (m == "always" || m == "1") {
      c.hugetlb = HugetlbMode::kAlways;
    } else {
      note("UHMM_HUGETLB", v, "auto, never or always");
    }
  }
  if (const char* v = std::getenv("UHMM_PLACEMENT"); v && *v) {
    std::string m = absl::AsciiStrToLower(v);
    if (m == "auto" || m == "1") {
      c.placement = true;
    } else if (m == "none" || m == "0") {
      c.placement = false;
    } else {
      note("UHMM_PLACEMENT", v, "auto or none");
    }
  }
  if (const char* v = std::getenv("UHMM_SIGBUS_MODE"); v && *v) {
    std::string m = absl::AsciiStrToLower(v);
    if (m == "auto") {
      c.sigbus_mode = SigbusMode::kAuto;
    } else if (m == "poison") {
      c.sigbus_mode = SigbusMode::kPoison;
    } else if (m == "tkill") {
      c.sigbus_mode = SigbusMode::kTkill;
    } else {
      note("UHMM_SIGBUS_MODE", v, "auto, poison or tkill");
    }
  }
  if (const char* v = std::getenv("UHMM_INJECT"); v && *v) c.fault_injection = v;
  c.env_error = errors;
  return c;
}

absl::Status Config::Validate() const {
  if (!env_error.empty()) return absl::InvalidArgumentError("uhmm: bad environment: " + env_error);
  if (absl::Status s = testing::ParseInjectSpec(fault_injection).status(); !s.ok()) return s;
  if (fault_threads < 1 || fault_threads > 64) {
    return absl::InvalidArgumentError(
        absl::StrFormat("uhmm: fault_threads (UHMM_FAULT_THREADS) is %d; use 1..64", fault_threads));
  }
  if (device_pool_bytes % kBlockSize != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm: device_pool_bytes (UHMM_DEVICE_POOL_BYTES) is %u; use a multiple of 2 MiB (0 = default)",
        device_pool_bytes));
  }
  if (!(device_pool_fraction >= 0 && device_pool_fraction <= 1) ||  // NaN too
      (device_pool_fraction > 0 && device_pool_bytes != 0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm: device_pool_fraction is %g; use (0, 1] of free device memory, and not together with "
        "device_pool_bytes",
        device_pool_fraction));
  }
  if (fault_granularity < kPageSize || fault_granularity > kBlockSize ||
      (fault_granularity & (fault_granularity - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm: fault_granularity (UHMM_FAULT_GRANULARITY) is %u; use a power of two in 4K..2M",
        fault_granularity));
  }
  if (host_devices < 1 || host_devices > 16) {
    return absl::InvalidArgumentError(
        absl::StrFormat("uhmm: host_devices (UHMM_HOST_DEVICES) is %d; use 1..16", host_devices));
  }
  if (migration_threads < 0 || migration_threads > 64) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm: migration_threads (UHMM_MIGRATION_THREADS, formerly UHMM_PREFETCH_THREADS) is %d; use "
        "0..64",
        migration_threads));
  }
  if (readahead_bytes % kBlockSize != 0 || readahead_bytes > (size_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm: readahead_bytes (UHMM_READAHEAD) is %u; use a multiple of 2 MiB up to 1G (0 = off)",
        readahead_bytes));
  }
  if (growth_threshold < 0 || growth_threshold > 100) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm: growth_threshold (UHMM_GROWTH_THRESHOLD, formerly UHMM_PREFETCH_THRESHOLD) is %d; "
        "use a percentage 0..100 (0 = off)",
        growth_threshold));
  }
  if (thrashing_threshold < 0 || thrashing_lapse_us < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm: thrashing_threshold %d / thrashing_lapse_us %d (UHMM_THRASHING_*) must not be negative",
        thrashing_threshold, thrashing_lapse_us));
  }
  if (hugetlb != HugetlbMode::kAuto && hugetlb != HugetlbMode::kNever && hugetlb != HugetlbMode::kAlways) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm: hugetlb (UHMM_HUGETLB) is %d; use auto (%d), never (%d) or always (%d)",
        static_cast<int>(hugetlb), UHMM_HUGETLB_AUTO, UHMM_HUGETLB_NEVER, UHMM_HUGETLB_ALWAYS));
  }
  if (sigbus_mode != SigbusMode::kAuto && sigbus_mode != SigbusMode::kPoison &&
      sigbus_mode != SigbusMode::kTkill) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm: sigbus_mode (UHMM_SIGBUS_MODE) is %d; use auto (%d), poison (%d) or tkill (%d)",
        static_cast<int>(sigbus_mode), UHMM_SIGBUS_AUTO, UHMM_SIGBUS_POISON, UHMM_SIGBUS_TKILL));
  }
  if (fault_spin_us < -1 || fault_spin_us > 1000000) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm: fault_spin_us (UHMM_FAULT_SPIN_US) is %d; use -1 (auto) or 0..1000000", fault_spin_us));
  }
  // The upper bounds depend on the machine: the backends check them when they open.
  if (cuda_device < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm: cuda_device (UHMM_CUDA_DEVICE) is %d; use a CUDA device ordinal, 0 or more", cuda_device));
  }
  if (absl::StatusOr<std::vector<int>> list =
          ParseDeviceList(cuda_devices, "cuda_devices (UHMM_CUDA_DEVICES)");
      !list.ok()) {
    return list.status();
  }
  if (absl::StatusOr<std::vector<int>> list = ParseDeviceList(ze_devices, "ze_devices (UHMM_ZE_DEVICES)");
      !list.ok()) {
    return list.status();
  }
  if (ze_device < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm: ze_device (UHMM_ZE_DEVICE) is %d; use a Level Zero GPU index, 0 or more", ze_device));
  }
  return absl::OkStatus();
}

}  // namespace uhmm
