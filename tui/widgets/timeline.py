"""The memory timeline: live bytes stacked by category, peak marked, chunk and pass bands under it.

Drawn with Unicode blocks: every chart cell is a full block in the color of the category that
fills it; the top of each column is an eighth block. Each column shows the highest point of
its share of the trace, so the peak is always drawn. x is event order (exact order of allocations and frees) or, with `t`, host time.
"""
from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.widget import Widget

from kvprof.units import fmt_bytes
from tui.model import TraceView, column_of_point, column_points
from tui.widgets.colors import category_color

EIGHTHS = " ▁▂▃▄▅▆▇█"
MARGIN = 11  # y-axis labels
BAND_STYLES = ("on grey23", "on grey35")
CURSOR_STYLE = "on grey30"
PEAK_STYLE = "bold red"
FIXED_ROWS = 4  # peak marker row, stage band, pass band, axis


def fit_label(label: str, width: int) -> str:
    """`label` in `width` cells with at least one blank after it, so that labels of neighbouring runs
    never touch: whole, else short ('denoise 3' -> 'd3', 'chunk 12' -> 'c12', 'refresh' -> 'r'),
    else nothing (a label is never cut: 'd' for 'd3' would read as another label)."""
    head, _, tail = label.partition(" ")
    short = head[:1] + tail if tail.isdigit() else head[:1]
    for text in (label, short):
        if len(text) < width:
            return text.ljust(width)
    return " " * width


def _run_length(labels: list[str]) -> list[tuple[str, int]]:
    runs: list[tuple[str, int]] = []
    for lab in labels:
        if runs and runs[-1][0] == lab:
            runs[-1] = (lab, runs[-1][1] + 1)
        else:
            runs.append((lab, 1))
    return runs


class TimelineChart(Widget):
    """Stacked memory timeline of one trace with a time cursor."""

    DEFAULT_CSS = "TimelineChart { height: 1fr; min-height: 10; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.view: TraceView | None = None
        self.cursor_event: int | None = None
        self.categories: list[str] = []  # drawn (after the filter)
        self.peak_label = ""
        self.columns = 0
        self.axis = "events"

    def show(self, view: TraceView | None, cursor_event: int | None, filter_text: str = "", axis: str = "events") -> None:
        """Draw `view` with the cursor at event `cursor_event`; a filter keeps matching categories;
        `axis` is 'events' (x = event order) or 'time' (x = host time)."""
        self.view, self.cursor_event, self.axis = view, cursor_event, axis
        cats = list(view.timeline.by_category) if view is not None else []
        wanted = [c for c in cats if filter_text.lower() in c.lower()] if filter_text else cats
        self.categories = wanted or cats
        if view is not None and view.peak is not None:
            self.peak_label = f"peak {fmt_bytes(view.peak.bytes)}"
        else:
            self.peak_label = ""
        self.refresh()

    def chart_columns(self) -> int:
        """Columns available for data at the current size."""
        return max(1, self.size.width - MARGIN)

    def render(self) -> Text:
        view = self.view
        width, height = self.size.width, self.size.height
        if view is None or view.timeline.points == 0:
            return Text("no allocations recorded yet", style="dim")
        tl = view.timeline_for(self.axis)
        cols = max(1, width - MARGIN)
        rows = max(2, height - FIXED_ROWS)
        self.columns = cols
        pts = column_points(tl, cols)
        stacks = np.stack([tl.by_category[c][pts] for c in self.categories]) if self.categories else np.zeros((0, cols))
        stacks = np.clip(stacks, 0, None)
        tops = stacks.sum(axis=0) if len(stacks) else np.zeros(cols)
        scale_top = max(int(tops.max()) if len(tops) else 0, 1)
        bounds8 = np.rint(np.cumsum(stacks, axis=0) * (rows * 8) / scale_top).astype(np.int64)
        peak_col = None if view.peak_event is None else column_of_point(tl, cols, tl.point_of_event(view.peak_event))
        cursor_col = None if self.cursor_event is None else column_of_point(tl, cols, tl.point_of_event(self.cursor_event))

        out = Text(no_wrap=True, overflow="crop")
        out.append(self._marker_row(cols, peak_col, view))
        out.append("\n")
        for r in range(rows - 1, -1, -1):
            label = fmt_bytes(scale_top) if r == rows - 1 else ("0" if r == 0 else (fmt_bytes(scale_top * (r + 1) // rows) if r == rows // 2 else ""))
            out.append(f"{label:>{MARGIN - 1}} ", style="dim")
            out.append(self._chart_row(r, bounds8, cursor_col))
            out.append("\n")
        out.append(self._band_row("stage", [tl.stage_band[p] for p in pts], cursor_col))
        out.append("\n")
        out.append(self._band_row("pass", [tl.pass_band[p] for p in pts], cursor_col))
        out.append("\n")
        out.append(self._axis_row(cols, cursor_col, view, pts))
        return out

    def _marker_row(self, cols: int, peak_col: int | None, view: TraceView) -> Text:
        row = Text(" " * MARGIN)
        if peak_col is None or view.peak is None:
            return row
        label = f" {self.peak_label} during {view.peak.stage}"
        cells = [" "] * cols
        cells[peak_col] = "▼"
        text = "".join(cells)
        start = peak_col + 1 if peak_col + 1 + len(label) <= cols else max(0, peak_col - len(label))
        text = text[:start] + label[: cols - start] + text[start + len(label):]
        text = text[:cols]
        row.append(text, style=PEAK_STYLE)
        return row

    def _chart_row(self, r: int, bounds8: np.ndarray, cursor_col: int | None) -> Text:
        text = Text()
        lo, hi, mid = r * 8, (r + 1) * 8, r * 8 + 4
        n_cols = bounds8.shape[1] if bounds8.ndim == 2 else 0
        prev_style, buf = None, []
        for c in range(n_cols):
            col = bounds8[:, c]
            top8 = int(col[-1]) if len(col) else 0
            if top8 >= hi:
                k = int(np.searchsorted(col, mid, side="right"))
                ch, style = "█", category_color(self.categories[min(k, len(col) - 1)])
            elif top8 > lo:
                k = int(np.searchsorted(col, top8 - 1, side="right"))
                ch, style = EIGHTHS[top8 - lo], category_color(self.categories[min(k, len(col) - 1)])
            else:
                ch, style = " ", ""
            if c == cursor_col:
                style = f"{style} {CURSOR_STYLE}".strip()
            if style != prev_style and buf:
                text.append("".join(buf), style=prev_style or None)
                buf = []
            prev_style = style
            buf.append(ch)
        if buf:
            text.append("".join(buf), style=prev_style or None)
        return text

    def _band_row(self, name: str, labels: list[str], cursor_col: int | None) -> Text:
        text = Text(f"{name:>{MARGIN - 1}} ", style="dim")
        c = 0
        for i, (label, n) in enumerate(_run_length(labels)):
            cell = fit_label(label, n) if label else " " * n
            style = BAND_STYLES[i % 2] if label else ""
            for j, ch in enumerate(cell):
                st = CURSOR_STYLE if c + j == cursor_col else style
                text.append(ch, style=st or None)
            c += n
        return text

    def _axis_row(self, cols: int, cursor_col: int | None, view: TraceView, pts: np.ndarray) -> Text:
        """Time of the first and last drawn points, and the cursor caret (labels step aside for it)."""
        tl = view.timeline_for(self.axis)
        text = Text(f"{'time (s)' if self.axis == 'time' else 'events; s':>{MARGIN - 1}} ", style="dim")
        cells = [" "] * cols
        caret = cursor_col if cursor_col is not None and 0 <= cursor_col < cols else None
        left = f"{tl.t_ns[pts[0]] / 1e9:.2f}"
        right = f"{tl.t_ns[pts[-1]] / 1e9:.2f}"
        starts = [0, cols - len(right)]
        for label, start in zip((left, right), starts):
            if caret is not None and start <= caret < start + len(label):
                start = caret + 2 if label is left else caret - len(label) - 1
            if 0 <= start and start + len(label) <= cols:
                cells[start:start + len(label)] = list(label)
        if caret is not None:
            cells[caret] = "▲"
        text.append("".join(cells), style="dim")
        return text
