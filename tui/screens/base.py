"""ViewScreen: what every view has (title, message panel, body, filter prompt, status line)."""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Iterable

import pandas as pd
from textual.app import ComposeResult
from textual.containers import Container
from textual.markup import escape
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Static

from kvprof.trace import meta_label
from tui.model import TraceView
from tui.widgets.filter_bar import FilterBar
from tui.widgets.message import MessagePanel
from tui.widgets.status import StatusLine

if TYPE_CHECKING:
    from tui.app import KvprofApp


class ViewScreen(Screen):
    """A view of the current trace (or, with `NEEDS_TRACE = False`, of all traces)."""

    VIEW: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""
    NEEDS_TRACE: ClassVar[bool] = True
    AUTO_FOCUS = "FrameTable"

    @property
    def kv_app(self) -> "KvprofApp":
        return self.app  # type: ignore[return-value]

    @property
    def ready(self) -> bool:
        """Mounted with its children: a screen can be mounted a tick before they are. Compose adds
        them in one batch, so the last one (the status line) being there means all are."""
        return self.is_mounted and bool(self.query(StatusLine))

    def compose(self) -> ComposeResult:
        yield Static(self.TITLE, id="title")
        yield MessagePanel(id="message")
        with Container(id="body"):
            yield from self.compose_body()
        yield FilterBar(id="filter")
        yield StatusLine(id="status")

    def compose_body(self) -> Iterable[Widget]:
        return ()

    def on_screen_resume(self) -> None:
        self.kv_app.redraw()

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
