// Checks shared by the backends that map device memory at the managed addresses (one pointer).
// Header-only; holds no backend types.
#ifndef UHMM_BACKENDS_COMMON_ONE_POINTER_H_
#define UHMM_BACKENDS_COMMON_ONE_POINTER_H_

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"

namespace uhmm {

// One pointer relies on the driver leaving the CPU side of a range alone when it maps device memory
// at the same addresses. After `driver_call` mapped device memory at `addr`, the CPU mapping there
// must still be the runtime's view ("uhmm-range" in /proc/self/maps); FAILED_PRECONDITION with the
// mapping it found otherwise. OK when /proc/self/maps cannot be read.
inline absl::Status CheckManagedViewIntact(uintptr_t addr, std::string_view driver_call) {
  std::FILE* f = std::fopen("/proc/self/maps", "re");
  if (f == nullptr) return absl::OkStatus();  // cannot tell; do not fail for that
  char line[512];
  absl::Status result = absl::OkStatus();
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line, "%lx-%lx", &lo, &hi) != 2 || addr < lo || addr >= hi) continue;
    if (std::strstr(line, "uhmm-range") == nullptr) {
      result = absl::FailedPreconditionError(absl::StrFormat(
          "after %s at %#x the CPU mapping there is no longer uhmm's view (%s): this driver replaces "
          "host mappings of the device range, so one pointer cannot work with it",
          driver_call, addr, std::string(absl::StripTrailingAsciiWhitespace(line))));
    }
    break;
  }
  std::fclose(f);
  return result;
}

}  // namespace uhmm

#endif  // UHMM_BACKENDS_COMMON_ONE_POINTER_H_
