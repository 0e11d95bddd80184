"""Text and Markdown of a Diagnosis; every figure names its source (allocation table, meta.json...)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pandas as pd

from kvprof.diagnose.model import CAUSE_BUFFERS
from kvprof.diagnose.rank import more_line
from kvprof.read.markdown import md_table, signed
from kvprof.read.analysis import logical_label
from kvprof.units import fmt_bytes

if TYPE_CHECKING:  # pragma: no cover
    from kvprof.diagnose.model import BufferGroup, Cause, Diagnosis  # noqa: F401 (annotations)

__all__ = ["headline", "text", "markdown"]




def headline(dg: "Diagnosis") -> str:
    """One sentence: the peak, how it compares with bf16, the largest cause."""
    s = f"{dg.method or dg.label} peaks at {fmt_bytes(dg.peak_bytes)} in {dg.peak_stage} ({dg.peak_phase} phase)"
    if dg.baseline is not None:
        d = dg.difference_bytes or 0
        rel = d / dg.baseline["peak_bytes"] * 100 if dg.baseline["peak_bytes"] else 0.0
        word = "above" if d > 0 else "below" if d < 0 else "equal to"
        s += f", {fmt_bytes(abs(d))} ({abs(rel):.1f}%) {word} bf16's {fmt_bytes(dg.baseline['peak_bytes'])}"
    if dg.causes:
        c = dg.causes[0]
        if dg.baseline is not None and (dg.difference_bytes or 0) > 0 and (c.excess_bytes or 0) > 0:
            s += (f"; the excess is first explained by {c.title} ({signed(c.excess_bytes)} that bf16 does not hold, "
                  f"of {fmt_bytes(c.bytes)})")
        else:
            s += f"; largest cause: {c.title} ({fmt_bytes(c.bytes)})"
    return s + "."

def text(dg: "Diagnosis") -> str:
    """The human text of `kvprof diagnose`."""
    out: list[str] = []
    out.append(f"kvprof diagnose {dg.trace}")
    out.append(f"  {dg.label} · status {dg.status}" + (f" ({dg.error})" if dg.error else ""))
    out.append("")
    out.append(headline(dg))
    out.append("")
    out.append(f"peak {fmt_bytes(dg.peak_bytes)} ({dg.peak_bytes:,} B) at {dg.peak_t_s:.3f} s during "
               f"{dg.peak_stage} [allocation table]")
    if dg.baseline is not None:
        b = dg.baseline
        out.append(f"bf16 baseline {b['path']} ({b['found_by']}): peak {fmt_bytes(b['peak_bytes'])} "
                   f"({b['peak_bytes']:,} B) during {b['peak_stage']}")
        d = dg.difference_bytes or 0
        out.append(f"difference {signed(d)} ({d:+,} B)")
    for note in dg.notes:
        out.append(f"note: {note}")
    out.append("")
    out.append(_section_text("live at the peak by category", dg.by_category, "category", dg.baseline is not None))
    out.append("")
    out.append(_section_text("live at the peak by stage of origin", dg.by_stage.head(12), "stage", dg.baseline is not None))
    out.append("")
    out.append("causes (buffers live at the peak) [allocation table, meta.json]:")
    if not dg.causes:
        out.append("  none found: nothing KV-related is live at the peak beyond the cache itself")
    if dg.baseline is not None and dg.causes:
        out.append("  (ranked by what each adds over bf16 at the peaks: bytes of its buffers that bf16 does not hold)")
    for i, c in enumerate(dg.causes, 1):
        save = f"; removing it saves {fmt_bytes(c.saving_bytes)}" if c.saving_bytes else ""
        out.append(f"  {i}. {c.title}: {fmt_bytes(c.bytes)} ({c.bytes:,} B){_excess_text(c)}{save}")
        out.append(f"     {c.detail} [{c.source}]")
        out += _buffer_lines(c, "       - ", lambda bg: f"{fmt_bytes(bg.bytes):>11}  {bg.label()}")
    out.append("")
    out.append("largest live buffers at the peak [allocation table]:")
    for bg in dg.buffers[:12]:
        out.append(f"  {fmt_bytes(bg.bytes):>11}  {bg.label()}")
    more = more_line(dg.buffers, 12)
    if more:
        out.append(f"  {more}")
    out.append("")
    out.append("phase peaks (peak of live bytes within each phase; cache = kv_fp + kv_codes + kv_meta + cross_kv) [allocation table]:")
    out.append(_phases_text(dg.phases))
    out += [f"  {n}" for n in dg.phase_notes]
    if dg.kv:
        kv = dg.kv
        out.append("")
        out.append(f"KV after the last chunk [kv table]: {logical_label(kv.logical_dtype)} {fmt_bytes(kv.logical_bytes)} · stored "
                   f"{fmt_bytes(kv.stored_bytes)} · resident {fmt_bytes(kv.resident_bytes)}")
    out.append("")
    out.append("projections (max over phases of phase peak + change):")
    if not dg.projections:
        out.append("  none apply")
    for p in dg.projections:
        tag = "estimate" if p.estimate else "from measured bytes"
        out.append(f"  {p.scenario}: peak {fmt_bytes(p.peak_bytes)} ({signed(p.delta_bytes)} vs traced), "
                   f"held by {p.phase} [{tag}]")
        for t in p.terms:
            out.append(f"      {t}")
        if p.command:
            out.append(f"      make it real: {p.command}")
    return "\n".join(out) + "\n"

def markdown(dg: "Diagnosis") -> str:
    """The Markdown of `kvprof diagnose --md` (every cell escaped)."""
    out: list[str] = []
    out.append(f"## kvprof diagnose: `{Path(dg.trace).name}`")
    out.append("")
    out.append(f"{dg.label}, status **{dg.status}**" + (f" ({dg.error})" if dg.error else ""))
    out.append("")
    out.append(headline(dg))
    out.append("")
    out.append(f"- peak **{fmt_bytes(dg.peak_bytes)}** ({dg.peak_bytes:,} B) during `{dg.peak_stage}` at {dg.peak_t_s:.3f} s")
    if dg.baseline is not None:
        b = dg.baseline
        out.append(f"- bf16 baseline `{Path(b['path']).name}` ({b['found_by']}): {fmt_bytes(b['peak_bytes'])} during `{b['peak_stage']}`")
        out.append(f"- difference **{signed(dg.difference_bytes or 0)}**")
    for note in dg.notes:
        out.append(f"- note: {note}")
    out.append("")
    out.append("### Live at the peak by category")
    out.append("")
    out.append(_md_bytes_table(dg.by_category, "category"))
    out.append("")
    out.append("### Live at the peak by stage of origin")
    out.append("")
    out.append(_md_bytes_table(dg.by_stage.head(15), "stage"))
    out.append("")
    out.append("### Causes")
    out.append("")
    if not dg.causes:
        out.append("None found.")
    for i, c in enumerate(dg.causes, 1):
        save = f"; removing it saves {fmt_bytes(c.saving_bytes)}" if c.saving_bytes else ""
        out.append(f"{i}. **{c.title}**: {fmt_bytes(c.bytes)}{_excess_text(c)}{save}. {c.detail} _(source: {c.source})_")
        out += _buffer_lines(c, "    - ", lambda bg: f"{fmt_bytes(bg.bytes)}: {bg.label()}")
    out.append("")
    out.append("### Phase peaks")
    out.append("")
    cols = [c for c in ("phase", "peak_bytes", "cache_bytes", "baseline_peak_bytes") if c in dg.phases.columns]
    out.append(md_table(dg.phases[cols], byte_cols=cols[1:]))
    out += [f"\n- {n}" for n in dg.phase_notes]
    out.append("")
    out.append("### Projections")
    out.append("")
    rows = [{"scenario": p.scenario, "peak": fmt_bytes(p.peak_bytes), "vs traced": signed(p.delta_bytes),
             "phase": p.phase, "kind": "estimate" if p.estimate else "measured bytes",
             "command": f"`{p.command}`" if p.command else ""} for p in dg.projections]
    out.append(md_table(pd.DataFrame(rows)) if rows else "None apply.")
    for p in dg.projections:
        out.append("")
        out.append(f"- {p.scenario}: " + "; ".join(p.terms))
    return "\n".join(out) + "\n"


def _excess_text(c: Cause) -> str:
    if c.excess_bytes is None:
        return ""
    shared = ", a cause bf16 has too" if c.in_baseline else ""
    return f"; {signed(c.excess_bytes)} over bf16{shared}"


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
            lines.append(f"  {k:<{width}}  {fmt_bytes(r.trace_bytes):>11}  {fmt_bytes(r.baseline_bytes):>11}  {signed(r.delta_bytes):>11}")
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


def _md_bytes_table(df: pd.DataFrame, key: str) -> str:
    cols = [key, "trace_bytes"] + [c for c in ("baseline_bytes", "delta_bytes") if c in df.columns]
    return md_table(df[cols], byte_cols=cols[1:])


def _buffer_lines(c: "Cause", bullet: str, line: Callable[["BufferGroup"], str]) -> list[str]:
    """The buffer groups listed under a cause, then one "and N more (X)" line for the rest."""
    out = [bullet + line(bg) for bg in c.buffers[:CAUSE_BUFFERS]]
    more = more_line(c.buffers, CAUSE_BUFFERS)
    return out + ([bullet + more] if more else [])
