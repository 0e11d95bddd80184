"""Where a sweep cell's seconds outside its trace go: interpreter and torch, the VAE's module (diffusers), and one trace
process with and without the decode, split by `kvprof.sweep.run.phases_of` (start-up / trace / after).

Session 10's sweeps: ~5 s of start-up a cell with `--no-decode`, ~18 s when the run decodes (the VAE module is imported
before the trace opens), ~2.4-3.5 s after the trace: a fifth to a third of a sweep's GPU time.

    python3 benchmarks/startup_probe.py [--config wan-1.3b] [--frames 42] [--out /tmp/kv/startup] > startup.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def timed(cmd: list[str], **kw: Any) -> tuple[float, subprocess.CompletedProcess]:
    """(seconds, completed process) of one command run from the repository root."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, **kw)
    return time.perf_counter() - t0, proc


def slowest_imports(importtime: str, n: int = 25) -> list[tuple[str, float]]:
    """The `n` modules of `python -X importtime`'s report with the largest cumulative time, (module, seconds)."""
    rows = []
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|", 2)
        if cumulative.strip().isdigit():
            rows.append((name.strip(), int(cumulative) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:n]


def trace_process(args: argparse.Namespace, run_id: str, decode: bool) -> dict[str, Any]:
    """One `kvprof trace` process timed from outside, its phases from its meta.json."""
    from kvprof.sweep.run import phases_of

    cmd = [sys.executable, "-m", "kvprof.cli", "trace", "--method", "bf16", "--integration", "staged", "--frames",
           str(args.frames), "--out", args.out, "--run-id", run_id, "--json", "--quiet"]
    cmd += ["--config", args.config] if args.config else []
    cmd += [] if decode else ["--no-decode"]
    seconds, proc = timed(cmd)
    return {"run_id": run_id, "decode": decode, "process_s": round(seconds, 2), "exit": proc.returncode,
            "phases": phases_of(Path(args.out) / run_id, time.time()), "stderr_tail": proc.stderr[-300:]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="model config of the trace processes (default: kvprof's)")
    p.add_argument("--frames", type=int, default=42)
    p.add_argument("--out", default="/tmp/kv/startup")
    args = p.parse_args(argv)
    stamp = time.strftime("%H%M%S")
    torch_s, _ = timed([sys.executable, "-c", "import torch"])
    vae_s, _ = timed([sys.executable, "-c", "import torch; from kvprof.workload import vae"])
    _, imp = timed([sys.executable, "-X", "importtime", "-c", "import torch; from kvprof.workload import vae"])
    # a fork server (torch and the VAE module imported once per worker, a fork per cell) is safe only if these imports
    # leave the CUDA driver unloaded: a fork after cuInit breaks CUDA in the child
    _, maps = timed([sys.executable, "-c", "import torch, kvprof.cli, kvprof.runner, kvprof.workload.build, "
                     "kvprof.workload.vae; print(any('libcuda.so' in ln for ln in open('/proc/self/maps')))"])
    report = {"import_torch_s": round(torch_s, 2), "import_torch_and_vae_s": round(vae_s, 2),
              "cuda_driver_loaded_by_imports": maps.stdout.strip() or maps.stderr[-300:],
              "slowest_imports_s": slowest_imports(imp.stderr),
              "traces": [trace_process(args, f"{stamp}-{'decode' if d else 'nodecode'}", d) for d in (False, True)]}
    print(json.dumps(report, indent=1))
    return 0 if all(t["exit"] == 0 for t in report["traces"]) else 1


if __name__ == "__main__":
    sys.exit(main())
