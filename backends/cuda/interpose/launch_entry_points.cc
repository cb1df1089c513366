// The interposer's kernel and graph launches: before the driver queues one, every managed page the
// CPU touched since the last launch goes back to the GPU (launch coherence, as libuhmm's CUPTI
// subscription does for programs that link it; here without CUPTI, so a profiler may hold it).
#define __CUDA_API_VERSION_INTERNAL 1  // every exported form declared (real_driver.h)
#include <cuda.h>

#include "backends/cuda/interpose/managed_memory.h"
#include "backends/cuda/interpose/real_driver.h"

#define UHMM_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

CUresult BeforeLaunch(const char* call, CUstream stream) {
  uhmm::interpose::ManagedMemory::Use mm = uhmm::interpose::ManagedMemory::Get();
  return mm ? mm->BeforeLaunch(call, stream) : CUDA_SUCCESS;
}

}  // namespace

#define UHMM_LAUNCH(name, params, args, stream)                                \
  UHMM_EXPORT CUresult name params {                                           \
    if (CUresult r = BeforeLaunch(#name, stream); r != CUDA_SUCCESS) return r; \
    return UHMM_REAL(name) args;                                               \
  }
#define UHMM_GRID \
  unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz
UHMM_LAUNCH(cuLaunchKernel, (CUfunction f, UHMM_GRID, unsigned int shm, CUstream s, void** p, void** extra),
            (f, gx, gy, gz, bx, by, bz, shm, s, p, extra), s)
UHMM_LAUNCH(cuLaunchKernel_ptsz,
            (CUfunction f, UHMM_GRID, unsigned int shm, CUstream s, void** p, void** extra),
            (f, gx, gy, gz, bx, by, bz, shm, s, p, extra), s)
UHMM_LAUNCH(cuLaunchCooperativeKernel, (CUfunction f, UHMM_GRID, unsigned int shm, CUstream s, void** p),
            (f, gx, gy, gz, bx, by, bz, shm, s, p), s)
UHMM_LAUNCH(cuLaunchCooperativeKernel_ptsz, (CUfunction f, UHMM_GRID, unsigned int shm, CUstream s, void** p),
            (f, gx, gy, gz, bx, by, bz, shm, s, p), s)
UHMM_LAUNCH(cuLaunchKernelEx, (const CUlaunchConfig* c, CUfunction f, void** p, void** extra),
            (c, f, p, extra), c != nullptr ? c->hStream : nullptr)
UHMM_LAUNCH(cuLaunchKernelEx_ptsz, (const CUlaunchConfig* c, CUfunction f, void** p, void** extra),
            (c, f, p, extra), c != nullptr ? c->hStream : nullptr)
UHMM_LAUNCH(cuGraphLaunch, (CUgraphExec g, CUstream s), (g, s), s)
UHMM_LAUNCH(cuGraphLaunch_ptsz, (CUgraphExec g, CUstream s), (g, s), s)
UHMM_LAUNCH(cuLaunch, (CUfunction f), (f), nullptr)
UHMM_LAUNCH(cuLaunchGrid, (CUfunction f, int w, int h), (f, w, h), nullptr)
UHMM_LAUNCH(cuLaunchGridAsync, (CUfunction f, int w, int h, CUstream s), (f, w, h, s), s)
UHMM_LAUNCH(cuLaunchCooperativeKernelMultiDevice,
            (CUDA_LAUNCH_PARAMS * l, unsigned int n, unsigned int flags), (l, n, flags),
            l != nullptr && n > 0 ? l[0].hStream : nullptr)
#undef UHMM_GRID
#undef UHMM_LAUNCH
