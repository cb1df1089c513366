// The interposing CUDA driver library: built as libcuda.so.1 in a private library folder, it is
// what a program finds first when that folder leads its library path (uhmm-run puts it there). It
// loads the real NVIDIA driver by full path and forwards every entry point of the toolkit's cuda.h
// to it, through trampolines generated at build time (gen_forwarders.py), and answers
// cuGetProcAddress for every name, version and per-thread-stream form: the real entry point, or its
// own where it has one. cuGetExportTable passes through untouched.
//
// Finding the real driver, in order (the first that loads and is not an interposer wins):
//   1. UHMM_REAL_LIBCUDA, when set: that file only;
//   2. the loader's cache (/etc/ld.so.cache) entry for libcuda.so.1;
//   3. /usr/lib/x86_64-linux-gnu, /usr/lib64, /usr/local/nvidia/lib64, /usr/lib/wsl/lib.
// Without one, every entry point returns CUDA_ERROR_NO_DEVICE, as a machine without a GPU would.
#ifndef UHMM_BACKENDS_CUDA_INTERPOSE_INTERPOSE_H_
#define UHMM_BACKENDS_CUDA_INTERPOSE_INTERPOSE_H_

#ifdef __cplusplus
extern "C" {
#endif

// The real driver this library forwards to (its full path), or NULL when there is none.
const char* uhmm_interpose_driver(void);
// One line for people: which driver is used, or why none is (every candidate and its reason).
const char* uhmm_interpose_status(void);

#ifdef __cplusplus
}
#endif

#endif  // UHMM_BACKENDS_CUDA_INTERPOSE_INTERPOSE_H_
