"""The bf16 reference of a trace: the one definition of "a trace of the same shape", used by
diagnose (its baseline), compare (each sweep row's baseline) and quality (the reference run).

Two traces have the same shape when config, the rollout fields that decide memory and the
device type agree. Finding one reads only meta.json files; running one is the recorder's job
(`kvprof.runner.run_baseline`), never a reader's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from kvprof.errors import UsageError
from kvprof.read.trace import Trace, list_traces, load_trace
from tracers.trace_io import TraceError

__all__ = ["REFERENCE_METHOD", "ROLLOUT_KEYS", "rollout_key", "shape_key", "baseline_mismatch", "find_baseline"]

REFERENCE_METHOD = "bf16"
# Rollout fields that decide memory: a baseline must agree on all of them.
ROLLOUT_KEYS: tuple[str, ...] = (
    "frames", "seed", "batch", "chunk_frames", "timesteps", "attn_window_frames", "rolling_frames",
    "sink_frames", "decode", "free_cache_before_decode",
)


def rollout_key(meta: dict[str, Any]) -> dict[str, Any]:
    """The memory-deciding rollout fields of a trace's meta (sequences as lists)."""
    r = meta.get("rollout") or {}
    return {k: (list(r[k]) if isinstance(r.get(k), (list, tuple)) else r.get(k)) for k in ROLLOUT_KEYS}


def shape_key(meta: dict[str, Any]) -> str:
    """One string per shape: config, rollout key and device type (equal strings: same shape)."""
    env = (meta.get("environment") or {}).get("device_type")
    return json.dumps([meta.get("config"), rollout_key(meta), env], sort_keys=True, default=str)


def baseline_mismatch(trace: Trace, baseline: Trace) -> list[str]:
    """What differs between a trace and a would-be bf16 baseline (empty: a valid baseline)."""
    out = []
    if baseline.meta.get("method") != REFERENCE_METHOD:
        out.append(f"method is {baseline.meta.get('method')!r}, not {REFERENCE_METHOD!r}")
    if (trace.meta.get("config") or {}) != (baseline.meta.get("config") or {}):
        a, b = trace.meta.get("config") or {}, baseline.meta.get("config") or {}
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        out.append("config differs in " + ", ".join(f"{k} ({a.get(k)!r} vs {b.get(k)!r})" for k in keys))
    ra, rb = rollout_key(trace.meta), rollout_key(baseline.meta)
    for k in ROLLOUT_KEYS:
        if ra[k] != rb[k]:
            out.append(f"rollout {k} differs ({ra[k]!r} vs {rb[k]!r})")
    da = (trace.meta.get("environment") or {}).get("device_type")
    db = (baseline.meta.get("environment") or {}).get("device_type")
    if da != db:
        out.append(f"device type differs ({da!r} vs {db!r})")
    return out


def find_baseline(trace: Trace, roots: Sequence[str | Path] | None = None) -> Trace | None:
    """The first complete bf16 trace of the same shape under `roots` (default: the trace's own
    parent folder and ./traces), or None."""
    roots = list(roots) if roots else [trace.path.parent, Path("traces")]
    seen: set[Path] = set()
    want = shape_key(trace.meta)
    for root in roots:
        for folder in list_traces(root):
            real = folder.resolve()
            if real in seen or real == trace.path.resolve():
                continue
            seen.add(real)
            try:
                meta = json.loads((folder / "meta.json").read_text())
            except (OSError, ValueError):
                continue
            if meta.get("method") != REFERENCE_METHOD or meta.get("status") != "complete" or shape_key(meta) != want:
                continue
            try:
                return load_trace(folder)
            except (TraceError, UsageError):
                continue
    return None
