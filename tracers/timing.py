"""Stage timing: CUDA events recorded at boundaries and resolved after the run (no sync in the
hot path), NVTX ranges with the stages' names; on CPU the host clock is the device clock.

With the native recorder's library (`use_native`), a boundary records a pooled CUDA event from C++
(~2 us); otherwise a `torch.cuda.Event` per boundary (~25 us from Python)."""
from __future__ import annotations

import time
from typing import Any

import torch


class StageTimer:
    """Collects start/end markers per span id; `resolve()` returns device milliseconds."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.index = device.index or 0
        self._events: dict[int, list] = {}
        self._lib: Any = None
        self._push = torch.cuda.nvtx.range_push
        self._pop = torch.cuda.nvtx.range_pop

    def use_native(self, lib: Any) -> None:
        """Record boundaries through the native library's pooled events (from now on)."""
        if self.cuda and hasattr(lib, "kvp_mark"):
            lib.kvp_marks_reset()
            self._lib = lib

    def begin(self, span_id: int, label: str) -> None:
        if self.cuda:
            if self._lib is not None:
                self._events[span_id] = [self._lib.kvp_mark(self.index), None]
            else:
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                self._events[span_id] = [ev, None]
            self._push(label)

    def end(self, span_id: int) -> None:
        if self.cuda:
            self._pop()
            pair = self._events.get(span_id)
            if self._lib is not None:
                mark = self._lib.kvp_mark(self.index)
            else:
                mark = torch.cuda.Event(enable_timing=True)
                mark.record()
            if pair is not None:
                pair[1] = mark

    def resolve(self) -> dict[int, float]:
        """Device ms per span (synchronizes once); empty on CPU, where host ms is the measure."""
        if not self.cuda:
            return {}
        torch.cuda.synchronize()
        out = {}
        for span_id, (start, end) in self._events.items():
            if end is None:
                continue
            ms = self._lib.kvp_mark_ms(start, end) if self._lib is not None else start.elapsed_time(end)
            if ms == ms:  # NaN: a mark CUDA refused
                out[span_id] = ms
        self._events.clear()
        if self._lib is not None:
            self._lib.kvp_marks_reset()
        return out


class CloseSteps:
    """Seconds of each step of closing a trace (`meta.json` `tracer_close_s`): the profiler's own cost
    after the run, by step, so a slow close says which step to look at."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        """End `step` now (its seconds run from the previous lap, or from creation)."""
        now = time.perf_counter()
        self.seconds[step] = round(now - self._last, 4)
        self._last = now
