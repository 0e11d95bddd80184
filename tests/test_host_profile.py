"""Host-side profile (issue 8): host syncs and op time per stage from the tracer, the py-spy
profile aligned with the stage spans, the host-bound flag, and a trace that completes without
py-spy. The runner's `--host-profile` wiring is mirrored here through `run_trace(on_start=...)`:
`start_host_profile(active_session(), ...)`, stopped by the session's close hook."""
from __future__ import annotations

import json
import os
import shutil
import stat
import time
import warnings
from pathlib import Path

import pytest
import torch

from kvprof.read.compare import compare_table, format_compare
from kvprof.read.export import TID_HOST, perfetto_trace
from kvprof.read.hostprof import host_bound_share, host_intervals_of, host_profile_summary, host_stage_table
from kvprof.runner import TraceRequest, run_trace
from kvprof.read.trace import load_trace
from methods import base as methods_base
from methods.reference import BF16
from tracers import TraceSession, active_session, stage
from tracers.host_profile import HostProfileOptions, start_host_profile
from tracers.host_stacks import HOST_PROFILE_FILE, MARKERS, align, host_intervals, host_slices
from tracers.host_sync import CUDA_SYNC_WARNING, HostActivity

from perfetto_checks import check_nesting

HOST_LOOP_MS = 15.0  # pure-Python time per encode call of the test-only method
SYNCS_PER_CALL = 4  # three .item() and one .tolist()


class HostLoopBF16(BF16):
    """Test-only: BF16 whose every encode first runs a Python loop in a stage of its own."""

    name = "test_host_loop"
    summary = "test only: a Python loop inside each encode"
    lossless = False  # so the cache calls encode on every write

    def encode(self, k, v, call):
        with self.marks.stage("host_loop"):
            deadline = time.perf_counter() + HOST_LOOP_MS / 1e3
            acc = 0
            while time.perf_counter() < deadline:
                acc += 1
            flat = k.reshape(-1)
            for i in range(3):
                acc += flat[i].item()
            acc += len(flat[:4].tolist())
        return super().encode(k, v, call)


@pytest.fixture(scope="module")
def host_loop_trace(tmp_path_factory) -> Path:
    """Tiny rollout of the host-loop method with --host-profile and py-spy simulated missing."""
    mp = pytest.MonkeyPatch()
    mp.setitem(methods_base._REGISTRY, HostLoopBF16.name, HostLoopBF16)
    out = tmp_path_factory.mktemp("host_loop")
    missing = str(out / "no-such-py-spy")
    try:
        outcome = run_trace(
            TraceRequest(method=HostLoopBF16.name, out=out, run_id="host-loop", frames=3, decode=False),
            on_start=lambda folder: start_host_profile(active_session(), HostProfileOptions(executable=missing)),
        )
    finally:
        mp.undo()
    assert outcome.status == "complete"
    return outcome.path


def test_python_loop_stage_is_the_only_host_bound_stage(host_loop_trace):
    trace = load_trace(host_loop_trace)
    summary = host_profile_summary(trace)
    assert summary["host_bound_stages"] == ["host_loop"]
    table = host_stage_table(trace).set_index("stage")
    loop = table.loc["host_loop"]
    assert loop["host_only_ms"] >= 4 * loop["device_ms"]
    assert bool(loop["host_bound"]) is True
    # the stages around the loop hold its time but are not flagged for it
    for outer in ("kv_write", "layer", "denoise", "chunk", "rollout"):
        assert bool(table.loc[outer, "host_bound"]) is False, outer
    assert pd_isna(table.loc["setup", "host_bound"])  # one-time host work: outside the analysis
    # host syncs: every .item() / .tolist() of the loop, counted in its stage and the ones around it
    assert int(loop["host_syncs"]) == SYNCS_PER_CALL * int(loop["count"])
    spans = trace.spans
    loops_in_run = int(((spans.name == "host_loop") & spans.path.str.startswith("rollout")).sum())
    assert int(table.loc["kv_write", "host_syncs"]) == SYNCS_PER_CALL * loops_in_run
    assert int(table.loc["rollout", "host_syncs"]) == SYNCS_PER_CALL * loops_in_run
    assert 0 < host_bound_share(trace) < 1
    df = compare_table([host_loop_trace])
    assert df["host_bound_share"].iat[0] == pytest.approx(summary["host_bound_share"])
    assert "host-bound" in format_compare(df)


def test_trace_completes_and_says_why_without_py_spy(host_loop_trace):
    trace = load_trace(host_loop_trace)
    assert trace.status == "complete"
    hp = trace.meta["host_profile"]
    assert hp["status"] == "unavailable" and "py-spy not found" in hp["reason"] and "kvprof[host]" in hp["reason"]
    assert any(n.startswith("no host profile: py-spy not found") for n in trace.meta["notes"])
    summary = host_profile_summary(trace)
    assert summary["status"] == "unavailable" and summary["reason"] == hp["reason"]
    assert summary["stages"] and host_intervals_of(trace) is None
    assert not (host_loop_trace / HOST_PROFILE_FILE).exists()


def test_attach_refused_is_reported(tmp_path):
    """A py-spy that cannot attach (as without ptrace permission): the reason quotes it."""
    fake = tmp_path / "py-spy"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  --version) echo "py-spy 0.4.3";;\n'
        '  record) if [ "$2" = "--help" ]; then echo "possible values: flamegraph, raw, speedscope, chrometrace"; '
        'else echo "Permission Denied: Try running again with elevated permissions"; exit 1; fi;;\n'
        "esac\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with TraceSession(tmp_path / "t") as session:
        start_host_profile(session, HostProfileOptions(executable=str(fake)))
        with stage("work"):
            torch.ones(8).sum()
    meta = load_trace(tmp_path / "t").meta
    reason = meta["host_profile"]["reason"]
    assert meta["status"] == "complete" and meta["host_profile"]["status"] == "unavailable"
    assert "could not attach" in reason and "Permission Denied" in reason and "ptrace" in reason


def test_bf16_profile_samples_fall_inside_the_stage_spans(tmp_path):
    if shutil.which("py-spy") is None:
        pytest.skip("py-spy is not installed (pip install 'kvprof[host]')")
    rate = 200
    outcome = run_trace(
        TraceRequest(method="bf16", out=tmp_path, run_id="bf16-host", frames=6, decode=False),
        on_start=lambda folder: start_host_profile(active_session(), HostProfileOptions(rate_hz=rate)),
    )
    trace = load_trace(outcome.path)
    hp = trace.meta["host_profile"]
    if hp["status"] == "unavailable":
        pytest.skip(f"py-spy cannot profile here: {hp['reason']}")
    assert outcome.status == "complete" and hp["status"] == "recorded", hp
    assert (outcome.path / HOST_PROFILE_FILE).is_file()
    err_ns = hp["alignment"]["error_bound_ns"]
    assert hp["alignment"]["offset_ns"] is not None and err_ns < 0.25e9, hp["alignment"]
    iv = host_intervals_of(trace)
    spans = trace.spans
    rollout = spans[spans.path == "rollout"].iloc[0]
    tol = err_ns + 4 * 1e9 / rate
    in_rollout = iv[iv["stack"].str.contains("run_rollout")]
    assert len(in_rollout) >= 5  # a CPU rollout of 6 frames lasts ~0.1-0.3 s: tens of samples, fewer on a loaded machine
    # an interval starts at the sample that saw its stack, and ends at the next sample, which a
    # loaded machine can delay by far more than the sampling period: only starts are bounded
    assert in_rollout.t_start_ns.min() >= rollout.t_start_ns - tol
    assert in_rollout.t_start_ns.max() <= rollout.t_end_ns + tol
    # the profile covers the rollout, and what it saw there is the rollout's code
    table = host_stage_table(trace, iv).set_index("stage")
    assert table.loc["rollout", "profiled_ms"] >= 0.8 * table.loc["rollout", "host_ms"]
    top = [f["frame"] for f in table.loc["layer", "top_frames"]]
    assert top and any("kvprof/" in f for f in top), top
    summary = host_profile_summary(trace)
    assert summary["status"] == "recorded" and summary["profiled_ms"] > 0 and summary["reason"] is None
    # Perfetto: the host stacks on their own track, nested, inside the run
    events = perfetto_trace(trace)["traceEvents"]
    host = [e for e in events if e["tid"] == TID_HOST and e["ph"] == "X"]
    assert host and any(e["name"] == "run_rollout" for e in host)
    check_nesting(host)
    assert not any(e["name"] in MARKERS for e in host)


def test_alignment_survives_missed_marker_runs():
    """Synthetic py-spy events: the second and fifth marker runs were never sampled."""
    offset_ns = 7_000_000  # trace_ns = ts_us * 1000 + offset_ns
    period_us = 10_000
    marks, events, tid = [], [], 42
    t = 50_000_000
    for k in range(8):
        name = MARKERS[k % 2]
        marks.append((name, t, t + 4 * period_us * 1000))
        if k not in (1, 4):
            ts = (t - offset_ns) / 1000 + 3_000  # sampled 3 ms after the run began
            events.append({"ph": "B", "name": name, "tid": tid, "ts": ts, "args": {"filename": "x.py", "line": 1}})
            events.append({"ph": "E", "name": name, "tid": tid, "ts": ts + 2 * period_us, "args": {"filename": "x.py", "line": 1}})
        t += 4 * period_us * 1000 + (400_000_000 if k == 3 else 0)
    got = align(events, marks, tid)
    assert got["offset_ns"] == pytest.approx(offset_ns - 3_000_000, abs=1)
    assert align(events[:2], marks, tid)["offset_ns"] is None  # one run seen: no alignment


def test_intervals_and_slices_from_chrometrace():
    ev = [
        {"ph": "B", "name": "main", "tid": 1, "ts": 0, "args": {"filename": "/r/kvprof/runner.py", "line": 10}},
        {"ph": "B", "name": "forward", "tid": 1, "ts": 100, "args": {"filename": "/r/kvprof/workload/model.py", "line": 5}},
        {"ph": "B", "name": "__call__", "tid": 1, "ts": 100, "args": {"filename": "/v/site-packages/torch/_ops.py", "line": 1}},
        {"ph": "E", "name": "__call__", "tid": 1, "ts": 300, "args": {"filename": "/v/site-packages/torch/_ops.py", "line": 1}},
        {"ph": "E", "name": "forward", "tid": 1, "ts": 300, "args": {"filename": "/r/kvprof/workload/model.py", "line": 5}},
        {"ph": "B", "name": "other_thread", "tid": 2, "ts": 300, "args": {"filename": "/r/x.py", "line": 1}},
        {"ph": "E", "name": "main", "tid": 1, "ts": 400, "args": {"filename": "/r/kvprof/runner.py", "line": 10}},
    ]
    iv = host_intervals(ev, 1, 1_000)
    assert list(iv.t_start_ns) == [1_000, 101_000, 301_000] and list(iv.t_end_ns) == [101_000, 301_000, 401_000]
    assert iv.frame.iat[1] == "__call__ (torch/_ops.py:1)"
    assert iv.code_frame.iat[1] == "forward (kvprof/workload/model.py:5)"  # torch machinery is not the code under study
    assert iv["stack"].iat[1] == "main;forward;__call__"
    sl = host_slices(ev, 1, 0)
    assert list(sl.function) == ["main", "forward", "__call__"] and list(sl.depth) == [0, 1, 2]
    assert list(sl.t_end_ns) == [400_000, 300_000, 300_000]


def test_host_syncs_counted_inclusively_on_cpu_and_methods_restored(tmp_path):
    originals = {n: getattr(torch.Tensor, n) for n in ("cpu", "tolist", "numpy")}
    x = torch.arange(6.0)
    with TraceSession(tmp_path / "t") as session:
        assert torch.Tensor.cpu is not originals["cpu"]
        with stage("outer"):
            x.sum().item()  # 1
            with stage("inner"):
                x.cpu(), x.tolist(), x.numpy()  # 3
                bool(x[0] > 1)  # 1
                x.nonzero()  # 1
            with torch.inference_mode():
                float(x.max())  # 1 (aten.item under inference mode)
    assert {n: getattr(torch.Tensor, n) for n in originals} == originals
    assert "cpu" not in vars(torch.Tensor)  # the inherited method is back, not a copy shadowing it
    spans = load_trace(tmp_path / "t").spans.set_index("name")
    assert int(spans.loc["inner", "host_syncs"]) == 5
    assert int(spans.loc["outer", "host_syncs"]) == 7
    assert spans.loc["outer", "op_ms"] >= spans.loc["inner", "op_ms"] > 0
    assert spans.loc["outer", "tracer_ms"] > 0
    assert session.meta["host_activity"]["op_time"] is True


def test_cuda_sync_warnings_are_counted_and_swallowed():
    """The CUDA path's warning hook, driven by hand (no GPU here): sync warnings count, others pass."""
    activity = HostActivity(lambda: 3)
    shown: list[str] = []
    old_show = warnings.showwarning

    def show(message, *args, **kwargs):
        shown.append(str(message))

    warnings.showwarning = show
    try:
        activity._catch_sync_warnings()
        for _ in range(3):
            warnings.warn(f"{CUDA_SYNC_WARNING} (stream synchronize)", UserWarning)
        warnings.warn("something else", UserWarning)
        activity.uninstall()
        assert activity.end_span(3, 0) == {"hs": 3}
        assert shown == ["something else"]
        assert warnings.showwarning is show  # restored
        assert not [f for f in warnings.filters if getattr(f[1], "pattern", None) == CUDA_SYNC_WARNING]
    finally:
        warnings.showwarning = old_show


def test_rate_is_checked():
    with pytest.raises(ValueError, match="1..10000"):
        HostProfileOptions(rate_hz=0)


# ----------------------------------------------------------------------------- helpers
def pd_isna(v) -> bool:
    import pandas as pd

    return bool(pd.isna(v))
