"""What the views show, computed once per trace snapshot from kvprof's analyses (no Textual here).

`build_view(trace)` runs the analyses (memory events, exact peak, stage times, KV bytes) and
reduces the memory timeline to at most `MAX_BUCKETS` points, each the highest point of its
stretch of events, so that the peak is always one of them and a widget of any width draws it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kvprof.read.analysis import Breakdown, Peak, breakdown, find_peak, kv_bytes, memory_events, stage_times
from kvprof.read.compare import trace_row
from kvprof.read.summary import KVBytes, load_summary
from kvprof.read.trace import Trace
from tracers.categories import CATEGORIES
from tracers.vocabulary import PASS_NAMES
from tracers.trace_io import NO_FREE

MAX_BUCKETS = 2048
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
    """One trace as the views see it."""

    trace: Trace
    events_q: np.ndarray
    events_t_ns: np.ndarray
    events_live: np.ndarray
    events_alloc_id: np.ndarray
    timeline: Timeline
    timeline_time: Timeline
    peak: Peak | None
    peak_event: int | None
    stage_times: pd.DataFrame
    kv: KVBytes | None
    n_chunks: int | None = None  # chunks of the rollout seen so far (None: the trace has no chunk stages)
    built_s: float = 0.0
    _breakdowns: dict[tuple[int, str], Breakdown] = field(default_factory=dict)

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
        return len(self.events_q)

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
            self._breakdowns[key] = breakdown(self.trace, int(self.events_q[event]), match)
        return self._breakdowns[key]

    def stage_of_event(self, event: int) -> str:
        """Stage path in which the allocation or free at `event` happened."""
        a = self.trace.allocations_with_stage
        row = a.loc[a["id"] == int(self.events_alloc_id[event]), "path"]
        return str(row.iat[0]) if len(row) else "?"


def _bucket_points(live: np.ndarray, buckets: int) -> np.ndarray:
    """Event index of the (first) maximum of each of `buckets` equal stretches of events."""
    n = len(live)
    if n <= buckets:
        return np.arange(n, dtype=np.int64)
    starts = np.linspace(0, n, buckets + 1).astype(np.int64)[:-1]
    starts = np.unique(starts)
    maxima = np.maximum.reduceat(live, starts)
    bucket_of = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, n)))
    hits = np.flatnonzero(live == maxima[bucket_of])
    _, first = np.unique(bucket_of[hits], return_index=True)
    return hits[first].astype(np.int64)


def _time_points(t_ns: np.ndarray, live: np.ndarray, buckets: int) -> np.ndarray:
    """Event index drawn for each of `buckets` equal time spans: the span's first maximum, or for a
    span without events the last event before it (its live bytes held through the span)."""
    n = len(live)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    t = np.maximum.accumulate(t_ns)  # clocks of different sources may step back a little
    span = int(t[-1] - t[0])
    if span <= 0:
        return _bucket_points(live, buckets)
    bucket = (t - t[0]) * (buckets - 1) // span
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    maxima = np.maximum.reduceat(live, starts)
    seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    hits = np.flatnonzero(live == maxima[seg])
    _, first = np.unique(seg[hits], return_index=True)
    rep, last = hits[first], np.r_[starts[1:], n] - 1
    present = bucket[starts]
    j = np.searchsorted(present, np.arange(buckets), side="right") - 1
    return np.where(present[j] == np.arange(buckets), rep[j], last[j]).astype(np.int64)


def _timeline(trace: Trace, cats: tuple[np.ndarray, list[str]], delta: np.ndarray, live: np.ndarray, q: np.ndarray,
              t_ns: np.ndarray, points: np.ndarray, axis: str) -> Timeline:
    stage_band, pass_band = _bands(trace, q[points])
    return Timeline(
        axis=axis, n_events=len(live), index=points, q=q[points], t_ns=t_ns[points], total=live[points],
        by_category=_category_lines(*cats, delta, points), stage_band=stage_band, pass_band=pass_band,
    )


def _category_lines(codes: np.ndarray, names: list[str], delta: np.ndarray, points: np.ndarray) -> dict[str, np.ndarray]:
    """Live bytes per category at each point: one weighted bincount over the segments between points."""
    k = len(names)
    if k == 0 or len(points) == 0:
        return {}
    counts = np.diff(np.r_[-1, points])  # point j closes the events after point j-1 up to itself
    segment = np.repeat(np.arange(len(points)), counts)
    m = len(segment)
    sums = np.bincount(segment * k + codes[:m], weights=delta[:m].astype(np.float64),
                       minlength=len(points) * k).reshape(len(points), k)
    lines = np.cumsum(np.rint(sums).astype(np.int64), axis=0)
    order = [c for c in CATEGORIES if c in names] + sorted(n for n in names if n not in CATEGORIES)
    pos = {n: i for i, n in enumerate(names)}
    return {c: lines[:, pos[c]] for c in order if lines[:, pos[c]].any()}


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
    """Run the analyses the views need, once."""
    t0 = time.perf_counter()
    ev = memory_events(trace)
    live = ev["live"].to_numpy(dtype=np.int64)
    q = ev["q"].to_numpy(dtype=np.int64)
    t_ns = ev["t_ns"].to_numpy(dtype=np.int64)
    codes, names = pd.factorize(ev["category"], use_na_sentinel=False)
    cats = (np.asarray(codes), [str(n) for n in names])
    delta = ev["delta"].to_numpy(dtype=np.int64)
    timeline = _timeline(trace, cats, delta, live, q, t_ns, _bucket_points(live, buckets), "events")
    timeline_time = _timeline(trace, cats, delta, live, q, t_ns, _time_points(t_ns, live, buckets), "time")
    peak = find_peak(trace, top=TOP_ALLOCATIONS)
    peak_event = None if peak is None else int(np.searchsorted(q, peak.q, side="left"))
    return TraceView(
        trace=trace, events_q=q, events_t_ns=t_ns, events_live=live,
        events_alloc_id=ev["alloc_id"].to_numpy(dtype=np.int64), timeline=timeline, timeline_time=timeline_time, peak=peak,
        peak_event=peak_event, stage_times=stage_times(trace), kv=kv_bytes(trace), n_chunks=rollout_chunks(trace),
        built_s=time.perf_counter() - t0,
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
