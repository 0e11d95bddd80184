"""The trace folder of DESIGN section 7: an append-only event log while running, Parquet once closed.

Layout of `traces/<run-id>/`:
  meta.json         schema, run id, command, method, config, device, versions, status, error
  events.jsonl      one JSON record a line, appended while the run is live (removed once closed)
  <table>.parquet   allocations, spans, samples, counters, kv: written when the trace closes
  summary.json      written by kvprof's analyses after close

Every record has a kind `k`:
  b  span begin   {id, p (parent), n (name), i (index|null), t, q}
  e  span end     {id, t, q, ms (host ms), [hs, ons, tns]}  (optional, inclusive of nested spans:
                  host syncs, ns inside aten ops, ns of tracer bookkeeping; see tracers.host_sync)
  a  allocation   {id, t, q, b (bytes), c (category), s (span), n (name|null)}
  f  free         {id, t, q}
  r  retag        {id, c, n}          (category/name for the allocation's whole life)
  z  resize       {id, b}             (the allocator's real block size, for its whole life)
  m  counter      {t, q, s, alloc, reserved}  (allocator counters at a stage boundary, CUDA)
  d  device       {t, used, proc, util}       (NVML sample)
  kv kv bytes     {t, q, chunk, logical, stored, resident}
  x  device ms    {id, dms}           (stage device time, resolved after the run)
`q` orders records exactly (time stamps of different clocks may tie or drift).
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

SCHEMA_VERSION = "1.0"
EVENTS_FILE = "events.jsonl"
META_FILE = "meta.json"
SUMMARY_FILE = "summary.json"
TABLES = ("allocations", "spans", "samples", "counters", "kv")
STATUSES = ("running", "complete", "oom", "interrupted", "failed")


class TraceError(ValueError):
    """A trace folder that cannot be read; the message names the file and what is wrong."""


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temporary file and rename, so readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


class EventLog:
    """Append-only JSON-lines writer; thread safe (weakref finalizers and the sampler write too)."""

    def __init__(self, path: Path, flush_interval_s: float = 0.25):
        self.path = path
        self._file = open(path, "a", buffering=1 << 16)
        self._lock = threading.Lock()
        self._flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()
        self.records: list[dict[str, Any]] = []  # kept in memory to build the tables at close
        # Allocation rows added in bulk (memory-only drains of the CUDA allocator history): one dict
        # of equal-length column lists per drain.
        self.alloc_columns: list[dict[str, list[Any]]] = []
        # While True, records are kept for the tables but not written as lines: used for the final
        # replay of the CUDA allocator history, which nobody follows and which Parquet will hold.
        self.memory_only = False

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (a whole line)."""
        with self._lock:
            self.records.append(record)
            if self._file is None or self.memory_only:
                return
            line = json.dumps(record, separators=(",", ":")) + "\n"
            self._file.write(line)
            now = time.monotonic()
            if now - self._last_flush > self._flush_interval_s:
                self._file.flush()
                self._last_flush = now

    def add_allocations(self, columns: dict[str, list[Any]]) -> None:
        """Keep a batch of allocation rows (the allocations table's columns) for the tables at close."""
        with self._lock:
            self.alloc_columns.append(columns)

    def flush(self) -> None:
        """Make everything written so far visible to followers."""
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        """Flush and close the file; later writes are kept in memory only."""
        with self._lock:
            if self._file is not None:
                self._file.flush()
                self._file.close()
                self._file = None


def read_event_lines(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Parse an event log up to its last whole record; return (records, torn_tail)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ({exc.strerror})") from None
    records: list[dict[str, Any]] = []
    torn = False
    lines = raw.split(b"\n")
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if n == len(lines) - 1 or all(not rest.strip() for rest in lines[n + 1 :]):
                torn = True  # a torn final record of a live or crashed run: recover what precedes it
                break
            raise TraceError(f"{path}: line {n + 1} is not a JSON record (corrupted trace)") from None
        if not isinstance(rec, dict) or "k" not in rec:
            raise TraceError(f"{path}: line {n + 1} is not an event record (no field 'k')")
        records.append(rec)
    return records, torn


_ALLOC_COLUMNS = ["id", "q_alloc", "q_free", "t_alloc_ns", "t_free_ns", "bytes", "category", "span_id", "name"]
_SPAN_COLUMNS = ["id", "parent", "name", "index", "q_start", "q_end", "t_start_ns", "t_end_ns", "host_ms", "device_ms",
                 "host_syncs", "op_ms", "tracer_ms"]
_SAMPLE_COLUMNS = ["t_ns", "device_used_bytes", "process_used_bytes", "util_percent", "other_processes"]
_COUNTER_COLUMNS = ["t_ns", "q", "span_id", "allocated_bytes", "reserved_bytes"]
_KV_COLUMNS = ["t_ns", "q", "chunk", "logical_bytes", "stored_bytes", "resident_bytes"]

NO_FREE = -1  # q_free / t_free_ns of an allocation still live when the trace ended


def tables_from_records(
    records: Iterable[dict[str, Any]], alloc_columns: Iterable[dict[str, list[Any]]] = ()
) -> dict[str, pd.DataFrame]:
    """Fold event records, and allocation rows added in bulk, into the five columnar tables (live
    allocations get q_free = -1). Frees, retags and sizes may refer to bulk rows."""
    allocs: dict[int, dict[str, Any]] = {}
    later: list[dict[str, Any]] = []  # f/r/z records of allocations that are not records
    spans: dict[int, dict[str, Any]] = {}
    samples: list[tuple] = []
    counters: list[tuple] = []
    kv: list[tuple] = []
    for r in records:
        k = r.get("k")
        try:
            if k == "a":
                allocs[r["id"]] = {
                    "id": r["id"], "q_alloc": r["q"], "q_free": NO_FREE, "t_alloc_ns": r["t"],
                    "t_free_ns": NO_FREE, "bytes": r["b"], "category": r["c"], "span_id": r["s"],
                    "name": r.get("n"),
                }
            elif k in ("f", "r", "z"):
                a = allocs.get(r["id"])
                if a is None:
                    later.append(r)
                elif k == "f":
                    a["q_free"], a["t_free_ns"] = r["q"], r["t"]
                elif k == "r":
                    a["category"] = r["c"]
                    if r.get("n"):
                        a["name"] = r["n"]
                else:
                    a["bytes"] = r["b"]
            elif k == "b":
                spans[r["id"]] = {
                    "id": r["id"], "parent": r["p"], "name": r["n"], "index": r.get("i"),
                    "q_start": r["q"], "q_end": NO_FREE, "t_start_ns": r["t"], "t_end_ns": NO_FREE,
                    "host_ms": float("nan"), "device_ms": float("nan"),
                    "host_syncs": 0, "op_ms": float("nan"), "tracer_ms": float("nan"),
                }
            elif k == "e":
                s = spans.get(r["id"])
                if s is not None:
                    s["q_end"], s["t_end_ns"], s["host_ms"] = r["q"], r["t"], r["ms"]
                    s["host_syncs"] = r.get("hs", 0)
                    s["op_ms"] = r["ons"] / 1e6 if "ons" in r else float("nan")
                    s["tracer_ms"] = r["tns"] / 1e6 if "tns" in r else float("nan")
            elif k == "x":
                s = spans.get(r["id"])
                if s is not None:
                    s["device_ms"] = r["dms"]
            elif k == "m":
                counters.append((r["t"], r["q"], r["s"], r["alloc"], r["reserved"]))
            elif k == "d":
                samples.append((r["t"], r["used"], r["proc"], r["util"], r.get("others", -1)))
            elif k == "kv":
                kv.append((r["t"], r.get("q", -1), r["chunk"], r["logical"], r["stored"], r["resident"]))
        except (KeyError, TypeError) as exc:
            raise TraceError(f"event record of kind {k!r} lacks field {exc} ({str(r)[:120]})") from None
    alloc_df = pd.DataFrame(list(allocs.values()), columns=_ALLOC_COLUMNS)
    bulk = [pd.DataFrame(cols, columns=_ALLOC_COLUMNS) for cols in alloc_columns if cols.get("id")]
    if bulk:
        alloc_df = pd.concat([alloc_df, *bulk] if len(alloc_df) else bulk, ignore_index=True)
        if later:
            _apply_later(alloc_df, later)
    span_df = pd.DataFrame(list(spans.values()), columns=_SPAN_COLUMNS)
    try:
        for col in ("id", "q_alloc", "q_free", "t_alloc_ns", "t_free_ns", "bytes", "span_id"):
            alloc_df[col] = alloc_df[col].astype("int64")
        for col in ("id", "parent", "q_start", "q_end", "t_start_ns", "t_end_ns", "host_syncs"):
            span_df[col] = span_df[col].astype("int64")
        span_df["index"] = span_df["index"].astype("Int64")
    except (ValueError, TypeError, OverflowError) as exc:
        raise TraceError(f"event records hold a value of the wrong type ({exc})") from None
    alloc_df["category"] = alloc_df["category"].astype("string")
    alloc_df["name"] = alloc_df["name"].astype("string")
    span_df["name"] = span_df["name"].astype("string")
    return {
        "allocations": alloc_df,
        "spans": span_df,
        "samples": pd.DataFrame(samples, columns=_SAMPLE_COLUMNS),
        "counters": pd.DataFrame(counters, columns=_COUNTER_COLUMNS),
        "kv": pd.DataFrame(kv, columns=_KV_COLUMNS),
    }


def _apply_later(alloc_df: pd.DataFrame, later: list[dict[str, Any]]) -> None:
    """Apply free/retag/size records to bulk rows, in record order (ids are unique)."""
    row_of = pd.Series(range(len(alloc_df)), index=alloc_df["id"].to_numpy())
    cols = {c: alloc_df.columns.get_loc(c) for c in ("q_free", "t_free_ns", "category", "name", "bytes")}
    for r in later:
        row = row_of.get(r["id"])
        if row is None:
            continue
        if r["k"] == "f":
            alloc_df.iat[row, cols["q_free"]], alloc_df.iat[row, cols["t_free_ns"]] = r["q"], r["t"]
        elif r["k"] == "r":
            alloc_df.iat[row, cols["category"]] = r["c"]
            if r.get("n"):
                alloc_df.iat[row, cols["name"]] = r["n"]
        else:
            alloc_df.iat[row, cols["bytes"]] = r["b"]


# Columns every reader relies on, by table: "int" (no missing values), "int?" (may be missing),
# "num" (int or float, NaN allowed), "str" (no missing values), "str?". Extra columns are allowed;
# the optional ones below are checked when present (older traces lack them).
TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "allocations": {"id": "int", "q_alloc": "int", "q_free": "int", "t_alloc_ns": "int", "t_free_ns": "int",
                    "bytes": "int", "category": "str", "span_id": "int", "name": "str?"},
    "spans": {"id": "int", "parent": "int", "name": "str", "index": "int?", "q_start": "int", "q_end": "int",
              "t_start_ns": "int", "t_end_ns": "int", "host_ms": "num", "device_ms": "num"},
    "samples": {"t_ns": "num", "device_used_bytes": "num", "process_used_bytes": "num", "util_percent": "num"},
    "counters": {"t_ns": "num", "q": "int", "span_id": "int", "allocated_bytes": "int", "reserved_bytes": "int"},
    "kv": {"t_ns": "num", "q": "int", "chunk": "int", "logical_bytes": "int", "stored_bytes": "int", "resident_bytes": "int"},
}
OPTIONAL_COLUMNS: dict[str, dict[str, str]] = {"spans": {"host_syncs": "int", "op_ms": "num", "tracer_ms": "num"},
                                                "samples": {"other_processes": "int"}}


def _column_ok(col: pd.Series, kind: str) -> bool:
    types = pd.api.types
    missing = col.isna()
    if not len(col) or (kind.endswith("?") and bool(missing.all())):  # empty tables keep object columns
        return True
    if kind.startswith("int"):
        return types.is_integer_dtype(col) and (kind == "int?" or not bool(missing.any()))
    if kind == "num":
        return types.is_numeric_dtype(col) and not types.is_bool_dtype(col)
    if kind == "str" and bool(missing.any()):
        return False
    return isinstance(col.dtype, pd.StringDtype) or all(isinstance(v, str) for v in col[~missing])


def check_tables(tables: dict[str, pd.DataFrame], source: Path) -> dict[str, pd.DataFrame]:
    """The tables, after checking the columns readers rely on are there with usable types and
    that ids are unique; TraceError naming the table and column otherwise."""
    for table, columns in TABLE_COLUMNS.items():
        df = tables.get(table)
        if df is None:
            raise TraceError(f"{source}: table {table!r} is missing")
        for col, kind in {**columns, **{c: k for c, k in OPTIONAL_COLUMNS.get(table, {}).items() if c in df.columns}}.items():
            if col not in df.columns:
                raise TraceError(f"{source}: table {table!r} has no column {col!r} (damaged trace)")
            if not _column_ok(df[col], kind):
                raise TraceError(f"{source}: column {col!r} of table {table!r} is not of type {kind} "
                                 f"(it holds {df[col].dtype}; damaged trace)")
        if table in ("allocations", "spans") and not df["id"].is_unique:
            raise TraceError(f"{source}: table {table!r} repeats ids (damaged trace)")
    spans = tables["spans"]
    if spans["index"].dtype != "Int64":
        spans["index"] = spans["index"].astype("Int64")
    return tables


def write_tables(folder: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Write each table as `<name>.parquet` atomically."""
    for name, df in tables.items():
        tmp = folder / f"{name}.parquet.tmp"
        df.to_parquet(tmp, index=False)
        os.replace(tmp, folder / f"{name}.parquet")


@dataclass
class RawTrace:
    """A trace folder as read from disk: metadata, tables, summary (None until written)."""

    path: Path
    meta: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    summary: dict[str, Any] | None
    live: bool  # tables came from the event log, not from Parquet
    torn_tail: bool  # the event log ended in a partial record that was skipped


# Fields of meta.json that readers use, and their JSON types (a missing field or null is allowed).
META_FIELDS: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("run_id", "method", "integration", "codes", "error", "checkpoint", "tracker", "source",
                     "interrupted_stage", "failed_stage", "interrupted_by", "allocator_settings"), (str,)),
    **dict.fromkeys(("config", "rollout", "environment", "method_params", "oom", "host_activity", "host_profile",
                     "allocator_layout"),
                    (dict,)),
    **dict.fromkeys(("command", "notes", "allocator_oom_events"), (list,)),
    **dict.fromkeys(("started_unix_ns", "ended_unix_ns", "budget_bytes", "tracker_peak_bytes", "allocated_before_bytes",
                     "registered_before_bytes", "held_before_bytes", "unregistered_before_bytes", "max_memory_allocated_bytes",
                     "memory_allocated_end_bytes", "pid"), (int,)),
    **dict.fromkeys(("wall_s", "tracer_drain_s"), (int, float)),
}
_JSON_NAMES = {str: "a string", dict: "an object", list: "a list", int: "an integer", float: "a number"}


def read_meta(folder: Path) -> dict[str, Any]:
    """Read and check meta.json: present, JSON, a schema this reader understands."""
    meta_path = folder / META_FILE
    if not folder.is_dir():
        raise TraceError(f"{folder}: not a trace folder (no such directory)")
    if not meta_path.is_file():
        raise TraceError(f"{folder}: not a trace folder (no {META_FILE}); traces are written by 'kvprof trace'")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise TraceError(f"{meta_path}: unreadable or truncated JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise TraceError(f"{meta_path}: expected a JSON object")
    version = str(meta.get("schema_version", ""))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise TraceError(f"{meta_path}: field 'schema_version' is missing or malformed ({version!r})") from None
    ours = int(SCHEMA_VERSION.split(".")[0])
    if major > ours:
        raise TraceError(
            f"{meta_path}: schema {version} is newer than this kvprof reads ({SCHEMA_VERSION}); upgrade kvprof"
        )
    if meta.get("status") not in STATUSES:
        raise TraceError(f"{meta_path}: field 'status' is {meta.get('status')!r}; expected one of {', '.join(STATUSES)}")
    problem = meta_field_problem(meta)
    if problem:
        raise TraceError(f"{meta_path}: {problem} (damaged trace)")
    return meta


def meta_field_problem(meta: dict[str, Any]) -> str | None:
    """The first field of `meta` whose JSON type readers do not expect (META_FIELDS), said as
    "field 'config' should be an object, not str"; None when every field fits."""
    for key, types in META_FIELDS.items():
        value = meta.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool) and bool not in types):
            names = " or ".join(_JSON_NAMES[t] for t in types)
            return f"field {key!r} should be {names}, not {type(value).__name__}"
    return None


def check_summary(summary: Any, path: Path) -> None:
    """summary.json holds an object whose peak (when present) has the fields readers use."""
    if not isinstance(summary, dict):
        raise TraceError(f"{path}: expected a JSON object (damaged summary; remove it and the numbers are recomputed from the tables)")
    peak = summary.get("peak")
    if peak is None:
        return
    ok = isinstance(peak, dict) and all(
        isinstance(peak.get(k), t) and not isinstance(peak.get(k), bool)
        for k, t in (("bytes", int), ("stage", str), ("t_ns", (int, float)))
    ) and all(isinstance(peak.get(k, {}), dict) for k in ("by_category", "by_stage", "by_pass"))
    if not ok:
        raise TraceError(f"{path}: field 'peak' lacks bytes, stage or t_ns, or has them of the wrong type (damaged summary)")


def read_raw_trace(folder: str | Path) -> RawTrace:
    """Read a finished (Parquet) or live (event log) trace folder."""
    folder = Path(folder)
    meta = read_meta(folder)
    summary = None
    summary_path = folder / SUMMARY_FILE
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError) as exc:
            raise TraceError(f"{summary_path}: unreadable or truncated JSON ({exc})") from None
        check_summary(summary, summary_path)
    parquet = [folder / f"{t}.parquet" for t in TABLES]
    events = folder / EVENTS_FILE
    if all(p.is_file() for p in parquet) and not events.is_file():
        tables = {}
        for name, p in zip(TABLES, parquet):
            try:
                tables[name] = pd.read_parquet(p)
            except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
                raise TraceError(f"{p}: unreadable Parquet table ({type(exc).__name__}: {exc})") from None
        return RawTrace(folder, meta, check_tables(tables, folder), summary, live=False, torn_tail=False)
    if events.is_file():
        records, torn = read_event_lines(events)
        try:
            tables = tables_from_records(records)
        except TraceError as exc:
            raise TraceError(f"{events}: {exc}") from None
        return RawTrace(folder, meta, check_tables(tables, events), summary, live=True, torn_tail=torn)
    raise TraceError(f"{folder}: trace has neither {EVENTS_FILE} nor its Parquet tables (empty or damaged trace)")
