// The pagemap ops every backend shares: page_free returns the page to the pool; page_fault migrates
// the fault's granule back to RAM through the pagemap's copy engine (the runtime then maps it and
// wakes the thread; a copy error ends the access in SIGBUS). Header-only; holds no backend types.
#ifndef UHMM_BACKENDS_COMMON_COPY_BACK_PAGEMAP_H_
#define UHMM_BACKENDS_COMMON_COPY_BACK_PAGEMAP_H_

#include "uhmm/backend.h"

namespace uhmm {

struct CopyBackPagemap {
  static void PageFree(Page* page) { page_pool_release(page); }
  static absl::Status PageFault(VmFault* vmf) {
    Pagemap* pgmap = vmf->page->pgmap;
    return migrate_fault_to_ram(vmf, pgmap->owner, *pgmap->copy_engine);
  }
  static constexpr PagemapOps kOps = {&PageFree, &PageFault};
};

}  // namespace uhmm

#endif  // UHMM_BACKENDS_COMMON_COPY_BACK_PAGEMAP_H_
