// For tests and samples: the test hooks of a runtime's device, whatever its backend.
#ifndef UHMM_RUNTIME_TESTING_H_
#define UHMM_RUNTIME_TESTING_H_

#include "uhmm/backend.h"
#include "uhmm/uhmm.hpp"

namespace uhmm {

// nullptr when `device` does not exist or its backend has no hooks.
DeviceTestHooks* DeviceHooks(Runtime& rt, int device);

// Hands the fault service a CPU fault message for `addr` as if the kernel had sent one, read
// either before the page's block last moved to a device (`stale`: its thread has moved on) or just
// now. For tests of stale-message handling.
void InjectFaultMessage(Runtime& rt, const void* addr, bool stale);

}  // namespace uhmm

#endif  // UHMM_RUNTIME_TESTING_H_
