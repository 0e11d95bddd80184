"""What one drain of the native recorder costs the drain thread, by part (CPU; issue 15).

    python3 benchmarks/drain_cost.py [--allocs 90000] [--drains 6]

Feeds the native recorder (its CPU build, through the tests' fake caching allocator) `--drains` batches of
`--allocs` synthetic allocations each (3 allocator events an allocation, a long-lived one every 97: the
tests' `stream_history`), drains after each, and prints milliseconds per drain as JSON: `replay` (kvp_drain:
the C++ replay and the copy into numpy, GIL released), `part` (the streamed part written: Parquet in the
recorder's `part_options`, mostly GIL released), `rows` (the rest: the rows built with numpy and Python under
the GIL, what the model thread can wait for). The first drain includes one-off imports; the JSON gives the median of the others, and
`part_bytes_a_row` the parts' bytes over their rows. `--part-options JSON` writes the parts with other
`pyarrow.parquet.write_table` options than the recorder's (`tracers.alloc_parts.part_options`), e.g.
`'{"compression": "zstd"}'`, how parts were written before session 14.

`model_waits`: the model thread's voluntary context switches during each drain (each a wait for the GIL or the
session's lock; session 17: the traced rollout's model thread waited ~60 times a drain on an H200).
`session_lock` is how long the drain held the session's lock (the model's stages and tags take it: a scope opened
meanwhile waits). `gil_lost` measures what a model thread would lose: a second Python thread counts in a loop the whole time, and
1 - (its count rate during a drain / its rate between drains) is the share of that thread's progress the drain
took (the GIL it held; on this 2-core dev machine also any core it shared). 0 means the drain ran beside it.
`--model stages` makes that thread a closer stand-in: ~1 ms of Python, then a stage and a tag on the session, whose
locks the drain also takes (session 11, 130k allocations a drain: 3.6 % of its progress during a 225 ms drain, i.e.
~0.4 % of the model thread at one drain every 2 s, as with `count`; a stage every ~60 us instead: 26 %). `--model
torch` runs small in-place torch ops, which release the GIL inside each op as a host-bound rollout's do: 4-5 % of its
progress during a 68 ms drain (~0.15 % at one drain every 2 s); the drain's own Python then waits less for the GIL
(rows 3.9 ms, vs 184 ms beside `count`, which holds the GIL for its whole 5 ms switch interval).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--allocs", type=int, default=90_000, help="allocations a drain (prq_int4 at 42 frames: ~130k a 2 s drain)")
    p.add_argument("--drains", type=int, default=6)
    p.add_argument("--model", choices=("count", "stages", "torch"), default="count",
                   help="what the model thread does: count in a loop, or open PRQ-like stage + tag scopes on the session "
                        "(which take the session's locks the drain takes too)")
    p.add_argument("--part-options", default=None, metavar="JSON",
                   help="write each part with these pyarrow.parquet.write_table options instead of the recorder's "
                        "(tracers.alloc_parts.part_options), e.g. '{\"compression\": \"zstd\"}' for Parquet's defaults + zstd")
    args = p.parse_args(argv)

    import pytest
    from fake_cuda_allocator import FakeCachingAllocator, install_native
    from stream_history import feed, stack_history

    import tracers.alloc_native as native_tracker
    from tracers import TraceSession, stage
    from tracers.alloc_parts import part_files

    patch = pytest.MonkeyPatch()
    fake = FakeCachingAllocator()
    install_native(patch, fake)
    patch.setattr(native_tracker.NativeCudaTracker, "_run", lambda self: None)  # only the drains timed here
    if args.part_options is not None:
        import tracers.alloc_parts as alloc_parts

        options = json.loads(args.part_options)
        patch.setattr(alloc_parts, "part_options", lambda schema: options)
    s = TraceSession(Path(tempfile.mkdtemp()) / "t", {"run_id": "drain-cost"}, "cpu", tracker="native",
                     drain_at_checkpoints=False)
    s.start()
    with stage("rollout"):
        ctx = s._ctx
    parts: dict[str, list[float]] = {"replay": [], "part": [], "total": [], "session_lock": []}
    drain_columns, append = native_tracker.drain_columns, s._parts.append

    def timed(key, fn):
        def run(*a):
            t = time.perf_counter()
            out = fn(*a)
            parts[key].append(time.perf_counter() - t)
            return out
        return run

    patch.setattr(native_tracker, "drain_columns", timed("replay", drain_columns))
    s._parts.append = timed("part", append)
    counter, stop = [0], threading.Event()

    def count() -> None:  # stands for the model thread's Python
        if args.model == "stages":  # ~1 ms of Python holding the GIL (as op dispatch does), then a stage and a tag
            while not stop.is_set():
                for _ in range(40000):
                    pass
                with s.stage("layer", 1):
                    with s.tag("kv_scratch"):
                        pass
                counter[0] += 1
            return
        if args.model == "torch":  # small torch ops: each releases the GIL inside the op, as a host-bound rollout's do
            import torch

            x = torch.zeros(16)
            while not stop.is_set():
                x.add_(1.0).mul_(0.5)
                counter[0] += 1
            return
        while not stop.is_set():
            counter[0] += 1

    class HeldLock:  # the session's lock, timed while the drain (this thread) holds it: the model's scopes wait on it
        def __init__(self, lock: Any) -> None:
            self.lock, self.held, self._since, self._drain = lock, 0.0, 0.0, threading.get_ident()

        def __enter__(self) -> None:
            self.lock.__enter__()
            if threading.get_ident() == self._drain:
                self._since = time.perf_counter()

        def __exit__(self, *exc: Any) -> Any:
            if threading.get_ident() == self._drain:
                self.held += time.perf_counter() - self._since
            return self.lock.__exit__(*exc)

    ticker = threading.Thread(target=count, daemon=True)
    ticker.start()
    while ticker.native_id is None:
        time.sleep(0.001)

    def model_waits() -> int:  # the model thread's voluntary switches so far (each a wait, mostly for the GIL)
        with open(f"/proc/self/task/{ticker.native_id}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))

    lost: list[float] = []
    waits: list[int] = []
    base = None
    for i in range(args.drains):
        cols, base = stack_history(args.allocs, base=base or 1 << 40, t0=s.t0_perf_ns + (i + 1) * 10**9, ctx=ctx, seed=i,
                                   segment=i == 0)
        feed(fake.native, cols)
        c0, t0 = counter[0], time.perf_counter()
        time.sleep(0.2)  # the counting thread alone: its rate between drains
        idle_rate = (counter[0] - c0) / (time.perf_counter() - t0)
        c0, t, w0 = counter[0], time.perf_counter(), model_waits()
        s._lock = held = HeldLock(s._lock)
        s._cuda.drain()
        parts["total"].append(time.perf_counter() - t)
        waits.append(model_waits() - w0)
        s._lock = held.lock
        parts["session_lock"].append(held.held)
        lost.append(1 - (counter[0] - c0) / parts["total"][-1] / idle_rate)
    stop.set()
    ticker.join()
    part_bytes = sum(p.stat().st_size for p in part_files(s.folder))
    s.close("complete")
    patch.undo()
    rows = [t - r - w for t, r, w in zip(parts["total"], parts["replay"], parts["part"])]
    ms = {k: [round(1000 * x, 1) for x in v[: args.drains]] for k, v in {**parts, "rows": rows}.items()}
    print(json.dumps({"allocs_a_drain": args.allocs, "events_a_drain": len(cols["action"]), "ms": ms,
                      "median_ms": {k: statistics.median(v[1:] or v) for k, v in ms.items()},
                      "part_bytes_a_row": round(part_bytes / (args.allocs * args.drains), 2),
                      "gil_lost": [round(x, 3) for x in lost], "median_gil_lost": round(statistics.median(lost[1:] or lost), 3),
                      "model_waits": waits, "median_model_waits": statistics.median(waits[1:] or waits)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
