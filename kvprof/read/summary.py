"""summary.json as one typed value: `Summary`, its one writer (`write_summary`) and its one loader
(`load_summary` / `Summary.from_dict`, which checks the JSON through `tracers.summary_schema`).

The JSON shape is the one docs/trace-format.md describes; `Summary.to_dict()` writes it key for
key, so `--json` outputs and older readers see what they saw before. Older summaries that lack
newer fields (e.g. `kv.logical_dtype`) load with those fields None. The writers (the tracing API,
the runner's host profile, quality) build or update a `Summary` and hand it to `write_summary`;
readers (cli, compare, report, TUI, diagnose) use its attributes, never string keys.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tracers.atomic import write_json_atomic
from tracers.summary_schema import check_summary, read_summary_file
from tracers.trace_io import SUMMARY_FILE

__all__ = ["Peak", "KVBytes", "StageTime", "Reconciliation", "Failure", "Summary", "load_summary", "write_summary"]


@dataclass(frozen=True, kw_only=True)
class Peak:
    """The exact peak of tracked live bytes and what was live then (`summary.peak`)."""

    bytes: int
    q: int | None = None
    t_ns: int | float = 0
    stage: str = ""  # stage path during which the peak allocation was made
    by_category: dict[str, int] = field(default_factory=dict)
    by_stage: dict[str, int] = field(default_factory=dict)  # stage kind path of origin -> live bytes
    by_pass: dict[str, int] = field(default_factory=dict)  # pass of origin (denoise / refresh / outside chunks)
    top_allocations: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of `summary.peak`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Peak":
        """From a checked `summary.peak` object."""
        return cls(bytes=d["bytes"], q=d.get("q"), t_ns=d["t_ns"], stage=d["stage"], by_category=dict(d.get("by_category") or {}),
                   by_stage=dict(d.get("by_stage") or {}), by_pass=dict(d.get("by_pass") or {}),
                   top_allocations=list(d.get("top_allocations") or []))


@dataclass(frozen=True, kw_only=True)
class KVBytes:
    """KV bytes of the last recorded cache state (`summary.kv`): logical bytes are the represented
    tokens at the element size of `logical_dtype` (None: the trace does not say)."""

    chunk: int | None = None
    logical_bytes: int
    logical_dtype: str | None = None
    stored_bytes: int
    resident_bytes: int
    ratio_stored: float | None = None  # logical / stored
    ratio_resident: float | None = None  # logical / resident

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of `summary.kv`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KVBytes":
        """From a checked `summary.kv` object."""
        dtype = d.get("logical_dtype")
        return cls(chunk=d.get("chunk"), logical_bytes=d["logical_bytes"], logical_dtype=dtype if isinstance(dtype, str) else None,
                   stored_bytes=d["stored_bytes"], resident_bytes=d["resident_bytes"], ratio_stored=d.get("ratio_stored"),
                   ratio_resident=d.get("ratio_resident"))


@dataclass(frozen=True)
class StageTime:
    """One row of `summary.stage_times`: a stage kind, how often it ran, host and device ms totals
    (device_ms None where no span of the kind has a device time: CPU runs)."""

    stage: str
    count: int
    host_ms: float | None
    device_ms: float | None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageTime":
        return cls(d["stage"], d["count"], d.get("host_ms"), d.get("device_ms"))


# Reconciliation keys in the order they are written; a key whose value is None is left out.
_RECONCILIATION_KEYS = ("note", "boundaries", "max_abs_gap_bytes", "boundaries_exact", "max_memory_allocated_bytes",
                        "trace_peak_bytes", "peak_gap_bytes", "block_sizes")


@dataclass(frozen=True, kw_only=True)
class Reconciliation:
    """Attributed live bytes vs the allocator's counters (CUDA) or the tracker's own total (CPU):
    `note` on CPU, the boundary gaps and peak gap on CUDA (absent fields None)."""

    tracker: str | None = None
    note: str | None = None
    boundaries: int | None = None
    max_abs_gap_bytes: int | None = None
    boundaries_exact: int | None = None
    max_memory_allocated_bytes: int | None = None
    trace_peak_bytes: int | None = None
    peak_gap_bytes: int | None = None
    block_sizes: dict[str, Any] | None = None  # the allocator layout mirror's counts (meta.allocator_layout)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of `summary.reconciliation`: `tracker` always, the others where known."""
        out: dict[str, Any] = {"tracker": self.tracker}
        out.update({k: getattr(self, k) for k in _RECONCILIATION_KEYS if getattr(self, k) is not None})
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Reconciliation":
        return cls(tracker=d.get("tracker"), **{k: d.get(k) for k in _RECONCILIATION_KEYS})


@dataclass(frozen=True, kw_only=True)
class Failure:
    """Where an oom / interrupted / failed run stopped and what was live then (`summary.failure`)."""

    status: str
    stage: str | None = None
    q: int | None = None
    live_bytes: int = 0
    live_by_category: dict[str, int] = field(default_factory=dict)
    live_by_stage: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Failure":
        return cls(status=str(d.get("status")), stage=d.get("stage"), q=d.get("q"), live_bytes=d.get("live_bytes") or 0,
                   live_by_category=dict(d.get("live_by_category") or {}), live_by_stage=dict(d.get("live_by_stage") or {}))


@dataclass(frozen=True, kw_only=True)
class Summary:
    """summary.json: what `kvprof.read.analysis.summarize` computes from a trace's tables, plus
    what the writers add (notes, failure, oom facts, host profile, quality).

    `oom` (the OOM facts of kvprof.oomfacts), `host_profile` (kvprof.read.hostprof) and `quality`
    (kvprof.quality) keep their own modules' JSON objects; the fields None are left out of the JSON
    (notes, failure, oom, host_profile, quality) where the writer did not set them."""

    status: str | None = None
    peak: Peak | None = None
    live_at_end_by_category: dict[str, int] = field(default_factory=dict)
    stage_times: tuple[StageTime, ...] = ()
    kv: KVBytes | None = None
    kv_per_chunk: tuple[dict[str, Any], ...] = ()
    reconciliation: Reconciliation = field(default_factory=Reconciliation)
    wall_s: float | None = None
    allocation_events: int | None = None
    notes: tuple[str, ...] | None = None
    failure: Failure | None = None
    oom: dict[str, Any] | None = None
    host_profile: dict[str, Any] | None = None
    quality: dict[str, Any] | None = None
    tracer_cost: dict[str, Any] | None = None  # kvprof's own time in the run, as it measured it (analysis.tracer_cost)

    # ------------------------------------------------------------------ typed updates (writers)
    def with_notes(self, *notes: str) -> "Summary":
        """This summary with `notes` appended."""
        return replace(self, notes=(*(self.notes or ()), *notes))

    def with_host_profile(self, host_profile: dict[str, Any]) -> "Summary":
        """This summary with the host profile's summary (kvprof.read.hostprof.host_profile_summary)."""
        return replace(self, host_profile=host_profile)

    def with_quality(self, quality: dict[str, Any]) -> "Summary":
        """This summary with quality metrics (or {"missing": why}) from kvprof.quality."""
        return replace(self, quality=quality)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The JSON object of summary.json (the shape docs/trace-format.md describes)."""
        out: dict[str, Any] = {
            "status": self.status,
            "peak": None if self.peak is None else self.peak.to_dict(),
            "live_at_end_by_category": dict(self.live_at_end_by_category),
            "stage_times": [asdict(r) for r in self.stage_times],
            "kv": None if self.kv is None else self.kv.to_dict(),
            "kv_per_chunk": [dict(r) for r in self.kv_per_chunk],
            "reconciliation": self.reconciliation.to_dict(),
            "wall_s": self.wall_s,
            "allocation_events": self.allocation_events,
        }
        if self.tracer_cost is not None:
            out["tracer_cost"] = self.tracer_cost
        if self.notes is not None:
            out["notes"] = list(self.notes)
        if self.failure is not None:
            out["failure"] = self.failure.to_dict()
        for key in ("oom", "host_profile", "quality"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def to_json(self) -> str:
        """summary.json's text."""
        return json.dumps(self.to_dict(), indent=2, default=str)

    @classmethod
    def from_dict(cls, d: Any, path: Path | str = SUMMARY_FILE) -> "Summary":
        """The summary of a parsed summary.json; TraceError naming `path` and the field when a field
        has a type or range readers cannot use (tracers.summary_schema)."""
        path = Path(path)
        check_summary(d, path)
        rec = d.get("reconciliation")
        notes = d.get("notes")
        return cls(
            status=d.get("status"),
            peak=None if d.get("peak") is None else Peak.from_dict(d["peak"]),
            live_at_end_by_category=dict(d.get("live_at_end_by_category") or {}),
            stage_times=tuple(StageTime.from_dict(r) for r in d.get("stage_times") or ()),
            kv=None if d.get("kv") is None else KVBytes.from_dict(d["kv"]),
            kv_per_chunk=tuple(d.get("kv_per_chunk") or ()),
            reconciliation=Reconciliation.from_dict(rec) if rec is not None else Reconciliation(),
            wall_s=d.get("wall_s"),
            allocation_events=d.get("allocation_events"),
            notes=None if notes is None else tuple(notes),
            failure=None if d.get("failure") is None else Failure.from_dict(d["failure"]),
            oom=d.get("oom"),
            host_profile=d.get("host_profile"),
            quality=d.get("quality"),
            tracer_cost=d.get("tracer_cost"),
        )


def write_summary(folder: str | Path, summary: Summary) -> Path:
    """Write `folder/summary.json` atomically (readers never see half of it); returns its path.
    OSError (a full disk) goes to the caller."""
    path = Path(folder) / SUMMARY_FILE
    write_json_atomic(path, summary.to_dict())
    return path


def load_summary(folder: str | Path) -> Summary | None:
    """`folder/summary.json` as a Summary; None when there is none; TraceError naming the file
    (and the field) when it is truncated or damaged."""
    path = Path(folder) / SUMMARY_FILE
    data = read_summary_file(path)
    return None if data is None else Summary.from_dict(data, path)
