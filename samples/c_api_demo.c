/* The same runtime from C: allocate, migrate to device 0, fault back by touching, free. */
#include <stdio.h>
#include <string.h>

#include "uhmm/uhmm.h"

int main(void) {
  uhmm_config_t cfg;
  uhmm_config_init(&cfg);
  uhmm_runtime_t* rt = NULL;
  if (uhmm_create(&cfg, &rt) != UHMM_OK) {
    fprintf(stderr, "uhmm_create: %s\n", uhmm_last_error());
    return 1;
  }
  const size_t bytes = 4 << 20;
  char* p = NULL;
  if (uhmm_alloc(rt, bytes, (void**)&p) != UHMM_OK) {
    fprintf(stderr, "uhmm_alloc: %s\n", uhmm_last_error());
    return 1;
  }
  memset(p, 'u', bytes);
  if (uhmm_migrate(rt, p, bytes, 0) != UHMM_OK) {
    fprintf(stderr, "uhmm_migrate: %s\n", uhmm_last_error());
    return 1;
  }
  size_t bad = 0;
  for (size_t i = 0; i < bytes; i += 4096) bad += p[i] != 'u'; /* each touch faults a page back */
  uhmm_stats_t st;
  uhmm_get_stats(rt, &st);
  printf("%s backend: %llu pages to device, %llu CPU faults, %llu pages back; %s\n", uhmm_backend_name(rt),
         (unsigned long long)st.pages_to_device, (unsigned long long)st.cpu_faults,
         (unsigned long long)st.pages_to_host, bad ? "FAIL" : "PASS");
  uhmm_free(rt, p);
  uhmm_destroy(rt);
  return bad ? 1 : 0;
}
