"""`diagnose()`: the peak of a trace explained against its bf16 baseline (see the package doc)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from kvprof.diagnose.causes import detect_causes, groups
from kvprof.diagnose.context import TraceContext
from kvprof.diagnose.model import Diagnosis
from kvprof.diagnose.projections import project
from kvprof.diagnose.rank import rank_causes
from kvprof.errors import UsageError
from kvprof.read.analysis import find_peak, kv_bytes
from kvprof.read.baseline import baseline_mismatch, find_baseline
from kvprof.read.compare import open_trace, trace_codes, trace_label
from kvprof.read.phases import CACHE_CATEGORIES, phase_notes, phase_peaks
from kvprof.read.trace import Trace
from kvprof.units import fmt_bytes

__all__ = ["diagnose", "phase_at", "compare_dicts"]


def phase_at(ctx: TraceContext, q: int) -> str:
    """The phase of the allocation made at order key q (the peak event)."""
    views = ctx.trace.known_views
    rows = None if views is None else views.rows_at(q)  # a key moment: the allocation made then is stored
    a = ctx.trace.allocations if rows is None else rows
    hit = a[a["q_alloc"] == q]
    return str(ctx.phase_of(hit.iloc[:1]).iloc[0]) if not hit.empty else "?"


def compare_dicts(a: dict[str, int], b: dict[str, int] | None, key: str) -> pd.DataFrame:
    keys = list(dict.fromkeys([*a, *(b or {})]))
    rows = []
    for k in keys:
        row = {key: k, "trace_bytes": int(a.get(k, 0))}
        if b is not None:
            row["baseline_bytes"] = int(b.get(k, 0))
            row["delta_bytes"] = row["trace_bytes"] - row["baseline_bytes"]
        rows.append(row)
    df = pd.DataFrame(rows, columns=[key, "trace_bytes", *(["baseline_bytes", "delta_bytes"] if b is not None else [])])
    sort = "delta_bytes" if b is not None else "trace_bytes"
    return df.reindex(df[sort].abs().sort_values(ascending=False).index).reset_index(drop=True)


def diagnose(
    trace: str | Path | Trace,
    baseline: str | Path | Trace | None = None,
    *,
    traces_root: Sequence[str | Path] | str | Path | None = None,
    run_baseline: Callable[[Trace, Path], Path] | None = None,
) -> Diagnosis:
    """Explain the peak of `trace` against a bf16 baseline (given; else found under
    `traces_root`, default the trace's parent folder and ./traces; else, when the caller passes
    `run_baseline` (the recorder's `kvprof.runner.run_baseline`), run now). Works on incomplete
    (oom, failed, interrupted, live) traces."""
    t = open_trace(trace)
    notes: list[str] = []
    if t.status not in ("complete",):
        notes.append(f"trace status is {t.status!r}: it covers the run up to its end" + (f" ({t.meta.get('error')})" if t.meta.get("error") else ""))
    peak = find_peak(t, top=20)
    if peak is None:
        raise UsageError(f"{t.path}: the trace recorded no allocations, so there is no peak to explain; "
                         "check that the run got past setup ('kvprof summary' shows its status)")
    ctx = TraceContext(t)
    roots = [traces_root] if isinstance(traces_root, (str, Path)) else traces_root

    base: Trace | None = None
    found_by = None
    if baseline is not None:
        base = open_trace(baseline)
        found_by = "given"
        for m in baseline_mismatch(t, base):
            notes.append(f"baseline {base.path.name}: {m}; the comparison is not like for like")
    elif t.meta.get("method") == "bf16":
        notes.append("this trace is the bf16 reference itself: no baseline comparison")
    else:
        base = find_baseline(t, roots)
        found_by = "found by config and seed"
        if base is None and run_baseline is not None:
            base = open_trace(run_baseline(t, (roots or [t.path.parent])[0]))
            found_by = "run now with --run-baseline"
        if base is None:
            notes.append("no bf16 trace of the same config, rollout and seed found under "
                         f"{', '.join(str(r) for r in (roots or [t.path.parent, Path('traces')]))}; pass --baseline TRACE or "
                         "--run-baseline to compare")

    for who, tr in (("trace", t), ("baseline", base)):
        before = int((tr.meta.get("unregistered_before_bytes") or 0) if tr is not None else 0)
        if before:
            notes.append(f"{who} {tr.path.name}: {fmt_bytes(before)} were allocated before its tracing started and "
                         "not registered (tensors made before tracing, or earlier work in its process such as cuBLAS "
                         "workspaces) and count as 'unattributed'; where another trace made them itself, categories "
                         "differ by that much")

    phases = phase_peaks(t)
    peak_phase = phase_at(ctx, peak.q)
    live = ctx.live(peak.q)
    lives = {str(r.phase): (live if int(r.q) == peak.q else ctx.live(int(r.q))) for r in phases.itertuples()}

    base_peak = find_peak(base) if base is not None else None
    if base is not None and base_peak is None:
        notes.append(f"baseline {base.path}: no allocations recorded; ignored")
        base = None
    baseline_info = None
    base_kinds: set[str] = set()
    if base is not None and base_peak is not None:
        bctx = TraceContext(base)
        base_phase = phase_at(bctx, base_peak.q)
        baseline_info = {
            "path": str(base.path), "label": trace_label(base), "peak_bytes": base_peak.bytes,
            "peak_stage": base_peak.stage, "peak_phase": base_phase, "found_by": found_by, "status": base.status,
        }
        base_kinds = {c.kind for c in detect_causes(bctx, bctx.live(base_peak.q), base_phase, phase_peaks(base))}
        bpp = phase_peaks(base)[["phase", "peak_bytes"]].rename(columns={"peak_bytes": "baseline_peak_bytes"})
        phases_view = phases[["phase", "peak_bytes", "cache_bytes"]].merge(bpp, on="phase", how="left")
    else:
        phases_view = phases[["phase", "peak_bytes", "cache_bytes"]].copy()

    by_cat = compare_dicts(peak.by_category, base_peak.by_category if base_peak else None, "category")
    by_stage = compare_dicts(peak.by_stage, base_peak.by_stage if base_peak else None, "stage")
    causes = detect_causes(ctx, live, peak_phase, phases)
    if base_peak is not None and baseline_info is not None:
        causes = rank_causes(causes, peak.by_category, base_peak.by_category, base_kinds, peak.bytes - base_peak.bytes)
    setup_cache = int(live.loc[live["category"].isin(CACHE_CATEGORIES) & (live["phase"] == "setup"), "bytes"].sum())
    buffers = groups(live)
    projections = project(ctx, phases, lives, peak.bytes)
    return Diagnosis(
        trace=str(t.path), label=trace_label(t), method=t.meta.get("method"), integration=t.meta.get("integration"),
        codes=trace_codes(t.meta), status=t.status, error=t.meta.get("error"), peak_bytes=peak.bytes,
        peak_stage=peak.stage, peak_phase=peak_phase, peak_t_s=peak.t_ns / 1e9, baseline=baseline_info,
        by_category=by_cat, by_stage=by_stage, phases=phases_view, kv=kv_bytes(t), causes=causes,
        buffers=buffers, projections=projections, notes=notes, phase_notes=phase_notes(phases, setup_cache),
    )
