"""CursorPanel: where the cursor is (event, time, stage), the peak, and the top stages of origin."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from kvprof.units import fmt_bytes
from tui.model import Breakdown, TraceView

TOP_STAGES = 6


class CursorPanel(Static):
    """Facts about the cursor position and the peak, as text."""

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.text = ""

    def show(self, view: TraceView, event: int, breakdown: Breakdown, filter_text: str = "") -> None:
        """Draw the facts; `breakdown` is what is live at the cursor (already narrowed to `filter_text`)."""
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append("cursor ", style="bold")
        out.append(f"event {event + 1:,} of {view.n_events:,} · t {view.event_t_ns(event) / 1e9:.3f} s · "
                   f"live {fmt_bytes(view.event_live(event))}\n")
        out.append("  stage ", style="dim")
        out.append(view.stage_of_event(event) + "\n", style="cyan")
        if view.peak is not None:
            out.append("peak   ", style="bold red")
            out.append(f"{fmt_bytes(view.peak.bytes)} ({view.peak.bytes:,} B) at t {view.peak.t_ns / 1e9:.3f} s\n")
            out.append("  stage ", style="dim")
            out.append(view.peak.stage + "\n", style="cyan")
        out.append("live at cursor by stage of origin", style="bold")
        out.append(f" (filter '{filter_text}': {fmt_bytes(breakdown.total)})\n" if filter_text else "\n")
        for stage, n in list(breakdown.by_stage.items())[:TOP_STAGES]:
            out.append(f"  {fmt_bytes(n):>11}  {stage}\n")
        if filter_text and not breakdown.by_stage:
            out.append("  nothing live matches the filter\n", style="dim")
        self.text = out.plain
        self.update(out)
