"""Where a traced rollout's extra time goes, part by part, in one process (issue 15).

    python3 benchmarks/overhead_parts.py --method prq_int4 [--integration study] [--frames 12]
        [--repeat 3] [--parts untraced,tracker,drain,nostages,kvprof] [--out /tmp/kv/parts]

The workload is built once (fresh KV caches each round); the parts alternate, `--repeat` rounds, each
round starting one part later than the last:

- `untraced`: no session;
- `tracker`: the native recorder attached and recording (c10's trace tracker -> the C++ buffer),
  drained once after the rollout: the per-event cost alone;
- `drain`: the same plus the background drain as a trace drains (`DRAIN_INTERVAL_S`; the C++ replay and the column copy, no
  Python rows): what the replay thread takes from the model's thread;
- `nostages`: a TraceSession (native recorder, streamed parts) whose stage and tag calls are no-ops:
  the rows, parts and JSON lines without the stage bookkeeping;
- `kvprof`: a full TraceSession (as `kvprof trace`: fine stages, e.g. PRQ's residual per slice, left out);
- `fine`: the same recording fine stages too (`kvprof trace --fine-stages`);
- `notags`: `kvprof` whose tag calls are no-ops (stages kept): what the category tags cost;
- `nocounters`: `kvprof` without the allocator counters at stage boundaries (`counter_depth=0`);
- `notimer`: `kvprof` without the device-time marks and NVTX ranges (`timer_depth=-1`).

Prints JSON: per part the rollout seconds of every round (and the model thread's CPU seconds,
`time.thread_time()`), the medians and their ratios to untraced's. Rounds share one process and a warm allocator, unlike `overhead.py`'s fresh processes:
read these as the shares of the overhead, `overhead.py` for the headline ratio. CUDA only for
`tracker` and `drain` (they need the c10 tracker); on CPU they are skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARTS = ("untraced", "tracker", "drain", "nostages", "notags", "kvprof", "fine", "nocounters", "notimer")
# TraceSession options of the session parts
_SESSION_OPTIONS: dict[str, dict[str, Any]] = {"nostages": {}, "notags": {}, "kvprof": {}, "fine": {"fine_stages": True},
                                               "nocounters": {"counter_depth": 0}, "notimer": {"timer_depth": -1}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _drain_once(lib: Any) -> int:
    """Replay and copy out what the recorder holds, as the tracker's drain does; the number of events."""
    from tracers.alloc_native import drain_columns

    return drain_columns(lib)[0].entries


class _Recorder:
    """The native recorder alone (no session), optionally drained on a thread every `interval_s`."""

    def __init__(self, device: torch.device, background: bool, interval_s: float | None = None):
        from tracers import native
        from tracers.alloc_native import DRAIN_INTERVAL_S

        interval_s = DRAIN_INTERVAL_S if interval_s is None else interval_s
        self.lib = native.load(cuda=True)
        self.index = device.index or 0
        self.background, self.interval_s = background, interval_s
        self.events = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "_Recorder":
        self.lib.kvp_attach()
        self.lib.kvp_reset(self.index, 0, 0, 1)  # layout model off: no blocks were loaded
        self.lib.kvp_set_recording(1)
        if self.background:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.events += _drain_once(self.lib)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.lib.kvp_set_recording(0)
        self.events += _drain_once(self.lib)


def _session(folder: Path, device: torch.device, part: str) -> contextlib.AbstractContextManager:
    from tracers import TraceSession

    session = TraceSession(folder, {"run_id": folder.name}, device, drain_at_checkpoints=False, **_SESSION_OPTIONS[part])
    if part in ("nostages", "notags"):  # the rollout reaches the session through tracers.context, which calls these
        session.tag = lambda *a, **k: contextlib.nullcontext()  # type: ignore[method-assign]
    if part == "nostages":
        session.stage = lambda *a, **k: contextlib.nullcontext()  # type: ignore[method-assign]
    return session


def _exactness(folder: Path) -> dict[str, Any]:
    """The trace's peak against the allocator's own, and its boundary reconciliation."""
    from kvprof.read.analysis import summarize
    from kvprof.read.trace import load_trace

    trace = load_trace(folder)
    s = summarize(trace)
    layout = trace.meta.get("allocator_layout") or {}
    return {"allocations": len(trace.allocations), "peak_bytes": s.peak.bytes if s.peak else None,
            "max_memory_allocated": trace.meta.get("max_memory_allocated_bytes"),
            "peak_gap_bytes": s.reconciliation.peak_gap_bytes if s.reconciliation else None,
            "max_abs_gap_bytes": s.reconciliation.max_abs_gap_bytes if s.reconciliation else None,
            "recorder": layout.get("recorder"), "events": layout.get("events"),
            "rounded_blocks": layout.get("rounded_blocks"), "misses": layout.get("misses"),
            "t_alloc_in_rollout": _times_inside(trace)}


def _times_inside(trace: Any) -> bool:
    """Every allocation time lies within the trace's clock (ticks converted to steady ns correctly)."""
    al = trace.allocations
    if not len(al):
        return True
    end = float(trace.meta["wall_s"]) * 1e9
    return bool(al["t_alloc_ns"].min() >= 0 and al["t_alloc_ns"].max() <= end and
                (al["q_alloc"].is_monotonic_increasing or al.sort_values("q_alloc")["t_alloc_ns"].is_monotonic_increasing))


def _round(part: str, rollout: Callable[[], None], device: torch.device, out: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"part": part}
    folder = out / f"{part}-{time.strftime('%H%M%S')}-{time.perf_counter_ns() % 10**6}"
    if part == "untraced":
        ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
    elif part in ("tracker", "drain"):
        ctx = _Recorder(device, background=part == "drain")
    else:
        ctx = _session(folder, device, part)
    _sync(device)
    with ctx:
        t0, c0 = time.perf_counter(), time.thread_time()
        rollout()
        _sync(device)
        # the model thread's CPU seconds: on a shared host far steadier than wall time, and on a host-bound
        # rollout what any per-call bookkeeping adds to
        row["rollout_s"], row["thread_cpu_s"] = time.perf_counter() - t0, time.thread_time() - c0
        t1 = time.perf_counter()
    row["close_s"] = time.perf_counter() - t1
    if isinstance(ctx, _Recorder):
        row["events"] = ctx.events
    elif part != "untraced":
        row.update(_exactness(folder))
    shutil.rmtree(folder, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="bf16")
    p.add_argument("--integration", default="study")
    p.add_argument("--config", default=None)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--out", default="/tmp/kv/parts")
    args = p.parse_args(argv)
    parts = [x for x in args.parts.split(",") if x]
    bad = [x for x in parts if x not in PARTS]
    if bad:
        p.error(f"unknown part(s) {', '.join(bad)}; parts: {', '.join(PARTS)}")

    from kvprof.runner import TraceRequest, resolve, text_embeddings
    from kvprof.workload.build import build_workload
    from kvprof.workload.rollout import build_caches, make_method_factory, run_rollout

    r = resolve(TraceRequest(method=args.method, integration=args.integration, frames=args.frames, decode=False,
                             **({"config": args.config} if args.config else {})))
    if r.device.type != "cuda":
        parts = [x for x in parts if x not in ("tracker", "drain")]
    work = build_workload(r.cfg, r.spec, r.method_cls, r.storage, r.params, r.device,
                          lambda: text_embeddings(r.cfg, 0, None, r.device))
    factory = make_method_factory(r.method_cls, r.storage, r.params)

    def rollout() -> None:
        work.caches.clear()
        gc.collect()
        work.caches.extend(build_caches(r.cfg, r.spec, factory, r.device))
        with torch.inference_mode():
            run_rollout(work.model, work.embeddings, r.spec, work.caches, None)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rollout()  # warm-up: kernels, the allocator's cache, the native build
    # each round starts one part later, so no part always runs first or last in its round (on a shared host the
    # place in a round moved times by 10-20 %: session 8)
    rows = [_round(part, rollout, r.device, out) for i in range(args.repeat) for part in parts[i % len(parts):] + parts[:i % len(parts)]]
    medians = {part: statistics.median(x["rollout_s"] for x in rows if x["part"] == part) for part in parts}
    cpu = {part: statistics.median(x["thread_cpu_s"] for x in rows if x["part"] == part) for part in parts}
    base, cpu_base = medians.get("untraced"), cpu.get("untraced")
    print(json.dumps({
        "method": args.method, "integration": args.integration, "frames": args.frames, "device": str(r.device),
        "gpu": torch.cuda.get_device_name(r.device) if r.device.type == "cuda" else None, "rounds": rows,
        "median_rollout_s": medians, "ratio_to_untraced": {k: v / base for k, v in medians.items()} if base else None,
        "median_thread_cpu_s": cpu, "cpu_ratio_to_untraced": {k: v / cpu_base for k, v in cpu.items()} if cpu_base else None,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
