/* uhmm-interpose-check: what a program started by uhmm-run gets when it opens libcuda.so.1, as the
 * CUDA runtime does (dlopen by name, so the library path decides). Prints it and the real driver;
 * exits 0 when uhmm's interposer is loaded and has a driver, 1 otherwise. --quiet: print only the
 * reason, and only on failure (one line, for uhmm-run). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char** argv) {
  const int quiet = argc > 1 && strcmp(argv[1], "--quiet") == 0;
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) {
    const char* err = dlerror();
    printf("no libcuda.so.1 on the library path (%s)\n", err ? err : "dlopen failed");
    return 1;
  }
  struct link_map* lm = NULL;
  const char* path = dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0 && lm != NULL ? lm->l_name : "libcuda.so.1";
  const char* (*status)(void) = (const char* (*)(void))dlsym(h, "uhmm_interpose_status");
  const char* (*driver)(void) = (const char* (*)(void))dlsym(h, "uhmm_interpose_driver");
  if (status == NULL || driver == NULL) {
    printf("interposition did not take effect: libcuda.so.1 is %s, not uhmm's\n", path);
    return 1;
  }
  const int ok = driver() != NULL;
  if (!quiet || !ok) printf("%s\n", status());
  if (!quiet) {
    printf("interposer: %s\n", path);
    printf(
        "managed memory: cuMemAllocManaged and the rest are forwarded to the driver (uhmm does not serve "
        "them yet)\n");
  }
  return ok ? 0 : 1;
}
