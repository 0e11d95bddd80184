"""`kvprof export TRACE --format perfetto|csv|parquet|snapshot`.

- perfetto: Chrome trace-event JSON (opens in ui.perfetto.dev and chrome://tracing): stage
  spans as complete slices ('X', host clock, device ms in args), live bytes per category and in
  total as counter tracks ('C'), the peak as an instant event, and the py-spy host stacks (when
  the trace has a host profile) as nested slices on their own track beside the stages. Counters
  are exact for traces up to `max_counter_rows` memory events; larger traces are reduced with the
  peak-keeping envelope.
- csv / parquet: a folder of tables for pandas: the trace's own five tables as the trace folder
  holds them (allocations, spans, samples, counters, kv: one table, one shape), plus `stages`
  (each span's path, kind path, depth, chunk, pass and phase; join allocations.span_id = stages.id)
  and the wide memory `timeline`. Parquet files carry their column descriptions.
- snapshot: for GPU traces, a PyTorch allocator snapshot (the pickle `torch.cuda.memory._snapshot()`
  returns; PyTorch's memory visualizer, pytorch.org/memory_viz, opens it) RECONSTRUCTED from the
  allocation table: addresses are synthetic, frames name the stage and category, segments hold
  the blocks live at the end. It is not the allocator's own snapshot.
"""
from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kvprof.read.analysis import find_peak, timeline
from kvprof.read.compare import open_trace, trace_label
from kvprof.errors import UsageError
from kvprof.read.hostprof import perfetto_host_events
from kvprof.read.phases import envelope, span_phases
from kvprof.read.trace import Trace
from tracers.categories import CATEGORIES
from tracers.table_schema import write_parquet
from tracers.trace_io import META_FILE, NO_FREE, write_atomic

__all__ = ["FORMATS", "perfetto_trace", "allocator_snapshot", "table_frames", "export", "default_output"]

FORMATS: tuple[str, ...] = ("perfetto", "csv", "parquet", "snapshot")
PID = 1
TID_STAGES = 1
TID_MEMORY = 2
TID_HOST = 3  # py-spy host stacks, when the trace has a host profile
MAX_COUNTER_ROWS = 400_000  # memory events written exactly; beyond, an envelope of half as many buckets
SNAPSHOT_NOTE = (
    "reconstructed by kvprof from the trace's allocation table: addresses are synthetic, frames "
    "name the stage and category of each allocation; not the CUDA allocator's own snapshot"
)
_ADDRESS_BASE = 0x7F0000000000
_ALIGN = 512  # the CUDA caching allocator's block granularity


def default_output(trace: Trace, fmt: str) -> Path:
    """Where `export` writes when no output is given: beside the working directory, named by run."""
    name = trace.path.name
    return Path({"perfetto": f"{name}.perfetto.json", "csv": f"{name}-csv", "parquet": f"{name}-parquet",
                 "snapshot": f"{name}.snapshot.pickle"}[fmt])


# --------------------------------------------------------------------------- perfetto
def perfetto_trace(trace: Trace, max_counter_rows: int = MAX_COUNTER_ROWS) -> dict[str, Any]:
    """The trace as a Chrome trace-event JSON object (ts and dur in microseconds)."""
    events: list[dict[str, Any]] = [
        {"ph": "M", "pid": PID, "tid": 0, "name": "process_name", "args": {"name": f"kvprof {trace_label(trace)}"}},
        {"ph": "M", "pid": PID, "tid": TID_STAGES, "name": "thread_name", "args": {"name": "stages (host clock)"}},
        {"ph": "M", "pid": PID, "tid": TID_MEMORY, "name": "thread_name", "args": {"name": "memory"}},
    ]
    spans = trace.spans
    wide = timeline(trace)
    last_ns = int(max([0, *spans["t_end_ns"].tolist(), *spans["t_start_ns"].tolist(), *wide["t_ns"].tail(1).tolist()]))
    for r in spans.itertuples(index=False):
        end = int(r.t_end_ns) if int(r.t_end_ns) != NO_FREE else last_ns
        args: dict[str, Any] = {"path": str(r.path)}
        if not pd.isna(r.host_ms):
            args["host_ms"] = float(r.host_ms)
        if not pd.isna(r.device_ms):
            args["device_ms"] = float(r.device_ms)
        if int(r.t_end_ns) == NO_FREE:
            args["open"] = "span never closed (trace ended first)"
        elem = str(r.name) if pd.isna(r.index) else f"{r.name}[{int(r.index)}]"
        events.append({"ph": "X", "pid": PID, "tid": TID_STAGES, "name": elem, "cat": "stage",
                       "ts": int(r.t_start_ns) / 1e3, "dur": max(0, end - int(r.t_start_ns)) / 1e3, "args": args})
    note = "exact: one counter update per allocation event"
    if not wide.empty:
        if len(wide) > max_counter_rows:
            wide = envelope(wide, "t_ns", "total", max(1, max_counter_rows // 2))
            note = f"reduced to {len(wide)} rows, keeping each time bucket's min and max (the peak is exact)"
        cats = [c for c in CATEGORIES if (wide[c] != 0).any()]
        values = wide[cats].to_numpy(dtype=np.int64)
        totals = wide["total"].to_numpy(dtype=np.int64)
        ts = wide["t_ns"].to_numpy(dtype=np.int64) / 1e3
        prev = np.full(len(cats), -1, dtype=np.int64)
        for i in range(len(wide)):
            changed = np.flatnonzero(values[i] != prev)
            for j in changed:
                events.append({"ph": "C", "pid": PID, "tid": TID_MEMORY, "name": f"live bytes: {cats[j]}",
                               "ts": float(ts[i]), "args": {"bytes": int(values[i, j])}})
            events.append({"ph": "C", "pid": PID, "tid": TID_MEMORY, "name": "live bytes: total",
                           "ts": float(ts[i]), "args": {"bytes": int(totals[i])}})
            prev = values[i]
    events.extend(perfetto_host_events(trace, PID, TID_HOST))
    peak = find_peak(trace)
    if peak is not None:
        events.append({"ph": "i", "s": "g", "pid": PID, "tid": TID_MEMORY, "name": "peak", "ts": peak.t_ns / 1e3,
                       "args": {"bytes": peak.bytes, "stage": peak.stage}})
    events.sort(key=lambda e: (e.get("ts", -1.0), 0 if e["ph"] == "M" else 1))
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"kvprof_trace": str(trace.path), "status": trace.status, "counters": note,
                      "peak_bytes": None if peak is None else peak.bytes,
                      "host_profile": (trace.meta.get("host_profile") or {}).get("status", "off")},
    }


# --------------------------------------------------------------------------- tables
def table_frames(trace: Trace) -> dict[str, pd.DataFrame]:
    """The trace's five tables unchanged (the shape the trace folder has), `stages` (per span id:
    path, kind path, depth, chunk, pass and phase) and the wide `timeline`."""
    spans = trace.spans
    stages = spans[["id", "path", "kind_path", "depth", "chunk", "pass_name"]].copy()
    phases = span_phases(trace).set_index("id")["phase"]
    stages["phase"] = stages["id"].map(phases).astype("string")
    return {
        **{name: trace.raw.tables[name] for name in ("allocations", "spans", "samples", "counters", "kv")},
        "stages": stages.reset_index(drop=True),
        "timeline": timeline(trace),
    }


# --------------------------------------------------------------------------- snapshot
def allocator_snapshot(trace: Trace, device: int | None = None) -> dict[str, Any]:
    """A PyTorch-style allocator snapshot rebuilt from a GPU trace's allocation table (see module doc)."""
    if trace.meta.get("tracker") != "cuda-allocator-history":
        raise UsageError(
            f"{trace.path}: snapshot export needs a GPU trace (meta tracker 'cuda-allocator-history'), this one was "
            f"recorded by the {trace.meta.get('tracker', '?')!r} tracker; use --format perfetto, csv or parquet")
    dev = int(device if device is not None else trace.meta.get("device_index", 0) or 0)
    a = trace.allocations_with_stage
    sizes = a["bytes"].to_numpy(dtype=np.int64)
    padded = (sizes + _ALIGN - 1) // _ALIGN * _ALIGN
    addrs = _ADDRESS_BASE + np.concatenate([[0], np.cumsum(padded)[:-1]]) if len(a) else np.array([], dtype=np.int64)
    t0_us = int(trace.meta.get("started_unix_ns", 0)) // 1000
    # One shared frame list per (stage, category, name): the pickle stores each once.
    frame_cache: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    frames_of: list[list[dict[str, Any]]] = []
    cats = a["category"].astype(str).tolist()
    names = a["name"].astype(object).where(a["name"].notna(), "").tolist()
    for path, cat, name in zip(a["path"].astype(str).tolist(), cats, names):
        key = (path, cat, name)
        if key not in frame_cache:
            label = f"[{cat}] {name}" if name else f"[{cat}]"
            frame_cache[key] = [{"filename": f"kvprof stage {path}", "line": 0, "name": label}]
        frames_of.append(frame_cache[key])
    q_alloc, q_free = a["q_alloc"].to_numpy(), a["q_free"].to_numpy()
    t_alloc = t0_us + a["t_alloc_ns"].to_numpy() // 1000
    t_free = t0_us + a["t_free_ns"].to_numpy() // 1000
    entries: list[tuple[int, int, dict[str, Any]]] = []
    for i in range(len(a)):
        base = {"addr": int(addrs[i]), "size": int(sizes[i]), "stream": 0, "frames": frames_of[i],
                "user_metadata": cats[i], "compile_context": ""}
        entries.append((int(q_alloc[i]), 0, {"action": "alloc", "time_us": int(t_alloc[i]), **base}))
        if int(q_free[i]) != NO_FREE:
            entries.append((int(q_free[i]), 1, {"action": "free_requested", "time_us": int(t_free[i]), **base}))
            entries.append((int(q_free[i]), 2, {"action": "free_completed", "time_us": int(t_free[i]), **base}))
    entries.sort(key=lambda e: (e[0], e[1]))
    trace_events = [e[2] for e in entries]

    live = np.flatnonzero(a["q_free"].to_numpy() == NO_FREE)
    segments = []
    if len(live):
        start = int(addrs[live[0]])
        blocks, cursor, active, requested = [], start, 0, 0
        for i in live:
            addr = int(addrs[i])
            if addr > cursor:
                blocks.append({"address": cursor, "size": addr - cursor, "requested_size": 0, "state": "inactive", "frames": []})
            blocks.append({"address": addr, "size": int(padded[i]), "requested_size": int(sizes[i]),
                           "state": "active_allocated", "frames": frames_of[i]})
            active += int(padded[i])
            requested += int(sizes[i])
            cursor = addr + int(padded[i])
        segments.append({
            "device": dev, "address": start, "total_size": cursor - start, "allocated_size": active,
            "active_size": active, "requested_size": requested, "stream": 0, "segment_type": "large",
            "segment_pool_id": (0, 0), "is_expandable": False, "frames": [], "blocks": blocks,
        })
    device_traces: list[list[dict[str, Any]]] = [[] for _ in range(dev + 1)]
    device_traces[dev] = trace_events
    return {
        "segments": segments,
        "device_traces": device_traces,
        "allocator_settings": {},
        "kvprof": {"reconstructed": True, "note": SNAPSHOT_NOTE, "trace": str(trace.path)},
    }


# --------------------------------------------------------------------------- entry point
def export(trace: str | Path | Trace, fmt: str, out: str | Path | None = None) -> Path:
    """Export `trace` as `fmt` to `out` (a file for perfetto/snapshot, a folder for csv/parquet;
    default: beside the working directory, named after the run). Returns what was written."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: unknown export format; choose one of {', '.join(FORMATS)}")
    t = open_trace(trace)
    path = Path(out) if out is not None else default_output(t, fmt)
    if fmt in ("perfetto", "snapshot") and not path.parent.exists():
        raise UsageError(f"-o {path}: folder {path.parent} does not exist; create it first")
    folder = path if fmt in ("csv", "parquet") else path.parent
    if (folder / META_FILE).exists():  # its own tables would be overwritten, or files mixed into it
        raise UsageError(f"-o {path}: {folder} is a trace folder; export writes outside it (e.g. -o {folder.name}-{fmt})")
    # Each file goes through a temporary file renamed into place: a full disk leaves no half file.
    if fmt == "perfetto":
        data = json.dumps(perfetto_trace(t), separators=(",", ":")).encode()
        write_atomic(path, lambda tmp: tmp.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data))
    elif fmt == "snapshot":
        snap = pickle.dumps(allocator_snapshot(t))
        write_atomic(path, lambda tmp: tmp.write_bytes(snap))
    else:
        if path.exists() and not path.is_dir():
            raise UsageError(f"-o {path}: exists and is not a folder; {fmt} export writes one file per table into a folder")
        path.mkdir(parents=True, exist_ok=True)
        for name, df in table_frames(t).items():
            if fmt == "csv":
                write_atomic(path / f"{name}.csv", lambda tmp, df=df: df.to_csv(tmp, index=False))
            else:
                write_atomic(path / f"{name}.parquet", lambda tmp, df=df, name=name: write_parquet(tmp, name, df))
    return path
