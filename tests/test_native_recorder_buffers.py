"""The native recorder's event buffers: each drain swaps in a buffer made ready on its own thread, so recording
neither regrows one nor faults in pages after the first interval; a drain swaps the buffer out while another thread
records."""
from __future__ import annotations

import ctypes
import resource
import threading

import numpy as np
import pytest

from stream_history import feed
from tracers import native
from tracers.alloc_native import drain_columns

N = 50_000


@pytest.fixture()
def lib(recording_lib):
    """The core recorder, recording (conftest's `recording_lib`)."""
    return recording_lib


def _capacity(lib) -> tuple[int, int]:
    out = (ctypes.c_int64 * 2)()
    lib.kvp_buffer_capacity(out)
    return out[0], out[1]


def _record(lib, base: int, t0: int, n: int = N) -> None:
    """`n` allocations of distinct 512-byte blocks at `base` (no layout model: sizes are rounded requests), at
    times t0, t0 + 1, ..."""
    feed(lib, {"action": np.zeros(n, dtype=np.int32), "addr": (base + 4096 * np.arange(n)).astype(np.uint64),
               "size": np.full(n, 500, dtype=np.uint64), "t_ns": t0 + np.arange(n, dtype=np.int64),
               "ctx": np.full(n, 7, dtype=np.int64)})


def _faults_recording(lib, base: int, t0: int, n: int = N) -> int:
    """Minor page faults this thread takes recording `n` events (the event columns built beforehand)."""
    cols = {"action": np.zeros(n, dtype=np.int32), "addr": (base + 4096 * np.arange(n)).astype(np.uint64),
            "size": np.full(n, 500, dtype=np.uint64), "t_ns": t0 + np.arange(n, dtype=np.int64),
            "ctx": np.full(n, 7, dtype=np.int64)}
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    feed(lib, cols)
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before


def test_after_the_first_drain_recording_neither_regrows_a_buffer_nor_faults_in_pages(lib):
    # the thread that records does so inside the allocator's lock: a regrown buffer (a copy of tens of MB) or fresh
    # pages (a fault each 4 KB) stall the model there. Each drain makes the next buffer ready on its own thread,
    # with room for 1.5x the interval it drains, its pages written
    _record(lib, 1 << 30, 1_000)  # the first interval grows a buffer from nothing (faults or not: malloc may reuse)
    first, spare = _capacity(lib)
    assert first >= N and spare == 0

    batch = drain_columns(lib)[0]
    assert batch.entries == N and batch.first_id == 1
    ready = _capacity(lib)[0]
    assert _capacity(lib) == (N + N // 2, first)  # a ready buffer swapped in; the drained one kept, emptied

    second_faults = _faults_recording(lib, 2 << 30, 2_000_000)
    assert _capacity(lib)[0] == ready  # N events went in without growing it
    assert second_faults < 20  # and without faulting (before session 18: ~1,100 here, a second buffer grown from nothing)
    batch = drain_columns(lib)[0]
    assert batch.first_id == N + 1 and batch.a_t.tolist() == list(range(2_000_000, 2_000_000 + N))
    assert _capacity(lib) == (first, ready)  # the first buffer (room for 1.25x N) is back, empty

    third_faults = _faults_recording(lib, 3 << 30, 4_000_000)
    assert _capacity(lib) == (first, ready) and third_faults < 20
    batch = drain_columns(lib)[0]
    assert batch.entries == N and batch.first_id == 2 * N + 1
    assert batch.a_size.tolist() == [512] * N and batch.a_ctx.tolist() == [7] * N
    assert batch.a_t.tolist() == list(range(4_000_000, 4_000_000 + N))

    # an interval 3x longer than the last: the drain before it could not know; the one after it readies a bigger one
    _record(lib, 4 << 30, 6_000_000, 3 * N)
    drain_columns(lib)
    assert _capacity(lib)[0] == 3 * N + 3 * N // 2

    # the last drain of a trace, recording stopped: no buffer is made ready for events that will not come
    _record(lib, 5 << 30, 8_000_000, 4 * N)
    lib.kvp_set_recording(0)
    held = _capacity(lib)[1]
    drain_columns(lib)
    assert _capacity(lib)[0] == held  # the spare swapped in as it was, not one for 6N


def test_a_reset_releases_both_buffers(lib):
    _record(lib, 1 << 30, 0)
    drain_columns(lib)
    _record(lib, 2 << 30, N)
    assert min(_capacity(lib)) >= N
    lib.kvp_reset(0, 0, 0, 1)
    assert _capacity(lib) == (0, 0)


def test_events_recorded_while_another_thread_drains_each_come_out_once_in_order(lib):
    """The record path's lock against a drain's swap: ctypes releases the GIL, so the two threads really
    overlap; every event recorded comes out of exactly one drain, times in recording order."""
    chunks, per_chunk = 200, 1_000
    done, drained = threading.Event(), threading.Event()
    batches = []

    def record() -> None:
        for c in range(chunks):
            if c and c % 50 == 0:  # a drain lands mid-recording at least 3 times, however threads are scheduled
                drained.clear()
                drained.wait(30)
            _record(lib, (1 << 32) + c * per_chunk * 4096, c * per_chunk, per_chunk)
        done.set()

    recorder = threading.Thread(target=record)
    recorder.start()
    while not done.is_set():
        batches.append(drain_columns(lib)[0])
        drained.set()
    recorder.join()
    batches.append(drain_columns(lib)[0])

    assert sum(b.entries for b in batches) == chunks * per_chunk
    assert len(batches) >= 4
    times = np.concatenate([b.a_t for b in batches])
    assert times.tolist() == list(range(chunks * per_chunk))


def test_the_traced_threads_binding_keeps_the_gil_and_shares_the_recorder():
    """The calls a stage boundary makes (counters, marks, retags) go through `hold_gil`'s binding, whose functions
    ctypes calls without releasing the GIL (so a waiting drain or sampler thread cannot take it mid-stage); it is
    the same loaded library as the drain's binding, whose calls release the GIL: one context, one buffer."""
    quick, slow = native.load(cuda=False, hold_gil=True), native.load(cuda=False)
    assert quick is not slow and quick is native.load(cuda=False, hold_gil=True)
    for fn in ("kvp_retag", "kvp_record"):
        assert getattr(quick, fn)._flags_ & ctypes._FUNCFLAG_PYTHONAPI
    assert not slow.kvp_drain._flags_ & ctypes._FUNCFLAG_PYTHONAPI
    ctx_quick, ctx_slow = (ctypes.c_int64.in_dll(lib, "kvp_context") for lib in (quick, slow))
    before = ctx_slow.value
    try:
        ctx_quick.value = 424242
        assert ctx_slow.value == 424242
    finally:
        ctx_slow.value = before


def test_a_native_session_makes_its_boundary_calls_with_the_gil_held(tmp_path, monkeypatch):
    """On the native tracker the session's device-time marks and the tracker's retags and counters use the
    GIL-holding binding; drains use the releasing one."""
    from fake_cuda_allocator import FakeCachingAllocator, install_native
    from tracers import TraceSession

    install_native(monkeypatch, FakeCachingAllocator())
    s = TraceSession(tmp_path / "t", {"run_id": "gil"}, "cpu", tracker="native", drain_at_checkpoints=False)
    s.start()
    try:
        tracker = s._cuda
        assert tracker.quick_lib.kvp_retag._flags_ & ctypes._FUNCFLAG_PYTHONAPI
        assert not tracker.lib.kvp_drain._flags_ & ctypes._FUNCFLAG_PYTHONAPI
    finally:
        s.close("complete")
