"""NVML device sampler: this process's bytes, other processes on the GPU, and the trace's note."""
from __future__ import annotations

import os
import sys
import types

import pytest

from kvprof.read.compare import compare_table
from kvprof.read.report import markdown_report
from kvprof.read.trace import load_trace
from tracers.sampler import DeviceSampler
from tracers.session import TraceSession


class _NVMLError(Exception):
    pass


def _fake_pynvml(procs, fail=False):
    """A pynvml stand-in: `procs` are (pid, used bytes) of the GPU's compute processes."""
    nv = types.ModuleType("pynvml")
    nv.NVMLError = _NVMLError
    nv.nvmlInit = lambda: None
    nv.nvmlDeviceGetHandleByIndex = lambda i: ("gpu", i)
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=7_000, total=80_000)
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=42)

    def running(h):
        if fail:
            raise _NVMLError("Insufficient Permissions")
        return [types.SimpleNamespace(pid=p, usedGpuMemory=b) for p, b in procs]

    nv.nvmlDeviceGetComputeRunningProcesses = running
    return nv


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
