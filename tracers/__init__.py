"""kvprof tracers: stages, category tags, allocation tracking, timing, device sampling, trace I/O."""
from tracers.categories import CATEGORIES, KV_CATEGORIES, Category
from tracers.context import active_session, register, stage, tag, tag_tensor
from tracers.session import SimulatedOOM, TraceSession
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
