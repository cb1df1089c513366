// Checks the emulated Level Zero driver (fake_ze_driver.cc) through the real loader: the driver is
// found, its device memory works as device memory, errors come back as a backend will see them, and
// the loader's tracing layer sees kernel launches.
//
// The loader reads ZE_ENABLE_ALT_DRIVERS and ZE_ENABLE_TRACING_LAYER at the first zeInit, so main()
// sets both before any test runs (ctest also sets ZE_ENABLE_ALT_DRIVERS).
//
// FakeZeTwoDevices.* need the driver to emulate several GPUs (UHMM_FAKE_ZE_DEVICES=2) and skip
// otherwise; ctest runs them with 2 devices, with and without peer access (UHMM_FAKE_ZE_PEER=none).
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <layers/zel_tracing_api.h>
#include <ze_api.h>
#include <ze_ddi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr size_t kPage = size_t{2} << 20;

#define ASSERT_ZE(expr) ASSERT_EQ((expr), ZE_RESULT_SUCCESS) << #expr
#define EXPECT_ZE(expr) EXPECT_EQ((expr), ZE_RESULT_SUCCESS) << #expr

// The driver's test hooks, reached the way the backend's tests will: the loader has it loaded.
struct Hooks {
  void (*fail_next_copies)(int) = nullptr;
  uint64_t (*copies_executed)() = nullptr;
  void* handle = nullptr;
};

Hooks GetHooks() {
  Hooks h;
  h.handle = dlopen(UHMM_FAKE_ZE_DRIVER, RTLD_NOW | RTLD_NOLOAD);
  if (h.handle == nullptr) return h;
  h.fail_next_copies = reinterpret_cast<void (*)(int)>(dlsym(h.handle, "uhmm_fake_ze_fail_next_copies"));
  h.copies_executed = reinterpret_cast<uint64_t (*)()>(dlsym(h.handle, "uhmm_fake_ze_copies_executed"));
  return h;
}

// A "SPIR-V module": the magic word and a few words of padding. The driver's kernels are built in.
std::vector<uint32_t> FakeSpirv() { return {0x07230203, 0x00010200, 0, 16, 0}; }

class FakeZe : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_ZE(zeInit(0));
    uint32_t n = 1;
    ASSERT_ZE(zeDriverGet(&n, &driver_));
    n = 1;
    ASSERT_ZE(zeDeviceGet(driver_, &n, &device_));
    ze_context_desc_t cd{ZE_STRUCTURE_TYPE_CONTEXT_DESC, nullptr, 0};
    ASSERT_ZE(zeContextCreate(driver_, &cd, &context_));
    ze_event_pool_desc_t pd{ZE_STRUCTURE_TYPE_EVENT_POOL_DESC, nullptr, ZE_EVENT_POOL_FLAG_HOST_VISIBLE, 16};
    ASSERT_ZE(zeEventPoolCreate(context_, &pd, 1, &device_, &pool_));
    ASSERT_TRUE(FindGroups());
  }

  void TearDown() override {
    for (ze_event_handle_t e : events_) EXPECT_ZE(zeEventDestroy(e));
    for (ze_command_list_handle_t l : lists_) EXPECT_ZE(zeCommandListDestroy(l));
    if (pool_ != nullptr) {
      EXPECT_ZE(zeEventPoolDestroy(pool_));
    }
    if (context_ != nullptr) {
      EXPECT_ZE(zeContextDestroy(context_));
    }
  }

  bool FindGroups() {
    uint32_t n = 0;
    if (zeDeviceGetCommandQueueGroupProperties(device_, &n, nullptr) != ZE_RESULT_SUCCESS) return false;
    std::vector<ze_command_queue_group_properties_t> props(n);
    for (auto& p : props) p = {ZE_STRUCTURE_TYPE_COMMAND_QUEUE_GROUP_PROPERTIES, nullptr, 0, 0, 0};
    if (zeDeviceGetCommandQueueGroupProperties(device_, &n, props.data()) != ZE_RESULT_SUCCESS) {
      return false;
    }
    for (uint32_t i = 0; i < n; ++i) {
      const bool compute = props[i].flags & ZE_COMMAND_QUEUE_GROUP_PROPERTY_FLAG_COMPUTE;
      const bool copy = props[i].flags & ZE_COMMAND_QUEUE_GROUP_PROPERTY_FLAG_COPY;
      if (compute && compute_group_ == UINT32_MAX) compute_group_ = i;
      if (copy && !compute && copy_group_ == UINT32_MAX) {
        copy_group_ = i;
        copy_queues_ = props[i].numQueues;
      }
    }
    return compute_group_ != UINT32_MAX && copy_group_ != UINT32_MAX;
  }

  ze_command_list_handle_t Immediate(uint32_t ordinal, uint32_t index = 0,
                                     ze_device_handle_t device = nullptr) {
    ze_command_queue_desc_t d{
        ZE_STRUCTURE_TYPE_COMMAND_QUEUE_DESC, nullptr, ordinal, index, 0, ZE_COMMAND_QUEUE_MODE_ASYNCHRONOUS,
        ZE_COMMAND_QUEUE_PRIORITY_NORMAL};
    ze_command_list_handle_t l = nullptr;
    EXPECT_ZE(zeCommandListCreateImmediate(context_, device != nullptr ? device : device_, &d, &l));
    lists_.push_back(l);
    return l;
  }

  // A module of the fake driver's built-in kernels (fill_u32, add_u32, ...); nullptr on failure.
  ze_module_handle_t FakeModule() {
    std::vector<uint32_t> spirv = FakeSpirv();
    ze_module_desc_t md{ZE_STRUCTURE_TYPE_MODULE_DESC,
                        nullptr,
                        ZE_MODULE_FORMAT_IL_SPIRV,
                        spirv.size() * 4,
                        reinterpret_cast<const uint8_t*>(spirv.data()),
                        nullptr,
                        nullptr};
    ze_module_handle_t module = nullptr;
    EXPECT_ZE(zeModuleCreate(context_, device_, &md, &module, nullptr));
    return module;
  }

  ze_event_handle_t Event() {
    ze_event_desc_t d{ZE_STRUCTURE_TYPE_EVENT_DESC, nullptr, static_cast<uint32_t>(events_.size()),
                      ZE_EVENT_SCOPE_FLAG_HOST, ZE_EVENT_SCOPE_FLAG_HOST};
    ze_event_handle_t e = nullptr;
    EXPECT_ZE(zeEventCreate(pool_, &d, &e));
    events_.push_back(e);
    return e;
  }

  // Device memory: reserve (at the hint when given), back with physical pages and map all of it.
  // Pages are mapped in reverse order of physical allocation to make copies cross mappings.
  struct DeviceMem {
    void* va = nullptr;
    size_t size = 0;
    std::vector<ze_physical_mem_handle_t> phys;
  };
  DeviceMem Allocate(size_t size, const void* hint = nullptr, size_t mapped_pages = SIZE_MAX,
                     ze_device_handle_t device = nullptr) {
    DeviceMem m;
    m.size = size;
    EXPECT_ZE(zeVirtualMemReserve(context_, hint, size, &m.va));
    const size_t pages = std::min(size / kPage, mapped_pages);
    for (size_t i = 0; i < pages; ++i) {
      ze_physical_mem_desc_t pd{ZE_STRUCTURE_TYPE_PHYSICAL_MEM_DESC, nullptr, 0, kPage};
      ze_physical_mem_handle_t p = nullptr;
      EXPECT_ZE(zePhysicalMemCreate(context_, device != nullptr ? device : device_, &pd, &p));
      m.phys.push_back(p);
      void* at = static_cast<char*>(m.va) + (pages - 1 - i) * kPage;
      EXPECT_ZE(zeVirtualMemMap(context_, at, kPage, p, 0, ZE_MEMORY_ACCESS_ATTRIBUTE_READWRITE));
    }
    return m;
  }
  void Free(DeviceMem& m) {
    const size_t pages = m.phys.size();
    for (size_t i = 0; i < pages; ++i) {
      EXPECT_ZE(zeVirtualMemUnmap(context_, static_cast<char*>(m.va) + i * kPage, kPage));
    }
    for (auto p : m.phys) EXPECT_ZE(zePhysicalMemDestroy(context_, p));
    EXPECT_ZE(zeVirtualMemFree(context_, m.va, m.size));
    m = DeviceMem{};
  }

  // Copies and waits through a barrier event; returns what the barrier's event reports.
  ze_result_t CopyAndWait(ze_command_list_handle_t list, void* dst, const void* src, size_t size) {
    ze_event_handle_t e = Event();
    EXPECT_ZE(zeCommandListAppendMemoryCopy(list, dst, src, size, nullptr, 0, nullptr));
    EXPECT_ZE(zeCommandListAppendBarrier(list, e, 0, nullptr));
    return zeEventHostSynchronize(e, UINT64_MAX);
  }

  ze_driver_handle_t driver_ = nullptr;
  ze_device_handle_t device_ = nullptr;
  ze_context_handle_t context_ = nullptr;
  ze_event_pool_handle_t pool_ = nullptr;
  std::vector<ze_event_handle_t> events_;
  std::vector<ze_command_list_handle_t> lists_;
  uint32_t compute_group_ = UINT32_MAX, copy_group_ = UINT32_MAX, copy_queues_ = 0;
};

TEST_F(FakeZe, InitTwiceFindsOneGpu) {
  ASSERT_ZE(zeInit(0));
  ASSERT_ZE(zeInit(ZE_INIT_FLAG_GPU_ONLY));
  uint32_t n = 0;
  ASSERT_ZE(zeDriverGet(&n, nullptr));
  EXPECT_EQ(n, 1u);
  n = 0;
  ASSERT_ZE(zeDeviceGet(driver_, &n, nullptr));
  EXPECT_EQ(n, 1u);
  ze_api_version_t version{};
  ASSERT_ZE(zeDriverGetApiVersion(driver_, &version));
  EXPECT_EQ(ZE_MAJOR_VERSION(version), 1u);

  ze_device_properties_t props{};
  props.stype = ZE_STRUCTURE_TYPE_DEVICE_PROPERTIES;
  ASSERT_ZE(zeDeviceGetProperties(device_, &props));
  EXPECT_EQ(props.type, ZE_DEVICE_TYPE_GPU);
  EXPECT_STREQ(props.name, "uhmm emulated Level Zero GPU");

  n = 0;
  ASSERT_ZE(zeDeviceGetMemoryProperties(device_, &n, nullptr));
  ASSERT_EQ(n, 1u);
  ze_device_memory_properties_t mem{};
  mem.stype = ZE_STRUCTURE_TYPE_DEVICE_MEMORY_PROPERTIES;
  ASSERT_ZE(zeDeviceGetMemoryProperties(device_, &n, &mem));
  EXPECT_EQ(mem.totalSize, uint64_t{1} << 30);

  ze_device_compute_properties_t compute{};
  compute.stype = ZE_STRUCTURE_TYPE_DEVICE_COMPUTE_PROPERTIES;
  ASSERT_ZE(zeDeviceGetComputeProperties(device_, &compute));
  EXPECT_EQ(compute.maxGroupSizeX, 1024u);
  EXPECT_ZE(zeContextGetStatus(context_));
}

TEST_F(FakeZe, HasACopyOnlyQueueGroup) {
  EXPECT_NE(copy_group_, compute_group_);
  EXPECT_EQ(copy_queues_, 2u);
}

TEST_F(FakeZe, EveryTableSlotIsFilled) {
  Hooks h = GetHooks();
  ASSERT_NE(h.handle, nullptr) << dlerror();
  auto get =
      reinterpret_cast<ze_pfnGetCommandListProcAddrTable_t>(dlsym(h.handle, "zeGetCommandListProcAddrTable"));
  ASSERT_NE(get, nullptr);
  ze_command_list_dditable_t table;
  std::memset(&table, 0, sizeof(table));
  EXPECT_EQ(get(static_cast<ze_api_version_t>(ZE_MAKE_VERSION(2, 0)), &table),
            ZE_RESULT_ERROR_UNSUPPORTED_VERSION);
  EXPECT_EQ(get(ZE_API_VERSION_CURRENT, nullptr), ZE_RESULT_ERROR_INVALID_NULL_POINTER);
  ASSERT_ZE(get(ZE_API_VERSION_CURRENT, &table));
  void* slots[sizeof(table) / sizeof(void*)];
  std::memcpy(slots, &table, sizeof(table));
  for (void* s : slots) EXPECT_NE(s, nullptr);
  for (const char* name : {"zesGetDeviceProcAddrTable", "zetGetTracerExpProcAddrTable",
                           "zeGetVirtualMemProcAddrTable", "zeGetKernelExpProcAddrTable"}) {
    EXPECT_NE(dlsym(h.handle, name), nullptr) << name;
  }
  dlclose(h.handle);
}

TEST_F(FakeZe, ReserveHonoursAFreeHint) {
  void* hint = reinterpret_cast<void*>(uintptr_t{0x5a0000000000});
  void* a = nullptr;
  ASSERT_ZE(zeVirtualMemReserve(context_, hint, 4 * kPage, &a));
  EXPECT_EQ(a, hint);
  void* b = nullptr;  // the same range again: taken, so the driver picks another
  ASSERT_ZE(zeVirtualMemReserve(context_, hint, 4 * kPage, &b));
  EXPECT_NE(b, hint);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % kPage, 0u);
  void* c = nullptr;  // an unaligned hint is not honoured
  ASSERT_ZE(zeVirtualMemReserve(context_, static_cast<char*>(hint) + 4096 + 8 * kPage, kPage, &c));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(c) % kPage, 0u);
  EXPECT_ZE(zeVirtualMemFree(context_, a, 4 * kPage));
  EXPECT_ZE(zeVirtualMemFree(context_, b, 4 * kPage));
  EXPECT_ZE(zeVirtualMemFree(context_, c, kPage));
}

TEST_F(FakeZe, HintsCanBeIgnoredForTestingCallers) {
  void* hint = reinterpret_cast<void*>(uintptr_t{0x5c0000000000});
  setenv("UHMM_FAKE_ZE_IGNORE_HINTS", "1", 1);
  void* a = nullptr;
  const ze_result_t r = zeVirtualMemReserve(context_, hint, kPage, &a);
  unsetenv("UHMM_FAKE_ZE_IGNORE_HINTS");
  ASSERT_ZE(r);
  EXPECT_NE(a, hint);
  EXPECT_ZE(zeVirtualMemFree(context_, a, kPage));
}

TEST_F(FakeZe, DeviceAndHostAllocations) {
  ze_device_mem_alloc_desc_t dd{ZE_STRUCTURE_TYPE_DEVICE_MEM_ALLOC_DESC, nullptr, 0, 0};
  ze_host_mem_alloc_desc_t hd{ZE_STRUCTURE_TYPE_HOST_MEM_ALLOC_DESC, nullptr, 0};
  void* dev = nullptr;
  void* host = nullptr;
  ASSERT_ZE(zeMemAllocDevice(context_, &dd, 3 << 20, 64, device_, &dev));
  ASSERT_ZE(zeMemAllocHost(context_, &hd, 4096, 64, &host));
  ze_memory_allocation_properties_t props{};
  props.stype = ZE_STRUCTURE_TYPE_MEMORY_ALLOCATION_PROPERTIES;
  ze_device_handle_t owner = nullptr;
  ASSERT_ZE(zeMemGetAllocProperties(context_, static_cast<char*>(dev) + 100, &props, &owner));
  EXPECT_EQ(props.type, ZE_MEMORY_TYPE_DEVICE);
  EXPECT_EQ(owner, device_);
  ASSERT_ZE(zeMemGetAllocProperties(context_, host, &props, nullptr));
  EXPECT_EQ(props.type, ZE_MEMORY_TYPE_HOST);
  int on_stack = 0;
  ASSERT_ZE(zeMemGetAllocProperties(context_, &on_stack, &props, nullptr));
  EXPECT_EQ(props.type, ZE_MEMORY_TYPE_UNKNOWN);

  ze_command_list_handle_t list = Immediate(copy_group_);
  std::memset(host, 0x5a, 4096);
  std::vector<uint8_t> back(4096, 0);
  ASSERT_ZE(CopyAndWait(list, static_cast<char*>(dev) + (2 << 20) - 100, host, 4096));
  ASSERT_ZE(CopyAndWait(list, back.data(), static_cast<char*>(dev) + (2 << 20) - 100, 4096));
  EXPECT_EQ(back, std::vector<uint8_t>(4096, 0x5a));
  EXPECT_ZE(zeMemFree(context_, dev));
  EXPECT_ZE(zeMemFree(context_, host));
  EXPECT_EQ(zeMemFree(context_, dev), ZE_RESULT_ERROR_INVALID_ARGUMENT);
}

TEST_F(FakeZe, BadVirtualMemoryCallsFail) {
  size_t page = 0;
  ASSERT_ZE(zeVirtualMemQueryPageSize(context_, device_, 4096, &page));
  EXPECT_EQ(page, kPage);
  ze_physical_mem_desc_t pd{ZE_STRUCTURE_TYPE_PHYSICAL_MEM_DESC, nullptr, 0, kPage / 2};
  ze_physical_mem_handle_t p = nullptr;
  EXPECT_EQ(zePhysicalMemCreate(context_, device_, &pd, &p), ZE_RESULT_ERROR_UNSUPPORTED_SIZE);
  pd.size = kPage;
  ASSERT_ZE(zePhysicalMemCreate(context_, device_, &pd, &p));
  void* va = nullptr;
  ASSERT_ZE(zeVirtualMemReserve(context_, nullptr, 2 * kPage, &va));
  char* base = static_cast<char*>(va);
  EXPECT_EQ(zeVirtualMemMap(context_, base + 4096, kPage, p, 0, ZE_MEMORY_ACCESS_ATTRIBUTE_READWRITE),
            ZE_RESULT_ERROR_UNSUPPORTED_ALIGNMENT);
  EXPECT_EQ(zeVirtualMemMap(context_, base, 2 * kPage, p, 0, ZE_MEMORY_ACCESS_ATTRIBUTE_READWRITE),
            ZE_RESULT_ERROR_INVALID_SIZE);
  ASSERT_ZE(zeVirtualMemMap(context_, base, kPage, p, 0, ZE_MEMORY_ACCESS_ATTRIBUTE_READWRITE));
  EXPECT_EQ(zeVirtualMemMap(context_, base, kPage, p, 0, ZE_MEMORY_ACCESS_ATTRIBUTE_READWRITE),
            ZE_RESULT_ERROR_INVALID_ARGUMENT);  // already mapped
  EXPECT_EQ(zePhysicalMemDestroy(context_, p), ZE_RESULT_ERROR_HANDLE_OBJECT_IN_USE);
  EXPECT_EQ(zeVirtualMemFree(context_, va, 2 * kPage), ZE_RESULT_ERROR_HANDLE_OBJECT_IN_USE);
  ASSERT_ZE(zeVirtualMemSetAccessAttribute(context_, base, kPage, ZE_MEMORY_ACCESS_ATTRIBUTE_READONLY));
  ze_memory_access_attribute_t access{};
  size_t out = 0;
  ASSERT_ZE(zeVirtualMemGetAccessAttribute(context_, base, kPage, &access, &out));
  EXPECT_EQ(access, ZE_MEMORY_ACCESS_ATTRIBUTE_READONLY);
  EXPECT_EQ(out, kPage);
  EXPECT_ZE(zeVirtualMemUnmap(context_, base, kPage));
  EXPECT_ZE(zePhysicalMemDestroy(context_, p));
  EXPECT_ZE(zeVirtualMemFree(context_, va, 2 * kPage));
}

TEST_F(FakeZe, CopyRoundTripThroughDeviceMemory) {
  Hooks h = GetHooks();
  ASSERT_NE(h.copies_executed, nullptr);
  const uint64_t copies_before = h.copies_executed();
  void* hint = reinterpret_cast<void*>(uintptr_t{0x5b0000000000});
  DeviceMem m = Allocate(4 * kPage, hint);
  ASSERT_EQ(m.va, hint);
  ze_command_list_handle_t list = Immediate(copy_group_, copy_queues_ - 1);

  // 3 MiB starting 1 MiB into the range: crosses two of the four (reversed) mappings.
  const size_t size = 3 << 20;
  std::vector<uint32_t> in(size / 4), out(size / 4, 0);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint32_t>(i * 2654435761u);
  char* dev = static_cast<char*>(m.va) + (1 << 20);
  ASSERT_ZE(CopyAndWait(list, dev, in.data(), size));
  ASSERT_ZE(CopyAndWait(list, out.data(), dev, size));
  EXPECT_EQ(in, out);
  EXPECT_EQ(h.copies_executed() - copies_before, 2u);
  dlclose(h.handle);
  Free(m);
}

TEST_F(FakeZe, UnmappedDeviceAddressLosesTheCommands) {
  DeviceMem m = Allocate(2 * kPage, nullptr, /*mapped_pages=*/1);  // second page unmapped
  ze_command_list_handle_t list = Immediate(copy_group_);
  std::vector<char> host(4096, 'x');
  char* unmapped = static_cast<char*>(m.va) + kPage;
  ze_event_handle_t copied = Event();
  ze_event_handle_t barrier = Event();
  ASSERT_ZE(zeCommandListAppendMemoryCopy(list, unmapped, host.data(), host.size(), copied, 0, nullptr));
  ASSERT_ZE(zeCommandListAppendBarrier(list, barrier, 0, nullptr));
  EXPECT_EQ(zeEventHostSynchronize(copied, UINT64_MAX), ZE_RESULT_ERROR_DEVICE_LOST);
  EXPECT_EQ(zeEventHostSynchronize(barrier, UINT64_MAX), ZE_RESULT_ERROR_DEVICE_LOST);
  EXPECT_EQ(zeEventQueryStatus(barrier), ZE_RESULT_ERROR_DEVICE_LOST);
  // A copy straddling the mapped and the unmapped page fails too; then the list works again.
  EXPECT_EQ(CopyAndWait(list, unmapped - 2048, host.data(), host.size()), ZE_RESULT_ERROR_DEVICE_LOST);
  EXPECT_ZE(CopyAndWait(list, m.va, host.data(), host.size()));
  Free(m);
}

TEST_F(FakeZe, InjectedCopyFailure) {
  Hooks h = GetHooks();
  ASSERT_NE(h.fail_next_copies, nullptr) << dlerror();
  ASSERT_NE(h.copies_executed, nullptr);
  DeviceMem m = Allocate(kPage);
  ze_command_list_handle_t list = Immediate(compute_group_);
  std::vector<uint32_t> a(1024, 1), b(1024, 2), back(1024, 0);
  ASSERT_ZE(CopyAndWait(list, m.va, a.data(), 4096));
  const uint64_t before = h.copies_executed();

  h.fail_next_copies(1);
  ze_event_handle_t e1 = Event(), e2 = Event(), e3 = Event(), e4 = Event();
  ASSERT_ZE(zeCommandListAppendMemoryCopy(list, m.va, b.data(), 4096, e1, 0, nullptr));  // fails
  ASSERT_ZE(zeCommandListAppendMemoryCopy(list, m.va, b.data(), 4096, e2, 0, nullptr));  // skipped
  ASSERT_ZE(zeCommandListAppendBarrier(list, e3, 0, nullptr));                           // lost
  ASSERT_ZE(zeCommandListAppendMemoryCopy(list, back.data(), m.va, 4096, e4, 0, nullptr));
  EXPECT_EQ(zeEventHostSynchronize(e1, UINT64_MAX), ZE_RESULT_ERROR_DEVICE_LOST);
  EXPECT_EQ(zeEventHostSynchronize(e2, UINT64_MAX), ZE_RESULT_ERROR_DEVICE_LOST);
  EXPECT_EQ(zeEventHostSynchronize(e3, UINT64_MAX), ZE_RESULT_ERROR_DEVICE_LOST);
  EXPECT_ZE(zeEventHostSynchronize(e4, UINT64_MAX));
  EXPECT_EQ(back, a);  // neither of the lost copies wrote
  EXPECT_EQ(h.copies_executed() - before, 1u);
  dlclose(h.handle);
  Free(m);
}

TEST_F(FakeZe, WaitEventsAreHonoured) {
  ze_command_list_handle_t list = Immediate(copy_group_);
  ze_event_handle_t gate = Event(), done = Event();
  uint64_t src = 42, dst = 0;
  ASSERT_ZE(zeCommandListAppendMemoryCopy(list, &dst, &src, sizeof(src), done, 1, &gate));
  EXPECT_EQ(zeEventHostSynchronize(done, 20'000'000), ZE_RESULT_NOT_READY);
  EXPECT_EQ(dst, 0u);
  ASSERT_ZE(zeEventHostSignal(gate));
  ASSERT_ZE(zeEventHostSynchronize(done, UINT64_MAX));
  EXPECT_EQ(dst, 42u);
  ASSERT_ZE(zeEventHostReset(done));
  EXPECT_EQ(zeEventQueryStatus(done), ZE_RESULT_NOT_READY);
}

TEST_F(FakeZe, RegularListOnAQueue) {
  DeviceMem m = Allocate(kPage);
  ze_command_list_desc_t ld{ZE_STRUCTURE_TYPE_COMMAND_LIST_DESC, nullptr, copy_group_, 0};
  ze_command_list_handle_t list = nullptr;
  ASSERT_ZE(zeCommandListCreate(context_, device_, &ld, &list));
  ze_command_queue_desc_t qd{
      ZE_STRUCTURE_TYPE_COMMAND_QUEUE_DESC, nullptr, copy_group_, 0, 0, ZE_COMMAND_QUEUE_MODE_ASYNCHRONOUS,
      ZE_COMMAND_QUEUE_PRIORITY_NORMAL};
  ze_command_queue_handle_t queue = nullptr;
  ASSERT_ZE(zeCommandQueueCreate(context_, device_, &qd, &queue));
  uint64_t in = 0x1234, out = 0;
  ASSERT_ZE(zeCommandListAppendMemoryCopy(list, m.va, &in, sizeof(in), nullptr, 0, nullptr));
  ASSERT_ZE(zeCommandListAppendBarrier(list, nullptr, 0, nullptr));
  ASSERT_ZE(zeCommandListAppendMemoryCopy(list, &out, m.va, sizeof(out), nullptr, 0, nullptr));
  ASSERT_ZE(zeCommandListClose(list));
  ASSERT_ZE(zeCommandQueueExecuteCommandLists(queue, 1, &list, nullptr));
  ASSERT_ZE(zeCommandQueueSynchronize(queue, UINT64_MAX));
  EXPECT_EQ(out, in);

  // A failing list: the queue reports the device error once.
  Hooks h = GetHooks();
  ASSERT_NE(h.fail_next_copies, nullptr);
  h.fail_next_copies(1);
  ASSERT_ZE(zeCommandQueueExecuteCommandLists(queue, 1, &list, nullptr));
  EXPECT_EQ(zeCommandQueueSynchronize(queue, UINT64_MAX), ZE_RESULT_ERROR_DEVICE_LOST);
  EXPECT_ZE(zeCommandQueueSynchronize(queue, UINT64_MAX));
  ASSERT_ZE(zeCommandListReset(list));
  dlclose(h.handle);
  EXPECT_ZE(zeCommandQueueDestroy(queue));
  EXPECT_ZE(zeCommandListDestroy(list));
  Free(m);
}

TEST_F(FakeZe, RejectsBadModulesAndUnknownKernels) {
  const uint32_t not_spirv[4] = {0xdeadbeef, 0, 0, 0};
  ze_module_desc_t md{ZE_STRUCTURE_TYPE_MODULE_DESC,
                      nullptr,
                      ZE_MODULE_FORMAT_IL_SPIRV,
                      sizeof(not_spirv),
                      reinterpret_cast<const uint8_t*>(not_spirv),
                      nullptr,
                      nullptr};
  ze_module_handle_t module = nullptr;
  ze_module_build_log_handle_t log = nullptr;
  EXPECT_EQ(zeModuleCreate(context_, device_, &md, &module, &log), ZE_RESULT_ERROR_MODULE_BUILD_FAILURE);
  ASSERT_NE(log, nullptr);
  size_t size = 0;
  ASSERT_ZE(zeModuleBuildLogGetString(log, &size, nullptr));
  std::string text(size, '\0');
  ASSERT_ZE(zeModuleBuildLogGetString(log, &size, text.data()));
  EXPECT_NE(text.find("SPIR-V"), std::string::npos);
  EXPECT_ZE(zeModuleBuildLogDestroy(log));

  std::vector<uint32_t> spirv = FakeSpirv();
  md.inputSize = spirv.size() * 4;
  md.pInputModule = reinterpret_cast<const uint8_t*>(spirv.data());
  ASSERT_ZE(zeModuleCreate(context_, device_, &md, &module, nullptr));
  ze_kernel_desc_t kd{ZE_STRUCTURE_TYPE_KERNEL_DESC, nullptr, 0, "no_such_kernel"};
  ze_kernel_handle_t kernel = nullptr;
  EXPECT_EQ(zeKernelCreate(module, &kd, &kernel), ZE_RESULT_ERROR_INVALID_KERNEL_NAME);
  EXPECT_ZE(zeModuleDestroy(module));
}

TEST_F(FakeZe, UnsupportedCallsSaySo) {
  ze_image_desc_t desc{};
  desc.stype = ZE_STRUCTURE_TYPE_IMAGE_DESC;
  desc.type = ZE_IMAGE_TYPE_2D;
  desc.width = 16;
  desc.height = 16;
  desc.depth = 1;
  ze_image_handle_t image = nullptr;
  EXPECT_EQ(zeImageCreate(context_, device_, &desc, &image), ZE_RESULT_ERROR_UNSUPPORTED_FEATURE);
}

struct TraceCounts {
  std::atomic<int> launches{0};
  std::atomic<ze_kernel_handle_t> last{nullptr};
};

void OnLaunch(ze_command_list_append_launch_kernel_params_t* params, ze_result_t, void* user, void**) {
  auto* t = static_cast<TraceCounts*>(user);
  t->last = *params->phKernel;
  t->launches.fetch_add(1);
}

// Launches add_u32 on device memory (filled with fill_u32 first) and checks the result, with the
// tracing layer watching the launches.
TEST_F(FakeZe, KernelsRunOnDeviceMemoryAndAreTraced) {
  TraceCounts counts;
  zel_tracer_desc_t td{ZEL_STRUCTURE_TYPE_TRACER_DESC, nullptr, &counts};
  zel_tracer_handle_t tracer = nullptr;
  ASSERT_ZE(zelTracerCreate(&td, &tracer));
  zel_core_callbacks_t prologues{};
  prologues.CommandList.pfnAppendLaunchKernelCb = &OnLaunch;
  ASSERT_ZE(zelTracerSetPrologues(tracer, &prologues));
  ASSERT_ZE(zelTracerSetEnabled(tracer, true));

  ze_module_handle_t module = FakeModule();
  ASSERT_NE(module, nullptr);
  ze_kernel_handle_t fill = nullptr, add = nullptr;
  ze_kernel_desc_t kd{ZE_STRUCTURE_TYPE_KERNEL_DESC, nullptr, 0, "fill_u32"};
  ASSERT_ZE(zeKernelCreate(module, &kd, &fill));
  kd.pKernelName = "add_u32";
  ASSERT_ZE(zeKernelCreate(module, &kd, &add));

  DeviceMem m = Allocate(2 * kPage);
  const uint32_t n = (3 << 20) / 4;  // 3 MiB of words: both pages
  uint32_t gx = 0, gy = 0, gz = 0;
  ASSERT_ZE(zeKernelSuggestGroupSize(add, n, 1, 1, &gx, &gy, &gz));
  ASSERT_EQ(n % gx, 0u);
  ze_group_count_t groups{n / gx, 1, 1};
  uint64_t ptr = reinterpret_cast<uintptr_t>(m.va);
  uint32_t seven = 7, five = 5;
  for (ze_kernel_handle_t k : {fill, add}) {
    ASSERT_ZE(zeKernelSetGroupSize(k, gx, gy, gz));
    ASSERT_ZE(zeKernelSetArgumentValue(k, 0, sizeof(ptr), &ptr));
    ASSERT_ZE(zeKernelSetArgumentValue(k, 1, sizeof(uint32_t), k == fill ? &seven : &five));
    ASSERT_ZE(zeKernelSetArgumentValue(k, 2, sizeof(n), &n));
  }
  EXPECT_EQ(zeKernelSetArgumentValue(add, 3, 4, &n), ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_INDEX);
  EXPECT_EQ(zeKernelSetArgumentValue(add, 1, 8, &ptr), ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_SIZE);

  ze_command_list_handle_t list = Immediate(compute_group_);
  ze_event_handle_t done = Event();
  ASSERT_ZE(zeCommandListAppendLaunchKernel(list, fill, &groups, nullptr, 0, nullptr));
  ASSERT_ZE(zeCommandListAppendLaunchKernel(list, add, &groups, done, 0, nullptr));
  ASSERT_ZE(zeEventHostSynchronize(done, UINT64_MAX));
  EXPECT_EQ(counts.launches.load(), 2);
  EXPECT_EQ(counts.last.load(), add);

  std::vector<uint32_t> out(n + 1, 0);
  ASSERT_ZE(CopyAndWait(list, out.data(), m.va, out.size() * 4));
  for (uint32_t i = 0; i < n; ++i) ASSERT_EQ(out[i], 12u) << i;
  EXPECT_EQ(out[n], 0u);  // past n: untouched

  // A kernel touching an unmapped device address is a device error.
  DeviceMem hole = Allocate(kPage, nullptr, /*mapped_pages=*/0);
  uint64_t bad = reinterpret_cast<uintptr_t>(hole.va);
  ASSERT_ZE(zeKernelSetArgumentValue(add, 0, sizeof(bad), &bad));
  ze_event_handle_t lost = Event();
  ASSERT_ZE(zeCommandListAppendLaunchKernel(list, add, &groups, lost, 0, nullptr));
  EXPECT_EQ(zeEventHostSynchronize(lost, UINT64_MAX), ZE_RESULT_ERROR_DEVICE_LOST);

  ASSERT_ZE(zelTracerSetEnabled(tracer, false));
  EXPECT_ZE(zelTracerDestroy(tracer));
  EXPECT_ZE(zeKernelDestroy(fill));
  EXPECT_ZE(zeKernelDestroy(add));
  EXPECT_ZE(zeModuleDestroy(module));
  Free(hole);
  Free(m);
}

TEST_F(FakeZe, ConcurrentListsDoNotInterfere) {
  DeviceMem m = Allocate(4 * kPage);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      ze_command_queue_desc_t d{ZE_STRUCTURE_TYPE_COMMAND_QUEUE_DESC,
                                nullptr,
                                t % 2 ? copy_group_ : compute_group_,
                                0,
                                0,
                                ZE_COMMAND_QUEUE_MODE_SYNCHRONOUS,
                                ZE_COMMAND_QUEUE_PRIORITY_NORMAL};
      ze_command_list_handle_t list = nullptr;
      if (zeCommandListCreateImmediate(context_, device_, &d, &list) != ZE_RESULT_SUCCESS) {
        failures++;
        return;
      }
      char* dev = static_cast<char*>(m.va) + t * kPage;
      for (int i = 0; i < 50; ++i) {
        std::vector<uint8_t> in(65536, static_cast<uint8_t>(t * 50 + i)), out(65536, 0);
        if (zeCommandListAppendMemoryCopy(list, dev, in.data(), in.size(), nullptr, 0, nullptr) !=
                ZE_RESULT_SUCCESS ||
            zeCommandListAppendMemoryCopy(list, out.data(), dev, out.size(), nullptr, 0, nullptr) !=
                ZE_RESULT_SUCCESS ||
            in != out) {
          failures++;
        }
      }
      zeCommandListDestroy(list);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  Free(m);
}

// ------------------------------------------------------------------------------------------------
// Several GPUs (UHMM_FAKE_ZE_DEVICES=2): one context, one device address space, memory per device.

class FakeZeTwoDevices : public FakeZe {
 protected:
  void SetUp() override {
    FakeZe::SetUp();
    if (HasFatalFailure()) return;
    uint32_t n = 0;
    ASSERT_ZE(zeDeviceGet(driver_, &n, nullptr));
    if (n < 2) GTEST_SKIP() << "the driver emulates one GPU; run with UHMM_FAKE_ZE_DEVICES=2";
    ASSERT_EQ(n, 2u) << "run with UHMM_FAKE_ZE_DEVICES=2";
    ze_device_handle_t devs[2] = {nullptr, nullptr};
    ASSERT_ZE(zeDeviceGet(driver_, &n, devs));
    ASSERT_EQ(devs[0], device_);
    device1_ = devs[1];
    const char* peer = std::getenv("UHMM_FAKE_ZE_PEER");
    peer_ = peer == nullptr || std::string(peer) != "none";
  }

  // A regular list of `device` holding one copy, run on a queue of that device; returns what the
  // queue reports.
  ze_result_t CopyOnQueue(ze_device_handle_t device, void* dst, const void* src, size_t size) {
    ze_command_list_desc_t ld{ZE_STRUCTURE_TYPE_COMMAND_LIST_DESC, nullptr, copy_group_, 0};
    ze_command_list_handle_t list = nullptr;
    EXPECT_ZE(zeCommandListCreate(context_, device, &ld, &list));
    ze_command_queue_desc_t qd{
        ZE_STRUCTURE_TYPE_COMMAND_QUEUE_DESC, nullptr, copy_group_, 0, 0, ZE_COMMAND_QUEUE_MODE_ASYNCHRONOUS,
        ZE_COMMAND_QUEUE_PRIORITY_NORMAL};
    ze_command_queue_handle_t queue = nullptr;
    EXPECT_ZE(zeCommandQueueCreate(context_, device, &qd, &queue));
    EXPECT_ZE(zeCommandListAppendMemoryCopy(list, dst, src, size, nullptr, 0, nullptr));
    EXPECT_ZE(zeCommandListClose(list));
    EXPECT_ZE(zeCommandQueueExecuteCommandLists(queue, 1, &list, nullptr));
    const ze_result_t r = zeCommandQueueSynchronize(queue, UINT64_MAX);
    EXPECT_ZE(zeCommandQueueDestroy(queue));
    EXPECT_ZE(zeCommandListDestroy(list));
    return r;
  }

  ze_device_handle_t device1_ = nullptr;
  bool peer_ = true;
};

TEST_F(FakeZeTwoDevices, ListsTwoAlikeGpus) {
  EXPECT_NE(device1_, device_);
  uint32_t n = 1;  // asking for fewer gets the first ones
  ze_device_handle_t first = nullptr;
  ASSERT_ZE(zeDeviceGet(driver_, &n, &first));
  EXPECT_EQ(n, 1u);
  EXPECT_EQ(first, device_);

  ze_device_properties_t p0{}, p1{};
  p0.stype = p1.stype = ZE_STRUCTURE_TYPE_DEVICE_PROPERTIES;
  ASSERT_ZE(zeDeviceGetProperties(device_, &p0));
  ASSERT_ZE(zeDeviceGetProperties(device1_, &p1));
  EXPECT_STREQ(p0.name, "uhmm emulated Level Zero GPU");
  EXPECT_STREQ(p1.name, "uhmm emulated Level Zero GPU 1");
  EXPECT_EQ(p1.type, ZE_DEVICE_TYPE_GPU);
  EXPECT_NE(std::memcmp(p0.uuid.id, p1.uuid.id, sizeof(p0.uuid.id)), 0);
  EXPECT_EQ(p0.maxMemAllocSize, p1.maxMemAllocSize);

  // The same queue groups, memory and page size; no sub-devices.
  for (ze_device_handle_t d : {device_, device1_}) {
    uint32_t groups = 0;
    ASSERT_ZE(zeDeviceGetCommandQueueGroupProperties(d, &groups, nullptr));
    EXPECT_EQ(groups, 2u);
    uint32_t mems = 1;
    ze_device_memory_properties_t mem{};
    mem.stype = ZE_STRUCTURE_TYPE_DEVICE_MEMORY_PROPERTIES;
    ASSERT_ZE(zeDeviceGetMemoryProperties(d, &mems, &mem));
    EXPECT_EQ(mem.totalSize, uint64_t{1} << 30);
    size_t page = 0;
    ASSERT_ZE(zeVirtualMemQueryPageSize(context_, d, 4096, &page));
    EXPECT_EQ(page, kPage);
    uint32_t subs = 5;
    ASSERT_ZE(zeDeviceGetSubDevices(d, &subs, nullptr));
    EXPECT_EQ(subs, 0u);
  }
}

TEST_F(FakeZeTwoDevices, CanAccessPeerAnswersPerPair) {
  ze_bool_t can = 7;
  ASSERT_ZE(zeDeviceCanAccessPeer(device_, device_, &can));
  EXPECT_EQ(can, 1);
  ASSERT_ZE(zeDeviceCanAccessPeer(device1_, device1_, &can));
  EXPECT_EQ(can, 1);
  ASSERT_ZE(zeDeviceCanAccessPeer(device_, device1_, &can));
  EXPECT_EQ(can, peer_ ? 1 : 0);
  can = 7;
  ASSERT_ZE(zeDeviceCanAccessPeer(device1_, device_, &can));
  EXPECT_EQ(can, peer_ ? 1 : 0);
}

TEST_F(FakeZeTwoDevices, EachDeviceHasItsOwnGibibyte) {
  ze_physical_mem_desc_t pd{ZE_STRUCTURE_TYPE_PHYSICAL_MEM_DESC, nullptr, 0, size_t{1} << 30};
  ze_physical_mem_handle_t all0 = nullptr, all1 = nullptr, more = nullptr;
  ASSERT_ZE(zePhysicalMemCreate(context_, device_, &pd, &all0));
  ASSERT_ZE(zePhysicalMemCreate(context_, device1_, &pd, &all1));  // device 0's use does not count
  pd.size = kPage;
  EXPECT_EQ(zePhysicalMemCreate(context_, device_, &pd, &more), ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY);
  EXPECT_EQ(zePhysicalMemCreate(context_, device1_, &pd, &more), ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY);
  EXPECT_ZE(zePhysicalMemDestroy(context_, all1));  // gives back device 1's, not device 0's
  EXPECT_EQ(zePhysicalMemCreate(context_, device_, &pd, &more), ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY);
  ASSERT_ZE(zePhysicalMemCreate(context_, device1_, &pd, &more));
  EXPECT_ZE(zePhysicalMemDestroy(context_, more));
  EXPECT_ZE(zePhysicalMemDestroy(context_, all0));

  // zeMemAllocDevice memory belongs to (and is reported on) the device it was allocated on.
  ze_device_mem_alloc_desc_t dd{ZE_STRUCTURE_TYPE_DEVICE_MEM_ALLOC_DESC, nullptr, 0, 0};
  void* dev = nullptr;
  ASSERT_ZE(zeMemAllocDevice(context_, &dd, kPage, 64, device1_, &dev));
  ze_memory_allocation_properties_t props{};
  props.stype = ZE_STRUCTURE_TYPE_MEMORY_ALLOCATION_PROPERTIES;
  ze_device_handle_t owner = nullptr;
  ASSERT_ZE(zeMemGetAllocProperties(context_, dev, &props, &owner));
  EXPECT_EQ(props.type, ZE_MEMORY_TYPE_DEVICE);
  EXPECT_EQ(owner, device1_);
  EXPECT_ZE(zeMemFree(context_, dev));
}

// Device 1's memory at a device address: device 1's lists read and write it; device 0's reach it
// only over peer access, and without it their commands are lost like any device fault.
TEST_F(FakeZeTwoDevices, AnotherDevicesMemoryNeedsPeerAccess) {
  DeviceMem m = Allocate(2 * kPage, nullptr, SIZE_MAX, device1_);
  ze_command_list_handle_t list1 = Immediate(copy_group_, 0, device1_);
  ze_command_list_handle_t list0 = Immediate(copy_group_, 0, device_);

  // 1 MiB across the two (reversed) mappings.
  char* dev = static_cast<char*>(m.va) + kPage - (512 << 10);
  std::vector<uint32_t> in((1 << 20) / 4), out(in.size(), 0);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint32_t>(i * 2654435761u);
  const size_t size = in.size() * 4;
  ASSERT_ZE(CopyAndWait(list1, dev, in.data(), size));
  ASSERT_ZE(CopyAndWait(list1, out.data(), dev, size));
  EXPECT_EQ(out, in);
  std::fill(out.begin(), out.end(), 0);
  EXPECT_ZE(CopyOnQueue(device1_, out.data(), dev, size));
  EXPECT_EQ(out, in);

  // Device 0: an immediate list, and a regular list on a queue.
  std::fill(out.begin(), out.end(), 0);
  const ze_result_t lost = peer_ ? ZE_RESULT_SUCCESS : ZE_RESULT_ERROR_DEVICE_LOST;
  EXPECT_EQ(CopyAndWait(list0, out.data(), dev, size), lost);
  EXPECT_EQ(out, peer_ ? in : std::vector<uint32_t>(in.size(), 0));
  std::fill(out.begin(), out.end(), 0);
  EXPECT_EQ(CopyOnQueue(device_, out.data(), dev, size), lost);
  EXPECT_EQ(out, peer_ ? in : std::vector<uint32_t>(in.size(), 0));

  // A write (a fill) by device 0; device 1 reads back what landed.
  const uint32_t pattern = 0xabcdef01;
  ze_event_handle_t filled = Event();
  ASSERT_ZE(zeCommandListAppendMemoryFill(list0, dev, &pattern, sizeof(pattern), size, nullptr, 0, nullptr));
  ASSERT_ZE(zeCommandListAppendBarrier(list0, filled, 0, nullptr));  // ends a failure
  EXPECT_EQ(zeEventHostSynchronize(filled, UINT64_MAX), lost);
  ASSERT_ZE(CopyAndWait(list1, out.data(), dev, size));
  EXPECT_EQ(out, peer_ ? std::vector<uint32_t>(in.size(), pattern) : in);

  // Device 0's lists still work on host memory and on device 0's own memory.
  uint64_t src = 42, dst = 0;
  EXPECT_ZE(CopyAndWait(list0, &dst, &src, sizeof(src)));
  EXPECT_EQ(dst, 42u);
  DeviceMem mine = Allocate(kPage);
  EXPECT_ZE(CopyAndWait(list0, mine.va, &src, sizeof(src)));
  EXPECT_EQ(CopyAndWait(list1, &dst, mine.va, sizeof(dst)), lost);  // and the other way round
  Free(mine);
  Free(m);
}

TEST_F(FakeZeTwoDevices, KernelsReachAnotherDevicesMemoryOnlyAsPeers) {
  ze_module_handle_t module = FakeModule();
  ASSERT_NE(module, nullptr);
  ze_kernel_handle_t fill = nullptr;
  ze_kernel_desc_t kd{ZE_STRUCTURE_TYPE_KERNEL_DESC, nullptr, 0, "fill_u32"};
  ASSERT_ZE(zeKernelCreate(module, &kd, &fill));
  DeviceMem m = Allocate(kPage, nullptr, SIZE_MAX, device1_);
  const uint32_t n = 1024, nine = 9;
  uint64_t ptr = reinterpret_cast<uintptr_t>(m.va);
  ASSERT_ZE(zeKernelSetGroupSize(fill, 64, 1, 1));
  ASSERT_ZE(zeKernelSetArgumentValue(fill, 0, sizeof(ptr), &ptr));
  ASSERT_ZE(zeKernelSetArgumentValue(fill, 1, sizeof(nine), &nine));
  ASSERT_ZE(zeKernelSetArgumentValue(fill, 2, sizeof(n), &n));
  ze_group_count_t groups{n / 64, 1, 1};
  ze_command_list_handle_t list0 = Immediate(compute_group_, 0, device_);
  ze_event_handle_t done = Event();
  ASSERT_ZE(zeCommandListAppendLaunchKernel(list0, fill, &groups, done, 0, nullptr));
  EXPECT_EQ(zeEventHostSynchronize(done, UINT64_MAX),
            peer_ ? ZE_RESULT_SUCCESS : ZE_RESULT_ERROR_DEVICE_LOST);
  std::vector<uint32_t> out(n, 0);
  ASSERT_ZE(CopyAndWait(Immediate(copy_group_, 0, device1_), out.data(), m.va, n * 4));
  EXPECT_EQ(out, std::vector<uint32_t>(n, peer_ ? 9u : 0u));
  EXPECT_ZE(zeKernelDestroy(fill));
  EXPECT_ZE(zeModuleDestroy(module));
  Free(m);
}

TEST_F(FakeZeTwoDevices, OneAddressSpaceForAllDevices) {
  DeviceMem m = Allocate(kPage);  // device 0's memory
  ze_physical_mem_desc_t pd{ZE_STRUCTURE_TYPE_PHYSICAL_MEM_DESC, nullptr, 0, kPage};
  ze_physical_mem_handle_t p1 = nullptr;
  ASSERT_ZE(zePhysicalMemCreate(context_, device1_, &pd, &p1));
  EXPECT_EQ(zeVirtualMemMap(context_, m.va, kPage, p1, 0, ZE_MEMORY_ACCESS_ATTRIBUTE_READWRITE),
            ZE_RESULT_ERROR_INVALID_ARGUMENT);  // already mapped (to device 0's memory)
  // A reservation is no device's: the next page of it takes device 1's memory.
  void* va = nullptr;
  ASSERT_ZE(zeVirtualMemReserve(context_, nullptr, 2 * kPage, &va));
  EXPECT_NE(va, m.va);
  char* second = static_cast<char*>(va) + kPage;
  ASSERT_ZE(zeVirtualMemMap(context_, second, kPage, p1, 0, ZE_MEMORY_ACCESS_ATTRIBUTE_READWRITE));
  EXPECT_ZE(zeVirtualMemUnmap(context_, second, kPage));
  EXPECT_ZE(zeVirtualMemFree(context_, va, 2 * kPage));
  EXPECT_ZE(zePhysicalMemDestroy(context_, p1));

  // A regular list runs only on a queue of its own device.
  ze_command_list_desc_t ld{ZE_STRUCTURE_TYPE_COMMAND_LIST_DESC, nullptr, copy_group_, 0};
  ze_command_list_handle_t list1 = nullptr;
  ASSERT_ZE(zeCommandListCreate(context_, device1_, &ld, &list1));
  ASSERT_ZE(zeCommandListClose(list1));
  ze_command_queue_desc_t qd{
      ZE_STRUCTURE_TYPE_COMMAND_QUEUE_DESC, nullptr, copy_group_, 0, 0, ZE_COMMAND_QUEUE_MODE_ASYNCHRONOUS,
      ZE_COMMAND_QUEUE_PRIORITY_NORMAL};
  ze_command_queue_handle_t queue0 = nullptr;
  ASSERT_ZE(zeCommandQueueCreate(context_, device_, &qd, &queue0));
  EXPECT_EQ(zeCommandQueueExecuteCommandLists(queue0, 1, &list1, nullptr),
            ZE_RESULT_ERROR_INVALID_COMMAND_LIST_TYPE);
  EXPECT_ZE(zeCommandQueueDestroy(queue0));
  EXPECT_ZE(zeCommandListDestroy(list1));
  Free(m);
}

}  // namespace

int main(int argc, char** argv) {
  // Before anything can call zeInit: the loader reads these once.
  setenv("ZE_ENABLE_ALT_DRIVERS", UHMM_FAKE_ZE_DRIVER, /*overwrite=*/0);
  setenv("ZE_ENABLE_TRACING_LAYER", "1", /*overwrite=*/1);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
