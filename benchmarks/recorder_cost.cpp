// kvprof's share of the per-event cost of a traced CUDA run: `kvp_record`, what the allocator's trace tracker
// calls for every alloc and free event (tracers/native/alloc_events.cpp), in a loop, without CUDA (issue 15).
//
//   g++ -O2 -std=c++17 -o /tmp/recorder_cost benchmarks/recorder_cost.cpp tracers/native/alloc_events.cpp -lpthread
//   /tmp/recorder_cost
//
// Prints nanoseconds an event: the best of 20 rounds of 300k events (one 2 s drain's worth at prq_int4's rate),
// the buffer swapped out by a drain between rounds as the drain thread does, and the mean of the rounds after the
// first two (a recording thread's steady state: whether it still grows a buffer after each drain). c10's own work before it calls the
// tracker (building a TraceEntry) is not in it.
#include <chrono>
#include <cstdint>
#include <cstdio>
extern "C" void kvp_record(int32_t action, int32_t device, uint64_t addr, uint64_t size, int64_t ticks);
extern "C" void kvp_reset(int32_t device, int32_t expandable, int32_t model_on, int64_t next_id);
extern "C" void kvp_set_recording(int32_t on);
extern "C" void kvp_drain(int64_t* counts);
int main() {
  kvp_reset(0, 1, 0, 1);
  kvp_set_recording(1);
  const int N = 300000;  // one 2 s drain's worth at prq's rate
  double best = 1e9, steady = 0;
  for (int round = 0; round < 20; round++) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < N; i++) kvp_record(i % 3, 0, 0x1000 + (i / 3) * 512, 512, i);
    auto t1 = std::chrono::steady_clock::now();
    double ns = std::chrono::duration<double, std::nano>(t1 - t0).count() / N;
    if (ns < best) best = ns;
    if (round >= 2) steady += ns / 18;
    int64_t counts[6];
    kvp_drain(counts);
  }
  printf("kvp_record: %.1f ns an event (best of 20 rounds of %d, buffer swapped out between rounds), %.1f ns (mean of rounds 3-20)\n",
         best, N, steady);
}
