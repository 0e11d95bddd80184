// kvprof's share of the per-event cost of a traced CUDA run: `kvp_record`, what the allocator's trace tracker
// calls for every alloc and free event (tracers/native/alloc_events.cpp), in a loop, without CUDA (issue 15).
//
//   g++ -O2 -std=c++17 -o /tmp/recorder_cost benchmarks/recorder_cost.cpp tracers/native/alloc_events.cpp -lpthread
//   /tmp/recorder_cost
//
// Two measurements, nanoseconds an event:
// - back to back: the best of 20 rounds of 300k events (one 2 s drain's worth at prq_int4's rate), the buffer
//   swapped out by a drain between rounds as the drain thread does, and the mean of the rounds after the first two
//   (a recording thread's steady state: whether it still grows a buffer after each drain);
// - in context: each event between two slices of stand-in model work (random reads and writes over a 16 MB working
//   set, a few us: prq_int4's gap between allocator events), against the same work with no event. The difference
//   is what recording costs the thread where the recorder's stores and lock meet the model's own cache misses,
//   which the back-to-back loop, with its buffer always in cache, cannot show. As in c10, every event (recorded or
//   not) happens under the allocator's own mutex. Blocks of events alternate with and without recording.
// c10's own work before it calls the tracker (building a TraceEntry) is in neither. Last, the figure a trace's meta
// gives for the in-context events (`record_cost`: the record path timed in place on ~1 event in 1024).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <vector>
extern "C" void kvp_record(int32_t action, int32_t device, uint64_t addr, uint64_t size, int64_t ticks);
extern "C" void kvp_reset(int32_t device, int32_t expandable, int32_t model_on, int64_t next_id);
extern "C" void kvp_set_recording(int32_t on);
extern "C" void kvp_drain(int64_t* counts);
extern "C" void kvp_record_cost(int64_t* out);
extern "C" int64_t kvp_record_cost_kept(int64_t* out, int64_t n);

namespace {
std::vector<uint64_t> g_working_set(size_t(2) << 20);  // 16 MB: more than a core's L2, like the model's
std::mutex g_allocator_mu;  // c10's DeviceCachingAllocator mutex: record_trace runs inside it

uint64_t model_work(uint64_t x, int touches) {
  for (int i = 0; i < touches; i++) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    g_working_set[(x >> 24) % g_working_set.size()] += x;
  }
  return x;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

int main() {
  kvp_reset(0, 1, 0, 1);
  kvp_set_recording(1);
  const int N = 300000;  // one 2 s drain's worth at prq's rate
  double best = 1e9, steady = 0;
  for (int round = 0; round < 20; round++) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < N; i++) kvp_record(i % 3, 0, 0x1000 + (i / 3) * 512, 512, i);
    double ns = seconds_since(t0) * 1e9 / N;
    if (ns < best) best = ns;
    if (round >= 2) steady += ns / 18;
    int64_t counts[6];
    kvp_drain(counts);
  }
  printf("kvp_record back to back: %.1f ns an event (best of 20 rounds of %d, buffer swapped out between rounds), "
         "%.1f ns (mean of rounds 3-20)\n", best, N, steady);

  // Blocks of 1,000 events, recorded and not in turn: drift in the machine's speed falls on both alike.
  kvp_reset(0, 1, 0, 1);  // the recorder's own sampled timing (meta record_cost) starts here
  const int kTouches = 200, kBlock = 1000, kPairsPerRound = 50, kRounds = 21;
  uint64_t x = 1;
  std::vector<double> added_ns;  // per round: (with - without) / events
  double work_s = 0;
  for (int round = 0; round < kRounds; round++) {
    double took[2] = {0, 0};
    for (int b = 0; b < 2 * kPairsPerRound; b++) {
      const int record = (round + b) % 2;
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < kBlock; i++) {
        x = model_work(x, kTouches);
        std::lock_guard<std::mutex> allocator(g_allocator_mu);
        if (record) kvp_record(i % 3, 0, 0x1000 + (i / 3) * 512, 512, i);
      }
      took[record] += seconds_since(t0);
    }
    int64_t counts[6];
    kvp_drain(counts);
    const double events = double(kBlock) * kPairsPerRound;
    added_ns.push_back((took[1] - took[0]) / events * 1e9);
    work_s += took[0] / events;
  }
  std::sort(added_ns.begin(), added_ns.end());
  printf("in context: %.2f us of model work an event; recording adds %.1f ns an event (median of %d rounds; "
         "quartiles %.1f / %.1f) [x=%llu]\n", work_s / kRounds * 1e6, added_ns[kRounds / 2], kRounds,
         added_ns[kRounds / 4], added_ns[3 * kRounds / 4], static_cast<unsigned long long>(x & 1));
  // What a trace's meta says of the same events: the record path timed in place on ~1 event in 1024 (lock to store,
  // without the call into kvp_record and its checks, which the loop's difference includes); the median, as
  // tracers/record_cost.py reads it, since a sample an interrupt lands in moves the mean by tens of ns here.
  int64_t cost[7];
  kvp_record_cost(cost);
  std::vector<int64_t> kept(static_cast<size_t>(cost[6]));
  kept.resize(static_cast<size_t>(kvp_record_cost_kept(kept.data(), cost[6])));
  const double ns_per_tick = cost[4] > 0 ? double(cost[5]) / double(cost[4]) : 1.0;
  double median = 0;
  if (!kept.empty()) {
    std::nth_element(kept.begin(), kept.begin() + kept.size() / 2, kept.end());
    median = (double(kept[kept.size() / 2]) - double(cost[3])) * ns_per_tick;
  }
  printf("in place (record_cost): median %.1f ns, mean %.1f ns an event over %lld sampled events\n", median,
         cost[0] > 0 ? (double(cost[1]) / double(cost[0]) - double(cost[3])) * ns_per_tick : 0.0,
         static_cast<long long>(cost[0]));
}
