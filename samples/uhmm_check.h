/* Shared by the samples (C and C++): a uhmm call that fails prints FAIL with uhmm's message and
 * exits 1. Samples exit 0 for PASS, 1 for FAIL and 77 for SKIP (no device here). */
#ifndef UHMM_SAMPLES_UHMM_CHECK_H_
#define UHMM_SAMPLES_UHMM_CHECK_H_

#include <stdio.h>
#include <stdlib.h>

#include "uhmm/uhmm.h"

#define UHMM_SAMPLE_SKIP 77

#define UHMM_CHECK(call)                                                              \
  do {                                                                                \
    uhmm_status_t s_ = (call);                                                        \
    if (s_ != UHMM_OK) {                                                              \
      printf("FAIL: %s: %s: %s\n", #call, uhmm_status_string(s_), uhmm_last_error()); \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

#endif /* UHMM_SAMPLES_UHMM_CHECK_H_ */
