"""The memory categories of DESIGN section 5: every tracked byte belongs to exactly one."""
from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    """What a live allocation is; the innermost tag in force when it was made decides it."""

    WEIGHTS = "weights"
    KV_FP = "kv_fp"
    KV_CODES = "kv_codes"
    KV_META = "kv_meta"
    KV_DEQUANT = "kv_dequant"
    KV_SCRATCH = "kv_scratch"
    CROSS_KV = "cross_kv"
    ACTIVATIONS = "activations"
    LATENTS = "latents"
    DECODE = "decode"
    UNATTRIBUTED = "unattributed"


CATEGORIES: tuple[str, ...] = tuple(c.value for c in Category)
KV_CATEGORIES: tuple[str, ...] = ("kv_fp", "kv_codes", "kv_meta", "kv_dequant", "kv_scratch")
