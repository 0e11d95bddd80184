"""The native recorder's streamed trace at scale: equal to the one-shot Python replay of the same
history, readable after a kill mid-stream, and host memory that does not grow with the events."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

from fake_cuda_allocator import FakeCachingAllocator, install, install_native
from kvprof.read.trace import load_trace
from stream_history import as_history_entries, feed, stack_history
from tracers import TraceSession, stage
from tracers.alloc_parts import PARTS_DIR

ROOT = Path(__file__).resolve().parents[1]


def _open_contexts(s: TraceSession, n: int) -> list[int]:
    """Open and close `n` stages; the context numbers the events of each will carry."""
    out = []
    with stage("rollout"):
        for i in range(n):
            with stage("chunk", i):
                out.append(s._ctx)
    return out


def test_streamed_trace_equals_the_one_shot_replay_of_a_million_events(tmp_path, monkeypatch):
    tables, spans, counters, running = {}, {}, {}, {}
    for rec in ("allocator", "native"):
        f = FakeCachingAllocator()
        (install_native if rec == "native" else install)(monkeypatch, f)
        s = TraceSession(tmp_path / rec, {"run_id": rec}, "cpu", tracker=rec, drain_at_checkpoints=False)
        s.start()
        s._t0_unix_ns -= s._t0_unix_ns % 1000  # whole microseconds: both clocks give the same trace times
        ctxs = _open_contexts(s, 8)
        base, events, batches = None, 0, []
        for i, ctx in enumerate(ctxs):
            cols, base = stack_history(42_000, base=base or 1 << 40, t0=s.t0_perf_ns + 10**9 + i * 10**9, ctx=ctx,
                                       seed=i, segment=i == 0)
            batches.append(cols)
            events += len(cols["action"])
        if rec == "native":
            for cols in batches:
                feed(f.native, cols)
                s._cuda.drain()  # one part per batch (the drain thread may add its own)
        else:
            f.trace = [e for cols in batches for e in as_history_entries(cols, s.t0_unix_ns, s.t0_perf_ns)]
        s.close("complete")
        running[rec] = (s.live_bytes, s.peak_bytes)  # the session's running totals (budgets, progress)
        trace = load_trace(tmp_path / rec)
        tables[rec] = trace.allocations.sort_values("id").reset_index(drop=True)
        # the streamed trace folds its stage and counter records when the drain thread flushes, not as they come
        spans[rec] = trace.spans[["id", "parent", "name", "index", "q_start", "q_end"]]
        counters[rec] = trace.counters[["q", "span_id", "allocated_bytes", "reserved_bytes"]]
    assert events >= 1_000_000
    native, one_shot = tables["native"], tables["allocator"]
    assert len(native) == 8 * 42_000 and (native["q_free"] == -1).sum() == 8 * (42_000 // 97)
    pd.testing.assert_frame_equal(native, one_shot)
    # the native drains sum their bytes outside the session's lock, then advance the running totals under it: the same
    # live bytes and peak as the one-shot replay, and as the rows themselves say
    ends = native[["q_alloc", "bytes"]].rename(columns={"q_alloc": "q"})
    frees = native.loc[native["q_free"] != -1, ["q_free", "bytes"]].rename(columns={"q_free": "q"})
    frees["bytes"] = -frees["bytes"]
    walk = pd.concat([ends, frees]).sort_values("q", kind="stable")["bytes"].cumsum()
    assert running["native"] == running["allocator"] == (int(walk.iloc[-1]), int(walk.max()))
    assert len(spans["native"]) == 9 and len(counters["native"]) == 18  # rollout + 8 chunks; counters at each boundary
    pd.testing.assert_frame_equal(spans["native"], spans["allocator"])
    pd.testing.assert_frame_equal(counters["native"], counters["allocator"])


def test_streamed_parts_are_written_in_the_trace_s_encodings_with_lz4(tmp_path, monkeypatch):
    # The drain thread writes a part every drain beside the model's thread. Parquet's defaults (a dictionary tried on
    # every int64 column, then zstd) cost it ~4x the CPU for ~8x the bytes (session 14): the parts use the trace's
    # delta and dictionary encodings with LZ4, and the close re-encodes their rows with zstd.
    import pyarrow.parquet as pq

    f = FakeCachingAllocator()
    install_native(monkeypatch, f)
    s = TraceSession(tmp_path / "t", {"run_id": "parts"}, "cpu", tracker="native", drain_at_checkpoints=False)
    s.start()
    cols, _ = stack_history(130_000, base=1 << 40, t0=s.t0_perf_ns + 10**9, ctx=_open_contexts(s, 1)[0], seed=0, segment=True)
    feed(f.native, cols)
    s._cuda.drain()
    (part,) = (tmp_path / "t" / PARTS_DIR).iterdir()
    meta = pq.ParquetFile(part).metadata
    columns = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i) for i in range(meta.num_columns)}
    assert meta.num_rows == 130_000 and {c.compression for c in columns.values()} <= {"LZ4", "LZ4_RAW"}
    assert "DELTA_BINARY_PACKED" in columns["q_alloc"].encodings and "DELTA_BINARY_PACKED" in columns["t_alloc_ns"].encodings
    assert "RLE_DICTIONARY" in columns["category"].encodings and not columns["q_alloc"].is_stats_set
    assert part.stat().st_size < 6 * 130_000  # ~2.6 B a row here; the old parts took ~20
    size = part.stat().st_size
    s.close("complete")
    assert len(load_trace(tmp_path / "t").allocations) == 130_000
    # the disk the run needed for its parts, kept in meta after the close removed them
    assert json.loads((tmp_path / "t" / "meta.json").read_text())["allocator_layout"]["parts_bytes"] == size


def test_a_streamed_trace_leaves_folding_its_stage_records_to_the_drain_thread(tmp_path, monkeypatch):
    import tracers.alloc_native as native_tracker

    install_native(monkeypatch, FakeCachingAllocator())
    monkeypatch.setattr(native_tracker.NativeCudaTracker, "_run", lambda self: None)  # no background drains here
    s = TraceSession(tmp_path / "t", {"run_id": "t"}, "cpu", tracker="native", drain_at_checkpoints=False)
    s.start()
    _open_contexts(s, 8)
    log = s._log
    assert len(log.folder.spans) == 0 and not log.folder.counters  # the model thread only queued tuples
    assert [r[0] for r in log._queued][:4] == ["b", "m", "b", "m"] and len(log._queued) == 36
    s.checkpoint()  # a chunk's end, nobody following: the model thread leaves the lines to the drain thread too
    assert len(log._queued) == 36
    s.flush_log()  # what the drain thread does after each drain
    assert len(log.folder.spans) == 9 and len(log.folder.counters) == 18 and not log._queued
    lines = [json.loads(line) for line in (tmp_path / "t" / "events.jsonl").read_text().splitlines()]
    assert [r["k"] for r in lines if r["k"] in "bem"].count("m") == 18
    s.close("complete")
    assert len(load_trace(tmp_path / "t").spans) == 9


# The start of each subprocess below: the fake allocator's events go to the native recorder's core,
# torch.cuda's memory calls are served by the fake (no CUDA here).
_FAKE_CUDA = textwrap.dedent("""
    import json, os, resource, signal, sys
    sys.path[:0] = [{tests!r}, {root!r}]
    from fake_cuda_allocator import FakeCachingAllocator, native_core
    from stream_history import feed, stack_history
    import torch
    from tracers import TraceSession
    f = FakeCachingAllocator(); f.native = native_core()
    torch.cuda.memory._snapshot = f.snapshot
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.reset_peak_memory_stats = lambda *a, **k: None
    torch.cuda.memory_allocated = lambda *a, **k: 0
""")


_KILLED = _FAKE_CUDA + textwrap.dedent("""
    s = TraceSession({folder!r}, {{"run_id": "killed"}}, "cpu", tracker="native", drain_at_checkpoints=False)
    s.start()
    base = 1 << 40
    for i in range(3):
        cols, base = stack_history(20_000, base=base, t0=s.t0_perf_ns + i * 10**9, ctx=0, seed=i, segment=i == 0)
        feed(f.native, cols)
        s._cuda.drain()
        s.flush_log()
    # the fourth batch is recorded, never drained: lost with the process
    feed(f.native, stack_history(5_000, base=base, t0=s.t0_perf_ns + 9 * 10**9, seed=9, segment=False)[0])
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_run_killed_mid_stream_leaves_a_readable_trace_of_what_was_streamed(tmp_path):
    folder = tmp_path / "killed"
    code = _KILLED.format(tests=str(ROOT / "tests"), root=str(ROOT), folder=str(folder))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(list((folder / PARTS_DIR).iterdir())) == 3 and (folder / "events.jsonl").is_file()
    trace = load_trace(folder)
    assert trace.status == "killed"
    al = trace.allocations
    assert len(al) == 3 * 20_000 and al["id"].is_unique
    assert (al["q_free"] == -1).sum() == 3 * (20_000 // 97)  # the pinned blocks; every temporary freed
    assert (al["bytes"] % 512 == 0).all() and al["bytes"].min() >= 1 << 20


_RSS = _FAKE_CUDA + textwrap.dedent("""
    import pandas, pyarrow.parquet  # noqa: F401  (loaded before the baseline reading)
    s = TraceSession({folder!r}, {{"run_id": "rss"}}, "cpu", tracker="native", drain_at_checkpoints=False)
    s.start()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    base, events = 1 << 40, 0
    for i in range({batches}):
        cols, base = stack_history(100_000, base=base, t0=s.t0_perf_ns + i * 10**9, ctx=0, seed=i, segment=i == 0)
        events += len(cols["action"])
        feed(f.native, cols)
        del cols
        s._cuda.drain()
    s.close("complete")
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"events": events, "growth_bytes": (rss1 - rss0) * 1024, "rows": s._parts.rows}}))
""")


def _rss_growth(tmp_path: Path, batches: int) -> dict:
    code = _RSS.format(tests=str(ROOT / "tests"), root=str(ROOT), folder=str(tmp_path / f"rss{batches}"), batches=batches)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_host_memory_of_a_streamed_trace_does_not_grow_with_its_events(tmp_path):
    """5 M events recorded, drained, streamed and merged at close: the process grows by less than
    250 MB over its state at the trace's start, and by less than 100 MB more than for 1 M events
    (the one-shot replay held every event as a Python dict: gigabytes at this size)."""
    small, large = _rss_growth(tmp_path, 4), _rss_growth(tmp_path, 17)
    assert small["events"] >= 1_000_000 and large["events"] >= 5_000_000
    assert large["rows"] == 17 * 100_000
    assert large["growth_bytes"] < 250 * 2**20, large
    assert large["growth_bytes"] - small["growth_bytes"] < 100 * 2**20, (small, large)
