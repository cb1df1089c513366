// fork() semantics for managed memory: pthread_atfork handlers bring device data home before the
// fork, give the child a private copy of every range, and hold the parent until the copy is done.
#ifndef UHMM_RUNTIME_FORK_H_
#define UHMM_RUNTIME_FORK_H_

namespace uhmm {
class RuntimeImpl;
void RegisterForFork(RuntimeImpl* rt);
void UnregisterForFork(RuntimeImpl* rt);
}  // namespace uhmm

#endif  // UHMM_RUNTIME_FORK_H_
