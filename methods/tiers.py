"""Age tiers: the last fraction of positions is the recent tier, the rest the old tier; each
tier is gathered by index, quantized on its own, and scattered back on read (#19-#20)."""
from __future__ import annotations

from typing import ClassVar

import torch

from methods.base import KVCall, register_method
from methods.partition import Part, PartitionMethod, Plan, TokenSet, fraction, with_default
from methods.schemes import RTNScheme, Scheme


def tier_split(num_tokens: int, recent_fraction: float, device: torch.device) -> tuple[int, dict[str, torch.Tensor]]:
    """Recent tier = the last round(recent_fraction * L) positions of the tensor.

    Returns the recent count and the state tensors: a one-byte mask per token (1 = recent) and
    an int64 index list per tier.
    """
    n_recent = min(num_tokens, round(recent_fraction * num_tokens))
    first = num_tokens - n_recent
    mask = torch.zeros(num_tokens, dtype=torch.uint8, device=device)
    mask[first:] = 1
    meta = {
        "mask": mask,
        "idx_recent": torch.arange(first, num_tokens, device=device),
        "idx_old": torch.arange(0, first, device=device),
    }
    return n_recent, meta


def tier_parts(num_tokens: int, n_recent: int, recent: tuple[Scheme, Scheme], old: tuple[Scheme, Scheme]) -> list[Part]:
    return [
        Part("recent", TokenSet(n_recent, index="idx_recent"), *recent),
        Part("old", TokenSet(num_tokens - n_recent, index="idx_old"), *old),
    ]


class AgeTier(PartitionMethod):
    """Recent tier at `recent_nbits`, old tier at `old_nbits`, symmetric per-channel RTN."""

    family = "age_tier"
    policy = "age tiers"
    position_dependent = True
    params = {"recent_fraction": with_default(fraction("recent_fraction", "share of positions in the recent tier"), 0.3)}
    recent_nbits: ClassVar[int] = 4
    old_nbits: ClassVar[int] = 4

    def plan(self, k: torch.Tensor, v: torch.Tensor, call: KVCall) -> Plan:
        n = k.shape[1]
        with self.marks.category("kv_meta"):
            n_recent, meta = tier_split(n, self["recent_fraction"], k.device)
        recent = (RTNScheme(self.recent_nbits), RTNScheme(self.recent_nbits))
        old = (RTNScheme(self.old_nbits), RTNScheme(self.old_nbits))
        return Plan(tier_parts(n, n_recent, recent, old), meta, {"recent_count": n_recent})


@register_method
class AgeTierInt4(AgeTier):
    name = "age_tier_int4"
    key_bits = value_bits = "4/4"
    summary = "age tiers: recent tier (last 30% of positions) rtn 4-bit, old tier rtn 4-bit"


@register_method
class AgeTierInt2(AgeTier):
    name = "age_tier_int2"
    key_bits = value_bits = "4/2"
    old_nbits = 2
    summary = "age tiers: recent tier (last 30% of positions) rtn 4-bit, old tier rtn 2-bit"
