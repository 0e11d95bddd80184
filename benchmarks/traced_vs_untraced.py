"""Run the same rollout untraced and traced; print peak, reconciliation and wall-time ratio.

    python3 benchmarks/traced_vs_untraced.py --method bf16 [--config wan-1.3b] [--frames 42] [--mode untraced|traced|both]
        [--repeat N]

Each mode should run in its own process (fresh allocator statistics); `--mode both` spawns them.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def untraced(args) -> dict:
    from kvprof.runner import TraceRequest, resolve, text_embeddings
    from kvprof.workload.build import build_workload
    from kvprof.workload.rollout import run_rollout

    req = TraceRequest(method=args.method, integration=args.integration, config=args.config, frames=args.frames,
                       decode=not args.no_decode)
    r = resolve(req)
    device, spec = r.device, r.spec
    work = build_workload(r.cfg, spec, r.method_cls, r.storage, r.params, device,
                          lambda: text_embeddings(r.cfg, 0, None, device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        run_rollout(work.model, work.embeddings, spec, work.caches, work.vae)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    out = {"mode": "untraced", "rollout_wall_s": wall}
    if device.type == "cuda":
        out["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return out


def traced(args) -> dict:
    from kvprof.runner import TraceRequest, run_trace

    req = TraceRequest(method=args.method, integration=args.integration, config=args.config, frames=args.frames,
                       decode=not args.no_decode, out=Path(args.out))
    outcome = run_trace(req)
    s = outcome.summary.to_dict()  # the summary.json shape
    rollout_ms = next((r["host_ms"] for r in s["stage_times"] if r["stage"] == "rollout"), None)
    return {"mode": "traced", "trace": str(outcome.path), "rollout_wall_s": rollout_ms / 1e3 if rollout_ms else None,
            "peak": s["peak"], "kv": s["kv"], "reconciliation": s["reconciliation"],
            "stage_times": s["stage_times"][:14], "allocation_events": s["allocation_events"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--method", default="bf16")
    p.add_argument("--integration", default="study")
    p.add_argument("--config", default=None)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--no-decode", action="store_true")
    p.add_argument("--out", default="traces")
    p.add_argument("--mode", default="both", choices=["untraced", "traced", "both"])
    p.add_argument("--repeat", type=int, default=1, help="with --mode both: untraced/traced pairs, alternated")
    args = p.parse_args()
    if args.mode == "both":
        results = []
        for mode in ("untraced", "traced") * args.repeat:
            cmd = [sys.executable, __file__, "--mode", mode, "--method", args.method, "--integration", args.integration,
                   "--out", args.out] + (["--config", args.config] if args.config else []) + \
                  (["--frames", str(args.frames)] if args.frames else []) + (["--no-decode"] if args.no_decode else [])
            r = subprocess.run(cmd, capture_output=True, text=True)
            sys.stderr.write(r.stderr[-3000:])
            results.append(json.loads(r.stdout.strip().splitlines()[-1]))
        ratios = [t["rollout_wall_s"] / u["rollout_wall_s"] for u, t in zip(results[0::2], results[1::2])]
        print(json.dumps({"untraced": results[0::2], "traced": results[1::2], "traced_over_untraced": ratios,
                          "median_ratio": sorted(ratios)[len(ratios) // 2]}, indent=1))
        return
    print(json.dumps(untraced(args) if args.mode == "untraced" else traced(args)))


if __name__ == "__main__":
    main()
