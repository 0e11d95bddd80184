"""NVML device sampler: this process's bytes, other processes on the GPU, and the trace's note."""
from __future__ import annotations

import ctypes
import os
import sys

import pytest

from fake_nvml import fake_pynvml as _fake_pynvml  # a pynvml stand-in (tests/fake_nvml.py)
from kvprof.read.compare import compare_table
from kvprof.read.report import markdown_report
from kvprof.read.trace import load_trace
from tracers.sampler import DeviceSampler
from tracers.session import TraceSession


@pytest.mark.parametrize("procs, fail, proc, others", [
    ([(os.getpid(), 3_000)], False, 3_000, 0),
    ([(1, 500), (os.getpid(), 3_000), (2, None)], False, 3_000, 2),
    ([], True, -1, -1),  # containers that forbid per-process accounting: both unknown
    ([(40_001, 3_000)], False, -1, 0),  # a container: NVML's host PID is ours, unrecognisable
    ([(40_001, 3_000), (40_002, 9)], False, -1, 1),
])
def test_sample_separates_this_process_from_others(monkeypatch, procs, fail, proc, others):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(procs, fail))
    s = DeviceSampler(0, lambda sample: None)
    assert s.available
    sample = s._sample(0)
    assert (sample["used"], sample["proc"], sample["util"], sample["others"]) == (7_000, proc, 42, others)
    assert s.host_pids == (proc == -1 and not fail)


def test_a_shared_gpu_is_noted_in_the_trace(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([(os.getpid(), 3_000), (1, 9), (2, 9)]))
    s = TraceSession(tmp_path / "t", {"run_id": "shared"}, "cpu", tracker="dispatch", drain_at_checkpoints=False)
    s.start()
    s._sampler = DeviceSampler(0, s._emit_sample)  # CPU sessions start none; the samples are what a GPU would give
    s._emit_sample(s._sampler._sample(0))
    s.close("complete")
    t = load_trace(tmp_path / "t")
    assert t.samples["other_processes"].tolist() == [2]
    assert t.samples["process_used_bytes"].tolist() == [3_000]
    assert t.meta["other_gpu_processes_max"] == 2
    assert any(n.startswith("GPU shared: up to 2 other process(es)") for n in t.meta["notes"])
    # compare's row and the report say so where the times are shown
    assert compare_table([t])["gpu_shared_by"].tolist() == [2]
    assert "- note: GPU shared: up to 2 other process(es) ran on it" in markdown_report([t])


def test_an_unshared_trace_has_no_note(tmp_path):
    s = TraceSession(tmp_path / "t", {"run_id": "alone"}, "cpu", tracker="dispatch", drain_at_checkpoints=False)
    s.start()
    s.close("complete")
    t = load_trace(tmp_path / "t")
    assert t.meta["other_gpu_processes_max"] == 0
    assert not any("GPU shared" in n for n in t.meta["notes"])


def test_host_pids_are_noted_and_still_count_the_others(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([(40_001, 3_000), (40_002, 9)]))
    s = TraceSession(tmp_path / "t", {"run_id": "container"}, "cpu", tracker="dispatch", drain_at_checkpoints=False)
    s.start()
    s._sampler = DeviceSampler(0, s._emit_sample)
    s._emit_sample(s._sampler._sample(0))
    s.close("complete")
    t = load_trace(tmp_path / "t")
    assert t.samples["process_used_bytes"].tolist() == [-1] and t.meta["other_gpu_processes_max"] == 1
    assert any(n.startswith("NVML lists host PIDs") for n in t.meta["notes"])


@pytest.mark.parametrize("fail, reads", [(False, 3), (True, 1)])
def test_the_process_list_is_read_once_a_second_and_never_again_once_refused(monkeypatch, fail, reads):
    # each NVML call of the sampler hands the GIL back and forth with the model's thread; the process list is two
    # of a sample's four calls, so it is read every 10th sample (once a second) and carried in between
    nv = _fake_pynvml([(os.getpid(), 3_000), (1, 9)], fail)
    running, calls = nv.nvmlDeviceGetComputeRunningProcesses, []
    nv.nvmlDeviceGetComputeRunningProcesses = lambda h: calls.append(h) or running(h)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    s = DeviceSampler(0, lambda sample: None)
    samples = [s._sample(0) for _ in range(25)]
    assert len(calls) == reads  # samples 0, 10 and 20; or only the first, refused
    assert {(x["proc"], x["others"]) for x in samples} == ({(-1, -1)} if fail else {(3_000, 1)})
    assert [x["used"] for x in samples] == [7_000] * 25  # the device's memory is read at every sample


def _wait_for_samples(n: int, timeout_s: float = 20.0) -> None:
    """Until the native sampler holds `n` samples untaken (a loaded CI machine may starve its thread for a while)."""
    import time

    from tracers import native

    state = (ctypes.c_int64 * 4)()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        native.load(False).kvp_sampler_state(state)
        if state[0] >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"the native sampler kept {state[0]} samples in {timeout_s} s, not {n}")


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory) -> str:
    from fake_nvml import build_fake_nvml  # a stand-in NVML library (tests/fake_nvml.py)

    return build_fake_nvml(tmp_path_factory.mktemp("nvml"))


def test_the_native_sampler_thread_samples_the_device_by_uuid_and_collect_hands_the_samples_on(monkeypatch, fake_nvml):
    import time

    from tracers import native

    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([(os.getpid(), 3_000), (1, 9)]))
    got: list[dict] = []
    s = DeviceSampler(3, got.append, interval_s=0.01, uuid="GPU-fake-1", native=native.load(False), nvml_library=fake_nvml)
    t0 = time.perf_counter_ns()
    s.start(t0)
    try:
        assert s.native and s._thread is None  # no Python thread: nothing of it takes the GIL
        _wait_for_samples(5)
        s.collect()
        first = len(got)
        assert first >= 5
        # the device named by its UUID (not NVML's device 3, nor 0: CUDA_VISIBLE_DEVICES renumbers torch's devices)
        assert {x["util"] for x in got} == {42}
        assert [x["used"] for x in got] == [1000 * (i + 1) for i in range(first)]  # every read, in order
        ts = [x["t"] for x in got]
        assert ts == sorted(ts) and 0 <= ts[0] and ts[-1] <= time.perf_counter_ns() - t0  # ns on the session's clock
        assert {(x["proc"], x["others"]) for x in got} == {(3_000, 1)}  # the process list, read by collect
        _wait_for_samples(1)
    finally:
        s.stop()
    assert len(got) > first and not s.native  # stop handed on the last samples
    state = (ctypes.c_int64 * 4)()
    native.load(False).kvp_sampler_state(state)
    assert list(state) == [0, 0, 0, 0]  # nothing left, none dropped, no error, the thread joined
    n = len(got)
    s.collect()
    assert len(got) == n  # stopped: a collect is a no-op


def test_a_failing_read_stops_the_native_sampler_and_says_why(monkeypatch, fake_nvml):
    import time

    from tracers import native

    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([]))
    monkeypatch.setenv("FAKE_NVML_FAIL_AT", "3")
    got: list[dict] = []
    s = DeviceSampler(0, got.append, interval_s=0.005, native=native.load(False), nvml_library=fake_nvml)
    s.start(time.perf_counter_ns())
    try:
        state = (ctypes.c_int64 * 4)()
        deadline = time.monotonic() + 20
        while not state[2] and time.monotonic() < deadline:  # until the failing read stopped the thread
            time.sleep(0.01)
            native.load(False).kvp_sampler_state(state)
        s.collect()
    finally:
        s.stop()
    # the samples before the failing read are kept and handed on; none after
    assert [x["used"] for x in got] == [1000, 2000, 3000] and {x["util"] for x in got} == {7}  # NVML's device 0: no UUID
    assert s.reason == "device sampler stopped: NVML error 15"


@pytest.mark.parametrize("uuid, library, why", [("GPU-other", None, "no such device"),
                                                ("GPU-fake-1", "/nonexistent/libnvidia-ml.so.1", "NVML library not loadable")])
def test_the_sampler_falls_back_to_a_python_thread_where_the_native_one_cannot_start(monkeypatch, fake_nvml, uuid, library, why):
    import time

    from tracers import native

    nv = _fake_pynvml([])
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    got: list[dict] = []
    s = DeviceSampler(0, got.append, interval_s=0.01, uuid=uuid, native=native.load(False), nvml_library=library or fake_nvml)
    s.start(time.perf_counter_ns())
    try:
        assert not s.native and s._thread is not None and why in s.reason
        time.sleep(0.1)
    finally:
        s.stop()
    assert got and {x["used"] for x in got} == {7_000}  # pynvml's readings


def test_a_session_writes_the_native_samples_at_each_flush(monkeypatch, tmp_path, fake_nvml):
    # on a streamed CUDA trace the drain thread's flush_log hands the native sampler's samples to the event log
    from tracers import native

    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([(os.getpid(), 3_000)]))
    s = TraceSession(tmp_path / "t", {"run_id": "native-samples"}, "cpu", tracker="dispatch", drain_at_checkpoints=False)
    s.start()
    s._sampler = DeviceSampler(0, s._emit_sample, interval_s=0.01, uuid="GPU-fake-1", native=native.load(False),
                               nvml_library=fake_nvml)
    s._sampler.start(s._t0_perf)
    _wait_for_samples(5)
    s.flush_log()
    s.close("complete")
    t = load_trace(tmp_path / "t")
    assert len(t.samples) >= 5 and t.samples["process_used_bytes"].eq(3_000).all()
    assert t.samples["t_ns"].is_monotonic_increasing


def test_nvml_uuid_names_the_device_torch_sees(monkeypatch):
    import types as _types

    import torch

    from tracers.sampler import nvml_uuid

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: _types.SimpleNamespace(uuid=f"abcd-{i}"))
    assert nvml_uuid(1) == "GPU-abcd-1"
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: (_ for _ in ()).throw(RuntimeError("no CUDA")))
    assert nvml_uuid(0) is None


def test_a_trace_notes_a_sampler_that_fell_back_to_a_python_thread(monkeypatch, tmp_path, fake_nvml):
    import time

    from tracers import native

    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([]))
    s = TraceSession(tmp_path / "t", {"run_id": "fallback"}, "cpu", tracker="dispatch", drain_at_checkpoints=False)
    s.start()
    s._sampler = DeviceSampler(0, s._emit_sample, interval_s=0.01, uuid="GPU-other", native=native.load(False),
                               nvml_library=fake_nvml)
    s._sampler.start(time.perf_counter_ns())
    s.close("complete")
    notes = load_trace(tmp_path / "t").meta["notes"]
    assert any(n.startswith("device sampler on a Python thread: the native one did not start (no such device)") for n in notes)


def test_a_process_that_exits_with_the_native_sampler_running_exits_cleanly(fake_nvml):
    # a trace never closed leaves the sampler's thread running at exit: the process must not abort (a joinable
    # std::thread destroyed at exit calls std::terminate)
    import subprocess

    code = ("import time; from tracers import native; lib = native.load(False)\n"
            f"assert lib.kvp_sampler_start({fake_nvml.encode()!r}, b'GPU-fake-1', 0, 1_000_000, 0) == 0\n"
            "time.sleep(0.1)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "terminate" not in done.stderr


def test_only_the_python_sampler_makes_the_model_thread_wait_for_the_gil():
    # benchmarks/gil_waits.py in a fresh interpreter (no other test's threads): a model thread of small torch ops
    # beside the Python sampler waits for the GIL (voluntary switches); beside the native one, never
    import json
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "gil_waits.py"), "--seconds", "1", "--repeat", "1"],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["none"]["switches_per_s"] == 0 and out["native"]["switches_per_s"] == 0
    assert out["python"]["switches_per_s"] > 0
    assert all(out[m]["ops_per_s"] > 0 for m in ("none", "python", "native"))
