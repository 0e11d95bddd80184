"""Reading traces for analyses, the TUI and reports: `load_trace(path) -> Trace`."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from kvprof.read.summary import Summary
from tracers.liveness import shown_status
from tracers.trace_io import NO_FREE, SUMMARY_FILE, RawTrace, TraceError, read_raw_trace
from tracers.vocabulary import CHUNK, PASS_NAMES

__all__ = ["Trace", "TraceError", "load_trace", "list_traces"]


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
    def memory_events(self) -> pd.DataFrame:
        """Every alloc (+bytes) and free (-bytes) in exact order: columns q, t_ns, delta, category,
        alloc_id, live. Reports and diagnose ask for it several times per trace; it is built once."""
        a = self.allocations
        allocs = pd.DataFrame({"q": a["q_alloc"], "t_ns": a["t_alloc_ns"], "delta": a["bytes"], "category": a["category"],
                               "alloc_id": a["id"]})
        freed = a[a["q_free"] != NO_FREE]
        frees = pd.DataFrame({"q": freed["q_free"], "t_ns": freed["t_free_ns"], "delta": -freed["bytes"],
                              "category": freed["category"], "alloc_id": freed["id"]})
        ev = pd.concat([allocs, frees], ignore_index=True).sort_values("q", kind="stable").reset_index(drop=True)
        ev["live"] = ev["delta"].cumsum()
        return ev

    @cached_property
    def spans(self) -> pd.DataFrame:
        """Spans with `path` ('rollout/chunk[1]/refresh/layer[0]/kv_read'), `kind_path` (indices
        dropped), `depth`, and for each span its enclosing `chunk` and `pass_name` where known."""
        spans = self.raw.tables["spans"].copy()
        elem: dict[int, str] = {}
        parent: dict[int, int] = {}
        names: dict[int, str] = {}
        idx: dict[int, Any] = {}
        for sid, par, name, index in zip(spans["id"], spans["parent"], spans["name"], spans["index"]):
            sid, par = int(sid), int(par)
            names[sid] = str(name)
            idx[sid] = None if pd.isna(index) else int(index)
            elem[sid] = str(name) if idx[sid] is None else f"{name}[{idx[sid]}]"
            parent[sid] = par
        paths: dict[int, str] = {}
        kinds: dict[int, str] = {}
        depth: dict[int, int] = {}
        chunk: dict[int, Any] = {}
        pass_name: dict[int, Any] = {}
        for sid in elem:  # parents have smaller ids, so they are resolved first
            par = parent[sid]
            if par in paths:
                paths[sid] = paths[par] + "/" + elem[sid]
                kinds[sid] = kinds[par] + "/" + names[sid]
                depth[sid] = depth[par] + 1
                chunk[sid], pass_name[sid] = chunk[par], pass_name[par]
            else:
                paths[sid], kinds[sid], depth[sid] = elem[sid], names[sid], 0
                chunk[sid], pass_name[sid] = None, None
            if names[sid] == CHUNK:
                chunk[sid] = idx[sid]
            if names[sid] in PASS_NAMES:
                pass_name[sid] = elem[sid]
        spans["path"] = spans["id"].map(paths).astype("string")
        spans["kind_path"] = spans["id"].map(kinds).astype("string")
        spans["depth"] = spans["id"].map(depth).astype("int64")
        spans["chunk"] = spans["id"].map(chunk).astype("Int64")
        spans["pass_name"] = spans["id"].map(pass_name).astype("string")
        return spans

    @cached_property
    def allocations_with_stage(self) -> pd.DataFrame:
        """Allocations joined with the path / kind path / pass of the stage that made them."""
        spans = self.spans[["id", "path", "kind_path", "chunk", "pass_name"]].rename(columns={"id": "span_id"})
        out = self.allocations.merge(spans, on="span_id", how="left")
        out["path"] = out["path"].fillna("(outside stages)")
        out["kind_path"] = out["kind_path"].fillna("(outside stages)")
        return out


def load_trace(path: str | Path) -> Trace:
    """Load a finished or live trace folder; TraceError with a clear message otherwise."""
    return Trace(read_raw_trace(path))


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
