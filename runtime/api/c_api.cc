// The C API over RuntimeImpl: status codes plus a per-thread message. Nothing throws across it:
// every entry point that can allocate runs under Guarded(), and enum fields from C are checked as
// plain integers before they are converted.
#include <cxxabi.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/api/runtime_impl.h"
#include "uhmm/uhmm.h"

struct uhmm_runtime {
  std::unique_ptr<uhmm::Runtime> rt;
};

namespace {

thread_local std::string t_last_error;

// Sets the calling thread's message; with no memory left for it, the message is empty.
void SetLastError(absl::string_view msg) noexcept {
  try {
    t_last_error.assign(msg.data(), msg.size());
  } catch (...) {
    t_last_error.clear();
  }
}

uhmm_status_t Report(const absl::Status& s) {
  if (s.ok()) return UHMM_OK;
  SetLastError(s.message());
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
  return Report(absl::InvalidArgumentError(absl::StrCat(fn, ": runtime is NULL")));
}

// Runs `body`, an entry point's work returning a uhmm_status_t. An exception escaping it (the
// runtime reports errors as statuses, but the standard library throws std::bad_alloc when the heap
// is exhausted) becomes OUT_OF_MEMORY or INTERNAL with a message instead of crossing into C.
// Thread cancellation unwinds with abi::__forced_unwind, which must reach the thread's start.
template <typename Fn>
uhmm_status_t Guarded(const char* fn, Fn&& body) {
  try {
    return body();
  } catch (abi::__forced_unwind&) {
    throw;
  } catch (const std::bad_alloc&) {
    SetLastError(absl::StrCat(fn, ": out of host memory (std::bad_alloc)"));
    return UHMM_ERROR_OUT_OF_MEMORY;
  } catch (const std::length_error& e) {
    SetLastError(absl::StrCat(fn, ": a request too large for host memory (", e.what(), ")"));
    return UHMM_ERROR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    SetLastError(absl::StrCat(fn, ": internal error: unexpected exception: ", e.what()));
    return UHMM_ERROR_INTERNAL;
  } catch (...) {
    SetLastError(absl::StrCat(fn, ": internal error: unexpected exception of unknown type"));
    return UHMM_ERROR_INTERNAL;
  }
}

// The integer a C caller stored in an enum-typed field. C allows any int there; in C++ reading an
// enum lvalue that holds a value outside the enum's range is undefined, so the bytes are copied.
template <typename E>
int RawEnum(const E& field) {
  static_assert(std::is_enum_v<E> && sizeof(E) == sizeof(int));
  int v;
  std::memcpy(&v, &field, sizeof(v));
  return v;
}

// INVALID_ARGUMENT naming `field`, its value and the values allowed, unless `value` is one of them.
absl::Status CheckEnum(const char* field, int value,
                       std::initializer_list<std::pair<int, const char*>> allowed) {
  std::string names;
  for (const auto& [v, name] : allowed) {
    if (v == value) return absl::OkStatus();
    absl::StrAppend(&names, names.empty() ? "" : ", ", name, " (", v, ")");
  }
  return absl::InvalidArgumentError(absl::StrFormat("uhmm: %s is %d; use one of %s", field, value, names));
}

absl::Status CheckConfigEnums(const uhmm_config_t& c) {
  if (absl::Status s = CheckEnum("uhmm_config_t.sigbus_mode", RawEnum(c.sigbus_mode),
                                 {{UHMM_SIGBUS_AUTO, "UHMM_SIGBUS_AUTO"},
                                  {UHMM_SIGBUS_POISON, "UHMM_SIGBUS_POISON"},
                                  {UHMM_SIGBUS_TKILL, "UHMM_SIGBUS_TKILL"}});
      !s.ok()) {
    return s;
  }
  return CheckEnum("uhmm_config_t.hugetlb", RawEnum(c.hugetlb),
                   {{UHMM_HUGETLB_AUTO, "UHMM_HUGETLB_AUTO"},
                    {UHMM_HUGETLB_NEVER, "UHMM_HUGETLB_NEVER"},
                    {UHMM_HUGETLB_ALWAYS, "UHMM_HUGETLB_ALWAYS"}});
}

void FillConfig(const uhmm::Config& c, uhmm_config_t* config) {
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
  config->migration_threads = c.migration_threads;
  config->growth_threshold = c.growth_threshold;
  config->thrashing_threshold = c.thrashing_threshold;
  config->thrashing_lapse_us = c.thrashing_lapse_us;
  config->hugetlb = static_cast<uhmm_hugetlb_mode_t>(c.hugetlb);
  config->hugetlb_min_bytes = c.hugetlb_min_bytes;
  config->fault_spin_us = c.fault_spin_us;
  config->placement = c.placement ? 1 : 0;
}

}  // namespace

extern "C" {

void uhmm_config_init(uhmm_config_t* config) {
  if (config == nullptr) return;
  // Reading the environment allocates; without memory the compiled-in defaults remain (a bad
  // environment is reported by uhmm_create, which reads it again).
  FillConfig(uhmm::Config(), config);
  (void)Guarded("uhmm_config_init", [&] {
    FillConfig(uhmm::Config::FromEnv(), config);
    return UHMM_OK;
  });
}

uhmm_status_t uhmm_create(const uhmm_config_t* config, uhmm_runtime_t** out) {
  if (out == nullptr) return Report(absl::InvalidArgumentError("uhmm_create: out is NULL"));
  *out = nullptr;
  if (config != nullptr) {
    if (absl::Status s = CheckConfigEnums(*config); !s.ok()) return Report(s);
  }
  return Guarded("uhmm_create", [&] {
    uhmm::Config c = uhmm::Config::FromEnv();
    if (config != nullptr) {
      if (config->backend != nullptr) c.backend = config->backend;
      c.fault_threads = config->fault_threads;
      c.device_pool_bytes = config->device_pool_bytes;
      c.fault_granularity = config->fault_granularity;
      c.host_devices = config->host_devices;
      c.sigbus_mode = static_cast<uhmm::SigbusMode>(RawEnum(config->sigbus_mode));
      c.device_pool_fraction = config->device_pool_fraction;
      c.transparent_launch = config->transparent_launch != 0;
      c.host_same_address = config->host_same_address != 0;
      if (config->trace_path != nullptr) c.trace_path = config->trace_path;
      c.print_stats = config->print_stats != 0;
      c.readahead_bytes = config->readahead_bytes;
      c.migration_threads = config->migration_threads;
      c.growth_threshold = config->growth_threshold;
      c.thrashing_threshold = config->thrashing_threshold;
      c.thrashing_lapse_us = config->thrashing_lapse_us;
      c.hugetlb = static_cast<uhmm::HugetlbMode>(RawEnum(config->hugetlb));
      if (config->hugetlb_min_bytes != 0) c.hugetlb_min_bytes = config->hugetlb_min_bytes;
      c.fault_spin_us = config->fault_spin_us;
      c.placement = config->placement != 0;
    }
    absl::StatusOr<std::unique_ptr<uhmm::Runtime>> rt = uhmm::Runtime::Create(c);
    if (!rt.ok()) return Report(rt.status());
    *out = new uhmm_runtime{std::move(*rt)};
    return UHMM_OK;
  });
}

void uhmm_destroy(uhmm_runtime_t* rt) { delete rt; }

uhmm_status_t uhmm_alloc(uhmm_runtime_t* rt, size_t size, void** out) {
  return uhmm_alloc_backed(rt, size, UHMM_BACKING_DEFAULT, out);
}

uhmm_status_t uhmm_alloc_backed(uhmm_runtime_t* rt, size_t size, uhmm_page_backing_t backing, void** out) {
  if (rt == nullptr) return NullRuntime("uhmm_alloc");
  if (out == nullptr) return Report(absl::InvalidArgumentError("uhmm_alloc: out is NULL"));
  *out = nullptr;
  const int raw_backing = RawEnum(backing);
  if (absl::Status s = CheckEnum("uhmm_alloc_backed: backing", raw_backing,
                                 {{UHMM_BACKING_DEFAULT, "UHMM_BACKING_DEFAULT"},
                                  {UHMM_BACKING_4K, "UHMM_BACKING_4K"},
                                  {UHMM_BACKING_HUGETLB, "UHMM_BACKING_HUGETLB"}});
      !s.ok()) {
    return Report(s);
  }
  return Guarded("uhmm_alloc", [&] {
    absl::StatusOr<void*> p = rt->rt->Allocate(size, static_cast<uhmm::Backing>(raw_backing));
    if (!p.ok()) return Report(p.status());
    *out = *p;
    return UHMM_OK;
  });
}

uhmm_status_t uhmm_free(uhmm_runtime_t* rt, void* ptr) {
  if (rt == nullptr) return NullRuntime("uhmm_free");
  return Guarded("uhmm_free", [&] { return Report(rt->rt->Free(ptr)); });
}

uhmm_status_t uhmm_migrate(uhmm_runtime_t* rt, void* ptr, size_t size, int device) {
  if (rt == nullptr) return NullRuntime("uhmm_migrate");
  return Guarded("uhmm_migrate", [&] { return Report(rt->rt->Migrate(ptr, size, device)); });
}

uhmm_status_t uhmm_prefetch_on_queue(uhmm_runtime_t* rt, void* ptr, size_t size, int device, void* queue) {
  if (rt == nullptr) return NullRuntime("uhmm_prefetch_on_queue");
  return Guarded("uhmm_prefetch_on_queue",
                 [&] { return Report(rt->rt->PrefetchOnQueue(ptr, size, device, queue)); });
}

uhmm_status_t uhmm_sync_for_device(uhmm_runtime_t* rt, int device, void* queue) {
  if (rt == nullptr) return NullRuntime("uhmm_sync_for_device");
  return Guarded("uhmm_sync_for_device", [&] { return Report(rt->rt->SyncForDevice(device, queue)); });
}

int uhmm_transparent_launch_enabled(const uhmm_runtime_t* rt) {
  return rt && rt->rt->transparent_launch_enabled() ? 1 : 0;
}

uhmm_status_t uhmm_get_native_handles(uhmm_runtime_t* rt, int device, uhmm_native_handles_t* out) {
  if (rt == nullptr) return NullRuntime("uhmm_get_native_handles");
  if (out == nullptr) return Report(absl::InvalidArgumentError("uhmm_get_native_handles: out is NULL"));
  return Guarded("uhmm_get_native_handles", [&] {
    absl::StatusOr<uhmm_native_handles_t> h = rt->rt->NativeHandles(device);
    if (!h.ok()) return Report(h.status());
    *out = *h;
    return UHMM_OK;
  });
}

uhmm_status_t uhmm_trace_start(uhmm_runtime_t* rt, const char* path) {
  if (rt == nullptr) return NullRuntime("uhmm_trace_start");
  if (path == nullptr || *path == 0) {
    return Report(absl::InvalidArgumentError("uhmm_trace_start: path is NULL or empty"));
  }
  return Guarded("uhmm_trace_start", [&] { return Report(rt->rt->StartTrace(path)); });
}

uhmm_status_t uhmm_trace_stop(uhmm_runtime_t* rt) {
  if (rt == nullptr) return NullRuntime("uhmm_trace_stop");
  return Guarded("uhmm_trace_stop", [&] { return Report(rt->rt->StopTrace()); });
}

uhmm_status_t uhmm_evict_device(uhmm_runtime_t* rt, int device) {
  if (rt == nullptr) return NullRuntime("uhmm_evict_device");
  return Guarded("uhmm_evict_device", [&] { return Report(rt->rt->EvictDevice(device)); });
}

namespace {

// uhmm_query_residency and uhmm_query_copies: one value per page into out[0..out_len).
uhmm_status_t QueryPages(const char* what, uhmm_runtime_t* rt, int32_t* out, size_t out_len,
                         const std::function<absl::StatusOr<std::vector<int32_t>>()>& query) {
  if (rt == nullptr) return NullRuntime(what);
  if (out == nullptr) return Report(absl::InvalidArgumentError(absl::StrCat(what, ": out is NULL")));
  return Guarded(what, [&] {
    absl::StatusOr<std::vector<int32_t>> r = query();
    if (!r.ok()) return Report(r.status());
    if (out_len < r->size()) {
      return Report(absl::InvalidArgumentError(
          absl::StrCat(what, ": out_len is smaller than the number of 4 KiB pages in the range")));
    }
    std::memcpy(out, r->data(), r->size() * sizeof(int32_t));
    return UHMM_OK;
  });
}

}  // namespace

uhmm_status_t uhmm_query_residency(uhmm_runtime_t* rt, const void* ptr, size_t size, int32_t* out,
                                   size_t out_len) {
  return QueryPages("uhmm_query_residency", rt, out, out_len, [&] { return rt->rt->Residency(ptr, size); });
}

uhmm_status_t uhmm_query_copies(uhmm_runtime_t* rt, const void* ptr, size_t size, int32_t* out,
                                size_t out_len) {
  return QueryPages("uhmm_query_copies", rt, out, out_len, [&] { return rt->rt->DeviceCopies(ptr, size); });
}

uhmm_status_t uhmm_advise(uhmm_runtime_t* rt, void* ptr, size_t size, uhmm_advice_t advice, int64_t arg) {
  if (rt == nullptr) return NullRuntime("uhmm_advise");
  // Any int converts to the C++ enum (its underlying type is int); the runtime checks the value.
  const auto raw_advice = static_cast<uhmm::Advice>(RawEnum(advice));
  return Guarded("uhmm_advise", [&] { return Report(rt->rt->Advise(ptr, size, raw_advice, arg)); });
}

uhmm_status_t uhmm_range_get_attribute(uhmm_runtime_t* rt, const void* ptr, size_t size,
                                       uhmm_range_attribute_t attribute, int64_t* out) {
  if (rt == nullptr) return NullRuntime("uhmm_range_get_attribute");
  if (out == nullptr) return Report(absl::InvalidArgumentError("uhmm_range_get_attribute: out is NULL"));
  const auto raw_attribute = static_cast<uhmm::RangeAttribute>(RawEnum(attribute));
  return Guarded("uhmm_range_get_attribute", [&] {
    absl::StatusOr<int64_t> v = rt->rt->GetRangeAttribute(ptr, size, raw_attribute);
    if (!v.ok()) return Report(v.status());
    *out = *v;
    return UHMM_OK;
  });
}

uhmm_status_t uhmm_get_stats(uhmm_runtime_t* rt, uhmm_stats_t* out) {
  if (rt == nullptr) return NullRuntime("uhmm_get_stats");
  if (out == nullptr) return Report(absl::InvalidArgumentError("uhmm_get_stats: out is NULL"));
  return Guarded("uhmm_get_stats", [&] {
    *out = rt->rt->stats();
    return UHMM_OK;
  });
}

uhmm_status_t uhmm_get_device_stats(uhmm_runtime_t* rt, int device, uhmm_device_stats_t* out) {
  if (rt == nullptr) return NullRuntime("uhmm_get_device_stats");
  if (out == nullptr) return Report(absl::InvalidArgumentError("uhmm_get_device_stats: out is NULL"));
  return Guarded("uhmm_get_device_stats", [&] {
    absl::StatusOr<uhmm::Runtime::DeviceStats> s = rt->rt->device_stats(device);
    if (!s.ok()) return Report(s.status());
    *out = {};
    out->pool_pages_total = s->pool_pages_total;
    out->pool_pages_used = s->pool_pages_used;
    out->peer_access = s->peer_access;
    std::snprintf(out->name, sizeof(out->name), "%s", s->name.c_str());
    return UHMM_OK;
  });
}

uhmm_status_t uhmm_find_allocation(uhmm_runtime_t* rt, const void* ptr, void** base, size_t* size) {
  if (rt == nullptr) return NullRuntime("uhmm_find_allocation");
  return Guarded("uhmm_find_allocation", [&] {
    absl::StatusOr<uhmm::Runtime::Allocation> a = rt->rt->FindAllocation(ptr);
    if (!a.ok()) return Report(a.status());
    if (base != nullptr) *base = a->start;
    if (size != nullptr) *size = a->size;
    return UHMM_OK;
  });
}

int uhmm_device_count(const uhmm_runtime_t* rt) { return rt ? rt->rt->device_count() : 0; }

const char* uhmm_backend_name(const uhmm_runtime_t* rt) { return rt ? rt->rt->backend_name().data() : ""; }

const char* uhmm_last_error(void) { return t_last_error.c_str(); }

const char* uhmm_status_string(uhmm_status_t status) {
  switch (status) {
    case UHMM_OK:
      return "UHMM_OK";
    case UHMM_ERROR_INVALID_ARGUMENT:
      return "UHMM_ERROR_INVALID_ARGUMENT";
    case UHMM_ERROR_NOT_FOUND:
      return "UHMM_ERROR_NOT_FOUND";
    case UHMM_ERROR_OUT_OF_MEMORY:
      return "UHMM_ERROR_OUT_OF_MEMORY";
    case UHMM_ERROR_UNAVAILABLE:
      return "UHMM_ERROR_UNAVAILABLE";
    case UHMM_ERROR_PERMISSION_DENIED:
      return "UHMM_ERROR_PERMISSION_DENIED";
    case UHMM_ERROR_FAILED_PRECONDITION:
      return "UHMM_ERROR_FAILED_PRECONDITION";
    case UHMM_ERROR_DEVICE:
      return "UHMM_ERROR_DEVICE";
    case UHMM_ERROR_INTERNAL:
      return "UHMM_ERROR_INTERNAL";
  }
  return "UHMM_ERROR_UNKNOWN";
}

}  // extern "C"
