"""The kvprof TUI: replay and live views of kvprof traces (issue 4).

    python -m tui.app [TRACE ...] [--follow] [--root traces]

Entry points for the CLI: `run_tui(paths, follow, root)` (`kvprof tui`) and
`run_live(folder, run)` (`kvprof trace --tui`). The app reads only the trace folder, through
kvprof's trace reader, its analyses and `kvprof.read.live` (incremental follow); never torch.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from rich.text import Text
from textual import work
from textual.app import App, ScreenStackError, UnknownModeError
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen
from textual.widgets import Input
from textual.worker import Worker, WorkerState, get_current_worker

from kvprof.read.trace import list_traces
from kvprof.units import fmt_bytes
from tui.export import export_csv
from tui.live_run import LiveRun
from tui.model import TraceView, column_points
from tui.screens import (
    AllocationsScreen,
    BreakdownScreen,
    CompareScreen,
    HelpScreen,
    KVScreen,
    StagesScreen,
    TimelineScreen,
    TracesScreen,
)
from tui.screens.base import ViewScreen
from tui.source import TraceSource, follow_wait_s
from tui.widgets.colors import STATUS_COLORS

VIEWS: tuple[tuple[str, type[ViewScreen]], ...] = (
    ("timeline", TimelineScreen),
    ("breakdown", BreakdownScreen),
    ("allocations", AllocationsScreen),
    ("stages", StagesScreen),
    ("kv", KVScreen),
    ("compare", CompareScreen),
    ("traces", TracesScreen),
)
VIEW_NAMES = tuple(name for name, _ in VIEWS)
POLL_S = 0.5  # follow: how often the folder is polled
LIVE_CHECK_S = 0.25  # `kvprof trace --tui`: how often the app looks whether the rollout ended
DEFAULT_CHART_COLUMNS = 120
SCREEN_KEYS = [("s", "compare: sort by the next column"), ("r", "compare: reverse the sort"),
               ("enter", "compare: make the trace current · traces: open it"),
               ("click header", "sort a table by that column"), ("escape", "close the filter prompt / clear the filter")]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "none yet"
    if seconds < 60:
        return f"{seconds:.1f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} d ago"


class KvprofApp(App[int]):
    """Views of one or several traces; follows live traces when asked.

    What the views show is the app's reactive state (`current`, `cursors`, `filter_text`, `x_axis`,
    `sources_version`); each view screen watches it and redraws itself (at most 10 times a second).
    Threads never touch the screens: the follow worker and the live rollout post messages.
    """

    class SourcesChanged(Message):
        """The follow worker rebuilt the view (or error) of at least one source."""

    class RolloutEnded(Message):
        """`kvprof trace --tui`: the rollout thread returned or raised."""

    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "kvprof"
    MODES = dict(VIEWS)
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("question_mark", "help", "help: every key"),
        Binding("tab", "next_view", "next view", priority=True),
        Binding("shift+tab", "prev_view", "previous view", priority=True),
        *[Binding(str(i + 1), f"view('{name}')", f"view {name}") for i, name in enumerate(VIEW_NAMES)],
        Binding("left", "cursor(-1)", "time cursor one column left", priority=True),
        Binding("right", "cursor(1)", "time cursor one column right", priority=True),
        Binding("shift+left", "cursor_event(-1)", "time cursor one event left", priority=True),
        Binding("shift+right", "cursor_event(1)", "time cursor one event right", priority=True),
        Binding("home", "cursor_edge(0)", "time cursor to the start", priority=True),
        Binding("end", "cursor_edge(1)", "time cursor to the end (follows a live trace)", priority=True),
        Binding("p", "peak", "time cursor to the peak"),
        Binding("t", "toggle_axis", "timeline x axis: event order / host time"),
        Binding("slash", "filter", "filter: categories, stages, names, rows"),
        Binding("escape", "clear_filter", "clear the filter", show=False),
        Binding("e", "export", "export this view's data as CSV"),
        Binding("left_square_bracket", "trace(-1)", "previous trace"),
        Binding("right_square_bracket", "trace(1)", "next trace"),
    ]

    current: reactive[int | None] = reactive(None)  # index of the current source
    cursors: reactive[dict[int, int]] = reactive(dict)  # source index -> event index chosen by the user
    filter_text: reactive[str] = reactive("")
    x_axis: reactive[str] = reactive("events")  # the timeline's x: "events" (exact order) or "time"
    sources_version: reactive[int] = reactive(0)  # bumped when a source's view or error changed

    def __init__(self, paths: Sequence[str | Path] = (), follow: bool = False, root: str | Path = "traces",
                 *, poll_s: float = POLL_S, live: LiveRun | None = None,
                 newest: dict[Path, Callable[[], Path]] | None = None):
        super().__init__()
        self.root = Path(root)
        self.follow = follow
        self.poll_s = poll_s
        self.live = live
        # newest: a sweep cell's path -> where its newest attempt is (followed across retries)
        self.sources: list[TraceSource] = [TraceSource(p, wait_for_start=follow, newest=(newest or {}).get(Path(p)))
                                           for p in paths]
        self.set_reactive(KvprofApp.current, 0 if self.sources else None)
        self.chart_columns = DEFAULT_CHART_COLUMNS
        self.last_export: Path | None = None
        self.redraws: list[float] = []  # monotonic time of every redraw (tests check the 10 Hz cap)
        self._notified: set[tuple[int, str]] = set()
        self._live_reported = False

    # ------------------------------------------------------------------ lifecycle
    def on_mount(self) -> None:
        self.switch_mode("timeline" if self.sources else "traces")
        self._start_follow()
        if self.live is not None:
            self.live.on_done = self._post_rollout_ended
            if self.live.done:  # ended before the hook was set; the handler reports once
                self._post_rollout_ended()

    def _post_rollout_ended(self) -> None:
        """Called in the rollout's thread: hand over to the app's own (post_message is thread-safe)."""
        try:
            self.post_message(self.RolloutEnded())
        except RuntimeError:  # the app's event loop closed meanwhile: nobody to tell
            pass

    def _start_follow(self) -> None:
        """(Re)start the follow worker; `exclusive` cancels a previous one, which stops at its next sleep."""
        self._follow_loop()

    @work(thread=True, exclusive=True, group="follow", exit_on_error=False)
    def _follow_loop(self) -> None:
        """Poll every source; tell the app when views changed; stop when nothing can change."""
        worker = get_current_worker()
        while not worker.is_cancelled:
            started = time.monotonic()
            changed = False
            for src in list(self.sources):
                if src.finished:
                    continue
                if self.follow or (src.view is None and src.error is None):
                    changed |= src.refresh()
            if changed:
                self.post_message(self.SourcesChanged())  # thread-safe; dropped once the app closes
            pending = [s for s in self.sources if not s.finished and (self.follow or (s.view is None and s.error is None))]
            if not pending:
                return
            spent = time.monotonic() - started
            wait = follow_wait_s(self.poll_s, spent, beside_rollout=self.live is not None)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and not worker.is_cancelled:
                time.sleep(min(0.05, wait))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A bug while reading must not pass in silence: say so (the views keep what they had)."""
        if event.worker.group == "follow" and event.state == WorkerState.ERROR:
            self.notify(f"reading traces stopped: {type(event.worker.error).__name__}: {event.worker.error}",
                        severity="error", timeout=30, markup=False)

    def on_kvprof_app_sources_changed(self, _: SourcesChanged) -> None:
        if self.current is None and self.sources:
            self.current = 0
        for i, src in enumerate(self.sources):
            if src.state.torn_tail and (not self.follow or src.state.status != "running"):
                self._notify_once(i, "torn", f"{src.name}: the event log ends in a torn record; everything before it is shown",
                                  "warning")
            if src.error:
                self._notify_once(i, "error:" + src.error, f"cannot read {src.path}", "error")
        self.sources_version += 1

    def _notify_once(self, i: int, key: str, message: str, severity: str = "information") -> None:
        if (i, key) not in self._notified:
            self._notified.add((i, key))
            self.notify(message, severity=severity, markup=False)  # type: ignore[arg-type]

    def on_kvprof_app_rollout_ended(self, _: RolloutEnded) -> None:
        live = self.live
        if live is None or not live.done or self._live_reported:
            return
        self._live_reported = True
        src = self.sources[0] if self.sources else None
        if live.error is not None and (src is None or not src.seen_running):
            self.exit(1)  # failed before its trace ran (bad arguments): the caller reports the error
            return
        status = src.state.status if src is not None else "?"
        self.notify(f"rollout finished ({status}); press q to quit", timeout=10)

    def top_screen(self) -> Screen | None:
        """The screen on top, or None while there is none (before the first, or while closing)."""
        try:
            return self.screen
        except (ScreenStackError, UnknownModeError):
            return None

    def note_redraw(self) -> None:
        """A view was drawn now (the 10 Hz cap is over all views)."""
        self.redraws.append(time.monotonic())
        del self.redraws[:-100]

    # ------------------------------------------------------------------ state
    def current_source(self) -> TraceSource | None:
        if self.current is None or not 0 <= self.current < len(self.sources):
            return None
        return self.sources[self.current]

    def current_view(self) -> TraceView | None:
        src = self.current_source()
        return None if src is None else src.view

    def cursor_event(self) -> int | None:
        """The event index of the time cursor: the user's choice, else the peak (a live trace: the end)."""
        view = self.current_view()
        if view is None or view.n_events == 0:
            return None
        chosen = self.cursors.get(self.current)  # type: ignore[arg-type]
        if chosen is None:
            live = view.status == "running" and self.follow
            chosen = view.n_events - 1 if live or view.peak_event is None else view.peak_event
        return max(0, min(chosen, view.n_events - 1))

    def _set_cursor(self, event: int | None) -> None:
        if self.current is None:
            return
        cursors = {k: v for k, v in self.cursors.items() if k != self.current}  # a new dict: the reactive sees it
        if event is not None:
            cursors[self.current] = event
        self.cursors = cursors

    def message_for_current(self) -> tuple[str | None, str]:
        """What a single-trace view shows instead of data, with its severity; (None, '') when there is data."""
        src = self.current_source()
        if src is None:
            return (f"No trace open. Pick one in the trace list (key 7): traces under {self.root}.", "info")
        if src.error is not None:
            return (f"Cannot open trace {src.path}\n\n{src.error}", "error")
        if src.view is None:
            if src.waiting_to_start():
                return (f"Waiting for the trace at {src.path} to start...", "info")
            return (f"Loading {src.path} ...", "info")
        if src.view.n_events == 0:
            return (f"{src.name}: no allocation events yet (status {src.view.status})", "info")
        return (None, "")

    def listed_paths(self) -> list[Path]:
        """Traces under the root, then opened ones that are elsewhere."""
        found = list_traces(self.root)
        seen = {p.resolve() for p in found}
        return found + [s.path for s in self.sources if s.path.resolve() not in seen]

    def status_text(self) -> Text:
        """Run status, age of the last event, which trace, cursor, filter."""
        out = Text(no_wrap=True, overflow="ellipsis")
        src = self.current_source()
        if src is None:
            out.append(" no trace ", style="reverse")
        else:
            status = src.state.status or ("unreadable" if src.error else "waiting")
            if src.error:
                status = "unreadable"
            out.append(f" {status} ", style=f"reverse {STATUS_COLORS.get(status, 'bold')}")
            out.append(f" last event {_age(src.age_s())}")
            closed = src.state.phase == "closed" or src.error is not None
            if not closed:
                out.append(" · following" if self.follow else " · snapshot (open with --follow to follow)")
            if src.state.torn_tail and (not self.follow or src.state.status != "running"):
                out.append(" · torn last record skipped", style="bold yellow")
            out.append(f" · {src.name}")
            if len(self.sources) > 1:
                out.append(f" ({self.current + 1}/{len(self.sources)})")  # type: ignore[operator]
            view = src.view
            if view is not None:
                out.append(f" · {view.n_events:,} events")
                event = self.cursor_event()
                if event is not None:
                    out.append(f" · cursor {fmt_bytes(view.event_live(event))}")
        if self.filter_text:
            out.append(f" · filter '{self.filter_text}'", style="bold")
        if self.live is not None and not self.live.done:
            out.append(" · rollout running", style="yellow")
        out.append(" · ? help")
        return out

    # ------------------------------------------------------------------ actions
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        typing = isinstance(self.focused, Input)
        modal = isinstance(self.top_screen(), ModalScreen)
        if action in ("next_view", "prev_view", "view", "cursor", "cursor_event", "cursor_edge", "trace") and (typing or modal):
            return False
        return True

    def action_view(self, name: str) -> None:
        self.switch_mode(name)

    def action_next_view(self) -> None:
        self._step_view(1)

    def action_prev_view(self) -> None:
        self._step_view(-1)

    def _step_view(self, step: int) -> None:
        i = VIEW_NAMES.index(self.current_mode) if self.current_mode in VIEW_NAMES else 0
        self.switch_mode(VIEW_NAMES[(i + step) % len(VIEW_NAMES)])

    def action_help(self) -> None:
        screen = self.top_screen()
        if isinstance(screen, HelpScreen):
            screen.dismiss(None)
            return
        keys = [(b.key.replace("question_mark", "?").replace("slash", "/").replace("left_square_bracket", "[")
                 .replace("right_square_bracket", "]"), b.description) for b in self.BINDINGS]  # type: ignore[union-attr]
        keys.insert(1, ("ctrl+q", "quit"))
        self.push_screen(HelpScreen(keys + SCREEN_KEYS))

    def action_cursor(self, step: int) -> None:
        """Move the time cursor to the next/previous chart column's point."""
        view = self.current_view()
        event = self.cursor_event()
        if view is None or event is None:
            return
        tl = view.timeline_for(self.x_axis)
        cols = self.chart_columns
        events = tl.index[column_points(tl, cols)]  # the event drawn in each column, non-decreasing
        if step > 0:
            i = int(np.searchsorted(events, event, side="right"))
            target = int(events[i]) if i < len(events) else event
        else:
            i = int(np.searchsorted(events, event, side="left")) - 1
            target = int(events[i]) if i >= 0 else event
        self._set_cursor(target)

    def action_cursor_event(self, step: int) -> None:
        event = self.cursor_event()
        if event is not None:
            self._set_cursor(event + step)

    def action_cursor_edge(self, end: int) -> None:
        view = self.current_view()
        if view is None:
            return
        if end and view.status == "running":
            self._set_cursor(None)  # follow the end as it grows
            if self.follow:
                return
        self._set_cursor(view.n_events - 1 if end else 0)

    def action_peak(self) -> None:
        view = self.current_view()
        if view is None or view.peak_event is None:
            self.notify("no peak yet", severity="warning")
            return
        self._set_cursor(view.peak_event)

    def action_toggle_axis(self) -> None:
        self.x_axis = "time" if self.x_axis == "events" else "events"
        self.notify(f"timeline x axis: {'host time' if self.x_axis == 'time' else 'event order'}", timeout=2)

    def action_filter(self) -> None:
        screen = self.top_screen()
        if isinstance(screen, ViewScreen):
            screen.open_filter(self.filter_text)

    def set_filter(self, text: str) -> None:
        self.filter_text = text

    def action_clear_filter(self) -> None:
        if self.filter_text:
            self.set_filter("")

    def action_export(self) -> None:
        screen = self.top_screen()
        if not isinstance(screen, ViewScreen):
            return
        frame = screen.export_frame() if screen.is_mounted else None
        if frame is None:
            self.notify("nothing to export in this view", severity="warning")
            return
        src = self.current_source()
        folder = src.path if screen.NEEDS_TRACE and src is not None and src.path.is_dir() else None
        try:
            path = export_csv(frame, screen.VIEW, folder)
        except OSError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        self.last_export = path
        self.notify(f"exported {len(frame):,} rows to {path}", title="CSV", markup=False)

    def action_trace(self, step: int) -> None:
        if len(self.sources) > 1 and self.current is not None:
            self.select_source((self.current + step) % len(self.sources))

    def select_source(self, index: int) -> None:
        """Make trace `index` the current one and show its timeline."""
        self.current = index
        self.switch_mode("timeline")

    def open_path(self, path: str | Path) -> None:
        """Open (or select) the trace folder `path`."""
        path = Path(path)
        for i, src in enumerate(self.sources):
            if src.path.resolve() == path.resolve():
                self.select_source(i)
                return
        self.sources.append(TraceSource(path, wait_for_start=self.follow))
        self.sources_version += 1
        self._start_follow()
        self.select_source(len(self.sources) - 1)

    async def action_quit(self) -> None:
        self.exit(0)


def run_tui(paths: list[Path], follow: bool = False, root: Path = Path("traces"),
            newest: dict[Path, Callable[[], Path]] | None = None) -> int:
    """`kvprof tui [TRACE ...] [--follow]`: open the traces (none: the list of traces under `root`);
    `newest` maps a sweep cell's path to the folder of its newest attempt, followed across retries."""
    app = KvprofApp(paths, follow=follow, root=root, newest=newest)
    app.run()
    return exit_status(app)


def exit_status(app: App[int]) -> int:
    """The exit status of a closed app: 1 when it crashed (Textual printed the traceback), else what it returned."""
    if app.return_code:
        return app.return_code
    return int(app.return_value or 0)


def run_live(folder: Path, run: Callable[[], Any], *, root: Path | None = None) -> Any:
    """`kvprof trace --tui`: run `run()` in a thread while the app follows the trace written at `folder`.

    Returns what `run()` returned (its exception is re-raised once the app has closed). Quitting
    the app while the rollout still runs interrupts it (KeyboardInterrupt inside the run), so a
    traced run closes its trace as `interrupted`.
    """
    live = LiveRun(run)
    app = KvprofApp([folder], follow=True, root=root or Path(folder).parent, live=live)
    live.start()
    try:
        app.run()
    finally:
        if not live.done:
            status = app.sources[0].state.status if app.sources else None
            if status in (None, "running"):
                print("kvprof: interrupting the rollout (the trace closes as 'interrupted')...", file=sys.stderr)
                live.interrupt()
            live.join()
    return live.outcome()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tui.app [TRACE ...] [--follow] [--root DIR]` (the same as `kvprof tui`)."""
    ap = argparse.ArgumentParser(prog="python -m tui.app", description="kvprof TUI: browse, compare and follow traces")
    ap.add_argument("traces", nargs="*", type=Path, help="trace folders (none: list the traces under --root)")
    ap.add_argument("--follow", action="store_true", help="follow running traces as they are written")
    ap.add_argument("--root", type=Path, default=Path("traces"), help="where the trace list looks (default traces/)")
    args = ap.parse_args(argv)
    return run_tui(args.traces, follow=args.follow, root=args.root)


if __name__ == "__main__":
    sys.exit(main())
