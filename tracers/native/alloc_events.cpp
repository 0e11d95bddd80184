// kvprof's native allocator-event recorder: the per-event half of the CUDA tracker.
//
// The CUDA caching allocator calls a trace tracker (c10 `attachAllocatorTraceTracker`) for every
// alloc, free and segment event, under its own lock. `kvp_record` appends one fixed-size entry
// (action, address, size, the event's clock ticks, the context kvprof set) to a buffer: tens of
// ns, no clock read, no Python, no GIL. `kvp_drain`, called from a Python thread through ctypes (which releases the
// GIL), swaps the buffer out and replays it through the mirror of the allocator's segments
// (the same rules as tracers/alloc_layout.py's BlockLayout), giving each allocation its id,
// order key q and real block size, and each free the id it frees. Python then turns the drain's
// columns into trace rows with numpy, so no per-event Python code runs while the model runs.
//
// Plain C ABI (ctypes), no torch headers: attach_cuda.cpp is the only file that knows c10.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "block_layout.h"  // the allocator's blocks: State, Block, Layout
#include "record_cost.h"   // RecordCostSampler

namespace {

constexpr int64_t kQStride = int64_t(1) << 32;  // tracers.trace_fold.Q_STRIDE
constexpr int64_t kHalf = kQStride >> 1;  // allocator events sort after the session's own records of a context

// c10's TraceEntry::Action numbering (attach_cuda.cpp maps by name); kRetag is kvprof's own marker.
enum Action : int32_t {
  kAlloc = 0, kFreeRequested = 1, kFreeCompleted = 2, kSegmentAlloc = 3, kSegmentFree = 4,
  kSegmentMap = 5, kSegmentUnmap = 6, kSnapshot = 7, kOom = 8, kRetag = 100
};

struct Entry {
  uint64_t addr;
  uint64_t size;  // bytes; for kRetag the retag's number; for kOom the requested bytes
  int64_t t_ns;   // clock ticks while buffered; steady-clock ns once the drain converted them
  int64_t ctx;
  int32_t action;
  int32_t pad;
};

// A moment on both clocks: event ticks and steady-clock ns (see g_ticks).
struct ClockPair {
  int64_t ticks;
  int64_t ns;
};

// The lock of the record path: the recording thread (inside the allocator's own lock) against a drain swapping
// the buffer out, a retag from Python, or a reset. std::mutex's unlock is a locked instruction, which waits until
// the entry just written leaves the store buffer: a cache miss on a buffer line not touched since the last drain,
// paid on every event (recorder_cost.cpp "in context": ~30 ns an event with std::mutex, ~18 with this). Here
// unlocking is a plain release store. The other holders keep it for a swap or a clock read, so a waiter yields.
class RecordLock {
 public:
  void lock() {
    while (held_.exchange(true, std::memory_order_acquire)) {
      while (held_.load(std::memory_order_relaxed)) std::this_thread::yield();
    }
  }
  void unlock() { held_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> held_{false};
};

struct Recorder {
  RecordLock mu;
  std::vector<Entry> buffer;
  // The buffer the next drain swaps in, empty, with room for the events of an interval (`ready_spare`): the
  // thread that records (inside the allocator's lock) neither regrows a buffer (copies of tens of MB) nor touches
  // fresh pages (a fault each 4 KB) after the first interval. Only the drain touches it (under g_drain_mu).
  std::vector<Entry> spare;
  ClockPair last_pair{0, 0};  // taken when the buffer was last swapped out (or reset)
  std::atomic<int32_t> on{0};
  std::atomic<int32_t> device{0};
};

// Replay state carried from drain to drain, and the columns of the last drain.
struct Replay {
  std::mutex mu;
  Layout layout;
  bool model_on = true;
  std::unordered_map<uint64_t, int64_t> live;  // block address -> allocation id
  int64_t next_id = 1, first_id = 1, last_ctx = -1, order = 0;
  int64_t exact = 0, rounded = 0;
  std::vector<int64_t> a_q, a_t, a_size, a_ctx;  // allocations, ids first_id + row
  std::vector<int64_t> f_id, f_q, f_t;           // frees (of this drain's allocations or earlier ones)
  std::vector<int64_t> r_id, r_tag;              // retags resolved to the allocation live at the address
  std::vector<int64_t> o_ctx, o_free, o_size, o_t;  // allocator out-of-memory events
};

Recorder g_rec;
Replay g_replay;
std::mutex g_drain_mu;

}  // namespace

// The context number stamped on each event. Python writes it in place (ctypes `in_dll`): a stage
// boundary costs one store, not a foreign call. Aligned 8-byte stores and loads are atomic on x86-64
// and arm64; the events it stamps are made by the thread that writes it.
extern "C" {
int64_t kvp_context = 0;
// Events recorded since the last reset. Written under the record lock by whoever records; Python reads it in
// place (`in_dll`) without a foreign call or the GIL released, to measure the model's progress while a drain
// runs beside it (tracers.drain_phases).
int64_t kvp_recorded = 0;
}

namespace {

int64_t current_context() { return __atomic_load_n(&kvp_context, __ATOMIC_RELAXED); }

int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Event times. The allocator stamps every event with c10's approximate clock (the TSC on x86, read
// for its own history anyway), and attach_cuda.cpp passes that stamp on: recording reads no clock
// (a clock_gettime per event is ~1 us where a VM makes it a system call). Each drain turns ticks into
// steady-clock ns, linearly between the (ticks, ns) pair taken at the previous drain (or reset) and
// the one taken at this drain, which bracket every event of the drain. Without a tick source (the
// core library of the CPU tests) ticks are steady ns and the map is the identity, exactly.
int64_t (*g_ticks)() = nullptr;

int64_t ticks_now() { return g_ticks != nullptr ? g_ticks() : steady_ns(); }

ClockPair clock_pair() {
  if (g_ticks == nullptr) {
    const int64_t ns = steady_ns();
    return ClockPair{ns, ns};
  }
  const int64_t a = g_ticks(), ns = steady_ns(), b = g_ticks();
  return ClockPair{a + (b - a) / 2, ns};
}

// Steady ns of `ticks`, on the line through pairs `from` and `to` (slope 1 when they coincide).
int64_t to_ns(int64_t ticks, const ClockPair& from, const ClockPair& to) {
  const __int128 dt = to.ticks - from.ticks, dn = to.ns - from.ns;
  if (dt <= 0 || g_ticks == nullptr) return from.ns + (ticks - from.ticks);
  return from.ns + int64_t(__int128(ticks - from.ticks) * dn / dt);
}

void push(int32_t action, uint64_t addr, uint64_t size, int64_t t_ns, int64_t ctx) {
  std::lock_guard<RecordLock> guard(g_rec.mu);
  std::vector<Entry>& buf = g_rec.buffer;
  buf.push_back(Entry{addr, size, t_ns, ctx, action, 0});
  // The next entry's bytes, fetched for writing now: the lock's exchange is a full barrier, so an entry stored to a
  // line not in cache (the buffer is tens of MB, touched once a drain) would hold the next event at the barrier
  // until the miss completes. The model's microseconds between events hide the fetch. Within capacity only.
  if (buf.size() < buf.capacity()) {
    const char* next = reinterpret_cast<const char*>(buf.data() + buf.size());
    __builtin_prefetch(next, 1, 3);
    __builtin_prefetch(next + sizeof(Entry) - 1, 1, 3);
  }
  __atomic_store_n(&kvp_recorded, kvp_recorded + 1, __ATOMIC_RELAXED);
}

RecordCostSampler g_cost;  // written under the record lock (record_cost.h)

// The least ticks of 64 back-to-back clock reads: what each timed sample's two reads add to it.
int64_t least_read_ticks() {
  int64_t least = INT64_MAX;
  for (int i = 0; i < 64; i++) {
    const int64_t a = ticks_now();
    least = std::min(least, ticks_now() - a);
  }
  return least;
}

void reset_record_cost() {  // under the record lock, the tick source set
  const ClockPair now = clock_pair();
  g_cost.reset(kvp_recorded, least_read_ticks(), now.ticks, now.ns);
}

void replay(const std::vector<Entry>& entries, Replay& p) {
  Layout* layout = p.model_on ? &p.layout : nullptr;
  for (const Entry& e : entries) {
    switch (e.action) {
      case kAlloc:
      case kFreeRequested: {
        if (e.ctx == p.last_ctx) {
          p.order++;
        } else {
          p.last_ctx = e.ctx;
          p.order = 1;
        }
        const int64_t q = e.ctx * kQStride + kHalf + p.order;
        if (e.action == kAlloc) {
          int64_t size = layout ? layout->alloc(e.addr, int64_t(e.size)) : -1;
          if (size < 0) {
            size = round_size(int64_t(e.size));
            p.rounded++;
          } else {
            p.exact++;
          }
          p.live[e.addr] = p.next_id++;
          p.a_q.push_back(q);
          p.a_t.push_back(e.t_ns);
          p.a_size.push_back(size);
          p.a_ctx.push_back(e.ctx);
        } else {
          if (layout) layout->free_requested(e.addr);
          auto it = p.live.find(e.addr);
          if (it == p.live.end()) break;  // not a block of this trace
          p.f_id.push_back(it->second);
          p.f_q.push_back(q);
          p.f_t.push_back(e.t_ns);
          p.live.erase(it);
        }
        break;
      }
      case kRetag: {
        auto it = p.live.find(e.addr);
        if (it != p.live.end()) {
          p.r_id.push_back(it->second);
          p.r_tag.push_back(int64_t(e.size));
        }
        break;
      }
      case kOom:
        p.o_ctx.push_back(e.ctx);
        p.o_free.push_back(int64_t(e.addr));
        p.o_size.push_back(int64_t(e.size));
        p.o_t.push_back(e.t_ns);
        break;
      case kFreeCompleted:
        if (layout) layout->free_completed(e.addr);
        break;
      case kSegmentAlloc:
        if (layout) layout->segment_alloc(e.addr, int64_t(e.size));
        break;
      case kSegmentFree:
        if (layout) layout->segment_free(e.addr, int64_t(e.size));
        break;
      case kSegmentMap:
      case kSegmentUnmap:
        if (layout && !layout->expandable) {  // expandable segments the tracker was not told of
          p.model_on = false;
          layout = nullptr;
        }
        break;
      default:
        break;
    }
  }
}

// Make the spare ready for an interval of about `expected` events before a drain swaps it in: kept where it has
// room for 1.25x that, else replaced by one for 1.5x whose pages are written here, on the drain's thread (the
// faults and the zeroing taken there, not by the thread that records; std::vector's reserve alone touches nothing).
// Not while recording is off: the last drain of a trace (or one after a recording that was never drained) would
// write a buffer nobody records into.
void ready_spare(size_t expected) {
  const size_t keep = expected + expected / 4, want = expected + expected / 2;
  if (expected == 0 || !g_rec.on.load(std::memory_order_relaxed) || g_rec.spare.capacity() >= keep) return;
  std::vector<Entry> fresh;
  fresh.reserve(want);
  fresh.resize(want);  // value-initialized: every page written
  fresh.clear();       // keeps the capacity
  g_rec.spare.swap(fresh);
}

template <typename T>
void copy_out(const std::vector<T>& from, T* to) {
  if (to != nullptr && !from.empty()) std::copy(from.begin(), from.end(), to);
}

}  // namespace

extern "C" {

// Called by the allocator's trace tracker for every event of every device; `ticks` is the event's
// stamp on the tick source (see g_ticks).
void kvp_record(int32_t action, int32_t device, uint64_t addr, uint64_t size, int64_t ticks) {
  if (!g_rec.on.load(std::memory_order_relaxed) || device != g_rec.device.load(std::memory_order_relaxed)) return;
  if (!g_cost.due(__atomic_load_n(&kvp_recorded, __ATOMIC_RELAXED))) {
    push(action, addr, size, ticks, current_context());
    return;
  }
  const int64_t t0 = ticks_now();
  push(action, addr, size, ticks, current_context());
  const int64_t spent = ticks_now() - t0;
  std::lock_guard<RecordLock> guard(g_rec.mu);
  g_cost.keep(spent, kvp_recorded);
}

// The record path's sampled cost since the last reset: samples, their ticks, the most ticks of one, the ticks of a
// clock read pair (to take off each sample), the ticks and steady ns elapsed since the reset (ticks per ns), and
// how many samples are kept (kvp_record_cost_kept copies them out, raw ticks, up to `n`).
void kvp_record_cost(int64_t* out) {
  std::lock_guard<RecordLock> guard(g_rec.mu);
  const ClockPair now = clock_pair();
  g_cost.stats(out, now.ticks, now.ns);
}

int64_t kvp_record_cost_kept(int64_t* out, int64_t n) {
  std::lock_guard<RecordLock> guard(g_rec.mu);
  return g_cost.copy_kept(out, n);
}

// The tick source events are stamped with (attach_cuda.cpp: c10's approximate clock); null: steady ns.
void kvp_set_tick_source(int64_t (*ticks)()) {
  std::lock_guard<RecordLock> guard(g_rec.mu);
  g_ticks = ticks;
  g_rec.last_pair = clock_pair();
  reset_record_cost();  // its clock-read latency and its start, on the new ticks
}

// Many events at once, as columns, times in steady ns (tests: millions of events without a ctypes
// call each; the core library has no tick source, so ticks are these ns).
void kvp_record_many(int64_t n, const int32_t* action, const uint64_t* addr, const uint64_t* size,
                     const int64_t* t_ns, const int64_t* ctx) {
  std::lock_guard<RecordLock> guard(g_rec.mu);
  for (int64_t i = 0; i < n; i++) g_rec.buffer.push_back(Entry{addr[i], size[i], t_ns[i], ctx[i], action[i], 0});
  __atomic_store_n(&kvp_recorded, kvp_recorded + n, __ATOMIC_RELAXED);
}

// The block at `addr` gets retag number `tag`, in order among the allocator's events.
void kvp_retag(uint64_t addr, int64_t tag) {
  push(kRetag, addr, uint64_t(tag), ticks_now(), current_context());
}

// Forget every earlier trace; the replay starts with ids from `next_id`.
void kvp_reset(int32_t device, int32_t expandable, int32_t model_on, int64_t next_id) {
  std::lock_guard<std::mutex> drain_guard(g_drain_mu);
  std::lock_guard<std::mutex> replay_guard(g_replay.mu);
  std::vector<Entry>().swap(g_rec.spare);  // a new trace starts without the last one's buffers
  {
    std::lock_guard<RecordLock> guard(g_rec.mu);
    std::vector<Entry>().swap(g_rec.buffer);
    g_rec.last_pair = clock_pair();
    __atomic_store_n(&kvp_recorded, 0, __ATOMIC_RELAXED);
    reset_record_cost();
  }
  g_rec.device.store(device);
  __atomic_store_n(&kvp_context, 0, __ATOMIC_RELAXED);
  Replay& p = g_replay;
  p.layout = Layout();
  p.layout.expandable = expandable != 0;
  p.model_on = model_on != 0;
  p.live.clear();
  p.next_id = p.first_id = next_id;
  p.last_ctx = -1;
  p.order = 0;
  p.exact = p.rounded = 0;
}

void kvp_set_recording(int32_t on) { g_rec.on.store(on); }

// The id the next allocation gets (after the session numbered the blocks from before recording).
void kvp_set_next_id(int64_t next_id) {
  std::lock_guard<std::mutex> guard(g_replay.mu);
  g_replay.next_id = g_replay.first_id = next_id;
}

// A block that exists before recording: its free is followed as allocation `id`.
void kvp_adopt(uint64_t addr, int64_t id) {
  std::lock_guard<std::mutex> guard(g_replay.mu);
  g_replay.live[addr] = id;
}

void kvp_layout_add(uint64_t addr, int64_t size, int32_t state, uint64_t seg_start, uint64_t seg_end) {
  std::lock_guard<std::mutex> guard(g_replay.mu);
  g_replay.layout.blocks[addr] = Block{size, state, seg_start, seg_end};
  if (state == kFree) g_replay.layout.free_ends[addr + size] = addr;
}

int64_t kvp_layout_size() {
  std::lock_guard<std::mutex> guard(g_replay.mu);
  return int64_t(g_replay.layout.blocks.size());
}

void kvp_layout_export(uint64_t* addr, int64_t* size, int32_t* state, uint64_t* seg_start, uint64_t* seg_end) {
  std::lock_guard<std::mutex> guard(g_replay.mu);
  int64_t i = 0;
  for (const auto& [a, b] : g_replay.layout.blocks) {
    addr[i] = a;
    size[i] = b.size;
    state[i] = b.state;
    seg_start[i] = b.seg_start;
    seg_end[i] = b.seg_end;
    i++;
  }
}

int64_t kvp_live_size() {
  std::lock_guard<std::mutex> guard(g_replay.mu);
  return int64_t(g_replay.live.size());
}

void kvp_live_export(uint64_t* addr, int64_t* id) {
  std::lock_guard<std::mutex> guard(g_replay.mu);
  int64_t i = 0;
  for (const auto& [a, v] : g_replay.live) {
    addr[i] = a;
    id[i] = v;
    i++;
  }
}

// The capacity, in events, of the buffer being recorded into and of the drains' spare.
void kvp_buffer_capacity(int64_t* out) {
  std::lock_guard<std::mutex> drain_guard(g_drain_mu);
  std::lock_guard<RecordLock> guard(g_rec.mu);
  out[0] = int64_t(g_rec.buffer.capacity());
  out[1] = int64_t(g_rec.spare.capacity());
}

// stats: exact blocks, rounded blocks, layout misses, model on (1/0), next id
void kvp_stats(int64_t* out) {
  std::lock_guard<std::mutex> guard(g_replay.mu);
  out[0] = g_replay.exact;
  out[1] = g_replay.rounded;
  out[2] = g_replay.layout.misses;
  out[3] = g_replay.model_on ? 1 : 0;
  out[4] = g_replay.next_id;
}

// Replay everything recorded since the last drain. counts: allocations, frees, retags, OOMs, entries,
// first allocation id. The columns stay until the next drain; kvp_take copies them out.
void kvp_drain(int64_t* counts) {
  std::lock_guard<std::mutex> drain_guard(g_drain_mu);  // one drain at a time: the spare is the drain's
  size_t pending;
  {
    std::lock_guard<RecordLock> guard(g_rec.mu);
    pending = g_rec.buffer.size();  // this interval's events so far: the next one's likely count
  }
  ready_spare(pending);  // outside the record lock: the recording thread goes on meanwhile
  std::vector<Entry> entries;
  entries.swap(g_rec.spare);  // g_rec.spare is only touched under g_drain_mu
  ClockPair from, to;
  {
    std::lock_guard<RecordLock> guard(g_rec.mu);
    entries.swap(g_rec.buffer);
    from = g_rec.last_pair;
    to = g_rec.last_pair = clock_pair();
  }
  for (Entry& e : entries) e.t_ns = to_ns(e.t_ns, from, to);
  std::lock_guard<std::mutex> guard(g_replay.mu);
  Replay& p = g_replay;
  for (auto* v : {&p.a_q, &p.a_t, &p.a_size, &p.a_ctx, &p.f_id, &p.f_q, &p.f_t, &p.r_id, &p.r_tag,
                  &p.o_ctx, &p.o_free, &p.o_size, &p.o_t}) {
    v->clear();
  }
  p.first_id = p.next_id;
  replay(entries, p);
  counts[0] = int64_t(p.a_q.size());
  counts[1] = int64_t(p.f_id.size());
  counts[2] = int64_t(p.r_id.size());
  counts[3] = int64_t(p.o_ctx.size());
  counts[4] = int64_t(entries.size());
  counts[5] = p.first_id;
  entries.clear();  // keeps the capacity
  g_rec.spare.swap(entries);
}

void kvp_take(int64_t* a_q, int64_t* a_t, int64_t* a_size, int64_t* a_ctx, int64_t* f_id, int64_t* f_q,
              int64_t* f_t, int64_t* r_id, int64_t* r_tag, int64_t* o_ctx, int64_t* o_free, int64_t* o_size,
              int64_t* o_t) {
  std::lock_guard<std::mutex> guard(g_replay.mu);
  const Replay& p = g_replay;
  copy_out(p.a_q, a_q);
  copy_out(p.a_t, a_t);
  copy_out(p.a_size, a_size);
  copy_out(p.a_ctx, a_ctx);
  copy_out(p.f_id, f_id);
  copy_out(p.f_q, f_q);
  copy_out(p.f_t, f_t);
  copy_out(p.r_id, r_id);
  copy_out(p.r_tag, r_tag);
  copy_out(p.o_ctx, o_ctx);
  copy_out(p.o_free, o_free);
  copy_out(p.o_size, o_size);
  copy_out(p.o_t, o_t);
}

}  // extern "C"
