"""The Textual TUI's lifecycle: damaged folders, the trace list, crashes, live traces, timers while closing."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from textual.app import App

from kvprof.read.analysis import find_peak
from kvprof.read.trace import load_trace
from tracers.trace_io import EVENTS_FILE
from tui.app import KvprofApp, run_tui
from tui.live_run import LiveRun
from tui.screens.breakdown import BreakdownScreen
from tui.widgets.message import MessagePanel
from tui.widgets.status import StatusLine
from tui.widgets.table import FrameTable
from tui.widgets.timeline import TimelineChart
from tui_pilot import (  # noqa: F401  (trace_copy, _cwd: fixtures)
    SIZE, _cwd, asyncio_test, opened, status, table, trace_copy, wait_for, write_small_trace,
)


# ---------------------------------------------------------------------- damaged folders
def _torn(folder: Path, src: Path) -> str:
    shutil.copy(src / "meta.json", folder / "meta.json")
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "status": "failed"}))
    lines = [json.dumps(r) for r in ({"k": "b", "id": 1, "p": 0, "n": "rollout", "i": None, "t": 1, "q": 1},
                                     {"k": "a", "id": 1, "t": 2, "q": 2, "b": 4096, "c": "activations", "s": 1})]
    (folder / EVENTS_FILE).write_text("\n".join(lines) + '\n{"k": "a", "id": 2, "t"')
    return "torn last record skipped"


def _corrupt(folder: Path, src: Path) -> str:
    shutil.copy(src / "meta.json", folder / "meta.json")
    (folder / EVENTS_FILE).write_text('{"k": "b", "id": 1, "p": 0, "n": "x", "i": null, "t": 1, "q": 1}\nnot json\n{"k": "e"}\n')
    return "line 2 is not a JSON record"


CASES: dict[str, Callable[[Path, Path], str]] = {
    "empty [b]": lambda folder, src: "no meta.json",  # a name that is not markup
    "missing": lambda folder, src: (folder.rmdir(), "no such directory")[1],
    "truncated-meta": lambda folder, src: ((folder / "meta.json").write_text('{"schema_version": "1.0", "stat'),
                                           "unreadable or truncated JSON")[1],
    "no-tables": lambda folder, src: (shutil.copy(src / "meta.json", folder / "meta.json"), "neither events.jsonl")[1],
    "torn": _torn,
    "corrupt": _corrupt,
}


@asyncio_test
async def test_damaged_folders_open_with_a_clear_message(bf16_trace: Path, tmp_path: Path) -> None:
    folders, expected = [], []
    for case, make in CASES.items():
        folder = tmp_path / case
        folder.mkdir()
        expected.append(make(folder, bf16_trace))
        folders.append(folder)
    app = KvprofApp(folders)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: all(s.error or s.view for s in app.sources), what="every folder read")
        for i, (case, text) in enumerate(zip(CASES, expected)):
            if i:
                await pilot.press("right_square_bracket")
            await wait_for(pilot, lambda: app.screen.query_one(StatusLine).text.count(folders[i].name) >= 1, what=case)
            if case == "torn":
                assert text in status(app) and "failed" in status(app)
                assert app.current_view().n_events == 1
                continue
            message = app.screen.query_one(MessagePanel).text
            assert message.startswith("Cannot open trace") and text in message, (case, message)
            assert "unreadable" in status(app)
            for key in ("left", "p", "2", "e", "1"):
                await pilot.press(key)
        await pilot.pause(0.15)
        assert app.is_running


@asyncio_test
async def test_a_bad_start_time_is_unknown_and_the_trace_list_still_opens(trace_copy: Path) -> None:
    # issue 16 §4 row 6: meta started_unix_ns 10**30 crashed the trace list (OverflowError).
    meta = json.loads((trace_copy / "meta.json").read_text())
    bad = trace_copy.parent / "bad-start"
    shutil.copytree(trace_copy, bad)
    (bad / "meta.json").write_text(json.dumps({**meta, "started_unix_ns": 10**30}))
    app = KvprofApp([bad], root=trace_copy.parent)
    async with app.run_test(size=SIZE) as pilot:
        await opened(pilot, app)  # the trace itself opens
        await pilot.press("7")
        await wait_for(pilot, lambda: len(table(app, "traces").shown_rows) == 2, what="both traces listed")
        cells = {r[0]: r for r in table(app, "traces").cell_texts()}
        assert cells["bad-start"][3] == "unknown" and cells[trace_copy.name][3][:2] == "20"
        assert app.is_running and app.return_code is None


def test_a_crash_of_the_app_exits_non_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 16 §4 row 6: the app crashed (Textual printed the traceback) and `kvprof tui` exited 0.
    def broken_listing(paths: list[Path]) -> list[dict]:
        raise RuntimeError("a bug in a view")

    monkeypatch.setattr("tui.screens.traces.trace_listing", broken_listing)
    monkeypatch.setattr(KvprofApp, "run", lambda self: App.run(self, headless=True, size=SIZE))
    assert run_tui([], root=tmp_path) == 1


# ---------------------------------------------------------------------- live traces
@asyncio_test
async def test_follow_shows_growth_and_completion(tmp_path: Path) -> None:
    folder = tmp_path / "traces" / "live"
    gates = [threading.Event() for _ in range(3)]

    def gate(chunk: int) -> None:
        assert gates[chunk].wait(20), "the test did not release the writer"

    live = LiveRun(lambda: write_small_trace(folder, chunks=3, gate=gate))
    app = KvprofApp([folder], follow=True, poll_s=0.1, live=live)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        assert "Waiting for the trace" in app.screen.query_one(MessagePanel).text or app.current_view() is not None
        live.start()
        await wait_for(pilot, lambda: app.current_view() is not None and app.current_view().kv, what="chunk 0")
        first = app.current_view()
        assert first.status == "running" and "running" in status(app) and "following" in status(app)
        assert app.cursor_event() == first.n_events - 1  # a live trace's cursor follows the end
        gates[0].set()
        await wait_for(pilot, lambda: app.current_view().kv and app.current_view().kv.chunk == 1, what="chunk 1")
        second = app.current_view()
        assert second.n_events > first.n_events
        assert second.timeline.total.max() > first.timeline.total.max()
        assert app.cursor_event() == second.n_events - 1
        rendered = app.screen.query_one(TimelineChart).render().plain
        assert "chunk 1" in rendered
        gates[1].set()
        gates[2].set()
        await wait_for(pilot, lambda: app.current_view().status == "complete", what="status complete")
        await wait_for(pilot, lambda: "complete" in status(app), what="status line complete")
        assert "following" not in status(app) and app.current_source().state.phase == "closed"
        assert live.done and live.outcome() is None
        final = app.current_view()
        assert final.n_events > second.n_events and final.peak.bytes == find_peak(load_trace(folder)).bytes
        await pilot.press("q")
    live.join(5)


@asyncio_test
async def test_redraws_are_capped_at_ten_per_second(bf16_trace: Path) -> None:
    app = KvprofApp([bf16_trace])
    async with app.run_test(size=SIZE) as pilot:
        await opened(pilot, app)
        start = len(app.redraws)
        for _ in range(12):
            await pilot.press("left")
        await pilot.pause(0.3)
        stamps = app.redraws[start:]
        assert stamps, "no redraw after key presses"
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        assert all(g >= 0.1 for g in gaps), gaps


@asyncio_test
async def test_live_run_failing_before_its_trace_starts_closes_the_app(tmp_path: Path) -> None:
    def bad_arguments() -> None:
        raise ValueError("unknown method 'prq_in4'")

    live = LiveRun(bad_arguments)
    app = KvprofApp([tmp_path / "never-written"], follow=True, poll_s=0.1, live=live)
    async with app.run_test(size=SIZE) as pilot:
        live.start()
        await wait_for(pilot, lambda: app.return_value is not None, what="the app to close")
    assert app.return_value == 1
    with pytest.raises(ValueError, match="prq_in4"):
        live.outcome()


def _timer_callbacks(app: KvprofApp) -> list[Callable[[], Any]]:
    """The callbacks of every timer the app and its screens (of every mode) own."""
    nodes = [app, *(screen for stack in app._screen_stacks.values() for screen in stack)]
    return [timer._callback for node in nodes for timer in list(node._timers) if timer._callback is not None]


class _ClosingProbe(KvprofApp):
    """Runs every timer callback, and the handlers of the messages threads post, in the window where
    issue 16's race struck: every screen closed, the app's own timers still alive."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.callbacks: list[Callable[[], Any]] = []
        self.stack_was_empty = False
        self.errors: list[BaseException] = []

    async def _close_all(self) -> None:
        await super()._close_all()
        self.stack_was_empty = self.top_screen() is None
        calls = [*self.callbacks, lambda: self.on_kvprof_app_sources_changed(self.SourcesChanged()),
                 lambda: self.on_kvprof_app_rollout_ended(self.RolloutEnded()), self._post_rollout_ended]
        for call in calls:
            try:
                call()
            except Exception as exc:  # collected: an exception here would be swallowed by the shutdown
                self.errors.append(exc)


@asyncio_test
async def test_timers_and_thread_messages_are_safe_while_the_app_closes(bf16_trace: Path) -> None:
    # issue 16: the status timer fired while the app closed (no screens on the stack) and raised
    # ScreenStackError. Every timer callback, and every message a thread posts, must be harmless then.
    live = LiveRun(lambda: None)
    app = _ClosingProbe([bf16_trace], follow=True, poll_s=0.1, live=live)
    async with app.run_test(size=SIZE) as pilot:
        await opened(pilot, app)
        for key in ("2", "7", "1"):  # a screen of several modes, each with its own timers
            await pilot.press(key)
            await pilot.pause(0.05)
        app.callbacks = _timer_callbacks(app)
        assert len(app.callbacks) >= 3
        live.start()
        live.join(5)
        await pilot.press("q")
    assert app.stack_was_empty and app.errors == []
    assert app.return_code == 0 and app.return_value == 0


@asyncio_test
async def test_a_view_draws_itself_once_mounted_and_never_before(bf16_trace: Path) -> None:
    # A screen on its way (pushed, not yet composed) used to be probed for its children; now a view
    # ignores draw requests until it is mounted and on screen, then draws by itself.
    app = KvprofApp([bf16_trace])
    async with app.run_test(size=SIZE) as pilot:
        await opened(pilot, app)
        screen = BreakdownScreen()
        screen.request_draw()  # not mounted: nothing, no error
        app.cursors = {0: 0}  # a state change while it mounts
        drawn = len(app.redraws)
        waiting = app.push_screen(screen)
        screen.request_draw()
        await waiting
        await wait_for(pilot, lambda: len(app.redraws) > drawn and "event 1," in str(
            screen.query_one("#cursor-category", FrameTable).border_title), what="the pushed view drawn")
        assert app.return_code is None and app.screen is screen


def test_follow_loop_leaves_a_watched_rollout_most_of_the_time() -> None:
    # The follow loop's sleep after a rebuild: the poll interval for quick ones; a third of the time at most in a TUI
    # process of its own; beside the rollout (`kvprof trace --tui`) a twentieth once a rebuild takes a second or more
    from tui.source import follow_wait_s

    assert follow_wait_s(0.5, 0.05, beside_rollout=True) == pytest.approx(0.45)
    assert follow_wait_s(0.5, 0.6, beside_rollout=False) == pytest.approx(1.2)  # 0.6 of 1.8 s: a third
    assert follow_wait_s(0.5, 0.6, beside_rollout=True) == pytest.approx(1.2)  # small: as before
    assert follow_wait_s(0.5, 3.0, beside_rollout=False) == pytest.approx(6.0)
    assert follow_wait_s(0.5, 3.0, beside_rollout=True) == pytest.approx(57.0)  # 3 of 60 s: a twentieth
