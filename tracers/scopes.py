"""The stage and tag scopes a TraceSession hands out.

Plain context-manager objects with slots, not `contextlib.contextmanager` generators: a traced
42-frame PRQ rollout opens 290k stages and ~10^6 tags, and a generator-based manager costs a few
microseconds per `with` on top of the bookkeeping (issue 15's overhead budget is ~3 us a stage).
The records they write are the session's (`b`/`e` span records, `m` counters at shallow stages).
"""
from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from tracers.session import TraceSession


# The one shared no-op scope (nullcontext is reentrant): untraced code and fine stages left out get it.
NO_SCOPE = contextlib.nullcontext()
# Each scope times its own enter and exit (meta `scopes`: kvprof's cost on the traced thread), and within a stage's the
# device-time marks (`marks_s`: a CUDA event record can wait for room in a full launch queue, which is the GPU's
# backlog, not kvprof's work: the split says which).
_ns = time.perf_counter_ns


class StageScope:
    """One stage: opens a span on enter (record, new context, counters, device-time mark), ends it on exit."""

    __slots__ = ("_s", "_name", "_index", "_span", "_parent", "_t", "_timed")

    def __init__(self, session: "TraceSession", name: str, index: int | None):
        self._s, self._name, self._index = session, name, index

    def __enter__(self) -> None:
        t_in = _ns()
        s, name, index = self._s, self._name, self._index
        elem = name if index is None else f"{name}[{index}]"
        stack = s._span_stack
        with s._lock:
            span_id = s._next_span
            s._next_span = span_id + 1
            parent = stack[-1][0] if stack else 0
            stack.append((span_id, elem))
            s._new_context()
            t = s._now()
            if s._log is not None:
                s._log.span_begin(span_id, parent, name, index, t, s._q())
            s._counter(span_id)
        depth = s.timer_depth
        timed = depth is None or len(stack) <= depth + 1
        t_out = _ns()
        if timed:
            s._timer.begin(span_id, elem)  # NVTX ranges nest: the element names the range
            t_marked = _ns()
            s.scope_ns[2] += t_marked - t_out
            t_out = t_marked
        self._span, self._parent, self._t, self._timed = span_id, parent, t, timed
        s.scope_ns[0] += t_out - t_in

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        t_in = _ns()
        s, span_id = self._s, self._span
        if exc_type is not None and s.failure_stage is None:
            s.failure_stage = s.stage_path()  # the innermost stage the error left
        if self._timed:
            s._timer.end(span_id)
            s.scope_ns[2] += _ns() - t_in
        for hook in s.stage_end_hooks:
            hook()
        stack = s._span_stack
        with s._lock:
            t_end = s._now()
            if stack and stack[-1][0] == span_id:
                stack.pop()
                q = s._q()
                if s._log is not None:
                    s._log.span_end(span_id, t_end, q, (t_end - self._t) / 1e6, s.host_activity.end_span(span_id, self._parent))
                s._new_context()
                s._counter(span_id)
        s.scope_ns[0] += _ns() - t_in


class TagScope:
    """One category tag: allocations made while it is innermost belong to its category. A tag of the
    category already in force (PRQ's per-slice `kv_scratch` inside the encode's own) changes no
    allocation's category or span, so it opens no new context (each costs a little on every one of
    ~10^6 tags; order keys stay in order, with fewer contexts)."""

    __slots__ = ("_s", "_category", "_same")

    def __init__(self, session: "TraceSession", category: str):
        self._s, self._category = session, category

    def __enter__(self) -> None:
        t_in = _ns()
        s = self._s
        with s._lock:
            s.tags_opened += 1
            stack = s._tag_stack
            self._same = (stack[-1] if stack else "unattributed") == self._category
            stack.append(self._category)
            if not self._same:
                s._new_context()
        s.scope_ns[1] += _ns() - t_in

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        t_in = _ns()
        s = self._s
        with s._lock:
            s._tag_stack.pop()
            if not self._same:
                s._new_context()
        s.scope_ns[1] += _ns() - t_in
