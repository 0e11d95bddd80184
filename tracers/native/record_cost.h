// The record path's own cost, measured in place (meta `allocator_layout.record_cost`): about one event in 1024 is
// timed on the tick source from before the record lock to after its store; the clock reads' own latency (the least of
// 64 back-to-back pairs at reset) is taken off by the reader. Which event comes next is drawn at random (gaps of
// 1-2047 events), so a model's periodic pattern of events cannot line up with a fixed stride; an event not drawn pays
// one compare. Each sample's ticks are kept (a uniform reservoir of 65,536 once there are more: ~67 M events), so a
// reader can take a median and leave out a sample that a preemption or an interrupt landed in. Included by
// alloc_events.cpp only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

class RecordCostSampler {
 public:
  static constexpr size_t kKept = 65536;

  // Start over at event count `recorded`: `read_ticks` the least ticks of a clock-read pair, `since_*` now on both
  // clocks. The kept samples' capacity stays: a trace after the first grows nothing while it records.
  void reset(int64_t recorded, int64_t read_ticks, int64_t since_ticks, int64_t since_ns) {
    samples_ = ticks_ = max_ticks_ = 0;
    read_ticks_ = read_ticks;
    since_ticks_ = since_ticks;
    since_ns_ = since_ns;
    kept_.clear();
    draw(recorded);
  }

  // Whether the event about to be recorded as number `recorded` is timed (read without the record lock). `>=`, not
  // `==`: retags and batches also advance the count and may step over the number drawn.
  bool due(int64_t recorded) const { return recorded >= __atomic_load_n(&next_, __ATOMIC_RELAXED); }

  // One timed event's ticks; `recorded` the count after it. Under the record lock.
  void keep(int64_t spent, int64_t recorded) {
    samples_++;
    ticks_ += spent;
    max_ticks_ = std::max(max_ticks_, spent);
    if (kept_.size() < kKept) {
      kept_.push_back(spent);
    } else {
      const uint64_t slot = random() % uint64_t(samples_);
      if (slot < kKept) kept_[slot] = spent;
    }
    draw(recorded);
  }

  // samples, their ticks, the most ticks of one, a clock-read pair's ticks, ticks and ns since the reset, kept.
  void stats(int64_t* out, int64_t now_ticks, int64_t now_ns) const {
    out[0] = samples_;
    out[1] = ticks_;
    out[2] = max_ticks_;
    out[3] = read_ticks_;
    out[4] = now_ticks - since_ticks_;
    out[5] = now_ns - since_ns_;
    out[6] = int64_t(kept_.size());
  }

  int64_t copy_kept(int64_t* out, int64_t n) const {
    const int64_t k = std::min<int64_t>(n, int64_t(kept_.size()));
    std::copy(kept_.begin(), kept_.begin() + k, out);
    return k;
  }

 private:
  uint64_t random() {  // xorshift64
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    return rng_;
  }

  void draw(int64_t recorded) {
    __atomic_store_n(&next_, recorded + 1 + int64_t(random() % 2047), __ATOMIC_RELAXED);
  }

  int64_t samples_ = 0, ticks_ = 0, max_ticks_ = 0, read_ticks_ = 0, since_ticks_ = 0, since_ns_ = 0, next_ = 1;
  uint64_t rng_ = 0x2545F4914F6CDD1DULL;
  std::vector<int64_t> kept_;
};

}  // namespace
