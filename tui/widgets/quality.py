"""QualityPanel: the quality metrics of summary.json, or "not computed" when there are none."""
from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import Static

NOT_COMPUTED = "not computed"


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows.extend(_flatten(v, key + "."))
        else:
            rows.append((key, v))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v[:8]) + (" ..." if len(v) > 8 else "")
    return "missing" if v is None else str(v)


class QualityPanel(Static):
    """Quality metrics against the BF16 reference (DESIGN section 9), one per line."""

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.text = ""

    def show(self, quality: dict[str, Any] | None) -> None:
        out = Text()
        out.append("quality ", style="bold")
        if not quality:
            out.append(NOT_COMPUTED, style="dim")
            out.append("\n(summary.json has no quality metrics for this trace)", style="dim")
        else:
            out.append("\n")
            for k, v in _flatten(quality):
                out.append(f"  {k:<28}{_fmt(v)}\n")
        self.text = out.plain
        self.update(out)
