"""The CUDA allocator-history tracker's logic, driven on CPU by a fake caching allocator."""
from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pandas as pd

from fake_cuda_allocator import KIB, MIB, FakeCachingAllocator, fake, install, install_native  # noqa: F401  (fixture)
from kvprof.read.analysis import find_peak, reconcile
from kvprof.read.trace import load_trace
from tracers import TraceSession, stage, tag
from tracers.trace_io import NO_FREE
from tracers.alloc_layout import BlockLayout, round_size, should_split, unsupported_reason


class _Storage:
    def __init__(self, addr):
        self.addr = addr

    def data_ptr(self):
        return self.addr


class _FakeTensor:
    """Just enough of a tensor for tag_tensor / register on the allocator path."""

    def __init__(self, addr):
        self.device = torch.device("cpu")
        self._addr = addr

    def untyped_storage(self):
        return _Storage(self._addr)


def _session(tmp_path, name="t"):
    return TraceSession(tmp_path / name, {"run_id": "fake"}, "cpu", tracker="allocator", drain_at_checkpoints=False)


# ----------------------------------------------------------------------------- the layout model
def test_round_and_split_rules_of_the_caching_allocator():
    assert [round_size(n) for n in (1, 511, 512, 513, 1000)] == [512, 512, 512, 1024, 1024]
    assert should_split(2 * MIB, 1024)  # small pool: any remainder of >= 512 B is split off
    assert not should_split(1024, 1024)
    assert should_split(20 * MIB, 3 * MIB)  # large pool: split only when more than 1 MiB remains
    assert not should_split(4 * MIB, 3 * MIB)
    assert not should_split(3 * MIB + 512 * KIB, 3 * MIB)


def test_layout_hands_out_unsplit_blocks_and_merges_within_a_segment():
    lay = BlockLayout()
    base = 1 << 40
    lay.segment_alloc(base, 20 * MIB)
    assert lay.alloc(base, 3 * MIB + 512 * KIB) == 3 * MIB + 512 * KIB  # split: 16.5 MiB remain
    assert lay.alloc(base + 3 * MIB + 512 * KIB, 16 * MIB + 512 * KIB) == 16 * MIB + 512 * KIB  # exact fit
    assert lay.free_requested(base) == 3 * MIB + 512 * KIB
    lay.free_completed(base)
    assert lay.alloc(base, 3 * MIB) == 3 * MIB + 512 * KIB  # 0.5 MiB left over: handed out whole
    assert lay.allocated_bytes() == 20 * MIB
    lay.free_requested(base)
    lay.free_completed(base)
    lay.free_requested(base + 3 * MIB + 512 * KIB)
    lay.free_completed(base + 3 * MIB + 512 * KIB)
    assert lay.blocks == {base: [20 * MIB, 0, base, base + 20 * MIB]}  # merged back into one free block
    # an adjacent segment's free block is never merged across the boundary
    lay.segment_alloc(base + 20 * MIB, 2 * MIB)
    lay.alloc(base + 20 * MIB, 1000)
    lay.free_requested(base + 20 * MIB)
    lay.free_completed(base + 20 * MIB)
    assert lay.blocks[base][0] == 20 * MIB and lay.blocks[base + 20 * MIB][0] == 2 * MIB
    lay.segment_free(base, 20 * MIB)
    assert base not in lay.blocks and lay.misses == 0


def test_layout_counts_misses_instead_of_guessing():
    lay = BlockLayout()
    assert lay.alloc(123, 1000) is None  # no segment there
    lay.segment_alloc(1 << 40, 2 * MIB)
    assert lay.alloc(1 << 40, 4 * MIB) is None  # larger than the free block
    assert lay.free_requested(999) is None
    assert lay.misses == 3


def test_unsupported_allocator_configurations_turn_the_model_off():
    assert unsupported_reason({}) is None
    assert unsupported_reason({"PYTORCH_CUDA_ALLOC_CONF": "garbage_collection_threshold:0.6"}) is None
    assert unsupported_reason({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}) is None  # sizes are exact
    assert unsupported_reason({"PYTORCH_ALLOC_CONF": "max_split_size_mb:128"}) == "PYTORCH_ALLOC_CONF sets max_split_size_mb"


def test_expandable_segments_blocks_are_their_rounded_request_and_fixed_ones_stay_mirrored():
    lay = BlockLayout(expandable=True)
    fixed = 1 << 40
    lay.segment_alloc(fixed, 20 * MIB)
    lay.alloc(fixed, 16 * MIB)
    assert lay.alloc(fixed + 16 * MIB, 3 * MIB + 1) == 4 * MIB  # a fixed segment: handed out unsplit
    assert lay.alloc(1 << 44, 3 * MIB + 1) == 3 * MIB + 512  # an expandable segment: always split
    assert lay.free_requested(1 << 44) is None
    lay.free_completed(1 << 44)
    expandable_seg = {"address": 1 << 44, "total_size": 4 * MIB, "is_expandable": True,
                      "blocks": [{"size": 4 * MIB, "state": "inactive"}]}
    fixed_seg = {"address": fixed, "total_size": 20 * MIB,
                 "blocks": [{"size": 16 * MIB, "state": "active_allocated"}, {"size": 4 * MIB, "state": "active_allocated"}]}
    assert lay.mismatches([fixed_seg, expandable_seg]) == 0 and lay.misses == 0


_SIZES = st.sampled_from([100, 600, 4000, 300 * KIB, MIB, MIB + 1, 1536 * KIB, 3 * MIB, 3 * MIB + 300 * KIB,
                          7 * MIB, 9 * MIB + 700 * KIB, 12 * MIB, 17 * MIB + 1])


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), _SIZES, st.integers(0, 50)), min_size=1, max_size=120),
       adjacent=st.booleans())
def test_layout_mirrors_the_allocator_block_sizes(ops, adjacent):
    f = FakeCachingAllocator(segment_gap=0 if adjacent else 64 * MIB)
    lay = BlockLayout()
    live: list[int] = []
    for is_alloc, size, pick in ops:
        if is_alloc or not live:
            f.trace.clear()
            addr = f.malloc(size)
            live.append(addr)
            for e in f.trace:
                if e["action"] == "segment_alloc":
                    lay.segment_alloc(e["addr"], e["size"])
            assert lay.alloc(addr, size) == f.block_size(addr)
        else:
            addr = live.pop(pick % len(live))
            assert lay.free_requested(addr) == f.block_size(addr)
            f.free(addr)
            lay.free_completed(addr)
        assert lay.allocated_bytes() == f.allocated
    assert lay.mismatches(f.snapshot()["segments"]) == 0 and lay.misses == 0


# ----------------------------------------------------------------------------- the tracker
def test_history_replay_categories_stages_retag_and_block_sizes(tmp_path, fake):
    s = _session(tmp_path)
    s.start()
    with stage("rollout"):
        with tag("kv_codes"):
            a = fake.malloc(1000)  # rounds to 1024
        with stage("kv_read"), tag("kv_dequant"):
            b = fake.malloc(100)  # rounds to 512
            fake.free(b)
            x = fake.malloc(3 * MIB + 512 * KIB)
            y = fake.malloc(16 * MIB + 512 * KIB)
            fake.free(x)
            z = fake.malloc(3 * MIB)  # handed out unsplit: 3.5 MiB
        s.tag_tensor(_FakeTensor(z), "kv_fp", "layer 0 / k_staging")
        s.checkpoint(force=True)
        fake.free(z)
        w = fake.malloc(600)  # an address reused later must keep its own category
    s.close("complete")
    trace = load_trace(tmp_path / "t")
    al = trace.allocations_with_stage.sort_values("q_alloc")
    assert list(al["bytes"]) == [1024, 512, 3 * MIB + 512 * KIB, 16 * MIB + 512 * KIB, 3 * MIB + 512 * KIB, 1024]
    assert list(al["category"]) == ["kv_codes", "kv_dequant", "kv_dequant", "kv_dequant", "kv_fp", "unattributed"]
    assert al["name"].iloc[4] == "layer 0 / k_staging"
    assert list(al["path"]) == ["rollout"] + ["rollout/kv_read"] * 4 + ["rollout"]
    assert list(al["q_free"] >= 0) == [False, True, True, False, True, False]
    assert fake.unsplit == 1 and a and y and w
    peak = find_peak(trace)
    assert peak.bytes == fake.max_allocated == 1024 + 20 * MIB
    rec = reconcile(trace, peak)
    assert rec.peak_gap_bytes == 0 and rec.max_abs_gap_bytes == 0
    assert rec.block_sizes["exact_blocks"] == 6 and rec.block_sizes["rounded_blocks"] == 0
    assert rec.block_sizes["snapshot_mismatches"] == 0 and rec.block_sizes["corrected_blocks"] == 0


def _workload(fake: FakeCachingAllocator, session: TraceSession, rng: random.Random, drains: bool) -> None:
    """Layers of short-lived large buffers around a growing cache: unsplit blocks come and go, and
    one buffer of each layer lives into the next, across the stage boundary (a counter reads it)."""
    sizes = [700, 40 * KIB, MIB, 1536 * KIB, 2 * MIB + 700 * KIB, 3 * MIB, 3 * MIB + 700 * KIB, 9 * MIB,
             11 * MIB + 300 * KIB, 24 * MIB]
    cache: list[int] = []
    carried: int | None = None
    with stage("rollout"):
        for chunk in range(8):
            with stage("chunk", chunk):
                for layer in range(6):
                    with stage("layer", layer), tag("kv_scratch"):
                        temps = [fake.malloc(rng.choice(sizes)) for _ in range(rng.randint(2, 8))]
                        if carried is not None:
                            fake.free(carried)
                        rng.shuffle(temps)
                        carried = temps.pop()
                        for t in temps:
                            fake.free(t)
                    with tag("kv_fp"):
                        cache.append(fake.malloc(rng.choice(sizes)))
                if rng.random() < 0.3:
                    fake.empty_cache()
                if drains:
                    session.checkpoint(force=True)
        if carried is not None:
            fake.free(carried)


@pytest.mark.parametrize("drains", [False, True])
def test_trace_peak_and_every_boundary_equal_the_allocator_counters(tmp_path, fake, drains):
    s = _session(tmp_path)
    s.start()
    _workload(fake, s, random.Random(7), drains)
    s.close("complete")
    assert fake.unsplit > 0  # the case a rounded request size gets wrong happened
    trace = load_trace(tmp_path / "t")
    peak = find_peak(trace)
    rec = reconcile(trace, peak)
    assert peak.bytes == fake.max_allocated
    assert rec.peak_gap_bytes == 0 and rec.max_abs_gap_bytes == 0 and rec.boundaries > 40
    assert rec.block_sizes["rounded_blocks"] == 0 and rec.block_sizes["snapshot_mismatches"] == 0


def test_without_the_layout_model_the_gap_is_measured_not_hidden(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    s = _session(tmp_path)
    s.start()
    _workload(fake, s, random.Random(7), drains=True)
    s.close("complete")
    trace = load_trace(tmp_path / "t")
    rec = reconcile(trace, find_peak(trace))
    assert rec.block_sizes["model"] == "off"
    assert rec.block_sizes["off_reason"] == "PYTORCH_CUDA_ALLOC_CONF sets max_split_size_mb"
    assert rec.block_sizes["exact_blocks"] == 0 and rec.block_sizes["rounded_blocks"] > 0
    assert rec.max_abs_gap_bytes > 0  # rounded sizes of unsplit blocks freed between drains


def test_live_drains_write_the_same_rows_as_memory_only_drains(tmp_path, monkeypatch):
    tables = []
    for name, live in (("a", True), ("b", False)):
        f2 = install(monkeypatch, FakeCachingAllocator())
        s = TraceSession(tmp_path / name, {"run_id": name}, "cpu", tracker="allocator", drain_at_checkpoints=live)
        s.start()
        _workload(f2, s, random.Random(3), drains=True)
        s.close("complete")
        al = load_trace(tmp_path / name).allocations
        tables.append(al.drop(columns=["t_alloc_ns", "t_free_ns"]).sort_values("id").reset_index(drop=True))
    assert len(tables[0]) > 50
    assert tables[0].equals(tables[1])


def test_register_adopts_blocks_from_before_tracking_with_their_block_size(tmp_path, fake):
    weights = fake.malloc(3 * MIB + 300 * KIB)  # before tracking: a 20 MiB segment, split
    s = _session(tmp_path)
    s.start()
    s.register(_FakeTensor(weights), "weights", "w")
    with stage("rollout"), tag("activations"):
        act = fake.malloc(5000)
        s.register(_FakeTensor(act), "latents", "late")  # made while tracking: only its tag changes
    fake.free(weights)
    s.close("complete")
    trace = load_trace(tmp_path / "t")
    al = trace.allocations.sort_values("id")
    assert list(al["bytes"]) == [3 * MIB + 300 * KIB, 5120]
    assert list(al["category"]) == ["weights", "latents"]
    assert trace.meta["held_before_bytes"] == 3 * MIB + 300 * KIB
    assert trace.meta["unregistered_before_bytes"] == 0  # all of it registered
    assert not any("before tracing started" in n for n in trace.meta["notes"])
    rec = reconcile(trace, find_peak(trace))
    assert rec.peak_gap_bytes == 0 and rec.max_abs_gap_bytes == 0


def test_blocks_left_by_earlier_work_are_held_as_unattributed_and_count_in_the_peak(tmp_path, fake):
    # A second trace in one process starts with what the first left allocated (a cuBLAS workspace).
    workspace = fake.malloc(32 * MIB + 700)
    ws = fake.block_size(workspace)
    weights = fake.malloc(3 * MIB)
    fake.max_allocated = fake.allocated  # reset_peak_memory_stats at start (patched to a no-op)
    s = _session(tmp_path)
    s.start()
    s.register(_FakeTensor(weights), "weights", "w")
    with stage("rollout"), tag("activations"):
        act = fake.malloc(5 * MIB)
        s.checkpoint(force=True)
        fake.free(act)
    fake.free(workspace)  # freed during the trace: the trace follows it
    with stage("decode"), tag("activations"):
        fake.free(fake.malloc(MIB))
    s.close("complete")
    trace = load_trace(tmp_path / "t")
    al = trace.allocations.sort_values("id").reset_index(drop=True)
    assert al.loc[0, "category"] == "unattributed" and al.loc[0, "name"] == "live before tracing"
    assert al.loc[0, "bytes"] == ws and al.loc[0, "q_free"] != NO_FREE
    assert al.loc[1, "category"] == "weights" and al.loc[1, "bytes"] == 3 * MIB
    assert trace.meta["held_before_bytes"] == ws + 3 * MIB == trace.meta["allocated_before_bytes"]
    peak = find_peak(trace)
    assert peak.bytes == ws + 3 * MIB + 5 * MIB == fake.max_allocated
    assert peak.by_category == {"unattributed": ws, "weights": 3 * MIB, "activations": 5 * MIB}
    rec = reconcile(trace, peak)
    assert rec.trace_peak_bytes == peak.bytes and rec.peak_gap_bytes == 0 and rec.max_abs_gap_bytes == 0
    assert trace.meta["unregistered_before_bytes"] == ws
    assert [n for n in trace.meta["notes"] if "before tracing started" in n] == [
        f"{ws:,} B in 1 block(s) were allocated before tracing started and never registered (tensors made before "
        "tracing, or earlier work in this process such as cuBLAS workspaces): counted as unattributed 'live before "
        "tracing'; register() names tensors, and a fresh process leaves no workspaces behind"]


def test_trace_summary_prints_how_block_sizes_were_learned(tmp_path, fake, capsys):
    from kvprof.read.analysis import summarize
    from kvprof.cli import print_summary

    s = _session(tmp_path)
    s.start()
    _workload(fake, s, random.Random(5), drains=False)
    s.close("complete")
    trace = load_trace(tmp_path / "t")
    print_summary(tmp_path / "t", summarize(trace))
    out = " ".join(capsys.readouterr().out.split())
    n = len(trace.allocations)
    assert f"block sizes: {n:,} from the allocator layout mirror, 0 rounded requests, 0 snapshot mismatches" in out
    assert "(gap 0 B); max gap at stage boundaries 0 B" in out


# ----------------------------------------------------------------------------- the native recorder
def test_native_recorder_gives_the_python_replays_tables(tmp_path, monkeypatch):
    """The same workload through the native recorder (C++ replay, streamed parts) and the Python
    replay of the allocator's history: identical allocation rows, exact against the allocator."""
    tables = {}
    for name in ("allocator", "native"):
        f = FakeCachingAllocator()
        (install_native if name == "native" else install)(monkeypatch, f)
        s = TraceSession(tmp_path / name, {"run_id": name}, "cpu", tracker=name, drain_at_checkpoints=False)
        s.start()
        _workload(f, s, random.Random(11), drains=True)
        s.close("complete")
        trace = load_trace(tmp_path / name)
        peak = find_peak(trace)
        rec = reconcile(trace, peak)
        assert peak.bytes == f.max_allocated
        assert rec.peak_gap_bytes == 0 and rec.max_abs_gap_bytes == 0 and rec.boundaries > 40
        assert rec.block_sizes["rounded_blocks"] == 0 and rec.block_sizes["snapshot_mismatches"] == 0
        tables[name] = trace.allocations.drop(columns=["t_alloc_ns", "t_free_ns"]).sort_values("id").reset_index(drop=True)
        assert not (tmp_path / name / "allocations.parts").exists()
    assert trace.meta["allocator_layout"]["recorder"] == "native" and trace.meta["allocator_layout"]["drains"] >= 8
    assert len(tables["native"]) > 50
    pd.testing.assert_frame_equal(tables["native"], tables["allocator"])


def test_stage_timer_uses_pooled_native_marks(monkeypatch):
    """Device times from the native library's pooled CUDA events: one mark per boundary, ms between
    a span's two marks, the pool reset for the next trace; a mark CUDA refused gives no time."""
    from tracers.timing import StageTimer

    class Lib:
        def __init__(self):
            self.marks, self.resets = 0, 0

        def kvp_mark(self, device):
            self.marks += 1
            return self.marks - 1 if self.marks != 5 else -1

        def kvp_mark_ms(self, start, end):
            return float("nan") if start < 0 or end < 0 else float(end - start)

        def kvp_marks_reset(self):
            self.resets += 1

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    timer = StageTimer(torch.device("cuda", 0))
    timer._push = timer._pop = lambda *a: None
    lib = Lib()
    timer.use_native(lib)
    timer.begin(1, "chunk[0]")
    timer.begin(2, "layer[0]")
    timer.end(2)
    timer.end(1)
    timer.begin(3, "layer[1]")  # mark 4: refused by CUDA
    timer.end(3)
    assert timer.resolve() == {1: 3.0, 2: 1.0}
    assert lib.marks == 6 and lib.resets == 2


def test_device_time_events_stop_below_the_timer_depth(tmp_path, monkeypatch):
    f = install_native(monkeypatch, FakeCachingAllocator())
    s = TraceSession(tmp_path / "t", {"run_id": "depth"}, "cpu", tracker="native", drain_at_checkpoints=False,
                     timer_depth=1)
    timed: list[int] = []
    s._timer.begin = lambda span_id, label: timed.append(span_id)  # type: ignore[method-assign]
    s.start()
    with stage("rollout"), stage("chunk", 0), stage("layer", 0):
        f.free(f.malloc(4096))
    s.close("complete")
    spans = load_trace(tmp_path / "t").spans.set_index("name")
    assert sorted(timed) == sorted(int(spans.loc[n, "id"]) for n in ("rollout", "chunk"))


def test_native_recorder_turns_event_ticks_into_steady_ns_between_drains():
    """On CUDA each event keeps the tick c10 stamped it with (no clock read per event) and each drain maps
    ticks to steady ns through the (ticks, ns) pairs taken at this drain and the previous one. Here the
    tick source is a clock at 3 ticks a ns with an offset: every event comes back at its steady ns (to
    the few us a Python tick callback takes), in order, over two drains; without a tick source ticks
    are ns, exactly."""
    import ctypes
    import time

    import numpy as np

    from tracers import native
    from tracers.alloc_native import drain_columns

    lib = native.load(cuda=False)
    tick_fn = ctypes.CFUNCTYPE(ctypes.c_int64)
    lib.kvp_set_tick_source.argtypes, lib.kvp_set_tick_source.restype = [tick_fn], None
    source = tick_fn(lambda: 3 * time.perf_counter_ns() + 12_345)

    def drain() -> np.ndarray:
        return drain_columns(lib)[0].a_t  # allocation times

    def record(n: int, base: int, ticks_of) -> list[int]:
        truth = []
        for i in range(n):
            ns = time.perf_counter_ns()
            lib.kvp_record(0, 0, base + i * 4096, 512, ticks_of(ns))
            truth.append(ns)
            time.sleep(0.0002)
        return truth

    lib.kvp_set_tick_source(source)
    try:
        lib.kvp_reset(0, 0, 0, 1)
        lib.kvp_set_recording(1)
        got, truth = [], []
        for k in range(2):
            truth += record(200, (k + 1) << 30, lambda ns: 3 * ns + 12_345)
            got += drain().tolist()
        err = np.abs(np.array(got) - np.array(truth))
        assert len(got) == 400 and err.max() < 50_000, err.max()  # 50 us: the callback's own time, not drift
        assert got == sorted(got)
    finally:
        lib.kvp_set_tick_source(tick_fn(0))  # a null source: ticks are steady ns again
        lib.kvp_set_recording(0)
    lib.kvp_reset(0, 0, 0, 1)
    lib.kvp_set_recording(1)
    try:
        truth = record(50, 1 << 34, lambda ns: ns)
        assert drain().tolist() == truth
    finally:
        lib.kvp_set_recording(0)


def test_a_followed_native_run_streams_parts_that_the_follower_reads(tmp_path, monkeypatch):
    """A run followed live (drain_at_checkpoints) records like an unfollowed one (streamed parts, bounded
    memory: no allocation record kept or written per row) and the follower folds the parts as they appear:
    before close its allocations are the closed trace's."""
    from kvprof.read.live import TraceFollower

    tables = {}
    for name, live in (("followed", True), ("unfollowed", False)):
        f = install_native(monkeypatch, FakeCachingAllocator())
        s = TraceSession(tmp_path / name, {"run_id": name}, "cpu", tracker="native", drain_at_checkpoints=live)
        s.start()
        _workload(f, s, random.Random(5), drains=True)
        if live:
            s.checkpoint(force=True)
            follower = TraceFollower(tmp_path / name)
            follower.poll()
            seen = follower.trace().allocations.sort_values("id").reset_index(drop=True)
            assert not [r for r in s._log.records if r["k"] == "a"]  # the rows live in the parts only
            assert '"k":"a"' not in (tmp_path / name / "events.jsonl").read_text()
            assert len(list((tmp_path / name / "allocations.parts").glob("part-*.parquet"))) >= 8
        s.close("complete")
        trace = load_trace(tmp_path / name)
        assert reconcile(trace, find_peak(trace)).max_abs_gap_bytes == 0
        tables[name] = trace.allocations.sort_values("id").reset_index(drop=True)
    assert len(seen) > 50
    pd.testing.assert_frame_equal(seen, tables["followed"])
    cols = ["id", "q_alloc", "q_free", "bytes", "category", "span_id", "name"]
    pd.testing.assert_frame_equal(tables["followed"][cols], tables["unfollowed"][cols])


def test_a_cached_native_build_is_loaded_without_computing_its_flags(tmp_path, monkeypatch):
    # every trace process of a sweep loads the library; torch's include paths (cpp_extension) are needed only to build
    from tracers import native

    monkeypatch.setenv("KVPROF_CACHE_DIR", str(tmp_path))
    calls = []
    built = native._build("probe", native.CORE_SOURCES, lambda: calls.append(1) or [], "k")
    assert built.is_file() and calls == [1]
    assert native._build("probe", native.CORE_SOURCES, lambda: pytest.fail("flags computed for a cached build"), "k") == built
    # a header the sources include is part of the key: an edited header is a new build, not the stale cached one
    header = tmp_path / "extra.h"
    header.write_text("// one\n")
    monkeypatch.setattr(native, "HEADERS", native.HEADERS + (header,))
    keyed = native._build("probe", native.CORE_SOURCES, lambda: calls.append(2) or [], "k")
    header.write_text("// two\n")
    rekeyed = native._build("probe", native.CORE_SOURCES, lambda: calls.append(3) or [], "k")
    assert len({built, keyed, rekeyed}) == 3 and calls == [1, 2, 3]
