"""The CUDA tracker on kvprof's native recorder (tracers/native): bounded memory, per-event work in C++.

The caching allocator's trace tracker hands every event to C++ as it happens; a background thread
drains the buffer every `interval_s` (`DRAIN_INTERVAL_S`, 10 s; the replay runs in C++ with the GIL released, the
rows are built with numpy) and streams them to `allocations.parts/` (tracers.alloc_parts). So the host
memory of a trace is the mirror of the allocator's segments and the allocations alive, not the
number of events, and closing the trace merges parts instead of replaying a whole history. A run
that is followed live (`drain_at_checkpoints`) also drains at each checkpoint, so the follower,
which reads the parts as they appear, sees each chunk's allocations when it ends. Block sizes come from the mirrored layout, checked against, and
corrected from, the allocator's snapshot when recording stops (the rows already on disk get `z`
records), as `CudaHistoryTracker` does at each drain.
"""
from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tracers.alloc_cuda import CudaHistoryTracker, LayoutStats
from tracers.alloc_layout import ALLOCATED, FREE, BlockLayout, expandable_segments_requested, unsupported_reason
from tracers.drain_phases import BETWEEN, DrainPhases
from tracers.record_cost import read_samples, record_cost_meta

if TYPE_CHECKING:  # pragma: no cover
    from tracers.session import TraceSession

OFF_EXPANDABLE = "expandable segments the tracker was not told of"
# Seconds between the drain thread's drains. Each drain hands the GIL back and forth with the model's thread dozens of
# times (numpy and pyarrow release it op by op; the model waits for it back), whatever the drain's size: at 2 s a
# 42-frame prq_int4 rollout's model thread waited ~3,700 times, at 10 s ~900 (benchmarks/RESULTS.md, session 17),
# for ~60 MB more of recorder buffer (the events of one interval) and up to 10 s of events lost if the process is
# killed outright (a failing run still drains at close). Followed live, a trace also drains at every checkpoint.
DRAIN_INTERVAL_S = 10.0


@dataclass
class StreamBatch:
    """One drain of the native recorder, as numpy columns (times on the trace clock's base, ns)."""

    first_id: int
    a_q: np.ndarray
    a_t: np.ndarray
    a_size: np.ndarray
    a_ctx: np.ndarray
    f_id: np.ndarray
    f_q: np.ndarray
    f_t: np.ndarray
    r_id: np.ndarray
    r_tag: np.ndarray
    entries: int


def _buf(n: int) -> np.ndarray:
    return np.empty(n, dtype=np.int64)


def drain_columns(lib: Any) -> tuple[StreamBatch, list[np.ndarray]]:
    """Replay what the recorder holds (C++, GIL released) and copy it out: the drain's rows, and its
    allocator out-of-memory events as columns (ctx, free bytes, requested bytes, ns)."""
    counts = (ctypes.c_int64 * 6)()
    lib.kvp_drain(counts)
    n_a, n_f, n_r, n_o, entries, first = list(counts)
    cols = [_buf(n_a) for _ in range(4)] + [_buf(n_f) for _ in range(3)] + [_buf(n_r) for _ in range(2)]
    ooms = [_buf(n_o) for _ in range(4)]
    lib.kvp_take(*[_ptr(a) for a in cols + ooms])
    return StreamBatch(first, *cols, entries=entries), ooms


def _ptr(a: np.ndarray) -> Any:
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))


class NativeCudaTracker:
    """Same duties as `CudaHistoryTracker` (start, set_context, retag, adopt, drain, stop, meta)."""

    def __init__(self, session: "TraceSession", device: torch.device, lib: Any, expandable: bool = False,
                 interval_s: float = DRAIN_INTERVAL_S, quick_lib: Any = None):
        self.session = session
        self.device = device
        self.index = device.index or 0
        self.lib = lib
        self.quick_lib = lib if quick_lib is None else quick_lib
        self.expandable = expandable or expandable_segments_requested()
        self.layout = BlockLayout(expandable=self.expandable)  # for the snapshot checks only
        self.stats = LayoutStats(off_reason=unsupported_reason())
        self.oom_events: list[dict[str, Any]] = []
        self.interval_s = interval_s
        self.entries = 0
        self.drains = 0
        self.error: BaseException | None = None  # a failed background drain, raised at the next checkpoint
        self._context = ctypes.c_int64.in_dll(lib, "kvp_context")
        recorded = ctypes.c_int64.in_dll(lib, "kvp_recorded")
        self.phases = DrainPhases(lambda: recorded.value)
        self._counters = (ctypes.c_int64 * 2)()
        self._start_blocks: dict[int, int] = {}
        self._retags: list[tuple[str, str | None]] = []
        self._record_cost: tuple[list[int], np.ndarray] | None = None  # the sampled record path, read at stop
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def quick_lib(self) -> Any:
        """The binding of the traced thread's calls at stage boundaries (counters, marks, retags): they keep the GIL
        (`native.load`'s `hold_gil` says why). The drain's calls (which wait on the recorder's locks) release it."""
        return self._quick_lib

    @quick_lib.setter
    def quick_lib(self, lib: Any) -> None:
        self._quick_lib = lib
        # looked up once: a missing symbol costs ctypes a failed dlsym and an exception on every lookup
        self._counters_fn = getattr(lib, "kvp_counters", None)

    # ----------------------------------------------------------------- lifecycle
    def _segments(self, snap: dict[str, Any]) -> list[dict[str, Any]]:
        return [s for s in snap.get("segments", []) if s.get("device", self.index) == self.index]

    def start(self) -> None:
        """Learn the blocks that exist now, hand the layout to the recorder, start recording."""
        self.layout.load(self._segments(torch.cuda.memory._snapshot(self.device)))
        self._start_blocks = {a: b[0] for a, b in self.layout.blocks.items() if b[1] == ALLOCATED}
        lib = self.lib
        lib.kvp_attach()
        lib.kvp_reset(self.index, int(self.expandable), int(self.stats.off_reason is None), 1)
        for addr, (size, state, seg_start, seg_end) in self.layout.blocks.items():
            lib.kvp_layout_add(addr, size, state, seg_start, seg_end)
        lib.kvp_set_recording(1)

    def blocks_at_start(self) -> list[tuple[int, int]]:
        """(address, size) of the blocks allocated when tracking started, in address order."""
        return sorted(self._start_blocks.items())

    def adopt(self, address: int, alloc_id: int) -> None:
        """Follow the free (and retags) of a block that existed before tracking, as `alloc_id`."""
        self._start_blocks.pop(address, None)
        self.lib.kvp_adopt(address, alloc_id)

    def stream(self, next_id: int) -> None:
        """Number allocations from `next_id` on; drain on a background thread every `interval_s`."""
        self.lib.kvp_set_next_id(next_id)
        self._thread = threading.Thread(target=self._run, name="kvprof-drain", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.phases.start()
        while not self._stop.wait(self.interval_s):
            try:
                self.drain(timed=True)
            except BaseException as exc:  # kept and raised on the main thread (checkpoint, close)
                self.error = exc
                return

    def counters(self) -> tuple[int, int]:
        """(allocated, reserved) bytes of the allocator now: a ~1 us C call where the library has it."""
        fn = self._counters_fn
        if fn is None:  # the core library (CPU tests): torch's own reading
            stats = torch.cuda.memory_stats_as_nested_dict(self.device)
            return stats["allocated_bytes"]["all"]["current"], stats["reserved_bytes"]["all"]["current"]
        out = self._counters
        fn(self.index, out)
        return out[0], out[1]

    def set_context(self, ctx: int) -> None:
        """Stamp every following allocator event with context number `ctx` (one store in place)."""
        self._context.value = ctx

    def retag(self, ctx: int, address: int, category: str, name: str | None) -> None:
        """Retag the block live at `address` now (in order among the allocator's events)."""
        self._retags.append((category, name))
        self.quick_lib.kvp_retag(address, len(self._retags) - 1)

    # ----------------------------------------------------------------- drains
    def drain(self, timed: bool = False) -> None:
        """Replay what was recorded since the last drain (C++, GIL released) and record its rows. `timed`: the
        drain thread's periodic drains, whose phases `self.phases` times against the model's progress."""
        mark = self.phases.mark if timed else (lambda phase: None)
        with self._lock:
            mark(BETWEEN)
            batch, ooms = drain_columns(self.lib)
            mark("replay")
            self.entries += batch.entries
            self.drains += 1
            for ctx, free, size, t in zip(*(a.tolist() for a in ooms)):
                self.oom_events.append({"action": "oom", "addr": free, "size": size, "ctx": ctx,
                                        "t_ns": t - self.session.t0_perf_ns})
            # a live follower reads the parts too
            self.session.record_stream_batch(batch, self._retags, lambda: mark("rows"))
            mark("part")
            self.session.flush_log()  # the stage records the main thread only queued
            mark("log")
            if not timed:
                self.phases.restart()

    def raise_error(self) -> None:
        """Raise a background drain's failure on the calling (main) thread."""
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def stop(self) -> None:
        """Stop recording, drain the rest, check the mirrored layout against the allocator's snapshot."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.lib.kvp_set_recording(0)
        self._record_cost = read_samples(self.lib)  # before the drain: the recorder's time, not the close's
        self.drain()
        self.raise_error()
        self._resync(self._segments(torch.cuda.memory._snapshot(self.device)))

    def _export_layout(self) -> None:
        n = self.lib.kvp_layout_size()
        addr, size, state = np.empty(n, np.uint64), _buf(n), np.empty(n, np.int32)
        start, end = np.empty(n, np.uint64), np.empty(n, np.uint64)
        u64 = ctypes.POINTER(ctypes.c_uint64)
        self.lib.kvp_layout_export(addr.ctypes.data_as(u64), _ptr(size), state.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                                   start.ctypes.data_as(u64), end.ctypes.data_as(u64))
        self.layout.blocks = {int(a): [int(s), int(st), int(b), int(e)]
                              for a, s, st, b, e in zip(addr, size, state, start, end)}
        self.layout._free_ends = {a + b[0]: a for a, b in self.layout.blocks.items() if b[1] == FREE}

    def _resync(self, segments: list[dict[str, Any]]) -> None:
        stats = (ctypes.c_int64 * 5)()
        self.lib.kvp_stats(stats)
        self.stats.exact, self.stats.rounded = stats[0], stats[1]
        self.layout.misses = stats[2]
        if not stats[3] and self.stats.off_reason is None:
            self.stats.off_reason = OFF_EXPANDABLE
        if self.stats.off_reason is None:
            self._export_layout()
            self.stats.snapshot_mismatches += self.layout.mismatches(segments)
        self.layout.load(segments)
        n = self.lib.kvp_live_size()
        addr, ids = np.empty(n, np.uint64), _buf(n)
        self.lib.kvp_live_export(addr.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64)), _ptr(ids))
        for a, i in zip(addr.tolist(), ids.tolist()):
            block = self.layout.blocks.get(a)
            if block is not None and block[1] == ALLOCATED and self.session.record_size(i, block[0]):
                self.stats.corrected += 1

    def meta(self) -> dict[str, Any]:
        """What the trace's meta records about block sizes and the recorder."""
        return self.stats.as_meta(self.layout.misses) | {
            "expandable_segments": self.expandable, "recorder": "native", "events": self.entries, "drains": self.drains,
            "drain_phases": self.phases.meta(),
            "record_cost": record_cost_meta(*self._record_cost, self.entries) if self._record_cost else None}


def cuda_tracker(session: "TraceSession", recorder: str, require_native: bool) -> "CudaHistoryTracker | NativeCudaTracker":
    """The native recorder where it builds (bounded memory, per-event work in C++), else the Python
    replay of the allocator's history (`recorder` "allocator", or `KVPROF_RECORDER=python`), a fallback
    said in the trace's notes."""
    if recorder == "native":
        from tracers import native

        try:
            cuda = session.device.type == "cuda"
            return NativeCudaTracker(session, session.device, native.load(cuda), expandable=session.expandable_segments,
                                     quick_lib=native.load(cuda, hold_gil=True))
        except native.NativeUnavailable as exc:
            if require_native:
                raise
            session.notes.append(f"native allocator recorder unavailable ({exc}): the allocator's history is "
                                 "replayed in Python at close, host memory grows with the events")
    return CudaHistoryTracker(session, session.device, expandable=session.expandable_segments)
