"""Trace many methods in one process on the GPU, one JSON line per trace (for RESULTS.md).

    python3 benchmarks/sweep.py --integration study --methods all --deadline 540 --out traces > sweep.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvprof.runner import TraceRequest, run_trace  # noqa: E402
from methods import method_names  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--integration", default="study")
    p.add_argument("--methods", default="all", help="comma list, or 'all'")
    p.add_argument("--skip", default="", help="comma list of methods to leave out")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--deadline", type=float, default=540, help="stop starting new traces after this many seconds")
    p.add_argument("--per-trace", type=float, default=60, help="expected seconds per trace (deadline margin)")
    p.add_argument("--out", default="traces")
    args = p.parse_args()
    names = method_names() if args.methods == "all" else args.methods.split(",")
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.time()
    for name in names:
        if name in skip:
            continue
        if time.time() - t0 + args.per_trace > args.deadline:
            print(json.dumps({"method": name, "integration": args.integration, "status": "not run (deadline)"}), flush=True)
            continue
        t = time.time()
        row = {"method": name, "integration": args.integration}
        try:
            o = run_trace(TraceRequest(method=name, integration=args.integration, frames=args.frames, out=Path(args.out),
                                       run_id=f"{name}-{args.integration}"))
            s = o.summary
            rollout_ms = next((r["host_ms"] for r in s["stage_times"] if r["stage"] == "rollout"), None)
            row.update(status=o.status, peak_bytes=s["peak"]["bytes"], peak_stage=s["peak"]["stage"],
                       by_category=s["peak"]["by_category"], by_pass=s["peak"]["by_pass"], kv=s["kv"],
                       rollout_s=rollout_ms / 1e3 if rollout_ms else None, reconciliation=s["reconciliation"],
                       error=str(o.error)[:300] if o.error else None)
        except Exception as exc:  # one method's failure must not end the sweep
            row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500], tb=traceback.format_exc()[-800:])
        row["process_s"] = time.time() - t
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
