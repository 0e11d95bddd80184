"""PRQ: progressive residual quantization, b-bit base plus 4-bit residual (#15-#16)."""
from __future__ import annotations

from typing import ClassVar

from methods.base import Param, register_method
from methods.partition import UniformMethod, positive_int, with_default
from methods.schemes import ResidualScheme, Scheme

PRQ_PARAMS = {
    "residual_bits": Param(4, "bits of the residual stage", int, lambda v: 2 <= v <= 7, "an integer in [2, 7]"),
    "slice_groups": with_default(positive_int("groups of 16 tokens quantized per slice (float32 intermediates)"), 64),
}


class PRQ(UniformMethod):
    """Symmetric per-channel base, the residual quantized again in the same groups."""

    family = "prq"
    policy = "-"
    params = PRQ_PARAMS
    nbits: ClassVar[int] = 4

    def schemes(self) -> tuple[Scheme, Scheme]:
        make = lambda: ResidualScheme(self.nbits, self["residual_bits"], self["slice_groups"])  # noqa: E731
        return make(), make()


@register_method
class PRQInt4(PRQ):
    name = "prq_int4"
    key_bits = value_bits = "4+4"
    summary = "residual: 4-bit base + 4-bit residual, symmetric per-channel"


@register_method
class PRQInt2(PRQ):
    name = "prq_int2"
    key_bits = value_bits = "2+4"
    nbits = 2
    summary = "residual: 2-bit base + 4-bit residual, symmetric per-channel"
