"""The CUDA allocator-history tracker's logic, driven on CPU by a fake allocator history."""
from __future__ import annotations

import pytest
import torch

from kvprof.analysis import find_peak, reconcile
from kvprof.trace import load_trace
from tracers import TraceSession, stage, tag
from tracers.alloc_cuda import allocator_block_size


class FakeAllocator:
    """Stands in for torch.cuda.memory's history API: records alloc/free with the metadata in force."""

    def __init__(self):
        self.metadata = ""
        self.trace: list[dict] = []
        self.blocks: dict[int, int] = {}  # addr -> real block size
        self.allocated = 0
        self.max_allocated = 0

    def alloc(self, addr: int, size: int, block: int | None = None) -> None:
        block = block or allocator_block_size(size)
        self.blocks[addr] = block
        self.allocated += block
        self.max_allocated = max(self.max_allocated, self.allocated)
        self.trace.append({"action": "alloc", "addr": addr, "size": size, "time_us": 1, "user_metadata": self.metadata})

    def free(self, addr: int) -> None:
        self.allocated -= self.blocks.pop(addr)
        self.trace.append({"action": "free_requested", "addr": addr, "size": 0, "time_us": 2, "user_metadata": self.metadata})
        self.trace.append({"action": "free_completed", "addr": addr, "size": 0, "time_us": 2, "user_metadata": self.metadata})

    def snapshot(self, device=None):
        segments = [{"address": a, "blocks": [{"size": b, "state": "active_allocated"}]} for a, b in self.blocks.items()]
        return {"device_traces": [list(self.trace)], "segments": segments}

    def record_history(self, enabled, *a, clear_history=False, **k):
        if clear_history:
            self.trace.clear()


@pytest.fixture
def fake(monkeypatch):
    f = FakeAllocator()
    mem = torch.cuda.memory
    monkeypatch.setattr(mem, "_record_memory_history", f.record_history)
    monkeypatch.setattr(mem, "_snapshot", f.snapshot)
    monkeypatch.setattr(mem, "_set_memory_metadata", lambda s: setattr(f, "metadata", s))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: f.allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: f.max_allocated)
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda *a, **k: {"allocated_bytes.all.current": f.allocated,
                                                                      "reserved_bytes.all.current": f.allocated})
    return f


class _Storage:
    def __init__(self, addr):
        self.addr = addr

    def data_ptr(self):
        return self.addr


class _FakeTensor:
    """Just enough of a tensor for tag_tensor on the allocator path."""

    def __init__(self, addr):
        self.device = torch.device("cpu")
        self._addr = addr

    def untyped_storage(self):
        return _Storage(self._addr)


def test_history_replay_categories_stages_retag_and_block_sizes(tmp_path, fake):
    s = TraceSession(tmp_path / "t", {"run_id": "fake"}, "cpu", tracker="allocator")
    s.start()
    with stage("rollout"):
        with tag("kv_codes"):
            fake.alloc(0x1000, 1000)  # rounds to 1024
        with stage("kv_read"), tag("kv_dequant"):
            fake.alloc(0x2000, 100)  # rounds to 512
            fake.free(0x2000)
            fake.alloc(0x2000, 3 << 20, block=(3 << 20) + (512 << 10))  # handed out unsplit
        s.tag_tensor(_FakeTensor(0x2000), "kv_fp", "layer 0 / k_staging")
        s.checkpoint(force=True)
        fake.free(0x2000)
        fake.alloc(0x2000, 600)  # same address reused later: must keep its own category
    s.close("complete")
    trace = load_trace(tmp_path / "t")
    a = trace.allocations_with_stage.sort_values("q_alloc")
    assert list(a["bytes"]) == [1024, 512, (3 << 20) + (512 << 10), 1024]
    assert list(a["category"]) == ["kv_codes", "kv_dequant", "kv_fp", "unattributed"]
    assert a["name"].iloc[2] == "layer 0 / k_staging"
    assert list(a["path"]) == ["rollout", "rollout/kv_read", "rollout/kv_read", "rollout"]
    peak = find_peak(trace)
    assert peak.bytes == fake.max_allocated == 1024 + (3 << 20) + (512 << 10)
    rec = reconcile(trace, peak)
    assert rec["peak_gap_bytes"] == 0 and rec["max_abs_gap_bytes"] == 0
