"""One color per memory category (DESIGN section 5), shared by every panel that names categories."""
from __future__ import annotations

CATEGORY_COLORS: dict[str, str] = {
    "weights": "grey62",
    "kv_fp": "dodger_blue1",
    "kv_codes": "cyan",
    "kv_meta": "magenta",
    "kv_dequant": "red1",
    "kv_scratch": "dark_orange",
    "cross_kv": "medium_purple1",
    "activations": "yellow",
    "latents": "green3",
    "decode": "spring_green1",
    "unattributed": "white",
}
FALLBACK_COLOR = "bright_white"
STATUS_COLORS: dict[str, str] = {
    "running": "bold yellow",
    "complete": "bold green",
    "oom": "bold red",
    "interrupted": "bold magenta",
    "failed": "bold red",
}


def category_color(category: str) -> str:
    """The color of `category` (unknown categories get a neutral color)."""
    return CATEGORY_COLORS.get(category, FALLBACK_COLOR)
