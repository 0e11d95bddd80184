"""Trace many methods on the GPU, one JSON line per trace (for RESULTS.md).

    python3 benchmarks/sweep.py --integration study --methods all --deadline 540 --out traces > sweep.jsonl
    python3 benchmarks/sweep.py --integration staged --methods all --lanes 3 \
        --costs benchmarks/results/sweep_staged_h100.jsonl --deadline 480 --out traces > sweep.jsonl

One lane traces the methods in one process, one after another. With --lanes N, N such processes
share the GPU, each taking the methods of one lane (longest expected first, balanced by the
process_s of earlier sweeps given with --costs). Peak bytes are per process and stay exact; wall
times then include the other lanes' load, so each row says how many lanes ran (and each trace's
meta notes the other GPU processes NVML saw).

Before each trace a lane frees what the previous trace left allocated (cuBLAS workspaces, cached
blocks), so that every trace starts as in a fresh process, as `kvprof trace` does; `--keep-caches`
leaves them, and the trace then holds them as `unattributed` "live before tracing".
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods import get_method_class, method_names  # noqa: E402
from methods.plugins import PluginError  # noqa: E402


def expected_costs(paths: list[Path], integration: str) -> dict[str, float]:
    """Seconds per method from earlier sweep rows of this integration (the last complete row wins)."""
    costs: dict[str, float] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("integration") == integration and row.get("status") == "complete" and row.get("process_s"):
                costs[row["method"]] = float(row["process_s"])
    return costs


def split_lanes(names: list[str], lanes: int, costs: dict[str, float], default: float) -> list[list[str]]:
    """Longest-processing-time-first: each method, longest first, goes to the lane that ends soonest."""
    lists: list[list[str]] = [[] for _ in range(lanes)]
    load = [0.0] * lanes
    for name in sorted(names, key=lambda n: -costs.get(n, default)):
        i = min(range(lanes), key=lambda j: (load[j], j))
        lists[i].append(name)
        load[i] += costs.get(name, default)
    return [lane for lane in lists if lane]


def release_process_caches() -> None:
    """Free what earlier traces of this process left allocated on the GPU (cuBLAS keeps a workspace
    per handle and stream), so the next trace starts from the allocator state of a fresh process."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)  # private, present since torch 1.13
        if clear is not None:
            clear()
        torch.cuda.empty_cache()


def run_lane(names: list[str], args: argparse.Namespace, t0: float, lanes: int) -> None:
    """Trace `names` in this process, printing one row each."""
    from kvprof.runner import TraceRequest, run_trace
    from tracers.trace_io import read_meta

    for name in names:
        if time.time() - t0 + args.per_trace > args.deadline:
            print(json.dumps({"method": name, "integration": args.integration, "status": "not run (deadline)",
                              "lanes": lanes}), flush=True)
            continue
        t = time.time()
        row = {"method": name, "integration": args.integration, "lanes": lanes}
        if not args.keep_caches:
            release_process_caches()
        try:
            o = run_trace(TraceRequest(method=name, integration=args.integration, frames=args.frames,
                                       config=args.config, out=Path(args.out), run_id=f"{name}-{args.integration}"))
            s = o.summary
            rollout_ms = next((r["host_ms"] for r in s["stage_times"] if r["stage"] == "rollout"), None)
            row.update(status=o.status, peak_bytes=s["peak"]["bytes"], peak_stage=s["peak"]["stage"],
                       by_category=s["peak"]["by_category"], by_pass=s["peak"]["by_pass"], kv=s["kv"],
                       rollout_s=rollout_ms / 1e3 if rollout_ms else None, reconciliation=s["reconciliation"],
                       error=str(o.error)[:300] if o.error else None,
                       held_before_bytes=read_meta(o.path).get("held_before_bytes"))
        except Exception as exc:  # one method's failure must not end the sweep
            row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500], tb=traceback.format_exc()[-800:])
        row["process_s"] = time.time() - t
        print(json.dumps(row), flush=True)


def run_lanes(plan: list[list[str]], args: argparse.Namespace, t0: float) -> int:
    """One child process per lane; their rows are passed on line by line as they come."""
    lock = threading.Lock()
    children = []
    for lane in plan:
        cmd = [sys.executable, __file__, "--integration", args.integration, "--methods", ",".join(lane),
               "--deadline", str(args.deadline - (time.time() - t0)), "--per-trace", str(args.per_trace),
               "--out", args.out, "--lane-of", str(len(plan))]
        cmd += ["--keep-caches"] if args.keep_caches else []
        cmd += ["--frames", str(args.frames)] if args.frames is not None else []
        cmd += ["--config", args.config] if args.config is not None else []
        children.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))

    def relay(proc: subprocess.Popen, lane: list[str]) -> None:
        assert proc.stdout is not None
        reported = set()
        for line in proc.stdout:
            try:
                reported.add(json.loads(line)["method"])
            except (ValueError, KeyError, TypeError):
                pass  # not a row (a library printing to stdout): passed on as it is
            with lock:
                sys.stdout.write(line)
                sys.stdout.flush()
        rc = proc.wait()
        with lock:  # a lane that died (killed, crashed) still gets a row for each method it left
            for name in lane:
                if name not in reported:
                    print(json.dumps({"method": name, "integration": args.integration, "lanes": len(plan),
                                      "status": "error", "error": f"lane process exited with code {rc} first"}),
                          flush=True)

    threads = [threading.Thread(target=relay, args=(c, lane)) for c, lane in zip(children, plan)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return max(c.returncode for c in children)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--integration", default="study")
    p.add_argument("--methods", default="all", help="comma list, or 'all'")
    p.add_argument("--skip", default="", help="comma list of methods to leave out")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--config", default=None, help="model config (default: the device's, wan-1.3b on a GPU)")
    p.add_argument("--deadline", type=float, default=540, help="stop starting new traces after this many seconds")
    p.add_argument("--per-trace", type=float, default=60, help="expected seconds per trace (deadline margin)")
    p.add_argument("--lanes", type=int, default=1, help="processes sharing the GPU (default 1)")
    p.add_argument("--costs", type=Path, nargs="*", default=[], help="earlier sweep .jsonl files, to balance lanes")
    p.add_argument("--keep-caches", action="store_true",
                   help="do not free what the previous trace left allocated (it is then held as 'live before tracing')")
    p.add_argument("--lane-of", type=int, default=None, help=argparse.SUPPRESS)  # set for a lane's child process
    p.add_argument("--out", default="traces")
    args = p.parse_args(argv)
    t0 = time.time()
    names = method_names() if args.methods == "all" else args.methods.split(",")
    unknown = []
    for name in names:  # built-in names, plugin specs (module:Class) and entry-point methods
        try:
            get_method_class(name)
        except PluginError as exc:
            p.error(f"--methods: {exc}")
        except ValueError:
            unknown.append(name)
    if unknown:
        p.error(f"--methods: unknown {', '.join(sorted(unknown))}; 'kvprof methods' lists them")
    skip = set(filter(None, args.skip.split(",")))
    names = [n for n in names if n not in skip]
    if args.lanes > 1:
        costs = expected_costs(args.costs, args.integration)
        return run_lanes(split_lanes(names, args.lanes, costs, args.per_trace), args, t0)
    run_lane(names, args, t0, args.lane_of or 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
