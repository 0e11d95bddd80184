"""The drain's cost to the model measured in the traced process: the recorder's event count read in place, and the
model's event rate during each drain phase over its rate just before (tracers.drain_phases)."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from stream_history import feed
from tracers import native
from tracers.drain_phases import BETWEEN, PHASES, DrainPhases


def test_the_recorders_event_count_is_read_in_place_and_reset_with_it():
    lib = native.load(cuda=False)
    recorded = ctypes.c_int64.in_dll(lib, "kvp_recorded")
    lib.kvp_reset(0, 0, 0, 1)
    lib.kvp_set_recording(1)
    try:
        assert recorded.value == 0
        n = 12_345
        feed(lib, {"action": np.zeros(n, dtype=np.int32), "addr": (1 << 30) + 4096 * np.arange(n, dtype=np.uint64),
                   "size": np.full(n, 512, dtype=np.uint64), "t_ns": np.arange(n, dtype=np.int64),
                   "ctx": np.zeros(n, dtype=np.int64)})
        lib.kvp_retag(1 << 30, 0)
        assert recorded.value == n + 1  # the retag is an event too
        counts = (ctypes.c_int64 * 6)()
        lib.kvp_drain(counts)
        assert counts[4] == n + 1 and recorded.value == n + 1  # a drain does not reset the count
        lib.kvp_reset(0, 0, 0, 1)
        assert recorded.value == 0
    finally:
        lib.kvp_set_recording(0)
        lib.kvp_reset(0, 0, 0, 1)


def _drive(steps: list[tuple[str, int, int]]) -> DrainPhases:
    """A DrainPhases on a scripted clock: each step is (phase closed, ns it lasted, model events during it)."""
    now, events = [0], [0]
    phases = DrainPhases(lambda: events[0], clock=lambda: now[0])
    phases.start()
    for phase, ns, n in steps:
        now[0] += ns
        events[0] += n
        phases.mark(phase)
    return phases


def test_each_phase_is_compared_with_the_model_rate_just_before_its_drain():
    # drain 1: 1,000 events/ms between; replay at the same rate, rows at half, part at 0.8, log at full rate
    one = [(BETWEEN, 2_000_000, 2_000), ("replay", 20_000_000, 20_000), ("rows", 4_000_000, 2_000),
           ("part", 10_000_000, 8_000), ("log", 1_000_000, 1_000)]
    # drain 2: the model twice as fast between (a lighter stretch of the rollout); the same shares lost
    two = [(BETWEEN, 2_000_000, 4_000), ("replay", 20_000_000, 40_000), ("rows", 4_000_000, 4_000),
           ("part", 10_000_000, 16_000), ("log", 1_000_000, 2_000)]
    meta = _drive(one + two).meta()
    assert meta["drains"] == meta["drains_compared"] == 2
    got = {p: meta["phases"][p]["rate_over_between"]["median"] for p in PHASES}
    assert got == {"replay": 1.0, "rows": 0.5, "part": 0.8, "log": 1.0}
    assert meta["phases"]["rows"]["s"] == 0.008 and meta["phases"]["rows"]["events"] == 6_000
    assert meta["phases"][BETWEEN]["events"] == 6_000
    # the model lost 0.5 of 8 ms and 0.2 of 20 ms of the 74 ms compared (pooled over both drains)
    assert meta["model_time_share"] == pytest.approx((0.008 * 0.5 + 0.020 * 0.2) / 0.074, abs=1e-5)


def test_a_drain_while_the_model_sat_idle_is_left_out_and_an_unfinished_one_is_not_counted():
    idle = [(BETWEEN, 2_000_000, 0), ("replay", 1_000_000, 0), ("rows", 1_000_000, 0), ("part", 1_000_000, 0),
            ("log", 1_000_000, 0)]
    busy = [(BETWEEN, 2_000_000, 2_000), ("replay", 1_000_000, 500), ("rows", 1_000_000, 1_000),
            ("part", 1_000_000, 1_000), ("log", 1_000_000, 1_000)]
    meta = _drive(idle + busy + [(BETWEEN, 2_000_000, 2_000), ("replay", 1_000_000, 1_000)]).meta()
    assert meta["drains"] == 2 and meta["drains_compared"] == 1
    assert meta["phases"]["replay"]["rate_over_between"] == {"median": 0.5, "pooled": 0.5}


def test_nothing_to_compare_says_so_without_rates():
    meta = DrainPhases(lambda: 0).meta()
    assert meta == {"drains": 0, "drains_compared": 0, "phases": {}}


def test_a_streamed_trace_says_in_its_meta_what_its_drains_took_from_the_model(tmp_path, monkeypatch):
    import tracers.alloc_native as native_tracker
    from fake_cuda_allocator import FakeCachingAllocator, install_native
    from kvprof.read.trace import load_trace
    from stream_history import stack_history
    from tracers import TraceSession, stage

    f = FakeCachingAllocator()
    install_native(monkeypatch, f)
    monkeypatch.setattr(native_tracker.NativeCudaTracker, "_run", lambda self: None)  # the test drains, timed
    s = TraceSession(tmp_path / "t", {"run_id": "phases"}, "cpu", tracker="native", drain_at_checkpoints=False)
    s.start()
    s._cuda.phases.start()
    base, fed = 1 << 40, []
    with stage("rollout"):
        for i in range(3):
            with stage("chunk", i):
                cols, base = stack_history(5_000, base=base, t0=s.t0_perf_ns + i * 10**9, ctx=s._ctx, seed=i,
                                           segment=i == 0)
            feed(f.native, cols)  # recorded between drains, as the model's thread would
            fed.append(len(cols["action"]))
            s._cuda.drain(timed=True)
    s.close("complete")
    phases = load_trace(tmp_path / "t").meta["allocator_layout"]["drain_phases"]
    assert phases["drains"] == phases["drains_compared"] == 3
    assert phases["phases"][BETWEEN]["events"] == sum(fed)  # every recorded event falls in an interval before a drain
    assert set(phases["phases"]) == {BETWEEN, *PHASES}
    # timed, and only the three drains: the final, untimed one at close is not counted (the log's few lines may round to 0 s)
    assert all(phases["phases"][p]["s"] > 0 for p in ("replay", "rows", "part")) and phases["phases"]["log"]["s"] >= 0
    from kvprof.console import tracer_cost_line
    from kvprof.read.analysis import tracer_cost

    cost = tracer_cost(load_trace(tmp_path / "t").meta)  # what summary.json and `kvprof summary` carry
    assert cost["drains"]["compared"] == 3 and cost["drains"]["rate_over_between"]["rows"] == 0.0
    assert cost["scopes"]["stages"] == 4 and cost["scopes"]["stages_s"] > 0  # rollout + 3 chunks, timed on this thread
    line = tracer_cost_line(cost, 2.0)
    assert line.startswith("kvprof's own cost: ") and " s on the traced thread (" in line and "4 stage and 0 tag scopes " in line
    assert "recorder drains " in line and "(3 measured; " in line and "rows 0.00" in line
    assert tracer_cost({}) is None and tracer_cost_line(None, 1.0) is None


def test_an_untimed_drain_starts_the_next_interval_instead_of_counting_in_it():
    # a checkpoint's drain runs on the model's own thread: the model makes no events meanwhile, and the interval
    # before the next timed drain must not count that time as the model's
    now, events = [0], [0]
    phases = DrainPhases(lambda: events[0], clock=lambda: now[0])
    phases.start()
    now[0] += 1_000_000; events[0] += 1_000  # the model at work: 1 event/us
    now[0] += 9_000_000  # an untimed drain at a checkpoint: no events for 9 ms
    phases.restart()
    for phase, ns, n in [(BETWEEN, 1_000_000, 1_000), ("replay", 1_000_000, 500), ("rows", 1_000_000, 500),
                         ("part", 1_000_000, 500), ("log", 1_000_000, 500)]:
        now[0] += ns
        events[0] += n
        phases.mark(phase)
    meta = phases.meta()
    assert meta["phases"][BETWEEN]["s"] == 0.001 and meta["phases"][BETWEEN]["events"] == 1_000
    assert meta["phases"]["replay"]["rate_over_between"]["median"] == 0.5
