"""Markdown tables of reader output (diagnose, report): every cell from a trace made inert."""
from __future__ import annotations

import html
import math
from typing import Any, Sequence

import pandas as pd

from kvprof.units import fmt_bytes

__all__ = ["signed", "md_text", "md_table"]


def signed(n: int) -> str:
    """Bytes with a sign: '+1.50 MiB', '-512 B'."""
    return ("+" if n > 0 else "") + fmt_bytes(n)


def md_text(value: Any) -> str:
    """Text from a trace (names, paths, errors) made inert in Markdown: HTML escaped, `|` and line
    breaks that would end a table cell or row escaped."""
    return html.escape(" ".join(str(value).splitlines()), quote=True).replace("|", "\\|")


def md_table(df: pd.DataFrame, byte_cols: Sequence[str] = ()) -> str:
    """A GitHub markdown table of df; `byte_cols` are printed in binary units, text cells via `md_text`."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(md_text(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        cells = []
        for c, v in zip(cols, row):
            if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
                cells.append("-")
            elif c in byte_cols:
                cells.append(signed(int(v)) if "delta" in str(c) else fmt_bytes(int(v)))
            else:
                cells.append(md_text(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
