"""ViewScreen: what every view has (title, message panel, body, filter prompt, status line).

A view draws itself: from its mount on it watches the app's reactive state and redraws when that
changes, at most every REDRAW_MIN_S over all views, and only while it is on screen. Its timers are
its own, so they end with it and never look for a screen that is gone.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar, Iterable

import pandas as pd
from textual.app import ComposeResult
from textual.containers import Container
from textual.markup import escape
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Static

from kvprof.read.trace import meta_label
from tui.model import TraceView
from tui.widgets.filter_bar import FilterBar
from tui.widgets.message import MessagePanel
from tui.widgets.status import StatusLine

if TYPE_CHECKING:
    from tui.app import KvprofApp

REDRAW_MIN_S = 0.1  # redraw at most 10 times a second
STATUS_TICK_S = 1.0  # the status line's age of the last event
APP_STATE = ("current", "cursors", "filter_text", "x_axis", "sources_version")  # the app's reactives a view shows


class ViewScreen(Screen):
    """A view of the current trace (or, with `NEEDS_TRACE = False`, of all traces)."""

    VIEW: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""
    NEEDS_TRACE: ClassVar[bool] = True
    AUTO_FOCUS = "FrameTable"

    @property
    def kv_app(self) -> "KvprofApp":
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static(self.TITLE, id="title")
        yield MessagePanel(id="message")
        with Container(id="body"):
            yield from self.compose_body()
        yield FilterBar(id="filter")
        yield StatusLine(id="status")

    def __init__(self) -> None:
        super().__init__()
        self._draw_timer: Timer | None = None

    def compose_body(self) -> Iterable[Widget]:
        return ()

    def on_mount(self) -> None:
        # Mount comes after compose: the children exist from here on.
        for name in APP_STATE:
            self.watch(self.app, name, self.request_draw, init=False)
        self.set_interval(STATUS_TICK_S, self._tick_status)

    def on_screen_resume(self) -> None:
        self.request_draw()

    def request_draw(self) -> None:
        """Draw soon: now when the last draw is REDRAW_MIN_S old, else once it is (one timer at a time).
        A view that is not mounted or not on screen does nothing: it draws when it is shown."""
        if self._draw_timer is not None or not (self.is_mounted and self.is_current):
            return
        redraws = self.kv_app.redraws
        wait = (redraws[-1] + REDRAW_MIN_S - time.monotonic()) if redraws else 0.0
        if wait > 0:
            self._draw_timer = self.set_timer(wait, self._draw_due)
            return
        self.kv_app.note_redraw()
        self.refresh_view()

    def _draw_due(self) -> None:
        self._draw_timer = None
        self.request_draw()  # a timer may fire a little early: this waits out the rest

    def _tick_status(self) -> None:
        if self.is_mounted and self.is_current:
            self.query_one(StatusLine).show(self.kv_app.status_text())

    def refresh_view(self) -> None:
        """Redraw from the app's state: the current trace's view, the cursor and the filter."""
        app = self.kv_app
        title = self.query_one("#title", Static)
        body = self.query_one("#body")
        message = self.query_one(MessagePanel)
        view: TraceView | None = None
        if self.NEEDS_TRACE:
            text, severity = app.message_for_current()
            if text is None:
                view = app.current_view()
            message.show_message(text, severity)
            body.display = text is None
        title.update(self.title_text(view))
        if view is not None or not self.NEEDS_TRACE:
            self.update_body(view)
        self.query_one(StatusLine).show(app.status_text())

    def title_text(self, view: TraceView | None) -> str:
        if view is None:
            return f"[b]{self.TITLE}[/b]"
        meta = view.trace.meta
        return f"[b]{self.TITLE}[/b] · " + escape(f"{view.name} · {meta_label(meta)}")

    def update_body(self, view: TraceView | None) -> None:
        """Fill the view's widgets (called at most 10 times a second)."""

    def export_frame(self) -> pd.DataFrame | None:
        """The data this view shows, as one table (for `e`)."""
        return None

    def open_filter(self, current: str) -> None:
        self.query_one(FilterBar).open(current)

    def on_input_submitted(self, event: FilterBar.Submitted) -> None:
        if isinstance(event.input, FilterBar):
            event.stop()
            event.input.close()
            self.kv_app.set_filter(event.value.strip())
