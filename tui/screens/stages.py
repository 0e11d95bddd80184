"""View 4: time per stage kind (count, host ms, device ms)."""
from __future__ import annotations

from typing import Iterable

import pandas as pd
from textual.widget import Widget

from tui.model import TraceView
from tui.screens.base import ViewScreen
from tui.widgets.table import Col, FrameTable


def _ms(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:,.1f}"


COLUMNS = [Col("stage", "stage"), Col("count", "count", numeric=True), Col("host_ms", "host ms", _ms, numeric=True),
           Col("device_ms", "device ms", _ms, numeric=True),
           Col("share", "share of run", lambda x: "-" if x is None else f"{x:.1f}%", numeric=True)]


class StagesScreen(ViewScreen):
    VIEW = "stages"
    TITLE = "time per stage (device ms; host ms on CPU)"

    def __init__(self) -> None:
        super().__init__()
        self._rows_for: tuple[int, list[dict]] | None = None

    def compose_body(self) -> Iterable[Widget]:
        yield FrameTable(COLUMNS, sort_key="device_ms", reverse=True, id="stages")

    def update_body(self, view: TraceView | None) -> None:
        if view is None:
            return
        if self._rows_for is None or self._rows_for[0] != id(view):
            st = view.stage_times
            spans = view.trace.spans
            top = spans[spans["depth"] == 0]
            top_ms = top["device_ms"].where(top["device_ms"].notna(), top["host_ms"])
            total = float(top_ms.sum()) or None  # the run: every top-level stage (setup, rollout, ...)
            # the share is of the same clock as the total: device time where measured, host time on CPU
            own = st["device_ms"].where(st["device_ms"].notna(), st["host_ms"])
            rows = [{"stage": str(r.stage), "count": int(r.count), "host_ms": float(r.host_ms),
                     "device_ms": float(r.device_ms),
                     "share": 100 * float(ms) / total if total else None} for r, ms in zip(st.itertuples(), own)]
            self._rows_for = (id(view), rows)
        self.query_one(FrameTable).set_rows(self._rows_for[1], self.kv_app.filter_text)

    def export_frame(self) -> pd.DataFrame | None:
        return self.query_one(FrameTable).frame()
