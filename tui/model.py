"""What the views show, computed once per trace snapshot from kvprof's analyses (no Textual here).

`build_view(trace)` runs the analyses (exact peak, stage times, KV bytes) and takes the memory
timeline reduced to at most `MAX_BUCKETS` points, each the highest point of its stretch of
events, so that the peak is always one of them and a widget of any width draws it (the
trace's views, kvprof.read.views, hold both timelines).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kvprof.read.analysis import Breakdown, Peak, breakdown, find_peak, kv_bytes, stage_times
from kvprof.read.events import EventArrays, bucket_points, category_lines, event_arrays, time_points
from kvprof.read.compare import trace_row
from kvprof.read.summary import KVBytes, load_summary
from kvprof.read.trace import Trace
from kvprof.read.views import TUI_BUCKETS
from tracers.vocabulary import PASS_NAMES
from tracers.trace_io import NO_FREE

MAX_BUCKETS = TUI_BUCKETS
TOP_ALLOCATIONS = 50


X_AXES = ("events", "time")


@dataclass(frozen=True)
class Timeline:
    """The memory timeline sampled at bucket maxima. x is the event order (`axis` 'events': equal
    numbers of events per bucket) or host time ('time': equal time spans; an empty span repeats
    the last event before it)."""

    axis: str
    n_events: int
    index: np.ndarray  # event index of each point (ascending)
    q: np.ndarray
    t_ns: np.ndarray
    total: np.ndarray  # live bytes after that event
    by_category: dict[str, np.ndarray]  # categories that ever hold bytes, in CATEGORIES order
    stage_band: list[str]  # chunk / top-level stage in force at each point ('' outside)
    pass_band: list[str]  # pass in force at each point ('' outside)

    @property
    def points(self) -> int:
        return len(self.index)

    def point_of_event(self, event: int) -> int:
        """The point at or just before event index `event`."""
        return max(0, int(np.searchsorted(self.index, event, side="right")) - 1)


@dataclass
class TraceView:
    """One trace as the views see it. The per-event arrays (`events_q`, `events_t_ns`,
    `events_live`, `events_alloc_id`) are read from the allocation table on first use: the first
    screen (timelines, the peak and what is live there) comes from the trace's views alone."""

    trace: Trace
    timeline: Timeline
    timeline_time: Timeline
    peak: Peak | None
    peak_event: int | None
    stage_times: pd.DataFrame
    kv: KVBytes | None
    n_chunks: int | None = None  # chunks of the rollout seen so far (None: the trace has no chunk stages)
    built_s: float = 0.0
    _breakdowns: dict[tuple[int, str], Breakdown] = field(default_factory=dict)
    _events: EventArrays | None = None

    @property
    def events(self) -> EventArrays:
        """Every alloc and free in exact order (kvprof.read.events), read on first use."""
        if self._events is None:
            self._events = event_arrays(self.trace.allocations)
        return self._events

    @property
    def events_q(self) -> np.ndarray:
        return self.events.q

    @property
    def events_t_ns(self) -> np.ndarray:
        return self.events.t_ns

    @property
    def events_live(self) -> np.ndarray:
        return self.events.live

    @property
    def events_alloc_id(self) -> np.ndarray:
        return self.events.alloc_id

    def _at_peak(self, event: int) -> bool:
        return self._events is None and self.peak is not None and event == self.peak_event

    def event_q(self, event: int) -> int:
        """Order key of event `event` (the peak's without reading the events)."""
        return int(self.peak.q) if self._at_peak(event) and self.peak else int(self.events_q[event])

    def event_t_ns(self, event: int) -> int:
        """Time of event `event` in ns since the trace started."""
        return int(self.peak.t_ns) if self._at_peak(event) and self.peak else int(self.events_t_ns[event])

    def event_live(self, event: int) -> int:
        """Live bytes just after event `event`."""
        return int(self.peak.bytes) if self._at_peak(event) and self.peak else int(self.events_live[event])

    @property
    def path(self) -> Path:
        return self.trace.path

    @property
    def name(self) -> str:
        return str(self.trace.meta.get("run_id") or self.trace.path.name)

    @property
    def status(self) -> str:
        return self.trace.status

    @property
    def n_events(self) -> int:
        return self.timeline.n_events

    def timeline_for(self, axis: str) -> Timeline:
        """The timeline over event order ('events') or over time ('time')."""
        return self.timeline_time if axis == "time" else self.timeline

    @property
    def logical_dtype(self) -> str | None:
        """The element type logical KV bytes are counted at, as the summary writer states it (None: not stated)."""
        summary = self.trace.summary
        for kv in (self.kv, None if summary is None else summary.kv):
            if kv is not None and kv.logical_dtype:
                return kv.logical_dtype
        return None

    def kv_chunk(self, chunk: int) -> int | None:
        """The timeline's chunk a KV record numbered `chunk` follows; None for the runner's record after
        the rollout, which is numbered one past the last chunk."""
        return None if self.n_chunks is not None and chunk >= self.n_chunks else chunk

    def kv_label(self, chunk: int) -> str:
        """When KV record `chunk` was taken, in words."""
        if self.kv_chunk(chunk) is None:
            return f"at the end of the rollout ({self.n_chunks} chunks)"
        return f"after chunk {chunk}"

    @property
    def quality(self) -> dict[str, Any] | None:
        summary = self.trace.summary
        return None if summary is None else summary.quality

    def breakdown_at_event(self, event: int, match: str = "") -> Breakdown:
        """What was live just after event `event`, only allocations matching `match` (see `kvprof.read.analysis.breakdown`);
        cached: the cursor revisits points."""
        key = (event, match.lower())
        if key not in self._breakdowns:
            if len(self._breakdowns) > 256:
                self._breakdowns.clear()
            self._breakdowns[key] = breakdown(self.trace, self.event_q(event), match)
        return self._breakdowns[key]

    def stage_of_event(self, event: int) -> str:
        """Stage path in which the allocation or free at `event` happened."""
        if self._at_peak(event) and self.peak is not None:
            return self.peak.stage
        a = self.trace.allocations_with_stage
        row = a.loc[a["id"] == int(self.events_alloc_id[event]), "path"]
        return str(row.iat[0]) if len(row) else "?"


def _timeline(trace: Trace, stored: dict[str, Any], axis: str, n_events: int) -> Timeline:
    stage_band, pass_band = _bands(trace, stored["q"])
    return Timeline(axis=axis, n_events=n_events, index=stored["index"], q=stored["q"], t_ns=stored["t_ns"],
                    total=stored["total"], by_category=dict(stored["by_category"]), stage_band=stage_band, pass_band=pass_band)


def _bands(trace: Trace, q: np.ndarray) -> tuple[list[str], list[str]]:
    """For each point, the chunk (or top-level stage) and the pass in force."""
    spans = trace.spans
    if spans.empty or len(q) == 0:
        return [""] * len(q), [""] * len(q)
    top = spans[((spans["depth"] == 1) & spans["kind_path"].str.startswith("rollout/"))
                | ((spans["depth"] == 0) & (spans["name"] != "rollout"))]
    passes = spans[spans["name"].isin(PASS_NAMES)]

    def labels(sel: pd.DataFrame, label: pd.Series) -> list[str]:
        if sel.empty:
            return [""] * len(q)
        sel = sel.assign(label=label).sort_values("q_start")
        starts = sel["q_start"].to_numpy()
        ends = sel["q_end"].to_numpy()
        ends = np.where(ends == NO_FREE, np.iinfo(np.int64).max, ends)
        names = sel["label"].astype(str).to_numpy()
        i = np.searchsorted(starts, q, side="right") - 1
        ok = (i >= 0) & (q <= ends[np.clip(i, 0, None)])
        return [str(names[j]) if good else "" for j, good in zip(i, ok)]

    top_label = top["name"].astype(str).where(top["name"] != "chunk", "chunk " + top["index"].astype(str))
    pass_label = passes["name"].astype(str).where(passes["index"].isna(), passes["name"].astype(str) + " " + passes["index"].astype(str))
    return labels(top, top_label), labels(passes, pass_label)


def rollout_chunks(trace: Trace) -> int | None:
    """How many chunk stages of the rollout the trace has (None when it has none)."""
    spans = trace.spans
    if spans.empty:
        return None
    chunks = spans.loc[(spans["name"] == "chunk") & (spans["kind_path"] == "rollout/chunk"), "index"].dropna()
    return int(chunks.nunique()) if len(chunks) else None


def build_view(trace: Trace, buckets: int = MAX_BUCKETS) -> TraceView:
    """Run the analyses the views need, once: the timelines and the peak come from the trace's
    views (kvprof.read.views: stored at close, else computed from the events); other bucket
    counts than MAX_BUCKETS are computed from the events."""
    t0 = time.perf_counter()
    views = trace.views
    stored = views.timelines
    if buckets != MAX_BUCKETS:
        ev = event_arrays(trace.allocations)
        stored = {axis: {"index": p, "q": ev.q[p], "t_ns": ev.t_ns[p], "total": ev.live[p], "by_category": category_lines(ev, p)}
                  for axis, p in (("events", bucket_points(ev.live, buckets)), ("time", time_points(ev.t_ns, ev.live, buckets)))}
    peak = find_peak(trace, top=TOP_ALLOCATIONS)
    return TraceView(
        trace=trace, timeline=_timeline(trace, stored["events"], "events", views.n_events),
        timeline_time=_timeline(trace, stored["time"], "time", views.n_events), peak=peak,
        peak_event=None if views.peak is None else views.peak["event"], stage_times=stage_times(trace), kv=kv_bytes(trace),
        n_chunks=rollout_chunks(trace), built_s=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------------- several traces
# The TUI's comparison columns: a subset of kvprof.read.compare.trace_row (one meaning of each;
# wall_s is meta.wall_s, the run's wall time, None while it runs) plus a quality headline.
COMPARE_COLUMNS = ("trace", "method", "integration", "status", "peak_bytes", "peak_stage", "resident_kv_bytes",
                   "ratio_resident", "wall_s", "quality")


def quality_headline(quality: dict[str, Any] | None) -> str:
    """One short string for a quality dict ('not computed' when there is none)."""
    if not quality:
        return "not computed"
    parts = []
    for k, v in quality.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"{k} {v:.4g}")
        if len(parts) == 2:
            break
    return ", ".join(parts) if parts else "see quality panel"


def compare_row(view: TraceView) -> dict[str, Any]:
    """One row of the comparison view: `kvprof compare`'s row (kvprof.read.compare.trace_row) cut to
    COMPARE_COLUMNS, named as the view names its trace, with a short quality headline."""
    row = trace_row(view.trace)
    out = {k: row.get(k) for k in COMPARE_COLUMNS}
    out.update(trace=view.name, quality=quality_headline(view.quality))
    return out


def _local_time(unix_ns: Any) -> str | None:
    """'YYYY-mm-dd HH:MM:SS' of a meta timestamp; None (shown as unknown) when it is not one."""
    if not isinstance(unix_ns, int) or isinstance(unix_ns, bool):
        return None
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_ns / 1e9))
    except (OverflowError, OSError, ValueError):  # far outside the clock's range (a damaged meta.json)
        return None


@lru_cache(maxsize=512)
def _listing(path: Path, mtime_ns: int) -> dict[str, Any]:
    from tracers.trace_io import TraceError, read_meta

    row: dict[str, Any] = {"trace": path.name, "path": str(path), "method": None, "status": None, "peak_bytes": None,
                           "started": None, "note": ""}
    try:
        meta = read_meta(path)
    except TraceError as exc:
        row["status"] = "unreadable"
        row["note"] = str(exc)
        return row
    row.update(method=meta.get("method"), status=meta.get("status"))
    row["started"] = _local_time(meta.get("started_unix_ns"))
    try:
        summary = load_summary(path)
        row["peak_bytes"] = None if summary is None or summary.peak is None else summary.peak.bytes
    except TraceError as exc:  # names the file and the damaged field
        row["note"] = str(exc)
    return row


def trace_listing(paths: list[Path]) -> list[dict[str, Any]]:
    """Rows for the trace list: name, method, status, start time, peak (from summary.json)."""
    rows = []
    for p in paths:
        try:
            mtime = (p / "meta.json").stat().st_mtime_ns
        except OSError:
            mtime = 0
        rows.append(_listing(p, mtime))
    return rows


def column_points(timeline: Timeline, columns: int) -> np.ndarray:
    """The point drawn in each of `columns` chart columns: the highest point of the column's share
    of points (so the peak always shows), or, with fewer points than columns, points stretched."""
    p = timeline.points
    if p == 0 or columns <= 0:
        return np.zeros(0, dtype=np.int64)
    starts = (np.arange(columns, dtype=np.int64) * p) // columns
    if p <= columns:
        return starts
    ends = np.append(starts[1:], p)
    total = timeline.total
    maxima = np.maximum.reduceat(total, starts)
    out = starts.copy()
    for c in range(columns):  # first maximum in each share; shares are small (p / columns <= MAX_BUCKETS)
        seg = total[starts[c]:ends[c]]
        out[c] = starts[c] + int(np.argmax(seg == maxima[c]))
    return out


def column_of_point(timeline: Timeline, columns: int, point: int) -> int:
    """The chart column whose share of points holds `point`."""
    p = timeline.points
    if p == 0 or columns <= 0:
        return 0
    starts = (np.arange(columns, dtype=np.int64) * p) // columns
    return max(0, int(np.searchsorted(starts, point, side="right")) - 1)
