// The interposer's managed-memory entry points: cuMemAllocManaged makes a uhmm allocation, and the
// calls that take a managed pointer (free, prefetch, advice, stream attachment, pointer and range
// attributes, address range) answer for uhmm's allocations and forward everything else untouched.
// docs/CUDA.md ("Unmodified programs") says what each does and how it differs from CUDA's.
#define __CUDA_API_VERSION_INTERNAL 1  // every exported form declared (real_driver.h)
#include <cuda.h>

#include <cstdio>
#include <cstring>
#include <optional>

#include "backends/cuda/interpose/managed_memory.h"
#include "backends/cuda/interpose/real_driver.h"

#define UHMM_EXPORT extern "C" __attribute__((visibility("default")))

using uhmm::interpose::ManagedMemory;

namespace {

constexpr uintptr_t kPage = uhmm::kPageSize;

// A CUDA location as a runtime location: one of the runtime's GPUs (its ordinal there), the host,
// or nullopt for a GPU of the machine that uhmm does not serve (UHMM_CUDA_DEVICES: advice and
// prefetches for it are accepted and do nothing). *bad: not a location at all.
std::optional<int> RuntimeLocation(const ManagedMemory::Use& mm, const CUmemLocation& loc, bool* bad) {
  *bad = false;
  switch (loc.type) {
    case CU_MEM_LOCATION_TYPE_HOST:
    case CU_MEM_LOCATION_TYPE_HOST_NUMA:
    case CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT:
      return uhmm::kHost;
    case CU_MEM_LOCATION_TYPE_DEVICE: {
      int count = 0;
      if (UHMM_REAL(cuDeviceGetCount)(&count) != CUDA_SUCCESS || loc.id < 0 || loc.id >= count) {
        *bad = true;
        return std::nullopt;
      }
      if (std::optional<int> r = mm->OrdinalOf(loc.id)) return *r;
      static std::once_flag said;
      std::call_once(said, [&] {
        std::fprintf(stderr,
                     "uhmm-run: advice or prefetch for GPU %d ignored: uhmm does not serve it (it serves "
                     "GPU %d; UHMM_CUDA_DEVICES=all serves every GPU)\n",
                     loc.id, static_cast<int>(mm->device()));
      });
      return std::nullopt;
    }
    default:
      *bad = true;
      return std::nullopt;
  }
}

CUmemLocation FromDevice(CUdevice dev) {
  CUmemLocation loc{};
  loc.type = dev == CU_DEVICE_CPU ? CU_MEM_LOCATION_TYPE_HOST : CU_MEM_LOCATION_TYPE_DEVICE;
  loc.id = dev == CU_DEVICE_CPU ? 0 : dev;
  return loc;
}

// The page-aligned part of [addr, addr+count) inside its allocation; nullopt (*err set) when
// `addr` is not managed or the span runs past its allocation.
struct Span {
  uintptr_t start, bytes, allocation;
};
std::optional<Span> ManagedSpan(const ManagedMemory::Use& mm, CUdeviceptr addr, size_t count, CUresult* err) {
  std::optional<uhmm::Runtime::Allocation> a = mm->Find(addr);
  if (!a) return std::nullopt;
  const uintptr_t start = reinterpret_cast<uintptr_t>(a->start);
  if (count == 0 || addr + count < addr || addr + count > start + a->size) {
    *err = CUDA_ERROR_INVALID_VALUE;
    return std::nullopt;
  }
  const uintptr_t lo = addr & ~(kPage - 1);
  const uintptr_t hi = (addr + count + kPage - 1) & ~(kPage - 1);
  return Span{lo, hi - lo, start};
}

CUresult Prefetch(const char* call, CUdeviceptr addr, size_t count, CUmemLocation loc, CUstream stream,
                  bool per_thread, CUresult (*forward)(CUdeviceptr, size_t, CUmemLocation, CUstream)) {
  ManagedMemory::Use mm = ManagedMemory::Get();
  CUresult err = CUDA_SUCCESS;
  std::optional<Span> span;
  if (mm) span = ManagedSpan(mm, addr, count, &err);
  if (!span) return err != CUDA_SUCCESS ? err : forward(addr, count, loc, stream);
  bool bad = false;
  std::optional<int> where = RuntimeLocation(mm, loc, &bad);
  if (bad) return CUDA_ERROR_INVALID_DEVICE;
  if (!where) return CUDA_SUCCESS;
  CUresult r;
  if (*where == uhmm::kHost) {
    r = mm->PrefetchHome(call, span->start, span->bytes, stream, per_thread);
  } else {
    mm->WaitForPrefetchesHome();
    r = uhmm::interpose::ToCuResult(
        call, mm->rt().PrefetchOnQueue(reinterpret_cast<void*>(span->start), span->bytes, *where, stream));
  }
  if (r == CUDA_SUCCESS)
    mm->NotePrefetch(span->allocation, *where == uhmm::kHost ? CU_DEVICE_CPU : mm->DeviceOf(*where));
  return r;
}

CUresult Advise(CUdeviceptr addr, size_t count, CUmem_advise advice, CUmemLocation loc,
                CUresult (*forward)(CUdeviceptr, size_t, CUmem_advise, CUmemLocation)) {
  ManagedMemory::Use mm = ManagedMemory::Get();
  CUresult err = CUDA_SUCCESS;
  std::optional<Span> span;
  if (mm) span = ManagedSpan(mm, addr, count, &err);
  if (!span) return err != CUDA_SUCCESS ? err : forward(addr, count, advice, loc);
  uhmm::Advice a;
  int64_t arg = 0;
  bool bad = false;
  std::optional<int> where;
  switch (advice) {
    case CU_MEM_ADVISE_SET_READ_MOSTLY:
      a = uhmm::Advice::kSetReadMostly;
      break;
    case CU_MEM_ADVISE_UNSET_READ_MOSTLY:
      a = uhmm::Advice::kUnsetReadMostly;
      break;
    case CU_MEM_ADVISE_UNSET_PREFERRED_LOCATION:
      a = uhmm::Advice::kUnsetPreferredLocation;
      break;
    case CU_MEM_ADVISE_SET_PREFERRED_LOCATION:
    case CU_MEM_ADVISE_SET_ACCESSED_BY:
    case CU_MEM_ADVISE_UNSET_ACCESSED_BY:
      where = RuntimeLocation(mm, loc, &bad);
      if (bad) return CUDA_ERROR_INVALID_DEVICE;
      if (!where) return CUDA_SUCCESS;  // another GPU
      if (advice == CU_MEM_ADVISE_SET_PREFERRED_LOCATION) {
        a = uhmm::Advice::kSetPreferredLocation;
        arg = *where;
      } else {
        if (*where == uhmm::kHost) return CUDA_SUCCESS;  // the CPU always maps what it touches
        a = advice == CU_MEM_ADVISE_SET_ACCESSED_BY ? uhmm::Advice::kSetAccessedBy
                                                    : uhmm::Advice::kUnsetAccessedBy;
        arg = *where;
      }
      break;
    default:
      return CUDA_ERROR_INVALID_VALUE;
  }
  return uhmm::interpose::ToCuResult(
      "cuMemAdvise", mm->rt().Advise(reinterpret_cast<void*>(span->start), span->bytes, a, arg));
}

// One pointer attribute of a managed allocation; false: not one uhmm answers (ask the driver).
bool ManagedPointerAttribute(const ManagedMemory::Use& mm, const uhmm::Runtime::Allocation& a,
                             CUpointer_attribute attribute, void* data) {
  const auto start = reinterpret_cast<CUdeviceptr>(a.start);
  switch (attribute) {
    case CU_POINTER_ATTRIBUTE_CONTEXT:
      *static_cast<CUcontext*>(data) = mm->context();
      return true;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
      *static_cast<unsigned int*>(data) = CU_MEMORYTYPE_DEVICE;  // as the driver says of managed memory
      return true;
    case CU_POINTER_ATTRIBUTE_IS_MANAGED:
    case CU_POINTER_ATTRIBUTE_MAPPED:
      *static_cast<int*>(data) = 1;
      return true;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
      *static_cast<int*>(data) = static_cast<int>(mm->device());
      return true;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
      *static_cast<CUdeviceptr*>(data) = start;
      return true;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
      *static_cast<size_t*>(data) = a.size;
      return true;
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE:
    case CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE:
      *static_cast<int*>(data) = 0;
      return true;
    case CU_POINTER_ATTRIBUTE_ACCESS_FLAGS:
      *static_cast<unsigned int*>(data) = CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READWRITE;
      return true;
    case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE:
      *static_cast<CUmemoryPool*>(data) = nullptr;
      return true;
    default:
      return false;
  }
}

}  // namespace

UHMM_EXPORT CUresult cuMemAllocManaged(CUdeviceptr* dptr, size_t bytesize, unsigned int flags) {
  if (dptr == nullptr || bytesize == 0 || (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST)) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  CUresult err = CUDA_SUCCESS;
  ManagedMemory::Use mm = ManagedMemory::GetOrCreate(&err);
  if (!mm) return err != CUDA_SUCCESS ? err : UHMM_REAL(cuMemAllocManaged)(dptr, bytesize, flags);
  absl::StatusOr<void*> p = mm->rt().Allocate(bytesize);
  if (!p.ok()) return uhmm::interpose::ToCuResult("cuMemAllocManaged", p.status());
  *dptr = reinterpret_cast<CUdeviceptr>(*p);
  return CUDA_SUCCESS;
}

UHMM_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
  if (ManagedMemory::Use mm = ManagedMemory::Get()) {
    if (std::optional<uhmm::Runtime::Allocation> a = mm->Find(dptr)) {
      // A pointer inside an allocation is not one cuMemAllocManaged returned.
      if (reinterpret_cast<CUdeviceptr>(a->start) != dptr) return CUDA_ERROR_INVALID_VALUE;
      return mm->Free(dptr);
    }
  }
  return UHMM_REAL(cuMemFree_v2)(dptr);
}

UHMM_EXPORT CUresult cuMemGetAddressRange_v2(CUdeviceptr* pbase, size_t* psize, CUdeviceptr dptr) {
  if (ManagedMemory::Use mm = ManagedMemory::Get()) {
    if (std::optional<uhmm::Runtime::Allocation> a = mm->Find(dptr)) {
      if (pbase != nullptr) *pbase = reinterpret_cast<CUdeviceptr>(a->start);
      if (psize != nullptr) *psize = a->size;
      return CUDA_SUCCESS;
    }
  }
  return UHMM_REAL(cuMemGetAddressRange_v2)(pbase, psize, dptr);
}

// cuMemPrefetchAsync: the CUDA 13 form (a location and flags) and the older one (a device,
// CU_DEVICE_CPU for the host), each with its per-thread default stream form.
UHMM_EXPORT CUresult cuMemPrefetchAsync_v2(CUdeviceptr p, size_t n, CUmemLocation loc, unsigned int flags,
                                           CUstream s) {
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  return Prefetch("cuMemPrefetchAsync", p, n, loc, s, false,
                  [](CUdeviceptr p, size_t n, CUmemLocation loc, CUstream s) {
                    return UHMM_REAL(cuMemPrefetchAsync_v2)(p, n, loc, 0, s);
                  });
}
UHMM_EXPORT CUresult cuMemPrefetchAsync_v2_ptsz(CUdeviceptr p, size_t n, CUmemLocation loc,
                                                unsigned int flags, CUstream s) {
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  return Prefetch("cuMemPrefetchAsync", p, n, loc, s, true,
                  [](CUdeviceptr p, size_t n, CUmemLocation loc, CUstream s) {
                    return UHMM_REAL(cuMemPrefetchAsync_v2_ptsz)(p, n, loc, 0, s);
                  });
}
UHMM_EXPORT CUresult cuMemPrefetchAsync(CUdeviceptr p, size_t n, CUdevice dev, CUstream s) {
  return Prefetch("cuMemPrefetchAsync", p, n, FromDevice(dev), s, false,
                  [](CUdeviceptr p, size_t n, CUmemLocation loc, CUstream s) {
                    return UHMM_REAL(cuMemPrefetchAsync)(
                        p, n, loc.type == CU_MEM_LOCATION_TYPE_HOST ? CU_DEVICE_CPU : loc.id, s);
                  });
}
UHMM_EXPORT CUresult cuMemPrefetchAsync_ptsz(CUdeviceptr p, size_t n, CUdevice dev, CUstream s) {
  return Prefetch("cuMemPrefetchAsync", p, n, FromDevice(dev), s, true,
                  [](CUdeviceptr p, size_t n, CUmemLocation loc, CUstream s) {
                    return UHMM_REAL(cuMemPrefetchAsync_ptsz)(
                        p, n, loc.type == CU_MEM_LOCATION_TYPE_HOST ? CU_DEVICE_CPU : loc.id, s);
                  });
}

// cuMemAdvise: the CUDA 13 form (a location) and the older one (a device).
UHMM_EXPORT CUresult cuMemAdvise_v2(CUdeviceptr p, size_t n, CUmem_advise advice, CUmemLocation loc) {
  return Advise(p, n, advice, loc, [](CUdeviceptr p, size_t n, CUmem_advise advice, CUmemLocation loc) {
    return UHMM_REAL(cuMemAdvise_v2)(p, n, advice, loc);
  });
}
UHMM_EXPORT CUresult cuMemAdvise(CUdeviceptr p, size_t n, CUmem_advise advice, CUdevice dev) {
  return Advise(p, n, advice, FromDevice(dev),
                [](CUdeviceptr p, size_t n, CUmem_advise advice, CUmemLocation loc) {
                  return UHMM_REAL(cuMemAdvise)(
                      p, n, advice, loc.type == CU_MEM_LOCATION_TYPE_HOST ? CU_DEVICE_CPU : loc.id);
                });
}

// Stream attachment narrows which streams may use managed memory; uhmm's is usable from every
// stream at all times, which satisfies every attachment. Checked, then accepted.
namespace {
CUresult AttachMem(CUstream s, CUdeviceptr p, size_t length, unsigned int flags,
                   CUresult (*forward)(CUstream, CUdeviceptr, size_t, unsigned int)) {
  if (ManagedMemory::Use mm = ManagedMemory::Get()) {
    if (std::optional<uhmm::Runtime::Allocation> a = mm->Find(p)) {
      const auto start = reinterpret_cast<CUdeviceptr>(a->start);
      if (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST && flags != CU_MEM_ATTACH_SINGLE)
        return CUDA_ERROR_INVALID_VALUE;
      if (length == 0 ? p != start : p + length < p || p + length > start + a->size)
        return CUDA_ERROR_INVALID_VALUE;
      return CUDA_SUCCESS;
    }
  }
  return forward(s, p, length, flags);
}
}  // namespace
UHMM_EXPORT CUresult cuStreamAttachMemAsync(CUstream s, CUdeviceptr p, size_t length, unsigned int flags) {
  return AttachMem(s, p, length, flags, UHMM_REAL(cuStreamAttachMemAsync));
}
UHMM_EXPORT CUresult cuStreamAttachMemAsync_ptsz(CUstream s, CUdeviceptr p, size_t length,
                                                 unsigned int flags) {
  return AttachMem(s, p, length, flags, UHMM_REAL(cuStreamAttachMemAsync_ptsz));
}

namespace {

// One pointer attribute of `ptr`, inside the managed allocation `a`: uhmm's answer, or the driver's
// for attributes uhmm does not know.
CUresult PointerAttribute(const ManagedMemory::Use& mm, const uhmm::Runtime::Allocation& a, void* data,
                          CUpointer_attribute attribute, CUdeviceptr ptr) {
  // One pointer: the same address on both sides.
  if (attribute == CU_POINTER_ATTRIBUTE_DEVICE_POINTER) {
    *static_cast<CUdeviceptr*>(data) = ptr;
    return CUDA_SUCCESS;
  }
  if (attribute == CU_POINTER_ATTRIBUTE_HOST_POINTER) {
    *static_cast<void**>(data) = reinterpret_cast<void*>(ptr);
    return CUDA_SUCCESS;
  }
  if (ManagedPointerAttribute(mm, a, attribute, data)) return CUDA_SUCCESS;
  return UHMM_REAL(cuPointerGetAttribute)(data, attribute, ptr);
}

}  // namespace

UHMM_EXPORT CUresult cuPointerGetAttribute(void* data, CUpointer_attribute attribute, CUdeviceptr ptr) {
  if (data == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (ManagedMemory::Use mm = ManagedMemory::Get()) {
    if (std::optional<uhmm::Runtime::Allocation> a = mm->Find(ptr))
      return PointerAttribute(mm, *a, data, attribute, ptr);
  }
  return UHMM_REAL(cuPointerGetAttribute)(data, attribute, ptr);
}

UHMM_EXPORT CUresult cuPointerGetAttributes(unsigned int n, CUpointer_attribute* attributes, void** data,
                                            CUdeviceptr ptr) {
  ManagedMemory::Use mm = ManagedMemory::Get();
  std::optional<uhmm::Runtime::Allocation> a;
  if (mm) a = mm->Find(ptr);
  if (!a) return UHMM_REAL(cuPointerGetAttributes)(n, attributes, data, ptr);
  if (attributes == nullptr || data == nullptr) return CUDA_ERROR_INVALID_VALUE;
  for (unsigned int i = 0; i < n; ++i) {
    if (data[i] == nullptr) continue;
    if (CUresult r = PointerAttribute(mm, *a, data[i], attributes[i], ptr); r != CUDA_SUCCESS) return r;
  }
  return CUDA_SUCCESS;
}

namespace {

// One range attribute of a managed span into data[0..size).
CUresult ManagedRangeAttribute(const ManagedMemory::Use& mm, const Span& span,
                               CUmem_range_attribute attribute, void* data, size_t size) {
  auto rt_attr = [&](uhmm::RangeAttribute ra, int64_t* out) {
    absl::StatusOr<int64_t> v =
        mm->rt().GetRangeAttribute(reinterpret_cast<const void*>(span.start), span.bytes, ra);
    if (!v.ok()) return uhmm::interpose::ToCuResult("cuMemRangeGetAttribute", v.status());
    *out = *v;
    return CUDA_SUCCESS;
  };
  auto put_int = [&](int v) {
    if (size != sizeof(int)) return CUDA_ERROR_INVALID_VALUE;
    std::memcpy(data, &v, sizeof(v));
    return CUDA_SUCCESS;
  };
  // A runtime ordinal as the CUDA device it is.
  auto gpu = [&](int64_t ordinal) { return static_cast<int>(mm->DeviceOf(static_cast<int>(ordinal))); };
  int64_t v = 0;
  switch (attribute) {
    case CU_MEM_RANGE_ATTRIBUTE_READ_MOSTLY:
      if (CUresult r = rt_attr(uhmm::RangeAttribute::kReadMostly, &v); r != CUDA_SUCCESS) return r;
      return put_int(v != 0);
    case CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION:
    case CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION_TYPE:
    case CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION_ID: {
      if (CUresult r = rt_attr(uhmm::RangeAttribute::kPreferredLocation, &v); r != CUDA_SUCCESS) return r;
      const bool none = v == uhmm::kNoLocation || v == uhmm::kMixedLocation;
      if (attribute == CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION)
        return put_int(none ? CU_DEVICE_INVALID : v == uhmm::kHost ? CU_DEVICE_CPU : gpu(v));
      if (attribute == CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION_TYPE)
        return put_int(none               ? CU_MEM_LOCATION_TYPE_INVALID
                       : v == uhmm::kHost ? CU_MEM_LOCATION_TYPE_HOST
                                          : CU_MEM_LOCATION_TYPE_DEVICE);
      return put_int(none || v == uhmm::kHost ? 0 : gpu(v));
    }
    case CU_MEM_RANGE_ATTRIBUTE_ACCESSED_BY: {
      if (size % sizeof(int) != 0 || size == 0) return CUDA_ERROR_INVALID_VALUE;
      if (CUresult r = rt_attr(uhmm::RangeAttribute::kAccessedBy, &v); r != CUDA_SUCCESS) return r;
      int* out = static_cast<int*>(data);
      const size_t slots = size / sizeof(int);
      for (size_t i = 0; i < slots; ++i) out[i] = CU_DEVICE_INVALID;
      // Each GPU the span is advised to be accessed by, in the runtime's order, as many as fit.
      size_t next = 0;
      for (int r = 0; r < mm->rt().device_count() && next < slots; ++r) {
        if ((v >> r) & 1) out[next++] = gpu(r);
      }
      return CUDA_SUCCESS;
    }
    case CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION:
    case CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION_TYPE:
    case CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION_ID: {
      const int last = mm->LastPrefetch(span.allocation);
      if (attribute == CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION) return put_int(last);
      if (attribute == CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION_TYPE)
        return put_int(last == CU_DEVICE_INVALID ? CU_MEM_LOCATION_TYPE_INVALID
                       : last == CU_DEVICE_CPU   ? CU_MEM_LOCATION_TYPE_HOST
                                                 : CU_MEM_LOCATION_TYPE_DEVICE);
      return put_int(last >= 0 ? last : 0);
    }
    default:
      return CUDA_ERROR_INVALID_VALUE;
  }
}

}  // namespace

UHMM_EXPORT CUresult cuMemRangeGetAttribute(void* data, size_t size, CUmem_range_attribute attribute,
                                            CUdeviceptr p, size_t count) {
  ManagedMemory::Use mm = ManagedMemory::Get();
  CUresult err = CUDA_SUCCESS;
  std::optional<Span> span;
  if (mm) span = ManagedSpan(mm, p, count, &err);
  if (!span)
    return err != CUDA_SUCCESS ? err : UHMM_REAL(cuMemRangeGetAttribute)(data, size, attribute, p, count);
  if (data == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return ManagedRangeAttribute(mm, *span, attribute, data, size);
}

UHMM_EXPORT CUresult cuMemRangeGetAttributes(void** data, size_t* sizes, CUmem_range_attribute* attributes,
                                             size_t n, CUdeviceptr p, size_t count) {
  ManagedMemory::Use mm = ManagedMemory::Get();
  CUresult err = CUDA_SUCCESS;
  std::optional<Span> span;
  if (mm) span = ManagedSpan(mm, p, count, &err);
  if (!span) {
    return err != CUDA_SUCCESS ? err
                               : UHMM_REAL(cuMemRangeGetAttributes)(data, sizes, attributes, n, p, count);
  }
  if (data == nullptr || sizes == nullptr || attributes == nullptr) return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < n; ++i) {
    if (data[i] == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ManagedRangeAttribute(mm, *span, attributes[i], data[i], sizes[i]); r != CUDA_SUCCESS)
      return r;
  }
  return CUDA_SUCCESS;
}
