"""The `kvprof` command line: a thin layer over kvprof's runner and analyses."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from kvprof.errors import UsageError
from kvprof.units import fmt_bytes, fmt_ms, parse_size

EXIT_USAGE = 2
EXIT_RUN_FAILED = 1
EXIT_OOM = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a command whose reader went away
WIDE_OUTPUT = 1000  # columns of a Rich console writing to a pipe or file: long rows stay whole


def console(stderr: bool = False) -> Any:
    """A Rich console: a terminal's own width; a pipe or file gets whole rows, never wrapped at 80."""
    from rich.console import Console

    con = Console(stderr=stderr)
    return con if con.is_terminal else Console(stderr=stderr, width=WIDE_OUTPUT, soft_wrap=True)


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments with our one-line rule (exit 2, a hint, no traceback)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}; see '{self.prog} --help'")


def _param(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param {text!r} must be name=value")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kvprof", description="Profile GPU memory and time of quantized KV caches in Self-Forcing rollouts.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser("trace", help="run a traced Self-Forcing rollout and write a trace")
    t.add_argument("--method", default="bf16", help="KV-cache method (see 'kvprof methods'); default bf16")
    t.add_argument("--integration", default="study", help="study (the published hook) or staged; default study")
    t.add_argument("--codes", default=None, help="code storage: int8 (study default), int16, packed (staged default)")
    t.add_argument("--param", action="append", type=_param, default=[], metavar="NAME=VALUE", help="override a method parameter")
    t.add_argument("--config", default=None, help="model config: tiny (CPU default) or wan-1.3b (GPU default)")
    t.add_argument("--dtype", default=None, help="override the config dtype: float32 or bfloat16")
    t.add_argument("--frames", type=int, default=None, help="latent frames, a multiple of 3 (default 42 on GPU, 12 on CPU)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when present)")
    t.add_argument("--out", type=Path, default=Path("traces"), help="output folder (default traces/)")
    t.add_argument("--run-id", default=None, help="trace folder name (default: time-method-integration-config)")
    t.add_argument("--rolling", type=int, default=None, metavar="W", help="rolling cache of W frames instead of all frames")
    t.add_argument("--sink", type=int, default=0, metavar="S", help="sink frames kept by a rolling cache")
    t.add_argument("--no-decode", dest="decode", action="store_false", help="skip the VAE decode")
    t.add_argument("--free-cache-before-decode", action="store_true", help="release the KV cache before the VAE decode")
    t.add_argument("--checkpoint", type=Path, default=None, help="Wan / Self-Forcing DiT state dict to load")
    t.add_argument("--vae", type=Path, default=None, help="local diffusers Wan VAE directory with real weights")
    t.add_argument("--prompt-embeds", type=Path, default=None, help="UMT5 prompt embeddings [n, 4096] (torch.save file)")
    t.add_argument("--budget", default=None, help="memory budget, e.g. 24GiB: a smaller card (GPU cap, or simulated OOM on CPU)")
    t.add_argument("--quality", action="store_true",
                   help="compare with the bf16 rollout of the same config/seed/embeddings (found in --out or run after the trace)")
    t.add_argument("--lpips-backbone", type=Path, default=None, metavar="FILE",
                   help="ImageNet AlexNet weights alexnet-owt-7be5be79.pth (else $KVPROF_LPIPS_BACKBONE, else torch hub checkpoints)")
    t.add_argument("--vbench-dims", default="", metavar="DIM[,DIM]", help="VBench dimensions, e.g. imaging_quality (needs --quality)")
    t.add_argument("--vbench-python", type=Path, default=None, metavar="PATH", help="Python of a VBench environment (else $KVPROF_VBENCH_PYTHON)")
    t.add_argument("--host-profile", action="store_true", help="record host stacks with py-spy (the 'host' extra) into the trace folder")
    t.add_argument("--host-rate", type=int, default=100, metavar="HZ", help="py-spy samples per second (default 100)")
    t.add_argument("--native", action="store_true", help="with --host-profile: C/C++ frames too (py-spy --native)")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    t.add_argument("--quiet", action="store_true", help="no progress display")
    t.add_argument("--tui", action="store_true", help="watch the rollout live in the terminal UI (q quits; quitting early interrupts the run)")

    u = sub.add_parser("tui", help="browse, compare and follow traces in a terminal UI")
    u.add_argument("traces", nargs="*", type=Path, help="trace folders (none: list the traces under --root)")
    u.add_argument("--follow", action="store_true", help="follow running traces as they are written")
    u.add_argument("--root", type=Path, default=Path("traces"), help="where the trace list looks (default traces/)")

    m = sub.add_parser("methods", help="list the KV-cache methods, or show one")
    m.add_argument("name", nargs="?")
    m.add_argument("--json", action="store_true")

    s = sub.add_parser("summary", help="print the summary of a trace")
    s.add_argument("trace", type=Path)
    s.add_argument("--json", action="store_true")

    r = sub.add_parser("report", help="write a report of one or more traces (.html .png .svg .pdf .md)")
    r.add_argument("traces", nargs="+", type=Path, metavar="TRACE", help="trace folders (a folder of traces counts as all of them)")
    r.add_argument("-o", "--out", type=Path, required=True, help="output file; the suffix picks the format")
    r.add_argument("--buckets", type=int, default=1500, help="timeline time buckets (min and max kept: the peak is exact)")
    r.add_argument("--scale", type=float, default=2.0, help="pixels per chart pixel of .png output (default 2: print resolution)")

    c = sub.add_parser("compare", help="one row per trace: peak, KV bytes, ratios, times")
    c.add_argument("traces", nargs="+", type=Path, metavar="TRACE")
    c.add_argument("--sort", default=None, metavar="COLUMN", help="a column or the title shown for it ('peak', 'wall s'); '-' prefix = descending (write --sort=-peak)")
    c.add_argument("--baseline", type=Path, default=None, metavar="TRACE")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true")
    g.add_argument("--csv", action="store_true")

    d = sub.add_parser("diagnose", help="explain a trace's peak against a bf16 baseline")
    d.add_argument("trace", type=Path)
    d.add_argument("--baseline", type=Path, default=None, metavar="TRACE")
    d.add_argument("--traces", type=Path, action="append", default=None, metavar="DIR",
                   help="where to look for a baseline (default: the trace's folder and traces/)")
    d.add_argument("--run-baseline", action="store_true", help="run the bf16 baseline now when none is found")
    g = d.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true")
    g.add_argument("--md", action="store_true")

    from kvprof.sweep.command import add_arguments as add_sweep_arguments

    add_sweep_arguments(sub.add_parser("sweep", help="trace a matrix of methods/shapes as Dask tasks (kvprof[sweep] extra)"), _param)

    x = sub.add_parser("run", help="run your script under a trace: kvprof run [--instrument self-forcing] -- python SCRIPT ARGS")
    x.add_argument("--instrument", default=None, metavar="NAME", help="instrument what the script builds: self-forcing")
    x.add_argument("--out", type=Path, default=Path("traces"), help="output folder (default traces/)")
    x.add_argument("--run-id", default=None, help="trace folder name (default: time-run-SCRIPT)")
    x.add_argument("--device", default=None, help="where the script's tensors live: cpu or cuda[:N] (default: cuda when present)")
    x.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- python SCRIPT ARGS")

    e = sub.add_parser("export", help="perfetto JSON, csv/parquet tables, PyTorch allocator snapshot (GPU traces)")
    e.add_argument("trace", type=Path)
    e.add_argument("--format", required=True, choices=("perfetto", "csv", "parquet", "snapshot"))
    e.add_argument("-o", "--out", type=Path, default=None, help="file (perfetto, snapshot) or folder (csv, parquet); default ./<run-id>.*")
    return p


def _cmd_trace(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kvprof.runner import TraceRequest, run_trace

    budget = parse_size(args.budget, "--budget") if args.budget is not None else None
    req = TraceRequest(
        method=args.method, integration=args.integration, codes=args.codes, params=dict(args.param),
        config=args.config, dtype=args.dtype, frames=args.frames, seed=args.seed, device=args.device,
        out=args.out, run_id=args.run_id, rolling=args.rolling, sink=args.sink, decode=args.decode,
        free_cache_before_decode=args.free_cache_before_decode, checkpoint=args.checkpoint, vae=args.vae,
        prompt_embeds=args.prompt_embeds, budget_bytes=budget,
        quality=args.quality, lpips_backbone=args.lpips_backbone,
        vbench_dims=tuple(d for d in args.vbench_dims.split(",") if d), vbench_python=args.vbench_python,
        host_profile=args.host_profile, host_rate=args.host_rate, host_native=args.native,
        command=["kvprof", *sys.argv[1:]],
    )
    err = console(stderr=True)
    if args.tui:
        outcome = _trace_with_tui(req)
        return _report_outcome(args, outcome, err)
    # A progress display on a pipe or file is not live: it would only leave a blank line behind.
    quiet = args.quiet or args.json or not err.is_terminal
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[where]}"),
                        TimeElapsedColumn(), console=err, disable=quiet, transient=True)
    task = progress.add_task("rollout", total=None, where="setup")

    def on_progress(p: Any) -> None:
        progress.update(task, total=p.num_chunks, completed=p.chunk + (1 if p.pass_name in ("decode", "done") else 0),
                        where=f"chunk {p.chunk + 1}/{p.num_chunks} · {p.pass_name}")

    with progress:
        outcome = run_trace(req, on_progress=on_progress)
    return _report_outcome(args, outcome, err)


def _trace_with_tui(req: Any) -> Any:
    """`kvprof trace --tui`: the rollout in a thread, the TUI following its trace folder."""
    from kvprof.runner import check_inputs, check_output, default_run_id, resolve, run_trace, trace_codes
    from tui.app import run_live

    _, cfg, spec, method_cls, storage, _ = resolve(req)  # bad input: one clear error before the TUI opens
    check_inputs(req, cfg)
    req.live = True  # the TUI follows the trace: drain GPU allocations at every chunk
    run_id = req.run_id or default_run_id(method_cls.name, spec.integration, cfg, spec, trace_codes(method_cls, storage))
    folder = check_output(req.out, run_id, claim=req.run_id is None)
    req.run_id = folder.name
    return run_live(folder, lambda: run_trace(req))


def _report_outcome(args: argparse.Namespace, outcome: Any, err: Any) -> int:
    if args.json:
        print(json.dumps({"trace": str(outcome.path), **outcome.summary}, indent=2, default=str))
    else:
        print_summary(outcome.path, outcome.summary)
    if outcome.status == "oom":
        print(oom_explanation(outcome.path, outcome.summary.get("oom") or {}), file=sys.stderr)
        return EXIT_OOM
    if outcome.status == "failed":  # a failure that is no exception of the body: the folder could not be written
        meta_error = _failure_reason(outcome.path)
        print(f"kvprof: error: {meta_error}", file=sys.stderr)
        return EXIT_RUN_FAILED
    if outcome.status == "interrupted":
        failure = outcome.summary.get("failure") or {}
        where = f" in {failure['stage']}" if failure.get("stage") else ""
        print(f"kvprof: interrupted{where}; the trace up to that moment is in {outcome.path} (status interrupted)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _failure_reason(folder: Path) -> str:
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


def _cmd_tui(args: argparse.Namespace) -> int:
    from kvprof.trace import list_traces
    from tracers.trace_io import META_FILE, TraceError, read_meta
    from tui.app import run_tui

    from kvprof.sweep.manifest import cell_trace_paths, is_sweep, result_traces, sweep_trace_root

    paths: list[Path] = []
    root = args.root
    for p in args.traces:
        if is_sweep(p):  # following: every cell, each waited for until it starts; else the finished ones
            paths.extend(cell_trace_paths(p) if args.follow else result_traces(p))
            root = sweep_trace_root(p)
            continue
        inner = list_traces(p) if p.is_dir() and not (p / META_FILE).exists() else []
        if inner:  # a folder of traces stands for its traces
            paths.extend(sorted(inner, key=lambda f: f.name))
            continue
        if args.follow and not (p / META_FILE).exists():
            paths.append(p)  # following: a trace that has not started yet is waited for
            continue
        try:
            read_meta(p)
        except TraceError as exc:
            raise UsageError(f"{exc}; pass a folder written by 'kvprof trace' (see 'ls {args.root}/')") from None
        paths.append(p)
    return run_tui(paths, follow=args.follow, root=root)


def print_summary(path: Path, summary: dict[str, Any]) -> None:
    """The human summary of a trace: peak (when, what), KV bytes, time per stage, reconciliation."""
    from rich.markup import escape as esc  # paths, stage and category names are the user's: never markup
    from rich.table import Table

    con = console()
    peak = summary.get("peak")
    con.print(f"[bold]trace[/bold] {esc(str(path))}  status [bold]{esc(str(summary.get('status')))}[/bold]")
    if not peak:
        con.print("no allocations recorded")
        return
    con.print(f"[bold]peak[/bold] {fmt_bytes(peak['bytes'])} ({peak['bytes']:,} B) during [cyan]{esc(peak['stage'])}[/cyan]")
    cats = Table(title="live at the peak, by category", show_edge=False)
    cats.add_column("category")
    cats.add_column("bytes", justify="right")
    cats.add_column("share", justify="right")
    for cat, n in sorted(peak["by_category"].items(), key=lambda kv: -kv[1]):
        cats.add_row(esc(cat), fmt_bytes(n), f"{100 * n / peak['bytes']:.1f}%" if peak["bytes"] else "-")
    con.print(cats)
    stages = Table(title="live at the peak, by stage of origin", show_edge=False)
    stages.add_column("stage (kind path)")
    stages.add_column("bytes", justify="right")
    for st, n in list(peak["by_stage"].items())[:10]:
        stages.add_row(esc(st), fmt_bytes(n))
    con.print(stages)
    kv = summary.get("kv")
    if kv:
        from kvprof.analysis import logical_label

        lab = logical_label(kv.get("logical_dtype"))
        con.print(
            f"[bold]KV[/bold] {lab} {fmt_bytes(kv['logical_bytes'])} · stored {fmt_bytes(kv['stored_bytes'])} · "
            f"resident {fmt_bytes(kv['resident_bytes'])} · ratio logical/stored {_ratio(kv.get('ratio_stored'))}, "
            f"logical/resident {_ratio(kv.get('ratio_resident'))}"
        )
    times = Table(title="time per stage kind", show_edge=False)
    for col in ("stage", "count", "host ms", "device ms"):
        times.add_column(col, justify="right" if col != "stage" else "left")
    for row in summary.get("stage_times", [])[:12]:
        times.add_row(esc(str(row["stage"])), str(row["count"]), fmt_ms(row.get("host_ms")), fmt_ms(row.get("device_ms")))
    con.print(times)
    rec = summary.get("reconciliation", {})
    if "peak_gap_bytes" in rec:
        con.print(
            f"[bold]reconciliation[/bold] trace peak {rec['trace_peak_bytes']:,} B vs torch.cuda.max_memory_allocated "
            f"{rec['max_memory_allocated_bytes']:,} B (gap {rec['peak_gap_bytes']:,} B); max gap at stage boundaries "
            f"{rec.get('max_abs_gap_bytes', 0):,} B over {rec.get('boundaries', 0)} boundaries"
        )
        bs = rec.get("block_sizes")
        if isinstance(bs, dict):
            how = (f"allocator layout mirror off ({bs.get('off_reason')})" if bs.get("model") == "off" else
                   f"{bs.get('exact_blocks', 0):,} from the allocator layout mirror")
            con.print(f"  block sizes: {how}, {bs.get('rounded_blocks', 0):,} rounded requests, "
                      f"{bs.get('snapshot_mismatches', 0):,} snapshot mismatches")
    else:
        unattr = peak["by_category"].get("unattributed", 0)
        con.print(f"[bold]reconciliation[/bold] {esc(str(rec.get('note', '')))}; unattributed at peak {fmt_bytes(unattr)}")
    if summary.get("host_profile"):
        from kvprof.hostprof import host_summary_lines

        for line in host_summary_lines(summary["host_profile"]):
            con.print(line, markup=False)
    quality = summary.get("quality")
    if isinstance(quality, dict):
        shown = {k: quality[k] for k in ("latent_drift", "attention_drift", "psnr_db", "ssim", "lpips", "flicker") if k in quality}
        text = " · ".join(f"{k} {v.get('missing', v) if isinstance(v, dict) else v}" for k, v in shown.items())
        if "missing" in quality:  # no metric at all: say why (e.g. an unreadable reference, named)
            text = f"missing: {quality['missing']}"
        con.print("[bold]quality vs bf16[/bold] " + esc(text))
    for note in summary.get("notes", []):
        con.print(f"[dim]{esc(str(note))}[/dim]")


def _ratio(value: Any) -> str:
    """A compression ratio, or "-" where there is none (no stored bytes: nothing to divide by)."""
    return f"{value:.2f}x" if isinstance(value, (int, float)) and value > 0 else "-"


def _cmd_methods(args: argparse.Namespace) -> int:
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


def _cmd_summary(args: argparse.Namespace) -> int:
    from kvprof.analysis import summarize
    from kvprof.compare import open_trace

    trace = open_trace(args.trace)
    summary = trace.summary or summarize(trace)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_summary(args.trace, summary)
    return 0


def _cannot_write(flag: str, path: Path, exc: OSError) -> UsageError:
    where = exc.filename or path
    return UsageError(f"{flag} {path}: cannot write {where} ({exc.strerror or exc}); pick a writable path")


def _cmd_report(args: argparse.Namespace) -> int:
    from kvprof.report import write_report

    if args.out.is_dir():
        raise UsageError(f"-o {args.out}: is a folder; name the report file, e.g. -o {args.out / 'report.html'}")
    try:
        print(write_report(args.traces, args.out, buckets=args.buckets, scale=args.scale))
    except OSError as exc:
        raise _cannot_write("-o", args.out, exc) from None
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from kvprof.compare import compare_table, format_compare

    df = compare_table(args.traces, sort=args.sort, baseline=args.baseline)
    print(format_compare(df, "json" if args.json else "csv" if args.csv else "table"), end="" if args.csv else "\n")
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from kvprof.diagnose import diagnose

    result = diagnose(args.trace, args.baseline, traces_root=args.traces, run_baseline_if_missing=args.run_baseline)
    print(result.render("json" if args.json else "md" if args.md else "text"), end="")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from kvprof.export import SNAPSHOT_NOTE, export

    if args.out is not None and args.format in ("perfetto", "snapshot") and args.out.is_dir():
        raise UsageError(f"-o {args.out}: is a folder; {args.format} export writes one file (name it, or leave -o out)")
    try:
        print(export(args.trace, args.format, args.out))
    except OSError as exc:
        raise _cannot_write("-o", args.out or Path("."), exc) from None
    if args.format == "snapshot":
        print(f"note: {SNAPSHOT_NOTE}; open it with PyTorch's memory visualizer (pytorch.org/memory_viz)", file=sys.stderr)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    try:
        from kvprof.sweep.command import run
        import distributed  # noqa: F401
    except ImportError:
        raise UsageError("kvprof sweep needs Dask: pip install 'kvprof[sweep]' (dask, distributed)") from None
    return run(args)


def _cmd_run(args: argparse.Namespace) -> int:
    from kvprof.integrations.run import RunRequest, run_script

    return run_script(RunRequest(args.cmd, args.out, args.run_id, args.instrument, args.device), print_summary)


HANDLERS = {
    "trace": _cmd_trace,
    "methods": _cmd_methods,
    "summary": _cmd_summary,
    "tui": _cmd_tui,
    "report": _cmd_report,
    "compare": _cmd_compare,
    "diagnose": _cmd_diagnose,
    "export": _cmd_export,
    "sweep": _cmd_sweep,
    "run": _cmd_run,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kvprof` console script."""
    from tracers.trace_io import TraceError, TraceWriteError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        code = HANDLERS[args.command](args)
        sys.stdout.flush()  # a reader that went away shows here, inside the handler below
        return code
    except BrokenPipeError:  # `kvprof compare --json T | head`: the reader has all it wanted
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except (UsageError, TraceError) as exc:  # TraceError: a trace folder read outside the commands' own checks
        print(f"kvprof: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except TraceWriteError as exc:  # a full disk: the trace closed as failed, saying why
        print(f"kvprof: error: {exc.strerror}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except KeyboardInterrupt:  # outside a traced run (a traced run turns Ctrl-C into an interrupted trace)
        print("kvprof: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is left does not raise
    again (the Python docs' pattern for SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file descriptor (captured in tests)
        pass
    finally:
        os.close(devnull)


def _one_line(message: str) -> str:
    return " ".join(message.split())


if __name__ == "__main__":
    sys.exit(main())
