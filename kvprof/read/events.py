"""The memory events of a trace as numpy arrays, and the reductions every view draws from them.

An allocation row is an event (+bytes at q_alloc) and, when freed, another (-bytes at q_free).
`event_arrays` puts them in exact q order (a stable sort: allocations before frees at an equal q,
as the tables list them); live bytes are the running sum. The reductions here (live bytes per
category at chosen events, per-category maxima, timeline points that keep every bucket's
maximum, the min/max envelope over time) are O(events) numpy passes, never a per-category
cumulative sum of the whole trace, so a 7 M-allocation trace reduces in about a second.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tracers.categories import CATEGORIES
from tracers.trace_fold import NO_FREE

__all__ = ["EventArrays", "event_arrays", "category_at", "category_max", "bucket_points", "time_points",
           "envelope_points", "category_lines"]


@dataclass(frozen=True)
class EventArrays:
    """Every alloc and free in exact order: q, t_ns, delta (+bytes / -bytes), live (bytes after
    the event), alloc_id, row (the allocation's row in the table) and code (index into `names`,
    the allocation's category)."""

    q: np.ndarray
    t_ns: np.ndarray
    delta: np.ndarray
    live: np.ndarray
    alloc_id: np.ndarray
    row: np.ndarray
    code: np.ndarray
    names: list[str]
    delta_is_alloc: np.ndarray  # True at allocations (a 0-byte allocation has delta 0)

    def __len__(self) -> int:
        return len(self.q)

    def code_of(self, category: str) -> int | None:
        """The code of `category`, None when no allocation has it."""
        return self.names.index(category) if category in self.names else None


def event_arrays(allocs: pd.DataFrame) -> EventArrays:
    """The events of an allocation table (columns id, q_alloc, q_free, t_alloc_ns, t_free_ns, bytes, category)."""
    q_free = allocs["q_free"].to_numpy(dtype=np.int64)
    freed = np.flatnonzero(q_free != NO_FREE)
    n = len(allocs)
    q = np.concatenate([allocs["q_alloc"].to_numpy(dtype=np.int64), q_free[freed]])
    # stable: ties keep allocations first; timsort finds the table's runs (rows come in q_alloc order)
    order = np.argsort(q, kind="stable")
    # Every full-length array costs its page faults (~0.2 s per 100 MB on a small host): narrow
    # types where they fit, one gather per column.
    is_alloc = order < n
    row = np.concatenate([np.arange(n, dtype=np.int32), freed.astype(np.int32)]) if n < 2**31 else \
        np.concatenate([np.arange(n, dtype=np.int64), freed])
    row = row[order]
    delta = allocs["bytes"].to_numpy(dtype=np.int64)[row]
    np.negative(delta, out=delta, where=~is_alloc)
    t = np.concatenate([allocs["t_alloc_ns"].to_numpy(dtype=np.int64), allocs["t_free_ns"].to_numpy(dtype=np.int64)[freed]])
    codes, uniques = pd.factorize(allocs["category"], use_na_sentinel=False)
    code_type = np.int16 if len(uniques) < 2**15 else np.int64  # 16 bits: numpy sorts them by radix
    return EventArrays(q=q[order], t_ns=t[order], delta=delta, live=np.cumsum(delta), row=row,
                       alloc_id=allocs["id"].to_numpy(dtype=np.int64)[row], code=np.asarray(codes).astype(code_type)[row],
                       names=[str(u) for u in uniques], delta_is_alloc=is_alloc)


def category_at(ev: EventArrays, points: np.ndarray) -> np.ndarray:
    """Live bytes per category code just after each event index in `points` (ascending), shape
    (len(points), len(names)): one weighted bincount over the stretches between points."""
    k = len(ev.names)
    points = np.asarray(points, dtype=np.int64)
    if k == 0 or len(points) == 0:
        return np.zeros((len(points), k), dtype=np.int64)
    counts = np.diff(np.r_[-1, points])  # point j closes the events after point j-1 up to itself
    segment = np.repeat(np.arange(len(points)), counts)
    m = len(segment)
    # float64 sums are exact: every partial sum is a byte count far below 2**53
    sums = np.bincount(segment * k + ev.code[:m].astype(np.int64), weights=ev.delta[:m].astype(np.float64),
                       minlength=len(points) * k).reshape(len(points), k)
    return np.cumsum(np.rint(sums).astype(np.int64), axis=0)


def category_max(ev: EventArrays) -> dict[str, int]:
    """The largest live bytes each category reached (0 before its first event counts)."""
    out: dict[str, int] = {}
    for k, name in enumerate(ev.names):
        idx = np.flatnonzero(ev.code == k)  # the category's events, in event order
        if len(idx):
            best = int(np.cumsum(ev.delta[idx]).max())
            out[name] = max(best, 0) if idx[0] > 0 else best
    return out


def bucket_points(live: np.ndarray, buckets: int) -> np.ndarray:
    """Event index of the (first) maximum of each of `buckets` equal stretches of events."""
    n = len(live)
    if n <= buckets:
        return np.arange(n, dtype=np.int64)
    starts = np.unique(np.linspace(0, n, buckets + 1).astype(np.int64)[:-1])
    maxima = np.maximum.reduceat(live, starts)
    bucket_of = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, n)))
    hits = np.flatnonzero(live == maxima[bucket_of])
    _, first = np.unique(bucket_of[hits], return_index=True)
    return hits[first].astype(np.int64)


def time_points(t_ns: np.ndarray, live: np.ndarray, buckets: int) -> np.ndarray:
    """Event index drawn for each of `buckets` equal time spans: the span's first maximum, or for a
    span without events the last event before it (its live bytes held through the span)."""
    n = len(live)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    t = np.maximum.accumulate(t_ns)  # clocks of different sources may step back a little
    span = int(t[-1] - t[0])
    if span <= 0:
        return bucket_points(live, buckets)
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


def envelope_points(x: np.ndarray, y: np.ndarray, buckets: int) -> np.ndarray:
    """Indices kept when rows ordered by `x` are reduced to at most 2 * buckets + 2: per bucket of
    equal width in x, the first row where y is largest and the first where it is smallest, plus
    the first and last rows (so the global maximum and minimum are always kept)."""
    if buckets < 1:
        raise ValueError("buckets must be >= 1")
    n = len(x)
    if n <= 2 * buckets + 2:
        return np.arange(n, dtype=np.int64)
    xs = x.astype(np.float64)
    lo, hi = float(np.nanmin(xs)), float(np.nanmax(xs))
    width = (hi - lo) / buckets if hi > lo else 1.0
    bucket = np.clip(((xs - lo) / width).astype(np.int64), 0, buckets - 1)
    keep = [np.array([0, n - 1], dtype=np.int64)]
    y = np.asarray(y)
    for reduce, start in ((np.maximum, y.min()), (np.minimum, y.max())):
        best = np.full(buckets, start, dtype=y.dtype)
        reduce.at(best, bucket, y)
        hits = np.flatnonzero(y == best[bucket])
        _, first = np.unique(bucket[hits], return_index=True)
        keep.append(hits[first])
    return np.unique(np.concatenate(keep))  # sorted: original order preserved


def category_lines(ev: EventArrays, points: np.ndarray, nonzero_only: bool = True,
                   lines: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Live bytes per category at each of `points` (ascending event indices), in CATEGORIES order
    then other names sorted; with `nonzero_only`, categories that never hold bytes there are left out.
    `lines`: category_at(ev, points) when already at hand."""
    lines = category_at(ev, points) if lines is None else lines
    order = [c for c in CATEGORIES if c in ev.names] + sorted(n for n in ev.names if n not in CATEGORIES)
    pos = {n: i for i, n in enumerate(ev.names)}
    return {c: lines[:, pos[c]] for c in order if not nonzero_only or lines[:, pos[c]].any()}
