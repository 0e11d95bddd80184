"""The floor under any recorder of the CUDA caching allocator's events: what c10's trace tracker, and kvprof's
recorder behind it, add to each allocator event (issue 15).

    python3 benchmarks/tracker_floor.py [--iters 200000] [--rounds 9] [--events 21600000 --rollout-s 120]

One process, one GPU, a loop of `torch.empty(4096, device="cuda")` and its release (three allocator events: alloc,
free requested, free completed, all from the cache), timed in rounds three ways: `untraced` first, because the
tracker cannot be detached, then the other two alternated round by round (the machine's drift falls on both alike):
`tracker` (kvprof's recorder attached to c10's trace tracker with recording off: c10 builds a `TraceEntry` for every
event and calls the tracker, which returns at once); `recording` (kvprof records every event; the buffer is drained
between rounds, outside the timing). Prints JSON: the median ns an iteration of each, the ns an event each layer
adds, and, for a rollout of `--events` allocator events in `--rollout-s` seconds (prq_int4 study at 42 frames: 21.6 M
events, ~110-150 s), the share of its time they come to. The share is what no recorder built on the allocator's
events can go below, so it is the part of issue 15's 3 % kvprof cannot spend (session 16, one H200: c10 0.7 ns an
event, kvprof's recording 55 ns).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EVENTS_AN_ITERATION = 3  # alloc, free requested, free completed


def floor_report(ns_an_iteration: dict[str, list[float]], events: int, rollout_s: float) -> dict[str, Any]:
    """Medians per mode, the ns an event c10's tracker and kvprof's recording each add, and their share of a rollout
    of `events` allocator events in `rollout_s` seconds. `ns_an_iteration` maps untraced, tracker, recording to the
    ns an iteration of each round."""
    med = {mode: statistics.median(rounds) for mode, rounds in ns_an_iteration.items()}
    c10 = (med["tracker"] - med["untraced"]) / EVENTS_AN_ITERATION
    kvprof = (med["recording"] - med["tracker"]) / EVENTS_AN_ITERATION
    share = (lambda ns: round(ns * events / 1e9 / rollout_s, 5)) if rollout_s > 0 else (lambda ns: None)
    return {"ns_an_iteration": {m: round(v, 1) for m, v in med.items()},
            "ns_an_event": {"c10_tracker": round(c10, 1), "kvprof_recording": round(kvprof, 1)},
            "rollout": {"events": events, "seconds": rollout_s, "share_c10_tracker": share(c10),
                        "share_kvprof_recording": share(kvprof), "share_floor": share(c10 + kvprof)}}


def _rounds(step: Callable[[], None], iters: int, rounds: int, between: Callable[[], None] = lambda: None) -> list[float]:
    out = []
    for _ in range(rounds):
        between()
        t = time.perf_counter_ns()
        for _ in range(iters):
            step()
        out.append((time.perf_counter_ns() - t) / iters)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=200_000, help="allocations a round")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--events", type=int, default=21_600_000, help="allocator events of the rollout to project onto")
    p.add_argument("--rollout-s", type=float, default=120.0, help="that rollout's seconds")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("tracker_floor.py: needs a CUDA GPU (it times the CUDA caching allocator's own event path)", file=sys.stderr)
        return 2
    from tracers import native

    device = torch.device("cuda", 0)

    def step() -> None:
        torch.empty(4096, device=device)  # made and released at once: three events, the block from the cache

    _rounds(step, 10_000, 1)  # warm: the CUDA context, the cached block
    timed = {"untraced": _rounds(step, args.iters, args.rounds)}
    lib = native.load(cuda=True)
    lib.kvp_attach()
    lib.kvp_reset(0, 0, 0, 1)
    counts = (ctypes.c_int64 * 6)()
    timed["tracker"], timed["recording"] = [], []
    for _ in range(args.rounds):  # alternated: the machine's drift over the rounds falls on both alike
        lib.kvp_set_recording(0)
        timed["tracker"] += _rounds(step, args.iters, 1)
        lib.kvp_set_recording(1)
        timed["recording"] += _rounds(step, args.iters, 1, between=lambda: lib.kvp_drain(counts))
    lib.kvp_set_recording(0)
    report = floor_report(timed, args.events, args.rollout_s)
    report["rounds"] = {m: [round(v, 1) for v in r] for m, r in timed.items()}
    report["device"] = torch.cuda.get_device_name(device)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
