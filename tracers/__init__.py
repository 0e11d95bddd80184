"""kvprof tracers: stages, category tags, allocation tracking, timing, device sampling, trace I/O.

The session (which needs torch) loads lazily, so readers of traces (TUI, reports) start fast.
"""
from typing import Any

from tracers.categories import CATEGORIES, KV_CATEGORIES, Category
from tracers.context import active_session, register, stage, tag, tag_tensor
from tracers.trace_io import RawTrace, TraceError, read_raw_trace

__all__ = [
    "CATEGORIES",
    "KV_CATEGORIES",
    "Category",
    "active_session",
    "register",
    "stage",
    "tag",
    "tag_tensor",
    "SimulatedOOM",
    "TraceSession",
    "RawTrace",
    "TraceError",
    "read_raw_trace",
]


def __getattr__(name: str) -> Any:
    if name in ("TraceSession", "SimulatedOOM"):
        from tracers import session

        return getattr(session, name)
    raise AttributeError(f"module 'tracers' has no attribute {name!r}")
