"""KVPanel: KV bytes (logical / stored / resident) of the last cache state and compression ratios."""
from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import Static

from kvprof.read.summary import KVBytes
from kvprof.units import fmt_bytes


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


class KVPanel(Static):
    """The KV-cache byte accounting, as text."""

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.text = ""

    def show(self, kv: KVBytes | None, meta: dict[str, Any], when: str = "", logical_dtype: str | None = None) -> None:
        """Draw `kv` (the last KV record) taken `when` ('after chunk 3'); logical bytes are labelled
        with the element type they are counted at when the summary states it."""
        out = Text()
        out.append("KV cache ", style="bold")
        out.append(f"method {meta.get('method', '?')} · integration {meta.get('integration', '?')} · codes {meta.get('codes', '-')}\n")
        if not kv:
            out.append("no KV byte records yet (written after each chunk)", style="dim")
        else:
            out.append(f"{when or 'after chunk ' + str(kv.chunk)}\n")
            logical = f"logical ({logical_dtype})" if logical_dtype else "logical"
            for label, n in ((logical, kv.logical_bytes), ("stored", kv.stored_bytes), ("resident", kv.resident_bytes)):
                out.append(f"  {label:<19}{fmt_bytes(n):>12}  ({n:,} B)\n")
            out.append(f"  ratio logical/stored {_ratio(kv.ratio_stored)} · logical/resident {_ratio(kv.ratio_resident)}")
        self.text = out.plain
        self.update(out)
