// The testing entry points of runtime/api/testing.h.
#include "runtime/api/testing.h"

#include <sys/syscall.h>
#include <unistd.h>

#include "runtime/api/runtime_impl.h"
#include "runtime/fault/cpu_fault.h"
#include "runtime/fault/fault_service.h"
#include "runtime/mm/device_table.h"

namespace uhmm {

DeviceTestHooks* DeviceHooks(Runtime& rt, int device) {
  const Mm& mm = static_cast<RuntimeImpl&>(rt).mm();
  if (!mm.devices->valid(device)) return nullptr;
  return (*mm.devices)[device].device->test_hooks();
}

void InjectFaultMessage(Runtime& rt, const void* addr, bool stale) {
  const Mm& mm = static_cast<RuntimeImpl&>(rt).mm();
  const uint32_t now = mm.faults->read_seq();
  mm.cpu_fault->Handle(reinterpret_cast<uintptr_t>(addr), static_cast<uint32_t>(syscall(SYS_gettid)),
                       stale ? now : now + 1);
}

}  // namespace uhmm
