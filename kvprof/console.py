"""What the CLI prints on a terminal (or a pipe): the trace summary, the method table, the
explanation of an out-of-memory end. `kvprof.cli` parses and dispatches; this module renders.
Every user string (paths, stage and buffer names) is escaped before Rich sees it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvprof.errors import UsageError
from kvprof.units import fmt_bytes, fmt_ms

if TYPE_CHECKING:
    from kvprof.read.summary import Summary

WIDE_OUTPUT = 1000  # columns of a Rich console writing to a pipe or file: long rows stay whole


def console(stderr: bool = False) -> Any:
    """A Rich console: a terminal's own width; a pipe or file gets whole rows, never wrapped at 80."""
    from rich.console import Console

    con = Console(stderr=stderr)
    return con if con.is_terminal else Console(stderr=stderr, width=WIDE_OUTPUT, soft_wrap=True)


def failure_reason(folder: Path) -> str:
    from tracers.trace_io import META_FILE

    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        meta = {}
    return str(meta.get("write_error") or meta.get("error") or f"the run failed; see {folder / META_FILE}")


def oom_explanation(path: Path, oom: dict[str, Any], top: int = 3) -> str:
    """One paragraph: where the run ran out of memory, what it asked for, the budget, what was live."""
    stage = oom.get("stage") or "(outside any stage)"
    asked = f"asked for {fmt_bytes(oom['requested_bytes'])}" if oom.get("requested_bytes") is not None else "asked for more"
    live = oom.get("live_bytes")
    budget = oom.get("budget_bytes")
    cats = sorted((oom.get("live_by_category") or {}).items(), key=lambda kv: -kv[1])[:top]
    parts = [f"kvprof: out of memory in {stage}: the run {asked}"]
    if live is not None:
        parts.append(f" with {fmt_bytes(live)} live")
    if budget is not None:
        parts.append(f", over the budget of {fmt_bytes(budget)}")
    elif oom.get("device_free_bytes") is not None:
        parts.append(f" and {fmt_bytes(oom['device_free_bytes'])} free on the device")
    parts.append(". ")
    if cats:
        parts.append("Live at that moment: " + ", ".join(f"{c} {fmt_bytes(n)}" for c, n in cats) + ". ")
    parts.append(f"The trace up to the failure is in {path} (status oom); "
                 f"'kvprof diagnose {path}' explains the peak against the bf16 baseline.")
    return "".join(parts)


def print_summary(path: Path, summary: Summary) -> None:
    """The human summary of a trace: peak (when, what), KV bytes, time per stage, reconciliation."""
    from rich.markup import escape as esc  # paths, stage and category names are the user's: never markup
    from rich.table import Table

    con = console()
    peak = summary.peak
    con.print(f"[bold]trace[/bold] {esc(str(path))}  status [bold]{esc(str(summary.status))}[/bold]")
    if not peak:
        con.print("no allocations recorded")
        return
    con.print(f"[bold]peak[/bold] {fmt_bytes(peak.bytes)} ({peak.bytes:,} B) during [cyan]{esc(peak.stage)}[/cyan]")
    cats = Table(title="live at the peak, by category", show_edge=False)
    cats.add_column("category")
    cats.add_column("bytes", justify="right")
    cats.add_column("share", justify="right")
    for cat, n in sorted(peak.by_category.items(), key=lambda kv: -kv[1]):
        cats.add_row(esc(cat), fmt_bytes(n), f"{100 * n / peak.bytes:.1f}%" if peak.bytes else "-")
    con.print(cats)
    stages = Table(title="live at the peak, by stage of origin", show_edge=False)
    stages.add_column("stage (kind path)")
    stages.add_column("bytes", justify="right")
    for st, n in list(peak.by_stage.items())[:10]:
        stages.add_row(esc(st), fmt_bytes(n))
    con.print(stages)
    kv = summary.kv
    if kv:
        from kvprof.read.analysis import logical_label

        lab = logical_label(kv.logical_dtype)
        con.print(
            f"[bold]KV[/bold] {lab} {fmt_bytes(kv.logical_bytes)} · stored {fmt_bytes(kv.stored_bytes)} · "
            f"resident {fmt_bytes(kv.resident_bytes)} · ratio logical/stored {_ratio(kv.ratio_stored)}, "
            f"logical/resident {_ratio(kv.ratio_resident)}"
        )
    times = Table(title="time per stage kind", show_edge=False)
    for col in ("stage", "count", "host ms", "device ms"):
        times.add_column(col, justify="right" if col != "stage" else "left")
    for row in summary.stage_times[:12]:
        times.add_row(esc(str(row.stage)), str(row.count), fmt_ms(row.host_ms), fmt_ms(row.device_ms))
    con.print(times)
    rec = summary.reconciliation
    if rec.peak_gap_bytes is not None:
        con.print(
            f"[bold]reconciliation[/bold] trace peak {rec.trace_peak_bytes:,} B vs torch.cuda.max_memory_allocated "
            f"{rec.max_memory_allocated_bytes:,} B (gap {rec.peak_gap_bytes:,} B); max gap at stage boundaries "
            f"{rec.max_abs_gap_bytes or 0:,} B over {rec.boundaries or 0} boundaries"
        )
        bs = rec.block_sizes
        if isinstance(bs, dict):
            how = (f"allocator layout mirror off ({bs.get('off_reason')})" if bs.get("model") == "off" else
                   f"{bs.get('exact_blocks', 0):,} from the allocator layout mirror")
            con.print(f"  block sizes: {how}, {bs.get('rounded_blocks', 0):,} rounded requests, "
                      f"{bs.get('snapshot_mismatches', 0):,} snapshot mismatches")
    else:
        unattr = peak.by_category.get("unattributed", 0)
        con.print(f"[bold]reconciliation[/bold] {esc(str(rec.note or ''))}; unattributed at peak {fmt_bytes(unattr)}")
    if summary.host_profile:
        from kvprof.read.hostprof import host_summary_lines

        for line in host_summary_lines(summary.host_profile):
            con.print(line, markup=False)
    cost = tracer_cost_line(summary.tracer_cost, summary.wall_s)
    if cost:
        con.print(cost, markup=False)
    quality = summary.quality
    if isinstance(quality, dict):
        shown = {k: quality[k] for k in ("latent_drift", "attention_drift", "psnr_db", "ssim", "lpips", "flicker") if k in quality}
        text = " · ".join(f"{k} {v.get('missing', v) if isinstance(v, dict) else v}" for k, v in shown.items())
        if "missing" in quality:  # no metric at all: say why (e.g. an unreadable reference, named)
            text = f"missing: {quality['missing']}"
        con.print("[bold]quality vs bf16[/bold] " + esc(text))
    for note in summary.notes or ():
        con.print(f"[dim]{esc(str(note))}[/dim]")


def tracer_cost_line(cost: Any, wall_s: Any) -> str | None:
    """kvprof's own time in the traced run as it measured it (summary `tracer_cost`): the dispatch tracker's seconds
    (CPU), seconds in the stage and tag scopes on the traced thread, the share of the model's time the recorder's
    drains took and the share its record path took (CUDA); None when unmeasured."""
    if not isinstance(cost, dict):
        return None
    from kvprof.read.analysis import tracer_cost_shares

    shares = tracer_cost_shares(cost, wall_s if isinstance(wall_s, (int, float)) and wall_s > 0 else None)
    parts, pieces, spent = [], [], 0.0
    if isinstance(cost.get("dispatch_tracker_s"), (int, float)):
        spent += cost["dispatch_tracker_s"]
        pieces.append(f"the dispatch tracker's bookkeeping after each op {cost['dispatch_tracker_s']:.2f} s")
    scopes = cost.get("scopes")
    if isinstance(scopes, dict):
        in_scopes = (scopes.get("stages_s") or 0) + (scopes.get("tags_s") or 0)
        spent += in_scopes
        marks = scopes.get("marks_s")
        # below what two decimals show (a CPU trace: its timer records nothing), the part is left unsaid
        of_which = f", of which device-time marks {marks:.2f} s" if isinstance(marks, (int, float)) and marks >= 0.005 else ""
        pieces.append(f"{scopes.get('stages') or 0:,} stage and {scopes.get('tags') or 0:,} tag scopes {in_scopes:.2f} s{of_which}")
    if pieces:
        share = f"{100 * shares['thread']:.2f} % of the trace's {wall_s:.1f} s: " if shares["thread"] is not None else ""
        parts.append(f"{spent:.2f} s on the traced thread ({share}{', '.join(pieces)})")
    drains = cost.get("drains")
    if isinstance(drains, dict):
        rates = ", ".join(f"{k} {v:.2f}" for k, v in (drains.get("rate_over_between") or {}).items() if v is not None)
        parts.append(f"recorder drains {100 * drains['model_time_share']:.2f} % of the model's time ({drains.get('compared')} "
                     f"measured; its event rate during each phase over the rate before: {rates})")
    recording = cost.get("recording")
    if isinstance(recording, dict) and isinstance(recording.get("model_time_share"), (int, float)):
        parts.append(f"recording each allocator event {recording.get('mean_ns')} ns (median {recording.get('median_ns')}, "
                     f"{recording.get('sampled'):,} timed in place), {100 * recording['model_time_share']:.2f} % of the traced time")
    if sum(shares[k] is not None for k in ("thread", "drains", "recording")) > 1:
        parts.append(f"about {100 * shares['sum']:.2f} % in all")
    return "kvprof's own cost: " + "; ".join(parts) if parts else None


def _ratio(value: Any) -> str:
    """A compression ratio, or "-" where there is none (no stored bytes: nothing to divide by)."""
    return f"{value:.2f}x" if isinstance(value, (int, float)) and value > 0 else "-"


def print_methods(args: argparse.Namespace) -> int:
    """`kvprof methods [NAME] [--json]`: the method table, or one method with its parameters."""
    from rich.table import Table
    from rich.text import Text

    from methods import get_method_class, method_names
    from methods.plugins import load_entry_points, origin_of

    con = console()
    try:
        load_entry_points()  # installed plugin methods are listed with the built-ins
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.name:
        try:
            cls = get_method_class(args.name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        info = {"name": cls.name, "family": cls.family, "key_bits": cls.key_bits, "value_bits": cls.value_bits,
                "policy": cls.policy, "cadence": cls.cadence, "summary": cls.summary,
                "params": {k: {"default": p.default, "help": p.help} for k, p in cls.params.items()}, "origin": origin_of(cls.name)}
        if args.json:
            print(json.dumps(info, indent=2, default=str))
            return 0
        con.print(f"{cls.name} ({cls.family}): {cls.summary}", markup=False)
        con.print(f"keys {cls.key_bits} bit · values {cls.value_bits} bit · policy {cls.policy} · cadence {cls.cadence}",
                  markup=False)
        if info["origin"] != "built-in":
            con.print(f"plugin: {info['origin']}", markup=False)
        table = Table("parameter", "default", "meaning", show_edge=False)
        for k, p in cls.params.items():
            table.add_row(Text(k), Text(str(p.default)), Text(p.help))
        con.print(table if cls.params else "no parameters")
        return 0
    rows = [get_method_class(n) for n in method_names()]
    if args.json:
        print(json.dumps([{"name": c.name, "family": c.family, "key_bits": c.key_bits, "value_bits": c.value_bits,
                           "policy": c.policy, "summary": c.summary, "origin": origin_of(c.name)} for c in rows], indent=2))
        return 0
    # A narrow terminal leaves the prose out ('methods NAME' has it); the name never wraps.
    wide = con.width >= 140
    heads = ["#", "name", "K bits", "V bits", "policy", *(("family", "what") if wide else ())]
    table = Table(*heads, show_edge=False, box=None, header_style="bold")
    for col in table.columns[:4]:
        col.no_wrap = True
    table.columns[0].justify = "right"
    for i, c in enumerate(rows, 1):
        cells = [str(i), c.name, str(c.key_bits), str(c.value_bits), str(c.policy), *((c.family, c.summary) if wide else ())]
        table.add_row(*(Text(v) for v in cells))  # policies hold brackets: never Rich markup
    con.print(table)
    _print_plugins(con, rows)
    if not wide:
        con.print("'kvprof methods NAME' describes one method and its parameters", style="dim")
    return 0


def _print_plugins(con: Any, rows: list[Any]) -> None:
    from methods.plugins import origin_of

    for c in rows:
        if origin_of(c.name) != "built-in":
            con.print(f"plugin {c.name}: {origin_of(c.name)}", markup=False)
