"""The `kvprof` command line: a thin layer over kvprof's runner and analyses."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from kvprof.errors import UsageError
from kvprof.console import console, failure_reason, oom_explanation, print_methods, print_summary
from kvprof.units import parse_size

if TYPE_CHECKING:  # the runner imports torch: only when a trace is run
    from kvprof.runner import TraceOutcome, TraceRequest

EXIT_USAGE = 2
EXIT_RUN_FAILED = 1
EXIT_OOM = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a command whose reader went away


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
    t.add_argument("--fine-stages", action="store_true",
                   help="also record fine stages (steps repeated inside a step, e.g. PRQ's residual per slice: "
                        "10-20 us of host time each: ~3%% of a PRQ study rollout, 260k spans at 42 frames)")
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
    x.add_argument("--fine-stages", action="store_true", help="also record stages marked fine (steps repeated inside a step)")
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
        fine_stages=args.fine_stages, command=["kvprof", *sys.argv[1:]],
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


def _trace_with_tui(req: TraceRequest) -> TraceOutcome:
    """`kvprof trace --tui`: the rollout in a thread, the TUI following its trace folder."""
    import dataclasses

    from kvprof.runner import prepare, run_trace
    from tui.app import run_live

    # The TUI follows the trace: drain GPU allocations at every chunk. Bad input: one clear error
    # before the TUI opens.
    prep = prepare(dataclasses.replace(req, live=True))
    return run_live(prep.folder, lambda: run_trace(prep))


def _report_outcome(args: argparse.Namespace, outcome: Any, err: Any) -> int:
    if args.json:
        print(json.dumps({"trace": str(outcome.path), **outcome.summary.to_dict()}, indent=2, default=str))
    else:
        print_summary(outcome.path, outcome.summary)
    if outcome.status == "oom":
        print(oom_explanation(outcome.path, outcome.summary.oom or {}), file=sys.stderr)
        return EXIT_OOM
    if outcome.status == "failed":  # a failure that is no exception of the body: the folder could not be written
        meta_error = failure_reason(outcome.path)
        print(f"kvprof: error: {meta_error}", file=sys.stderr)
        return EXIT_RUN_FAILED
    if outcome.status == "interrupted":
        failure = outcome.summary.failure
        where = f" in {failure.stage}" if failure is not None and failure.stage else ""
        print(f"kvprof: interrupted{where}; the trace up to that moment is in {outcome.path} (status interrupted)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _cmd_tui(args: argparse.Namespace) -> int:
    from kvprof.read.trace import list_traces
    from tracers.trace_io import META_FILE, TraceError, read_meta
    from tui.app import run_tui

    from kvprof.read.manifest import cell_trace_paths, is_sweep, newest_attempts, result_traces, sweep_trace_root

    paths: list[Path] = []
    newest: dict[Path, Any] = {}
    root = args.root
    for p in args.traces:
        if is_sweep(p):  # following: every cell, each waited for until it starts; else the finished ones
            paths.extend(cell_trace_paths(p) if args.follow else result_traces(p))
            if args.follow:
                newest.update(newest_attempts(p))
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
    return run_tui(paths, follow=args.follow, root=root, newest=newest)


def _cmd_summary(args: argparse.Namespace) -> int:
    from kvprof.read.analysis import summarize
    from kvprof.read.compare import open_trace

    trace = open_trace(args.trace)
    summary = trace.summary or summarize(trace)
    if args.json:
        print(summary.to_json())
    else:
        print_summary(args.trace, summary)
    return 0


def _cannot_write(flag: str, path: Path, exc: OSError) -> UsageError:
    where = exc.filename or path
    return UsageError(f"{flag} {path}: cannot write {where} ({exc.strerror or exc}); pick a writable path")


def _cmd_report(args: argparse.Namespace) -> int:
    from kvprof.read.report import write_report

    if args.out.is_dir():
        raise UsageError(f"-o {args.out}: is a folder; name the report file, e.g. -o {args.out / 'report.html'}")
    try:
        print(write_report(args.traces, args.out, buckets=args.buckets, scale=args.scale))
    except OSError as exc:
        raise _cannot_write("-o", args.out, exc) from None
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from kvprof.read.compare import compare_table, format_compare

    df = compare_table(args.traces, sort=args.sort, baseline=args.baseline)
    print(format_compare(df, "json" if args.json else "csv" if args.csv else "table"), end="" if args.csv else "\n")
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from kvprof.diagnose import diagnose

    run = None
    if args.run_baseline:  # the recorder runs it; the diagnosis itself only reads traces
        from kvprof.runner import run_baseline as run
    result = diagnose(args.trace, args.baseline, traces_root=args.traces, run_baseline=run)
    print(result.render("json" if args.json else "md" if args.md else "text"), end="")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from kvprof.read.export import SNAPSHOT_NOTE, export

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

    return run_script(RunRequest(args.cmd, args.out, args.run_id, args.instrument, args.device, args.fine_stages), print_summary)


HANDLERS = {
    "trace": _cmd_trace,
    "methods": print_methods,
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
