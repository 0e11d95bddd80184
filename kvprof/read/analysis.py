"""Analyses of a trace: each a function of the trace's tables returning plain data.

The TUI, reports, `--json` and diagnose render these; none of them recounts bytes itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kvprof.read.summary import KVBytes, Peak, Reconciliation, StageTime, Summary
from kvprof.read.trace import Trace
from tracers.categories import CATEGORIES
from tracers.trace_io import NO_FREE

__all__ = ["Peak", "Breakdown", "memory_events", "timeline", "find_peak", "live_at", "breakdown", "breakdown_of", "stage_times", "reconcile", "kv_bytes",
           "logical_dtype", "logical_label", "summarize"]

# Short names of the rollout dtypes, for labels ("logical (FP32)").
DTYPE_SHORT: dict[str, str] = {"bfloat16": "BF16", "float32": "FP32", "float16": "FP16", "float64": "FP64"}


def memory_events(trace: Trace) -> pd.DataFrame:
    """Every alloc (+bytes) and free (-bytes) in exact order: columns q, t_ns, delta, category, alloc_id, live.
    Computed once per trace and shared: callers must not modify it."""
    return trace.memory_events


def timeline(trace: Trace) -> pd.DataFrame:
    """Live bytes per category after every event (wide: one column per category, plus `total`)."""
    ev = memory_events(trace)
    wide = pd.DataFrame({"q": ev["q"], "t_ns": ev["t_ns"]})
    for cat in CATEGORIES:
        wide[cat] = ev["delta"].where(ev["category"] == cat, 0).cumsum()
    wide["total"] = ev["live"]
    return wide


@dataclass(frozen=True)
class Breakdown:
    """Live bytes at one moment (just after the event with order key `q`), split by category, by
    stage kind path of origin and by pass of origin (denoise / refresh / "outside chunks", indices
    dropped). Each split is sorted by bytes, largest first (ties in name order), without zeros."""

    q: int
    total: int
    by_category: dict[str, int]
    by_stage: dict[str, int]
    by_pass: dict[str, int]


def live_at(trace: Trace, q: int) -> pd.DataFrame:
    """Allocations live just after the event with order key `q`, with their stage of origin."""
    views = trace.known_views
    rows = None if views is None else views.rows_at(q)
    a = trace.allocations_with_stage if rows is None else trace.with_stage(rows)  # a key moment: its rows are stored
    mask = (a["q_alloc"] <= q) & ((a["q_free"] == NO_FREE) | (a["q_free"] > q))
    return a[mask]


def _split(live: pd.DataFrame, key: str | pd.Series) -> dict[str, int]:
    sums = live.groupby(key)["bytes"].sum()
    sums = sums[sums != 0].sort_index(kind="stable").sort_values(ascending=False, kind="stable")
    return {str(k): int(v) for k, v in sums.items()}


def breakdown_of(live: pd.DataFrame, q: int) -> Breakdown:
    """The Breakdown of a set of live allocations (rows of `live_at`, perhaps filtered)."""
    passes = live["pass_name"].fillna("outside chunks").astype(str).str.replace(r"\[\d+\]", "", regex=True)
    return Breakdown(q, int(live["bytes"].sum()), _split(live, "category"), _split(live, "kind_path"), _split(live, passes))


# Columns the `match` text of `breakdown` is looked for in.
MATCHED_FIELDS = ("category", "kind_path", "path", "name")


def breakdown(trace: Trace, q: int, match: str = "") -> Breakdown:
    """Live bytes just after the event with order key `q` by category, stage kind path and pass of
    origin: the one split the summary's peak, the failure state and the TUI's cursor show. With
    `match`, only allocations whose category, stage or name contains it (case-insensitive)."""
    live = live_at(trace, q)
    if match:
        hit = pd.Series(False, index=live.index)
        for col in MATCHED_FIELDS:
            hit |= live[col].astype("string").str.contains(match, case=False, regex=False).fillna(False).astype(bool)
        live = live[hit]
    return breakdown_of(live, q)


def find_peak(trace: Trace, top: int = 10) -> Peak | None:
    """The first event at which live bytes reach their maximum (None for a trace with no allocations)."""
    point = trace.views.peak
    if point is None:
        return None
    q = point["q"]
    live = live_at(trace, q)
    made = live.loc[live["id"] == point["alloc_id"], "path"]
    if made.empty:  # freed at its own q: not among the live rows
        a = trace.allocations_with_stage
        made = a.loc[a["id"] == point["alloc_id"], "path"]
    stage = str(made.iat[0])
    split = breakdown_of(live, q)
    biggest = live.sort_values("bytes", ascending=False, kind="stable").head(top)  # ties in table order
    tops = [
        {"bytes": int(r.bytes), "category": str(r.category), "name": None if pd.isna(r.name) else str(r.name), "stage": str(r.path)}
        for r in biggest.itertuples()
    ]
    return Peak(bytes=point["bytes"], q=q, t_ns=point["t_ns"], stage=stage, by_category=split.by_category,
                by_stage=split.by_stage, by_pass=split.by_pass, top_allocations=tops)


def stage_times(trace: Trace) -> pd.DataFrame:
    """Per stage kind (the stage's own name): count, host ms and device ms totals, sorted by device
    time where measured, else host time. device_ms is NaN where no span of the kind has a device
    time (CPU runs): views show "-" there rather than repeat the host time."""
    s = trace.spans
    if s.empty:
        return pd.DataFrame(columns=["stage", "count", "host_ms", "device_ms"])
    g = pd.DataFrame({"stage": s["name"], "host_ms": s["host_ms"], "device_ms": s["device_ms"]}).groupby("stage")
    out = g.agg(count=("host_ms", "size"), host_ms=("host_ms", "sum"),
                device_ms=("device_ms", lambda x: x.sum(min_count=1))).reset_index()
    key = out["device_ms"].where(out["device_ms"].notna(), out["host_ms"])
    return out.loc[key.sort_values(ascending=False, kind="stable").index].reset_index(drop=True)


def reconcile(trace: Trace, peak: Peak | None) -> Reconciliation:
    """Attributed live bytes vs the allocator's counters (CUDA) or the tracker's own total (CPU)."""
    meta = trace.meta
    tracker = meta.get("tracker")
    if tracker != "cuda-allocator-history":
        return Reconciliation(tracker=tracker, note="the dispatch tracker is the allocator of record on CPU: attributed = tracked by construction")
    # Bytes live before tracking that the trace does not hold: none since traces hold every block
    # from the start (held_before_bytes); older traces held only registered ones.
    held = meta.get("held_before_bytes", meta.get("registered_before_bytes", 0))
    before = int(meta.get("allocated_before_bytes", 0)) - int(held)
    out: dict[str, Any] = {}
    counters = trace.counters
    if not counters.empty and trace.views.n_events:
        gap = counters["allocated_bytes"].to_numpy() - before - trace.views.counter_live
        out.update(boundaries=int(len(gap)), max_abs_gap_bytes=int(np.abs(gap).max()), boundaries_exact=int((gap == 0).sum()))
    max_alloc = meta.get("max_memory_allocated_bytes")
    if max_alloc is not None and peak is not None:
        out["max_memory_allocated_bytes"] = int(max_alloc)
        out["trace_peak_bytes"] = peak.bytes + before
        out["peak_gap_bytes"] = int(max_alloc) - (peak.bytes + before)
    if isinstance(meta.get("allocator_layout"), dict):
        out["block_sizes"] = meta["allocator_layout"]
    return Reconciliation(tracker=tracker, **out)


def logical_dtype(meta: dict[str, Any]) -> str | None:
    """The element type logical KV bytes are counted at: the rollout's dtype (meta config), or None
    when the trace does not say. Logical bytes are the represented tokens at that element size, so
    the uncompressed method has logical = stored on every config (float32 on the CPU tiny config)."""
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    dtype = cfg.get("dtype")
    return str(dtype).replace("torch.", "") if dtype else None


def logical_label(dtype: str | None, word: str = "logical") -> str:
    """The one label of logical KV bytes everywhere (summary, compare, report, diagnose, TUI):
    "logical (BF16)", "logical (FP32)"; just the word when the dtype is unknown."""
    if not dtype:
        return word
    return f"{word} ({DTYPE_SHORT.get(dtype, dtype)})"


def kv_bytes(trace: Trace) -> KVBytes | None:
    """KV byte counts of the last recorded cache state, both compression ratios, and the dtype
    whose element size the logical bytes are counted at (`logical_dtype`)."""
    kv = trace.kv
    if kv.empty:
        return None
    last = kv.iloc[-1]
    logical, stored, resident = int(last.logical_bytes), int(last.stored_bytes), int(last.resident_bytes)
    return KVBytes(chunk=int(last.chunk), logical_bytes=logical, logical_dtype=logical_dtype(trace.meta), stored_bytes=stored,
                   resident_bytes=resident, ratio_stored=logical / stored if stored else None,
                   ratio_resident=logical / resident if resident else None)


def _ms(value: Any) -> float | None:
    return None if value is None else float(value)


def summarize(trace: Trace) -> Summary:
    """The summary of a trace (summary.json, docs/trace-format.md), computed from its tables."""
    peak = find_peak(trace)
    times = stage_times(trace)
    rows = times.astype(object).where(times.notna(), None).to_dict(orient="records")  # no NaN in JSON
    return Summary(
        status=trace.status,
        peak=peak,
        live_at_end_by_category=dict(trace.views.live_at_end),
        stage_times=tuple(StageTime(str(r["stage"]), int(r["count"]), _ms(r["host_ms"]), _ms(r["device_ms"])) for r in rows),
        kv=kv_bytes(trace),
        kv_per_chunk=tuple(trace.kv.to_dict(orient="records")),
        reconciliation=reconcile(trace, peak),
        wall_s=trace.meta.get("wall_s"),
        allocation_events=trace.views.n_allocations,
        tracer_cost=tracer_cost(trace.meta, trace.spans),
    )


def tracer_cost(meta: dict[str, Any], spans: pd.DataFrame | None = None) -> dict[str, Any] | None:
    """kvprof's own time in the traced run, as the run measured it: the traced thread's seconds inside the stage and
    tag scopes (meta `scopes`), the dispatch tracker's bookkeeping after each op (CPU: the spans' `tracer_ms`), the
    share of the model's time the recorder's background drains took (meta `allocator_layout.drain_phases`, CUDA) and
    the share its record path took, timed in place on sampled events (`allocator_layout.record_cost`); None for a
    trace that recorded none of them (older traces)."""
    out: dict[str, Any] = {}
    if spans is not None and "tracer_ms" in spans.columns and spans["tracer_ms"].notna().any():
        out["dispatch_tracker_s"] = round(float(spans["tracer_ms"].sum()) / 1e3, 6)
    scopes = meta.get("scopes")
    if isinstance(scopes, dict) and isinstance(scopes.get("stages_s"), (int, float)):
        out["scopes"] = {k: scopes.get(k) for k in ("stages", "tags", "stages_s", "tags_s", "marks_s")}
    layout = meta.get("allocator_layout")
    drains = layout.get("drain_phases") if isinstance(layout, dict) else None
    if isinstance(drains, dict) and drains.get("model_time_share") is not None:
        rates = {name: (row.get("rate_over_between") or {}).get("pooled") for name, row in drains.get("phases", {}).items()
                 if isinstance(row, dict) and "rate_over_between" in row}
        out["drains"] = {"compared": drains.get("drains_compared"), "model_time_share": drains["model_time_share"],
                         "rate_over_between": rates}
    recording = layout.get("record_cost") if isinstance(layout, dict) else None
    if isinstance(recording, dict) and recording.get("model_time_share") is not None:
        out["recording"] = {k: recording.get(k) for k in ("sampled", "median_ns", "mean_ns", "model_time_share")}
    return out or None


def tracer_cost_shares(cost: dict[str, Any], wall_s: float | None) -> dict[str, float | None]:
    """Each measured piece of a `tracer_cost` as a share of the run: the traced thread's seconds in kvprof (the
    dispatch tracker's and the scopes') over `wall_s`, the drains' and the record path's shares as measured, and the
    sum of those measured (None for a piece not measured; each is a share of the same span of time)."""
    thread = None
    seconds = [cost.get("dispatch_tracker_s")] + [((cost.get("scopes") or {}).get(k)) for k in ("stages_s", "tags_s")]
    if isinstance(cost.get("scopes"), dict) or isinstance(cost.get("dispatch_tracker_s"), (int, float)):
        if wall_s:
            thread = sum(v for v in seconds if isinstance(v, (int, float))) / wall_s
    drains, recording = ((cost.get(k) or {}).get("model_time_share") for k in ("drains", "recording"))
    measured = [v for v in (thread, drains, recording) if isinstance(v, (int, float))]
    return {"thread": thread, "drains": drains, "recording": recording, "sum": sum(measured) if measured else None}
