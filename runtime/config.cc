// Config defaults, UHMM_* environment variables and validation.
#include <cstdlib>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "uhmm/uhmm.hpp"

namespace uhmm {
namespace {

// Parses "123", "64K", "16M", "2G" (binary units).
bool ParseBytes(std::string_view text, size_t* out) {
  std::string s = absl::AsciiStrToUpper(std::string(absl::StripAsciiWhitespace(absl::string_view(text.data(), text.size()))));
  if (!s.empty() && s.back() == 'B') s.pop_back();
  size_t shift = 0;
  if (!s.empty()) {
    switch (s.back()) {
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      default: break;
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
    if (!ParseBytes(v, &c.device_pool_bytes)) note("UHMM_DEVICE_POOL_BYTES", v, "a size like 64M");
  }
  if (const char* v = std::getenv("UHMM_FAULT_GRANULARITY"); v && *v) {
    if (!ParseBytes(v, &c.fault_granularity)) note("UHMM_FAULT_GRANULARITY", v, "a size like 64K");
  }
  if (const char* v = std::getenv("UHMM_HOST_DEVICES"); v && *v) {
    if (!absl::SimpleAtoi(v, &c.host_devices)) note("UHMM_HOST_DEVICES", v, "an integer");
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
  c.env_error = errors;
  return c;
}

absl::Status Config::Validate() const {
  if (!env_error.empty()) return absl::InvalidArgumentError("uhmm: bad environment: " + env_error);
  if (fault_threads < 1 || fault_threads > 64) {
    return absl::InvalidArgumentError(
        absl::StrFormat("uhmm: fault_threads (UHMM_FAULT_THREADS) is %d; use 1..64", fault_threads));
  }
  if (device_pool_bytes % kBlockSize != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uhmm: device_pool_bytes (UHMM_DEVICE_POOL_BYTES) is %u; use a multiple of 2 MiB (0 = default)",
        device_pool_bytes));
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
  return absl::OkStatus();
}

}  // namespace uhmm
