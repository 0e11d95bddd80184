"""View 3: the largest allocations live at the peak."""
from __future__ import annotations

from typing import Iterable

import pandas as pd
from textual.markup import escape
from textual.widget import Widget

from kvprof.units import fmt_bytes
from tui.model import TraceView
from tui.screens.base import ViewScreen
from tui.widgets.table import Col, FrameTable

COLUMNS = [Col("rank", "#", numeric=True), Col("bytes", "bytes", fmt_bytes, numeric=True), Col("category", "category"),
           Col("name", "name"), Col("stage", "stage (made during)")]


class AllocationsScreen(ViewScreen):
    VIEW = "allocations"
    TITLE = "largest live allocations at the peak"

    def __init__(self) -> None:
        super().__init__()
        self._rows_for: tuple[int, list[dict]] | None = None

    def compose_body(self) -> Iterable[Widget]:
        yield FrameTable(COLUMNS, sort_key="bytes", reverse=True, id="allocations")

    def update_body(self, view: TraceView | None) -> None:
        if view is None:
            return
        if self._rows_for is None or self._rows_for[0] != id(view):
            tops = view.peak.top_allocations if view.peak else []
            self._rows_for = (id(view), [{"rank": i + 1, **a} for i, a in enumerate(tops)])
        table = self.query_one(FrameTable)
        table.set_rows(self._rows_for[1], self.kv_app.filter_text)
        if view.peak is not None:
            table.border_title = escape(f"live at the peak ({fmt_bytes(view.peak.bytes)} during {view.peak.stage}), largest first")

    def export_frame(self) -> pd.DataFrame | None:
        return self.query_one(FrameTable).frame()
