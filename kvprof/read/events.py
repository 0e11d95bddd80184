"""The memory events of a trace as numpy arrays, and the reductions every view draws from them.

An allocation row is an event (+bytes at q_alloc) and, when freed, another (-bytes at q_free).
`event_arrays` puts them in exact q order (a stable sort: allocations before frees at an equal q,
as the tables list them); live bytes are the running sum. The reductions here (live bytes per
category at chosen events, per-category maxima, timeline points that keep every bucket's
maximum, the min/max envelope over time) are O(events) numpy passes, never a per-category
cumulative sum of the whole trace, so a 7 M-allocation trace reduces in about a second.

Host memory: a 7 M-allocation trace has 14 M events, so every full-length int64 array is 115 MB.
The reductions walk the events in stretches of `CHUNK` (a few MB of temporaries each) instead of
building full-length temporaries, and `narrow_events` builds only what the views need (no q, no
allocation id per event: kvprof.read.views gathers those at the few events it shows), reading
one allocation column at a time (kvprof.read.columns).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from tracers.categories import CATEGORIES
from tracers.trace_fold import NO_FREE

__all__ = ["Events", "EventArrays", "AllocColumns", "event_arrays", "narrow_events", "first_reaching", "category_at",
           "category_max", "bucket_points", "time_points", "envelope_points", "category_lines", "CHUNK"]

# Events per stretch of the chunked passes: 256 Ki events keeps each temporary at 2 MB (so a
# pass's temporaries stay small beside the event arrays, even on a trace of a few 100k events)
# and the Python loop at ~55 turns on a 14 M-event trace.
CHUNK = 1 << 18


class AllocColumns(Protocol):
    """The allocation table, one column at a time (kvprof.read.columns: from a DataFrame or
    straight from allocations.parquet). Arrays returned are the caller's to read, never to modify."""

    n: int  # rows

    def int64(self, name: str) -> np.ndarray:
        """Column `name` as int64."""

    def codes(self) -> tuple[np.ndarray, list[str]]:
        """Each row's category as a code into the names, names in first-seen order (pd.factorize's)."""

    def rows(self, mask: np.ndarray) -> pd.DataFrame:
        """The rows where `mask` holds, renumbered from 0."""

    def check(self, q_alloc: np.ndarray, q_free: np.ndarray, ids: np.ndarray) -> None:
        """Raise where the table has rows the reader would refuse or skip."""


@dataclass(frozen=True)
class Events:
    """Every alloc and free in exact order, as the views need them: t_ns, live (bytes after the
    event), row (the allocation's row in the table), code (index into `names`, the allocation's
    category) and delta_is_alloc. The signed bytes of each event (+bytes at an allocation,
    -bytes at a free) come a stretch at a time from `deltas`, from each row's `row_bytes`: a
    full-length delta array would be 115 MB more on a 7 M-allocation trace."""

    t_ns: np.ndarray
    live: np.ndarray
    row: np.ndarray
    code: np.ndarray
    names: list[str]
    delta_is_alloc: np.ndarray  # True at allocations (a 0-byte allocation has delta 0)
    row_bytes: np.ndarray  # each row's bytes

    def __len__(self) -> int:
        return len(self.live)

    def code_of(self, category: str) -> int | None:
        """The code of `category`, None when no allocation has it."""
        return self.names.index(category) if category in self.names else None

    def deltas(self, start: int, stop: int) -> np.ndarray:
        """The signed bytes of events start..stop-1 (a new array)."""
        out = self.row_bytes[self.row[start:stop]]
        out *= self.delta_is_alloc[start:stop].view(np.int8) * 2 - 1  # +1 / -1: twice as fast as negative(where=)
        return out


@dataclass(frozen=True)
class EventArrays(Events):
    """Events with every event's signed bytes `delta`, order key `q` and allocation id as full
    arrays (the TUI and reports index them at any event)."""

    delta: np.ndarray
    q: np.ndarray
    alloc_id: np.ndarray

    def deltas(self, start: int, stop: int) -> np.ndarray:
        """The signed bytes of events start..stop-1."""
        return self.delta[start:stop]


def _event_order(q_alloc: np.ndarray, q_free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each event, True at allocations) in the order of a stable argsort of
    [q_alloc, q_free of the freed rows]: allocations before frees at an equal q, rows in table order."""
    n = len(q_alloc)
    freed = np.flatnonzero(q_free != NO_FREE)
    itype = np.int32 if n < 2**31 else np.int64  # row numbers: half the bytes where they fit
    if n > 1 and not bool((q_alloc[1:] >= q_alloc[:-1]).all()):  # rows out of q_alloc order: sort all events
        order = np.argsort(np.concatenate([q_alloc, q_free[freed]]), kind="stable")
        return np.concatenate([np.arange(n, dtype=itype), freed.astype(itype)])[order], order < n
    # Rows come in q_alloc order (every table kvprof writes): sort only the frees, then each free
    # goes after the allocations at or before its q (searchsorted 'right': allocations first at a tie).
    qf = q_free[freed]
    by_q = np.argsort(qf, kind="stable")
    qf = qf[by_q]
    freed = freed[by_q].astype(itype)
    del by_q
    pos = np.empty(len(qf), dtype=np.int64)
    for s in range(0, len(qf), 1 << 16):  # a window of q_alloc per stretch of keys: cache-sized searches
        keys = qf[s:s + (1 << 16)]
        lo, hi = np.searchsorted(q_alloc, keys[[0, -1]], side="right")
        pos[s:s + len(keys)] = np.searchsorted(q_alloc[lo:hi], keys, side="right") + lo
    del qf
    pos += np.arange(len(pos))
    is_alloc = np.ones(n + len(freed), dtype=bool)
    is_alloc[pos] = False
    row = np.empty(n + len(freed), dtype=itype)
    row[pos] = freed
    del pos, freed
    row[is_alloc] = np.arange(n, dtype=itype)
    return row, is_alloc


def _small_codes(codes: np.ndarray, k: int) -> np.ndarray:
    return codes.astype(np.int8 if k < 2**7 else np.int16 if k < 2**15 else np.int64, copy=False)


def _fill(out: np.ndarray, row: np.ndarray, is_alloc: np.ndarray, values: np.ndarray, at_alloc: bool) -> None:
    """out[e] = values[row[e]] at the allocation events (`at_alloc`) or at the frees, a stretch at a time."""
    for s in range(0, len(row), CHUNK):
        sel = is_alloc[s:s + CHUNK] if at_alloc else ~is_alloc[s:s + CHUNK]
        out[s:s + CHUNK][sel] = values[row[s:s + CHUNK][sel]]


def narrow_events(cols: AllocColumns) -> Events:
    """The events of an allocation table, read one column at a time; holds ~22 bytes an event
    (live, t_ns as int64; row as int32; code as int8) plus each row's bytes, and besides them
    one column of the table at a time."""
    row, is_alloc = _event_order(cols.int64("q_alloc"), cols.int64("q_free"))
    codes, names = cols.codes()
    code = _small_codes(codes, len(names))[row]
    del codes
    t_ns = np.empty(len(row), dtype=np.int64)
    for column, at_alloc in (("t_alloc_ns", True), ("t_free_ns", False)):  # one time column in memory at a time
        _fill(t_ns, row, is_alloc, cols.int64(column), at_alloc)
    ev = Events(t_ns=t_ns, live=np.empty(len(row), dtype=np.int64), row=row, code=code, names=names,
                delta_is_alloc=is_alloc, row_bytes=cols.int64("bytes"))
    level = 0
    for s in range(0, len(row), CHUNK):  # live bytes: the running sum of the deltas
        run = np.cumsum(ev.deltas(s, s + CHUNK), out=ev.live[s:s + CHUNK])
        run += level
        level = int(run[-1])
    return ev


def event_arrays(allocs: pd.DataFrame) -> EventArrays:
    """The events of an allocation table (columns id, q_alloc, q_free, t_alloc_ns, t_free_ns, bytes, category)."""
    from kvprof.read.columns import FrameColumns

    ev = narrow_events(FrameColumns(allocs))
    delta = np.empty(len(ev), dtype=np.int64)
    for s in range(0, len(ev), CHUNK):
        delta[s:s + CHUNK] = ev.deltas(s, s + CHUNK)
    q = np.empty(len(ev), dtype=np.int64)
    for column, at_alloc in (("q_alloc", True), ("q_free", False)):
        _fill(q, ev.row, ev.delta_is_alloc, allocs[column].to_numpy(dtype=np.int64), at_alloc)
    return EventArrays(**vars(ev), delta=delta, q=q, alloc_id=allocs["id"].to_numpy(dtype=np.int64)[ev.row])


def first_reaching(x: np.ndarray, thresholds: np.ndarray, side: str = "left") -> np.ndarray:
    """For each of the ascending `thresholds`, the first index where the running maximum of `x`
    reaches it (side 'left': >=, 'right': >), len(x) where it never does: searchsorted into
    np.maximum.accumulate(x), without that full-length array."""
    thresholds = np.asarray(thresholds, dtype=x.dtype)
    out = np.full(len(thresholds), len(x), dtype=np.int64)
    k, carry = 0, None
    for s in range(0, len(x), CHUNK):
        if k == len(thresholds):
            break
        run = np.maximum.accumulate(x[s:s + CHUNK])
        if carry is not None:
            np.maximum(run, carry, out=run)
        carry = run[-1]
        idx = np.searchsorted(run, thresholds[k:], side=side)
        hit = int(np.count_nonzero(idx < len(run)))  # a prefix: thresholds ascend
        out[k:k + hit] = s + idx[:hit]
        k += hit
    return out


def category_at(ev: Events, points: np.ndarray) -> np.ndarray:
    """Live bytes per category code just after each event index in `points` (ascending), shape
    (len(points), len(names)): weighted bincounts over the stretches between points, a CHUNK of
    events at a time."""
    k = len(ev.names)
    points = np.asarray(points, dtype=np.int64)
    if k == 0 or len(points) == 0:
        return np.zeros((len(points), k), dtype=np.int64)
    edges = np.r_[0, points + 1]  # point j closes the events after point j-1 up to itself
    sums = np.zeros(len(points) * k, dtype=np.int64)
    for s in range(0, int(points[-1]) + 1, CHUNK):
        e = min(s + CHUNK, int(points[-1]) + 1)
        lo, hi = np.searchsorted(edges, [s, e - 1], side="right") - 1  # the stretches this chunk touches
        counts = np.diff(np.clip(edges[lo:hi + 2], s, e))
        index = np.repeat(np.arange(lo, hi + 1) * k, counts) + ev.code[s:e]
        # float64 sums are exact: every partial sum is a byte count far below 2**53 (so summing a
        # chunk at a time gives what one bincount over all events gave)
        part = np.bincount(index - lo * k, weights=ev.deltas(s, e).astype(np.float64), minlength=(hi + 1 - lo) * k)
        sums[lo * k:(hi + 1) * k] += np.rint(part).astype(np.int64)
    return np.cumsum(sums.reshape(len(points), k), axis=0)


def category_max(ev: Events) -> dict[str, int]:
    """The largest live bytes each category reached (0 before its first event counts)."""
    k = len(ev.names)
    level = np.zeros(k, dtype=np.int64)  # each category's live bytes so far
    best = np.zeros(k, dtype=np.int64)
    first = np.full(k, -1, dtype=np.int64)  # each category's first event
    for s in range(0, len(ev), CHUNK):
        code, delta = ev.code[s:s + CHUNK], ev.deltas(s, s + CHUNK)
        for c in np.flatnonzero(np.bincount(code, minlength=k)):
            at = code == c
            run = np.cumsum(delta[at])
            run += level[c]
            top = int(run.max())
            if first[c] < 0:
                first[c], best[c] = s + int(np.argmax(at)), top
            best[c] = max(int(best[c]), top)
            level[c] = run[-1]
    return {name: (max(int(best[c]), 0) if first[c] > 0 else int(best[c])) for c, name in enumerate(ev.names) if first[c] >= 0}


def _first_max(live: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Index of the first maximum of each stretch live[starts[j]:starts[j + 1]] (the last runs to the end)."""
    ends = np.r_[starts[1:], len(live)]
    return np.asarray([s + int(np.argmax(live[s:e])) for s, e in zip(starts.tolist(), ends.tolist())], dtype=np.int64)


def bucket_points(live: np.ndarray, buckets: int) -> np.ndarray:
    """Event index of the (first) maximum of each of `buckets` equal stretches of events."""
    n = len(live)
    if n <= buckets:
        return np.arange(n, dtype=np.int64)
    return _first_max(live, np.unique(np.linspace(0, n, buckets + 1).astype(np.int64)[:-1]))


def time_points(t_ns: np.ndarray, live: np.ndarray, buckets: int) -> np.ndarray:
    """Event index drawn for each of `buckets` equal time spans: the span's first maximum, or for a
    span without events the last event before it (its live bytes held through the span). Times are
    taken as their running maximum (clocks of different sources may step back a little): event i
    falls in bucket (t_i - t_0) * (buckets - 1) // span."""
    n = len(live)
    if n == 0 or buckets < 1:
        return np.zeros(0, dtype=np.int64)
    t0 = int(t_ns[0])
    span = int(t_ns.max()) - t0
    if span <= 0:
        return bucket_points(live, buckets)
    # bucket >= b from the first event whose time reaches t_0 + ceil(b * span / (buckets - 1))
    reach = [t0 - (-b * span // (buckets - 1)) for b in range(1, buckets)]
    begin = np.r_[0, first_reaching(t_ns, np.asarray(reach, dtype=np.int64)), n]  # bucket b: begin[b]:begin[b + 1]
    present = np.flatnonzero(begin[:-1] < begin[1:])
    starts = begin[present]
    rep, last = _first_max(live, starts), np.r_[starts[1:], n] - 1
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
    if x.dtype.kind not in "iuf":
        x = x.astype(np.float64)
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))  # as of x.astype(float64): rounding keeps order
    width = (hi - lo) / buckets if hi > lo else 1.0
    y = np.asarray(y)

    def bucket(s: int) -> np.ndarray:
        return np.clip(((x[s:s + CHUNK].astype(np.float64) - lo) / width).astype(np.int64), 0, buckets - 1)

    keep = [np.array([0, n - 1], dtype=np.int64)]
    extremes = ((np.maximum, np.full(buckets, y.min(), dtype=y.dtype)), (np.minimum, np.full(buckets, y.max(), dtype=y.dtype)))
    for s in range(0, n, CHUNK):
        b = bucket(s)
        for reduce, best in extremes:
            reduce.at(best, b, y[s:s + CHUNK])
    first = [np.full(buckets, -1, dtype=np.int64) for _ in extremes]
    for s in range(0, n, CHUNK):  # the first row at each bucket's extreme
        b = bucket(s)
        for (_, best), found in zip(extremes, first):
            hits = np.flatnonzero(y[s:s + CHUNK] == best[b])
            seen, at = np.unique(b[hits], return_index=True)
            new = found[seen] < 0
            found[seen[new]] = s + hits[at[new]]
    keep += [found[found >= 0] for found in first]
    return np.unique(np.concatenate(keep))  # sorted: original order preserved


def category_lines(ev: Events, points: np.ndarray, nonzero_only: bool = True,
                   lines: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Live bytes per category at each of `points` (ascending event indices), in CATEGORIES order
    then other names sorted; with `nonzero_only`, categories that never hold bytes there are left out.
    `lines`: category_at(ev, points) when already at hand."""
    lines = category_at(ev, points) if lines is None else lines
    order = [c for c in CATEGORIES if c in ev.names] + sorted(n for n in ev.names if n not in CATEGORIES)
    pos = {n: i for i, n in enumerate(ev.names)}
    return {c: lines[:, pos[c]] for c in order if not nonzero_only or lines[:, pos[c]].any()}
