// Connects the CUDA caching allocator's trace tracker to kvprof's recorder (alloc_events.cpp).
// The tracker cannot be detached again: kvp_set_recording(0) makes it return at once.
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/util/ApproximateClock.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <vector>

extern "C" void kvp_record(int32_t action, int32_t device, uint64_t addr, uint64_t size, int64_t ticks);
extern "C" void kvp_set_tick_source(int64_t (*ticks)());

namespace {
bool g_attached = false;

// The clock c10 stamps trace entries with (the TSC on x86): calibrated against steady ns at each drain.
int64_t approximate_ticks() { return static_cast<int64_t>(c10::getApproximateTime()); }
}  // namespace

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
    kvp_record(action, static_cast<int32_t>(te.device_), static_cast<uint64_t>(te.addr_), static_cast<uint64_t>(te.size_),
               static_cast<int64_t>(te.time_.approx_t_));
  });
  kvp_set_tick_source(&approximate_ticks);
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

// Stage timing: a CUDA event recorded on the current stream at each stage boundary, from a pool
// created in blocks and reused by the next trace (torch.cuda.Event costs ~25 us a boundary from
// Python: an object, a lazy cudaEventCreate, a stream lookup). Marks come from one thread.
namespace {
std::vector<cudaEvent_t> g_marks;
size_t g_next_mark = 0;
}  // namespace

// The mark's number, or -1 when CUDA refused (the stage then has no device time).
extern "C" int64_t kvp_mark(int32_t device) {
  if (g_next_mark == g_marks.size()) {
    for (int i = 0; i < 4096; i++) {
      cudaEvent_t e;
      if (cudaEventCreate(&e) != cudaSuccess) return -1;
      g_marks.push_back(e);
    }
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
  if (cudaEventRecord(g_marks[g_next_mark], stream) != cudaSuccess) return -1;
  return static_cast<int64_t>(g_next_mark++);
}

// Milliseconds between two marks (after the device finished them); NaN when either is missing.
extern "C" double kvp_mark_ms(int64_t start, int64_t end) {
  float ms = 0.0f;
  if (start < 0 || end < 0 || static_cast<size_t>(end) >= g_next_mark ||
      cudaEventElapsedTime(&ms, g_marks[start], g_marks[end]) != cudaSuccess) {
    return NAN;
  }
  return ms;
}

// Every mark read: the pool serves the next trace from its start.
extern "C" void kvp_marks_reset() { g_next_mark = 0; }
