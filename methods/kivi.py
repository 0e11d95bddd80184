"""KIVI: asymmetric b-bit, keys per-channel, values per-token, no residual window (#7-#10)."""
from __future__ import annotations

from typing import ClassVar

from methods.base import register_method
from methods.partition import UniformMethod
from methods.schemes import KIVIScheme, Scheme


class KIVI(UniformMethod):
    """KIVI's quantizer without its full-precision residual window."""

    family = "kivi"
    policy = "no full-precision residual window"
    k_nbits: ClassVar[int] = 4
    v_nbits: ClassVar[int] = 4

    def schemes(self) -> tuple[Scheme, Scheme]:
        return KIVIScheme(self.k_nbits), KIVIScheme(self.v_nbits)


@register_method
class KIVIInt4(KIVI):
    name = "kivi_int4"
    key_bits = value_bits = "4"
    summary = "asymmetric 4-bit: keys per-channel, values per-token"


@register_method
class KIVIInt2(KIVI):
    name = "kivi_int2"
    key_bits = value_bits = "2"
    k_nbits = v_nbits = 2
    summary = "asymmetric 2-bit: keys per-channel, values per-token"


@register_method
class KIVIInt4Refresh(KIVIInt4):
    name = "kivi_int4_refresh"
    policy = "refresh_only"
    cadence = "refresh_only"
    summary = "kivi_int4, quantized only on the refresh pass"


@register_method
class KIVIK2V4(KIVI):
    name = "kivi_k2_v4"
    key_bits, value_bits = "2", "4"
    k_nbits, v_nbits = 2, 4
    summary = "asymmetric: keys 2-bit per-channel, values 4-bit per-token"
