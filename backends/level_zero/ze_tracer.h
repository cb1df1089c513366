// Kernel launches seen through the Level Zero loader's tracing layer (zelTracer*). A prologue on
// zeCommandListAppendLaunchKernel (and the cooperative and indirect variants) and on
// zeCommandQueueExecuteCommandLists calls the runtime's LaunchListener, when one is set
// (transparent mode), before the kernel is queued.
//
// Whether or not a listener is set, the tracer keeps track of the kernels it saw, so that eviction
// and unmapping can wait for the ones that may still use device memory (Level Zero has no
// context-wide synchronize): a kernel
// appended to an immediate command list of uhmm's context gets a signal event (uhmm's own when the
// application gave none) that WaitForKernels waits for; a command queue that executed lists is
// synchronized as a whole.
#ifndef UHMM_BACKENDS_LEVEL_ZERO_ZE_TRACER_H_
#define UHMM_BACKENDS_LEVEL_ZERO_ZE_TRACER_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "backends/level_zero/ze_events.h"
#include "backends/level_zero/ze_loader.h"
#include "uhmm/backend.h"

namespace uhmm::level_zero {

class LaunchTracer {
 public:
  // FAILED_PRECONDITION with what to do when the loader's tracing layer is not active (it must be
  // chosen before the process's first zeInit).
  // `devices[i]` is runtime device i: launches on its lists and queues name it to the listener.
  static absl::StatusOr<std::unique_ptr<LaunchTracer>> Create(const Loader* l, ze_context_handle_t ctx,
                                                              std::vector<ze_device_handle_t> devices);
  // The listener later launches call (nullptr: none).
  void SetListener(LaunchListener* listener) { listener_.store(listener, std::memory_order_release); }
  // Disables and destroys the loader tracer, waits for callbacks still running on other threads,
  // then frees the tracer. The tracing layer starts no callback of a disabled tracer.
  static void Retire(std::unique_ptr<LaunchTracer> tracer);

  // Returns once every kernel the tracer saw queued has finished: waits for their signal events and
  // synchronizes the command queues that executed command lists. A device error comes back as
  // ABORTED.
  absl::Status WaitForKernels();

 private:
  LaunchTracer(const Loader* l, ze_context_handle_t ctx, std::vector<ze_device_handle_t> devices)
      : l_(l), ctx_(ctx), devices_(std::move(devices)), events_(l, ctx) {}
  // Whether a create epilogue's object is one to record: created (`*created`, when `created` is not
  // null) in uhmm's context by the application, not by uhmm itself.
  bool Records(ze_result_t result, ze_context_handle_t ctx, const void* const* created) const;
  // The runtime ordinal of `dev` (0 when it is none of the runtime's devices).
  int OrdinalOf(ze_device_handle_t dev) const;
  // The device a list or queue was created for (0 when unknown: created before the tracer).
  int DeviceOfList(ze_command_list_handle_t list);
  int DeviceOfQueue(ze_command_queue_handle_t queue);

  struct InFlight {
    ze_event_handle_t event;
    bool owned;  // from events_ (released when done) or the application's (only waited for)
  };
  void OnLaunch(ze_command_list_handle_t list, ze_event_handle_t* signal_event);
  void OnExecute(ze_command_queue_handle_t queue);
  void RecycleCompletedLocked();
  // Counts a callback in flight for Retire.
  class InCallback {
   public:
    explicit InCallback(void* self) : t_(static_cast<LaunchTracer*>(self)) { t_->in_callbacks_.fetch_add(1); }
    ~InCallback() { t_->in_callbacks_.fetch_sub(1); }
    LaunchTracer* tracer() const { return t_; }

   private:
    LaunchTracer* t_;
  };

  static void CreateImmediateEpilogue(ze_command_list_create_immediate_params_t* p, ze_result_t result,
                                      void* self, void**);
  static void CreateListEpilogue(ze_command_list_create_params_t* p, ze_result_t result, void* self, void**);
  static void CreateQueueEpilogue(ze_command_queue_create_params_t* p, ze_result_t result, void* self,
                                  void**);
  static void ListDestroyPrologue(ze_command_list_destroy_params_t* p, ze_result_t, void* self, void**);
  static void LaunchPrologue(ze_command_list_append_launch_kernel_params_t* p, ze_result_t, void* self,
                             void**);
  static void CooperativeLaunchPrologue(ze_command_list_append_launch_cooperative_kernel_params_t* p,
                                        ze_result_t, void* self, void**);
  static void IndirectLaunchPrologue(ze_command_list_append_launch_kernel_indirect_params_t* p, ze_result_t,
                                     void* self, void**);
  static void ExecutePrologue(ze_command_queue_execute_command_lists_params_t* p, ze_result_t, void* self,
                              void**);
  static void QueueDestroyPrologue(ze_command_queue_destroy_params_t* p, ze_result_t, void* self, void**);
  static void EventGonePrologue(ze_event_handle_t event, void* self);
  static void EventDestroyPrologue(ze_event_destroy_params_t* p, ze_result_t, void* self, void**);
  static void EventResetPrologue(ze_event_host_reset_params_t* p, ze_result_t, void* self, void**);

  const Loader* const l_;
  const ze_context_handle_t ctx_;
  const std::vector<ze_device_handle_t> devices_;
  std::atomic<LaunchListener*> listener_{nullptr};
  std::atomic<int> in_callbacks_{0};
  zel_tracer_handle_t tracer_ = nullptr;
  EventCache events_;
  std::mutex mu_;  // guards the members below; held while waiting so handles stay valid
  absl::flat_hash_set<ze_command_list_handle_t> immediate_lists_;
  absl::flat_hash_set<ze_command_queue_handle_t> queues_;
  // The runtime device of each list and queue of uhmm's context (several devices).
  absl::flat_hash_map<ze_command_list_handle_t, int> list_device_;
  absl::flat_hash_map<ze_command_queue_handle_t, int> queue_device_;
  std::vector<InFlight> in_flight_;
};

}  // namespace uhmm::level_zero

#endif  // UHMM_BACKENDS_LEVEL_ZERO_ZE_TRACER_H_
