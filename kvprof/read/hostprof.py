"""Host vs device time per stage kind, joined with the py-spy host profile (issue 8).

Per stage kind (a span's own name, as in `analysis.stage_times`), all inclusive of nested spans:
  host_ms       the spans' wall time on the host clock
  device_ms     CUDA: the CUDA-event time; CPU: the time inside aten ops (the dispatch tracker's
                `op_ms`: the work a device would do)
  tracer_ms     the dispatch tracker's own bookkeeping inside the spans (CPU)
  host_only_ms  CPU: host_ms - device_ms - tracer_ms, the host's Python time outside ops and
                outside kvprof; CUDA: not separable (NaN)
  host_syncs    host syncs counted by the tracer (tracers.host_sync)
  profiled_ms   time of the host profile (py-spy) that falls inside the spans
  top_frames    the innermost frames of the code under study (not torch, not kvprof's tracers)
                holding that time, longest first

A stage kind is host-bound when, over its spans in the run proper (everything but the top-level
`setup`: imports, model construction and weight loading are one-time host work), its host-only
time is at least HOST_BOUND_RATIO times its device time and at least HOST_BOUND_MIN_SHARE of the
run's host time (and HOST_BOUND_MIN_MS). Time inside nested stages that are themselves host-bound
is taken out of both sides first (deepest kinds decided first), so a Python loop flags the stage
that runs it, not every stage around it. Kinds seen only inside `setup` get no flag (NA).

On CUDA the flag is not computed: the CUDA-event time of a span includes the GPU's idle gaps while
it waits for the host, so a host-bound stage shows device ms close to host ms, not far below; the
sync count and the py-spy frames are the evidence there. Everything here is plain data; the
summary, `kvprof compare`, the Perfetto export and the TUI render it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kvprof.read.trace import Trace
from tracers.host_stacks import host_slices, read_host_intervals, read_host_profile
from tracers.trace_io import NO_FREE

__all__ = [
    "HOST_BOUND_RATIO", "HOST_BOUND_MIN_SHARE", "HOST_BOUND_MIN_MS", "STAGE_COLUMNS", "host_intervals_of", "host_stage_table",
    "host_bound_share", "host_profile_summary", "host_summary_lines", "perfetto_host_events",
]

HOST_BOUND_RATIO = 4.0  # host-only time at least this many times the device time ...
HOST_BOUND_MIN_SHARE = 0.02  # ... and at least this share of the run's host time (it matters) ...
HOST_BOUND_MIN_MS = 1.0  # ... and at least this much (below, timer noise)
SETUP_STAGE = "setup"  # top-level stage of one-time host work, outside the host-bound analysis
TOP_FRAMES = 3
STAGE_COLUMNS = ["stage", "count", "host_ms", "device_ms", "tracer_ms", "host_only_ms", "host_syncs",
                 "profiled_ms", "top_frames", "host_bound"]
CUDA_FLAG_NOTE = ("not computed on CUDA: CUDA-event time includes the GPU's idle gaps waiting for the host, "
                  "so host-bound stages show device ms close to host ms; see host_syncs and top_frames")


def _device_kind(trace: Trace) -> str:
    return "cuda" if (trace.meta.get("environment") or {}).get("device_type") == "cuda" or \
        trace.meta.get("tracker") == "cuda-allocator-history" else "cpu"


def host_intervals_of(trace: Trace) -> pd.DataFrame | None:
    """The trace's aligned host profile as disjoint intervals (see tracers.host_profile), or None."""
    try:
        return read_host_intervals(trace.path, trace.meta.get("host_profile"))
    except (ValueError, OSError):
        return None


def _span_frame(trace: Trace) -> pd.DataFrame:
    """Spans with per-span host, device, tracer and host-only ms (NaN where not measured)."""
    s = trace.spans
    end = s["t_end_ns"].where(s["t_end_ns"] != NO_FREE, int(s["t_start_ns"].max()) if len(s) else 0)
    out = pd.DataFrame({"id": s["id"], "parent": s["parent"], "name": s["name"].astype(str), "depth": s["depth"],
                        "t0": s["t_start_ns"], "t1": end, "host_ms": s["host_ms"]})
    top = {}  # span id -> name of its top-level ancestor
    for sid, par, name in zip(out["id"], out["parent"], out["name"]):
        top[sid] = top.get(par, name) if par else name
    out["in_run"] = out["id"].map(top) != SETUP_STAGE
    op = s["op_ms"] if "op_ms" in s else pd.Series(np.nan, index=s.index)
    tracer = s["tracer_ms"] if "tracer_ms" in s else pd.Series(np.nan, index=s.index)
    out["host_syncs"] = s["host_syncs"] if "host_syncs" in s else pd.Series(pd.NA, index=s.index, dtype="Int64")
    if _device_kind(trace) == "cuda":
        out["device_ms"] = s["device_ms"]
        out["tracer_ms"] = tracer
        out["host_only_ms"] = np.nan
    else:
        measured = bool((trace.meta.get("host_activity") or {}).get("op_time")) or op.notna().any()
        out["device_ms"] = op.fillna(0.0) if measured else np.nan
        out["tracer_ms"] = tracer.fillna(0.0) if measured else np.nan
        out["host_only_ms"] = (out["host_ms"] - out["device_ms"] - out["tracer_ms"]).clip(lower=0.0)
    return out


def _profiled(spans: pd.DataFrame, intervals: pd.DataFrame | None) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Profiled ms per stage kind, and ms per innermost code frame per kind."""
    per_kind: dict[str, float] = {}
    frames: dict[str, dict[str, float]] = {}
    if intervals is None or intervals.empty:
        return per_kind, frames
    iv = intervals.sort_values("t_start_ns")
    starts = iv["t_start_ns"].to_numpy()
    ends = iv["t_end_ns"].to_numpy()
    codes, labels = pd.factorize(iv["code_frame"])
    for name, t0, t1 in zip(spans["name"], spans["t0"], spans["t1"]):
        i0 = int(np.searchsorted(ends, t0, side="right"))
        i1 = int(np.searchsorted(starts, t1, side="left"))
        if i1 <= i0:
            per_kind.setdefault(name, 0.0)
            continue
        ov = (np.minimum(ends[i0:i1], t1) - np.maximum(starts[i0:i1], t0)).clip(min=0) / 1e6
        per_kind[name] = per_kind.get(name, 0.0) + float(ov.sum())
        by = np.bincount(codes[i0:i1], weights=ov, minlength=len(labels))
        acc = frames.setdefault(name, {})
        for j in np.flatnonzero(by):
            acc[labels[j]] = acc.get(labels[j], 0.0) + float(by[j])
    return per_kind, frames


def _host_bound_kinds(spans: pd.DataFrame) -> dict[str, bool]:
    """Host-bound flag per kind seen in the run proper, deciding the deepest kinds first and
    taking the time of already-flagged descendants out of each span (see module doc)."""
    spans = spans[spans["in_run"]]
    run_ms = float(spans.loc[spans["depth"] == 0, "host_ms"].sum())
    floor_ms = max(HOST_BOUND_MIN_MS, HOST_BOUND_MIN_SHARE * run_ms)
    ids = spans["id"].tolist()
    parent = dict(zip(ids, spans["parent"].tolist()))
    kind = dict(zip(ids, spans["name"].tolist()))
    host = dict(zip(ids, spans["host_only_ms"].fillna(0.0).tolist()))
    dev = dict(zip(ids, spans["device_ms"].fillna(0.0).tolist()))
    depth = dict(zip(ids, spans["depth"].tolist()))
    bottom_up = sorted(ids, key=lambda i: -depth[i])
    kind_depth: dict[str, int] = {}
    for i in ids:
        kind_depth[kind[i]] = max(kind_depth.get(kind[i], 0), depth[i])
    flags: dict[str, bool] = {}
    incl_host: dict[str, float] = {}
    for i in ids:
        incl_host[kind[i]] = incl_host.get(kind[i], 0.0) + host[i]
    for k in sorted(kind_depth, key=lambda k: -kind_depth[k]):
        if incl_host[k] < floor_ms:  # excluding flagged descendants only lowers it
            flags[k] = False
            continue
        # covered[i]: host-only and device ms of span i that lie inside flagged descendants
        covered: dict[int, tuple[float, float]] = {}
        h_sum = d_sum = 0.0
        for i in bottom_up:
            ch, cd = covered.get(i, (0.0, 0.0))
            if kind[i] == k:
                h_sum += host[i] - ch
                d_sum += dev[i] - cd
            up = (host[i], dev[i]) if flags.get(kind[i]) else (ch, cd)
            p = parent[i]
            if p:
                ph, pd_ = covered.get(p, (0.0, 0.0))
                covered[p] = (ph + up[0], pd_ + up[1])
        flags[k] = h_sum >= floor_ms and h_sum >= HOST_BOUND_RATIO * max(d_sum, 0.0)
    return flags


def host_stage_table(trace: Trace, intervals: pd.DataFrame | None = None, top: int = TOP_FRAMES,
                     profile: bool = True) -> pd.DataFrame:
    """Per stage kind: the columns of STAGE_COLUMNS (module doc), sorted by host ms. `intervals`
    default to the trace's own host profile; `profile=False` skips it (profiled_ms NaN, no frames)."""
    spans = _span_frame(trace)
    if spans.empty:
        return pd.DataFrame(columns=STAGE_COLUMNS)
    if intervals is None and profile:
        intervals = host_intervals_of(trace)
    profiled, frames = _profiled(spans, intervals)
    g = spans.groupby("name", sort=False)
    out = g.agg(count=("id", "size"), host_ms=("host_ms", "sum"), device_ms=("device_ms", lambda x: x.sum(min_count=1)),
                tracer_ms=("tracer_ms", lambda x: x.sum(min_count=1)),
                host_only_ms=("host_only_ms", lambda x: x.sum(min_count=1)),
                host_syncs=("host_syncs", lambda x: x.sum(min_count=1))).reset_index().rename(columns={"name": "stage"})
    out["profiled_ms"] = out["stage"].map(profiled) if intervals is not None else np.nan
    out["top_frames"] = [
        [{"frame": f, "ms": round(ms, 3)} for f, ms in sorted(frames.get(k, {}).items(), key=lambda kv: -kv[1])[:top]]
        for k in out["stage"]
    ]
    if _device_kind(trace) == "cuda" or spans["device_ms"].isna().all():
        out["host_bound"] = pd.array([pd.NA] * len(out), dtype="boolean")
    else:
        flags = _host_bound_kinds(spans)
        out["host_bound"] = pd.array([flags.get(k, pd.NA) for k in out["stage"]], dtype="boolean")
    out["host_syncs"] = pd.to_numeric(out["host_syncs"], errors="coerce").astype("Int64")
    return out[STAGE_COLUMNS].sort_values("host_ms", ascending=False, kind="stable").reset_index(drop=True)


def host_bound_share(trace: Trace, table: pd.DataFrame | None = None) -> float | None:
    """Share of the run's host time (its top-level stages) spent in host-bound stages, counting
    only the outermost host-bound span of a nest. None where the flag is not computed."""
    table = host_stage_table(trace, profile=False) if table is None else table
    if table.empty or table["host_bound"].isna().all():
        return None
    flagged = set(table.loc[table["host_bound"].fillna(False), "stage"])
    s = trace.spans
    total = float(s.loc[s["depth"] == 0, "host_ms"].sum())
    if not total:
        return None
    parent = dict(zip(s["id"], s["parent"]))
    kind = dict(zip(s["id"], s["name"].astype(str)))
    inside = 0.0
    for sid, name, ms in zip(s["id"], s["name"].astype(str), s["host_ms"]):
        if name not in flagged or pd.isna(ms):
            continue
        p = parent[sid]
        while p and kind.get(p) not in flagged:
            p = parent.get(p, 0)
        if not p:  # outermost flagged span of its nest
            inside += float(ms)
    return inside / total


def host_profile_summary(trace: Trace) -> dict[str, Any]:
    """`Summary.host_profile`: the profile's status (and why there is none), alignment, the
    per-stage table and the host-bound stages. The table is there even without py-spy (host
    syncs, op and tracer time come from the tracer)."""
    info = dict(trace.meta.get("host_profile") or {"status": "off", "reason": "not requested (kvprof trace --host-profile)"})
    intervals = host_intervals_of(trace)
    table = host_stage_table(trace, intervals)
    out: dict[str, Any] = {k: info.get(k) for k in ("status", "reason", "file", "rate_hz", "native", "py_spy", "note")
                           if info.get(k) is not None or k in ("status", "reason")}
    align = info.get("alignment") or {}
    if align.get("error_bound_ns") is not None:
        out["alignment_error_ms"] = align["error_bound_ns"] / 1e6
    if intervals is not None:
        out["profiled_ms"] = float(((intervals["t_end_ns"] - intervals["t_start_ns"]).sum()) / 1e6)
    cuda = _device_kind(trace) == "cuda"
    out["device_time"] = "CUDA events" if cuda else "time inside aten ops (CPU dispatch tracker)"
    out["host_bound_rule"] = CUDA_FLAG_NOTE if cuda else (
        f"host-only ms >= {HOST_BOUND_RATIO:g} x device ms and >= {HOST_BOUND_MIN_SHARE:.0%} of the run's host "
        f"time (>= {HOST_BOUND_MIN_MS:g} ms), over the stages outside '{SETUP_STAGE}'; time of host-bound nested "
        "stages excluded")
    out["host_bound_stages"] = [str(k) for k in table.loc[table["host_bound"].fillna(False), "stage"]]
    out["host_bound_share"] = host_bound_share(trace, table)
    records = []
    for r in table.to_dict(orient="records"):
        records.append({k: (None if v is pd.NA or (isinstance(v, float) and np.isnan(v)) else
                            bool(v) if k == "host_bound" else int(v) if k == "host_syncs" else v) for k, v in r.items()})
    out["stages"] = records
    return out


def host_summary_lines(hp: dict[str, Any] | None, rows: int = 10) -> list[str]:
    """Plain-text lines of `Summary.host_profile` for `kvprof summary` / `kvprof trace` (print
    them without markup: frames hold brackets)."""
    if not hp:
        return []
    status = hp.get("status")
    head = f"host profile: {status}"
    if status == "recorded":
        head += f" ({hp.get('rate_hz')} Hz{', native' if hp.get('native') else ''}, {hp.get('file')}"
        if hp.get("alignment_error_ms") is not None:
            head += f", aligned within {hp['alignment_error_ms']:.1f} ms"
        head += ")"
    lines = [head + (f": {hp['reason']}" if hp.get("reason") else "")]
    bound = hp.get("host_bound_stages") or []
    share = hp.get("host_bound_share")
    if share is not None:
        lines.append(f"host-bound stages: {', '.join(bound) if bound else 'none'}"
                     + (f" ({100 * share:.1f}% of the run's host time)" if bound else ""))
    else:
        lines.append(f"host-bound: {hp.get('host_bound_rule')}")
    lines.append(f"{'stage':<20} {'host ms':>10} {'device ms':>10} {'host-only':>10} {'syncs':>6}  top frame")

    def ms(v: Any) -> str:
        return "-" if v is None else f"{v:,.1f}"

    for r in (hp.get("stages") or [])[:rows]:
        frame = r["top_frames"][0]["frame"] if r.get("top_frames") else ""
        flag = " *" if r.get("host_bound") else ""
        syncs = "-" if r.get("host_syncs") is None else str(r["host_syncs"])
        lines.append(f"{str(r['stage']) + flag:<20} {ms(r.get('host_ms')):>10} {ms(r.get('device_ms')):>10} "
                     f"{ms(r.get('host_only_ms')):>10} {syncs:>6}  {frame}")
    lines.append(f"device ms: {hp.get('device_time')}; * host-bound")
    return lines


def perfetto_host_events(trace: Trace, pid: int, tid: int) -> list[dict[str, Any]]:
    """The host profile as Chrome trace events on its own track: a thread_name record and one
    complete slice per py-spy frame (nested like the stack), trace clock. Empty without a profile."""
    info = trace.meta.get("host_profile")
    try:
        found = read_host_profile(trace.path, info)
    except (ValueError, OSError):
        return []
    if found is None:
        return []
    assert info is not None
    slices = host_slices(found[0], info.get("thread_ident"), found[1])
    rate = info.get("rate_hz")
    events: list[dict[str, Any]] = [{"ph": "M", "pid": pid, "tid": tid, "name": "thread_name",
                                     "args": {"name": f"host stacks (py-spy, {rate} Hz)"}}]
    for r in slices.itertuples(index=False):
        args: dict[str, Any] = {"file": r.file}
        if not pd.isna(r.line):
            args["line"] = int(r.line)
        events.append({"ph": "X", "pid": pid, "tid": tid, "name": str(r.function), "cat": "host",
                       "ts": int(r.t_start_ns) / 1e3, "dur": max(0, int(r.t_end_ns) - int(r.t_start_ns)) / 1e3,
                       "args": args})
    return events
