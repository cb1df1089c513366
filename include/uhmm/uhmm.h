/* uhmm C API: one pointer valid on the CPU and the GPU, backed by device-private memory that the
 * runtime migrates on demand. Every call returns a uhmm_status_t; uhmm_last_error() gives the
 * calling thread's message for the last failure. Nothing here throws. */
#ifndef UHMM_UHMM_H_
#define UHMM_UHMM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum uhmm_status {
  UHMM_OK = 0,
  UHMM_ERROR_INVALID_ARGUMENT = 1,  /* null, size 0, unaligned, overflow, bad device */
  UHMM_ERROR_NOT_FOUND = 2,         /* address not managed by this runtime (or already freed) */
  UHMM_ERROR_OUT_OF_MEMORY = 3,     /* host or device memory exhausted even after eviction */
  UHMM_ERROR_UNAVAILABLE = 4,       /* backend, device or kernel feature not available */
  UHMM_ERROR_PERMISSION_DENIED = 5, /* userfaultfd not permitted: see the message for the fix */
  UHMM_ERROR_FAILED_PRECONDITION = 6,
  UHMM_ERROR_DEVICE = 7, /* the device failed a copy or allocation */
  UHMM_ERROR_INTERNAL = 8,
} uhmm_status_t;

/* Location of a page, as reported by uhmm_query_residency. Devices are numbered from 0. */
#define UHMM_LOCATION_HOST (-1)
#define UHMM_LOCATION_POISONED (-2) /* data lost to a device error; access raises SIGBUS */
#define UHMM_LOCATION_UNMAPPED (-3) /* the application munmapped this page */
/* Only from uhmm_range_get_attribute: */
#define UHMM_LOCATION_NONE (-4)  /* no preferred location is advised */
#define UHMM_LOCATION_MIXED (-5) /* the pages of the span differ */

typedef enum uhmm_sigbus_mode {
  UHMM_SIGBUS_AUTO = 0,   /* UFFDIO_POISON when the kernel has it (6.6+), else tgkill */
  UHMM_SIGBUS_POISON = 1, /* page is poisoned: this and later accesses fault with BUS_MCEERR */
  UHMM_SIGBUS_TKILL = 2,  /* tgkill(SIGBUS) to the faulting thread; si_code is SI_TKILL */
} uhmm_sigbus_mode_t;

/* Host page size behind a managed range (per range, like AMD SVM's GRANULARITY attribute). */
typedef enum uhmm_page_backing {
  UHMM_BACKING_DEFAULT = 0, /* the runtime's hugetlb policy decides (uhmm_config_t.hugetlb) */
  UHMM_BACKING_4K = 1,      /* 4 KiB shmem pages: lowest isolated-fault latency */
  UHMM_BACKING_HUGETLB = 2, /* 2 MiB hugetlb pages: fastest streaming; every CPU fault and
                               migration moves whole 2 MiB blocks. Needs vm.nr_hugepages. */
} uhmm_page_backing_t;

typedef enum uhmm_hugetlb_mode {
  UHMM_HUGETLB_AUTO = 0,   /* hugetlb for ranges >= hugetlb_min_bytes while hugepages are free */
  UHMM_HUGETLB_NEVER = 1,  /* always 4 KiB unless a range asks for UHMM_BACKING_HUGETLB */
  UHMM_HUGETLB_ALWAYS = 2, /* every range hugetlb; allocation fails when no hugepage is free */
} uhmm_hugetlb_mode_t;

/* Every field is also an environment variable (docs/CONFIG.md). The backend choices that have no
 * field here (UHMM_CUDA_DEVICE, UHMM_CUDA_DRIVER, UHMM_CUPTI_LIBRARY, UHMM_ZE_DEVICE,
 * UHMM_ZE_LOADER) are always taken from the environment by uhmm_create. */
typedef struct uhmm_config {
  const char* backend;         /* "host", "cuda", ...; NULL: $UHMM_BACKEND, else the best available */
  int fault_threads;           /* fault-service threads (default 2, $UHMM_FAULT_THREADS) */
  size_t device_pool_bytes;    /* device pool cap per device, 2 MiB multiple (0: backend default) */
  double device_pool_fraction; /* or this fraction (0, 1] of each device's free memory (0: unused) */
  size_t fault_granularity;    /* bytes migrated back per CPU fault, power of two, 4 KiB..2 MiB */
  int host_devices;            /* host backend: number of emulated devices (default 1) */
  uhmm_sigbus_mode_t sigbus_mode;
  int transparent_launch; /* 1 (default): make managed data device-resident before every kernel
                             launch the backend intercepts; 0: only explicit prefetch/sync */
  int host_same_address;  /* host backend: emulate one pointer (device address == managed) */
  const char* trace_path; /* write a fault trace for uhmm-prof here ("%p": pid); NULL: $UHMM_TRACE */
  int print_stats;        /* 1: print the counters to stderr when the runtime goes ($UHMM_STATS) */
  /* Policy (docs/CONFIG.md and docs/PERFORMANCE.md say what each buys). */
  size_t readahead_bytes; /* largest read-ahead window on sequential CPU faults (default 32 MiB,
                             $UHMM_READAHEAD; 0: off) */
  union {                 /* migration threads: read-ahead and block-parallel bulk migrations
                             (default 2, $UHMM_MIGRATION_THREADS, formerly
                             $UHMM_PREFETCH_THREADS; 0: no read-ahead, bulk migrations on the
                             calling thread). prefetch_threads is the deprecated old name. */
    int migration_threads;
    int prefetch_threads;
  };
  union { /* density growth, percent: a fault grows its granule to the largest
             aligned region that would then be more than this full (default 51,
             $UHMM_GROWTH_THRESHOLD, formerly $UHMM_PREFETCH_THRESHOLD; 0: off).
             prefetch_threshold is the deprecated old name. */
    int growth_threshold;
    int prefetch_threshold;
  };
  int thrashing_threshold;     /* faults back within thrashing_lapse_us of a move to a device that
                                  mark a block thrashing: no read-ahead or growth there (default 3,
                                  $UHMM_THRASHING_THRESHOLD; 0: off) */
  int thrashing_lapse_us;      /* default 500, $UHMM_THRASHING_LAPSE_US */
  uhmm_hugetlb_mode_t hugetlb; /* default AUTO, $UHMM_HUGETLB=auto|never|always */
  size_t hugetlb_min_bytes;    /* AUTO picks hugetlb from this size (0 or default: 64 MiB,
                                  $UHMM_HUGETLB_MIN) */
  int fault_spin_us;           /* busy-poll: the first fault thread keeps reading this long after a
                                  message before sleeping in poll() (-1 default: 50 on machines with
                                  8+ CPUs, else 0; $UHMM_FAULT_SPIN_US) */
  int placement;               /* 1 (default): hwloc binds fault threads near the device and its
                                  runtime views to the device's NUMA node; 0: no binding
                                  ($UHMM_PLACEMENT=auto|none) */
} uhmm_config_t;

typedef struct uhmm_stats {
  uint64_t cpu_faults;       /* userfaultfd fault messages served */
  uint64_t duplicate_faults; /* faults on host-resident pages that the CPU had not mapped: another
                                thread's fault or a migration brought the page home first, the
                                page's CPU mapping was taken by a migration that then left it on
                                the host (pool full, page busy), or a discard unmapped it */
  uint64_t stale_faults;     /* fault messages older than the page's last move to a device
                                (a signal can make the kernel repeat a fault): answered with a
                                wake, not a migration */
  uint64_t unmanaged_faults; /* faults at addresses no live range covers (resolved as host) */
  uint64_t pages_to_device;  /* 4 KiB pages migrated host -> device */
  uint64_t pages_to_host;    /* 4 KiB pages migrated device -> host (faults, prefetch, eviction) */
  uint64_t evicted_pages;    /* part of pages_to_host that eviction moved */
  uint64_t evicted_chunks;   /* 2 MiB device chunks evicted */
  uint64_t sigbus_delivered; /* accesses ended with SIGBUS after a device error */
  uint64_t events_remove, events_unmap, events_remap; /* userfaultfd events read */
  uint64_t events_fork;            /* fork() calls seen by the atfork handlers (not a userfaultfd event) */
  uint64_t device_pages_total;     /* pool capacity, all devices */
  uint64_t device_pages_used;      /* pages currently backing managed data */
  uint64_t launch_syncs;           /* launch-coherence passes that had work (transparent or explicit) */
  uint64_t launch_pages_to_device; /* pages those passes moved to a device */
  uint64_t readahead_pages;        /* pages read-ahead brought back before the CPU touched them */
  uint64_t grown_faults;           /* faults whose granule the density policy grew */
  uint64_t thrashing_blocks;       /* times a block was marked thrashing */
  uint64_t hugetlb_ranges;         /* live ranges backed by 2 MiB hugetlb pages */
  uint64_t zero_fill_faults;       /* faults on pages with no host copy yet (first touch of a range,
                                      or after a discard): served for the fault's whole 2 MiB block at
                                      once, its host pages without a copy getting zero pages */
  /* Read duplication (docs/SEMANTICS.md): */
  uint64_t duplicate_pages_kept;    /* pages that came home for CPU reads keeping their device copy */
  uint64_t duplicate_pages_reused;  /* part of pages_to_device that went back to their device copy
                                       without a copy: the CPU had not written them */
  uint64_t duplicate_pages_dropped; /* device copies dropped without a copy by eviction, or by a move
                                       to another device, or because a push of the pages the CPU
                                       wrote failed */
  uint64_t zero_pages_filled;       /* part of pages_to_device given zeros on the device instead of a
                                       copy: never written since their range was allocated */
  uint64_t pages_device_to_device;  /* 4 KiB pages moved from one device to another in one hop (peer
                                       copy); moves through RAM count in pages_to_host and
                                       pages_to_device instead */
} uhmm_stats_t;

typedef struct uhmm_runtime uhmm_runtime_t;

/* The vendor objects behind a runtime device, for launching kernels that use managed memory. Device
 * memory is mapped in the backend's own context, so kernels must be queued in `context` to see it.
 * level_zero: ze_driver_handle_t, ze_device_handle_t, ze_context_handle_t.
 * cuda: NULL, the CUdevice (cast), the primary CUcontext (what the CUDA runtime API uses).
 * host: all NULL. */
typedef struct uhmm_native_handles {
  void* driver;
  void* device;
  void* context;
} uhmm_native_handles_t;

/* Fills *config with defaults, then applies the UHMM_* environment variables. */
void uhmm_config_init(uhmm_config_t* config);

uhmm_status_t uhmm_create(const uhmm_config_t* config, uhmm_runtime_t** out);
/* Frees every range still allocated, stops the fault service and releases the devices. */
void uhmm_destroy(uhmm_runtime_t* rt);

/* Allocates `size` bytes of managed memory, page aligned, resident on the host. A range's data
 * lives in host memory whenever it is not on a device, so a size larger than the host's RAM + swap
 * fails at once with UHMM_ERROR_OUT_OF_MEMORY. */
uhmm_status_t uhmm_alloc(uhmm_runtime_t* rt, size_t size, void** out);
/* uhmm_alloc with the range's host page backing chosen (see uhmm_page_backing_t). */
uhmm_status_t uhmm_alloc_backed(uhmm_runtime_t* rt, size_t size, uhmm_page_backing_t backing, void** out);
/* Frees a pointer returned by uhmm_alloc. Device pages go back to the pool. */
uhmm_status_t uhmm_free(uhmm_runtime_t* rt, void* ptr);

/* Migrates the pages of [ptr, ptr+size) to `device` (>= 0) or to UHMM_LOCATION_HOST.
 * ptr and size must be 4 KiB aligned and inside one allocation. In a hugetlb-backed range the
 * request grows to whole 2 MiB blocks (the CPU maps such a block whole or not at all). */
uhmm_status_t uhmm_migrate(uhmm_runtime_t* rt, void* ptr, size_t size, int device);
/* Queue-ordered prefetch. `queue` is the backend's stream or command list (a cudaStream_t for CUDA;
 * NULL: all of the device's work). To the host: waits for the work already on `queue`, then
 * migrates, so the CPU sees what earlier kernels wrote. To a device: returns once the pages are
 * device-resident, so work queued on `queue` afterwards finds them there. */
uhmm_status_t uhmm_prefetch_on_queue(uhmm_runtime_t* rt, void* ptr, size_t size, int device, void* queue);
/* Explicit launch coherence (what transparent mode does before each launch): every managed page
 * becomes resident on `device` and loses its CPU mapping, so the next CPU touch faults it back. */
uhmm_status_t uhmm_sync_for_device(uhmm_runtime_t* rt, int device, void* queue);
/* 1 when this runtime intercepts kernel launches (transparent mode), else 0. */
int uhmm_transparent_launch_enabled(const uhmm_runtime_t* rt);

/* Fault tracing for uhmm-prof (also UHMM_TRACE=path). One trace per process at a time: starting a
 * second fails with UHMM_ERROR_FAILED_PRECONDITION. Stopping writes the end record and closes the
 * file; a trace still running at exit is stopped then. */
uhmm_status_t uhmm_trace_start(uhmm_runtime_t* rt, const char* path);
uhmm_status_t uhmm_trace_stop(uhmm_runtime_t* rt);

/* Moves every page of `device` back to the host (releases the device pool). */
uhmm_status_t uhmm_evict_device(uhmm_runtime_t* rt, int device);

/* Writes one location per 4 KiB page of [ptr, ptr+size) into out[0..out_len). */
uhmm_status_t uhmm_query_residency(uhmm_runtime_t* rt, const void* ptr, size_t size, int32_t* out,
                                   size_t out_len);
/* Read duplication: for each 4 KiB page of [ptr, ptr+size), the device that keeps a copy of a
 * host-resident page (uhmm_query_residency says UHMM_LOCATION_HOST: the host copy is the data), or
 * UHMM_LOCATION_NONE. The copy is current unless the CPU wrote the page since; the next push to that
 * device copies only then. */
uhmm_status_t uhmm_query_copies(uhmm_runtime_t* rt, const void* ptr, size_t size, int32_t* out,
                                size_t out_len);
uhmm_status_t uhmm_get_stats(uhmm_runtime_t* rt, uhmm_stats_t* out);

/* Memory advice, after cudaMemAdvise (docs/SEMANTICS.md, "Memory advice"). Advice is kept per 4 KiB
 * page and lasts until it is unset or the allocation is freed. */
typedef enum uhmm_advice {
  UHMM_ADVISE_SET_READ_MOSTLY = 1, /* mostly read: CPU reads may keep a device copy */
  UHMM_ADVISE_UNSET_READ_MOSTLY = 2,
  UHMM_ADVISE_SET_PREFERRED_LOCATION = 3, /* where the data should live: a device or the host */
  UHMM_ADVISE_UNSET_PREFERRED_LOCATION = 4,
  UHMM_ADVISE_SET_ACCESSED_BY = 5, /* a device that uses the data (one bit per device, < 64) */
  UHMM_ADVISE_UNSET_ACCESSED_BY = 6,
  UHMM_ADVISE_SET_FAULT_GRANULE = 7, /* bytes a CPU fault migrates back (UHMM_FAULT_GRANULARITY) */
  UHMM_ADVISE_UNSET_FAULT_GRANULE = 8
} uhmm_advice_t;
/* Applies `advice` to the pages of [ptr, ptr+size). ptr must be 4 KiB aligned; size may end anywhere
 * in a page (it is rounded up to 4 KiB); the span must lie inside one allocation.
 * arg: the device for SET/UNSET_ACCESSED_BY, the device or UHMM_LOCATION_HOST for
 * SET_PREFERRED_LOCATION, the granule in bytes (a power of two from 4 KiB to 2 MiB) for
 * SET_FAULT_GRANULE, and 0 otherwise (UNSET_PREFERRED_LOCATION clears whatever was set). A failed
 * call changes nothing. */
uhmm_status_t uhmm_advise(uhmm_runtime_t* rt, void* ptr, size_t size, uhmm_advice_t advice, int64_t arg);

typedef enum uhmm_range_attribute {
  /* 1 when every page of the span is read-mostly, else 0 */
  UHMM_RANGE_ATTRIBUTE_READ_MOSTLY = 1,
  /* the device, UHMM_LOCATION_HOST, UHMM_LOCATION_NONE (none set) or UHMM_LOCATION_MIXED (pages differ) */
  UHMM_RANGE_ATTRIBUTE_PREFERRED_LOCATION = 2,
  /* bit d set when device d is in every page's accessed-by set */
  UHMM_RANGE_ATTRIBUTE_ACCESSED_BY = 3,
  /* bytes, when every page has the same advised granule; 0 when none is advised; UHMM_LOCATION_MIXED
     when they differ */
  UHMM_RANGE_ATTRIBUTE_FAULT_GRANULE = 4
} uhmm_range_attribute_t;
/* Reads one advice attribute of [ptr, ptr+size) into *out (same span rules as uhmm_advise). */
uhmm_status_t uhmm_range_get_attribute(uhmm_runtime_t* rt, const void* ptr, size_t size,
                                       uhmm_range_attribute_t attribute, int64_t* out);

/* One device's part of the counters (uhmm_stats_t sums the pools over every device). */
typedef struct uhmm_device_stats {
  uint64_t pool_pages_total; /* the device's pool capacity, in 4 KiB pages */
  uint64_t pool_pages_used;  /* pages of it backing managed data */
  char name[64];             /* the device, as its backend names it (truncated) */
  /* The other devices whose pages this device's kernels reach where they lie (peer access; bit d:
   * device d). A launch here leaves such pages in place and moves pages on other devices. */
  uint64_t peer_access;
} uhmm_device_stats_t;
/* Fills *out for `device` (0 <= device < uhmm_device_count). */
uhmm_status_t uhmm_get_device_stats(uhmm_runtime_t* rt, int device, uhmm_device_stats_t* out);

/* The allocation that holds `ptr` (any address inside it): its start in *base and the size it was
 * allocated with in *size (either out pointer may be NULL). UHMM_ERROR_NOT_FOUND when no live
 * allocation of this runtime holds it. */
uhmm_status_t uhmm_find_allocation(uhmm_runtime_t* rt, const void* ptr, void** base, size_t* size);

int uhmm_device_count(const uhmm_runtime_t* rt);
uhmm_status_t uhmm_get_native_handles(uhmm_runtime_t* rt, int device, uhmm_native_handles_t* out);
const char* uhmm_backend_name(const uhmm_runtime_t* rt);

/* The calling thread's message for its last failed call ("" if none). */
const char* uhmm_last_error(void);
const char* uhmm_status_string(uhmm_status_t status);

#ifdef __cplusplus
}
#endif

#endif /* UHMM_UHMM_H_ */
