"""What recording each allocator event costs the thread that makes it, measured in the traced process.

The native recorder times about one event in 1024 in place, from before its lock to after its store, on the
allocator's own tick source (`tracers/native/record_cost.h`), and keeps each sample. This turns them into the trace's
meta `allocator_layout.record_cost`: ns an event (median, 90th and 99th percentile, and the mean of the samples under
`OUTLIER_NS`: a sample that an interrupt or a preemption landed in says nothing of the record path), and the share of
the traced time that mean comes to over every recorded event. c10's own work before it calls the tracker (building
its trace entry) is not in it: `benchmarks/tracker_floor.py` measures that part (0.7 ns an event on an H200).
"""
from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

# A sample longer than this was interrupted or descheduled: the record path is a lock, a store and a compare (tens of
# ns), and the drain holds the record lock only to swap two buffers. An interrupt inside one sample of ~1,000 moves
# the mean by tens of ns (benchmarks/recorder_cost.cpp on the dev VM), so neither the mean nor the share keeps them.
OUTLIER_NS = 10_000


def read_samples(lib: Any) -> tuple[list[int], np.ndarray]:
    """The recorder's sampled cost since its reset: the stats row (samples, ticks, most ticks, a clock-read pair's
    ticks, ticks and ns since the reset, samples kept) and the kept samples' raw ticks."""
    stats = (ctypes.c_int64 * 7)()
    lib.kvp_record_cost(stats)
    kept = np.empty(int(stats[6]), dtype=np.int64)
    if len(kept):
        n = lib.kvp_record_cost_kept(kept.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)), len(kept))
        kept = kept[:n]
    return list(stats), kept


def record_cost_meta(stats: list[int], kept_ticks: np.ndarray, events: int) -> dict[str, Any] | None:
    """The meta's `record_cost` from `read_samples`' values and the events recorded; None without a sample."""
    samples, _, max_ticks, read_ticks, elapsed_ticks, elapsed_ns, _ = stats
    if samples <= 0 or len(kept_ticks) == 0:
        return None
    ns_per_tick = elapsed_ns / elapsed_ticks if elapsed_ticks > 0 else 1.0
    ns = np.clip((kept_ticks.astype(np.float64) - read_ticks) * ns_per_tick, 0.0, None)
    inliers = ns[ns <= OUTLIER_NS]
    mean_ns = float(inliers.mean()) if len(inliers) else None
    p50, p90, p99 = (float(v) for v in np.percentile(ns, [50, 90, 99]))
    return {
        "sampled": int(samples), "kept": int(len(ns)), "median_ns": round(p50, 1), "p90_ns": round(p90, 1),
        "p99_ns": round(p99, 1), "mean_ns": round(mean_ns, 1) if mean_ns is not None else None,
        "outliers": int(len(ns) - len(inliers)), "max_ns": round(max(0.0, (max_ticks - read_ticks) * ns_per_tick), 1),
        "events": int(events), "elapsed_s": round(elapsed_ns / 1e9, 6),
        # the mean over every event recorded, against the time the recorder ran: the share of the traced time
        "model_time_share": round(mean_ns * events / elapsed_ns, 6) if mean_ns is not None and elapsed_ns > 0 else None,
    }
