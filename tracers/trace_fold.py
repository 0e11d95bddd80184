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

from typing import Any, Iterable

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
_SPAN_INT = ("id", "parent", "q_start", "q_end", "t_start_ns", "t_end_ns", "host_syncs")
_NAN = float("nan")


class TraceFoldError(ValueError):
    """A record lacks a field or holds a value of the wrong type (the caller names the file)."""


class TableFolder:
    """Event records (and bulk allocation rows) folded in order into the trace's tables.

    `fold` costs only the records it is given, so a live follower pays per poll for what was
    appended; `tables()` builds DataFrames from the folded columns (a copy, the folder goes on).
    """

    def __init__(self) -> None:
        self.alloc: dict[str, list[Any]] = {c: [] for c in ALLOC_COLUMNS}
        self._alloc_row: dict[int, int] = {}
        self.pending: list[dict[str, Any]] = []  # f/r/z records of allocations not seen yet
        self.spans: dict[int, dict[str, Any]] = {}
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
                    self.spans[r["id"]] = {
                        "id": r["id"], "parent": r["p"], "name": r["n"], "index": r.get("i"),
                        "q_start": r["q"], "q_end": NO_FREE, "t_start_ns": r["t"], "t_end_ns": NO_FREE,
                        "host_ms": _NAN, "device_ms": _NAN, "host_syncs": 0, "op_ms": _NAN, "tracer_ms": _NAN,
                    }
                elif k == "e":
                    s = self.spans.get(r["id"])
                    if s is not None:
                        s["q_end"], s["t_end_ns"], s["host_ms"] = r["q"], r["t"], r["ms"]
                        s["host_syncs"] = r.get("hs", 0)
                        s["op_ms"] = r["ons"] / 1e6 if "ons" in r else _NAN
                        s["tracer_ms"] = r["tns"] / 1e6 if "tns" in r else _NAN
                elif k == "x":
                    s = self.spans.get(r["id"])
                    if s is not None:
                        s["device_ms"] = r["dms"]
                elif k == "m":
                    self.counters.append((r["t"], r["q"], r["s"], r["alloc"], r["reserved"]))
                elif k == "d":
                    self.samples.append((r["t"], r["used"], r["proc"], r["util"], r.get("others", -1)))
                elif k == "kv":
                    self.kv.append((r["t"], r.get("q", -1), r["chunk"], r["logical"], r["stored"], r["resident"]))
            except (KeyError, TypeError) as exc:
                raise TraceFoldError(f"event record of kind {k!r} lacks field {exc} ({str(r)[:120]})") from None
        self.records += n

    def add_bulk(self, columns: dict[str, list[Any]]) -> None:
        """Append allocation rows given as columns (the CUDA drains' history batches)."""
        ids = columns.get("id") or []
        for i in range(len(ids)):
            self._add_alloc(ids[i], columns["q_alloc"][i], columns["t_alloc_ns"][i], columns["bytes"][i],
                            columns["category"][i], columns["span_id"][i], columns["name"][i],
                            q_free=columns["q_free"][i], t_free=columns["t_free_ns"][i])

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
            spans = pd.DataFrame(list(self.spans.values()), columns=list(SPAN_COLUMNS))
            for col in _SPAN_INT:
                spans[col] = spans[col].astype("int64")
            spans["index"] = spans["index"].astype("Int64")
            spans["name"] = spans["name"].astype("string")
            for col in ("host_ms", "device_ms", "op_ms", "tracer_ms"):
                spans[col] = spans[col].astype("float64")
        except (ValueError, TypeError, OverflowError) as exc:
            raise TraceFoldError(f"event records hold a value of the wrong type ({exc})") from None
        return {
            "allocations": al[list(ALLOC_COLUMNS)],
            "spans": spans,
            "samples": typed("samples", pd.DataFrame(self.samples, columns=list(SAMPLE_COLUMNS))),
            "counters": typed("counters", pd.DataFrame(self.counters, columns=list(COUNTER_COLUMNS))),
            "kv": typed("kv", pd.DataFrame(self.kv, columns=list(KV_COLUMNS))),
        }
