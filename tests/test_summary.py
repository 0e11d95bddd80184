"""One summary (issue 14 deliverable 4): the typed Summary round-trips through its one writer and
loader, loads older summaries, refuses a damaged field by name; one breakdown() of live bytes;
the TUI's comparison row is compare's; one status from an exception."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kvprof.api import failure_state
from kvprof.read.analysis import breakdown, find_peak, summarize
from kvprof.read.compare import trace_row
from kvprof.read.summary import KVBytes, Summary, load_summary, write_summary
from kvprof.read.trace import TraceError, load_trace
from tracers.outcome import status_of
from tracers.session import SimulatedOOM
from tracers.trace_io import NO_FREE
from tui.model import COMPARE_COLUMNS, build_view, compare_row


def test_summary_round_trips_and_keeps_its_json(bf16_trace: Path, tmp_path: Path) -> None:
    on_disk = json.loads((bf16_trace / "summary.json").read_text())
    s = load_summary(bf16_trace)
    assert isinstance(s, Summary) and isinstance(s.kv, KVBytes)
    assert s.to_dict() == on_disk and list(s.to_dict()) == list(on_disk)  # the JSON shape, key order included
    assert write_summary(tmp_path, s) == tmp_path / "summary.json"
    assert load_summary(tmp_path) == s
    assert json.loads((tmp_path / "summary.json").read_text()) == on_disk
    # what summarize() computes from the tables is what the writer wrote, less what writers add
    assert summarize(load_trace(bf16_trace)) == replace(s, notes=None)
    assert load_trace(bf16_trace).summary == s
    assert s.peak.bytes > 0 and s.kv.logical_dtype == "float32" and s.reconciliation.tracker == "dispatch"


def test_an_older_summary_without_newer_fields_loads(bf16_trace: Path, tmp_path: Path) -> None:
    folder = tmp_path / "old"
    shutil.copytree(bf16_trace, folder)
    old = json.loads((folder / "summary.json").read_text())
    del old["kv"]["logical_dtype"], old["kv"]["chunk"], old["allocation_events"], old["notes"], old["kv_per_chunk"]
    del old["peak"]["by_pass"], old["peak"]["q"], old["reconciliation"]
    (folder / "summary.json").write_text(json.dumps(old))
    s = load_trace(folder).summary
    assert s.kv.logical_dtype is None and s.kv.chunk is None and s.allocation_events is None and s.notes is None
    assert s.peak.by_pass == {} and s.peak.bytes == old["peak"]["bytes"] and s.reconciliation.tracker is None
    assert s.kv.stored_bytes == old["kv"]["stored_bytes"]


@pytest.mark.parametrize("field,value", [("peak.by_stage", {"rollout": "big"}), ("kv.stored_bytes", -1),
                                         ("stage_times", {"a": 1}), ("notes", [3])])
def test_a_damaged_field_is_refused_by_name(bf16_trace: Path, tmp_path: Path, field: str, value: object) -> None:
    data = json.loads((bf16_trace / "summary.json").read_text())
    outer, _, inner = field.partition(".")
    if inner:
        data[outer][inner] = value
    else:
        data[outer] = value
    (tmp_path / "summary.json").write_text(json.dumps(data))
    with pytest.raises(TraceError, match=rf"summary\.json: field '{field}'"):
        load_summary(tmp_path)
    with pytest.raises(TraceError, match=rf"field '{field}'"):
        Summary.from_dict(data)


def test_quality_and_host_profile_are_typed_updates(bf16_trace: Path, tmp_path: Path) -> None:
    s = load_summary(bf16_trace)
    t = s.with_quality({"missing": "why"}).with_host_profile({"status": "unavailable"}).with_notes("n")
    assert s.quality is None and t.quality == {"missing": "why"} and t.notes == (*s.notes, "n")
    write_summary(tmp_path, t)
    d = json.loads((tmp_path / "summary.json").read_text())
    assert list(d)[-3:] == ["notes", "host_profile", "quality"] and load_summary(tmp_path) == t


# ---------------------------------------------------------------------- one breakdown()
def _expected(trace, q: int) -> tuple[int, dict, dict, dict]:
    """Live bytes after q by category / stage kind path / pass, from the raw tables alone."""
    spans = trace.raw.tables["spans"]
    name = dict(zip(spans["id"].astype(int), spans["name"].astype(str)))
    parent = dict(zip(spans["id"].astype(int), spans["parent"].astype(int)))

    def chain(sid: int) -> list[str]:
        out = []
        while sid in name:
            out.append(name[sid])
            sid = parent[sid]
        return out[::-1]

    a = trace.raw.tables["allocations"]
    live = a[(a["q_alloc"] <= q) & ((a["q_free"] == NO_FREE) | (a["q_free"] > q))]
    cat: dict[str, int] = {}
    stage: dict[str, int] = {}
    passes: dict[str, int] = {}
    for c, sid, n in zip(live["category"], live["span_id"], live["bytes"]):
        names = chain(int(sid))
        kind = "/".join(names) or "(outside stages)"
        pas = next((x for x in reversed(names) if x in ("denoise", "refresh")), "outside chunks")
        for d, k in ((cat, str(c)), (stage, kind), (passes, pas)):
            d[k] = d.get(k, 0) + int(n)
    drop = lambda d: {k: v for k, v in d.items() if v}  # noqa: E731
    return int(live["bytes"].sum()), drop(cat), drop(stage), drop(passes)


def test_one_breakdown_for_summary_tui_and_failure_state(bf16_trace: Path) -> None:
    trace = load_trace(bf16_trace)
    peak = find_peak(trace)
    ev = trace.memory_events
    view = build_view(trace)
    for q in (peak.q, int(ev["q"].iat[len(ev) // 3]), int(ev["q"].iat[-1])):
        b = breakdown(trace, q)
        total, cat, stage, passes = _expected(trace, q)
        assert (b.total, b.by_category, b.by_stage, b.by_pass) == (total, cat, stage, passes)
        assert list(b.by_category.values()) == sorted(b.by_category.values(), reverse=True)
        event = int((ev["q"] == q).to_numpy().nonzero()[0][0])
        assert view.breakdown_at_event(event) == b  # the TUI's cursor
        st = failure_state(trace, q)  # what an oom / failed run's summary says was live
        assert (st["live_bytes"], st["live_by_category"], st["live_by_stage"]) == (total, cat, stage)
    assert (peak.by_category, peak.by_stage, peak.by_pass) == _expected(trace, peak.q)[1:]
    assert sum(peak.by_pass.values()) == peak.bytes and set(peak.by_pass) <= {"denoise", "refresh", "outside chunks"}


def test_tui_compare_row_is_compares_row(bf16_trace: Path) -> None:
    trace = load_trace(bf16_trace)
    row, full = compare_row(build_view(trace)), trace_row(trace)
    assert set(row) == set(COMPARE_COLUMNS) and "time_s" not in row
    assert all(row[k] == full[k] for k in COMPARE_COLUMNS if k not in ("trace", "quality"))
    assert row["wall_s"] == trace.meta["wall_s"] and row["quality"] == "not computed"


def test_status_of_an_exception() -> None:
    assert status_of(None) == "complete"
    assert status_of(torch.OutOfMemoryError("x")) == status_of(SimulatedOOM(1, 2, 3)) == "oom"
    assert status_of(KeyboardInterrupt()) == "interrupted"
    assert status_of(RuntimeError("boom")) == "failed"


def test_trace_list_reads_the_summary_through_the_loader(bf16_trace: Path, tmp_path: Path) -> None:
    from tui.model import trace_listing

    folder = tmp_path / "damaged"
    shutil.copytree(bf16_trace, folder)
    data = json.loads((folder / "summary.json").read_text())
    assert trace_listing([bf16_trace])[0]["peak_bytes"] == data["peak"]["bytes"]
    data["peak"]["bytes"] = "many"  # once shown as no peak and no word why
    (folder / "summary.json").write_text(json.dumps(data))
    row = trace_listing([folder])[0]
    assert row["peak_bytes"] is None and "field 'peak.bytes'" in row["note"]
