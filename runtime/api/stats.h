// UHMM_STATS=1: a runtime's counters, to stderr, when it is destroyed or at process exit.
#ifndef UHMM_RUNTIME_API_STATS_H_
#define UHMM_RUNTIME_API_STATS_H_

#include "uhmm/uhmm.hpp"

namespace uhmm {

class RuntimeImpl;

void PrintStats(const Runtime& rt);
// Adds (or removes) a runtime to those that print their counters at process exit.
void StatsAtExit(RuntimeImpl* rt, bool add);

}  // namespace uhmm

#endif  // UHMM_RUNTIME_API_STATS_H_
