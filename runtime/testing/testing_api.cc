// The runtime side of uhmm/testing.h: a runtime's devices, seen through the fault-injection
// decorator (backends/common/fault_injection.h) and the backends' testing::DeviceAccess.
#include "backends/common/fault_injection.h"
#include "runtime/api/runtime_impl.h"
#include "runtime/api/testing.h"
#include "uhmm/testing.h"

namespace uhmm::testing {

FaultInjector* Faults(Runtime& rt, int device) {
  return dynamic_cast<FaultInjector*>(RuntimeDevice(rt, device));
}

DeviceAccess* Access(Runtime& rt, int device) {
  Device* dev = RuntimeDevice(rt, device);
  if (dev == nullptr) return nullptr;
  return static_cast<RuntimeImpl&>(rt).FencedAccess(
      device, dynamic_cast<DeviceAccess*>(fault_injection::Unwrap(dev)));
}

}  // namespace uhmm::testing
