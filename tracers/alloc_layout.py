"""A mirror of the CUDA caching allocator's block layout, replayed from its own history.

The allocator's history gives each allocation's *requested* size and address, but
`torch.cuda.memory_allocated()` counts *block* sizes: the request rounded to 512 bytes, or a whole
cached free block when the allocator hands it out unsplit (up to 1 MiB larger for large requests,
up to 511 bytes for small ones). Whether a block is split depends only on the free block found at
that address, so mirroring segments, splits and merges from the same history gives every block's
exact size, including blocks freed between two drains (which no snapshot ever shows).

The rules are those of c10's CUDACachingAllocator (native backend, no max_split_size or
power-of-two rounding): `round_size`, the small pool for rounded sizes up to
1 MiB, `should_split` (small: remainder >= 512 B; large: remainder > 1 MiB) and merging a freed
block with free neighbours of the same segment when the free completes. The layout is checked
against, and reloaded from, the allocator's snapshot at every drain; `unsupported_reason` says when
the allocator's configuration makes the rules inapplicable. With expandable segments the allocator
splits every block down to its rounded request (any remainder of 512 B or more is split off), so
blocks of expandable segments are exactly `round_size` and need no mirror.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

MIN_BLOCK = 512  # kMinBlockSize
SMALL_SIZE = 1 << 20  # kSmallSize: rounded requests up to this size come from the small pool

FREE, ALLOCATED, PENDING_FREE = 0, 1, 2
_STATES = {"inactive": FREE, "active_allocated": ALLOCATED, "active_pending_free": PENDING_FREE}

ALLOC_CONF_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # where users configure the allocator
# Allocator options that change block sizes or segment structure.
_UNSUPPORTED_OPTIONS = ("max_split_size_mb", "roundup_power2_divisions", "backend:cudamallocasync")


def round_size(size: int) -> int:
    """The allocator's rounding of a request (c10 CUDACachingAllocator round_size)."""
    if size < MIN_BLOCK:
        return MIN_BLOCK
    return MIN_BLOCK * ((size + MIN_BLOCK - 1) // MIN_BLOCK)


def should_split(block_size: int, rounded: int) -> bool:
    """Whether the allocator splits a free block of `block_size` to serve a `rounded` request."""
    remaining = block_size - rounded
    if rounded <= SMALL_SIZE:
        return remaining >= MIN_BLOCK
    return remaining > SMALL_SIZE


def unsupported_reason(environ: dict[str, str] | None = None) -> str | None:
    """Why the allocator's configuration rules the layout model out, or None when it applies."""
    env = os.environ if environ is None else environ
    for var in ALLOC_CONF_VARS:
        conf = env.get(var, "").replace(" ", "").lower()
        for option in _UNSUPPORTED_OPTIONS:
            if option in conf:
                return f"{var} sets {option.split(':')[0]}"
    return None


def expandable_segments_requested(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment turns the allocator's expandable segments on."""
    env = os.environ if environ is None else environ
    return any("expandable_segments:true" in env.get(var, "").replace(" ", "").lower()
               for var in ALLOC_CONF_VARS)


class BlockLayout:
    """Blocks of every segment of one device: start address -> [size, state, segment start, segment end].

    Misses (an allocation at an address that is not the start of a free block large enough, a free
    of an unknown block) are counted, never raised: the caller falls back to the rounded size and
    the next snapshot resynchronizes the layout.
    """

    def __init__(self, expandable: bool = False) -> None:
        # expandable: new segments are expandable; allocations outside the mirrored (fixed) segments
        # are theirs, and their block size is the rounded request.
        self.expandable = expandable
        self.blocks: dict[int, list[int]] = {}
        self._free_ends: dict[int, int] = {}  # end address -> start, free blocks only (backward merges)
        self.misses = 0

    # ------------------------------------------------------------------ snapshots
    def load(self, segments: Iterable[dict[str, Any]], device: int | None = None) -> None:
        """Replace the layout by the one of a `torch.cuda.memory._snapshot()['segments']` list."""
        self.blocks.clear()
        self._free_ends.clear()
        for seg in _device_segments(segments, device):
            if seg.get("is_expandable"):
                continue
            start = int(seg["address"])
            end = start + int(seg.get("total_size") or sum(int(b["size"]) for b in seg.get("blocks", [])))
            addr = start
            for b in seg.get("blocks", []):
                size = int(b["size"])
                state = _STATES.get(b.get("state", "inactive"), ALLOCATED)
                self.blocks[addr] = [size, state, start, end]
                if state == FREE:
                    self._free_ends[addr + size] = addr
                addr += size

    def mismatches(self, segments: Iterable[dict[str, Any]], device: int | None = None) -> int:
        """How many blocks of a snapshot differ from the layout (address, size or allocated state)."""
        theirs: dict[int, tuple[int, bool]] = {}
        for seg in _device_segments(segments, device):
            if seg.get("is_expandable"):
                continue
            addr = int(seg["address"])
            for b in seg.get("blocks", []):
                theirs[addr] = (int(b["size"]), b.get("state") != "inactive")
                addr += int(b["size"])
        ours = {a: (b[0], b[1] != FREE) for a, b in self.blocks.items()}
        return sum(1 for a in theirs.keys() | ours.keys() if theirs.get(a) != ours.get(a))

    # ------------------------------------------------------------------ history events
    def segment_alloc(self, addr: int, size: int) -> None:
        """cudaMalloc of a new segment: one free block."""
        self.blocks[addr] = [size, FREE, addr, addr + size]
        self._free_ends[addr + size] = addr

    def segment_free(self, addr: int, size: int) -> None:
        """cudaFree of a whole (entirely free) segment."""
        block = self.blocks.pop(addr, None)
        if block is None or block[1] != FREE or block[0] != size:
            self.misses += 1
        if block is not None:
            self._free_ends.pop(addr + block[0], None)

    def alloc(self, addr: int, requested: int) -> int | None:
        """The block size handed out for `requested` bytes at `addr` (None on a miss)."""
        block = self.blocks.get(addr)
        rounded = round_size(requested)
        if block is None and self.expandable:
            return rounded
        if block is None or block[1] != FREE or block[0] < rounded:
            self.misses += 1
            return None
        size = block[0]
        del self._free_ends[addr + size]
        block[1] = ALLOCATED
        if not should_split(size, rounded):
            return size
        block[0] = rounded
        rest = addr + rounded
        self.blocks[rest] = [size - rounded, FREE, block[2], block[3]]
        self._free_ends[addr + size] = rest
        return rounded

    def free_requested(self, addr: int) -> int | None:
        """The block is released by its tensor; it is reusable once the free completes."""
        block = self.blocks.get(addr)
        if block is None and self.expandable:
            return None
        if block is None or block[1] != ALLOCATED:
            self.misses += 1
            return None
        block[1] = PENDING_FREE
        return block[0]

    def free_completed(self, addr: int) -> None:
        """The block returns to the pool, merged with free neighbours of its segment."""
        block = self.blocks.get(addr)
        if block is None and self.expandable:
            return
        if block is None or block[1] == FREE:
            self.misses += 1
            return
        block[1] = FREE
        size, seg_start, seg_end = block[0], block[2], block[3]
        end = addr + size
        if end < seg_end:
            nxt = self.blocks.get(end)
            if nxt is not None and nxt[1] == FREE:
                del self.blocks[end]
                del self._free_ends[end + nxt[0]]
                size += nxt[0]
                end += nxt[0]
        if addr > seg_start:
            prev_start = self._free_ends.pop(addr, None)
            if prev_start is not None:
                del self.blocks[addr]
                addr = prev_start
                size += self.blocks[addr][0]
        self.blocks[addr][0] = size
        self._free_ends[end] = addr

    def block_size(self, addr: int) -> int | None:
        """Size of the allocated block starting at `addr`, if there is one."""
        block = self.blocks.get(addr)
        return block[0] if block is not None and block[1] == ALLOCATED else None

    def allocated_bytes(self) -> int:
        """Bytes in allocated blocks (what memory_allocated() counts); pending frees are not counted."""
        return sum(b[0] for b in self.blocks.values() if b[1] == ALLOCATED)


def _device_segments(segments: Iterable[dict[str, Any]], device: int | None) -> Iterable[dict[str, Any]]:
    for seg in segments:
        if device is None or seg.get("device", device) == device:
            yield seg
