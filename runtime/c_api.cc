// The C API over RuntimeImpl: status codes plus a per-thread message. Nothing throws across it.
#include <cstring>
#include <new>
#include <string>

#include "absl/strings/str_format.h"
#include "runtime/runtime_impl.h"
#include "uhmm/uhmm.h"

struct uhmm_runtime {
  std::unique_ptr<uhmm::Runtime> rt;
};

namespace {

thread_local std::string t_last_error;

uhmm_status_t Report(const absl::Status& s) {
  if (s.ok()) return UHMM_OK;
  t_last_error = std::string(s.message());
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return UHMM_ERROR_INVALID_ARGUMENT;
    case absl::StatusCode::kNotFound:
      return UHMM_ERROR_NOT_FOUND;
    case absl::StatusCode::kResourceExhausted:
      return UHMM_ERROR_OUT_OF_MEMORY;
    case absl::StatusCode::kUnavailable:
      return UHMM_ERROR_UNAVAILABLE;
    case absl::StatusCode::kPermissionDenied:
      return UHMM_ERROR_PERMISSION_DENIED;
    case absl::StatusCode::kFailedPrecondition:
      return UHMM_ERROR_FAILED_PRECONDITION;
    case absl::StatusCode::kAborted:  // backends report device copy/allocation failures as ABORTED
    case absl::StatusCode::kDataLoss:
      return UHMM_ERROR_DEVICE;
    default:
      return UHMM_ERROR_INTERNAL;
  }
}

uhmm_status_t NullRuntime(const char* fn) {
  t_last_error = std::string(fn) + ": runtime is NULL";
  return UHMM_ERROR_INVALID_ARGUMENT;
}

}  // namespace

extern "C" {

void uhmm_config_init(uhmm_config_t* config) {
  if (config == nullptr) return;
  const uhmm::Config c = uhmm::Config::FromEnv();
  std::memset(config, 0, sizeof(*config));
  config->backend = nullptr;  // resolved from UHMM_BACKEND at create time
  config->fault_threads = c.fault_threads;
  config->device_pool_bytes = c.device_pool_bytes;
  config->fault_granularity = c.fault_granularity;
  config->host_devices = c.host_devices;
  config->sigbus_mode = static_cast<uhmm_sigbus_mode_t>(c.sigbus_mode);
  config->device_pool_fraction = c.device_pool_fraction;
  config->transparent_launch = c.transparent_launch ? 1 : 0;
  config->host_same_address = c.host_same_address ? 1 : 0;
  config->trace_path = nullptr;  // resolved from UHMM_TRACE at create time
  config->print_stats = c.print_stats ? 1 : 0;
  config->readahead_bytes = c.readahead_bytes;
  config->prefetch_threads = c.prefetch_threads;
  config->prefetch_threshold = c.prefetch_threshold;
  config->thrashing_threshold = c.thrashing_threshold;
  config->thrashing_lapse_us = c.thrashing_lapse_us;
  config->hugetlb = static_cast<uhmm_hugetlb_mode_t>(c.hugetlb);
  config->hugetlb_min_bytes = c.hugetlb_min_bytes;
  config->fault_spin_us = c.fault_spin_us;
  config->placement = c.placement ? 1 : 0;
}

uhmm_status_t uhmm_create(const uhmm_config_t* config, uhmm_runtime_t** out) {
  if (out == nullptr) return Report(absl::InvalidArgumentError("uhmm_create: out is NULL"));
  *out = nullptr;
  uhmm::Config c = uhmm::Config::FromEnv();
  if (config != nullptr) {
    if (config->backend != nullptr) c.backend = config->backend;
    c.fault_threads = config->fault_threads;
    c.device_pool_bytes = config->device_pool_bytes;
    c.fault_granularity = config->fault_granularity;
    c.host_devices = config->host_devices;
    c.sigbus_mode = static_cast<uhmm::SigbusMode>(config->sigbus_mode);
    c.device_pool_fraction = config->device_pool_fraction;
    c.transparent_launch = config->transparent_launch != 0;
    c.host_same_address = config->host_same_address != 0;
    if (config->trace_path != nullptr) c.trace_path = config->trace_path;
    c.print_stats = config->print_stats != 0;
    c.readahead_bytes = config->readahead_bytes;
    c.prefetch_threads = config->prefetch_threads;
    c.prefetch_threshold = config->prefetch_threshold;
    c.thrashing_threshold = config->thrashing_threshold;
    c.thrashing_lapse_us = config->thrashing_lapse_us;
    c.hugetlb = static_cast<uhmm::HugetlbMode>(config->hugetlb);
    if (config->hugetlb_min_bytes != 0) c.hugetlb_min_bytes = config->hugetlb_min_bytes;
    c.fault_spin_us = config->fault_spin_us;
    c.placement = config->placement != 0;
  }
  absl::StatusOr<std::unique_ptr<uhmm::Runtime>> rt = uhmm::Runtime::Create(c);
  if (!rt.ok()) return Report(rt.status());
  auto* handle = new (std::nothrow) uhmm_runtime{std::move(*rt)};
  if (handle == nullptr) return Report(absl::ResourceExhaustedError("uhmm_create: out of memory"));
  *out = handle;
  return UHMM_OK;
}

void uhmm_destroy(uhmm_runtime_t* rt) { delete rt; }

uhmm_status_t uhmm_alloc(uhmm_runtime_t* rt, size_t size, void** out) {
  return uhmm_alloc_backed(rt, size, UHMM_BACKING_DEFAULT, out);
}

uhmm_status_t uhmm_alloc_backed(uhmm_runtime_t* rt, size_t size, uhmm_page_backing_t backing,
                                void** out) {
  if (rt == nullptr) return NullRuntime("uhmm_alloc");
  if (out == nullptr) return Report(absl::InvalidArgumentError("uhmm_alloc: out is NULL"));
  *out = nullptr;
  if (backing != UHMM_BACKING_DEFAULT && backing != UHMM_BACKING_4K && backing != UHMM_BACKING_HUGETLB) {
    return Report(absl::InvalidArgumentError(
        absl::StrFormat("uhmm_alloc_backed: backing %d is not a uhmm_page_backing_t", static_cast<int>(backing))));
  }
  absl::StatusOr<void*> p = rt->rt->Allocate(size, static_cast<uhmm::Backing>(backing));
  if (!p.ok()) return Report(p.status());
  *out = *p;
  return UHMM_OK;
}

uhmm_status_t uhmm_free(uhmm_runtime_t* rt, void* ptr) {
  if (rt == nullptr) return NullRuntime("uhmm_free");
  return Report(rt->rt->Free(ptr));
}

uhmm_status_t uhmm_migrate(uhmm_runtime_t* rt, void* ptr, size_t size, int device) {
  if (rt == nullptr) return NullRuntime("uhmm_migrate");
  return Report(rt->rt->Migrate(ptr, size, device));
}

uhmm_status_t uhmm_prefetch_on_queue(uhmm_runtime_t* rt, void* ptr, size_t size, int device,
                                     void* queue) {
  if (rt == nullptr) return NullRuntime("uhmm_prefetch_on_queue");
  return Report(rt->rt->PrefetchOnQueue(ptr, size, device, queue));
}

uhmm_status_t uhmm_sync_for_device(uhmm_runtime_t* rt, int device, void* queue) {
  if (rt == nullptr) return NullRuntime("uhmm_sync_for_device");
  return Report(rt->rt->SyncForDevice(device, queue));
}

int uhmm_transparent_launch_enabled(const uhmm_runtime_t* rt) {
  return rt && rt->rt->transparent_launch_enabled() ? 1 : 0;
}

uhmm_status_t uhmm_get_native_handles(uhmm_runtime_t* rt, int device, uhmm_native_handles_t* out) {
  if (rt == nullptr) return NullRuntime("uhmm_get_native_handles");
  if (out == nullptr) return Report(absl::InvalidArgumentError("uhmm_get_native_handles: out is NULL"));
  absl::StatusOr<uhmm_native_handles_t> h = rt->rt->NativeHandles(device);
  if (!h.ok()) return Report(h.status());
  *out = *h;
  return UHMM_OK;
}

uhmm_status_t uhmm_trace_start(uhmm_runtime_t* rt, const char* path) {
  if (rt == nullptr) return NullRuntime("uhmm_trace_start");
  if (path == nullptr || *path == 0) {
    return Report(absl::InvalidArgumentError("uhmm_trace_start: path is NULL or empty"));
  }
  return Report(rt->rt->StartTrace(path));
}

uhmm_status_t uhmm_trace_stop(uhmm_runtime_t* rt) {
  if (rt == nullptr) return NullRuntime("uhmm_trace_stop");
  return Report(rt->rt->StopTrace());
}

uhmm_status_t uhmm_evict_device(uhmm_runtime_t* rt, int device) {
  if (rt == nullptr) return NullRuntime("uhmm_evict_device");
  return Report(rt->rt->EvictDevice(device));
}

uhmm_status_t uhmm_query_residency(uhmm_runtime_t* rt, const void* ptr, size_t size, int32_t* out,
                                   size_t out_len) {
  if (rt == nullptr) return NullRuntime("uhmm_query_residency");
  if (out == nullptr) return Report(absl::InvalidArgumentError("uhmm_query_residency: out is NULL"));
  absl::StatusOr<std::vector<int32_t>> r = rt->rt->Residency(ptr, size);
  if (!r.ok()) return Report(r.status());
  if (out_len < r->size()) {
    return Report(absl::InvalidArgumentError(
        "uhmm_query_residency: out_len is smaller than the number of 4 KiB pages in the range"));
  }
  std::memcpy(out, r->data(), r->size() * sizeof(int32_t));
  return UHMM_OK;
}

uhmm_status_t uhmm_get_stats(uhmm_runtime_t* rt, uhmm_stats_t* out) {
  if (rt == nullptr) return NullRuntime("uhmm_get_stats");
  if (out == nullptr) return Report(absl::InvalidArgumentError("uhmm_get_stats: out is NULL"));
  *out = rt->rt->stats();
  return UHMM_OK;
}

int uhmm_device_count(const uhmm_runtime_t* rt) { return rt ? rt->rt->device_count() : 0; }

const char* uhmm_backend_name(const uhmm_runtime_t* rt) {
  return rt ? rt->rt->backend_name().data() : "";
}

const char* uhmm_last_error(void) { return t_last_error.c_str(); }

const char* uhmm_status_string(uhmm_status_t status) {
  switch (status) {
    case UHMM_OK: return "UHMM_OK";
    case UHMM_ERROR_INVALID_ARGUMENT: return "UHMM_ERROR_INVALID_ARGUMENT";
    case UHMM_ERROR_NOT_FOUND: return "UHMM_ERROR_NOT_FOUND";
    case UHMM_ERROR_OUT_OF_MEMORY: return "UHMM_ERROR_OUT_OF_MEMORY";
    case UHMM_ERROR_UNAVAILABLE: return "UHMM_ERROR_UNAVAILABLE";
    case UHMM_ERROR_PERMISSION_DENIED: return "UHMM_ERROR_PERMISSION_DENIED";
    case UHMM_ERROR_FAILED_PRECONDITION: return "UHMM_ERROR_FAILED_PRECONDITION";
    case UHMM_ERROR_DEVICE: return "UHMM_ERROR_DEVICE";
    case UHMM_ERROR_INTERNAL: return "UHMM_ERROR_INTERNAL";
  }
  return "UHMM_ERROR_UNKNOWN";
}

}  // extern "C"
