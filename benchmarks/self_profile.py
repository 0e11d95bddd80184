"""Where a traced rollout's host time goes, by sampling it: py-spy (`--native`, every thread) on one
`overhead.py --mode MODE` process, then the share of the model thread's rollout samples that sit in
each piece of kvprof (issue 15: the traced prq_int4 rollout is 5-10 % slower and in-process timings on
the device hosts were too noisy to say why; a sample's stack says it directly).

    timeout -s INT 300 python3 benchmarks/self_profile.py record OUT.txt --mode kvprof [--rate 25] -- --method prq_int4 --frames 12 --no-decode
    python3 benchmarks/self_profile.py analyze OUT.txt [--top 25]
    python3 benchmarks/self_profile.py compare TRACED.txt UNTRACED.txt [--rate 25] [--top 25]

`record` passes everything after `--` to `overhead.py --mode MODE` (so the workload is the benchmark's) and
writes py-spy's raw (folded) stacks. `analyze` keeps the samples of the thread that ran `run_rollout`
inside it, and prints JSON: their count, each piece's share (a sample counts for a piece when any frame
of its stack matches), the other threads' samples (the drain thread's own CPU time), and the leaf frames
that held most samples. Sampling is time-based, so shares are of wall time on the model thread.

`compare` takes two `record` outputs of the same rollout, traced and untraced (e.g. a pair sampled at once on two
GPUs: `gpu_session.sh spypair:...`), and prints, in seconds of the model thread's rollout (samples over the rate),
where the traced one spent more: per leaf frame and per binary or source file the leaf sits in (native frames name
their library, Python frames their file). A leaf that is not kvprof's and still costs more traced is what the
in-process accounting (scopes, drains) cannot see.

Not `kvprof trace --host-profile`: that profile is about the code under study and leaves kvprof's own frames out of
its top frames; this one counts exactly those, native ones included, in the benchmark's own workload.

py-spy writes its output only when it stops: stop it with SIGINT (`timeout -s INT`, which py-spy passes on as
Ctrl-C), never SIGTERM/SIGKILL, or nothing is written (session 9's first try, at 100 Hz with `--native`, fell 1-1.6 s
behind, slowed the run and was killed by `timeout` before writing). 25 Hz gives ~300 samples of a 12 s rollout.
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

# piece -> substrings of a frame (function and file) that put a sample in it
PIECES: dict[str, tuple[str, ...]] = {
    "kvprof_python": ("tracers/", "kvprof/tagging.py", "kvprof/api.py", "TracerMarks."),
    "scopes": ("tracers/scopes.py",),
    "native_recorder": ("kvp_record", "kvp_retag"),
    "allocator_tracker": ("attachAllocatorTraceTracker", "record_trace"),
    "counters": ("kvp_counters", "getDeviceStats", "memory_stats"),
    "device_marks": ("kvp_mark", "cudaEventRecord", "StageTimer", "nvtx"),
    "ctypes": ("_ctypes", "ffi_call"),
    "locks": ("lock_PyThread", "acquire_timed", "PyThread_acquire"),
    "gil_wait": ("take_gil", "drop_gil", "PyCOND_WAIT", "pthread_cond_timedwait"),
}
ROLLOUT_FRAME = "run_rollout ("
OVERHEAD = Path(__file__).resolve().parent / "overhead.py"


def samples(raw: Path) -> Iterator[tuple[str, list[str], int]]:
    """(thread, frames root-first, count) of each line of py-spy's raw output."""
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        yield frames[0], frames[1:], int(count)


def _in_rollout(stacks: list[tuple[str, list[str], int]]) -> Iterator[tuple[list[str], int]]:
    """(frames, count) of the samples taken inside `run_rollout` (on the thread that ran it, by construction)."""
    for _, frames, n in stacks:
        if any(ROLLOUT_FRAME in f for f in frames):
            yield frames, n


def _leaf(frames: list[str]) -> str:
    return frames[-1] if frames else "?"


def analyze(raw: Path, top: int = 25) -> dict[str, Any]:
    """The shares described in the module docstring."""
    stacks = list(samples(raw))
    per_thread: collections.Counter[str] = collections.Counter()
    for thread, _, n in stacks:
        per_thread[thread] += n
    pieces: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, n in _in_rollout(stacks):
        total += n
        leaves[_leaf(frames)] += n
        for piece, marks in PIECES.items():
            if any(m in f for f in frames for m in marks):
                pieces[piece] += n
    return {
        "rollout_samples": total,
        "share": {p: round(pieces[p] / total, 4) if total else None for p in PIECES},
        "threads": dict(per_thread.most_common()),
        "top_leaves": [[f, n, round(n / total, 4)] for f, n in leaves.most_common(top)] if total else [],
    }


def _rollout_leaves(raw: Path) -> collections.Counter[str]:
    """Samples of each leaf frame inside `run_rollout`."""
    leaves: collections.Counter[str] = collections.Counter()
    for frames, n in _in_rollout(list(samples(raw))):
        leaves[_leaf(frames)] += n
    return leaves


def _where(frame: str) -> str:
    """The binary or source file of a py-spy frame ('f (libx.so)' -> 'libx.so', 'f (a/b.py:12)' -> 'a/b.py')."""
    _, _, inside = frame.rpartition(" (")
    return inside.rstrip(")").rsplit(":", 1)[0] if inside else frame


def compare(traced: Path, untraced: Path, rate: float, top: int = 25) -> dict[str, Any]:
    """Seconds of the rollout thread per leaf frame and per place (binary or file), traced against untraced, the
    largest differences first."""
    a, b = _rollout_leaves(traced), _rollout_leaves(untraced)

    def table(x: collections.Counter[str], y: collections.Counter[str]) -> list[list[Any]]:
        rows = [[k, round(x[k] / rate, 3), round(y[k] / rate, 3), round((x[k] - y[k]) / rate, 3)]
                for k in set(x) | set(y)]
        return sorted(rows, key=lambda r: (-r[3], r[0]))[:top]  # ties by name: the same output on every run

    where_a: collections.Counter[str] = collections.Counter()
    where_b: collections.Counter[str] = collections.Counter()
    for leaves, where in ((a, where_a), (b, where_b)):
        for frame, n in leaves.items():
            where[_where(frame)] += n
    return {"rate": rate, "columns": ["frame", "traced_s", "untraced_s", "more_traced_s"],
            "rollout_s": [round(sum(a.values()) / rate, 3), round(sum(b.values()) / rate, 3)],
            "by_place": table(where_a, where_b), "by_leaf": table(a, b)}


def record_command(out: Path, mode: str, rate: int, rest: list[str], py_spy: str = "py-spy") -> list[str]:
    """The py-spy command line that samples one `overhead.py --mode MODE` process."""
    return [py_spy, "record", "--native", "--threads", "--rate", str(rate), "--format", "raw", "--output", str(out),
            "--", sys.executable, str(OVERHEAD), "--mode", mode, *rest]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="sample one overhead.py --mode process with py-spy")
    rec.add_argument("out", type=Path)
    rec.add_argument("--mode", default="kvprof")
    rec.add_argument("--rate", type=int, default=25, help="samples a second (py-spy's --rate; --native is slow)")
    ana = sub.add_parser("analyze", help="shares of the model thread's rollout samples")
    ana.add_argument("raw", type=Path)
    ana.add_argument("--top", type=int, default=25)
    cmp = sub.add_parser("compare", help="where a traced rollout spent more seconds than an untraced one")
    cmp.add_argument("traced", type=Path)
    cmp.add_argument("untraced", type=Path)
    cmp.add_argument("--rate", type=float, default=25.0, help="the rate both were recorded at")
    cmp.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    if args.cmd == "compare":
        for raw in (args.traced, args.untraced):
            if not raw.is_file():
                p.error(f"{raw}: no such file (py-spy's raw output, from `record`)")
        print(json.dumps(compare(args.traced, args.untraced, args.rate, args.top), indent=1))
        return 0
    if args.cmd == "analyze":
        if not args.raw.is_file():
            p.error(f"{args.raw}: no such file (py-spy's raw output, from `record`)")
        print(json.dumps(analyze(args.raw, args.top), indent=1))
        return 0
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        p.error("py-spy not found on PATH (pip install py-spy)")
    return wait_ignoring_interrupts(subprocess.Popen(record_command(args.out, args.mode, args.rate, rest, py_spy)))


def wait_ignoring_interrupts(proc: subprocess.Popen) -> int:
    """Wait for py-spy through Ctrl-C / `timeout -s INT`: py-spy gets the same SIGINT (one process group) and needs
    the time to write its output (`subprocess.run` would kill it a quarter second later). SIGINT is ignored here
    while waiting (py-spy, started before, keeps its own handler)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
