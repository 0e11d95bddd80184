"""QAQ: outliers split off to a side table, then KIVI's asymmetric quantizer (#17-#18)."""
from __future__ import annotations

from typing import ClassVar

from methods.base import Param, register_method
from methods.partition import UniformMethod
from methods.schemes import QAQScheme, Scheme

QAQ_PARAMS = {
    "outlier_sigma": Param(6.0, "values with |x| > outlier_sigma * std(x) go to the side table", float,
                           lambda v: v > 0, "a positive number"),
}


class QAQ(UniformMethod):
    """sigma of the whole tensor per call; outliers kept exactly (float16), the rest clamped."""

    family = "qaq"
    policy = "-"
    params = QAQ_PARAMS
    nbits: ClassVar[int] = 4

    def schemes(self) -> tuple[Scheme, Scheme]:
        return QAQScheme(self.nbits, self["outlier_sigma"]), QAQScheme(self.nbits, self["outlier_sigma"])


@register_method
class QAQInt4(QAQ):
    name = "qaq_int4"
    key_bits = value_bits = "4"
    summary = "outliers (> 6 sigma) split off, then asymmetric 4-bit (keys per-channel, values per-token)"


@register_method
class QAQInt2(QAQ):
    name = "qaq_int2"
    key_bits = value_bits = "2"
    nbits = 2
    summary = "outliers (> 6 sigma) split off, then asymmetric 2-bit (keys per-channel, values per-token)"
