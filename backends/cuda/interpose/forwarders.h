// The interposing libcuda.so.1's forwarder table: every name it exports through a trampoline, in
// slot order (forwarders.S jumps through slot i for name i). Generated from the toolkit's cuda.h
// by gen_forwarders.py into forwarders.inc, on the include path of those who use it.
#ifndef UHMM_BACKENDS_CUDA_INTERPOSE_FORWARDERS_H_
#define UHMM_BACKENDS_CUDA_INTERPOSE_FORWARDERS_H_

#include <cstddef>

namespace uhmm::interpose {

enum ForwarderFlags : unsigned {
  kCurrent = 1u << 0,  // the form this cuda.h resolves its base name to
  kPtds = 1u << 1,     // a per-thread default stream form (_ptds, _ptsz)
};

struct Forwarder {
  const char* name;  // the exported symbol
  const char* base;  // the name cuGetProcAddress knows it by
  unsigned flags;    // ForwarderFlags
  int version;       // the CUDA version that introduced this form (cudaTypedefs.h); 0: unknown
};

inline constexpr Forwarder kForwarders[] = {
#include "forwarders.inc"
};
inline constexpr size_t kForwarderCount = sizeof(kForwarders) / sizeof(kForwarders[0]);

}  // namespace uhmm::interpose

#endif  // UHMM_BACKENDS_CUDA_INTERPOSE_FORWARDERS_H_
