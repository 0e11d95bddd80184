"""`kvprof compare TRACE...`: one row per trace, as a DataFrame; text, JSON and CSV views of it.

Every value comes from the trace: meta.json (method, config, rollout, wall time), the peak of
the allocation table (or summary.json's copy of it), the KV table and the stage spans.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from kvprof.read.analysis import find_peak, kv_bytes, logical_label, stage_times
from kvprof.errors import UsageError
from kvprof.read.hostprof import host_bound_share
from kvprof.read.manifest import MANIFEST_FILE, is_sweep, result_traces
from kvprof.read.baseline import REFERENCE_METHOD, shape_key
from kvprof.read.trace import Trace, TraceError, list_traces, load_trace, meta_label
from kvprof.units import fmt_bytes, fmt_ms

__all__ = ["open_trace", "open_traces", "expand_trace_paths", "trace_codes", "trace_label", "trace_row", "compare_table",
           "shape_baselines", "format_compare", "TEXT_COLUMNS", "FORMATS", "LOSSLESS_METHODS"]

# Stage kinds whose device time gets its own column in the text view (all kinds are in JSON/CSV).
TEXT_STAGE_KINDS: tuple[str, ...] = ("denoise", "refresh", "kv_read", "kv_write", "attention", "decode")
TEXT_COLUMNS: tuple[str, ...] = (
    "trace", "method", "integration", "codes", "config", "frames", "status", "peak_bytes", "peak_stage",
    "logical_kv_bytes", "resident_kv_bytes", "stored_kv_bytes", "ratio_stored", "ratio_resident", "wall_s", "host_bound_share",
    *(f"ms_{k}" for k in TEXT_STAGE_KINDS),
)
# Methods that keep a plain full-precision buffer and store no codes (methods' `lossless`); traces
# written before meta.codes was null for them still say "int8".
LOSSLESS_METHODS: tuple[str, ...] = ("bf16", "flowcache_native")
DELTA_COLUMNS: tuple[str, ...] = ("peak_delta_bytes", "peak_vs_baseline", "resident_kv_delta_bytes", "wall_delta_s")
FORMATS: tuple[str, ...] = ("table", "json", "csv")


def open_trace(path: str | Path | Trace) -> Trace:
    """A loaded trace; UsageError naming the folder when it cannot be read."""
    if isinstance(path, Trace):
        return path
    try:
        trace = load_trace(path)
    except TraceError as exc:
        raise UsageError(f"{exc}; pass a folder written by 'kvprof trace' (see 'ls traces/')") from None
    for note in trace.raw.notes:  # what the reader skipped (a torn tail, damaged rows): never silent
        print(f"kvprof: warning: {note}", file=sys.stderr)
    return trace


def expand_trace_paths(paths: Iterable[str | Path | Trace]) -> list[str | Path | Trace]:
    """A folder that is not a trace but holds traces (e.g. `traces/`) stands for those traces,
    by name; a sweep folder (`kvprof sweep`) for its cells' traces, in matrix order; everything
    else is kept as given."""
    out: list[str | Path | Trace] = []
    for p in paths:
        if isinstance(p, Trace):
            out.append(p)
            continue
        folder = Path(p)
        if is_sweep(folder):  # a sweep stands for the trace of each cell that finished (torn attempts left out)
            found = result_traces(folder)
            if not found:
                raise UsageError(f"{folder}: a sweep with no finished cell yet; see {folder / MANIFEST_FILE}")
            out.extend(found)
            continue
        inner = sorted(list_traces(folder), key=lambda f: f.name) if folder.is_dir() and not (folder / "meta.json").exists() else []
        out.extend(inner if inner else [p])
    return out


def open_traces(paths: Iterable[str | Path | Trace]) -> list[Trace]:
    """Load several traces (a folder of traces counts as its traces); at least one is required."""
    traces = [open_trace(p) for p in expand_trace_paths(paths)]
    if not traces:
        raise UsageError("no trace given; pass one or more trace folders (e.g. traces/*)")
    return traces


def trace_codes(meta: dict[str, Any]) -> str | None:
    """The code storage of a trace (int8 / int16 / packed), None where the method stores no codes."""
    if meta.get("method") in LOSSLESS_METHODS or not meta.get("codes"):
        return None
    return str(meta["codes"])


def trace_label(trace: Trace) -> str:
    """Short human label: method/integration[/codes] (config, frames); no codes for lossless methods."""
    return meta_label({**trace.meta, "codes": trace_codes(trace.meta)})


def _peak_facts(trace: Trace) -> dict[str, Any]:
    summary = trace.summary
    peak = summary.peak if summary is not None and summary.status == trace.status else None
    if peak is None:
        peak = find_peak(trace)
    if peak is None:
        return {"peak_bytes": None, "peak_stage": None, "peak_t_s": None}
    return {"peak_bytes": peak.bytes, "peak_stage": peak.stage, "peak_t_s": peak.t_ns / 1e9}


def _quality(q: dict[str, Any] | None) -> dict[str, Any]:
    """Numeric quality metrics (Summary.quality), flattened to `quality_<name>` (missing ones are absent)."""
    out: dict[str, Any] = {}
    if not isinstance(q, dict):
        return out

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, (int, float)):
            out[prefix] = float(value)
        elif isinstance(value, dict):
            if "value" in value and isinstance(value["value"], (int, float)) and not isinstance(value["value"], bool):
                out[prefix] = float(value["value"])
                return
            for k, v in value.items():
                walk(f"{prefix}_{k}", v)

    for name, value in q.items():
        walk(f"quality_{name}", value)
    return out


def trace_row(trace: Trace) -> dict[str, Any]:
    """The comparison row of one trace (raw numbers: bytes in bytes, times in ms / s); `kvprof compare`
    and the TUI's compare view show it. `wall_s` is the run's wall time from the session's start to
    its close (meta.wall_s; None while a trace is still running); `ms_<stage>` device ms and
    `host_ms_<stage>` host ms per stage kind."""
    m = trace.meta
    cfg = m.get("config") or {}
    rollout = m.get("rollout") or {}
    row: dict[str, Any] = {
        "trace": trace.path.name,
        "path": str(trace.path),
        "method": m.get("method"),
        "integration": m.get("integration"),
        "codes": trace_codes(m),
        "config": cfg.get("name"),
        "dtype": cfg.get("dtype"),
        "frames": rollout.get("frames"),
        "seed": rollout.get("seed"),
        "device": (m.get("environment") or {}).get("device_name"),
        "tracker": m.get("tracker"),
        "status": trace.status,
    }
    row.update(_peak_facts(trace))
    kv = kv_bytes(trace)
    row.update(
        logical_kv_bytes=kv.logical_bytes if kv else None,
        logical_dtype=kv.logical_dtype if kv else None,
        stored_kv_bytes=kv.stored_bytes if kv else None,
        resident_kv_bytes=kv.resident_bytes if kv else None,
        ratio_stored=kv.ratio_stored if kv else None,
        ratio_resident=kv.ratio_resident if kv else None,
    )
    row["wall_s"] = m.get("wall_s")
    # Other processes on the GPU make wall and device times theirs too (bytes stay this trace's own).
    row["gpu_shared_by"] = m.get("other_gpu_processes_max")
    row["host_bound_share"] = host_bound_share(trace)  # None where not computed (CUDA, old traces)
    times = stage_times(trace)
    for stage, dev, host in zip(times["stage"], times["device_ms"], times["host_ms"]):
        row[f"ms_{stage}"] = float(dev)  # device ms; NaN where none was measured (CPU runs)
        row[f"host_ms_{stage}"] = float(host)
    row.update(_quality(None if trace.summary is None else trace.summary.quality))
    return row


def compare_table(
    traces: Sequence[str | Path | Trace],
    sort: str | None = None,
    baseline: str | Path | Trace | None = None,
) -> pd.DataFrame:
    """One row per trace. `sort` names any column (prefix '-' for descending). With a
    `baseline` trace, adds peak_delta_bytes, peak_vs_baseline (ratio), resident_kv_delta_bytes
    and wall_delta_s, each the row's value minus (or over) the baseline's. Given a sweep folder
    and no baseline, each row's baseline is the bf16 trace of its own shape (`shape_baselines`)."""
    loaded = open_traces(traces)
    rows = [trace_row(t) for t in loaded]
    df = pd.DataFrame(rows)
    ms_cols = sorted(c for c in df.columns if c.startswith("ms_"))
    host_cols = sorted(c for c in df.columns if c.startswith("host_ms_"))
    q_cols = sorted(c for c in df.columns if c.startswith("quality_"))
    base_cols = [c for c in df.columns if not c.startswith(("ms_", "host_ms_", "quality_"))]
    df = df[base_cols + ms_cols + host_cols + q_cols]
    sweep = any(not isinstance(p, Trace) and is_sweep(p) for p in traces)
    if baseline is not None or sweep:
        bases = [trace_row(open_trace(baseline))] * len(df) if baseline is not None else shape_baselines(loaded, rows)

        def base(col: str) -> pd.Series:
            return pd.to_numeric(pd.Series([b.get(col) if b else None for b in bases], index=df.index, dtype="object"),
                                 errors="coerce").astype("float64")

        def diff(col: str) -> pd.Series:
            return pd.to_numeric(df[col], errors="coerce") - base(col)

        df["baseline"] = [b["trace"] if b else None for b in bases]
        df["peak_delta_bytes"] = diff("peak_bytes").round().astype("Int64")
        df["peak_vs_baseline"] = pd.to_numeric(df["peak_bytes"], errors="coerce") / base("peak_bytes").replace(0, float("nan"))
        df["resident_kv_delta_bytes"] = diff("resident_kv_bytes").round().astype("Int64")
        df["wall_delta_s"] = diff("wall_s")
    for col in ("peak_bytes", "logical_kv_bytes", "stored_kv_bytes", "resident_kv_bytes"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    if sort:
        desc = sort.startswith("-")
        col = sort_column(sort.lstrip("-"), df.columns)
        if col is None:
            raise UsageError(
                f"--sort {sort!r}: no such column; columns: {', '.join(df.columns)}, or a shown title "
                f"such as 'peak' or 'wall s' (prefix '-' to sort descending)"
            )
        df = df.sort_values(col, ascending=not desc, kind="stable", na_position="last")
    return df.reset_index(drop=True)


def sort_column(name: str, columns: Sequence[str]) -> str | None:
    """The column `name` means: a column's own name, or the title the text table shows for it
    ('peak' for peak_bytes, 'decode ms' for ms_decode; case does not matter)."""
    if name in columns:
        return name
    by_title = {column_title(c).lower(): c for c in columns}
    by_name = {c.lower(): c for c in columns}
    key = name.strip().lower()
    return by_name.get(key) or by_title.get(key)


def shape_baselines(traces: Sequence[Trace], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """For each trace, the row of the complete bf16 trace among `traces` of the same shape
    (`kvprof.read.baseline.shape_key`; the same integration preferred), or None where there is none."""
    bf16 = [(t, r) for t, r in zip(traces, rows) if t.meta.get("method") == REFERENCE_METHOD and t.status == "complete"]
    out: list[dict[str, Any] | None] = []
    for t in traces:
        same = [(bt, br) for bt, br in bf16 if shape_key(bt.meta) == shape_key(t.meta)]
        same.sort(key=lambda tr: tr[0].meta.get("integration") != t.meta.get("integration"))
        out.append(same[0][1] if same else None)
    return out


def format_cell(col: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    if col.endswith("_bytes"):
        return ("+" if col.endswith("delta_bytes") and value > 0 else "") + fmt_bytes(int(value))
    if col == "host_bound_share":
        return f"{100 * float(value):.1f}%"
    if col.startswith("ratio") or col == "peak_vs_baseline":
        return f"{float(value):.2f}x"
    if col.startswith(("ms_", "host_ms_")):
        return fmt_ms(value)
    if col in ("wall_s", "wall_delta_s"):
        return f"{float(value):.2f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def column_title(col: str, logical_dtypes: Sequence[str | None] = ()) -> str:
    """The heading of a column; `logical_dtypes` (the rows' `logical_dtype`) label logical KV with the
    element size it is counted at when the rows agree on one."""
    if col == "logical_kv_bytes":
        kinds = set(logical_dtypes)
        return logical_label(kinds.pop() if len(kinds) == 1 else None, "logical KV")
    names = {"peak_bytes": "peak", "resident_kv_bytes": "resident KV", "stored_kv_bytes": "stored KV",
             "logical_kv_bytes": "logical KV", "ratio_stored": "log/stored", "ratio_resident": "log/resident",
             "peak_delta_bytes": "Δ peak", "peak_vs_baseline": "peak/base", "resident_kv_delta_bytes": "Δ resident",
             "wall_delta_s": "Δ wall s", "wall_s": "wall s", "peak_stage": "peak stage", "host_bound_share": "host-bound",
             "logical_dtype": "logical at"}
    if col.startswith("ms_"):
        return col[3:] + " device ms"
    if col.startswith("host_ms_"):
        return col[8:] + " host ms"
    return names.get(col, col)


def text_table(df: pd.DataFrame, columns: Sequence[str]) -> str:
    """A plain fixed-width table (numbers right-aligned) of `columns` of df."""
    cols = [c for c in columns if c in df.columns]
    cells = [[format_cell(c, v) for c, v in zip(cols, row)] for row in df[cols].itertuples(index=False)]
    dtypes = list(df["logical_dtype"]) if "logical_dtype" in df.columns else []
    heads = [column_title(c, dtypes) for c in cols]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(heads)]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in cols]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(heads), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def text_columns(df: pd.DataFrame) -> list[str]:
    """TEXT_COLUMNS, each stage's device ms replaced by its host ms where no row has a device time
    (CPU runs: the column is titled "host ms", never device time it is not), and the logical dtype
    per row where the rows count logical KV at different dtypes."""
    out = []
    mixed = "logical_dtype" in df.columns and df["logical_dtype"].dropna().nunique() > 1
    for c in TEXT_COLUMNS:
        if c == "logical_kv_bytes" and mixed:  # no one dtype for the title: say it per row
            out.append("logical_dtype")
        host = "host_" + c
        no_device = c not in df.columns or pd.to_numeric(df[c], errors="coerce").isna().all()
        out.append(host if c.startswith("ms_") and no_device and host in df.columns else c)
    return out


def format_compare(df: pd.DataFrame, fmt: str = "table") -> str:
    """Render a comparison table: 'table' (main columns, human units), 'json' (all columns,
    raw numbers, one object per trace) or 'csv' (all columns)."""
    if fmt == "json":
        records = json.loads(df.to_json(orient="records"))
        return json.dumps(records, indent=2)
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt != "table":
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    cols = text_columns(df)
    cols += [c for c in DELTA_COLUMNS if c in df.columns]
    cols += [c for c in df.columns if c.startswith("quality_")]
    return text_table(df, cols)
