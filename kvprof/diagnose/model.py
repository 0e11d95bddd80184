"""What `kvprof diagnose` finds, as plain data: buffer groups, causes, projections, the diagnosis."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from kvprof.errors import UsageError
from kvprof.read.summary import KVBytes

__all__ = ["SOURCES", "FORMATS", "CAUSE_BUFFERS", "TEMPORARY_CATEGORIES", "BufferGroup", "Cause", "Projection", "Diagnosis"]

FORMATS: tuple[str, ...] = ("text", "json", "md")
CAUSE_BUFFERS = 6  # buffer groups listed under each cause; the rest in one "and N more" line
# Categories of per-call temporaries: for these, outliving the layer call that made them is news.
TEMPORARY_CATEGORIES: tuple[str, ...] = ("kv_dequant", "kv_scratch", "activations", "decode", "unattributed")
# Where each kind of figure comes from: every number diagnose prints names one of these.
SOURCES = {
    "allocation table": "allocations.parquet: every allocation's bytes, category, name, stage and alloc/free order",
    "span table": "spans.parquet: stage begin/end order, giving stages of origin, phases and retention",
    "kv table": "kv.parquet: logical / stored (packed bits + metadata) / resident bytes after each chunk",
    "meta.json": "method, integration, code storage, config (layers, heads, head_dim, tokens per frame, dtype), rollout",
    "method facts": "meta.json's method_facts, written at trace time: key/value bit widths, lossless, cadence, parameter defaults",
}


@dataclass
class BufferGroup:
    """Allocations live at the peak with the same category, buffer name and stage of origin."""

    category: str
    name: str  # buffer name without its layer ('k_codes'), or '(unnamed)'
    stage: str  # kind path of the stage that made them
    count: int
    bytes: int
    layers: int  # distinct layers among them (0 when unnamed)
    retained: bool  # outlived the layer call (or stage) that made them

    def label(self) -> str:
        where = f"{self.count} x" if self.layers <= 1 else f"{self.count} x ({self.layers} layers)"
        ret = ", retained" if self.retained and self.category in TEMPORARY_CATEGORIES else ""
        return f"{self.category} · {self.name} · {where} · made in {self.stage}{ret}"


@dataclass
class Cause:
    """One reason bytes are live at the peak, with the buffers that show it."""

    kind: str  # retained_dequant | full_buffer_dequant | window_dequant | wide_codes | duplicate_codes
    #            | metadata | fp_window | scratch | decode_over_cache | oom
    title: str
    bytes: int  # bytes live at the peak that this cause accounts for
    detail: str
    source: str
    saving_bytes: int | None = None  # what removing the cause would take off the peak instant
    buffers: list[BufferGroup] = field(default_factory=list)
    excess_bytes: int | None = None  # with a baseline: its bytes the baseline does not hold (diagnose_rank)
    in_baseline: bool | None = None  # with a baseline: the baseline has a cause of this kind too


@dataclass
class Projection:
    """The peak under another setting: max over phases of (phase peak + this setting's change)."""

    scenario: str
    peak_bytes: int
    delta_bytes: int  # vs the traced peak
    phase: str  # the phase that would hold the peak
    terms: list[str]  # the arithmetic at that phase, each term with its source
    estimate: bool  # True when a term comes from the byte model rather than measured bytes
    command: str | None  # the kvprof trace command that makes it real


@dataclass
class Diagnosis:
    """Everything `kvprof diagnose` says about one trace."""

    trace: str
    label: str
    method: str | None
    integration: str | None
    codes: str | None
    status: str
    error: str | None
    peak_bytes: int
    peak_stage: str
    peak_phase: str
    peak_t_s: float
    baseline: dict[str, Any] | None  # path, label, peak_bytes, peak_stage, peak_phase, found_by
    by_category: pd.DataFrame  # category, trace_bytes, baseline_bytes, delta_bytes
    by_stage: pd.DataFrame  # stage, trace_bytes, baseline_bytes, delta_bytes
    phases: pd.DataFrame  # phase, peak_bytes, cache_bytes, baseline_peak_bytes
    kv: KVBytes | None
    causes: list[Cause]
    buffers: list[BufferGroup]
    projections: list[Projection]
    notes: list[str]
    phase_notes: list[str] = field(default_factory=list)  # what the phase table's rows mean where not plain

    # ------------------------------------------------------------------ views
    @property
    def difference_bytes(self) -> int | None:
        return None if self.baseline is None else self.peak_bytes - int(self.baseline["peak_bytes"])

    def to_dict(self) -> dict[str, Any]:
        def frame(df: pd.DataFrame) -> list[dict[str, Any]]:
            return json.loads(df.to_json(orient="records"))

        return {
            "trace": self.trace, "label": self.label, "method": self.method, "integration": self.integration,
            "codes": self.codes, "status": self.status, "error": self.error,
            "peak": {"bytes": self.peak_bytes, "stage": self.peak_stage, "phase": self.peak_phase, "t_s": self.peak_t_s},
            "baseline": self.baseline, "difference_bytes": self.difference_bytes,
            "by_category": frame(self.by_category), "by_stage": frame(self.by_stage), "phases": frame(self.phases),
            "kv": None if self.kv is None else self.kv.to_dict(),
            "causes": [asdict(c) for c in self.causes],
            "buffers": [asdict(b) for b in self.buffers],
            "projections": [asdict(p) for p in self.projections],
            "notes": self.notes,
            "phase_notes": self.phase_notes,
            "sources": SOURCES,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def headline(self) -> str:
        """One sentence: the peak, how it compares with bf16, the cause that explains it."""
        from kvprof.diagnose import render

        return render.headline(self)

    def to_text(self) -> str:
        from kvprof.diagnose import render

        return render.text(self)

    def to_markdown(self) -> str:
        from kvprof.diagnose import render

        return render.markdown(self)

    def render(self, fmt: str = "text") -> str:
        """`text`, `json` or `md`."""
        if fmt == "text":
            return self.to_text()
        if fmt == "json":
            return self.to_json() + "\n"
        if fmt in ("md", "markdown"):
            return self.to_markdown()
        raise UsageError(f"unknown diagnose format {fmt!r}; choose one of {', '.join(FORMATS)}")

