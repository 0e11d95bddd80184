"""View 7: the traces under the traces folder (and those opened); enter opens one."""
from __future__ import annotations

from typing import Iterable

import pandas as pd
from textual.binding import Binding
from textual.markup import escape
from textual.widget import Widget

from kvprof.units import fmt_bytes
from tui.model import TraceView, trace_listing
from tui.screens.base import ViewScreen
from tui.widgets.table import Col, FrameTable

COLUMNS = [Col("trace", "trace"), Col("method", "method"), Col("status", "status"), Col("started", "started", lambda x: "unknown" if x is None else str(x)),
           Col("peak_bytes", "peak", fmt_bytes, numeric=True), Col("note", "note"), Col("path", "folder")]
RELIST_S = 2.0


class TracesScreen(ViewScreen):
    VIEW = "traces"
    TITLE = "traces"
    NEEDS_TRACE = False
    BINDINGS = [Binding("enter", "open", "open the highlighted trace")]

    def __init__(self) -> None:
        super().__init__()
        self._rows: list[dict] = []
        self._paths: list = []

    def compose_body(self) -> Iterable[Widget]:
        yield FrameTable(COLUMNS, sort_key="started", reverse=True, id="traces")

    def on_mount(self) -> None:
        self.set_interval(RELIST_S, self.request_draw)  # new trace folders appear without any event

    def update_body(self, view: TraceView | None) -> None:
        app = self.kv_app
        rows = trace_listing(app.listed_paths())
        if rows != self._rows:
            self._rows = rows
        table = self.query_one(FrameTable)
        table.border_title = escape(f"traces under {app.root} (and opened ones) · enter: open")
        table.set_rows(self._rows, app.filter_text)
        if not self._rows:
            table.border_title = escape(f"no traces under {app.root}: run 'kvprof trace' first")

    def action_open(self) -> None:
        row = self.query_one(FrameTable).row_at_cursor()
        if row is not None:
            self.kv_app.open_path(row["path"])

    def on_data_table_row_selected(self, event: FrameTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def export_frame(self) -> pd.DataFrame | None:
        return self.query_one(FrameTable).frame()
