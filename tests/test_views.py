"""The trace's views (kvprof.read.views): stored at close, they give exactly the numbers the tables
give, on a real tiny trace and on a synthetic CUDA-shaped one (benchmarks/synthetic_trace.py);
a trace without them, or whose tables changed since, is read from its tables."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark_scripts import load
from kvprof.diagnose import diagnose
from kvprof.read.analysis import find_peak, reconcile, summarize, timeline
from kvprof.read.phases import OUTSIDE, allocation_phases, downsampled_timeline, envelope, phase_peaks
from kvprof.read.report import markdown_report
from kvprof.read.trace import Trace, load_trace
from kvprof.read.views import VIEWS_FILE, compute_views, load_views, write_views
from tracers.categories import CATEGORIES
from tracers.trace_fold import NO_FREE
from tracers.trace_io import read_raw_trace
from tui.model import build_view


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A closed CUDA-shaped trace of 200k allocation rows with its views written, as at close."""
    folder = load("synthetic_trace").build_trace(tmp_path_factory.mktemp("syn") / "syn", 200_000, chunks=4, layers=6)
    write_views(Trace(read_raw_trace(folder)))
    return folder


@pytest.fixture(scope="module")
def tiny(trace_factory) -> Path:
    return trace_factory(method="kivi_int4", decode=True)


def _full(folder: Path) -> Trace:
    """The trace read from its tables, views computed from them (what an old trace gets)."""
    return Trace(read_raw_trace(folder))


def _reference(trace: Trace) -> dict:
    """The numbers, the slow way: every event in a DataFrame, live bytes per category summed whole."""
    a = trace.allocations
    ev = pd.concat([pd.DataFrame({"q": a["q_alloc"], "d": a["bytes"], "c": a["category"], "id": a["id"]}),
                    pd.DataFrame({"q": a["q_free"], "d": -a["bytes"], "c": a["category"], "id": a["id"]})[a["q_free"] != NO_FREE]],
                   ignore_index=True).sort_values("q", kind="stable").reset_index(drop=True)
    live = ev["d"].cumsum().to_numpy()
    i = int(np.argmax(live))
    q = int(ev["q"].iat[i])
    at = a[(a["q_alloc"] <= q) & ((a["q_free"] == NO_FREE) | (a["q_free"] > q))]
    by_cat = at.groupby("category")["bytes"].sum()
    cat_max = {str(c): int(ev["d"].where(ev["c"] == c, 0).cumsum().max()) for c in ev["c"].unique()}
    phase = ev["id"].map(allocation_phases(trace)).where(ev["d"] > 0)
    phases = {}
    for name in phase.dropna().unique():
        idx = np.flatnonzero((phase == name).to_numpy())
        phases[name] = int(live[idx].max())
    counters = trace.counters
    pos = np.searchsorted(ev["q"].to_numpy(), counters["q"].to_numpy(), side="right") - 1
    return {"peak": int(live[i]), "q": q, "by_category": {str(k): int(v) for k, v in by_cat.items() if v},
            "category_max": cat_max, "phases": phases, "counter_live": np.where(pos >= 0, live[np.clip(pos, 0, None)], 0)}


@pytest.mark.parametrize("which", ["tiny", "synthetic"])
def test_views_are_the_numbers_of_the_tables(which: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(which)
    trace = _full(folder)
    ref = _reference(trace)
    views = compute_views(trace)
    peak = find_peak(trace)
    assert peak is not None and (peak.bytes, peak.q) == (ref["peak"], ref["q"])
    assert peak.by_category == dict(sorted(ref["by_category"].items(), key=lambda kv: (-kv[1], kv[0])))
    assert views.category_max == ref["category_max"]
    assert dict(zip(views.phase_peaks["phase"], views.phase_peaks["peak_bytes"])) == ref["phases"]
    assert views.counter_live.tolist() == ref["counter_live"].tolist()
    wide = timeline(trace)
    for cat in CATEGORIES:  # each phase peak's categories, the envelope's rows: the whole timeline's values
        rows = wide.set_index("q").loc[views.phase_peaks["q"], cat].to_numpy()
        assert (views.phase_peaks[cat].to_numpy() == rows).all(), cat
    pd.testing.assert_frame_equal(downsampled_timeline(trace), envelope(wide, "t_ns", "total", 1500).assign(
        t_s=lambda d: d["t_ns"] / 1e9), check_dtype=False)
    for axis, tl in views.timelines.items():
        for cat, line in tl["by_category"].items():
            assert (wide[cat].to_numpy()[tl["index"]] == line).all(), (axis, cat)
    if which == "synthetic":  # counters read at stage boundaries reconcile exactly, as the generator made them
        rec = reconcile(trace, peak)
        assert (rec.max_abs_gap_bytes, rec.peak_gap_bytes, rec.boundaries) == (0, 0, len(trace.counters))


@pytest.mark.parametrize("which", ["tiny", "synthetic"])
def test_stored_views_give_what_the_tables_give(which: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(which)
    stored, full = load_trace(folder), _full(folder)
    assert stored.known_views is not None and "allocations" not in stored.raw.tables  # rows left unread
    assert summarize(stored).to_dict() == summarize(full).to_dict()
    assert diagnose(stored).to_json() == diagnose(full).to_json()
    assert markdown_report([stored]) == markdown_report([full])
    pd.testing.assert_frame_equal(phase_peaks(stored), phase_peaks(full))
    a, b = build_view(stored), build_view(full)
    assert (a.peak, a.peak_event, a.n_events) == (b.peak, b.peak_event, b.n_events)
    assert a.breakdown_at_event(a.peak_event) == b.breakdown_at_event(b.peak_event)
    assert (a.event_live(a.peak_event), a.event_t_ns(a.peak_event), a.stage_of_event(a.peak_event)) == (
        int(b.events_live[b.peak_event]), int(b.events_t_ns[b.peak_event]), b.stage_of_event(b.peak_event))
    for tl_a, tl_b in ((a.timeline, b.timeline), (a.timeline_time, b.timeline_time)):
        assert (tl_a.index == tl_b.index).all() and (tl_a.total == tl_b.total).all()
        assert tl_a.by_category.keys() == tl_b.by_category.keys()
        assert all((tl_a.by_category[c] == tl_b.by_category[c]).all() for c in tl_a.by_category)
        assert (tl_a.stage_band, tl_a.pass_band) == (tl_b.stage_band, tl_b.pass_band)
    assert "allocations" not in stored.raw.tables  # none of the first screens read the rows
    pd.testing.assert_frame_equal(stored.allocations, full.allocations)  # read when asked for


def test_the_recorder_writes_views_that_hold_for_the_trace(tiny: Path) -> None:
    assert (tiny / VIEWS_FILE).is_file()
    assert load_views(tiny) is not None


def test_a_trace_without_views_or_with_changed_tables_is_read_from_its_tables(synthetic: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(synthetic, old)
    (old / VIEWS_FILE).unlink()
    trace = load_trace(old)
    assert trace.known_views is None and "allocations" in trace.raw.tables
    expected = summarize(trace).to_dict()
    assert expected == summarize(load_trace(synthetic)).to_dict()

    edited = tmp_path / "edited"
    shutil.copytree(synthetic, edited)
    a = pd.read_parquet(edited / "allocations.parquet")
    weight = int(a.index[a["category"] == "weights"][0])
    a.loc[weight, "bytes"] += 4096  # a weight, live from setup on, grows: the stored peak no longer holds
    a.to_parquet(edited / "allocations.parquet", index=False)
    assert load_views(edited) is None
    assert find_peak(load_trace(edited)).bytes == find_peak(load_trace(synthetic)).bytes + 4096

    stored = json.loads((synthetic / VIEWS_FILE).read_text())
    stored["peak"]["bytes"] += 1  # well-formed, wrong: its digest tells
    for damage in (b"{not json", json.dumps({"version": 1}).encode(), json.dumps([1, 2]).encode(), json.dumps(stored).encode()):
        (old / VIEWS_FILE).write_bytes(damage)
        assert load_views(old) is None
        assert summarize(load_trace(old)).to_dict() == expected


def test_a_trace_with_no_allocations_has_empty_views(tmp_path: Path) -> None:
    folder = load("synthetic_trace").build_trace(tmp_path / "syn", 50_000, chunks=1, layers=1)
    trace = _full(folder)
    empty = trace.allocations.iloc[:0]
    trace.raw.tables["allocations"] = empty
    views = compute_views(trace)
    assert views.peak is None and views.n_events == 0 and views.phase_peaks.empty and views.envelope.empty
    assert views.live_at_end == {} and views.category_max == {} and (views.counter_live == 0).all()
    assert OUTSIDE not in set(views.phase_peaks["phase"])
