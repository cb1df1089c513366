// Thread objects a fork child inherits from its parent. Their threads exist only in the parent:
// they must never be joined or detached, and a joinable std::thread must never be destroyed.
// AbandonThreads keeps them for good without allocating: a fork child must not allocate, because
// another parent thread may have held the allocator's locks at the clone (glibc resets its own;
// a sanitizer's allocator does not, and the child deadlocked there under ASan).
#ifndef UHMM_RUNTIME_PROCESS_ABANDONED_THREADS_H_
#define UHMM_RUNTIME_PROCESS_ABANDONED_THREADS_H_

#include <thread>
#include <vector>

namespace uhmm {

// Moves every element of `threads` into process-lifetime storage and clears the vector (which
// keeps its buffer: no allocation, no free).
void AbandonThreads(std::vector<std::thread>& threads);

}  // namespace uhmm

#endif  // UHMM_RUNTIME_PROCESS_ABANDONED_THREADS_H_
