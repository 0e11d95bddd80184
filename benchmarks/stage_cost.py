"""What one traced stage costs the host, part by part (issue 15's overhead budget).

    python3 benchmarks/stage_cost.py [--stages 20000] [--device cuda] [--deep 100000]

Times `--stages` empty stages (a layer with one sub-stage, as the rollout nests them) under a
TraceSession, then again with each part of the bookkeeping switched off: allocator counters
(`counter_depth=0`), the device-time events and NVTX ranges (StageTimer), host-sync counting; and
the same loop with no session at all. Prints microseconds per stage as JSON. A real stage also
pays for the allocations inside it (recorded in C++ on CUDA, not here).

`--deep N` adds PRQ's pattern: N `residual` stages, each inside a `kv_scratch` tag (within the cache's
own `kv_scratch` tag, as PRQ's study encode runs), below the depths that read counters or record device time, with the log's lines deferred as on CUDA: the model
thread's microseconds for one (stage + tag), the lines' (written by the drain thread on CUDA), and
the host RSS the N stages added while recording.

`--contend` times the stages again with a thread beside them that runs Python in bursts (2 ms of every 10, as
a drain's rows or the NVML sampler want the GIL), twice on CUDA: the boundary calls with the GIL held (as
traced runs make them) and with it released (ctypes' default, before session 16). Each released call hands
the GIL to the waiting thread.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import threading
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


def _busy_bursts(stop: threading.Event) -> None:
    while not stop.is_set():
        t = time.perf_counter() + 0.002
        while time.perf_counter() < t:
            pass
        time.sleep(0.008)


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
    if switch.get("gil_released") and s._native:
        s._cuda.quick_lib = s._cuda.lib  # type: ignore[union-attr]
        s._timer._lib = s._cuda.lib  # type: ignore[union-attr]
    stop = threading.Event()
    busy = threading.Thread(target=_busy_bursts, args=(stop,), daemon=True)
    if switch.get("contend"):
        busy.start()
    try:
        return _loop(n, traced=True)
    finally:
        stop.set()
        if busy.is_alive():
            busy.join()
        s.close("complete")
        shutil.rmtree(folder.parent, ignore_errors=True)


def _deep_cost(n: int, device: str) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp()) / "t"
    s = TraceSession(folder, {"run_id": "deep-cost"}, device, drain_at_checkpoints=False)
    s.start()
    assert s._log is not None
    s._log.deferred = True  # lines written by whoever flushes (the drain thread on CUDA)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        # as PRQ's study encode: the cache's own kv_scratch tag, then a tag and a stage for each slice of groups
        with stage("rollout"), stage("chunk", 0), stage("denoise", 0), stage("layer", 0), stage("kv_write"), tag("kv_scratch"), \
                stage("quantize"):
            t = time.perf_counter()
            for _ in range(n):
                with tag("kv_scratch"), stage("residual"):
                    pass
            main_us = (time.perf_counter() - t) / n * 1e6
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
        t = time.perf_counter()
        s._log.flush()
        lines_us = (time.perf_counter() - t) / n * 1e6
    finally:
        s.close("complete")
        shutil.rmtree(folder.parent, ignore_errors=True)
    return {"deep_stages": n, "deep_main_us": main_us, "deep_lines_us": lines_us, "deep_rss_growth_bytes": grown}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", type=int, default=20_000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--deep", type=int, default=0, help="also time N PRQ-like deep stages (see the docstring)")
    p.add_argument("--contend", action="store_true", help="also time them beside a thread that wants the GIL")
    args = p.parse_args()
    _session_cost(2000, args.device)  # warm-up: imports, the native build, CUDA context
    out = {"device": args.device, "stages": args.stages, "untraced_us": _loop(args.stages, traced=False),
           "traced_us": _session_cost(args.stages, args.device)}
    for switch in ("no_counters", "no_timer", "no_sync_count"):
        out[f"{switch}_us"] = _session_cost(args.stages, args.device, **{switch: True})
    if args.contend:
        out["contend_gil_held_us"] = _session_cost(args.stages, args.device, contend=True)
        if args.device.startswith("cuda"):
            out["contend_gil_released_us"] = _session_cost(args.stages, args.device, contend=True, gil_released=True)
    if args.deep:
        out.update(_deep_cost(args.deep, args.device))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
