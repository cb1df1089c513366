// The testing entry points of runtime/api/testing.h.
#include "runtime/api/testing.h"

#include <sys/syscall.h>
#include <unistd.h>

#include "runtime/api/runtime_impl.h"
#include "runtime/fault/cpu_fault.h"
#include "runtime/fault/fault_service.h"
#include "runtime/mm/device_table.h"

namespace uhmm {

Device* RuntimeDevice(Runtime& rt, int device) {
  const Mm& mm = static_cast<RuntimeImpl&>(rt).mm();
  if (!mm.devices->valid(device)) return nullptr;
  return (*mm.devices)[device].device.get();
}

void InjectFaultMessage(Runtime& rt, const void* addr, bool stale) {
  const Mm& mm = static_cast<RuntimeImpl&>(rt).mm();
  const uint32_t now = mm.faults->read_seq();
  mm.cpu_fault->Handle(reinterpret_cast<uintptr_t>(addr), static_cast<uint32_t>(syscall(SYS_gettid)),
                       stale ? now : now + 1);
}

UffdCalls UffdCallCounts(const Runtime& rt) {
  const Counters& c = *static_cast<const RuntimeImpl&>(rt).mm().counters;
  UffdCalls out;
  out.continues = c.uffd_continue.load();
  out.wakes = c.uffd_wake.load();
  out.zeropages = c.uffd_zeropage.load();
  out.poisons = c.uffd_poison.load();
  out.eexist = c.uffd_eexist.load();
  out.fault_migrations = c.fault_migrations.load();
  return out;
}

void HoldFaultReads(Runtime& rt, bool hold) {
  static_cast<RuntimeImpl&>(rt).mm().faults->HoldReadsForTesting(hold);
}

}  // namespace uhmm
