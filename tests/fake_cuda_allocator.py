"""A stand-in for the CUDA caching allocator and its history API, for CPU tests of the CUDA tracker.

It is an independent implementation of the allocator's policy (best-fit search of the request's
pool, segment sizes, split and merge rules), not a reuse of kvprof's `BlockLayout`, so the tests can
check that the layout mirrored from the history gives the block sizes this allocator counted.
"""
from __future__ import annotations

import time
from typing import Any

import pytest
import torch

KIB, MIB = 1 << 10, 1 << 20
# tracers/native/alloc_events.cpp's action numbers (c10's TraceEntry::Action order)
ACTIONS = {"alloc": 0, "free_requested": 1, "free_completed": 2, "segment_alloc": 3, "segment_free": 4}


def _round(size: int) -> int:
    return 512 if size < 512 else 512 * ((size + 511) // 512)


def _segment_size(rounded: int) -> int:
    if rounded <= MIB:
        return 2 * MIB
    if rounded < 10 * MIB:
        return 20 * MIB
    return 2 * MIB * ((rounded + 2 * MIB - 1) // (2 * MIB))


class FakeCachingAllocator:
    """Segments, best-fit blocks, splits and merges; records the history the tracker drains."""

    def __init__(self, segment_gap: int = 64 * MIB):
        self.metadata = ""
        self.trace: list[dict[str, Any]] = []
        self.segments: dict[int, tuple[int, bool]] = {}  # start -> (size, small pool)
        self.blocks: dict[int, list] = {}  # addr -> [size, allocated, segment start, requested]
        self.allocated = 0
        self.max_allocated = 0
        self.unsplit = 0  # blocks handed out larger than their rounded request
        self._next_segment = 1 << 40
        self._segment_gap = segment_gap  # 0: segments are adjacent in address space
        self.native: Any = None  # the native recorder's library, when the trace uses it

    def _emit(self, action: str, addr: int, size: int) -> None:
        if self.native is not None:  # the allocator's trace tracker, as attach_cuda.cpp forwards it
            # the core library has no tick source: an event's ticks are steady-clock ns (CLOCK_MONOTONIC)
            self.native.kvp_record(ACTIONS[action], 0, addr, size, time.perf_counter_ns())
            return
        self.trace.append({"action": action, "addr": addr, "size": size, "time_us": len(self.trace) + 1,
                           "user_metadata": self.metadata})

    def malloc(self, size: int) -> int:
        rounded = _round(size)
        small = rounded <= MIB
        fits = [(b[0], a) for a, b in self.blocks.items()
                if not b[1] and self.segments[b[2]][1] == small and b[0] >= rounded]
        if not fits:
            seg = self._next_segment
            seg_size = _segment_size(rounded)
            self._next_segment += seg_size + self._segment_gap
            self.segments[seg] = (seg_size, small)
            self.blocks[seg] = [seg_size, False, seg, 0]
            self._emit("segment_alloc", seg, seg_size)
            fits = [(seg_size, seg)]
        block_size, addr = min(fits)
        block = self.blocks[addr]
        remaining = block_size - rounded
        if (remaining >= 512) if small else (remaining > MIB):
            block[0] = rounded
            self.blocks[addr + rounded] = [remaining, False, block[2], 0]
        elif remaining:
            self.unsplit += 1
        block[1], block[3] = True, size
        self.allocated += block[0]
        self.max_allocated = max(self.max_allocated, self.allocated)
        self._emit("alloc", addr, size)
        return addr

    def free(self, addr: int) -> None:
        block = self.blocks[addr]
        block[1] = False
        self.allocated -= block[0]
        self._emit("free_requested", addr, block[3])
        self._emit("free_completed", addr, block[3])
        nxt = self.blocks.get(addr + block[0])
        if nxt is not None and not nxt[1] and nxt[2] == block[2]:
            block[0] += nxt[0]
            del self.blocks[addr + block[0] - nxt[0]]
        for a, b in self.blocks.items():
            if a + b[0] == addr and not b[1] and b[2] == block[2]:
                b[0] += block[0]
                del self.blocks[addr]
                break

    def empty_cache(self) -> None:
        for seg, (size, _) in list(self.segments.items()):
            block = self.blocks.get(seg)
            if block is not None and not block[1] and block[0] == size:
                del self.blocks[seg], self.segments[seg]
                self._emit("segment_free", seg, size)

    def nested_stats(self) -> dict[str, Any]:
        """The two counters kvprof reads, in `torch.cuda.memory_stats_as_nested_dict()` form."""
        reserved = sum(size for size, _ in self.segments.values())
        return {"allocated_bytes": {"all": {"current": self.allocated}}, "reserved_bytes": {"all": {"current": reserved}}}

    def block_size(self, addr: int) -> int:
        return self.blocks[addr][0]

    def snapshot(self, device=None) -> dict[str, Any]:
        segments = []
        for seg in sorted(self.segments):
            size, small = self.segments[seg]
            blocks = [{"size": b[0], "requested_size": b[3], "state": "active_allocated" if b[1] else "inactive"}
                      for a, b in sorted(self.blocks.items()) if b[2] == seg]
            segments.append({"device": 0, "address": seg, "total_size": size,
                             "segment_type": "small" if small else "large", "blocks": blocks})
        return {"device_traces": [list(self.trace)], "segments": segments}

    def record_history(self, enabled, *a, clear_history=False, **k) -> None:
        if clear_history:
            self.trace.clear()


def install(monkeypatch, f: FakeCachingAllocator) -> FakeCachingAllocator:
    """Serve torch.cuda's memory history API and counters from `f`."""
    mem = torch.cuda.memory
    monkeypatch.setattr(mem, "_record_memory_history", f.record_history)
    monkeypatch.setattr(mem, "_snapshot", f.snapshot)
    monkeypatch.setattr(mem, "_set_memory_metadata", lambda s: setattr(f, "metadata", s))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: f.allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: f.max_allocated)
    monkeypatch.setattr(torch.cuda, "memory_stats_as_nested_dict", lambda *a, **k: f.nested_stats())
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    return f


def native_core() -> Any:
    """The native recorder's core library, with the CUDA hook's attach made a no-op (no CUDA here)."""
    from tracers import native

    lib = native.load(cuda=False)
    lib.kvp_attach = lambda: 1
    return lib


def install_native(monkeypatch, f: FakeCachingAllocator) -> FakeCachingAllocator:
    """As `install`, with `f`'s events going to the native recorder (tracker="native" on a CPU session)."""
    install(monkeypatch, f)
    f.native = native_core()
    return f


@pytest.fixture
def fake(monkeypatch) -> FakeCachingAllocator:
    """torch.cuda's memory history API and counters, served by a FakeCachingAllocator."""
    return install(monkeypatch, FakeCachingAllocator())
