"""Stage timing: CUDA events recorded at boundaries and resolved after the run (no sync in the
hot path), NVTX ranges with the same names; on CPU the host clock is the device clock."""
from __future__ import annotations

import torch


class StageTimer:
    """Collects start/end markers per span id; `resolve()` returns device milliseconds."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._events: dict[int, list] = {}

    def begin(self, span_id: int, label: str) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._events[span_id] = [ev, None]
            torch.cuda.nvtx.range_push(label)

    def end(self, span_id: int) -> None:
        if self.cuda:
            torch.cuda.nvtx.range_pop()
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            pair = self._events.get(span_id)
            if pair is not None:
                pair[1] = ev

    def resolve(self) -> dict[int, float]:
        """Device ms per span (synchronizes once); empty on CPU, where host ms is the measure."""
        if not self.cuda:
            return {}
        torch.cuda.synchronize()
        out = {}
        for span_id, (start, end) in self._events.items():
            if end is not None:
                out[span_id] = start.elapsed_time(end)
        self._events.clear()
        return out
