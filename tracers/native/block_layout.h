// The CUDA caching allocator's blocks, mirrored from its events: the same rules as tracers/alloc_layout.py's
// BlockLayout (rounding, splitting, merging within a segment). Included by alloc_events.cpp only (its names are
// internal to that one translation unit).
#pragma once

#include <cstdint>
#include <unordered_map>

namespace {

constexpr int64_t kMinBlock = 512;       // c10 kMinBlockSize
constexpr int64_t kSmallSize = 1 << 20;  // c10 kSmallSize

enum State : int32_t { kFree = 0, kAllocated = 1, kPendingFree = 2 };

struct Block {
  int64_t size;
  int32_t state;
  uint64_t seg_start;
  uint64_t seg_end;
};

int64_t round_size(int64_t size) {
  return size < kMinBlock ? kMinBlock : kMinBlock * ((size + kMinBlock - 1) / kMinBlock);
}

bool should_split(int64_t block_size, int64_t rounded) {
  const int64_t remaining = block_size - rounded;
  return rounded <= kSmallSize ? remaining >= kMinBlock : remaining > kSmallSize;
}

// The allocator's blocks, mirrored from its events (see tracers/alloc_layout.py for the rules).
struct Layout {
  std::unordered_map<uint64_t, Block> blocks;
  std::unordered_map<uint64_t, uint64_t> free_ends;  // end address -> start, free blocks only
  int64_t misses = 0;
  bool expandable = false;

  void segment_alloc(uint64_t addr, int64_t size) {
    blocks[addr] = Block{size, kFree, addr, addr + size};
    free_ends[addr + size] = addr;
  }

  void segment_free(uint64_t addr, int64_t size) {
    auto it = blocks.find(addr);
    if (it == blocks.end() || it->second.state != kFree || it->second.size != size) misses++;
    if (it != blocks.end()) {
      free_ends.erase(addr + it->second.size);
      blocks.erase(it);
    }
  }

  // The block size handed out for `requested` bytes at `addr`, or -1 on a miss.
  int64_t alloc(uint64_t addr, int64_t requested) {
    auto it = blocks.find(addr);
    const int64_t rounded = round_size(requested);
    if (it == blocks.end() && expandable) return rounded;
    if (it == blocks.end() || it->second.state != kFree || it->second.size < rounded) {
      misses++;
      return -1;
    }
    const int64_t size = it->second.size;
    free_ends.erase(addr + size);
    it->second.state = kAllocated;
    if (!should_split(size, rounded)) return size;
    it->second.size = rounded;
    const Block rest{size - rounded, kFree, it->second.seg_start, it->second.seg_end};
    blocks[addr + rounded] = rest;  // may rehash: `it` is not used after this
    free_ends[addr + size] = addr + rounded;
    return rounded;
  }

  void free_requested(uint64_t addr) {
    auto it = blocks.find(addr);
    if (it == blocks.end() && expandable) return;
    if (it == blocks.end() || it->second.state != kAllocated) {
      misses++;
      return;
    }
    it->second.state = kPendingFree;
  }

  void free_completed(uint64_t addr) {
    auto it = blocks.find(addr);
    if (it == blocks.end() && expandable) return;
    if (it == blocks.end() || it->second.state == kFree) {
      misses++;
      return;
    }
    it->second.state = kFree;
    int64_t size = it->second.size;
    const uint64_t seg_start = it->second.seg_start, seg_end = it->second.seg_end;
    uint64_t end = addr + size;
    if (end < seg_end) {
      auto next = blocks.find(end);
      if (next != blocks.end() && next->second.state == kFree) {
        const int64_t next_size = next->second.size;
        blocks.erase(next);
        free_ends.erase(end + next_size);
        size += next_size;
        end += next_size;
      }
    }
    uint64_t start = addr;
    if (addr > seg_start) {
      auto prev = free_ends.find(addr);
      if (prev != free_ends.end()) {
        start = prev->second;
        free_ends.erase(prev);
        blocks.erase(addr);
        size += blocks[start].size;
      }
    }
    blocks[start].size = size;
    free_ends[end] = start;
  }
};

}  // namespace
