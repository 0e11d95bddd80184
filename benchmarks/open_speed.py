"""How long kvprof takes to open a big closed trace (issue 15: < 3 s each for summary, diagnose,
report .md and the TUI's first screen on a 7 M-event trace), and the analysis right after close.

    python benchmarks/open_speed.py [--trace DIR | --allocs 7300000] [--repeat 2]

Without --trace, writes a synthetic trace (benchmarks/synthetic_trace.py) to a temporary folder.
Then, in fresh processes (interpreter start and imports included, as a user sees it):
  close    what kvprof.api does after the session closed: load the trace and write views.json
           (kvprof.read.trace.load_closed), summarize, write summary.json (each step timed);
  summary  `kvprof summary TRACE`; diagnose `kvprof diagnose TRACE`; report `kvprof report TRACE -o r.md`;
  tui      the TUI's TraceSource opening the trace and building the first screen's view.
Prints wall seconds and max RSS of each (median of --repeat runs).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CLOSE = """
import json, sys, time
from dataclasses import replace
t0 = time.perf_counter()
from kvprof.read.analysis import summarize
from kvprof.read.summary import write_summary
from kvprof.read.trace import load_closed
t1 = time.perf_counter(); trace = load_closed(sys.argv[1])
t2 = time.perf_counter(); s = replace(summarize(trace), notes=tuple(trace.meta.get("notes", [])))
t3 = time.perf_counter(); write_summary(sys.argv[1], s)
t4 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "load+views": t2 - t1, "summarize": t3 - t2, "write": t4 - t3}))
"""
TUI = """
import sys
from tui.source import TraceSource
import tui.app  # noqa: F401 (the app's imports, as `kvprof tui` pays them)
s = TraceSource(sys.argv[1]); s.refresh()
assert s.view is not None and s.view.breakdown_at_event(s.view.peak_event).total == s.view.peak.bytes, s.error
"""
CLI = "import sys; from kvprof.cli import main; sys.exit(main(sys.argv[1:]))"


def _child_env() -> dict[str, str]:
    """The fresh processes' environment: this repo first, then the caller's PYTHONPATH (a device machine's carried
    packages, e.g. textual for the TUI, live there), nothing else of the caller's."""
    extra = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([str(ROOT)] + ([extra] if extra else [])), "PATH": "/usr/bin:/bin"}


def _run(code: str, *args: str) -> tuple[float, int, str]:
    """(wall s, max RSS KiB, stdout) of `python -c code args` in a fresh process."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-c", code, *args], capture_output=True, text=True,
                       cwd=ROOT, env=_child_env())
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed: {args}\n{p.stderr[-2000:]}")
    return wall, int(p.stderr.strip().splitlines()[-1]), p.stdout


def main(argv: list[str] | None = None) -> int:
    """Measure and print the open times."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=None)
    ap.add_argument("--allocs", type=int, default=7_300_000)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    trace = a.trace
    if trace is None:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from synthetic_trace import build_trace

        trace = build_trace(Path(tmp.name) / "synthetic", a.allocs)
    for name in ("views.json", "summary.json"):
        (trace / name).unlink(missing_ok=True)
    wall, rss, out = _run(CLOSE, str(trace))
    steps = json.loads(out)
    print(f"close    {wall:6.2f} s  {rss / 1024:7.0f} MiB  " + "  ".join(f"{k} {v:.2f}" for k, v in steps.items()))
    out_md = Path(tmp.name) / "r.md"
    for label, code, args in (("summary", CLI, ["summary", str(trace)]), ("diagnose", CLI, ["diagnose", str(trace)]),
                              ("report", CLI, ["report", str(trace), "-o", str(out_md)]), ("tui", TUI, [str(trace)])):
        runs = [_run(code, *args) for _ in range(a.repeat)]
        print(f"{label:8} {statistics.median(r[0] for r in runs):6.2f} s  {statistics.median(r[1] for r in runs) / 1024:7.0f} MiB")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
