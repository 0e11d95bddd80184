"""What the first screens of `summary`, `diagnose`, `report` and `tui` need, computed once.

`compute_views(trace)` reduces the memory events (kvprof.read.events) to: the peak event, the
peak of each phase with its live bytes by category, the allocation rows live at those moments
(the peak's live set and each phase peak's), live bytes by category at the end, each category's
maximum, live bytes at each allocator counter reading, the TUI's two timelines (`TUI_BUCKETS`
points over events and over time) and the report's min/max envelope (`REPORT_BUCKETS`).

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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from kvprof.read.events import (EventArrays, bucket_points, category_at, category_lines, category_max, envelope_points,
                                event_arrays, time_points)
from tracers.atomic import write_json_atomic
from tracers.categories import CATEGORIES
from tracers.trace_fold import ALLOC_COLUMNS, NO_FREE

if TYPE_CHECKING:
    from kvprof.read.trace import Trace

__all__ = ["VIEWS_FILE", "Views", "compute_views", "write_views", "load_views", "TUI_BUCKETS", "REPORT_BUCKETS"]

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


def _phase_points(trace: "Trace", ev: EventArrays) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The phase of each allocation's span, as (names, phase of each event (-1 at frees and
    0-byte allocations, which raise nothing), event at the maximum of each phase that allocated
    and its first event, one row per phase in the order they first allocated)."""
    from kvprof.read.phases import OUTSIDE, span_phases

    sp = span_phases(trace)
    names = [OUTSIDE, *pd.unique(sp["phase"].astype(str))]
    code = {n: i for i, n in enumerate(names)}
    by_span = dict(zip(sp["id"].astype(int), (code[str(p)] for p in sp["phase"])))
    known = np.asarray(sorted(by_span), dtype=np.int64)
    lut = np.asarray([by_span[int(s)] for s in known] or [0], dtype=np.int64)
    span_ids = trace.allocations["span_id"].to_numpy(dtype=np.int64)
    pos = np.clip(np.searchsorted(known, span_ids), 0, max(len(known) - 1, 0))
    found = known[pos] == span_ids if len(known) else np.zeros(len(span_ids), dtype=bool)
    row_phase = np.where(found, lut[pos], 0)  # a span the table lacks: outside stages
    is_alloc = ev.delta > 0
    ev_phase = np.where(is_alloc, row_phase[ev.row], -1)
    best, first = [], []
    for p in np.flatnonzero(np.bincount(ev_phase[is_alloc], minlength=len(names))):  # phases that allocated
        idx = np.flatnonzero(ev_phase == p)
        best.append(idx[int(np.argmax(ev.live[idx]))])
        first.append(idx[0])
    points = np.asarray([best, first], dtype=np.int64).reshape(2, -1).T
    return names, ev_phase, points[np.argsort(points[:, 1], kind="stable")]


def _phase_table(ev: EventArrays, names: list[str], ev_phase: np.ndarray, points: np.ndarray,
                 cats: np.ndarray) -> pd.DataFrame:
    """The phase-peak table (PHASE_COLUMNS) from `_phase_points`; `cats`: category_at of the maxima."""
    from kvprof.read.phases import CACHE_CATEGORIES

    rows = []
    for j, (i, first) in enumerate(points):
        row = {"phase": names[int(ev_phase[i])], "peak_bytes": int(ev.live[i]), "q": int(ev.q[i]),
               "t_ns": int(ev.t_ns[i]), "alloc_id": int(ev.alloc_id[i])}
        for cat in CATEGORIES:
            k = ev.code_of(cat)
            row[cat] = 0 if k is None else int(cats[j, k])
        row["cache_bytes"] = sum(row[c] for c in CACHE_CATEGORIES)
        row["first_q"] = int(ev.q[first])
        rows.append(row)
    return pd.DataFrame(rows, columns=PHASE_COLUMNS)


def report_envelope(ev: EventArrays, buckets: int, lines: Callable[[np.ndarray], np.ndarray] | None = None,
                    keep: np.ndarray | None = None) -> pd.DataFrame:
    """The wide timeline (q, t_ns, live bytes of every category, total) at the rows the min/max
    envelope over time keeps (kvprof.read.events.envelope_points: `keep` when at hand); `lines`:
    their category_at."""
    keep = envelope_points(ev.t_ns, ev.live, buckets) if keep is None else keep
    out = pd.DataFrame({"q": ev.q[keep], "t_ns": ev.t_ns[keep]})
    by_cat = category_lines(ev, keep, nonzero_only=False, lines=None if lines is None else lines(keep))
    for cat in CATEGORIES:
        out[cat] = by_cat.get(cat, np.zeros(len(keep), dtype=np.int64))
    out["total"] = ev.live[keep]
    return out


def compute_views(trace: "Trace") -> Views:
    """The views of a trace, computed from its tables (numpy passes over the events)."""
    a = trace.allocations
    ev = event_arrays(a)
    names, ev_phase, phase_points = _phase_points(trace, ev)
    sets = {"events": bucket_points(ev.live, TUI_BUCKETS), "time": time_points(ev.t_ns, ev.live, TUI_BUCKETS),
            "envelope": envelope_points(ev.t_ns, ev.live, REPORT_BUCKETS), "phases": phase_points[:, 0]}
    kv_point = None
    if len(trace.kv) and len(ev):
        t = np.maximum.accumulate(ev.t_ns)
        kv_point = int(np.searchsorted(t, int(trace.kv["t_ns"].iloc[-1]), side="right")) - 1
        sets["kv"] = np.array([kv_point], dtype=np.int64) if kv_point >= 0 else np.zeros(0, dtype=np.int64)
    # one pass over the events for every point any view needs
    union = np.unique(np.concatenate(list(sets.values())))
    matrix = category_at(ev, union)

    def lines(points: np.ndarray) -> np.ndarray:
        return matrix[np.searchsorted(union, points)]

    phases = _phase_table(ev, names, ev_phase, phase_points, lines(phase_points[:, 0]))
    peak = None
    key: list[int] = []
    if len(ev):
        i = int(np.argmax(ev.live))
        peak = {"event": i, "q": int(ev.q[i]), "t_ns": int(ev.t_ns[i]), "bytes": int(ev.live[i]), "alloc_id": int(ev.alloc_id[i])}
        key = [peak["q"], *phases["q"].astype(int)]
    q_alloc, q_free = a["q_alloc"].to_numpy(dtype=np.int64), a["q_free"].to_numpy(dtype=np.int64)
    mask = np.zeros(len(a), dtype=bool)
    for q in set(key):
        mask |= ((q_alloc <= q) & ((q_free == NO_FREE) | (q_free > q))) | (q_alloc == q)
    still = q_free == NO_FREE
    codes = np.empty(len(a), dtype=np.int64)
    codes[ev.row[ev.delta_is_alloc]] = ev.code[ev.delta_is_alloc]
    end = np.bincount(codes[still], weights=a["bytes"].to_numpy(dtype=np.float64)[still], minlength=len(ev.names))
    live_at_end = {c: int(round(b)) for c, b in sorted(zip(ev.names, end)) if round(b)}
    counters = trace.counters
    counter_live = np.zeros(len(counters), dtype=np.int64)
    if len(counters) and len(ev):
        pos = np.searchsorted(ev.q, counters["q"].to_numpy(dtype=np.int64), side="right") - 1
        counter_live = np.where(pos >= 0, ev.live[np.clip(pos, 0, None)], 0)
    k = ev.code_of("kv_codes")
    kv_codes = None if kv_point is None or kv_point < 0 else 0 if k is None else int(lines(sets["kv"])[0, k])
    return Views(
        n_events=len(ev), n_allocations=len(a), peak=peak, phase_peaks=phases, key_rows=a[mask].reset_index(drop=True),
        key_qs=frozenset(key), categories=tuple(ev.names), category_max=category_max(ev), live_at_end=live_at_end,
        counter_live=counter_live, kv_codes_at_last_kv=kv_codes,
        timelines={axis: {"index": p, "q": ev.q[p], "t_ns": ev.t_ns[p], "total": ev.live[p],
                          "by_category": category_lines(ev, p, lines=lines(p))}
                   for axis, p in (("events", sets["events"]), ("time", sets["time"]))},
        envelope=report_envelope(ev, REPORT_BUCKETS, lines, sets["envelope"]),
    )


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
    write_json_atomic(path, {**data, "digest": _digest(data)})
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
