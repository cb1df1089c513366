// NVTX ranges in a "uhmm" domain around the CUDA backend's migrations and fault service, so that
// Nsight Systems shows them on the timeline next to the application's kernels. NVTX 3 is
// header-only: without a tool attached (nsys sets NVTX_INJECTION64_PATH) each range costs a
// branch on a null function pointer.
#ifndef UHMM_BACKENDS_CUDA_NVTX_RANGES_H_
#define UHMM_BACKENDS_CUDA_NVTX_RANGES_H_

#include <nvtx3/nvToolsExt.h>

#include "uhmm/pagemap.h"

namespace uhmm::cuda {

class NvtxRange {
 public:
  explicit NvtxRange(const char* message) {
    nvtxEventAttributes_t a = {};
    a.version = NVTX_VERSION;
    a.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    a.messageType = NVTX_MESSAGE_TYPE_ASCII;
    a.message.ascii = message;
    nvtxDomainRangePushEx(Domain(), &a);
  }
  ~NvtxRange() { nvtxDomainRangePop(Domain()); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;

  // "uhmm migrate to device (prefetch)", ...
  static const char* MigrationName(bool to_device, MigrateCause cause) {
    static const char* const kTo[] = {"uhmm to device (prefetch)",  "uhmm to device (fault)",
                                      "uhmm to device (eviction)",  "uhmm to device (address change)",
                                      "uhmm to device (fork)",      "uhmm to device (launch)",
                                      "uhmm to device (read-ahead)"};
    static const char* const kFrom[] = {"uhmm to host (prefetch)",  "uhmm to host (fault)",
                                        "uhmm to host (eviction)",  "uhmm to host (address change)",
                                        "uhmm to host (fork)",      "uhmm to host (launch)",
                                        "uhmm to host (read-ahead)"};
    const auto i = static_cast<size_t>(cause);
    if (i >= sizeof(kTo) / sizeof(kTo[0])) return to_device ? "uhmm to device" : "uhmm to host";
    return to_device ? kTo[i] : kFrom[i];
  }

 private:
  static nvtxDomainHandle_t Domain() {
    static const nvtxDomainHandle_t d = nvtxDomainCreateA("uhmm");
    return d;
  }
};

}  // namespace uhmm::cuda

#endif  // UHMM_BACKENDS_CUDA_NVTX_RANGES_H_
