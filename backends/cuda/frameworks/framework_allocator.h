// uhmm memory for GPU frameworks that take an external allocator: PyTorch's CUDAPluggableAllocator
// (torch.cuda.memory.CUDAPluggableAllocator(path, "uhmm_torch_malloc", "uhmm_fw_free")) and CuPy
// (cupy.cuda.set_allocator over ctypes, uhmm_fw_malloc/uhmm_fw_free); samples/python/ shows both,
// docs/CUDA.md ("Frameworks") says what works.
//
// Under uhmm-run (the interposing libcuda.so.1 is loaded) an allocation is the interposer's
// cuMemAllocManaged, so it shares that process-wide runtime and its coherent copies and launches.
// Otherwise the library makes its own runtime (CUDA backend, transparent launches and copies
// through CUPTI) on the first allocation's device.
#ifndef UHMM_BACKENDS_CUDA_FRAMEWORKS_FRAMEWORK_ALLOCATOR_H_
#define UHMM_BACKENDS_CUDA_FRAMEWORKS_FRAMEWORK_ALLOCATOR_H_

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

// PyTorch's signatures; `stream` is a cudaStream_t. NULL for size 0 (nothing to allocate), and NULL
// with the reason on stderr (and in uhmm_fw_status) when uhmm cannot allocate: for callers that
// check, such as CuPy's allocator.
void* uhmm_fw_malloc(ssize_t size, int device, void* stream);
// The same for PyTorch, which does not check what its pluggable allocator returns (a NULL tensor
// would fault on the GPU later, poisoning the context): a failure ends the process with the reason.
void* uhmm_torch_malloc(ssize_t size, int device, void* stream);
// Waits for all of the GPU's queued work (a tensor may be in use on streams other than `stream`,
// and the framework frees without telling which), then frees. If the wait fails (a stream being
// captured into a graph, a device error), the memory is kept rather than freed under work that may
// still use it, and stderr says so. Pointers this library did not return are reported and left.
void uhmm_fw_free(void* ptr, ssize_t size, int device, void* stream);
// How the library serves allocations ("uhmm-run (the interposer's runtime on GPU n)", "uhmm (own
// runtime on GPU n)", "uhmm: no allocation yet"), then "; last failure: " and the reason of the
// last failed call, if any. Never NULL.
const char* uhmm_fw_status(void);

#ifdef __cplusplus
}
#endif

#endif  // UHMM_BACKENDS_CUDA_FRAMEWORKS_FRAMEWORK_ALLOCATOR_H_
