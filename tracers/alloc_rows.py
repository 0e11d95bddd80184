"""Turning a drain of the CUDA allocator's events into the trace's allocation rows.

Two paths, one bookkeeping (the session's live bytes, running peak, and the bytes of allocations
still alive, which later frees and size corrections need):
- `record_history_batch`: per-event lists (the Python replay of `_snapshot()` histories, and any
  run a live follower reads): rows kept in memory for the tables at close, or written as event
  records in allocator order for the follower;
- `record_stream_batch`: numpy columns from the native recorder, written as one streamed part
  (tracers.alloc_parts); only the frees and retags of rows of earlier parts are event records.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from tracers.categories import CATEGORIES
from tracers.trace_fold import LIVE_BEFORE_TRACING, NO_FREE

if TYPE_CHECKING:  # pragma: no cover
    from tracers.alloc_cuda import HistoryBatch
    from tracers.alloc_native import StreamBatch
    from tracers.session import TraceSession


def _clock(session: "TraceSession", clock: str) -> tuple[int, int]:
    """(scale, offset) turning a batch's times into trace ns: t * scale - offset."""
    if clock == "steady_ns":
        return 1, session.t0_perf_ns
    return 1000, session.t0_unix_ns


def _running(q: np.ndarray, delta: np.ndarray) -> tuple[int, int]:
    """(highest running sum, total) of `delta` bytes taken in the order of keys `q` (any order given): the sort and
    sums, done outside the session's lock, which the model's scopes take."""
    if not len(q):
        return 0, 0
    cum = np.cumsum(delta[np.argsort(q, kind="stable")])
    return max(int(cum.max()), 0), int(cum[-1])


def _advance(session: "TraceSession", running: tuple[int, int]) -> None:
    """Advance the session's running live bytes and peak by a batch's `_running` (under the session's lock)."""
    highest, total = running
    session.peak_bytes = max(session.peak_bytes, session.live_bytes + highest)
    session.live_bytes += total


def _account(session: "TraceSession", q: np.ndarray, delta: np.ndarray) -> None:
    """Advance the running live bytes and peak by `delta` bytes at order keys `q` (any order)."""
    _advance(session, _running(q, delta))


_CATEGORY_CODE = {c: i for i, c in enumerate(CATEGORIES)}


def _context_arrays(session: "TraceSession", n: int) -> tuple[np.ndarray, np.ndarray]:
    """Span and default category (its index in CATEGORIES) of contexts 0..n-1 as arrays, grown by the
    new contexts only, into spare capacity that doubles when full (a long rollout opens millions of
    contexts: converting the whole lists, or copying the arrays, at every drain would hold the GIL
    for tens of ms each time)."""
    spans, codes, have = session._ctx_arrays
    if n > have:
        if n > len(spans):
            size = max(n, 2 * len(spans), 1024)
            spans, codes = np.resize(spans[:have], size), np.resize(codes[:have], size)
        spans[have:n] = session._ctx_span[have:n]
        codes[have:n] = [_CATEGORY_CODE[c] for c in session._ctx_cat[have:n]]
        session._ctx_arrays = (spans, codes, n)
    return spans[:n], codes[:n]


def record_history_batch(session: "TraceSession", batch: "HistoryBatch") -> None:
    """Record one drain given as per-event lists (allocations in allocator order)."""
    n = len(batch.q_alloc)
    scale, offset = _clock(session, batch.clock)
    with session._lock:
        ctx_span, ctx_cat = session._ctx_span, session._ctx_cat
        spans = [ctx_span[c] for c in batch.ctx]
        cats = [ctx_cat[c] for c in batch.ctx]
        names: list[str | None] = [None] * n
        for row, (category, name) in batch.retags.items():
            cats[row] = category
            if name:
                names[row] = name
        now = session.now_ns()
        t_alloc = [now if t is None else t * scale - offset for t in batch.t_alloc_us]
        t_free = [t if t == NO_FREE else now if t is None else t * scale - offset for t in batch.t_free_us]
        freed = [(q, b) for q, b in zip(batch.q_free, batch.size) if q != NO_FREE]
        earlier = [(q, session._alloc_bytes.get(a, 0)) for a, q, _ in batch.earlier_frees]
        _account(session, np.array(batch.q_alloc + [q for q, _ in freed] + [q for q, _ in earlier], dtype=np.int64),
                 np.array(batch.size + [-b for _, b in freed] + [-b for _, b in earlier], dtype=np.int64))
        ids = range(batch.first_id, batch.first_id + n)
        for i, alloc_id in enumerate(ids):
            if batch.q_free[i] == NO_FREE:
                session._alloc_bytes[alloc_id] = batch.size[i]
        log = session._log
        assert log is not None
        if log.memory_only:
            log.add_allocations({
                "id": list(ids), "q_alloc": batch.q_alloc, "q_free": batch.q_free, "t_alloc_ns": t_alloc,
                "t_free_ns": t_free, "bytes": batch.size, "category": cats, "span_id": spans, "name": names,
            })
        else:  # a follower reads the log: one record per event, in allocator order
            out: list[tuple[int, dict[str, Any]]] = []
            for i, alloc_id in enumerate(ids):
                rec = {"k": "a", "id": alloc_id, "t": t_alloc[i], "q": batch.q_alloc[i], "b": batch.size[i],
                       "c": cats[i], "s": spans[i]}
                if names[i]:
                    rec["n"] = names[i]
                out.append((batch.q_alloc[i], rec))
                if batch.q_free[i] != NO_FREE:
                    out.append((batch.q_free[i], {"k": "f", "id": alloc_id, "t": t_free[i], "q": batch.q_free[i]}))
            out.sort(key=lambda item: item[0])
            for _, rec in out:
                session._write(rec)
        for alloc_id, category, name in batch.earlier_retags:
            session.record_retag(alloc_id, category, name)
        for alloc_id, q, t in batch.earlier_frees:
            session._alloc_bytes.pop(alloc_id, None)
            session._write({"k": "f", "id": alloc_id, "q": q, "t": now if t is None else t * scale - offset})


def record_stream_batch(session: "TraceSession", b: "StreamBatch", retags: list[tuple[str, str | None]],
                        rows_done: Callable[[], None] | None = None) -> None:
    """Record one drain of the native recorder: its rows become the next streamed part (which a live
    follower reads too, `kvprof.read.live`). Vectorized: the only per-row Python work is for
    allocations that outlive the drain and for retags. `rows_done` is called between the rows and the part
    (tracers.drain_phases times the two apart)."""
    n, first = len(b.a_q), b.first_id
    with session._lock:
        reserved = session.reserve_alloc_ids(n)
        if reserved != first:  # the recorder numbers allocations; nothing else may on a CUDA trace
            raise RuntimeError(f"kvprof: allocation ids out of step (recorder {first}, session {reserved})")
        span_of, code_of = _context_arrays(session, int(b.a_ctx.max()) + 1 if n else 0)
    t0 = session.t0_perf_ns
    ids = np.arange(first, first + n, dtype=np.int64)
    in_batch = b.f_id >= first
    rows = b.f_id[in_batch] - first
    q_free, t_free = np.full(n, NO_FREE, dtype=np.int64), np.full(n, NO_FREE, dtype=np.int64)
    q_free[rows], t_free[rows] = b.f_q[in_batch], b.f_t[in_batch] - t0
    codes = code_of[b.a_ctx]  # categories as codes into CATEGORIES: no string per row
    names = None
    for alloc_id, tag in zip(b.r_id.tolist(), b.r_tag.tolist()):
        category, name = retags[tag]
        if alloc_id >= first:
            codes[alloc_id - first] = CATEGORIES.index(category)
            if name:
                names = np.full(n, None, dtype=object) if names is None else names
                names[alloc_id - first] = name
        else:
            session.record_retag(alloc_id, category, name)
    columns = {"id": ids, "q_alloc": b.a_q, "q_free": q_free, "t_alloc_ns": b.a_t - t0, "t_free_ns": t_free,
               "bytes": b.a_size, "category": (codes, list(CATEGORIES)), "span_id": span_of[b.a_ctx], "name": names}
    alive = q_free == NO_FREE
    with session._lock:
        earlier = [(int(i), int(q), int(t)) for i, q, t in zip(b.f_id[~in_batch], b.f_q[~in_batch], b.f_t[~in_batch])]
        gone = np.array([session._alloc_bytes.pop(i, 0) for i, _, _ in earlier], dtype=np.int64)
        session._alloc_bytes.update(zip(ids[alive].tolist(), b.a_size[alive].tolist()))
        for alloc_id, q, t in earlier:
            session._write({"k": "f", "id": alloc_id, "q": q, "t": t - t0})
    running = _running(np.concatenate([b.a_q, b.f_q[in_batch], b.f_q[~in_batch]]),
                       np.concatenate([b.a_size, -b.a_size[rows], -gone]))
    with session._lock:
        _advance(session, running)
    if rows_done is not None:
        rows_done()
    assert session._parts is not None
    session._parts.append(columns)


def note_blocks_from_before(session: "TraceSession", allocations: Any) -> None:
    """Count (meta `unregistered_before_bytes`) and note blocks from before tracking never registered."""
    left = allocations[(allocations["name"] == LIVE_BEFORE_TRACING) & (allocations["category"] == "unattributed")]
    session.meta["unregistered_before_bytes"] = n = int(left["bytes"].sum())
    if n:
        session.notes.append(
            f"{n:,} B in {len(left)} block(s) were allocated before tracing started and never "
            "registered (tensors made before tracing, or earlier work in this process such as cuBLAS workspaces): "
            f"counted as unattributed '{LIVE_BEFORE_TRACING}'; register() names tensors, and a fresh process "
            "leaves no workspaces behind")
