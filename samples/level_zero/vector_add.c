/* vector_add on an Intel GPU through Level Zero, with uhmm managed memory: the CPU fills a and b,
 * the kernel adds them into c, the CPU checks c. The kernel gets the very pointers the CPU uses.
 * Nothing but the launch itself is needed: with transparent launches (the default) uhmm moves the
 * CPU's writes to the GPU before the kernel, and CPU reads of c afterwards fault the results back.
 *
 * The kernel is SPIR-V (vector_add.cl, built with clang + llvm-spirv); the program runs unchanged
 * on a real Intel GPU and, in the test suite, against tests/fake_level_zero through the real
 * Level Zero loader (ZE_ENABLE_ALT_DRIVERS). Usage: uhmm_ze_vector_add [vector_add.spv]
 * Exit codes: 0 PASS, 1 FAIL, 77 SKIP (no Level Zero GPU here). */
#include <level_zero/ze_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../uhmm_check.h"
#include "uhmm/uhmm.h"

#define ZE_CHECK(call)                                             \
  do {                                                             \
    ze_result_t r_ = (call);                                       \
    if (r_ != ZE_RESULT_SUCCESS) {                                 \
      printf("FAIL: %s: ze_result_t 0x%x\n", #call, (unsigned)r_); \
      exit(1);                                                     \
    }                                                              \
  } while (0)

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static uint8_t* read_file(const char* path, size_t* size) {
  FILE* f = fopen(path, "rb");
  if (f == NULL) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t* data = n > 0 ? malloc((size_t)n) : NULL;
  if (data && fread(data, 1, (size_t)n, f) != (size_t)n) {
    free(data);
    data = NULL;
  }
  fclose(f);
  *size = (size_t)n;
  return data;
}

/* The first queue group that runs kernels. */
static uint32_t compute_group(ze_device_handle_t dev) {
  uint32_t n = 0;
  ZE_CHECK(zeDeviceGetCommandQueueGroupProperties(dev, &n, NULL));
  ze_command_queue_group_properties_t* g = calloc(n, sizeof(*g));
  for (uint32_t i = 0; i < n; ++i) g[i].stype = ZE_STRUCTURE_TYPE_COMMAND_QUEUE_GROUP_PROPERTIES;
  ZE_CHECK(zeDeviceGetCommandQueueGroupProperties(dev, &n, g));
  uint32_t found = n;
  for (uint32_t i = 0; i < n && found == n; ++i) {
    if (g[i].flags & ZE_COMMAND_QUEUE_GROUP_PROPERTY_FLAG_COMPUTE) found = i;
  }
  free(g);
  if (found == n) {
    printf("FAIL: the device has no compute queue group\n");
    exit(1);
  }
  return found;
}

int main(int argc, char** argv) {
  const char* spv_path = argc > 1 ? argv[1] : UHMM_ZE_VECTOR_ADD_SPV;
  uhmm_config_t cfg;
  uhmm_config_init(&cfg);
  cfg.backend = "level_zero";
  uhmm_runtime_t* rt = NULL;
  uhmm_status_t st = uhmm_create(&cfg, &rt);
  if (st == UHMM_ERROR_UNAVAILABLE) {
    printf("SKIP: vector_add: no Level Zero GPU here: %s\n", uhmm_last_error());
    return UHMM_SAMPLE_SKIP;
  }
  UHMM_CHECK(st);
  ZE_CHECK(zeInit(ZE_INIT_FLAG_GPU_ONLY)); /* uhmm already initialized the loader; harmless */

  /* Kernels must be queued in uhmm's context to see managed memory. */
  uhmm_native_handles_t h;
  UHMM_CHECK(uhmm_get_native_handles(rt, 0, &h));
  ze_context_handle_t ctx = (ze_context_handle_t)h.context;
  ze_device_handle_t dev = (ze_device_handle_t)h.device;

  size_t spv_size = 0;
  uint8_t* spv = read_file(spv_path, &spv_size);
  if (spv == NULL) {
    printf("FAIL: cannot read the SPIR-V module %s\n", spv_path);
    return 1;
  }
  ze_module_desc_t md = {ZE_STRUCTURE_TYPE_MODULE_DESC};
  md.format = ZE_MODULE_FORMAT_IL_SPIRV;
  md.inputSize = spv_size;
  md.pInputModule = spv;
  ze_module_handle_t module = NULL;
  ZE_CHECK(zeModuleCreate(ctx, dev, &md, &module, NULL));
  ze_kernel_desc_t kd = {ZE_STRUCTURE_TYPE_KERNEL_DESC, NULL, 0, "vector_add"};
  ze_kernel_handle_t kernel = NULL;
  ZE_CHECK(zeKernelCreate(module, &kd, &kernel));

  ze_command_queue_desc_t qd = {ZE_STRUCTURE_TYPE_COMMAND_QUEUE_DESC,
                                NULL,
                                compute_group(dev),
                                0,
                                0,
                                ZE_COMMAND_QUEUE_MODE_ASYNCHRONOUS,
                                ZE_COMMAND_QUEUE_PRIORITY_NORMAL};
  ze_command_list_handle_t list = NULL;
  ZE_CHECK(zeCommandListCreateImmediate(ctx, dev, &qd, &list));
  ze_event_pool_desc_t pd = {ZE_STRUCTURE_TYPE_EVENT_POOL_DESC, NULL, ZE_EVENT_POOL_FLAG_HOST_VISIBLE, 1};
  ze_event_pool_handle_t pool = NULL;
  ZE_CHECK(zeEventPoolCreate(ctx, &pd, 0, NULL, &pool));
  ze_event_desc_t ed = {ZE_STRUCTURE_TYPE_EVENT_DESC, NULL, 0, ZE_EVENT_SCOPE_FLAG_HOST,
                        ZE_EVENT_SCOPE_FLAG_HOST};
  ze_event_handle_t done = NULL;
  ZE_CHECK(zeEventCreate(pool, &ed, &done));

  const uint32_t n = 1u << 22; /* 16 MiB per vector */
  float *a = NULL, *b = NULL, *c = NULL;
  UHMM_CHECK(uhmm_alloc(rt, n * sizeof(float), (void**)&a));
  UHMM_CHECK(uhmm_alloc(rt, n * sizeof(float), (void**)&b));
  UHMM_CHECK(uhmm_alloc(rt, n * sizeof(float), (void**)&c));
  for (uint32_t i = 0; i < n; ++i) {
    a[i] = (float)i;
    b[i] = 2.0f * (float)i;
    c[i] = -1.0f;
  }

  uint32_t gx = 0, gy = 0, gz = 0;
  ZE_CHECK(zeKernelSuggestGroupSize(kernel, n, 1, 1, &gx, &gy, &gz));
  ZE_CHECK(zeKernelSetGroupSize(kernel, gx, 1, 1));
  ZE_CHECK(zeKernelSetArgumentValue(kernel, 0, sizeof(a), &a));
  ZE_CHECK(zeKernelSetArgumentValue(kernel, 1, sizeof(b), &b));
  ZE_CHECK(zeKernelSetArgumentValue(kernel, 2, sizeof(c), &c));
  ZE_CHECK(zeKernelSetArgumentValue(kernel, 3, sizeof(n), &n));
  const ze_group_count_t groups = {(n + gx - 1) / gx, 1, 1};

  /* Without transparent launches (UHMM_TRANSPARENT_LAUNCH=0 or no tracing layer), say it: */
  if (!uhmm_transparent_launch_enabled(rt)) UHMM_CHECK(uhmm_sync_for_device(rt, 0, list));
  const double t0 = now_ms();
  ZE_CHECK(zeCommandListAppendLaunchKernel(list, kernel, &groups, done, 0, NULL));
  ZE_CHECK(zeEventHostSynchronize(done, UINT64_MAX));
  const double t1 = now_ms();
  uint32_t bad = 0;
  for (uint32_t i = 0; i < n; ++i) {
    if (c[i] != 3.0f * (float)i && bad++ < 5) printf("  c[%u] = %g, expected %g\n", i, c[i], 3.0f * (float)i);
  }
  const double t2 = now_ms();

  uhmm_stats_t s;
  UHMM_CHECK(uhmm_get_stats(rt, &s));
  printf("uhmm Level Zero vector_add, n = %u floats (3 x %u MiB), backend %s, transparent launch %s\n", n,
         (unsigned)(n * sizeof(float) >> 20), uhmm_backend_name(rt),
         uhmm_transparent_launch_enabled(rt) ? "on" : "off");
  printf("  %-34s %10.2f ms\n", "launch + kernel (incl. sync)", t1 - t0);
  printf("  %-34s %10.2f ms\n", "CPU check (faults c back)", t2 - t1);
  printf("  %-34s %10llu\n", "pages moved to the GPU", (unsigned long long)s.pages_to_device);
  printf("  %-34s %10llu\n", "CPU faults served", (unsigned long long)s.cpu_faults);

  zeEventDestroy(done);
  zeEventPoolDestroy(pool);
  zeCommandListDestroy(list);
  zeKernelDestroy(kernel);
  zeModuleDestroy(module);
  free(spv);
  UHMM_CHECK(uhmm_free(rt, a));
  UHMM_CHECK(uhmm_free(rt, b));
  UHMM_CHECK(uhmm_free(rt, c));
  uhmm_destroy(rt);
  printf("%s\n", bad == 0 ? "PASS" : "FAIL");
  return bad == 0 ? 0 : 1;
}
