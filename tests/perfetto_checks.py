"""Checks on Perfetto / Chrome trace-event JSON shared by the export and host-profile tests."""
from __future__ import annotations


def check_nesting(events: list[dict]) -> None:
    """Complete slices of each thread must nest (Perfetto drops overlapping ones)."""
    xs = sorted((e for e in events if e["ph"] == "X"), key=lambda e: (e["tid"], e["ts"], -e["dur"]))
    stack: list[float] = []
    eps = 1e-3  # one nanosecond, in microseconds
    for e in xs:
        end = e["ts"] + e["dur"]
        while stack and stack[-1] <= e["ts"] + eps:
            stack.pop()
        assert not stack or end <= stack[-1] + eps, e
        stack.append(end)
