// uhmm testing API: make the device fail on purpose, so that a program can test its own handling of
// device errors (a migration that returns an error, a CPU access that ends in SIGBUS), and let "the
// device" write and read its memory the way a kernel would. Not part of the backend contract
// (uhmm/backend.h); see docs/TESTING.md.
//
// Fault injection is off unless the runtime is created with it on: Config::fault_injection, or
// UHMM_INJECT in the environment (which is also how C programs turn it on). The spec:
//
//   on                                    installed, nothing scheduled (inject from the program)
//   copy_d2h:1                            the first device -> host copy batch fails
//   copy_h2d:2:after=3,chunk_alloc:all:device=1
//
// Rules are SITE:COUNT[:after=N][:device=N], comma separated. SITE is copy_h2d (a batch of
// host -> device copies: migrations to a device), copy_d2h (device -> host: CPU faults, migrations
// home, eviction) or chunk_alloc (a 2 MiB chunk of device memory for the page pool). COUNT is a
// number of operations, or "all". after=N lets N operations at that site succeed first. device=N
// limits the rule to device N (default: every device). A bad spec makes runtime creation fail with
// INVALID_ARGUMENT (UHMM_ERROR_INVALID_ARGUMENT) and a message that says what is wrong.
#ifndef UHMM_TESTING_H_
#define UHMM_TESTING_H_

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "uhmm/uhmm.hpp"

namespace uhmm::testing {

// Where a failure is injected.
enum class InjectSite {
  kCopyHostToDevice = 0,  // copy_h2d: a batch of host -> device copies (or peer -> device)
  kCopyDeviceToHost = 1,  // copy_d2h: a batch of device -> host copies
  kChunkAlloc = 2,        // chunk_alloc: a 2 MiB device memory chunk for the page pool
};
inline constexpr int kInjectSites = 3;
// A count meaning "every operation from now on".
inline constexpr int64_t kInjectAll = -1;

// One rule of a spec: let `after` operations at `site` succeed, then fail `count` (kInjectAll:
// every one), on device `device` (-1: every device).
struct InjectRule {
  InjectSite site = InjectSite::kCopyDeviceToHost;
  int64_t count = 0;
  int64_t after = 0;
  int device = -1;
};

// A parsed Config::fault_injection / UHMM_INJECT. `enabled`: the runtime installs fault injection
// ("on" or any rule); false for "" and "off". A later rule for the same site and device replaces an
// earlier one.
struct InjectSpec {
  bool enabled = false;
  std::vector<InjectRule> rules;
};

// Parses a spec (syntax above): INVALID_ARGUMENT saying which part is wrong and what is expected.
absl::StatusOr<InjectSpec> ParseInjectSpec(std::string_view text);

// Fault injection into one device of a runtime created with fault injection on, and what it saw.
// A failed copy batch copies nothing and completes with an error (ABORTED), as on a lost device; a
// failed chunk allocation returns ABORTED. The runtime then behaves as for a real device error:
// migrations return the error, a CPU access whose page cannot come back ends in SIGBUS
// (docs/RELIABILITY.md).
class FaultInjector {
 public:
  virtual ~FaultInjector() = default;
  // Schedules failures at `site` on this device: `after` operations succeed, then `count` fail
  // (kInjectAll: every one; 0 cancels). Replaces what was scheduled there.
  virtual void FailNext(InjectSite site, int64_t count, int64_t after = 0) = 0;
  // Operations seen at `site` (failed or not), and failures injected there.
  virtual uint64_t attempts(InjectSite site) const = 0;
  virtual uint64_t injected(InjectSite site) const = 0;
  // How many times the device's page_free ran for device page `pfn`, and for all its pages.
  virtual uint64_t page_free_count(uint64_t pfn) const = 0;
  virtual uint64_t page_free_total() const = 0;
};

// What a kernel does to device memory: device-side writes and reads at device addresses
// (Runtime::DeviceAddress), ordered after the copies already queued, done on return. Every
// built-in backend offers it; it needs no fault injection.
class DeviceAccess {
 public:
  virtual ~DeviceAccess() = default;
  virtual absl::Status DeviceWrite(uint64_t device_addr, const void* src, size_t bytes) = 0;
  virtual absl::Status DeviceRead(uint64_t device_addr, void* dst, size_t bytes) = 0;
};

// Device `device` of `rt`: its fault injector (nullptr when the runtime was created without fault
// injection, or there is no such device) and its device-side access (nullptr when there is no such
// device or its backend has none). They live as long as the runtime.
FaultInjector* Faults(Runtime& rt, int device);
DeviceAccess* Access(Runtime& rt, int device);

}  // namespace uhmm::testing

#endif  // UHMM_TESTING_H_
