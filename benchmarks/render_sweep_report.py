"""Render the report of a GPU sweep: one comparison page and one PNG per trace.

    python3 benchmarks/render_sweep_report.py traces/ [more/ ...] --out benchmarks/sweep-report [--results benchmarks/RESULTS.md]

Reads every trace folder directly under each TRACES folder (those written by `kvprof trace`; of a
`kvprof sweep` folder, the trace of each finished cell), keeps the GPU ones (meta tracker 'cuda-allocator-history'; --include-cpu
keeps all), and writes into --out:
  sweep.html            the comparison report, self-contained (scripts inlined, opens offline)
  sweep.md              the same as markdown tables
  compare.csv           one row per trace (kvprof compare --csv)
  comparison.png        peak vs logical / stored / resident KV per trace, bf16 peak as reference
  <run-id>.png          each trace: timeline by category with passes and the exact peak,
                        peak breakdown, time per stage kind
  <run-id>.diagnose.md  with --diagnose: each non-bf16 trace explained against the sweep's bf16
--comparison-from CSV... renders comparison.png alone from compare.csv files (a GPU run's traces
stay there; its table comes back). --pngs-only stops after the per-trace PNGs; --skip-existing
keeps PNGs an earlier run wrote (a GPU session renders after each batch of traces); --palette N
stores PNGs with N colours (Pillow). With --results FILE, only traces whose folder name appears
in FILE are rendered (the traces that RESULTS.md records). Prints one line per file written and
the time it took.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvprof.read.compare import compare_table, format_compare, open_trace  # noqa: E402
from kvprof.diagnose import diagnose  # noqa: E402
from kvprof.errors import UsageError  # noqa: E402
from kvprof.read.report import comparison_chart, render_chart, trace_chart, write_report  # noqa: E402
from kvprof.read.manifest import is_sweep, result_traces  # noqa: E402
from kvprof.read.trace import list_traces  # noqa: E402

GPU_TRACKER = "cuda-allocator-history"


def select(roots: list[Path], include_cpu: bool, results: Path | None) -> list:
    """The traces to render, sorted by method then integration."""
    folders = [f for root in roots if root.is_dir() for f in (result_traces(root) if is_sweep(root) else list_traces(root))]
    if results is not None:
        text = results.read_text()
        folders = [f for f in folders if f.name in text]
    traces = []
    for folder in folders:
        try:
            t = open_trace(folder)
        except UsageError as exc:
            print(f"skipped {folder}: {exc}", file=sys.stderr)
            continue
        if include_cpu or t.meta.get("tracker") == GPU_TRACKER:
            traces.append(t)
    return sorted(traces, key=lambda t: (t.meta.get("method") != "bf16", str(t.meta.get("method")),
                                         str(t.meta.get("integration")), t.path.name))


def palette_png(png: bytes, colors: int) -> bytes:
    """The chart as a palette PNG: charts are flat colours, so 128 of them lose nothing visible."""
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("--palette needs Pillow: pip install pillow") from None
    import io

    out = io.BytesIO()
    im = Image.open(io.BytesIO(png)).convert("RGB")
    im.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, "PNG", optimize=True)
    return out.getvalue()


def comparison_from_csv(csvs: list[Path], out: Path, scale: float, palette: int = 0) -> int:
    """comparison.png again from the tables GPU runs brought back (their traces stay on that machine)."""
    tables = []
    for csv in csvs:
        try:
            table = pd.read_csv(csv)
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise UsageError(f"{csv}: cannot read ({exc}); pass the compare.csv this script wrote") from None
        missing = [c for c in ("trace", "method", "peak_bytes", "logical_kv_bytes", "stored_kv_bytes",
                               "resident_kv_bytes") if c not in table.columns]
        if missing:
            raise UsageError(f"{csv}: lacks column(s) {', '.join(missing)}; pass the compare.csv this script wrote")
        tables.append(table)
    table = pd.concat(tables, ignore_index=True).drop_duplicates("trace", keep="last").sort_values("trace")
    csv = ", ".join(map(str, csvs))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    png = render_chart(comparison_chart(table), "png", scale)
    (out / "comparison.png").write_bytes(palette_png(png, palette) if palette else png)
    print(f"{out / 'comparison.png'}  ({len(table)} traces from {csv}, {time.perf_counter() - t0:.1f} s)", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("traces", type=Path, nargs="*", help="folders holding trace folders (e.g. traces/)")
    p.add_argument("--out", type=Path, default=Path("sweep-report"), help="output folder (created)")
    p.add_argument("--results", type=Path, default=None, help="render only traces named in this file (RESULTS.md)")
    p.add_argument("--include-cpu", action="store_true", help="also render CPU (dispatch-tracker) traces")
    p.add_argument("--diagnose", action="store_true", help="write a diagnose page per non-bf16 trace")
    p.add_argument("--buckets", type=int, default=1500, help="timeline time buckets (min and max kept per bucket)")
    p.add_argument("--scale", type=float, default=1.5, help="PNG scale factor")
    p.add_argument("--comparison-from", type=Path, nargs="+", default=None, metavar="CSV",
                   help="render comparison.png from compare.csv files earlier runs wrote (no traces needed; "
                        "a trace in several files: the last one counts)")
    p.add_argument("--palette", type=int, default=0, metavar="COLORS",
                   help="store PNGs with this many palette colours (Pillow; ~10x smaller, for committing)")
    p.add_argument("--pngs-only", action="store_true", help="only the per-trace PNGs (no comparison pages)")
    p.add_argument("--skip-existing", action="store_true", help="keep per-trace PNGs already in --out")
    args = p.parse_args(argv)
    try:
        if args.comparison_from is not None:
            return comparison_from_csv(args.comparison_from, args.out, args.scale, args.palette)
        if not args.traces:
            raise UsageError("no trace folder given; pass folders of traces, or --comparison-from compare.csv")
        traces = select(args.traces, args.include_cpu, args.results)
        if not traces:
            raise UsageError(f"{', '.join(map(str, args.traces))}: no {'' if args.include_cpu else 'GPU '}traces found"
                             + ("" if args.include_cpu else "; --include-cpu renders CPU traces too"))
        args.out.mkdir(parents=True, exist_ok=True)

        def png(chart) -> bytes:
            data = render_chart(chart, "png", args.scale)
            return palette_png(data, args.palette) if args.palette else data

        def timed(path: Path, make) -> None:
            t0 = time.perf_counter()
            make(path)
            print(f"{path}  ({time.perf_counter() - t0:.1f} s)", flush=True)

        print(f"{len(traces)} traces from {', '.join(map(str, args.traces))}", flush=True)
        # Cheapest and most wanted first, so a time-limited run on the GPU machine keeps the PNGs.
        for t in traces:
            if args.skip_existing and (args.out / f"{t.path.name}.png").exists():
                continue
            timed(args.out / f"{t.path.name}.png",
                  lambda p, t=t: p.write_bytes(png(trace_chart(t, args.buckets))))
        if args.pngs_only:
            return 0
        if len(traces) > 1:
            timed(args.out / "comparison.png",
                  lambda p: p.write_bytes(png(comparison_chart(traces))))
        timed(args.out / "compare.csv",
              lambda p: p.write_text(format_compare(compare_table(traces, sort="method"), "csv")))
        timed(args.out / "sweep.md", lambda p: write_report(traces, p))
        timed(args.out / "sweep.html", lambda p: write_report(traces, p, buckets=args.buckets))
        if args.diagnose:
            for t in traces:
                if t.meta.get("method") != "bf16":
                    timed(args.out / f"{t.path.name}.diagnose.md",
                          lambda p, t=t: p.write_text(diagnose(t, traces_root=args.traces[0]).to_markdown()))
    except UsageError as exc:
        print(f"render_sweep_report: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
