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
`q` orders records exactly (time stamps of different clocks may tie or drift); the tables keep it as
q_alloc / q_free (allocations), q_start / q_end (spans) and q (counters, kv). What every column
means: tracers/table_schema.py, also inside each Parquet file's schema, and docs/trace-format.md.
"""
from __future__ import annotations

import collections
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from tracers.alloc_parts import part_files, read_part, read_parts  # noqa: F401 (part_files, read_part: the format's API for followers)
from tracers.record_lines import encode_record
from tracers.table_schema import write_parquet
from tracers.trace_fold import NO_FREE, TableFolder, TraceFoldError  # noqa: F401 (NO_FREE: part of the format's API)
from tracers.summary_schema import read_summary_file
from tracers.atomic import TraceWriteError, write_atomic, write_json_atomic, write_json_in_place  # noqa: F401 (re-exported)

SCHEMA_VERSION = "1.0"
EVENTS_FILE = "events.jsonl"
META_FILE = "meta.json"
SUMMARY_FILE = "summary.json"
TABLES = ("allocations", "spans", "samples", "counters", "kv")
STATUSES = ("running", "complete", "oom", "interrupted", "failed")

_SPAN_KINDS = frozenset(("b", "e", "x"))


class TraceError(ValueError):
    """A trace folder that cannot be read; the message names the file and what is wrong."""


class EventLog:
    """Append-only JSON-lines writer; thread safe (weakref finalizers and the sampler write too)."""

    def __init__(self, path: Path, flush_interval_s: float = 0.25):
        self.path = path
        self._file = open(path, "a", buffering=1 << 16)
        self._lock = threading.Lock()
        self._flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()
        self.records: list[dict[str, Any]] = []  # kept in memory to build the tables at close
        # Span records (b/e/x) are folded as they come, into typed columns (~100 B a span, not two dicts of ~500 B)
        self.folder = TableFolder()
        # Allocation rows added in bulk (memory-only drains of the CUDA allocator history): one dict
        # of equal-length column lists per drain.
        self.alloc_columns: list[dict[str, list[Any]]] = []
        # While True, records are kept for the tables but not written as lines: used for the final
        # replay of the CUDA allocator history, which nobody follows and which Parquet will hold.
        self.memory_only = False
        # The first failed write (a full disk): later lines are kept in memory only and counted, so
        # the error can say how many bytes the folder still needed.
        self.error: OSError | None = None
        self._line_bytes = 0  # every line handed to the file (JSON is ASCII: characters are bytes)
        # While True, records are queued and written at the next flush (a streamed CUDA trace: its
        # drain thread flushes after every drain, so the model's thread never encodes JSON). Span and
        # counter records are then also folded into the tables' columns at the flush, not as they come:
        # the model thread appends one tuple (~0.3 us) where folding took ~4 us a stage (issue 15).
        self.deferred = False
        self._queued: collections.deque[dict[str, Any] | tuple] = collections.deque()  # append/popleft: no lock needed

    @property
    def unwritten_bytes(self) -> int:
        """Bytes of lines that did not reach the disk (after a failed write)."""
        try:
            on_disk = self.path.stat().st_size
        except OSError:
            on_disk = 0
        return max(0, self._line_bytes - on_disk)

    def _failed(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc

    def write(self, record: dict[str, Any] | tuple) -> None:
        """Append one record (a whole line; while `deferred`, folded and written by the next `flush`, the drain
        thread's). A tuple is one of the session's own frequent records (`span_begin`, `span_end`, `counter`)."""
        if self.deferred and not self.memory_only:
            self._queued.append(record)
            return
        with self._lock:
            self._keep(record)
            self._line(record)

    def span_begin(self, span_id: int, parent: int, name: str, index: int | None, t: int, q: int) -> None:
        """A `b` record from the session's own stage scope, as a tuple (the same record as `write` would
        take, without a dict on the model's thread)."""
        self.write(("b", span_id, parent, name, index, t, q))

    def span_end(self, span_id: int, t: int, q: int, ms: float, ends: dict[str, int] | None) -> None:
        """The `e` record of `span_begin`'s span (`ends`: the host counters, when any)."""
        self.write(("e", span_id, t, q, ms, ends))

    def counter(self, t: int, q: int, span_id: int, allocated: int, reserved: int) -> None:
        """An `m` record: the allocator's allocated and reserved bytes at a stage boundary."""
        self.write(("m", t, q, span_id, allocated, reserved))

    def _keep(self, record: dict[str, Any] | tuple) -> None:
        """Fold one record into what the tables are built from (span and counter columns, other records)."""
        if type(record) is tuple:
            kind = record[0]
            if kind == "b":
                _, span_id, parent, name, index, t, q = record
                self.folder.spans.add(span_id, parent, name, index, q, t)
            elif kind == "e":
                _, span_id, t, q, ms, ends = record
                self.folder.spans.close(span_id, q, t, ms, ends)
            else:
                self.folder.counters.append(record[1:])  # (t, q, s, alloc, reserved): the fold's order
        elif record["k"] in _SPAN_KINDS:
            self.folder.fold((record,))
        else:
            self.records.append(record)

    def _line(self, record: dict[str, Any] | tuple) -> None:
        """Write one record's line."""
        if self._file is None or self.memory_only:
            return
        self._write_lines([record])
        now = time.monotonic()
        if now - self._last_flush > self._flush_interval_s:
            self._flush_file()
            self._last_flush = now

    def _write_lines(self, records: list[dict[str, Any]]) -> None:
        text = "".join([encode_record(r) + "\n" for r in records])
        self._line_bytes += len(text)
        if self.error is not None:
            return
        try:
            self._file.write(text)  # type: ignore[union-attr]
        except OSError as exc:
            self._failed(exc)

    def _flush_file(self) -> None:
        if self._file is not None and self.error is None:
            try:
                self._file.flush()
            except OSError as exc:
                self._failed(exc)

    def add_allocations(self, columns: dict[str, list[Any]]) -> None:
        """Keep a batch of allocation rows (the allocations table's columns) for the tables at close."""
        with self._lock:
            self.alloc_columns.append(columns)

    def flush(self) -> None:
        """Write queued records and make everything so far visible to followers (a failed write is
        kept in `error`)."""
        with self._lock:
            queue = self._queued
            queued = [queue.popleft() for _ in range(len(queue))]  # what was queued when the flush began
            for record in queued:
                self._keep(record)
            if queued and self._file is not None:
                self._write_lines(queued)
            self._flush_file()

    def close(self) -> None:
        """Flush and close the file; later writes are kept in memory only (folded as they come: no flush follows)."""
        self.deferred = False
        self.flush()
        with self._lock:
            if self._file is not None:
                try:
                    if self.error is None:
                        self._file.flush()
                except OSError as exc:
                    self._failed(exc)
                try:
                    self._file.close()
                except OSError as exc:  # the buffer it could not write
                    self._failed(exc)
                self._file = None


def read_event_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Parse an event log up to its last whole record; return (records, bytes of a torn tail: 0 when none)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ({exc.strerror})") from None
    records: list[dict[str, Any]] = []
    torn = 0
    lines = raw.split(b"\n")
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if n == len(lines) - 1 or all(not rest.strip() for rest in lines[n + 1 :]):
                torn = len(raw) - sum(len(x) + 1 for x in lines[:n])  # a torn final record of a live or crashed run: recover what precedes it
                break
            raise TraceError(f"{path}: line {n + 1} is not a JSON record (corrupted trace)") from None
        if not isinstance(rec, dict) or "k" not in rec:
            raise TraceError(f"{path}: line {n + 1} is not an event record (no field 'k')")
        records.append(rec)
    return records, torn


def tables_from_records(
    records: Iterable[dict[str, Any]], alloc_columns: Iterable[dict[str, list[Any]]] = (), with_pending: bool = False,
    folder: TableFolder | None = None,
) -> Any:
    """Fold event records, then allocation rows added in bulk, into the five columnar tables
    through the one fold every reader uses (`tracers.trace_fold.TableFolder`), continuing `folder`
    when given (an EventLog's, which holds the spans already). With `with_pending`: (tables, the
    f/r/z records of allocations that are not among them: rows of streamed parts)."""
    folder = TableFolder() if folder is None else folder
    try:
        folder.fold(records)
        for cols in alloc_columns:
            folder.add_bulk(cols)
        tables = folder.tables()
    except TraceFoldError as exc:
        raise TraceError(str(exc)) from None
    return (tables, folder.pending) if with_pending else tables


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


def check_tables(tables: dict[str, pd.DataFrame], source: Path, notes: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """The tables, after checking the columns readers rely on are there with usable types and
    that ids are unique; TraceError naming the table and column otherwise. Allocation rows freed
    before they were made are dropped, and said in `notes`."""
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
    allocs = tables["allocations"]
    bad = (allocs["q_free"] != NO_FREE) & (allocs["q_free"] < allocs["q_alloc"])
    if bool(bad.any()):
        ids = allocs.loc[bad, "id"].tolist()
        shown = ", ".join(str(i) for i in ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        if notes is not None:
            notes.append(f"{source}: skipped {len(ids)} damaged allocation row(s) freed before made (q_free < q_alloc): id {shown}")
        tables["allocations"] = allocs[~bad].reset_index(drop=True)
    spans = tables["spans"]
    if spans["index"].dtype != "Int64":
        spans["index"] = spans["index"].astype("Int64")
    return tables


def write_tables(folder: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Write each table as `<name>.parquet` atomically, its columns described in the file's schema; on a failure (a full disk) the tables of
    this call are removed again, so the event log stays the trace's one source."""
    written: list[Path] = []
    try:
        for name, df in tables.items():
            path = folder / f"{name}.parquet"
            # a table is a DataFrame, or a function writing the file (streamed parts merged at close)
            write = df if callable(df) else (lambda tmp, df=df, name=name: write_parquet(tmp, name, df))
            write_atomic(path, write)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def write_closed_trace(folder: Path, log: EventLog, tables: dict[str, pd.DataFrame], meta: dict[str, Any]) -> None:
    """Write the closed trace: Parquet tables, final meta, then remove the event log. When the event
    log or a table could not be written (a full disk), meta says status `failed` with the reason,
    no temporary file is left and the event log stays the trace (readable up to its last whole
    record); `meta["write_error"]` then holds the one-line message for the user."""
    error: OSError | None = log.error
    unwritten = log.unwritten_bytes if error is not None else 0
    if error is None:
        try:
            write_tables(folder, tables)
        except OSError as exc:
            error, unwritten = exc, int(sum(df.memory_usage(deep=False).sum() for df in tables.values() if not callable(df)))
    if error is None:
        write_json_atomic(folder / META_FILE, meta)
        (folder / EVENTS_FILE).unlink(missing_ok=True)
        return
    failure = TraceWriteError(folder, unwritten, error)
    meta.update(status="failed", error=f"TraceWriteError: {failure.strerror}", write_error=failure.strerror)
    write_json_in_place(folder / META_FILE, meta)


@dataclass
class RawTrace:
    """A trace folder as read from disk: metadata, tables, summary (None until written)."""

    path: Path
    meta: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    summary: dict[str, Any] | None
    live: bool  # tables came from the event log, not from Parquet
    torn_tail: bool  # the event log ended in a partial record that was skipped
    notes: list[str] = field(default_factory=list)  # what the reader skipped (a torn tail, damaged rows), said to the user


# Fields of meta.json that readers use, and their JSON types (a missing field or null is allowed).
META_FIELDS: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("run_id", "method", "integration", "codes", "error", "checkpoint", "tracker", "source",
                     "interrupted_stage", "failed_stage", "interrupted_by", "allocator_settings", "host",
                     "write_error"), (str,)),
    **dict.fromkeys(("config", "rollout", "environment", "method_params", "method_facts", "oom", "host_activity", "host_profile",
                     "allocator_layout"),
                    (dict,)),
    **dict.fromkeys(("command", "notes", "allocator_oom_events"), (list,)),
    **dict.fromkeys(("started_unix_ns", "ended_unix_ns", "budget_bytes", "allocated_before_bytes",
                     "registered_before_bytes", "held_before_bytes", "unregistered_before_bytes", "max_memory_allocated_bytes",
                     "memory_allocated_end_bytes", "pid", "host_max_rss_recording_bytes"), (int,)),
    **dict.fromkeys(("wall_s", "tracer_drain_s"), (int, float)),
}
_JSON_NAMES = {str: "a string", dict: "an object", list: "a list", int: "an integer", float: "a number", bool: "true or false"}
# Fields inside meta's objects that readers (diagnose's byte model, --run-baseline, labels) use.
META_NESTED: dict[str, dict[str, tuple[type, ...]]] = {
    "rollout": {**dict.fromkeys(("frames", "seed", "batch", "chunk_frames", "attn_window_frames", "rolling_frames",
                                 "sink_frames"), (int,)),
                "integration": (str,), "decode": (bool,), "free_cache_before_decode": (bool,), "timesteps": (list,)},
    "method_facts": {**dict.fromkeys(("family", "key_bits", "value_bits", "policy", "cadence"), (str,)),
                     "lossless": (bool,), "position_dependent": (bool,), "param_defaults": (dict,)},
    "config": {"name": (str,), "dtype": (str,), "vae": (str,),
               **dict.fromkeys(("num_layers", "dim", "num_heads", "ffn_dim", "text_dim", "text_len", "latent_height",
                                "latent_width", "freq_dim", "in_dim", "out_dim", "tokens_per_frame", "head_dim"), (int,))},
}


def read_meta(folder: Path) -> dict[str, Any]:
    """Read and check meta.json: present, JSON, a schema this reader understands."""
    meta_path = folder / META_FILE
    if folder.is_file():
        inside = f"; its folder {folder.parent} may be the trace" if folder.name == META_FILE else ""
        raise TraceError(f"{folder}: is a file, not a trace folder{inside}")
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
    for outer, fields in META_NESTED.items():
        inner = meta.get(outer) or {}
        for key, types in fields.items():
            value = inner.get(key)
            if value is not None and (not isinstance(value, types) or isinstance(value, bool) and bool not in types):
                names = " or ".join(_JSON_NAMES[t] for t in types)
                return f"field '{outer}.{key}' should be {names}, not {value!r:.40}"
    return None


def read_raw_trace(folder: str | Path) -> RawTrace:
    """Read a finished (Parquet) or live (event log) trace folder."""
    folder = Path(folder)
    meta = read_meta(folder)
    summary = read_summary_file(folder / SUMMARY_FILE)
    parquet = [folder / f"{t}.parquet" for t in TABLES]
    events = folder / EVENTS_FILE
    if all(p.is_file() for p in parquet) and not events.is_file():
        tables = {}
        for name, p in zip(TABLES, parquet):
            try:
                tables[name] = pd.read_parquet(p)
            except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
                raise TraceError(f"{p}: unreadable Parquet table ({type(exc).__name__}: {exc})") from None
        notes: list[str] = []
        return RawTrace(folder, meta, check_tables(tables, folder, notes), summary, live=False, torn_tail=False, notes=notes)
    if events.is_file():
        records, torn = read_event_lines(events)
        try:
            tables = tables_from_records(records, read_parts(folder))
        except TraceError as exc:
            raise TraceError(f"{events}: {exc}") from None
        notes = [f"{events}: skipped a torn tail of {torn:,} bytes (an unterminated last record)"] if torn else []
        return RawTrace(folder, meta, check_tables(tables, events, notes), summary, live=True, torn_tail=bool(torn), notes=notes)
    raise TraceError(f"{folder}: trace has neither {EVENTS_FILE} nor its Parquet tables (empty or damaged trace)")
