"""Analyses of a trace: each a function of the trace's tables returning plain data.

The TUI, reports, `--json` and diagnose render these; none of them recounts bytes itself.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kvprof.read.trace import Trace
from tracers.categories import CATEGORIES
from tracers.trace_io import NO_FREE

__all__ = ["Peak", "memory_events", "timeline", "find_peak", "live_at", "stage_times", "reconcile", "kv_bytes",
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


@dataclass
class Peak:
    """The exact peak of tracked live bytes and what was live then."""

    bytes: int
    q: int
    t_ns: int
    stage: str  # stage path during which the peak allocation was made
    by_category: dict[str, int]
    by_stage: dict[str, int]  # stage kind path of origin -> live bytes at the peak
    by_pass: dict[str, int]  # pass of origin (denoise[s] / refresh / outside) -> bytes
    top_allocations: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def live_at(trace: Trace, q: int) -> pd.DataFrame:
    """Allocations live just after the event with order key `q`, with their stage of origin."""
    a = trace.allocations_with_stage
    mask = (a["q_alloc"] <= q) & ((a["q_free"] == NO_FREE) | (a["q_free"] > q))
    return a[mask]


def find_peak(trace: Trace, top: int = 10) -> Peak | None:
    """The first event at which live bytes reach their maximum (None for a trace with no allocations)."""
    ev = memory_events(trace)
    if ev.empty:
        return None
    i = int(np.argmax(ev["live"].to_numpy()))
    q = int(ev["q"].iat[i])
    live = live_at(trace, q)
    alloc_id = int(ev["alloc_id"].iat[i])
    a = trace.allocations_with_stage
    stage = str(a.loc[a["id"] == alloc_id, "path"].iat[0])
    by_cat = {c: int(v) for c, v in live.groupby("category")["bytes"].sum().items() if v}
    by_stage = {str(s): int(v) for s, v in live.groupby("kind_path")["bytes"].sum().sort_values(ascending=False).items()}
    passes = live["pass_name"].fillna("outside chunks").astype(str).str.replace(r"\[\d+\]", "", regex=True)
    by_pass = {str(s): int(v) for s, v in live.groupby(passes)["bytes"].sum().sort_values(ascending=False).items()}
    biggest = live.sort_values("bytes", ascending=False).head(top)
    tops = [
        {"bytes": int(r.bytes), "category": str(r.category), "name": None if pd.isna(r.name) else str(r.name), "stage": str(r.path)}
        for r in biggest.itertuples()
    ]
    return Peak(int(ev["live"].iat[i]), q, int(ev["t_ns"].iat[i]), stage, by_cat, by_stage, by_pass, tops)


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


def reconcile(trace: Trace, peak: Peak | None) -> dict[str, Any]:
    """Attributed live bytes vs the allocator's counters (CUDA) or the tracker's own total (CPU)."""
    meta = trace.meta
    out: dict[str, Any] = {"tracker": meta.get("tracker")}
    if meta.get("tracker") != "cuda-allocator-history":
        out["note"] = "the dispatch tracker is the allocator of record on CPU: attributed = tracked by construction"
        return out
    # Bytes live before tracking that the trace does not hold: none since traces hold every block
    # from the start (held_before_bytes); older traces held only registered ones.
    held = meta.get("held_before_bytes", meta.get("registered_before_bytes", 0))
    before = int(meta.get("allocated_before_bytes", 0)) - int(held)
    counters = trace.counters
    ev = memory_events(trace)
    if not counters.empty and not ev.empty:
        pos = np.searchsorted(ev["q"].to_numpy(), counters["q"].to_numpy(), side="right") - 1
        live = np.where(pos >= 0, ev["live"].to_numpy()[np.clip(pos, 0, None)], 0)
        gap = counters["allocated_bytes"].to_numpy() - before - live
        out.update(boundaries=int(len(gap)), max_abs_gap_bytes=int(np.abs(gap).max()), boundaries_exact=int((gap == 0).sum()))
    max_alloc = meta.get("max_memory_allocated_bytes")
    if max_alloc is not None and peak is not None:
        out["max_memory_allocated_bytes"] = int(max_alloc)
        out["trace_peak_bytes"] = peak.bytes + before
        out["peak_gap_bytes"] = int(max_alloc) - (peak.bytes + before)
    if isinstance(meta.get("allocator_layout"), dict):
        out["block_sizes"] = meta["allocator_layout"]
    return out


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


def kv_bytes(trace: Trace) -> dict[str, Any] | None:
    """KV byte counts of the last recorded cache state, both compression ratios, and the dtype
    whose element size the logical bytes are counted at (`logical_dtype`)."""
    kv = trace.kv
    if kv.empty:
        return None
    last = kv.iloc[-1]
    logical, stored, resident = int(last.logical_bytes), int(last.stored_bytes), int(last.resident_bytes)
    return {
        "chunk": int(last.chunk), "logical_bytes": logical, "logical_dtype": logical_dtype(trace.meta),
        "stored_bytes": stored, "resident_bytes": resident,
        "ratio_stored": logical / stored if stored else None, "ratio_resident": logical / resident if resident else None,
    }


def summarize(trace: Trace) -> dict[str, Any]:
    """The summary.json of a trace (DESIGN section 7), computed from its tables."""
    peak = find_peak(trace)
    a = trace.allocations
    live_end = a[a["q_free"] == NO_FREE].groupby("category")["bytes"].sum()
    times = stage_times(trace)
    return {
        "status": trace.status,
        "peak": None if peak is None else peak.to_dict(),
        "live_at_end_by_category": {str(k): int(v) for k, v in live_end.items() if v},
        "stage_times": times.astype(object).where(times.notna(), None).to_dict(orient="records"),  # no NaN in JSON
        "kv": kv_bytes(trace),
        "kv_per_chunk": trace.kv.to_dict(orient="records"),
        "reconciliation": reconcile(trace, peak),
        "wall_s": trace.meta.get("wall_s"),
        "allocation_events": int(len(a)),
    }
