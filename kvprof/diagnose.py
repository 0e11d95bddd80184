"""`kvprof diagnose TRACE [--baseline TRACE]`: why the peak is where it is, against BF16.

`diagnose(trace, baseline)` returns a `Diagnosis` (plain data; `to_text`, `to_json`,
`to_markdown` render it). It
  1. compares the exact peak with the peak of a bf16 trace of the same config and seed (given,
     found among the traces, or run on request) and decomposes the difference by category and
     by stage of origin (both sums are exact: they add up to the difference);
  2. names the causes among the buffers live at the peak: retained or full-buffer dequantized
     K/V, codes stored wider than their bits, duplicate (residual) code tensors, scales,
     full-precision windows, quantization scratch, a peak in the VAE decode over a live cache;
  3. projects the peak under the other code storage, the other integration and with the cache
     freed before decode, from the peak of each phase and the method's byte model.
Every number comes from the trace: the allocation table (peaks, live buffers), the span table
(stages, phases), the KV table (stored vs resident bytes) and meta.json (config, method, codes).
Projections say which terms are measured and which come from the byte model.
"""
from __future__ import annotations

import functools
import html
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from kvprof.analysis import find_peak, kv_bytes, live_at, logical_label, timeline
from kvprof.compare import LOSSLESS_METHODS, open_trace, trace_codes, trace_label
from kvprof.errors import UsageError
from kvprof.diagnose_rank import more_line, rank_causes
from kvprof.phases import CACHE_CATEGORIES, allocation_phases, phase_notes, phase_peaks
from kvprof.trace import Trace, list_traces
from kvprof.units import fmt_bytes
from tracers.categories import KV_CATEGORIES
from tracers.trace_fold import NO_FREE, Q_STRIDE

__all__ = [
    "BufferGroup", "Cause", "Projection", "Diagnosis", "diagnose", "find_baseline", "run_baseline",
    "baseline_mismatch", "FORMATS",
]

FORMATS: tuple[str, ...] = ("text", "json", "md")
CAUSE_BUFFERS = 6  # buffer groups listed under each cause; the rest in one "and N more" line
# Categories of per-call temporaries: for these, outliving the layer call that made them is news.
TEMPORARY_CATEGORIES: tuple[str, ...] = ("kv_dequant", "kv_scratch", "activations", "decode", "unattributed")
PASS_PHASES: tuple[str, ...] = ("denoise", "refresh")
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8}
STORAGE_BITS = {"int8": 8, "int16": 16}
# Rollout fields that decide memory: a baseline must agree on all of them.
ROLLOUT_KEYS: tuple[str, ...] = (
    "frames", "seed", "batch", "chunk_frames", "timesteps", "attn_window_frames", "rolling_frames",
    "sink_frames", "decode", "free_cache_before_decode",
)
_LAYER_NAME = re.compile(r"^layer (\d+) / (.+)$")
FP_WINDOW_KINDS = (  # substring of a kv_fp buffer name -> what it is
    ("recent", "BF16 recent window"),
    ("staging", "full-precision staging of the current chunk"),
    ("work", "full-precision working copy kept across the denoising steps (refresh_only)"),
    ("pooled", "pooled summary tokens"),
)


# --------------------------------------------------------------------------- data
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
    kv: dict[str, Any] | None
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
            "kv": self.kv,
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
        """One sentence: the peak, how it compares with bf16, the largest cause."""
        s = f"{self.method or self.label} peaks at {fmt_bytes(self.peak_bytes)} in {self.peak_stage} ({self.peak_phase} phase)"
        if self.baseline is not None:
            d = self.difference_bytes or 0
            rel = d / self.baseline["peak_bytes"] * 100 if self.baseline["peak_bytes"] else 0.0
            word = "above" if d > 0 else "below" if d < 0 else "equal to"
            s += f", {fmt_bytes(abs(d))} ({abs(rel):.1f}%) {word} bf16's {fmt_bytes(self.baseline['peak_bytes'])}"
        if self.causes:
            c = self.causes[0]
            if self.baseline is not None and (self.difference_bytes or 0) > 0 and (c.excess_bytes or 0) > 0:
                s += (f"; the excess is first explained by {c.title} ({_signed(c.excess_bytes)} that bf16 does not hold, "
                      f"of {fmt_bytes(c.bytes)})")
            else:
                s += f"; largest cause: {c.title} ({fmt_bytes(c.bytes)})"
        return s + "."

    def to_text(self) -> str:
        out: list[str] = []
        out.append(f"kvprof diagnose {self.trace}")
        out.append(f"  {self.label} · status {self.status}" + (f" ({self.error})" if self.error else ""))
        out.append("")
        out.append(self.headline())
        out.append("")
        out.append(f"peak {fmt_bytes(self.peak_bytes)} ({self.peak_bytes:,} B) at {self.peak_t_s:.3f} s during "
                   f"{self.peak_stage} [allocation table]")
        if self.baseline is not None:
            b = self.baseline
            out.append(f"bf16 baseline {b['path']} ({b['found_by']}): peak {fmt_bytes(b['peak_bytes'])} "
                       f"({b['peak_bytes']:,} B) during {b['peak_stage']}")
            d = self.difference_bytes or 0
            out.append(f"difference {_signed(d)} ({d:+,} B)")
        for note in self.notes:
            out.append(f"note: {note}")
        out.append("")
        out.append(_section_text("live at the peak by category", self.by_category, "category", self.baseline is not None))
        out.append("")
        out.append(_section_text("live at the peak by stage of origin", self.by_stage.head(12), "stage", self.baseline is not None))
        out.append("")
        out.append("causes (buffers live at the peak) [allocation table, meta.json]:")
        if not self.causes:
            out.append("  none found: nothing KV-related is live at the peak beyond the cache itself")
        if self.baseline is not None and self.causes:
            out.append("  (ranked by what each adds over bf16 at the peaks: bytes of its buffers that bf16 does not hold)")
        for i, c in enumerate(self.causes, 1):
            save = f"; removing it saves {fmt_bytes(c.saving_bytes)}" if c.saving_bytes else ""
            out.append(f"  {i}. {c.title}: {fmt_bytes(c.bytes)} ({c.bytes:,} B){_excess_text(c)}{save}")
            out.append(f"     {c.detail} [{c.source}]")
            for bg in c.buffers[:CAUSE_BUFFERS]:
                out.append(f"       - {fmt_bytes(bg.bytes):>11}  {bg.label()}")
            more = more_line(c.buffers, CAUSE_BUFFERS)
            if more:
                out.append(f"       - {more}")
        out.append("")
        out.append("largest live buffers at the peak [allocation table]:")
        for bg in self.buffers[:12]:
            out.append(f"  {fmt_bytes(bg.bytes):>11}  {bg.label()}")
        more = more_line(self.buffers, 12)
        if more:
            out.append(f"  {more}")
        out.append("")
        out.append("phase peaks (peak of live bytes within each phase; cache = kv_fp + kv_codes + kv_meta + cross_kv) [allocation table]:")
        out.append(_phases_text(self.phases))
        out += [f"  {n}" for n in self.phase_notes]
        if self.kv:
            kv = self.kv
            out.append("")
            out.append(f"KV after the last chunk [kv table]: {logical_label(kv.get('logical_dtype'))} {fmt_bytes(kv['logical_bytes'])} · stored "
                       f"{fmt_bytes(kv['stored_bytes'])} · resident {fmt_bytes(kv['resident_bytes'])}")
        out.append("")
        out.append("projections (max over phases of phase peak + change):")
        if not self.projections:
            out.append("  none apply")
        for p in self.projections:
            tag = "estimate" if p.estimate else "from measured bytes"
            out.append(f"  {p.scenario}: peak {fmt_bytes(p.peak_bytes)} ({_signed(p.delta_bytes)} vs traced), "
                       f"held by {p.phase} [{tag}]")
            for t in p.terms:
                out.append(f"      {t}")
            if p.command:
                out.append(f"      make it real: {p.command}")
        return "\n".join(out) + "\n"

    def to_markdown(self) -> str:
        out: list[str] = []
        out.append(f"## kvprof diagnose: `{Path(self.trace).name}`")
        out.append("")
        out.append(f"{self.label}, status **{self.status}**" + (f" ({self.error})" if self.error else ""))
        out.append("")
        out.append(self.headline())
        out.append("")
        out.append(f"- peak **{fmt_bytes(self.peak_bytes)}** ({self.peak_bytes:,} B) during `{self.peak_stage}` at {self.peak_t_s:.3f} s")
        if self.baseline is not None:
            b = self.baseline
            out.append(f"- bf16 baseline `{Path(b['path']).name}` ({b['found_by']}): {fmt_bytes(b['peak_bytes'])} during `{b['peak_stage']}`")
            out.append(f"- difference **{_signed(self.difference_bytes or 0)}**")
        for note in self.notes:
            out.append(f"- note: {note}")
        out.append("")
        out.append("### Live at the peak by category")
        out.append("")
        out.append(_md_bytes_table(self.by_category, "category"))
        out.append("")
        out.append("### Live at the peak by stage of origin")
        out.append("")
        out.append(_md_bytes_table(self.by_stage.head(15), "stage"))
        out.append("")
        out.append("### Causes")
        out.append("")
        if not self.causes:
            out.append("None found.")
        for i, c in enumerate(self.causes, 1):
            save = f"; removing it saves {fmt_bytes(c.saving_bytes)}" if c.saving_bytes else ""
            out.append(f"{i}. **{c.title}**: {fmt_bytes(c.bytes)}{_excess_text(c)}{save}. {c.detail} _(source: {c.source})_")
            for bg in c.buffers[:CAUSE_BUFFERS]:
                out.append(f"    - {fmt_bytes(bg.bytes)}: {bg.label()}")
            more = more_line(c.buffers, CAUSE_BUFFERS)
            if more:
                out.append(f"    - {more}")
        out.append("")
        out.append("### Phase peaks")
        out.append("")
        cols = [c for c in ("phase", "peak_bytes", "cache_bytes", "baseline_peak_bytes") if c in self.phases.columns]
        out.append(md_table(self.phases[cols], byte_cols=cols[1:]))
        out += [f"\n- {n}" for n in self.phase_notes]
        out.append("")
        out.append("### Projections")
        out.append("")
        rows = [{"scenario": p.scenario, "peak": fmt_bytes(p.peak_bytes), "vs traced": _signed(p.delta_bytes),
                 "phase": p.phase, "kind": "estimate" if p.estimate else "measured bytes",
                 "command": f"`{p.command}`" if p.command else ""} for p in self.projections]
        out.append(md_table(pd.DataFrame(rows)) if rows else "None apply.")
        for p in self.projections:
            out.append("")
            out.append(f"- {p.scenario}: " + "; ".join(p.terms))
        return "\n".join(out) + "\n"

    def render(self, fmt: str = "text") -> str:
        """`text`, `json` or `md`."""
        if fmt == "text":
            return self.to_text()
        if fmt == "json":
            return self.to_json() + "\n"
        if fmt in ("md", "markdown"):
            return self.to_markdown()
        raise UsageError(f"unknown diagnose format {fmt!r}; choose one of {', '.join(FORMATS)}")


SOURCES = {
    "allocation table": "allocations.parquet: every allocation's bytes, category, name, stage and alloc/free order",
    "span table": "spans.parquet: stage begin/end order, giving stages of origin, phases and retention",
    "kv table": "kv.parquet: logical / stored (packed bits + metadata) / resident bytes after each chunk",
    "meta.json": "method, integration, code storage, config (layers, heads, head_dim, tokens per frame, dtype), rollout",
    "method registry": "the method's key/value bit widths (kvprof methods NAME), for codes stored wider than their bits",
}


# --------------------------------------------------------------------------- formatting helpers
def _signed(n: int) -> str:
    return ("+" if n > 0 else "") + fmt_bytes(n)


def _excess_text(c: Cause) -> str:
    if c.excess_bytes is None:
        return ""
    shared = ", a cause bf16 has too" if c.in_baseline else ""
    return f"; {_signed(c.excess_bytes)} over bf16{shared}"


def _section_text(title: str, df: pd.DataFrame, key: str, with_baseline: bool) -> str:
    lines = [f"{title} [allocation table]:"]
    if df.empty:
        return lines[0] + "\n  (nothing live)"
    width = max(len(str(k)) for k in df[key])
    if with_baseline:
        lines.append(f"  {'':<{width}}  {'this trace':>11}  {'bf16':>11}  {'difference':>11}")
    for r in df.itertuples(index=False):
        k = str(getattr(r, key))
        if with_baseline:
            lines.append(f"  {k:<{width}}  {fmt_bytes(r.trace_bytes):>11}  {fmt_bytes(r.baseline_bytes):>11}  {_signed(r.delta_bytes):>11}")
        else:
            lines.append(f"  {k:<{width}}  {fmt_bytes(r.trace_bytes):>11}")
    return "\n".join(lines)


def _phases_text(df: pd.DataFrame) -> str:
    if df.empty:
        return "  (no allocations)"
    has_base = "baseline_peak_bytes" in df.columns
    w = max(12, *(len(str(p)) for p in df["phase"]))
    lines = [f"  {'phase':<{w}} {'peak':>11} {'cache live':>13}" + (f" {'bf16 peak':>11}" if has_base else "")]
    for r in df.itertuples(index=False):
        line = f"  {r.phase:<{w}} {fmt_bytes(r.peak_bytes):>11} {fmt_bytes(r.cache_bytes):>13}"
        if has_base:
            b = r.baseline_peak_bytes
            line += f" {fmt_bytes(None if pd.isna(b) else int(b)):>11}"
        lines.append(line)
    return "\n".join(lines)


def md_text(value: Any) -> str:
    """Text from a trace (names, paths, errors) made inert in Markdown: HTML escaped, `|` and line
    breaks that would end a table cell or row escaped."""
    return html.escape(" ".join(str(value).splitlines()), quote=True).replace("|", "\\|")


def md_table(df: pd.DataFrame, byte_cols: Sequence[str] = ()) -> str:
    """A GitHub markdown table of df; `byte_cols` are printed in binary units, text cells via `md_text`."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(md_text(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        cells = []
        for c, v in zip(cols, row):
            if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
                cells.append("-")
            elif c in byte_cols:
                cells.append(_signed(int(v)) if "delta" in str(c) else fmt_bytes(int(v)))
            else:
                cells.append(md_text(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _md_bytes_table(df: pd.DataFrame, key: str) -> str:
    cols = [key, "trace_bytes"] + [c for c in ("baseline_bytes", "delta_bytes") if c in df.columns]
    return md_table(df[cols], byte_cols=cols[1:])


# --------------------------------------------------------------------------- baselines
def _rollout_key(meta: dict[str, Any]) -> dict[str, Any]:
    r = meta.get("rollout") or {}
    return {k: (list(r[k]) if isinstance(r.get(k), (list, tuple)) else r.get(k)) for k in ROLLOUT_KEYS}


def baseline_mismatch(trace: Trace, baseline: Trace) -> list[str]:
    """What differs between a trace and a would-be bf16 baseline (empty: a valid baseline)."""
    out = []
    if baseline.meta.get("method") != "bf16":
        out.append(f"method is {baseline.meta.get('method')!r}, not 'bf16'")
    if (trace.meta.get("config") or {}) != (baseline.meta.get("config") or {}):
        a, b = trace.meta.get("config") or {}, baseline.meta.get("config") or {}
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        out.append("config differs in " + ", ".join(f"{k} ({a.get(k)!r} vs {b.get(k)!r})" for k in keys))
    ra, rb = _rollout_key(trace.meta), _rollout_key(baseline.meta)
    for k in ROLLOUT_KEYS:
        if ra[k] != rb[k]:
            out.append(f"rollout {k} differs ({ra[k]!r} vs {rb[k]!r})")
    da = (trace.meta.get("environment") or {}).get("device_type")
    db = (baseline.meta.get("environment") or {}).get("device_type")
    if da != db:
        out.append(f"device type differs ({da!r} vs {db!r})")
    return out


def find_baseline(trace: Trace, roots: Sequence[str | Path] | None = None) -> Trace | None:
    """The newest complete bf16 trace of the same config, rollout and device type under `roots`
    (default: the trace's own parent folder and ./traces)."""
    roots = list(roots) if roots else [trace.path.parent, Path("traces")]
    seen: set[Path] = set()
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
            if meta.get("method") != "bf16" or meta.get("status") != "complete":
                continue
            if meta.get("config") != trace.meta.get("config") or _rollout_key(meta) != _rollout_key(trace.meta):
                continue
            if (meta.get("environment") or {}).get("device_type") != (trace.meta.get("environment") or {}).get("device_type"):
                continue
            try:
                return open_trace(folder)
            except UsageError:
                continue
    return None


def run_baseline(trace: Trace, out: str | Path | None = None) -> Path:
    """Run the bf16 rollout matching `trace` (kvprof.runner) and return its folder."""
    from kvprof.runner import TraceRequest, run_trace

    meta = trace.meta
    cfg, r = meta.get("config") or {}, meta.get("rollout") or {}
    if not cfg.get("name") or not r.get("frames"):
        raise UsageError(f"{trace.path}/meta.json: fields 'config.name' and 'rollout.frames' are needed to run a "
                         "bf16 baseline; pass --baseline TRACE instead")
    device = (meta.get("environment") or {}).get("device_type") or None
    req = TraceRequest(
        method="bf16", integration=meta.get("integration") or "study", config=cfg["name"], dtype=cfg.get("dtype"),
        frames=int(r["frames"]), seed=int(r.get("seed", 0)), device=device, out=Path(out or trace.path.parent),
        rolling=r.get("rolling_frames"), sink=int(r.get("sink_frames") or 0), decode=bool(r.get("decode", True)),
        free_cache_before_decode=bool(r.get("free_cache_before_decode", False)),
        command=["kvprof", "diagnose", str(trace.path), "--run-baseline"],
    )
    return run_trace(req).path


# --------------------------------------------------------------------------- byte model
@dataclass
class Geometry:
    """Sizes from meta.json, in bytes per K (or V) tensor of one layer."""

    num_layers: int
    token_bytes: int  # heads * head_dim * element size * batch
    capacity_tokens: int
    window_tokens: int
    chunk_tokens: int

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "Geometry | None":
        cfg, r = meta.get("config") or {}, meta.get("rollout") or {}
        try:
            elem = DTYPE_BYTES[str(cfg["dtype"]).replace("torch.", "")]
            tpf = int(cfg["tokens_per_frame"])
            heads = int(cfg["num_heads"])
            hd = int(cfg.get("head_dim") or int(cfg["dim"]) // heads)
            frames = int(r["frames"])
            cap_frames = min(int(r["rolling_frames"]), frames) if r.get("rolling_frames") else frames
            window = min(int(r.get("attn_window_frames") or frames), cap_frames)
            return cls(int(cfg["num_layers"]), heads * hd * elem * int(r.get("batch") or 1), cap_frames * tpf,
                       window * tpf, int(r.get("chunk_frames") or 3) * tpf)
        except (KeyError, TypeError, ValueError):
            return None


def _split_name(name: Any) -> tuple[int | None, str]:
    if name is None or name is pd.NA or (isinstance(name, float) and math.isnan(name)):
        return None, "(unnamed)"
    m = _LAYER_NAME.match(str(name))
    return (int(m.group(1)), m.group(2)) if m else (None, str(name))


def _method_class(name: str | None):
    if not name:
        return None
    try:
        from methods import get_method_class

        return get_method_class(name)
    except (ImportError, ValueError):
        return None


def code_bits(method: str | None, buffer: str, meta: dict[str, Any] | None = None) -> int | None:
    """Bits of one code in code tensor `buffer` ('k_codes', 'v_res_codes'): meta.json's
    `code_bits` when a run records it, else the method registry's key/value bits when they are a
    single width ('4') or base+residual ('4+4'); None for mixed-width methods ('4/2')."""
    recorded = (meta or {}).get("code_bits") or {}
    if buffer in recorded:
        return int(recorded[buffer])
    cls = _method_class(method)
    if cls is None:
        return None
    side = buffer.split("_", 1)[0]
    spec = cls.key_bits if side == "k" else cls.value_bits if side == "v" else None
    if spec is None:
        return None
    parts = str(spec).split("+")
    if not all(p.isdigit() for p in parts) or len(parts) > 2:
        return None
    if len(parts) == 2 and "res" in buffer:
        return int(parts[1])
    return int(parts[0])


# --------------------------------------------------------------------------- the analysis
class _Context:
    """What the detectors and projections share for one trace."""

    def __init__(self, trace: Trace):
        self.trace = trace
        self.meta = trace.meta
        self.method = trace.meta.get("method")
        self.cls = _method_class(self.method)
        self.lossless = bool(getattr(self.cls, "lossless", False)) or self.method in LOSSLESS_METHODS or (
            self.cls is None and not (trace.allocations["category"] == "kv_codes").any())  # your own plain cache (API traces)
        self.codes = trace.meta.get("codes")
        self.integration = trace.meta.get("integration")
        self.geo = Geometry.from_meta(trace.meta)
        spans = trace.spans
        self._span_end = dict(zip(spans["id"].astype(int), spans["q_end"].astype(int)))
        self._layer_of = self._layer_ancestors(spans)
        self.alloc_phase = allocation_phases(trace)

    @functools.cached_property
    def wide(self) -> pd.DataFrame:
        """Live bytes per category after every event (kvprof.analysis.timeline)."""
        return timeline(self.trace)

    @staticmethod
    def _layer_ancestors(spans: pd.DataFrame) -> dict[int, int]:
        """span id -> id of its nearest `layer` ancestor-or-self (absent when none)."""
        out: dict[int, int] = {}
        for sid, par, name in zip(spans["id"], spans["parent"], spans["name"]):
            sid, par = int(sid), int(par)
            if str(name) == "layer":
                out[sid] = sid
            elif par in out:
                out[sid] = out[par]
        return out

    def live(self, q: int) -> pd.DataFrame:
        """Allocations live at q with layer/buffer names, phase and retention columns."""
        live = live_at(self.trace, q).copy()
        split = [_split_name(n) for n in live["name"]]
        live["layer"] = [s[0] for s in split]
        live["buffer"] = [s[1] for s in split]
        # Weights, latents, decode temporaries...: one name each; grouped by category instead.
        plain = live["layer"].isna() & ~live["category"].isin(KV_CATEGORIES)
        live.loc[plain, "buffer"] = "(" + live.loc[plain, "category"].astype(str) + ")"
        live["phase"] = live["id"].map(self.alloc_phase).fillna("(outside stages)")
        owner = [self._layer_of.get(int(s), int(s)) for s in live["span_id"]]
        ends = np.array([self._span_end.get(o, NO_FREE) for o in owner], dtype=np.int64)
        # Compare tracer contexts, not raw order keys: on CUDA the allocator's events of a context
        # sort after the session's own records of it, so only an earlier context is surely "before".
        live["retained"] = (ends != NO_FREE) & (ends // Q_STRIDE < q // Q_STRIDE)
        return live

    def packed_excess(self, live: pd.DataFrame) -> tuple[int, list[str], bool]:
        """Bytes the live code tensors would shrink by if bit-packed instead of one code per
        int8/int16; (excess, terms, used_kv_table). Bits per code come from `code_bits`; code
        tensors of mixed width use the packed/resident fraction of the KV table instead."""
        codes = live[live["category"] == "kv_codes"]
        width = STORAGE_BITS.get(str(self.codes))
        if codes.empty or width is None:
            return 0, [], False
        excess, terms, unknown = 0, [], 0
        for buf, b in codes.groupby("buffer")["bytes"].sum().items():
            bits = code_bits(self.method, str(buf), self.meta)
            if bits is None:
                unknown += int(b)
                continue
            new = math.ceil(int(b) * bits / width)
            excess += int(b) - new
            terms.append(f"{buf} {fmt_bytes(int(b))} at {width} bits/code -> {fmt_bytes(new)} at {bits} bits")
        used_kv = False
        if unknown:
            frac = self.kv_packed_fraction()
            if frac is not None:
                new = int(round(unknown * frac))
                excess += unknown - new
                terms.append(f"mixed-width codes {fmt_bytes(unknown)} x packed/resident fraction {frac:.3f} = {fmt_bytes(new)}")
                used_kv = True
            else:
                terms.append(f"{fmt_bytes(unknown)} of codes with unknown bit width left as they are")
        return excess, terms, used_kv

    def int8_growth(self, live: pd.DataFrame) -> tuple[int, list[str]]:
        """Bytes bit-packed code tensors would grow by if stored one code per int8 (bits from
        `code_bits`; tensors of unknown width are left out and said so)."""
        codes = live[live["category"] == "kv_codes"]
        grow, terms, unknown = 0, [], 0
        for buf, b in codes.groupby("buffer")["bytes"].sum().items():
            bits = code_bits(self.method, str(buf), self.meta)
            if bits is None:
                unknown += int(b)
                continue
            new = int(b) * 8 // bits
            grow += new - int(b)
            terms.append(f"+{fmt_bytes(new - int(b))} {buf} one per int8 ({fmt_bytes(int(b))} packed at {bits} bits -> {fmt_bytes(new)}) [method registry bits]")
        if unknown:
            terms.append(f"{fmt_bytes(unknown)} of mixed-width codes left packed (bit width per tensor unknown)")
        return grow, terms

    def kv_packed_fraction(self) -> float | None:
        """Packed code bytes / resident code bytes at the last KV record: (codes - (resident -
        stored)) / codes, codes being the kv_codes bytes live when the record was written."""
        kv = self.trace.kv
        if kv.empty:
            return None
        last = kv.iloc[-1]
        wide = self.wide
        t = np.maximum.accumulate(wide["t_ns"].to_numpy())
        i = int(np.searchsorted(t, int(last.t_ns), side="right")) - 1
        if i < 0:
            return None
        codes = int(wide["kv_codes"].iat[i])
        if codes <= 0:
            return None
        excess = int(last.resident_bytes) - int(last.stored_bytes)
        return min(1.0, max(0.0, (codes - excess) / codes))


def _groups(live: pd.DataFrame) -> list[BufferGroup]:
    if live.empty:
        return []
    g = live.groupby(["category", "buffer", "kind_path", "retained"], dropna=False).agg(
        count=("bytes", "size"), bytes=("bytes", "sum"), layers=("layer", "nunique"))
    out = [BufferGroup(str(c), str(b), str(s), int(r["count"]), int(r["bytes"]), int(r["layers"]), bool(ret))
           for (c, b, s, ret), r in g.iterrows()]
    return sorted(out, key=lambda x: -x.bytes)


def _detect_causes(ctx: _Context, live: pd.DataFrame, peak_phase: str, phases: pd.DataFrame) -> list[Cause]:
    causes: list[Cause] = []
    geo = ctx.geo
    full_buf = geo.capacity_tokens * geo.token_bytes if geo else None

    deq = live[live["category"] == "kv_dequant"]
    if not deq.empty:
        whole = deq["kind_path"].str.contains("dequantize_buffer", regex=False)
        if full_buf:
            whole |= deq["bytes"] >= full_buf
        retained = deq[deq["retained"]]
        if not retained.empty:
            b = int(retained["bytes"].sum())
            causes.append(Cause(
                "retained_dequant", "retained dequantized K/V", b,
                f"{len(retained)} dequantized buffers made in "
                f"{', '.join(sorted(set(retained['kind_path'])))} outlived the layer call that made them and were "
                f"still live at the peak", "allocation table, span table", b, _groups(retained)))
        fresh = deq[~deq["retained"]]
        fw = fresh[whole[~deq["retained"]]]
        if not fw.empty:
            b = int(fw["bytes"].sum())
            size = f" (whole buffer = {geo.capacity_tokens} tokens x {geo.token_bytes} B = {fmt_bytes(full_buf)} per K or V)" if geo else ""
            causes.append(Cause(
                "full_buffer_dequant", "full-buffer dequantization", b,
                f"{len(fw)} whole-buffer reconstructions of the layer's K/V live at the peak{size}; the study "
                "integration dequantizes the whole buffer on every call and keeps it through the re-quantization",
                "allocation table, meta.json config", None, _groups(fw)))
        fwin = fresh[~whole[~deq["retained"]]]
        if not fwin.empty:
            b = int(fwin["bytes"].sum())
            causes.append(Cause(
                "window_dequant", "dequantized attention window", b,
                f"{len(fwin)} dequantized window tensors for the attention call in flight at the peak",
                "allocation table", None, _groups(fwin)))

    codes = live[live["category"] == "kv_codes"]
    if not codes.empty and not ctx.lossless:
        width = STORAGE_BITS.get(str(ctx.codes))
        if width is not None:
            b = int(codes["bytes"].sum())
            excess, terms, fallback = ctx.packed_excess(live)
            src = "allocation table, meta.json codes, " + ("kv table" if fallback else "method registry bits")
            detail = (f"codes are stored one per {ctx.codes} ({width} bits) although they hold fewer bits: "
                      + "; ".join(terms))
            if width == 16:
                detail += f"; as int8 they would take {fmt_bytes(b // 2)}"
            causes.append(Cause("wide_codes", f"codes stored as {ctx.codes}", b, detail, src, excess or None,
                                _groups(codes)))
        # Two code tensors for the same K (or V) of a layer: residual quantization.
        dup = codes[codes["layer"].notna()].copy()
        dup["side"] = dup["buffer"].str.split("_").str[0]
        names = dup.groupby(["layer", "side"])["buffer"].nunique()
        if (names > 1).any():
            extra = dup[dup["buffer"].str.contains("res", regex=False)]
            if extra.empty:  # no residual naming: everything past the largest tensor of each pair
                extra = dup[dup.groupby(["layer", "side"])["bytes"].rank(method="first", ascending=False) > 1]
            b = int(extra["bytes"].sum())
            pairs = sorted(set(dup.groupby("side")["buffer"].apply(lambda s: " + ".join(sorted(set(s)))).tolist()))
            causes.append(Cause(
                "duplicate_codes", "two code tensors per K/V", b,
                f"each layer keeps several code tensors for one K or V ({'; '.join(pairs)}); the second ones hold "
                f"{fmt_bytes(b)} at the peak", "allocation table", None, _groups(extra)))

    meta_b = live[live["category"] == "kv_meta"]
    if not meta_b.empty and not ctx.lossless:
        b = int(meta_b["bytes"].sum())
        names = ", ".join(sorted(set(meta_b["buffer"])))
        causes.append(Cause("metadata", "quantization metadata", b,
                            f"scales, zero points, outliers and plans live at the peak ({names})",
                            "allocation table", None, _groups(meta_b)))

    fp = live[live["category"] == "kv_fp"]
    if not fp.empty and not ctx.lossless:
        for key, title in FP_WINDOW_KINDS:
            part = fp[fp["buffer"].str.contains(key, regex=False)]
            if part.empty:
                continue
            b = int(part["bytes"].sum())
            causes.append(Cause("fp_window", title, b,
                                f"full-precision K/V held next to the codes: {', '.join(sorted(set(part['buffer'])))}",
                                "allocation table", None, _groups(part)))
            fp = fp.drop(part.index)
        if not fp.empty:
            b = int(fp["bytes"].sum())
            causes.append(Cause("fp_window", "full-precision K/V", b,
                                f"full-precision K/V live next to the codes: {', '.join(sorted(set(fp['buffer'])))}",
                                "allocation table", None, _groups(fp)))

    scratch = live[live["category"] == "kv_scratch"]
    if not scratch.empty:
        b = int(scratch["bytes"].sum())
        ret = int(scratch.loc[scratch["retained"], "bytes"].sum())
        more = f"; {fmt_bytes(ret)} of it outlived its layer call" if ret else ""
        causes.append(Cause("scratch", "quantization scratch", b,
                            f"temporaries of quantize/dequantize live at the peak, made in "
                            f"{', '.join(sorted(set(scratch['kind_path'])))}{more}",
                            "allocation table", ret or None, _groups(scratch)))

    if peak_phase == "decode":
        cache = live[live["category"].isin(CACHE_CATEGORIES) & (live["phase"] != "decode")]
        if not cache.empty and not (ctx.meta.get("rollout") or {}).get("free_cache_before_decode"):
            b = int(cache["bytes"].sum())
            others = phases[phases["phase"] != "decode"]["peak_bytes"]
            dec = phases[phases["phase"] == "decode"]["peak_bytes"]
            saving = None
            if not dec.empty:
                after = max(int(dec.iloc[0]) - b, int(others.max()) if not others.empty else 0)
                saving = int(dec.iloc[0]) - after
            by_cat = cache.groupby("category")["bytes"].sum().sort_values(ascending=False)
            parts = ", ".join(f"{c} {fmt_bytes(int(v))}" for c, v in by_cat.items())
            causes.append(Cause(
                "decode_over_cache", "VAE decode over a live KV cache", b,
                f"the peak falls in the VAE decode while the KV cache and text K/V are still allocated ({parts}); "
                "freeing them first (--free-cache-before-decode) lowers the peak to the larger of the decode without "
                "them and the other phases' peaks", "allocation table, span table", saving, _groups(cache)))

    if ctx.trace.status == "oom":
        oom = ctx.meta.get("oom") if isinstance(ctx.meta.get("oom"), dict) else {}
        req = oom.get("requested_bytes")
        at_failure = oom.get("live_bytes")  # live when the failing request came (kvprof.api), else the peak's
        held = int(at_failure) if isinstance(at_failure, int) else int(live["bytes"].sum())
        slack = oom.get("reserved_unallocated_bytes")
        if isinstance(oom.get("allocated_bytes_at_failure"), int):
            held = int(oom["allocated_bytes_at_failure"])
        need = f"; it asked for {fmt_bytes(int(req))} more with {fmt_bytes(held)} live" if isinstance(req, int) else ""
        if need and isinstance(slack, int):
            # A GPU budget caps reserved memory: live blocks plus the segments' unused space.
            need += (f" and {fmt_bytes(slack)} reserved by the caching allocator but unused (fragmentation), so "
                     f"{fmt_bytes(int(req) + held + slack)} of reserved memory was needed at that instant")
        elif need:
            need += f", so {fmt_bytes(int(req) + held)} was needed at that instant"
        if isinstance(oom.get("budget_bytes"), int):
            need += f", against the memory budget of {fmt_bytes(oom['budget_bytes'])} (--budget)"
        causes.append(Cause("oom", "out of memory", int(live["bytes"].sum()),
                            f"the run ran out of memory in {oom.get('stage') or '?'}{need}; the peak shown is the "
                            "highest live total the trace reached before the failure", "meta.json (oom), allocation table"))
    order = {"oom": 0}
    return sorted(causes, key=lambda c: (order.get(c.kind, 1), -c.bytes))


def _command(meta: dict[str, Any], **changes: Any) -> str | None:
    cfg, r = meta.get("config") or {}, meta.get("rollout") or {}
    if not meta.get("method") or not cfg.get("name") or not r.get("frames"):
        return None
    integration = changes.get("integration", meta.get("integration"))
    parts = ["kvprof", "trace", "--method", str(meta["method"]), "--integration", str(integration)]
    codes = changes.get("codes", meta.get("codes") if integration == meta.get("integration") else None)
    if codes:
        parts += ["--codes", str(codes)]
    parts += ["--config", str(cfg["name"]), "--frames", str(r["frames"]), "--seed", str(r.get("seed", 0))]
    cls = _method_class(meta.get("method"))
    for k, v in (meta.get("method_params") or {}).items():
        default = cls.params[k].default if cls is not None and k in cls.params else object()
        if v != default:
            parts += ["--param", f"{k}={v}"]
    if r.get("rolling_frames"):
        parts += ["--rolling", str(r["rolling_frames"]), "--sink", str(r.get("sink_frames") or 0)]
    if not r.get("decode", True):
        parts.append("--no-decode")
    if changes.get("free_cache_before_decode", r.get("free_cache_before_decode")):
        parts.append("--free-cache-before-decode")
    return " ".join(parts)


def _project(ctx: _Context, phases: pd.DataFrame, lives: dict[str, pd.DataFrame], peak: int) -> list[Projection]:
    """Projections: each scenario maps (phase row, live set at that phase's peak) to (change, terms)."""
    geo, meta = ctx.geo, ctx.meta
    rollout = meta.get("rollout") or {}
    has_decode = "decode" in set(phases["phase"])

    def packed(row, live):
        d, terms, _ = ctx.packed_excess(live)
        return -d, ([f"codes bit-packed: -{fmt_bytes(d)} ({'; '.join(terms)})"] if d else []), live

    def int8(row, live):
        codes = int(live.loc[live["category"] == "kv_codes", "bytes"].sum())
        return -(codes // 2), ([f"codes int16 -> int8: -{fmt_bytes(codes // 2)} (half of {fmt_bytes(codes)} kv_codes live)"] if codes else []), live

    def staged(row, live):
        deq = int(live.loc[live["category"] == "kv_dequant", "bytes"].sum())
        scr = int(live.loc[live["category"] == "kv_scratch", "bytes"].sum())
        d, terms = -(deq + scr), []
        gone = [f"-{fmt_bytes(n)} {c}" for n, c in ((deq, "kv_dequant"), (scr, "kv_scratch")) if n]
        if gone:
            terms.append(f"no whole-buffer dequantize / re-quantize temporaries: {' '.join(gone)} [measured]")
        p, pterms, _ = packed(row, live)
        d += p
        terms += pterms
        if row["phase"] in PASS_PHASES and geo is not None:
            stage_b = geo.num_layers * 2 * geo.chunk_tokens * geo.token_bytes
            win_b = 2 * 2 * geo.window_tokens * geo.token_bytes
            d += stage_b + win_b
            terms.append(f"+{fmt_bytes(stage_b)} BF16 staging of the current chunk ({geo.num_layers} layers x K,V x "
                         f"{geo.chunk_tokens} tokens x {geo.token_bytes} B) [byte model, meta.json]")
            terms.append(f"+{fmt_bytes(win_b)} dequantized attention window of one layer (K,V x 2 copies x "
                         f"{geo.window_tokens} tokens x {geo.token_bytes} B) [byte model, meta.json]")
        return d, terms, live[~live["category"].isin(["kv_dequant", "kv_scratch"])]

    def study(row, live):
        deq = int(live.loc[live["category"] == "kv_dequant", "bytes"].sum())
        fp = live[(live["category"] == "kv_fp") & live["buffer"].str.contains("staging", regex=False)]
        stg = int(fp["bytes"].sum())
        d = -(deq + stg)
        gone = [f"-{fmt_bytes(n)} {c}" for n, c in ((deq, "kv_dequant"), (stg, "staging")) if n]
        terms = [f"no window dequantize or staging: {' '.join(gone)} [measured]"] if gone else []
        if str(ctx.codes) == "packed":
            grow, gterms = ctx.int8_growth(live)
            d += grow
            terms += gterms
        if row["phase"] in PASS_PHASES and geo is not None:
            whole = 2 * geo.capacity_tokens * geo.token_bytes
            d += whole
            terms.append(f"+{fmt_bytes(whole)} whole-buffer dequantization of one layer (K,V x {geo.capacity_tokens} "
                         f"tokens x {geo.token_bytes} B) [byte model, meta.json]")
            scr_max = int(ctx.wide["kv_scratch"].max()) if not ctx.wide.empty else 0
            if scr_max:
                # Staged encodes one chunk per layer (the written prefix for position-dependent
                # methods); the study re-encodes the whole buffer, its scratch scaling with tokens.
                pos_dep = bool(getattr(ctx.cls, "position_dependent", False))
                factor = 1.0 if pos_dep else geo.capacity_tokens / geo.chunk_tokens
                scr = int(round(scr_max * factor))
                d += scr
                how = "the written prefix" if pos_dep else f"one chunk, x {geo.capacity_tokens}/{geo.chunk_tokens} tokens"
                terms.append(f"+{fmt_bytes(scr)} re-quantization scratch of the whole buffer (largest kv_scratch of this "
                             f"trace {fmt_bytes(scr_max)}, for {how}) [allocation table x byte model]")
        return d, terms, live

    def free_cache(row, live):
        if row["phase"] != "decode":
            return 0, [], live
        freed = live["category"].isin(CACHE_CATEGORIES) & (live["phase"] != "decode")
        b = int(live.loc[freed, "bytes"].sum())
        return -b, ([f"decode without the KV cache and text K/V: -{fmt_bytes(b)} [measured]"] if b else []), live[~freed]

    def both(*fns):
        def fn(row, live):  # apply in order, each on what the previous ones left live
            d, terms = 0, []
            for f in fns:
                x, t, live = f(row, live)
                d, terms = d + x, terms + t
            return d, terms, live
        return fn

    scenarios: list[tuple[str, Callable, bool, str | None]] = []
    quantized = not ctx.lossless and ctx.method is not None
    if quantized and str(ctx.codes) in STORAGE_BITS:
        scenarios.append((f"codes bit-packed instead of {ctx.codes} ({ctx.integration})", packed, False,
                          _command(meta, codes="packed") if ctx.integration == "staged" else None))
    if quantized and str(ctx.codes) == "int16":
        scenarios.append(("codes int8 instead of int16", int8, False, _command(meta, codes="int8")))
    if quantized and ctx.integration == "study":
        scenarios.append(("staged integration (packed codes)", staged, True, _command(meta, integration="staged")))
    if quantized and ctx.integration == "staged":
        scenarios.append(("study integration (int8 codes)", study, True, _command(meta, integration="study", codes="int8")))
    if has_decode and not rollout.get("free_cache_before_decode"):
        scenarios.append(("cache freed before decode", free_cache, False, _command(meta, free_cache_before_decode=True)))
        if quantized and ctx.integration == "study":
            scenarios.append(("staged integration + cache freed before decode", both(free_cache, staged), True,
                              _command(meta, integration="staged", free_cache_before_decode=True)))

    out = []
    for name, fn, estimate, command in scenarios:
        best: tuple[int, str, list[str]] | None = None
        for _, row in phases.iterrows():
            d, terms, _ = fn(row, lives[row["phase"]])
            value = int(row["peak_bytes"]) + d
            if best is None or value > best[0]:
                best = (value, str(row["phase"]), [f"{row['phase']} phase peak {fmt_bytes(int(row['peak_bytes']))} [measured]", *terms])
        if best is not None:
            out.append(Projection(name, best[0], best[0] - peak, best[1], best[2], estimate, command))
    return out


def _phase_at(trace: Trace, phases: pd.Series, q: int) -> str:
    """The phase of the allocation made at order key q (the peak event)."""
    hit = trace.allocations.loc[trace.allocations["q_alloc"] == q, "id"]
    return str(phases.get(int(hit.iloc[0]), "?")) if not hit.empty else "?"


def _compare_dicts(a: dict[str, int], b: dict[str, int] | None, key: str) -> pd.DataFrame:
    keys = list(dict.fromkeys([*a, *(b or {})]))
    rows = []
    for k in keys:
        row = {key: k, "trace_bytes": int(a.get(k, 0))}
        if b is not None:
            row["baseline_bytes"] = int(b.get(k, 0))
            row["delta_bytes"] = row["trace_bytes"] - row["baseline_bytes"]
        rows.append(row)
    df = pd.DataFrame(rows, columns=[key, "trace_bytes", *(["baseline_bytes", "delta_bytes"] if b is not None else [])])
    sort = "delta_bytes" if b is not None else "trace_bytes"
    return df.reindex(df[sort].abs().sort_values(ascending=False).index).reset_index(drop=True)


def diagnose(
    trace: str | Path | Trace,
    baseline: str | Path | Trace | None = None,
    *,
    traces_root: Sequence[str | Path] | str | Path | None = None,
    run_baseline_if_missing: bool = False,
) -> Diagnosis:
    """Explain the peak of `trace` against a bf16 baseline (given; else found under
    `traces_root`, default the trace's parent folder and ./traces; else run when
    `run_baseline_if_missing`). Works on incomplete (oom, failed, interrupted, live) traces."""
    t = open_trace(trace)
    notes: list[str] = []
    if t.status not in ("complete",):
        notes.append(f"trace status is {t.status!r}: it covers the run up to its end" + (f" ({t.meta.get('error')})" if t.meta.get("error") else ""))
    peak = find_peak(t, top=20)
    if peak is None:
        raise UsageError(f"{t.path}: the trace recorded no allocations, so there is no peak to explain; "
                         "check that the run got past setup ('kvprof summary' shows its status)")
    ctx = _Context(t)
    roots = [traces_root] if isinstance(traces_root, (str, Path)) else traces_root

    base: Trace | None = None
    found_by = None
    if baseline is not None:
        base = open_trace(baseline)
        found_by = "given"
        for m in baseline_mismatch(t, base):
            notes.append(f"baseline {base.path.name}: {m}; the comparison is not like for like")
    elif t.meta.get("method") == "bf16":
        notes.append("this trace is the bf16 reference itself: no baseline comparison")
    else:
        base = find_baseline(t, roots)
        found_by = "found by config and seed"
        if base is None and run_baseline_if_missing:
            base = open_trace(run_baseline(t, (roots or [t.path.parent])[0]))
            found_by = "run now with --run-baseline"
        if base is None:
            notes.append("no bf16 trace of the same config, rollout and seed found under "
                         f"{', '.join(str(r) for r in (roots or [t.path.parent, Path('traces')]))}; pass --baseline TRACE or "
                         "--run-baseline to compare")

    for who, tr in (("trace", t), ("baseline", base)):
        before = int((tr.meta.get("unregistered_before_bytes") or 0) if tr is not None else 0)
        if before:
            notes.append(f"{who} {tr.path.name}: {fmt_bytes(before)} were allocated before its tracing started and "
                         "not registered (tensors made before tracing, or earlier work in its process such as cuBLAS "
                         "workspaces) and count as 'unattributed'; where another trace made them itself, categories "
                         "differ by that much")

    phases = phase_peaks(t)
    peak_phase = _phase_at(t, ctx.alloc_phase, peak.q)
    live = ctx.live(peak.q)
    lives = {str(r.phase): (live if int(r.q) == peak.q else ctx.live(int(r.q))) for r in phases.itertuples()}

    base_peak = find_peak(base) if base is not None else None
    if base is not None and base_peak is None:
        notes.append(f"baseline {base.path}: no allocations recorded; ignored")
        base = None
    baseline_info = None
    base_kinds: set[str] = set()
    if base is not None and base_peak is not None:
        bctx = _Context(base)
        base_phase = _phase_at(base, bctx.alloc_phase, base_peak.q)
        baseline_info = {
            "path": str(base.path), "label": trace_label(base), "peak_bytes": base_peak.bytes,
            "peak_stage": base_peak.stage, "peak_phase": base_phase, "found_by": found_by, "status": base.status,
        }
        base_kinds = {c.kind for c in _detect_causes(bctx, bctx.live(base_peak.q), base_phase, phase_peaks(base))}
        bpp = phase_peaks(base)[["phase", "peak_bytes"]].rename(columns={"peak_bytes": "baseline_peak_bytes"})
        phases_view = phases[["phase", "peak_bytes", "cache_bytes"]].merge(bpp, on="phase", how="left")
    else:
        phases_view = phases[["phase", "peak_bytes", "cache_bytes"]].copy()

    by_cat = _compare_dicts(peak.by_category, base_peak.by_category if base_peak else None, "category")
    by_stage = _compare_dicts(peak.by_stage, base_peak.by_stage if base_peak else None, "stage")
    causes = _detect_causes(ctx, live, peak_phase, phases)
    if base_peak is not None and baseline_info is not None:
        causes = rank_causes(causes, peak.by_category, base_peak.by_category, base_kinds, peak.bytes - base_peak.bytes)
    setup_cache = int(live.loc[live["category"].isin(CACHE_CATEGORIES) & (live["phase"] == "setup"), "bytes"].sum())
    buffers = _groups(live)
    projections = _project(ctx, phases, lives, peak.bytes)
    return Diagnosis(
        trace=str(t.path), label=trace_label(t), method=t.meta.get("method"), integration=t.meta.get("integration"),
        codes=trace_codes(t.meta), status=t.status, error=t.meta.get("error"), peak_bytes=peak.bytes,
        peak_stage=peak.stage, peak_phase=peak_phase, peak_t_s=peak.t_ns / 1e9, baseline=baseline_info,
        by_category=by_cat, by_stage=by_stage, phases=phases_view, kv=kv_bytes(t), causes=causes,
        buffers=buffers, projections=projections, notes=notes, phase_notes=phase_notes(phases, setup_cache),
    )
