// See ze_tracer.h.
#include "backends/level_zero/ze_tracer.h"

#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>

#include "absl/strings/str_format.h"

namespace uhmm::level_zero {

absl::StatusOr<std::unique_ptr<LaunchTracer>> LaunchTracer::Create(const Loader* l, ze_context_handle_t ctx,
                                                                   std::vector<ze_device_handle_t> devices) {
  if (!l->has_tracer()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "the Level Zero loader %s has no tracing API (zelTracer*), which transparent launches need",
        l->path));
  }
  std::unique_ptr<LaunchTracer> t(new LaunchTracer(l, ctx, std::move(devices)));
  zel_tracer_desc_t desc = {ZEL_STRUCTURE_TYPE_TRACER_EXP_DESC, nullptr, t.get()};
  if (ze_result_t r = l->zelTracerCreate(&desc, &t->tracer_); r != ZE_RESULT_SUCCESS) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s: the loader's tracing layer is not active. It is chosen at the process's first zeInit: "
        "set ZE_ENABLE_TRACING_LAYER=1, or create the uhmm runtime before the application calls "
        "zeInit. Without it uhmm cannot intercept launches, nor wait for kernels before evicting "
        "their memory",
        ZeStatus(r, "zelTracerCreate").message()));
  }
  zel_core_callbacks_t prologues = {};
  prologues.CommandList.pfnDestroyCb = &ListDestroyPrologue;
  prologues.CommandList.pfnAppendLaunchKernelCb = &LaunchPrologue;
  prologues.CommandList.pfnAppendLaunchCooperativeKernelCb = &CooperativeLaunchPrologue;
  prologues.CommandList.pfnAppendLaunchKernelIndirectCb = &IndirectLaunchPrologue;
  prologues.CommandQueue.pfnExecuteCommandListsCb = &ExecutePrologue;
  prologues.CommandQueue.pfnDestroyCb = &QueueDestroyPrologue;
  prologues.Event.pfnDestroyCb = &EventDestroyPrologue;
  prologues.Event.pfnHostResetCb = &EventResetPrologue;
  zel_core_callbacks_t epilogues = {};
  epilogues.CommandList.pfnCreateImmediateCb = &CreateImmediateEpilogue;
  epilogues.CommandList.pfnCreateCb = &CreateListEpilogue;
  epilogues.CommandQueue.pfnCreateCb = &CreateQueueEpilogue;
  absl::Status s = ZeStatus(l->zelTracerSetPrologues(t->tracer_, &prologues), "zelTracerSetPrologues");
  if (s.ok()) s = ZeStatus(l->zelTracerSetEpilogues(t->tracer_, &epilogues), "zelTracerSetEpilogues");
  if (s.ok()) s = ZeStatus(l->zelTracerSetEnabled(t->tracer_, true), "zelTracerSetEnabled");
  if (!s.ok()) {
    l->zelTracerDestroy(t->tracer_);
    return s;
  }
  return t;
}

void LaunchTracer::Retire(std::unique_ptr<LaunchTracer> tracer) {
  if (tracer == nullptr) return;
  tracer->listener_.store(nullptr);
  tracer->l_->zelTracerSetEnabled(tracer->tracer_, false);
  tracer->l_->zelTracerDestroy(tracer->tracer_);
  while (tracer->in_callbacks_.load() != 0) sched_yield();
  // Kernels still running signal our events later; wait so the event pools can go.
  ScopedUntraced untraced;
  std::lock_guard<std::mutex> lock(tracer->mu_);
  for (const InFlight& f : tracer->in_flight_) {
    if (f.owned) tracer->l_->zeEventHostSynchronize(f.event, UINT64_MAX);
  }
  tracer->in_flight_.clear();
}

absl::Status LaunchTracer::WaitForKernels() {
  ScopedUntraced untraced;
  std::lock_guard<std::mutex> lock(mu_);
  absl::Status result;
  for (const InFlight& f : in_flight_) {
    absl::Status s = ZeStatus(l_->zeEventHostSynchronize(f.event, UINT64_MAX),
                              "waiting for a kernel (zeEventHostSynchronize)");
    if (result.ok()) result = s;
    if (f.owned) events_.Release(f.event);
  }
  in_flight_.clear();
  for (ze_command_queue_handle_t q : queues_) {
    absl::Status s = ZeStatus(l_->zeCommandQueueSynchronize(q, UINT64_MAX),
                              "waiting for a command queue (zeCommandQueueSynchronize)");
    if (result.ok()) result = s;
  }
  return result;
}

void LaunchTracer::RecycleCompletedLocked() {
  auto done = [&](const InFlight& f) {
    if (l_->zeEventQueryStatus(f.event) != ZE_RESULT_SUCCESS) return false;
    if (f.owned) events_.Release(f.event);
    return true;
  };
  in_flight_.erase(std::remove_if(in_flight_.begin(), in_flight_.end(), done), in_flight_.end());
}

int LaunchTracer::OrdinalOf(ze_device_handle_t dev) const {
  for (size_t i = 0; i < devices_.size(); ++i) {
    if (devices_[i] == dev) return static_cast<int>(i);
  }
  return 0;
}

int LaunchTracer::DeviceOfList(ze_command_list_handle_t list) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = list_device_.find(list);
  return it == list_device_.end() ? 0 : it->second;
}

int LaunchTracer::DeviceOfQueue(ze_command_queue_handle_t queue) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = queue_device_.find(queue);
  return it == queue_device_.end() ? 0 : it->second;
}

void LaunchTracer::OnLaunch(ze_command_list_handle_t list, ze_event_handle_t* signal_event) {
  if (ScopedUntraced::active()) return;
  if (LaunchListener* listener = listener_.load(std::memory_order_acquire)) {
    listener->BeforeLaunch(DeviceOfList(list), list);
  }
  ScopedUntraced untraced;
  std::lock_guard<std::mutex> lock(mu_);
  // Kernels on other contexts cannot touch uhmm's device memory; regular command lists run when
  // a queue executes them (tracked there).
  if (!immediate_lists_.contains(list)) return;
  RecycleCompletedLocked();
  if (*signal_event != nullptr) {
    in_flight_.push_back({*signal_event, /*owned=*/false});
    return;
  }
  absl::StatusOr<ze_event_handle_t> e = events_.Acquire();
  if (!e.ok()) {
    std::fprintf(stderr,
                 "uhmm: Level Zero backend: cannot track a kernel launch (%s); eviction "
                 "will not wait for it\n",
                 std::string(e.status().message()).c_str());
    return;
  }
  *signal_event = *e;  // the prologue's parameters are what the driver receives
  in_flight_.push_back({*e, /*owned=*/true});
}

void LaunchTracer::OnExecute(ze_command_queue_handle_t queue) {
  if (ScopedUntraced::active()) return;
  if (LaunchListener* listener = listener_.load(std::memory_order_acquire)) {
    listener->BeforeLaunch(DeviceOfQueue(queue), queue);
  }
  std::lock_guard<std::mutex> lock(mu_);
  queues_.insert(queue);
}

bool LaunchTracer::Records(ze_result_t result, ze_context_handle_t ctx, const void* const* created) const {
  return !ScopedUntraced::active() && result == ZE_RESULT_SUCCESS && ctx == ctx_ && created != nullptr &&
         *created != nullptr;
}

void LaunchTracer::CreateImmediateEpilogue(ze_command_list_create_immediate_params_t* p, ze_result_t result,
                                           void* self, void**) {
  InCallback in(self);
  LaunchTracer* t = in.tracer();
  if (!t->Records(result, *p->phContext, reinterpret_cast<void**>(*p->pphCommandList))) return;
  std::lock_guard<std::mutex> lock(t->mu_);
  t->immediate_lists_.insert(**p->pphCommandList);
  t->list_device_[**p->pphCommandList] = t->OrdinalOf(*p->phDevice);
}

void LaunchTracer::CreateListEpilogue(ze_command_list_create_params_t* p, ze_result_t result, void* self,
                                      void**) {
  InCallback in(self);
  LaunchTracer* t = in.tracer();
  if (!t->Records(result, *p->phContext, reinterpret_cast<void**>(*p->pphCommandList))) return;
  std::lock_guard<std::mutex> lock(t->mu_);
  t->list_device_[**p->pphCommandList] = t->OrdinalOf(*p->phDevice);
}

void LaunchTracer::CreateQueueEpilogue(ze_command_queue_create_params_t* p, ze_result_t result, void* self,
                                       void**) {
  InCallback in(self);
  LaunchTracer* t = in.tracer();
  if (!t->Records(result, *p->phContext, reinterpret_cast<void**>(*p->pphCommandQueue))) return;
  std::lock_guard<std::mutex> lock(t->mu_);
  t->queue_device_[**p->pphCommandQueue] = t->OrdinalOf(*p->phDevice);
}

void LaunchTracer::ListDestroyPrologue(ze_command_list_destroy_params_t* p, ze_result_t, void* self, void**) {
  InCallback in(self);
  LaunchTracer* t = in.tracer();
  if (ScopedUntraced::active()) return;
  std::lock_guard<std::mutex> lock(t->mu_);
  t->immediate_lists_.erase(*p->phCommandList);
  t->list_device_.erase(*p->phCommandList);
}

void LaunchTracer::LaunchPrologue(ze_command_list_append_launch_kernel_params_t* p, ze_result_t, void* self,
                                  void**) {
  InCallback in(self);
  in.tracer()->OnLaunch(*p->phCommandList, p->phSignalEvent);
}
void LaunchTracer::CooperativeLaunchPrologue(ze_command_list_append_launch_cooperative_kernel_params_t* p,
                                             ze_result_t, void* self, void**) {
  InCallback in(self);
  in.tracer()->OnLaunch(*p->phCommandList, p->phSignalEvent);
}
void LaunchTracer::IndirectLaunchPrologue(ze_command_list_append_launch_kernel_indirect_params_t* p,
                                          ze_result_t, void* self, void**) {
  InCallback in(self);
  in.tracer()->OnLaunch(*p->phCommandList, p->phSignalEvent);
}
void LaunchTracer::ExecutePrologue(ze_command_queue_execute_command_lists_params_t* p, ze_result_t,
                                   void* self, void**) {
  InCallback in(self);
  in.tracer()->OnExecute(*p->phCommandQueue);
}

void LaunchTracer::QueueDestroyPrologue(ze_command_queue_destroy_params_t* p, ze_result_t, void* self,
                                        void**) {
  InCallback in(self);
  LaunchTracer* t = in.tracer();
  if (ScopedUntraced::active()) return;
  std::lock_guard<std::mutex> lock(t->mu_);
  t->queues_.erase(*p->phCommandQueue);
  t->queue_device_.erase(*p->phCommandQueue);
}

// The application destroys or resets one of its events: stop waiting for it.
void LaunchTracer::EventGonePrologue(ze_event_handle_t event, void* self) {
  InCallback in(self);
  LaunchTracer* t = in.tracer();
  if (ScopedUntraced::active()) return;
  std::lock_guard<std::mutex> lock(t->mu_);
  std::erase_if(t->in_flight_, [&](const InFlight& f) { return !f.owned && f.event == event; });
}
void LaunchTracer::EventDestroyPrologue(ze_event_destroy_params_t* p, ze_result_t, void* self, void**) {
  EventGonePrologue(*p->phEvent, self);
}
void LaunchTracer::EventResetPrologue(ze_event_host_reset_params_t* p, ze_result_t, void* self, void**) {
  EventGonePrologue(*p->phEvent, self);
}

}  // namespace uhmm::level_zero
