"""What one traced stage costs the host, part by part (issue 15's overhead budget).

    python3 benchmarks/stage_cost.py [--stages 20000] [--device cuda]

Times `--stages` empty stages (a layer with one sub-stage, as the rollout nests them) under a
TraceSession, then again with each part of the bookkeeping switched off: allocator counters
(`counter_depth=0`), the device-time events and NVTX ranges (StageTimer), host-sync counting; and
the same loop with no session at all. Prints microseconds per stage as JSON. A real stage also
pays for the allocations inside it (recorded in C++ on CUDA, not here).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracers import TraceSession, stage, tag  # noqa: E402


def _loop(n: int, traced: bool) -> float:
    open_stage = stage if traced else (lambda *a, **k: nullcontext())
    open_tag = tag if traced else (lambda *a, **k: nullcontext())
    t = time.perf_counter()
    with open_stage("rollout"):
        for i in range(n // 2):
            with open_stage("layer", i % 30):
                with open_stage("kv_write"), open_tag("kv_scratch"):
                    pass
    return (time.perf_counter() - t) / n * 1e6


def _session_cost(n: int, device: str, **switch: bool) -> float:
    folder = Path(tempfile.mkdtemp()) / "t"
    s = TraceSession(folder, {"run_id": "stage-cost"}, device, drain_at_checkpoints=False,
                     counter_depth=0 if switch.get("no_counters") else 4)
    if switch.get("no_timer"):
        s._timer.begin = lambda *a: None  # type: ignore[method-assign]
        s._timer.end = lambda *a: None  # type: ignore[method-assign]
    s.start()
    if switch.get("no_sync_count"):
        s.host_activity.uninstall()
    try:
        return _loop(n, traced=True)
    finally:
        s.close("complete")
        shutil.rmtree(folder.parent, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", type=int, default=20_000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    _session_cost(2000, args.device)  # warm-up: imports, the native build, CUDA context
    out = {"device": args.device, "stages": args.stages, "untraced_us": _loop(args.stages, traced=False),
           "traced_us": _session_cost(args.stages, args.device)}
    for switch in ("no_counters", "no_timer", "no_sync_count"):
        out[f"{switch}_us"] = _session_cost(args.stages, args.device, **{switch: True})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
