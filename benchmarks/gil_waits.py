"""What a device sampler beside the model's thread costs it in waits for the GIL (CPU; issue 15).

    python3 benchmarks/gil_waits.py [--seconds 5] [--repeat 3] [--nvml-call-us 30]

A stand-in model thread runs small in-place torch ops (each releases the GIL inside, as a host-bound rollout's do) for
`--seconds`, beside: `none`; `python` (kvprof's `DeviceSampler` on a Python thread, ten samples a second, through a
stand-in pynvml whose calls are ctypes calls of `--nvml-call-us` with the GIL released, as NVML's ioctls are); and
`native` (the same sampler on the native library's C++ thread, over a stand-in NVML library: no GIL). The modes run
in turn, `--repeat` times. Per mode: the model thread's ops a second and its voluntary context switches a second
(each a wait, mostly for the GIL), medians over the rounds; JSON. Session 17 measured the model thread's switches
on an H200 at 42 frames of prq_int4: ~6,800 a rollout with the Python sampler, 3,500-4,000 with the native one.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

MODES = ("none", "python", "native")


def model_round(seconds: float) -> tuple[float, float]:
    """Small in-place torch ops for `seconds` on this thread: (ops a second, voluntary switches a second)."""
    import torch

    x = torch.ones(64)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
    t0, ops = time.perf_counter(), 0
    end = t0 + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            x.add_(1.0)
        ops += 100
    wall = time.perf_counter() - t0
    return ops / wall, (resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw - before) / wall


def one_round(mode: str, seconds: float, nvml_library: str) -> dict[str, float]:
    """The model beside the sampler of `mode` (the sampler starts first and stops after)."""
    from tracers import native
    from tracers.sampler import DeviceSampler

    sampler = None
    if mode != "none":
        sampler = DeviceSampler(0, lambda sample: None, 0.1, uuid="GPU-fake-1",
                                native=native.load(False) if mode == "native" else None, nvml_library=nvml_library)
        sampler.start(time.perf_counter_ns())
        assert sampler.native == (mode == "native"), sampler.reason
    try:
        ops, switches = model_round(seconds)
    finally:
        if sampler is not None:
            sampler.stop()
    return {"ops_per_s": ops, "switches_per_s": switches}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--nvml-call-us", type=int, default=30, help="how long each stand-in NVML call takes (GIL released)")
    args = p.parse_args(argv)
    from fake_nvml import build_fake_nvml, fake_pynvml

    sys.modules["pynvml"] = fake_pynvml(call_us=args.nvml_call_us)
    rounds: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        library = build_fake_nvml(Path(tmp))
        threading.Thread(target=lambda: None).start()  # threading's own start-up out of the first round
        for _ in range(args.repeat):
            for mode in MODES:
                rounds[mode].append(one_round(mode, args.seconds, library))
    out: dict[str, Any] = {}
    for mode, rows in rounds.items():
        out[mode] = {k: round(statistics.median(r[k] for r in rows), 1) for k in ("ops_per_s", "switches_per_s")}
        out[mode]["rounds"] = [{k: round(v, 1) for k, v in r.items()} for r in rows]
    base = out["none"]["ops_per_s"]
    for mode in MODES:
        out[mode]["ops_over_none"] = round(out[mode]["ops_per_s"] / base, 4) if base else None
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
