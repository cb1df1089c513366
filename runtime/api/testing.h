// Runtime internals that tests and the testing API (uhmm/testing.h, runtime/testing/) reach.
// Not installed.
#ifndef UHMM_RUNTIME_API_TESTING_H_
#define UHMM_RUNTIME_API_TESTING_H_

#include "uhmm/backend.h"
#include "uhmm/uhmm.hpp"

namespace uhmm {

// The Device the runtime registered as `device` (the fault-injection decorator when the runtime
// was created with fault injection on), or nullptr when there is no such device.
Device* RuntimeDevice(Runtime& rt, int device);

// Hands the fault service a CPU fault message for `addr` as if the kernel had sent one, read
// either before the page's block last moved to a device (`stale`: its thread has moved on) or just
// now. For tests of stale-message handling.
void InjectFaultMessage(Runtime& rt, const void* addr, bool stale);

// What the fault path cost so far: the runtime's resolving userfaultfd ioctls, CONTINUEs that met
// an already mapped page, and the migrations back that CPU faults made (Counters::uffd_*,
// fault_migrations). For tests that count calls per fault.
struct UffdCalls {
  uint64_t continues = 0, wakes = 0, zeropages = 0, poisons = 0, eexist = 0, fault_migrations = 0;
};
UffdCalls UffdCallCounts(const Runtime& rt);

// While held, the fault-service threads do not read the userfaultfd: faults wait in the kernel and
// the next read takes them together (FaultService::HoldReadsForTesting). Only while nothing but
// faults can be raised: no migration, free or madvise meanwhile.
void HoldFaultReads(Runtime& rt, bool hold);

}  // namespace uhmm

#endif  // UHMM_RUNTIME_API_TESTING_H_
