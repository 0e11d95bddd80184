"""What the first screens of `summary`, `diagnose`, `report` and `tui` need, computed once.

`compute_views(trace)` reduces the memory events (kvprof.read.events) to: the peak event, the
peak of each phase with its live bytes by category, the allocation rows live at those moments
(the peak's live set and each phase peak's), live bytes by category at the end, each category's
maximum, live bytes at each allocator counter reading, the TUI's two timelines (`TUI_BUCKETS`
points over events and over time) and the report's min/max envelope (`REPORT_BUCKETS`).

At close, `kvprof.read.trace.load_closed` computes them with `compute_views_from_file`: straight
from allocations.parquet, one column at a time (kvprof.read.columns), so the allocation table
never becomes a DataFrame (on a 7.2 M-row trace that DataFrame and the full-length event
temporaries held ~2 GB; now ~0.5 GB above the imports). `compute_views` computes the same from a
table already read; both run one computation (`_compute`) on the columns.

`write_views(trace)` stores them as `views.json` next to the tables when a trace closes (the
recorder calls it); `load_views(folder)` reads them back only when the tables are byte for byte
those they were computed from (a BLAKE2 digest of each table file) and the file is as written
(a digest of its own content), else None and readers
compute them from the tables as before (older traces, damaged or edited tables). Either way
the numbers are the same: the file is a cache of this module's results, never a second
definition of them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from kvprof.read.columns import FrameColumns, ParquetColumns, Unusual
from kvprof.read.events import (CHUNK, AllocColumns, EventArrays, Events, bucket_points, category_at, category_lines,
                                category_max, envelope_points, first_reaching, narrow_events, time_points)
from tracers.atomic import write_json_atomic
from tracers.categories import CATEGORIES
from tracers.trace_fold import ALLOC_COLUMNS, NO_FREE

if TYPE_CHECKING:
    from kvprof.read.trace import Trace

__all__ = ["VIEWS_FILE", "Views", "compute_views", "compute_views_from_file", "write_views", "load_views", "TUI_BUCKETS", "REPORT_BUCKETS"]

VIEWS_FILE = "views.json"
VIEWS_VERSION = 1
TUI_BUCKETS = 2048  # points of the TUI's timelines (tui.model.MAX_BUCKETS)
REPORT_BUCKETS = 1500  # time buckets of the report's timeline (kvprof report --buckets default)
# The tables the views are computed from; meta.json is read fresh by every reader.
SOURCE_TABLES = ("allocations", "spans", "counters", "kv")
PHASE_COLUMNS = ["phase", "peak_bytes", "q", "t_ns", "alloc_id", *CATEGORIES, "cache_bytes", "first_q"]
_INT_ALLOC = ("id", "q_alloc", "q_free", "t_alloc_ns", "t_free_ns", "bytes", "span_id")


@dataclass(frozen=True)
class Views:
    """The precomputed views of one trace (see the module doc); plain data, JSON both ways."""

    n_events: int
    n_allocations: int  # rows of the allocation table
    peak: dict[str, int] | None  # event, q, t_ns, bytes, alloc_id of the first event at the maximum
    phase_peaks: pd.DataFrame  # PHASE_COLUMNS, in phase order (kvprof.read.phases.phase_peaks)
    key_rows: pd.DataFrame  # allocation rows (the table's columns) live at any key q, or made at one
    key_qs: frozenset[int]
    categories: tuple[str, ...]  # categories of the allocations, in first-seen order
    category_max: dict[str, int]
    live_at_end: dict[str, int]  # category -> bytes still live when the trace ended (zeros left out)
    counter_live: np.ndarray  # live bytes after the last event at or before each counter row's q
    kv_codes_at_last_kv: int | None  # kv_codes bytes live at the time of the last KV record
    timelines: dict[str, dict[str, Any]]  # 'events' / 'time': index, q, t_ns, total, by_category
    envelope: pd.DataFrame  # report timeline: q, t_ns, each category, total (REPORT_BUCKETS)

    def rows_at(self, q: int) -> pd.DataFrame | None:
        """The key rows, when `q` is a key order key (the rows live at q are among them); else None."""
        return self.key_rows if int(q) in self.key_qs else None

    # ------------------------------------------------------------------ JSON
    def to_dict(self, fingerprint: dict[str, list[Any]]) -> dict[str, Any]:
        """The JSON object of views.json (`fingerprint`: the source tables' sizes and digests)."""
        rows = self.key_rows
        return {
            "version": VIEWS_VERSION, "fingerprint": fingerprint, "n_events": self.n_events, "n_allocations": self.n_allocations, "peak": self.peak,
            "phase_peaks": self.phase_peaks.to_dict(orient="list"),
            "key_qs": sorted(self.key_qs),
            "key_rows": {c: [None if pd.isna(v) else v for v in rows[c].tolist()] for c in ALLOC_COLUMNS},
            "categories": list(self.categories), "category_max": self.category_max, "live_at_end": self.live_at_end,
            "counter_live": self.counter_live.tolist(), "kv_codes_at_last_kv": self.kv_codes_at_last_kv,
            "timelines": {k: {"index": v["index"].tolist(), "q": v["q"].tolist(), "t_ns": v["t_ns"].tolist(),
                              "total": v["total"].tolist(), "by_category": {c: a.tolist() for c, a in v["by_category"].items()}}
                          for k, v in self.timelines.items()},
            "envelope": self.envelope.to_dict(orient="list"),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Views":
        """From views.json's object; KeyError / TypeError / ValueError when it is not one."""
        rows = pd.DataFrame({c: pd.array(d["key_rows"][c], dtype="int64") for c in _INT_ALLOC})
        rows["category"] = pd.array(d["key_rows"]["category"], dtype="string")
        rows["name"] = pd.array(d["key_rows"]["name"], dtype="string")
        phases = pd.DataFrame(d["phase_peaks"], columns=PHASE_COLUMNS)
        phases = phases.astype({c: "int64" for c in PHASE_COLUMNS if c != "phase"}) if len(phases) else phases
        env = pd.DataFrame(d["envelope"])
        env = env.astype({c: "int64" for c in env.columns}) if len(env) else env
        tl = {k: {"index": np.asarray(v["index"], dtype=np.int64), "q": np.asarray(v["q"], dtype=np.int64),
                  "t_ns": np.asarray(v["t_ns"], dtype=np.int64), "total": np.asarray(v["total"], dtype=np.int64),
                  "by_category": {str(c): np.asarray(a, dtype=np.int64) for c, a in v["by_category"].items()}}
              for k, v in d["timelines"].items()}
        peak = d["peak"]
        return cls(
            n_events=int(d["n_events"]), n_allocations=int(d["n_allocations"]), peak=None if peak is None else {k: int(peak[k]) for k in ("event", "q", "t_ns", "bytes", "alloc_id")},
            phase_peaks=phases, key_rows=rows[list(ALLOC_COLUMNS)], key_qs=frozenset(int(q) for q in d["key_qs"]),
            categories=tuple(str(c) for c in d["categories"]), category_max={str(k): int(v) for k, v in d["category_max"].items()},
            live_at_end={str(k): int(v) for k, v in d["live_at_end"].items()},
            counter_live=np.asarray(d["counter_live"], dtype=np.int64),
            kv_codes_at_last_kv=None if d["kv_codes_at_last_kv"] is None else int(d["kv_codes_at_last_kv"]),
            timelines=tl, envelope=env,
        )


def _row_phases(trace: "Trace", cols: AllocColumns) -> tuple[list[str], np.ndarray]:
    """The phase of each allocation's span: (names, each row's index into them; a span the
    table lacks counts as outside stages)."""
    from kvprof.read.phases import OUTSIDE, span_phases

    sp = span_phases(trace)
    names = [OUTSIDE, *pd.unique(sp["phase"].astype(str))]
    code = {n: i for i, n in enumerate(names)}
    by_span = dict(zip(sp["id"].astype(int), (code[str(p)] for p in sp["phase"])))
    known = np.asarray(sorted(by_span), dtype=np.int64)
    small = np.int8 if len(names) < 2**7 else np.int64
    lut = np.asarray([by_span[int(s)] for s in known] or [0], dtype=small)
    span_ids = cols.int64("span_id")
    row_phase = np.zeros(len(span_ids), dtype=small)
    for s in range(0, len(span_ids) if len(known) else 0, CHUNK):
        ids = span_ids[s:s + CHUNK]
        pos = np.clip(np.searchsorted(known, ids), 0, len(known) - 1)
        row_phase[s:s + CHUNK] = np.where(known[pos] == ids, lut[pos], 0)
    return names, row_phase


def _phase_points(ev: Events, row_phase: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per phase that allocated, in the order they first allocated: its phase (index into
    the `k` names of `_row_phases`), the event at its maximum and its first event. Only
    allocations with bytes (delta > 0) count: frees and 0-byte allocations raise nothing."""
    best, first, top = np.full(k, -1, dtype=np.int64), np.full(k, -1, dtype=np.int64), np.zeros(k, dtype=np.int64)
    for s in range(0, len(ev), CHUNK):
        rises = ev.deltas(s, s + CHUNK) > 0
        phase = np.where(rises, row_phase[ev.row[s:s + CHUNK]], -1)
        for p in np.flatnonzero(np.bincount(phase[rises], minlength=k)):
            idx = np.flatnonzero(phase == p)
            live = ev.live[s:s + CHUNK][idx]
            j = int(np.argmax(live))  # the first maximum
            if first[p] < 0 or live[j] > top[p]:
                best[p], top[p] = s + idx[j], live[j]
            if first[p] < 0:
                first[p] = s + idx[0]
    phases = np.flatnonzero(first >= 0)
    phases = phases[np.argsort(first[phases], kind="stable")]
    return phases, best[phases], first[phases]


class _Shown:
    """Values at the few events the views show (gathered once, the event arrays then let go)."""

    def __init__(self, events: np.ndarray):
        self.events = events  # ascending
        self.values: dict[str, np.ndarray] = {}

    def __call__(self, name: str, points: np.ndarray) -> np.ndarray:
        return self.values[name][np.searchsorted(self.events, points)]


def _phase_table(names: list[str], phases: np.ndarray, best: np.ndarray, first: np.ndarray, at: _Shown,
                 cats: np.ndarray, categories: list[str]) -> pd.DataFrame:
    """The phase-peak table (PHASE_COLUMNS) from `_phase_points`; `cats`: category_at of the maxima."""
    from kvprof.read.phases import CACHE_CATEGORIES

    rows = []
    for j, (p, i, i0) in enumerate(zip(phases.tolist(), best.tolist(), first.tolist())):
        row = {"phase": names[p], "peak_bytes": int(at("live", i)), "q": int(at("q", i)), "t_ns": int(at("t_ns", i)),
               "alloc_id": int(at("alloc_id", i))}
        for cat in CATEGORIES:
            row[cat] = int(cats[j, categories.index(cat)]) if cat in categories else 0
        row["cache_bytes"] = sum(row[c] for c in CACHE_CATEGORIES)
        row["first_q"] = int(at("q", i0))
        rows.append(row)
    return pd.DataFrame(rows, columns=PHASE_COLUMNS)


def _envelope_table(q: np.ndarray, t_ns: np.ndarray, by_cat: dict[str, np.ndarray], total: np.ndarray) -> pd.DataFrame:
    out = pd.DataFrame({"q": q, "t_ns": t_ns})
    for cat in CATEGORIES:
        out[cat] = by_cat.get(cat, np.zeros(len(q), dtype=np.int64))
    out["total"] = total
    return out


def report_envelope(ev: EventArrays, buckets: int, lines: Callable[[np.ndarray], np.ndarray] | None = None,
                    keep: np.ndarray | None = None) -> pd.DataFrame:
    """The wide timeline (q, t_ns, live bytes of every category, total) at the rows the min/max
    envelope over time keeps (kvprof.read.events.envelope_points: `keep` when at hand); `lines`:
    their category_at."""
    keep = envelope_points(ev.t_ns, ev.live, buckets) if keep is None else keep
    by_cat = category_lines(ev, keep, nonzero_only=False, lines=None if lines is None else lines(keep))
    return _envelope_table(ev.q[keep], ev.t_ns[keep], by_cat, ev.live[keep])


def _event_q(row: np.ndarray, is_alloc: np.ndarray, q_alloc: np.ndarray, q_free: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The order key of events `idx`: their row's q_alloc at an allocation, q_free at a free."""
    return np.where(is_alloc[idx], q_alloc[row[idx]], q_free[row[idx]])


def _count_at_or_before(q_of: Callable[[np.ndarray], np.ndarray], n: int, targets: np.ndarray) -> np.ndarray:
    """searchsorted(q, targets, side='right') over the events' (ascending) order keys, read at
    ~log2(n) events per target through `q_of` instead of a full array of q."""
    lo, hi = np.zeros(len(targets), dtype=np.int64), np.full(len(targets), n, dtype=np.int64)
    while bool((lo < hi).any()):
        active = lo < hi
        mid = (lo + hi) // 2
        right = np.zeros(len(targets), dtype=bool)
        right[active] = q_of(mid[active]) <= targets[active]
        lo = np.where(active & right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
    return lo


def _compute(trace: "Trace", cols: AllocColumns) -> Views:
    """The views from the allocation columns (numpy passes over the events, a stretch at a time)."""
    names, row_phase = _row_phases(trace, cols)  # before the events: one column in memory at a time
    ev = narrow_events(cols)
    m, categories = len(ev), list(ev.names)
    phase_ids, best, first = _phase_points(ev, row_phase, len(names))
    del row_phase
    sets = {"events": bucket_points(ev.live, TUI_BUCKETS), "time": time_points(ev.t_ns, ev.live, TUI_BUCKETS),
            "envelope": envelope_points(ev.t_ns, ev.live, REPORT_BUCKETS), "phases": best}
    kv_point = None
    if len(trace.kv) and m:
        kv_point = int(first_reaching(ev.t_ns, np.asarray([int(trace.kv["t_ns"].iloc[-1])]), side="right")[0]) - 1
        sets["kv"] = np.array([kv_point], dtype=np.int64) if kv_point >= 0 else np.zeros(0, dtype=np.int64)
    peak_at = int(np.argmax(ev.live)) if m else None
    # one pass over the events for every point any view needs (the last event: what is live at the end)
    union = np.unique(np.concatenate([*sets.values(), np.arange(max(m - 1, 0), m)]))
    matrix = category_at(ev, union)

    def lines(points: np.ndarray) -> np.ndarray:
        return matrix[np.searchsorted(union, points)]

    by_cat = {key: category_lines(ev, sets[key], nonzero_only=key != "envelope", lines=lines(sets[key]))
              for key in ("events", "time", "envelope")}
    cat_max = category_max(ev)
    end = lines(union[-1:])[0] if m else np.zeros(len(categories), dtype=np.int64)
    live_at_end = {c: int(b) for c, b in sorted(zip(categories, end.tolist())) if b}
    k = ev.code_of("kv_codes")
    kv_codes = None if kv_point is None or kv_point < 0 else 0 if k is None else int(lines(sets["kv"])[0, k])
    at = _Shown(np.unique(np.concatenate([union, first, np.asarray([] if peak_at is None else [peak_at], dtype=np.int64)])))
    at.values.update(t_ns=ev.t_ns[at.events], live=ev.live[at.events])
    row, is_alloc, live = ev.row, ev.delta_is_alloc, ev.live
    del ev  # the event arrays left are row, is_alloc and live: each event's q is read where needed
    q_alloc, q_free = cols.int64("q_alloc"), cols.int64("q_free")
    q_of = partial(_event_q, row, is_alloc, q_alloc, q_free)
    at.values["q"] = q_of(at.events)
    ids = cols.int64("id")
    cols.check(q_alloc, q_free, ids)  # a table read straight from its file: what the reader would refuse
    at.values["alloc_id"] = ids[row[at.events]]
    del ids
    counters = trace.counters
    counter_live = np.zeros(len(counters), dtype=np.int64)
    if len(counters) and m:
        pos = _count_at_or_before(q_of, m, counters["q"].to_numpy(dtype=np.int64)) - 1
        counter_live = np.where(pos >= 0, live[np.clip(pos, 0, None)], 0)
    del row, is_alloc, live, q_of
    phases = _phase_table(names, phase_ids, best, first, at, lines(best), categories)
    peak = None
    key: list[int] = []
    if peak_at is not None:
        peak = {"event": peak_at, "q": int(at("q", peak_at)), "t_ns": int(at("t_ns", peak_at)),
                "bytes": int(at("live", peak_at)), "alloc_id": int(at("alloc_id", peak_at))}
        key = [peak["q"], *phases["q"].astype(int)]
    mask = np.zeros(cols.n, dtype=bool)
    for q in set(key):
        mask |= ((q_alloc <= q) & ((q_free == NO_FREE) | (q_free > q))) | (q_alloc == q)
    del q_alloc, q_free
    return Views(
        n_events=m, n_allocations=cols.n, peak=peak, phase_peaks=phases, key_rows=cols.rows(mask),
        key_qs=frozenset(key), categories=tuple(categories), category_max=cat_max, live_at_end=live_at_end,
        counter_live=counter_live, kv_codes_at_last_kv=kv_codes,
        timelines={axis: {"index": p, "q": at("q", p), "t_ns": at("t_ns", p), "total": at("live", p), "by_category": by_cat[axis]}
                   for axis, p in (("events", sets["events"]), ("time", sets["time"]))},
        envelope=_envelope_table(at("q", sets["envelope"]), at("t_ns", sets["envelope"]), by_cat["envelope"],
                                 at("live", sets["envelope"])),
    )


def compute_views(trace: "Trace") -> Views:
    """The views of a trace, computed from its allocation table (numpy passes over the events)."""
    return _compute(trace, FrameColumns(trace.allocations))


def compute_views_from_file(trace: "Trace") -> Views | None:
    """The views of a closed trace computed straight from its `allocations.parquet`, a column at a
    time (kvprof.read.columns): the same numbers as `compute_views`, without the allocation table
    ever in a DataFrame (what closing a trace held most memory for). None when the file is not
    exactly as kvprof writes it, or has rows the reader would skip or refuse (repeated ids, freed
    before made): the caller reads the trace the ordinary way, which says what is wrong."""
    import pyarrow as pa

    try:
        return _compute(trace, ParquetColumns(trace.path / "allocations.parquet"))
    except (Unusual, OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        return None


def _fingerprint(folder: Path) -> dict[str, list[Any]]:
    """Size and BLAKE2 digest of each source table file: the views hold only for these bytes."""
    out: dict[str, list[Any]] = {}
    for name in SOURCE_TABLES:
        path = folder / f"{name}.parquet"
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out[name] = [path.stat().st_size, h.hexdigest()]
    return out


def write_views(trace: "Trace") -> Path | None:
    """Write `views.json` for a closed trace read from its Parquet tables (the recorder calls this
    when the trace closes); None for a live trace, or one whose reader skipped damaged rows (their
    note is said on every load). OSError (a full disk) goes to the caller."""
    if trace.raw.live or trace.raw.notes:
        return None
    path = trace.path / VIEWS_FILE
    data = trace.views.to_dict(_fingerprint(trace.path))
    write_json_atomic(path, {**data, "digest": _digest(data)}, compact=True)
    return path


def _digest(data: dict[str, Any]) -> str:
    """Digest of the views' own content: an edited or damaged views.json is not believed."""
    return hashlib.blake2b(json.dumps(data, sort_keys=True).encode(), digest_size=16).hexdigest()


def load_views(folder: str | Path) -> Views | None:
    """The views stored with a closed trace, when they were computed from exactly its current
    tables; None otherwise (no file, another version, edited or damaged tables or file)."""
    folder = Path(folder)
    try:
        data = json.loads((folder / VIEWS_FILE).read_text())
        if not isinstance(data, dict) or data.get("version") != VIEWS_VERSION:
            return None
        digest = data.pop("digest", None)
        if digest != _digest(data) or data.get("fingerprint") != _fingerprint(folder):
            return None
        return Views.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError):
        return None
