// For tests and samples: the test hooks of a runtime's device, whatever its backend.
#ifndef UHMM_RUNTIME_TESTING_H_
#define UHMM_RUNTIME_TESTING_H_

#include "uhmm/backend.h"
#include "uhmm/uhmm.hpp"

namespace uhmm {

// nullptr when `device` does not exist or its backend has no hooks.
DeviceTestHooks* DeviceHooks(Runtime& rt, int device);

}  // namespace uhmm

#endif  // UHMM_RUNTIME_TESTING_H_
