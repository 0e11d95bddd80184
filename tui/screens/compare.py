"""View 6: several traces side by side (peak, peak stage, resident KV, wall time, quality), sortable."""
from __future__ import annotations

from typing import Iterable

import pandas as pd
from textual.binding import Binding
from textual.widget import Widget

from kvprof.units import fmt_bytes
from tui.model import TraceView, compare_row
from tui.screens.base import ViewScreen
from tui.widgets.table import Col, FrameTable


def _num(fmt: str):
    return lambda x: "-" if x is None else format(x, fmt)


COLUMNS = [Col("trace", "trace"), Col("method", "method"), Col("integration", "integration"), Col("status", "status"),
           Col("peak_bytes", "peak", fmt_bytes, numeric=True), Col("peak_stage", "peak stage"),
           Col("resident_kv_bytes", "resident KV", fmt_bytes, numeric=True),
           Col("ratio_resident", "KV ratio", lambda x: "-" if x is None else f"{x:.2f}x", numeric=True),
           Col("wall_s", "wall s", _num(".2f"), numeric=True), Col("quality", "quality")]


class CompareScreen(ViewScreen):
    VIEW = "compare"
    TITLE = "compare traces"
    NEEDS_TRACE = False
    BINDINGS = [
        Binding("s", "sort_next", "sort by the next column"),
        Binding("r", "sort_reverse", "reverse the sort order"),
        Binding("enter", "select", "make the highlighted trace current"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._rows_for: tuple | None = None
        self._rows: list[dict] = []

    def compose_body(self) -> Iterable[Widget]:
        yield FrameTable(COLUMNS, sort_key="peak_bytes", reverse=True, id="compare")

    def update_body(self, view: TraceView | None) -> None:
        app = self.kv_app
        key = tuple((s.version, id(s)) for s in app.sources)
        if key != self._rows_for:
            self._rows_for = key
            rows = []
            for i, src in enumerate(app.sources):
                if src.view is not None:
                    row = compare_row(src.view)
                else:
                    row = {"trace": src.name, "status": "unreadable" if src.error else "waiting"}
                rows.append({"source": i, **row})
            self._rows = rows
        table = self.query_one(FrameTable)
        table.border_title = f"{len(app.sources)} trace(s) · s: sort by next column · r: reverse · click a header to sort"
        table.set_rows(self._rows, app.filter_text)

    def action_sort_next(self) -> None:
        label = self.query_one(FrameTable).cycle_sort()
        self.notify(f"sorted by {label}", timeout=2)

    def action_sort_reverse(self) -> None:
        self.query_one(FrameTable).reverse_sort()

    def action_select(self) -> None:
        row = self.query_one(FrameTable).row_at_cursor()
        if row is not None:
            self.kv_app.select_source(int(row["source"]))

    def on_data_table_row_selected(self, event: FrameTable.RowSelected) -> None:
        event.stop()
        self.action_select()

    def export_frame(self) -> pd.DataFrame | None:
        return self.query_one(FrameTable).frame()
