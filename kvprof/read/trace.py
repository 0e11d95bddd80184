"""Reading traces for analyses, the TUI and reports: `load_trace(path) -> Trace`."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from kvprof.read.summary import Summary
from kvprof.read.views import Views, compute_views, compute_views_from_file, load_views, write_views
from tracers.liveness import shown_status
from tracers.summary_schema import read_summary_file
from tracers.trace_fold import TableFolder
from tracers.trace_io import (EVENTS_FILE, SUMMARY_FILE, TABLES, RawTrace, TraceError, check_tables, read_meta,
                              read_raw_trace)
from tracers.vocabulary import CHUNK, PASS_NAMES

__all__ = ["Trace", "TraceError", "load_trace", "load_closed", "list_traces"]


@dataclass
class Trace:
    """A trace with derived columns: each span's path, its kind path, each allocation's stage."""

    raw: RawTrace

    @property
    def path(self) -> Path:
        return self.raw.path

    @property
    def meta(self) -> dict[str, Any]:
        return self.raw.meta

    @property
    def summary(self) -> Summary | None:
        """summary.json as read with the trace (None until written), typed; parsed once per
        summary object (the live follower swaps in the summary when it appears)."""
        data = self.raw.summary
        cached = self.__dict__.get("_summary")
        if cached is None or cached[0] is not data:
            self.__dict__["_summary"] = (data, None if data is None else Summary.from_dict(data, self.path / SUMMARY_FILE))
        return self.__dict__["_summary"][1]

    @property
    def status(self) -> str:
        """meta's status, or `killed` for a `running` trace whose writer process is gone."""
        return shown_status(self.raw.meta)

    @property
    def allocations(self) -> pd.DataFrame:
        return self.raw.tables["allocations"]

    @property
    def samples(self) -> pd.DataFrame:
        return self.raw.tables["samples"]

    @property
    def counters(self) -> pd.DataFrame:
        return self.raw.tables["counters"]

    @property
    def kv(self) -> pd.DataFrame:
        return self.raw.tables["kv"]

    @cached_property
    def views(self) -> Views:
        """What the first screens need (kvprof.read.views): stored with the trace at close, else
        computed from the tables once per trace."""
        return compute_views(self)

    @property
    def known_views(self) -> Views | None:
        """The views when already at hand (stored, or computed earlier); None rather than computing them."""
        return self.__dict__.get("views")

    @cached_property
    def memory_events(self) -> pd.DataFrame:
        """Every alloc (+bytes) and free (-bytes) in exact order: columns q, t_ns, delta, category,
        alloc_id, live. Reports and diagnose ask for it several times per trace; it is built once."""
        from kvprof.read.events import event_arrays

        ev = event_arrays(self.allocations)
        return pd.DataFrame({"q": ev.q, "t_ns": ev.t_ns, "delta": ev.delta,
                             "category": self.allocations["category"].take(ev.row).reset_index(drop=True),
                             "alloc_id": ev.alloc_id, "live": ev.live})

    @cached_property
    def spans(self) -> pd.DataFrame:
        """Spans with `path` ('rollout/chunk[1]/refresh/layer[0]/kv_read'), `kind_path` (indices
        dropped), `depth`, and for each span its enclosing `chunk` and `pass_name` where known."""
        spans = self.raw.tables["spans"].copy()
        # plain lists in row order, one pass (parents have smaller ids, so they come first): iterating pandas'
        # arrays or mapping dicts onto ids costs ~1 us an element (168k spans on a 252-frame PRQ rollout)
        ids = spans["id"].tolist()
        names = [str(n) for n in spans["name"].astype(object).to_numpy()]
        indices = spans["index"].astype("Int64").to_numpy(dtype=object, na_value=None).tolist()
        row_of: dict[int, int] = {}
        paths: list[str] = []
        kinds: list[str] = []
        depth: list[int] = []
        chunk: list[Any] = []
        pass_name: list[Any] = []
        for row, (sid, par, name, index) in enumerate(zip(ids, spans["parent"].tolist(), names, indices)):
            index = None if index is None else int(index)
            elem = name if index is None else f"{name}[{index}]"
            up = row_of.get(par)
            if up is not None:
                paths.append(paths[up] + "/" + elem)
                kinds.append(kinds[up] + "/" + name)
                depth.append(depth[up] + 1)
                chunk.append(chunk[up])
                pass_name.append(pass_name[up])
            else:
                paths.append(elem)
                kinds.append(name)
                depth.append(0)
                chunk.append(None)
                pass_name.append(None)
            if name == CHUNK:
                chunk[row] = index
            if name in PASS_NAMES:
                pass_name[row] = elem
            row_of[sid] = row
        spans["path"] = pd.array(paths, dtype="string")
        spans["kind_path"] = pd.array(kinds, dtype="string")
        spans["depth"] = pd.array(depth, dtype="int64")
        spans["chunk"] = pd.array(chunk, dtype="Int64")
        spans["pass_name"] = pd.array(pass_name, dtype="string")
        return spans

    @cached_property
    def allocations_with_stage(self) -> pd.DataFrame:
        """Allocations joined with the path / kind path / pass of the stage that made them."""
        return self.with_stage(self.allocations)

    def with_stage(self, allocs: pd.DataFrame) -> pd.DataFrame:
        """Rows of the allocation table joined with the path / kind path / pass of their stage."""
        spans = self.spans[["id", "path", "kind_path", "chunk", "pass_name"]].rename(columns={"id": "span_id"})
        out = allocs.merge(spans, on="span_id", how="left")
        out["path"] = out["path"].fillna("(outside stages)")
        out["kind_path"] = out["kind_path"].fillna("(outside stages)")
        return out


class _LazyAllocations(dict):
    """A closed trace's tables with the allocation table read on first use: with stored views
    (kvprof.read.views) the first screens never need its rows."""

    def __init__(self, folder: Path, tables: dict[str, pd.DataFrame]):
        super().__init__(tables)
        self.folder = folder

    def __missing__(self, key: str) -> pd.DataFrame:
        if key != "allocations":
            raise KeyError(key)
        self.update(read_raw_trace(self.folder).tables)
        return self[key]


def _lazy_closed(folder: Path) -> Trace | None:
    """A closed trace with every table but its allocation rows read and checked (those are read
    on first use); None when the folder is not a closed trace or a table is unreadable, TraceError
    when one is damaged."""
    if (folder / EVENTS_FILE).is_file() or not all((folder / f"{t}.parquet").is_file() for t in TABLES):
        return None
    meta = read_meta(folder)
    summary = read_summary_file(folder / SUMMARY_FILE)
    tables: dict[str, pd.DataFrame] = {"allocations": TableFolder().tables()["allocations"]}  # typed, empty: checks only
    for name in TABLES:
        if name != "allocations":
            try:
                tables[name] = pd.read_parquet(folder / f"{name}.parquet")
            except Exception:  # pyarrow raises several unrelated types; the full reader names the damage
                return None
    tables = check_tables(tables, folder)
    del tables["allocations"]
    return Trace(RawTrace(folder, meta, _LazyAllocations(folder, tables), summary, live=False, torn_tail=False))


def _with_views(folder: Path) -> Trace | None:
    """A closed trace whose stored views hold for its tables, its allocation rows left unread."""
    if (folder / EVENTS_FILE).is_file() or not all((folder / f"{t}.parquet").is_file() for t in TABLES):
        return None
    views = load_views(folder)
    if views is None:
        return None
    trace = _lazy_closed(folder)
    if trace is not None:
        trace.__dict__["views"] = views
    return trace


def load_closed(path: str | Path) -> Trace:
    """Load a trace that has just closed and store its views (views.json), as `kvprof.api` does
    at close: the views are computed straight from allocations.parquet a column at a time
    (kvprof.read.views.compute_views_from_file), so the allocation rows are never a DataFrame
    and stay unread unless an analysis asks for them. A trace that is not plainly kvprof's own
    (live, damaged, rows the reader skips) is loaded as `load_trace` loads it, views computed
    from its tables where they hold. A views file that cannot be written (a full disk) is left
    out: readers then compute the views from the tables."""
    folder = Path(path)
    try:
        trace = _lazy_closed(folder)
    except TraceError:
        trace = None  # load_trace says what is wrong
    views = None if trace is None else compute_views_from_file(trace)
    if views is None:
        trace = load_trace(folder)
    else:
        trace.__dict__["views"] = views
    try:
        write_views(trace)
    except OSError:
        pass
    return trace


def load_trace(path: str | Path) -> Trace:
    """Load a finished or live trace folder; TraceError with a clear message otherwise. A closed
    trace with views stored at close (kvprof.read.views) leaves its allocation rows unread until
    an analysis needs them."""
    return _with_views(Path(path)) or Trace(read_raw_trace(path))


def list_traces(root: str | Path = "traces") -> list[Path]:
    """Trace folders directly under `root` (those with a meta.json), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: (p / "meta.json").stat().st_mtime, reverse=True)


def meta_label(meta: dict[str, Any]) -> str:
    """Short human label of a trace: `method/integration/codes (config, frames)`, leaving out
    what the trace does not say (a `kvprof.api` trace without them: its run id and "api trace")."""
    parts = [str(meta[k]) for k in ("method", "integration", "codes") if meta.get(k)]
    cfg = (meta.get("config") or {}).get("name")
    frames = (meta.get("rollout") or {}).get("frames")
    shape = ", ".join(x for x in (str(cfg) if cfg else "", f"{frames}f" if frames is not None else "") if x)
    head = "/".join(parts) or f"{meta.get('run_id') or 'trace'} [{meta.get('source') or 'no method recorded'}]"
    return f"{head} ({shape})" if shape else head
