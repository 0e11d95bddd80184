"""RTN: symmetric b-bit per-channel quantization of K and V (METHODS.md #2-#6)."""
from __future__ import annotations

from typing import ClassVar

from methods.base import register_method
from methods.partition import UniformMethod
from methods.schemes import RTNScheme, Scheme


class RTN(UniformMethod):
    """Round-to-nearest, one float16 scale per (group of 16 tokens, head, channel)."""

    family = "rtn"
    policy = "-"
    k_nbits: ClassVar[int] = 4
    v_nbits: ClassVar[int] = 4

    def schemes(self) -> tuple[Scheme, Scheme]:
        return RTNScheme(self.k_nbits), RTNScheme(self.v_nbits)


@register_method
class RTNInt4(RTN):
    name = "rtn_int4"
    key_bits = value_bits = "4"
    summary = "symmetric 4-bit per-channel RTN of K and V"


@register_method
class RTNInt2(RTN):
    name = "rtn_int2"
    key_bits = value_bits = "2"
    k_nbits = v_nbits = 2
    summary = "symmetric 2-bit per-channel RTN of K and V (ternary codes)"


@register_method
class RTNK2V4(RTN):
    name = "rtn_k2_v4"
    key_bits, value_bits = "2", "4"
    k_nbits, v_nbits = 2, 4
    summary = "symmetric per-channel RTN: keys 2-bit, values 4-bit"


@register_method
class RTNInt4Recent2(RTNInt4):
    name = "rtn_int4_recent2"
    key_bits = value_bits = "4/16"
    policy = "last 2 chunks BF16"
    recent_window = True
    summary = "rtn_int4, with the last 2 chunks of the rollout kept in full precision"


@register_method
class RTNInt4Refresh(RTNInt4):
    name = "rtn_int4_refresh"
    policy = "refresh_only"
    cadence = "refresh_only"
    summary = "rtn_int4, quantized only on the refresh pass"
