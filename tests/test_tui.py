"""The Textual TUI (issue 4): kvprof.read.live, every key and every view (lifecycle, damaged and live traces: test_tui_app.py)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import torch

import tracers
from kvprof.read.analysis import find_peak, stage_times, timeline
from kvprof.read.live import TraceFollower
from kvprof.read.trace import load_trace
from kvprof.units import fmt_bytes
from tracers import TraceSession
from tracers.trace_io import EVENTS_FILE, tables_from_records
from tui.app import VIEW_NAMES, KvprofApp
from tui.model import build_view, column_points
from tui.screens.help import HelpScreen
from tui.widgets.breakdown import BreakdownPanel
from tui.widgets.cursor import CursorPanel
from tui.widgets.kv import KVPanel
from tui.widgets.message import MessagePanel
from tui.widgets.quality import QualityPanel
from tui.widgets.table import FrameTable
from tui.widgets.timeline import MARGIN, TimelineChart, _run_length
from tui_pilot import (  # noqa: F401  (trace_copy, _cwd: fixtures)
    SIZE, _cwd, asyncio_test, opened, status, table, trace_copy, wait_for, write_small_trace,
)


# ---------------------------------------------------------------------- kvprof.read.live
def test_follower_reads_only_whole_new_lines(tmp_path: Path) -> None:
    session = TraceSession(tmp_path / "src", {"run_id": "src"})
    with session:
        with tracers.stage("rollout"), tracers.tag("activations"):
            kept = [torch.ones(256) for _ in range(5)]
        del kept
        session.checkpoint()  # the lines a follower of the running trace reads
        lines = (tmp_path / "src" / EVENTS_FILE).read_text().splitlines(keepends=True)
    live = tmp_path / "live"
    live.mkdir()
    meta = json.loads((tmp_path / "src" / "meta.json").read_text())
    (live / "meta.json").write_text(json.dumps({**meta, "status": "running"}))
    events = live / EVENTS_FILE
    events.write_text("")
    follower = TraceFollower(live)
    assert follower.poll()
    blob = "".join(lines)
    cut = len("".join(lines[:6])) + 10  # in the middle of line 7
    with open(events, "a") as f:
        f.write(blob[:cut])
    assert follower.poll()
    assert follower.state.records == 6 and follower.torn_tail
    offset = follower.offset
    assert not follower.poll() and follower.offset == offset  # nothing new: nothing parsed
    with open(events, "a") as f:
        f.write(blob[cut:])
    assert follower.poll() and not follower.torn_tail
    assert follower.state.records == len(lines)
    records = [json.loads(line) for line in lines]
    pd.testing.assert_frame_equal(follower.trace().allocations, tables_from_records(records)["allocations"])
    assert len(follower.trace().allocations) == 5


def test_timeline_points_are_the_analysis_timeline_and_hold_the_peak(bf16_trace: Path) -> None:
    trace = load_trace(bf16_trace)
    view = build_view(trace, buckets=256)
    wide = timeline(trace)
    for cat, line in view.timeline.by_category.items():
        assert (wide[cat].to_numpy()[view.timeline.index] == line).all(), cat
    peak = find_peak(trace)
    assert view.timeline.total.max() == peak.bytes
    assert view.peak_event is not None and view.events_q[view.peak_event] == peak.q
    for cols in (7, 80, 300):  # every chart width draws the peak
        assert view.timeline.total[column_points(view.timeline, cols)].max() == peak.bytes


def _band_tokens_are_whole_labels(labels: list[str]) -> None:
    """The band row of `labels` (one per column) shows each run's label whole or short, at the run's
    start, never cut and never touching the next one."""
    row = TimelineChart()._band_row("pass", labels, None).plain[MARGIN:]
    assert len(row) == len(labels)
    start = 0
    for label, n in _run_length(labels):
        head, _, tail = label.partition(" ")
        allowed = {"", label, head[:1] + tail if tail.isdigit() else head[:1]}
        cell = row[start:start + n]
        assert cell.rstrip() in allowed and (not cell.strip() or cell.endswith(" ")), (label, n, row)
        start += n


def test_pass_labels_never_collide_on_either_axis(bf16_trace: Path) -> None:
    # issue 16: on the time axis runs are 1-2 columns wide and the labels ran together ("d3rddddr").
    narrow = ["denoise 0"] * 2 + ["refresh"] + ["denoise 1"] * 3 + ["refresh"] * 2 + ["denoise 12"] * 3 + [""] * 2 \
        + ["chunk 3"] * 8 + ["decode"] * 1
    _band_tokens_are_whole_labels(narrow)
    view = build_view(load_trace(bf16_trace))
    for axis in ("events", "time"):
        tl = view.timeline_for(axis)
        for cols in (40, 129, 300):
            pts = column_points(tl, cols)
            _band_tokens_are_whole_labels([tl.pass_band[p] for p in pts])
            _band_tokens_are_whole_labels([tl.stage_band[p] for p in pts])


# ---------------------------------------------------------------------- views on the tiny rollout
@asyncio_test
async def test_timeline_shows_peak_categories_and_stage(bf16_trace: Path) -> None:
    peak = find_peak(load_trace(bf16_trace))
    app = KvprofApp([bf16_trace])
    async with app.run_test(size=SIZE) as pilot:
        await opened(pilot, app)
        chart = app.screen.query_one(TimelineChart)
        rendered = chart.render().plain
        assert chart.peak_label == f"peak {fmt_bytes(peak.bytes)}"
        assert f"peak {fmt_bytes(peak.bytes)} during {peak.stage}" in rendered
        assert "▼" in rendered and "chunk 0" in rendered and "decode" in rendered
        pass_row = next(line for line in rendered.splitlines() if line.strip().startswith("pass "))
        assert "d0" in pass_row or "denoise 0" in pass_row
        panel = app.screen.query_one(BreakdownPanel).text
        for cat in peak.by_category:
            assert cat in panel
        assert fmt_bytes(peak.by_category["weights"]) in panel
        info = app.screen.query_one(CursorPanel).text
        assert peak.stage in info and f"{peak.bytes:,} B" in info
        assert "complete" in status(app) and "last event" in status(app)


def _stages_in_cursor_panel(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("live at cursor by stage of origin"))
    return [line.split(None, 2)[2] for line in lines[start + 1:] if line.strip() and line.split()[0][0].isdigit()]


@asyncio_test
async def test_share_is_at_the_cursor_and_the_filter_narrows_the_stage_panel(bf16_trace: Path) -> None:
    # issue 16: "share" was the share at the peak wherever the cursor was, and `/` left the
    # "live at cursor by stage of origin" panel unfiltered while the chart was filtered.
    app = KvprofApp([bf16_trace])
    async with app.run_test(size=SIZE) as pilot:
        await opened(pilot, app)
        view = app.current_view()
        event = view.n_events // 4
        cur, peak = view.breakdown_at_event(event), view.peak
        assert any(abs(n / cur.total - peak.by_category.get(c, 0) / peak.bytes) > 0.01 for c, n in cur.by_category.items())
        app.cursors = {0: event}
        await wait_for(pilot, lambda: f"event {event + 1:,} of" in app.screen.query_one(CursorPanel).text, what="cursor")
        lines = app.screen.query_one(BreakdownPanel).text.splitlines()
        for cat, n in cur.by_category.items():
            line = next(line for line in lines if line.startswith(f"█ {cat} "))
            assert f" {100 * n / cur.total:.1f}%" in line, line
        assert len(_stages_in_cursor_panel(app.screen.query_one(CursorPanel).text)) > 1
        app.set_filter("kv_")
        await wait_for(pilot, lambda: "filter 'kv_'" in app.screen.query_one(CursorPanel).text, what="filtered panel")
        kv = view.breakdown_at_event(event, "kv_")
        assert kv.total and kv.total < cur.total
        assert _stages_in_cursor_panel(app.screen.query_one(CursorPanel).text) == list(kv.by_stage)
        assert fmt_bytes(kv.total) in app.screen.query_one(CursorPanel).text


def test_a_trace_that_has_started_is_loading_never_waiting(bf16_trace: Path, tmp_path: Path) -> None:
    # issue 16: a finished trace showed "Waiting for the trace ... to start" until its first read.
    for follow in (False, True):
        text, _ = KvprofApp([bf16_trace], follow=follow).message_for_current()
        assert text is not None and text.startswith("Loading") and "Waiting" not in text, text
    text, _ = KvprofApp([tmp_path / "not-written-yet"], follow=True).message_for_current()
    assert text is not None and text.startswith("Waiting for the trace")


@asyncio_test
async def test_cursor_keys_move_through_events_and_p_returns_to_peak(bf16_trace: Path) -> None:
    app = KvprofApp([bf16_trace])
    async with app.run_test(size=SIZE) as pilot:
        await opened(pilot, app)
        view = app.current_view()
        assert app.cursor_event() == view.peak_event  # a finished trace opens at its peak
        await pilot.press("left")
        await pilot.pause(0.15)
        left = app.cursor_event()
        assert left < view.peak_event
        await pilot.press("right")
        await pilot.pause(0.15)
        assert app.cursor_event() > left
        await pilot.press("shift+left")
        await pilot.pause(0.15)
        one_back = app.cursor_event()
        await pilot.press("shift+right")
        await pilot.pause(0.15)
        assert app.cursor_event() == one_back + 1
        await pilot.press("shift+left", "shift+left", "right")  # between drawn points, right still goes right
        await pilot.pause(0.15)
        assert app.cursor_event() > one_back - 1
        await pilot.press("home")
        await pilot.pause(0.15)
        assert app.cursor_event() == 0
        assert app.screen.query_one(CursorPanel).text.startswith("cursor event 1 of")
        assert "setup" in app.screen.query_one(CursorPanel).text
        await pilot.press("end")
        await pilot.pause(0.15)
        assert app.cursor_event() == view.n_events - 1
        await pilot.press("p")
        await pilot.pause(0.15)
        assert app.cursor_event() == view.peak_event
        assert fmt_bytes(view.peak.bytes) in app.screen.query_one(CursorPanel).text
        await pilot.press("t")  # x axis: host time; the peak is still drawn and the cursor still steps
        await pilot.pause(0.15)
        chart = app.screen.query_one(TimelineChart)
        assert app.x_axis == chart.axis == "time" and "time (s)" in chart.render().plain
        assert f"peak {fmt_bytes(view.peak.bytes)}" in chart.render().plain
        await pilot.press("left")
        await pilot.pause(0.15)
        assert app.cursor_event() < view.peak_event
        await pilot.press("t")
        await pilot.pause(0.15)
        assert chart.axis == "events"


@asyncio_test
async def test_tab_shift_tab_and_number_keys_switch_views(bf16_trace: Path) -> None:
    app = KvprofApp([bf16_trace])
    async with app.run_test(size=SIZE) as pilot:
        await opened(pilot, app)
        seen = [app.current_mode]
        for _ in VIEW_NAMES:
            await pilot.press("tab")
            await pilot.pause(0.05)
            seen.append(app.current_mode)
        assert seen == [*VIEW_NAMES, VIEW_NAMES[0]]
        await pilot.press("shift+tab")
        await pilot.pause(0.05)
        assert app.current_mode == VIEW_NAMES[-1]
        for i, name in enumerate(VIEW_NAMES):
            await pilot.press(str(i + 1))
            await pilot.pause(0.05)
            assert app.current_mode == name
            assert type(app.screen).VIEW == name


@asyncio_test
async def test_breakdown_view_at_cursor_and_at_peak(bf16_trace: Path) -> None:
    peak = find_peak(load_trace(bf16_trace))
    app = KvprofApp([bf16_trace])
    async with app.run_test(size=(100, 45)) as pilot:
        await opened(pilot, app)
        await pilot.press("2")
        await wait_for(pilot, lambda: table(app, "peak-category").shown_rows, what="breakdown rows")
        rows = {r["key"]: fmt_bytes(r["bytes"]) for r in table(app, "peak-category").shown_rows}
        assert rows == {c: fmt_bytes(b) for c, b in peak.by_category.items()}
        stages = [r["key"] for r in table(app, "peak-stage").shown_rows]
        assert stages[0] == max(peak.by_stage, key=peak.by_stage.get) and "rollout/decode" in stages
        assert [r["key"] for r in table(app, "peak-pass").shown_rows] == list(peak.by_pass)
        assert {r["key"] for r in table(app, "cursor-category").shown_rows} == set(peak.by_category)
        for t in app.screen.query(FrameTable):  # issue 16: "share" was cut to "shar", "77.4%" to "77.4" (100 columns)
            keys = [str(col.key.value) for col in t.ordered_columns]
            widths = [col.get_render_width(t) for col in t.ordered_columns]
            assert sum(widths[:keys.index("share") + 1]) <= t.scrollable_content_region.width, (t.id, keys, widths)
            assert all(col.get_render_width(t) >= len(c) + 2 for col, c in zip(t.ordered_columns, ("bytes", "share")))
        await pilot.press("home")
        await wait_for(pilot, lambda: "event 1," in str(table(app, "cursor-category").border_title), what="cursor move")
        at_start = {r["key"] for r in table(app, "cursor-category").shown_rows}
        assert "decode" not in at_start  # nothing of the decode is live at the first event


@asyncio_test
async def test_allocations_stages_and_kv_views(trace_copy: Path) -> None:
    trace = load_trace(trace_copy)
    peak = find_peak(trace, top=50)
    times = stage_times(trace)
    app = KvprofApp([trace_copy])
    async with app.run_test(size=SIZE) as pilot:
        await opened(pilot, app)
        await pilot.press("3")
        await wait_for(pilot, lambda: table(app, "allocations").shown_rows, what="allocation rows")
        cells = table(app, "allocations").cell_texts()
        assert len(cells) == len(peak.top_allocations)
        assert cells[0][1] == fmt_bytes(peak.top_allocations[0]["bytes"]) and cells[0][4] == peak.top_allocations[0]["stage"]
        await pilot.press("4")
        await wait_for(pilot, lambda: table(app, "stages").shown_rows, what="stage rows")
        by_stage = {r[0]: r for r in table(app, "stages").cell_texts()}
        assert set(by_stage) == set(times["stage"])
        assert by_stage["denoise"][1] == "16" and by_stage["refresh"][1] == "4"
        # a CPU trace has no device time: the share is of host time (it read "nan%" once device
        # time stopped repeating host time)
        shares = {r["stage"]: r["share"] for r in table(app, "stages").shown_rows}
        assert shares["rollout"] is not None and 0 < shares["rollout"] <= 100
        await pilot.press("5")
        await wait_for(pilot, lambda: app.screen.query_one(KVPanel).text, what="KV panel")
        kv = trace.summary.kv
        assert fmt_bytes(kv.resident_bytes) in app.screen.query_one(KVPanel).text
        assert "ratio logical/stored 1.00x" in app.screen.query_one(KVPanel).text
        assert "not computed" in app.screen.query_one(QualityPanel).text
        assert len(table(app, "kv-table").shown_rows) == len(trace.kv)


@asyncio_test
async def test_kv_view_lists_the_timelines_chunks_and_labels_the_logical_dtype(trace_copy: Path) -> None:
    # issue 16 §2: 4 chunks on the timeline but chunks 0-4 ("after chunk 4") in the KV view; and
    # "logical (BF16)" on a float32 rollout: the label is the dtype the summary says it counts at.
    summary = json.loads((trace_copy / "summary.json").read_text())
    summary["kv"]["logical_dtype"] = "float32"
    (trace_copy / "summary.json").write_text(json.dumps(summary))
    trace = load_trace(trace_copy)
    spans = trace.spans
    timeline_chunks = sorted(int(i) for i in spans.loc[spans["name"] == "chunk", "index"])
    assert timeline_chunks == [0, 1, 2, 3] and len(trace.kv) == 5
    app = KvprofApp([trace_copy])
    async with app.run_test(size=SIZE) as pilot:
        await opened(pilot, app)
        await pilot.press("5")
        await wait_for(pilot, lambda: table(app, "kv-table").shown_rows, what="KV rows")
        assert [r[0] for r in table(app, "kv-table").cell_texts()] == ["0", "1", "2", "3", "end"]
        panel = app.screen.query_one(KVPanel)
        assert "at the end of the rollout (4 chunks)" in panel.text and "chunk 4" not in panel.text
        assert "logical (float32)" in panel.text and "BF16" not in panel.text
        kv = dataclasses.replace(app.current_view().kv, logical_dtype=None)
        panel.show(kv, {}, "after chunk 1", None)  # a summary that does not say: plain "logical"
        assert "  logical  " in panel.text and "logical (" not in panel.text


@asyncio_test
async def test_quality_panel_shows_metrics_when_summary_has_them(trace_copy: Path) -> None:
    summary = json.loads((trace_copy / "summary.json").read_text())
    summary["quality"] = {"latent_psnr_db": 41.25, "lpips": {"missing": "backbone file not supplied"}}
    (trace_copy / "summary.json").write_text(json.dumps(summary))
    app = KvprofApp([trace_copy])
    async with app.run_test(size=SIZE) as pilot:
        await opened(pilot, app)
        await pilot.press("5")
        await wait_for(pilot, lambda: app.screen.query_one(QualityPanel).text, what="quality panel")
        text = app.screen.query_one(QualityPanel).text
        assert "latent_psnr_db" in text and "41.25" in text and "backbone file not supplied" in text
        assert "not computed" not in text


@asyncio_test
async def test_compare_view_sorts_by_any_column_and_selects(trace_copy: Path, tmp_path: Path) -> None:
    small = tmp_path / "traces" / "small"
    write_small_trace(small)
    app = KvprofApp([trace_copy, small])
    async with app.run_test(size=SIZE) as pilot:
        await opened(pilot, app)
        await pilot.press("6")
        await wait_for(pilot, lambda: len(table(app, "compare").shown_rows) == 2
                       and all(r.get("peak_bytes") for r in table(app, "compare").shown_rows), what="two compared traces")
        t = table(app, "compare")
        assert [r["trace"] for r in t.shown_rows] == [trace_copy.name, "small"]  # peak, largest first
        await pilot.press("r")
        await pilot.pause(0.05)
        assert [r["trace"] for r in t.shown_rows] == ["small", trace_copy.name]
        for col in t.cols:  # `s` walks every column; each sorts
            await pilot.press("s")
            await pilot.pause(0.02)
            keys = [r.get(t.sort_key) for r in t.shown_rows if r.get(t.sort_key) is not None]
            norm = keys if any(c.numeric for c in t.cols if c.key == t.sort_key) else [str(k).lower() for k in keys]
            assert norm == sorted(norm, reverse=t.sort_reverse), t.sort_key
        t.sort_by("trace", reverse=False)
        await pilot.pause(0.05)
        assert [r["trace"] for r in t.shown_rows] == sorted([trace_copy.name, "small"], key=str.lower)
        t.focus()
        t.move_cursor(row=[r["trace"] for r in t.shown_rows].index("small"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.current_mode == "timeline", what="timeline of the selected trace")
        assert app.current_source().path == small
        await pilot.press("left_square_bracket")
        await pilot.pause(0.15)
        assert app.current_source().path == trace_copy


@asyncio_test
async def test_filter_keeps_matching_rows_and_categories(bf16_trace: Path) -> None:
    app = KvprofApp([bf16_trace])
    async with app.run_test(size=SIZE) as pilot:
        await opened(pilot, app)
        before_mode, before_cursor = app.current_mode, app.cursor_event()
        await pilot.press("slash")
        await pilot.pause(0.05)
        await pilot.press("q", "1", "left", "right", "backspace", "backspace", "k", "v", "underscore", "enter")  # typed, not keys of the app
        await pilot.pause(0.2)
        assert app.is_running and app.current_mode == before_mode and app.cursor_event() == before_cursor
        assert app.filter_text == "kv_"
        assert app.screen.query_one(TimelineChart).categories == ["kv_fp"]
        panel = app.screen.query_one(BreakdownPanel).text
        assert "kv_fp" in panel and "weights" not in panel
        assert "filter 'kv_'" in status(app)
        await pilot.press("4")
        await wait_for(pilot, lambda: table(app, "stages").shown_rows, what="filtered stage rows")
        assert {r["stage"] for r in table(app, "stages").shown_rows} == {"kv_write", "kv_read"}
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert app.filter_text == "" and len(table(app, "stages").shown_rows) > 2


@asyncio_test
async def test_export_writes_the_current_view_as_csv(trace_copy: Path, tmp_path: Path) -> None:
    app = KvprofApp([trace_copy])
    async with app.run_test(size=SIZE) as pilot:
        await opened(pilot, app)
        await pilot.press("e")
        await pilot.pause(0.05)
        assert app.last_export == trace_copy / "kvprof-tui-timeline.csv"
        frame = pd.read_csv(app.last_export)
        assert {"event", "t_ns", "total_bytes", "weights", "decode", "stage", "pass"} <= set(frame.columns)
        assert frame["total_bytes"].max() == find_peak(load_trace(trace_copy)).bytes
        await pilot.press("4", "e")
        await pilot.pause(0.05)
        assert set(pd.read_csv(app.last_export)["stage"]) >= {"denoise", "refresh", "decode"}
        await pilot.press("2", "e")
        await pilot.pause(0.05)
        assert set(pd.read_csv(app.last_export)["where"]) == {"cursor", "peak"}
        await pilot.press("6", "e")
        await pilot.pause(0.05)
        assert app.last_export == tmp_path / "kvprof-tui-compare.csv"  # several traces: cwd
        assert pd.read_csv(app.last_export)["trace"].tolist() == [trace_copy.name]


@asyncio_test
async def test_help_lists_every_key_and_q_quits(bf16_trace: Path) -> None:
    app = KvprofApp([bf16_trace])
    async with app.run_test(size=SIZE) as pilot:
        await opened(pilot, app)
        await pilot.press("question_mark")
        await pilot.pause(0.05)
        assert isinstance(app.screen, HelpScreen)
        text = app.screen.text
        for key in ("q", "?", "tab", "shift+tab", "1", "7", "left", "right", "home", "end", "p", "t", "/", "e", "[", "]"):
            assert any(line.strip().startswith(key + " ") for line in text.splitlines()), key
        for words in ("quit", "next view", "time cursor", "peak", "filter", "export", "CSV"):
            assert words in text
        await pilot.press("question_mark")
        await pilot.pause(0.05)
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")
        await pilot.pause(0.05)
    assert app.return_value == 0


@asyncio_test
async def test_no_argument_lists_traces_and_enter_opens_one(trace_copy: Path) -> None:
    app = KvprofApp([], root=trace_copy.parent)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.current_mode == "traces" and table(app, "traces").shown_rows, what="trace list")
        rows = table(app, "traces").shown_rows
        assert [r["trace"] for r in rows] == [trace_copy.name] and rows[0]["status"] == "complete"
        await pilot.press("1")
        await pilot.pause(0.15)
        assert "No trace open" in app.screen.query_one(MessagePanel).text
        await pilot.press("7")
        await pilot.pause(0.1)
        table(app, "traces").focus()
        await pilot.press("enter")
        await opened(pilot, app)
        assert app.current_mode == "timeline"
        assert app.screen.query_one(TimelineChart).peak_label.startswith("peak ")


def test_a_followed_sweep_cell_moves_to_its_retry(bf16_trace: Path, tmp_path: Path) -> None:
    """`kvprof tui SWEEP --follow`: a cell whose first attempt was killed is followed into its retry
    (`<cell>.a2`), and only that attempt's `complete` ends the following."""
    import json
    import shutil

    from kvprof.read.manifest import attempts
    from tui.source import TraceSource

    root = tmp_path / "traces"
    killed = root / "bf16-tiny"
    shutil.copytree(bf16_trace, killed)
    meta = json.loads((killed / "meta.json").read_text())
    (killed / "meta.json").write_text(json.dumps(meta | {"status": "running", "pid": 2**22 + 12345, "host": meta["host"]}))
    src = TraceSource(killed, wait_for_start=True, newest=lambda: root / attempts(root, "bf16-tiny")[-1])
    src.refresh()
    assert src.path == killed and src.state.status == "killed" and not src.finished  # a retry may come
    shutil.copytree(bf16_trace, root / "bf16-tiny.a2")
    assert src.refresh()
    assert src.path == root / "bf16-tiny.a2" and src.view is not None and src.state.status == "complete"
    for _ in range(3):
        src.refresh()
    assert src.finished
