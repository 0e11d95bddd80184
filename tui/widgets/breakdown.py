"""BreakdownPanel: live bytes by category at the cursor next to the same at the peak, with colors."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from kvprof.units import fmt_bytes
from tui.model import Breakdown
from tui.widgets.colors import category_color


class BreakdownPanel(Static):
    """A small table as text: category, bytes at the cursor and their share of the cursor's total, bytes at the peak."""

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.text = ""

    def show(self, cursor: Breakdown | None, peak: dict[str, int] | None, peak_bytes: int | None,
             filter_text: str = "") -> None:
        """Draw both columns; categories not matching the filter are left out."""
        at_cursor = cursor.by_category if cursor else {}
        cursor_total = cursor.total if cursor else 0
        at_peak = peak or {}
        cats = list(dict.fromkeys([*at_peak, *at_cursor]))
        if filter_text:
            cats = [c for c in cats if filter_text.lower() in c.lower()]
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append(f"{'category':<14}{'at cursor':>12}{'share':>8}{'at peak':>12}\n", style="bold")
        for c in cats:
            out.append("█ ", style=category_color(c))
            out.append(f"{c:<12}")
            share = f"{100 * at_cursor.get(c, 0) / cursor_total:.1f}%" if cursor_total else "-"
            out.append(f"{fmt_bytes(at_cursor.get(c, 0)):>12}{share:>8}{fmt_bytes(at_peak.get(c, 0)):>12}\n")
        out.append(f"{'total':<14}{fmt_bytes(cursor_total):>12}{'':>8}{fmt_bytes(peak_bytes):>12}", style="bold")
        self.text = out.plain
        self.update(out)
