"""kvprof's Python API: trace your own rollout (DESIGN section 1, question 5).

    import kvprof.api as kv

    with kv.trace("traces/mine") as t:              # a trace folder, like `kvprof trace` writes
        t.register(model, "weights")                # tensors made before tracing began
        for i in range(steps):
            with t.stage("step", i), t.category("activations"):
                x = model(x)
            t.tag_tensor(cache, "kv_fp", "my cache")  # a tensor, module, dict or list of them
    print(t.summary.peak)                           # kvprof.read.summary.Summary, also in summary.json

`kvprof trace` opens its session through `trace()` as well. The session closes with the status
the body ended with: `complete`, `oom` (torch.OutOfMemoryError, or kvprof's simulated one when
live bytes would pass `budget` on CPU), `interrupted` (Ctrl-C; SIGTERM too when `signals`), or
`failed`; the exception is re-raised once the trace is closed and its summary written. Code
deeper in your stack can mark stages without holding `t`: `kvprof.api.stage`, `category`,
`tag_tensor`, `register` and `watch` act on the trace that is open; `instrument_module(model)`
marks `layer[i]` stages through forward hooks (kvprof.integrations for the Self-Forcing pipeline).

The run's other concerns live beside it: `kvprof.signals` (Ctrl-C into the body), `kvprof.environment`
(versions for meta.json), `kvprof.oomfacts` (what an OOM says), `kvprof.allocator` (the GPU budget).
"""
from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import torch

from kvprof.allocator import EXPANDABLE_BY_KVPROF, BudgetCap
from kvprof.environment import environment
from kvprof.errors import UsageError
from kvprof.integrations.hooks import instrument_module
from kvprof.oomfacts import as_oom, oom_facts
from kvprof.read.analysis import breakdown, memory_events, summarize
from kvprof.read.summary import Failure, Summary, write_summary
from kvprof.read.trace import Trace, load_closed, load_trace
from kvprof.signals import InterruptGuard, hold_close_for_tests
from kvprof.tagging import tensors_of as _tensors
from kvprof.tagging import watch, watch_in
from kvprof.units import parse_size
from tracers import context
from tracers.outcome import status_of
from tracers.session import SimulatedOOM, TraceSession
from tracers.trace_fold import Q_STRIDE
from tracers.trace_io import META_FILE, NO_FREE, meta_field_problem, write_json_atomic

__all__ = ["trace", "TraceRun", "stage", "category", "tag_tensor", "register", "watch", "instrument_module", "failure_state"]

stage = context.stage
category = context.tag


def tag_tensor(obj: Any, category: str, name: str | None = None) -> None:
    """Declare what a tensor (or every tensor of a module / dict / list: a whole cache) is, for its
    whole life, in the trace that is open; nothing when none is."""
    for t, n in _tensors(obj, name):
        context.tag_tensor(t, category, n)


def register(obj: Any, category: str, name: str | None = None) -> None:
    """Account for tensors allocated before tracing began (weights, inputs) in the open trace."""
    for t, n in _tensors(obj, name):
        context.register(t, category, n)


# --------------------------------------------------------------------------- the failure instant
def _failure_q(trace: Trace, exc: BaseException | None, failure_stage: str | None) -> int | None:
    """Order key `q` of the last event before the run failed (None for a trace without events).

    The exception unwound the stages: the innermost failed stage ends after the failure, so the
    failure lies before that end. kvprof's simulated OOM knows the live bytes at the failure
    (the last event at that level is the instant); a CUDA OOM is known by its allocator context.
    """
    if trace.allocations.empty:
        return None
    s = trace.spans
    limit = None
    if failure_stage:
        hit = s[(s["path"] == failure_stage) & (s["q_end"] != NO_FREE)]
        if len(hit):
            limit = int(hit.sort_values("q_start")["q_end"].iat[-1])
    oom_events = trace.meta.get("allocator_oom_events") or []
    if isinstance(exc, torch.OutOfMemoryError) and oom_events and isinstance(oom_events[-1], dict):
        ctx_end = (int(oom_events[-1].get("ctx", 0)) + 1) * Q_STRIDE
        limit = ctx_end if limit is None else min(limit, ctx_end)
    ev = memory_events(trace)
    if limit is not None:
        ev = ev[ev["q"] <= limit]
    if ev.empty:
        return None
    if isinstance(exc, SimulatedOOM):
        at = ev[ev["live"] == exc.live]
        if len(at):
            return int(at["q"].iat[-1])
    return int(ev["q"].iat[-1])


def failure_state(trace: Trace, q: int | None) -> dict[str, Any]:
    """Live bytes in total, by category and by stage of origin just after event `q`."""
    if q is None:
        return {"q": None, "live_bytes": 0, "live_by_category": {}, "live_by_stage": {}}
    split = breakdown(trace, q)
    return {"q": q, "live_bytes": split.total, "live_by_category": split.by_category, "live_by_stage": split.by_stage}


# --------------------------------------------------------------------------- the API
class TraceRun:
    """One traced run of your code; see the module docstring. Made by `trace()`."""

    def __init__(self, folder: str | Path, meta: dict[str, Any] | None, device: torch.device,
                 budget_bytes: int | None, live: bool, signals: bool, fine_stages: bool = False):
        self.path = Path(folder)
        self.device = device
        self.budget_bytes = budget_bytes
        self.signals = signals
        meta = {"run_id": self.path.name, "command": list(sys.argv), "source": "kvprof.api", **(meta or {})}
        meta.setdefault("budget_bytes", budget_bytes)
        if "environment" not in meta:
            meta["environment"] = environment(device)
        self.session = TraceSession(self.path, meta, device, budget_bytes=budget_bytes if device.type == "cpu" else None,
                                    drain_at_checkpoints=live, fine_stages=fine_stages)
        self.summary: Summary | None = None
        self.error: BaseException | None = None
        self._guard: InterruptGuard | None = None
        self._cap: BudgetCap | None = None

    # ---------------------------------------------------------------- what you mark
    @property
    def meta(self) -> dict[str, Any]:
        return self.session.meta

    @property
    def status(self) -> str:
        return self.session.status

    @contextlib.contextmanager
    def stage(self, name: str, index: int | None = None, fine: bool = False) -> Iterator[None]:
        """Run the body as stage `name` (`name[index]` in the stage path); `fine`: a step repeated inside
        one step, recorded only when the trace records fine stages (`trace(..., fine_stages=True)`)."""
        with self.session.stage(name, index, fine):
            yield

    @contextlib.contextmanager
    def category(self, name: str) -> Iterator[None]:
        """Allocations made in the body belong to category `name` (DESIGN section 5)."""
        with self.session.tag(name):
            yield

    def tag_tensor(self, obj: Any, category: str, name: str | None = None) -> None:
        """Declare what a tensor (or a module's / dict's / list's tensors: a whole cache) is, for its whole life."""
        for t, n in _tensors(obj, name):
            self.session.tag_tensor(t, category, n)

    def register(self, obj: Any, category: str, name: str | None = None) -> None:
        """Account for tensors allocated before tracing began (weights, inputs)."""
        for t, n in _tensors(obj, name):
            self.session.register(t, category, n)

    def watch(self, obj: Any, category: str, name: str | None = None) -> None:
        """`tag_tensor`, repeated at every stage end for tensors swapped into the container since."""
        watch_in(self.session, obj, category, name)

    def record_kv_bytes(self, chunk: int, logical: int, stored: int, resident: int) -> None:
        """KV byte counts of your cache after a chunk (the KV panel and compression ratios)."""
        self.session.record_kv_bytes(chunk, logical, stored, resident)

    def checkpoint(self, force: bool = False) -> None:
        """Make everything so far visible to a follower (`kvprof tui --follow`)."""
        self.session.checkpoint(force)

    def trace(self) -> Trace:
        """The trace as written so far (live) or final (closed)."""
        return load_trace(self.path)

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> "TraceRun":
        return self.start()

    def start(self) -> "TraceRun":
        """Create the folder and start recording (`with` does this)."""
        if self.signals:
            self._guard = InterruptGuard()
            if not self._guard.install():
                self._guard = None
        try:
            if self.budget_bytes is not None and self.device.type == "cuda":
                self._cap = BudgetCap(self.session.device, self.budget_bytes)
                self._cap.apply()
                if self._cap.expandable:
                    self.session.expandable_segments = True
                    self.session.meta["allocator_settings"] = EXPANDABLE_BY_KVPROF
            self.session.start()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if self._guard is not None:
            self._guard.body_done()
        try:
            self.close(exc)
        finally:
            self._release()
        return False  # the body's exception goes on to the caller, the trace closed

    def close(self, error: BaseException | None = None) -> Summary:
        """Close the trace with the status `error` implies, write summary.json; returns the summary."""
        s = self.session
        if s.status == "running":
            hold_close_for_tests()
            error = as_oom(error)
            self.error = error
            where = s.failure_stage or s.stage_path() or None
            status = status_of(error)
            if status == "oom":
                s.meta["oom"] = {"stage": where, "message": str(error).splitlines()[0][:500] if str(error) else "",
                                 **oom_facts(error, self.budget_bytes, s.meta)}
            elif status == "interrupted":
                s.meta["interrupted_stage"] = where
                if self._guard is not None and self._guard.signal_name:
                    s.meta["interrupted_by"] = self._guard.signal_name
            elif status == "failed":
                s.meta["failed_stage"] = where
            s.close(status, error)
        if self.summary is None:
            self.summary = self._summarize(error)
        return self.summary

    def _summarize(self, error: BaseException | None) -> Summary:
        # views.json (what the readers' first screens need) computed once, here, from the Parquet
        # files a column at a time: the allocation rows never become a DataFrame
        trace = load_closed(self.path)
        summary = replace(summarize(trace), notes=tuple(trace.meta.get("notes", [])))
        if trace.status in ("oom", "interrupted", "failed"):
            stage_key = {"oom": None, "interrupted": "interrupted_stage", "failed": "failed_stage"}[trace.status]
            where = (trace.meta.get("oom") or {}).get("stage") if stage_key is None else trace.meta.get(stage_key)
            state = failure_state(trace, _failure_q(trace, error, where))
            summary = replace(summary, failure=Failure(status=trace.status, stage=where, **state))
            if trace.status == "oom":
                oom = {**trace.meta.get("oom", {}), **{k: v for k, v in state.items() if k != "q"}}
                summary = replace(summary, oom=oom)
                self.session.meta["oom"] = oom
                write_json_atomic(self.path / META_FILE, self.session.meta)
        try:
            write_summary(self.path, summary)
        except OSError as exc:  # a full disk: the summary is still returned, and computed again on load
            summary = summary.with_notes(f"summary.json not written ({exc.strerror or exc})")
        return summary

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        if self._guard is not None:
            self._guard.uninstall()
            self._guard = None


def _check_meta(meta: dict[str, Any] | None) -> None:
    """Refuse meta that readers could not open, before anything runs (not when the trace closes)."""
    if meta is None:
        return
    if not isinstance(meta, Mapping):
        raise UsageError(f"meta must be a dict of JSON values, not {type(meta).__name__}")
    try:
        as_written = json.loads(json.dumps(dict(meta)))  # what readers will see: tuples become lists
    except (TypeError, ValueError) as exc:
        raise UsageError(f"meta must hold JSON values only ({exc}); convert tensors and paths to numbers and strings") from None
    problem = meta_field_problem(as_written)
    if problem:
        raise UsageError(f"meta {problem}: kvprof's readers use this field (meta 'config' is the model's shape, "
                         "e.g. {'name': 'mine', 'num_layers': 30, ...}); put your own values under other keys")


def trace(
    folder: str | Path,
    *,
    meta: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    budget: int | str | None = None,
    live: bool = False,
    signals: bool = True,
    fine_stages: bool = False,
) -> TraceRun:
    """A traced run writing the trace folder `folder` (which must not hold a trace yet).

    `device`: where your tensors live (default: CUDA when present, else CPU). `budget` (bytes or
    '24GiB'): on CUDA the process's usable memory is capped there, so a real OOM happens at that
    size; on CPU kvprof raises its own OutOfMemoryError when tracked live bytes would pass it.
    `live`: a follower reads the trace while it runs (CUDA: drain the allocator history at every
    `checkpoint()`). `signals`: in the main thread, SIGINT and SIGTERM close the trace as
    `interrupted` and a second one exits at once. `meta` adds fields to meta.json. `fine_stages`: also
    record stages marked `fine` (a step repeated inside one step, e.g. per slice of groups; 10-20
    microseconds of host time each on a GPU host), which are otherwise left to their enclosing stage.
    """
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    budget_bytes = parse_size(budget, "budget") if isinstance(budget, str) else budget
    if budget_bytes is not None and budget_bytes <= 0:
        raise UsageError(f"budget {budget!r}: must be a positive number of bytes")
    if (Path(folder) / META_FILE).exists():
        raise UsageError(f"{folder}: a trace already exists there; pick another folder")
    _check_meta(meta)
    return TraceRun(folder, meta, dev, budget_bytes, live, signals, fine_stages)
