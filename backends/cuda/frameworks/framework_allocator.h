// uhmm memory for GPU frameworks that take an external allocator: PyTorch's CUDAPluggableAllocator
// (torch.cuda.memory.CUDAPluggableAllocator(path, "uhmm_fw_malloc", "uhmm_fw_free")) and CuPy
// (cupy.cuda.set_allocator over ctypes); samples/python/ shows both, docs/CUDA.md ("Frameworks")
// says what works.
//
// Under uhmm-run (the interposing libcuda.so.1 is loaded) an allocation is the interposer's
// cuMemAllocManaged, so it shares that process-wide runtime and its coherent copies and launches.
// Otherwise the library makes its own runtime (CUDA backend, transparent launches through CUPTI) on
// the first allocation's device.
#ifndef UHMM_BACKENDS_CUDA_FRAMEWORKS_FRAMEWORK_ALLOCATOR_H_
#define UHMM_BACKENDS_CUDA_FRAMEWORKS_FRAMEWORK_ALLOCATOR_H_

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

// PyTorch's signatures. `stream` is a cudaStream_t. Returns NULL on failure (size 0 included), with
// the reason on stderr: PyTorch then raises its out-of-memory error.
void* uhmm_fw_malloc(ssize_t size, int device, void* stream);
// Waits for the work queued on `stream` (which may still use the memory), then frees it. Pointers
// this library did not return are reported on stderr and left alone.
void uhmm_fw_free(void* ptr, ssize_t size, int device, void* stream);
// How the library serves allocations: "uhmm-run (the interposer's runtime)", "uhmm (own runtime on
// GPU n)", or why it cannot (the last failure). Never NULL.
const char* uhmm_fw_status(void);

#ifdef __cplusplus
}
#endif

#endif  // UHMM_BACKENDS_CUDA_FRAMEWORKS_FRAMEWORK_ALLOCATOR_H_
