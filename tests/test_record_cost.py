"""kvprof's own cost, measured in the traced process: the record path (the native recorder times about one event in
1024 in place and keeps the samples, tracers/native/record_cost.h; tracers.record_cost turns them into the trace's
meta), and the stage scopes' device-time marks timed apart within the scopes' seconds."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fake_cuda_allocator import FakeCachingAllocator, install_native
from stream_history import feed
from tracers import TraceSession, stage
from tracers.record_cost import OUTLIER_NS, read_samples, record_cost_meta


@pytest.fixture()
def lib(recording_lib):
    """The core recorder, recording (conftest's `recording_lib`)."""
    return recording_lib


def _record(lib, n: int, base: int = 1 << 30) -> None:
    for i in range(n):  # the tracker's path: one kvp_record an event
        lib.kvp_record(0, 0, base + 4096 * i, 512, i)


def test_about_one_event_in_1024_is_timed_and_kept_and_a_reset_starts_over(lib):
    _record(lib, 40_000)
    stats, kept = read_samples(lib)
    samples, ticks, most, read_ticks, elapsed_ticks, elapsed_ns, n_kept = stats
    assert 20 <= samples <= 80  # random gaps of 1-2047 events: 39 expected
    assert n_kept == samples == len(kept) and kept.sum() == ticks and kept.max() == most
    assert read_ticks >= 0 and elapsed_ticks > 0 and elapsed_ns > 0  # core library: ticks are steady ns
    lib.kvp_reset(0, 0, 0, 1)
    stats, kept = read_samples(lib)
    assert stats[0] == 0 and len(kept) == 0


def test_a_batch_or_retags_stepping_over_the_drawn_event_do_not_stop_the_sampling(lib):
    n = 5_000  # more than the largest gap: the drawn number is stepped over
    feed(lib, {"action": np.zeros(n, dtype=np.int32), "addr": (1 << 31) + 4096 * np.arange(n, dtype=np.uint64),
               "size": np.full(n, 512, dtype=np.uint64), "t_ns": np.arange(n, dtype=np.int64),
               "ctx": np.zeros(n, dtype=np.int64)})
    for i in range(3):
        lib.kvp_retag((1 << 31) + 4096 * i, 0)
    assert read_samples(lib)[0][0] == 0  # neither a batch nor a retag is timed
    _record(lib, 1)
    assert read_samples(lib)[0][0] == 1  # the next event through the tracker's path is
    _record(lib, 10_000)
    assert read_samples(lib)[0][0] >= 5


def test_meta_takes_off_the_clock_reads_converts_ticks_and_leaves_out_preemptions():
    # 2 ticks a ns; a clock-read pair costs 20 ticks; samples of 60, 80, 100 ticks (20, 30, 40 ns) and one of a
    # preemption (1 ms)
    kept = np.array([60, 80, 100, 2_000_020], dtype=np.int64)
    stats = [4, int(kept.sum()), 2_000_020, 20, 2_000_000_000, 1_000_000_000, 4]
    meta = record_cost_meta(stats, kept, events=10_000_000)
    assert meta["sampled"] == 4 and meta["kept"] == 4 and meta["outliers"] == 1
    assert meta["mean_ns"] == 30.0  # the three under OUTLIER_NS
    assert meta["median_ns"] == 35.0 and meta["max_ns"] == 1_000_000.0 > OUTLIER_NS
    assert meta["model_time_share"] == pytest.approx(30.0 * 10_000_000 / 1e9)  # 0.3 of the recorder's second
    assert meta["elapsed_s"] == 1.0
    assert record_cost_meta([0, 0, 0, 0, 0, 0, 0], np.zeros(0, dtype=np.int64), 5) is None


def test_a_native_trace_carries_its_record_cost(tmp_path, monkeypatch):
    f = install_native(monkeypatch, FakeCachingAllocator())
    s = TraceSession(tmp_path / "t", {"run_id": "cost"}, "cpu", tracker="native", drain_at_checkpoints=False)
    s.start()
    with stage("rollout"):
        for _ in range(12_000):  # 36k events: ~35 timed
            f.free(f.malloc(4096))
    s.close("complete")
    cost = json.loads((tmp_path / "t" / "meta.json").read_text())["allocator_layout"]["record_cost"]
    assert 10 <= cost["sampled"] <= 90 and cost["kept"] == cost["sampled"]
    assert cost["events"] >= 36_000 and cost["median_ns"] >= 0 and cost["p99_ns"] >= cost["median_ns"]
    assert cost["mean_ns"] is not None and 0 <= cost["model_time_share"] < 1
    from kvprof.console import tracer_cost_line
    from kvprof.read.analysis import tracer_cost
    from kvprof.read.trace import load_trace

    summary_cost = tracer_cost(load_trace(tmp_path / "t").meta)  # what summary.json and `kvprof summary` carry
    assert summary_cost["recording"] == {k: cost[k] for k in ("sampled", "median_ns", "mean_ns", "model_time_share")}
    line = tracer_cost_line(summary_cost, 1.0)
    assert f"recording each allocator event {cost['mean_ns']} ns (median {cost['median_ns']}, " in line
    scopes_share = (summary_cost["scopes"]["stages_s"] + summary_cost["scopes"]["tags_s"]) / 1.0
    drains_share = (summary_cost.get("drains") or {}).get("model_time_share") or 0.0
    assert line.endswith(f"; about {100 * (scopes_share + drains_share + cost['model_time_share']):.2f} % in all")
    alone = tracer_cost_line({"recording": summary_cost["recording"]}, 1.0)
    assert alone.endswith("% of the traced time")  # one piece: no total


def test_the_stages_device_time_marks_are_timed_apart_within_the_stage_scopes(tmp_path, monkeypatch):
    # meta scopes.marks_s: the part of the stage scopes' seconds spent recording device-time marks (a CUDA event
    # record waits when the launch queue is full: the GPU's backlog, not kvprof's work)
    import time

    install_native(monkeypatch, FakeCachingAllocator())
    s = TraceSession(tmp_path / "t", {"run_id": "marks"}, "cpu", tracker="native", drain_at_checkpoints=False,
                     timer_depth=1)
    s._timer.begin = lambda span_id, label: time.sleep(0.01)  # type: ignore[method-assign]
    s._timer.end = lambda span_id: time.sleep(0.01)  # type: ignore[method-assign]
    s.start()
    with stage("rollout"), stage("chunk", 0), stage("layer", 0):  # two timed stages, the layer below the depth
        pass
    s.close("complete")
    scopes = json.loads((tmp_path / "t" / "meta.json").read_text())["scopes"]
    assert 0.04 <= scopes["marks_s"] <= scopes["stages_s"] < 0.04 + 0.5  # 4 marks of 10 ms, inside the stages' time
    from kvprof.console import tracer_cost_line
    from kvprof.read.analysis import tracer_cost

    line = tracer_cost_line(tracer_cost({"scopes": scopes}), 1.0)
    assert f"3 stage and 0 tag scopes {scopes['stages_s'] + scopes['tags_s']:.2f} s, of which device-time marks " \
        f"{scopes['marks_s']:.2f} s)" in line
