// Connects the CUDA caching allocator's trace tracker to kvprof's recorder (alloc_events.cpp).
// The tracker cannot be detached again: kvp_set_recording(0) makes it return at once.
#include <c10/cuda/CUDACachingAllocator.h>

#include <cstdint>

extern "C" void kvp_record(int32_t action, int32_t device, uint64_t addr, uint64_t size);

namespace {
bool g_attached = false;
}

extern "C" int32_t kvp_attach() {
  if (g_attached) return 1;
  using Entry = c10::cuda::CUDACachingAllocator::TraceEntry;
  c10::cuda::CUDACachingAllocator::attachAllocatorTraceTracker([](const Entry& te) {
    int32_t action;
    switch (te.action_) {  // by name: kvprof's numbering must not depend on c10's enum order
      case Entry::ALLOC: action = 0; break;
      case Entry::FREE_REQUESTED: action = 1; break;
      case Entry::FREE_COMPLETED: action = 2; break;
      case Entry::SEGMENT_ALLOC: action = 3; break;
      case Entry::SEGMENT_FREE: action = 4; break;
      case Entry::SEGMENT_MAP: action = 5; break;
      case Entry::SEGMENT_UNMAP: action = 6; break;
      case Entry::OOM: action = 8; break;
      default: return;
    }
    kvp_record(action, static_cast<int32_t>(te.device_), static_cast<uint64_t>(te.addr_), static_cast<uint64_t>(te.size_));
  });
  g_attached = true;
  return 1;
}

// The allocator's allocated and reserved bytes now (what torch.cuda.memory_allocated() and
// memory_reserved() report), without building the nested dict of every statistic (~28 us a call).
extern "C" void kvp_counters(int32_t device, int64_t* out) {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
  constexpr size_t kAggregate = 0;  // StatType::AGGREGATE: all pools
  out[0] = stats.allocated_bytes[kAggregate].current;
  out[1] = stats.reserved_bytes[kAggregate].current;
}
