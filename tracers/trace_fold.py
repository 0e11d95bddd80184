"""The one fold of trace event records into the five columnar tables.

Every reader of the format goes through `TableFolder`: the closed-trace loader
(`trace_io.tables_from_records`, called once over the whole log), the writer at close (records
plus the CUDA drains' bulk allocation rows) and the live follower (`kvprof.read.live`, folding only
what each poll read). So a record kind handled here is handled everywhere; before this module
the follower ignored `z` (block size) records and showed requested bytes where the closed trace
showed the allocator's blocks.

Record kinds are documented in `tracers.trace_io`. Frees, retags and sizes may refer to an
allocation that is not a record (a bulk row added later): they wait in `pending` and are applied,
in record order, when the tables are built.
"""
from __future__ import annotations

from array import array
from typing import Any, Iterable

import numpy as np
import pandas as pd

from tracers.table_schema import typed

NO_FREE = -1  # q_free / t_free_ns of an allocation still live when the trace ended
# q orders records exactly: q = context * Q_STRIDE + order within the context, where a context is
# one stretch between stage boundaries (the writer's numbering; readers compare q // Q_STRIDE to
# tell whether an allocation outlived the context that made it)
Q_STRIDE = 1 << 32
# The name of blocks the allocator held when tracking started, until registered as what they are.
LIVE_BEFORE_TRACING = "live before tracing"

ALLOC_COLUMNS = ("id", "q_alloc", "q_free", "t_alloc_ns", "t_free_ns", "bytes", "category", "span_id", "name")
SPAN_COLUMNS = ("id", "parent", "name", "index", "q_start", "q_end", "t_start_ns", "t_end_ns", "host_ms", "device_ms",
                "host_syncs", "op_ms", "tracer_ms")
SAMPLE_COLUMNS = ("t_ns", "device_used_bytes", "process_used_bytes", "util_percent", "other_processes")
COUNTER_COLUMNS = ("t_ns", "q", "span_id", "allocated_bytes", "reserved_bytes")
KV_COLUMNS = ("t_ns", "q", "chunk", "logical_bytes", "stored_bytes", "resident_bytes")

_ALLOC_INT = ("id", "q_alloc", "q_free", "t_alloc_ns", "t_free_ns", "bytes", "span_id")
_NAN = float("nan")


class TraceFoldError(ValueError):
    """A record lacks a field or holds a value of the wrong type (the caller names the file)."""


_NO_INDEX = -(1 << 63)  # a span without an index (`i` null): <NA> in the table


class SpanBook:
    """The spans table as typed columns (`array`s, ~100 B a span), filled from `b`/`e`/`x` records.

    A dict per span cost ~1 KB: a 42-frame PRQ rollout has 290k spans, a 60 s one 1.7 M. A `b`
    record of an id seen before overwrites its row (the row keeps its place, as a dict would)."""

    _INT = ("id", "parent", "index", "q_start", "q_end", "t_start_ns", "t_end_ns", "host_syncs")
    _FLOAT = ("host_ms", "device_ms", "op_ms", "tracer_ms")

    def __init__(self) -> None:
        self.cols: dict[str, array] = {c: array("q") for c in self._INT} | {c: array("d") for c in self._FLOAT}
        self._append = tuple(self.cols[c].append for c in self._INT + self._FLOAT)  # `add`'s column order
        self.names: list[str] = []
        # A writer numbers spans 1, 2, 3, ...: row = id - 1 needs no map; any other numbering gets one.
        self.row: dict[int, int] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def _row_of(self, span_id: int) -> int | None:
        if self.row is not None:
            return self.row.get(span_id)
        return span_id - 1 if type(span_id) is int and 1 <= span_id <= len(self.names) else None

    def add(self, span_id: int, parent: int, name: str, index: int | None, q: int, t: int) -> None:
        """A writer's span begin (ids 1, 2, 3, ...), straight into the columns: the fast path of `begin`."""
        if self.row is not None or span_id != len(self.names) + 1:
            self.begin({"k": "b", "id": span_id, "p": parent, "n": name, "i": index, "t": t, "q": q})
            return
        c = self._append
        c[0](span_id), c[1](parent), c[2](_NO_INDEX if index is None else index), c[3](q), c[4](NO_FREE), c[5](t)
        c[6](NO_FREE), c[7](0), c[8](_NAN), c[9](_NAN), c[10](_NAN), c[11](_NAN)
        self.names.append(name)

    def close(self, span_id: int, q: int, t: int, ms: float, ends: dict[str, int] | None) -> None:
        """A writer's span end (`ends`: the host counters `hs`/`ons`/`tns` an end record carries)."""
        row = self._row_of(span_id)
        if row is None:
            return
        c = self.cols
        c["q_end"][row], c["t_end_ns"][row], c["host_ms"][row] = q, t, ms
        if ends:
            c["host_syncs"][row] = ends.get("hs", 0)
            if "ons" in ends:
                c["op_ms"][row] = ends["ons"] / 1e6
            if "tns" in ends:
                c["tracer_ms"][row] = ends["tns"] / 1e6

    def begin(self, r: dict[str, Any]) -> None:
        i = r.get("i")
        values = (r["id"], r["p"], _NO_INDEX if i is None else i, r["q"], NO_FREE, r["t"], NO_FREE, 0)
        name = r["n"]
        if not isinstance(name, str):
            raise TypeError(f"name {name!r} is not a string")
        row = self._row_of(values[0])
        c = self.cols
        if row is None:
            if self.row is None and values[0] != len(self.names) + 1:
                self.row = {i + 1: i for i in range(len(self.names))}
            if self.row is not None:
                self.row[values[0]] = len(self.names)
            self.names.append(name)
            for col, v in zip(self._INT, values):
                c[col].append(v)
            for col in self._FLOAT:
                c[col].append(_NAN)
        else:
            self.names[row] = name
            for col, v in zip(self._INT, values):
                c[col][row] = v
            for col in self._FLOAT:
                c[col][row] = _NAN

    def end(self, r: dict[str, Any]) -> None:
        row = self._row_of(r["id"])
        if row is None:
            return
        c = self.cols
        c["q_end"][row], c["t_end_ns"][row], c["host_ms"][row] = r["q"], r["t"], r["ms"]
        c["host_syncs"][row] = r.get("hs", 0)
        c["op_ms"][row] = r["ons"] / 1e6 if "ons" in r else _NAN
        c["tracer_ms"][row] = r["tns"] / 1e6 if "tns" in r else _NAN

    def device(self, r: dict[str, Any]) -> None:
        row = self._row_of(r["id"])
        if row is not None:
            self.cols["device_ms"][row] = r["dms"]

    def table(self) -> pd.DataFrame:
        """The spans table with its documented columns and dtypes (a copy)."""
        c = self.cols
        data: dict[str, Any] = {}
        for col in SPAN_COLUMNS:
            if col == "name":
                data[col] = pd.array(self.names, dtype="string")
            elif col == "index":
                idx = np.array(c[col], dtype=np.int64)
                missing = idx == _NO_INDEX
                data[col] = pd.arrays.IntegerArray(np.where(missing, 0, idx), missing)
            else:
                data[col] = np.array(c[col], dtype=np.int64 if col in self._INT else np.float64)
        return pd.DataFrame(data, columns=list(SPAN_COLUMNS))


class TableFolder:
    """Event records (and bulk allocation rows) folded in order into the trace's tables.

    `fold` costs only the records it is given, so a live follower pays per poll for what was
    appended; `tables()` builds DataFrames from the folded columns (a copy, the folder goes on).
    """

    def __init__(self) -> None:
        self.alloc: dict[str, list[Any]] = {c: [] for c in ALLOC_COLUMNS}
        self._alloc_row: dict[int, int] = {}
        self.pending: list[dict[str, Any]] = []  # f/r/z records of allocations not seen yet
        self.spans = SpanBook()
        self.samples: list[tuple] = []
        self.counters: list[tuple] = []
        self.kv: list[tuple] = []
        self.records = 0

    def fold(self, records: Iterable[dict[str, Any]]) -> None:
        """Apply records in order; TraceFoldError names the first damaged one."""
        n = 0
        for r in records:
            n += 1
            k = r.get("k")
            try:
                if k == "a":
                    self._add_alloc(r["id"], r["q"], r["t"], r["b"], r["c"], r["s"], r.get("n"))
                elif k in ("f", "r", "z"):
                    row = self._alloc_row.get(r["id"])
                    if row is None:
                        self.pending.append(r)
                    else:
                        self._apply(row, r)
                elif k == "b":
                    self.spans.begin(r)
                elif k == "e":
                    self.spans.end(r)
                elif k == "x":
                    self.spans.device(r)
                elif k == "m":
                    self.counters.append((r["t"], r["q"], r["s"], r["alloc"], r["reserved"]))
                elif k == "d":
                    self.samples.append((r["t"], r["used"], r["proc"], r["util"], r.get("others", -1)))
                elif k == "kv":
                    self.kv.append((r["t"], r.get("q", -1), r["chunk"], r["logical"], r["stored"], r["resident"]))
            except KeyError as exc:
                raise TraceFoldError(f"event record of kind {k!r} lacks field {exc} ({str(r)[:120]})") from None
            except (TypeError, ValueError, OverflowError) as exc:
                raise TraceFoldError(f"event record of kind {k!r} holds a value of the wrong type: {exc} ({str(r)[:120]})") from None
        self.records += n

    def add_bulk(self, columns: dict[str, list[Any]]) -> None:
        """Append allocation rows given as columns (the CUDA drains' history batches, streamed parts):
        a list extend per column, not a call per row (a live follower folds millions of them)."""
        ids = list(columns.get("id") or [])
        n = len(ids)
        if not n:
            return
        if any(len(columns[c]) != n for c in ALLOC_COLUMNS):
            raise TraceFoldError(f"allocation columns of unequal length ({', '.join(f'{c} {len(columns[c])}' for c in ALLOC_COLUMNS)})")
        al, base = self.alloc, len(self.alloc["id"])
        for c in ALLOC_COLUMNS:
            al[c].extend(ids if c == "id" else columns[c])
        self._alloc_row.update(zip(ids, range(base, base + n)))  # a repeated id: the later row, as per row

    def _add_alloc(self, aid: int, q: int, t: int, nbytes: int, cat: str, span: int, name: str | None,
                   q_free: int = NO_FREE, t_free: int = NO_FREE) -> None:
        al = self.alloc
        self._alloc_row[aid] = len(al["id"])
        for col, v in zip(ALLOC_COLUMNS, (aid, q, q_free, t, t_free, nbytes, cat, span, name)):
            al[col].append(v)

    def _apply(self, row: int, r: dict[str, Any]) -> None:
        al, k = self.alloc, r["k"]
        if k == "f":
            al["q_free"][row], al["t_free_ns"][row] = r["q"], r["t"]
        elif k == "r":
            al["category"][row] = r["c"]
            if r.get("n"):
                al["name"][row] = r["n"]
        else:
            al["bytes"][row] = r["b"]

    def _settle_pending(self) -> None:
        waiting = []
        for r in self.pending:
            row = self._alloc_row.get(r["id"])
            if row is None:
                waiting.append(r)  # its allocation may still come (live) or never existed (ignored)
            else:
                self._apply(row, r)
        self.pending = waiting

    def tables(self) -> dict[str, pd.DataFrame]:
        """The five tables with their documented columns and dtypes (live allocations: q_free = -1)."""
        self._settle_pending()
        try:
            al = pd.DataFrame({c: pd.array(self.alloc[c], dtype="int64") for c in _ALLOC_INT})
            al["category"] = pd.array(self.alloc["category"], dtype="string")
            al["name"] = pd.array(self.alloc["name"], dtype="string")
            spans = self.spans.table()
        except (ValueError, TypeError, OverflowError) as exc:
            raise TraceFoldError(f"event records hold a value of the wrong type ({exc})") from None
        return {
            "allocations": al[list(ALLOC_COLUMNS)],
            "spans": spans,
            "samples": typed("samples", pd.DataFrame(self.samples, columns=list(SAMPLE_COLUMNS))),
            "counters": typed("counters", pd.DataFrame(self.counters, columns=list(COUNTER_COLUMNS))),
            "kv": typed("kv", pd.DataFrame(self.kv, columns=list(KV_COLUMNS))),
        }
