"""QuaRot KV: Hadamard rotation of head_dim, then symmetric per-channel RTN (#11-#14)."""
from __future__ import annotations

from typing import ClassVar

from methods.base import register_method
from methods.partition import UniformMethod
from methods.schemes import QuaRotScheme, Scheme


class QuaRot(UniformMethod):
    """Rotate by the normalized Walsh-Hadamard matrix, quantize; rotate back on read."""

    family = "quarot"
    policy = "-"
    nbits: ClassVar[int] = 4

    def schemes(self) -> tuple[Scheme, Scheme]:
        return QuaRotScheme(self.nbits), QuaRotScheme(self.nbits)


@register_method
class QuaRotInt4(QuaRot):
    name = "quarot_kv_int4"
    key_bits = value_bits = "4"
    summary = "Hadamard rotation, then symmetric 4-bit per-channel RTN"


@register_method
class QuaRotInt2(QuaRot):
    name = "quarot_kv_int2"
    key_bits = value_bits = "2"
    nbits = 2
    summary = "Hadamard rotation, then symmetric 2-bit per-channel RTN"


@register_method
class QuaRotInt4Recent2(QuaRotInt4):
    name = "quarot_kv_int4_recent2"
    key_bits = value_bits = "4/16"
    policy = "last 2 chunks BF16"
    recent_window = True
    summary = "quarot_kv_int4, with the last 2 chunks of the rollout kept in full precision"


@register_method
class QuaRotInt4Refresh(QuaRotInt4):
    name = "quarot_kv_int4_refresh"
    policy = "refresh_only"
    cadence = "refresh_only"
    summary = "quarot_kv_int4, quantized only on the refresh pass"
